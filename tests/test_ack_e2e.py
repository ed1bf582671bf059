"""Acknowledging where on-call is, end to end: the real daemon against a real PostgreSQL,
PagerDuty, Slack and SMTP stand-ins, and PagerDuty's and Slack's requests sent to the
daemon's own hook endpoints."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.servers.pagerduty import PagerDutyServer
from tests.support.servers.pagerduty_hooks import PagerDutyWebhookSender, incident_delivery
from tests.support.servers.slack import SlackServer
from tests.support.servers.slack_interactivity import SlackInteractionSender, block_actions
from tests.support.servers.smtp import SMTPServer
from tests.support.waiting import wait_for
from tests.test_delivery_e2e import RULES, load

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
PD_SECRET = "pd-webhook-secret-e2e-0123456789abcdef"
SIGNING_SECRET = "slack-signing-secret-e2e-0123456789"
LINK_SECRET = "ack-link-secret-e2e-0123456789abcdef01"
WAIT = 3.0


class Channels:
    def __init__(self, stack: ExitStack) -> None:
        self.pagerduty = stack.enter_context(PagerDutyServer(routing_key=ROUTING_KEY))
        self.slack = stack.enter_context(SlackServer())
        self.smtp = stack.enter_context(SMTPServer())


@pytest.fixture
def channels() -> Iterator[Channels]:
    with ExitStack() as stack:
        yield Channels(stack)


def start(tmp_path: Path, channels: Channels, cluster: ThrowawayCluster) -> DaemonProcess:
    return DaemonProcess(ack_config(tmp_path, channels, cluster), tmp_path, SECRETS)


# The secrets, as the configuration reads them from the environment.
SECRETS = {"ACK_LINK_SECRET": LINK_SECRET, "PD_WEBHOOK_SECRET": PD_SECRET,
           "SLACK_SIGNING_SECRET": SIGNING_SECRET}


def ack_config(tmp_path: Path, channels: Channels, cluster: ThrowawayCluster) -> Path:
    """The delivery configuration with every way back: PagerDuty's webhooks, Slack's
    buttons, links in mails."""
    dsn = cluster.dsn(dbname="piggybong", user="piggywatch",
                      password=cluster.role_password("piggywatch"))
    (tmp_path / "rules.yaml").write_text(RULES)
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
{fast_rules_config(dsn)}external_url: http://piggywatch.test
ack_links: {{secret: "${{ACK_LINK_SECRET}}", ttl: 1h}}
receivers:
  - name: oncall-pagerduty
    pagerduty: {{routing_key: {ROUTING_KEY}, url: "{channels.pagerduty.url}",
                 webhook_secrets: ["${{PD_WEBHOOK_SECRET}}"]}}
  - name: oncall-slack
    slack: {{token: {channels.slack.token}, channel: "#oncall",
             base_url: "{channels.slack.url}", signing_secret: "${{SLACK_SIGNING_SECRET}}"}}
  - name: oncall-email
    email: {{to: [oncall@example.com], from: piggywatch@example.com,
             smarthost: "{channels.smtp.smarthost}", tls: none}}
  - name: leads-email
    email: {{to: [lead@example.com], from: piggywatch@example.com,
             smarthost: "{channels.smtp.smarthost}", tls: none}}
route:
  escalation: degradation
  group_by: [alertname, target]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
escalations:
  degradation:
    - {{notify: [oncall-pagerduty, oncall-slack, oncall-email], wait: {WAIT:g}s}}
    - {{notify: [leads-email]}}
logging: {{level: INFO, format: json}}
""")
    return config


def level_1(channels: Channels) -> str:
    """Wait for Level 1 (PagerDuty trigger, Slack post, on-call mail); the dedup_key."""
    wait_for(lambda: len(channels.pagerduty.events) >= 1 and len(channels.slack.messages) >= 1
             and len(channels.smtp.mails) >= 1, 15, "Level 1")
    return str(channels.pagerduty.events[0]["dedup_key"])


def leads_mailed(channels: Channels) -> bool:
    return any("lead@example.com" in m.rcpt_tos for m in channels.smtp.mails)


