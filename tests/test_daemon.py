"""`piggywatch run` end to end: a real daemon process against a real PostgreSQL."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import Values, value

# Names kept from postgres_exporter that promtool's linter dislikes (see README).

CONFIG = """\
targets:
  - name: {name}
    dsn: {dsn}
    connect_timeout: 2s
    collectors:
      connections: {{interval: 1s}}
      database: {{interval: 1s}}
      statements: {{interval: 2s, top_k: 20}}
      tables: {{interval: 2s, top_n: 5, timeout: 30s}}
logging: {{level: DEBUG, format: json}}
"""


def monitor_dsn(cluster: ThrowawayCluster) -> str:
    return cluster.dsn(dbname="piggybong", user="piggywatch",
                       password=cluster.role_password("piggywatch"))


def write_config(tmp_path: Path, dsn: str, name: str = "piggybong", extra: str = "") -> Path:
    path = tmp_path / "piggywatch.yaml"
    path.write_text(CONFIG.format(name=name, dsn=dsn) + extra)
    return path


@pytest.fixture
def daemon(pg_cluster: ThrowawayCluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(write_config(tmp_path, monitor_dsn(pg_cluster)), tmp_path) as proc:
        yield proc


def family_of(line: str) -> str:
    """The metric name an exposition line is about (a sample, or a HELP / TYPE line)."""
    if line.startswith("# "):
        parts = line.split(" ", 3)
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


def has_all_collectors(values: Values) -> bool:
    names = {name for name, _ in values}
    return {"pg_stat_activity_count", "pg_stat_database_xact_commit",
            "pg_stat_statements_calls_total", "pg_table_size_bytes"} <= names


def test_metrics_parse_and_pass_promtool(daemon: DaemonProcess, pg_cluster: ThrowawayCluster,
                                         tmp_path: Path) -> None:
    with psycopg.connect(pg_cluster.dsn(dbname="piggybong")) as conn:
        for _ in range(5):
            conn.execute("SELECT count(*) FROM users WHERE plan = 'free'")
    values = daemon.wait_for_metric(has_all_collectors, 20, "every collector's metrics")
    assert value(values, "pg_up", target="piggybong") == 1.0
    assert value(values, "piggywatch_build_info") == 1.0
    assert value(values, "pg_settings_max_connections", target="piggybong") == 20
    text = daemon.get("/metrics").text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    # postgres_exporter's names are kept so dashboards keep working (pg_stat_activity_count,
    # pg_stat_database_xact_commit, counters without "_total"); promtool's only objections
    # to them are its naming lints (exit 3, warnings), and only ever on pg_* families.
    complaints = result.stderr.strip().splitlines()
    assert result.returncode in (0, 3), result.stderr
    lints = (' non-histogram and non-summary metrics should not have "_count" suffix',
             ' counter metrics should have "_total" suffix',
             # PostgreSQL 17+'s wal_summary_keep_time setting.
             " metric name should not include type 'summary'")
    linted = {line.removesuffix(lint) for line in complaints for lint in lints
              if line.endswith(lint)}
    assert all(any(line.endswith(lint) for lint in lints) for line in complaints), \
        result.stderr
    assert {"pg_stat_activity_count", "pg_stat_database_xact_commit"} <= linted
    assert all(name.startswith("pg_") for name in linted), linted
    without = "\n".join(line for line in text.splitlines() if family_of(line) not in linted)
    strict = subprocess.run([promtool, "check", "metrics"], input=without + "\n",
                            capture_output=True, text=True, timeout=30)
    assert strict.returncode == 0, strict.stderr


def test_health_and_readiness(daemon: DaemonProcess) -> None:
    assert daemon.get("/healthz").status_code == 200
    assert daemon.get("/readyz").text == "ready\n"
    assert daemon.get("/nope").status_code == 404


def test_connections_over_80_percent_move_utilization_in_next_sample(
        daemon: DaemonProcess, pg_cluster: ThrowawayCluster) -> None:
    before = daemon.wait_for_metric(
        lambda v: value(v, "pg_connections_utilization_ratio") is not None, 10, "utilization")
    usable = 20 - 3  # max_connections - superuser_reserved_connections of the test cluster
    clients = value(before, "pg_connections_client_backends") or 0
    wanted = math.ceil(0.85 * usable)
    extra = [psycopg.connect(pg_cluster.dsn(dbname="piggybong"),
                             application_name="load-test")
             for _ in range(max(0, wanted - int(clients)))]
    try:
        after = daemon.wait_for_metric(
            lambda v: (value(v, "pg_connections_utilization_ratio") or 0) > 0.8, 5,
            "utilization above 0.8")
        assert value(after, "pg_connections_by_application", application_name="load-test") \
            == len(extra)
    finally:
        for conn in extra:
            conn.close()


def test_database_down_gives_pg_up_0_and_recovery_without_restart(tmp_path: Path) -> None:
    with ThrowawayCluster(max_connections=20) as cluster:
        cluster.bootstrap_demo()
        with DaemonProcess(write_config(tmp_path, monitor_dsn(cluster)), tmp_path) as proc:
            proc.wait_for_metric(lambda v: value(v, "pg_up") == 1.0, 10, "pg_up 1")
            cluster.stop()
            # /metrics keeps answering, and stale database figures go (each collector's at
            # its own next cycle: a target's collectors are spread apart), not frozen.
            down = proc.wait_for_metric(
                lambda v: value(v, "pg_up") == 0.0 and value(
                    v, "pg_stat_activity_count", state="active", datname="piggybong") is None,
                10, "pg_up 0 and no connection figures")
            assert (value(down, "piggywatch_collector_errors_total", collector="connections",
                          reason="connect") or 0) >= 1
            cluster.start()
            up = proc.wait_for_metric(
                lambda v: value(v, "pg_up") == 1.0 and value(
                    v, "pg_stat_activity_count", state="active", datname="piggybong") is not None,
                15, "pg_up 1 again")
            assert value(up, "pg_settings_max_connections") == 20
            code, _ = proc.terminate()
            assert code == 0
            assert "Traceback" not in proc.stderr()


def test_sigterm_during_a_sample_exits_0_within_5s(pg_cluster: ThrowawayCluster,
                                                   tmp_path: Path) -> None:
    # Hold a lock that the tables collector's size query must wait for, so SIGTERM
    # arrives while a sample is running inside PostgreSQL.
    with psycopg.connect(pg_cluster.dsn(dbname="piggybong")) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE purchases IN ACCESS EXCLUSIVE MODE")
        with DaemonProcess(write_config(tmp_path, monitor_dsn(pg_cluster)), tmp_path) as proc:
            deadline = time.monotonic() + 10
            waiting = 0
            while time.monotonic() < deadline and not waiting:
                row = locker.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'piggywatch' AND wait_event_type = 'Lock'").fetchone()
                waiting = row[0] if row else 0
                time.sleep(0.1)
            assert waiting, "the tables sample never started waiting on the lock"
            code, took = proc.terminate()
        locker.execute("ROLLBACK")
    assert code == 0
    assert took < 5.0
    assert "Traceback" not in proc.stderr()


def test_dsn_password_never_appears_in_logs_errors_or_metrics(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    password = pg_cluster.role_password("piggywatch")
    wrong = "Wr0ng-" + password[::-1]
    bad_dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch", password=wrong)
    extra = CONFIG.split("targets:\n", 1)[1].split("logging:")[0].format(name="broken",
                                                                       dsn=bad_dsn)
    config = write_config(tmp_path, monitor_dsn(pg_cluster))
    text = config.read_text().replace("logging:", extra + "logging:", 1)
    config.write_text(text)
    with DaemonProcess(config, tmp_path) as proc:
        values = proc.wait_for_metric(
            lambda v: value(v, "pg_up", target="broken") == 0.0
            and value(v, "pg_up", target="piggybong") == 1.0, 10, "one target up, one down")
        assert values
        exposed = proc.get("/metrics").text + proc.api("GET", "/api/v1/statements").text
        proc.terminate()
    logs = proc.stderr()
    assert "password authentication failed" in logs
    for secret in (password, wrong):
        assert secret not in logs
        assert secret not in exposed
