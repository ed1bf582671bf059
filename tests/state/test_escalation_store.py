"""EscalationStore on both backends: timers, ends and the saved alert groups survive a
restart."""

from __future__ import annotations

from collections.abc import Callable

from piggywatch.alerting.escalation import Escalation, EscalationPolicy, EscalationStore, Step
from piggywatch.alerting.model import AlertInfo, AlertStatus
from piggywatch.state import StateStore

T0 = 1_764_000_000.75
HOUR = 3600.0
POLICY = EscalationPolicy("degradation", (
    Step(("oncall-pagerduty", "oncall-slack"), wait=HOUR),
    Step(("leads-email",), wait=900.0, repeat=2),
))



def escalation(incident: str, started: float = T0) -> Escalation:
    alert = AlertInfo("fp1", AlertStatus.FIRING, {"alertname": "ConnectionsHigh",
                                                  "severity": "high", "target": "main"},
                      {"summary": "85% of max_connections?"}, started, value="0.85",
                      generator_url="http://piggywatch/rules?x=1")
    resolved = AlertInfo("fp2", AlertStatus.RESOLVED, {"alertname": "ConnectionsHigh",
                                                       "target": "replica"},
                         {}, started - 60.0, ends_at=started)
    return Escalation(incident, "route-0", {"alertname": "ConnectionsHigh"}, POLICY, started,
                      alerts=(alert, resolved))


def test_every_field_round_trips_across_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    store = EscalationStore(state)
    climbing = escalation("inc-1")
    climbing.start(T0)
    climbing.due(T0 + HOUR)
    climbing.due(T0 + HOUR + 900.0)
    acked = escalation("inc-2", T0 + 10.0)
    acked.start(T0 + 10.0)
    acked.acknowledge()
    store.save([climbing, acked], groups='{"grouper": {}, "failing": {"pd": 1}}')
    store.close()
    restarted = EscalationStore(restart())
    assert restarted.get("inc-1") == climbing
    assert restarted.get("inc-2") == acked
    loaded = restarted.get("inc-1")
    assert loaded is not None
    assert (loaded.level, loaded.repeats, loaded.acked) == (2, 1, False)
    assert loaded.notified == ["oncall-pagerduty", "oncall-slack", "leads-email"]
    assert loaded.next_at == T0 + HOUR + 1800.0
    assert loaded.policy == POLICY and loaded.alerts == climbing.alerts
    assert restarted.groups() == '{"grouper": {}, "failing": {"pd": 1}}'
    assert restarted.next_due() == T0 + HOUR + 1800.0


def test_changes_and_ends_survive_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    store = EscalationStore(state)
    assert store.groups() is None and store.next_due() is None
    first, second = escalation("inc-1"), escalation("inc-2", T0 + 5.0)
    first.start(T0)
    second.start(T0 + 5.0)
    store.save([first, second], groups="one")
    second.acknowledge()
    store.save([second], ended=["inc-1"])  # no groups given: the saved ones stay
    assert {e.incident for e in store.all()} == {"inc-2"}
    assert store.next_due() is None  # the only escalation left is acknowledged
    store.close()
    restarted = EscalationStore(restart())
    assert restarted.get("inc-1") is None
    assert restarted.get("inc-2") == second
    assert restarted.groups() == "one"
    restarted.save(groups="two")
    restarted.end(["inc-2"])
    assert restarted.all() == []
    final = EscalationStore(restart())
    assert final.all() == [] and final.groups() == "two" and final.next_due() is None


def test_next_due_is_the_earliest_running_timer_after_a_restart(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    store = EscalationStore(state)
    late, soon = escalation("inc-late", T0 + 600.0), escalation("inc-soon")
    late.start(T0 + 600.0)
    soon.start(T0)
    store.save([late, soon])
    assert store.next_due() == T0 + HOUR
    assert EscalationStore(restart()).next_due() == T0 + HOUR
    store.end(["inc-soon"])
    assert EscalationStore(restart()).next_due() == T0 + 600.0 + HOUR
