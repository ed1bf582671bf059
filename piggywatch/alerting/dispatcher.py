"""The delivery pipeline, in order, in one place.

    alert event → inhibit → silence → route → group → time-interval deferral → escalate
                → outbox

Events from the rules are queued in the inbox and taken by the dispatcher's own thread at
once (so with ``group_wait: 0`` a page leaves within milliseconds of the evaluation that
fired it), and the thread also wakes every second for group flushes and escalation timers.
Inhibition and silences are judged when a group flushes (as Alertmanager does), so an
alert that stops being muted is announced at its group's next flush. Each flushed group is
an incident: its escalation decides who hears of it first and who next, acknowledgements
stop the climb, and the outbox delivers.

The groups, escalations and acks are durable in the state file, so a restart neither
re-pages an incident nor forgets one half-way up its chain.

What is held (groups, escalations, acks, silences) and how a pass's work is committed live
in ``incident_book.py``; status and acknowledgement for the API and the hooks in
``incidents.py``; what flows in (events, the outbox's failures) is data in ``inbox.py``,
drained here. A leader that dies between a pass and its commit leaves the escalations and
groups as they were before the pass: its successor redoes the step, and
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

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from piggywatch.alerting.acks import Ack
from piggywatch.alerting.escalation import Escalation, EscalationPolicy, Page
from piggywatch.alerting.failing import FAILING_ALERT
from piggywatch.alerting.grouping import DueGroup, DueKind
from piggywatch.alerting.inbox import Inbox
from piggywatch.alerting.incident_book import IncidentBook, Sender, Work
from piggywatch.alerting.incidents import Incidents
from piggywatch.alerting.inhibit import Inhibitor
from piggywatch.alerting.model import Action, AlertInfo, AlertStatus, Notification
from piggywatch.alerting.notification_ids import Occurrence, notification_id
from piggywatch.alerting.routing import RoutePlan, Router
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.alerting.time_intervals import TimeIntervals
from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.state import STATE_ERRORS, NotLeader, StateLike

__all__ = ["FAILING_ALERT", "Dispatcher", "Sender"]

log = logging.getLogger(__name__)

# The longest the thread sleeps when nothing is due: timers are checked at least this often.
TICK_SECONDS = 1.0


class Dispatcher:
    """Takes alert events and turns them into notifications, on its own thread.

    ``inbox`` (delivery's; a new one by default) is where the rules put events and the
    outbox its permanent failures; ``incidents`` serves status and acknowledgement on the
    same incidents.
    """

    def __init__(self, settings: AlertingSettings, sender: Sender, state: StateLike, *,
                 clock: Callable[[], float] = time.time, external_url: str = "",
                 inbox: Inbox | None = None) -> None:
        if settings.route is None:
            raise ValueError("alert delivery needs a route")
        self._policies = {name: EscalationPolicy.from_settings(name, steps)
                          for name, steps in settings.escalations.items()}
        # AlertingSettings checked that every receiver and escalation named exists.
        self._router = Router(settings.route)
        self._intervals = TimeIntervals(settings.time_intervals)
        self._inhibitor = Inhibitor(settings.inhibit_rules)
        self._clock = clock
        self.inbox = inbox if inbox is not None else Inbox()
        self._book = IncidentBook(state, sender, settings.receivers, self._intervals,
                                  external_url=external_url)
        self.incidents = Incidents(self._book, self._inhibitor, self.inbox, clock=clock)
        self._firing = self._grouped_firing()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, event: AlertEvent) -> None:
        """Queue one event in the inbox (for callers holding the dispatcher: tests, benches;
        the rules are handed the inbox itself)."""
        self.inbox(event)

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
        self.inbox.wake()
        if self._thread is not None:
            self._thread.join(5.0)

    def close(self) -> None:
        """Stop and close the state file."""
        self.stop()
        self._book.close()

    def reconcile(self, firing: Sequence[AlertEvent], now: float) -> None:
        """Bring the groups in line with what the rules say fires (see ``start``)."""
        book = self._book
        with book.lock:
            keep = {e.alert.fingerprint for e in firing}
            keep |= book.failing.fingerprints(self._firing)
            for incident in book.grouper.reconcile(keep, now):
                log.info("incident %s: alerts resolved while PiggyWatch was down", incident)
            # What resolved meanwhile must not inhibit anything any more.
            self._firing = self._grouped_firing()
            self.inbox.put(e for e in firing if e.alert.fingerprint not in self._firing)

    def _loop(self) -> None:
        failing = ""  # the state error the passes fail with, logged once
        while not self._stopping.is_set():
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
            if not self._stopping.is_set():
                self.inbox.wait(self._sleep())

    def _sleep(self) -> float:
        now = self._clock()
        book = self._book
        with book.lock:
            times = [t for t in (book.grouper.next_wakeup(), book.escalations.next_due())
                     if t is not None]
        return max(0.0, min([TICK_SECONDS, *(t - now for t in times)]))

    # --- the pipeline ---------------------------------------------------------------------

    def run_pass(self, now: float | None = None) -> list[Notification]:
        """Drain the inbox, flush due groups, run due escalation steps, hand the
        notifications to the outbox and save the groups; return the notifications."""
        at = self._clock() if now is None else now
        book = self._book
        with book.lock:
            book.commit_unsaved()
            drained = self.inbox.drain()
            work = Work()
            book.pending_acks(at, work)
            events = list(drained.events)
            for failure in drained.failures:
                # A channel refused for good: PiggyWatchNotificationFailing, which reaches
                # the incident's other receivers (never the failing one).
                event = book.failing.failed(failure.notification.receiver,
                                            failure.delivery.detail, at)
                if event is not None:
                    events.append(event)
            for event in events:
                self._take_one(event, at)
            for event in book.failing.recovered(at):
                self._take_one(event, at)
            self._inhibitor.set_firing(self._firing.values())
            muted = self._muted_at(at)
            for due in book.grouper.due(at, muted):
                work.notifications += self._flush(due, at, work)
            for esc in book.escalations.all():
                if esc.incident in work.changed or esc.incident in work.ended:
                    continue  # its group just spoke for it
                if self._may_climb(esc, at, muted):
                    page = esc.due(at)
                    if page is not None:
                        work.changed[esc.incident] = esc
                        work.notifications += self._page(esc, page, at)
            work.save_groups = bool(events or work.changed or work.ended or
                                    work.notifications)
            book.occurrences.forget(at, lambda incident: incident in book.grouper or
                                    book.escalations.get(incident) is not None)
            book.commit(work)
            silenced = sum(1 for labels in self._firing.values()
                           if book.silences.is_silenced(labels, at))
            inhibited = sum(1 for labels in self._firing.values()
                            if self._inhibitor.is_inhibited(labels))
            book.muted = (silenced, inhibited)
        if work.ended:
            book.tell_ended(work.ended)
        return work.notifications

    def _take_one(self, event: AlertEvent, at: float) -> None:
        try:
            self._take(event, at)
        except Exception:
            # A bug: that event is lost, and logged; the rest of the drained batch, other
            # alerts' pages among them, still goes out.
            log.exception("could not take the %s event of %s", event.kind.value, event.rule)

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
            self._book.grouper.add(event, plans, now)
        else:
            self._firing.pop(fingerprint, None)
            self._book.grouper.add(event, (), now)

    def _muted_at(self, now: float) -> Callable[[Mapping[str, str]], bool]:
        silences = self._book.silences

        def muted(labels: Mapping[str, str]) -> bool:
            return self._inhibitor.is_inhibited(labels) or silences.is_silenced(labels, now)
        return muted

    def _flush(self, due: DueGroup, now: float, work: Work) -> list[Notification]:
        """The notifications a flushed group owes, through its incident's escalation."""
        book = self._book
        esc = book.escalations.get(due.incident) or work.changed.get(due.incident)
        if esc is None and due.kind is DueKind.RESOLVE:
            # Deferred and over before anyone heard: the first step learns what happened.
            first = self._policy(due.plan).steps[0].notify
            occurrence = book.occurrences.open(due.incident, due.alerts, now)
            return self._notify(due.incident, due.group_labels, due.alerts, first, now,
                                Action.RESOLVE, occurrence, ("resolve",), level=1)
        if esc is None:
            esc = Escalation(due.incident, due.plan.route_id, dict(due.group_labels),
                             self._policy(due.plan), now, alerts=due.alerts)
            book.occurrences.open(due.incident, due.alerts, now)
            work.changed[esc.incident] = esc
            return self._page(esc, esc.start(now), now)
        occurrence = book.occurrences.current(esc, now)
        if due.kind is DueKind.RESOLVE:
            work.ended.append(esc.incident)
            work.changed.pop(esc.incident, None)
            return self._notify(esc.incident, esc.group_labels, due.alerts, esc.notified, now,
                                Action.RESOLVE, occurrence, ("resolve",), level=esc.level,
                                ack=book.acks.get(esc.incident))
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
                   for a in self._book.grouper.alerts(esc.incident)):
            return False
        plan = self._router.plan(esc.route)
        return plan is None or self._intervals.allows(plan.active_time_intervals,
                                                      plan.mute_time_intervals, now)

    def _page(self, esc: Escalation, page: Page, now: float) -> list[Notification]:
        alerts = tuple(a for a in self._book.grouper.alerts(esc.incident)
                       if a.status is AlertStatus.FIRING) or esc.alerts
        log.info("incident %s: level %d (%s) notifies %s", esc.incident, page.level,
                 page.reason, ", ".join(page.receivers))
        # Level and repeat count name the step: each is paged once per occurrence.
        return self._notify(esc.incident, esc.group_labels, alerts, page.receivers, now,
                            Action.TRIGGER, self._book.occurrences.current(esc, now),
                            ("page", page.level, esc.repeats), level=page.level)

    def _notify(self, incident: str, group_labels: Mapping[str, str],
                alerts: Sequence[AlertInfo], receivers: Iterable[str], now: float,
                action: Action, occurrence: Occurrence, what: tuple[object, ...], *,
                level: int, ack: Ack | None = None,
                resolved_news: bool = False) -> list[Notification]:
        """One notification per receiver, with ids derived from the incident's
        ``occurrence`` and ``what`` (the step, distinct within the occurrence)."""
        targets = self._book.targets(receivers, alerts)
        if action is Action.RESOLVE or resolved_news:
            targets = [r for r in targets if self._book.receivers[r].send_resolved]
        return [Notification(id=notification_id(incident, occurrence, r, *what),
                             receiver=r, action=action, incident=incident,
                             group_labels=dict(group_labels), alerts=tuple(alerts),
                             created_at=now, level=level,
                             acked_by=ack.by if ack else None, acked_at=ack.at if ack else None,
                             external_url=self._book.external_url)
                for r in targets]

    def _policy(self, plan: RoutePlan) -> EscalationPolicy:
        if plan.escalation is not None:
            return self._policies[plan.escalation]
        assert plan.receiver is not None  # the Router guarantees one of them
        return EscalationPolicy.single(plan.receiver)

    def _grouped_firing(self) -> dict[str, Mapping[str, str]]:
        """The labels of every firing alert the groups hold, by fingerprint."""
        grouper = self._book.grouper
        incidents = [str(g["incident"]) for g in grouper.to_dict()["groups"]]
        return {a.fingerprint: a.labels for incident in incidents
                for a in grouper.alerts(incident) if a.status is AlertStatus.FIRING}
