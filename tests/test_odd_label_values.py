"""Half an emoji in a label value: JSON's "\\ud83d" escape, in an edge function's log line or a
probe's answer, gives Python a lone surrogate, which UTF-8 cannot encode. It must cost that one
value its odd character, never the source's whole exposition nor the alert about it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from piggywatch.exporter import MetricsApp, build_registry
from piggywatch.jobs import CollectorJob
from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.store import Changes, MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from tests.test_exposition_cache import scrape

T0 = 1_800_000_000.0
ODD = "resize\udc80"  # as json.loads('"resize\\udc80"') gives it


def exposed(store: MemoryStore, name: str) -> dict[str, float]:
    app = MetricsApp(build_registry(store, process_metrics=False))
    try:
        body = gzip.decompress(scrape(app, HTTP_ACCEPT_ENCODING="gzip")[1]).decode()
    finally:
        app.close()
    return {sample.labels.get("function", ""): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples
            if sample.name == name}


def test_a_lone_surrogate_is_exposed_as_a_question_mark_whole_or_changed() -> None:
    store = MemoryStore()
    store.register([MetricSpec("edge_errors", MetricKind.GAUGE, "errors"),
                    MetricSpec("edge_calls", MetricKind.GAUGE, "calls")])
    store.publish("edge", [Sample("edge_errors", labels_of(function=ODD), 3.0, T0),
                           Sample("edge_errors", labels_of(function="thumb"), 1.0, T0)], T0)
    store.publish_changes("calls", Changes([Sample("edge_calls", labels_of(function=ODD), 9.0,
                                                   T0)], []), T0, stamped=True, full=True)
    assert exposed(store, "edge_errors") == {"resize?": 3.0, "thumb": 1.0}
    assert exposed(store, "edge_calls") == {"resize?": 9.0}


def test_an_alert_on_a_lone_surrogate_label_fires_is_exported_and_saved(tmp_path: Path) -> None:
    store = MemoryStore()
    store.register([MetricSpec("edge_errors", MetricKind.GAUGE, "errors")])
    events: list[AlertEvent] = []

    def sink(event: AlertEvent) -> None:
        events.append(event)

    manager = RuleManager(store, store, sink, no_data=NoData.OK,
                          state_db=AlertStateDB(tmp_path / "state.db"), clock=lambda: T0)
    (tmp_path / "rules.yaml").write_text("""\
groups:
  - name: edge
    rules:
      - alert: EdgeErrors
        expr: edge_errors > 2
        annotations: {summary: "{{ $labels.function }} fails"}
""")
    assert manager.load([tmp_path / "rules.yaml"]) == []
    store.publish("edge", [Sample("edge_errors", labels_of(function=ODD), 3.0, T0),
                           Sample("edge_errors", labels_of(function="resize?"), 3.0, T0)], T0)
    fired = manager.evaluate_group("edge", T0)
    assert sorted(e.alert.label("function") for e in fired) == sorted([ODD, "resize?"])
    assert {e.kind for e in fired} == {EventKind.FIRING}
    assert len({e.alert.fingerprint for e in fired}) == 2
    assert exposed(store, "ALERTS") == {"resize?": 1.0}  # both, as Prometheus reads them
    # Saved, and the same alerts come back after a restart.
    again = RuleManager(store, store, sink, no_data=NoData.OK, clock=lambda: T0)
    assert again.load([tmp_path / "rules.yaml"]) == []
    again.resume(AlertStateDB(tmp_path / "state.db"))
    assert sorted(a.fingerprint for _, _, a in again.active_alerts()) == sorted(
        e.alert.fingerprint for e in fired)


class _JsonSource:
    """A source as an extension would write one: label values straight from a JSON answer."""

    name = "queue_depths"

    def specs(self) -> list[MetricSpec]:
        return [MetricSpec("queue_depth", MetricKind.GAUGE, "depth")]

    def collect(self, now: float) -> list[Sample]:
        answer = json.loads('{"mail\\udc80": 3, "push": 1}')
        return [Sample("queue_depth", labels_of(queue=queue), float(depth), now)
                for queue, depth in answer.items()]


def test_a_source_job_takes_lone_surrogates_out_of_its_label_values() -> None:
    store = MemoryStore()
    store.register(_JsonSource().specs())
    job = CollectorJob("app", None, _JsonSource(), 15.0, store, SelfMetrics(store))
    job.run()
    assert {s.labels: s.value for spec, samples in store.current()
            if spec.name == "queue_depth" for s in samples} == {
        labels_of(queue="mail\ufffd"): 3.0, labels_of(queue="push"): 1.0}
