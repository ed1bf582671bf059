"""WebhookNotifier (Alertmanager's webhook JSON) and AlertmanagerNotifier (/api/v2/alerts)
against local receivers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from piggywatch.alerting.channels import build_notifier
from piggywatch.alerting.channels.alertmanager import AlertmanagerReceiver
from piggywatch.alerting.channels.webhook import WebhookReceiver
from piggywatch.alerting.model import Action, Outcome
from piggywatch.alerting.notifiers.alertmanager import AlertmanagerNotifier
from piggywatch.alerting.notifiers.webhook import WebhookNotifier
from piggywatch.alerting.settings import Receiver
from tests.notification_samples import EXTERNAL_URL, RUNBOOK, T0, alert, notification, resolved
from tests.support.ports import free_port
from tests.support.servers import AlertmanagerServer, Reply, WebhookServer

LABELS = {"alertname": "PostgresConnectionsHigh", "severity": "high", "target": "main"}
ANNOTATIONS = {"description": "Client connections are above 80% of max_connections.",
               "runbook": RUNBOOK, "summary": "main: 85% of usable connections in use"}
GENERATOR = f"{EXTERNAL_URL}/api/v1/alerts?alertname=PostgresConnectionsHigh"


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def am() -> Iterator[AlertmanagerServer]:
    with AlertmanagerServer() as server:
        yield server


def webhook(url: str, **extra: Any) -> WebhookNotifier:
    return WebhookNotifier(WebhookReceiver.model_validate({"url": url, **extra}))


def alertmanager(url: str) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(AlertmanagerReceiver(url=url))


def test_webhook_posts_alertmanagers_payload(hook: WebhookServer) -> None:
    n = notification()

    delivery = webhook(hook.url).send(n, {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert hook.posts == [{
        "version": "4",
        "groupKey": n.incident,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "oncall",
        "groupLabels": {"alertname": "PostgresConnectionsHigh", "target": "main"},
        "commonLabels": LABELS,
        "commonAnnotations": ANNOTATIONS,
        "externalURL": EXTERNAL_URL,
        "alerts": [{
            "status": "firing",
            "labels": LABELS,
            "annotations": ANNOTATIONS,
            "startsAt": "2026-01-01T00:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": GENERATOR,
            "fingerprint": "fp-PostgresConnectionsHigh-main",
        }],
        "piggywatch": {"action": "trigger", "incident": n.incident, "level": 1},
    }]
    assert hook.requests[0].header("content-type") == "application/json"


def test_webhook_acknowledge_and_resolve(hook: WebhookServer) -> None:
    firing = alert()
    sender = webhook(hook.url)

    sender.send(notification(firing, action=Action.ACKNOWLEDGE, acked_by="alice",
                             acked_at=T0 + 600), {})
    sender.send(notification(resolved(firing), action=Action.RESOLVE, id="n-2"), {})

    ack, done = hook.posts
    assert ack["status"] == "firing"
    assert ack["piggywatch"] == {"action": "acknowledge", "incident": ack["groupKey"],
                                 "level": 1, "ackedBy": "alice",
                                 "ackedAt": "2026-01-01T00:10:00.000Z"}
    assert done["status"] == "resolved"
    assert done["alerts"][0]["status"] == "resolved"
    assert done["alerts"][0]["endsAt"] == "2026-01-01T00:15:00.000Z"


def test_webhook_max_alerts_truncates_and_counts(hook: WebhookServer) -> None:
    alerts = [alert(target=f"db{i}", fingerprint=f"f{i}", starts_at=T0 + i) for i in range(3)]
    n = notification(*alerts, group_labels={"alertname": "PostgresConnectionsHigh"})

    webhook(hook.url, max_alerts=2).send(n, {})

    [body] = hook.posts
    assert body["truncatedAlerts"] == 1
    assert [a["labels"]["target"] for a in body["alerts"]] == ["db0", "db1"]
    assert body["commonLabels"] == {"alertname": "PostgresConnectionsHigh", "severity": "high"}


@pytest.mark.parametrize(("reply", "outcome", "retry_after"), [
    (Reply(204), Outcome.ACCEPTED, None),
    (Reply(429, "slow down", {"Retry-After": "12"}), Outcome.RETRY, 12.0),
    (Reply(429, "slow down"), Outcome.RETRY, 30.0),
    (Reply(503, "maintenance"), Outcome.RETRY, None),
    (Reply(400, "bad payload"), Outcome.PERMANENT, None),
    (Reply(404, "no such hook"), Outcome.PERMANENT, None),
])
def test_webhook_answers_decide_the_outcome(hook: WebhookServer, reply: Reply,
                                            outcome: Outcome, retry_after: float | None
                                            ) -> None:
    hook.script(reply)

    delivery = webhook(hook.url).send(notification(), {})

    assert (delivery.outcome, delivery.retry_after) == (outcome, retry_after)
    assert "s3cr3t-token" not in delivery.detail


def test_webhook_timeout_and_refused_connection_are_retried(hook: WebhookServer) -> None:
    hook.script(Reply(200, delay=1.0))

    slow = webhook(hook.url, timeout=0.2).send(notification(), {})
    gone = webhook(f"http://127.0.0.1:{free_port()}/hooks/s3cr3t-token").send(notification(), {})

    assert (slow.outcome, gone.outcome) == (Outcome.RETRY, Outcome.RETRY)
    assert "s3cr3t-token" not in slow.detail + gone.detail


def test_webhook_url_with_an_unusable_scheme_is_permanent() -> None:
    delivery = webhook("ftp://example.com/s3cr3t-token").send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "s3cr3t-token" not in delivery.detail


def test_alertmanager_receives_postable_alerts(am: AlertmanagerServer) -> None:
    delivery = alertmanager(am.url).send(notification(), {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert am.requests[0].path == "/api/v2/alerts"
    assert am.batches == [[{"labels": LABELS, "annotations": ANNOTATIONS,
                            "startsAt": "2026-01-01T00:00:00.000Z",
                            "generatorURL": GENERATOR}]]


def test_alertmanager_resolve_sets_ends_at(am: AlertmanagerServer) -> None:
    firing = alert()
    forward = alertmanager(am.url + "/")

    forward.send(notification(firing), {})
    forward.send(notification(resolved(firing), action=Action.RESOLVE, id="n-2"), {})

    [latest] = am.alerts()
    assert latest["endsAt"] == "2026-01-01T00:15:00.000Z"
    assert am.active() == []


def test_alertmanager_drops_empty_labels_and_refusals_are_permanent(
        am: AlertmanagerServer) -> None:
    forward = alertmanager(am.url)

    accepted = forward.send(notification(alert(instance="")), {})
    refused = forward.send(notification(alert(extra_labels={"bad-name": "x"})), {})

    assert accepted.outcome is Outcome.ACCEPTED
    assert "instance" not in am.batches[0][0]["labels"]
    assert refused.outcome is Outcome.PERMANENT
    assert "invalid label name" in refused.detail


def test_alertmanager_outage_is_retried(am: AlertmanagerServer) -> None:
    am.script(Reply(503, "unavailable"))

    assert alertmanager(am.url).send(notification(), {}).outcome is Outcome.RETRY


def test_build_notifier_for_webhook_and_alertmanager(hook: WebhookServer,
                                                     am: AlertmanagerServer) -> None:
    to_hook = build_notifier(Receiver.model_validate({"name": "hook",
                                                      "webhook": {"url": hook.url}}),
                             external_url="https://pw.example.com")
    to_am = build_notifier(Receiver.model_validate({"name": "am",
                                                    "alertmanager": {"url": am.url}}))

    assert isinstance(to_hook, WebhookNotifier) and isinstance(to_am, AlertmanagerNotifier)
    to_hook.send(notification(external_url=""), {})
    assert hook.posts[0]["externalURL"] == "https://pw.example.com"
    assert to_am.send(notification(), {}).outcome is Outcome.ACCEPTED


def test_a_lone_surrogate_in_a_label_goes_out_as_its_json_escape(hook: WebhookServer) -> None:
    # Half an emoji (a JavaScript string cut at a UTF-16 boundary, or a YAML "\ud83d"
    # escape): it has no UTF-8 encoding, but JSON can carry it as an escape.
    half = alert(extra_labels={"function": "send-push-\ud83d"})

    delivery = webhook(hook.url).send(notification(half), {})

    assert delivery.outcome is Outcome.ACCEPTED
    [request] = hook.requests
    assert b'"function":"send-push-\\ud83d"' in request.body
    assert request.header("content-type") == "application/json"
    assert hook.posts[0]["alerts"][0]["labels"]["function"] == "send-push-\ud83d"
