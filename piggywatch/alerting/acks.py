"""Acknowledgements: somebody took an incident. Durable, with who, when and why.

An ack is recorded per incident; acking one alert (by fingerprint) acks the incident it
belongs to, because that is what was paged. The receivers already told about the incident
are then told it was acknowledged (PagerDuty ``acknowledge``, the Slack message updated,
a mail in the thread), and its escalation stops climbing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from piggywatch.alerting.model import Action, AlertInfo, Notification
from piggywatch.state import StateLike, connect

# Where an acknowledgement can come from (the ``source`` label of piggywatch_alert_acks_total).
ACK_SOURCES = ("api", "cli", "pagerduty", "slack", "email")


@dataclass(frozen=True)
class Ack:
    """Who took an incident, when, through which alert, where, and what they said.

    ``source`` is one of ``ACK_SOURCES``; ``by_id`` the person's id there (a Slack user id,
    a PagerDuty user id, the mail address a link was sent to), ``by`` their name."""

    incident: str
    by: str
    at: float
    comment: str = ""
    fingerprint: str | None = None
    source: str = "api"
    by_id: str = ""

    def as_dict(self) -> dict[str, object]:
        """The API's shape."""
        return {"by": self.by, "at": self.at, "comment": self.comment,
                "fingerprint": self.fingerprint, "source": self.source, "by_id": self.by_id}


class Acks:
    """Acknowledgements in the state database, kept while their incident lasts. Thread-safe."""

    def __init__(self, state: StateLike) -> None:
        # An acknowledgement must survive a power cut: every write is durable (synced).
        self._conn = connect(state)
        self._lock = threading.Lock()
        rows = self._conn.query(f"SELECT {_COLUMNS} FROM escalation_acks")
        self._acks = {row[0]: Ack(*row) for row in rows}
        # Acks taken since start by source, for piggywatch_alert_acks_total{source}.
        self.recorded: dict[str, int] = dict.fromkeys(ACK_SOURCES, 0)

    def record(self, ack: Ack, first_notified_at: float | None = None) -> tuple[Ack, bool]:
        """Store ``ack`` unless the incident is already acknowledged.

        Returns the ack in force and whether it is new: a second ack is not an error (two
        people answering the same page), but the first one keeps the credit. A new ack is
        also written to the ack log with the time since ``first_notified_at`` (the incident's
        first notification), which stays after the incident ends.
        """
        with self._lock:
            existing = self._acks.get(ack.incident)
            if existing is not None:
                return existing, False
            with self._conn.transaction(durable=True) as tx:
                inserted = tx.query(
                    "INSERT INTO escalation_acks (incident, fingerprint, acked_by, acked_at, "
                    "comment, source, by_id) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (incident) DO NOTHING RETURNING incident",
                    (ack.incident, ack.fingerprint, ack.by, ack.at, ack.comment, ack.source,
                     ack.by_id))
                row = None if inserted else tx.one(
                    f"SELECT {_COLUMNS} FROM escalation_acks WHERE incident = ?",
                    (ack.incident,))
                if inserted:
                    waited = None if first_notified_at is None else max(
                        0.0, ack.at - first_notified_at)
                    tx.execute(
                        "INSERT INTO ack_log (incident, source, acked_by, by_id, acked_at, "
                        "comment, first_notified_at, seconds_to_ack) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (ack.incident, ack.source, ack.by, ack.by_id, ack.at, ack.comment,
                         first_notified_at, waited))
            if row is not None:
                # Another replica sharing the state took the incident first: its ack stands.
                existing = self._acks[ack.incident] = Ack(*row)
                return existing, False
            self._acks[ack.incident] = ack
            self.recorded[ack.source] = self.recorded.get(ack.source, 0) + 1
            return ack, True

    def get(self, incident: str) -> Ack | None:
        """The ack of ``incident``, if any."""
        with self._lock:
            return self._acks.get(incident)

    def all(self) -> Mapping[str, Ack]:
        """Every ack in force, by incident."""
        with self._lock:
            return dict(self._acks)

    def forget(self, incidents: Iterable[str]) -> None:
        """Drop the acks of incidents that ended (a new incident starts unacknowledged)."""
        keys = [(k,) for k in incidents]
        with self._lock:
            if keys:
                self._conn.executemany("DELETE FROM escalation_acks WHERE incident = ?", keys,
                                       durable=True)
            for (key,) in keys:
                self._acks.pop(key, None)

    def withdraw(self, incident: str) -> Ack | None:
        """Drop the ack in force of a running incident (PagerDuty's ack timed out there):
        the ack log keeps it. Returns the ack withdrawn."""
        with self._lock:
            self._conn.execute("DELETE FROM escalation_acks WHERE incident = ?", (incident,),
                               durable=True)
            return self._acks.pop(incident, None)

    def log(self, incident: str) -> list[dict[str, object]]:
        """The ack log of an incident key (every occurrence), oldest first."""
        with self._lock:
            rows = self._conn.query(
                "SELECT source, acked_by, by_id, acked_at, comment, first_notified_at, "
                "seconds_to_ack FROM ack_log WHERE incident = ? ORDER BY acked_at, id",
                (incident,))
        return [{"source": r[0], "by": r[1], "by_id": r[2], "at": r[3], "comment": r[4],
                 "first_notified_at": r[5], "seconds_to_ack": r[6]} for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


# Ack's field order
_COLUMNS = "incident, acked_by, acked_at, comment, fingerprint, source, by_id"


def acknowledge_notifications(ack: Ack, receivers: Iterable[str], *, group_labels:
                              Mapping[str, str], alerts: tuple[AlertInfo, ...], level: int,
                              now: float, external_url: str = "") -> list[Notification]:
    """The ``acknowledge`` notifications for the receivers already told about the incident."""
    return [Notification(id=uuid.uuid4().hex, receiver=receiver, action=Action.ACKNOWLEDGE,
                         incident=ack.incident, group_labels=dict(group_labels), alerts=alerts,
                         created_at=now, level=level, acked_by=ack.by, acked_at=ack.at,
                         ack_source=ack.source, ack_note=ack.comment,
                         external_url=external_url)
            for receiver in receivers]
