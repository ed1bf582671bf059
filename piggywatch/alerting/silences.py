"""Silences: "don't notify about alerts matching these matchers until then", kept durably.

Alertmanager's model: a silence has matchers (every one must hold), a start and an end, an
author and a comment; it is pending before its start, active until its end, expired after.
Expiring a silence ends it now. Expired silences stay listed for 24 hours (so the API can
show what just ended) and are then purged. Silences live in the shared state database,
in tables prefixed ``silence_``, and in memory for the per-alert checks.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property

from piggywatch.alerting.matchers import MatcherError, matches, parse_matchers
from piggywatch.state import StateLike, connect
from piggywatch.store.series import LabelMatcher

__all__ = ["RETENTION", "Silence", "SilenceError", "SilenceState", "Silences"]

RETENTION = 24 * 3600.0  # how long an expired silence stays listed


class SilenceState(StrEnum):
    """Where a silence is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


class SilenceError(ValueError):
    """A silence that cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Silence:
    """One silence; ``matchers`` are Alertmanager matcher strings, times epoch seconds."""

    id: str
    matchers: tuple[str, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    updated_at: float = 0.0

    def state(self, now: float) -> SilenceState:
        """Pending, active or expired at ``now``."""
        if now < self.starts_at:
            return SilenceState.PENDING
        return SilenceState.ACTIVE if now < self.ends_at else SilenceState.EXPIRED

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every matcher holds for these labels (regardless of time)."""
        return matches(self._compiled, labels)

    @cached_property
    def _compiled(self) -> tuple[LabelMatcher, ...]:
        return parse_matchers(self.matchers)


class Silences:
    """The silences in the state database, cached in memory; safe to use from several threads."""

    def __init__(self, state: StateLike) -> None:
        self._conn = connect(state)
        self._lock = threading.Lock()
        rows = self._conn.query(
            "SELECT id, matchers, starts_at, ends_at, created_by, comment, updated_at "
            "FROM silence_entries")
        self._silences = {row[0]: Silence(row[0], tuple(json.loads(row[1])), *row[2:])
                          for row in rows}

    def create(self, matchers: Sequence[str], *, ends_at: float, now: float,
               starts_at: float | None = None, created_by: str = "",
               comment: str = "") -> Silence:
        """Add a new silence from now (or ``starts_at``) until ``ends_at``."""
        silence = Silence("", tuple(matchers), now if starts_at is None else starts_at,
                          ends_at, created_by, comment)
        return self.add(silence, now)

    def add(self, silence: Silence, now: float) -> Silence:
        """Store a new silence (empty ``id``: one is made up) or replace a pending or active
        one with the same id; return it as stored. A start in the past becomes ``now``."""
        _check(silence, now)
        with self._lock:
            if silence.id:
                old = self._silences.get(silence.id)
                if old is not None and old.state(now) is SilenceState.EXPIRED:
                    raise SilenceError(f"silence {silence.id} has expired; create a new one")
            stored = replace(silence, id=silence.id or str(uuid.uuid4()),
                             starts_at=max(silence.starts_at, now), updated_at=now)
            self._write(stored)
        return stored

    def expire(self, silence_id: str, now: float) -> Silence:
        """End a silence now (a pending one never starts); KeyError if there is no such id.
        Expiring an expired silence changes nothing."""
        with self._lock:
            old = self._silences.get(silence_id)
            if old is None:
                raise KeyError(f"no silence with id {silence_id!r}")
            if old.state(now) is SilenceState.EXPIRED:
                return old
            stored = replace(old, starts_at=min(old.starts_at, now), ends_at=now,
                             updated_at=now)
            self._write(stored)
        return stored

    def get(self, silence_id: str) -> Silence | None:
        """One silence by id, if it is still kept."""
        return self._silences.get(silence_id)

    def list_all(self, now: float) -> list[Silence]:
        """Every kept silence (pending, active, and expired for under 24 h), newest first."""
        self.purge(now)
        return sorted(self._silences.values(), key=lambda s: (-s.updated_at, s.id))

    def active(self, now: float) -> list[Silence]:
        """The silences in force at ``now``."""
        return [s for s in self._silences.values() if s.state(now) is SilenceState.ACTIVE]

    def silenced_by(self, labels: Mapping[str, str], now: float) -> list[str]:
        """The ids of the active silences matching these labels."""
        return sorted(s.id for s in self.active(now) if s.matches(labels))

    def is_silenced(self, labels: Mapping[str, str], now: float) -> bool:
        """Whether an active silence matches these labels."""
        return any(s.matches(labels) for s in self.active(now))

    def purge(self, now: float) -> int:
        """Forget silences expired for more than 24 hours; return how many."""
        with self._lock:
            old = [sid for sid, s in self._silences.items() if s.ends_at <= now - RETENTION]
            if old:
                self._conn.executemany("DELETE FROM silence_entries WHERE id = ?",
                                       [(sid,) for sid in old])
                gone = set(old)
                self._silences = {sid: s for sid, s in self._silences.items()
                                  if sid not in gone}
        return len(old)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def _write(self, silence: Silence) -> None:
        self._conn.execute(
            "INSERT INTO silence_entries (id, matchers, starts_at, ends_at, created_by, "
            "comment, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "matchers = excluded.matchers, starts_at = excluded.starts_at, "
            "ends_at = excluded.ends_at, created_by = excluded.created_by, "
            "comment = excluded.comment, updated_at = excluded.updated_at",
            (silence.id, json.dumps(list(silence.matchers)), silence.starts_at,
             silence.ends_at, silence.created_by, silence.comment, silence.updated_at))
        # Copy on write: readers iterate the dict without taking the lock.
        self._silences = {**self._silences, silence.id: silence}


# A forgotten silence must still end: a year covers any planned maintenance.
MAX_LENGTH = 365 * 86400.0


def _check(silence: Silence, now: float) -> None:
    if not silence.matchers:
        raise SilenceError("a silence needs at least one matcher")
    try:
        compiled = parse_matchers(silence.matchers)
    except MatcherError as exc:
        raise SilenceError(str(exc)) from None
    # As in Alertmanager: a silence every alert would match (even one lacking all its
    # labels) is almost always a mistake, and it would hide every page.
    if all(m.matches("") for m in compiled):
        raise SilenceError("at least one matcher must need a non-empty value (a silence "
                           "whose matchers all accept a missing label silences everything)")
    if not (math.isfinite(silence.starts_at) and math.isfinite(silence.ends_at)):
        raise SilenceError("a silence needs a finite start and end")
    if silence.ends_at - silence.starts_at > MAX_LENGTH:
        raise SilenceError("a silence may last at most 365 days; silence again later, or "
                           "change the rule")
    if silence.ends_at <= silence.starts_at:
        raise SilenceError("a silence must end after it starts")
    if silence.ends_at <= now:
        raise SilenceError("a silence must end in the future")
