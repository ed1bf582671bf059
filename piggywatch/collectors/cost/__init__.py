"""The cost of a Supabase project this billing cycle, projected the way Supabase bills it.

``prices`` holds the price list and billing rules with their sources, ``model`` prices usage
(pure functions), ``disk`` follows the provisioned disk, ``collector`` reads usage from the
database.
"""

from piggywatch.collectors.cost.collector import (
    SPECS,
    AssumedUsage,
    CostCollector,
    CostConfig,
    InvocationsTable,
    UsersTable,
    build,
)
from piggywatch.collectors.cost.disk import DiskRules, ProvisionedDisk, read_only_eta
from piggywatch.collectors.cost.model import (
    DAY,
    GB,
    Billing,
    CostBreakdown,
    CostModel,
    Usage,
    billing_cycle,
    estimate,
    project_mau,
)
from piggywatch.collectors.cost.prices import (
    CAPPED_ITEMS,
    PRICES_CHECKED,
    SUPABASE_PRO,
    Fact,
    stale_prices_warning,
)
from piggywatch.collectors.growth import SessionsTable

__all__ = [
    "CAPPED_ITEMS",
    "DAY",
    "GB",
    "PRICES_CHECKED",
    "SPECS",
    "SUPABASE_PRO",
    "AssumedUsage",
    "Billing",
    "CostBreakdown",
    "CostCollector",
    "CostConfig",
    "CostModel",
    "DiskRules",
    "Fact",
    "InvocationsTable",
    "ProvisionedDisk",
    "SessionsTable",
    "Usage",
    "UsersTable",
    "billing_cycle",
    "build",
    "estimate",
    "project_mau",
    "read_only_eta",
    "stale_prices_warning",
]
