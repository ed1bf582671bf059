"""Inhibition: while a source alert fires, alerts it makes redundant stay quiet.

Alertmanager's semantics: an alert matching a rule's ``target_matchers`` is inhibited when
some *firing* alert matches the rule's ``source_matchers`` and has the same value for every
``equal`` label (a label missing on both sides counts as equal, both being empty). An alert
never inhibits itself: when the target also matches the source matchers, sources that also
match the target matchers are not counted, so alerts matching both sides of one rule
cannot silence each other (or themselves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from piggywatch.alerting.matchers import matches, parse_matchers
from piggywatch.store.series import LabelMatcher

if TYPE_CHECKING:
    from piggywatch.alerting.settings import InhibitRule

__all__ = ["Inhibitor"]


@dataclass
class _Rule:
    sources: tuple[LabelMatcher, ...]
    targets: tuple[LabelMatcher, ...]
    equal: tuple[str, ...]
    # Firing source alerts by their values of the ``equal`` labels; each with whether it
    # also matches the target side (such sources cannot inhibit two-sided targets).
    firing: dict[tuple[str, ...], list[tuple[Mapping[str, str], bool]]] = field(
        default_factory=dict)

    def key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(labels.get(name, "") for name in self.equal)


class Inhibitor:
    """The inhibition rules applied to the alerts firing now (given with ``set_firing``)."""

    def __init__(self, rules: Sequence[InhibitRule]) -> None:
        self._rules = [_Rule(parse_matchers(r.source_matchers), parse_matchers(r.target_matchers),
                             tuple(r.equal)) for r in rules]

    def set_firing(self, alerts: Iterable[Mapping[str, str]]) -> None:
        """Replace the set of firing alerts (their labels) that can act as sources."""
        for rule in self._rules:
            rule.firing = {}
        for labels in alerts:
            for rule in self._rules:
                if matches(rule.sources, labels):
                    rule.firing.setdefault(rule.key(labels), []).append(
                        (dict(labels), matches(rule.targets, labels)))

    def is_inhibited(self, labels: Mapping[str, str]) -> bool:
        """Whether an alert with these labels is inhibited by a firing alert."""
        return self.inhibited_by(labels) is not None

    def inhibited_by(self, labels: Mapping[str, str]) -> Mapping[str, str] | None:
        """The labels of a firing alert that inhibits this one, or ``None``."""
        for rule in self._rules:
            if not rule.firing or not matches(rule.targets, labels):
                continue
            two_sided = matches(rule.sources, labels)
            for source, source_is_target in rule.firing.get(rule.key(labels), ()):
                if not (two_sided and source_is_target):
                    return source
        return None
