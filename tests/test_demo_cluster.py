"""The throwaway PostgreSQL launcher, the demo schema and the synthetic workload."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from piggywatch.demo import cluster as cluster_module
from piggywatch.demo.cluster import (
    DEMO_DATABASE,
    MONITOR_ROLE,
    NOMONITOR_ROLE,
    ThrowawayCluster,
    find_pg_bindir,
)
from piggywatch.demo.workload import SyntheticWorkload
from tests.support.waiting import wait_for

WORKLOAD_QUERYIDS = """
    SELECT count(DISTINCT queryid) FROM extensions.pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND query NOT LIKE '%pg_stat_statements%'
"""


def scalar(dsn: str, query: Any, params: tuple[Any, ...] | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def no_libpq_password_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Otherwise PGPASSWORD or a ~/.pgpass could supply the password we test without.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


def test_find_pg_bindir_has_server_binaries() -> None:
    bindir = find_pg_bindir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / name, os.X_OK)


def test_cluster_answers_over_tcp_on_loopback(pg_cluster: ThrowawayCluster) -> None:
    assert pg_cluster.running
    assert pg_cluster.host == "127.0.0.1"
    assert scalar(pg_cluster.dsn(), "SELECT inet_server_addr()::text") == "127.0.0.1/32"
    assert scalar(pg_cluster.dsn(), "SELECT inet_server_port()") == pg_cluster.port


def test_pg_stat_statements_preloaded_and_in_extensions_schema(
    pg_cluster: ThrowawayCluster,
) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    assert "pg_stat_statements" in scalar(dsn, "SHOW shared_preload_libraries")
    schema = scalar(
        dsn,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'",
    )
    assert schema == "extensions"
    assert scalar(dsn, "SELECT count(*) FROM extensions.pg_stat_statements") > 0


def test_server_settings(pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn()
    assert scalar(dsn, "SHOW max_connections") == "20"
    assert scalar(dsn, "SHOW superuser_reserved_connections") == "3"
    assert scalar(dsn, "SHOW pg_stat_statements.track") == "top"
    assert scalar(dsn, "SHOW track_io_timing") == "on"


def test_demo_data_is_seeded(pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    # ">=": the workload tests may already have added rows.
    assert scalar(dsn, "SELECT count(*) FROM users") >= 2000
    assert scalar(dsn, "SELECT count(*) FROM artists") == 50
    assert scalar(dsn, "SELECT count(*) FROM purchases") >= 5000
    assert scalar(dsn, "SELECT count(*) FROM news") >= 500
    assert scalar(dsn, "SELECT count(*) FROM edge_functions_logs") >= 10000
    error_share = scalar(
        dsn, "SELECT avg((status_code >= 500)::int)::float FROM edge_functions_logs"
    )
    assert 0.005 < error_share < 0.05


def test_monitor_role_is_in_pg_monitor_and_nomonitor_is_not(
    pg_cluster: ThrowawayCluster,
) -> None:
    query = "SELECT pg_has_role(%s, 'pg_monitor', 'MEMBER')"
    assert scalar(pg_cluster.dsn(), query, (MONITOR_ROLE,)) is True
    assert scalar(pg_cluster.dsn(), query, (NOMONITOR_ROLE,)) is False
    for role in (MONITOR_ROLE, NOMONITOR_ROLE):
        assert scalar(pg_cluster.dsn(DEMO_DATABASE, role), "SELECT current_user") == role


def test_tcp_requires_the_right_password(
    pg_cluster: ThrowawayCluster, no_libpq_password_sources: None
) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.dsn(DEMO_DATABASE, MONITOR_ROLE, password="wrong"))
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_cluster.dsn(DEMO_DATABASE, MONITOR_ROLE, password=""))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.dsn(password=pg_cluster.role_password(MONITOR_ROLE)))


def test_unknown_role_has_no_password(pg_cluster: ThrowawayCluster) -> None:
    with pytest.raises(KeyError):
        pg_cluster.dsn(user="nobody")


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[ThrowawayCluster]:
    """A cluster of this module's own with the demo, for the tests that stop and start it:
    the session's cluster stays up for every other test."""
    with ThrowawayCluster(max_connections=20) as cluster:
        cluster.bootstrap_demo()
        yield cluster


