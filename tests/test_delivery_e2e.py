"""Alert delivery end to end: a real daemon against a real PostgreSQL, paging real local
PagerDuty, Slack, SMTP and webhook servers, with short test timings (and, in-process, a
channel that refuses for good)."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest

from piggywatch.config_file import parse_settings
from piggywatch.delivery import AlertDelivery
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.ports import free_port
from tests.support.servers.pagerduty import PagerDutyServer
from tests.support.servers.slack import SlackServer
from tests.support.servers.smtp import SMTPServer
from tests.support.servers.webhook import WebhookServer
from tests.support.waiting import wait_for

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
RULES = """\
groups:
  - name: e2e
    rules:
      - alert: PostgresConnectionsHigh
        expr: pg_connections_utilization_ratio > 0.8
        labels: {severity: high}
        annotations:
          summary: "{{ $labels.target }}: {{ $value | humanizePercentage }} of connections"
          runbook: https://runbooks.example.com/connections
"""


class Channels:
    """The local servers a test daemon pages."""

    def __init__(self, stack: ExitStack) -> None:
        self.pagerduty = stack.enter_context(PagerDutyServer(routing_key=ROUTING_KEY))
        self.slack = stack.enter_context(SlackServer())
        self.smtp = stack.enter_context(SMTPServer())
        self.webhook = stack.enter_context(WebhookServer())

    def config(self, cluster: ThrowawayCluster, *, wait: str = "3s") -> str:
        dsn = cluster.dsn(dbname="piggybong", user="piggywatch",
                          password=cluster.role_password("piggywatch"))
        return f"""\
{fast_rules_config(dsn)}external_url: http://piggywatch.test
receivers:
  - name: oncall-pagerduty
    pagerduty: {{routing_key: {ROUTING_KEY}, url: "{self.pagerduty.url}"}}
  - name: oncall-slack
    slack: {{token: {self.slack.token}, channel: "#oncall", base_url: "{self.slack.url}"}}
  - name: leads-email
    email: {{to: [lead@example.com, cto@example.com], from: piggywatch@example.com,
             smarthost: "{self.smtp.smarthost}", tls: none}}
  - name: everyone-webhook
    webhook: {{url: "{self.webhook.url}"}}
route:
  escalation: degradation
  group_by: [alertname, target]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
escalations:
  degradation:
    - {{notify: [oncall-pagerduty, oncall-slack], wait: {wait}}}
    - {{notify: [leads-email], wait: {wait}}}
    - {{notify: [everyone-webhook]}}
