"""Inhibition: a firing source mutes its targets with equal labels, never itself."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from piggywatch.alerting.inhibit import Inhibitor
from piggywatch.alerting.settings import InhibitRule

TARGET_DOWN = InhibitRule.model_validate({
    "source_matchers": ['alertname="PostgresTargetDown"'],
    "target_matchers": ['severity=~"high|medium|low"'],
    "equal": ["target"],
})
DOWN_MAIN = {"alertname": "PostgresTargetDown", "severity": "critical", "target": "main"}


def test_a_down_target_mutes_lesser_alerts_about_the_same_target() -> None:
    inhibitor = Inhibitor([TARGET_DOWN])
    inhibitor.set_firing([DOWN_MAIN])
    slow = {"alertname": "SlowQueries", "severity": "medium", "target": "main"}
    assert inhibitor.is_inhibited(slow)
    assert inhibitor.inhibited_by(slow) == DOWN_MAIN
    assert not inhibitor.is_inhibited({**slow, "target": "replica"})
    assert not inhibitor.is_inhibited({**slow, "severity": "critical"})


def test_only_a_firing_source_inhibits() -> None:
    inhibitor = Inhibitor([TARGET_DOWN])
    slow = {"alertname": "SlowQueries", "severity": "medium", "target": "main"}
    inhibitor.set_firing([DOWN_MAIN])
    assert inhibitor.is_inhibited(slow)
    inhibitor.set_firing([slow])  # the target went back up
    assert not inhibitor.is_inhibited(slow)


def test_equal_labels_missing_on_both_sides_count_as_equal() -> None:
    inhibitor = Inhibitor([TARGET_DOWN])
    inhibitor.set_firing([{"alertname": "PostgresTargetDown"}])
    assert inhibitor.is_inhibited({"alertname": "Bloat", "severity": "low"})
    assert not inhibitor.is_inhibited({"alertname": "Bloat", "severity": "low",
                                       "target": "main"})


def test_an_alert_never_inhibits_itself() -> None:
    rule = InhibitRule.model_validate({"source_matchers": ['severity="high"'],
                                       "target_matchers": ['alertname=~".+"']})
    inhibitor = Inhibitor([rule])
    alert = {"alertname": "ReplicationLag", "severity": "high"}
    inhibitor.set_firing([alert])
    assert not inhibitor.is_inhibited(alert)
    # Two alerts matching both sides do not mute each other either...
    other = {"alertname": "DiskFilling", "severity": "high"}
    inhibitor.set_firing([alert, other])
    assert not inhibitor.is_inhibited(alert)
    assert not inhibitor.is_inhibited(other)
    # ...but an alert that only matches the target side is muted.
    assert inhibitor.is_inhibited({"alertname": "Bloat", "severity": "low"})


def test_no_rules_inhibit_nothing() -> None:
    inhibitor = Inhibitor([])
    inhibitor.set_firing([DOWN_MAIN])
    assert not inhibitor.is_inhibited({"severity": "low", "target": "main"})


_LABELS = st.dictionaries(st.sampled_from(["alertname", "severity", "target"]),
                          st.sampled_from(["PostgresTargetDown", "high", "low", "main"]))


@given(st.lists(_LABELS, max_size=6), _LABELS)
def test_inhibition_agrees_with_the_definition(firing: list[dict[str, str]],
                                               labels: dict[str, str]) -> None:
    inhibitor = Inhibitor([TARGET_DOWN])
    inhibitor.set_firing(firing)

    def source(a: dict[str, str]) -> bool:
        return a.get("alertname") == "PostgresTargetDown"

    def target(a: dict[str, str]) -> bool:
        return a.get("severity", "") in ("high", "medium", "low")

    expected = target(labels) and any(
        source(s) and s.get("target", "") == labels.get("target", "")
        and not (source(labels) and target(s)) for s in firing)
    assert inhibitor.is_inhibited(labels) is expected