def test_pagerduty_acknowledged_webhook_stops_the_climb(
        pg_cluster: ThrowawayCluster, channels: Channels, tmp_path: Path) -> None:
    connections: list[psycopg.Connection] = []
    try:
        with start(tmp_path, channels, pg_cluster) as daemon:
            connections = load(pg_cluster)
            dedup_key = level_1(channels)
            sender = PagerDutyWebhookSender(daemon.url + "/hooks/pagerduty", [PD_SECRET])
            answer = sender.send(incident_delivery("incident.acknowledged", dedup_key,
                                                   occurred_at=time.time(), agent="Jane Oncall"))
            assert answer.status_code == 200 and answer.json()["status"] == "applied"
            [post] = [m for m in channels.slack.messages if m.thread_ts is None]
            wait_for(lambda: "Acknowledged by Jane Oncall in PagerDuty" in str(
                channels.slack.message(post.channel, post.ts).attachments), 10,
                "the Slack message says who acknowledged in PagerDuty")
            daemon.wait_until_settled(after=time.time() + WAIT)
            assert not leads_mailed(channels), "Level 2 was paged after the acknowledgement"
            assert [e["event_action"] for e in channels.pagerduty.events] == ["trigger"], \
                "PagerDuty's own acknowledgement is not echoed back to it"
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert alert["ack"]["source"] == "pagerduty" and alert["ack"]["by"] == "Jane Oncall"
            assert alert["ack"]["seconds_to_ack"] >= 0
            metrics = daemon.get("/metrics").text
            assert 'piggywatch_alert_acks_total{source="pagerduty"} 1' in metrics
            logs = daemon.stderr()
        for secret in (PD_SECRET, SIGNING_SECRET, LINK_SECRET):
            assert secret not in logs and secret not in metrics
    finally:
        for conn in connections:
            conn.close()


def test_slack_button_acknowledges_pagerduty_on_the_same_dedup_key(
        pg_cluster: ThrowawayCluster, channels: Channels, tmp_path: Path) -> None:
    connections: list[psycopg.Connection] = []
    try:
        with start(tmp_path, channels, pg_cluster) as daemon:
            connections = load(pg_cluster)
            dedup_key = level_1(channels)
            [post] = [m for m in channels.slack.messages if m.thread_ts is None]
            message = {"text": post.text, "attachments": post.attachments}
            payload = block_actions(message, "piggywatch_ack", username="jane",
                                    response_url=channels.slack.response_url,
                                    channel_id=post.channel, message_ts=post.ts)
            sender = SlackInteractionSender(daemon.url + "/hooks/slack/interactions",
                                            SIGNING_SECRET)
            started = time.monotonic()
            answer = sender.press(payload)
            assert answer.status_code == 200
            assert time.monotonic() - started < 3.0, "Slack waits 3 s at most"
            wait_for(lambda: channels.pagerduty.alert_status(dedup_key) == "acknowledged", 10,
                     "PagerDuty acknowledge")
            assert [(e["event_action"], e["dedup_key"]) for e in channels.pagerduty.events] \
                == [("trigger", dedup_key), ("acknowledge", dedup_key)]
            wait_for(lambda: "Acknowledged by @jane in Slack" in str(
                channels.slack.message(post.channel, post.ts).attachments), 10,
                "the Slack message updated")
            daemon.wait_until_settled(after=time.time() + WAIT)
            assert not leads_mailed(channels)
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert (alert["ack"]["source"], alert["ack"]["by_id"]) == ("slack", "U0ONCALL1")
    finally:
        for conn in connections:
            conn.close()


def test_mail_link_get_does_nothing_post_acknowledges(
        pg_cluster: ThrowawayCluster, channels: Channels, tmp_path: Path) -> None:
    connections: list[psycopg.Connection] = []
    try:
        with start(tmp_path, channels, pg_cluster) as daemon:
            connections = load(pg_cluster)
            dedup_key = level_1(channels)
            mail = channels.smtp.mails[0].message
            text = mail.get_body(("plain",)).get_content()
            link = re.search(r"Acknowledge: (http://piggywatch\.test/ack/\S+)", text)
            assert link is not None, text
            local = daemon.url + link.group(1).removeprefix("http://piggywatch.test")
            page = httpx.get(local, timeout=10)
            assert page.status_code == 200 and "oncall@example.com" in page.text
            daemon.wait_until_settled(after=time.time())
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert alert["ack"] is None, "a GET (a mail scanner) acknowledged"
            token = local.rsplit("/", 1)[1]
            done = httpx.post(local, data={"token": token}, timeout=10)
            assert done.status_code == 200 and "Acknowledged" in done.text
            wait_for(lambda: channels.pagerduty.alert_status(dedup_key) == "acknowledged", 10,
                     "PagerDuty acknowledge")
            [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert (alert["ack"]["source"], alert["ack"]["by"]) == ("email",
                                                                    "oncall@example.com")
            daemon.wait_until_settled(after=time.time() + WAIT)
            assert not leads_mailed(channels)
    finally:
        for conn in connections:
            conn.close()
