"""Counters that follow pg_stat_statements across snapshots, through resets and evictions.

Pure bookkeeping (no database): the statements collector feeds it one snapshot per cycle
and gets back what each statement did in the interval. An exported counter is the
statement's value when first seen plus the sum of its non-negative interval deltas, so it
starts at pg_stat_statements' own value (as postgres_exporter's does) and never goes down.
It is kept as "current value in the view + offset", where the offset, almost always zero,
absorbs what resets and evictions took away: statements that did nothing in an interval
then cost nothing at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from itertools import compress, filterfalse, repeat
from operator import ne, sub

from piggywatch.collectors.postgres.statement_snapshot import (
    ZERO,
    Counters,
    Group,
    Key,
    Snapshot,
)


class Continuity(Enum):
    """How a new snapshot relates to the previous one."""

    FIRST = "first"  # nothing to compare with: the values are the baseline
    CONTINUES = "continues"  # same epoch: delta = now - before, entry by entry
    RESET = "reset"  # the whole view was reset in between: delta = now
    UNKNOWN = "unknown"  # reset while the snapshot was read: keep counters, no deltas


class StatementCounters:
    """Exported counters and interval deltas of every statement in pg_stat_statements."""

    def __init__(self) -> None:
        self._snap = Snapshot.empty()
        self._index: dict[Key, int] = {}
        # Per group: what was lost to resets and evictions, added back to its counters.
        self._offsets: dict[Group, Counters] = {}

    def __len__(self) -> int:
        return len(self._snap)

    def __contains__(self, group: object) -> bool:
        if not isinstance(group, tuple) or len(group) != 3:
            return False
        return (*group, True) in self._index or (*group, False) in self._index

    def advance(self, snap: Snapshot, continuity: Continuity) -> dict[Group, Counters]:
        """Take the next snapshot; return the interval's deltas of the groups that changed.

        Runs over every entry, so the work on unchanged entries is done column by column in
        C (list comparisons, ``map``, ``compress``); Python looks only at changed entries.
        """
        prev, self._snap = self._snap, snap
        if continuity is Continuity.FIRST:
            self._index = _index_of(snap)
            self._offsets = {}
            return {}
        if continuity is not Continuity.CONTINUES:
            return self._rebase(prev, snap, continuity)

        n, pn = len(snap), len(prev)
        # An entry changed if its calls did: every execution adds one, and whatever else it
        # adds (time, rows) comes with it. (Were a change ever missed, the next delta of that
        # entry would include it: deltas are against the last values looked at.)
        calls = snap.calls
        if snap.keys.raw == prev.keys.raw:
            # The same entries in the same order (the usual case): compare in place.
            snap.keys = prev.keys  # already decoded
            changed = list(compress(range(n), map(ne, calls, prev.calls)))
            then = changed
            departed: list[int] = []
        else:
            keys = list(zip(*snap.keys.decoded, strict=True))
            old = list(map(self._index.get, keys, repeat(pn)))  # pn: not there before
            self._index = dict(zip(keys, range(n), strict=True))
            matched = set(old)
            matched.discard(pn)
            departed = list(filterfalse(matched.__contains__, range(pn))) \
                if len(matched) < pn else []
            # Position pn stands for "not there before": None compares as changed, and the 0
            # that columns read there makes a new entry's delta all that it has.
            calls_then = map([*prev.calls, None].__getitem__, old)
            changed = list(compress(range(n), map(ne, calls, calls_then)))
            then = list(map(old.__getitem__, changed))
        deltas = self._deltas(snap, prev, changed, then)
        if departed:
            self._forget_departed(prev, departed)
        return deltas

    def _deltas(self, snap: Snapshot, prev: Snapshot, changed: list[int],
                then: list[int]) -> dict[Group, Counters]:
        """Deltas of the entries at positions ``changed`` (``then`` before), by group.

        Column by column in C rather than entry by entry: a busy server changes thousands
        of entries per interval.
        """
        now = snap.columns_at(changed)
        before = prev.columns_at(then)
        diff = [list(map(sub, a, b)) for a, b in zip(now, before, strict=True)]
        dbids, userids, queryids, _ = snap.keys.decoded
        groups = list(zip(map(dbids.__getitem__, changed), map(userids.__getitem__, changed),
                          map(queryids.__getitem__, changed), strict=True))
        if any(min(column, default=0) < 0 for column in diff):
            offsets = self._offsets
            for k, group in enumerate(groups):
                if any(column[k] < 0 for column in diff):
                    # This entry alone was reset (or evicted and re-created): what it has
                    # now happened since, and what it had is kept in the offset.
                    for column, current in zip(diff, now, strict=True):
                        column[k] = current[k]
                    lost = tuple(column[k] for column in before)
                    offsets[group] = _sum(offsets.get(group, ZERO), lost)
        deltas = dict(zip(groups, zip(*diff, strict=True), strict=True))
        if len(deltas) < len(groups):
            # Both the top-level and the nested entry of a statement changed: add them up.
            deltas = {}
            for group, delta in zip(groups, zip(*diff, strict=True), strict=True):
                known = deltas.get(group)
                deltas[group] = delta if known is None else _sum(known, delta)
        return deltas

    def totals(self, groups: Sequence[Group]) -> list[Counters | None]:
        """The exported counters of each group, None for a group not in the view."""
        index, snap, offsets = self._index, self._snap, self._offsets
        missing = len(snap)  # a position that reads as zeros
        top = [index.get((*group, True), missing) for group in groups]
        # Nested entries exist only with pg_stat_statements.track = all.
        has_nested = False in snap.keys.decoded[3]
        out: list[Counters | None] = []
        for group, position, found in zip(groups, top, snap.counters_at(top), strict=True):
            nested = index.get((*group, False)) if has_nested else None
            if position == missing and nested is None:
                out.append(None)
                continue
            if nested is not None:
                found = _sum(found, snap.counters(nested))
            offset = offsets.get(group)
            out.append(found if offset is None else _sum(found, offset))
        return out

    def busiest_overall(self, n: int, exclude: set[Group]) -> list[Group]:
        """Up to ``n`` groups not in ``exclude``, most execution time in the view first."""
        snap, seen = self._snap, set(exclude)
        out: list[Group] = []
        exec_ms = snap.columns[1].all()
        for i in sorted(range(len(snap)), key=exec_ms.__getitem__, reverse=True):
            if len(out) >= n:
                break
            group = snap.group(i)
            if group not in seen:
                seen.add(group)
                out.append(group)
        return out

    def _rebase(self, prev: Snapshot, snap: Snapshot,
                continuity: Continuity) -> dict[Group, Counters]:
        """After a reset of the whole view: every counter carries on from where it was."""
        self._index = _index_of(snap)
        now, then = _group_sums(snap), _group_sums(prev)
        offsets: dict[Group, Counters] = {}
        for group, current in now.items():
            before = then.get(group)
            if before is None:
                continue  # first seen: its counter starts at its value
            counter = _sum(before, self._offsets.get(group, ZERO))
            if continuity is Continuity.RESET:
                offsets[group] = counter  # counter + what it has now
            else:
                offsets[group] = _sub(counter, current)  # unchanged: unknown what happened
        self._offsets = offsets
        return now if continuity is Continuity.RESET else {}

    def _forget_departed(self, prev: Snapshot, positions: list[int]) -> None:
        """Entries evicted (or reset one by one) left the view: keep what they counted."""
        offsets = self._offsets
        for j in positions:
            group = prev.group(j)
            if group in self:
                offsets[group] = _sum(offsets.get(group, ZERO), prev.counters(j))
            else:
                offsets.pop(group, None)  # gone entirely; should it return, it starts afresh


def _index_of(snap: Snapshot) -> dict[Key, int]:
    return dict(zip(zip(*snap.keys.decoded, strict=True), range(len(snap)), strict=True))


def _group_sums(snap: Snapshot) -> dict[Group, Counters]:
    sums: dict[Group, Counters] = {}
    counters = zip(*(column.all() for column in snap.columns), strict=True)
    for i, current in enumerate(counters):
        group = snap.group(i)
        before = sums.get(group)
        sums[group] = current if before is None else _sum(before, current)
    return sums


def _sum(a: Counters, b: Counters) -> Counters:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])


def _sub(a: Counters, b: Counters) -> Counters:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4])
