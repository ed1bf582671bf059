"""StatementCounters without a database: the merge of snapshots against matching by key.

``advance`` aligns a snapshot with the previous one by merging them in order when entries
only came and went, and matches every entry by key otherwise. ``ReferenceCounters`` below is
the implementation from before the merge, kept verbatim: whatever the snapshots (entries
added, evicted, moved, reset, duplicated, with and without nested entries), both must give
exactly the same deltas, totals and offsets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import compress, filterfalse, repeat
from operator import ne, sub
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.collectors.postgres import statement_counters
from piggywatch.collectors.postgres.statement_counters import Continuity, StatementCounters
from piggywatch.collectors.postgres.statement_snapshot import (
    COUNTER_CODES,
    ZERO,
    Counters,
    Group,
    Key,
    PackedColumn,
    PackedKeys,
    Snapshot,
)

# An entry of a test snapshot: its key and its counters.
Entry = tuple[Key, Counters]


def make_snapshot(entries: Sequence[Entry]) -> Snapshot:
    """The snapshot of ``entries``, packed as PostgreSQL sends them."""
    keys = [key for key, _ in entries]
    counters = [values for _, values in entries]
    columns = [list(column) for column in zip(*counters, strict=True)] or [[]] * 5
    return Snapshot(PackedKeys.of(*([list(c) for c in zip(*keys, strict=True)] or [[]] * 4)),
                    *(PackedColumn.of(values, code)
                      for values, code in zip(columns, COUNTER_CODES, strict=True)))


def observe(counters: StatementCounters | ReferenceCounters, deltas: dict[Group, Counters],
            groups: list[Group]) -> str:
    """Everything the collector can see, and the state behind it, as one string (repr keeps
    floats exact, -0.0 included, and dicts in their order)."""
    return repr((
        deltas, len(counters), [group in counters for group in groups],
        counters.totals(groups), counters.busiest_overall(5, set(groups[:2])),
        counters._offsets, index_of(counters),
    ))


def index_of(counters: StatementCounters | ReferenceCounters) -> list[tuple[Key, int]]:
    """The position of each key, keys as tuples (StatementCounters packs them)."""
    if isinstance(counters, ReferenceCounters):
        keys: list[Key] = list(counters._index)
    else:
        keys = [statement_counters._KEY.unpack(key.to_bytes(statement_counters._KEY.size,
                                                             "big"))
                for key in counters._index]
    return sorted(((dbid, userid, queryid, bool(toplevel)), position)
                  for (dbid, userid, queryid, toplevel), position
                  in zip(keys, counters._index.values(), strict=True))


def random_key(rng: random.Random) -> Key:
    """Few distinct groups, so that nested entries and returning statements are common."""
    queryid = rng.choice((rng.randint(0, 40), rng.randint(-2**63, 2**63 - 1)))
    return rng.choice((1, 16384)), rng.choice((10, 4_000_000_000)), queryid, rng.random() < 0.8


def random_counters(rng: random.Random) -> Counters:
    calls = rng.randint(0, 50)
    return (calls, rng.uniform(0, 100) * calls, rng.randint(0, 5) * calls,
            rng.choice((0.0, rng.uniform(0, 3))), rng.choice((0.0, rng.uniform(0, 3))))


def grown(rng: random.Random, values: Counters) -> Counters:
    """``values`` after the interval: mostly untouched, else run some more, or reset alone."""
    roll = rng.random()
    if roll < 0.6:
        return values
    if roll < 0.93:
        calls = rng.randint(1, 4)
        return (values[0] + calls, values[1] + rng.uniform(0, 7), values[2] + calls,
                values[3] + rng.choice((0.0, 0.25)), values[4])
    return random_counters(rng)  # this entry reset (or evicted and back), maybe not lower


def next_entries(rng: random.Random, entries: list[Entry], churn: int) -> list[Entry]:
    """The next snapshot: up to ``churn`` entries evicted and new ones slipped in, now and
    then an entry moved or duplicated or the whole order shuffled; counters moved on."""
    out = [(key, grown(rng, values)) for key, values in entries]
    present = {key for key, _ in out}
    for _ in range(rng.randint(0, churn)):
        if out and rng.random() < 0.5:
            present.discard(out.pop(rng.randrange(len(out)))[0])
    for _ in range(rng.randint(0, churn)):
        key = random_key(rng)
        if key not in present or rng.random() < 0.03:
            out.insert(rng.randint(0, len(out)), (key, random_counters(rng)))
            present.add(key)
    roll = rng.random()
    if out and roll < 0.1:  # one entry moved
        out.insert(rng.randint(0, len(out) - 1), out.pop(rng.randrange(len(out))))
    elif roll < 0.13:
        rng.shuffle(out)
    elif out and roll < 0.15:  # the same key twice (not from PostgreSQL; but stay exact)
        out.insert(rng.randint(0, len(out)), rng.choice(out))
    return out


def run_both(history: list[tuple[Continuity, list[Entry]]]) -> None:
    """Feed ``history`` to StatementCounters and to the reference: the same, step by step."""
    counters, reference = StatementCounters(), ReferenceCounters()
    groups = sorted({key[:3] for _, entries in history for key, _ in entries})
    groups.append((1, 10, 10**6))  # never in the view
    for step, (continuity, entries) in enumerate(history):
        got = counters.advance(make_snapshot(entries), continuity)
        expected = reference.advance(make_snapshot(entries), continuity)
        assert observe(counters, got, groups) == observe(reference, expected, groups), step
        raw = counters._snap.keys.raw
        assert raw is not None
        assert counters._snap.keys.decoded == PackedKeys(*raw).decoded


def read_of(model: list[Entry], view: list[Entry]) -> tuple[list[int], list[Entry]]:
    """What the collector's query returns, given the last snapshot ``model`` and the view
    now: the positions whose entry differs from the model's there (key or calls), every
    position past the model's end included; and the view as the counters then hold it (an
    entry not returned keeps the counters it had: it changes only when its calls do)."""
    positions: list[int] = []
    held: list[Entry] = []
    for position, (key, values) in enumerate(view):
        if position < len(model) and model[position][0] == key \
                and model[position][1][0] == values[0]:
            held.append(model[position])
        else:
            positions.append(position)
            held.append((key, values))
    return positions, held


def run_reads(history: list[tuple[Continuity, list[Entry]]]) -> None:
    """Feed ``history`` to StatementCounters as the collector does (only what changed, by
    position; the whole view after a reset) and the whole views to the reference."""
    counters, reference = StatementCounters(), ReferenceCounters()
    groups = sorted({key[:3] for _, entries in history for key, _ in entries})
    groups.append((1, 10, 10**6))
    model: list[Entry] = []
    for step, (continuity, entries) in enumerate(history):
        view = list({key: (key, values) for key, values in reversed(entries)}.values())[::-1]
        if continuity is Continuity.CONTINUES:
            positions, held = read_of(model, view)
        else:
            positions, held = list(range(len(view))), view
        read = [view[p] for p in positions]
        keys = [list(column) for column in zip(*(key for key, _ in read), strict=True)] \
            or [[], [], [], []]
        columns = [list(column) for column in zip(*(values for _, values in read),
                                                   strict=True)] or [[] for _ in range(5)]
        totals_before = reference.totals(groups)
        got = counters.advance_read(positions, (keys[0], keys[1], keys[2], keys[3]), columns,
                                    len(view), continuity)
        expected = reference.advance(make_snapshot(held), continuity)
        assert observe(counters, got, groups) == observe(reference, expected, groups), step
        if continuity is Continuity.CONTINUES:
            # The collector recomputes only the totals of touched groups still there.
            other = {group for group, was, now in zip(groups, totals_before,
                                                      reference.totals(groups), strict=True)
                     if was != now and now is not None}
            assert other <= set(counters.touched), step
        assert [tuple(column) for column in counters._snap.keys.decoded] \
            == [tuple(column) for column in zip(*(key for key, _ in held), strict=True)] \
            or not held
        if continuity is Continuity.CONTINUES:
            before = {key[:3] for key, _ in model}
            assert counters.gone == before - {key[:3] for key, _ in held}, step
        model = held


@settings(max_examples=400)
@given(st.data())
def test_reads_of_what_changed_give_what_whole_snapshots_give(data: st.DataObject) -> None:
    run_reads(data.draw(histories()))


def test_an_entry_replaced_at_its_position_with_the_same_calls_is_read() -> None:
    before = [((1, 10, 7, True), (3, 3.0, 3, 0.0, 0.0)), ((1, 10, 8, True), (1, 1.0, 1, 0.0, 0.0))]
    # 7 evicted, 9 new in its place with the same calls; 8 still there.
    after = [((1, 10, 9, True), (3, 6.0, 3, 0.0, 0.0)), ((1, 10, 8, True), (1, 1.0, 1, 0.0, 0.0))]
    positions, _ = read_of(before, after)
    assert positions == [0]
    run_reads([(Continuity.FIRST, before), (Continuity.CONTINUES, after)])
    counters = StatementCounters()
    counters.advance_read([0, 1], ([1, 1], [10, 10], [7, 8], [True, True]),
                          [[3, 1], [3.0, 1.0], [3, 1], [0.0, 0.0], [0.0, 0.0]], 2,
                          Continuity.FIRST)
    deltas = counters.advance_read([0], ([1], [10], [9], [True]), [[3], [6.0], [3], [0.0], [0.0]],
                                   2, Continuity.CONTINUES)
    assert deltas == {(1, 10, 9): (3, 6.0, 3, 0.0, 0.0)}
    assert counters.gone == {(1, 10, 7)}
    assert counters.totals([(1, 10, 7), (1, 10, 9)]) == [None, (3, 6.0, 3, 0.0, 0.0)]


def test_entries_that_only_moved_are_not_touched() -> None:
    entries = [((1, 10, q, True), (q, float(q), q, 0.0, 0.0)) for q in range(1, 9)]
    # A new entry at position 2 shifts those after it: all come back, only 99 is new and
    # 4 ran; 7 was evicted and came back with the same calls, other time.
    after = [*entries[:2], ((1, 10, 99, True), (1, 1.0, 1, 0.0, 0.0)), *entries[2:]]
    after[4] = ((1, 10, 4, True), (5, 9.0, 5, 0.0, 0.0))
    after[7] = ((1, 10, 7, True), (7, 2.5, 7, 0.0, 0.0))
    positions, _ = read_of(entries, after)
    assert positions == list(range(2, 9))
    run_reads([(Continuity.FIRST, entries), (Continuity.CONTINUES, after)])
    counters = StatementCounters()
    for continuity, view, read in ((Continuity.FIRST, entries, list(range(8))),
                                   (Continuity.CONTINUES, after, positions)):
        keys = [list(column) for column in zip(*(view[p][0] for p in read), strict=True)]
        values = [list(column) for column in zip(*(view[p][1] for p in read), strict=True)]
        deltas = counters.advance_read(read, (keys[0], keys[1], keys[2], keys[3]), values,
                                       len(view), continuity)
    assert deltas == {(1, 10, 99): (1, 1.0, 1, 0.0, 0.0), (1, 10, 4): (1, 5.0, 1, 0.0, 0.0)}
    assert sorted(counters.touched) == [(1, 10, 4), (1, 10, 7), (1, 10, 99)]
    assert counters.gone == set()


CONTINUITIES = [Continuity.CONTINUES] * 12 + [Continuity.RESET, Continuity.UNKNOWN,
                                              Continuity.FIRST]


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[Continuity, list[Entry]]]:
    """A first snapshot of distinct keys, then snapshots one interval apart each."""
    rng = draw(st.randoms(use_true_random=False))
    size = draw(st.integers(0, 70))
    first = list({random_key(rng): random_counters(rng) for _ in range(size)}.items())
    history = [(Continuity.FIRST, first)]
    churn = draw(st.sampled_from((0, 1, 2, 4, 12)))
    for _ in range(draw(st.integers(1, 10))):
        entries = next_entries(rng, history[-1][1], churn)
        history.append((rng.choice(CONTINUITIES), entries))
    return history


@settings(max_examples=400)
@given(histories())
def test_advance_gives_exactly_what_matching_by_key_gives(
        history: list[tuple[Continuity, list[Entry]]]) -> None:
    run_both(history)


@pytest.mark.parametrize("seed", range(6))
def test_a_large_view_with_a_few_entries_coming_and_going_is_merged(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    first = list({random_key(rng): random_counters(rng) for _ in range(3000)}.items())
    history = [(Continuity.FIRST, first)]
    for _ in range(8):
        entries = [(key, grown(rng, values)) for key, values in history[-1][1]]
        for _ in range(rng.randint(0, 6)):
            entries.pop(rng.randrange(len(entries)))
        for _ in range(rng.randint(0, 6)):
            entries.insert(rng.randint(0, len(entries)),
                           ((2, 20, rng.randint(0, 2**62), True), random_counters(rng)))
        history.append((Continuity.CONTINUES, entries))
    matched_by_key = []
    full = StatementCounters._match

    def spy(self: StatementCounters, snap: Snapshot, prev: Snapshot) -> Any:
        matched_by_key.append(len(snap))
        return full(self, snap, prev)

    monkeypatch.setattr(StatementCounters, "_match", spy)
    run_both(history)
    assert matched_by_key == []


def test_entries_out_of_order_are_matched_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [(1, 10, q, True) for q in range(20)]
    before = [(key, (1, 1.0, 1, 0.0, 0.0)) for key in keys]
    after = [(key, (2, 1.5, 2, 0.0, 0.0)) for key in keys[10:] + keys[:10]]
    matched_by_key = []
    full = StatementCounters._match

    def spy(self: StatementCounters, snap: Snapshot, prev: Snapshot) -> Any:
        matched_by_key.append(len(snap))
        return full(self, snap, prev)

    monkeypatch.setattr(StatementCounters, "_match", spy)
    run_both([(Continuity.FIRST, before), (Continuity.CONTINUES, after)])
    assert matched_by_key == [20]


def test_too_many_entries_coming_and_going_are_matched_by_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statement_counters, "_MIN_EDITS", 2)
    before = [((1, 10, q, True), (1, 1.0, 1, 0.0, 0.0)) for q in range(0, 40, 2)]
    after = [((1, 10, q, True), (1, 1.0, 1, 0.0, 0.0)) for q in range(0, 40, 3)]
    matched_by_key = []
    full = StatementCounters._match

    def spy(self: StatementCounters, snap: Snapshot, prev: Snapshot) -> Any:
        matched_by_key.append(len(snap))
        return full(self, snap, prev)

    monkeypatch.setattr(StatementCounters, "_match", spy)
    run_both([(Continuity.FIRST, before), (Continuity.CONTINUES, after)])
    # Past the edit budget the merge gives up: the second snapshot is matched by key.
    assert matched_by_key == [len(after)]


# --- the reference: StatementCounters as it was, every entry matched by key --------------


class ReferenceCounters:
    """StatementCounters before the order-keeping merge: every entry matched by key."""

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
