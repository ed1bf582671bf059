"""What keeps an alert storm cheap changes nothing anyone sees.

Two shortcuts: the ALERTS export tells the store only what changed since the group's last
export (thousands of firing alerts stay as they were), and an alert that stays active and
whose annotations need rendering only because $value changed is rendered when it is read
(the API, an event, the state database), not at every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.rules.alerts import AlertEvent, AlertingRuleState, EventKind, Result
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.rules.templating import render_or_error
from piggywatch.store import Labels, MemoryStore, MetricKind, MetricSpec, Sample, labels_of

T0 = 1_800_000_000.0
CONTEXT = ((), "")


class CountingExpander:
    """RuleManager's expansion of templates, counting the renders."""

    def __init__(self) -> None:
        self.renders = 0

    def __call__(self, template: str, labels: Mapping[str, str], value: float) -> str:
        self.renders += 1
        return render_or_error(template, labels=labels, value=value)


def rule_state(annotations: Mapping[str, str], hold: float = 30.0) -> AlertingRuleState:
    return AlertingRuleState("g", "High", hold=hold, keep_firing_for=0.0,
                             labels={"severity": "high"}, annotations=annotations)


def view(events: Sequence[AlertEvent]) -> list[dict[str, object]]:
    return [{"kind": e.kind, "at": e.at, "alert": asdict(e.alert)} for e in events]


def everything(state: AlertingRuleState) -> list[dict[str, object]]:
    state.render_pending()
    return [asdict(a) for a in sorted(state.active.values(), key=lambda a: a.fingerprint)]


# --- annotations rendered when read ---------------------------------------------------------

def test_an_annotation_reading_value_is_rendered_when_read_with_the_last_value() -> None:
    state = rule_state({"summary": "{{ $labels.target }} at {{ $value }}",
                        "runbook": "http://runbooks/{{ $labels.target }}"})
    expand = CountingExpander()
    series = [labels_of(target=f"t{i}") for i in range(10)]
    state.evaluate([Result(s, 1.0) for s in series], 0.0, expand, cache_context=CONTEXT,
                   defer=True)
    assert expand.renders == 30  # the severity label and both annotations
    for n, value in enumerate([2.0, 3.0, 4.0]):
        state.evaluate([Result(s, value) for s in series], 5.0 * (n + 1), expand,
                       cache_context=CONTEXT, defer=True)
    # Nothing read the annotations while the value changed: nothing was rendered.
    assert expand.renders == 30
    alerts = state.alerts()
    assert {a.annotations["summary"] for a in alerts} == {f"t{i} at 4" for i in range(10)}
    assert {a.annotations["runbook"] for a in alerts} == {
        f"http://runbooks/t{i}" for i in range(10)}
    assert all(a.value == 4.0 for a in alerts)
    # One render per alert of the template that reads $value, and reading again is free.
    assert expand.renders == 40
    state.alerts()
    state.evaluate([Result(s, 4.0) for s in series], 20.0, expand, cache_context=CONTEXT,
                   defer=True)
    assert expand.renders == 40
    assert state.alerts()[0].annotations["summary"].endswith(" at 4")


def test_an_event_carries_the_annotations_of_its_evaluation() -> None:
    state = rule_state({"summary": "at {{ $value }}"}, hold=30.0)
    expand = CountingExpander()
    s = labels_of(target="t")
    state.evaluate([Result(s, 1.0)], 0.0, expand, cache_context=CONTEXT, defer=True)
    assert state.evaluate([Result(s, 2.0)], 15.0, expand, cache_context=CONTEXT,
                          defer=True) == []
    [fired] = state.evaluate([Result(s, 3.0)], 30.0, expand, cache_context=CONTEXT,
                             defer=True)
    assert fired.kind is EventKind.FIRING and fired.alert.annotations == {"summary": "at 3"}
    state.evaluate([Result(s, 5.0)], 45.0, expand, cache_context=CONTEXT, defer=True)
    [resolved] = state.evaluate([], 60.0, expand, cache_context=CONTEXT, defer=True)
    # Resolved alerts keep the annotations of the last evaluation that saw them.
    assert resolved.kind is EventKind.RESOLVED
    assert resolved.alert.annotations == {"summary": "at 5"}


def test_a_template_calling_query_is_never_left_for_later() -> None:
    queries: list[str] = []

    def expand(template: str, labels: Mapping[str, str], value: float) -> str:
        def query(q: str) -> list[object]:
            queries.append(q)
            return []
        return render_or_error(template, labels=labels, value=value,
                               query=query)  # type: ignore[arg-type]

    state = rule_state({"summary": "at {{ $value }}",
                        "other": '{{ query "up" | len }} up'})
    s = labels_of(target="t")
    for n in range(4):
        state.evaluate([Result(s, float(n))], 15.0 * n, expand, cache_context=CONTEXT,
                       defer=True)
        # The query runs at its evaluation, so the annotations are rendered then, too.
        assert len(queries) == n + 1
        [alert] = state.active.values()
        assert alert.annotations["summary"] == f"at {n}"


series_labels = st.sampled_from([labels_of(target=t) for t in ("t0", "t1", "t2")])
values = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, math.inf]),
                   st.floats(allow_nan=True, allow_infinity=True))
TEMPLATES = ["high", "{{ $labels.target }}", "{{ $value }}",
             "{{ $labels.target }} at {{ $value | humanize }}",
             "{{ if gt $value 1.0 }}big{{ else }}small{{ end }}", "{{ gt $value 1 }}",
             '{{ query "x" | len }}']


@settings(max_examples=150, deadline=None)
@given(annotations=st.dictionaries(st.sampled_from(["summary", "description"]),
                                   st.sampled_from(TEMPLATES), max_size=2),
       cycles=st.lists(st.tuples(st.dictionaries(series_labels, values, max_size=3),
                                 st.booleans()), min_size=1, max_size=10))
def test_rendering_when_read_is_indistinguishable_from_rendering_every_time(
        annotations: dict[str, str], cycles: list[tuple[dict[Labels, float], bool]]) -> None:
    def expand(template: str, labels: Mapping[str, str], value: float) -> str:
        return render_or_error(template, labels=labels, value=value, query=lambda q: [])

    plain, deferred = rule_state(annotations, hold=15.0), rule_state(annotations, hold=15.0)
    for n, (cycle, read) in enumerate(cycles):
        results = [Result(labels, value) for labels, value in cycle.items()]
        ts = 1000.0 + 15 * n
        assert view(deferred.evaluate(results, ts, expand, cache_context=CONTEXT,
                                      defer=True)) == view(plain.evaluate(results, ts, expand))
        if read:
            assert [asdict(a) for a in deferred.alerts()] == [asdict(a) for a in plain.alerts()]
    assert everything(deferred) == everything(plain)


# --- the manager: ALERTS, the API's view, the state database, reloads -----------------------

def rules_text(team: str = "TEAM", summary: str = "SUMMARY") -> str:
    return f"""\
groups:
  - name: g
    rules:
      - alert: High
        expr: gauge > 0.5
        for: 1m
        labels: {{severity: high, team: '{{{{ $labels.target }}}}-{team}'}}
        annotations: {{summary: '{{{{ $labels.target }}}} at {{{{ $value }}}} {summary}'}}
"""


RULES = rules_text()


def manager_on(tmp_path: Path, rules: str = RULES, state_db: AlertStateDB | None = None
               ) -> tuple[MemoryStore, RuleManager, list[AlertEvent]]:
    store = MemoryStore()
    store.register([MetricSpec("gauge", MetricKind.GAUGE, "g")])
    events: list[AlertEvent] = []

    def sink(event: AlertEvent) -> None:
        events.append(event)

    manager = RuleManager(store, store, sink, no_data=NoData.OK, state_db=state_db,
                          clock=lambda: T0)
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    assert manager.load([path]) == []
    return store, manager, events


def evaluate(store: MemoryStore, manager: RuleManager, at: float,
             values: Mapping[str, float]) -> list[AlertEvent]:
    store.publish("src", [Sample("gauge", labels_of(target=t), v, at)
                          for t, v in values.items()], at)
    return manager.evaluate_group("g", at)


def exported(store: MemoryStore, name: str) -> dict[Labels, float]:
    return {s.labels: s.value for spec, samples in store.current() if spec.name == name
            for s in samples}


def expected_export(manager: RuleManager) -> tuple[dict[Labels, float], dict[Labels, float]]:
    alerts = [a for _, _, a in manager.active_alerts()]
    return ({labels_of(dict(a.labels), alertstate=a.state.value): 1.0 for a in alerts},
            {a.labels: a.active_at for a in alerts})


def queried(manager: RuleManager, expr: str, at: float) -> dict[Labels, float]:
    return {labels_of({k: v for k, v in s.labels.items() if k != "__name__"}): s.value
            for s in manager.query(expr, at)}


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.dictionaries(st.sampled_from(["t0", "t1", "t2", "t3"]),
                                                st.sampled_from([0.1, 0.7, 0.8, 0.9]),
                                                max_size=4),
                                st.sampled_from(["", "", "", "same", "team", "summary"])),
                      min_size=1, max_size=12))
def test_alerts_exported_by_changes_are_what_the_rules_hold(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[dict[str, float], str]]) -> None:
    tmp_path = tmp_path_factory.mktemp("rules")
    store, manager, _ = manager_on(tmp_path)
    team, summary = "TEAM", "SUMMARY"
    for n, (values, reload) in enumerate(steps):
        at = T0 + 30 * n
        if reload:
            # Reloaded as it was, or with its label or its annotation template changed.
            team = f"T{n}" if reload == "team" else team
            summary = f"S{n}" if reload == "summary" else summary
            (tmp_path / "rules.yaml").write_text(rules_text(team, summary))
            assert manager.load([tmp_path / "rules.yaml"]) == []
        evaluate(store, manager, at, values)
        alerts, for_state = expected_export(manager)
        assert exported(store, "ALERTS") == alerts
        assert exported(store, "ALERTS_FOR_STATE") == for_state
        # And as a rule reads them (the store's history, stale markers included).
        assert queried(manager, "ALERTS", at) == alerts
        assert queried(manager, "ALERTS_FOR_STATE", at) == for_state
        for _, _, alert in manager.active_alerts():
            target = alert.label("target")
            assert alert.label("team") == f"{target}-{team}"
            assert alert.annotations["summary"] == f"{target} at {values[target]} {summary}"


