"""Pricing a billing cycle the way Supabase bills it: pure functions of usage and time.

How each item is counted and projected (``f`` is the share of the cycle elapsed):

- **Plan fee**: billed in advance, once per organization: in full from the first day.
- **Compute**: billed hourly in arrears, so month to date it is ``compute * f``; the
  organization's compute credit is taken off the running total (never below zero).
- **Add-ons** (custom domain, IPv4, PITR, log drains, ...): a configured monthly sum, accrued
  like compute (``* f``), outside the spend cap.
- **Sizes** (provisioned disk, file storage): billed per GB-hour over the included size, so
  the current excess costs ``excess * price * f`` so far and ``excess * price`` for the cycle.
- **Counted usage** (uncached and cached egress, invocations): the cycle's usage so far divided
  by ``f``, priced over its quota. Invocations are billed in whole millions.
- **Monthly active users** are a distinct count, not a sum: dividing the users seen so far by
  ``f`` explodes early in a cycle, when most regular users have not come back yet. The
  projection is :func:`project_mau`.
- **Spend cap** (on by default for Pro): the capped items (:data:`~.prices.CAPPED_ITEMS`)
  cost nothing over their quota; the service is restricted instead, so their quota ratio is
  what to watch.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from piggywatch.collectors.cost.prices import CAPPED_ITEMS, SUPABASE_PRO

__all__ = [
    "DAY",
    "GB",
    "Billing",
    "CostBreakdown",
    "CostModel",
    "Usage",
    "billing_cycle",
    "estimate",
    "project_mau",
]

GB = 1024 ** 3
DAY = 86400.0


def _pro(name: str) -> float:
    return SUPABASE_PRO[name].value


class CostModel(BaseModel):
    """Prices, quotas and billing rules; defaults: Supabase Pro (see ``prices.py``).

    Override any figure for another plan, a negotiated contract or a price change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    plan_dollars_per_month: float = Field(default=_pro("plan_dollars_per_month"), ge=0)
    """The plan's monthly price."""
    compute_dollars_per_month: float = Field(default=_pro("compute_dollars_per_month"), ge=0)
    """The project's compute per month (Micro: $10), billed hourly in arrears."""
    compute_credit_dollars_per_month: float = Field(
        default=_pro("compute_credit_dollars_per_month"), ge=0)
    """Compute credits of the organization per month, taken off its compute once."""
    disk_included_gb: float = Field(default=_pro("disk_included_gb"), ge=0)
    """Disk included in the plan."""
    disk_dollars_per_gb_month: float = Field(default=_pro("disk_dollars_per_gb_month"), ge=0)
    """Price of disk beyond the included size."""
    disk_autoscale_at_ratio: float = Field(default=_pro("disk_autoscale_at_ratio"), gt=0, le=1)
    """The disk grows when its usage reaches this share of its size."""
    disk_autoscale_growth_ratio: float = Field(
        default=_pro("disk_autoscale_growth_ratio"), gt=0)
    """Each growth adds this share of the size."""
    disk_read_only_at_ratio: float = Field(default=_pro("disk_read_only_at_ratio"), gt=0, le=1)
    """The project turns read-only at this share of the disk when it cannot grow."""
    disk_changes_per_day: int = Field(default=int(_pro("disk_changes_per_day")), ge=0)
    """Disk size changes allowed in any rolling 24 hours."""
    file_storage_included_gb: float = Field(default=_pro("file_storage_included_gb"), ge=0)
    """File storage included in the plan."""
    file_storage_dollars_per_gb_month: float = Field(
        default=_pro("file_storage_dollars_per_gb_month"), ge=0)
    """Price of file storage beyond it."""
    egress_included_gb: float = Field(default=_pro("egress_included_gb"), ge=0)
    """Egress included per month."""
    egress_dollars_per_gb: float = Field(default=_pro("egress_dollars_per_gb"), ge=0)
    """Price of egress beyond it."""
    cached_egress_included_gb: float = Field(default=_pro("cached_egress_included_gb"), ge=0)
    """Cached egress (CDN cache hits) included per month."""
    cached_egress_dollars_per_gb: float = Field(
        default=_pro("cached_egress_dollars_per_gb"), ge=0)
    """Price of cached egress beyond it."""
    invocations_included: float = Field(default=_pro("invocations_included"), ge=0)
    """Edge-function invocations included per month."""
    invocations_dollars_per_million: float = Field(
        default=_pro("invocations_dollars_per_million"), ge=0)
    """Price per million invocations beyond them."""
    mau_included: float = Field(default=_pro("mau_included"), ge=0)
    """Monthly active users included."""
    mau_dollars_each: float = Field(default=_pro("mau_dollars_each"), ge=0)
    """Price of each monthly active user beyond them."""


