"""Durable alert state, so a restart neither re-pages a firing alert nor resets a `for` clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from piggywatch.rules.alerts import Alert, AlertState
from piggywatch.state import StateLike, connect

Signature = tuple[tuple[str, str, float | None, float | None, float | None], ...]


class AlertStateDB:
    """Alert state in the state database, written only when a rule's alerts changed."""

    def __init__(self, state: StateLike) -> None:
        self._conn = connect(state)
        self._lock = threading.Lock()
        self._saved: dict[tuple[str, str], Signature] = {}

    def load(self) -> dict[tuple[str, str], list[Alert]]:
        """Every saved alert, by (group, rule)."""
        found: dict[tuple[str, str], list[Alert]] = {}
        with self._lock:
            rows = self._conn.query(
                "SELECT group_name, rule, fingerprint, labels, annotations, state, active_at, "
                "value, fired_at, resolved_at, keep_firing_since FROM alert_state")
        for group, rule, fp, labels, notes, state, active_at, value, fired, resolved, \
                keep in rows:
            alert = Alert(tuple((k, v) for k, v in json.loads(labels)), json.loads(notes),
                          AlertState(state), active_at, float("nan") if value is None else value,
                          fired_at=fired, resolved_at=resolved, keep_firing_since=keep,
                          fingerprint=fp)
            found.setdefault((group, rule), []).append(alert)
        for key, alerts in found.items():
            self._saved[key] = _signature(alerts)
        return found

    def unsaved(self, group: str, rule: str, alerts: Iterable[Alert]) -> bool:
        """Whether ``save`` would write: the rule's alerts changed since the last save."""
        return self._saved.get((group, rule), ()) != _signature(list(alerts))

    def save(self, group: str, rule: str, alerts: Iterable[Alert]) -> bool:
        """Store a rule's alerts if they changed since the last save; return whether written."""
        current = list(alerts)
        signature = _signature(current)
        key = (group, rule)
        if self._saved.get(key, ()) == signature:
            return False
        rows = [(group, rule, a.fingerprint, json.dumps(a.labels), json.dumps(a.annotations),
                 a.state.value, a.active_at, a.value if a.value == a.value else None,
                 a.fired_at, a.resolved_at, a.keep_firing_since) for a in current]
        with self._lock, self._conn.transaction() as tx:
            tx.execute("DELETE FROM alert_state WHERE group_name = ? AND rule = ?", key)
            tx.executemany(
                "INSERT INTO alert_state (group_name, rule, fingerprint, labels, annotations, "
                "state, active_at, value, fired_at, resolved_at, keep_firing_since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._saved[key] = signature
        return True

    def forget_except(self, keep: set[tuple[str, str]]) -> None:
        """Drop the state of rules that no longer exist (after a reload)."""
        with self._lock, self._conn.transaction() as tx:
            rows = tx.query("SELECT DISTINCT group_name, rule FROM alert_state")
            for group, rule in rows:
                if (group, rule) not in keep:
                    tx.execute("DELETE FROM alert_state WHERE group_name = ? AND rule = ?",
                               (group, rule))
                    self._saved.pop((group, rule), None)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


def _signature(alerts: list[Alert]) -> Signature:
    return tuple(sorted((a.fingerprint, a.state.value, a.fired_at, a.resolved_at,
                         a.keep_firing_since) for a in alerts))
