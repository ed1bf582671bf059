"""Rendered alert templates are reused only while their inputs stay the same.

An alerting rule's label and annotation templates are rendered for every active alert at
every evaluation, as Prometheus does. AlertingRuleState reuses a series' rendered text
while the template, the series' labels, its value (for templates that read it) and the
external labels/URL are unchanged; templates that call `query` are always rendered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.rules.alerts import AlertEvent, AlertingRuleState, Result
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.templating import QuerySample, render_or_error, template_inputs
from piggywatch.store import Labels, MemoryStore, MetricKind, MetricSpec, Sample, labels_of

CONTEXT = ((("cluster", "c1"),), "http://pw.example/")

# Templates of every kind the cache must tell apart.
TEMPLATES = [
    "",
    "high",
    "{{ $labels.target }}",
    "{{ $labels.target }} at {{ $value | humanize }}",
    "{{ $value }}",
    "{{ .Value | printf \"%.2f\" }}",
    "{{ . }}",
    "{{ $.Labels.target }}",
    "{{ with $labels.target }}{{ . }}{{ end }}",
    "{{ $externalLabels.cluster }} {{ $externalURL }}",
    "{{ if gt $value 1.0 }}big{{ else }}small{{ end }}",
    "{{ $value | humanizePercentage }} {{ $labels.missing }}",
    "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
    "{{ gt $value 1 }}",  # an execution error: the text is the error
    "{{ nope }}",  # a parse error
    "{{ $value := 3.0 }}{{ $value }}",
    '{{ "a" | printf "%s-%s" $labels.datname }}',
]


class Expander:
    """Prometheus's expansion (as RuleManager runs it), counting renders and queries."""

    def __init__(self, external_labels: Mapping[str, str] | None = None,
                 external_url: str = "http://pw.example/") -> None:
        self.external_labels = dict(external_labels or {"cluster": "c1"})
        self.external_url = external_url
        self.renders = 0
        self.queries = 0

    def query(self, expr: str) -> list[QuerySample]:
        self.queries += 1
        return [QuerySample({"q": expr}, float(self.queries))]

    def __call__(self, template: str, labels: Mapping[str, str], value: float) -> str:
        self.renders += 1
        return render_or_error(template, labels=labels, value=value, query=self.query,
                               external_labels=self.external_labels,
                               external_url=self.external_url)


def make_state(labels: Mapping[str, str], annotations: Mapping[str, str]) -> AlertingRuleState:
    return AlertingRuleState("g", "Rule", hold=30.0, keep_firing_for=45.0, labels=labels,
                             annotations=annotations)


def snapshot(state: AlertingRuleState) -> list[dict[str, object]]:
    return [asdict(a) for a in sorted(state.active.values(), key=lambda a: a.fingerprint)]


def event_view(events: Sequence[AlertEvent]) -> list[dict[str, object]]:
    return [{"kind": e.kind, "at": e.at, "alert": asdict(e.alert)} for e in events]


series_labels = st.builds(
    lambda target, db, name: labels_of(target=target, datname=db, **(
        {"__name__": name} if name else {})),
    st.sampled_from(["t0", "t1", "t2", ""]),
    st.sampled_from(["db0", "db1", "db2"]),
    st.sampled_from(["", "gauge_1"]),
)
values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.0, math.nan, math.inf, -math.inf, 1e-9, 1e12]),
    st.floats(allow_nan=True, allow_infinity=True),
)
cycle_results = st.dictionaries(series_labels, values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    label_templates=st.dictionaries(st.sampled_from(["severity", "target", "summary"]),
                                    st.sampled_from(TEMPLATES), max_size=2),
    annotation_templates=st.dictionaries(st.sampled_from(["summary", "description"]),
                                         st.sampled_from(TEMPLATES), max_size=2),
    cycles=st.lists(cycle_results, min_size=1, max_size=8),
)
def test_cached_results_are_identical_to_rendering_every_time(
        label_templates: dict[str, str], annotation_templates: dict[str, str],
        cycles: list[dict[Labels, float]]) -> None:
    plain, cached = make_state(label_templates, annotation_templates), make_state(
        label_templates, annotation_templates)
    expand_plain, expand_cached = Expander(), Expander()
    for n, cycle in enumerate(cycles):
        results = [Result(labels, value) for labels, value in cycle.items()]
        ts = 1000.0 + 15 * n
        outcome_plain: object
        outcome_cached: object
        try:
            outcome_plain = event_view(plain.evaluate(results, ts, expand_plain))
        except ValueError as exc:  # DuplicateAlertError, when label templates collide
            outcome_plain = str(exc)
        try:
            outcome_cached = event_view(cached.evaluate(results, ts, expand_cached,
                                                        cache_context=CONTEXT))
        except ValueError as exc:
            outcome_cached = str(exc)
        assert outcome_cached == outcome_plain
        assert snapshot(cached) == snapshot(plain)
        # Bounded: never more than the series of one evaluation.
        assert cached.cached_series() <= len(results)
    assert expand_cached.renders <= expand_plain.renders


