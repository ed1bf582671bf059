"""Alertmanager's webhook JSON (version 4), POSTed to any URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.channels.webhook import WebhookReceiver
from piggywatch.alerting.model import AlertInfo, Delivery, Notification
from piggywatch.alerting.notifiers._common import common_items, iso8601, ordered_alerts, post_json

if TYPE_CHECKING:
    import httpx

__all__ = ["GO_ZERO_TIME", "WebhookNotifier", "webhook_alert"]

# What Alertmanager writes as endsAt for an alert with no end yet; receivers written for
# Alertmanager parse it.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


class WebhookNotifier:
    """POSTs Alertmanager's webhook payload, so receivers written for Alertmanager work
    unchanged. Every action is sent (an acknowledge looks like a repeat to such a
    receiver); the extra ``piggywatch`` object says which action it was, for receivers
    that care. The URL is treated as a secret: it often embeds a token."""

    def __init__(self, settings: WebhookReceiver, *, external_url: str = "",
                 client: httpx.Client | None = None) -> None:
        self._settings = settings
        self._external_url = external_url
        self._client = client

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """POST the payload: 2xx accepted; 429, 5xx and network errors retried."""
        url = self._settings.url.get_secret_value()
        delivery, _ = post_json(url, self.payload(notification), timeout=self._settings.timeout,
                                channel="webhook", secrets=(url,), client=self._client)
        return delivery

    def payload(self, notification: Notification) -> dict[str, Any]:
        """The webhook body for ``notification``."""
        alerts = ordered_alerts(notification)
        limit = self._settings.max_alerts
        sent = alerts[:limit] if limit else alerts
        extension: dict[str, Any] = {
            "action": notification.action.value,
            "incident": notification.incident,
            "level": notification.level,
        }
        if notification.acked_by:
            extension["ackedBy"] = notification.acked_by
        if notification.acked_at is not None:
            extension["ackedAt"] = iso8601(notification.acked_at)
        return {
            "version": "4",
            "groupKey": notification.incident,
            "truncatedAlerts": len(alerts) - len(sent),
            "status": "firing" if notification.firing else "resolved",
            "receiver": notification.receiver,
            "groupLabels": dict(sorted(notification.group_labels.items())),
            "commonLabels": common_items([a.labels for a in alerts]),
            "commonAnnotations": common_items([a.annotations for a in alerts]),
            "externalURL": notification.external_url or self._external_url,
            "alerts": [webhook_alert(a) for a in sent],
            "piggywatch": extension,
        }


def webhook_alert(alert: AlertInfo) -> dict[str, Any]:
    """One alert as Alertmanager's webhook writes it."""
    return {
        "status": alert.status.value,
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "startsAt": iso8601(alert.starts_at),
        "endsAt": iso8601(alert.ends_at) if alert.ends_at is not None else GO_ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }
