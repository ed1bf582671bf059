"""A source that publishes only its changes (``MemoryStore.publish_changes``) is seen exactly
as the same source publishing its whole snapshot every cycle: by the evaluator's select(),
by history(), by /metrics (parsed with prometheus-client's own parser) and by current()."""

from __future__ import annotations

import math
import sys
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.jobs import CollectorJob
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.store import Changes, Labels, MemoryStore, MetricKind, MetricSpec, Sample
from piggywatch.store.series import HeldValues, LabelMatcher, MatchOp

T0 = 1_700_000_000.0
NAMES = ("pg_stat_statements_calls_total", "pg_stat_statements_seconds_total")
SPECS = [MetricSpec(name, MetricKind.COUNTER, "x") for name in NAMES]
LABELS: list[Labels] = [(("queryid", str(q)), ("target", "main")) for q in range(6)]
SOURCE = "main/statements"

Snapshot = dict[tuple[str, Labels], float]


def new_store(retention: float) -> MemoryStore:
    store = MemoryStore(retention=retention)
    store.register(SPECS)
    return store


def changes_between(before: Snapshot | None, after: Snapshot, now: float) -> Changes:
    before = before or {}
    changed = [Sample(name, labels, value, now) for (name, labels), value in after.items()
               if before.get((name, labels)) != value]
    return Changes(changed, [key for key in before if key not in after])


def everything(store: MemoryStore, at: float) -> list[tuple[Labels, list[float], list[float]]]:
    found = store.select([LabelMatcher.of("__name__", MatchOp.REGEX, ".+")], T0 - 10, at)
    return sorted((s.labels, list(s.timestamps), [repr(v) for v in s.values])  # type: ignore[misc]
                  for s in found)


def exposed(store: MemoryStore) -> list[tuple[str, tuple[tuple[str, str], ...], float, str]]:
    body = store.exposition.body().decode()
    return sorted((s.name, tuple(sorted(s.labels.items())), s.value, repr(s.timestamp))
                  for family in text_string_to_metric_families(body) for s in family.samples)


snapshot_st = st.dictionaries(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(LABELS)),
    st.sampled_from([0.0, 1.0, 2.5, 7.0, math.inf]), max_size=8)
