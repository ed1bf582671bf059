"""Configuration of alert delivery: receivers, the route tree, escalations, inhibition,
time intervals. Alertmanager's shapes and names wherever it has the same idea."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from piggywatch.config_types import Duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PagerDutyReceiver(_Strict):
    """PagerDuty Events API v2."""

    routing_key: SecretStr
    url: str = "https://events.pagerduty.com/v2/enqueue"
    source: str = "piggywatch"
    client: str = "PiggyWatch"
    timeout: Duration = 10.0


class SlackReceiver(_Strict):
    """Slack: a bot token and a channel (chat.postMessage / chat.update), or an incoming
    webhook URL (no updates in place: acknowledge and resolve are new messages)."""

    token: SecretStr | None = None
    channel: str | None = None
    webhook_url: SecretStr | None = None
    base_url: str = "https://slack.com/api/"
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_mode(self) -> SlackReceiver:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("give either token and channel, or webhook_url")
        if self.token is not None and not self.channel:
            raise ValueError("a token needs a channel")
        return self


class EmailReceiver(_Strict):
    """SMTP with STARTTLS, implicit TLS or none (tests, local relays)."""

    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smarthost: str = Field(pattern=r"^[^:\s]+:\d{1,5}$")
    tls: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    timeout: Duration = 15.0


class WebhookReceiver(_Strict):
    """POST Alertmanager's webhook JSON to a URL."""

    url: SecretStr
    timeout: Duration = 10.0
    max_alerts: int = Field(default=0, ge=0)


class AlertmanagerReceiver(_Strict):
    """Forward alerts to an existing Alertmanager (POST /api/v2/alerts)."""

    url: str
    timeout: Duration = 10.0


class Receiver(_Strict):
    """A named destination with exactly one channel."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pagerduty: PagerDutyReceiver | None = None
    slack: SlackReceiver | None = None
    email: EmailReceiver | None = None
    webhook: WebhookReceiver | None = None
    alertmanager: AlertmanagerReceiver | None = None
    send_resolved: bool = True

    @model_validator(mode="after")
    def _one_channel(self) -> Receiver:
        channels = [c for c in (self.pagerduty, self.slack, self.email, self.webhook,
                                self.alertmanager) if c is not None]
        if len(channels) != 1:
            raise ValueError("a receiver has exactly one of pagerduty, slack, email, "
                             "webhook, alertmanager")
        return self


Matcher = Annotated[str, Field(pattern=r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*".*"\s*$')]


class Route(_Strict):
    """A node of the routing tree (Alertmanager semantics)."""

    receiver: str | None = None
    escalation: str | None = None
    matchers: list[Matcher] = []
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = Field(default=False, alias="continue")
    active_time_intervals: list[str] = []
    mute_time_intervals: list[str] = []
    routes: list[Route] = []

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if self.receiver is not None and self.escalation is not None:
            raise ValueError("a route has a receiver or an escalation, not both")
        return self


class EscalationStep(_Strict):
    """Notify these receivers; if still unacknowledged after ``wait``, go to the next step
    (or, on the last step, notify it again up to ``repeat`` more times)."""

    notify: list[str] = Field(min_length=1)
    wait: Duration | None = None
    repeat: int = Field(default=0, ge=0)


class InhibitRule(_Strict):
    """While an alert matching ``source_matchers`` fires, mute alerts matching
    ``target_matchers`` that have the same values for the ``equal`` labels."""

    source_matchers: list[Matcher] = Field(min_length=1)
    target_matchers: list[Matcher] = Field(min_length=1)
    equal: list[str] = []


class TimeRange(_Strict):
    """``09:00`` to ``18:00`` (end exclusive)."""

    start_time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end_time: str = Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")


class TimeInterval(_Strict):
    """A named, time-zone aware set of opening times (business hours)."""

    name: str
    time_zone: str = "UTC"
    weekdays: list[str] = []  # "monday:friday", "saturday"
    times: list[TimeRange] = []
    days_of_month: list[str] = []  # "1:7", "-1"
    months: list[str] = []  # "january:march", "12"


class AlertingSettings(_Strict):
    """The delivery half of the configuration (merged into the top-level settings)."""

    receivers: list[Receiver] = []
    route: Route | None = None
    escalations: dict[str, list[EscalationStep]] = {}
    inhibit_rules: list[InhibitRule] = []
    time_intervals: list[TimeInterval] = []
