"""``piggywatch rules test``: rule unit tests in the format of ``promtool test rules``.

Each test group loads its input series, then runs the rule files through a ``RuleManager``
at every ``evaluation_interval`` step from 0 to the latest ``eval_time``, as promtool does:
every group at every step whatever its own ``interval``, in file order (or in
``group_eval_order``), input points visible once the step reaches them. An
``alert_rule_test`` compares the *firing* alerts of its rule at the step where
``step <= eval_time < step + evaluation_interval``; a ``promql_expr_test`` runs an instant
query after the last step. Reports follow promtool's wording, plus the exact differences.

Deliberate differences from promtool 2.42: a test group without ``interval`` places its
points every ``evaluation_interval``, as promtool documents (2.42 puts them all at time 0:
prometheus/prometheus#12871, fixed later by #13011); groups left out of
``group_eval_order`` run in file order (promtool's order for them is random); input series
are read in label order.
"""

from __future__ import annotations

import logging
import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from piggywatch.rules.alerts import AlertEvent, AlertState
from piggywatch.rules.loader import AlertingRule, RecordingRule, RuleGroup, expand_globs
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.promql.errors import PromQLError
from piggywatch.rules.promql.evaluate import Evaluator
from piggywatch.rules.promql.values import Scalar, label_value
from piggywatch.rules.rule_tests_diff import (
    AlertView,
    alert_differences,
    format_alerts,
    format_samples,
    sample_differences,
)
from piggywatch.rules.rule_tests_file import (
    AlertTest,
    ExpressionTest,
    InputSeries,
    RuleTestFile,
    RuleTestFileError,
    RuleTestGroup,
    read_test_file,
)
from piggywatch.rules.rule_tests_format import format_duration, format_go_duration, quote
from piggywatch.rules.series_notation import NotationError, expand_values, parse_series
from piggywatch.store import Labels, MemoryStore
from piggywatch.store.series import LabelMatcher, Series

__all__ = ["Failure", "FileReport", "run_rule_tests", "run_test_file"]

_FAILURES_METRIC = "piggywatch_rule_evaluation_failures_total"
_ALERT_SERIES = frozenset({"ALERTS", "ALERTS_FOR_STATE"})
# Rule outputs are kept for the whole test: far longer than any test runs.
_RETENTION_MARGIN = 400 * 86_400.0


@dataclass(frozen=True)
class Failure:
    """One failed expectation or error, worded as promtool words it."""

    text: str
    alertname: str = ""
    expr: str = ""
    eval_time: float | None = None


@dataclass
class FileReport:
    """The outcome of one test file."""

    path: Path
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every test of the file passed."""
        return not self.failures


def run_rule_tests(paths: Sequence[Path], out: TextIO | None = None,
                   err: TextIO | None = None) -> int:
    """Run every test file and print promtool's report; 0 when all pass, else 1."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    failed = False
    for path in paths:
        print(f"Unit Testing:  {path}", file=out, flush=True)
        report = run_test_file(path)
        for warning in report.warnings:
            print(f"  WARNING: {warning}", file=err, flush=True)
        if report.ok:
            print("  SUCCESS", file=out)
        else:
            failed = True
            print("  FAILED:", file=err, flush=True)
            for failure in report.failures:
                print(failure.text, file=err, flush=True)
                print(file=out, flush=True)
        print(file=out, flush=True)
    return 1 if failed else 0


def run_test_file(path: Path) -> FileReport:
    """Run the tests of one file."""
    report = FileReport(path)
    try:
        spec = read_test_file(path)
    except RuleTestFileError as exc:
        report.failures = [Failure(problem) for problem in exc.problems]
        return report
    order: dict[str, int] = {}
    for index, name in enumerate(spec.group_eval_order or ()):
        if name in order:
            report.failures = [Failure(f"group name repeated in evaluation order: {name}")]
            return report
        order[name] = index
    rule_paths: list[Path] = []
    for pattern in spec.rule_files or ():
        found = expand_globs([pattern], path.parent)
        if not found:
            report.warnings.append(f"no file match pattern {pattern}")
        rule_paths += [p for p in found if p not in rule_paths]
    for group in spec.tests or ():
        report.failures += _TestGroupRun(spec, group, rule_paths, order).run()
    return report


