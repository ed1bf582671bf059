"""What the project costs this billing cycle, projected to its end the way Supabase bills.

Usage is read from the monitored database and priced with :mod:`.model` (how each item is
counted and projected) and :mod:`.prices` (the Supabase price list, with its sources):

- **Disk**: all databases plus the WAL (``pg_ls_waldir()``, allowed to ``pg_monitor``), as
  Supabase's disk usage; the provisioned size follows the autoscaler (:mod:`.disk`).
- **Monthly active users**: distinct users whose latest sign-in, session start or token
  refresh falls in the cycle (``auth.users`` and ``auth.sessions``; anonymous users count).
- **Invocations**: rows of an edge-function log table, when configured.
- Egress (uncached and cached) and file storage cannot be seen from the database; they are
  taken from ``assumed_usage`` (zero unless set), spread evenly over the month.

Every query takes the collector's ``now`` as a parameter: rows stamped after it are not
counted, and the daemon's clock is the only one that matters.
``cost_storage_growth_bytes_per_day`` comes from the sizes this collector saw within
``growth_window`` (kept in memory: a restarted daemon needs two cycles before it reports).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, model_validator

from piggywatch.collectors.base import SourceContext, SourceJob
from piggywatch.collectors.cost.disk import DiskRules, ProvisionedDisk, read_only_eta
from piggywatch.collectors.cost.model import (
    DAY,
    GB,
    Billing,
    CostModel,
    Usage,
    billing_cycle,
    estimate,
    project_mau,
)
from piggywatch.collectors.growth import (
    SUPABASE_USERS,
    SessionsTable,
    default_sessions,
    qualified_name,
    user_activity,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

__all__ = [
    "SPECS",
    "AssumedUsage",
    "CostCollector",
    "CostConfig",
    "InvocationsTable",
    "UsersTable",
]

_IDENT = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"
_COLUMN = r"^[A-Za-z_][A-Za-z0-9_$]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class UsersTable(_Strict):
    """Where monthly active users are counted (Supabase Auth's users by default)."""

    table: str = Field(default=SUPABASE_USERS, pattern=_IDENT)
    """The table, `schema.table` or `table`."""
    id_column: str = Field(default="id", pattern=_COLUMN)
    """The users' primary key, joined to the sessions' user column."""
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)
    """The column holding when the row was created."""
    last_sign_in_column: str = Field(default="last_sign_in_at", pattern=_COLUMN)
    """The column holding the user's last sign-in time."""


class InvocationsTable(_Strict):
    """A table with one row per edge-function invocation."""

    table: str = Field(default="edge_functions_logs", pattern=_IDENT)
    """The table, `schema.table` or `table`."""
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)
    """The column holding when the row was created."""


class AssumedUsage(_Strict):
    """Usage the database cannot see, as estimates (for example from the Supabase dashboard)."""

    file_storage_gb: float = Field(default=0.0, ge=0)
    """File storage used, as an estimate."""
    egress_gb_per_month: float = Field(default=0.0, ge=0)
    """Egress per month, as an estimate."""
    cached_egress_gb_per_month: float = Field(default=0.0, ge=0)
    """Egress served from Supabase's CDN cache per month, as an estimate."""


class CostConfig(_Strict):
    """Cost and budget of one target's project."""

    target: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The name of the PostgreSQL target (`targets[].name`) it reads from."""
    enabled: bool = True
    """Whether this runs at all."""
    interval: Duration = 300.0
    """How often it is sampled."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    monthly_budget_dollars: float = Field(gt=0)
    """The monthly budget the projection is compared to."""
    model: CostModel = CostModel()
    billing_cycle_day: int = Field(default=1, ge=1, le=31)
    """The organization's creation day: the billing page (Organization settings > Billing) shows the
    cycle's dates. In shorter months the cycle starts on the month's last day."""
    spend_cap: bool = True
    """Supabase's spend cap (on by default for Pro): usage over a quota is not billed, the service
    is restricted instead."""
    organization_fees: bool = True
    """The plan fee and the $10 compute credit are once per organization: set false on every other
    project of the same organization."""
    addons_dollars_per_month: float = Field(default=0.0, ge=0)
    """Add-ons (custom domain, IPv4, PITR, extra read replicas, log drains) per month; the spend cap
    never limits them."""
    disk_quota_gb: float = Field(default=8.0, gt=0)
    """The provisioned disk when the daemon starts; it then follows the autoscaler."""
    users: UsersTable | None = UsersTable()
    sessions: SessionsTable | None = None
    """Token refreshes count towards MAU; defaults to auth.sessions with auth.users."""
    invocations: InvocationsTable | None = None
    assumed_usage: AssumedUsage = AssumedUsage()
    growth_window: Duration = DAY
    """The window disk growth is measured over for the projection."""

    @model_validator(mode="before")
    @classmethod
    def _supabase_sessions(cls, data: object) -> object:
        users = data.get("users", UsersTable()) if isinstance(data, dict) else None
        table = users.get("table", SUPABASE_USERS) if isinstance(users, dict) else (
            users.table if isinstance(users, UsersTable) else None)
        return default_sessions(data, table)


