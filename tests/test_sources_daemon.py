"""App-telemetry sources run inside the daemon: probes, custom SQL, Redis, memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import value
from tests.support.ports import free_port


@pytest.fixture
def app_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 500 if self.path == "/broken" else 200
            body = b'{"status": {"db": "ok"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sources_are_scheduled_and_a_failing_one_never_stops_the_others(
        pg_cluster: ThrowawayCluster, tmp_path: Path, app_server: str) -> None:
    dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                         password=pg_cluster.role_password("piggywatch"))
    with psycopg.connect(pg_cluster.dsn(dbname="piggybong"), autocommit=True) as conn:
        conn.execute("GRANT SELECT ON edge_functions_logs TO piggywatch")
        conn.execute("INSERT INTO edge_functions_logs (function_name, duration_ms, status_code)"
                     " VALUES ('checkout', 120, 200), ('checkout', 900, 500)")
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
targets:
  - name: main
    dsn: {dsn}
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
state: sqlite:///./state.db
sources:
  edge_functions:
    sql: {{target: main, table: public.edge_functions_logs}}
    interval: 1s
  custom_sql:
    - name: app_sessions
      target: main
      interval: 1s
      sql: SELECT count(*) AS sessions FROM pg_stat_activity
      value_columns: [sessions]
    - name: broken
      target: main
      interval: 1s
      sql: SELECT x FROM pw_no_such_table   # valid SQL, fails at run time
      value_columns: [x]
  probes:
    - {{name: health, url: "{app_server}/health", interval: 1s, critical: true,
        json_path: {{path: status.db, equals: ok}}}}
    - {{name: broken, url: "{app_server}/broken", interval: 1s}}
  redis:
    - {{name: cache, url: "redis://127.0.0.1:{free_port()}/0", interval: 1s, timeout: 1s}}
  system_memory: {{interval: 1s}}
""")
    with DaemonProcess(config, tmp_path) as proc:
        # Every series asserted below is there (the broken query has failed once, and said
        # so), so the asserts read settled figures rather than race the first cycles.
        values = proc.wait_for_metric(
            lambda v: value(v, "probe_success", probe="broken") is not None
            and value(v, "probe_success", probe="health") is not None
            and value(v, "probe_http_status_code", probe="broken") is not None
            and value(v, "app_sessions_sessions") is not None
            and value(v, "redis_up") is not None
            and value(v, "system_memory_usage_ratio") is not None
            # (The counter starts at 0: wait for the failure itself, in the same scrape.)
            and (value(v, "piggywatch_collector_errors_total", collector="custom_sql:broken",
                       reason="query") or 0) >= 1
            and "custom query 'broken'" in proc.stderr()
            and any(name == "edge_function_invocations_total" for name, _ in v),
            15, "every source")
        proc.terminate()
    assert value(values, "probe_success", probe="health") == 1.0
    assert value(values, "probe_success", probe="broken") == 0.0
    assert value(values, "probe_http_status_code", probe="broken") == 500.0
    assert (value(values, "app_sessions_sessions", target="main") or 0) >= 1
    assert value(values, "redis_up", instance="cache") == 0.0
    assert 0 < (value(values, "system_memory_usage_ratio") or 0) < 1
    assert (value(values, "piggywatch_collector_errors_total", collector="custom_sql:broken",
                  reason="query") or 0) >= 1
    assert "custom query 'broken'" in proc.stderr()
