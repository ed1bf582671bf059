"""From a configured receiver to its notifier, importing only the channels in use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from piggywatch.alerting.model import Notifier
from piggywatch.alerting.settings import Receiver

if TYPE_CHECKING:
    from piggywatch.ack.links import AckLinks

__all__ = ["build_notifier"]


def build_notifier(receiver: Receiver, *, external_url: str = "",
                   ack_links: AckLinks | None = None) -> Notifier:
    """The notifier for ``receiver``'s one channel. Each channel's module (and its library:
    slack-sdk, httpx, smtplib) is imported here, on first use, so a configuration without
    Slack never pays for slack-sdk's memory."""
    if receiver.pagerduty is not None:
        from piggywatch.alerting.notifiers.pagerduty import PagerDutyNotifier

        return PagerDutyNotifier(receiver.pagerduty, external_url=external_url)
    if receiver.slack is not None:
        from piggywatch.alerting.notifiers.slack import SlackNotifier

        return SlackNotifier(receiver.slack, external_url=external_url)
    if receiver.email is not None:
        from piggywatch.alerting.notifiers.email import EmailNotifier

        return EmailNotifier(receiver.email, external_url=external_url, ack_links=ack_links)
    if receiver.webhook is not None:
        from piggywatch.alerting.notifiers.webhook import WebhookNotifier

        return WebhookNotifier(receiver.webhook, external_url=external_url)
    if receiver.alertmanager is not None:
        from piggywatch.alerting.notifiers.alertmanager import AlertmanagerNotifier

        return AlertmanagerNotifier(receiver.alertmanager)
    # Receiver's validator guarantees one channel; reaching here means a new channel
    # was added to the settings without a notifier.
    raise ValueError(f"receiver {receiver.name!r} has no channel this version can send to")
