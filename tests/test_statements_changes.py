"""The statements collector's changes against its full result, on a real PostgreSQL.

A cluster of this module's own keeps pg_stat_statements small (max 100, so entries are
evicted), tracks nested statements, and leaves the monitoring role's own queries out of the
view: two collectors reading one after the other then see the same view. One is asked for
its full result each cycle, the other for what changed; applying each cycle's changes to the
previous result must give the full one, whatever ran in between. A third collector runs as
the daemon runs it, through a job into the store: the store then holds the full result too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.postgres.statements import CALLS, StatementsCollector
from piggywatch.collectors.postgres.statements_setup import StatementsSetup
from piggywatch.collectors.postgres.target import PostgresTarget, Session
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.jobs import CollectorJob
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.store import Changes, Labels, MemoryStore, Sample

Conn = psycopg.Connection[tuple[Any, ...]]
WATCHER = "watcher"
TENANT = "tenant"
PASSWORD = "watcher-password-1"
TABLES = 10
COLUMNS = 20  # 200 distinct statements, twice pg_stat_statements.max
Series = tuple[str, Labels]


class Lab:
    """The module's cluster: a management connection whose statements are not tracked,
    and one tracked connection per role running the workload."""

    def __init__(self, cluster: ThrowawayCluster) -> None:
        self.cluster = cluster
        self.admin: Conn = psycopg.connect(cluster.dsn(), autocommit=True)
        self.admin.execute("SET pg_stat_statements.track = 'none'")
        self.work: Conn = psycopg.connect(cluster.dsn(), autocommit=True)
        self.tenant: Conn = psycopg.connect(cluster.dsn(user=TENANT, password=PASSWORD),
                                            autocommit=True)
        self.targets: list[PostgresTarget] = []

    def collector(self, top_k: int) -> StatementsCollector:
        target = PostgresTarget("lab", self.cluster.dsn(user=WATCHER, password=PASSWORD))
        self.targets.append(target)
        return StatementsCollector(target, timeout=10.0, top_k=top_k, schema=None,
                                   text_refresh=0.0)

    def reset(self) -> None:
        self.admin.execute("SELECT pg_stat_statements_reset()")

    def reset_one(self, statement: str) -> None:
        self.admin.execute("SELECT pg_stat_statements_reset(0, 0, queryid) "
                           "FROM pg_stat_statements WHERE query = %s", (statement,))

    def stats_reset(self) -> Any:
        [(when,)] = self.admin.execute("SELECT stats_reset FROM pg_stat_statements_info")
        return when

    def view(self) -> list[tuple[int, bool, int]]:
        """(queryid, toplevel, calls) of every entry, in the view's order."""
        return [(int(q), bool(t), int(c)) for q, t, c in self.admin.execute(
            "SELECT queryid, toplevel, calls FROM pg_stat_statements(false)")]

    def close_targets(self) -> None:
        for target in self.targets:
            target.close()
        self.targets.clear()

    def close(self) -> None:
        self.close_targets()
        for conn in (self.admin, self.work, self.tenant):
            conn.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    settings = {"pg_stat_statements.max": "100", "pg_stat_statements.track": "all",
                "autovacuum": "off"}
    with ThrowawayCluster(max_connections=20, settings=settings) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            for role in (WATCHER, TENANT):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(PASSWORD)))
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(WATCHER)))
            # The collectors' own queries stay out of the view they read.
            conn.execute(sql.SQL("ALTER ROLE {} SET pg_stat_statements.track = 'none'").format(
                sql.Identifier(WATCHER)))
            columns = ", ".join(f"c{c} int" for c in range(COLUMNS))
            for t in range(TABLES):
                conn.execute(f"CREATE TABLE t{t} ({columns})")
                conn.execute(f"INSERT INTO t{t} VALUES ({', '.join(['1'] * COLUMNS)})")
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                    sql.Identifier(f"t{t}"), sql.Identifier(TENANT)))
        made = Lab(cluster)
        try:
            yield made
        finally:
            made.close()


def statement(n: int) -> str:
    return f"SELECT c{n % COLUMNS} FROM t{n // COLUMNS % TABLES}"