logging: {{level: INFO, format: json}}
"""


def setup(tmp_path: Path, channels: Channels, cluster: ThrowawayCluster, **kw: str) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    config = tmp_path / "piggywatch.yaml"
    config.write_text(channels.config(cluster, **kw))
    return config


@pytest.fixture
def channels() -> Iterator[Channels]:
    with ExitStack() as stack:
        yield Channels(stack)


def load(cluster: ThrowawayCluster, ratio: float = 0.85) -> list[psycopg.Connection]:
    usable = 20 - 3  # max_connections - superuser_reserved_connections of the test cluster
    with psycopg.connect(cluster.dsn(dbname="piggybong")) as probe:
        row = probe.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend'").fetchone()
    busy = int(row[0]) - 1 if row else 0
    return [psycopg.connect(cluster.dsn(dbname="piggybong"), application_name="api-pool")
            for _ in range(max(0, math.ceil(ratio * usable) - busy))]


def actions(pd: PagerDutyServer) -> list[tuple[str, str]]:
    return [(e["event_action"], e["dedup_key"]) for e in pd.events]


def test_page_escalate_ack_resolve(pg_cluster: ThrowawayCluster, channels: Channels,
                                   tmp_path: Path) -> None:
    config = setup(tmp_path, channels, pg_cluster)
    pd, slack, smtp, hook = channels.pagerduty, channels.slack, channels.smtp, channels.webhook
    connections: list[psycopg.Connection] = []
    try:
        with DaemonProcess(config, tmp_path) as daemon:
            # The API refuses a missing or wrong token, in the same way.
            assert daemon.get("/api/v1/alerts").status_code == 401
            wrong = httpx.get(daemon.url + "/api/v1/alerts", timeout=5,
                              headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and daemon.token not in wrong.text
            connections = load(pg_cluster)
            # Connections at 85%: Level 1 is paged and posted to at once.
            wait_for(lambda: len(pd.events) >= 1 and len(slack.messages) >= 1, 15,
                     "PagerDuty trigger and Slack post")
            fired_at = time.monotonic()
            [(action, dedup_key)] = actions(pd)
            trigger = pd.events[0]
            assert action == "trigger" and trigger["payload"]["severity"] == "error"
            assert re.search(r"main: [\d.]+% of connections", trigger["payload"]["summary"])
            assert smtp.mails == [], "Level 2 waits for the step's wait"
            # Nobody acknowledges: after the wait, Level 2 (the leads) is mailed.
            wait_for(lambda: len(smtp.mails) == 1, 10, "Level 2 mail")
            assert time.monotonic() - fired_at >= 2.5
            assert set(smtp.mails[0].rcpt_tos) == {"lead@example.com", "cto@example.com"}
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert alert["state"] == "firing" and alert["level"] == 2 and alert["ack"] is None
            # Acknowledged through the API: PagerDuty acknowledge, Slack updated in place,
            # a mail in the thread, and the climb stops before Level 3.
            answer = daemon.api("POST", f"/api/v1/alerts/{alert['fingerprint']}/ack",
                                {"by": "alice", "comment": "on it"})
            assert answer.status_code == 200, answer.text
            wait_for(lambda: pd.alert_status(dedup_key) == "acknowledged", 10, "PD ack")
            wait_for(lambda: len(smtp.mails) == 2, 10, "acknowledged mail")
            [post] = [m for m in slack.messages if m.thread_ts is None]
            wait_for(lambda: slack.message(post.channel, post.ts).versions != [], 10,
                     "Slack message updated")
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert alert["ack"]["by"] == "alice" and alert["ack"]["comment"] == "on it"
            daemon.wait_until_settled(after=time.time() + 3)  # Level 3's wait: 3s
            assert hook.posts == [], "no Level 3 after the acknowledgement"
            # Connections dropped: resolved everywhere, in the same incident and thread.
            for conn in connections:
                conn.close()
            connections = []
            wait_for(lambda: pd.alert_status(dedup_key) == "resolved", 15, "PD resolve")
            wait_for(lambda: len(smtp.mails) == 3, 10, "resolved mail")
            wait_for(lambda: "resolved" in slack.message(post.channel, post.ts).text.lower(),
                     10, "Slack message shows resolved")
            assert {key for _, key in actions(pd)} == {dedup_key}
            assert [a for a, _ in actions(pd)] == ["trigger", "acknowledge", "resolve"]
            metrics = daemon.get("/metrics").text
            code, _ = daemon.terminate()
        assert code == 0
        first, *rest = [m.message for m in smtp.mails]
        root = first["Message-ID"]
        assert all(root in (m["References"] or "") for m in rest), "one mail thread"
        assert len([m for m in slack.messages if m.thread_ts is None]) == 1
        assert 'piggywatch_notifications_total{receiver="oncall-pagerduty",result="accepted"}' \
            in metrics
        logs = daemon.stderr()
        assert "Traceback" not in logs
        for secret in (ROUTING_KEY, slack.token, daemon.token):
            assert secret not in logs and secret not in metrics
    finally:
        for conn in connections:
            conn.close()


def test_kill_9_while_pagerduty_fails_delivers_once_after_restart(
        pg_cluster: ThrowawayCluster, channels: Channels, tmp_path: Path) -> None:
    config = setup(tmp_path, channels, pg_cluster, wait="1h")
    pd, slack = channels.pagerduty, channels.slack
    pd.fail(500, times=10_000)
    port = free_port()
    connections = load(pg_cluster)
    try:
        with DaemonProcess(config, tmp_path, port=port) as first:
            wait_for(lambda: len(slack.messages) == 1 and len(pd.requests) >= 2, 15,
                     "Slack post and failing PagerDuty attempts")
            assert first.proc is not None
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        assert pd.events == []
        pd.clear()  # PagerDuty recovers while the daemon is down
        with DaemonProcess(config, tmp_path, port=port) as second:
            wait_for(lambda: len(pd.events) == 1, 20, "the trigger delivered after restart")
            second.wait_until_settled(after=time.time())
            second.terminate()
        [event] = pd.events
        assert event["event_action"] == "trigger"
        assert len({r.json()["dedup_key"] for r in pd.requests}) == 1
        assert len(slack.messages) == 1, "no second Slack message after the restart"
        assert "resuming 1 pending notifications" in second.stderr()
    finally:
        for conn in connections:
            conn.close()


def test_a_400_is_not_retried_and_raises_notification_failing_on_slack(
        channels: Channels, tmp_path: Path) -> None:
    pd, slack = channels.pagerduty, channels.slack
    wrong_key = "W" * 32  # well-formed, but not the integration's: PagerDuty answers 400
    settings = parse_settings(f"""\
targets: [{{name: main, dsn: "postgresql://x@127.0.0.1:1/x"}}]
receivers:
  - name: oncall-pagerduty
    pagerduty: {{routing_key: {wrong_key}, url: "{pd.url}"}}
  - name: oncall-slack
    slack: {{token: {slack.token}, channel: "#oncall", base_url: "{slack.url}"}}
route: {{escalation: page, group_by: [alertname], group_wait: 0s}}
escalations:
  page: [{{notify: [oncall-pagerduty, oncall-slack]}}]
""", "inline.yaml", {})
    delivery = AlertDelivery(settings, tmp_path / "state.db")
    delivery.start(firing=None)
    try:
        labels = (("alertname", "PostgresConnectionsHigh"), ("severity", "high"),
                  ("target", "main"))
        now = time.time()
        delivery.dispatcher.handle(AlertEvent(EventKind.FIRING, "g", "PostgresConnectionsHigh",
                                              Alert(labels, {"summary": "85%"},
                                                    AlertState.FIRING, now, 0.85,
                                                    fired_at=now), now))
        wait_for(lambda: len(slack.messages) == 2, 10, "the alert and the failure on Slack")
        # Settled: the refused trigger is out of the outbox, nothing is left to retry.
        wait_for(lambda: not delivery.outbox.pending(), 10, "the outbox empty")
    finally:
        delivery.stop(1.0)
    assert len(pd.requests) == 1, "a 400 is never retried"
    assert pd.events == []
    failure = slack.messages[1]
    assert "PiggyWatchNotificationFailing" in failure.text
    shown = json.dumps(failure.all_blocks)
    assert "Notifications to receiver oncall-pagerduty are failing" in shown
    assert wrong_key not in shown
