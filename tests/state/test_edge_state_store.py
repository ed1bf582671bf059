"""Edge-function watermarks on both state backends: load, settle, bucket changes, standbys."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from piggywatch.collectors.edge_functions import (
    EdgeFunctionsCollector,
    EdgeStateDB,
    Ranker,
    Reading,
    Totals,
)
from piggywatch.state import StateStore
from tests.support.state import reopen

BUCKETS = (0.1, 1.0)
S1 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
S2 = datetime(2025, 6, 1, 12, 1, 0, 123456, tzinfo=UTC)
S3 = datetime(2025, 6, 1, 12, 2, 0, tzinfo=UTC)


def totals(n: float) -> Totals:
    return {("auth", "status:2xx"): n, ("auth", "bucket:0"): n, ("auth", "sum"): n / 10}


@pytest.fixture
def edge(state: StateStore) -> Iterator[EdgeStateDB]:
    db = EdgeStateDB(state)
    yield db
    db.close()


def test_settle_adds_totals_and_moves_the_watermark_across_a_restart(
        state: StateStore, edge: EdgeStateDB) -> None:
    assert edge.load("sql:main:logs", BUCKETS) == (None, {})
    assert edge.settle("sql:main:logs", S1, totals(2), BUCKETS, since=None) == "saved"
    assert edge.settle("sql:main:logs", S2, totals(3), BUCKETS, since=S1) == "saved"
    again = reopen(state)
    try:
        restarted = EdgeStateDB(again)
        assert restarted.load("sql:main:logs", BUCKETS) == (S2, totals(5))
        assert restarted.load("other", BUCKETS) == (None, {})
        restarted.close()
    finally:
        again.close()


def test_settle_from_a_watermark_the_state_no_longer_holds_writes_nothing(
        edge: EdgeStateDB) -> None:
    edge.settle("src", S1, totals(2), BUCKETS, since=None)
    edge.settle("src", S2, totals(3), BUCKETS, since=S1)
    assert edge.settle("src", S3, totals(7), BUCKETS, since=S1) == "moved"
    assert edge.settle("src", S3, totals(7), BUCKETS, since=None) == "moved"
    assert edge.load("src", BUCKETS) == (S2, totals(5))


def test_changed_buckets_drop_the_histogram_but_keep_invocations(
        state: StateStore, edge: EdgeStateDB) -> None:
    edge.settle("src", S1, totals(2), BUCKETS, since=None)
    assert edge.load("src", (0.5,)) == (S1, {("auth", "status:2xx"): 2.0})
    conn = state.connect()
    assert conn.one("SELECT buckets FROM edge_watermark") == ("[0.5]",)
    conn.close()
    edge.settle("src", S2, totals(1), (0.5,), since=S1)
    assert edge.load("src", (0.5,)) == (S2, {**totals(1), ("auth", "status:2xx"): 3.0})


def test_a_standby_reads_but_never_writes(state: StateStore, edge: EdgeStateDB) -> None:
    edge.settle("src", S1, totals(2), BUCKETS, since=None)
    other = reopen(state)
    standby = EdgeStateDB(other, may_write=lambda: False)
    # Changed buckets: dropped in memory only, the leader's state stays as it is.
    assert standby.load("src", (0.5,)) == (S1, {("auth", "status:2xx"): 2.0})
    assert standby.settle("src", S2, totals(3), BUCKETS, since=S1) == "standby"
    assert standby.settle("new", S2, totals(3), BUCKETS, since=None) == "standby"
    assert edge.load("src", BUCKETS) == (S1, totals(2))
    assert edge.load("new", BUCKETS) == (None, {})
    standby.close()
    other.close()


class Rows:
    """A log source over (second, status) rows: settles up to ``now - 60``."""

    key = "fake:logs"

    def __init__(self) -> None:
        self.rows: list[float] = []

    def read(self, since: datetime | None, now: float, rank: Ranker) -> Reading:
        settle = datetime.fromtimestamp(now - 60, UTC)
        start = since.timestamp() if since is not None else now - 300
        reading = Reading(settle)
        for ts in self.rows:
            if ts < start:
                continue
            part = reading.settled if ts < settle.timestamp() else reading.pending
            key = ("auth", "status:2xx")
            part[key] = part.get(key, 0.0) + 1
        return reading


def invocations(collector: EdgeFunctionsCollector, now: float) -> float:
    return sum(s.value for s in collector.collect(now)
               if s.name == "edge_function_invocations_total")


def test_a_standby_counts_in_memory_and_continues_from_the_state_when_promoted(
        state: StateStore, request: pytest.FixtureRequest) -> None:
    T = 1_750_000_000.0
    source = Rows()
    leading = [True]
    other = reopen(state)
    request.addfinalizer(other.close)
    leader = EdgeFunctionsCollector(source, EdgeStateDB(state), buckets=BUCKETS, top_n=5)
    standby = EdgeFunctionsCollector(
        source, EdgeStateDB(other, may_write=lambda: not leading[0]),
        buckets=BUCKETS, top_n=5)
    source.rows = [T - 100 + i for i in range(10)]
    assert invocations(leader, T) == invocations(standby, T) == 10

    source.rows += [T + i for i in range(5)]
    assert invocations(leader, T + 100) == invocations(standby, T + 130) == 15
    source.rows += [T + 150 + i for i in range(5)]
    # The standby settled in memory only; the state is the leader's.
    assert invocations(standby, T + 400) == 20
    conn = state.connect()
    stored = conn.one("SELECT value FROM edge_settled WHERE source = 'fake:logs'")
    assert stored == (15.0,)

    # Failover: the old standby writes now, from the leader's watermark and totals, so the
    # state still counts each row once; its own counters stay where they were.
    leading[0] = False
    source.rows += [T + 500 + i for i in range(3)]
    assert invocations(standby, T + 700) == 23
    assert conn.one("SELECT value FROM edge_settled WHERE source = 'fake:logs'") == (23.0,)
    assert invocations(standby, T + 700) == 23
    conn.close()


def test_a_standby_promoted_before_anything_was_saved_saves_its_own_totals(
        state: StateStore) -> None:
    T = 1_750_000_000.0
    source = Rows()
    writing = [False]
    collector = EdgeFunctionsCollector(
        source, EdgeStateDB(state, may_write=lambda: writing[0]), buckets=BUCKETS, top_n=5)
    source.rows = [T - 100 + i for i in range(10)]
    assert invocations(collector, T) == 10
    source.rows += [T + i for i in range(5)]
    writing[0] = True
    assert invocations(collector, T + 100) == 15
    other = reopen(state)
    again = EdgeStateDB(other)
    assert again.load("fake:logs", BUCKETS) == (
        datetime.fromtimestamp(T + 40, UTC), {("auth", "status:2xx"): 15.0})
    again.close()
    other.close()
