"""Alertmanager: alerts forwarded to an existing Alertmanager (POST /api/v2/alerts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.config_types import Duration

if TYPE_CHECKING:
    from piggywatch.alerting.model import Notifier

__all__ = ["CHANNEL", "AlertmanagerReceiver"]


class AlertmanagerReceiver(ChannelConfig):
    """Forward alerts to an existing Alertmanager (POST /api/v2/alerts)."""

    url: str
    """The Alertmanager's base URL (a path prefix is allowed)."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""


def _notifier(config: AlertmanagerReceiver, context: NotifierContext) -> Notifier:
    from piggywatch.alerting.notifiers.alertmanager import AlertmanagerNotifier

    return AlertmanagerNotifier(config)


CHANNEL = Channel(kind="alertmanager", config=AlertmanagerReceiver,
                  description="Forward to an existing Alertmanager (POST /api/v2/alerts).",
                  notifier=_notifier, uses_http=lambda config: True)