def apply(state: dict[Series, Sample], changes: Changes) -> None:
    """``changes`` applied to ``state``, checking that they tell only what changed."""
    for series in changes.removed:
        assert series in state, f"removed but not there: {series}"
        del state[series]
    for sample in changes.changed:
        series = (sample.name, sample.labels)
        before = state.get(series)
        assert before is None or before.value != sample.value, f"unchanged: {series}"
        if before is not None:
            # The job merges target labels by the labels object: it must be the same one.
            assert before.labels is sample.labels
        state[series] = sample
    assert len({(s.name, s.labels) for s in changes.changed}) == len(changes.changed)


def values(samples: list[Sample] | dict[Series, Sample]) -> dict[Series, float]:
    listed = samples.values() if isinstance(samples, dict) else samples
    return {(s.name, s.labels): s.value for s in listed}


ACTION = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 2 * TABLES * COLUMNS - 1), st.integers(1, 3)),
    st.tuples(st.just("tenant"), st.integers(0, 40), st.integers(1, 2)),
    st.tuples(st.just("nested"), st.integers(0, 40), st.just(1)),
    st.tuples(st.just("burst"), st.integers(0, TABLES * COLUMNS - 1), st.integers(20, 60)),
    st.tuples(st.just("reset_one"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
)


def act(lab: Lab, action: tuple[str, int, int]) -> None:
    kind, n, times = action
    if kind == "run":
        for _ in range(times):
            lab.work.execute(statement(n))
    elif kind == "tenant":
        for _ in range(times):
            lab.tenant.execute(statement(n))
    elif kind == "nested":
        lab.work.execute(f"DO $$ BEGIN PERFORM {statement(n)[7:]}; END $$")
    elif kind == "burst":  # many new statements: evictions, entries shifting
        with lab.work.pipeline():
            for m in range(n, n + times):
                lab.work.execute(statement(m))
    elif kind == "reset_one":
        lab.reset_one(statement(n))
    else:
        lab.reset()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_k=st.sampled_from([3, 40, 1000]),
       cycles=st.lists(st.lists(ACTION, max_size=6), min_size=2, max_size=7))
def test_changes_applied_to_the_last_result_give_the_full_result(
        lab: Lab, top_k: int, cycles: list[list[tuple[str, int, int]]]) -> None:
    lab.reset()
    act(lab, ("burst", 0, 30))
    whole, changing = lab.collector(top_k), lab.collector(top_k)
    jobbed = lab.collector(top_k)
    store = MemoryStore()
    store.register(jobbed.specs())
    clock = [0.0]
    job = CollectorJob("lab", lab.targets[-1], jobbed, 1.0, store, SelfMetrics(store),
                       clock=lambda: clock[0])
    try:
        compare(whole, changing, lab, top_k, cycles, lambda now: in_store(job, store, now,
                                                                          clock))
    finally:
        lab.close_targets()


def in_store(job: CollectorJob, store: MemoryStore, now: float, clock: list[float]
             ) -> dict[Series, float]:
    """A cycle of ``job`` at ``now``: the statement series in the store after it, without
    the target label the job adds."""
    clock[0] = now
    job.run()
    return {(s.name, tuple(pair for pair in s.labels if pair[0] != "target")): s.value
            for spec, samples in store.current() if spec.name.startswith("pg_stat_statements")
            for s in samples}


def compare(whole: StatementsCollector, changing: StatementsCollector, lab: Lab, top_k: int,
            cycles: list[list[tuple[str, int, int]]],
            stored: Callable[[float], dict[Series, float]] | None = None) -> None:
    state: dict[Series, Sample] = {}
    for step, actions in enumerate(cycles):
        for action in actions:
            act(lab, action)
        now = time.time()
        full = whole.collect(now)
        apply(state, changing.collect_changes(now, full=step == 0))
        assert values(state) == values(full), step
        if stored is not None:
            assert stored(now) == values(full), step
        assert [f.as_dict() for f in changing.top_statements()] == \
            [f.as_dict() for f in whole.top_statements()]
        assert sum(1 for s in full if s.name == CALLS) <= top_k
    # A full result after changes: the same series again.
    assert values(changing.collect_changes(time.time(), full=True).changed) == \
        values(whole.collect(time.time()))


