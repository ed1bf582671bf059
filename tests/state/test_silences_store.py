"""Silences on both backends: create, replace, expire and purge, all surviving a restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from piggywatch.alerting.silences import RETENTION, Silence, SilenceError, Silences, SilenceState
from piggywatch.state import StateStore

NOW = 1_764_000_000.5
HOUR = 3600.0
MAIN = {"alertname": "ConnectionsHigh", "target": "main", "severity": "high"}



def test_every_field_round_trips_across_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    silences = Silences(state)
    made = silences.create(['target="main"', 'alertname=~"Connections.*"'], ends_at=NOW + HOUR,
                           now=NOW, created_by="ana@example.com", comment="upgrade, 100% sure?")
    later = silences.create(['target="replica"'], starts_at=NOW + HOUR, ends_at=NOW + 2 * HOUR,
                            now=NOW)
    silences.close()
    assert made == Silence(made.id, ('target="main"', 'alertname=~"Connections.*"'), NOW,
                           NOW + HOUR, "ana@example.com", "upgrade, 100% sure?", NOW)
    again = Silences(restart())
    assert again.get(made.id) == made
    assert again.get(later.id) == later
    assert later.state(NOW) is SilenceState.PENDING
    assert again.is_silenced(MAIN, NOW + 60.0)
    assert again.silenced_by(MAIN, NOW + 60.0) == [made.id]
    assert [s.id for s in again.list_all(NOW)] == sorted([made.id, later.id])


def test_a_replaced_silence_is_replaced_after_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    silences = Silences(state)
    made = silences.create(['target="main"'], ends_at=NOW + HOUR, now=NOW)
    changed = silences.add(Silence(made.id, ('target="replica"',), NOW, NOW + 3 * HOUR, "bo",
                                   "moved"), NOW + 60.0)
    assert changed.id == made.id and changed.updated_at == NOW + 60.0
    again = Silences(restart())
    assert again.get(made.id) == changed
    assert [s.id for s in again.list_all(NOW + 120.0)] == [made.id]
    assert not again.is_silenced(MAIN, NOW + 120.0)


def test_an_expired_silence_stays_expired_after_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    silences = Silences(state)
    made = silences.create(['target="main"'], ends_at=NOW + HOUR, now=NOW)
    ended = silences.expire(made.id, NOW + 60.0)
    assert ended.ends_at == NOW + 60.0
    again = Silences(restart())
    assert again.get(made.id) == ended
    assert not again.is_silenced(MAIN, NOW + 120.0)
    assert again.expire(made.id, NOW + 120.0) == ended
    with pytest.raises(SilenceError, match="expired"):
        again.add(Silence(made.id, ('target="main"',), NOW, NOW + HOUR, "", ""), NOW + 120.0)
    with pytest.raises(KeyError):
        again.expire("no-such-id", NOW)


def test_purged_silences_stay_purged(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    silences = Silences(state)
    old = silences.create(['target="main"'], ends_at=NOW + HOUR, now=NOW)
    kept = silences.create(['target="replica"'], ends_at=NOW + 2 * HOUR, now=NOW)
    silences.expire(old.id, NOW + 60.0)
    assert silences.purge(NOW + 60.0 + RETENTION) == 1
    assert silences.purge(NOW + 60.0 + RETENTION) == 0
    silences.close()
    again = Silences(restart())
    assert again.get(old.id) is None
    assert [s.id for s in again.list_all(NOW + 60.0 + RETENTION)] == [kept.id]
