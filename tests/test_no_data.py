"""A rule whose target is down, or whose query fails, never resolves silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from piggywatch.rules.alerts import AlertEvent, AlertState, EventKind
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of

RULES = """\
groups:
  - name: g
    rules:
      - alert: ConnectionsHigh
        expr: pg_connections_utilization_ratio > 0.8
        for: 1m
        labels: {severity: high}
"""
T0 = 1_800_000_000.0


def setup(tmp_path: Path, policy: NoData, rules: str = RULES
          ) -> tuple[MemoryStore, RuleManager, list[AlertEvent], list[float]]:
    clock = [T0]
    store = MemoryStore()
    store.register([MetricSpec("pg_connections_utilization_ratio", MetricKind.GAUGE, "u"),
                    MetricSpec("pg_up", MetricKind.GAUGE, "up")])
    events: list[AlertEvent] = []
    manager = RuleManager(store, store, events.append, no_data=policy,
                          clock=lambda: clock[0])
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    assert manager.load([path]) == []
    return store, manager, events, clock


def publish(store: MemoryStore, at: float, *, up: bool, ratio: float | None) -> None:
    labels = labels_of(target="main")
    store.publish("main/up", [Sample("pg_up", labels, 1.0 if up else 0.0, at)], at)
    samples = [] if ratio is None else [
        Sample("pg_connections_utilization_ratio", labels, ratio, at)]
    # A failing collector clears its snapshot: its series go stale at once.
    store.publish("main/connections", samples, at)


def run(store: MemoryStore, manager: RuleManager, clock: list[float], start: float,
        end: float, *, up: bool, ratio: float | None) -> list[AlertEvent]:
    events = []
    at = start
    while at <= end:
        clock[0] = at
        publish(store, at, up=up, ratio=ratio)
        events += manager.evaluate_group("g", at)
        at += 15
    return events


def states(manager: RuleManager) -> list[AlertState]:
    return [alert.state for _, _, alert in manager.active_alerts()]


def test_keep_last_holds_a_firing_alert_while_its_target_is_down(tmp_path: Path) -> None:
    store, manager, events, clock = setup(tmp_path, NoData.KEEP_LAST)
    run(store, manager, clock, T0, T0 + 120, up=True, ratio=0.9)
    assert states(manager) == [AlertState.FIRING]
    quiet = run(store, manager, clock, T0 + 135, T0 + 900, up=False, ratio=None)
    assert quiet == [] and states(manager) == [AlertState.FIRING]
    # Back up and still high: no second page. Then it really clears: resolved once.
    assert run(store, manager, clock, T0 + 915, T0 + 960, up=True, ratio=0.9) == []
    resolved = run(store, manager, clock, T0 + 975, T0 + 990, up=True, ratio=0.5)
    assert [e.kind for e in resolved] == [EventKind.RESOLVED]
    assert [e.kind for e in events] == [EventKind.FIRING, EventKind.RESOLVED]


def test_ok_lets_alerts_of_a_down_target_resolve(tmp_path: Path) -> None:
    store, manager, _, clock = setup(tmp_path, NoData.OK)
    run(store, manager, clock, T0, T0 + 120, up=True, ratio=0.9)
    resolved = run(store, manager, clock, T0 + 135, T0 + 150, up=False, ratio=None)
    assert [e.kind for e in resolved] == [EventKind.RESOLVED]


def test_alert_policy_treats_missing_data_as_true(tmp_path: Path) -> None:
    store, manager, _, clock = setup(tmp_path, NoData.ALERT)
    run(store, manager, clock, T0, T0 + 15, up=True, ratio=0.9)
    assert states(manager) == [AlertState.PENDING]
    # The target goes down while pending: the `for` clock keeps running to firing.
    fired = run(store, manager, clock, T0 + 30, T0 + 90, up=False, ratio=None)
    assert [e.kind for e in fired] == [EventKind.FIRING]


@pytest.mark.parametrize(("policy", "expected"), [
    (NoData.KEEP_LAST, [AlertState.FIRING]),
    (NoData.ALERT, [AlertState.FIRING]),
    (NoData.OK, []),
])
def test_a_failing_query_keeps_or_resolves_by_policy(tmp_path: Path, policy: NoData,
                                                     expected: list[AlertState]) -> None:
    # The threshold comes from another series; when a second threshold series for the same
    # target appears, the one-to-one match fails at evaluation time, as a broken join in a
    # real rule would.
    rules = RULES.replace("pg_connections_utilization_ratio > 0.8",
                          "pg_connections_utilization_ratio > on (target) threshold")
    store, manager, _, clock = setup(tmp_path, policy, rules)
    store.register([MetricSpec("threshold", MetricKind.GAUGE, "t")])

    def cycle(at: float, thresholds: list[str]) -> list[AlertEvent]:
        clock[0] = at
        labels = labels_of(target="main")
        store.publish("main/up", [Sample("pg_up", labels, 1.0, at)], at)
        store.publish("main/connections", [
            Sample("pg_connections_utilization_ratio", labels, 0.9, at)], at)
        store.publish("thresholds", [Sample("threshold", labels_of(target="main", source=s),
                                            0.8, at) for s in thresholds], at)
        return manager.evaluate_group("g", at)

    for at in (T0, T0 + 30, T0 + 60):
        cycle(at, ["config"])
    assert states(manager) == [AlertState.FIRING]
    events = cycle(T0 + 75, ["config", "override"])
    assert states(manager) == expected
    assert [e.kind for e in events] == ([] if expected else [EventKind.RESOLVED])
    failures = [v for spec, samples in store.current() for s in samples
                if spec.name == "piggywatch_rule_evaluation_failures_total" for v in [s.value]]
    assert failures == [1.0]