_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("cost_month_to_date_dollars", _G, "Spent so far in the billing cycle"),
    MetricSpec("cost_projected_month_dollars", _G,
               "Expected bill of the billing cycle, projected as Supabase bills each item"),
    MetricSpec("cost_projected_item_dollars", _G, "Expected bill of the cycle by item"),
    MetricSpec("cost_monthly_budget_dollars", _G, "The configured monthly budget"),
    MetricSpec("cost_budget_ratio", _G, "Projected bill / monthly budget"),
    MetricSpec("cost_quota_ratio", _G,
               "Usage so far this cycle / the plan's included quota, per capped item"),
    MetricSpec("cost_spend_cap_enabled", _G, "1 when the spend cap is on (quotas restrict)"),
    MetricSpec("cost_per_active_user_dollars", _G,
               "Projected bill / users active within the last 30 days"),
    MetricSpec("cost_billing_cycle_elapsed_ratio", _G, "Share of the billing cycle elapsed"),
    MetricSpec("cost_usage_disk_bytes", _G, "Disk used: all databases plus the WAL"),
    MetricSpec("cost_usage_mau", _G,
               "Distinct users who signed in or refreshed a token since the cycle began"),
    MetricSpec("cost_projected_mau", _G, "Distinct active users expected at the cycle's end"),
    MetricSpec("cost_usage_function_invocations", _G,
               "Edge-function invocations since the billing cycle began"),
    MetricSpec("cost_storage_growth_bytes_per_day", _G,
               "Growth of the disk usage per day, over the growth window"),
    MetricSpec("cost_disk_provisioned_bytes", _G,
               "Provisioned disk, as the autoscaler grows it (+50 % at 90 % full)"),
    MetricSpec("cost_disk_size_changes_day", _G,
               "Disk size changes in the last rolling 24 hours (at most 4 allowed)"),
    MetricSpec("cost_disk_quota_ratio", _G, "Disk used / provisioned disk"),
    MetricSpec("cost_disk_read_only_eta_seconds", _G,
               "Time until the project turns read-only (95 % full with no size change left) "
               "at the current growth (absent when not within a year)"),
)

_DISK = sql.SQL("SELECT (SELECT sum(pg_database_size(oid)) FROM pg_database)::float8, "
                "(SELECT COALESCE(sum(size), 0) FROM pg_ls_waldir())::float8")
_MAU = sql.SQL("""
SELECT count(*) FILTER (WHERE last_seen >= %(start)s),
       count(*) FILTER (WHERE last_seen > %(now)s - 30 * 86400),
       count(*) FILTER (WHERE created > %(now)s - 7 * 86400)
FROM {activity}
""")
_INVOCATIONS = sql.SQL("SELECT count(*) FROM {logs} "
                       "WHERE {created} >= %(start)s AND {created} <= %(at)s")


