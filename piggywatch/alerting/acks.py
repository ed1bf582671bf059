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


@dataclass(frozen=True)
class Ack:
    """Who took an incident, when, through which alert, and what they said."""

    incident: str
    by: str
    at: float
    comment: str = ""
    fingerprint: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The API's shape."""
        return {"by": self.by, "at": self.at, "comment": self.comment,
                "fingerprint": self.fingerprint}


class Acks:
    """Acknowledgements in the state database, kept while their incident lasts. Thread-safe."""

    def __init__(self, state: StateLike) -> None:
        # An acknowledgement must survive a power cut: every write is durable (synced).
        self._conn = connect(state)
        self._lock = threading.Lock()
        rows = self._conn.query(f"SELECT {_COLUMNS} FROM escalation_acks")
        self._acks = {row[0]: Ack(*row) for row in rows}
        self.recorded = 0  # acks taken since start, for the metrics

    def record(self, ack: Ack) -> tuple[Ack, bool]:
        """Store ``ack`` unless the incident is already acknowledged.

        Returns the ack in force and whether it is new: a second ack is not an error (two
        people answering the same page), but the first one keeps the credit.
        """
        with self._lock:
            existing = self._acks.get(ack.incident)
            if existing is not None:
                return existing, False
            with self._conn.transaction(durable=True) as tx:
                inserted = tx.query(
                    "INSERT INTO escalation_acks (incident, fingerprint, acked_by, acked_at, "
                    "comment) VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident) DO NOTHING "
                    "RETURNING incident",
                    (ack.incident, ack.fingerprint, ack.by, ack.at, ack.comment))
                row = None if inserted else tx.one(
                    f"SELECT {_COLUMNS} FROM escalation_acks WHERE incident = ?",
                    (ack.incident,))
            if row is not None:
                # Another replica sharing the state took the incident first: its ack stands.
                existing = self._acks[ack.incident] = Ack(*row)
                return existing, False
            self._acks[ack.incident] = ack
            self.recorded += 1
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

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


_COLUMNS = "incident, acked_by, acked_at, comment, fingerprint"  # Ack's field order


def acknowledge_notifications(ack: Ack, receivers: Iterable[str], *, group_labels:
                              Mapping[str, str], alerts: tuple[AlertInfo, ...], level: int,
                              now: float, external_url: str = "") -> list[Notification]:
    """The ``acknowledge`` notifications for the receivers already told about the incident."""
    return [Notification(id=uuid.uuid4().hex, receiver=receiver, action=Action.ACKNOWLEDGE,
                         incident=ack.incident, group_labels=dict(group_labels), alerts=alerts,
                         created_at=now, level=level, acked_by=ack.by, acked_at=ack.at,
                         external_url=external_url)
            for receiver in receivers]
