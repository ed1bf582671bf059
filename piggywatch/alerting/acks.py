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
from pathlib import Path

from piggywatch.alerting.model import Action, AlertInfo, Notification
from piggywatch.state_file import connect_state_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalation_acks (
    incident TEXT PRIMARY KEY,
    fingerprint TEXT,
    acked_by TEXT NOT NULL,
    acked_at REAL NOT NULL,
    comment TEXT NOT NULL
) WITHOUT ROWID
"""


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
    """Acknowledgements in SQLite, kept while their incident lasts. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        # An acknowledgement must survive a power cut: commits are synced (FULL).
        self._conn = connect_state_file(path, synchronous="FULL")
        self._conn.execute(SCHEMA)
        self._lock = threading.Lock()
        rows = self._conn.execute("SELECT incident, acked_by, acked_at, comment, fingerprint "
                                  "FROM escalation_acks").fetchall()
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
            self._conn.execute("INSERT INTO escalation_acks VALUES (?, ?, ?, ?, ?)",
                               (ack.incident, ack.fingerprint, ack.by, ack.at, ack.comment))
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
            self._conn.executemany("DELETE FROM escalation_acks WHERE incident = ?", keys)
            for (key,) in keys:
                self._acks.pop(key, None)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


def acknowledge_notifications(ack: Ack, receivers: Iterable[str], *, group_labels:
                              Mapping[str, str], alerts: tuple[AlertInfo, ...], level: int,
                              now: float, external_url: str = "") -> list[Notification]:
    """The ``acknowledge`` notifications for the receivers already told about the incident."""
    return [Notification(id=uuid.uuid4().hex, receiver=receiver, action=Action.ACKNOWLEDGE,
                         incident=ack.incident, group_labels=dict(group_labels), alerts=alerts,
                         created_at=now, level=level, acked_by=ack.by, acked_at=ack.at,
                         external_url=external_url)
            for receiver in receivers]
