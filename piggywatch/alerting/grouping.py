"""Alert groups: one per (route, group labels), each one incident, and when each must notify.

Alertmanager's aggregation groups, with its timings:

- a new group waits ``group_wait`` before its first notification, so that alerts firing
  together arrive together;
- then the group is looked at every ``group_interval`` ("flush"). It notifies when the
  receivers' picture changed since the last notification: an alert they were not told
  about fires (CHANGE), or one they were told about resolved (CHANGE while others still
  fire, RESOLVE when none does); when nothing changed and alerts still fire, it notifies
  again once ``repeat_interval`` has passed since the last notification (REPEAT);
- an alert that fired and resolved between two flushes, unseen by anyone, is dropped
  quietly; a group with no alerts left is removed.

What the receivers are told is the *visible* picture: ``due`` takes a ``suppressed``
predicate (silences and inhibitions, checked at flush time as Alertmanager does), and
suppressed firing alerts are left out. Resolved alerts are never suppressed, so an
incident that was announced is always closed. If every announced alert is now suppressed
but still firing, nothing is sent: the incident stays open, quietly.

Time intervals: when a notification is due outside the route's active time intervals or
inside one of its mute time intervals, it is deferred, not dropped: the group flushes
again at the next allowed instant, with whatever it holds then. A deferred group whose
alerts all resolved meanwhile still sends one RESOLVE listing them, so the next business
day sees what happened.

``send_resolved`` is a receiver's setting, so it is not applied here: RESOLVE and
resolve-only CHANGE notifications (``DueGroup.resolve_only``) are produced for every
route, and the delivery side skips them for receivers that do not want them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from piggywatch.alerting.model import AlertInfo, AlertStatus, incident_key
from piggywatch.alerting.routing import RoutePlan, group_labels
from piggywatch.alerting.time_intervals import TimeIntervals
from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.rules.templating import format_go_float

__all__ = ["DueGroup", "DueKind", "Grouper", "Suppressed", "alert_info"]

# Labels → whether a firing alert is silenced or inhibited right now.
Suppressed = Callable[[Mapping[str, str]], bool]
_STATE_VERSION = 1


class DueKind(StrEnum):
    """Why a group notifies."""

    FIRST = "first"  # the incident's first notification
    CHANGE = "change"  # alerts joined or resolved since the last notification
    REPEAT = "repeat"  # nothing changed, still firing, repeat_interval passed
    RESOLVE = "resolve"  # everything announced has resolved and nothing visible fires


@dataclass(frozen=True)
class DueGroup:
    """A notification a group owes now. ``alerts``: visible firing alerts first, then the
    ones that resolved since the last flush; ``added`` and ``resolved`` are fingerprints."""

    incident: str
    group_labels: Mapping[str, str]
    plan: RoutePlan
    kind: DueKind
    alerts: tuple[AlertInfo, ...]
    added: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    deferred_since: float | None = None

    @property
    def resolve_only(self) -> bool:
        """Whether the news is only that alerts resolved (receivers without send_resolved
        skip these)."""
        return self.kind is DueKind.RESOLVE or (self.kind is DueKind.CHANGE and not self.added)


@dataclass
class _Group:
    incident: str
    plan: RoutePlan
    labels: dict[str, str]
    created_at: float
    next_flush: float
    alerts: dict[str, AlertInfo] = field(default_factory=dict)
    notified: set[str] = field(default_factory=set)  # announced as firing, still open
    last_sent: float | None = None
    deferred_since: float | None = None


class Grouper:
    """Every open alert group and the notifications they owe; pure, with time passed in.

    ``intervals`` resolves the routes' active and mute time interval names; replace it on
    a configuration reload.
    """

    def __init__(self, intervals: TimeIntervals | None = None) -> None:
        self.intervals = intervals if intervals is not None else TimeIntervals()
        self._groups: dict[str, _Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, incident: object) -> bool:
        return incident in self._groups

    def add(self, event: AlertEvent, plans: Sequence[RoutePlan], now: float) -> list[str]:
        """Take an alert event into the groups of its plans; return the incidents touched.

        A firing alert joins (or re-fires in) the group of every plan, creating groups as
        needed; the latest plan of a route replaces the one a group had (config reloads).
        A resolution applies wherever the alert is, whatever the plans, so that a changed
        route tree cannot leave an incident open forever.
        """
        info = alert_info(event)
        touched: list[str] = []
        if event.kind is EventKind.RESOLVED:
            for holder in self._groups.values():
                if info.fingerprint in holder.alerts:
                    holder.alerts[info.fingerprint] = info
                    touched.append(holder.incident)
            return touched
        for plan in plans:
            labels = group_labels(plan, info.labels)
            key = incident_key(plan.route_id, labels)
            group = self._groups.get(key)
            if group is None:
                group = _Group(key, plan, labels, now, now + plan.group_wait)
                self._groups[key] = group
            group.plan = plan
            group.alerts[info.fingerprint] = info
            touched.append(key)
        return touched

    def due(self, now: float, suppressed: Suppressed | None = None) -> list[DueGroup]:
        """Flush every group whose time has come; return the notifications owed now.

        Calling it is taken as sending them: the groups record what was announced.
        """
        out: list[DueGroup] = []
        for key, group in list(self._groups.items()):
            if group.next_flush > now:
                continue
            owed = _decide(group, now, suppressed)
            if owed is not None and not self._allowed(group, now):
                opening = self.intervals.next_allowed(group.plan.active_time_intervals,
                                                      group.plan.mute_time_intervals, now)
                # An interval that never opens must not hold an alert forever: send now.
                if math.isfinite(opening):
                    if group.deferred_since is None:
                        group.deferred_since = now
                    group.next_flush = opening
                    continue
            if owed is not None:
                owed = replace(owed, deferred_since=group.deferred_since)
                out.append(owed)
                group.notified = {a.fingerprint for a in owed.alerts
                                  if a.status is AlertStatus.FIRING}
                group.last_sent = now
            group.deferred_since = None
            group.alerts = {fp: a for fp, a in group.alerts.items()
                            if a.status is AlertStatus.FIRING}
            # Keep to the group's own beat (as Alertmanager's ticker does) when called a
            # little late; after a long pause, start a new beat from now.
            beat = group.next_flush + group.plan.group_interval
            group.next_flush = beat if beat > now else now + group.plan.group_interval
            if not group.alerts:
                del self._groups[key]
        return out

    def reconcile(self, firing: Collection[str], now: float) -> list[str]:
        """Resolve every grouped firing alert whose fingerprint is not in ``firing``.

        For after a restart or a rule reload, when the rules no longer know an alert whose
        resolution this grouper never heard: without this its incident would repeat forever.
        Returns the incidents touched.
        """
        touched: list[str] = []
        for group in self._groups.values():
            for fp, info in group.alerts.items():
                if info.status is AlertStatus.FIRING and fp not in firing:
                    group.alerts[fp] = replace(info, status=AlertStatus.RESOLVED, ends_at=now)
                    touched.append(group.incident)
        return sorted(set(touched))

    def next_wakeup(self) -> float | None:
        """When ``due`` may next have something to say (``None``: no groups)."""
        return min((g.next_flush for g in self._groups.values()), default=None)

    def alerts(self, incident: str) -> list[AlertInfo]:
        """The alerts a group holds now (empty for an unknown incident)."""
        group = self._groups.get(incident)
        return [] if group is None else list(group.alerts.values())

    def _allowed(self, group: _Group, now: float) -> bool:
        return self.intervals.allows(group.plan.active_time_intervals,
                                     group.plan.mute_time_intervals, now)

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every group as JSON-ready data, so that a restart resumes where it stopped."""
        return {"version": _STATE_VERSION, "groups": [_group_to_dict(g)
                                                      for g in self._groups.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  intervals: TimeIntervals | None = None) -> Grouper:
        """Groups saved by ``to_dict``; unknown versions give an empty grouper."""
        grouper = cls(intervals)
        if data.get("version") != _STATE_VERSION:
            return grouper
        for item in data.get("groups", ()):
            group = _group_from_dict(item)
            grouper._groups[group.incident] = group
        return grouper


def alert_info(event: AlertEvent) -> AlertInfo:
    """An alert event as notifications carry it (``starts_at`` is when it began firing)."""
    alert = event.alert
    firing = event.kind is EventKind.FIRING
    return AlertInfo(
        fingerprint=alert.fingerprint,
        status=AlertStatus.FIRING if firing else AlertStatus.RESOLVED,
        labels=dict(alert.labels),
        annotations=dict(alert.annotations),
        starts_at=alert.fired_at if alert.fired_at is not None else alert.active_at,
        ends_at=None if firing else (alert.resolved_at or event.at),
        value=format_go_float(alert.value),
    )


def _decide(group: _Group, now: float, suppressed: Suppressed | None) -> DueGroup | None:
    firing = {fp: a for fp, a in group.alerts.items() if a.status is AlertStatus.FIRING}
    visible = {fp: a for fp, a in firing.items()
               if suppressed is None or not suppressed(a.labels)}
    resolved = {fp: a for fp, a in group.alerts.items() if a.status is AlertStatus.RESOLVED}
    added = sorted(visible.keys() - group.notified)
    newly_resolved = sorted(group.notified & resolved.keys())
    kind: DueKind | None = None
    if not group.notified:
        if visible:
            kind = DueKind.FIRST
        elif group.deferred_since is not None and resolved and not firing:
            kind = DueKind.RESOLVE  # a deferred incident that ended before anyone heard
            newly_resolved = sorted(resolved)
    elif added:
        kind = DueKind.CHANGE
    elif newly_resolved:
        kind = DueKind.RESOLVE if group.notified <= resolved.keys() else DueKind.CHANGE
    elif visible and group.last_sent is not None \
            and now - group.last_sent >= group.plan.repeat_interval:
        kind = DueKind.REPEAT
    if kind is None:
        return None
    return DueGroup(
        incident=group.incident,
        group_labels=dict(group.labels),
        plan=group.plan,
        kind=kind,
        alerts=(*_ordered(visible.values()), *_ordered(resolved.values())),
        added=tuple(added),
        resolved=tuple(newly_resolved),
    )


def _ordered(alerts: Iterable[AlertInfo]) -> list[AlertInfo]:
    return sorted(alerts, key=lambda a: (a.starts_at, a.fingerprint))


def _group_to_dict(group: _Group) -> dict[str, Any]:
    return {"incident": group.incident, "plan": group.plan.to_dict(),
            "labels": dict(group.labels), "created_at": group.created_at,
            "next_flush": group.next_flush,
            "alerts": [a.to_dict() for a in group.alerts.values()],
            "notified": sorted(group.notified), "last_sent": group.last_sent,
            "deferred_since": group.deferred_since}


def _group_from_dict(data: Mapping[str, Any]) -> _Group:
    alerts = [AlertInfo.from_dict(a) for a in data["alerts"]]
    last_sent, deferred = data.get("last_sent"), data.get("deferred_since")
    return _Group(
        incident=str(data["incident"]), plan=RoutePlan.from_dict(data["plan"]),
        labels={str(k): str(v) for k, v in data["labels"].items()},
        created_at=float(data["created_at"]), next_flush=float(data["next_flush"]),
        alerts={a.fingerprint: a for a in alerts},
        notified={str(fp) for fp in data.get("notified", ())},
        last_sent=None if last_sent is None else float(last_sent),
        deferred_since=None if deferred is None else float(deferred))