@pytest.mark.parametrize("replacement", ["another statement", "the same by another role"])
def test_an_entry_replaced_at_its_position_with_the_same_calls_is_seen(
        lab: Lab, replacement: str, request: pytest.FixtureRequest) -> None:
    request.addfinalizer(lab.close_targets)
    first = statement(1)
    for anchor in range(2, 60):
        # Two entries: removing one alone is no reset of the whole view (stats_reset).
        lab.reset()
        lab.work.execute(first)
        lab.work.execute(statement(100 + anchor))
        before = lab.view()
        position = _position(lab, first)
        collector = lab.collector(10)
        state: dict[Series, Sample] = {}
        apply(state, collector.collect_changes(time.time(), full=True))
        reset_at = lab.stats_reset()
        lab.reset_one(first)
        if replacement == "another statement":
            lab.work.execute(statement(2 + anchor))
        else:
            lab.tenant.execute(first)
        after = lab.view()
        if len(after) == 2 and after[1 - position] == before[1 - position] \
                and after[position][1:] == before[position][1:]:
            break  # the replacement took the entry's position, with the same calls
    else:
        pytest.fail("no replacement landed at the entry's position")
    assert lab.stats_reset() == reset_at
    replaced = after[position][0]
    assert (replaced == before[position][0]) == (replacement != "another statement")
    apply(state, collector.collect_changes(time.time(), full=False))
    calls = {(dict(labels)["queryid"], dict(labels)["user"]): value
             for (name, labels), value in values(state).items() if name == CALLS}
    user = TENANT if replacement != "another statement" else "postgres"
    assert calls == {(str(replaced), user): 1.0,
                     (str(after[1 - position][0]), "postgres"): 1.0}
    assert {(str(f.queryid), f.user) for f in collector.top_statements()} == set(calls)


def _position(lab: Lab, query: str) -> int:
    [(position,)] = lab.admin.execute(
        "SELECT ordinality - 1 FROM pg_stat_statements(true) WITH ORDINALITY "
        "WHERE query = %s", (query,)).fetchall()
    return int(position)


class TextsTimeOut(StatementsCollector):
    """A collector whose query-text fetch times out when told to: a cycle that fails after
    its read of the view (the statement timeout of a slow text file)."""

    failing = False

    def _fetch_texts(self, db: Session, setup: StatementsSetup, *args: Any) -> None:
        if self.failing:
            raise CollectorError("timeout", "a query hit the statement timeout")
        super()._fetch_texts(db, setup, *args)


def test_a_statement_that_left_during_a_failed_cycle_is_not_exported_after_it(
        lab: Lab, request: pytest.FixtureRequest) -> None:
    request.addfinalizer(lab.close_targets)
    lab.reset()
    for _ in range(3):
        lab.work.execute(statement(1))
    lab.work.execute(statement(2))
    target = PostgresTarget("lab", lab.cluster.dsn(user=WATCHER, password=PASSWORD))
    lab.targets.append(target)
    collector = TextsTimeOut(target, timeout=10.0, top_k=10, schema=None, text_refresh=0.0)
    store = MemoryStore()
    store.register(collector.specs())
    clock = [time.time()]
    job = CollectorJob("lab", target, collector, 1.0, store, SelfMetrics(store),
                       clock=lambda: clock[0])

    def exported() -> dict[str, float]:
        return {dict(s.labels)["queryid"]: s.value for spec, samples in store.current()
                if spec.name == CALLS for s in samples}

    job.run()
    assert len(exported()) == 2
    lab.reset_one(statement(1))  # it leaves the view...
    lab.work.execute(statement(3))
    collector.failing = True  # ...in a cycle that fails after reading the view
    clock[0] += 15
    job.run()
    collector.failing = False
    for _ in range(2):
        lab.work.execute(statement(2))
        clock[0] += 15
        job.run()
    full = lab.collector(10).collect(time.time())
    assert exported() == {dict(s.labels)["queryid"]: s.value for s in full if s.name == CALLS}
