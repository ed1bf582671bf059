"""DatabaseCollector against a real PostgreSQL: pg_stat_database, sizes, cache, replication."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from piggywatch.collectors.postgres.database import DatabaseCollector
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import (
    DEMO_DATABASE,
    MONITOR_ROLE,
    NOMONITOR_ROLE,
    ThrowawayCluster,
)
from piggywatch.store import Sample
from tests.support.ports import free_port

PRIVATE_DATABASE = "pw_private_db"


def series(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in samples if s.name == name}


def by_datname(samples: list[Sample], name: str) -> dict[str, float]:
    return {dict(s.labels)["datname"]: s.value for s in samples if s.name == name}


def scalar(dsn: str, query: Any, params: tuple[Any, ...] | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def collect_until(collector: DatabaseCollector, condition: Callable[[list[Sample]], bool],
                  timeout: float = 5.0) -> list[Sample]:
    """Collect until ``condition`` holds: backends flush their statistics lazily."""
    deadline = time.monotonic() + timeout
    while True:
        samples = collector.collect(time.time())
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)




@pytest.fixture
def collector(target: PostgresTarget) -> DatabaseCollector:
    return DatabaseCollector(target, timeout=5.0)


def test_committed_and_rolled_back_transactions_raise_their_counters(
    pg_cluster: ThrowawayCluster, collector: DatabaseCollector
) -> None:
    def totals(samples: list[Sample]) -> tuple[float, float]:
        return (by_datname(samples, "pg_stat_database_xact_commit")[DEMO_DATABASE],
                by_datname(samples, "pg_stat_database_xact_rollback")[DEMO_DATABASE])

    commits_before, rollbacks_before = totals(collector.collect(time.time()))
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        for _ in range(30):
            with conn.transaction():
                conn.execute("SELECT count(*) FROM users")
        for _ in range(5):
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
            conn.execute("ROLLBACK")

    def moved(samples: list[Sample]) -> bool:
        commits, rollbacks = totals(samples)
        return commits - commits_before >= 30 and rollbacks - rollbacks_before >= 5

    assert moved(collect_until(collector, moved))


def test_cache_hit_ratio_is_a_share_of_block_reads(collector: DatabaseCollector) -> None:
    samples = collector.collect(time.time())
    ratios = by_datname(samples, "pg_stat_database_cache_hit_ratio")
    assert DEMO_DATABASE in ratios
    assert all(0.0 <= r <= 1.0 for r in ratios.values())
    hits = by_datname(samples, "pg_stat_database_blks_hit")[DEMO_DATABASE]
    reads = by_datname(samples, "pg_stat_database_blks_read")[DEMO_DATABASE]
    assert ratios[DEMO_DATABASE] == pytest.approx(hits / (hits + reads))
    # template0 takes no connections and never reads a block: no ratio rather than 0/0.
    all_hits = by_datname(samples, "pg_stat_database_blks_hit")
    all_reads = by_datname(samples, "pg_stat_database_blks_read")
    assert {d for d in all_hits if all_hits[d] + all_reads[d] > 0} == set(ratios)


def test_database_size_matches_pg_database_size(
    pg_cluster: ThrowawayCluster, collector: DatabaseCollector
) -> None:
    sizes = by_datname(collector.collect(time.time()), "pg_database_size_bytes")
    expected = scalar(pg_cluster.dsn(), "SELECT pg_database_size(%s)", (DEMO_DATABASE,))
    assert sizes[DEMO_DATABASE] > 0
    assert sizes[DEMO_DATABASE] == pytest.approx(expected, rel=0.05)
    assert {"postgres", "template1"} <= set(sizes)


def test_times_are_reported_in_seconds(
    pg_cluster: ThrowawayCluster, collector: DatabaseCollector
) -> None:
    query = ("SELECT blk_read_time, session_time FROM pg_stat_database "
             "WHERE datname = 'postgres'")
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        before = conn.execute(query).fetchone()
        samples = collector.collect(time.time())
        after = conn.execute(query).fetchone()
    assert before is not None and after is not None
    read = by_datname(samples, "pg_stat_database_blk_read_seconds_total")["postgres"]
    session = by_datname(samples, "pg_stat_database_session_seconds_total")["postgres"]
    assert before[0] / 1000 <= read <= after[0] / 1000
    assert before[1] / 1000 <= session <= after[1] / 1000
    assert session > 0


def test_columns_follow_what_the_server_has(
    pg_cluster: ThrowawayCluster, collector: DatabaseCollector
) -> None:
    samples = collector.collect(time.time())
    columns = _pg_stat_database_columns(pg_cluster)
    if "sessions" in columns:
        assert DEMO_DATABASE in by_datname(samples, "pg_stat_database_sessions_total")
        assert DEMO_DATABASE in by_datname(samples, "pg_stat_database_sessions_killed_total")
    else:
        assert not by_datname(samples, "pg_stat_database_sessions_total")
    # The throwaway cluster runs without data checksums, where the column reads NULL.
    checksums = scalar(pg_cluster.dsn(), "SHOW data_checksums")
    assert bool(by_datname(samples, "pg_stat_database_checksum_failures")) == (checksums == "on")
    # Statistics are reset only on request; until then the timestamp is absent.
    resets = by_datname(samples, "pg_stat_database_stats_reset_timestamp_seconds")
    assert all(0 < t <= time.time() for t in resets.values())


def _pg_stat_database_columns(pg_cluster: ThrowawayCluster) -> set[str]:
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute "
            "WHERE attrelid = 'pg_stat_database'::regclass AND attnum > 0"
        ).fetchall()
    return {r[0] for r in rows}


def test_shared_objects_row_is_skipped(collector: DatabaseCollector) -> None:
    samples = collector.collect(time.time())
    backends = series(samples, "pg_stat_database_numbackends")
    assert all(dict(labels)["datname"] and dict(labels)["datid"] != "0" for labels in backends)
    assert {dict(labels)["datname"] for labels in backends} >= {DEMO_DATABASE, "postgres"}
    # numbackends counts this collector's own connection.
    assert by_datname(samples, "pg_stat_database_numbackends")[DEMO_DATABASE] >= 1


def test_every_sample_is_declared_with_help(collector: DatabaseCollector) -> None:
    specs = {spec.name: spec for spec in collector.specs()}
    assert all(spec.help for spec in specs.values())
    assert {s.name for s in collector.collect(time.time())} <= set(specs)


def test_a_primary_without_standbys_says_it_is_not_a_replica(
    collector: DatabaseCollector,
) -> None:
    samples = collector.collect(time.time())
    assert series(samples, "pg_replication_is_replica") == {(): 0.0}
    assert not series(samples, "pg_replication_lag_seconds")
    assert not series(samples, "pg_stat_replication_replay_lag_seconds")


@pytest.fixture
def private_database(pg_cluster: ThrowawayCluster) -> Iterator[str]:
    """A database that only roles with pg_read_all_stats may measure."""
    name = sql.Identifier(PRIVATE_DATABASE)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(name))
    try:
        yield PRIVATE_DATABASE
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def test_role_without_pg_monitor_gets_what_it_may_see(
    pg_cluster: ThrowawayCluster, private_database: str
) -> None:
    plain = PostgresTarget("main", pg_cluster.dsn(DEMO_DATABASE, user=NOMONITOR_ROLE))
    monitor = PostgresTarget("main", pg_cluster.dsn(DEMO_DATABASE, user=MONITOR_ROLE))
    try:
        plain_samples = DatabaseCollector(plain, timeout=5.0).collect(time.time())
        monitor_samples = DatabaseCollector(monitor, timeout=5.0).collect(time.time())
    finally:
        plain.close()
        monitor.close()
    plain_sizes = by_datname(plain_samples, "pg_database_size_bytes")
    assert DEMO_DATABASE in plain_sizes
    assert private_database not in plain_sizes
    assert private_database in by_datname(monitor_samples, "pg_database_size_bytes")
    # pg_stat_database itself is readable by everyone.
    assert private_database in by_datname(plain_samples, "pg_stat_database_xact_commit")
    assert series(plain_samples, "pg_replication_is_replica") == {(): 0.0}


# --- replication: a private primary with one streaming standby ----------------------------


@dataclass
class Replication:
    primary: ThrowawayCluster
    standby_dsn: str


def _as_server_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The server binaries refuse to run as root (see PITFALLS.md).
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def replication() -> Iterator[Replication]:
    with ThrowawayCluster(max_connections=10) as primary:
        # The primary's own binaries (as root, a copy the postgres OS user can read).
        bindir = primary.install.bindir
        base = Path(tempfile.mkdtemp(prefix="piggywatch-standby-"))
        data = base / "data"
        if os.geteuid() == 0:
            server_user = pwd.getpwnam("postgres")
            os.chown(base, server_user.pw_uid, server_user.pw_gid)
        port = free_port()
        started = False
        try:
            conninfo = (f"host={primary.host} port={primary.port} user=postgres "
                        f"password={primary.superuser_password} application_name=standby1")
            result = _as_server_user(
                [str(bindir / "pg_basebackup"), "-d", conninfo, "-D", str(data), "-R",
                 "-X", "stream", "-c", "fast", "--no-sync"], base)
            assert result.returncode == 0, result.stderr
            result = _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                 "-o", f"-p {port} -c unix_socket_directories={base}", "start"], base)
            assert result.returncode == 0, result.stdout + result.stderr
            started = True
            standby_dsn = primary.dsn().replace(f":{primary.port}/", f":{port}/")
            with psycopg.connect(primary.dsn(), autocommit=True) as conn:
                # A replayed commit gives the standby a last-replay timestamp.
                conn.execute("CREATE TABLE replicated AS SELECT 1 AS a")
                lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            assert lsn is not None
            _wait_replayed(standby_dsn, lsn[0])
            yield Replication(primary, standby_dsn)
        finally:
            if started:
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                 "-w", "stop"], base)
            shutil.rmtree(base, ignore_errors=True)


def _wait_replayed(standby_dsn: str, lsn: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
    while not scalar(standby_dsn, query, (lsn,)):
        assert time.monotonic() < deadline, "the standby did not catch up"
        time.sleep(0.05)


def collect_once(dsn: str) -> list[Sample]:
    target = PostgresTarget("main", dsn)
    try:
        return DatabaseCollector(target, timeout=5.0).collect(time.time())
    finally:
        target.close()


def collect_polling(dsn: str, name: str,
                    condition: Callable[[dict[tuple[tuple[str, str], ...], float]], bool],
                    timeout: float = 5.0) -> list[Sample]:
    deadline = time.monotonic() + timeout
    while True:
        samples = collect_once(dsn)
        if condition(series(samples, name)) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_caught_up_standby_reports_zero_lag(replication: Replication) -> None:
    # Long enough after the last commit that now - last replay time could not read as 0.
    time.sleep(1.1)
    samples = collect_polling(replication.standby_dsn, "pg_replication_lag_seconds",
                              lambda lag: lag == {(): 0.0})
    assert series(samples, "pg_replication_is_replica") == {(): 1.0}
    # Nothing is waiting to be replayed, however long ago the last commit was.
    assert series(samples, "pg_replication_lag_seconds") == {(): 0.0}


def test_standby_lag_grows_while_replay_is_paused(replication: Replication) -> None:
    with psycopg.connect(replication.standby_dsn, autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            time.sleep(0.3)
            with psycopg.connect(replication.primary.dsn(), autocommit=True) as primary:
                primary.execute("INSERT INTO replicated VALUES (2)")
                lsn = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            assert lsn is not None
            received = "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn"
            deadline = time.monotonic() + 10
            while standby.execute(received, (lsn[0],)).fetchone() != (True,):
                assert time.monotonic() < deadline, "the standby did not receive the WAL"
                time.sleep(0.05)
            lag = series(collect_once(replication.standby_dsn), "pg_replication_lag_seconds")
            assert lag[()] >= 0.3
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def test_primary_reports_replay_lag_per_standby(replication: Replication) -> None:
    # A standby just resumed from a pause may be mid-replay, with no lag measured yet.
    samples = collect_polling(replication.primary.dsn(),
                              "pg_stat_replication_replay_lag_seconds", bool)
    assert series(samples, "pg_replication_is_replica") == {(): 0.0}
    assert not series(samples, "pg_replication_lag_seconds")
    lags = series(samples, "pg_stat_replication_replay_lag_seconds")
    assert list(lags) == [(("application_name", "standby1"), ("client_addr", "127.0.0.1"))]
    assert 0.0 <= next(iter(lags.values())) < 60.0


def test_replicas_hidden_from_a_role_without_pg_read_all_stats_are_skipped(
    replication: Replication,
) -> None:
    password = "plain-role-password"
    with psycopg.connect(replication.primary.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE plain_monitor LOGIN PASSWORD {}").format(password))
    dsn = replication.primary.dsn(user="plain_monitor", password=password)
    samples = collect_once(dsn)
    assert series(samples, "pg_replication_is_replica") == {(): 0.0}
    assert not series(samples, "pg_stat_replication_replay_lag_seconds")