def test_stop_and_start_keep_port_and_data(own_cluster: ThrowawayCluster) -> None:
    pg_cluster = own_cluster
    port = pg_cluster.port
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    pg_cluster.stop()
    assert not pg_cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pg_cluster.start()
    assert pg_cluster.port == port
    assert scalar(dsn, "SELECT count(*) FROM artists") == 50


def test_workload_produces_distinct_statements(pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    scalar(dsn, "SELECT extensions.pg_stat_statements_reset()")
    workload = SyntheticWorkload(dsn, workers=2, pause=0.05)
    workload.start()
    try:
        wait_for(lambda: scalar(dsn, WORKLOAD_QUERYIDS) >= 10, 10, "10 distinct statements",
                 interval=0.1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT application_name FROM pg_stat_activity").fetchall()
        app_names = {row[0] for row in rows}
        assert {"piggybong-api", "piggybong-worker"} <= app_names
    finally:
        started = time.monotonic()
        workload.stop()
    assert time.monotonic() - started < 2.5


def test_workload_survives_a_restart(
    own_cluster: ThrowawayCluster, caplog: pytest.LogCaptureFixture
) -> None:
    pg_cluster = own_cluster
    caplog.set_level(logging.DEBUG, logger="piggywatch.demo.workload")
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    new_log_rows = "SELECT count(*) FROM edge_functions_logs WHERE created_at > %s::timestamptz"
    began = scalar(dsn, "SELECT now()")
    with SyntheticWorkload(dsn, workers=2, pause=0.02):
        wait_for(lambda: scalar(dsn, new_log_rows, (began,)) > 0, 10, "the workload writing",
                 interval=0.1)
        logged = len(caplog.records)
        pg_cluster.stop()
        # The workload has seen its connections fail before the server comes back.
        wait_for(lambda: len(caplog.records) > logged, 10, "the workload noticing the stop",
                 interval=0.05)
        pg_cluster.start()
        restarted_at = scalar(dsn, "SELECT now()")
        wait_for(lambda: scalar(dsn, new_log_rows, (restarted_at,)) > 0, 20,
                 "the workload writing again after the restart", interval=0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("administrator command" in r.getMessage() for r in caplog.records)


def test_second_cluster_runs_alongside(pg_cluster: ThrowawayCluster) -> None:
    with ThrowawayCluster(max_connections=10) as other:
        assert other.port != pg_cluster.port
        base_dir = other.log_path.parent
        started = time.monotonic()
        other.bootstrap_demo()
        assert time.monotonic() - started < 2.0
        assert scalar(other.dsn(), "SHOW max_connections") == "10"
        assert scalar(pg_cluster.dsn(), "SHOW max_connections") == "20"
        assert other.role_password(MONITOR_ROLE) != pg_cluster.role_password(MONITOR_ROLE)
    assert not base_dir.exists()
    assert pg_cluster.running


def test_failed_start_reports_log_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = Path(real_mkdtemp(*args, **kwargs))
        created.append(path)
        return str(path)

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    broken = ThrowawayCluster(settings={"shared_buffers": "lots"})
    with pytest.raises(RuntimeError, match="invalid value for parameter"):
        broken.start()
    assert created
    assert not created[0].exists()
    assert not broken.running


def test_picked_port_taken_meanwhile_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy_port: int = squatter.getsockname()[1]
        ports = iter([busy_port])
        real_pick = cluster_module._free_loopback_port
        monkeypatch.setattr(
            cluster_module, "_free_loopback_port", lambda: next(ports, None) or real_pick()
        )
        with ThrowawayCluster() as cluster:
            assert cluster.port != busy_port
            assert scalar(cluster.dsn(), "SELECT 1") == 1
