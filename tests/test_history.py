"""Durable downsampled history and the combined (history + memory) series source."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.store.history import SCHEMA_VERSION, CombinedSource, History, HistorySchemaError
from piggywatch.store.samples import Labels
from piggywatch.store.series import STALE_NAN, LabelMatcher, Series, is_stale

M = LabelMatcher.of
HOUR = 3600.0
DAY = 86400.0
# A plausible epoch so bucket arithmetic runs on realistic magnitudes.
T0 = 1_700_000_100.0  # a multiple of 300


def labels(name: str, **extra: str) -> Labels:
    return tuple(sorted({"__name__": name, **extra}.items()))


def matching(matchers: Sequence[LabelMatcher], series_labels: Labels) -> bool:
    present = dict(series_labels)
    return all(m.matches(present.get(m.name, "")) for m in matchers)


class ListSource:
    """A SeriesSource over fixed series, as the in-memory store would answer."""

    def __init__(self, *series: Series) -> None:
        self.series = list(series)

    def select(
            self, matchers: Sequence[LabelMatcher], start: float, end: float) -> Iterator[Series]:
        for s in self.series:
            if not matching(matchers, s.labels):
                continue
            points = [(t, v) for t, v in zip(s.timestamps, s.values, strict=True)
                      if start <= t <= end]
            if points:
                yield Series(s.labels, [t for t, _ in points], [v for _, v in points])


class WindowSource:
    """Like the in-memory store: appends samples and forgets those older than ``window``."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.points: dict[Labels, deque[tuple[float, float]]] = {}

    def add(self, series_labels: Labels, ts: float, value: float) -> None:
        self.points.setdefault(series_labels, deque()).append((ts, value))
        for key, points in list(self.points.items()):
            while points and points[0][0] < ts - self.window:
                points.popleft()
            if not points:
                del self.points[key]

    def select(
            self, matchers: Sequence[LabelMatcher], start: float, end: float) -> Iterator[Series]:
        for series_labels, points in self.points.items():
            if not matching(matchers, series_labels):
                continue
            inside = [(t, v) for t, v in points if start <= t <= end]
            if inside:
                yield Series(series_labels, [t for t, _ in inside], [v for _, v in inside])


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Run one statement on its own connection, as other code sharing the file would."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql).fetchall()


def series(series_labels: Labels, points: Sequence[tuple[float, float]]) -> Series:
    return Series(series_labels, [t for t, _ in points], [v for _, v in points])


def points_of(found: Series) -> list[tuple[float, float]]:
    return list(zip(found.timestamps, found.values, strict=True))


def everything(history: History) -> dict[Labels, list[tuple[float, float]]]:
    return {s.labels: points_of(s) for s in history.select([], -math.inf, math.inf)}


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "state.db") as opened:
        yield opened


SIZE = labels("pg_database_size_bytes", datname="piggybong", target="main")
CALLS = labels("pg_stat_statements_calls_total", queryid="42", target="main")


def test_record_keeps_the_last_non_stale_point_of_each_bucket(history: History) -> None:
    raw = [(T0 + t, float(t)) for t in range(0, 900, 15)]
    raw[39] = (T0 + 585, STALE_NAN)  # the last point of the second bucket is a stale marker
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    written = history.record(ListSource(series(SIZE, raw)), now=T0 + 900)

    assert written == 3
    assert everything(history) == {SIZE: [(T0 + 285, 285.0), (T0 + 570, 570.0),
                                          (T0 + 885, 885.0)]}


def test_only_series_of_kept_selectors_are_recorded(history: History) -> None:
    source = ListSource(series(SIZE, [(T0, 1.0)]), series(CALLS, [(T0, 2.0)]))
    history.keep([[M("__name__", "=~", "pg_stat_statements_.*"), M("queryid", "=", "42")]])
    history.record(source, now=T0 + 10)
    assert list(everything(history)) == [CALLS]

    history.keep([])
    source.series = [series(SIZE, [(T0 + 400, 1.0)]), series(CALLS, [(T0 + 400, 3.0)])]
    history.record(source, now=T0 + 410)
    assert everything(history) == {CALLS: [(T0, 2.0)]}


