"""Webhook: Alertmanager's webhook JSON POSTed to a URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.config_types import Duration

if TYPE_CHECKING:
    from piggywatch.alerting.model import Notifier

__all__ = ["CHANNEL", "WebhookReceiver"]


class WebhookReceiver(ChannelConfig):
    """POST Alertmanager's webhook JSON to a URL."""

    url: SecretStr
    """The URL the JSON is POSTed to (a secret: it may hold a token)."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    max_alerts: int = Field(default=0, ge=0)
    """The most alerts in one payload; 0: all."""


def _notifier(config: WebhookReceiver, context: NotifierContext) -> Notifier:
    from piggywatch.alerting.notifiers.webhook import WebhookNotifier

    return WebhookNotifier(config, external_url=context.external_url)


CHANNEL = Channel(kind="webhook", config=WebhookReceiver,
                  description="POST Alertmanager's webhook JSON to a URL.",
                  notifier=_notifier, uses_http=lambda config: True)
