"""The statements collector against a real PostgreSQL with pg_stat_statements."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.postgres.query_text import QueryTexts, normalize_query
from piggywatch.collectors.postgres.statement_counters import Continuity, StatementCounters
from piggywatch.collectors.postgres.statement_snapshot import (
    COUNTER_CODES,
    PackedColumn,
    PackedKeys,
    Snapshot,
)
from piggywatch.collectors.postgres.statements import (
    BLOCK_READ,
    CALLS,
    ROWS,
    SECONDS,
    StatementsCollector,
    _int8_array,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.store import Labels, Sample, labels_of

DB = "piggybong"
Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def admin(pg_cluster: ThrowawayCluster) -> Iterator[Conn]:
    """A superuser connection to the demo database, for running the workload."""
    with psycopg.connect(pg_cluster.dsn(DB), autocommit=True) as conn:
        yield conn


@pytest.fixture
def targets(pg_cluster: ThrowawayCluster) -> Iterator[list[PostgresTarget]]:
    made: list[PostgresTarget] = []
    yield made
    for target in made:
        target.close()


def make_collector(cluster: ThrowawayCluster, targets: list[PostgresTarget], *,
                   top_k: int = 10_000, user: str = "piggywatch", dbname: str = DB,
                   schema: str | None = None) -> StatementsCollector:
    target = PostgresTarget("main", cluster.dsn(dbname, user=user,
                                                password=cluster.role_password(user)))
    targets.append(target)
    return StatementsCollector(target, timeout=10.0, top_k=top_k, schema=schema)


def fresh_table(conn: Conn, rows: int = 1) -> str:
    """A new table, so that statements on it are new, distinct pg_stat_statements entries."""
    name = f"stmt_{secrets.token_hex(4)}"
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(
        sql.Identifier(name)), (rows,))
    return name


def run(conn: Conn, statement: str, times: int = 1) -> None:
    for _ in range(times):
        conn.execute(statement)


def queryid(conn: Conn, table: str) -> str:
    """The queryid of the one SELECT on ``table`` (a fresh table has just the one)."""
    [(qid,)] = conn.execute(
        "SELECT queryid FROM extensions.pg_stat_statements "
        "WHERE query LIKE 'SELECT%%' AND query LIKE %s AND toplevel", (f"%{table}%",)).fetchall()
    return str(qid)


def by_queryid(samples: list[Sample], name: str) -> dict[str, float]:
    """Values by queryid, for statements only the superuser runs (one series each)."""
    return {dict(s.labels)["queryid"]: s.value for s in samples if s.name == name}


def by_series(samples: list[Sample], name: str) -> dict[Labels, float]:
    return {s.labels: s.value for s in samples if s.name == name}


def gauge(samples: list[Sample], name: str) -> float:
    [value] = [s.value for s in samples if s.name == name]
    return value


# --- counting ---------------------------------------------------------------------------


def test_fifty_runs_raise_calls_by_exactly_fifty(pg_cluster: ThrowawayCluster, admin: Conn,
                                                 targets: list[PostgresTarget]) -> None:
    table = fresh_table(admin, rows=3)
    statement = f"SELECT id FROM {table}"
    run(admin, statement)
    qid = queryid(admin, table)
    collector = make_collector(pg_cluster, targets)
    first = collector.collect(time.time())
    run(admin, statement, 50)
    second = collector.collect(time.time())

    assert by_queryid(second, CALLS)[qid] - by_queryid(first, CALLS)[qid] == 50
    assert by_queryid(second, ROWS)[qid] - by_queryid(first, ROWS)[qid] == 150
    assert by_queryid(second, SECONDS)[qid] > by_queryid(first, SECONDS)[qid]
    [figures] = [f for f in collector.top_statements() if str(f.queryid) == qid]
    assert (figures.calls, figures.rows, figures.total_calls) == (50, 150, 51)
    assert figures.mean_ms == pytest.approx(figures.seconds * 1000 / 50)
    assert figures.query == statement and figures.datname == DB
    assert figures.interval_seconds > 0


def test_first_sample_starts_counters_at_the_views_own_values(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    table = fresh_table(admin)
    run(admin, f"SELECT id FROM {table}", 7)
    out = make_collector(pg_cluster, targets).collect(time.time())
    assert by_queryid(out, CALLS)[queryid(admin, table)] == 7


def test_statement_new_since_last_sample_counts_whole(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    collector = make_collector(pg_cluster, targets)
    collector.collect(time.time())
    table = fresh_table(admin)
    run(admin, f"SELECT id FROM {table}", 4)
    out = collector.collect(time.time())
    qid = queryid(admin, table)
    assert by_queryid(out, CALLS)[qid] == 4
    [figures] = [f for f in collector.top_statements() if str(f.queryid) == qid]
    assert (figures.calls, figures.total_calls) == (4, 4)


def test_reset_between_samples_gives_no_negative_and_no_spike(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    table = fresh_table(admin)
    statement = f"SELECT id FROM {table}"
    run(admin, statement, 5)
    qid = queryid(admin, table)
    collector = make_collector(pg_cluster, targets)
    collector.collect(time.time())
    run(admin, statement, 3)
    before = collector.collect(time.time())
    admin.execute("SELECT extensions.pg_stat_statements_reset()")
    run(admin, statement, 2)
    after = collector.collect(time.time())
    in_view = {labels_of(queryid=str(q), datname=d, user=u): (c, ms / 1000) for q, d, u, c, ms
               in admin.execute(
                   "SELECT queryid, datname, rolname, sum(calls)::int8, sum(total_exec_time) "
                   "FROM extensions.pg_stat_statements s JOIN pg_database d ON d.oid = dbid "
                   "JOIN pg_roles r ON r.oid = userid GROUP BY 1, 2, 3")}

    assert by_queryid(after, CALLS)[qid] - by_queryid(before, CALLS)[qid] == 2
    for name in (CALLS, SECONDS, ROWS, BLOCK_READ):
        was, now = by_series(before, name), by_series(after, name)
        for series in was.keys() & now.keys():
            assert now[series] >= was[series], f"{name} went down for {series}"
    # No spike: nothing grew by more than what the view has counted since the reset.
    for name, column in ((CALLS, 0), (SECONDS, 1)):
        was, now = by_series(before, name), by_series(after, name)
        for series in was.keys() & now.keys():
            assert now[series] - was[series] <= in_view[series][column] + 1e-9
    assert (gauge(after, "pg_stat_statements_stats_reset_timestamp_seconds")
            > gauge(before, "pg_stat_statements_stats_reset_timestamp_seconds"))


def test_reset_is_detected_even_when_counts_grow_past_their_old_values(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    # 3 calls, reset, 10 calls: the values alone would suggest +7; stats_reset says +10.
    table = fresh_table(admin)
    statement = f"SELECT id FROM {table}"
    run(admin, statement, 3)
    qid = queryid(admin, table)
    collector = make_collector(pg_cluster, targets)
    before = collector.collect(time.time())
    admin.execute("SELECT extensions.pg_stat_statements_reset()")
    run(admin, statement, 10)
    after = collector.collect(time.time())
    assert by_queryid(after, CALLS)[qid] - by_queryid(before, CALLS)[qid] == 10


def test_top_k_exports_the_statements_with_most_time_in_the_interval(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    tables = [fresh_table(admin) for _ in range(21)]
    # Slow before the baseline, idle in the interval: not among the top 5 of the interval.
    past = f"SELECT pg_sleep(0.2) FROM {tables[20]}"
    run(admin, past)
    collector = make_collector(pg_cluster, targets, top_k=5)
    collector.collect(time.time())
    fast = [f"SELECT pg_sleep(0.001) FROM {t}" for t in tables[:15]]
    slow = [f"SELECT pg_sleep(0.02) FROM {t}" for t in tables[15:20]]
    for statement in fast + slow:
        run(admin, statement)
    out = collector.collect(time.time())

    expected = {queryid(admin, table) for table in tables[15:20]}
    for name in (CALLS, SECONDS, ROWS, BLOCK_READ):
        assert set(by_queryid(out, name)) == expected
    assert {str(f.queryid) for f in collector.top_statements()} == expected
    assert gauge(out, "pg_stat_statements_entries") >= 21


def test_nested_and_top_level_runs_of_a_statement_are_one_series(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    # With track = all, a statement run inside a function is a second entry (toplevel
    # false) with the same queryid; the exporter's labels can't tell them apart.
    table = fresh_table(admin)
    admin.execute("SET pg_stat_statements.track = 'all'")
    try:
        run(admin, f"SELECT id FROM {table}", 2)
        run(admin, f"DO $$ BEGIN PERFORM id FROM {table}; END $$", 3)
    finally:
        admin.execute("RESET pg_stat_statements.track")
    [(qid, levels)] = admin.execute(
        "SELECT queryid::text, count(*) FROM extensions.pg_stat_statements "
        "WHERE query LIKE %s GROUP BY 1", (f"SELECT id FROM {table}",)).fetchall()
    assert levels == 2

    out = make_collector(pg_cluster, targets).collect(time.time())
    calls = [s.value for s in out if s.name == CALLS and dict(s.labels)["queryid"] == qid]
    assert calls == [5]


def test_fill_level_is_exported(pg_cluster: ThrowawayCluster,
                                targets: list[PostgresTarget]) -> None:
    out = make_collector(pg_cluster, targets).collect(time.time())
    entries = gauge(out, "pg_stat_statements_entries")
    assert gauge(out, "pg_stat_statements_max_entries") == 10_000
    assert gauge(out, "pg_stat_statements_fill_ratio") == pytest.approx(entries / 10_000)
    assert gauge(out, "pg_stat_statements_dealloc_total") >= 0
    assert gauge(out, "pg_stat_statements_stats_reset_timestamp_seconds") > 1.6e9


def test_query_text_is_served_without_literals(pg_cluster: ThrowawayCluster, admin: Conn,
                                               targets: list[PostgresTarget]) -> None:
    role = f"stmt_role_{secrets.token_hex(3)}"
    # Utility statements keep their literals in pg_stat_statements.
    admin.execute(f"CREATE ROLE {role} PASSWORD 'hunter2-{role}'")
    try:
        collector = make_collector(pg_cluster, targets)
        collector.collect(time.time())
        texts = [f.query for f in collector.top_statements() if role in f.query]
        assert texts == [f"CREATE ROLE {role} PASSWORD ?"]
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_queryids_for_text_fetch_survive_the_int8_array_cast(admin: Conn) -> None:
    # queryids are signed 64-bit: both ends of the range, and the text param's cast.
    ids = [-(2**63), -1, 0, 42, 2**63 - 1]
    [(back,)] = admin.execute("SELECT %s::int8[]", (_int8_array(ids),)).fetchall()
    assert back == ids
    [(empty,)] = admin.execute("SELECT %s::int8[]", (_int8_array([]),)).fetchall()
    assert empty == []


# --- setup errors -----------------------------------------------------------------------


def test_extension_not_created_says_where_it_looked(pg_cluster: ThrowawayCluster,
                                                    targets: list[PostgresTarget]) -> None:
    collector = make_collector(pg_cluster, targets, dbname="postgres")
    with pytest.raises(CollectorError) as caught:
        collector.collect(time.time())
    assert caught.value.reason == "setup"
    message = str(caught.value)
    assert "not created in database 'postgres'" in message
    assert "extensions, public and the search path: public" in message
    assert "CREATE EXTENSION pg_stat_statements" in message


def test_configured_schema_without_the_extension_points_to_where_it_is(
        pg_cluster: ThrowawayCluster, targets: list[PostgresTarget]) -> None:
    collector = make_collector(pg_cluster, targets, schema="public")
    with pytest.raises(CollectorError) as caught:
        collector.collect(time.time())
    assert caught.value.reason == "setup"
    assert "looked in schema 'public', as configured" in str(caught.value)
    assert "installed in schema 'extensions'" in str(caught.value)


def test_role_without_pg_monitor_is_told_to_grant_it(pg_cluster: ThrowawayCluster,
                                                     targets: list[PostgresTarget]) -> None:
    collector = make_collector(pg_cluster, targets, user="piggywatch_nomonitor")
    with pytest.raises(CollectorError) as caught:
        collector.collect(time.time())
    assert caught.value.reason == "setup"
    message = str(caught.value)
    assert "<insufficient privilege>" in message
    assert "GRANT pg_monitor TO piggywatch_nomonitor" in message


def test_library_not_preloaded_is_a_setup_error() -> None:
    with ThrowawayCluster(settings={"shared_preload_libraries": ""}) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        target = PostgresTarget("bare", cluster.dsn())
        try:
            collector = StatementsCollector(target, timeout=5.0, top_k=10, schema=None)
            with pytest.raises(CollectorError) as caught:
                collector.collect(time.time())
        finally:
            target.close()
    assert caught.value.reason == "setup"
    assert "add it to shared_preload_libraries" in str(caught.value)


# --- the bookkeeping, without a database -----------------------------------------------


def snapshot(*entries: tuple[int, bool, int, float]) -> Snapshot:
    """Entries of (queryid, toplevel, calls, exec ms); rows = calls, no block times."""
    qids, tops, calls, ms = (list(column) for column in zip(*entries, strict=True))
    n = len(entries)
    keys = PackedKeys.of([1] * n, [10] * n, qids, tops)
    return Snapshot(keys, *(PackedColumn.of(values, code) for values, code in zip(
        (calls, ms, calls, [0.0] * n, [0.0] * n), COUNTER_CODES, strict=True)))


def test_packed_keys_round_trip() -> None:
    keys = PackedKeys.of([16384, 1], [10, 4_000_000_000], [-2**63, 2**63 - 1], [True, False])
    assert [list(column) for column in keys.decoded] == [
        [16384, 1], [10, 4_000_000_000], [-2**63, 2**63 - 1], [True, False]]
    assert PackedKeys(*keys.raw).decoded == keys.decoded
    many = list(range(1000))  # more than one decoding chunk
    assert list(PackedKeys.of(many, many, many, [True] * 1000).decoded[2]) == many
    assert [len(column) for column in PackedKeys(None, None, None, None).decoded] == [0] * 4


def test_entry_reset_alone_counts_what_it_has_since() -> None:
    counters = StatementCounters()
    counters.advance(snapshot((7, True, 10, 5.0), (8, True, 4, 1.0)), Continuity.FIRST)
    deltas = counters.advance(snapshot((7, True, 2, 1.0), (8, True, 5, 1.5)),
                              Continuity.CONTINUES)
    assert deltas[(1, 10, 7)] == (2, 1.0, 2, 0.0, 0.0)
    assert counters.totals([(1, 10, 7), (1, 10, 8), (1, 10, 9)]) == [
        (12, 6.0, 12, 0.0, 0.0), (5, 1.5, 5, 0.0, 0.0), None]


def test_nested_entry_leaving_keeps_the_statements_counter() -> None:
    counters = StatementCounters()
    counters.advance(snapshot((7, True, 10, 5.0), (7, False, 3, 1.0)), Continuity.FIRST)
    assert counters.totals([(1, 10, 7)]) == [(13, 6.0, 13, 0.0, 0.0)]
    counters.advance(snapshot((7, True, 11, 5.5)), Continuity.CONTINUES)
    assert counters.totals([(1, 10, 7)]) == [(14, 6.5, 14, 0.0, 0.0)]


def test_entries_moving_around_are_still_matched() -> None:
    counters = StatementCounters()
    counters.advance(snapshot((1, True, 1, 1.0), (2, True, 2, 2.0), (3, True, 3, 3.0)),
                     Continuity.FIRST)
    deltas = counters.advance(
        snapshot((3, True, 3, 3.0), (9, True, 4, 4.0), (1, True, 2, 1.5)),
        Continuity.CONTINUES)
    assert deltas == {(1, 10, 1): (1, 0.5, 1, 0.0, 0.0), (1, 10, 9): (4, 4.0, 4, 0.0, 0.0)}
    assert (1, 10, 2) not in counters
    assert counters.totals([(1, 10, 3)]) == [(3, 3.0, 3, 0.0, 0.0)]


def test_reset_while_reading_keeps_counters_flat() -> None:
    counters = StatementCounters()
    counters.advance(snapshot((1, True, 10, 10.0)), Continuity.FIRST)
    assert counters.advance(snapshot((1, True, 1, 0.5)), Continuity.UNKNOWN) == {}
    assert counters.totals([(1, 10, 1)]) == [(10, 10.0, 10, 0.0, 0.0)]
    counters.advance(snapshot((1, True, 3, 1.5)), Continuity.CONTINUES)
    assert counters.totals([(1, 10, 1)]) == [(12, 11.0, 12, 0.0, 0.0)]


# --- query text -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("ALTER ROLE app PASSWORD 'secret'", "ALTER ROLE app PASSWORD ?"),
    ("SELECT * FROM t1 WHERE a = 12.5e3 AND b = $1", "SELECT * FROM t1 WHERE a = ? AND b = $1"),
    ("SELECT E'it\\'s', 'x''y', $$dollar$$, $q$a $$ b$q$", "SELECT ?, ?, ?, ?"),
    ('SELECT "col 9", x$y, 0x1F, .5 FROM "t""2"', 'SELECT "col 9", x$y, ?, ? FROM "t""2"'),
    ("SELECT 1 -- secret 42\nFROM t /* 'x' /* nested */ 7 */", "SELECT ?  \nFROM t  "),
    ("SELECT B'1010', X'ff', N'n', U&'d\\0061t'", "SELECT ?, ?, ?, ?"),
    ("SELECT 'unterminated secret", "SELECT ?"),
])
def test_normalize_query_examples(text: str, expected: str) -> None:
    assert normalize_query(text) == expected


SKELETON = st.sampled_from([
    "SELECT", "FROM t1", "WHERE col_2 =", ",", "(", ")", '"Quoted 9 \'x\'"', "$1", "AND",
    "x$y", "ALTER ROLE app PASSWORD", "::int8", "IN", "||", "e", "E", "abc_3e4",
])
STRING = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
NUMBER = st.one_of(
    st.integers(min_value=0, max_value=10**20).map(str),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=0, max_value=999).map(lambda n: f"{n}.{n}e-{n % 30}"),
    st.integers(min_value=0, max_value=2**64).map(lambda n: f"0x{n:X}"),
)


def render_string(content: str, style: int) -> str:
    if style == 0:
        return "'" + content.replace("'", "''") + "'"
    if style == 1:
        return "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    tag = "$" + "q" * (1 + max((len(m) for m in re.findall(r"q+", content)), default=0)) + "$"
    return tag + content + tag


LITERAL = st.one_of(
    st.tuples(STRING, st.integers(0, 2)).map(lambda a: (render_string(*a), a[0])),
    NUMBER.map(lambda n: (n, n)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(SKELETON.map(lambda s: (s, None)), LITERAL), max_size=12))
def test_normalize_query_leaves_no_literal_behind(parts: list[tuple[str, str | None]]) -> None:
    query = " ".join(text for text, _ in parts)
    expected = " ".join(text if value is None else "?" for text, value in parts)
    out = normalize_query(query)
    assert out == expected
    for _, value in parts:
        if value and value not in expected:
            assert value not in out


def test_query_texts_cache_is_bounded_and_scrubs_on_read() -> None:
    texts = QueryTexts(limit=3)
    for i in range(5):
        texts.add(i, f"SELECT '{i}-secret'")
    assert len(texts) == 3 and 0 not in texts and 1 not in texts
    assert texts.get(4) == "SELECT ?"
    assert texts.get(0) is None


def test_a_renamed_role_relabels_its_statements_when_names_are_next_read(
        pg_cluster: ThrowawayCluster, admin: Conn, targets: list[PostgresTarget]) -> None:
    """Names are read again when a statement of an unknown role enters: a role renamed
    meanwhile relabels its statements, and their series under the old name go."""
    first, second = f"app_{secrets.token_hex(3)}", f"app_{secrets.token_hex(3)}"
    table = fresh_table(admin)
    admin.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(sql.Identifier(table)))
    statement = f"SELECT id FROM {table}"

    def run_as(role: str) -> None:
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        try:
            run(admin, statement, 3)
        finally:
            admin.execute("RESET ROLE")

    admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(first)))
    run_as(first)
    qid = queryid(admin, table)
    collector = make_collector(pg_cluster, targets)
    collector.collect_changes(time.time(), full=True)
    run_as(first)
    before = collector.collect_changes(time.time(), full=False)
    assert {dict(s.labels)["user"] for s in before.changed
            if s.name == CALLS and dict(s.labels)["queryid"] == qid} == {first}
    renamed = f"{first}_renamed"
    admin.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(first),
                                                              sql.Identifier(renamed)))
    admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(second)))
    run_as(second)  # a role the collector has not named yet
    after = collector.collect_changes(time.time(), full=False)
    users = {dict(s.labels)["user"] for s in after.changed
             if s.name == CALLS and dict(s.labels)["queryid"] == qid}
    assert users == {renamed, second}
    assert (CALLS, labels_of(datname=DB, queryid=qid, user=first)) in after.removed
