"""Alert groups: group_wait, group_interval, repeat_interval, resolves, and resuming."""

from __future__ import annotations

import json
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.alerting.grouping import DueGroup, DueKind, Grouper
from piggywatch.alerting.model import AlertStatus, incident_key
from piggywatch.alerting.routing import RoutePlan, Router
from piggywatch.alerting.settings import Route
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind

PLAN = RoutePlan(route_id="0", receiver="oncall-slack", escalation=None,
                 group_by=("alertname", "target"), group_wait=30.0, group_interval=300.0,
                 repeat_interval=3600.0)
T0 = 1_700_000_000.0


def event(kind: EventKind, at: float, name: str = "PgConnectionsHigh", target: str = "main",
          **labels: str) -> AlertEvent:
    pairs = tuple(sorted({"alertname": name, "target": target, **labels}.items()))
    firing = kind is EventKind.FIRING
    alert = Alert(pairs, {"summary": f"{name} on {target}"},
                  AlertState.FIRING if firing else AlertState.INACTIVE, active_at=at - 60,
                  value=0.93, fired_at=at, resolved_at=None if firing else at)
    return AlertEvent(kind, "postgres", name, alert, at)


def fire(at: float, **kw: str) -> AlertEvent:
    return event(EventKind.FIRING, at, **kw)


def resolve(at: float, **kw: str) -> AlertEvent:
    return event(EventKind.RESOLVED, at, **kw)


def kinds(due: list[DueGroup]) -> list[DueKind]:
    return [d.kind for d in due]


def test_first_notification_waits_group_wait_and_batches_alerts() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.add(fire(T0 + 10, name="PgConnectionsHigh", target="main", instance="b"), [PLAN],
                T0 + 10)
    assert grouper.due(T0 + 29) == []
    assert grouper.next_wakeup() == T0 + 30
    [first] = grouper.due(T0 + 30)
    assert first.kind is DueKind.FIRST
    assert len(first.alerts) == 2
    assert first.group_labels == {"alertname": "PgConnectionsHigh", "target": "main"}
    assert first.incident == incident_key("0", first.group_labels)
    assert all(a.status is AlertStatus.FIRING for a in first.alerts)
    assert first.alerts[0].value == "0.93"
    assert first.alerts[0].annotations == {"summary": "PgConnectionsHigh on main"}


def test_alerts_with_other_group_labels_are_other_incidents() -> None:
    grouper = Grouper()
    grouper.add(fire(T0, target="main"), [PLAN], T0)
    grouper.add(fire(T0, target="replica"), [PLAN], T0)
    due = grouper.due(T0 + 30)
    assert kinds(due) == [DueKind.FIRST, DueKind.FIRST]
    assert len({d.incident for d in due}) == 2


def test_a_new_alert_waits_for_the_group_interval() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 30)
    grouper.add(fire(T0 + 60, instance="b"), [PLAN], T0 + 60)
    assert grouper.due(T0 + 329) == []
    [change] = grouper.due(T0 + 330)
    assert change.kind is DueKind.CHANGE
    assert len(change.added) == 1
    assert not change.resolve_only


def test_an_unchanged_firing_group_repeats_after_repeat_interval() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 30)
    sent: list[tuple[float, list[DueKind]]] = []
    while (wake := grouper.next_wakeup()) is not None and wake < T0 + 7300:
        sent.append((wake - T0, kinds(grouper.due(wake))))
    # Flushes happen every group_interval after the first; the repeat goes out at the
    # first flush at least an hour after the last notification.
    assert [t for t, k in sent] == [330 + 300 * i for i in range(24)]
    assert [t for t, k in sent if k] == [3630, 7230]
    assert all(k in ([], [DueKind.REPEAT]) for _, k in sent)


def test_a_late_caller_does_not_shift_the_groups_beat() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 45)
    assert grouper.next_wakeup() == T0 + 330


def test_partial_resolve_is_a_change_and_the_last_resolve_closes_the_incident() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.add(fire(T0, instance="b"), [PLAN], T0)
    [first] = grouper.due(T0 + 30)
    grouper.add(resolve(T0 + 100, instance="b"), [PLAN], T0 + 100)
    [change] = grouper.due(T0 + 330)
    assert change.kind is DueKind.CHANGE and change.resolve_only
    assert [a.status for a in change.alerts] == [AlertStatus.FIRING, AlertStatus.RESOLVED]
    assert change.resolved == (change.alerts[1].fingerprint,)
    grouper.add(resolve(T0 + 400), [PLAN], T0 + 400)
    [done] = grouper.due(T0 + 630)
    assert done.kind is DueKind.RESOLVE and done.resolve_only
    assert done.incident == first.incident
    assert [a.status for a in done.alerts] == [AlertStatus.RESOLVED]
    assert done.alerts[0].ends_at == T0 + 400
    assert len(grouper) == 0
    assert grouper.next_wakeup() is None


def test_an_alert_that_resolves_within_group_wait_notifies_nobody() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.add(resolve(T0 + 10), [PLAN], T0 + 10)
    assert grouper.due(T0 + 30) == []
    assert len(grouper) == 0


def test_a_flap_between_flushes_is_not_news() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 30)
    grouper.add(resolve(T0 + 40), [PLAN], T0 + 40)
    grouper.add(fire(T0 + 50), [PLAN], T0 + 50)
    assert grouper.due(T0 + 330) == []


