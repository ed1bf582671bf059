"""Several rules of one name in one group, as Prometheus allows (a warning and a critical
threshold, a record name filled by two expressions): each keeps its own state, across a
restart too."""

from __future__ import annotations

from pathlib import Path

from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of

RULES = """\
groups:
  - name: connections
    rules:
      - alert: ConnectionsHigh
        expr: used_ratio > 0.8
        for: 1m
        labels: {severity: warning}
      - alert: ConnectionsHigh
        expr: used_ratio > 0.95
        labels: {severity: critical}
      - record: target:used:ratio
        expr: used_ratio{target="a"}
      - record: target:used:ratio
        expr: used_ratio{target="b"}
"""
T0 = 1_800_000_000.0


def build(tmp_path: Path, events: list[AlertEvent]) -> tuple[MemoryStore, RuleManager]:
    store = MemoryStore()
    store.register([MetricSpec("used_ratio", MetricKind.GAUGE, "Share of connections used")])
    manager = RuleManager(store, store, events.append, no_data=NoData.OK,
                          state_db=AlertStateDB(tmp_path / "state.db"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert manager.load([rules]) == []
    manager.resume(AlertStateDB(tmp_path / "state.db"))
    return store, manager


def publish(store: MemoryStore, at: float, a: float, b: float) -> None:
    store.publish("app", [Sample("used_ratio", labels_of(target="a"), a, at),
                          Sample("used_ratio", labels_of(target="b"), b, at)], at)


def firing(manager: RuleManager) -> set[tuple[str, str]]:
    return {(alert.label("severity"), alert.label("target"))
            for _, _, alert in manager.active_alerts() if alert.state.value == "firing"}


def test_a_warning_and_a_critical_rule_of_one_name_keep_their_own_alerts(
        tmp_path: Path) -> None:
    events: list[AlertEvent] = []
    store, manager = build(tmp_path, events)
    publish(store, T0, 0.97, 0.85)
    manager.evaluate_group("connections", T0)
    assert firing(manager) == {("critical", "a")}, "critical has no for: fires at once"
    publish(store, T0 + 61, 0.97, 0.85)
    manager.evaluate_group("connections", T0 + 61)
    assert firing(manager) == {("critical", "a"), ("warning", "a"), ("warning", "b")}
    # Neither rule's evaluation resolves the other's alerts.
    assert [e for e in events if e.kind is EventKind.RESOLVED] == []
    # Both record rules keep their series.
    recorded = {dict(s.labels)["target"]: s.value
                for s in manager.query("target:used:ratio", T0 + 61)}
    assert recorded == {"a": 0.97, "b": 0.85}

    # A restart restores each rule's own alerts: nothing fires again, nothing resolves.
    events.clear()
    store, manager = build(tmp_path, events)
    publish(store, T0 + 75, 0.97, 0.85)
    manager.evaluate_group("connections", T0 + 75)
    assert firing(manager) == {("critical", "a"), ("warning", "a"), ("warning", "b")}
    assert events == []

    publish(store, T0 + 90, 0.85, 0.5)
    manager.evaluate_group("connections", T0 + 90)
    resolved = {(e.alert.label("severity"), e.alert.label("target")) for e in events
                if e.kind is EventKind.RESOLVED}
    assert resolved == {("critical", "a"), ("warning", "b")}
    assert firing(manager) == {("warning", "a")}
