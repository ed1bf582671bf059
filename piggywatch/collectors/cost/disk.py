"""The provisioned disk as Supabase's autoscaler moves it, and when the project turns read-only.

Supabase's rules (``prices.py``, doc ``database-size``): the disk grows by 50 % when its usage
(databases + WAL + system files) reaches 90 % of its size, at most 4 size changes in any
rolling 24 hours; when it cannot grow (the 4 changes are used, or the spend cap forbids a
size over the included disk), the project turns read-only at 95 %.

The collector cannot see the provisioned size from SQL, so :class:`ProvisionedDisk` starts at
the configured size and applies the same rules to the usage it observes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from piggywatch.collectors.cost.model import DAY, GB, CostModel

__all__ = ["DiskRules", "ProvisionedDisk", "read_only_eta"]

# How far ahead the read-only forecast looks; beyond it the metric is absent.
HORIZON = 366 * DAY


@dataclass(frozen=True, slots=True)
class DiskRules:
    """The autoscaler's rules; ``max_bytes`` is the size it may not pass (None: no limit)."""

    autoscale_at: float
    growth: float
    read_only_at: float
    changes_per_day: int
    max_bytes: float | None

    @classmethod
    def of(cls, model: CostModel, spend_cap: bool) -> DiskRules:
        """The rules of ``model``; with the spend cap the disk stays within the included size."""
        return cls(model.disk_autoscale_at_ratio, model.disk_autoscale_growth_ratio,
                   model.disk_read_only_at_ratio, model.disk_changes_per_day,
                   model.disk_included_gb * GB if spend_cap else None)

    def can_grow(self, size: float) -> bool:
        """Whether a disk of ``size`` bytes may grow once more (ignoring the change budget)."""
        return self.max_bytes is None or size * (1 + self.growth) <= self.max_bytes + 1.0

    def next_change_at(self, changes: list[float], at: float) -> float:
        """The earliest time from ``at`` at which a size change is allowed."""
        recent = sorted(c for c in changes if c > at - DAY)
        if self.changes_per_day <= 0:
            return math.inf
        if len(recent) < self.changes_per_day:
            return at
        return recent[len(recent) - self.changes_per_day] + DAY


def read_only_eta(used: float, growth_per_second: float, size: float, changes: list[float],
                  now: float, rules: DiskRules) -> float | None:
    """Seconds until the project turns read-only at the current growth, None if not within
    a year. The disk keeps growing as the autoscaler allows (``changes``: past change times)."""
    history = list(changes)
    at = now
    for _ in range(256):
        if used >= rules.read_only_at * size:
            return at - now
        if growth_per_second <= 0:
            return None
        read_only = at + (rules.read_only_at * size - used) / growth_per_second
        trigger = at + max(0.0, (rules.autoscale_at * size - used) / growth_per_second)
        change = rules.next_change_at(history, trigger) if rules.can_grow(size) else math.inf
        if read_only <= change:
            return read_only - now if read_only - now <= HORIZON else None
        if change - now > HORIZON:
            return None
        used += growth_per_second * (change - at)
        at = change
        size *= 1 + rules.growth
        history.append(at)
    return None


class ProvisionedDisk:
    """The disk size, grown as Supabase's autoscaler would from the usage seen each cycle."""

    def __init__(self, size_bytes: float, rules: DiskRules) -> None:
        self.size = size_bytes
        self.rules = rules
        self.changes: deque[float] = deque()

    def observe(self, used: float, now: float) -> float:
        """Apply the autoscaler to ``used`` bytes at ``now``; return the size afterwards."""
        rules = self.rules
        while self.changes and self.changes[0] <= now - DAY:
            self.changes.popleft()
        while (used >= rules.autoscale_at * self.size and rules.can_grow(self.size)
               and rules.next_change_at(list(self.changes), now) <= now):
            self.size *= 1 + rules.growth
            self.changes.append(now)
        return self.size

    def changes_last_day(self) -> int:
        """Size changes within the last rolling 24 hours."""
        return len(self.changes)
