"""What flows through the alerting pipeline: alerts as notifiers see them, notifications,
and the outcome of one delivery attempt."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

SEVERITIES = ("critical", "high", "medium", "low")


class Action(StrEnum):
    """What a notification tells the channel about an incident."""

    TRIGGER = "trigger"  # new, re-notified (repeat) or escalated
    ACKNOWLEDGE = "acknowledge"  # somebody took it
    RESOLVE = "resolve"  # every alert of the incident resolved


class AlertStatus(StrEnum):
    """An alert's status as notifiers report it."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertInfo:
    """One alert as a notification carries it (labels include ``alertname``)."""

    fingerprint: str
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None
    value: str = ""
    generator_url: str = ""

    @property
    def name(self) -> str:
        """The alert's name."""
        return self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        """``critical``, ``high``, ``medium`` or ``low`` (``medium`` when not set)."""
        value = self.labels.get("severity", "medium")
        return value if value in SEVERITIES else "medium"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the state kept across restarts."""
        return {"fingerprint": self.fingerprint, "status": self.status.value,
                "labels": dict(self.labels), "annotations": dict(self.annotations),
                "starts_at": self.starts_at, "ends_at": self.ends_at, "value": self.value,
                "generator_url": self.generator_url}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertInfo:
        """The inverse of ``to_dict``."""
        ends_at = data.get("ends_at")
        return cls(
            fingerprint=str(data["fingerprint"]), status=AlertStatus(data["status"]),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            annotations={str(k): str(v) for k, v in data["annotations"].items()},
            starts_at=float(data["starts_at"]),
            ends_at=None if ends_at is None else float(ends_at),
            value=str(data.get("value", "")), generator_url=str(data.get("generator_url", "")))


def incident_key(route_id: str, group_labels: Mapping[str, str]) -> str:
    """The stable identity of an incident (one alert group of one route).

    It is the PagerDuty dedup_key, the Slack message's and the email thread's identity, so
    every notification about the same incident — trigger, escalation, acknowledge,
    resolve — lands on the same PagerDuty incident, Slack message and mail thread.
    """
    digest = hashlib.sha256(route_id.encode())
    for name, value in sorted(group_labels.items()):
        digest.update(b"\xff" + name.encode() + b"\xfe" + value.encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Notification:
    """One message to one receiver about one incident; what the outbox stores and sends."""

    id: str  # unique per notification: the outbox's key
    receiver: str
    action: Action
    incident: str  # incident_key(): dedup key, Slack message and mail thread identity
    group_labels: Mapping[str, str]
    alerts: tuple[AlertInfo, ...]
    created_at: float
    level: int = 1  # escalation step, 1-based
    acked_by: str | None = None
    acked_at: float | None = None
    external_url: str = ""
    # Where the ack came from (acks.ACK_SOURCES) and what was said with it, for the message.
    ack_source: str = ""
    ack_note: str = ""

    @property
    def severity(self) -> str:
        """The highest severity among the alerts."""
        ranks = [SEVERITIES.index(a.severity) for a in self.alerts] or [2]
        return SEVERITIES[min(ranks)]

    @property
    def firing(self) -> tuple[AlertInfo, ...]:
        """The alerts still firing."""
        return tuple(a for a in self.alerts if a.status is AlertStatus.FIRING)

    @property
    def title(self) -> str:
        """A short, stable title: the alert name and the group labels (for subjects)."""
        names = sorted({a.name for a in self.alerts}) or ["alert"]
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.group_labels.items())
                          if k != "alertname")
        head = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        return f"{head} ({extra})" if extra else head


class Outcome(StrEnum):
    """How a channel answered one attempt."""

    ACCEPTED = "accepted"
    RETRY = "retry"  # 429, 5xx, timeout, connection error: try again later
    PERMANENT = "permanent"  # any other refusal: never retried


@dataclass(frozen=True)
class Delivery:
    """The result of one attempt. ``receipt`` is what the channel gave back that later
    notifications of the same incident need (Slack channel and ts, mail Message-ID)."""

    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None
    receipt: Mapping[str, str] = field(default_factory=dict)


class Notifier(Protocol):
    """One channel. ``receipt`` is what an earlier delivery of the same incident to the
    same receiver returned (empty for the first)."""

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """Deliver one notification; never raise for a channel's refusal or a network error."""
        ...
