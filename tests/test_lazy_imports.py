"""`piggywatch run` imports what its configuration uses and no more (issue 13's memory
budget): a PostgreSQL-only daemon with the shipped rules never loads the libraries and
packages of channels, acknowledgements, Sentry or the other sources, even after collecting,
evaluating its rules and answering its API. Each of them costs megabytes of RSS for the
daemon's whole life (``python -m bench.import_cost_bench`` prints how many).

The daemon is a real process; Python's own import log (``PYTHONPROFILEIMPORTTIME``) names
every module it imports, lazy imports included."""

from __future__ import annotations

from pathlib import Path

import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.demo.run import shipped_rules_dir
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import total

# The collectors as configured by default, the shipped rules, SQLite state: no route, no
# receivers, no Sentry, no other source.
CONFIG = """\
targets:
  - name: main
    dsn: {dsn}
    collectors:
      connections: {{interval: 1s}}
      database: {{interval: 1s}}
      statements: {{interval: 1s}}
      tables: {{interval: 1s}}
      compat: {{interval: 1s}}
rule_files: ["{rules}/*.yaml"]
evaluation_interval: 1s
state: sqlite:///./state.db
"""

# Module prefixes a PostgreSQL-only configuration has no use for.
UNUSED = [
    "sentry_sdk", "slack_sdk", "httpx", "pglast", "redis", "itsdangerous", "smtplib",
    "piggywatch.ack", "piggywatch.delivery", "piggywatch.alerting.incidents",
    "piggywatch.alerting.outbox", "piggywatch.alerting.dispatcher",
    "piggywatch.alerting.notifiers",
    # The models of sections the configuration does not have (config_lazy).
    "piggywatch.alerting.channels", "piggywatch.alerting.settings",
    "piggywatch.alerting.escalation", "piggywatch.alerting.time_intervals",
    "piggywatch.collectors.cost", "piggywatch.collectors.custom_sql",
    "piggywatch.collectors.edge_functions", "piggywatch.collectors.growth",
    "piggywatch.collectors.probes", "piggywatch.collectors.redis_cache",
    "piggywatch.collectors.system_memory",
]


def imported(stderr: str) -> set[str]:
    """The modules named in the import log (``import time: self | cumulative | name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def unused_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == prefix or m.startswith(prefix + ".") for prefix in UNUSED))


@pytest.fixture
def daemon(pg_cluster: ThrowawayCluster, tmp_path: Path) -> DaemonProcess:
    dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                         password=pg_cluster.role_password("piggywatch"))
    config = tmp_path / "piggywatch.yaml"
    config.write_text(CONFIG.format(dsn=dsn, rules=shipped_rules_dir()))
    return DaemonProcess(config, tmp_path, {"PYTHONPROFILEIMPORTTIME": "1"})


def test_postgres_only_daemon_imports_no_channel_ack_or_sentry_library(
        daemon: DaemonProcess) -> None:
    with daemon:
        # Collected and evaluated more than once, and every API path a dashboard or the
        # CLI calls answered: whatever those import lazily is in the log by now.
        values = daemon.wait_for_metric(
            lambda v: total(v, "piggywatch_rule_evaluations_total") >= 10, 30,
            "ten rule evaluations")
        assert total(values, "pg_stat_statements_calls_total") > 0
        # Silences need delivery (a route): 409 says so.
        answers = {path: daemon.api("GET", path).status_code for path in (
            "/api/v1/alerts", "/api/v1/silences", "/api/v1/statements", "/readyz")}
        assert answers == {"/api/v1/alerts": 200, "/api/v1/silences": 409,
                           "/api/v1/statements": 200, "/readyz": 200}
        modules = imported(daemon.stderr())
    # The log is complete: it names what this configuration does use.
    assert {"psycopg", "piggywatch.daemon", "piggywatch.collectors.postgres.statements",
            "apscheduler.schedulers.background"} <= modules
    assert unused_among(modules) == []


def test_a_hook_request_imports_the_ack_package_then_and_is_refused_without_delivery(
        daemon: DaemonProcess) -> None:
    with daemon:
        assert unused_among(imported(daemon.stderr())) == []
        response = daemon.get("/ack/" + "x" * 32)  # shaped like a link's token
        # Without delivery no replica acknowledges here: 503 (PagerDuty and Slack retry).
        assert response.status_code == 503
        assert "piggywatch.ack.http" in imported(daemon.stderr())
