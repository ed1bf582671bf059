"""The alert state machine, exactly as Prometheus runs it for one alerting rule.

inactive → pending (while ``for`` has not elapsed) → firing → resolved (inactive), with
``keep_firing_for`` holding a firing alert after its condition clears, and resolved
alerts kept for 15 minutes so that their resolution can still be reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from piggywatch.store import Labels

# Prometheus keeps resolved alerts this long so notifiers can still be told they resolved.
RESOLVED_RETENTION = 15 * 60.0


class AlertState(StrEnum):
    """Where an alert is in its life."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


def fingerprint(labels: Labels) -> str:
    """A stable identity for an alert: a hash of its sorted labels (alertname included)."""
    digest = hashlib.sha256()
    for name, value in labels:
        digest.update(name.encode())
        digest.update(b"\xfe")
        digest.update(value.encode())
        digest.update(b"\xff")
    return digest.hexdigest()[:16]


@dataclass
class Alert:
    """One alert instance of a rule (one label set)."""

    labels: Labels
    annotations: dict[str, str]
    state: AlertState
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.labels)

    def label(self, name: str) -> str:
        """A label's value, or ``""``."""
        return next((v for k, v in self.labels if k == name), "")


class EventKind(StrEnum):
    """What happened to an alert, as far as notifications care."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertEvent:
    """A transition the alerting side must hear about; it knows nothing of channels."""

    kind: EventKind
    group: str
    rule: str
    alert: Alert
    at: float


# (template, labels of the result sample, value) → rendered text.
Expander = Callable[[str, Mapping[str, str], float], str]


class Missing(StrEnum):
    """What to do with an alert whose series is missing from a result."""

    RESOLVE = "resolve"  # the condition is false: the normal case
    HOLD = "hold"  # no data: keep the alert exactly as it is
    PRESENT = "present"  # no data counts as the condition being true


MissingPolicy = Callable[[Alert], Missing]


@dataclass(frozen=True)
class Result:
    """One sample of the rule's expression result."""

    labels: Labels
    value: float


class AlertingRuleState:
    """The active alerts of one alerting rule and their transitions."""

    def __init__(self, group: str, name: str, *, hold: float, keep_firing_for: float,
                 labels: Mapping[str, str], annotations: Mapping[str, str]) -> None:
        self.group = group
        self.name = name
        self.hold = hold
        self.keep_firing_for = keep_firing_for
        self.labels = dict(labels)
        self.annotations = dict(annotations)
        self.active: dict[str, Alert] = {}

    def evaluate(self, results: Sequence[Result], ts: float, expand: Expander,
                 missing: MissingPolicy | None = None) -> list[AlertEvent]:
        """Apply one evaluation's result at time ``ts``; return the transitions."""
        events: list[AlertEvent] = []
        present: set[str] = set()
        for result in results:
            template_labels = dict(result.labels)
            built = {k: v for k, v in result.labels if k != "__name__"}
            for key, template in self.labels.items():
                value = expand(template, template_labels, result.value)
                if value:
                    built[key] = value
                else:
                    # An empty label is no label: Prometheus removes it (even the series' own).
                    built.pop(key, None)
            built["alertname"] = self.name
            labels: Labels = tuple(sorted(built.items()))
            annotations = {key: expand(template, template_labels, result.value)
                           for key, template in self.annotations.items()}
            fp = fingerprint(labels)
            if fp in present:
                # Prometheus refuses the whole evaluation in this case, and so do we.
                raise DuplicateAlertError(
                    f"rule {self.name!r}: two result series give the same alert labels "
                    f"{dict(labels)} (they differ only in labels the rule overwrites)")
            present.add(fp)
            alert = self.active.get(fp)
            if alert is not None and alert.state is not AlertState.INACTIVE:
                alert.value = result.value
                alert.annotations = annotations
                continue
            self.active[fp] = Alert(labels, annotations, AlertState.PENDING, ts, result.value,
                                    fingerprint=fp)
        for fp, alert in list(self.active.items()):
            verdict = Missing.RESOLVE
            if fp not in present and missing is not None \
                    and alert.state is not AlertState.INACTIVE:
                verdict = missing(alert)
                if verdict is Missing.HOLD:
                    continue
            if fp not in present and verdict is Missing.RESOLVE:
                keep_firing = False
                if alert.state is AlertState.FIRING and self.keep_firing_for > 0:
                    if alert.keep_firing_since is None:
                        alert.keep_firing_since = ts
                    keep_firing = ts - alert.keep_firing_since < self.keep_firing_for
                if alert.state is AlertState.PENDING or (
                        alert.resolved_at is not None
                        and ts - alert.resolved_at > RESOLVED_RETENTION):
                    del self.active[fp]
                if alert.state is not AlertState.INACTIVE and not keep_firing:
                    was_firing = alert.state is AlertState.FIRING
                    alert.state = AlertState.INACTIVE
                    alert.resolved_at = ts
                    if was_firing:
                        events.append(self._event(EventKind.RESOLVED, alert, ts))
                if not keep_firing:
                    continue
            else:
                alert.keep_firing_since = None
            if alert.state is AlertState.PENDING and ts - alert.active_at >= self.hold:
                alert.state = AlertState.FIRING
                alert.fired_at = ts
                events.append(self._event(EventKind.FIRING, alert, ts))
        return events

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take back the alerts saved before a restart (no events: nothing changed)."""
        self.active = {a.fingerprint: a for a in alerts}

    def alerts(self) -> list[Alert]:
        """Pending and firing alerts (resolved ones are only kept for reporting)."""
        return [a for a in self.active.values() if a.state is not AlertState.INACTIVE]

    def _event(self, kind: EventKind, alert: Alert, ts: float) -> AlertEvent:
        return AlertEvent(kind, self.group, self.name, replace(alert), ts)


class DuplicateAlertError(ValueError):
    """Two result series of one rule map to the same alert."""