def test_unchanged_inputs_are_not_rendered_again() -> None:
    state = make_state({"severity": "high", "instance": "{{ $labels.target }}"},
                       {"summary": "{{ $labels.target }} at {{ $value | humanize }}",
                        "runbook": "http://runbooks/{{ $labels.datname }}"})
    expand = Expander()
    results = [Result(labels_of(target=f"t{i}", datname="db"), 0.5) for i in range(10)]
    state.evaluate(results, 0.0, expand, cache_context=CONTEXT)
    assert expand.renders == 40
    state.evaluate(results, 15.0, expand, cache_context=CONTEXT)
    assert expand.renders == 40
    # $value changed for one series: only its $value template is rendered again.
    results[3] = Result(results[3].labels, 2500.0)
    state.evaluate(results, 30.0, expand, cache_context=CONTEXT)
    assert expand.renders == 41
    alert = next(a for a in state.alerts() if a.label("instance") == "t3")
    assert alert.annotations["summary"] == "t3 at 2.5k"
    assert alert.value == 2500.0


def test_negative_zero_and_nan_are_values_of_their_own() -> None:
    state = make_state({}, {"v": "{{ $value }}"})
    expand = Expander()
    labels = labels_of(target="t")
    for value, text in [(0.0, "0"), (-0.0, "-0"), (0.0, "0"), (math.nan, "NaN"),
                        (math.nan, "NaN"), (math.inf, "+Inf")]:
        state.evaluate([Result(labels, value)], 0.0, expand, cache_context=CONTEXT)
        assert state.alerts()[0].annotations["v"] == text


def test_a_template_calling_query_is_rendered_every_time() -> None:
    state = make_state({"severity": "high"},
                       {"other": '{{ with query "up" }}{{ . | first | value }}{{ end }}',
                        "summary": "{{ $labels.target }}"})
    expand = Expander()
    results = [Result(labels_of(target=f"t{i}"), 1.0) for i in range(5)]
    for cycle in range(1, 4):
        state.evaluate(results, 15.0 * cycle, expand, cache_context=CONTEXT)
        assert expand.queries == 5 * cycle
        # The query's (changing) result is in the text: never a stale one.
        assert {a.annotations["other"] for a in state.alerts()} == {
            str(n) for n in range(5 * cycle - 4, 5 * cycle + 1)}


def test_a_label_template_calling_query_is_rendered_every_time() -> None:
    state = make_state({"q": '{{ query "up" | len }}'}, {})
    expand = Expander()
    results = [Result(labels_of(target="t"), 1.0)]
    for cycle in range(1, 4):
        state.evaluate(results, 15.0 * cycle, expand, cache_context=CONTEXT)
        assert expand.queries == cycle


def test_a_new_context_renders_again() -> None:
    state = make_state({}, {"where": "{{ $externalLabels.cluster }}"})
    results = [Result(labels_of(target="t"), 1.0)]
    first, second = Expander({"cluster": "a"}), Expander({"cluster": "b"})
    state.evaluate(results, 0.0, first, cache_context=((("cluster", "a"),), ""))
    state.evaluate(results, 15.0, second, cache_context=((("cluster", "b"),), ""))
    assert second.renders == 1
    assert state.alerts()[0].annotations["where"] == "b"


def test_changed_templates_render_again() -> None:
    state = make_state({}, {"summary": "old"})
    expand = Expander()
    results = [Result(labels_of(target="t"), 1.0)]
    state.evaluate(results, 0.0, expand, cache_context=CONTEXT)
    state.annotations["summary"] = "new"
    state.evaluate(results, 15.0, expand, cache_context=CONTEXT)
    assert state.alerts()[0].annotations["summary"] == "new"