@dataclass(frozen=True, slots=True)
class Billing:
    """How this project is billed beyond the price list."""

    spend_cap: bool = True
    # The organization's plan fee and compute credit are counted on this project.
    organization_fees: bool = True
    addons_dollars_per_month: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """What the project used: sizes now, counts since the billing cycle began."""

    disk_bytes: float
    disk_provisioned_gb: float
    mau: float
    mau_projected: float
    invocations: float
    file_storage_gb: float = 0.0
    egress_gb: float = 0.0
    cached_egress_gb: float = 0.0


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Dollars per billed item so far and projected, and each capped quota's use so far."""

    month_to_date: dict[str, float]
    projected: dict[str, float]
    quota_ratio: dict[str, float]

    @property
    def month_to_date_total(self) -> float:
        """Everything spent so far in the cycle."""
        return sum(self.month_to_date.values())

    @property
    def projected_total(self) -> float:
        """The expected bill of the whole cycle."""
        return sum(self.projected.values())


def _anchor(year: int, month: int, day: int) -> datetime:
    """The cycle's start in that month: ``day``, or the month's last day when it is shorter."""
    return datetime(year, month, min(day, calendar.monthrange(year, month)[1]), tzinfo=UTC)


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + by
    return index // 12, index % 12 + 1


def billing_cycle(now: float, day: int) -> tuple[float, float]:
    """Start and end (epoch seconds) of the cycle holding ``now``, anchored on ``day`` (UTC).

    The anchor is the organization's creation day (1-31); in a shorter month the cycle
    starts on its last day: anchored on the 31st, cycles start on Jan 31, Feb 28, Mar 31.
    """
    if not 1 <= day <= 31:
        raise ValueError(f"billing cycle day {day} is not between 1 and 31")
    at = datetime.fromtimestamp(now, UTC)
    start = _anchor(at.year, at.month, day)
    if at < start:
        end = start
        start = _anchor(*_shift(at.year, at.month, -1), day)
    else:
        end = _anchor(*_shift(at.year, at.month, 1), day)
    return start.timestamp(), end.timestamp()


def project_mau(so_far: float, active_30d: float, signups_7d: float, days_left: float
                ) -> float:
    """Distinct active users expected at the end of the cycle.

    The users active in the last 30 days are a full cycle's worth of regular users, so the
    cycle will see at least those, or the ones already seen if more; signups keep arriving at
    the last week's pace until the cycle ends. Never a division by the elapsed share.
    """
    return max(so_far, active_30d) + signups_7d / 7.0 * max(days_left, 0.0)


def estimate(model: CostModel, usage: Usage, elapsed: float, billing: Billing = Billing()
             ) -> CostBreakdown:
    """Price ``usage`` after ``elapsed`` (0..1) of the cycle; see the module docstring."""
    f = min(1.0, max(elapsed, 0.0))
    scale = 1.0 / f if f > 0 else 0.0

    def over(used: float, included: float) -> float:
        return max(0.0, used - included)

    def invocations(count: float) -> float:
        packages = math.ceil(over(count, model.invocations_included) / 1e6)
        return packages * model.invocations_dollars_per_million

    def compute(share: float) -> float:
        credit = model.compute_credit_dollars_per_month if billing.organization_fees else 0.0
        return max(0.0, model.compute_dollars_per_month * share - credit)

    disk_gb = max(usage.disk_provisioned_gb, usage.disk_bytes / GB)
    disk = over(disk_gb, model.disk_included_gb) * model.disk_dollars_per_gb_month
    storage = (over(usage.file_storage_gb, model.file_storage_included_gb)
               * model.file_storage_dollars_per_gb_month)

    def egress(gb: float) -> float:
        return over(gb, model.egress_included_gb) * model.egress_dollars_per_gb

    def cached(gb: float) -> float:
        return over(gb, model.cached_egress_included_gb) * model.cached_egress_dollars_per_gb

    def mau(count: float) -> float:
        return over(count, model.mau_included) * model.mau_dollars_each

    plan = model.plan_dollars_per_month if billing.organization_fees else 0.0
    addons = billing.addons_dollars_per_month
    so_far = {
        "plan": plan, "compute": compute(f), "addons": addons * f,
        "disk": disk * f, "file_storage": storage * f,
        "egress": egress(usage.egress_gb), "cached_egress": cached(usage.cached_egress_gb),
        "invocations": invocations(usage.invocations), "mau": mau(usage.mau),
    }
    projected = {
        "plan": plan, "compute": compute(1.0), "addons": addons,
        "disk": disk, "file_storage": storage,
        "egress": egress(usage.egress_gb * scale),
        "cached_egress": cached(usage.cached_egress_gb * scale),
        "invocations": invocations(usage.invocations * scale), "mau": mau(usage.mau_projected),
    }
    if billing.spend_cap:
        for item in CAPPED_ITEMS:
            so_far[item] = projected[item] = 0.0
    used = {"disk": (usage.disk_bytes / GB, model.disk_included_gb),
            "file_storage": (usage.file_storage_gb, model.file_storage_included_gb),
            "egress": (usage.egress_gb, model.egress_included_gb),
            "cached_egress": (usage.cached_egress_gb, model.cached_egress_included_gb),
            "invocations": (usage.invocations, model.invocations_included),
            "mau": (usage.mau, model.mau_included)}
    ratios = {item: amount / included for item, (amount, included) in used.items()
              if included > 0}
    return CostBreakdown(so_far, projected, ratios)
