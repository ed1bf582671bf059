"""What the project costs this month, projected to the end of the billing cycle.

Usage is read from the monitored database (its size, monthly active users from the users
table, edge-function invocations from a log table) and priced with a :class:`CostModel`
whose defaults are the public Supabase Pro price list. Egress and file storage cannot be
seen from the database; they are taken from ``assumed_usage`` (zero unless set).

How the figures are made (``f`` is the share of the billing cycle elapsed):

- Fixed fees (plan, compute) are billed in advance, so they count in full from day one.
- Sizes (disk, file storage) are billed per GB-hour over the included amount: the current
  excess costs ``excess * price * f`` so far and ``excess * price`` for the whole cycle.
  The billed disk is the larger of the provisioned disk (``disk_quota_gb``) and the size
  of all databases, since Supabase bills the provisioned disk, which grows with the data.
- Counted usage (invocations, monthly active users, egress) is projected linearly: the
  cycle's usage so far divided by ``f``, then priced over its quota. Function invocations
  are billed in whole packages of one million. ``f`` is at least one day's share, so the
  first hours of a cycle do not project a day's traffic to a month of it.
- A GB is 2^30 bytes, as the disk quota of the PostgreSQL rules.

``cost_storage_growth_bytes_per_day`` comes from the sizes this collector saw within
``growth_window`` (kept in memory: a restarted daemon needs two cycles before it reports).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from piggywatch.collectors.growth import qualified_name
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

__all__ = [
    "PRICES_CHECKED",
    "AssumedUsage",
    "CostBreakdown",
    "CostCollector",
    "CostConfig",
    "CostModel",
    "InvocationsTable",
    "Usage",
    "UsersTable",
    "billing_cycle",
    "estimate",
]

GB = 1024 ** 3
DAY = 86400.0
# Supabase makes a project read-only when its disk is 95% full.
READ_ONLY_AT = 0.95
# When the defaults below were checked against supabase.com/pricing and the billing docs
# (docs/guides/platform/billing-on-supabase, manage-your-usage/*).
PRICES_CHECKED = "2026-11-25"

_IDENT = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"
_COLUMN = r"^[A-Za-z_][A-Za-z0-9_$]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CostModel(_Strict):
    """Plan price, included quotas and unit prices; defaults: Supabase Pro, see PRICES_CHECKED.

    Override any figure for another plan, a negotiated contract or a price change.
    """

    plan_dollars_per_month: float = Field(default=25.0, ge=0)
    # Compute beyond the plan's $10 compute credit (which covers one Micro instance).
    compute_dollars_per_month: float = Field(default=0.0, ge=0)
    disk_included_gb: float = Field(default=8.0, ge=0)
    disk_dollars_per_gb_month: float = Field(default=0.125, ge=0)
    file_storage_included_gb: float = Field(default=100.0, ge=0)
    file_storage_dollars_per_gb_month: float = Field(default=0.021, ge=0)
    egress_included_gb: float = Field(default=250.0, ge=0)
    egress_dollars_per_gb: float = Field(default=0.09, ge=0)
    invocations_included: float = Field(default=2_000_000, ge=0)
    invocations_dollars_per_million: float = Field(default=2.0, ge=0)
    mau_included: float = Field(default=100_000, ge=0)
    mau_dollars_each: float = Field(default=0.00325, ge=0)


class UsersTable(_Strict):
    """Where monthly active users are counted (users signed in since the cycle began)."""

    table: str = Field(default="auth.users", pattern=_IDENT)
    last_sign_in_column: str = Field(default="last_sign_in_at", pattern=_COLUMN)


class InvocationsTable(_Strict):
    """A table with one row per edge-function invocation."""

    table: str = Field(default="edge_functions_logs", pattern=_IDENT)
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)


class AssumedUsage(_Strict):
    """Usage the database cannot see, as estimates (for example from the Supabase dashboard)."""

    file_storage_gb: float = Field(default=0.0, ge=0)
    egress_gb_per_month: float = Field(default=0.0, ge=0)


class CostConfig(_Strict):
    """Cost and budget of one target's project."""

    target: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    enabled: bool = True
    interval: Duration = 300.0
    timeout: Duration = 10.0
    monthly_budget_dollars: float = Field(gt=0)
    model: CostModel = CostModel()
    # The day of the month the billing cycle starts (UTC); Supabase anchors it to the day
    # the subscription began. Up to 28 so every month has that day.
    billing_cycle_day: int = Field(default=1, ge=1, le=28)
    # The provisioned disk; Supabase makes the project read-only at 95% of it.
    disk_quota_gb: float = Field(default=8.0, gt=0)
    users: UsersTable | None = UsersTable()
    invocations: InvocationsTable | None = None
    assumed_usage: AssumedUsage = AssumedUsage()
    growth_window: Duration = DAY


