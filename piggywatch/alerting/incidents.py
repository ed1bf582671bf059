"""The incident desk: status and acknowledgement of running incidents, for the API, the
acknowledgement hooks and the metrics.

It acts on the same ``IncidentBook`` as the dispatcher's pass, under the book's lock, and
commits the same way: an ack is recorded first, so should a later step fail the ack is
recorded but not carried out, and the next pass (a new leader's first) carries it out,
with notification ids derived from the ack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from piggywatch.alerting.acks import ACK_SOURCES, Ack, acknowledge_notifications
from piggywatch.alerting.escalation import Escalation
from piggywatch.alerting.inbox import Inbox
from piggywatch.alerting.incident_book import IncidentBook, Work
from piggywatch.alerting.inhibit import Inhibitor
from piggywatch.alerting.notification_ids import ack_notification_id
from piggywatch.alerting.settings import Receiver
from piggywatch.alerting.silences import Silences
from piggywatch.store.samples import MetricKind, MetricSpec, Sample, labels_of

__all__ = ["SPECS", "STORE_KEY", "AckResult", "Incidents"]

log = logging.getLogger("piggywatch.alerting.dispatcher")

STORE_KEY = "piggywatch/alerting"

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


@dataclass(frozen=True)
class AckResult:
    """The outcome of an acknowledgement: the ack in force per incident, and whether new."""

    key: str  # the incident or alert fingerprint asked for
    acks: tuple[tuple[Ack, bool], ...]


class Incidents:
    """Running incidents: what they are, who acknowledged them, and acknowledging them."""

    def __init__(self, book: IncidentBook, inhibitor: Inhibitor, inbox: Inbox, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._book = book
        self._inhibitor = inhibitor
        self._inbox = inbox
        self._clock = clock

    @property
    def silences(self) -> Silences:
        """The silences (kept with the incidents, judged by the dispatcher)."""
        return self._book.silences

    @property
    def on_ended(self) -> list[Callable[[list[str]], None]]:
        """Called (outside the lock) with the keys of incidents that ended in a pass."""
        return self._book.on_ended

    # --- acknowledgement ------------------------------------------------------------------

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
        book = self._book
        with book.lock:
            book.commit_unsaved()
            incidents = [e for e in book.escalations.all() if e.incident == key
                         or any(a.fingerprint == key for a in e.alerts)]
            if not incidents:
                return None
            # Recorded first: should a later step fail, the ack is recorded but not carried
            # out, and the next pass (or a retried acknowledge) carries it out.
            results = [book.acks.record(Ack(esc.incident, by, at, comment,
                                            None if esc.incident == key else key,
                                            source, by_id), first_notified_at=esc.started_at)
                       for esc in incidents]
            work = Work()
            for esc, (ack, new) in zip(incidents, results, strict=True):
                if esc.acked:
                    continue  # carried out already
                if new:
                    log.info("incident %s acknowledged by %s", esc.incident, by)
                else:
                    log.info("incident %s: carrying out the acknowledgement by %s recorded "
                             "before", esc.incident, ack.by)
                book.carry_out(ack, esc, at, work)
            book.commit(work)
        return AckResult(key, tuple(results))

    def withdraw_ack(self, incident: str, now: float | None = None) -> bool:
        """The ack of a running incident no longer holds (PagerDuty's ack timeout): its
        escalation climbs again from the step it was on, its next step after that step's
        full wait. False when the incident is not running or not acknowledged."""
        at = self._clock() if now is None else now
        book = self._book
        with book.lock:
            book.commit_unsaved()
            esc = book.escalations.get(incident)
            if esc is None or not esc.acked:
                return False
            esc.resume(at)
            book.acks.withdraw(incident)
            book.escalations.save([esc])
            log.info("incident %s: the acknowledgement was withdrawn; escalation resumes at "
                     "level %d", incident, esc.level)
        self._inbox.wake()  # its timer runs again
        return True

    def announce(self, incident: str, note: str, now: float | None = None) -> bool:
        """Tell the receivers notified so far (PagerDuty aside) something about an
        acknowledged incident (that it was resolved in PagerDuty); once per note."""
        at = self._clock() if now is None else now
        book = self._book
        with book.lock:
            book.commit_unsaved()
            esc = book.escalations.get(incident)
            ack = book.acks.get(incident)
            if esc is None or ack is None:
                return False
            targets = [r for r in book.targets(esc.notified, esc.alerts)
                       if book.receivers[r].channel.echoes_own_acks]
            work = Work()
            work.notifications = [
                replace(n, id=ack_notification_id(ack, n.receiver, note), ack_note=note)
                for n in acknowledge_notifications(ack, targets, group_labels=esc.group_labels,
                                                   alerts=esc.alerts, level=esc.level, now=at,
                                                   external_url=book.external_url)]
            book.commit(work)
        return True

    # --- status ---------------------------------------------------------------------------

    def incidents(self) -> list[Escalation]:
        """Every running incident."""
        with self._book.lock:
            return self._book.escalations.all()

    def incident(self, key: str) -> Escalation | None:
        """The running incident with this key (None: unknown or ended)."""
        with self._book.lock:
            return self._book.escalations.get(key)

    def ack_of(self, incident: str) -> Ack | None:
        """The ack in force of a running incident."""
        return self._book.acks.get(incident)

    def ack_log(self, incident: str) -> list[dict[str, Any]]:
        """Every acknowledgement an incident key took, kept after it ended."""
        return self._book.acks.log(incident)

    def receivers(self) -> Mapping[str, Receiver]:
        """The configured receivers by name."""
        return dict(self._book.receivers)

    def status(self, alerts: Iterable[tuple[str, Mapping[str, str]]],
               now: float | None = None) -> dict[str, dict[str, Any]]:
        """The delivery status of alerts (fingerprint, labels) for the API, by fingerprint:
        escalation level, ack, the silences and whether an inhibition mutes it."""
        at = self._clock() if now is None else now
        book = self._book
        with book.lock:
            incidents: dict[str, list[Escalation]] = {}
            for esc in book.escalations.all():
                for alert in esc.alerts:
                    incidents.setdefault(alert.fingerprint, []).append(esc)
            found = {}
            for fingerprint, labels in alerts:
                mine = incidents.get(fingerprint, [])
                acked = [(a, e) for a, e in ((book.acks.get(e.incident), e) for e in mine)
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
                    "silenced_by": book.silences.silenced_by(labels, at),
                    "inhibited": self._inhibitor.is_inhibited(labels),
                }
            return found

    def samples(self, now: float) -> list[Sample]:
        """The pipeline's metrics (see ``SPECS``), for ``MemoryStore.publish(STORE_KEY, …)``."""
        book = self._book
        with book.lock:
            levels: dict[tuple[int, bool], int] = {}
            for esc in book.escalations.all():
                levels[(esc.level, esc.acked)] = levels.get((esc.level, esc.acked), 0) + 1
            out = [Sample("piggywatch_alert_incidents",
                          labels_of(level=str(level), acknowledged=str(acked).lower()),
                          count, now) for (level, acked), count in sorted(levels.items())]
            out += [
                Sample("piggywatch_alert_groups", (), len(book.grouper), now),
            ]
            out += [Sample("piggywatch_alert_acks_total", labels_of(source=source), count, now)
                    for source, count in sorted(book.acks.recorded.items())]
            out += [
                Sample("piggywatch_alerts_silenced", (), book.muted[0], now),
                Sample("piggywatch_alerts_inhibited", (), book.muted[1], now),
            ]
            out += [Sample("piggywatch_notifications_created_total", labels_of(action=a), n, now)
                    for a, n in sorted(book.created.items())]
        return out
