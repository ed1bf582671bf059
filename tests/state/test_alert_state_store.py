"""AlertStateDB on both backends: every field round-trips, a restart sees what was saved."""

from __future__ import annotations

import math
from collections.abc import Callable

from piggywatch.rules.alerts import Alert, AlertState
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.state import StateStore

T0 = 1_764_000_000.123456



def firing(target: str = "main", value: float = 0.87) -> Alert:
    return Alert((("alertname", "ConnectionsHigh"), ("severity", "high"), ("target", target)),
                 {"summary": f"{target} at 87% of max_connections", "runbook": "r/100%?"},
                 AlertState.FIRING, T0, value, fired_at=T0 + 60.0)


def pending(target: str = "replica") -> Alert:
    return Alert((("alertname", "ReplicationLag"), ("target", target)), {},
                 AlertState.PENDING, T0 + 30.0, 12.5)


def test_every_field_round_trips_across_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    db = AlertStateDB(state)
    resolved = Alert((("alertname", "DiskFull"), ("target", "main")), {"summary": "ok now"},
                     AlertState.INACTIVE, T0, 0.5, fired_at=T0 + 1.0, resolved_at=T0 + 2.5,
                     keep_firing_since=T0 + 2.0)
    assert db.save("pg", "ConnectionsHigh", [firing(), firing("replica", 0.91)])
    assert db.save("pg", "DiskFull", [resolved])
    assert db.save("pg", "ReplicationLag", [pending()])
    db.close()
    loaded = AlertStateDB(restart()).load()
    assert set(loaded) == {("pg", "ConnectionsHigh"), ("pg", "DiskFull"),
                           ("pg", "ReplicationLag")}
    by_fp = {a.fingerprint: a for a in loaded[("pg", "ConnectionsHigh")]}
    assert by_fp == {a.fingerprint: a for a in (firing(), firing("replica", 0.91))}
    assert loaded[("pg", "DiskFull")] == [resolved]
    assert loaded[("pg", "ReplicationLag")] == [pending()]
    (back,) = loaded[("pg", "DiskFull")]
    assert isinstance(back.state, AlertState) and isinstance(back.labels, tuple)


def test_a_missing_value_comes_back_as_nan(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    db = AlertStateDB(state)
    db.save("pg", "NoData", [Alert((("alertname", "NoData"),), {}, AlertState.PENDING, T0,
                                   math.nan)])
    db.close()
    (alert,) = AlertStateDB(restart()).load()[("pg", "NoData")]
    assert math.isnan(alert.value)
    assert (alert.fired_at, alert.resolved_at, alert.keep_firing_since) == (None, None, None)


def test_save_writes_only_when_the_alerts_changed(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    db = AlertStateDB(state)
    assert db.save("pg", "ConnectionsHigh", [firing()])
    # Same fingerprints, states and times: nothing to write, even with a new value.
    assert not db.save("pg", "ConnectionsHigh", [firing(value=0.95)])
    resolved = firing()
    resolved.state, resolved.resolved_at = AlertState.INACTIVE, T0 + 600.0
    assert db.save("pg", "ConnectionsHigh", [resolved])
    assert not db.save("pg", "ConnectionsHigh", [resolved])
    # After a restart, load() teaches the new handle what is already saved.
    again = AlertStateDB(restart())
    assert again.load()[("pg", "ConnectionsHigh")] == [resolved]
    assert not again.save("pg", "ConnectionsHigh", [resolved])
    assert again.save("pg", "ConnectionsHigh", [])
    assert AlertStateDB(restart()).load() == {}


def test_a_save_replaces_the_rules_alerts(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    db = AlertStateDB(state)
    db.save("pg", "ConnectionsHigh", [firing("main"), firing("replica")])
    db.save("pg", "ConnectionsHigh", [firing("replica")])
    loaded = AlertStateDB(restart()).load()
    assert [a.label("target") for a in loaded[("pg", "ConnectionsHigh")]] == ["replica"]


def test_forget_except_drops_removed_rules_for_good(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    db = AlertStateDB(state)
    db.save("pg", "ConnectionsHigh", [firing()])
    db.save("pg", "ReplicationLag", [pending()])
    db.save("other", "ConnectionsHigh", [firing("edge")])
    db.forget_except({("pg", "ConnectionsHigh")})
    # A rule forgotten and then seen again is written again (its signature was dropped).
    assert db.save("other", "ConnectionsHigh", [firing("edge")])
    db.forget_except({("pg", "ConnectionsHigh")})
    # A rule kept is still known as saved.
    assert not db.save("pg", "ConnectionsHigh", [firing()])
    db.close()
    loaded = AlertStateDB(restart()).load()
    assert list(loaded) == [("pg", "ConnectionsHigh")]
    assert loaded[("pg", "ConnectionsHigh")] == [firing()]

