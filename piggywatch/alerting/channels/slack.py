"""Slack: chat.postMessage / chat.update with a bot token, or an incoming webhook; buttons
answered through the interactivity request URL or Socket Mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, SecretStr, model_validator

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.config_types import Duration

if TYPE_CHECKING:
    from piggywatch.alerting.model import Notifier

__all__ = ["CHANNEL", "SlackReceiver"]


class SlackReceiver(ChannelConfig):
    """Slack: a bot token and a channel (chat.postMessage / chat.update), or an incoming
    webhook URL (no updates in place: acknowledge and resolve are new messages)."""

    token: SecretStr | None = None
    """A bot token (`xoxb-...`), used with `channel`."""
    channel: str | None = None
    """The channel the bot posts to, used with `token`."""
    webhook_url: SecretStr | None = None
    """An incoming webhook URL, instead of token and channel."""
    base_url: str = "https://slack.com/api/"
    """The Slack Web API base URL."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    signing_secret: SecretStr | None = Field(None, description=(
        "Buttons (Acknowledge, Silence): the app's signing secret for its interactivity "
        "request URL (POST /hooks/slack/interactions); or use `app_token`."))
    app_token: SecretStr | None = Field(None, description=(
        "The app-level token (`xapp-…`) for Socket Mode: buttons without inbound HTTP."))
    allowed_users: list[Annotated[str, Field(pattern=r"^[UWS][A-Z0-9]{2,20}$")]] = []  # noqa: RUF012
    """Who may press them: Slack user ids (U…, W…) or user group ids (S…); empty: anyone in the
    channel."""

    @model_validator(mode="after")
    def _one_mode(self) -> SlackReceiver:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("give either token and channel, or webhook_url")
        if self.token is not None and not self.channel:
            raise ValueError("a token needs a channel")
        if (self.signing_secret or self.app_token) and self.token is None:
            raise ValueError("buttons (signing_secret, app_token) need token and channel: the "
                             "message is updated in place when somebody presses one")
        if self.app_token is not None and not self.app_token.get_secret_value().startswith(
                "xapp-"):
            raise ValueError("app_token is the app-level token for Socket Mode (it begins "
                             "with xapp-), not the bot token")
        if self.allowed_users and not (self.signing_secret or self.app_token):
            raise ValueError("allowed_users restricts who presses buttons: give "
                             "signing_secret or app_token too")
        return self

    @property
    def interactive(self) -> bool:
        """Whether the messages carry Acknowledge and Silence buttons."""
        return self.signing_secret is not None or self.app_token is not None


def _notifier(config: SlackReceiver, context: NotifierContext) -> Notifier:
    from piggywatch.alerting.notifiers.slack import SlackNotifier

    return SlackNotifier(config, external_url=context.external_url)


CHANNEL = Channel(
    kind="slack", config=SlackReceiver,
    description="Send to Slack.",
    notifier=_notifier,
    # About one message per second per channel.
    throttle=1.0,
    # The bot token goes through slack-sdk's own client; a webhook through ours.
    uses_http=lambda config: config.webhook_url is not None,
    takes_acks=lambda config: config.interactive,
)
