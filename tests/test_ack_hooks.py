"""Acknowledgements from PagerDuty (webhooks v3, polling), Slack (request URL, Socket Mode)
and mail links, through the real hook endpoints on the real HTTP server, a real dispatcher
and outbox on a state file, and local stand-ins of PagerDuty and Slack."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from piggywatch.ack.http import HookEndpoints
from piggywatch.ack.links import AckLinks
from piggywatch.ack.pagerduty_poll import PagerDutyPoller
from piggywatch.ack.service import AckService
from piggywatch.ack.slack_interactions import (
    ACK_ACTION,
    SILENCE_HOUR_ACTION,
    ButtonPress,
)
from piggywatch.ack.socket_mode import SlackSocketMode
from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.model import Action
from piggywatch.alerting.notifiers.slack import slack_message
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.http_server import HttpServer
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind
from tests.support.notifiers import RecordingNotifier
from tests.support.servers.pagerduty_hooks import (
    PagerDutyRestServer,
    PagerDutyWebhookSender,
    incident_delivery,
    signature,
)
from tests.support.servers.slack import SlackServer
from tests.support.servers.slack_interactivity import (
    SlackInteractionSender,
    SocketModeServer,
    block_actions,
)

OLD_SECRET = "pd-webhook-secret-old-0123456789abcdef"
NEW_SECRET = "pd-webhook-secret-new-fedcba9876543210"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
LINK_SECRET = "link-secret-0123456789abcdef0123456789"
API_KEY = "u+pagerduty-readonly-api-key"
RECEIVERS = ("oncall-pagerduty", "oncall-slack", "oncall-email", "leads-email")


def config(slack: SlackServer, pd_api: str = "http://127.0.0.1:9") -> str:
    return f"""
receivers:
  - name: oncall-pagerduty
    pagerduty: {{routing_key: k, webhook_secrets: [{NEW_SECRET}, {OLD_SECRET}],
                 api_key: "{API_KEY}", api_url: "{pd_api}", poll_interval: 1s}}
  - name: oncall-slack
    slack: {{token: {slack.token}, channel: "#oncall", base_url: "{slack.url}",
             signing_secret: {SIGNING_SECRET}, app_token: {slack.app_token},
             allowed_users: [U0ONCALL1, S0LEADS01]}}
  - {{name: oncall-email, email: {{to: [oncall@example.com], from: p@x, smarthost: "h:25"}}}}
  - {{name: leads-email, email: {{to: [lead@example.com], from: p@x, smarthost: "h:25"}}}}
route:
  escalation: degradation
  group_by: [alertname, target]
  group_wait: 0s
  group_interval: 1m
  repeat_interval: 4h
escalations:
  degradation:
    - {{notify: [oncall-pagerduty, oncall-slack, oncall-email], wait: 1h}}
    - notify: [leads-email]
