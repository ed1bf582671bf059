"""Every notification channel, from the one list of their modules.

Adding a channel: a module beside this one (its configuration model and ``CHANNEL``), its
notifier under ``alerting/notifiers/``, its name in ``_MODULES``, a test, and the README.
The receiver model, secret redaction, timeouts, delivery, the outbox's throttles and the
acknowledgement hooks all read ``CHANNELS``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.channels.base import Channel, NotifierContext

if TYPE_CHECKING:
    from collections.abc import Iterable

    from piggywatch.ack.links import AckLinks
    from piggywatch.alerting.model import Notifier
    from piggywatch.alerting.settings import Receiver

__all__ = ["CHANNELS", "build_notifier", "channel_throttles", "longest_timeout"]

# In the order the configuration reference lists them.
_MODULES = ("pagerduty", "slack", "email", "webhook", "alertmanager")


def _load() -> dict[str, Channel[Any]]:
    found: dict[str, Channel[Any]] = {}
    for name in _MODULES:
        channel: Channel[Any] = import_module(f"piggywatch.alerting.channels.{name}").CHANNEL
        found[channel.kind] = channel
    return found


CHANNELS: dict[str, Channel[Any]] = _load()


def build_notifier(receiver: Receiver, *, external_url: str = "",
                   ack_links: AckLinks | None = None) -> Notifier:
    """The notifier for ``receiver``'s one channel. Each channel's module (and its library:
    slack-sdk, httpx, smtplib) is imported here, on first use."""
    return receiver.channel.notifier(receiver.channel_config,
                                     NotifierContext(external_url, ack_links))


def channel_throttles(receivers: Iterable[Receiver]) -> dict[str, float]:
    """The throttle of each receiver whose channel has a rate limit."""
    return {r.name: r.channel.throttle for r in receivers if r.channel.throttle > 0}


def longest_timeout(receivers: Iterable[Receiver], default: float = 10.0) -> float:
    """The longest request timeout of any receiver (``default`` when there are none)."""
    return max((r.channel.timeout(r.channel_config) for r in receivers), default=default)