def test_a_reload_applies_changed_label_and_annotation_templates(tmp_path: Path) -> None:
    store, manager, events = manager_on(tmp_path)
    evaluate(store, manager, T0, {"t0": 0.9})
    evaluate(store, manager, T0 + 60, {"t0": 0.8})
    assert [e.alert.label("team") for e in events] == ["t0-TEAM"]
    (tmp_path / "rules.yaml").write_text(rules_text("ops", "(new)"))
    assert manager.load([tmp_path / "rules.yaml"]) == []
    evaluate(store, manager, T0 + 120, {"t0": 0.8})
    [(_, _, alert)] = manager.active_alerts()
    assert alert.label("team") == "t0-ops" and alert.state.value == "pending"
    assert alert.annotations == {"summary": "t0 at 0.8 (new)"}
    assert set(exported(store, "ALERTS")) == {labels_of(
        alertname="High", alertstate="pending", severity="high", target="t0", team="t0-ops")}
    # The alert under the old labels resolved, as Prometheus would resolve it.
    assert [(e.kind, e.alert.label("team")) for e in events[1:]] == [
        (EventKind.RESOLVED, "t0-TEAM")]


def test_the_state_database_gets_the_annotations_of_the_last_evaluation(
        tmp_path: Path) -> None:
    db = AlertStateDB(tmp_path / "state.db")
    store, manager, _ = manager_on(tmp_path, state_db=db)
    evaluate(store, manager, T0, {"t0": 0.6})
    evaluate(store, manager, T0 + 30, {"t0": 0.7})
    # t1's arrival changes the rule's alerts, so they are written: t0's as of now.
    evaluate(store, manager, T0 + 60, {"t0": 0.8, "t1": 0.9})
    saved = AlertStateDB(tmp_path / "state.db").load()[("g", "High")]
    assert {a.label("target"): a.annotations["summary"] for a in saved} == {
        "t0": "t0 at 0.8 SUMMARY", "t1": "t1 at 0.9 SUMMARY"}
    db.close()


def test_a_group_removed_by_a_reload_takes_its_alerts_and_recorded_series_with_it(
        tmp_path: Path) -> None:
    recorded = RULES + """\
      - record: gauge:max
        expr: max(gauge)
  - name: kept
    rules:
      - record: gauge:min
        expr: min(gauge)
"""
    store, manager, _ = manager_on(tmp_path, recorded)
    for at in (T0, T0 + 60):
        evaluate(store, manager, at, {"t0": 0.9})
        manager.evaluate_group("kept", at)
    assert set(exported(store, "ALERTS")) and exported(store, "gauge:max") == {(): 0.9}
    (tmp_path / "rules.yaml").write_text("groups:\n" + recorded.split("groups:\n", 1)[1]
                                         .split("  - name: kept\n", 1)[0].replace(
                                             "name: g", "name: other", 1)
                                         + "  - name: kept\n" + recorded.split(
                                             "  - name: kept\n", 1)[1])
    assert manager.load([tmp_path / "rules.yaml"]) == []
    # Group g is gone (its rules live on as "other", not evaluated yet): nothing of g stays.
    assert exported(store, "ALERTS") == {}
    assert exported(store, "gauge:max") == {}
    assert exported(store, "gauge:min") == {(): 0.9}  # the kept group's is untouched
    assert queried(manager, "gauge:max", T0 + 61) == {}


def test_alerts_export_tells_everything_again_after_a_publish_that_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, manager, sunk = manager_on(tmp_path)
    evaluate(store, manager, T0, {"a": 0.9, "b": 0.9})
    # What the export told the store is gone, so telling it changes fails once: the
    # evaluation's transitions (a and b firing after their minute) still reach the sink.
    store.clear("rules/g/ALERTS")
    fired = evaluate(store, manager, T0 + 60, {"a": 0.9, "b": 0.9, "c": 0.9})
    assert "could not export the alerts of group 'g'" in caplog.text
    assert sorted((e.kind, dict(e.alert.labels)["target"]) for e in fired) == [
        (EventKind.FIRING, "a"), (EventKind.FIRING, "b")]
    assert sunk[-2:] == fired
    evaluate(store, manager, T0 + 75, {"a": 0.9, "b": 0.9, "c": 0.9})
    alerts, for_state = expected_export(manager)
    assert len(alerts) == 3
    assert exported(store, "ALERTS") == alerts
    assert exported(store, "ALERTS_FOR_STATE") == for_state
