"""PagerDuty: the Events API v2 out; acknowledgements back by a v3 webhook or REST polling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.config_types import Duration

if TYPE_CHECKING:
    from piggywatch.alerting.model import Notifier

__all__ = ["CHANNEL", "PagerDutyReceiver"]


class PagerDutyReceiver(ChannelConfig):
    """PagerDuty Events API v2; acknowledgements made in PagerDuty come back through a v3
    webhook subscription (``webhook_secrets``) or by polling the REST API (``api_key``)."""

    routing_key: SecretStr
    """The integration's routing key (a secret)."""
    url: str = "https://events.pagerduty.com/v2/enqueue"
    """The Events API v2 enqueue URL."""
    source: str = "piggywatch"
    """The event's `source` field."""
    client: str = "PiggyWatch"
    """The event's `client` field."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    webhook_secrets: list[SecretStr] = []  # noqa: RUF012 (pydantic copies defaults)
    """The v3 webhook subscription's signing secrets (two while one is being rotated): POST
    /hooks/pagerduty accepts a delivery signed with any of them."""
    api_key: SecretStr | None = None
    """A read-only REST API key: PiggyWatch polls its incidents instead (no inbound traffic)."""
    api_url: str = Field("https://api.pagerduty.com",
                         description="The REST API base URL polled with `api_key`.")
    poll_interval: Duration = Field(default=30.0, ge=1.0,
                                    description="How often incidents are polled with `api_key`.")


def _notifier(config: PagerDutyReceiver, context: NotifierContext) -> Notifier:
    from piggywatch.alerting.notifiers.pagerduty import PagerDutyNotifier

    return PagerDutyNotifier(config, external_url=context.external_url)


CHANNEL = Channel(
    kind="pagerduty", config=PagerDutyReceiver,
    description="Send to PagerDuty (Events API v2).",
    notifier=_notifier,
    # 120 events a minute per integration.
    throttle=0.5,
    uses_http=lambda config: True,
    takes_acks=lambda config: bool(config.webhook_secrets or config.api_key),
    echoes_own_acks=False,
)