def test_silenced_alerts_are_left_out_but_their_resolution_is_reported() -> None:
    grouper = Grouper()
    silenced: set[str] = {"b"}

    def suppressed(labels: Mapping[str, str]) -> bool:
        return labels.get("instance") in silenced

    grouper.add(fire(T0, instance="a"), [PLAN], T0)
    grouper.add(fire(T0, instance="b"), [PLAN], T0)
    [first] = grouper.due(T0 + 30, suppressed)
    assert [a.labels["instance"] for a in first.alerts] == ["a"]
    # Everything announced is now silenced too: the incident stays open, quietly.
    silenced.add("a")
    assert grouper.due(T0 + 3700, suppressed) == []
    grouper.add(resolve(T0 + 3800, instance="a"), [PLAN], T0 + 3800)
    [done] = grouper.due(T0 + 4000, suppressed)
    assert done.kind is DueKind.RESOLVE
    assert [a.labels["instance"] for a in done.alerts] == ["a"]
    # b still fires (silenced): the group lives on, and speaks again when the silence ends.
    assert len(grouper) == 1
    silenced.clear()
    [again] = grouper.due(T0 + 4300, suppressed)
    assert again.kind is DueKind.FIRST
    assert [a.labels["instance"] for a in again.alerts] == ["b"]


def test_continue_routes_make_one_incident_per_route() -> None:
    route = Route.model_validate({"receiver": "slack", "group_by": ["alertname"], "routes": [
        {"matchers": ['severity="critical"'], "escalation": "outage", "continue": True},
        {"matchers": ['target="main"'], "receiver": "email"},
    ]})
    alert = fire(T0, severity="critical")
    plans = Router(route).match(dict(alert.alert.labels))
    grouper = Grouper()
    touched = grouper.add(alert, plans, T0)
    assert len(touched) == 2
    due = grouper.due(T0 + 30)
    assert sorted((str(d.plan.receiver), str(d.plan.escalation)) for d in due) == [
        ("None", "outage"), ("email", "None")]


def test_a_resolution_reaches_the_alert_whatever_the_plans() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 30)
    assert grouper.add(resolve(T0 + 60), [], T0 + 60) != []
    assert kinds(grouper.due(T0 + 330)) == [DueKind.RESOLVE]


def test_reconcile_resolves_alerts_the_rules_no_longer_know() -> None:
    grouper = Grouper()
    keep, gone = fire(T0, instance="a"), fire(T0, instance="b")
    grouper.add(keep, [PLAN], T0)
    grouper.add(gone, [PLAN], T0)
    grouper.due(T0 + 30)
    assert len(grouper.reconcile({keep.alert.fingerprint}, T0 + 40)) == 1
    [change] = grouper.due(T0 + 330)
    assert change.resolved == (gone.alert.fingerprint,)


def test_groups_resume_after_a_restart() -> None:
    grouper = Grouper()
    grouper.add(fire(T0), [PLAN], T0)
    grouper.due(T0 + 30)
    grouper.add(fire(T0 + 60, instance="b"), [PLAN], T0 + 60)
    restored = Grouper.from_dict(json.loads(json.dumps(grouper.to_dict())))
    assert restored.next_wakeup() == grouper.next_wakeup() == T0 + 330
    assert restored.due(T0 + 330) == grouper.due(T0 + 330)
    assert kinds(restored.due(T0 + 330 + 3600)) == [DueKind.REPEAT]
    assert len(Grouper.from_dict({"version": 99, "groups": []})) == 0


# --- properties over random histories ------------------------------------------------

_STEP = st.tuples(st.sampled_from(["fire", "resolve", "wait"]), st.sampled_from("abc"),
                  st.integers(min_value=1, max_value=900))


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=40))
def test_timing_and_resume_properties(steps: list[tuple[str, str, int]]) -> None:
    plan = RoutePlan("0", "r", None, ("alertname",), 30.0, 300.0, 1800.0)
    live, resumed = Grouper(), Grouper()
    now = T0
    sent: list[tuple[float, DueGroup]] = []
    firing: set[str] = set()
    for action, instance, delay in [*steps, ("wait", "a", 10_000)]:
        now += delay
        while (wake := live.next_wakeup()) is not None and wake <= now:
            due = live.due(wake)
            # A restart between any two steps changes nothing.
            resumed = Grouper.from_dict(json.loads(json.dumps(resumed.to_dict())))
            assert resumed.due(wake) == due
            sent.extend((wake, d) for d in due)
        if action == "fire":
            firing.add(instance)
            for grouper in (live, resumed):
                grouper.add(fire(now, instance=instance), [plan], now)
        elif action == "resolve" and instance in firing:
            firing.discard(instance)
            for grouper in (live, resumed):
                grouper.add(resolve(now, instance=instance), [plan], now)
    open_incident = False
    last = 0.0
    for at, owed in sent:
        if open_incident:
            assert owed.kind is not DueKind.FIRST
            assert at - last >= plan.group_interval
        else:
            assert owed.kind is DueKind.FIRST
        open_incident = owed.kind is not DueKind.RESOLVE
        last = at
    # When nothing fires any more and time has passed, every incident has been closed.
    if not firing:
        assert not open_incident
        assert len(live) == 0
