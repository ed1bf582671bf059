"""The delivery pipeline, in order, in one place.

    alert event → inhibit → silence → route → group → time-interval deferral → escalate
                → outbox

Events from the rules are queued and taken by the dispatcher's own thread at once (so with
``group_wait: 0`` a page leaves within milliseconds of the evaluation that fired it), and
the thread also wakes every second for group flushes and escalation timers. Inhibition and
silences are judged when a group flushes (as Alertmanager does), so an alert that stops
being muted is announced at its group's next flush. Each flushed group is an incident:
its escalation decides who hears of it first and who next, acknowledgements stop the
climb, and the outbox delivers.

The groups, escalations and acks are durable in the state file, so a restart neither
re-pages an incident nor forgets one half-way up its chain.

A pass (or an acknowledgement) changes memory first and commits at its end: the
notifications to the outbox, then the escalations and groups in one transaction. If the
state database fails on the way, the work stays pending, exactly as computed, and is
committed again before anything else: the outbox drops what it already took (same ids),
so nothing is lost and nothing is sent twice. A leader that dies in between leaves the
escalations and groups as they were before the pass: its successor redoes the step, and
because every notification id is derived from what it announces (never random), the redone
step has the ids the dead leader committed and the outbox drops them. An ack recorded whose
escalation is not marked acknowledged is an ack not yet carried out: the next pass (a new
leader's first) carries it out, with notification ids derived from the ack.

What an id is derived from (``_notification_id``): the incident key, the occurrence of
that key (a counter of the key's incidents, and when the occurrence's earliest alert began
firing), the receiver, and what the notification is:

- an escalation page: its level and the last step's repeat count (``Escalation.repeats``);
- a group notification (alerts joined or resolved, or repeat_interval passed): a counter
  of the occurrence's group notifications, the kind, and the alerts announced;
- the resolve: one per occurrence.

The counters (``Occurrences``) are saved with the groups, in the transaction that saves
the step, so a redone step counts from where the dead leader's last saved step left off;
a key's counters are kept for ``notification_ids.OCCURRENCES_KEPT`` after its last
notification, well beyond the outbox's memory of finished ids, so that a new occurrence
never reuses an id the outbox would still refuse.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from piggywatch.alerting.acks import ACK_SOURCES, Ack, Acks, acknowledge_notifications
from piggywatch.alerting.escalation import Escalation, EscalationPolicy, EscalationStore, Page
from piggywatch.alerting.failing import FAILING_ALERT, FailingChannels, without_failing
from piggywatch.alerting.grouping import DueGroup, DueKind, Grouper
from piggywatch.alerting.inhibit import Inhibitor
from piggywatch.alerting.model import Action, AlertInfo, AlertStatus, Delivery, Notification
from piggywatch.alerting.notification_ids import (
    Occurrence,
    Occurrences,
    ack_notification_id,
    notification_id,
)
from piggywatch.alerting.routing import RoutePlan, Router
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.alerting.silences import Silences
from piggywatch.alerting.time_intervals import TimeIntervals
from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.state import STATE_ERRORS, NotLeader, StateLike
from piggywatch.store.samples import MetricKind, MetricSpec, Sample, labels_of

__all__ = ["FAILING_ALERT", "SOURCE", "SPECS", "Dispatcher", "Sender"]

log = logging.getLogger(__name__)

SOURCE = "piggywatch/alerting"
# The longest the thread sleeps when nothing is due: timers are checked at least this often.
TICK_SECONDS = 1.0

SPECS = (
    MetricSpec("piggywatch_alert_incidents", MetricKind.GAUGE,
               "Open incidents by escalation level and whether acknowledged"),
    MetricSpec("piggywatch_alert_groups", MetricKind.GAUGE,
               "Alert groups held (incidents notified or waiting for group_wait)"),
    MetricSpec("piggywatch_alert_acks_total", MetricKind.COUNTER,
               "Incidents acknowledged since the daemon started, by where the ack came from "
               "(api, cli, pagerduty, slack, email)"),
    MetricSpec("piggywatch_alerts_silenced", MetricKind.GAUGE,
               "Firing alerts muted by an active silence"),
    MetricSpec("piggywatch_alerts_inhibited", MetricKind.GAUGE,
               "Firing alerts muted by an inhibition rule"),
    MetricSpec("piggywatch_notifications_created_total", MetricKind.COUNTER,
               "Notifications handed to the outbox, by action"),
)


class Sender(Protocol):
    """Where notifications go: the outbox."""

    def enqueue(self, notification: Notification) -> bool:
        """Commit one notification for delivery."""
        ...


@dataclass(frozen=True)
class AckResult:
    """The outcome of an acknowledgement: the ack in force per incident, and whether new."""

    key: str  # the incident or alert fingerprint asked for
    acks: tuple[tuple[Ack, bool], ...]


@dataclass
class _Pass:
    """What one pass (or acknowledgement) produced, committed together at its end."""

    notifications: list[Notification] = field(default_factory=list)
    changed: dict[str, Escalation] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)
    stale_acks: list[str] = field(default_factory=list)  # acks of no running escalation
    save_groups: bool = False  # the groups changed: save the dispatcher's state too
    enqueued: set[str] = field(default_factory=set)  # ids the outbox took already

    def empty(self) -> bool:
        """Nothing to commit."""
        return not (self.notifications or self.changed or self.ended or self.stale_acks
                    or self.save_groups)


class Dispatcher:
    """Takes alert events and turns them into notifications, on its own thread."""

    def __init__(self, settings: AlertingSettings, sender: Sender, state: StateLike, *,
                 clock: Callable[[], float] = time.time, external_url: str = "") -> None:
        if settings.route is None:
            raise ValueError("alert delivery needs a route")
        self._receivers = {r.name: r for r in settings.receivers}
        self._policies = {name: EscalationPolicy.from_settings(name, steps)
                          for name, steps in settings.escalations.items()}
        # AlertingSettings checked that every receiver and escalation named exists.
        self._router = Router(settings.route)
        self._intervals = TimeIntervals(settings.time_intervals)
        self._inhibitor = Inhibitor(settings.inhibit_rules)
        self._sender = sender
        self._clock = clock
        self._external_url = external_url
        self.silences = Silences(state)
        self._acks = Acks(state)
        self._escalations = EscalationStore(state)
        saved = json.loads(self._escalations.state() or "{}")
        self._grouper = Grouper.from_dict(saved.get("grouper", {}), self._intervals)
        self._failing = FailingChannels(saved.get("failing", {}))
        self._occurrences = Occurrences(saved.get("occurrences", {}))
        self._firing = self._grouped_firing()
        self._lock = threading.RLock()
        self._queue: list[AlertEvent] = []
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: dict[str, int] = {a.value: 0 for a in Action}
        self._muted = (0, 0)
        # A pass or acknowledgement whose commit failed: committed before anything else.
        self._unsaved: _Pass | None = None
        # Called (outside the lock) with the keys of incidents that ended in a pass.
        self.on_ended: list[Callable[[list[str]], None]] = []

    # --- input --------------------------------------------------------------------------

    def handle(self, event: AlertEvent) -> None:
        """The rules' sink: queue an event and wake the thread (never blocks on I/O)."""
        with self._lock:
            self._queue.append(event)
        self._wakeup.set()

    def on_permanent_failure(self, notification: Notification, delivery: Delivery) -> None:
        """The outbox gave a notification up: raise PiggyWatchNotificationFailing, which
        reaches the incident's other receivers (never the failing one)."""
        with self._lock:
            event = self._failing.failed(notification.receiver, delivery.detail, self._clock())
        if event is not None:
            self.handle(event)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, firing: Iterable[AlertEvent] | None = None) -> None:
        """Start the thread. ``firing``: every alert the rules hold as firing now, after a
        restart: unknown ones are taken as new, grouped ones no longer firing as resolved."""
        if firing is not None:
            self.reconcile(list(firing), self._clock())
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the pass under way and stop; what is pending stays saved."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def close(self) -> None:
        """Stop and close the state file."""
        self.stop()
        for db in (self.silences, self._acks, self._escalations):
            db.close()

    def reconcile(self, firing: Sequence[AlertEvent], now: float) -> None:
        """Bring the groups in line with what the rules say fires (see ``start``)."""
        with self._lock:
            keep = {e.alert.fingerprint for e in firing}
            keep |= self._failing.fingerprints(self._firing)
            for incident in self._grouper.reconcile(keep, now):
                log.info("incident %s: alerts resolved while PiggyWatch was down", incident)
            # What resolved meanwhile must not inhibit anything any more.
            self._firing = self._grouped_firing()
            self._queue.extend(e for e in firing if e.alert.fingerprint not in self._firing)
        self._wakeup.set()

    def _loop(self) -> None:
        failing = ""  # the state error the passes fail with, logged once
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                self.run_pass()
            except NotLeader:
                # Fenced out: another replica leads now, and this one is being deposed.
                log.info("alert dispatch stops: this replica is no longer the leader")
                return
            except STATE_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}".strip()
                if error != failing:
                    log.warning("alert dispatch pass failed on the state database (%s); "
                                "its notifications are kept and retried every second", error)
                    failing = error
                self._stopping.wait(TICK_SECONDS)
            except Exception:
                log.exception("alert dispatch pass failed; trying again in a second")
                self._stopping.wait(TICK_SECONDS)
            else:
                if failing:
                    log.info("alert dispatch: the state database works again")
                    failing = ""
            self._wakeup.wait(self._sleep())

    def _sleep(self) -> float:
        now = self._clock()
        with self._lock:
            times = [t for t in (self._grouper.next_wakeup(), self._escalations.next_due())
                     if t is not None]
        return max(0.0, min([TICK_SECONDS, *(t - now for t in times)]))

    # --- the pipeline ---------------------------------------------------------------------

    def run_pass(self, now: float | None = None) -> list[Notification]:
        """Take queued events, flush due groups, run due escalation steps, hand the
        notifications to the outbox and save the state; return the notifications."""
        at = self._clock() if now is None else now
        with self._lock:
            self._commit_unsaved()
            events, self._queue = self._queue, []
            work = _Pass()
            self._pending_acks(at, work)
            for event in events:
                self._take(event, at)
            for event in self._failing.recovered(at):
                self._take(event, at)
            self._inhibitor.set_firing(self._firing.values())
            muted = self._muted_at(at)
            for due in self._grouper.due(at, muted):
                work.notifications += self._flush(due, at, work)
            for esc in self._escalations.all():
                if esc.incident in work.changed or esc.incident in work.ended:
                    continue  # its group just spoke for it
                if self._may_climb(esc, at, muted):
                    page = esc.due(at)
                    if page is not None:
                        work.changed[esc.incident] = esc
                        work.notifications += self._page(esc, page, at)
            work.save_groups = bool(events or work.changed or work.ended or
                                    work.notifications)
            self._occurrences.forget(at, lambda incident: incident in self._grouper or
                                     self._escalations.get(incident) is not None)
            self._commit(work)
            silenced = sum(1 for labels in self._firing.values()
                           if self.silences.is_silenced(labels, at))
            inhibited = sum(1 for labels in self._firing.values()
                            if self._inhibitor.is_inhibited(labels))
            self._muted = (silenced, inhibited)
        if work.ended:
            for callback in self.on_ended:
                try:
                    callback(list(work.ended))
                except Exception:
                    log.exception("a callback for ended incidents failed")
        return work.notifications

    def _commit(self, work: _Pass) -> None:
        """Hand the notifications to the outbox, then save the escalations (and the groups)
        and forget the acks of ended incidents. On a failure the work stays pending, for
        ``_commit_unsaved``."""
        if work.empty():
            return
        self._unsaved = work
        for notification in work.notifications:
            if notification.id not in work.enqueued:
                self._sender.enqueue(notification)
                work.enqueued.add(notification.id)
                self._created[notification.action.value] += 1
        if work.changed or work.ended or work.save_groups:
            # The groups as they are now: never behind what the notifications announced.
            state = json.dumps({"grouper": self._grouper.to_dict(),
                                "failing": self._failing.last_failure,
                                "occurrences": self._occurrences.to_dict()}) \
                if work.save_groups else None
            self._escalations.save(work.changed.values(), work.ended, state)
        self._acks.forget([*work.ended, *work.stale_acks])
        self._unsaved = None

    def _commit_unsaved(self) -> None:
        """Commit the work a failed commit left pending (raises while it still fails)."""
        if self._unsaved is not None:
            self._commit(self._unsaved)

    def _pending_acks(self, now: float, work: _Pass) -> None:
        """Carry out acks recorded whose escalation is not acknowledged (the leader that
        recorded one died before it was carried out), and drop acks whose incident ended
        (recorded, but not forgotten, by a leader that died)."""
        acks = self._acks.all()
        running = set()
        for esc in self._escalations.all():
            running.add(esc.incident)
            ack = acks.get(esc.incident)
            if ack is not None and not esc.acked:
                log.info("incident %s: carrying out the acknowledgement by %s recorded "
                         "before", esc.incident, ack.by)
                self._carry_out(ack, esc, now, work)
        work.stale_acks += [incident for incident in acks if incident not in running]

    def _carry_out(self, ack: Ack, esc: Escalation, now: float, work: _Pass) -> None:
        """Stop the escalation and tell the receivers notified so far who took it."""
        esc.acknowledge()
        work.changed[esc.incident] = esc
        targets = self._targets(esc.notified, esc.alerts)
        # A channel that does not echo its own acks (PagerDuty) knows already: an
        # acknowledge sent back would echo its own change.
        targets = [r for r in targets if self._receivers[r].kind != ack.source
                   or self._receivers[r].channel.echoes_own_acks]
        work.notifications += [
            replace(n, id=ack_notification_id(ack, n.receiver))
            for n in acknowledge_notifications(ack, targets, group_labels=esc.group_labels,
                                               alerts=esc.alerts, level=esc.level, now=now,
                                               external_url=self._external_url)]

    def _take(self, event: AlertEvent, now: float) -> None:
        labels = dict(event.alert.labels)
        fingerprint = event.alert.fingerprint
        if event.kind is EventKind.FIRING:
            self._firing[fingerprint] = labels
            plans = self._router.match(labels)
            if labels.get("alertname") == FAILING_ALERT:
                # Its own incident: grouped with ordinary alerts, it would make them skip
                # the failing receiver too (see failing.without_failing).
                plans = [replace(plan, group_by=None) for plan in plans]
            self._grouper.add(event, plans, now)
        else:
            self._firing.pop(fingerprint, None)
            self._grouper.add(event, (), now)

    def _muted_at(self, now: float) -> Callable[[Mapping[str, str]], bool]:
        def muted(labels: Mapping[str, str]) -> bool:
            return self._inhibitor.is_inhibited(labels) or self.silences.is_silenced(labels, now)
        return muted

    def _flush(self, due: DueGroup, now: float, work: _Pass) -> list[Notification]:
        """The notifications a flushed group owes, through its incident's escalation."""
        esc = self._escalations.get(due.incident) or work.changed.get(due.incident)
        if esc is None and due.kind is DueKind.RESOLVE:
            # Deferred and over before anyone heard: the first step learns what happened.
            first = self._policy(due.plan).steps[0].notify
            occurrence = self._occurrences.open(due.incident, due.alerts, now)
            return self._notify(due.incident, due.group_labels, due.alerts, first, now,
                                Action.RESOLVE, occurrence, ("resolve",), level=1)
        if esc is None:
            esc = Escalation(due.incident, due.plan.route_id, dict(due.group_labels),
                             self._policy(due.plan), now, alerts=due.alerts)
            self._occurrences.open(due.incident, due.alerts, now)
            work.changed[esc.incident] = esc
            return self._page(esc, esc.start(now), now)
        occurrence = self._occurrences.current(esc, now)
        if due.kind is DueKind.RESOLVE:
            work.ended.append(esc.incident)
            work.changed.pop(esc.incident, None)
            return self._notify(esc.incident, esc.group_labels, due.alerts, esc.notified, now,
                                Action.RESOLVE, occurrence, ("resolve",), level=esc.level,
                                ack=self._acks.get(esc.incident))
        esc.alerts = due.alerts
        work.changed[esc.incident] = esc
        if esc.acked:
            return []  # an acknowledged incident is told only that it ended
        occurrence.updates += 1
        announced = [[a.fingerprint, a.status.value] for a in due.alerts]
        return self._notify(esc.incident, esc.group_labels, due.alerts, esc.notified, now,
                            Action.TRIGGER, occurrence,
                            ("update", occurrence.updates, due.kind.value, announced),
                            level=esc.level, resolved_news=due.resolve_only)

    def _may_climb(self, esc: Escalation, now: float,
                   muted: Callable[[Mapping[str, str]], bool]) -> bool:
        """An escalation moves on only while its incident has an audible firing alert and
        its route may notify now (outside business hours a low alert waits, too)."""
        if esc.acked or esc.next_at is None or esc.next_at > now:
            return False
        if not any(a.status is AlertStatus.FIRING and not muted(a.labels)
                   for a in self._grouper.alerts(esc.incident)):
            return False
        plan = self._router.plan(esc.route)
        return plan is None or self._intervals.allows(plan.active_time_intervals,
                                                      plan.mute_time_intervals, now)

    def _page(self, esc: Escalation, page: Page, now: float) -> list[Notification]:
        alerts = tuple(a for a in self._grouper.alerts(esc.incident)
                       if a.status is AlertStatus.FIRING) or esc.alerts
        log.info("incident %s: level %d (%s) notifies %s", esc.incident, page.level,
                 page.reason, ", ".join(page.receivers))
        # Level and repeat count name the step: each is paged once per occurrence.
        return self._notify(esc.incident, esc.group_labels, alerts, page.receivers, now,
                            Action.TRIGGER, self._occurrences.current(esc, now),
                            ("page", page.level, esc.repeats), level=page.level)

    def _notify(self, incident: str, group_labels: Mapping[str, str],
                alerts: Sequence[AlertInfo], receivers: Iterable[str], now: float,
                action: Action, occurrence: Occurrence, what: tuple[object, ...], *,
                level: int, ack: Ack | None = None,
                resolved_news: bool = False) -> list[Notification]:
        """One notification per receiver, with ids derived from the incident's
        ``occurrence`` and ``what`` (the step, distinct within the occurrence)."""
        targets = self._targets(receivers, alerts)
        if action is Action.RESOLVE or resolved_news:
            targets = [r for r in targets if self._receivers[r].send_resolved]
        return [Notification(id=notification_id(incident, occurrence, r, *what),
                             receiver=r, action=action, incident=incident,
                             group_labels=dict(group_labels), alerts=tuple(alerts),
                             created_at=now, level=level,
                             acked_by=ack.by if ack else None, acked_at=ack.at if ack else None,
                             external_url=self._external_url)
                for r in targets]

    def _targets(self, receivers: Iterable[str], alerts: Sequence[AlertInfo]) -> list[str]:
        """Configured receivers, minus a broken channel its own failure alert is about."""
        known = [r for r in receivers if r in self._receivers]
        return without_failing(known, alerts, self._receivers)

    def _policy(self, plan: RoutePlan) -> EscalationPolicy:
        if plan.escalation is not None:
            return self._policies[plan.escalation]
        assert plan.receiver is not None  # the Router guarantees one of them
        return EscalationPolicy.single(plan.receiver)

    def _grouped_firing(self) -> dict[str, Mapping[str, str]]:
        """The labels of every firing alert the groups hold, by fingerprint."""
        incidents = [str(g["incident"]) for g in self._grouper.to_dict()["groups"]]
        return {a.fingerprint: a.labels for incident in incidents
                for a in self._grouper.alerts(incident) if a.status is AlertStatus.FIRING}

    # --- acknowledgement and status ---------------------------------------------------------

    def acknowledge(self, key: str, by: str, comment: str = "",
                    now: float | None = None, *, source: str = "api",
                    by_id: str = "") -> AckResult | None:
        """Acknowledge an incident, by its key or by the fingerprint of one of its alerts
        (every incident the alert was notified in); None if there is no such incident.

        The escalation stops and the receivers told so far hear who took it (except
        PagerDuty when the ack came from there). ``source`` is one of ``ACK_SOURCES``.
        """
        if source not in ACK_SOURCES:
            raise ValueError(f"unknown acknowledgement source {source!r}")
        at = self._clock() if now is None else now
        with self._lock:
            self._commit_unsaved()
            incidents = [e for e in self._escalations.all() if e.incident == key
                         or any(a.fingerprint == key for a in e.alerts)]
            if not incidents:
                return None
            # Recorded first: should a later step fail, the ack is recorded but not carried
            # out, and the next pass (or a retried acknowledge) carries it out.
            results = [self._acks.record(Ack(esc.incident, by, at, comment,
                                             None if esc.incident == key else key,
                                             source, by_id), first_notified_at=esc.started_at)
                       for esc in incidents]
            work = _Pass()
            for esc, (ack, new) in zip(incidents, results, strict=True):
                if esc.acked:
                    continue  # carried out already
                if new:
                    log.info("incident %s acknowledged by %s", esc.incident, by)
                else:
                    log.info("incident %s: carrying out the acknowledgement by %s recorded "
                             "before", esc.incident, ack.by)
                self._carry_out(ack, esc, at, work)
            self._commit(work)
        return AckResult(key, tuple(results))

    def withdraw_ack(self, incident: str, now: float | None = None) -> bool:
        """The ack of a running incident no longer holds (PagerDuty's ack timeout): its
        escalation climbs again from the step it was on, its next step after that step's
        full wait. False when the incident is not running or not acknowledged."""
        at = self._clock() if now is None else now
        with self._lock:
            self._commit_unsaved()
            esc = self._escalations.get(incident)
            if esc is None or not esc.acked:
                return False
            esc.resume(at)
            self._acks.withdraw(incident)
            self._escalations.save([esc])
            log.info("incident %s: the acknowledgement was withdrawn; escalation resumes at "
                     "level %d", incident, esc.level)
        self._wakeup.set()
        return True

    def announce(self, incident: str, note: str, now: float | None = None) -> bool:
        """Tell the receivers notified so far (PagerDuty aside) something about an
        acknowledged incident (that it was resolved in PagerDuty); once per note."""
        at = self._clock() if now is None else now
        with self._lock:
            self._commit_unsaved()
            esc = self._escalations.get(incident)
            ack = self._acks.get(incident)
            if esc is None or ack is None:
                return False
            targets = [r for r in self._targets(esc.notified, esc.alerts)
                       if self._receivers[r].channel.echoes_own_acks]
            work = _Pass()
            work.notifications = [
                replace(n, id=ack_notification_id(ack, n.receiver, note), ack_note=note)
                for n in acknowledge_notifications(ack, targets, group_labels=esc.group_labels,
                                                   alerts=esc.alerts, level=esc.level, now=at,
                                                   external_url=self._external_url)]
            self._commit(work)
        return True

    def incidents(self) -> list[Escalation]:
        """Every running incident."""
        with self._lock:
            return self._escalations.all()

    def incident(self, key: str) -> Escalation | None:
        """The running incident with this key (None: unknown or ended)."""
        with self._lock:
            return self._escalations.get(key)

    def ack_of(self, incident: str) -> Ack | None:
        """The ack in force of a running incident."""
        return self._acks.get(incident)

    def ack_log(self, incident: str) -> list[dict[str, Any]]:
        """Every acknowledgement an incident key took, kept after it ended."""
        return self._acks.log(incident)

    def receivers(self) -> Mapping[str, Any]:
        """The configured receivers by name."""
        return dict(self._receivers)

    def status(self, alerts: Iterable[tuple[str, Mapping[str, str]]],
               now: float | None = None) -> dict[str, dict[str, Any]]:
        """The delivery state of alerts (fingerprint, labels) for the API, by fingerprint:
        escalation level, ack, the silences and whether an inhibition mutes it."""
        at = self._clock() if now is None else now
        with self._lock:
            incidents: dict[str, list[Escalation]] = {}
            for esc in self._escalations.all():
                for alert in esc.alerts:
                    incidents.setdefault(alert.fingerprint, []).append(esc)
            found = {}
            for fingerprint, labels in alerts:
                mine = incidents.get(fingerprint, [])
                acked = [(a, e) for a, e in ((self._acks.get(e.incident), e) for e in mine)
                         if a]
                ack = None
                if acked:
                    first, esc = acked[0]
                    ack = {**first.as_dict(),
                           "seconds_to_ack": max(0.0, first.at - esc.started_at)}
                found[fingerprint] = {
                    "level": max((e.level for e in mine), default=None),
                    "incidents": sorted(e.incident for e in mine),
                    "ack": ack,
                    "silenced_by": self.silences.silenced_by(labels, at),
                    "inhibited": self._inhibitor.is_inhibited(labels),
                }
            return found

    def samples(self, now: float) -> list[Sample]:
        """The pipeline's metrics (see ``SPECS``), for ``MemoryStore.publish(SOURCE, …)``."""
        with self._lock:
            levels: dict[tuple[int, bool], int] = {}
            for esc in self._escalations.all():
                levels[(esc.level, esc.acked)] = levels.get((esc.level, esc.acked), 0) + 1
            out = [Sample("piggywatch_alert_incidents",
                          labels_of(level=str(level), acknowledged=str(acked).lower()),
                          count, now) for (level, acked), count in sorted(levels.items())]
            out += [
                Sample("piggywatch_alert_groups", (), len(self._grouper), now),
            ]
            out += [Sample("piggywatch_alert_acks_total", labels_of(source=source), count, now)
                    for source, count in sorted(self._acks.recorded.items())]
            out += [
                Sample("piggywatch_alerts_silenced", (), self._muted[0], now),
                Sample("piggywatch_alerts_inhibited", (), self._muted[1], now),
            ]
            out += [Sample("piggywatch_notifications_created_total", labels_of(action=a), n, now)
                    for a, n in sorted(self._created.items())]
        return out