# A cycle: the source's snapshot at that moment, or a failed cycle (cleared at that moment,
# or at the last publish as a job does), and how long after the previous cycle it comes.
cycle_st = st.tuples(st.one_of(snapshot_st, st.sampled_from(["clear now", "clear"])),
                     st.sampled_from([0.5, 1.0, 2.0, 7.0]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cycles=st.lists(cycle_st, min_size=1, max_size=25),
       retention=st.sampled_from([3.0, 10.0, 3600.0]), stamped=st.booleans(),
       reads=st.lists(st.integers(0, 24), max_size=6))
def test_publishing_changes_is_publishing_the_whole_snapshot(
        cycles: list[tuple[Snapshot | str, float]], retention: float, stamped: bool,
        reads: list[int]) -> None:
    whole, changing = replay([(cycle, None) for cycle in cycles], retention, stamped, reads)
    assert [(spec.name, sorted(samples)) for spec, samples in changing.current()] == \
        [(spec.name, sorted(samples)) for spec, samples in whole.current()]


def replay(cycles: list[tuple[tuple[Snapshot | str, float], Snapshot | None]], retention: float,
           stamped: bool, reads: list[int]) -> tuple[MemoryStore, MemoryStore]:
    """Run ``cycles`` of the source into a store as whole snapshots and into another as
    changes (each cycle's ``other`` snapshot, if any, goes to a second, whole source in both,
    half a step before); both must read the same after each cycle in ``reads`` and at the
    end. The two stores, to compare further."""
    whole, changing = new_store(retention), new_store(retention)
    now = T0
    previous: Snapshot | None = None
    for index, ((snapshot, step), other) in enumerate(cycles):
        now += step
        if other is not None:
            at = now - step / 2
            for store in (whole, changing):
                store.publish("other", [Sample(n, labels, v, at)
                                        for (n, labels), v in other.items()], at)
        if isinstance(snapshot, str):
            cleared_at = now if snapshot == "clear now" else None
            whole.clear(SOURCE, cleared_at)
            changing.clear(SOURCE, cleared_at)
            previous = None
            continue
        whole.publish(SOURCE, [Sample(n, labels, v, now) for (n, labels), v in snapshot.items()],
                      now, stamped=stamped)
        changing.publish_changes(SOURCE, changes_between(previous, snapshot, now), now,
                                 stamped=stamped, full=previous is None)
        previous = snapshot
        if index in reads:  # a read between cycles must change nothing the later ones show
            assert everything(changing, now) == everything(whole, now)
    assert everything(changing, now) == everything(whole, now)
    assert exposed(changing) == exposed(whole)
    for name in NAMES:
        for labels in LABELS:
            assert [(p.timestamp, repr(p.value)) for p in changing.history(name, labels)] == \
                [(p.timestamp, repr(p.value)) for p in whole.history(name, labels)]
    return whole, changing


def test_a_series_that_never_changes_keeps_a_point_every_cycle_and_costs_no_append() -> None:
    store = new_store(3600.0)
    labels = LABELS[0]
    first = {(NAMES[0], labels): 5.0, (NAMES[1], labels): 1.0}
    store.publish_changes(SOURCE, changes_between(None, first, T0), T0, full=True)
    # 99 cycles in which only the second series changes.
    for k in range(1, 100):
        store.publish_changes(SOURCE, Changes([Sample(NAMES[1], labels, 1.0 + k, T0 + k)], []),
                              T0 + k)
    steady = store.history(NAMES[0], labels)
    assert [p.timestamp for p in steady] == [T0 + k for k in range(100)]
    assert {p.value for p in steady} == {5.0}
    assert [p.value for p in store.history(NAMES[1], labels)] == [1.0 + k for k in range(100)]


def test_reading_a_series_that_never_changes_does_not_write_its_points() -> None:
    """Rules read idle statements over [10m] every evaluation: each read answers every
    point, and none of them is stored, so an idle series stays as small as it was; once its
    written points expire it holds no buffer at all."""
    store = new_store(30.0)
    idle, busy = (NAMES[0], LABELS[0]), (NAMES[0], LABELS[1])
    store.publish_changes(SOURCE, changes_between(None, {idle: 5.0, busy: 0.0}, T0), T0,
                          full=True)
    hist = store._by_name[NAMES[0]][idle[1]]
    for k in range(1, 100):
        store.publish_changes(SOURCE, Changes([Sample(*busy, float(k), T0 + k)], []), T0 + k)
        read = {s.labels: s for s in store.select(
            [LabelMatcher.of("__name__", MatchOp.EQUAL, NAMES[0])], T0 + k - 30, T0 + k)}
        steady = read[(("__name__", NAMES[0]), *idle[1])]
        assert list(steady.timestamps) == [T0 + j for j in range(max(0, k - 30), k + 1)]
        assert set(steady.values) == {5.0}
        assert hist.n <= 1
    assert len(hist.values) == 0, "its one written point expired: no buffer is kept"
    assert len(store._by_name[NAMES[0]][busy[1]].values) >= 31


def test_a_series_held_longer_than_the_retention_keeps_its_value() -> None:
    store = new_store(10.0)
    key = (NAMES[0], LABELS[0])
    store.publish_changes(SOURCE, changes_between(None, {key: 3.0}, T0), T0, full=True)
    for k in range(1, 60):
        store.publish_changes(SOURCE, Changes([], []), T0 + k)
    points = store.history(*key)
    assert [p.timestamp for p in points] == [T0 + k for k in range(49, 60)]
    assert {p.value for p in points} == {3.0}


def test_changes_without_a_snapshot_to_change_are_refused() -> None:
    store = new_store(3600.0)
    with pytest.raises(ValueError, match="without a snapshot"):
        store.publish_changes(SOURCE, Changes([], []), T0)
    store.publish_changes(SOURCE, Changes([], []), T0, full=True)
    with pytest.raises(ValueError, match="not stamped"):
        store.publish_changes(SOURCE, Changes([Sample(NAMES[0], LABELS[0], 1.0, T0)], []),
                              T0 + 1)


class Counting:
    """A collector of a few counters that tells its cycles as changes, and can fail."""

    name = "counting"

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.fail = False
        self.told: list[bool] = []
        self._labels: dict[str, Labels] = {}
        self._last: dict[str, float] = {}

    def specs(self) -> list[MetricSpec]:
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        return self.collect_changes(now, full=True).changed

    def collect_changes(self, now: float, *, full: bool) -> Changes:
        self.told.append(full)
        if self.fail:
            raise CollectorError("query", "the query failed")
        last = {} if full else self._last
        labels = self._labels
        for key in self.values:
            labels.setdefault(key, (("queryid", key),))
        # Both families of a series share its labels object, as the statements collector's.
        changed = [Sample(name, labels[key], value, now) for key, value in self.values.items()
                   if last.get(key) != value for name in NAMES]
        removed = [(name, labels[key]) for key in last if key not in self.values
                   for name in NAMES]
        self._last = dict(self.values)
        return Changes(changed, removed)


def test_a_job_publishes_changes_with_the_target_labels_and_starts_over_after_a_failure(
        ) -> None:
    store = new_store(3600.0)
    collector = Counting()
    target = PostgresTarget("main", "postgresql://127.0.0.1:1/x")
    job = CollectorJob("main", target, collector, 1.0, store, SelfMetrics(store),
                       clock=iter(T0 + k for k in range(100)).__next__)

    def current(name: str = NAMES[0]) -> list[Sample]:
        return [s for _, samples in store.current() for s in samples if s.name == name]

    def values() -> dict[str, float]:
        return {dict(s.labels)["queryid"]: s.value for s in current()}

    collector.values = {"a": 1.0, "b": 2.0}
    job.run()
    collector.values = {"a": 1.0, "b": 3.0, "c": 1.0}
    job.run()
    collector.values = {"a": 1.0, "c": 1.0}
    job.run()
    assert collector.told == [True, False, False]
    assert values() == {"a": 1.0, "c": 1.0}
    assert {dict(s.labels)["queryid"] for s in current(NAMES[1])} == {"a", "c"}
    assert all(dict(s.labels)["target"] == "main" for s in current())
    # The series share the target's label pair, not a copy each.
    assert len({id(pair) for s in current() for pair in s.labels if pair[0] == "target"}) == 1
    b = (("queryid", "b"), ("target", "main"))
    assert [p.value for p in store.history(NAMES[0], b)][:2] == [2.0, 3.0]
    assert math.isnan(store.history(NAMES[0], b)[-1].value)  # stale once gone
    collector.fail = True
    job.run()
    assert values() == {}
    collector.fail = False
    job.run()
    assert collector.told[-1] is True  # after a failure: everything again
    assert values() == {"a": 1.0, "c": 1.0}
    a = (("queryid", "a"), ("target", "main"))
    assert [p.timestamp - T0 for p in store.history(NAMES[0], a)
            if not math.isnan(p.value)] == [0, 1, 2, 4]


def test_a_flapping_series_held_through_a_silence_longer_than_the_retention_recovers() -> None:
    """A series that left and came back has a timeline of its own; held on it while its
    source goes quiet for longer than the retention (a paused VM) and another source moves
    the horizon on, it must read, publish and clear as any other."""
    whole, changing = new_store(660.0), new_store(660.0)
    x, y = (NAMES[0], LABELS[0]), (NAMES[0], LABELS[1])
    previous: Snapshot | None = None
    now = T0

    def cycle(snapshot: Snapshot) -> None:
        nonlocal previous
        whole.publish(SOURCE, [Sample(n, labels, v, now) for (n, labels), v in snapshot.items()],
                      now)
        changing.publish_changes(SOURCE, changes_between(previous, snapshot, now), now,
                                 full=previous is None)
        previous = snapshot

    for k in range(60):
        now += 15
        cycle({y: float(k), **({x: 5.0} if k < 3 or k >= 33 else {})})
    now += 720
    for store in (whole, changing):
        store.publish("other", [], now)
    assert everything(changing, now) == everything(whole, now)
    for k in range(3):
        now += 15
        cycle({x: 6.0 + k, y: 100.0 + k})
        assert everything(changing, now) == everything(whole, now)
    for store in (whole, changing):
        store.clear(SOURCE)
    assert everything(changing, now) == everything(whole, now)
    assert exposed(changing) == exposed(whole)


def test_held_values_read_as_the_points_they_stand_for() -> None:
    values = HeldValues(array("d", [1.0, 2.0]), 7.0, 3)
    points = [1.0, 2.0, 7.0, 7.0, 7.0]
    assert len(values) == 5
    assert list(values) == points and values == points
    assert [values[k] for k in range(-5, 5)] == points + points
    assert list(values[1:4]) == points[1:4] and list(values[::-1]) == points[::-1]
    assert sum(values) == sum(points)
    with pytest.raises(IndexError):
        values[5]
    assert HeldValues(array("d"), 3.0, 0) == []


def test_the_orphans_set_of_a_first_publish_does_not_keep_its_table() -> None:
    """Every series of a source's first publish is an orphan until handed over; the set's
    table, sized for all of them, is given back once they are handed over."""
    store = new_store(60.0)
    labels = [(("queryid", str(k)), ("target", "main")) for k in range(5000)]
    store.publish_changes(SOURCE, Changes([Sample(NAMES[0], lab, 1.0, T0) for lab in labels],
                                          []), T0, full=True)
    for k in range(1, 4):  # enough appends for a sweep
        store.publish_changes(SOURCE, Changes([Sample(NAMES[0], lab, 1.0 + k, T0 + k)
                                               for lab in labels[:400]], []), T0 + k)
    assert not store._orphans
    assert sys.getsizeof(store._orphans) < 4096


def test_a_held_series_another_source_published_keeps_each_sources_points_at_their_times(
) -> None:
    """A series held by a changes source A whose points all expired, published meanwhile by a
    whole source B (so it joined B's timeline) and then left by B: A's held value stands at
    A's entries, never at B's, and reads and publishes go on."""
    a_labels, b_labels = LABELS[0], LABELS[1]
    name = NAMES[0]
    store = new_store(10.0)
    store.publish_changes("A", Changes([Sample(name, a_labels, 1.0, T0)], []), T0, full=True)
    # A goes quiet past the retention; B publishes the series and another one, then drops it.
    store.publish("B", [Sample(name, a_labels, 5.0, T0 + 20), Sample(name, b_labels, 5.0, T0 + 20)],
                  T0 + 20)
    store.publish("B", [Sample(name, b_labels, 6.0, T0 + 25)], T0 + 25)
    store.publish_changes("A", Changes([], []), T0 + 23)
    for at in (T0 + 26, T0 + 27):
        found = {s.labels: (list(s.timestamps), list(s.values)) for s in store.select(
            [LabelMatcher.of("__name__", MatchOp.EQUAL, name)], T0, at)}
        assert found[(("__name__", name), *a_labels)] == ([T0 + 20, T0 + 23], [5.0, 1.0])
        assert found[(("__name__", name), *b_labels)] == ([T0 + 20, T0 + 25], [5.0, 6.0])
    store.publish_changes("A", Changes([Sample(name, a_labels, 2.0, T0 + 28)], []), T0 + 28)
    store.publish("B", [Sample(name, b_labels, 7.0, T0 + 29)], T0 + 29)
    found = {s.labels: (list(s.timestamps), list(s.values)) for s in store.select(
        [LabelMatcher.of("__name__", MatchOp.EQUAL, name)], T0, T0 + 30)}
    assert found[(("__name__", name), *a_labels)] == ([T0 + 20, T0 + 23, T0 + 28],
                                                         [5.0, 1.0, 2.0])
    assert found[(("__name__", name), *b_labels)] == ([T0 + 20, T0 + 25, T0 + 29],
                                                         [5.0, 6.0, 7.0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cycles=st.lists(st.tuples(cycle_st, st.one_of(st.none(), snapshot_st)), min_size=1,
                       max_size=25),
       retention=st.sampled_from([3.0, 10.0, 3600.0]), stamped=st.booleans(),
       reads=st.lists(st.integers(0, 24), max_size=6))
def test_a_changes_source_beside_a_whole_one_publishing_the_same_series_is_seen_as_whole(
        cycles: list[tuple[tuple[Snapshot | str, float], Snapshot | None]], retention: float,
        stamped: bool, reads: list[int]) -> None:
    """The property above with a second source, publishing whole snapshots between the first
    one's cycles, that may publish the same series: each source's points stay at its times."""
    replay(cycles, retention, stamped, reads)
