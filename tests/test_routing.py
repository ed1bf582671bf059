"""Matchers, the routing tree (Alertmanager semantics) and the alerting cross-references."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from piggywatch.alerting.matchers import (
    MatcherError,
    format_matcher,
    matches,
    parse_matcher,
    parse_matchers,
)
from piggywatch.alerting.routing import (
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_GROUP_WAIT,
    DEFAULT_REPEAT_INTERVAL,
    Router,
    group_labels,
)
from piggywatch.alerting.settings import (
    AlertingSettings,
    EscalationStep,
    Receiver,
    Route,
    TimeInterval,
    alerting_problems,
)
from piggywatch.store.series import MatchOp

# --- matchers ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "name", "op", "value"), [
    ('severity="critical"', "severity", MatchOp.EQUAL, "critical"),
    ('severity != "low"', "severity", MatchOp.NOT_EQUAL, "low"),
    ('  severity=~"high|critical"  ', "severity", MatchOp.REGEX, "high|critical"),
    ('job!~"pg.*"', "job", MatchOp.NOT_REGEX, "pg.*"),
    ('msg="say \\"hi\\"\\\\ \\n"', "msg", MatchOp.EQUAL, 'say "hi"\\ \n'),
    # A backslash before anything else is kept, so regexes read as written.
    ('host=~"api\\.example\\.com"', "host", MatchOp.REGEX, "api\\.example\\.com"),
    ("alertname = Watchdog", "alertname", MatchOp.EQUAL, "Watchdog"),
    ('empty=""', "empty", MatchOp.EQUAL, ""),
])
def test_matcher_strings_parse_like_alertmanager(text: str, name: str, op: MatchOp,
                                                 value: str) -> None:
    matcher = parse_matcher(text)
    assert (matcher.name, matcher.op, matcher.value) == (name, op, value)


@pytest.mark.parametrize(("text", "reason"), [
    ("severity", "is not a matcher"),
    ('="x"', "no label name"),
    ('1abc="x"', "is not a label name"),
    ('a="x"y"', "unescaped double quote"),
    ('a="x', "closing double quote is missing"),
    ('a="x\\"', "closing double quote is missing"),
    ('{a="x"}', "without braces"),
    ('a=~"(unclosed"', "regular expression is not valid"),
])
def test_bad_matchers_say_why(text: str, reason: str) -> None:
    with pytest.raises(MatcherError, match=re.escape(reason)):
        parse_matcher(text)


def test_regex_matchers_are_anchored_and_missing_labels_are_empty() -> None:
    high = parse_matchers(['severity=~"high|critical"'])
    assert matches(high, {"severity": "critical"})
    assert not matches(high, {"severity": "criticality"})
    assert not matches(high, {})
    assert matches(parse_matchers(['team=""']), {"severity": "low"})
    assert matches(parse_matchers(['team!~".+"']), {})


@given(st.text(max_size=30))
def test_any_value_survives_format_then_parse(value: str) -> None:
    matcher = parse_matcher(format_matcher(parse_matcher(f'x="{_escape(value)}"')))
    assert matcher.value == value
    assert matcher.matches(value)


@given(st.text(max_size=40))
def test_parsing_arbitrary_text_fails_only_with_a_matcher_error(text: str) -> None:
    with contextlib.suppress(MatcherError):
        parse_matcher(text)


_LABEL = st.sampled_from(["a", "b", "c"])
_VALUE = st.sampled_from(["", "x", "y", "x.y", "xy"])


@given(st.dictionaries(_LABEL, _VALUE), _LABEL,
       st.sampled_from(["=", "!=", "=~", "!~"]), _VALUE)
def test_matching_agrees_with_a_reference(labels: dict[str, str], name: str, op: str,
                                          value: str) -> None:
    matcher = parse_matcher(f'{name}{op}"{_escape(value)}"')
    actual = labels.get(name, "")
    expected = {
        "=": actual == value,
        "!=": actual != value,
        "=~": re.fullmatch(value, actual, re.DOTALL) is not None,
        "!~": re.fullmatch(value, actual, re.DOTALL) is None,
    }[op]
    assert matches([matcher], labels) is expected


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- the routing tree ----------------------------------------------------------------

DESIGN_ROUTE: dict[str, Any] = {
    "receiver": "oncall-slack",
    "group_by": ["alertname", "target"],
    "group_wait": "30s",
    "group_interval": "5m",
    "repeat_interval": "4h",
    "routes": [
        {"matchers": ['severity="critical"'], "escalation": "outage"},
        {"matchers": ['severity="high"'], "escalation": "degradation",
         "group_interval": "10m"},
        {"matchers": ['severity="low"'], "receiver": "leads-email", "group_by": ["..."],
         "active_time_intervals": ["business-hours"],
         "routes": [{"matchers": ['team="db"'], "repeat_interval": "1d"}]},
    ],
}


def router(data: dict[str, Any]) -> Router:
    return Router(Route.model_validate(data))


def test_critical_alerts_take_the_outage_escalation_and_inherit_grouping() -> None:
    [plan] = router(DESIGN_ROUTE).match({"alertname": "PgDown", "severity": "critical"})
    assert plan.route_id == "0.0"
    assert (plan.receiver, plan.escalation) == (None, "outage")
    assert plan.group_by == ("alertname", "target")
    assert (plan.group_wait, plan.group_interval, plan.repeat_interval) == (30, 300, 4 * 3600)


def test_an_alert_no_child_takes_goes_to_the_root() -> None:
    [plan] = router(DESIGN_ROUTE).match({"alertname": "X", "severity": "medium"})
    assert (plan.route_id, plan.receiver, plan.escalation) == ("0", "oncall-slack", None)


def test_own_settings_win_and_the_rest_is_inherited_down_the_tree() -> None:
    tree = router(DESIGN_ROUTE)
    [high] = tree.match({"severity": "high"})
    assert (high.group_interval, high.group_wait) == (600, 30)
    [db] = tree.match({"severity": "low", "team": "db"})
    assert db.route_id == "0.2.0"
    assert db.receiver == "leads-email"
    assert db.group_by is None  # '...' inherited
    assert db.repeat_interval == 86400
    # Alertmanager does not inherit time intervals: the parent's apply to the parent only.
    assert db.active_time_intervals == ()
    [low] = tree.match({"severity": "low", "team": "web"})
    assert (low.route_id, low.active_time_intervals) == ("0.2", ("business-hours",))


def test_defaults_are_alertmanagers() -> None:
    [plan] = router({"receiver": "r"}).match({"a": "b"})
    assert plan.group_by == ()
    assert (plan.group_wait, plan.group_interval, plan.repeat_interval) == (
        DEFAULT_GROUP_WAIT, DEFAULT_GROUP_INTERVAL, DEFAULT_REPEAT_INTERVAL) == (30, 300, 14400)


def test_matching_stops_at_the_first_child_unless_it_continues() -> None:
    tree = {"receiver": "root", "routes": [
        {"matchers": ['team="db"'], "receiver": "db", "continue": True},
        {"matchers": ['severity="critical"'], "receiver": "pager"},
        {"matchers": ['team="db"'], "receiver": "never"},
    ]}
    plans = router(tree).match({"team": "db", "severity": "critical"})
    assert [p.receiver for p in plans] == ["db", "pager"]
    assert [p.route_id for p in plans] == ["0.0", "0.1"]
    # A sibling that does not match does not stop the search; the next matching one does.
    assert [p.receiver for p in router(tree).match({"team": "db"})] == ["db", "never"]
    assert [p.receiver for p in router(tree).match({"team": "web"})] == ["root"]


def test_group_labels_leave_out_absent_labels_and_dots_take_all() -> None:
    tree = router(DESIGN_ROUTE)
    [root] = tree.match({"alertname": "A", "severity": "medium"})
    assert group_labels(root, {"alertname": "A", "severity": "medium"}) == {"alertname": "A"}
    labels = {"alertname": "A", "severity": "low", "x": "1"}
    [low] = tree.match(labels)
    assert group_labels(low, labels) == labels


def test_route_ids_are_paths_and_plans_can_be_looked_up() -> None:
    tree = router(DESIGN_ROUTE)
    assert [p.route_id for p in tree.plans()] == ["0", "0.0", "0.1", "0.2", "0.2.0"]
    plan = tree.plan("0.2.0")
    assert plan is not None
    assert plan.to_dict()["repeat_interval"] == 86400
    assert type(plan).from_dict(plan.to_dict()) == plan
    assert tree.plan("0.9") is None


_MATCHER = st.builds(lambda n, o, v: f'{n}{o}"{v}"', _LABEL, st.sampled_from(["=", "!="]),
                     st.sampled_from(["", "x", "y"]))


def _routes(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    children = st.lists(_routes(depth - 1), max_size=3) if depth else st.just([])
    return st.fixed_dictionaries({
        "matchers": st.lists(_MATCHER, max_size=2),
        "continue": st.booleans(),
        "routes": children,
    })


@settings(max_examples=200)
@given(st.lists(_routes(2), max_size=4), st.dictionaries(_LABEL, st.sampled_from(["x", "y"])))
def test_routing_properties(children: list[dict[str, Any]], labels: dict[str, str]) -> None:
    tree = {"receiver": "root", "routes": children}
    plans = router(tree).match(labels)
    ids = [p.route_id for p in plans]
    assert ids and len(set(ids)) == len(ids)
    for route_id in ids:
        path = [int(i) for i in route_id.split(".")[1:]]
        level: list[dict[str, Any]] = children
        node: dict[str, Any] = tree
        for index in path:
            # Every route on the way matches; earlier matching siblings all continue.
            for earlier in level[:index]:
                assert not _node_matches(earlier, labels) or earlier["continue"]
            node = level[index]
            assert _node_matches(node, labels)
            level = node["routes"]
        # It is the deepest match: none of its children match.
        assert not any(_node_matches(child, labels) for child in node["routes"])
    if not _any_continue(children):
        assert len(plans) == 1


def _node_matches(node: dict[str, Any], labels: dict[str, str]) -> bool:
    return matches(parse_matchers(node["matchers"]), labels)


def _any_continue(routes: list[dict[str, Any]]) -> bool:
    return any(r["continue"] or _any_continue(r["routes"]) for r in routes)


# --- cross references in the configuration -------------------------------------------

RECEIVERS = [
    {"name": "oncall-slack", "slack": {"webhook_url": "https://hooks.example/x"}},
    {"name": "leads-email", "email": {"to": ["a@example.com"], "from": "p@example.com",
                                      "smarthost": "smtp.example.com:587"}},
]


def settings_with(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "receivers": RECEIVERS,
        "route": DESIGN_ROUTE,
        "escalations": {"outage": [{"notify": ["oncall-slack", "leads-email"]}],
                        "degradation": [{"notify": ["oncall-slack"], "wait": "1h"},
                                        {"notify": ["leads-email"]}]},
        "time_intervals": [{"name": "business-hours", "time_zone": "Europe/London",
                            "weekdays": ["monday:friday"],
                            "times": [{"start_time": "09:00", "end_time": "18:00"}]}],
    }
    data.update(changes)
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    return alerting_problems(
        TypeAdapter(list[Receiver]).validate_python(data["receivers"]),
        Route.model_validate(data["route"]),
        TypeAdapter(dict[str, list[EscalationStep]]).validate_python(data["escalations"]),
        [],
        TypeAdapter(list[TimeInterval]).validate_python(data["time_intervals"]))


def test_the_design_configuration_is_consistent() -> None:
    assert problems_of(settings_with()) == []
    AlertingSettings.model_validate(settings_with())


def test_a_misspelt_receiver_is_reported_with_where_and_a_suggestion() -> None:
    route = {**DESIGN_ROUTE, "routes": [{"matchers": ['a="b"'], "receiver": "oncall-slak"}]}
    assert problems_of(settings_with(route=route)) == [
        "route.routes[0].receiver: there is no receiver named 'oncall-slak'; "
        "did you mean 'oncall-slack'?"]
    with pytest.raises(ValidationError, match="did you mean 'oncall-slack'"):
        AlertingSettings.model_validate(settings_with(route=route))


def test_every_broken_reference_is_listed() -> None:
    route = {"receiver": "nobody", "matchers": ['a="b"'], "routes": [
        {"escalation": "outrage", "mute_time_intervals": ["weekends"]}]}
    escalations = {"outage": [{"notify": ["oncall-slack", "pager"]}], "empty": []}
    receivers = [*RECEIVERS, RECEIVERS[0]]
    found = problems_of(settings_with(route=route, escalations=escalations,
                                      receivers=receivers))
    assert found == [
        "receivers[2].name: receiver name 'oncall-slack' is used twice",
        "escalations.outage[0].notify[1]: there is no receiver named 'pager'; "
        "known: leads-email, oncall-slack",
        "escalations.empty: an escalation needs at least one step",
        "route.matchers: the root route takes every alert; put matchers on its child routes",
        "route.receiver: there is no receiver named 'nobody'; known: leads-email, oncall-slack",
        "route.routes[0].escalation: there is no escalation named 'outrage'; "
        "did you mean 'outage'?",
        "route.routes[0].mute_time_intervals[0]: there is no time interval named 'weekends'; "
        "known: business-hours",
    ]


def test_a_root_without_a_target_is_reported() -> None:
    found = problems_of(settings_with(route={"routes": [{"receiver": "leads-email"}]}))
    assert found == ["route: the root route needs a receiver or an escalation: it takes "
                     "every alert no child route takes"]


@pytest.mark.parametrize(("route", "reason"), [
    ({"receiver": "r", "matchers": ["severity"]}, "is not a matcher"),
    ({"receiver": "r", "group_by": ["...", "alertname"]}, "'...' (every label) stands alone"),
    ({"receiver": "r", "group_by": ["a-b"]}, "'a-b' is not a label name"),
    ({"receiver": "r", "escalation": "e"}, "a receiver or an escalation, not both"),
])
def test_route_fields_are_checked_where_they_are(route: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        Route.model_validate(route)