@dataclass(frozen=True, slots=True)
class Usage:
    """What the project used: sizes now, counts since the billing cycle began."""

    disk_bytes: float
    mau: float
    invocations: float
    file_storage_gb: float = 0.0
    egress_gb: float = 0.0


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Dollars per billed item, so far in the cycle and projected to its end."""

    month_to_date: dict[str, float]
    projected: dict[str, float]

    @property
    def month_to_date_total(self) -> float:
        """Everything spent so far in the cycle."""
        return sum(self.month_to_date.values())

    @property
    def projected_total(self) -> float:
        """The expected bill of the whole cycle."""
        return sum(self.projected.values())


def billing_cycle(now: float, day: int) -> tuple[float, float]:
    """Start and end (epoch seconds, UTC) of the billing cycle holding ``now``."""
    at = datetime.fromtimestamp(now, UTC)
    year, month = at.year, at.month
    if at.day < day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    start = datetime(year, month, day, tzinfo=UTC)
    end = datetime(year + 1, 1, day, tzinfo=UTC) if month == 12 else datetime(
        year, month + 1, day, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def estimate(model: CostModel, usage: Usage, elapsed: float, disk_quota_gb: float
             ) -> CostBreakdown:
    """Price ``usage`` after ``elapsed`` (0..1) of the cycle; see the module docstring."""
    f = min(1.0, max(elapsed, 0.0))

    def over(used: float, included: float) -> float:
        return max(0.0, used - included)

    def invocations(count: float) -> float:
        packages = math.ceil(over(count, model.invocations_included) / 1e6)
        return packages * model.invocations_dollars_per_million

    def counted(count: float, included: float, price: float) -> float:
        return over(count, included) * price

    disk_gb = max(disk_quota_gb, usage.disk_bytes / GB)
    disk = over(disk_gb, model.disk_included_gb) * model.disk_dollars_per_gb_month
    storage = (over(usage.file_storage_gb, model.file_storage_included_gb)
               * model.file_storage_dollars_per_gb_month)
    scale = 1.0 / f if f > 0 else 0.0
    fixed = {"plan": model.plan_dollars_per_month, "compute": model.compute_dollars_per_month}
    so_far = fixed | {
        "disk": disk * f,
        "file_storage": storage * f,
        "egress": counted(usage.egress_gb, model.egress_included_gb,
                          model.egress_dollars_per_gb),
        "invocations": invocations(usage.invocations),
        "mau": counted(usage.mau, model.mau_included, model.mau_dollars_each),
    }
    projected = fixed | {
        "disk": disk,
        "file_storage": storage,
        "egress": counted(usage.egress_gb * scale, model.egress_included_gb,
                          model.egress_dollars_per_gb),
        "invocations": invocations(usage.invocations * scale),
        "mau": counted(usage.mau * scale, model.mau_included, model.mau_dollars_each),
    }
    return CostBreakdown(so_far, projected)


_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("cost_month_to_date_dollars", _G, "Spent so far in the billing cycle"),
    MetricSpec("cost_projected_month_dollars", _G,
               "Expected bill of the billing cycle (usage so far projected linearly)"),
    MetricSpec("cost_projected_item_dollars", _G, "Expected bill of the cycle by item"),
    MetricSpec("cost_monthly_budget_dollars", _G, "The configured monthly budget"),
    MetricSpec("cost_budget_ratio", _G, "Projected bill / monthly budget"),
    MetricSpec("cost_per_active_user_dollars", _G,
               "Projected bill / users who signed in within the last 30 days"),
    MetricSpec("cost_billing_cycle_elapsed_ratio", _G, "Share of the billing cycle elapsed"),
    MetricSpec("cost_usage_disk_bytes", _G, "Size of all databases"),
    MetricSpec("cost_usage_mau", _G, "Users who signed in since the billing cycle began"),
    MetricSpec("cost_usage_function_invocations", _G,
               "Edge-function invocations since the billing cycle began"),
    MetricSpec("cost_storage_growth_bytes_per_day", _G,
               "Growth of the databases' size per day, over the growth window"),
    MetricSpec("cost_disk_quota_ratio", _G, "Size of all databases / provisioned disk"),
    MetricSpec("cost_disk_read_only_eta_seconds", _G,
               "Time until the databases fill 95% of the disk at the current growth "
               "(absent when not growing)"),
)

_SIZE = sql.SQL("SELECT sum(pg_database_size(oid))::float8 FROM pg_database")
_MAU = sql.SQL("SELECT count(*) FILTER (WHERE {seen} >= %(start)s), "
               "count(*) FILTER (WHERE {seen} > now() - interval '30 days') "
               "FROM {users} WHERE {seen} >= least(%(start)s, now() - interval '30 days')")
_INVOCATIONS = sql.SQL("SELECT count(*) FROM {logs} WHERE {created} >= %(start)s")


class CostCollector:
    """The month's bill so far and projected, against the budget, and the disk's runway."""

    name = "cost"

    def __init__(self, target: PostgresTarget, config: CostConfig) -> None:
        self._target = target
        self._config = config
        self._sizes: deque[tuple[float, float]] = deque()
        self._mau_query = None if config.users is None else _MAU.format(
            seen=sql.Identifier(config.users.last_sign_in_column),
            users=qualified_name(config.users.table))
        self._invocations_query = None if config.invocations is None else _INVOCATIONS.format(
            created=sql.Identifier(config.invocations.created_at_column),
            logs=qualified_name(config.invocations.table))

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One cycle: read usage, price it, and compare with the budget and the disk."""
        config = self._config
        start, end = billing_cycle(now, config.billing_cycle_day)
        params = {"start": datetime.fromtimestamp(start, UTC)}
        mau = active_30d = invocations = None
        with self._target.session(config.timeout) as db:
            (disk_bytes,), = db.fetch(_SIZE)
            if self._mau_query is not None:
                (mau, active_30d), = db.fetch(self._mau_query, params)
            if self._invocations_query is not None:
                (invocations,), = db.fetch(self._invocations_query, params)
        disk_bytes = float(disk_bytes or 0.0)
        usage = Usage(disk_bytes=disk_bytes, mau=float(mau or 0), invocations=float(
            invocations or 0), file_storage_gb=config.assumed_usage.file_storage_gb)
        length = end - start
        # Never less than a day elapsed: see the module docstring.
        elapsed = max(now - start, DAY) / length
        # Egress is assumed evenly spread, so what is "used so far" is its share of a month.
        usage = Usage(usage.disk_bytes, usage.mau, usage.invocations, usage.file_storage_gb,
                      config.assumed_usage.egress_gb_per_month * elapsed)
        cost = estimate(config.model, usage, elapsed, config.disk_quota_gb)

        def sample(name: str, value: float, **labels: str) -> Sample:
            return Sample(name, labels_of(labels), float(value), now)

        budget = config.monthly_budget_dollars
        projected = cost.projected_total
        out = [
            sample("cost_month_to_date_dollars", cost.month_to_date_total),
            sample("cost_projected_month_dollars", projected),
            sample("cost_monthly_budget_dollars", budget),
            sample("cost_budget_ratio", projected / budget),
            sample("cost_billing_cycle_elapsed_ratio", min(1.0, (now - start) / length)),
            sample("cost_usage_disk_bytes", disk_bytes),
        ]
        out += [sample("cost_projected_item_dollars", dollars, item=item)
                for item, dollars in sorted(cost.projected.items())]
        if mau is not None:
            out.append(sample("cost_usage_mau", float(mau)))
            if active_30d:
                out.append(sample("cost_per_active_user_dollars", projected / active_30d))
        if invocations is not None:
            out.append(sample("cost_usage_function_invocations", float(invocations)))
        quota = config.disk_quota_gb * GB
        out.append(sample("cost_disk_quota_ratio", disk_bytes / quota))
        growth = self._growth_per_day(now, disk_bytes)
        if growth is not None:
            out.append(sample("cost_storage_growth_bytes_per_day", growth))
            left = READ_ONLY_AT * quota - disk_bytes
            if left <= 0:
                out.append(sample("cost_disk_read_only_eta_seconds", 0.0))
            elif growth > 0:
                out.append(sample("cost_disk_read_only_eta_seconds", left / growth * DAY))
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
