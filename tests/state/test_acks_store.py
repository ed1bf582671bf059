"""Acks on both backends: first ack wins, acks survive a restart, forgotten ones stay gone."""

from __future__ import annotations

from collections.abc import Callable

from piggywatch.alerting.acks import Ack, Acks
from piggywatch.state import StateStore

T0 = 1_764_000_000.25



def test_every_field_round_trips_across_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    acks = Acks(state)
    by_alert = Ack("inc-1", "ana@example.com", T0, "looking, 100% CPU?", fingerprint="fp1")
    by_incident = Ack("inc-2", "bo", T0 + 5.5)
    assert acks.record(by_alert) == (by_alert, True)
    assert acks.record(by_incident) == (by_incident, True)
    assert sum(acks.recorded.values()) == 2
    acks.close()
    restarted = Acks(restart())
    assert restarted.all() == {"inc-1": by_alert, "inc-2": by_incident}
    assert restarted.get("inc-2") == by_incident
    assert restarted.get("inc-3") is None
    assert sum(restarted.recorded.values()) == 0


def test_the_first_ack_keeps_the_credit(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    acks = Acks(state)
    first = Ack("inc-1", "ana", T0, "mine")
    assert acks.record(first) == (first, True)
    assert acks.record(Ack("inc-1", "bo", T0 + 1.0, "no, mine")) == (first, False)
    assert sum(acks.recorded.values()) == 1
    restarted = Acks(restart())
    assert restarted.get("inc-1") == first
    assert restarted.record(Ack("inc-1", "cy", T0 + 2.0)) == (first, False)


def test_an_ack_taken_by_another_replica_stands(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    here = Acks(state)
    there = Acks(restart())  # loaded before either acked
    first = Ack("inc-1", "ana", T0, fingerprint="fp1")
    assert here.record(first) == (first, True)
    assert there.record(Ack("inc-1", "bo", T0 + 1.0)) == (first, False)
    assert there.get("inc-1") == first
    assert sum(there.recorded.values()) == 0
    assert Acks(restart()).all() == {"inc-1": first}


def test_forgotten_acks_stay_forgotten(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    acks = Acks(state)
    acks.record(Ack("inc-1", "ana", T0))
    kept = Ack("inc-2", "bo", T0)
    acks.record(kept)
    acks.forget(["inc-1", "inc-never-acked"])
    acks.forget([])
    assert acks.all() == {"inc-2": kept}
    acks.close()
    restarted = Acks(restart())
    assert restarted.all() == {"inc-2": kept}
    # A new incident with the same key starts unacknowledged and can be acked again.
    fresh = Ack("inc-1", "cy", T0 + 60.0)
    assert restarted.record(fresh) == (fresh, True)
    assert Acks(restart()).get("inc-1") == fresh
