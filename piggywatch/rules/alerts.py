"""The alert state machine, exactly as Prometheus runs it for one alerting rule.

inactive → pending (while ``for`` has not elapsed) → firing → resolved (inactive), with
``keep_firing_for`` holding a firing alert after its condition clears, and resolved
alerts kept for 15 minutes so that their resolution can still be reported.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

from piggywatch.rules.templating import template_inputs
from piggywatch.store import Labels

# Prometheus keeps resolved alerts this long so notifiers can still be told they resolved.
RESOLVED_RETENTION = 15 * 60.0


class AlertState(StrEnum):
    """Where an alert is in its life."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


def fingerprint(labels: Labels) -> str:
    """A stable identity for an alert: a hash of its sorted labels (alertname included)."""
    digest = hashlib.sha256()
    for name, value in labels:
        # surrogatepass: the same bytes as UTF-8 for any real text, and no failure for half
        # an emoji that JSON's \ud83d escapes can bring into a label value.
        digest.update(name.encode("utf-8", "surrogatepass"))
        digest.update(b"\xfe")
        digest.update(value.encode("utf-8", "surrogatepass"))
        digest.update(b"\xff")
    return digest.hexdigest()[:16]


@dataclass
class Alert:
    """One alert instance of a rule (one label set)."""

    labels: Labels
    annotations: dict[str, str]
    state: AlertState
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.labels)

    def label(self, name: str) -> str:
        """A label's value, or ``""``."""
        return next((v for k, v in self.labels if k == name), "")


class EventKind(StrEnum):
    """What happened to an alert, as far as notifications care."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertEvent:
    """A transition the alerting side must hear about; it knows nothing of channels."""

    kind: EventKind
    group: str
    rule: str
    alert: Alert
    at: float


# (template, labels of the result sample, value) → rendered text.
Expander = Callable[[str, Mapping[str, str], float], str]


class Missing(StrEnum):
    """What to do with an alert whose series is missing from a result."""

    RESOLVE = "resolve"  # the condition is false: the normal case
    HOLD = "hold"  # no data: keep the alert exactly as it is
    PRESENT = "present"  # no data counts as the condition being true


MissingPolicy = Callable[[Alert], Missing]


class Result(NamedTuple):
    """One sample of the rule's expression result (a tuple: a storm builds thousands)."""

    labels: Labels
    value: float


_float_bits = struct.Struct("<d").pack


@dataclass(slots=True)
class _Rendered:
    """What one result series' templates rendered to at the last evaluation."""

    value: bytes  # the bits of $value (so -0.0 and 0.0, and NaNs, are told apart)
    labels: Labels
    fingerprint: str
    annotations: dict[str, str]


@dataclass(frozen=True, slots=True)
class _RulePlan:
    """Which of a rule's rendered templates may be reused, decided from their parse trees."""

    templates: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
    context: Hashable
    labels_cached: bool  # no label template reads live data
    labels_use_value: bool  # some label template reads $value
    annotations: tuple[tuple[str, str, bool, bool], ...]  # key, template, cached, uses value
    # Rendering may wait until the annotations are read: none reads live data (a `query`
    # must run at its evaluation) and some read $value.
    deferrable: bool


@dataclass(frozen=True, slots=True)
class _Pending:
    """Annotations to render when read: the series and value of the alert's last evaluation."""

    series: Labels
    value: float
    expand: Expander
    plan: _RulePlan