"""


class Hooks:
    """A dispatcher with an unstarted outbox (what it committed is read back), the hook
    service, and the hook endpoints served by the daemon's HTTP server."""

    def __init__(self, tmp_path: Path, slack: SlackServer, pd_api: str) -> None:
        state = tmp_path / "state.db"
        self.settings = AlertingSettings.model_validate(yaml.safe_load(config(slack, pd_api)))
        self.outbox = Outbox(state, {name: RecordingNotifier() for name in RECEIVERS})
        self.dispatcher = Dispatcher(self.settings, self.outbox, state)
        self.links = AckLinks(LINK_SECRET, 86400, "http://piggywatch.test")
        self.service = AckService(self.dispatcher.incidents, state, self.settings.receivers,
                                  links=self.links)
        self.pressed: list[tuple[ButtonPress, str]] = []
        self._pressed = threading.Condition()
        self.service.on_press = self._on_press
        self.service.start()
        endpoints = HookEndpoints()
        endpoints.service = self.service
        self.http = HttpServer(endpoints, "127.0.0.1", 0)
        self.http.start()
        self.url = f"http://127.0.0.1:{self.http.port}"

    def _on_press(self, press: ButtonPress, outcome: str) -> None:
        with self._pressed:
            self.pressed.append((press, outcome))
            self._pressed.notify_all()

    def wait_presses(self, count: int) -> list[str]:
        with self._pressed:
            assert self._pressed.wait_for(lambda: len(self.pressed) >= count, 10), self.pressed
            return [outcome for _, outcome in self.pressed]

    def fire(self, name: str = "PostgresConnectionsHigh") -> str:
        """A high alert fires: Level 1 is notified; returns the incident key."""
        now = time.time()
        labels = (("alertname", name), ("severity", "high"), ("target", "main"))
        alert = Alert(labels, {"summary": "85% of connections"}, AlertState.FIRING, now - 60,
                      0.85, fired_at=now)
        self.dispatcher.handle(AlertEvent(EventKind.FIRING, "postgres", name, alert, now))
        self.dispatcher.run_pass(now)
        [esc] = [e for e in self.dispatcher.incidents.incidents() if e.alerts[0].name == name]
        return esc.incident

    def resolve(self, name: str = "PostgresConnectionsHigh") -> None:
        now = time.time()
        labels = (("alertname", name), ("severity", "high"), ("target", "main"))
        alert = Alert(labels, {}, AlertState.INACTIVE, now - 60, 0.1, fired_at=now - 30,
                      resolved_at=now)
        self.dispatcher.handle(AlertEvent(EventKind.RESOLVED, "postgres", name, alert, now))
        self.dispatcher.run_pass(now)
        self.dispatcher.run_pass(now + 61)  # the group's next flush (group_interval)

    def acks_sent(self, incident: str) -> list[str]:
        """Receivers given an acknowledge notification for ``incident``."""
        return sorted(n.receiver for n in self.outbox.pending()
                      if n.incident == incident and n.action is Action.ACKNOWLEDGE)

    def slack_post(self, incident: str) -> dict[str, Any]:
        """The Slack message the incident's first notification posts (with its buttons)."""
        [first] = [n for n in self.outbox.pending() if n.incident == incident
                   and n.receiver == "oncall-slack" and n.action is Action.TRIGGER][:1]
        return slack_message(first, interactive=True)

    def close(self) -> None:
        self.http.stop()
        self.service.stop()
        self.dispatcher.close()
        self.outbox.close()


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


@pytest.fixture
def pd_api() -> Iterator[PagerDutyRestServer]:
    with PagerDutyRestServer(API_KEY) as server:
        yield server


@pytest.fixture
def hooks(tmp_path: Path, slack: SlackServer, pd_api: PagerDutyRestServer) -> Iterator[Hooks]:
    h = Hooks(tmp_path, slack, pd_api.url)
    yield h
    h.close()


# --- PagerDuty webhooks ------------------------------------------------------------------

def test_signed_v3_deliveries_acknowledge_once_duplicated_and_reordered(hooks: Hooks) -> None:
    incident = hooks.fire()
    # PagerDuty rotates its secret: the header carries a signature per secret, ours is one.
    sender = PagerDutyWebhookSender(hooks.url + "/hooks/pagerduty",
                                    ["rotated-in-secret-not-known-here", NEW_SECRET])
    t0 = time.time()
    acked = sender.body(incident_delivery("incident.acknowledged", incident, occurred_at=t0))
    first = sender.send(acked)
    assert first.status_code == 200 and first.json()["status"] == "applied", first.text
    # Redelivered byte for byte (PagerDuty retries): nothing more happens.
    again = sender.send(acked)
    assert again.json()["status"] == "duplicate"
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and (ack.source, ack.by, ack.by_id) == (
        "pagerduty", "Jane Oncall", "PLH1HKV")
    # Slack and the mail thread hear it; PagerDuty itself is not sent an acknowledge back.
    assert hooks.acks_sent(incident) == ["oncall-email", "oncall-slack"]
    esc = hooks.dispatcher.incidents.incident(incident)
    assert esc is not None and esc.acked and esc.next_at is None
    # Out of order: resolved (t0+20) arrives before unacknowledged (t0+10), signed with the
    # older of our two configured secrets.
    old = PagerDutyWebhookSender(sender.url, [OLD_SECRET])
    resolved = old.send(incident_delivery("incident.resolved", incident, occurred_at=t0 + 20))
    assert resolved.json()["status"] == "applied"
    late = old.send(incident_delivery("incident.unacknowledged", incident, occurred_at=t0 + 10))
    assert late.json()["status"] == "stale"
    esc = hooks.dispatcher.incidents.incident(incident)
    assert esc is not None and esc.acked, "the late unacknowledge must not resume the climb"
    # The resolution is said in Slack: an acknowledge notification carrying the note.
    notes = [n.ack_note for n in hooks.outbox.pending() if n.receiver == "oncall-slack"
             and n.action is Action.ACKNOWLEDGE]
    assert any(note.startswith("resolved in PagerDuty by Jane Oncall") for note in notes)
    [logged] = hooks.dispatcher.incidents.ack_log(incident)
    assert logged["source"] == "pagerduty" and logged["seconds_to_ack"] >= 0


