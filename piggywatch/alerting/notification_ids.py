"""Notification ids derived from what a notification announces, never random.

A step redone after a crash or a handover (the dispatcher committed its notifications but
not the step) then has the ids the first attempt committed, and the outbox refuses them
instead of paging twice. See the dispatcher's module docstring for what each id is made of.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from piggywatch.alerting.acks import Ack
from piggywatch.alerting.escalation import Escalation
from piggywatch.alerting.model import AlertInfo, AlertStatus
from piggywatch.alerting.outbox import MAX_AGE

__all__ = ["Occurrence", "Occurrences", "ack_notification_id", "notification_id"]

log = logging.getLogger(__name__)

# How long the occurrence counters of an incident key are kept once it has neither a group
# nor an escalation: an outbox item may wait MAX_AGE and its id is remembered MAX_AGE
# after it finished, so a new occurrence counted from scratch can never meet one of them.
OCCURRENCES_KEPT = 3 * MAX_AGE


def ack_notification_id(ack: Ack, receiver: str, note: str = "") -> str:
    """The id of the acknowledge notification of ``ack`` for ``receiver``: the same
    whoever carries the ack out, so the outbox takes it once. A ``note`` added later about
    the same ack (resolved in PagerDuty) has its own id, also given once."""
    parts: list[object] = [ack.incident, ack.by, ack.at, receiver]
    if note:
        parts.append(note)
    return uuid.uuid5(uuid.NAMESPACE_URL, "piggywatch:acknowledge:" + json.dumps(parts)).hex


def notification_id(incident: str, occurrence: Occurrence, receiver: str,
                    *what: object) -> str:
    """The id of a trigger or resolve notification: derived from what it announces, so a
    step redone after a crash (by this leader or the next) gives the ids it gave before."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "piggywatch:notification:" + json.dumps(
        [incident, occurrence.number, occurrence.since, receiver, *what])).hex


@dataclass
class Occurrence:
    """The current occurrence of an incident key, as notification ids name it."""

    number: int  # the key's occurrences so far, this one included (0: before counting)
    since: float  # when the occurrence's earliest alert began firing
    updates: int = 0  # its group notifications (alerts joined or resolved, repeats) so far
    last: float = 0.0  # when it last notified

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "since": self.since, "updates": self.updates,
                "last": self.last}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Occurrence:
        return cls(int(data["number"]), float(data["since"]), int(data.get("updates", 0)),
                   float(data.get("last", 0.0)))


class Occurrences:
    """The counters notification ids are derived from, by incident key; saved with the
    groups (the dispatcher's state), in the same transaction as the step that moved them."""

    def __init__(self, saved: Mapping[str, Any]) -> None:
        self._by_key: dict[str, Occurrence] = {}
        for key, data in saved.items():
            try:
                self._by_key[str(key)] = Occurrence.from_dict(data)
            except (KeyError, TypeError, ValueError):
                log.warning("incident %s: unreadable notification counters, dropped", key)

    def open(self, incident: str, alerts: Sequence[AlertInfo], now: float) -> Occurrence:
        """A new occurrence of ``incident`` (its escalation starts, or a deferred incident
        that ended before anyone heard is announced)."""
        firing = [a.starts_at for a in alerts if a.status is AlertStatus.FIRING]
        since = min(firing or [a.starts_at for a in alerts] or [now])
        previous = self._by_key.get(incident)
        found = Occurrence((previous.number if previous else 0) + 1, since, last=now)
        self._by_key[incident] = found
        return found

    def current(self, esc: Escalation, now: float) -> Occurrence:
        """The occurrence ``esc`` is the escalation of."""
        found = self._by_key.get(esc.incident)
        if found is None:  # started before occurrences were counted: its start is durable
            found = self._by_key[esc.incident] = Occurrence(0, esc.started_at)
        found.last = now
        return found

    def forget(self, now: float, open_: Callable[[str], bool]) -> None:
        """Drop the counters of keys with nothing open that last notified long ago."""
        for key in [k for k, o in self._by_key.items()
                    if o.last < now - OCCURRENCES_KEPT and not open_(k)]:
            del self._by_key[key]

    def to_dict(self) -> dict[str, Any]:
        return {key: o.to_dict() for key, o in self._by_key.items()}