def test_the_cache_forgets_series_that_are_gone() -> None:
    state = make_state({"severity": "high"}, {"summary": "{{ $value }}"})
    expand = Expander()
    for cycle in range(50):
        # Every cycle a fresh set of series (label churn): the cache must not grow.
        results = [Result(labels_of(target=f"t{cycle}-{i}"), float(i)) for i in range(20)]
        state.evaluate(results, 15.0 * cycle, expand, cache_context=CONTEXT)
        assert state.cached_series() == 20
    state.evaluate([], 15.0 * 50, expand, cache_context=CONTEXT)
    assert state.cached_series() == 0
    # Without a context nothing is kept.
    state.evaluate([Result(labels_of(target="x"), 1.0)], 15.0 * 51, expand)
    assert state.cached_series() == 0


def test_the_cached_annotations_are_not_shared_with_alerts() -> None:
    state = make_state({}, {"summary": "{{ $labels.target }}"})
    expand = Expander()
    results = [Result(labels_of(target="t"), 1.0)]
    state.evaluate(results, 0.0, expand, cache_context=CONTEXT)
    state.alerts()[0].annotations["summary"] = "changed by someone"
    state.evaluate(results, 15.0, expand, cache_context=CONTEXT)
    assert state.alerts()[0].annotations["summary"] == "t"


def test_template_inputs_are_decided_from_the_parse_tree() -> None:
    assert not template_inputs("high").live
    assert not template_inputs("high").uses_value
    assert not template_inputs("{{ $labels.a }} {{ $externalURL }}").uses_value
    assert not template_inputs("{{ range $labels }}x{{ end }}").uses_value
    for text in ["{{ $value }}", "{{ .Value }}", "{{ . }}", "{{ $ }}", "{{ $.Value }}",
                 "{{ with $labels }}{{ .a }}{{ end }}"]:
        assert template_inputs(text).uses_value, text
        assert not template_inputs(text).live, text
    for text in ['{{ query "up" }}', '{{ with query "up" }}{{ end }}',
                 '{{ if true }}{{ range query "up" }}{{ end }}{{ end }}',
                 '{{ (query "up") }}', '{{ define "x" }}{{ query "up" }}{{ end }}',
                 '{{ define "x" }}y{{ end }}{{ template "x" }}',
                 # Too deep to promise the same "nesting too deep" outcome every time.
                 "{{ " + "(" * 60 + "1" + ")" * 60 + " }}"]:
        assert template_inputs(text).live, text
    # A template that does not parse renders as its (fixed) parse error.
    assert not template_inputs("{{ nope }}").live


RULES = """\
groups:
  - name: g
    rules:
      - alert: High
        expr: gauge > 0.5
        for: 1m
        labels: {severity: high, where: '{{ $labels.target }}'}
        annotations:
          summary: '{{ $labels.target }} at {{ $value | humanize }} in {{ $externalLabels.dc }}'
          count: '{{ query "gauge" | len }} series'
"""


def test_manager_results_match_rendering_every_time(tmp_path: Path) -> None:
    def setup(cache: bool) -> tuple[MemoryStore, RuleManager]:
        store = MemoryStore()
        store.register([MetricSpec("gauge", MetricKind.GAUGE, "g")])
        manager = RuleManager(store, store, lambda e: None, no_data=NoData.OK,
                              external_labels={"dc": "x"}, clock=lambda: 0.0)
        if not cache:
            manager._template_context = None  # type: ignore[assignment]
        path = tmp_path / "rules.yaml"
        path.write_text(RULES)
        assert manager.load([path]) == []
        return store, manager

    runs = [setup(True), setup(False)]
    seen: list[list[list[object]]] = [[], []]
    for step in range(12):
        at = 1_800_000_000.0 + 15 * step
        for (store, manager), out in zip(runs, seen, strict=True):
            samples = [Sample("gauge", labels_of(target=f"t{i}"),
                              (0.9 if (i + step) % 3 else 0.1) + step / 1000, at)
                       for i in range(4 + step % 3)]
            store.publish("src", samples, at)
            events = manager.evaluate_group("g", at)
            out.append([event_view(events),
                        sorted((asdict(a) for _, _, a in manager.active_alerts()),
                               key=lambda a: str(a["fingerprint"]))])
    assert seen[0] == seen[1]
    assert any(alerts for _, alerts in seen[0])
