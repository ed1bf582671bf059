"""PiggyWatchNotificationFailing: a channel that refused a notification for good becomes an
alert of its own, delivered like any other but never to the channel it is about.

It fires on the first permanent failure of a receiver and resolves once that receiver has
gone an hour without another one (a later success is not reported back by the outbox, so
quiet time is the sign of recovery).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

from piggywatch.alerting.model import AlertInfo
from piggywatch.observability import redactor
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind

__all__ = ["FAILING_ALERT", "HOLD_SECONDS", "FailingChannels"]

FAILING_ALERT = "PiggyWatchNotificationFailing"
HOLD_SECONDS = 3600.0


class FailingChannels:
    """Receivers with a firing PiggyWatchNotificationFailing alert, and their last failure.

    Not thread-safe: the dispatcher calls it under its lock.
    """

    def __init__(self, saved: Mapping[str, float] | None = None) -> None:
        self.last_failure: dict[str, float] = dict(saved or {})

    def failed(self, receiver: str, detail: str, now: float) -> AlertEvent | None:
        """Note a permanent failure; the event that raises the alert if it is not firing."""
        new = receiver not in self.last_failure
        self.last_failure[receiver] = now
        return _event(EventKind.FIRING, receiver, detail, now) if new else None

    def recovered(self, now: float) -> list[AlertEvent]:
        """The resolutions of receivers quiet for ``HOLD_SECONDS``."""
        quiet = [r for r, last in self.last_failure.items() if now - last >= HOLD_SECONDS]
        for receiver in quiet:
            del self.last_failure[receiver]
        return [_event(EventKind.RESOLVED, r, "", now) for r in quiet]

    def fingerprints(self, firing: Mapping[str, Mapping[str, str]]) -> set[str]:
        """Which of these firing alerts are notification-failing alerts (they come from
        here, not from the rules, so a restart must not resolve them)."""
        return {fp for fp, labels in firing.items() if labels.get("alertname") == FAILING_ALERT}


def without_failing(receivers: Iterable[str], alerts: Sequence[AlertInfo],
                    everyone: Collection[str]) -> list[str]:
    """``receivers`` minus any a notification-failing alert among ``alerts`` is about; if
    that leaves none, every other receiver, so the failure is always heard somewhere."""
    wanted = list(dict.fromkeys(receivers))
    broken = {a.labels.get("receiver", "") for a in alerts if a.name == FAILING_ALERT}
    if not broken:
        return wanted
    remaining = [r for r in wanted if r not in broken]
    return remaining or [r for r in everyone if r not in broken]


def _event(kind: EventKind, receiver: str, detail: str, now: float) -> AlertEvent:
    labels = (("alertname", FAILING_ALERT), ("receiver", receiver), ("severity", "high"))
    firing = kind is EventKind.FIRING
    annotations = {"summary": f"Notifications to receiver {receiver} are failing",
                   "description": redactor.scrub(detail)[:500]}
    alert = Alert(labels, annotations, AlertState.FIRING if firing else AlertState.INACTIVE,
                  now, math.nan, fired_at=now, resolved_at=None if firing else now)
    return AlertEvent(kind, "piggywatch", FAILING_ALERT, alert, now)