def test_pagerduty_unacknowledged_resumes_the_climb(hooks: Hooks) -> None:
    incident = hooks.fire()
    sender = PagerDutyWebhookSender(hooks.url + "/hooks/pagerduty", [NEW_SECRET])
    t0 = time.time()
    sender.send(incident_delivery("incident.acknowledged", incident, occurred_at=t0))
    answer = sender.send(incident_delivery("incident.unacknowledged", incident,
                                           occurred_at=t0 + 5))
    assert answer.json()["status"] == "applied"
    esc = hooks.dispatcher.incidents.incident(incident)
    assert esc is not None and not esc.acked and esc.next_at is not None
    assert hooks.dispatcher.incidents.ack_of(incident) is None
    # Other event types are answered 2xx and ignored.
    other = sender.send(incident_delivery("incident.reassigned", incident, occurred_at=t0 + 6))
    assert other.status_code == 200 and other.json()["status"] == "ignored"


def test_unsigned_forged_and_oversized_deliveries_are_refused_and_counted(
        hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    incident = hooks.fire()
    sender = PagerDutyWebhookSender(hooks.url + "/hooks/pagerduty", [NEW_SECRET])
    delivery = incident_delivery("incident.acknowledged", incident, occurred_at=time.time(),
                                 agent="Mallory Forger")
    with caplog.at_level(logging.WARNING):
        unsigned = sender.send(delivery, header="")
        forged = sender.send(delivery, secrets=["a-secret-we-never-configured"])
        tampered = sender.body(delivery).replace(b"Mallory", b"Mallorz")
        # The original's valid signature on an altered body.
        altered = sender.send(tampered, header=signature(sender.body(delivery), [NEW_SECRET]))
        huge = httpx.post(sender.url, content=b"{" + b" " * (300 * 1024) + b"}",
                          headers={"X-PagerDuty-Signature": "v1=00"}, timeout=10)
    assert [unsigned.status_code, forged.status_code, altered.status_code,
            huge.status_code] == [401, 401, 401, 413]
    assert hooks.dispatcher.incidents.ack_of(incident) is None
    counts = {(s.labels, s.value) for s in hooks.service.samples(time.time())}
    assert ((("hook", "pagerduty"), ("outcome", "unsigned")), 1) in counts
    assert ((("hook", "pagerduty"), ("outcome", "bad_signature")), 2) in counts
    assert ((("hook", "pagerduty"), ("outcome", "too_large")), 1) in counts
    assert "Mallory" not in caplog.text, "a refused body is never logged"


# --- Slack buttons -----------------------------------------------------------------------

def test_a_slack_block_actions_payload_acknowledges(hooks: Hooks, slack: SlackServer) -> None:
    incident = hooks.fire()
    message = hooks.slack_post(incident)
    payload = block_actions(message, ACK_ACTION, response_url=slack.response_url)
    sender = SlackInteractionSender(hooks.url + "/hooks/slack/interactions", SIGNING_SECRET)
    answer = sender.press(payload)
    assert answer.status_code == 200 and answer.content == b""
    assert hooks.wait_presses(1) == ["applied"]
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and (ack.source, ack.by, ack.by_id) == ("slack", "@jane",
                                                                     "U0ONCALL1")
    # PagerDuty is told (acknowledge on the same dedup_key), the message is updated.
    assert hooks.acks_sent(incident) == ["oncall-email", "oncall-pagerduty", "oncall-slack"]
    acks = [n for n in hooks.outbox.pending() if n.action is Action.ACKNOWLEDGE]
    assert {n.incident for n in acks} == {incident}
    update = slack_message(next(n for n in acks if n.receiver == "oncall-slack"),
                           interactive=True)
    fields = str(update["attachments"][0]["blocks"])
    assert "Acknowledged by @jane in Slack at" in fields
    assert ACK_ACTION not in fields and SILENCE_HOUR_ACTION in fields
    # Pressed again (a double tap): nothing more is sent.
    sender.press(block_actions(message, ACK_ACTION, response_url=slack.response_url))
    assert hooks.wait_presses(2)[1] == "already"
    assert len([n for n in hooks.outbox.pending() if n.action is Action.ACKNOWLEDGE]) == 3


def test_forged_unsigned_and_replayed_slack_requests_are_refused(
        hooks: Hooks, slack: SlackServer) -> None:
    incident = hooks.fire()
    payload = block_actions(hooks.slack_post(incident), ACK_ACTION,
                            response_url=slack.response_url)
    sender = SlackInteractionSender(hooks.url + "/hooks/slack/interactions", SIGNING_SECRET)
    forged = sender.press(payload, secret="not-the-app-signing-secret")
    unsigned = sender.press(payload, sign=False)
    replayed = sender.press(payload, timestamp=time.time() - 6 * 60)
    assert [forged.status_code, unsigned.status_code, replayed.status_code] == [401, 401, 401]
    # Presses are handled in order: once a genuine one is, any refused one queued before it
    # would have been too.
    assert sender.press(payload).status_code == 200
    hooks.wait_presses(1)
    assert len(hooks.pressed) == 1
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and ack.source == "slack"


def test_only_allowed_users_may_press_others_get_an_ephemeral_refusal(
        hooks: Hooks, slack: SlackServer) -> None:
    incident = hooks.fire()
    slack.user_groups["S0LEADS01"] = ["U0LEAD001"]
    message = hooks.slack_post(incident)
    sender = SlackInteractionSender(hooks.url + "/hooks/slack/interactions", SIGNING_SECRET)
    sender.press(block_actions(message, ACK_ACTION, user_id="U0INTERN1", username="intern",
                               response_url=slack.response_url))
    assert hooks.wait_presses(1) == ["refused"]
    [refusal] = slack.responses
    assert refusal["response_type"] == "ephemeral" and "not among" in refusal["text"]
    assert hooks.dispatcher.incidents.ack_of(incident) is None
    # A member of an allowed user group silences for an hour.
    sender.press(block_actions(message, SILENCE_HOUR_ACTION, user_id="U0LEAD001",
                               username="lead", response_url=slack.response_url))
    assert hooks.wait_presses(2)[1] == "applied"
    [silence] = hooks.dispatcher.incidents.silences.active(time.time())
    assert set(silence.matchers) == {'alertname="PostgresConnectionsHigh"', 'target="main"'}
    assert silence.created_by == "@lead" and 3500 < silence.ends_at - time.time() <= 3600


def test_a_press_for_an_ended_incident_only_says_so(hooks: Hooks, slack: SlackServer) -> None:
    incident = hooks.fire()
    message = hooks.slack_post(incident)
    hooks.resolve()
    assert hooks.dispatcher.incidents.incident(incident) is None
    sender = SlackInteractionSender(hooks.url + "/hooks/slack/interactions", SIGNING_SECRET)
    sender.press(block_actions(message, ACK_ACTION, response_url=slack.response_url))
    assert hooks.wait_presses(1) == ["ended"]
    [update] = slack.responses
    blocks = update["attachments"][0]["blocks"]
    assert update["replace_original"] is True
    assert all(b["type"] != "actions" for b in blocks)
    assert "already ended" in str(blocks[-1])
    assert hooks.dispatcher.incidents.ack_log(incident) == []


# --- Socket Mode and polling -------------------------------------------------------------

def test_socket_mode_envelopes_are_acknowledged_and_acted_on(
        hooks: Hooks, slack: SlackServer) -> None:
    incident = hooks.fire()
    with SocketModeServer() as socket_server:
        slack.socket_url = socket_server.url
        settings = hooks.settings.receivers[1].slack
        assert settings is not None
        client = SlackSocketMode("oncall-slack", settings, hooks.service)
        client.start()
        try:
            assert socket_server.connected.wait(10), "the client never connected"
            payload = block_actions(hooks.slack_post(incident), ACK_ACTION, username="sam",
                                    user_id="U0ONCALL1", response_url=slack.response_url)
            envelope = socket_server.send_interactive(payload)
            assert hooks.wait_presses(1) == ["applied"]
            deadline = time.monotonic() + 5
            while envelope not in socket_server.acks and time.monotonic() < deadline:
                time.sleep(0.05)
            assert socket_server.acks == [envelope]
        finally:
            client.stop()
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and (ack.source, ack.by) == ("slack", "@sam")
    opened = [r for r in slack.requests if r.path == "/api/apps.connections.open"]
    assert opened and opened[0].header("authorization") == f"Bearer {slack.app_token}"


def test_polling_applies_acknowledged_and_withdraws_on_triggered(
        hooks: Hooks, pd_api: PagerDutyRestServer) -> None:
    incident = hooks.fire()
    settings = hooks.settings.receivers[0].pagerduty
    assert settings is not None
    poller = PagerDutyPoller("oncall-pagerduty", settings, hooks.service,
                             hooks.dispatcher.incidents)
    assert poller.poll_once() == 0, "unknown to PagerDuty yet: nothing to apply"
    t0 = time.time()
    pd_api.set_status(incident, "acknowledged", at=t0, by="Priya Pager")
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0, "the same state polled again changes nothing"
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and (ack.source, ack.by) == ("pagerduty", "Priya Pager")
    pd_api.set_status(incident, "triggered", at=t0 + 30)  # PagerDuty's ack timed out
    assert poller.poll_once() == 1
    assert hooks.dispatcher.incidents.ack_of(incident) is None
    assert pd_api.requests[-1].query["incident_key"] == [incident]


# --- mail links --------------------------------------------------------------------------

def test_a_mail_link_get_shows_a_page_and_only_post_acknowledges(hooks: Hooks) -> None:
    incident = hooks.fire()
    url = hooks.links.url(incident, "ack", "oncall-email", "oncall@example.com")
    local = hooks.url + url.removeprefix("http://piggywatch.test")
    token = local.rsplit("/", 1)[1]
    page = httpx.get(local, timeout=10)
    assert page.status_code == 200 and "<form method=\"post\">" in page.text
    assert "oncall@example.com" in page.text and "PostgresConnectionsHigh" in page.text
    assert hooks.dispatcher.incidents.ack_of(incident) is None, "a GET never acknowledges"
    # A form posted from elsewhere does not carry the token: refused.
    csrf = httpx.post(local, data={"token": "guess"}, timeout=10)
    assert csrf.status_code == 400 and hooks.dispatcher.incidents.ack_of(incident) is None
    done = httpx.post(local, data={"token": token}, timeout=10)
    assert done.status_code == 200 and "Acknowledged by oncall@example.com" in done.text
    ack = hooks.dispatcher.incidents.ack_of(incident)
    assert ack is not None and (ack.source, ack.by) == ("email", "oncall@example.com")
    again = httpx.post(local, data={"token": token}, timeout=10)
    assert "used already" in again.text
    bad = httpx.get(local[:-3] + "xyz", timeout=10)
    assert bad.status_code == 400 and "not valid" in bad.text
