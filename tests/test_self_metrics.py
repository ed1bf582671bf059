"""The daemon's own metrics that the shipped rules and the Grafana dashboard read, each
asserted with a value from a real daemon: a reachable and an unreachable target, a rule
group that fails, a receiver that accepts and one that cannot be reached."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from piggywatch import __version__
from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import Values, value
from tests.support.ports import free_port
from tests.support.servers.webhook import WebhookServer
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent

RULES = """\
groups:
  - name: works
    rules:
      - alert: MainIsUp
        expr: pg_up{target="main"} == 1
        labels: {severity: low}
      # As a rule written for postgres_exporter says it: pg_up has the target's job and
      # instance (and server) labels, as the target's other series do.
      - alert: PostgresDown
        expr: pg_up{job="postgres"} == 0
        annotations: {summary: "{{ $labels.instance }} is down"}
  - name: fails
    rules:
      # Both sides hold the same two series once the target's labels are ignored: the
      # evaluation fails (many-to-many matching), as it would in Prometheus.
      - alert: NeverEvaluates
        expr: pg_up + ignoring(target, instance, server) pg_up
"""


def used_self_metrics() -> set[str]:
    """Every piggywatch_* metric the shipped rules, the dashboard and the chart read."""
    texts = [p.read_text() for p in (REPO / "rules").glob("*.yaml")]
    texts += [p.read_text() for p in (REPO / "deploy").rglob("*") if p.is_file()
              and p.suffix in (".json", ".yaml", ".yml", ".tpl")]
    found = {m for text in texts for m in re.findall(r"piggywatch_[a-z_]+", text)}
    # Histogram and summary parts are read through their family.
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in found}


def own(metrics: Values) -> dict[str, float]:
    """The daemon's own samples, readable in a failure message."""
    return {f"{n}{dict(ls)}": v for (n, ls), v in metrics.items() if n.startswith("piggywatch_")}


def test_every_self_metric_the_rules_and_dashboard_read_has_its_value(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                         password=pg_cluster.role_password("piggywatch"))
    closed = free_port()
    (tmp_path / "rules.yaml").write_text(RULES)
    with WebhookServer() as hook:
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
  - name: down
    dsn: postgresql://piggywatch@127.0.0.1:{closed}/app
    connect_timeout: 1s
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: sqlite:///./state.db
receivers:
  - name: works
    webhook: {{url: "{hook.url}"}}
  - name: unreachable
    webhook: {{url: "http://127.0.0.1:{closed}/hook", timeout: 1s}}
route:
  receiver: works
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - matchers: ['alertname="MainIsUp"']
      receiver: works
      continue: true
    - matchers: ['alertname="MainIsUp"']
      receiver: unreachable
logging: {{level: INFO, format: json}}
""")
        began = time.time()
        with DaemonProcess(config, tmp_path, env={"PWD": str(tmp_path)}) as daemon:
            def metrics() -> Values:
                return daemon.metrics()

            def ready() -> bool:
                m = metrics()
                return (value(m, "piggywatch_notifications_total", receiver="works",
                              result="accepted") or 0) >= 1 \
                    and (value(m, "piggywatch_outbox_oldest_age_seconds",
                               receiver="unreachable") or 0) > 1 \
                    and (value(m, "piggywatch_rule_evaluation_failures_total",
                               rule_group="fails") or 0) >= 2
            try:
                wait_for(ready, 30, "a delivery, a stuck notification and failing evaluations")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{json.dumps(own(metrics()), indent=1)}\n"
                                     f"{daemon.stderr()[-3000:]}") from None
            m = metrics()
            checked = {
                "piggywatch_build_info": value(m, "piggywatch_build_info",
                                               version=__version__) == 1.0,
                "piggywatch_collector_last_success_timestamp_seconds": began <= (value(
                    m, "piggywatch_collector_last_success_timestamp_seconds", target="main",
                    collector="connections") or 0) <= time.time(),
                "piggywatch_collector_errors_total": (value(
                    m, "piggywatch_collector_errors_total", target="down",
                    collector="connections", reason="connect") or 0) >= 1,
                "piggywatch_rule_evaluation_failures_total": (
                    value(m, "piggywatch_rule_evaluation_failures_total", rule_group="fails") or 0
                ) >= 2 and value(m, "piggywatch_rule_evaluation_failures_total",
                                 rule_group="works") == 0,
                "piggywatch_notifications_total": (value(
                    m, "piggywatch_notifications_total", receiver="works",
                    result="accepted") or 0) >= 1,
                "piggywatch_outbox_depth": value(m, "piggywatch_outbox_depth",
                                                 receiver="unreachable") == 1.0
                and value(m, "piggywatch_outbox_depth", receiver="works") == 0.0,
                "piggywatch_outbox_oldest_age_seconds": 1 < (value(
                    m, "piggywatch_outbox_oldest_age_seconds", receiver="unreachable")
                    or 0) < time.time() - began + 5,
            }
            assert {name for name, ok in checked.items() if not ok} == set(), \
                json.dumps(own(m), indent=1)
            down = [a for a in daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
                    if a["labels"]["alertname"] == "PostgresDown"]
            assert [(a["labels"]["target"], a["annotations"]["summary"]) for a in down] == [
                ("down", f"127.0.0.1:{closed} is down")]
            # The delivered pages are the firing alerts, not something else.
            posted = {p["alerts"][0]["labels"]["alertname"] for p in hook.posts}
            assert "MainIsUp" in posted and posted <= {"MainIsUp", "PostgresDown"}
    # Nothing the rules or the dashboard read escapes this test.
    assert used_self_metrics() <= set(checked), used_self_metrics() - set(checked)
