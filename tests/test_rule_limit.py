"""A rule group's `limit`, enforced as Prometheus enforces it (and as promtool reports it)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from piggywatch.rules.alerts import AlertEvent, EventKind
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0
LIMIT = 2
RULES = f"""\
groups:
  - name: queues
    limit: {LIMIT}
    rules:
      - alert: QueueBacklog
        expr: app_queue_depth > 10
        labels: {{severity: high}}
      - record: queue:depth:high
        expr: app_queue_depth > 10
"""


def setup(tmp_path: Path, rules: str = RULES, store: MemoryStore | None = None
          ) -> tuple[MemoryStore, RuleManager, list[AlertEvent]]:
    store = MemoryStore() if store is None else store
    store.register([MetricSpec("app_queue_depth", MetricKind.GAUGE, "depth")])
    events: list[AlertEvent] = []

    def sink(event: AlertEvent) -> None:
        events.append(event)

    manager = RuleManager(store, store, sink, no_data=NoData.OK, clock=lambda: T0)
    (tmp_path / "rules.yaml").write_text(rules)
    assert manager.load([tmp_path / "rules.yaml"]) == []
    return store, manager, events


def evaluate(store: MemoryStore, manager: RuleManager, at: float, depths: dict[str, float]
             ) -> list[AlertEvent]:
    store.publish("app/queues", [Sample("app_queue_depth", labels_of(queue=q), d, at)
                                 for q, d in depths.items()], at)
    return manager.evaluate_group("queues", at)


def exported(store: MemoryStore, name: str) -> list[Sample]:
    return [s for spec, samples in store.current() if spec.name == name for s in samples]


def failures(store: MemoryStore) -> float:
    [sample] = [s for s in exported(store, "piggywatch_rule_evaluation_failures_total")
                if dict(s.labels) == {"rule_group": "queues"}]
    return sample.value


def test_more_alerts_than_the_limit_fail_the_rule_and_discard_its_alerts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, manager, events = setup(tmp_path)
    high = {f"q{i}": 50.0 for i in range(LIMIT)}
    fired = evaluate(store, manager, T0, high)
    assert sorted((e.kind, e.alert.label("queue")) for e in fired) == [
        (EventKind.FIRING, q) for q in sorted(high)]
    assert failures(store) == 0
    assert len(exported(store, "ALERTS")) == LIMIT

    # One queue more than the limit: the alerting rule's evaluation fails, as in Prometheus
    # ("exceeded limit of 2 with 3 alerts"): no new alert is sent, every alert of the rule
    # is dropped (the ones firing are resolved, as Alertmanager resolves them once
    # Prometheus stops sending them), and no ALERTS series remains. The recording rule,
    # which would record 3 series, fails likewise.
    over = {**high, f"q{LIMIT}": 50.0}
    with caplog.at_level(logging.WARNING, logger="piggywatch.rules.manager"):
        dropped = evaluate(store, manager, T0 + 15, over)
    assert sorted((e.kind, e.alert.label("queue")) for e in dropped) == [
        (EventKind.RESOLVED, q) for q in sorted(high)]
    assert manager.active_alerts() == []
    assert exported(store, "ALERTS") == [] and exported(store, "ALERTS_FOR_STATE") == []
    # Nothing recorded; as in Prometheus (no stale markers) the last values stay.
    assert {dict(s.labels)["queue"] for s in exported(store, "queue:depth:high")} == set(high)
    assert failures(store) == 2
    assert f"exceeded limit of {LIMIT} with {LIMIT + 1} alerts" in caplog.text
    assert f"exceeded limit of {LIMIT} with {LIMIT + 1} series" in caplog.text

    # Still over: nothing more is sent (the alerts are gone, not re-resolved).
    assert evaluate(store, manager, T0 + 30, over) == []
    assert failures(store) == 4

    # Back within the limit: the alerts start again from scratch (a new active_at).
    back = evaluate(store, manager, T0 + 45, high)
    assert sorted((e.kind, e.alert.label("queue"), e.alert.active_at) for e in back) == [
        (EventKind.FIRING, q, T0 + 45) for q in sorted(high)]
    assert len(exported(store, "queue:depth:high")) == LIMIT
    assert [e.kind for e in events].count(EventKind.FIRING) == 2 * LIMIT


def test_pending_alerts_count_towards_the_limit_and_a_limit_of_0_means_none(
        tmp_path: Path) -> None:
    rules = RULES.replace("labels: {severity: high}", "for: 5m\n        labels: {}")
    store, manager, events = setup(tmp_path)
    (tmp_path / "rules.yaml").write_text(rules)
    assert manager.load([tmp_path / "rules.yaml"]) == []
    over = {f"q{i}": 50.0 for i in range(LIMIT + 1)}
    assert evaluate(store, manager, T0, over) == []
    assert manager.active_alerts() == [] and failures(store) == 2

    (tmp_path / "rules.yaml").write_text(rules.replace(f"limit: {LIMIT}", "limit: 0"))
    assert manager.load([tmp_path / "rules.yaml"]) == []
    assert evaluate(store, manager, T0 + 15, over) == []
    assert len(manager.active_alerts()) == LIMIT + 1
    assert events == []


UNIT_TEST = """\
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'app_queue_depth{queue="a"}'
        values: '50x5'
      - series: 'app_queue_depth{queue="b"}'
        values: '50x5'
      - series: 'app_queue_depth{queue="c"}'
        values: '0 0 50x3'
    alert_rule_test:
      - eval_time: 1m
        alertname: QueueBacklog
        exp_alerts:
          - exp_labels: {severity: high, queue: a}
          - exp_labels: {severity: high, queue: b}
      - eval_time: 3m
        alertname: QueueBacklog
