"""PagerDutyNotifier against a local Events API v2 server that checks the schema strictly."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from piggywatch.alerting.channels.pagerduty import PagerDutyReceiver
from piggywatch.alerting.model import Action, Outcome
from piggywatch.alerting.notifiers.pagerduty import PagerDutyNotifier
from tests.notification_samples import EXTERNAL_URL, RUNBOOK, alert, notification, resolved
from tests.support.ports import free_port
from tests.support.servers import PagerDutyServer, Reply

ROUTING_KEY = "R0UT1NGK3Y0000000000000000000001"


@pytest.fixture
def pd() -> Iterator[PagerDutyServer]:
    with PagerDutyServer(routing_key=ROUTING_KEY) as server:
        yield server


def notifier(url: str, *, key: str = ROUTING_KEY, timeout: float = 5.0) -> PagerDutyNotifier:
    settings = PagerDutyReceiver(routing_key=key, url=url, timeout=timeout)  # type: ignore[arg-type]
    return PagerDutyNotifier(settings)


def test_trigger_sends_the_exact_event(pd: PagerDutyServer) -> None:
    n = notification()

    delivery = notifier(pd.url).send(n, {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert delivery.receipt == {}
    assert pd.events == [{
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": n.incident,
        "payload": {
            "summary": "PostgresConnectionsHigh (target=main): "
                       "main: 85% of usable connections in use",
            "source": "piggywatch",
            "severity": "error",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "component": "main",
            "group": "PostgresConnectionsHigh",
            "class": "high",
            "custom_details": {
                "firing": 1,
                "value": "0.85",
                "labels": {"alertname": "PostgresConnectionsHigh", "severity": "high",
                           "target": "main"},
                "annotations": {
                    "description": "Client connections are above 80% of max_connections.",
                    "runbook": RUNBOOK,
                    "summary": "main: 85% of usable connections in use",
                },
                "level": 1,
            },
        },
        "links": [{"href": RUNBOOK, "text": "Runbook"},
                  {"href": EXTERNAL_URL, "text": "PiggyWatch"}],
        "client": "PiggyWatch",
        "client_url": EXTERNAL_URL,
    }]


def test_acknowledge_and_resolve_reach_the_same_alert(pd: PagerDutyServer) -> None:
    firing = alert()
    pager = notifier(pd.url)
    trigger = notification(firing)
    ack = notification(firing, action=Action.ACKNOWLEDGE, acked_by="alice",
                       acked_at=trigger.created_at + 60, id="n-2")
    resolve = notification(resolved(firing), action=Action.RESOLVE, id="n-3")

    assert pager.send(trigger, {}).outcome is Outcome.ACCEPTED
    assert pd.alert_status(trigger.incident) == "triggered"
    assert pager.send(ack, {}).outcome is Outcome.ACCEPTED
    assert pd.alert_status(trigger.incident) == "acknowledged"
    assert pager.send(resolve, {}).outcome is Outcome.ACCEPTED
    assert pd.alert_status(trigger.incident) == "resolved"

    assert pd.events[1:] == [
        {"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": ack.incident},
        {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": ack.incident},
    ]


@pytest.mark.parametrize(("severity", "expected"), [
    ("critical", "critical"), ("high", "error"), ("medium", "warning"), ("low", "info")])
def test_severities_map_to_pagerduty_severities(pd: PagerDutyServer, severity: str,
                                                 expected: str) -> None:
    notifier(pd.url).send(notification(alert(severity=severity)), {})

    payload = pd.events[0]["payload"]
    assert (payload["severity"], payload["class"]) == (expected, severity)


def test_escalation_carries_level_acker_threshold_and_every_alert(pd: PagerDutyServer) -> None:
    older = alert(target="main", value="0.91", starts_at=1_767_225_000.0,
                  threshold="0.8", fingerprint="a")
    newer = alert(target="main", value="0.86", starts_at=1_767_225_300.0,
                  instance="replica", fingerprint="b")
    n = notification(older, newer, level=2, acked_by="bob",
                     group_labels={"alertname": "PostgresConnectionsHigh"})

    notifier(pd.url).send(n, {})

    event = pd.events[0]
    assert event["payload"]["timestamp"] == "2025-12-31T23:50:00.000Z"
    assert "component" in event["payload"]  # from the oldest alert's target label
    details = event["payload"]["custom_details"]
    assert details["firing"] == 2
    assert details["value"] == "0.91"
    assert details["threshold"] == "0.8"
    assert details["level"] == 2
    assert details["acked_by"] == "bob"
    assert details["alerts"] == [
        'firing: PostgresConnectionsHigh{severity="high", target="main", threshold="0.8"} = 0.91',
        'firing: PostgresConnectionsHigh{instance="replica", severity="high", target="main"}'
        " = 0.86",
    ]


def test_summary_is_cut_to_1024_characters(pd: PagerDutyServer) -> None:
    long = alert(annotations={"summary": "x" * 5000})

    delivery = notifier(pd.url).send(notification(long), {})

    assert delivery.outcome is Outcome.ACCEPTED
    summary = pd.events[0]["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.endswith("x…")


def test_an_event_over_512_kb_drops_its_details_and_is_accepted(pd: PagerDutyServer) -> None:
    n = notification(alert(annotations={"summary": "s", "description": "y" * 600_000}))

    delivery = notifier(pd.url).send(n, {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert pd.events[0]["payload"]["custom_details"] == {
        "firing": 1, "level": 1,
        "note": "details left out: the event was over PagerDuty's 512 KB limit"}


def test_links_are_only_http_urls(pd: PagerDutyServer) -> None:
    sneaky = alert(annotations={"summary": "s", "runbook": "javascript:alert(1)",
                                "dashboard_url": "https://grafana.example.com/d/pg"})

    notifier(pd.url).send(notification(sneaky, external_url=""), {})

    assert pd.events[0]["links"] == [{"href": "https://grafana.example.com/d/pg",
                                      "text": "Dashboard"}]
    assert "client_url" not in pd.events[0]


def test_500_three_times_is_retried_then_accepted(pd: PagerDutyServer) -> None:
    pd.fail(500, times=3)
    pager = notifier(pd.url)
    n = notification()

    outcomes = [pager.send(n, {}).outcome for _ in range(4)]

    assert outcomes == [Outcome.RETRY] * 3 + [Outcome.ACCEPTED]
    assert len(pd.requests) == 4
    assert len(pd.events) == 1


def test_429_is_retried_after_the_servers_retry_after(pd: PagerDutyServer) -> None:
    pd.fail(429, retry_after="7")

    delivery = notifier(pd.url).send(notification(), {})

    assert (delivery.outcome, delivery.retry_after) == (Outcome.RETRY, 7.0)


def test_429_without_retry_after_waits_30_seconds(pd: PagerDutyServer) -> None:
    pd.fail(429)

    delivery = notifier(pd.url).send(notification(), {})

    assert (delivery.outcome, delivery.retry_after) == (Outcome.RETRY, 30.0)


def test_400_is_permanent_and_says_why_without_the_routing_key(pd: PagerDutyServer) -> None:
    wrong_key = "W" * 32

    delivery = notifier(pd.url, key=wrong_key).send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "400" in delivery.detail and "Invalid routing key" in delivery.detail
    assert wrong_key not in delivery.detail


def test_an_invalid_event_is_refused_by_the_strict_server(pd: PagerDutyServer) -> None:
    # The server is strict enough to catch a broken payload: a 31-character key.
    delivery = notifier(pd.url, key="k" * 31).send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "32 character" in delivery.detail


def test_a_timeout_is_retried(pd: PagerDutyServer) -> None:
    pd.script(Reply(202, {"status": "success"}, delay=1.0))

    delivery = notifier(pd.url, timeout=0.2).send(notification(), {})

    assert delivery.outcome is Outcome.RETRY
    assert "timed out" in delivery.detail


def test_a_refused_connection_is_retried() -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/enqueue"

    delivery = notifier(url).send(notification(), {})

    assert delivery.outcome is Outcome.RETRY
    assert ROUTING_KEY not in delivery.detail


def test_the_routing_key_never_appears_in_details(pd: PagerDutyServer) -> None:
    # A server that echoes the request back must not leak the key through the detail.
    pd.script(Reply(400, json.dumps({"errors": [f"bad key {ROUTING_KEY}"]})))

    delivery = notifier(pd.url).send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert ROUTING_KEY not in delivery.detail
    assert "***" in delivery.detail
