"""Runs rule groups: evaluates expressions, drives alert state, records results, persists."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from piggywatch.rules.alerts import (
    Alert,
    AlertEvent,
    AlertingRuleState,
    AlertLimitError,
    DuplicateAlertError,
    Missing,
    Result,
)
from piggywatch.rules.loader import (
    AlertingRule,
    RecordingRule,
    RuleFileError,
    RuleGroup,
    RuleProblem,
    load_rule_files,
)
from piggywatch.rules.promql.evaluate import EvaluationError, Evaluator, Scalar
from piggywatch.rules.promql.nodes import VectorSelector
from piggywatch.rules.promql.parse import lookback_window, walk
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.rules.templating import QuerySample, render_or_error
from piggywatch.state import STATE_ERRORS, NotLeader
from piggywatch.store import Changes, Labels, MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from piggywatch.store.series import LabelMatcher, SeriesSource

log = logging.getLogger(__name__)


class NoData(StrEnum):
    """What a rule does when its query fails or its target is down."""

    KEEP_LAST = "keep_last"  # hold every alert as it was (Prometheus's behaviour on errors)
    ALERT = "alert"  # treat the missing data as the condition being true
    OK = "ok"  # treat it as the condition being false (alerts resolve)


class AlertSink(Protocol):
    """The alerting side: receives transitions, knows nothing of how rules work."""

    def __call__(self, event: AlertEvent) -> None:
        """Take one event."""
        ...


RULE_SPECS = (
    MetricSpec("ALERTS", MetricKind.GAUGE, "Pending and firing alerts (1 per alert)"),
    MetricSpec("ALERTS_FOR_STATE", MetricKind.GAUGE,
               "Unix time at which each pending or firing alert became active"),
    MetricSpec("piggywatch_rule_group_last_duration_seconds", MetricKind.GAUGE,
               "How long the group's last evaluation took"),
    MetricSpec("piggywatch_rule_group_last_evaluation_timestamp_seconds", MetricKind.GAUGE,
               "Unix time of the group's last evaluation"),
    MetricSpec("piggywatch_rule_evaluations_total", MetricKind.COUNTER,
               "Rule evaluations, by group"),
    MetricSpec("piggywatch_rule_evaluation_failures_total", MetricKind.COUNTER,
               "Rule evaluations that failed (query error or duplicate alert labels)"),
    MetricSpec("piggywatch_rule_group_rules", MetricKind.GAUGE, "Rules in the group"),
    MetricSpec("piggywatch_rule_files_last_reload_success", MetricKind.GAUGE,
               "Whether the last rule file (re)load worked (1) or kept the old rules (0)"),
    MetricSpec("piggywatch_rule_files_last_reload_success_timestamp_seconds", MetricKind.GAUGE,
               "Unix time of the last successful rule file load"),
    MetricSpec("piggywatch_alert_events_total", MetricKind.COUNTER,
               "Alert transitions handed to the alerting side, by kind"),
)


@dataclass
class _GroupRun:
    group: RuleGroup
    # By rule key (see rule_keys): a group may hold several rules of one alert name.
    states: dict[str, AlertingRuleState] = field(default_factory=dict)
    evaluations: int = 0
    failures: int = 0
    last_duration: float = 0.0
    last_at: float = 0.0
    export: _AlertsExport = field(default_factory=lambda: _AlertsExport())


@dataclass
class _AlertsExport:
    """What a group's last ALERTS export published, so that the next one tells the store
    only what changed: in a storm thousands of alerts stay active, and re-publishing them
    every evaluation was most of its cost."""

    # Alert labels -> the ALERTS_FOR_STATE label set and value (when the alert became active).
    for_state: dict[Labels, tuple[Labels, float]] = field(default_factory=dict)
    # (alert labels, alert state) -> the ALERTS label set.
    alerts: dict[tuple[Labels, str], Labels] = field(default_factory=dict)
    # Whether the store's snapshot of the group's ALERTS is the one these describe.
    published: bool = False


def rule_keys(group: RuleGroup) -> list[str]:
    """A key per rule of ``group``, unique within it: the rule's name, and ``name#N`` for
    the N-th rule of a name used before in the group (Prometheus allows several alerting
    rules of one name, e.g. a warning and a critical threshold; each keeps its own state).
    The first keeps the bare name, so the state saved by earlier versions stays its own."""
    seen: dict[str, int] = {}
    keys = []
    for rule in group.rules:
        n = seen[rule.name] = seen.get(rule.name, 0) + 1
        keys.append(rule.name if n == 1 else f"{rule.name}#{n}")
    return keys


class RuleManager:
    """Loads rule files, evaluates each group, and turns results into alert events."""

    def __init__(
        self,
        store: MemoryStore,
        source: SeriesSource,
        sink: AlertSink,
        *,
        state_db: AlertStateDB | None = None,
        default_interval: float = 15.0,
        no_data: NoData = NoData.KEEP_LAST,
        no_data_groups: Mapping[str, NoData] | None = None,
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        # A subquery without a step ([1h:]) steps by the global evaluation_interval, as in
        # Prometheus.
        self._evaluator = Evaluator(source, subquery_step=default_interval)
        self._sink = sink
        self._db = state_db
        self.default_interval = default_interval
        self._no_data = no_data
        self._no_data_groups = dict(no_data_groups or {})
        self._external_labels = dict(external_labels or {})
        self._external_url = external_url
        # Everything a template reads besides its text, $labels and $value (and live data,
        # which templates calling `query` read and are never cached for): the key under
        # which alert states reuse rendered templates.
        self._template_context = (tuple(sorted(self._external_labels.items())), external_url)
        self._clock = clock
        self._lock = threading.RLock()
        self._runs: dict[str, _GroupRun] = {}
        # (group, rule key) → until when the rule is not evaluated (see ``hold``).
        self._held: dict[tuple[str, str], float] = {}
        self._reload_ok = 1.0
        self._reload_at = 0.0
        # Why the last (re)load was refused; empty when it worked.
        self.last_problems: list[RuleProblem] = []
        self._events: dict[str, int] = {"firing": 0, "resolved": 0}
        self._restored: dict[tuple[str, str], list[Alert]] = (
            state_db.load() if state_db is not None else {})
        # False on a standby replica: the leader evaluates, this one keeps no alerts.
        self._leading = True
        store.register(RULE_SPECS)

    # --- leadership ---------------------------------------------------------------------

    def resume(self, state_db: AlertStateDB | None) -> None:
        """Evaluate from now on, starting from the alert state the last leader saved (the
        `for` clocks of pending alerts, firing alerts firing) rather than from memory."""
        saved = state_db.load() if state_db is not None else {}
        with self._lock:
            for run in self._runs.values():
                for key, state in run.states.items():
                    state.restore(saved.pop((run.group.name, key), []))
            self._restored = saved
            self._db = state_db
            if state_db is not None and self._runs:
                state_db.forget_except({(g, r) for g, run in self._runs.items()
                                        for r in run.states})
            self._leading = True

    def suspend(self) -> None:
        """Stop evaluating (this replica is a standby now) and drop the alerts from memory:
        the leader owns them, and ALERTS is exported by the leader only."""
        at = self._clock()
        with self._lock:
            self._leading = False
            self._db = None
            self._restored = {}
            for run in self._runs.values():
                for state in run.states.values():
                    state.restore([])
                self._publish_alerts(run, at)

    @property
    def leading(self) -> bool:
        """Whether this manager evaluates (False on a standby)."""
        return self._leading

    # --- loading ------------------------------------------------------------------------

    def load(self, paths: Sequence[Path]) -> list[RuleProblem]:
        """Load rule files; on any problem keep the running rules and return the problems.

        A reload that would drop a whole file that had rule groups (gone, emptied,
        unreadable, or a glob that no longer matches it) is refused like a broken file: a
        ConfigMap being swapped or a half-written file must not resolve every alert of it.
        """
        try:
            groups = load_rule_files(paths)
            vanished = self._vanished_files(groups)
            if vanished:
                raise RuleFileError(vanished)
        except RuleFileError as exc:
            return self._refuse(exc.problems)
        except Exception as exc:  # a bug must not stop the daemon: the old rules stay
            log.exception("rule files could not be loaded")
            return self._refuse([RuleProblem("rule_files", None, "",
                                             f"internal error while loading: {exc!r}")])
        with self._lock:
            old = self._runs
            self._runs = {}
            for group in groups:
                run = _GroupRun(group)
                if group.name in old:
                    # The same ALERTS source in the store: carry on telling it changes.
                    run.export = old[group.name].export
                for rule, key in zip(group.rules, rule_keys(group), strict=True):
                    if isinstance(rule, AlertingRule):
                        state = AlertingRuleState(group.name, rule.name, hold=rule.hold,
                                                  keep_firing_for=rule.keep_firing_for,
                                                  labels=rule.labels,
                                                  annotations=rule.annotations)
                        previous = old.get(group.name)
                        if previous is not None and key in previous.states:
                            before = previous.states[key]
                            before.render_pending()
                            state.active = before.active
                        elif (group.name, key) in self._restored:
                            state.restore(self._restored.pop((group.name, key)))
                        run.states[key] = state
                    else:
                        self._register_recording(rule, group)
                self._runs[group.name] = run
            # What the rules that are gone published (their ALERTS, their recorded series)
            # goes stale now instead of staying current for ever.
            for source in _store_keys(old.values()) - _store_keys(self._runs.values()):
                self._store.clear(source)
            if self._db is not None:
                self._db.forget_except({(g, r) for g, run in self._runs.items()
                                        for r in run.states})
            self._reload_ok = 1.0
            self._reload_at = self._clock()
            self.last_problems = []
        log.info("loaded %d rule groups with %d rules from %d files", len(groups),
                 sum(len(g.rules) for g in groups), len({g.file for g in groups}))
        self._publish_meta(self._clock())
        return []

    def _vanished_files(self, groups: list[RuleGroup]) -> list[RuleProblem]:
        with self._lock:
            before: dict[str, int] = {}
            for run in self._runs.values():
                before[run.group.file] = before.get(run.group.file, 0) + 1
        now = {g.file for g in groups}
        return [RuleProblem(file, None, "",
                            f"this file had {count} rule group(s) and now has none (removed, "
                            "emptied, or no longer matched by rule_files); its alerts would "
                            "all resolve, so the rules loaded before stay. To remove its rules "
                            "on purpose, restart PiggyWatch")
                for file, count in sorted(before.items()) if file not in now]

    def _refuse(self, problems: list[RuleProblem]) -> list[RuleProblem]:
        self._reload_ok = 0.0
        self.last_problems = problems
        for problem in problems:
            log.error("rule file problem: %s", problem)
        if self._runs:
            log.error("rule file reload refused: keeping the %d rule groups loaded before",
                      len(self._runs))
        self._publish_meta(self._clock())
        return problems

    def groups(self) -> list[RuleGroup]:
        """The rule groups running now."""
        with self._lock:
            return [run.group for run in self._runs.values()]

    def interval(self, group: RuleGroup) -> float:
        """A group's evaluation interval (its own, or the global one)."""
        return group.interval or self.default_interval

    def lookback(self) -> float:
        """The longest history any loaded rule needs."""
        return max((g.lookback() for g in self.groups()), default=0.0)

    def long_range_selectors(self, window: float) -> list[tuple[LabelMatcher, ...]]:
        """Matchers of every selector in rules that read further back than ``window``."""
        found: dict[tuple[LabelMatcher, ...], None] = {}
        for group in self.groups():
            for rule in group.rules:
                if lookback_window(rule.expr) <= window:
                    continue
                for node in walk(rule.expr):
                    if isinstance(node, VectorSelector):
                        found[node.matchers] = None
        return list(found)

    # --- evaluation ---------------------------------------------------------------------

    def evaluate_group(self, name: str, ts: float | None = None) -> list[AlertEvent]:
        """Evaluate one group at ``ts`` (now by default); hand transitions to the sink."""
        at = self._clock() if ts is None else ts
        with self._lock:
            run = self._runs.get(name)
            if run is None or not self._leading:
                return []
            started = time.monotonic()
            events: list[AlertEvent] = []
            down = self._down_targets(at)
            policy = self._no_data_groups.get(name, self._no_data)
            for rule, key in zip(run.group.rules, rule_keys(run.group), strict=True):
                if self._held and self._held.get((name, key), 0.0) > at:
                    continue
                try:
                    if isinstance(rule, RecordingRule):
                        self._record(rule, key, run.group, at)
                    else:
                        events += self._alert(rule, run.states[key], at, down, policy,
                                              run.group.limit)
                except AlertLimitError as exc:
                    # As Prometheus: the rule's evaluation fails and its alerts are dropped.
                    run.failures += 1
                    log.warning("rule %r of group %r failed: %s", rule.name, name, exc)
                    events += exc.resolved
                except (EvaluationError, DuplicateAlertError) as exc:
                    run.failures += 1
                    log.warning("rule %r of group %r failed: %s", rule.name, name, exc)
                    if isinstance(rule, AlertingRule):
                        events += self._alert_without_data(run.states[key], at, policy)
                except Exception:
                    # A bug, not the rule's: counted and logged, the rule's alerts kept as
                    # they were, and the group's other rules (and their events) go on.
                    run.failures += 1
                    log.exception("rule %r of group %r failed", rule.name, name)
            run.evaluations += 1
            run.last_duration = time.monotonic() - started
            run.last_at = at
            try:
                self._publish_alerts(run, at)
            except Exception:
                # ALERTS is told everything at the next evaluation; the transitions of this
                # one are not lost with it (a page that never went out is never sent later).
                log.exception("could not export the alerts of group %r", name)
            if self._db is not None:
                try:
                    for key, state in run.states.items():
                        if self._db.unsaved(name, key, state.active.values()):
                            state.render_pending()
                            self._db.save(name, key, state.active.values())
                except NotLeader:
                    # Deposed since the evaluation began: the new leader evaluates and
                    # notifies from the state it loaded; these events are not ours to send.
                    log.info("group %r evaluated after losing leadership; events dropped",
                             name)
                    return []
                except STATE_ERRORS as exc:
                    # Kept in memory and saved at the next evaluation (a save writes what
                    # changed since the last successful one); notifying must not wait.
                    log.warning("could not save the alert state of group %r: %s", name, exc)
        for event in events:
            self._events[event.kind.value] += 1
            log.info("alert %s %s %s", event.rule, event.kind.value,
                     dict(event.alert.labels))
            try:
                self._sink(event)
            except Exception:
                log.exception("the alerting side failed to take an event for %s", event.rule)
        self._publish_meta(at)
        return events

    def hold(self, group: str, key: str, until: float) -> None:
        """Do not evaluate the rule ``key`` of ``group`` before ``until``: the past it reads
        is not in memory yet (a reload made it read a metric whose past was not kept, or
        further back than was kept). Its alerts stay as they are meanwhile; evaluated on
        part of its range, a rule such as ``x unless x offset 15m`` or ``changes(x[1h]) ==
        0`` would fire for every series."""
        with self._lock:
            now = self._clock()
            self._held = {k: t for k, t in self._held.items() if t > now}
            if until > now:
                self._held[(group, key)] = until

    def query(self, expr: str, at: float) -> list[QuerySample]:
        """Run an instant query (for templates' ``query`` and for the API)."""
        value = self._evaluator.instant(expr, at)
        if isinstance(value, Scalar):
            return [QuerySample({}, value.value)]
        if isinstance(value, list):
            return [QuerySample(dict(s.labels), s.value) for s in value]
        raise EvaluationError("a template query must return a vector or a scalar")

    def _alert(self, rule: AlertingRule, state: AlertingRuleState, at: float,
               down: set[str], policy: NoData, limit: int) -> list[AlertEvent]:
        vector = self._evaluator.instant(rule.expr, at)
        if isinstance(vector, Scalar):
            # Prometheus reads a scalar result as one sample without labels.
            results = [Result((), vector.value)]
        elif isinstance(vector, list):
            results = [Result(s.labels, s.value) for s in vector]
        else:
            raise EvaluationError("an alerting rule's expression must return a vector or scalar")

        def missing(alert: Alert) -> Missing:
            # An alert about a target that is down has no data, not a resolved condition.
            if alert.label("target") not in down or policy is NoData.OK:
                return Missing.RESOLVE
            return Missing.HOLD if policy is NoData.KEEP_LAST else Missing.PRESENT

        return state.evaluate(results, at, self._expander(at), missing if down else None,
                              cache_context=self._template_context, defer=True,
                              limit=limit)

    def _alert_without_data(self, state: AlertingRuleState, at: float,
                            policy: NoData) -> list[AlertEvent]:
        if policy is NoData.KEEP_LAST:
            return []
        context = self._template_context
        if policy is NoData.OK:
            return state.evaluate([], at, self._expander(at), cache_context=context)
        if state.alerts():
            return state.evaluate([], at, self._expander(at), lambda a: Missing.PRESENT,
                                  cache_context=context)
        return state.evaluate([Result((("no_data", "query_failed"),), math.nan)], at,
                              self._expander(at), cache_context=context)

    def _record(self, rule: RecordingRule, key: str, group: RuleGroup, at: float) -> None:
        value = self._evaluator.instant(rule.expr, at)
        if isinstance(value, Scalar):
            samples = [Sample(rule.name, labels_of(rule.labels), value.value, at)]
        elif isinstance(value, list):
            samples = []
            for s in value:
                labels = {k: v for k, v in s.labels if k != "__name__"}
                labels.update(rule.labels)
                samples.append(Sample(rule.name, labels_of(labels), s.value, at))
            if len({sample.labels for sample in samples}) < len(samples):
                # As Prometheus: two series made one by the rule's labels fail the rule
                # (exported twice, they would make the whole scrape fail instead).
                raise EvaluationError("vector contains metrics with the same labelset after "
                                      "applying rule labels")
        else:
            raise EvaluationError("a recording rule's expression must return a vector")
        if 0 < group.limit < len(samples):
            # As Prometheus: nothing is recorded (and, as there, the last values stay).
            raise EvaluationError(f"exceeded limit of {group.limit} with {len(samples)} "
                                  "series")
        self._store.publish(_store_key(group, key), samples, at)

    def _register_recording(self, rule: RecordingRule, group: RuleGroup) -> None:
        spec = MetricSpec(rule.name, MetricKind.GAUGE,
                          f"Recording rule {rule.name} of group {group.name}")
        try:
            self._store.register([spec])
        except ValueError:
            log.debug("recording rule %s is declared elsewhere too", rule.name)

    def _expander(self, at: float) -> Callable[[str, Mapping[str, str], float], str]:
        def expand(template: str, labels: Mapping[str, str], value: float) -> str:
            return render_or_error(template, labels=labels, value=value,
                                   query=lambda q: self.query(q, at),
                                   external_labels=self._external_labels,
                                   external_url=self._external_url)
        return expand

    def _down_targets(self, at: float) -> set[str]:
        try:
            found = self._evaluator.instant("pg_up == 0", at)
        except EvaluationError:
            return set()
        if not isinstance(found, list):
            return set()
        return {v for s in found for k, v in s.labels if k == "target"}

    # --- exposition ---------------------------------------------------------------------

    def _publish_alerts(self, run: _GroupRun, at: float) -> None:
        export = run.export
        # After a first export or a failed one the store holds nothing known: tell it all.
        told_for_state = export.for_state if export.published else {}
        told_alerts = export.alerts if export.published else {}
        for_state: dict[Labels, tuple[Labels, float]] = {}
        alerts: dict[tuple[Labels, str], Labels] = {}
        changed: list[Sample] = []
        for state in run.states.values():
            for labels, alert_state, active_at in state.alert_states():
                found = told_for_state.get(labels)
                if found is None or found[1] != active_at:
                    # Alert labels are sorted already, and the sort keeps them (cheaply).
                    found = (tuple(sorted(labels)) if found is None else found[0], active_at)
                    changed.append(Sample("ALERTS_FOR_STATE", found[0], active_at, at))
                for_state[labels] = found
                key = (labels, alert_state.value)
                series = told_alerts.get(key)
                if series is None:
                    series = tuple(sorted([pair for pair in labels if pair[0] != "alertstate"]
                                          + [("alertstate", alert_state.value)]))
                    changed.append(Sample("ALERTS", series, 1.0, at))
                alerts[key] = series
        removed = [("ALERTS_FOR_STATE", found[0]) for labels, found in told_for_state.items()
                   if labels not in for_state]
        removed += [("ALERTS", series) for key, series in told_alerts.items()
                    if key not in alerts]
        # A first export (or one after a failure) tells everything and replaces whatever the
        # source held; until this one is published, what the store holds is unknown.
        full, export.published = not export.published, False
        self._store.publish_changes(_store_key(run.group, "ALERTS"), Changes(changed, removed),
                                    at, full=full)
        export.for_state, export.alerts, export.published = for_state, alerts, True

    def _publish_meta(self, at: float) -> None:
        out = [Sample("piggywatch_rule_files_last_reload_success", (), self._reload_ok, at)]
        if self._reload_at:
            out.append(Sample("piggywatch_rule_files_last_reload_success_timestamp_seconds", (),
                              self._reload_at, at))
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            labels = labels_of(rule_group=run.group.name)
            out.append(Sample("piggywatch_rule_group_rules", labels, len(run.group.rules), at))
            out.append(Sample("piggywatch_rule_evaluations_total", labels, run.evaluations, at))
            out.append(Sample("piggywatch_rule_evaluation_failures_total", labels,
                              run.failures, at))
            if run.last_at:
                out.append(Sample("piggywatch_rule_group_last_duration_seconds", labels,
                                  run.last_duration, at))
                out.append(Sample("piggywatch_rule_group_last_evaluation_timestamp_seconds",
                                  labels, run.last_at, at))
        for kind, count in self._events.items():
            out.append(Sample("piggywatch_alert_events_total", labels_of(kind=kind), count, at))
        self._store.publish("rules/meta", out, at)

    def active_alerts(self) -> list[tuple[str, str, Alert]]:
        """(group, rule, alert) for every pending or firing alert."""
        with self._lock:
            return [(g, s.name, a) for g, run in self._runs.items()
                    for s in run.states.values() for a in s.alerts()]


def _store_key(group: RuleGroup, what: str) -> str:
    """Where a group publishes in the store: ``what`` is "ALERTS" or a recording rule's key."""
    return f"rules/{group.name}/{what}"


def _store_keys(runs: Iterable[_GroupRun]) -> set[str]:
    """The store keys the groups' rules publish under: each group's ALERTS, each recording
    rule's series."""
    keys = set()
    for run in runs:
        group = run.group
        keys.add(_store_key(group, "ALERTS"))
        keys.update(_store_key(group, key)
                    for rule, key in zip(group.rules, rule_keys(group), strict=True)
                    if not isinstance(rule, AlertingRule))
    return keys
