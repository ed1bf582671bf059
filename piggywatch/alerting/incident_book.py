"""The incidents as the delivery pipeline holds them, durable in the state database: the
alert groups (with the failing channels and the notification-id counters), the running
escalations, the acks and the silences; the lock every change takes; and the commit of one
pass's (or one acknowledgement's) work.

The dispatcher's pass and the incident desk (``incidents.py``: status and acknowledgement)
both change incidents through this book, so there is one commit order and one place where
a failed commit stays pending:

A pass (or an acknowledgement) changes memory first and commits at its end: the
notifications to the outbox, then the escalations and groups in one transaction. If the
state database fails on the way, the work stays pending, exactly as computed, and is
committed again before anything else: the outbox drops what it already took (same ids),
so nothing is lost and nothing is sent twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from piggywatch.alerting.acks import Ack, Acks, acknowledge_notifications
from piggywatch.alerting.escalation import Escalation, EscalationStore
from piggywatch.alerting.failing import FailingChannels, without_failing
from piggywatch.alerting.grouping import Grouper
from piggywatch.alerting.model import Action, AlertInfo, Notification
from piggywatch.alerting.notification_ids import Occurrences, ack_notification_id
from piggywatch.alerting.settings import Receiver
from piggywatch.alerting.silences import Silences
from piggywatch.alerting.time_intervals import TimeIntervals
from piggywatch.state import StateLike

__all__ = ["IncidentBook", "Sender", "Work"]

log = logging.getLogger("piggywatch.alerting.dispatcher")


class Sender(Protocol):
    """Where notifications go: the outbox."""

    def enqueue_many(self, notifications: Sequence[Notification]) -> list[bool]:
        """Commit notifications for delivery, together (one disk sync)."""
        ...


@dataclass
class Work:
    """What one pass (or acknowledgement) produced, committed together at its end."""

    notifications: list[Notification] = field(default_factory=list)
    changed: dict[str, Escalation] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)
    stale_acks: list[str] = field(default_factory=list)  # acks of no running escalation
    save_groups: bool = False  # the groups changed: save them too
    enqueued: set[str] = field(default_factory=set)  # ids the outbox took already

    def empty(self) -> bool:
        """Nothing to commit."""
        return not (self.notifications or self.changed or self.ended or self.stale_acks
                    or self.save_groups)


class IncidentBook:
    """Groups, escalations, acks and silences of one leader, and their commit."""

    def __init__(self, state: StateLike, sender: Sender, receivers: Sequence[Receiver],
                 intervals: TimeIntervals, *, external_url: str = "") -> None:
        self.receivers: Mapping[str, Receiver] = {r.name: r for r in receivers}
        self.external_url = external_url
        self._sender = sender
        self.silences = Silences(state)
        self.acks = Acks(state)
        self.escalations = EscalationStore(state)
        saved = json.loads(self.escalations.groups() or "{}")
        self.grouper = Grouper.from_dict(saved.get("grouper", {}), intervals)
        self.failing = FailingChannels(saved.get("failing", {}))
        self.occurrences = Occurrences(saved.get("occurrences", {}))
        # Every change to the book holds it; re-entrant for a pass's nested steps.
        self.lock = threading.RLock()
        # Figures for the metrics: notifications created by action; alerts silenced and
        # inhibited at the last pass.
        self.created: dict[str, int] = {a.value: 0 for a in Action}
        self.muted = (0, 0)
        # Called (outside the lock) with the keys of incidents that ended in a pass.
        self.on_ended: list[Callable[[list[str]], None]] = []
        # Work whose commit failed: committed before anything else.
        self._unsaved: Work | None = None

    def commit(self, work: Work) -> None:
        """Hand the notifications to the outbox, then save the escalations (and the groups)
        and forget the acks of ended incidents. On a failure the work stays pending, for
        ``commit_unsaved``. Call with ``lock`` held."""
        if work.empty():
            return
        self._unsaved = work
        # In one transaction: a storm's flush is a hundred notifications, and a disk sync
        # each made that pass take half a second.
        new: dict[str, Notification] = {}
        for notification in work.notifications:
            if notification.id not in work.enqueued:
                new.setdefault(notification.id, notification)
        if new:
            self._sender.enqueue_many(list(new.values()))
            for notification in new.values():
                work.enqueued.add(notification.id)
                self.created[notification.action.value] += 1
        if work.changed or work.ended or work.save_groups:
            # The groups as they are now: never behind what the notifications announced.
            groups = json.dumps({"grouper": self.grouper.to_dict(),
                                 "failing": self.failing.last_failure,
                                 "occurrences": self.occurrences.to_dict()}) \
                if work.save_groups else None
            self.escalations.save(work.changed.values(), work.ended, groups)
        self.acks.forget([*work.ended, *work.stale_acks])
        self._unsaved = None

    def commit_unsaved(self) -> None:
        """Commit the work a failed commit left pending (raises while it still fails)."""
        if self._unsaved is not None:
            self.commit(self._unsaved)

    def targets(self, receivers: Iterable[str], alerts: Sequence[AlertInfo]) -> list[str]:
        """Configured receivers, minus a broken channel its own failure alert is about."""
        known = [r for r in receivers if r in self.receivers]
        return without_failing(known, alerts, self.receivers)

    def carry_out(self, ack: Ack, esc: Escalation, now: float, work: Work) -> None:
        """Stop the escalation and tell the receivers notified so far who took it."""
        esc.acknowledge()
        work.changed[esc.incident] = esc
        targets = self.targets(esc.notified, esc.alerts)
        # A channel that does not echo its own acks (PagerDuty) knows already: an
        # acknowledge sent back would echo its own change.
        targets = [r for r in targets if self.receivers[r].kind != ack.source
                   or self.receivers[r].channel.echoes_own_acks]
        work.notifications += [
            replace(n, id=ack_notification_id(ack, n.receiver))
            for n in acknowledge_notifications(ack, targets, group_labels=esc.group_labels,
                                               alerts=esc.alerts, level=esc.level, now=now,
                                               external_url=self.external_url)]

    def pending_acks(self, now: float, work: Work) -> None:
        """Carry out acks recorded whose escalation is not acknowledged (the leader that
        recorded one died before it was carried out), and drop acks whose incident ended
        (recorded, but not forgotten, by a leader that died)."""
        acks = self.acks.all()
        running = set()
        for esc in self.escalations.all():
            running.add(esc.incident)
            ack = acks.get(esc.incident)
            if ack is not None and not esc.acked:
                log.info("incident %s: carrying out the acknowledgement by %s recorded "
                         "before", esc.incident, ack.by)
                self.carry_out(ack, esc, now, work)
        work.stale_acks += [incident for incident in acks if incident not in running]

    def tell_ended(self, incidents: list[str]) -> None:
        """Hand the keys of incidents that ended to ``on_ended`` (call without the lock)."""
        for callback in self.on_ended:
            try:
                callback(list(incidents))
            except Exception:
                log.exception("a callback for ended incidents failed")

    def close(self) -> None:
        """Close the state database's connections."""
        for db in (self.silences, self.acks, self.escalations):
            db.close()
