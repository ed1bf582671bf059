"""What the acknowledgement hooks remember in the state database: deliveries already
applied (so a redelivery, a second press or a reused link changes nothing), the other side's
incident and when its last applied change occurred (so a late, older change is not applied),
and the silences that end with their incident."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from piggywatch.state import StateLike, connect

__all__ = ["EVENTS_KEPT_SECONDS", "HookLedger"]

# PagerDuty retries a failed delivery for about a day; ids are kept well beyond.
EVENTS_KEPT_SECONDS = 8 * 86400.0


class HookLedger:
    """Thread-safe; every write is durable before the hook answers."""

    def __init__(self, state: StateLike) -> None:
        self._conn = connect(state)
        self._lock = threading.Lock()

    def seen(self, source: str, event_id: str) -> bool:
        """Whether this delivery was applied already."""
        with self._lock:
            return self._conn.one("SELECT 1 FROM hook_events WHERE source = ? AND event_id = ?",
                                  (source, event_id)) is not None

    def remember(self, source: str, event_id: str, now: float) -> bool:
        """Record a delivery as applied; False if it already was (a concurrent duplicate)."""
        with self._lock, self._conn.transaction(durable=True) as tx:
            rows = tx.query("INSERT INTO hook_events (source, event_id, received_at) "
                            "VALUES (?, ?, ?) ON CONFLICT (source, event_id) DO NOTHING "
                            "RETURNING event_id", (source, event_id, now))
            return bool(rows)

    def advance(self, incident: str, source: str, external_id: str, status: str,
                occurred_at: float) -> bool:
        """Take a change of the other side's incident unless a later one was applied;
        returns whether it is the latest (and so to be applied)."""
        with self._lock, self._conn.transaction(durable=True) as tx:
            row = tx.one("SELECT occurred_at FROM hook_incidents WHERE incident = ? AND "
                         "source = ?", (incident, source))
            if row is not None and float(row[0]) > occurred_at:
                return False
            tx.execute("INSERT INTO hook_incidents (incident, source, external_id, status, "
                       "occurred_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident, source) DO "
                       "UPDATE SET external_id = excluded.external_id, status = excluded.status,"
                       " occurred_at = excluded.occurred_at",
                       (incident, source, external_id, status, occurred_at))
            return True

    def external(self, incident: str, source: str) -> tuple[str, str, float] | None:
        """The other side's incident id, its last applied status and when it occurred."""
        with self._lock:
            row = self._conn.one("SELECT external_id, status, occurred_at FROM hook_incidents "
                                 "WHERE incident = ? AND source = ?", (incident, source))
        return None if row is None else (str(row[0]), str(row[1]), float(row[2]))

    def link_silence(self, silence_id: str, incident: str) -> None:
        """A silence that ends when ``incident`` does."""
        with self._lock:
            self._conn.execute("INSERT INTO hook_silences (silence_id, incident) VALUES (?, ?) "
                               "ON CONFLICT (silence_id) DO NOTHING", (silence_id, incident),
                               durable=True)

    def take_silences(self, incidents: Iterable[str]) -> list[str]:
        """The silences tied to these ended incidents (forgotten from now on)."""
        keys = list(incidents)
        found: list[str] = []
        with self._lock, self._conn.transaction(durable=True) as tx:
            for key in keys:
                found += [str(r[0]) for r in tx.query(
                    "DELETE FROM hook_silences WHERE incident = ? RETURNING silence_id",
                    (key,))]
                tx.execute("DELETE FROM hook_incidents WHERE incident = ?", (key,))
        return found

    def expire(self, now: float) -> None:
        """Forget deliveries older than EVENTS_KEPT_SECONDS."""
        with self._lock:
            self._conn.execute("DELETE FROM hook_events WHERE received_at < ?",
                               (now - EVENTS_KEPT_SECONDS,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