def test_recording_twice_for_the_same_bucket_changes_nothing(history: History) -> None:
    source = ListSource(series(SIZE, [(T0 + 10, 1.0), (T0 + 20, 2.0)]))
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    history.record(source, now=T0 + 30)
    history.record(source, now=T0 + 30)
    assert everything(history) == {SIZE: [(T0 + 20, 2.0)]}


def test_the_open_bucket_moves_forward_as_samples_arrive_but_never_back(
        history: History) -> None:
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    history.record(ListSource(series(SIZE, [(T0 + 10, 1.0)])), now=T0 + 15)
    history.record(ListSource(series(SIZE, [(T0 + 10, 1.0), (T0 + 290, 2.0)])), now=T0 + 295)
    assert everything(history) == {SIZE: [(T0 + 290, 2.0)]}

    # After a restart memory may hold an earlier point of a bucket than the history does.
    history.keep([[M("datname", "=", "piggybong")]])
    history.record(ListSource(series(SIZE, [(T0 + 100, 9.0)])), now=T0 + 299)
    assert everything(history) == {SIZE: [(T0 + 290, 2.0)]}


class BrokenSource:
    def select(
            self, matchers: Sequence[LabelMatcher], start: float, end: float) -> Iterator[Series]:
        raise ConnectionError("store unavailable")


def test_a_failed_record_is_caught_up_by_the_next(history: History) -> None:
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    history.record(ListSource(series(SIZE, [(T0, 1.0)])), now=T0)
    with pytest.raises(ConnectionError):
        history.record(BrokenSource(), now=T0 + 600)
    source = ListSource(series(SIZE, [(T0 + 300 * i, float(i)) for i in range(4)]))
    history.record(source, now=T0 + 900)
    assert everything(history)[SIZE] == points_of(source.series[0])


def test_counters_are_stored_raw_so_resets_stay_visible(history: History) -> None:
    raw = [(T0, 100.0), (T0 + 300, 250.0), (T0 + 600, 3.0), (T0 + 900, 40.0)]
    history.keep([[M("__name__", "=", "pg_stat_statements_calls_total")]])
    history.record(ListSource(series(CALLS, raw)), now=T0 + 900)
    assert everything(history) == {CALLS: raw}


def test_nan_and_infinities_round_trip(history: History) -> None:
    history.keep([[M("target", "=", "main")]])
    raw = [(T0, math.inf), (T0 + 300, -math.inf), (T0 + 600, math.nan)]
    history.record(ListSource(series(SIZE, raw)), now=T0 + 600)
    [(t1, v1), (t2, v2), (t3, v3)] = everything(history)[SIZE]
    assert (t1, v1, t2, v2, t3) == (T0, math.inf, T0 + 300, -math.inf, T0 + 600)
    assert math.isnan(v3) and not is_stale(v3)


def test_history_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "piggywatch" / "state.db"
    with History(path) as history:
        history.keep([[M("target", "=", "main")]])
        history.record(ListSource(series(SIZE, [(T0, 1.0)]), series(CALLS, [(T0, 5.0)])),
                       now=T0 + 1)
        before = everything(history)

    with History(path) as reopened:
        assert everything(reopened) == before
        # New points of a known series go to the same series row.
        reopened.keep([[M("target", "=", "main")]])
        reopened.record(ListSource(series(SIZE, [(T0 + 300, 2.0)])), now=T0 + 301)
        assert everything(reopened)[SIZE] == [(T0, 1.0), (T0 + 300, 2.0)]

    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "SELECT count(*) FROM history_series") == [(2,)]
    assert query(path, "SELECT value FROM history_meta WHERE key = 'schema_version'"
                 ) == [(str(SCHEMA_VERSION),)]


def test_history_shares_the_state_file_with_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    query(path, "CREATE TABLE alert_state (fingerprint TEXT PRIMARY KEY, since REAL)")
    query(path, "INSERT INTO alert_state VALUES ('abc', 1.5)")
    with History(path) as history:
        history.keep([[M("target", "=", "main")]])
        history.record(ListSource(series(SIZE, [(T0, 1.0)])), now=T0)
    assert query(path, "SELECT * FROM alert_state") == [("abc", 1.5)]


