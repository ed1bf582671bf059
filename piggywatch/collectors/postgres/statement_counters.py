"""Counters that follow pg_stat_statements across snapshots, through resets and evictions.

Pure bookkeeping (no database): the statements collector feeds it one snapshot per cycle
and gets back what each statement did in the interval. An exported counter is the
statement's value when first seen plus the sum of its non-negative interval deltas, so it
starts at pg_stat_statements' own value (as postgres_exporter's does) and never goes down.
It is kept as "current value in the view + offset", where the offset, almost always zero,
absorbs what resets and evictions took away: statements that did nothing in an interval
then cost nothing at all.

Each entry's key (dbid, userid, queryid, toplevel) is held as one int (``_KEY``), not a
tuple of four: ~50 bytes an entry instead of ~170 (the tuple and its three int objects,
the key columns being arrays), for the thousands of entries the view holds all the time.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from enum import Enum
from itertools import compress, filterfalse, repeat, starmap
from operator import add, ne, sub
from typing import Any

from piggywatch.collectors.postgres.statement_snapshot import (
    ARRAY_HEADER,
    ZERO,
    Counters,
    Group,
    HeldKeys,
    Key,
    KeyColumns,
    Snapshot,
    runs,
)

# The key columns as PostgreSQL sends them (binary arrays, see statement_snapshot): a header,
# then each element as its length (4 bytes) and its value, big-endian.
_KEY_ELEMENTS = tuple(struct.Struct(f">i{code}") for code in ("I", "I", "q", "?"))
_WIDTHS = tuple(element.size for element in _KEY_ELEMENTS)
_QUERYID_COLUMN = 2
# A key packed into one int: its bytes in this layout (see ``_packed``).
_KEY = struct.Struct(">IIq?")
# Entries added, gone or moved that the merge handles one by one before it gives up for the
# full matching by key: about what that costs, per entry of the view (and a floor, so that
# small views take the merge too).
_EDITS_PER_ENTRY = 1 / 64
_MIN_EDITS = 8

# One step of the merge of a snapshot's entries with the previous one's, (start, at, length,
# key): ``length`` entries from new position ``start`` on are the entries from old position
# ``at`` on (a run: key None), or the single entry at ``start`` has ``key`` and was at ``at``
# (the old length when it is new).
_Step = tuple[int, int, int, Key | None]


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
        # The position of each key (packed, see ``_packed``) in the snapshot. Keys by position
        # are not kept: the snapshot's key columns hold them, packed where needed.
        self._index: dict[int, int] = {}
        # Per group: what was lost to resets and evictions, added back to its counters.
        self._offsets: dict[Group, Counters] = {}
        # The groups whose last entry left the view in the last advance (evicted or reset
        # alone); after a FIRST, RESET or UNKNOWN advance, unknown (empty).
        self.gone: set[Group] = set()
        # The groups of the entries the last advance_read found with other counters than
        # before (new ones included): only their totals can have changed. Not only those
        # with deltas (one evicted and back with the same calls has other counters), nor
        # every entry read (most may have only moved).
        self.touched: list[Group] = []

    def __len__(self) -> int:
        return len(self._snap)

    def __contains__(self, group: object) -> bool:
        if not isinstance(group, tuple) or len(group) != 3:
            return False
        return _pack((*group, True)) in self._index or _pack((*group, False)) in self._index

    def advance(self, snap: Snapshot, continuity: Continuity) -> dict[Group, Counters]:
        """Take the next snapshot; return the interval's deltas of the groups that changed.

        Runs over every entry, so the work on unchanged entries is done column by column in
        C (list comparisons, ``map``, ``compress``); Python looks only at changed entries.
        """
        prev, self._snap = self._snap, snap
        self.gone = set()
        if continuity is Continuity.FIRST:
            self._index = _index_of(snap)
            self._offsets = {}
            return {}
        if continuity is not Continuity.CONTINUES:
            return self._rebase(prev, snap, continuity)

        # An entry changed if its calls did: every execution adds one, and whatever else it
        # adds (time, rows) comes with it. (Were a change ever missed, the next delta of that
        # entry would include it: deltas are against the last values looked at.)
        if snap.keys.raw is not None and snap.keys.raw == prev.keys.raw:
            # The same entries in the same order (the usual case): compare in place.
            snap.keys = prev.keys  # already decoded
            changed = list(compress(range(len(snap)), map(ne, snap.calls, prev.calls)))
            return self._deltas(snap, prev, changed, changed)
        steps = self._merge(snap, prev)
        if steps is not None:
            changed, then, departed = self._follow(snap, prev, steps)
        else:
            changed, then, departed = self._match(snap, prev)
        deltas = self._deltas(snap, prev, changed, then)
        if departed:
            self._forget_departed(prev, departed)
        return deltas

    def advance_read(self, positions: list[int], keys: KeyColumns, counters: list[list[Any]],
                     size: int, continuity: Continuity) -> dict[Group, Counters]:
        """Take the next snapshot as a read of what changed; return what ``advance`` does.

        ``positions`` (ascending, from 0) are those where the view's entry differs from the
        last snapshot's entry there, by key or by calls, and every position past the last
        snapshot's end; ``keys`` and ``counters`` are their columns; the view has ``size``
        entries. Every other position holds the entry it held, with the same counters (an
        entry changes only when its calls do). Costs what the read holds, not the view:
        the snapshot is patched in place. Other continuities than CONTINUES need the whole
        view (``positions`` every one).
        """
        if continuity is not Continuity.CONTINUES:
            self.touched = list(zip(*keys[:3], strict=True))
            if len(positions) != size:
                raise ValueError("a reset or first snapshot needs the whole view")
            return self.advance(Snapshot.of_lists(keys, counters), continuity)
        snap, index = self._snap, self._index
        pn = len(snap)
        if len(index) != pn:  # the same key twice: only matching every entry copes
            self.touched = list(zip(*keys[:3], strict=True))
            whole = _patched(snap, positions, keys, counters, size)
            return self.advance(whole, continuity)
        self.gone = set()
        key_columns = snap.keys.decoded
        columns = [column.all() for column in snap.columns]
        new_keys = _packed(zip(*keys, strict=True))
        # Where each entry read was (pn: not there), and its counters there (None: new).
        # An insertion shifts every entry after it, so most entries read may have only
        # moved: everything per entry is done column by column in C.
        at = list(map(index.get, new_keys, repeat(pn)))
        then: list[list[Any]] = []
        for column in columns:
            column.append(0)  # at position pn, for a moment: no copy of the column
            then.append(list(map(column.__getitem__, at)))
            column.pop()
        fresh = list(compress(range(len(at)), map(pn.__eq__, at)))
        for before_values in then:
            deque(map(before_values.__setitem__, fresh, repeat(None)), maxlen=0)
        # Deltas for the entries whose calls changed; totals for those whose counters did
        # (one evicted and back with the same calls has other counters).
        changed = list(compress(range(len(at)), map(ne, counters[0], then[0])))
        differs = map(ne, zip(*counters, strict=True), zip(*then, strict=True))
        self.touched = _groups_at(keys, list(compress(range(len(at)), differs)))
        groups = _groups_at(keys, changed)
        now = [list(map(column.__getitem__, changed)) for column in counters]
        before = [list(map(column.__getitem__, changed)) for column in then]
        added = len(fresh)
        if added:  # a new entry's counters before are zeros
            before = [[0 if value is None else value for value in column] for column in before]
        # Entries that left: as many as were there, plus the new ones, minus the view's
        # size. Only then are they looked for: overwritten at their position or cut off at
        # the end, and not elsewhere.
        departed: list[tuple[Group, Counters]] = []
        if pn + added > size:
            within = positions[:bisect_left(positions, pn)]
            old = _keys_at(key_columns, within)
            out = list(compress(old, map(ne, old, new_keys)))
            out += _keys_at(key_columns, range(size, pn))
            left = list(filterfalse(set(new_keys).__contains__, out))
            departed = [(snap.group(position), tuple(column[position] for column in columns))
                        for position in map(index.__getitem__, left)]
            for key in left:
                del index[key]
        targets: list[array[Any]] = [*key_columns, *columns]
        sources: list[Sequence[Any]] = [*keys, *counters]
        spans = runs(positions)
        for column, values in zip(targets, sources, strict=True):
            _patch(column, positions, spans, values, size)
        index.update(zip(new_keys, positions, strict=True))
        snap.keys.raw = None  # the arrays are the truth now
        deltas = self._deltas_of(groups, now, before)
        if departed:
            self._forget(departed)
        return deltas

    def _match(self, snap: Snapshot, prev: Snapshot) -> tuple[list[int], list[int], list[int]]:
        """Match every entry by key: which changed, where they were, which departed.

        Whatever the order of the entries; this builds the keys and the index afresh.
        """
        n, pn = len(snap), len(prev)
        keys = _packed(zip(*snap.keys.decoded, strict=True))
        old = list(map(self._index.get, keys, repeat(pn)))  # pn: not there before
        self._index = dict(zip(keys, range(n), strict=True))
        matched = set(old)
        matched.discard(pn)
        departed = list(filterfalse(matched.__contains__, range(pn))) \
            if len(matched) < pn else []
        # Position pn stands for "not there before": None compares as changed, and the 0
        # that columns read there makes a new entry's delta all that it has.
        calls_then = map([*prev.calls, None].__getitem__, old)
        changed = list(compress(range(n), map(ne, snap.calls, calls_then)))
        then = list(map(old.__getitem__, changed))
        return changed, then, departed

    def _merge(self, snap: Snapshot, prev: Snapshot) -> list[_Step] | None:
        """Align the entries with the previous snapshot's, if they kept their order.

        PostgreSQL lists the entries of pg_stat_statements in the order of its hash table,
        so from one snapshot to the next the entries that stay keep their order, with new
        ones slipped in between and evicted ones gone. The keys are compared as bytes, a
        run of entries at a time; only where runs break is an entry decoded and looked up.
        Gives the steps of the alignment (see ``_Step``), or None when it does not come
        out the same as matching every entry by key would (an entry moved back, a key
        appears twice) or would cost more (many entries came or went).
        """
        n, pn = len(snap), len(prev)
        new, old = snap.keys.raw, prev.keys.raw
        index = self._index
        if new is None or old is None:  # held as lists only (see advance_read)
            return None
        if not n or not pn or len(index) != pn:  # pn > len(index): duplicate keys
            return None
        for raw_new, raw_old in zip(new, old, strict=True):
            if len(raw_new) < ARRAY_HEADER.size or len(raw_old) < ARRAY_HEADER.size:
                return None
            ndim, has_nulls, _, size, _ = ARRAY_HEADER.unpack_from(raw_new)
            if ndim != 1 or has_nulls or size != n or ARRAY_HEADER.unpack_from(raw_old)[3] != pn:
                return None  # malformed, or not the length of the counters: not for a merge

        budget = max(_MIN_EDITS, int(n * _EDITS_PER_ENTRY))
        steps: list[_Step] = []
        i = j = 0  # next new and old position
        while i < n:
            length = _same_keys(new, old, i, j, min(n - i, pn - j)) if j < pn else 0
            if length:
                steps.append((i, j, length, None))
                i += length
                j += length
                continue
            budget -= 1
            if budget < 0:
                return None
            key = _key_at(new, i)
            at = index.get(_pack(key), pn)
            if at < j:
                return None  # moved back, or there twice: order not kept
            steps.append((i, at, 1, key))  # a new entry when at == pn
            i += 1
            j = at + 1 if at < pn else j
        return steps

    def _follow(self, snap: Snapshot, prev: Snapshot,
                steps: list[_Step]) -> tuple[list[int], list[int], list[int]]:
        """What ``_match`` gives, from the merge's steps: which entries changed, where they
        were, which departed.

        The keys, the index and the decoded key columns are carried over from the previous
        snapshot run by run; only the entries around insertions and departures are touched
        one by one (and the index entries of the runs that moved).
        """
        pn = len(prev)
        calls, calls_before = snap.calls, prev.calls
        index = self._index
        columns_before = prev.keys.decoded
        dbids, userids, queryids, toplevel = (array(column.typecode)
                                              for column in columns_before)
        columns: HeldKeys = (dbids, userids, queryids, toplevel)
        changed: list[int] = []
        then: list[int] = []
        departed: list[int] = []
        j = 0  # old entries before j are accounted for
        for start, at, length, key in steps:
            if key is None:
                end, old_end = start + length, at + length
                departed.extend(range(j, at))
                j = old_end
                here = list(compress(range(start, end),
                                     map(ne, calls[start:end], calls_before[at:old_end])))
                changed += here
                then += map((at - start).__add__, here) if at != start else here
                for column, column_before in zip(columns, columns_before, strict=True):
                    column += column_before[at:old_end]
                if at != start:
                    index.update(zip(_keys_at(columns_before, range(at, old_end)),
                                     range(start, end), strict=True))
                continue
            if at < pn:
                departed.extend(range(j, at))
                j = at + 1
                if calls[start] != calls_before[at]:
                    changed.append(start)
                    then.append(at)
            else:
                changed.append(start)
                then.append(pn)
            for column, value in zip(columns, key, strict=True):
                column.append(value)
            index[_pack(key)] = start
        departed.extend(range(j, pn))
        for packed in _keys_at(columns_before, departed):
            del index[packed]
        # What decoding the new bytes would give (runs are the old entries' bytes, the single
        # entries were decoded): set in place of decoding them all again.
        snap.keys.adopt_decoded(columns)
        return changed, then, departed

    def _deltas(self, snap: Snapshot, prev: Snapshot, changed: list[int],
                then: list[int]) -> dict[Group, Counters]:
        """Deltas of the entries at positions ``changed`` (``then`` before), by group.

        Column by column in C rather than entry by entry: a busy server changes thousands
        of entries per interval.
        """
        groups = _groups_at(snap.keys.decoded, changed)
        return self._deltas_of(groups, snap.columns_at(changed), prev.columns_at(then))

    def _deltas_of(self, groups: list[Group], now: list[list[Any]],
                   before: list[list[Any]]) -> dict[Group, Counters]:
        """Deltas of entries of ``groups`` from their counters ``before`` to ``now`` (column
        by column), by group; an entry that went down was reset alone."""
        diff = [list(map(sub, a, b)) for a, b in zip(now, before, strict=True)]
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
        top = list(map(index.get, _packed(map(add, groups, repeat((True,)))), repeat(missing)))
        found_top = snap.counters_at(top)
        # Nested entries exist only with pg_stat_statements.track = all.
        has_nested = False in snap.keys.decoded[3]
        out: list[Counters | None] = []
        if not (has_nested or offsets or missing in top):
            out += found_top  # the usual case: each group is its top-level entry
            return out
        for group, position, found in zip(groups, top, found_top, strict=True):
            nested = index.get(_pack((*group, False))) if has_nested else None
            if position == missing and nested is None:
                out.append(None)
                continue
            if nested is not None:
                found = _sum(found, snap.counters(nested))
            offset = offsets.get(group)
            out.append(found if offset is None else _sum(found, offset))
        return out

    def busiest_overall(self, n: int, exclude: Collection[Group]) -> list[Group]:
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
        self._forget([(prev.group(j), prev.counters(j)) for j in positions])

    def _forget(self, departed: list[tuple[Group, Counters]]) -> None:
        """Entries evicted (or reset one by one) left the view: keep what they counted."""
        offsets = self._offsets
        for group, counters in departed:
            if group in self:
                offsets[group] = _sum(offsets.get(group, ZERO), counters)
            else:
                offsets.pop(group, None)  # gone entirely; should it return, it starts afresh
                self.gone.add(group)


def _patch(column: array[Any], positions: list[int],
           spans: tuple[list[int], list[int], list[int]], values: Sequence[Any],
           size: int) -> None:
    """``column`` cut or grown to ``size``, with ``values`` at ``positions`` (which hold
    every position past the old end); ``spans``: ``runs(positions)``."""
    if size < len(column):
        del column[size:]
    elif size > len(column):
        column.extend(repeat(0, size - len(column)))  # each overwritten below
    firsts, lasts, at = spans
    if len(firsts) * 4 > len(positions):  # scattered: entry by entry is cheaper
        deque(map(column.__setitem__, positions, values), maxlen=0)
        return
    source = array(column.typecode, values)  # an array's slices take arrays of its type only
    for first, last, start in zip(firsts, lasts, at, strict=True):
        column[start:start + last - first] = source[first:last]


def _patched(snap: Snapshot, positions: list[int], keys: KeyColumns,
             counters: list[list[Any]], size: int) -> Snapshot:
    """A new snapshot: ``snap`` with the entries read patched in (see ``advance_read``)."""
    dbids, userids, queryids, toplevel = (column[:] for column in snap.keys.decoded)
    columns = [column.all()[:] for column in snap.columns]
    targets: list[array[Any]] = [dbids, userids, queryids, toplevel, *columns]
    sources: list[Sequence[Any]] = [*keys, *counters]
    spans = runs(positions)
    for column, values in zip(targets, sources, strict=True):
        _patch(column, positions, spans, values, size)
    return Snapshot.of_lists((dbids, userids, queryids, toplevel), columns)


def _groups_at(keys: KeyColumns | HeldKeys, positions: list[int]) -> list[Group]:
    """The groups (dbid, userid, queryid) of the entries at ``positions`` of ``keys``."""
    dbids, userids, queryids, _ = keys
    return list(zip(map(dbids.__getitem__, positions), map(userids.__getitem__, positions),
                    map(queryids.__getitem__, positions), strict=True))


def _index_of(snap: Snapshot) -> dict[int, int]:
    """The position of each key (the last, were one twice)."""
    keys = _packed(zip(*snap.keys.decoded, strict=True))
    return dict(zip(keys, range(len(snap)), strict=True))


def _keys_at(columns: HeldKeys, positions: Sequence[int]) -> list[int]:
    """The keys of the entries at ``positions`` of ``columns``, packed."""
    return _packed(zip(*(list(map(column.__getitem__, positions)) for column in columns),
                       strict=True))


def _packed(keys: Iterable[tuple[Any, ...]]) -> list[int]:
    """Each of ``keys`` packed into one int: it identifies the entry as the tuple does, in
    48 bytes. Toplevel flags may be bools or 0 and 1."""
    return list(map(int.from_bytes, starmap(_KEY.pack, keys)))


def _pack(key: Key) -> int:
    """One key packed (see ``_packed``)."""
    return int.from_bytes(_KEY.pack(*key))


def _same_keys(new: tuple[bytes, ...], old: tuple[bytes, ...], i: int, j: int,
               most: int) -> int:
    """How many entries from new position ``i`` on have the keys of the old entries from
    ``j`` on, up to ``most``.

    The queryids, nearly keys on their own, find the run; the other key columns are then
    compared over all of it at once (and only if they differ somewhere, entry by entry).
    """
    queryids = _QUERYID_COLUMN
    length = _same_run(new[queryids:queryids + 1], old[queryids:queryids + 1], i, j, most,
                       _WIDTHS[queryids:queryids + 1])
    if length and all(_same_entries(column, column_before, width, i, j, 0, length)
                      for column, column_before, width in zip(new, old, _WIDTHS, strict=True)):
        return length
    return _same_run(new, old, i, j, length, _WIDTHS) if length else 0


def _same_run(new: Sequence[bytes], old: Sequence[bytes], i: int, j: int, most: int,
              widths: Sequence[int]) -> int:
    """How many entries from ``i`` on in ``new`` columns are the ones from ``j`` on in
    ``old``, up to ``most``: compared as bytes, first the next entry, then all ``most``, then
    halves, so that the bytes looked at are a few times those of the run."""

    def same(a: int, b: int) -> bool:
        return all(_same_entries(column, column_before, width, i, j, a, b)
                   for column, column_before, width in zip(new, old, widths, strict=True))

    if not same(0, 1):
        return 0
    if same(1, most):
        return most
    known, end = 1, most  # the first ``known`` entries are the same; one up to ``end`` is not
    while end - known > 1:
        middle = (known + end) // 2
        if same(known, middle):
            known = middle
        else:
            end = middle
    return known


def _same_entries(column: bytes, column_before: bytes, width: int, i: int, j: int, a: int,
                  b: int) -> bool:
    """Whether entries ``i + a`` to ``i + b`` (excluded) of a key column are those from
    ``j + a`` of the previous snapshot's, byte for byte."""
    start = ARRAY_HEADER.size
    return (column[start + (i + a) * width:start + (i + b) * width]
            == column_before[start + (j + a) * width:start + (j + b) * width])


def _key_at(raw: tuple[bytes, ...], i: int) -> Key:
    """The key of entry ``i``, decoded from the key columns' bytes."""
    dbid, userid, queryid, toplevel = (
        element.unpack_from(column, ARRAY_HEADER.size + i * element.size)[1]
        for element, column in zip(_KEY_ELEMENTS, raw, strict=True))
    return dbid, userid, queryid, toplevel


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
