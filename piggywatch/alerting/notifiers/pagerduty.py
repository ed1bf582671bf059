"""PagerDuty through the Events API v2 (trigger, acknowledge, resolve on one dedup_key)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.channels.pagerduty import PagerDutyReceiver
from piggywatch.alerting.model import Action, Delivery, Notification
from piggywatch.alerting.notifiers._common import (
    DASHBOARD_KEYS,
    RUNBOOK_KEYS,
    THRESHOLD_KEYS,
    first_start,
    is_http_url,
    iso8601,
    ordered_alerts,
    pick,
    post_json,
    primary_alert,
    truncate,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["PAGERDUTY_SEVERITY", "PagerDutyNotifier"]

# The ops handbook's mapping (DESIGN.md, "Severities and escalation").
PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}

SUMMARY_LIMIT = 1024
# PagerDuty refuses events over 512 KB; custom_details is the only part that can grow.
EVENT_LIMIT = 512 * 1024
_LISTED_ALERTS = 50


class PagerDutyNotifier:
    """Sends one Events API v2 event per notification. The incident key is the dedup_key,
    so the trigger, every re-trigger, the acknowledge and the resolve of an incident land
    on one PagerDuty alert; resending an event after a crash is harmless."""

    def __init__(self, settings: PagerDutyReceiver, *, external_url: str = "",
                 client: httpx.Client | None = None) -> None:
        self._settings = settings
        self._external_url = external_url
        self._client = client

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """POST the event; 202 is accepted, 429/5xx/network errors are retried."""
        key = self._settings.routing_key.get_secret_value()
        delivery, _ = post_json(self._settings.url, self.event(notification),
                                timeout=self._settings.timeout, channel="PagerDuty",
                                secrets=(key,), client=self._client)
        # The dedup_key is ours (the incident), so nothing needs keeping for later events.
        return delivery

    def event(self, notification: Notification) -> dict[str, Any]:
        """The Events API v2 body for ``notification``."""
        event: dict[str, Any] = {
            "routing_key": self._settings.routing_key.get_secret_value(),
            "event_action": notification.action.value,
            "dedup_key": notification.incident,
        }
        if notification.action is not Action.TRIGGER:
            # PagerDuty reads only these three fields on acknowledge and resolve.
            return event
        alert = primary_alert(notification)
        labels: Mapping[str, str] = alert.labels if alert else notification.group_labels
        payload: dict[str, Any] = {
            "summary": self._summary(notification),
            "source": self._settings.source,
            "severity": PAGERDUTY_SEVERITY[notification.severity],
            "timestamp": iso8601(first_start(notification)),
        }
        target = labels.get("target") or notification.group_labels.get("target", "")
        if target:
            payload["component"] = target
        if alert and alert.name:
            payload["group"] = alert.name
        payload["class"] = notification.severity
        payload["custom_details"] = self._custom_details(notification)
        event["payload"] = payload
        links = self._links(notification)
        if links:
            event["links"] = links
        event["client"] = self._settings.client
        client_url = notification.external_url or self._external_url
        if client_url:
            event["client_url"] = client_url
        if len(json.dumps(event).encode()) > EVENT_LIMIT:
            payload["custom_details"] = {
                "firing": len(notification.firing),
                "level": notification.level,
                "note": "details left out: the event was over PagerDuty's 512 KB limit",
            }
        return event

    def _summary(self, notification: Notification) -> str:
        alert = primary_alert(notification)
        summary = alert.annotations.get("summary", "") if alert else ""
        text = f"{notification.title}: {summary}" if summary else notification.title
        return truncate(text, SUMMARY_LIMIT)

    def _custom_details(self, notification: Notification) -> dict[str, Any]:
        alert = primary_alert(notification)
        details: dict[str, Any] = {"firing": len(notification.firing)}
        if alert and alert.value:
            details["value"] = alert.value
        threshold = pick(notification, THRESHOLD_KEYS)
        if threshold:
            details["threshold"] = threshold
        if alert:
            details["labels"] = dict(sorted(alert.labels.items()))
            details["annotations"] = dict(sorted(alert.annotations.items()))
        details["level"] = notification.level
        if notification.acked_by:
            details["acked_by"] = notification.acked_by
        alerts = ordered_alerts(notification)
        if len(alerts) > 1:
            listed = [_one_line(a.status.value, a.labels, a.value) for a in alerts]
            if len(listed) > _LISTED_ALERTS:
                rest = len(listed) - _LISTED_ALERTS
                listed = [*listed[:_LISTED_ALERTS], f"... and {rest} more"]
            details["alerts"] = listed
        return details

    def _links(self, notification: Notification) -> list[dict[str, str]]:
        candidates = [
            (pick(notification, RUNBOOK_KEYS), "Runbook"),
            (pick(notification, DASHBOARD_KEYS), "Dashboard"),
            (notification.external_url or self._external_url, "PiggyWatch"),
        ]
        links: list[dict[str, str]] = []
        for href, text in candidates:
            if is_http_url(href) and all(link["href"] != href for link in links):
                links.append({"href": href, "text": text})
        return links


def _one_line(status: str, labels: Mapping[str, str], value: str) -> str:
    name = labels.get("alertname", "alert")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "alertname")
    text = f"{status}: {name}{{{rest}}}"
    return f"{text} = {value}" if value else text
