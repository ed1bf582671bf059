"""PagerDuty Webhooks v3: the signature check and the incident changes a delivery reports.

PagerDuty signs the raw body with HMAC-SHA256 under each of the subscription's secrets and
sends every signature, comma-separated, in ``X-PagerDuty-Signature`` (``v1=<hex>,v1=<hex>``
while a secret rotates). A delivery is trusted when one of them matches one of ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["ACTED_ON", "SIGNATURE_HEADER", "PagerDutyChange", "WebhookError",
           "parse_delivery", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-PagerDuty-Signature"
# The incident event types that change ours; every other type is answered 2xx and ignored.
ACTED_ON = frozenset({"incident.acknowledged", "incident.unacknowledged", "incident.resolved"})


class WebhookError(ValueError):
    """A delivery that cannot be read: the HTTP status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sign(body: bytes, secret: str) -> str:
    """The ``v1=<hex>`` signature PagerDuty computes for ``body`` under ``secret``."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """Whether one of the header's ``v1`` signatures is ``body``'s under one of ``secrets``
    (constant-time comparisons, every pair compared)."""
    if not header:
        return False
    offered = [part.strip() for part in header.split(",") if part.strip().startswith("v1=")]
    matched = False
    for secret in secrets:
        expected = sign(body, secret).encode()
        for signature in offered:
            matched |= hmac.compare_digest(expected, signature.encode())
    return matched


@dataclass(frozen=True)
class PagerDutyChange:
    """What happened to a PagerDuty incident, from a webhook delivery or a poll.

    ``incident_key`` is the dedup_key PiggyWatch sent (its incident key); ``incident_id`` and
    ``html_url`` are PagerDuty's, kept for display; ``agent`` who did it there."""

    event_id: str
    event_type: str
    occurred_at: float
    incident_key: str
    incident_id: str = ""
    html_url: str = ""
    number: int | None = None
    agent: str = ""
    agent_id: str = ""

    @property
    def acts(self) -> bool:
        """Whether the change is one PiggyWatch acts on."""
        return self.event_type in ACTED_ON


def parse_delivery(body: bytes) -> PagerDutyChange | None:
    """The incident change a v3 delivery reports; None for a delivery about something other
    than an incident (a service, a note). WebhookError(400) when it cannot be read."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookError(400, "the body is not JSON") from None
    event = data.get("event") if isinstance(data, dict) else None
    if not isinstance(event, dict):
        raise WebhookError(400, 'the body has no "event" object (is this a v3 webhook?)')
    event_id, event_type = event.get("id"), event.get("event_type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise WebhookError(400, 'the event has no "id" or "event_type"')
    occurred_at = parse_time(event.get("occurred_at"))
    if occurred_at is None:
        raise WebhookError(400, 'the event has no ISO 8601 "occurred_at"')
    incident = event.get("data")
    if event.get("resource_type") != "incident" or not isinstance(incident, dict):
        return None
    if incident.get("type") != "incident":
        # incident.annotated and the responder events carry a note or a responder, with
        # only a reference to the incident: nothing to act on.
        return PagerDutyChange(event_id, event_type, occurred_at, "")
    agent = event.get("agent") if isinstance(event.get("agent"), dict) else {}
    number = incident.get("number")
    return PagerDutyChange(
        event_id=event_id, event_type=event_type, occurred_at=occurred_at,
        incident_key=_text(incident.get("incident_key")), incident_id=_text(incident.get("id")),
        html_url=_text(incident.get("html_url")),
        number=number if isinstance(number, int) else None,
        agent=_text(_get(agent, "summary")), agent_id=_text(_get(agent, "id")))


def parse_time(value: Any) -> float | None:
    """An ISO 8601 time (``2020-10-02T18:45:22.169Z``) as a Unix time, None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