def test_a_state_file_from_an_incompatible_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    History(path).close()
    query(path, "UPDATE history_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(HistorySchemaError, match=r"state\.db.*schema version 99"):
        History(path)


def test_expire_drops_points_past_retention_and_series_left_empty(tmp_path: Path) -> None:
    with History(tmp_path / "state.db", retention=DAY) as history:
        history.keep([[M("target", "=", "main")]])
        history.record(ListSource(series(SIZE, [(T0, 1.0), (T0 + DAY, 2.0)]),
                                  series(CALLS, [(T0, 3.0)])), now=T0 + DAY)
        assert history.expire(now=T0 + DAY + 1) == 2
        assert everything(history) == {SIZE: [(T0 + DAY, 2.0)]}
        assert query(history.path, "SELECT count(*) FROM history_series") == [(1,)]
        # The expired series can come back.
        history.record(ListSource(series(CALLS, [(T0 + DAY + 5, 4.0)])), now=T0 + DAY + 5)
        assert everything(history)[CALLS] == [(T0 + DAY + 5, 4.0)]


UP_API = labels("up", job="api", instance="a:1")
UP_DB = labels("up", job="db", instance="b:1")
UP_BARE = labels("up", instance="c:1")
PG_UP = labels("pg_up", job="db")


@pytest.mark.parametrize(("matchers", "expected"), [
    ([M("__name__", "=", "up")], [UP_API, UP_BARE, UP_DB]),
    ([M("__name__", "=", "up"), M("job", "=", "db")], [UP_DB]),
    ([M("__name__", "=", "up"), M("job", "!=", "db")], [UP_API, UP_BARE]),
    ([M("__name__", "=", "up"), M("job", "=", "")], [UP_BARE]),
    ([M("__name__", "=", "up"), M("job", "=~", "a.*|d")], [UP_API]),
    ([M("__name__", "=", "up"), M("job", "!~", "a.*")], [UP_BARE, UP_DB]),
    ([M("__name__", "=~", "(pg_)?up"), M("job", "=", "db")], [PG_UP, UP_DB]),
    ([M("__name__", "!=", "up")], [PG_UP]),
    ([M("__name__", "=", "nothing")], []),
])
def test_select_applies_every_matcher_kind(
        history: History, matchers: list[LabelMatcher], expected: list[Labels]) -> None:
    history.keep([[M("__name__", "=~", ".+")]])
    everyone = (UP_API, UP_DB, UP_BARE, PG_UP)
    history.record(ListSource(*(series(x, [(T0, 1.0)]) for x in everyone)), now=T0)
    found = [s.labels for s in history.select(matchers, T0 - 1, T0 + 1)]
    assert found == sorted(expected)  # in label order, whatever the insertion order


def test_select_returns_only_points_inside_the_range(history: History) -> None:
    history.keep([[M("target", "=", "main")]])
    history.record(ListSource(series(SIZE, [(T0 + 300 * i, float(i)) for i in range(5)])),
                   now=T0 + 1200)
    [found] = history.select([M("datname", "=", "piggybong")], T0 + 300, T0 + 900)
    assert points_of(found) == [(T0 + 300, 1.0), (T0 + 600, 2.0), (T0 + 900, 3.0)]
    assert history.select([M("datname", "=", "piggybong")], T0 + 301, T0 + 599) == []


def stitched_fixture(history: History) -> tuple[CombinedSource, float]:
    """History of the last 3 h at 5 m, memory of the last hour at 15 s, plus one-sided series."""
    now = T0 + 3 * HOUR
    gone = labels("pg_database_size_bytes", datname="dropped", target="main")
    new = labels("pg_database_size_bytes", datname="fresh", target="main")
    memory = WindowSource(window=HOUR)
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    t = T0
    while t <= now:
        memory.add(SIZE, t, t - T0)
        if t <= T0 + HOUR:
            memory.add(gone, t, 7.0)
        if t >= now - 60:
            memory.add(new, t, 1.0)
        if (t - T0) % 300 == 0:
            history.record(memory, t)
        t += 15
    return CombinedSource(memory, history, lambda: HOUR), now


def test_combined_source_stitches_history_before_memory(history: History) -> None:
    combined, now = stitched_fixture(history)
    found = {s.labels: s for s in combined.select(
        [M("__name__", "=", "pg_database_size_bytes")], now - 3 * HOUR, now)}

    size = found[SIZE]
    assert list(size.timestamps) == sorted(set(size.timestamps))
    coarse = [t for t in size.timestamps if t < now - HOUR]
    fine = [t for t in size.timestamps if t >= now - HOUR]
    assert coarse == [T0 + 285 + 300 * i for i in range(24)]
    assert fine == [now - HOUR + 15 * i for i in range(241)]
    assert all(v == t - T0 for t, v in zip(size.timestamps, size.values, strict=True))
    # Known only to the history (left memory two hours ago) or only to memory (new).
    dropped = found[labels("pg_database_size_bytes", datname="dropped", target="main")]
    assert [t - T0 for t in dropped.timestamps] == [285 + 300 * i for i in range(12)] + [3600]
    assert len(found[labels("pg_database_size_bytes", datname="fresh", target="main")
                     ].timestamps) == 5


def test_combined_source_leaves_ranges_memory_covers_to_memory(history: History) -> None:
    combined, now = stitched_fixture(history)
    [found] = [s for s in combined.select([M("datname", "=", "piggybong")], now - 600, now)]
    assert found.timestamps == [now - 600 + 15 * i for i in range(41)]


def test_combined_source_answers_offset_selects_from_history(history: History) -> None:
    combined, now = stitched_fixture(history)
    # `x offset 2h` evaluated now: a short range ending long before memory's window.
    [found] = combined.select([M("datname", "=", "piggybong")], now - 2 * HOUR - 300,
                              now - 2 * HOUR)
    assert points_of(found) == [(T0 + 3585, 3585.0)]


def test_a_week_old_point_is_available_after_a_restart(tmp_path: Path) -> None:
    """A 15 s series for 8 days, memory holding one hour: `offset 7d` and `[7d]` still work."""
    path = tmp_path / "state.db"
    resolution = 300.0
    memory = WindowSource(window=HOUR)
    with History(path, resolution=resolution) as history:
        history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
        t = T0
        while t <= T0 + 8 * DAY:
            memory.add(SIZE, t, 1e9 + (t - T0))
            if (t - T0) % resolution == 0:
                history.record(memory, t)
            if (t - T0) % HOUR == 0:
                history.expire(t)
            t += 15
    stopped = t - 15

    # Restarted: memory starts empty and has taken two fresh samples since.
    restarted = WindowSource(window=HOUR)
    for fresh in (stopped + 30, stopped + 45):
        restarted.add(SIZE, fresh, 1e9 + (fresh - T0))
    now = stopped + 45
    with History(path, resolution=resolution) as history:
        combined = CombinedSource(restarted, history, lambda: HOUR)
        week_ago = now - 7 * DAY

        [offset] = combined.select([M("__name__", "=", "pg_database_size_bytes")],
                                   week_ago - resolution, week_ago)
        ts, value = points_of(offset)[-1]
        assert week_ago - resolution <= ts <= week_ago
        assert value == 1e9 + (ts - T0)

        [week] = combined.select([M("__name__", "=", "pg_database_size_bytes")],
                                 now - 7 * DAY, now)
        assert week.timestamps[0] - (now - 7 * DAY) <= resolution
        assert list(week.timestamps) == sorted(set(week.timestamps))
        assert list(week.timestamps[-2:]) == [stopped + 30, stopped + 45]
        assert len(week.timestamps) == pytest.approx(7 * DAY / resolution, abs=3)

        # Retention (8 days) was enforced while running.
        [everything_kept] = history.select([], -math.inf, math.inf)
        assert everything_kept.timestamps[0] >= stopped - 8 * DAY - resolution


def test_recording_while_the_evaluator_selects(tmp_path: Path) -> None:
    with History(tmp_path / "state.db") as history:
        history.keep([[M("__name__", "=", "up")]])
        source = ListSource(*(series(labels("up", instance=str(i)),
                                     [(T0 + 300 * k, float(k)) for k in range(50)])
                              for i in range(20)))
        errors: list[BaseException] = []

        def evaluate() -> None:
            try:
                for _ in range(50):
                    for found in history.select([M("__name__", "=", "up")], T0, T0 + 1e6):
                        assert list(found.timestamps) == sorted(found.timestamps)
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)

        reader = threading.Thread(target=evaluate)
        reader.start()
        for k in range(50):
            history.record(source, now=T0 + 300 * k)
        reader.join()
        assert errors == []
        assert len(history.select([M("__name__", "=", "up")], T0, T0 + 1e6)) == 20