class AlertingRuleState:
    """The active alerts of one alerting rule and their transitions."""

    def __init__(self, group: str, name: str, *, hold: float, keep_firing_for: float,
                 labels: Mapping[str, str], annotations: Mapping[str, str]) -> None:
        self.group = group
        self.name = name
        self.hold = hold
        self.keep_firing_for = keep_firing_for
        self.labels = dict(labels)
        self.annotations = dict(annotations)
        self.active: dict[str, Alert] = {}
        # Rendered templates by result series (only the series of the last evaluation).
        self._rendered: dict[Labels, _Rendered] = {}
        self._plan: _RulePlan | None = None
        # By fingerprint: alerts whose annotations are rendered when read (evaluate's defer).
        self._pending: dict[str, _Pending] = {}

    def _plan_for(self, context: Hashable) -> _RulePlan:
        templates = (tuple(self.labels.items()), tuple(self.annotations.items()))
        plan = self._plan
        if plan is not None and plan.templates == templates and plan.context == context:
            return plan
        label_inputs = [template_inputs(t) for t in self.labels.values()]
        annotations = []
        for key, template in self.annotations.items():
            inputs = template_inputs(template)
            annotations.append((key, template, not inputs.live, inputs.uses_value))
        plan = _RulePlan(templates, context,
                         labels_cached=not any(i.live for i in label_inputs),
                         labels_use_value=any(i.uses_value for i in label_inputs),
                         annotations=tuple(annotations),
                         deferrable=all(cached for _, _, cached, _ in annotations)
                         and any(uses_value for _, _, _, uses_value in annotations))
        self._plan = plan
        self._rendered = {}
        return plan

    def evaluate(self, results: Sequence[Result], ts: float, expand: Expander,
                 missing: MissingPolicy | None = None, *,
                 cache_context: Hashable | None = None, defer: bool = False,
                 limit: int = 0) -> list[AlertEvent]:
        """Apply one evaluation's result at time ``ts``; return the transitions.

        With a ``limit`` (the group's; 0 is none), more pending and firing alerts than that
        fail the evaluation as in Prometheus: every alert of the rule is dropped and
        AlertLimitError carries a resolution for each alert that was firing.

        With a ``cache_context``, the caller promises that ``expand`` of a template that
        reads no live data (see templating.template_inputs) is a function of the template,
        the labels, the value and ``cache_context`` alone (the external labels and URL), so
        a series' rendered labels and annotations are reused while those stay the same.
        Only the series of this evaluation are remembered.

        With ``defer`` as well, the annotations of an alert that stays active and needs
        rendering only because $value changed are rendered when they are read: through
        ``alerts()``, an event, or ``render_pending()`` (read ``active`` only after that).
        In a storm thousands of alerts stay firing with a changing value, and nothing reads
        their annotations between two evaluations.
        """
        events: list[AlertEvent] = []
        present: set[str] = set()
        firing_before = [a for a in self.active.values() if a.state is AlertState.FIRING]
        plan = self._plan_for(cache_context) if cache_context is not None else None
        previous = self._rendered
        rendered: dict[Labels, _Rendered] = {}
        for result in results:
            template_labels: dict[str, str] | None = None
            entry = previous.get(result.labels) if plan is not None else None
            bits = _float_bits(result.value) if plan is not None else b""
            same_value = entry is not None and entry.value == bits
            labels_reused = entry is not None and plan is not None and plan.labels_cached \
                and (same_value or not plan.labels_use_value)
            if labels_reused and entry is not None:
                labels = entry.labels
                fp = entry.fingerprint
            else:
                template_labels = dict(result.labels)
                built = {k: v for k, v in result.labels if k != "__name__"}
                for key, template in self.labels.items():
                    value = expand(template, template_labels, result.value)
                    if value:
                        built[key] = value
                    else:
                        # An empty label is no label: Prometheus removes it (even the
                        # series' own).
                        built.pop(key, None)
                built["alertname"] = self.name
                labels = tuple(sorted(built.items()))
                fp = fingerprint(labels)
            if fp in present:
                # Prometheus refuses the whole evaluation in this case, and so do we.
                self._rendered = rendered
                raise DuplicateAlertError(
                    f"rule {self.name!r}: two result series give the same alert labels "
                    f"{dict(labels)} (they differ only in labels the rule overwrites)")
            present.add(fp)
            alert = self.active.get(fp)
            if alert is not None and alert.state is AlertState.INACTIVE:
                alert = None
            self._pending.pop(fp, None)
            if plan is None:
                if template_labels is None:
                    template_labels = dict(result.labels)
                annotations = {key: expand(template, template_labels, result.value)
                               for key, template in self.annotations.items()}
            elif (defer and alert is not None and labels_reused and entry is not None
                  and not same_value and plan.deferrable):
                # Rendered when read (see render_pending); the entry stays what it rendered.
                alert.value = result.value
                self._pending[fp] = _Pending(result.labels, result.value, expand, plan)
                rendered[result.labels] = entry
                continue
            else:
                annotations = {}
                for key, template, cached, uses_value in plan.annotations:
                    if entry is not None and cached and (same_value or not uses_value):
                        annotations[key] = entry.annotations[key]
                    else:
                        if template_labels is None:
                            template_labels = dict(result.labels)
                        annotations[key] = expand(template, template_labels, result.value)
                rendered[result.labels] = _Rendered(bits, labels, fp, dict(annotations))
            if alert is not None:
                alert.value = result.value
                alert.annotations = annotations
                continue
            self.active[fp] = Alert(labels, annotations, AlertState.PENDING, ts, result.value,
                                    fingerprint=fp)
        for fp, alert in list(self.active.items()):
            verdict = Missing.RESOLVE
            if fp not in present and missing is not None \
                    and alert.state is not AlertState.INACTIVE:
                verdict = missing(alert)
                if verdict is Missing.HOLD:
                    continue
            if fp not in present and verdict is Missing.RESOLVE:
                keep_firing = False
                if alert.state is AlertState.FIRING and self.keep_firing_for > 0:
                    if alert.keep_firing_since is None:
                        alert.keep_firing_since = ts
                    keep_firing = ts - alert.keep_firing_since < self.keep_firing_for
                if alert.state is AlertState.PENDING or (
                        alert.resolved_at is not None
                        and ts - alert.resolved_at > RESOLVED_RETENTION):
                    del self.active[fp]
                if alert.state is not AlertState.INACTIVE and not keep_firing:
                    was_firing = alert.state is AlertState.FIRING
                    alert.state = AlertState.INACTIVE
                    alert.resolved_at = ts
                    if was_firing:
                        events.append(self._event(EventKind.RESOLVED, alert, ts))
                if not keep_firing:
                    continue
            else:
                alert.keep_firing_since = None
            if alert.state is AlertState.PENDING and ts - alert.active_at >= self.hold:
                alert.state = AlertState.FIRING
                alert.fired_at = ts
                events.append(self._event(EventKind.FIRING, alert, ts))
        self._rendered = rendered
        if limit > 0:
            active = sum(1 for a in self.active.values() if a.state is not AlertState.INACTIVE)
            if active > limit:
                self._drop_all(firing_before, ts, f"exceeded limit of {limit} with {active} "
                                                  "alerts")
        return events

    def render_pending(self) -> None:
        """Render the annotations ``evaluate`` left to be rendered when read."""
        for fp in list(self._pending):
            self._render(fp)

    def _render(self, fp: str) -> None:
        pending = self._pending.pop(fp, None)
        alert = self.active.get(fp)
        if pending is None or alert is None:
            return
        template_labels = dict(pending.series)
        bits = _float_bits(pending.value)
        entry = self._rendered.get(pending.series)
        if entry is not None and entry.fingerprint != fp:
            entry = None
        annotations = {}
        for key, template, _, uses_value in pending.plan.annotations:
            if entry is not None and (not uses_value or entry.value == bits):
                annotations[key] = entry.annotations[key]
            else:
                annotations[key] = pending.expand(template, template_labels, pending.value)
        alert.annotations = annotations
        if entry is not None and self._plan is pending.plan:
            # The next evaluation reuses them while the value stays.
            self._rendered[pending.series] = _Rendered(bits, entry.labels, fp,
                                                       dict(annotations))

    def _drop_all(self, firing: list[Alert], ts: float, reason: str) -> None:
        self.render_pending()
        # Prometheus clears the rule's alerts (pending, firing and resolved) and sends none;
        # Alertmanager then resolves the ones it had once they are no longer re-sent. The
        # alerting side hears the resolutions at once instead.
        resolved = [AlertEvent(EventKind.RESOLVED, self.group, self.name,
                               replace(a, state=AlertState.INACTIVE, resolved_at=ts,
                                       keep_firing_since=None), ts)
                    for a in firing]
        self.active = {}
        raise AlertLimitError(reason, resolved)

    def cached_series(self) -> int:
        """How many result series' rendered templates are remembered (for tests)."""
        return len(self._rendered)

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take back the alerts saved before a restart (no events: nothing changed)."""
        self.active = {a.fingerprint: a for a in alerts}
        self._pending = {}

    def alerts(self) -> list[Alert]:
        """Pending and firing alerts (resolved ones are only kept for reporting), their
        annotations rendered for the last evaluation."""
        self.render_pending()
        return [a for a in self.active.values() if a.state is not AlertState.INACTIVE]

    def alert_states(self) -> Iterator[tuple[Labels, AlertState, float]]:
        """(labels, state, active since) of each pending and firing alert: what ALERTS
        exports."""
        for alert in self.active.values():
            if alert.state is not AlertState.INACTIVE:
                yield alert.labels, alert.state, alert.active_at

    def _event(self, kind: EventKind, alert: Alert, ts: float) -> AlertEvent:
        if self._pending:
            self._render(alert.fingerprint)
        # A copy, as the alert changes on: copy() is a third of replace()'s cost.
        return AlertEvent(kind, self.group, self.name, copy.copy(alert), ts)


class DuplicateAlertError(ValueError):
    """Two result series of one rule map to the same alert."""


class AlertLimitError(ValueError):
    """A rule gave more alerts than its group's limit; its alerts were dropped."""

    def __init__(self, message: str, resolved: list[AlertEvent]) -> None:
        super().__init__(message)
        # The resolutions of the alerts that were firing before the evaluation.
        self.resolved = resolved