"""


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.parametrize("tool", ["piggywatch", "promtool"])
def test_rules_test_reports_the_exceeded_limit_like_promtool(tmp_path: Path, tool: str
                                                             ) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "test.yaml").write_text(UNIT_TEST)
    if tool == "promtool":
        binary = promtool()
        if binary is None:
            pytest.skip("promtool (Debian package prometheus) is not installed")
        command = [binary, "test", "rules", "test.yaml"]
    else:
        command = [sys.executable, "-m", "piggywatch", "rules", "test", "test.yaml"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    report = result.stdout + result.stderr
    # At 1m two queues alert (within the limit); at 2m the third one joins and both rules
    # of the group fail, which fails the test.
    assert result.returncode == 1, report
    # promtool 2.42's words, checked with it.
    assert "rule: QueueBacklog, time: 2m0s, err: exceeded limit of 2 with 3 alerts" in report
    assert "rule: queue:depth:high, time: 2m0s, err: exceeded limit of 2 with 3 series" \
        in report


def test_rule_labels_that_make_two_series_one_fail_the_recording_rule(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As Prometheus ("vector contains metrics with the same labelset after applying rule
    # labels"): exported twice, the series would make every scrape of /metrics fail.
    store, manager, _ = setup(tmp_path, """\
groups:
  - name: queues
    rules:
      - record: queue:depth
        expr: app_queue_depth
        labels: {queue: all}
      - alert: QueueBacklog
        expr: app_queue_depth > 10
""")
    evaluate(store, manager, T0, {"mail": 12})
    assert [(s.labels, s.value) for s in exported(store, "queue:depth")] == [
        (labels_of(queue="all"), 12.0)]
    with caplog.at_level(logging.WARNING):
        fired = evaluate(store, manager, T0 + 15, {"mail": 12, "push": 30})
    assert "same labelset after applying rule labels" in caplog.text
    assert failures(store) == 1
    # The last recorded value stays, once; the group's alerting rule went on.
    assert [(s.labels, s.value) for s in exported(store, "queue:depth")] == [
        (labels_of(queue="all"), 12.0)]
    assert [(e.kind, e.alert.label("queue")) for e in fired] == [(EventKind.FIRING, "push")]


class _StoreThatFailsRecording(MemoryStore):
    """A store with a bug in taking one recorded series (any failure of ours, not the rule's)."""

    def publish(self, source: str, samples: Iterable[Sample], now: float, *,
                stamped: bool = False) -> None:
        if "queue:depth:high" in source:
            raise RuntimeError("a bug in the store")
        super().publish(source, samples, now, stamped=stamped)


def test_a_rule_that_fails_unexpectedly_does_not_take_the_groups_pages_with_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, manager, events = setup(
        tmp_path, RULES.replace(f"limit: {LIMIT}", "limit: 0")
        + "      - alert: QueueGone\n        expr: app_queue_depth == 0\n",
        _StoreThatFailsRecording())
    fired = evaluate(store, manager, T0, {"mail": 12, "push": 0})
    assert "rule 'queue:depth:high' of group 'queues' failed" in caplog.text
    assert "a bug in the store" in caplog.text
    assert failures(store) == 1
    # The rules before and after the failing one both paged.
    assert sorted((e.rule, e.alert.label("queue")) for e in fired) == [
        ("QueueBacklog", "mail"), ("QueueGone", "push")]
    assert events == fired
