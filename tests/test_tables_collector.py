"""TablesCollector against a real PostgreSQL: the largest tables, their sizes and statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from piggywatch.collectors import CollectorError
from piggywatch.collectors.postgres.tables import TablesCollector
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, NOMONITOR_ROLE, ThrowawayCluster
from piggywatch.store import Sample

BIG_ROWS = 50_000

# Created once for the module, all well larger than any demo table, so the top of the
# ranking is known: pw_big (~8 MB), then pw_events (partitioned, ~4 MB) and pw_big_view
# (~3.5 MB).
_SETUP = f"""
CREATE TABLE pw_big (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false);
INSERT INTO pw_big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, {BIG_ROWS}) g;
CREATE TABLE pw_events (id int, day date) PARTITION BY RANGE (day);
CREATE TABLE pw_events_2025 PARTITION OF pw_events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE pw_events_2026 PARTITION OF pw_events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX ON pw_events (id);
INSERT INTO pw_events SELECT g, date '2025-06-01' + g % 365 FROM generate_series(1, 60000) g;
CREATE MATERIALIZED VIEW pw_big_view AS SELECT id, payload FROM pw_big WHERE id % 2 = 0;
ANALYZE pw_big, pw_events, pw_big_view;
"""
_TEARDOWN = """
DROP MATERIALIZED VIEW IF EXISTS pw_big_view;
DROP TABLE IF EXISTS pw_big, pw_events;
"""

Labels = tuple[tuple[str, str], ...]


def table_values(samples: list[Sample], name: str) -> dict[str, float]:
    """``schemaname.relname`` -> value for one metric."""
    out = {}
    for s in samples:
        if s.name == name:
            labels = dict(s.labels)
            out[f"{labels['schemaname']}.{labels['relname']}"] = s.value
    return out


def scalar(dsn: str, query: str) -> float:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return float(row[0])


@pytest.fixture(scope="module")
def tables(pg_cluster: ThrowawayCluster) -> Iterator[str]:
    """The superuser DSN of the demo database, with the module's tables in it."""
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
    try:
        yield dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_TEARDOWN)


@pytest.fixture
def target(target: PostgresTarget, tables: str) -> PostgresTarget:
    """The monitoring role's target (conftest), once this module's tables exist."""
    return target


def collect(target: PostgresTarget, top_n: int = 5) -> list[Sample]:
    return TablesCollector(target, timeout=5.0, top_n=top_n).collect(time.time())


def test_a_large_table_appears_with_its_real_size_and_row_estimate(
    tables: str, target: PostgresTarget
) -> None:
    samples = collect(target)
    sizes = table_values(samples, "pg_table_size_bytes")
    assert "public.pw_big" in sizes
    expected = scalar(tables, "SELECT pg_total_relation_size('pw_big')")
    assert sizes["public.pw_big"] == pytest.approx(expected, rel=0.2)
    rows = table_values(samples, "pg_table_rows_estimate")
    assert rows["public.pw_big"] == pytest.approx(BIG_ROWS, rel=0.05)
    assert {dict(s.labels)["datname"] for s in samples} == {DEMO_DATABASE}


def test_top_n_bounds_the_number_of_tables(target: PostgresTarget) -> None:
    for top_n in (1, 2, 3):
        sizes = table_values(collect(target, top_n), "pg_table_size_bytes")
        assert len(sizes) == top_n
        assert next(iter(sizes)) == "public.pw_big"
    top3 = table_values(collect(target, 3), "pg_table_size_bytes")
    assert set(top3) == {"public.pw_big", "public.pw_events", "public.pw_big_view"}
    assert list(top3.values()) == sorted(top3.values(), reverse=True)


def test_a_partitioned_table_counts_once_with_all_its_partitions(
    tables: str, target: PostgresTarget
) -> None:
    samples = collect(target, top_n=50)
    sizes = table_values(samples, "pg_table_size_bytes")
    assert not {"public.pw_events_2025", "public.pw_events_2026"} & set(sizes)
    expected = scalar(tables, "SELECT sum(pg_total_relation_size(relid)) "
                              "FROM pg_partition_tree('pw_events')")
    assert sizes["public.pw_events"] == pytest.approx(expected, rel=0.2)
    assert table_values(samples, "pg_table_rows_estimate")["public.pw_events"] == (
        pytest.approx(60_000, rel=0.05))
    assert table_values(samples, "pg_stat_user_tables_n_live_tup")["public.pw_events"] == (
        pytest.approx(60_000, rel=0.05))


