"""Escalation policies: who is told about an incident, and who next when nobody answers.

A policy is a chain of steps. A step notifies its receivers, then waits; if the incident
still fires unacknowledged when the wait ends, the next step runs. The last step's
``repeat`` re-notifies it that many more times, every ``wait``. Acknowledgement stops the
climb, resolution ends it.

The chain is copied into the incident when it starts, so a configuration reload never
makes a running incident jump or skip a step. Timers are durable (tables
``escalation_*`` in the state database): after a restart each escalation continues where it
was, and a step that fell due while the daemon was down fires once, at start.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from piggywatch.alerting.model import AlertInfo
from piggywatch.alerting.settings import EscalationStep
from piggywatch.state import StateLike, connect
from piggywatch.yamlpos import KeyPath


@dataclass(frozen=True)
class Step:
    """Notify ``notify``; after ``wait`` seconds unacknowledged, go on (or repeat)."""

    notify: tuple[str, ...]
    wait: float | None = None
    repeat: int = 0


@dataclass(frozen=True)
class EscalationPolicy:
    """A named chain of steps (``escalations:`` in the configuration)."""

    name: str
    steps: tuple[Step, ...]

    @classmethod
    def from_settings(cls, name: str, steps: Sequence[EscalationStep]) -> EscalationPolicy:
        """The policy a configured chain describes."""
        return cls(name, tuple(Step(tuple(s.notify), s.wait, s.repeat) for s in steps))

    @classmethod
    def single(cls, receiver: str) -> EscalationPolicy:
        """What a route with ``receiver:`` means: one step, no wait, no repeat."""
        return cls(f"receiver:{receiver}", (Step((receiver,)),))

    def to_json(self) -> str:
        """The snapshot stored with an incident."""
        return json.dumps({"name": self.name, "steps": [
            {"notify": list(s.notify), "wait": s.wait, "repeat": s.repeat} for s in self.steps]})

    @classmethod
    def from_json(cls, text: str) -> EscalationPolicy:
        """Read a stored snapshot back."""
        data = json.loads(text)
        return cls(data["name"], tuple(Step(tuple(s["notify"]), s["wait"], s["repeat"])
                                       for s in data["steps"]))


def policy_problems(escalations: Mapping[str, Sequence[EscalationStep]]
                    ) -> list[tuple[KeyPath, str]]:
    """What is wrong with the timing of configured chains: (key path, reason) pairs."""
    problems: list[tuple[KeyPath, str]] = []
    for name, steps in escalations.items():
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            if not last and step.wait is None:
                problems.append((("escalations", name, i, "wait"), "a step followed by "
                                 "another needs a wait (how long before the next level)"))
            if not last and step.repeat:
                problems.append((("escalations", name, i, "repeat"),
                                 "only the last step repeats"))
            if step.repeat and step.wait is None:
                problems.append((("escalations", name, i, "wait"),
                                 "repeat needs a wait (the time between re-notifications)"))
    return problems


@dataclass(frozen=True)
class Page:
    """A decision: notify ``receivers`` about ``incident`` at ``level`` (1-based)."""

    incident: str
    receivers: tuple[str, ...]
    level: int
    reason: str  # "start", "escalate" or "repeat"


@dataclass
class Escalation:
    """One incident's climb through its policy, with what notifications need to say.

    ``alerts`` is the incident's latest alert list (so an escalation after a restart can
    still say what it is about); ``notified`` every receiver told so far, in order, so
    acknowledge and resolve reach exactly them.
    """

    incident: str
    route: str
    group_labels: dict[str, str]
    policy: EscalationPolicy
    started_at: float
    alerts: tuple[AlertInfo, ...] = ()
    level: int = 0
    repeats: int = 0
    next_at: float | None = None
    acked: bool = False
    notified: list[str] = field(default_factory=list)

    def start(self, now: float) -> Page:
        """Run the first step."""
        return self._run(1, now, "start")

    def due(self, now: float) -> Page | None:
        """The step that falls due at ``now``, if any (state moves on)."""
        if self.acked or self.next_at is None or now < self.next_at:
            return None
        if self.level < len(self.policy.steps):
            return self._run(self.level + 1, now, "escalate")
        step = self.policy.steps[-1]
        if self.repeats >= step.repeat:
            self.next_at = None
            return None
        self.repeats += 1
        return self._run(self.level, now, "repeat")

    def acknowledge(self) -> None:
        """Stop the climb: nobody further is called, nothing repeats."""
        self.acked = True
        self.next_at = None

    def resume(self, now: float) -> None:
        """The ack no longer holds: climb again from the current step, whose wait starts
        over now (the next level is called only if nobody answers within it)."""
        self.acked = False
        if self.level == 0:
            return
        step = self.policy.steps[self.level - 1]
        last = self.level == len(self.policy.steps)
        more = not last or self.repeats < step.repeat
        self.next_at = now + step.wait if step.wait is not None and more else None

    def _run(self, level: int, now: float, reason: str) -> Page:
        step = self.policy.steps[level - 1]
        self.level = level
        last = level == len(self.policy.steps)
        more = not last or self.repeats < step.repeat
        # Counted from now, not from when it was due: after downtime a late step fires
        # once and the next one waits its full time, instead of several firing in a burst.
        self.next_at = now + step.wait if step.wait is not None and more else None
        for receiver in step.notify:
            if receiver not in self.notified:
                self.notified.append(receiver)
        return Page(self.incident, step.notify, level, reason)


class EscalationStore:
    """Running escalations, durable in the state database; every change is saved before it
    is acted on.

    Thread-safe. Callers change ``Escalation`` objects they got from here and hand them
    back to ``save``.
    """

    def __init__(self, state: StateLike) -> None:
        self._conn = connect(state)
        self._lock = threading.Lock()
        self._running: dict[str, Escalation] = {
            e.incident: e for e in self._load()}

    def get(self, incident: str) -> Escalation | None:
        """The running escalation of ``incident``."""
        with self._lock:
            return self._running.get(incident)

    def all(self) -> list[Escalation]:
        """Every running escalation."""
        with self._lock:
            return list(self._running.values())

    def next_due(self) -> float | None:
        """When the earliest timer falls due (None: no timer runs)."""
        with self._lock:
            times = [e.next_at for e in self._running.values()
                     if e.next_at is not None and not e.acked]
        return min(times, default=None)

    def save(self, changed: Iterable[Escalation] = (), ended: Iterable[str] = (),
             groups: str | None = None) -> None:
        """In one transaction: store new or changed escalations, forget ended ones, and
        replace the saved alert groups (a JSON document of the incident book) when
        ``groups`` is given."""
        batch = list(changed)
        gone = [(k,) for k in ended]
        rows = [(e.incident, e.route, json.dumps(e.group_labels), e.policy.to_json(),
                 e.started_at, json.dumps([a.to_dict() for a in e.alerts]), e.level,
                 e.repeats, e.next_at, int(e.acked), json.dumps(e.notified)) for e in batch]
        with self._lock:
            with self._conn.transaction() as tx:
                tx.executemany(
                    "INSERT INTO escalation_incidents (incident, route, group_labels, policy, "
                    "started_at, alerts, level, repeats, next_at, acked, notified) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident) DO UPDATE "
                    "SET route = excluded.route, group_labels = excluded.group_labels, "
                    "policy = excluded.policy, started_at = excluded.started_at, "
                    "alerts = excluded.alerts, level = excluded.level, "
                    "repeats = excluded.repeats, next_at = excluded.next_at, "
                    "acked = excluded.acked, notified = excluded.notified", rows)
                tx.executemany("DELETE FROM escalation_incidents WHERE incident = ?", gone)
                if groups is not None:
                    # Stored under the key 'state' (its name before: kept for the rows saved).
                    tx.execute("INSERT INTO escalation_dispatch (key, value) VALUES ('state', ?) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                               (groups,))
            for e in batch:
                self._running[e.incident] = e
            for (key,) in gone:
                self._running.pop(key, None)

    def end(self, incidents: Iterable[str]) -> None:
        """Forget escalations that are over (their incident resolved)."""
        self.save(ended=incidents)

    def groups(self) -> str | None:
        """The alert groups as last saved (the JSON ``save`` was given)."""
        with self._lock:
            row = self._conn.one("SELECT value FROM escalation_dispatch WHERE key = 'state'")
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def _load(self) -> list[Escalation]:
        rows = self._conn.query(
            "SELECT incident, route, group_labels, policy, started_at, alerts, level, "
            "repeats, next_at, acked, notified FROM escalation_incidents")
        return [Escalation(incident, route, json.loads(labels),
                           EscalationPolicy.from_json(policy), started,
                           tuple(AlertInfo.from_dict(a) for a in json.loads(alerts)), level,
                           repeats, next_at, bool(acked), json.loads(notified))
                for incident, route, labels, policy, started, alerts, level, repeats, next_at,
                acked, notified in rows]
