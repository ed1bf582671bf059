"""The in-memory store: snapshots for /metrics, history and select() for the evaluator."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piggywatch.store import (
    Labels,
    MemoryStore,
    MetricKind,
    MetricSpec,
    Sample,
    buffers,
    labels_of,
    memory,
)
from piggywatch.store.series import STALE_NAN, LabelMatcher, MatchOp, Series, is_stale

T0 = 1_700_000_000.0
DAY = 86_400.0

SPECS = [
    MetricSpec("pg_up", MetricKind.GAUGE, "Whether the target answers"),
    MetricSpec("pg_stat_activity_count", MetricKind.GAUGE, "Connections by state"),
    MetricSpec("pg_stat_statements_calls_total", MetricKind.COUNTER, "Calls"),
]


def new_store(retention: float = 3600.0) -> MemoryStore:
    store = MemoryStore(retention=retention)
    store.register(SPECS)
    return store


def up(target: str, value: float, ts: float) -> Sample:
    return Sample("pg_up", labels_of(target=target), value, ts)


def activity(state: str, value: float, ts: float, target: str = "main") -> Sample:
    return Sample("pg_stat_activity_count", labels_of(target=target, state=state), value, ts)


def eq(name: str, value: str) -> LabelMatcher:
    return LabelMatcher.of(name, MatchOp.EQUAL, value)


def named(name: str) -> list[LabelMatcher]:
    return [eq("__name__", name)]


def points(series: Series) -> list[tuple[float, float]]:
    return list(zip(series.timestamps, series.values, strict=True))


def only(found: Sequence[Series]) -> Series:
    assert len(found) == 1, found
    return found[0]


# --- the API the daemon, self-metrics and exporter use ---------------------------------

def test_current_groups_latest_samples_by_family_including_empty_ones() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0), activity("active", 1, T0)], T0)
    store.publish("self", [up("main", 1, T0)], T0)
    grouped = {spec.name: samples for spec, samples in store.current()}
    assert list(grouped) == sorted(s.name for s in SPECS)
    assert grouped["pg_stat_statements_calls_total"] == []
    assert [s.value for s in grouped["pg_stat_activity_count"]] == [3, 1]
    assert grouped["pg_up"] == [up("main", 1, T0)]


def test_a_new_snapshot_replaces_the_sources_previous_one() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0), activity("active", 1, T0)], T0)
    store.publish("main/connections", [activity("idle", 4, T0 + 15)], T0 + 15)
    grouped = {spec.name: samples for spec, samples in store.current()}
    assert grouped["pg_stat_activity_count"] == [activity("idle", 4, T0 + 15)]
    assert store.series_count() == 2


def test_clear_drops_the_sources_snapshot_from_current() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0)], T0)
    store.publish("self", [up("main", 1, T0)], T0)
    store.clear("main/connections")
    store.clear("never-published")
    grouped = {spec.name: samples for spec, samples in store.current()}
    assert grouped["pg_stat_activity_count"] == []
    assert grouped["pg_up"] == [up("main", 1, T0)]


def test_sample_of_undeclared_metric_is_refused_and_changes_nothing() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0)], T0)
    with pytest.raises(KeyError, match="undeclared metric nope"):
        store.publish("src", [up("main", 0, T0 + 1), Sample("nope", (), 1, T0 + 1)], T0 + 1)
    assert [p.value for p in store.history("pg_up", labels_of(target="main"))] == [1]
    assert store.series_count() == 1


def test_declaring_a_family_twice_differently_is_refused() -> None:
    store = new_store()
    store.register(SPECS)
    with pytest.raises(ValueError, match="declared twice"):
        store.register([MetricSpec("pg_up", MetricKind.COUNTER, "other")])


def test_history_lists_points_oldest_first() -> None:
    store = new_store()
    for i in range(3):
        store.publish("src", [up("main", i, T0 + 15 * i)], T0 + 15 * i)
    history = store.history("pg_up", labels_of(target="main"))
    assert [(p.timestamp, p.value) for p in history] == [(T0, 0), (T0 + 15, 1), (T0 + 30, 2)]
    assert store.history("pg_up", labels_of(target="other")) == []


def test_a_label_named_dunder_name_is_refused() -> None:
    store = new_store()
    with pytest.raises(ValueError, match="__name__"):
        store.publish("src", [Sample("pg_up", labels_of(__name__="x"), 1, T0)], T0)


# --- retention and expiry ---------------------------------------------------------------

def test_points_older_than_the_retention_are_dropped() -> None:
    store = new_store(retention=60)
    for i in range(10):
        store.publish("src", [up("main", i, T0 + 15 * i)], T0 + 15 * i)
    now = T0 + 135
    found = only(store.select(named("pg_up"), 0, math.inf))
    # Exactly now - retention is still kept: the window is closed at both ends.
    assert found.timestamps == [now - 60, now - 45, now - 30, now - 15, now]
    assert store.history("pg_up", labels_of(target="main"))[0].timestamp == now - 60


def test_a_shorter_retention_applies_at_once_and_a_longer_one_keeps_nothing_dropped() -> None:
    store = new_store(retention=600)
    for i in range(20):
        store.publish("src", [up("main", i, T0 + 15 * i)], T0 + 15 * i)
    now = T0 + 285
    store.set_retention(30)
    assert store.retention == 30
    assert only(store.select(named("pg_up"), 0, math.inf)).timestamps == [now - 30, now - 15, now]
    store.set_retention(600)
    # Widening never brings back what was already out of the window...
    assert only(store.select(named("pg_up"), 0, math.inf)).timestamps == [now - 30, now - 15, now]
    for i in range(20, 30):
        store.publish("src", [up("main", i, T0 + 15 * i)], T0 + 15 * i)
    # ...and keeps everything from then on.
    assert len(only(store.select(named("pg_up"), 0, math.inf)).timestamps) == 13


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_retention_must_be_a_positive_number_of_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="retention"):
        MemoryStore(retention=bad)
    with pytest.raises(ValueError, match="retention"):
        new_store().set_retention(bad)


def test_series_nobody_reports_any_more_are_forgotten_once_expired() -> None:
    store = new_store(retention=60)
    # Statements leaving the top K, one per cycle.
    for i in range(2000):
        now = T0 + 15 * i
        calls = Sample("pg_stat_statements_calls_total", labels_of(queryid=str(i)), i, now)
        store.publish("main/statements", [calls, up("main", 1, now)], now)
    # A sweep took those that left the window; the last five remain, and a sixth whose
    # only point left is the stale marker put there the cycle after its last sample.
    assert store.series_count() < 2 + 2 * memory._SWEEP_MIN_APPENDS
    found = store.select(named("pg_stat_statements_calls_total"), 0, math.inf)
    assert len(found) == 6
    assert min(found, key=lambda s: s.timestamps[0]).values[0] != 1994


def test_a_series_back_after_a_long_silence_starts_afresh() -> None:
    store = new_store(retention=3600)
    store.publish("src", [up("main", 1, T0)], T0)
    later = T0 + 40 * DAY
    store.publish("src", [up("main", 2, later)], later)
    assert points(only(store.select(named("pg_up"), 0, math.inf))) == [(later, 2)]


# --- staleness --------------------------------------------------------------------------

def test_a_series_missing_from_the_next_snapshot_gets_a_stale_marker_at_that_time() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0), activity("active", 1, T0)], T0)
    store.publish("main/connections", [activity("idle", 4, T0 + 15)], T0 + 15)
    found = {dict(s.labels)["state"]: s for s in store.select(named("pg_stat_activity_count"),
                                                              0, math.inf)}
    assert list(found["idle"].values) == [3, 4]
    assert found["active"].timestamps == [T0, T0 + 15]
    assert found["active"].values[0] == 1
    assert is_stale(found["active"].values[1])


def test_a_series_that_comes_back_continues_after_its_marker() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0)], T0)
    store.publish("src", [], T0 + 15)
    store.publish("src", [up("main", 1, T0 + 30)], T0 + 30)
    series = only(store.select(named("pg_up"), 0, math.inf))
    assert series.timestamps == [T0, T0 + 15, T0 + 30]
    assert [is_stale(v) for v in series.values] == [False, True, False]


def test_clear_marks_every_series_of_the_source_stale() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0), activity("active", 1, T0)], T0)
    store.publish("self", [up("main", 1, T0 + 10)], T0 + 10)
    store.clear("main/connections", now=T0 + 15)
    for series in store.select(named("pg_stat_activity_count"), 0, math.inf):
        assert series.timestamps == [T0, T0 + 15]
        assert is_stale(series.values[-1])
    assert not any(is_stale(v) for v in only(store.select(named("pg_up"), 0, math.inf)).values)


def test_clear_without_a_time_marks_at_the_newest_publish_time() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0)], T0)
    store.publish("self", [up("main", 1, T0 + 10)], T0 + 10)
    store.clear("main/connections")
    assert only(store.select(named("pg_stat_activity_count"), 0, math.inf)).timestamps == [
        T0, T0 + 10]


def test_the_marker_follows_the_last_point_when_that_is_newer_than_the_publish() -> None:
    store = new_store()
    store.publish("main/connections", [activity("idle", 3, T0 + 1)], T0)
    store.clear("main/connections")
    series = only(store.select(named("pg_stat_activity_count"), 0, math.inf))
    assert series.timestamps == [T0 + 1, T0 + 1.001]


def test_a_series_another_source_still_reports_is_not_stale() -> None:
    store = new_store()
    store.publish("a", [up("main", 1, T0)], T0)
    store.publish("b", [up("main", 1, T0)], T0)
    store.publish("a", [], T0 + 15)
    assert not any(is_stale(v) for v in only(store.select(named("pg_up"), 0, math.inf)).values)
    store.clear("b", now=T0 + 30)
    assert is_stale(only(store.select(named("pg_up"), 0, math.inf)).values[-1])


def test_an_expired_series_gets_no_marker() -> None:
    store = new_store(retention=60)
    store.publish("a", [up("main", 1, T0)], T0)
    store.publish("b", [up("other", 1, T0 + 120)], T0 + 120)
    store.publish("a", [], T0 + 120)
    assert [dict(s.labels)["target"] for s in store.select(named("pg_up"), 0, math.inf)] == [
        "other"]


def test_staleness_does_not_change_the_exposition() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0)], T0)
    store.publish("src", [up("other", 1, T0 + 15)], T0 + 15)
    grouped = {spec.name: samples for spec, samples in store.current()}
    assert grouped["pg_up"] == [up("other", 1, T0 + 15)]


# --- select() ---------------------------------------------------------------------------

@pytest.fixture()
def fleet() -> MemoryStore:
    store = new_store()
    samples = [up("main", 1, T0), up("replica", 0, T0), up("edge", 1, T0),
               activity("idle", 5, T0), activity("active", 2, T0),
               activity("idle", 1, T0, target="replica"),
               Sample("pg_stat_activity_count", labels_of(target="edge"), 0, T0)]
    store.publish("src", samples, T0)
    return store


def targets(found: Sequence[Series]) -> list[str]:
    return sorted(dict(s.labels).get("target", "") for s in found)


def test_select_returns_labels_with_the_metric_name_sorted_in(fleet: MemoryStore) -> None:
    series = only(fleet.select([eq("__name__", "pg_up"), eq("target", "main")], T0, T0))
    assert series.labels == (("__name__", "pg_up"), ("target", "main"))
    assert points(series) == [(T0, 1)]
    active = only(fleet.select([eq("state", "active")], T0, T0))
    assert active.labels == (("__name__", "pg_stat_activity_count"), ("state", "active"),
                             ("target", "main"))


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("=", "main", ["main"]),
    ("!=", "main", ["edge", "replica"]),
    ("=~", "ma.*|rep.*", ["main", "replica"]),
    ("=~", "ma", []),  # anchored at both ends, as in Prometheus
    ("!~", "ma.*|rep.*", ["edge"]),
])
def test_select_with_each_matcher_kind(fleet: MemoryStore, op: str, value: str,
                                       expected: list[str]) -> None:
    found = fleet.select([eq("__name__", "pg_up"), LabelMatcher.of("target", op, value)],
                         T0, T0)
    assert targets(found) == expected


def test_an_absent_label_matches_as_the_empty_string(fleet: MemoryStore) -> None:
    name = eq("__name__", "pg_stat_activity_count")
    assert targets(fleet.select([name, eq("state", "")], T0, T0)) == ["edge"]
    assert targets(fleet.select([name, LabelMatcher.of("state", "!=", "")], T0, T0)) == [
        "main", "main", "replica"]
    assert targets(fleet.select([name, LabelMatcher.of("state", "=~", "idle|")], T0, T0)) == [
        "edge", "main", "replica"]


def test_select_by_metric_name_regex_and_negation(fleet: MemoryStore) -> None:
    by_regex = fleet.select([LabelMatcher.of("__name__", "=~", "pg_.*"), eq("target", "edge")],
                            T0, T0)
    assert sorted(dict(s.labels)["__name__"] for s in by_regex) == [
        "pg_stat_activity_count", "pg_up"]
    not_up = fleet.select([LabelMatcher.of("__name__", "!=", "pg_up"), eq("target", "edge")],
                          T0, T0)
    assert [dict(s.labels)["__name__"] for s in not_up] == ["pg_stat_activity_count"]
    assert fleet.select([eq("__name__", "nope")], T0, T0) == []
    both = [eq("__name__", "pg_up"), eq("__name__", "pg_stat_activity_count")]
    assert fleet.select(both, T0, T0) == []


def test_select_range_is_inclusive_at_both_ends() -> None:
    store = new_store()
    for i in range(5):
        store.publish("src", [up("main", i, T0 + 15 * i)], T0 + 15 * i)
    assert list(only(store.select(named("pg_up"), T0 + 15, T0 + 45)).values) == [1, 2, 3]
    assert list(only(store.select(named("pg_up"), T0 + 15.001, T0 + 44.999)).values) == [2]
    assert list(only(store.select(named("pg_up"), T0 + 30, T0 + 30)).values) == [2]
    # A series without points in the range is left out.
    assert store.select(named("pg_up"), T0 + 16, T0 + 29) == []
    assert store.select(named("pg_up"), T0 + 45, T0) == []


def test_timestamps_are_kept_to_the_millisecond() -> None:
    store = new_store(retention=2 * DAY)
    stamps = [T0 + 0.001, T0 + 0.123, T0 + 1.999, T0 + 86_399.5]
    for i, ts in enumerate(stamps):
        store.publish("src", [up("main", i, ts)], ts)
    series = only(store.select(named("pg_up"), T0, math.inf))
    assert series.timestamps == stamps
    assert list(only(store.select(named("pg_up"), T0 + 0.123, T0 + 0.123)).values) == [1]
    assert store.select(named("pg_up"), T0 + 0.1231, T0 + 1.9989) == []
    # Finer than a millisecond rounds to the nearest one.
    store.publish("src", [up("main", 9, T0 + 86_400.0004)], T0 + 86_400.0004)
    assert list(only(store.select(named("pg_up"), T0 + 86_400, T0 + 86_400)).values) == [9]


def test_points_arriving_out_of_order_are_dropped_and_same_millisecond_replaces() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0 + 15)], T0 + 15)
    store.publish("src", [up("main", 2, T0)], T0 + 16)
    store.publish("src", [up("main", 3, T0 + 15.0001)], T0 + 17)
    assert points(only(store.select(named("pg_up"), 0, math.inf))) == [(T0 + 15, 3)]


def test_what_select_returns_is_the_callers_to_change() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0)], T0)
    series = only(store.select(named("pg_up"), 0, math.inf))
    series.values[0] = 42  # type: ignore[index]
    series.timestamps[0] = 0  # type: ignore[index]
    store.publish("src", [up("main", 2, T0 + 15)], T0 + 15)
    assert points(only(store.select(named("pg_up"), 0, math.inf))) == [(T0, 1), (T0 + 15, 2)]


def test_select_sees_series_appear_and_disappear_under_a_cached_matcher() -> None:
    store = new_store(retention=60)
    matchers = [eq("__name__", "pg_up"), LabelMatcher.of("target", "=~", "db.*")]
    store.publish("src", [up("db1", 1, T0)], T0)
    assert targets(store.select(matchers, 0, math.inf)) == ["db1"]
    store.publish("src", [up("db1", 1, T0 + 15), up("db2", 1, T0 + 15), up("x", 1, T0 + 15)],
                  T0 + 15)
    assert targets(store.select(matchers, 0, math.inf)) == ["db1", "db2"]
    with mock.patch.object(memory, "_SWEEP_MIN_APPENDS", 1):
        for i in range(2, 12):
            store.publish("src", [up("db2", 1, T0 + 15 * i)], T0 + 15 * i)
    assert store.series_count() == 1
    assert targets(store.select(matchers, 0, math.inf)) == ["db2"]
    store.publish("src", [up("db1", 1, T0 + 200), up("db2", 1, T0 + 200)], T0 + 200)
    assert targets(store.select(matchers, T0 + 200, math.inf)) == ["db1", "db2"]


# --- compact storage: shared timestamps, gaps, buffer sizes ------------------------------

ABSENT = buffers._ABSENT


def test_series_a_source_publishes_together_share_its_timestamps() -> None:
    store = new_store()
    for i in range(5):
        now = T0 + 15 * i
        store.publish("main/connections", [activity("idle", i, now), activity("active", i, now),
                                           activity("waiting", i, now)], now)
    family = store._by_name["pg_stat_activity_count"].values()
    assert {id(hist.timeline) for hist in family} == {id(store._timelines["main/connections"])}
    for series in store.select(named("pg_stat_activity_count"), 0, math.inf):
        assert points(series) == [(T0 + 15 * i, i) for i in range(5)]


def test_a_series_skipping_cycles_returns_only_the_points_it_was_published_at() -> None:
    store = new_store()
    present = {0, 1, 3, 6, 7}
    for i in range(8):
        now = T0 + 15 * i
        batch = [activity("idle", i, now)]
        if i in present:
            batch.append(activity("active", i, now))
        store.publish("main/connections", batch, now)
    active = [eq("__name__", "pg_stat_activity_count"), eq("state", "active")]
    series = only(store.select(active, 0, math.inf))
    # Each return follows a stale marker put there the cycle the series went missing.
    assert [t for t, v in points(series) if not is_stale(v)] == [T0 + 15 * i for i in present]
    assert [t for t, v in points(series) if is_stale(v)] == [T0 + 30, T0 + 60]
    assert store.select(active, T0 + 64, T0 + 89) == []
    assert [p.timestamp for p in store.history("pg_stat_activity_count",
                                               labels_of(target="main", state="active"))] == [
        T0, T0 + 15, T0 + 30, T0 + 45, T0 + 60, T0 + 90, T0 + 105]


def test_a_sample_valued_like_the_gap_filler_is_kept_bit_for_bit() -> None:
    store = new_store()
    store.publish("src", [up("main", 0, T0), up("new", 0, T0), up("same", 0, T0)], T0)
    store.publish("src", [up("main", 1, T0 + 15), up("new", ABSENT, T0 + 15),
                          up("same", 1, T0 + 15)], T0 + 15)
    # The same millisecond again replaces the last point, with the filler here.
    store.publish("src", [up("main", 1, T0 + 15), up("new", ABSENT, T0 + 15),
                          up("same", ABSENT, T0 + 15)], T0 + 15)
    store.publish("src", [up("main", 2, T0 + 30), up("new", 2, T0 + 30),
                          up("same", 2, T0 + 30)], T0 + 30)
    for target in ("new", "same"):
        series = only(store.select([eq("target", target)], 0, math.inf))
        assert series.timestamps == [T0, T0 + 15, T0 + 30]
        assert [bits(v) for v in series.values] == [bits(0.0), buffers._ABSENT_BITS, bits(2.0)]
        alone = only(store.select([eq("target", target)], T0 + 15, T0 + 15))
        assert [bits(v) for v in alone.values] == [buffers._ABSENT_BITS]


def test_a_series_stamped_off_its_sources_time_keeps_its_own_timestamps() -> None:
    store = new_store()
    for i in range(6):
        now = T0 + 15 * i
        store.publish("src", [up("main", i, now), up("late", i, now - 0.25 * (i % 3)),
                              up("main2", i, now)], now)
    assert points(only(store.select([eq("target", "late")], 0, math.inf))) == [
        (T0 + 15 * i - 0.25 * (i % 3), i) for i in range(6)]
    for target in ("main", "main2"):
        assert points(only(store.select([eq("target", target)], 0, math.inf))) == [
            (T0 + 15 * i, i) for i in range(6)]


def test_a_source_back_after_clear_continues_its_timeline() -> None:
    store = new_store()
    store.publish("src", [up("main", 1, T0), up("other", 1, T0)], T0)
    store.clear("src", now=T0 + 15)
    store.publish("src", [up("main", 2, T0 + 30), up("other", 2, T0 + 30)], T0 + 30)
    timeline = store._timelines["src"]
    assert all(hist.timeline is timeline for hist in store._by_name["pg_up"].values())
    series = only(store.select([eq("target", "main")], 0, math.inf))
    assert series.timestamps == [T0, T0 + 15, T0 + 30]
    assert [is_stale(v) for v in series.values] == [False, True, False]


def test_series_missing_entries_every_cycle_never_cost_more_than_their_own_timeline() -> None:
    store = new_store(retention=3600)
    for i in range(480):
        now = T0 + 15 * i
        # Two stamps in one batch: each series misses the other's entry every cycle.
        store.publish("src", [up("a", i, now), up("b", i, now + 0.001)], now)
    for hist in store._by_name["pg_up"].values():
        held = 8 * len(hist.values)
        if not hist.timeline.shared:
            held += 4 * len(hist.timeline.times)
        # 241 points: no more than the 12 bytes a point of a series on its own timeline.
        assert held <= 12 * (241 + buffers._HEADROOM + buffers._COMPACT_MIN_DEAD)
    for target, skew in (("a", 0), ("b", 0.001)):
        series = only(store.select([eq("target", target)], 0, math.inf))
        assert points(series) == [(T0 + 15 * i + skew, i) for i in range(239, 480)]


def test_a_steady_series_buffer_holds_its_window_and_little_more() -> None:
    store = new_store(retention=3600)
    window = 3600 // 15 + 1
    for i in range(3 * window):
        now = T0 + 15 * i
        store.publish("src", [up("main", i, now)], now)
        if i >= window:
            hist = store._by_name["pg_up"][labels_of(target="main")]
            assert len(hist.values) <= window + buffers._HEADROOM
    assert len(only(store.select(named("pg_up"), 0, math.inf)).values) == window


# --- long runs --------------------------------------------------------------------------

def test_sixty_days_of_publishing_never_overflows_the_offsets() -> None:
    store = new_store(retention=900)
    step = 300.0
    steps = int(60 * DAY / step)
    for i in range(steps + 1):
        now = T0 + i * step
        store.publish("src", [up("main", i, now), activity("idle", i % 7, now)], now)
    end = T0 + steps * step
    series = only(store.select(named("pg_up"), 0, math.inf))
    assert series.timestamps == [end - 900, end - 600, end - 300, end]
    assert list(series.values) == [steps - 3, steps - 2, steps - 1, steps]
    # 60 days in milliseconds is past 2**31: offsets stayed small because they were rebased.
    assert (end - T0) * 1000 > 2**31
    for timeline in store._timelines.values():
        assert timeline.times.typecode == "i"
        assert max(timeline.times) < 2**31


def test_a_retention_longer_than_32_bit_milliseconds_keeps_exact_timestamps() -> None:
    store = new_store(retention=40 * DAY)
    hour = 3600.0
    for i in range(60 * 24 + 1):
        store.publish("src", [up("main", i, T0 + i * hour)], T0 + i * hour)
    end = T0 + 60 * DAY
    series = only(store.select(named("pg_up"), 0, math.inf))
    assert len(series.timestamps) == 40 * 24 + 1
    assert series.timestamps[0] == end - 40 * DAY
    assert series.timestamps[-1] == end
    assert list(series.timestamps) == [end - 40 * DAY + k * hour for k in range(40 * 24 + 1)]
    store.set_retention(DAY)
    for i in range(60 * 24 + 1, 61 * 24 + 1):
        store.publish("src", [up("main", i, T0 + i * hour)], T0 + i * hour)
    series = only(store.select(named("pg_up"), 0, math.inf))
    assert list(series.timestamps) == [end + k * hour for k in range(25)]


def test_collectors_publish_while_the_evaluator_and_exposition_read() -> None:
    store = new_store(retention=30)
    errors: list[BaseException] = []
    stop = threading.Event()

    def collector(source: str) -> None:
        try:
            for i in range(2000):
                now = T0 + i
                store.publish(source, [activity(str(i % 50), i, now, target=source)], now)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for series in store.select(named("pg_stat_activity_count"), 0, math.inf):
                    assert len(series.timestamps) == len(series.values)
                list(store.current())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=collector, args=(f"t{i}",)) for i in range(3)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []


# --- select() against a naive reference -------------------------------------------------

def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


@dataclass
class ReferenceStore:
    """Every point ever accepted, in a list, and the rules spelled out the slow way."""

    retention_ms: int
    points: list[tuple[str, Labels, int, float]] = field(default_factory=list)
    owned: dict[str, set[tuple[str, Labels]]] = field(default_factory=dict)
    now_ms: int | None = None
    horizon_ms: int | None = None

    def _advance(self, now_ms: int) -> None:
        self.now_ms = now_ms if self.now_ms is None else max(self.now_ms, now_ms)
        horizon = self.now_ms - self.retention_ms
        self.horizon_ms = horizon if self.horizon_ms is None else max(self.horizon_ms, horizon)

    def _live(self, key: tuple[str, Labels]) -> list[tuple[int, float]]:
        assert self.horizon_ms is not None
        return [(t, v) for name, labels, t, v in self.points
                if (name, labels) == key and t >= self.horizon_ms]

    def _append(self, key: tuple[str, Labels], t_ms: int, value: float) -> None:
        assert self.horizon_ms is not None
        if t_ms < self.horizon_ms:
            return
        live = self._live(key)
        if live and t_ms < live[-1][0]:
            return
        if live and t_ms == live[-1][0]:
            self.points = [p for p in self.points if (p[0], p[1], p[2]) != (*key, t_ms)]
        self.points.append((*key, t_ms, value))

    def _release(self, keys: set[tuple[str, Labels]], at_ms: int) -> None:
        held = set().union(*self.owned.values()) if self.owned else set()
        for key in sorted(keys - held):
            live = self._live(key)
            if live:
                self._append(key, max(at_ms, live[-1][0] + 1), STALE_NAN)

    def publish(self, source: str, samples: list[Sample], now_ms: int) -> None:
        self._advance(now_ms)
        for sample in samples:
            self._append((sample.name, sample.labels), round(sample.timestamp * 1000),
                         sample.value)
        before = self.owned.get(source, set())
        self.owned[source] = {(s.name, s.labels) for s in samples}
        self._release(before - self.owned[source], now_ms)

    def clear(self, source: str, now_ms: int | None) -> None:
        before = self.owned.pop(source, None)
        if before is None:
            return
        if now_ms is not None:
            self._advance(now_ms)
        assert self.now_ms is not None
        self._release(before, self.now_ms if now_ms is None else now_ms)

    def set_retention(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        if self.now_ms is not None:
            self._advance(self.now_ms)

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float
               ) -> dict[Labels, list[tuple[float, int]]]:
        found: dict[Labels, list[tuple[float, int]]] = {}
        for name, labels, t_ms, value in self.points:
            full = tuple(sorted((*labels, ("__name__", name))))
            ts = t_ms / 1000
            if self.horizon_ms is not None and t_ms < self.horizon_ms:
                continue
            if not start <= ts <= end:
                continue
            if all(m.matches(dict(full).get(m.name, "")) for m in matchers):
                found.setdefault(full, []).append((ts, bits(value)))
        return {labels: sorted(pts) for labels, pts in found.items()}


NAMES = ["pg_up", "pg_stat_activity_count"]
LABEL_SETS: list[Labels] = [(), labels_of(x="1"), labels_of(x="2", y="p"), labels_of(y="q")]
SERIES = [(name, labels) for name in NAMES for labels in LABEL_SETS]

matchers_st = st.lists(st.one_of(
    st.builds(LabelMatcher.of, st.just("__name__"), st.sampled_from(list(MatchOp)),
              st.sampled_from([*NAMES, "pg_.*", "", "pg_up|nope"])),
    st.builds(LabelMatcher.of, st.sampled_from(["x", "y", "z"]), st.sampled_from(list(MatchOp)),
              st.sampled_from(["1", "2", "p", "", "1|2", ".*", "p?", "[pq]"])),
), max_size=3)

publish_st = st.tuples(
    st.just("publish"), st.sampled_from(["s1", "s2"]),
    st.lists(st.tuples(st.sampled_from(SERIES), st.integers(-3, 3),
                       st.one_of(st.integers(-20, 5).map(float), st.just(ABSENT))),
             max_size=5),
    st.integers(-20, 400),
)
op_st = st.one_of(
    publish_st, publish_st, publish_st,
    st.tuples(st.just("clear"), st.sampled_from(["s1", "s2"]),
              st.one_of(st.none(), st.integers(-20, 400))),
    st.tuples(st.just("retention"), st.integers(1, 3000)),
    st.tuples(st.just("select"), matchers_st, st.integers(-100, 5000), st.integers(0, 5000),
              st.sampled_from([0.0, 0.0004, -0.0004])),
)


@contextmanager
def tight_limits(tight: bool) -> Iterator[None]:
    """Shrink the store's thresholds so that tiny examples reach every rare path."""
    if not tight:
        yield
        return
    with mock.patch.object(memory, "_SWEEP_MIN_APPENDS", 1), mock.patch.multiple(
            buffers, _COMPACT_MIN_DEAD=1, _REBASE_AFTER=40, _INT32_MAX=300, _GAP_ALLOWANCE=0,
            _HEADROOM=0, _PAST_SMALL_BLOCKS=1):
        yield