# A reference model: what History must hold after recording a source that reveals its
# points as time passes, as the in-memory store does.

LABEL_POOL = [UP_API, UP_DB, UP_BARE, PG_UP, labels("up", job="api", instance="é:2")]
MATCHER_POOL: list[list[LabelMatcher]] = [
    [],
    [M("__name__", "=", "up")],
    [M("__name__", "=", "pg_up")],
    [M("__name__", "=~", "pg_.*|up"), M("job", "!=", "api")],
    [M("job", "=", "")],
    [M("job", "=~", "a.*")],
    [M("job", "!~", "a.*"), M("__name__", "!=", "pg_up")],
    [M("instance", "=~", ".*:1")],
]


class RevealingSource:
    """Returns only the points whose timestamp is not after ``now``."""

    def __init__(self, points: dict[Labels, list[tuple[float, float]]]) -> None:
        self.points = points
        self.now = -math.inf

    def select(
            self, matchers: Sequence[LabelMatcher], start: float, end: float) -> Iterator[Series]:
        for series_labels, pts in self.points.items():
            if matching(matchers, series_labels):
                inside = sorted((t, v) for t, v in pts if start <= t <= min(end, self.now))
                if inside:
                    yield series(series_labels, inside)


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=150, deadline=None)
@given(
    raw=st.lists(st.tuples(st.sampled_from(range(len(LABEL_POOL))),
                           st.integers(0, 4 * 3600).map(lambda q: q / 4),
                           st.one_of(st.floats(), st.just(STALE_NAN))), max_size=80),
    kept=st.lists(st.sampled_from(range(len(MATCHER_POOL))), min_size=1, max_size=3),
    record_at=st.lists(st.integers(0, 3600), min_size=1, max_size=6),
    resolution=st.sampled_from([7.5, 60.0, 300.0]),
    query=st.sampled_from(range(len(MATCHER_POOL))),
    window=st.tuples(st.integers(0, 3600), st.integers(0, 3600)),
)
def test_select_agrees_with_a_naive_reference(
        raw: list[tuple[int, float, float]], kept: list[int], record_at: list[int],
        resolution: float, query: int, window: tuple[int, int]) -> None:
    points: dict[Labels, dict[float, float]] = {}
    for index, ts, value in raw:
        points.setdefault(LABEL_POOL[index], {}).setdefault(ts, value)
    source = RevealingSource({k: list(v.items()) for k, v in points.items()})
    selectors = [MATCHER_POOL[i] for i in kept]

    with History(":memory:", resolution=resolution) as history:
        history.keep(selectors)
        for now in sorted(record_at):
            source.now = float(now)
            history.record(source, float(now))
        start, end = sorted(window)
        got = {s.labels: points_of(s)
               for s in history.select(MATCHER_POOL[query], float(start), float(end))}

    last_recorded = max(record_at)
    expected: dict[Labels, list[tuple[float, float]]] = {}
    for series_labels, by_ts in points.items():
        if not any(matching(sel, series_labels) for sel in selectors):
            continue
        if not matching(MATCHER_POOL[query], series_labels):
            continue
        buckets: dict[int, tuple[float, float]] = {}
        for ts in sorted(by_ts):
            if ts <= last_recorded and not is_stale(by_ts[ts]):
                buckets[math.floor(ts / resolution)] = (ts, by_ts[ts])
        inside = [p for _, p in sorted(buckets.items()) if start <= p[0] <= end]
        if inside:
            expected[series_labels] = inside

    assert sorted(got) == sorted(expected)
    for series_labels, want in expected.items():
        have = got[series_labels]
        assert [t for t, _ in have] == [t for t, _ in want]
        assert all(same_value(a, b) for (_, a), (_, b) in zip(have, want, strict=True))