class CostCollector:
    """The cycle's bill so far and projected, against the budget, quotas and the disk."""

    name = "cost"

    def __init__(self, target: PostgresTarget, config: CostConfig) -> None:
        self._target = target
        self._config = config
        self._sizes: deque[tuple[float, float]] = deque()
        self._disk = ProvisionedDisk(config.disk_quota_gb * GB,
                                     DiskRules.of(config.model, config.spend_cap))
        users = config.users
        self._mau_query = None if users is None else _MAU.format(activity=user_activity(
            users.table, users.id_column, users.created_at_column, users.last_sign_in_column,
            config.sessions))
        self._invocations_query = None if config.invocations is None else _INVOCATIONS.format(
            created=sql.Identifier(config.invocations.created_at_column),
            logs=qualified_name(config.invocations.table))

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One cycle: read usage, price it, and compare with the budget, quotas and disk."""
        config = self._config
        start, end = billing_cycle(now, config.billing_cycle_day)
        mau: Any = None
        active_30d: Any = None
        signups_7d: Any = None
        invocations: Any = None
        with self._target.session(config.timeout) as db:
            (databases, wal), = db.fetch(_DISK)
            if self._mau_query is not None:
                (mau, active_30d, signups_7d), = db.fetch(
                    self._mau_query, {"start": start, "now": now})
            if self._invocations_query is not None:
                (invocations,), = db.fetch(self._invocations_query, {
                    "start": datetime.fromtimestamp(start, UTC),
                    "at": datetime.fromtimestamp(now, UTC)})
        disk_bytes = float(databases or 0.0) + float(wal or 0.0)
        length = end - start
        elapsed_ratio = min(1.0, max(0.0, (now - start) / length))
        # Counted usage is projected from at least a day, so the first hours of a cycle do not
        # turn one hour's traffic into a month of it.
        elapsed = max(now - start, DAY) / length
        provisioned = self._disk.observe(disk_bytes, now)
        assumed = config.assumed_usage
        usage = Usage(
            disk_bytes=disk_bytes, disk_provisioned_gb=provisioned / GB,
            mau=float(mau or 0),
            mau_projected=project_mau(float(mau or 0), float(active_30d or 0),
                                      float(signups_7d or 0), (end - now) / DAY),
            invocations=float(invocations or 0), file_storage_gb=assumed.file_storage_gb,
            # Egress is assumed evenly spread: what is used so far is its share of a month.
            egress_gb=assumed.egress_gb_per_month * elapsed,
            cached_egress_gb=assumed.cached_egress_gb_per_month * elapsed)
        cost = estimate(config.model, usage, elapsed, Billing(
            config.spend_cap, config.organization_fees, config.addons_dollars_per_month))

        def sample(name: str, value: float, **labels: str) -> Sample:
            return Sample(name, labels_of(labels), float(value), now)

        budget = config.monthly_budget_dollars
        projected = cost.projected_total
        out = [
            sample("cost_month_to_date_dollars", cost.month_to_date_total),
            sample("cost_projected_month_dollars", projected),
            sample("cost_monthly_budget_dollars", budget),
            sample("cost_budget_ratio", projected / budget),
            sample("cost_spend_cap_enabled", 1.0 if config.spend_cap else 0.0),
            sample("cost_billing_cycle_elapsed_ratio", elapsed_ratio),
            sample("cost_usage_disk_bytes", disk_bytes),
            sample("cost_disk_provisioned_bytes", provisioned),
            sample("cost_disk_size_changes_day", self._disk.changes_last_day()),
            sample("cost_disk_quota_ratio", disk_bytes / provisioned),
        ]
        out += [sample("cost_projected_item_dollars", dollars, item=item)
                for item, dollars in sorted(cost.projected.items())]
        # A ratio only for what is measured or assumed: a 0 for "unknown" would read as "unused".
        counted = {"mau": mau is not None, "invocations": invocations is not None,
                   "file_storage": assumed.file_storage_gb > 0,
                   "egress": assumed.egress_gb_per_month > 0,
                   "cached_egress": assumed.cached_egress_gb_per_month > 0}
        out += [sample("cost_quota_ratio", ratio, item=item)
                for item, ratio in sorted(cost.quota_ratio.items()) if counted.get(item, True)]
        if mau is not None:
            out.append(sample("cost_usage_mau", float(mau)))
            out.append(sample("cost_projected_mau", usage.mau_projected))
            if active_30d:
                out.append(sample("cost_per_active_user_dollars", projected / active_30d))
        if invocations is not None:
            out.append(sample("cost_usage_function_invocations", float(invocations)))
        growth = self._growth_per_day(now, disk_bytes)
        if growth is not None:
            out.append(sample("cost_storage_growth_bytes_per_day", growth))
        eta = read_only_eta(disk_bytes, (growth or 0.0) / DAY, provisioned,
                            list(self._disk.changes), now, self._disk.rules)
        if eta is not None:
            out.append(sample("cost_disk_read_only_eta_seconds", eta))
        return out

    def _growth_per_day(self, now: float, size: float) -> float | None:
        """Bytes per day from the oldest size seen within the growth window to this one."""
        sizes = self._sizes
        sizes.append((now, size))
        while sizes and sizes[0][0] < now - self._config.growth_window:
            sizes.popleft()
        first_at, first_size = sizes[0]
        if now <= first_at:
            return None
        return (size - first_size) / (now - first_at) * DAY


def build(configs: list[CostConfig], context: SourceContext) -> list[SourceJob]:
    """One collector per enabled entry, on its target."""
    return [(context.targets[c.target].name, context.targets[c.target],
             CostCollector(context.targets[c.target], c), c.interval)
            for c in configs if c.enabled]