@pytest.mark.parametrize("tight", [False, True], ids=["real-limits", "tight-limits"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retention_ms=st.integers(1, 3000), ops=st.lists(op_st, max_size=40))
def test_select_agrees_with_a_list_of_all_points(tight: bool, retention_ms: int,
                                                 ops: list[tuple[object, ...]]) -> None:
    base_ms = 1_700_000_000_000
    with tight_limits(tight):
        store = MemoryStore(retention=retention_ms / 1000)
        store.register(SPECS)
        ref = ReferenceStore(retention_ms)
        clock = 0
        for op in ops:
            if op[0] == "publish":
                _, source, rows, step = op
                assert isinstance(step, int) and isinstance(rows, list)
                clock += step
                now = base_ms + clock
                batch = [Sample(name, labels, value, (now + skew) / 1000)
                         for (name, labels), skew, value in rows]
                store.publish(str(source), batch, now / 1000)
                ref.publish(str(source), batch, now)
            elif op[0] == "clear":
                _, source, step = op
                if step is None or ref.now_ms is None:
                    store.clear(str(source))
                    ref.clear(str(source), None)
                else:
                    assert isinstance(step, int)
                    clock += step
                    store.clear(str(source), now=(base_ms + clock) / 1000)
                    ref.clear(str(source), base_ms + clock)
            elif op[0] == "retention":
                assert isinstance(op[1], int)
                store.set_retention(op[1] / 1000)
                ref.set_retention(op[1])
            else:
                _, matchers, lo, width, nudge = op
                assert isinstance(matchers, list) and isinstance(lo, int)
                assert isinstance(width, int) and isinstance(nudge, float)
                start = (base_ms + lo) / 1000 + nudge
                end = (base_ms + lo + width) / 1000 - nudge
                got = {s.labels: sorted(zip(s.timestamps, map(bits, s.values), strict=True))
                       for s in store.select(matchers, start, end)}
                assert got == ref.select(matchers, start, end)
        everything = {s.labels: sorted(zip(s.timestamps, map(bits, s.values), strict=True))
                      for s in store.select([], -math.inf, math.inf)}
        assert everything == ref.select([], -math.inf, math.inf)