def test_system_catalogs_and_toast_are_never_listed(target: PostgresTarget) -> None:
    samples = collect(target, top_n=1000)
    schemas = {dict(s.labels)["schemaname"] for s in samples}
    # The demo database is Supabase-shaped: auth, storage and supabase_migrations are
    # ordinary tables (auth.users can bloat like any other), the catalogs never are.
    assert schemas == {"public", "auth", "storage", "supabase_migrations"}, schemas
    # Demo tables (which have no fresh estimates) are still found with a large enough N.
    assert "public.users" in table_values(samples, "pg_table_size_bytes")


def test_table_statistics_follow_activity(tables: str, target: PostgresTarget) -> None:
    def scans(samples: list[Sample]) -> float:
        return table_values(samples, "pg_stat_user_tables_seq_scan")["public.pw_big"]

    before = collect(target)
    with psycopg.connect(tables, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT count(*) FROM pw_big")
    after = collect_until(target, lambda samples: scans(samples) >= scans(before) + 3)
    assert scans(after) >= scans(before) + 3
    live = table_values(after, "pg_stat_user_tables_n_live_tup")["public.pw_big"]
    assert live == pytest.approx(BIG_ROWS, rel=0.05)
    assert table_values(after, "pg_stat_user_tables_n_dead_tup")["public.pw_big"] >= 0
    # pw_big has an index (its primary key), so idx_scan is reported even at 0; the
    # materialized view has none, so it has no idx_scan at all.
    assert "public.pw_big" in table_values(after, "pg_stat_user_tables_idx_scan")
    assert "public.pw_big_view" not in table_values(after, "pg_stat_user_tables_idx_scan")
    # Autovacuum is off for pw_big: "never" is no sample, not a zero timestamp.
    assert "public.pw_big" not in table_values(
        after, "pg_stat_user_tables_last_autovacuum_timestamp_seconds")


def collect_until(target: PostgresTarget, condition: Callable[[list[Sample]], bool],
                  timeout: float = 5.0) -> list[Sample]:
    """Collect until ``condition`` holds: backends flush their statistics lazily."""
    deadline = time.monotonic() + timeout
    while True:
        samples = collect(target)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_every_sample_is_declared_with_help(target: PostgresTarget) -> None:
    collector = TablesCollector(target, timeout=5.0, top_n=5)
    specs = {spec.name: spec for spec in collector.specs()}
    assert all(spec.help for spec in specs.values())
    assert {s.name for s in collector.collect(time.time())} <= set(specs)


def test_role_without_pg_monitor_sees_the_same_tables(
    pg_cluster: ThrowawayCluster, target: PostgresTarget
) -> None:
    plain = PostgresTarget("main", pg_cluster.dsn(DEMO_DATABASE, user=NOMONITOR_ROLE))
    try:
        plain_sizes = table_values(collect(plain), "pg_table_size_bytes")
    finally:
        plain.close()
    assert list(plain_sizes) == list(table_values(collect(target), "pg_table_size_bytes"))


def test_a_locked_table_makes_the_cycle_time_out_and_the_next_one_recovers(
    tables: str, target: PostgresTarget
) -> None:
    collect(target)  # connect first, so the timeout is spent on the query alone
    timeout = 0.3
    with psycopg.connect(tables) as locker:
        # What a migration holds while it rewrites a table.
        locker.execute("LOCK TABLE pw_big IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(CollectorError) as caught:
            TablesCollector(target, timeout=timeout, top_n=5).collect(time.time())
        elapsed = time.monotonic() - started
        locker.rollback()
    assert caught.value.reason == "timeout"
    assert elapsed < timeout + 0.5
    assert "public.pw_big" in table_values(collect(target), "pg_table_size_bytes")


def test_top_n_must_be_positive(target: PostgresTarget) -> None:
    with pytest.raises(ValueError, match="top_n"):
        TablesCollector(target, timeout=5.0, top_n=0)
