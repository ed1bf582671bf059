"""What a notification channel declares about itself, in one place.

Each channel module (``pagerduty.py``, ``slack.py``, …) holds its configuration model and one
``CHANNEL``: how to build its notifier (imported on first use, so a configuration without
Slack never loads slack-sdk), its rate limit, whether it speaks HTTP, whether it takes
acknowledgements from outside. The registry (``registry.py``) lists the modules; the
receiver model, secret redaction, timeouts, the outbox's throttles and the hooks read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr

if TYPE_CHECKING:
    from piggywatch.ack.links import AckLinks
    from piggywatch.alerting.model import Notifier

__all__ = ["Channel", "ChannelConfig", "NotifierContext"]


class ChannelConfig(BaseModel):
    """A channel's block of a receiver (``slack: {...}``): strict and frozen. Each declares
    a ``timeout`` field with its own default (read by ``Channel.timeout``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


C = TypeVar("C", bound=ChannelConfig)


@dataclass(frozen=True)
class NotifierContext:
    """What a notifier may need beyond its own block: links back to PiggyWatch."""

    external_url: str = ""
    ack_links: AckLinks | None = None


def _false(config: Any) -> bool:
    return False


@dataclass(frozen=True)
class Channel(Generic[C]):
    """One kind of destination: its key under a receiver and everything about it."""

    kind: str
    config: type[C]
    # The receiver key's one-line description (the configuration reference).
    description: str
    # The notifier for one receiver's block; imports the channel's module when called.
    notifier: Callable[[C, NotifierContext], Notifier]
    # Seconds from the end of one request to one receiver to the start of the next (the
    # service's rate limit); 0: none.
    throttle: float = 0.0
    # Whether sending goes through the shared HTTP client (warmed up at start).
    uses_http: Callable[[C], bool] = _false
    # Whether acknowledgements come back from this channel (hooks, buttons, polling).
    takes_acks: Callable[[C], bool] = _false
    # Whether an acknowledgement made in this channel is echoed back to it (PagerDuty: no,
    # it knows already).
    echoes_own_acks: bool = True

    def timeout(self, config: C) -> float:
        """Seconds each phase of one request (connect, send, read) may take."""
        return float(getattr(config, "timeout", 10.0))

    def secrets(self, config: C) -> list[str]:
        """Every secret value of ``config`` (its ``SecretStr`` fields), for redaction."""
        found: list[str] = []
        for value in config.__dict__.values():
            values = value if isinstance(value, list) else [value]
            found.extend(v.get_secret_value() for v in values if isinstance(v, SecretStr))
        return found