class UnitTestSource:
    """What the rules see: the input series up to the current step, and the rules' outputs."""

    def __init__(self, inputs: Sequence[Series], store: MemoryStore) -> None:
        # Sorted by labels, the order Prometheus's storage gives them in.
        self.inputs = sorted(inputs, key=lambda s: s.labels)
        self._store = store
        self.loaded_until = -math.inf
        # Recorded metric names (and ALERTS): the store's own self-metrics stay hidden.
        self.rule_outputs: set[str] = set(_ALERT_SERIES)

    def select(self, matchers: Sequence[LabelMatcher], start: float,
               end: float) -> Iterator[Series]:
        """Series matching every matcher, with their points in ``[start, end]``."""
        last = min(end, self.loaded_until)
        for series in self.inputs:
            if not all(m.matches(label_value(series.labels, m.name)) for m in matchers):
                continue
            lo = bisect_left(series.timestamps, start)
            hi = bisect_right(series.timestamps, last)
            if lo < hi:
                yield Series(series.labels, series.timestamps[lo:hi], series.values[lo:hi])
        for series in self._store.select(matchers, start, end):
            if label_value(series.labels, "__name__") in self.rule_outputs:
                yield series


def load_input_series(items: Sequence[InputSeries], interval: float) -> list[Series]:
    """Expand the ``input_series``: point ``i`` of each series is at ``i * interval``."""
    step_ms = round(interval * 1000)
    by_labels: dict[Labels, Series] = {}
    for index, item in enumerate(items):
        try:
            labels = parse_series(item.series)
            if not labels:
                raise NotationError("a series needs a metric name or a label")
            values = expand_values(item.values)
        except NotationError as exc:
            raise NotationError(f"input_series[{index}] {item.series!r}: {exc}") from None
        times = [i * step_ms / 1000 for i, v in enumerate(values) if v is not None]
        points = [v for v in values if v is not None]
        # A series given twice: the later one replaces the earlier, as in promtool.
        by_labels[labels] = Series(labels, times, points)
    return list(by_labels.values())


