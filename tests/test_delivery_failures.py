"""Notifications that cannot go out as they are: the real outbox, notifiers and state file,
delivering to real local SMTP and Slack servers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piggywatch.config_file import parse_settings
from piggywatch.delivery import AlertDelivery
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind
from tests.support.servers.slack import SlackServer
from tests.support.servers.smtp import SMTPServer
from tests.support.waiting import wait_for

SLACK_TOKEN = "xoxb-piggywatch-test-token"


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer(token=SLACK_TOKEN) as server:
        yield server


def start_delivery(tmp_path: Path, smtp: SMTPServer, slack: SlackServer) -> AlertDelivery:
    """Email and Slack, both notified at once for every alert."""
    settings = parse_settings(f"""\
targets: [{{name: main, dsn: "postgresql://x@127.0.0.1:1/x"}}]
receivers:
  - name: leads-email
    email: {{to: [lead@example.com], from: piggywatch@example.com,
             smarthost: "{smtp.smarthost}", tls: none, timeout: 5s}}
  - name: oncall-slack
    slack: {{token: {slack.token}, channel: "#oncall", base_url: "{slack.url}"}}
route: {{escalation: page, group_by: [alertname, target], group_wait: 0s}}
escalations:
  page: [{{notify: [leads-email, oncall-slack]}}]
""", "inline.yaml", {})
    delivery = AlertDelivery(settings, tmp_path / "state.db")
    delivery.start(firing=None)
    return delivery


def fire(delivery: AlertDelivery, target: str, summary: str = "85% of connections") -> None:
    labels = (("alertname", "PostgresConnectionsHigh"), ("severity", "high"),
              ("target", target))
    now = time.time()
    delivery.dispatcher.handle(AlertEvent(
        EventKind.FIRING, "g", "PostgresConnectionsHigh",
        Alert(labels, {"summary": summary}, AlertState.FIRING, now, 0.85,
              fired_at=now), now))


def outbox_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("piggywatch.alerting.outbox")
            and r.levelno >= logging.WARNING]


def test_cr_lf_in_a_label_is_folded_into_the_subject_and_the_mail_goes_out(
        tmp_path: Path, smtp: SMTPServer, slack: SlackServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    delivery = start_delivery(tmp_path, smtp, slack)
    try:
        # A header injection attempt as much as a broken exporter: a value with a line break.
        fire(delivery, "db-1\r\nBcc: attacker@example.com")
        wait_for(lambda: len(smtp.mails) == 1 and len(slack.messages) == 1, 10,
                 "the mail and the Slack message")
    finally:
        delivery.stop(1.0)
    [mail] = smtp.mails
    assert mail.rcpt_tos == ("lead@example.com",)
    message = mail.message
    # Folded after "Subject:" (the email package's choice for a long first word); the
    # space it leaves is the one after the colon.
    assert message["Subject"].strip() == "[HIGH] PostgresConnectionsHigh (target=db-1 Bcc: " \
        "attacker@example.com)"
    assert message["Bcc"] is None
    assert b"\nBcc:" not in mail.data.split(b"\r\n\r\n")[0], "no header injected"
    assert outbox_records(caplog) == []
    assert len(slack.messages) == 1, "no PiggyWatchNotificationFailing"


def test_a_mail_that_cannot_be_encoded_fails_once_and_alerts_the_other_channel(
        tmp_path: Path, smtp: SMTPServer, slack: SlackServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    delivery = start_delivery(tmp_path, smtp, slack)
    try:
        # Half an emoji: a rule file's YAML "\ud83d" escape (or a JavaScript string cut at
        # a UTF-16 boundary) in an annotation. UTF-8, the mail's charset, cannot encode it.
        fire(delivery, "main", summary="\ud83d connections at 85%")
        wait_for(lambda: len(slack.messages) == 2, 10,
                 "the alert and PiggyWatchNotificationFailing on Slack")
        # Given up at once: a notification to be retried would stay in the outbox.
        wait_for(lambda: not delivery.outbox.pending(), 10, "the outbox empty")
        pending = delivery.outbox.pending()
    finally:
        delivery.stop(1.0)
    assert smtp.mails == []
    assert pending == []
    failing = slack.messages[1]
    assert "PiggyWatchNotificationFailing" in failing.text
    shown = json.dumps(failing.all_blocks)
    assert "Notifications to receiver leads-email are failing" in shown
    assert "cannot be encoded" in shown
    [record] = outbox_records(caplog)
    line = record.getMessage()
    assert record.levelno == logging.ERROR and record.exc_info is None, line
    assert "failed permanently" in line and "receiver leads-email" in line
    [mail_notification] = [r for r in caplog.records
                           if "delivered to oncall-slack" in r.getMessage()][:1]
    incident = mail_notification.getMessage().split("incident ")[1].split(")")[0]
    assert f"incident {incident}" in line
