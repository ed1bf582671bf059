"""Durable history on both state backends: record, select, expire, restart, NaN."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest

from piggywatch.state import STATE_ERRORS, StateStore
from piggywatch.store import history as history_module
from piggywatch.store.history import SCHEMA_VERSION, CombinedSource, History, HistorySchemaError
from piggywatch.store.samples import Labels
from piggywatch.store.series import STALE_NAN, LabelMatcher, Series, is_stale
from tests.support.state import reopen
from tests.test_history import ListSource

M = LabelMatcher.of
DAY = 86400.0
T0 = 1_700_000_100.0  # a multiple of 300


def labels(name: str, **extra: str) -> Labels:
    return tuple(sorted({"__name__": name, **extra}.items()))


SIZE = labels("pg_database_size_bytes", datname="piggybong", target="main")
CALLS = labels("pg_stat_statements_calls_total", queryid="42", target="main")


def series(series_labels: Labels, points: Sequence[tuple[float, float]]) -> Series:
    return Series(series_labels, [t for t, _ in points], [v for _, v in points])


def everything(history: History) -> dict[Labels, list[tuple[float, float]]]:
    return {s.labels: list(zip(s.timestamps, s.values, strict=True))
            for s in history.select([], -math.inf, math.inf)}


@pytest.fixture
def history(state: StateStore) -> Iterator[History]:
    with History(state) as opened:
        yield opened


def test_record_keeps_the_last_non_stale_point_of_each_bucket(history: History) -> None:
    raw = [(T0 + t, float(t)) for t in range(0, 900, 15)]
    raw[39] = (T0 + 585, STALE_NAN)
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    assert history.record(ListSource(series(SIZE, raw)), now=T0 + 900) == 3
    assert everything(history) == {SIZE: [(T0 + 285, 285.0), (T0 + 570, 570.0),
                                          (T0 + 885, 885.0)]}
    [found] = history.select([M("datname", "=", "piggybong")], T0 + 286, T0 + 885)
    assert found.timestamps == [T0 + 570, T0 + 885]


def test_rewriting_a_bucket_is_idempotent_and_never_moves_it_back(history: History) -> None:
    history.keep([[M("__name__", "=", "pg_database_size_bytes")]])
    source = ListSource(series(SIZE, [(T0 + 10, 1.0), (T0 + 20, 2.0)]))
    history.record(source, now=T0 + 30)
    history.record(source, now=T0 + 30)
    assert everything(history) == {SIZE: [(T0 + 20, 2.0)]}
    history.record(ListSource(series(SIZE, [(T0 + 290, 3.0)])), now=T0 + 295)
    assert everything(history) == {SIZE: [(T0 + 290, 3.0)]}
    # A new selector reads everything the source holds: an older point of the bucket.
    history.keep([[M("datname", "=", "piggybong")]])
    history.record(ListSource(series(SIZE, [(T0 + 100, 9.0)])), now=T0 + 299)
    assert everything(history) == {SIZE: [(T0 + 290, 3.0)]}
    # The same timestamp again with another value is an update, not a second row.
    history.record(ListSource(series(SIZE, [(T0 + 290, 4.0)])), now=T0 + 299)
    assert everything(history) == {SIZE: [(T0 + 290, 4.0)]}


def test_nan_is_stored_as_null_and_infinities_round_trip(
        state: StateStore, history: History) -> None:
    history.keep([[M("target", "=", "main")]])
    raw = [(T0, math.inf), (T0 + 300, -math.inf), (T0 + 600, math.nan)]
    history.record(ListSource(series(SIZE, raw)), now=T0 + 600)
    [(t1, v1), (t2, v2), (t3, v3)] = everything(history)[SIZE]
    assert (t1, v1, t2, v2, t3) == (T0, math.inf, T0 + 300, -math.inf, T0 + 600)
    assert math.isnan(v3) and not is_stale(v3)
    conn = state.connect()
    assert conn.query("SELECT ts FROM history_points WHERE value IS NULL") == [(T0 + 600,)]
    conn.close()


def test_expire_and_keep(history: History) -> None:
    history.retention = DAY
    history.keep([[M("target", "=", "main")]])
    history.record(ListSource(series(SIZE, [(T0, 1.0), (T0 + DAY, 2.0)]),
                              series(CALLS, [(T0, 3.0)])), now=T0 + DAY)
    assert history.expire(now=T0 + DAY + 1) == 2
    assert everything(history) == {SIZE: [(T0 + DAY, 2.0)]}
    assert history.expire(now=T0 + DAY + 1) == 0
    # The expired series can come back; a series no longer kept is not recorded.
    history.keep([[M("__name__", "=", "pg_stat_statements_calls_total")]])
    history.record(ListSource(series(CALLS, [(T0 + DAY + 5, 4.0)]),
                              series(SIZE, [(T0 + DAY + 300, 5.0)])), now=T0 + DAY + 300)
    assert everything(history) == {SIZE: [(T0 + DAY, 2.0)], CALLS: [(T0 + DAY + 5, 4.0)]}


def test_history_survives_a_restart(state: StateStore) -> None:
    many = [labels("up", instance=str(i)) for i in range(100)]  # past the one-by-one lookup
    with History(state) as history:
        history.keep([[M("target", "=", "main")], [M("__name__", "=", "up")]])
        history.record(ListSource(series(SIZE, [(T0, 1.0)]), series(CALLS, [(T0, 5.0)]),
                                  *(series(x, [(T0, 1.0)]) for x in many)), now=T0 + 1)
        before = everything(history)
    again = reopen(state)
    try:
        with History(again) as reopened:
            assert everything(reopened) == before
            # The first call after a restart re-reads what the source holds: nothing changes
            # for points already stored, and new points go to the same series rows.
            reopened.keep([[M("target", "=", "main")], [M("__name__", "=", "up")]])
            reopened.record(ListSource(series(SIZE, [(T0, 1.0), (T0 + 300, 2.0)]),
                                       *(series(x, [(T0, 1.0), (T0 + 300, 2.0)])
                                         for x in many)), now=T0 + 301)
            after = everything(reopened)
            assert after[SIZE] == [(T0, 1.0), (T0 + 300, 2.0)]
            assert after[CALLS] == [(T0, 5.0)]
            assert all(after[x] == [(T0, 1.0), (T0 + 300, 2.0)] for x in many)
        conn = again.connect()
        assert conn.one("SELECT count(*) FROM history_series") == (102,)
        assert conn.one("SELECT value FROM history_meta WHERE key = 'schema_version'"
                        ) == (str(SCHEMA_VERSION),)
        conn.close()
    finally:
        again.close()


def test_a_large_batch_is_one_transaction(
        state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    many = [labels("up", instance=str(i)) for i in range(2000)]
    with History(state) as history:
        history.keep([[M("__name__", "=", "up")]])
        source = ListSource(*(series(x, [(T0 + 10, 1.0), (T0 + 310, 2.0)]) for x in many))
        assert history.record(source, now=T0 + 310) == 4000
        assert len(history.select([M("__name__", "=", "up")], T0, T0 + 310)) == 2000

        # A batch failing after its new series and deletes were written leaves nothing.
        newcomers = [labels("up", instance=f"new-{i}") for i in range(50)]
        later = ListSource(*(series(x, [(T0 + 600, 3.0)]) for x in [*many, *newcomers]))
        monkeypatch.setattr(history_module, "_UPSERT_UNLESS_NEWER",
                            "INSERT INTO no_such_table VALUES (?, ?, ?, ?, ?, ?)")
        with pytest.raises(STATE_ERRORS):
            history.record(later, now=T0 + 600)
        monkeypatch.undo()
        conn = state.connect()
        assert conn.one("SELECT count(*) FROM history_series") == (2000,)
        assert conn.one("SELECT count(*) FROM history_points") == (4000,)
        conn.close()
        # The next batch still works: ids handed out in the failed one are forgotten.
        assert history.record(later, now=T0 + 600) == 2050
        assert len(history.select([M("__name__", "=", "up")], T0, T0 + 600)) == 2050


def test_an_incompatible_history_schema_is_refused(state: StateStore) -> None:
    History(state).close()
    conn = state.connect()
    conn.execute("UPDATE history_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(HistorySchemaError, match="schema version 99"):
        History(state)


def test_combined_source_without_history_answers_from_memory(history: History) -> None:
    history.keep([[M("target", "=", "main")]])
    history.record(ListSource(series(SIZE, [(T0, 1.0)])), now=T0)
    memory = ListSource(series(SIZE, [(T0 + 3600, 2.0)]))
    combined = CombinedSource(memory, history, lambda: 600.0)
    [both] = combined.select([M("target", "=", "main")], T0, T0 + 3600)
    assert both.timestamps == [T0, T0 + 3600]
    combined.history = None  # a standby: no history open
    [recent] = combined.select([M("target", "=", "main")], T0, T0 + 3600)
    assert recent.timestamps == [T0 + 3600]
    combined.history = history
    assert len(combined.select([M("target", "=", "main")], T0, T0 + 3600)[0].timestamps) == 2