class _FailureLog(logging.Handler):
    """Keeps the rule manager's "rule failed" warnings, to word them like promtool."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.name == "piggywatch.rules.manager" and "failed" in str(record.msg) \
                and isinstance(args, tuple) and len(args) == 3:
            self.reasons.append((str(args[0]), str(args[2])))


@contextmanager
def _quiet_rule_logs() -> Iterator[_FailureLog]:
    # promtool keeps its rule manager's logs to itself; so do we (they are reported instead).
    handler = _FailureLog()
    logger = logging.getLogger("piggywatch")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _discard(event: AlertEvent) -> None:
    """Alert events have nowhere to go in a unit test."""


class _TestGroupRun:
    """One item of ``tests``, run against fresh series and a fresh rule manager."""

    def __init__(self, spec: RuleTestFile, group: RuleTestGroup, rule_paths: list[Path],
                 order: dict[str, int]) -> None:
        self.group = group
        self.step_ms = round(spec.interval() * 1000)
        self.series_interval = group.interval or spec.interval()
        self.rule_paths = rule_paths
        self.order = order
        self.failures: list[Failure] = []
        max_ms = round(group.max_eval_time() * 1000)
        self.last_step = max_ms // self.step_ms
        self.store = MemoryStore(retention=max_ms / 1000 + _RETENTION_MARGIN)
        self.source = UnitTestSource([], self.store)
        self.manager = RuleManager(
            self.store, self.source, _discard, default_interval=self.step_ms / 1000,
            no_data=NoData.OK, external_labels=group.external_labels or {},
            external_url=group.external_url, clock=lambda: 0.0)
        self.rules: dict[str, AlertingRule] = {}

    def run(self) -> list[Failure]:
        """Evaluate the rules step by step, checking expectations; return what failed."""
        for test in self.group.alert_rule_test or ():
            if not test.alertname:
                named = f" (in TestGroup {self.group.name})" if self.group.name else ""
                return [Failure("an item under alert_rule_test misses required attribute "
                                f"alertname at eval_time {format_duration(test.eval_time)}"
                                f"{named}")]
        try:
            inputs = load_input_series(self.group.input_series or (), self.series_interval)
        except NotationError as exc:
            return [Failure(str(exc))]
        self.source.inputs = sorted(inputs, key=lambda s: s.labels)
        with _quiet_rule_logs() as failure_log:
            problems = self.manager.load(self.rule_paths)
            if problems:
                return [Failure(str(problem)) for problem in problems]
            groups = self._ordered(self.manager.groups())
            self.source.rule_outputs.update(
                r.name for g in groups for r in g.rules if isinstance(r, RecordingRule))
            self.rules = {r.name: r for g in groups for r in g.rules
                          if isinstance(r, AlertingRule)}
            unchecked = sorted(self.group.alert_rule_test or (), key=lambda t: t.eval_time)
            for step in range(self.last_step + 1):
                ts = step * self.step_ms / 1000
                self.source.loaded_until = ts
                errors = self._evaluate(groups, ts, failure_log)
                if errors:
                    return [*self.failures, *errors]
                next_step_ms = (step + 1) * self.step_ms
                while unchecked and round(unchecked[0].eval_time * 1000) < next_step_ms:
                    self._check_alerts(unchecked.pop(0))
        for expr_test in self.group.promql_expr_test or ():
            self._check_expression(expr_test)
        return self.failures

    def _ordered(self, groups: list[RuleGroup]) -> list[RuleGroup]:
        # Groups missing from group_eval_order rank with the first listed one, as in promtool
        # (where their order among themselves is random; here it is the file order).
        ranked = sorted(enumerate(groups), key=lambda ig: (self.order.get(ig[1].name, 0), ig[0]))
        return [group for _, group in ranked]

    def _evaluate(self, groups: list[RuleGroup], ts: float,
                  failure_log: _FailureLog) -> list[Failure]:
        errors: list[Failure] = []
        for group in groups:
            before = _failure_counts(self.store).get(group.name, 0.0)
            failure_log.reasons.clear()
            self.manager.evaluate_group(group.name, ts)
            if _failure_counts(self.store).get(group.name, 0.0) == before:
                continue
            reasons = failure_log.reasons or [("?", "evaluation failed")]
            errors += [Failure(f"    rule: {rule}, time: {format_go_duration(ts)}, err: {reason}",
                               eval_time=ts) for rule, reason in reasons]
        return errors

    def _check_alerts(self, test: AlertTest) -> None:
        expected = sorted(
            AlertView.of({**(alert.exp_labels or {}), "alertname": test.alertname},
                         alert.exp_annotations or {})
            for alert in test.exp_alerts or ())
        firing: list[AlertView] = []
        pending: list[AlertView] = []
        for _, name, alert in self.manager.active_alerts():
            if name != test.alertname:
                continue
            view = AlertView.of(dict(alert.labels), alert.annotations, alert.active_at)
            (firing if alert.state is AlertState.FIRING else pending).append(view)
        firing.sort()
        if expected == firing:
            return
        rule = self.rules.get(test.alertname)
        named = f"    name: {self.group.name},\n" if self.group.name else ""
        exp_text = _indent(format_alerts(expected), " " * 12)
        got_text = _indent(format_alerts(firing), " " * 12)
        lines = alert_differences(expected, firing, pending, rule.hold if rule else None)
        if rule is None:
            lines.insert(0, f"no alerting rule is named {test.alertname}")
        text = (f"{named}    alertname: {test.alertname}, time: "
                f"{format_duration(test.eval_time)}, \n        exp:{exp_text}, \n"
                f"        got:{got_text}\n        differences:\n"
                + "\n".join(f"            {line}" for line in lines))
        self.failures.append(Failure(text, alertname=test.alertname, eval_time=test.eval_time))

    def _check_expression(self, test: ExpressionTest) -> None:
        head = f"    expr: {quote(test.expr)}, time: {format_duration(test.eval_time)}"

        def fail(text: str) -> None:
            self.failures.append(Failure(text, expr=test.expr, eval_time=test.eval_time))

        try:
            evaluator = Evaluator(self.source, subquery_step=self.step_ms / 1000)
            value = evaluator.instant(test.expr, test.eval_time)
        except PromQLError as exc:
            fail(f"{head}, err: {exc}")
            return
        got: list[tuple[Labels, float]]
        if isinstance(value, Scalar):
            got = [((), value.value)]
        elif isinstance(value, list):
            got = [(s.labels, s.value) for s in value]
        else:
            fail(f"{head}, err: rule result is not a vector or scalar")
            return
        expected: list[tuple[Labels, float]] = []
        for sample in test.exp_samples or ():
            try:
                expected.append((parse_series(sample.labels), sample.value))
            except NotationError as exc:
                fail(f"{head}, err: labels {quote(sample.labels)}: {exc}")
                return
        expected.sort(key=lambda s: s[0])
        got.sort(key=lambda s: s[0])
        # Compared as promtool does: exactly, so NaN never equals NaN.
        if len(expected) == len(got) and all(
                e[0] == g[0] and e[1] == g[1] for e, g in zip(expected, got, strict=True)):
            return
        lines = sample_differences(expected, got)
        fail(f"{head},\n        exp: {format_samples(expected)}\n"
             f"        got: {format_samples(got)}\n        differences:\n"
             + "\n".join(f"            {line}" for line in lines))


def _failure_counts(store: MemoryStore) -> dict[str, float]:
    for spec, samples in store.current():
        if spec.name == _FAILURES_METRIC:
            return {label_value(s.labels, "rule_group"): s.value for s in samples}
    return {}


def _indent(text: str, indent: str) -> str:
    return ("\n" + indent).join(text.split("\n"))
