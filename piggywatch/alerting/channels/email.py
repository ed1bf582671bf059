"""Email: SMTP with STARTTLS, implicit TLS or none; acknowledge links when ack_links is set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.config_types import Duration

if TYPE_CHECKING:
    from piggywatch.alerting.model import Notifier

__all__ = ["CHANNEL", "EmailReceiver"]


class EmailReceiver(ChannelConfig):
    """SMTP with STARTTLS, implicit TLS or none (tests, local relays)."""

    to: list[str] = Field(min_length=1)
    """Recipients."""
    from_: str = Field(alias="from")
    """The sender address."""
    smarthost: str = Field(pattern=r"^[^:\s]+:\d{1,5}$")
    """The SMTP server, `host:port`."""
    tls: Literal["starttls", "tls", "none"] = "starttls"
    """`starttls`, `tls` (implicit TLS) or `none`."""
    username: str | None = None
    """SMTP user name; unset: no authentication."""
    password: SecretStr | None = None
    """SMTP password."""
    timeout: Duration = 15.0
    """How long one attempt may take before it counts as failed."""


def _notifier(config: EmailReceiver, context: NotifierContext) -> Notifier:
    from piggywatch.alerting.notifiers.email import EmailNotifier

    return EmailNotifier(config, external_url=context.external_url,
                         ack_links=context.ack_links)


CHANNEL = Channel(kind="email", config=EmailReceiver, description="Send email over SMTP.",
                  notifier=_notifier)
