"""Rules in the running daemon against a real PostgreSQL: fire, survive restarts, resolve."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.metrics import Values, value

RULES = """\
groups:
  - name: test-connections
    rules:
      - alert: ConnectionsHigh
        expr: pg_connections_utilization_ratio > 0.8
        for: 4s
        keep_firing_for: 3s
        labels: {severity: high}
        annotations:
          summary: "{{ $labels.target }} at {{ $value | humanizePercentage }}"
          top: >-
            {{ range query (printf "topk(1, pg_connections_by_application{target=%q})"
            $labels.target) }}{{ .Labels.application_name }}{{ end }}
"""


def write_setup(tmp_path: Path, cluster: ThrowawayCluster) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    dsn = cluster.dsn(dbname="piggybong", user="piggywatch",
                      password=cluster.role_password("piggywatch"))
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
{fast_rules_config(dsn)}logging: {{level: INFO, format: json}}
""")
    return config


def alert_state(values: Values) -> str | None:
    for state in ("pending", "firing"):
        if value(values, "ALERTS", alertname="ConnectionsHigh", alertstate=state) == 1.0:
            return state
    return None


def test_connections_alert_pends_fires_survives_restarts_and_resolves(tmp_path: Path) -> None:
    with ThrowawayCluster(max_connections=20) as cluster:
        cluster.bootstrap_demo()
        config = write_setup(tmp_path, cluster)
        usable = 20 - 3
        load = [psycopg.connect(cluster.dsn(dbname="piggybong"), application_name="api-pool")
                for _ in range(math.ceil(0.85 * usable))]
        try:
            with DaemonProcess(config, tmp_path) as first:
                pending = first.wait_for_metric(lambda v: alert_state(v) == "pending", 10,
                                                "pending")
                active_at = value(pending, "ALERTS_FOR_STATE", alertname="ConnectionsHigh")
                assert active_at is not None
                first.terminate()
            log_first = first.stderr()
            # Restarted while pending: the `for` clock keeps running from the first start.
            with DaemonProcess(config, tmp_path) as second:
                v = second.wait_for_metric(lambda v: alert_state(v) is not None, 10, "alert")
                assert value(v, "ALERTS_FOR_STATE", alertname="ConnectionsHigh") == active_at
                second.wait_for_metric(lambda v: alert_state(v) == "firing", 10, "firing")
                assert time.time() - active_at >= 4
                [alert] = second.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
                second.terminate()
            assert alert["state"] == "firing"
            # The target's labels as a rule written for postgres_exporter expects them.
            server = f"{cluster.host}:{cluster.port}"
            assert alert["labels"] == {"alertname": "ConnectionsHigh", "severity": "high",
                                       "target": "main", "server": server,
                                       "instance": server, "job": "postgres"}
            # The annotation's query named the application holding the connections.
            assert alert["annotations"]["top"] == "api-pool"
            assert alert["annotations"]["summary"].startswith("main at ")
            log_second = second.stderr()
            assert log_second.count('"message": "alert ConnectionsHigh firing') == 1
            # Restarted while firing: still firing at once, and no second page.
            with DaemonProcess(config, tmp_path) as third:
                v = third.wait_for_metric(lambda v: alert_state(v) is not None, 10, "alert")
                assert alert_state(v) == "firing"
                for conn in load:
                    conn.close()
                load = []
                dropped = time.monotonic()
                third.wait_for_metric(lambda v: alert_state(v) is None, 15, "resolved")
                # keep_firing_for held it for 3 s after the condition cleared.
                assert time.monotonic() - dropped >= 3
                third.terminate()
            log_third = third.stderr()
            assert "alert ConnectionsHigh firing" not in log_third
            assert log_third.count("alert ConnectionsHigh resolved") == 1
            assert "firing" not in log_first.replace("keep_firing", "")
        finally:
            for conn in load:
                conn.close()


BROKEN = {
    "syntax": ("expr: pg_up ==", "expr:"),
    # sort_by_label: Prometheus 2.x has it only behind a feature flag.
    "unsupported": ("expr: sort_by_label(pg_up, 'target') > 1", "sort_by_label"),
    "template": ("expr: pg_up == 0\n        annotations: {summary: '{{ $labels.x | nope }}'}",
                 "nope"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_rule_file_is_reported_with_file_rule_and_reason(tmp_path: Path,
                                                                case: str) -> None:
    expr, reason = BROKEN[case]
    rules = tmp_path / "bad.yaml"
    rules.write_text(f"groups:\n  - name: g\n    rules:\n      - alert: Broken\n"
                     f"        {expr}\n")
    config = tmp_path / "piggywatch.yaml"
    config.write_text("targets: [{name: main, dsn: 'postgresql://x@127.0.0.1:1/x'}]\n"
                      "rule_files: [bad.yaml]\n")
    result = subprocess.run([sys.executable, "-m", "piggywatch", "check", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{rules}:" in result.stderr
    assert "rule 'Broken'" in result.stderr
    assert reason in result.stderr


def test_reload_with_a_broken_file_keeps_the_last_good_rules(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    config = write_setup(tmp_path, pg_cluster)
    rules = tmp_path / "rules.yaml"
    with DaemonProcess(config, tmp_path) as proc:
        proc.wait_for_metric(
            lambda v: value(v, "piggywatch_rule_group_rules", rule_group="test-connections")
            == 1, 10, "rules loaded")
        rules.write_text(RULES.replace("> 0.8", "> "))
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        v = proc.wait_for_metric(
            lambda v: value(v, "piggywatch_rule_files_last_reload_success") == 0, 10,
            "failed reload reported")
        assert value(v, "piggywatch_rule_group_rules", rule_group="test-connections") == 1
        evaluations = value(v, "piggywatch_rule_evaluations_total",
                            rule_group="test-connections") or 0
        proc.wait_for_metric(
            lambda v: (value(v, "piggywatch_rule_evaluations_total",
                             rule_group="test-connections") or 0) > evaluations + 1,
            10, "the old rules still evaluated")
        # A fixed file is picked up without a signal (the files are watched).
        rules.write_text(RULES.replace("ConnectionsHigh", "ConnectionsVeryHigh"))
        proc.wait_for_metric(
            lambda v: value(v, "piggywatch_rule_files_last_reload_success") == 1, 15,
            "fixed file reloaded")
        proc.terminate()
    assert "rules.yaml" in proc.stderr() and "keeping the 1 rule groups" in proc.stderr()
