"""Every Supabase price and billing rule the cost model uses, with its source and check date.

One table, so a price change is one edit and its provenance stays next to it. Each entry
names the page of Supabase's platform documentation it was checked against
(``https://supabase.com/docs/guides/platform/<doc>``; the source files live in
supabase/supabase ``apps/docs/content/guides/platform/``). :class:`~.model.CostModel` takes
its defaults from here and lets a configuration override any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Final

__all__ = [
    "CAPPED_ITEMS",
    "DOCS_BASE",
    "PRICES_CHECKED",
    "STALE_AFTER_MONTHS",
    "SUPABASE_PRO",
    "Fact",
    "stale_prices_warning",
]

DOCS_BASE = "https://supabase.com/docs/guides/platform/"
# When every entry below was last compared with the documentation and supabase.com/pricing.
PRICES_CHECKED: Final = date(2026, 12, 6)
STALE_AFTER_MONTHS = 6


@dataclass(frozen=True, slots=True)
class Fact:
    """One price, quota or rule: its value, unit, meaning and the doc page it comes from."""

    value: float
    unit: str
    what: str
    doc: str


SUPABASE_PRO: Final[Mapping[str, Fact]] = MappingProxyType({
    "plan_dollars_per_month": Fact(
        25.0, "$/month", "Pro plan fee, once per organization, billed in advance",
        "billing-on-supabase"),
    "compute_dollars_per_month": Fact(
        10.0, "$/month", "compute of the project (Micro), billed hourly in arrears",
        "manage-your-usage/compute"),
    "compute_credit_dollars_per_month": Fact(
        10.0, "$/month", "compute credits of a paid plan, once per organization",
        "manage-your-usage/compute"),
    "disk_included_gb": Fact(
        8.0, "GB", "disk included per project", "manage-your-usage/disk-size"),
    "disk_dollars_per_gb_month": Fact(
        0.125, "$/GB-month", "provisioned disk over the included size, billed per GB-hour",
        "manage-your-usage/disk-size"),
    "disk_autoscale_at_ratio": Fact(
        0.90, "ratio", "the disk grows when its usage reaches this share of its size",
        "database-size"),
    "disk_autoscale_growth_ratio": Fact(
        0.50, "ratio", "each automatic growth adds this share of the size", "database-size"),
    "disk_read_only_at_ratio": Fact(
        0.95, "ratio", "the project turns read-only at this share when the disk cannot grow",
        "database-size"),
    "disk_changes_per_day": Fact(
        4.0, "changes / rolling 24 h", "size changes allowed (was a 6 h cooldown before 2026)",
        "database-size"),
    "file_storage_included_gb": Fact(
        100.0, "GB", "file storage included", "manage-your-usage/storage-size"),
    "file_storage_dollars_per_gb_month": Fact(
        0.021, "$/GB-month", "file storage over the quota, billed per GB-hour",
        "manage-your-usage/storage-size"),
    "egress_included_gb": Fact(
        250.0, "GB", "uncached egress included per cycle", "manage-your-usage/egress"),
    "egress_dollars_per_gb": Fact(
        0.09, "$/GB", "uncached egress over the quota", "manage-your-usage/egress"),
    "cached_egress_included_gb": Fact(
        250.0, "GB", "cached egress (CDN cache hits) included per cycle",
        "manage-your-usage/egress"),
    "cached_egress_dollars_per_gb": Fact(
        0.03, "$/GB", "cached egress over the quota", "manage-your-usage/egress"),
    "invocations_included": Fact(
        2_000_000.0, "invocations", "edge-function invocations included per cycle",
        "manage-your-usage/edge-function-invocations"),
    "invocations_dollars_per_million": Fact(
        2.0, "$/million", "invocations over the quota, in whole millions",
        "manage-your-usage/edge-function-invocations"),
    "mau_included": Fact(
        100_000.0, "users", "monthly active users included per cycle",
        "manage-your-usage/monthly-active-users"),
    "mau_dollars_each": Fact(
        0.00325, "$/user", "monthly active users over the quota",
        "manage-your-usage/monthly-active-users"),
})

# The items the spend cap stops billing: over their quota the service is restricted instead
# (doc: spend-cap). Compute and add-ons are never capped.
CAPPED_ITEMS: Final = ("disk", "file_storage", "egress", "cached_egress", "invocations",
                       "mau")


def _plus_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for clamped in (day.day, 30, 29, 28):
        try:
            return date(year, month, clamped)
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has a 28th")


def stale_prices_warning(today: date, checked: date = PRICES_CHECKED) -> str | None:
    """A warning for ``piggywatch check`` when the price table is over 6 months old."""
    if today <= _plus_months(checked, STALE_AFTER_MONTHS):
        return None
    return (f"sources.cost: the Supabase price table was last checked on {checked}, more "
            f"than {STALE_AFTER_MONTHS} months ago; compare it with "
            "https://supabase.com/pricing and the billing docs, and set any changed figure "
            "under sources.cost[].model")
