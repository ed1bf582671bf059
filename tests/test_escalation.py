"""Escalation policies: the climb, acknowledgement, repeats, and timers that survive restarts."""

from __future__ import annotations

from pathlib import Path

from piggywatch.alerting.acks import Ack, Acks
from piggywatch.alerting.escalation import (
    Escalation,
    EscalationPolicy,
    EscalationStore,
    Page,
    Step,
    policy_problems,
)
from piggywatch.alerting.model import AlertInfo, AlertStatus
from piggywatch.alerting.settings import EscalationStep

T0 = 1_700_000_000.0
HOUR = 3600.0
DEGRADATION = EscalationPolicy("degradation", (
    Step(("oncall-pagerduty", "oncall-slack"), wait=HOUR),
    Step(("leads-email",)),
))
OUTAGE = EscalationPolicy("outage", (
    Step(("oncall-pagerduty", "oncall-slack", "leads-email"), wait=900.0, repeat=3),
))


def escalation(policy: EscalationPolicy, incident: str = "inc-1") -> Escalation:
    alert = AlertInfo("fp1", AlertStatus.FIRING, {"alertname": "ConnectionsHigh",
                                                  "severity": "high", "target": "main"},
                      {"summary": "85%"}, T0, value="0.85")
    return Escalation(incident, "route-0", {"alertname": "ConnectionsHigh"}, policy, T0,
                      alerts=(alert,))


def run(e: Escalation, until: float, step: float = 60.0) -> list[tuple[float, Page]]:
    """Tick every ``step`` seconds from T0 to ``until``; the pages and when they came."""
    pages = []
    now = T0 + step
    while now <= until:
        page = e.due(now)
        if page is not None:
            pages.append((now - T0, page))
        now += step
    return pages


def test_high_severity_calls_level_2_after_an_hour_unacknowledged() -> None:
    e = escalation(DEGRADATION)
    first = e.start(T0)
    assert first == Page("inc-1", ("oncall-pagerduty", "oncall-slack"), 1, "start")
    pages = run(e, T0 + 5 * HOUR)
    assert pages == [(HOUR, Page("inc-1", ("leads-email",), 2, "escalate"))]
    assert e.notified == ["oncall-pagerduty", "oncall-slack", "leads-email"]
    assert e.next_at is None


def test_acknowledgement_stops_the_climb() -> None:
    e = escalation(DEGRADATION)
    e.start(T0)
    assert run(e, T0 + HOUR - 60) == []
    e.acknowledge()
    assert e.due(T0 + 2 * HOUR) is None
    assert e.level == 1
    assert e.notified == ["oncall-pagerduty", "oncall-slack"]


def test_critical_repeats_the_last_step_while_unacknowledged() -> None:
    e = escalation(OUTAGE)
    e.start(T0)
    pages = run(e, T0 + 10 * HOUR)
    assert [(at, p.reason, p.level) for at, p in pages] == [
        (900.0, "repeat", 1), (1800.0, "repeat", 1), (2700.0, "repeat", 1)]


def test_a_route_receiver_is_one_step_without_wait() -> None:
    e = escalation(EscalationPolicy.single("team-slack"))
    assert e.start(T0).receivers == ("team-slack",)
    assert e.next_at is None
    assert run(e, T0 + 10 * HOUR) == []


def test_timers_survive_a_restart_and_a_missed_step_fires_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = EscalationStore(path)
    slow = EscalationPolicy("slow", (Step(("a",), wait=600.0), Step(("b",), wait=600.0),
                                     Step(("c",))))
    e = escalation(slow)
    e.start(T0)
    store.save([e])
    store.close()
    # Down from T0 + 1 min to T0 + 25 min: steps 2 and 3 both fell due meanwhile.
    again = EscalationStore(path)
    [restored] = again.all()
    assert restored.policy == slow
    assert restored.alerts == e.alerts
    assert restored.notified == ["a"]
    assert again.next_due() == T0 + 600.0
    back = T0 + 25 * 60
    page = restored.due(back)
    assert page is not None and page.receivers == ("b",)
    # Only one step at start; the next waits its full time from now.
    assert restored.due(back) is None
    assert restored.next_at == back + 600.0
    page = restored.due(back + 600.0)
    assert page is not None and page.receivers == ("c",)


def test_the_chain_is_the_snapshot_taken_when_the_incident_started(tmp_path: Path) -> None:
    store = EscalationStore(tmp_path / "state.db")
    e = escalation(DEGRADATION)
    e.start(T0)
    store.save([e])
    # The configuration now says something else; the running incident keeps its chain.
    store.close()
    [restored] = EscalationStore(tmp_path / "state.db").all()
    assert restored.policy == DEGRADATION
    page = restored.due(T0 + HOUR)
    assert page is not None and page.receivers == ("leads-email",)


def test_ended_escalations_are_forgotten(tmp_path: Path) -> None:
    store = EscalationStore(tmp_path / "state.db")
    one, two = escalation(DEGRADATION, "one"), escalation(DEGRADATION, "two")
    for e in (one, two):
        e.start(T0)
    store.save([one, two])
    store.end(["one"])
    store.close()
    assert [e.incident for e in EscalationStore(tmp_path / "state.db").all()] == ["two"]


def test_configured_chains_are_checked() -> None:
    problems = policy_problems({
        "fine": [EscalationStep(notify=["a"], wait=60.0), EscalationStep(notify=["b"])],
        "nowait": [EscalationStep(notify=["a"]), EscalationStep(notify=["b"])],
        "repeat": [EscalationStep(notify=["a"], repeat=2)],
    })
    assert problems == [
        (("escalations", "nowait", 0, "wait"),
         "a step followed by another needs a wait (how long before the next level)"),
        (("escalations", "repeat", 0, "wait"),
         "repeat needs a wait (the time between re-notifications)"),
    ]


def test_acks_are_durable_and_the_first_keeps_the_credit(tmp_path: Path) -> None:
    acks = Acks(tmp_path / "state.db")
    first, new = acks.record(Ack("inc-1", "alice", T0, "on it", "fp1"))
    assert new
    second, new = acks.record(Ack("inc-1", "bob", T0 + 5))
    assert not new and second == first
    acks.close()
    again = Acks(tmp_path / "state.db")
    assert again.get("inc-1") == Ack("inc-1", "alice", T0, "on it", "fp1")
    again.forget(["inc-1"])
    assert again.get("inc-1") is None
