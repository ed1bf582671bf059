"""What a failed rule unit test prints: promtool's exp/got blocks, then the exact differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from piggywatch.rules.rule_tests_format import (
    format_duration,
    format_labels,
    format_value,
    quote,
)
from piggywatch.store import Labels

Sample = tuple[Labels, float]


@dataclass(frozen=True, order=True)
class AlertView:
    """An alert as a test sees it: labels (alertname included) and expanded annotations."""

    labels: Labels
    annotations: Labels
    active_at: float | None = field(default=None, compare=False)

    @classmethod
    def of(cls, labels: Mapping[str, str], annotations: Mapping[str, str],
           active_at: float | None = None) -> AlertView:
        """Build from mappings (pairs sorted, as Prometheus sorts labels)."""
        return cls(tuple(sorted(labels.items())), tuple(sorted(annotations.items())),
                   active_at)


def format_alerts(alerts: Sequence[AlertView]) -> str:
    """A list of alerts the way promtool prints one (``[]`` when empty)."""
    if not alerts:
        return "[]"
    parts = []
    for index, alert in enumerate(alerts):
        body = (f"Labels:{format_labels(alert.labels)}\n"
                f"Annotations:{format_labels(alert.annotations)}")
        parts.append(f"{index}:" + "\n  ".join(("\n" + body).split("\n")))
    return "[\n" + ",\n".join(parts) + "\n]"


def format_samples(samples: Sequence[Sample]) -> str:
    """Samples the way promtool prints them (``nil`` when empty)."""
    if not samples:
        return "nil"
    return ", ".join(f"{format_labels(labels)} {format_value(value)}"
                     for labels, value in samples)


def alert_differences(expected: Sequence[AlertView], firing: Sequence[AlertView],
                      pending: Sequence[AlertView], hold: float | None) -> list[str]:
    """One line per difference between the expected and the firing alerts."""
    missing = list(expected)
    extra = list(firing)
    for alert in expected:
        if alert in extra:
            extra.remove(alert)
            missing.remove(alert)
    lines: list[str] = []
    unmatched = []
    for alert in missing:
        waiting = next((p for p in pending if p.labels == alert.labels), None)
        if waiting is not None:
            lines.append(_pending_line(alert, waiting, hold))
        else:
            unmatched.append(alert)
    for alert in unmatched:
        if not extra:
            lines.append(f"expected alert {format_labels(alert.labels)} is not firing")
            continue
        closest = max(extra, key=lambda got: _closeness(alert, got))
        extra.remove(closest)
        lines += _pair_lines(alert, closest)
    lines += [f"alert {format_labels(alert.labels)} is firing but not expected"
              for alert in extra]
    return lines


def sample_differences(expected: Sequence[Sample], got: Sequence[Sample]) -> list[str]:
    """One line per difference between expected and returned samples."""
    lines = []
    left = list(got)
    for labels, value in expected:
        match = next((s for s in left if s[0] == labels), None)
        shown = format_labels(labels)
        if match is None:
            lines.append(f"{shown}: expected {format_value(value)}, missing from the result")
            continue
        left.remove(match)
        if math.isnan(value) and math.isnan(match[1]):
            lines.append(f"{shown}: expected NaN, got NaN, but NaN never equals NaN "
                         "(as in promtool): test for it with an expression instead")
        elif value != match[1]:
            lines.append(f"{shown}: expected {format_value(value)}, "
                         f"got {format_value(match[1])}")
    lines += [f"{format_labels(labels)}: got {format_value(value)}, not expected"
              for labels, value in left]
    return lines


def _pending_line(alert: AlertView, waiting: AlertView, hold: float | None) -> str:
    text = f"expected alert {format_labels(alert.labels)} is pending, not firing"
    if waiting.active_at is None or hold is None:
        return text
    return (f"{text}: active since {format_duration(waiting.active_at)} and 'for' is "
            f"{format_duration(hold)}, so it fires at "
            f"{format_duration(waiting.active_at + hold)} at the earliest")


def _closeness(expected: AlertView, got: AlertView) -> tuple[int, int]:
    return (len(set(expected.labels) & set(got.labels)),
            len(set(expected.annotations) & set(got.annotations)))


def _pair_lines(expected: AlertView, got: AlertView) -> list[str]:
    where = f"alert {format_labels(got.labels)}"
    lines = []
    for kind, exp_pairs, got_pairs in (("label", expected.labels, got.labels),
                                       ("annotation", expected.annotations, got.annotations)):
        exp_map, got_map = dict(exp_pairs), dict(got_pairs)
        for name in sorted(exp_map.keys() | got_map.keys()):
            want, have = exp_map.get(name), got_map.get(name)
            if want == have:
                continue
            if want is None:
                lines.append(f"{where}: {kind} {name}: not expected, got {quote(str(have))}")
            elif have is None:
                lines.append(f"{where}: {kind} {name}: expected {quote(want)}, got none")
            else:
                at = next((i for i, (a, b) in enumerate(zip(want, have, strict=False))
                           if a != b), min(len(want), len(have)))
                lines.append(f"{where}: {kind} {name}: expected {quote(want)}, "
                             f"got {quote(have)} (they differ from character {at + 1})")
    return lines
