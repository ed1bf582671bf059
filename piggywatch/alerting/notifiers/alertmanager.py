"""Forwarding to an existing Alertmanager through its API (POST /api/v2/alerts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.channels.alertmanager import AlertmanagerReceiver
from piggywatch.alerting.model import AlertInfo, AlertStatus, Delivery, Notification
from piggywatch.alerting.notifiers._common import iso8601, ordered_alerts, post_json

if TYPE_CHECKING:
    import httpx

__all__ = ["AlertmanagerNotifier", "postable_alert"]


class AlertmanagerNotifier:
    """Posts the incident's alerts as Alertmanager's postable alerts; Alertmanager then
    groups, silences and routes them itself. Every action posts the alerts' current
    state: an acknowledge re-posts the firing alerts, which only refreshes them there.

    A firing alert is posted without endsAt, so Alertmanager resolves it by itself after
    its ``resolve_timeout`` unless it is posted again before then."""

    def __init__(self, settings: AlertmanagerReceiver, *, client: httpx.Client | None = None
                 ) -> None:
        self._settings = settings
        self._client = client

    @property
    def endpoint(self) -> str:
        """Where the alerts go (the configured URL may carry a path prefix)."""
        return self._settings.url.rstrip("/") + "/api/v2/alerts"

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """POST the alerts: 2xx accepted; 400 (invalid alerts) is permanent."""
        body = [postable_alert(a, resolved_at=notification.created_at)
                for a in ordered_alerts(notification)]
        delivery, _ = post_json(self.endpoint, body, timeout=self._settings.timeout,
                                channel="Alertmanager", client=self._client)
        return delivery


def postable_alert(alert: AlertInfo, *, resolved_at: float) -> dict[str, Any]:
    """One alert in Alertmanager's API v2 shape; ``resolved_at`` is the end of a resolved
    alert that carries none. Empty label values are dropped, as Prometheus does: to
    Alertmanager an empty label is an absent one."""
    body: dict[str, Any] = {
        "labels": {k: v for k, v in sorted(alert.labels.items()) if v},
        "annotations": dict(sorted(alert.annotations.items())),
        "startsAt": iso8601(alert.starts_at),
    }
    if alert.status is AlertStatus.RESOLVED:
        body["endsAt"] = iso8601(alert.ends_at if alert.ends_at is not None else resolved_at)
    if alert.generator_url:
        body["generatorURL"] = alert.generator_url
    return body
