"""Time intervals: business hours across DST, the calendar fields, and deferral (not drops)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from piggywatch.alerting.grouping import DueKind, Grouper
from piggywatch.alerting.routing import Router
from piggywatch.alerting.settings import Route
from piggywatch.alerting.time_intervals import TimeInterval, TimeIntervals
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind

LONDON = ZoneInfo("Europe/London")
BUSINESS_HOURS = {"name": "business-hours", "time_zone": "Europe/London",
                  "weekdays": ["monday:friday"],
                  "times": [{"start_time": "09:00", "end_time": "18:00"}]}


def intervals(*configs: dict[str, Any]) -> TimeIntervals:
    return TimeIntervals(TimeInterval.model_validate(c) for c in configs)


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("UTC")).timestamp()


def test_business_hours_follow_london_wall_clock_across_the_spring_change() -> None:
    hours = intervals(BUSINESS_HOURS)
    # Friday 29 March 2024 is GMT (UTC+0); Monday 1 April is BST (UTC+1).
    assert not hours.contains("business-hours", utc(2024, 3, 29, 8, 59))
    assert hours.contains("business-hours", utc(2024, 3, 29, 9, 0))
    assert hours.contains("business-hours", utc(2024, 3, 29, 17, 59))
    assert not hours.contains("business-hours", utc(2024, 3, 29, 18, 0))  # end exclusive
    assert not hours.contains("business-hours", utc(2024, 3, 30, 12, 0))  # Saturday
    assert hours.contains("business-hours", utc(2024, 4, 1, 8, 0))  # 09:00 BST
    assert not hours.contains("business-hours", utc(2024, 4, 1, 17, 0))  # 18:00 BST


def test_friday_evening_opens_next_on_monday_morning_across_both_dst_changes() -> None:
    hours = intervals(BUSINESS_HOURS)
    spring = hours.next_opening(["business-hours"], london(2024, 3, 29, 19, 0))
    assert spring == london(2024, 4, 1, 9, 0) == utc(2024, 4, 1, 8, 0)
    autumn = hours.next_opening(["business-hours"], london(2024, 10, 25, 19, 0))
    assert autumn == london(2024, 10, 28, 9, 0) == utc(2024, 10, 28, 9, 0)
    inside = london(2024, 10, 25, 10, 0)
    assert hours.next_opening(["business-hours"], inside) == inside


def test_an_opening_inside_the_skipped_hour_is_when_the_clocks_jump() -> None:
    early = intervals({"name": "early", "time_zone": "Europe/London",
                       "times": [{"start_time": "01:30", "end_time": "03:00"}]})
    # On 31 March 2024, 01:00 GMT is followed by 02:00 BST: 01:30 never shows.
    assert early.next_opening(["early"], london(2024, 3, 31, 0, 10)) == utc(2024, 3, 31, 1, 0)


def test_the_repeated_hour_in_autumn_reopens_an_interval() -> None:
    night = intervals({"name": "night", "time_zone": "Europe/London",
                       "times": [{"start_time": "00:30", "end_time": "01:30"}]})
    after_first_pass = utc(2024, 10, 27, 0, 45)  # 01:45 BST, outside
    assert not night.contains("night", after_first_pass)
    # The clocks go back from 02:00 BST to 01:00 GMT at 01:00 UTC, inside again.
    assert night.next_opening(["night"], after_first_pass) == utc(2024, 10, 27, 1, 0)


@pytest.mark.parametrize(("config", "inside", "outside"), [
    ({"weekdays": ["saturday", "sunday"]}, [(2024, 6, 1), (2024, 6, 2)], [(2024, 6, 3)]),
    ({"days_of_month": ["-1"]}, [(2024, 2, 29), (2023, 2, 28), (2024, 4, 30)],
     [(2024, 2, 28), (2024, 4, 29)]),
    ({"days_of_month": ["-7:-1"]}, [(2024, 1, 25), (2024, 1, 31)], [(2024, 1, 24)]),
    ({"days_of_month": ["1:7"], "weekdays": ["monday"]}, [(2024, 7, 1)], [(2024, 7, 8)]),
    ({"days_of_month": ["31"]}, [(2024, 1, 31)], [(2024, 4, 30), (2024, 5, 1)]),
    ({"months": ["november:december", "1"]}, [(2024, 11, 1), (2024, 1, 15)], [(2024, 2, 1)]),
])
def test_calendar_fields(config: dict[str, Any], inside: list[tuple[int, int, int]],
                         outside: list[tuple[int, int, int]]) -> None:
    calendar = intervals({"name": "c", **config})
    for day in inside:
        assert calendar.contains("c", utc(*day, 12, 0)), day
    for day in outside:
        assert not calendar.contains("c", utc(*day, 12, 0)), day


def test_entries_with_one_name_form_one_interval() -> None:
    hours = intervals(BUSINESS_HOURS, {
        "name": "business-hours", "time_zone": "Europe/London", "weekdays": ["saturday"],
        "times": [{"start_time": "10:00", "end_time": "12:00"}]})
    assert hours.contains("business-hours", london(2024, 6, 1, 11, 0))
    assert hours.next_opening(["business-hours"], london(2024, 5, 31, 19, 0)) == london(
        2024, 6, 1, 10, 0)


def test_mute_intervals_defer_to_when_they_end() -> None:
    both = intervals(BUSINESS_HOURS, {"name": "deploys", "time_zone": "Europe/London",
                                      "weekdays": ["tuesday"],
                                      "times": [{"start_time": "09:00", "end_time": "10:30"}]})
    tuesday_9 = london(2024, 6, 4, 9, 15)
    assert not both.allows(["business-hours"], ["deploys"], tuesday_9)
    assert both.next_allowed(["business-hours"], ["deploys"], tuesday_9) == london(
        2024, 6, 4, 10, 30)
    assert both.next_allowed([], ["deploys"], tuesday_9) == london(2024, 6, 4, 10, 30)
    # Names nobody defines are ignored rather than holding notifications forever.
    assert both.allows(["gone"], ["also-gone"], tuesday_9)


def test_an_interval_that_never_opens_has_no_next_opening() -> None:
    never = intervals({"name": "never", "days_of_month": ["31"], "months": ["february"]})
    assert never.next_opening(["never"], utc(2024, 1, 1)) == math.inf


@pytest.mark.parametrize(("config", "reason"), [
    ({"time_zone": "Europe/Londn"}, "unknown time zone 'Europe/Londn'"),
    ({"weekdays": ["funday"]}, "'funday' is not a weekday"),
    ({"weekdays": ["saturday:sunday"]}, "runs backwards"),
    ({"months": ["13"]}, "'13' is not a month"),
    ({"months": ["december:january"]}, "runs backwards"),
    ({"days_of_month": ["0"]}, "0 is not a day of the month"),
    ({"days_of_month": ["-3:5"]}, "make both negative or both positive"),
    ({"days_of_month": ["10:2"]}, "ends before it starts"),
    ({"times": [{"start_time": "18:00", "end_time": "09:00"}]}, "the start must be before"),
    ({"times": [{"start_time": "9:00", "end_time": "18:00"}]}, "should match pattern"),
])
def test_bad_intervals_say_why(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        TimeInterval.model_validate({"name": "x", **config})


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=366 * 24 * 60))
def test_next_opening_is_inside_and_nothing_earlier_is(minutes: int) -> None:
    hours = intervals(BUSINESS_HOURS)
    start = utc(2024, 1, 1) + minutes * 60 + 17
    opening = hours.next_opening(["business-hours"], start)
    assert hours.contains("business-hours", opening)
    step = start
    while step < opening:
        assert not hours.contains("business-hours", step)
        step += 15 * 60


# --- deferral of notifications -------------------------------------------------------

ROUTE = Route.model_validate({
    "receiver": "oncall-slack", "group_by": ["alertname"],
    "routes": [{"matchers": ['severity="low"'], "receiver": "team-email",
                "active_time_intervals": ["business-hours"]}],
})


def low_alert(kind: EventKind, at: float) -> AlertEvent:
    labels = (("alertname", "TableBloat"), ("severity", "low"))
    state = AlertState.FIRING if kind is EventKind.FIRING else AlertState.INACTIVE
    alert = Alert(labels, {}, state, active_at=at, value=0.4, fired_at=at,
                  resolved_at=None if kind is EventKind.FIRING else at)
    return AlertEvent(kind, "tables", "TableBloat", alert, at)


def test_a_low_alert_on_friday_evening_is_deferred_to_monday_morning() -> None:
    grouper = Grouper(intervals(BUSINESS_HOURS))
    friday_7pm = london(2024, 3, 29, 19, 0)
    alert = low_alert(EventKind.FIRING, friday_7pm)
    plans = Router(ROUTE).match(dict(alert.alert.labels))
    assert [p.receiver for p in plans] == ["team-email"]
    grouper.add(alert, plans, friday_7pm)
    assert grouper.due(friday_7pm + 30) == []  # due, but outside business hours
    monday_9am = london(2024, 4, 1, 9, 0)
    assert grouper.next_wakeup() == monday_9am
    assert grouper.due(monday_9am - 1) == []
    [due] = grouper.due(monday_9am)
    assert due.kind is DueKind.FIRST
    assert due.deferred_since == friday_7pm + 30
    assert due.plan.receiver == "team-email"


def test_a_deferred_alert_that_resolved_over_the_weekend_is_still_reported() -> None:
    grouper = Grouper(intervals(BUSINESS_HOURS))
    friday_7pm = london(2024, 3, 29, 19, 0)
    plans = Router(ROUTE).match({"alertname": "TableBloat", "severity": "low"})
    grouper.add(low_alert(EventKind.FIRING, friday_7pm), plans, friday_7pm)
    grouper.due(friday_7pm + 30)
    saturday = london(2024, 3, 30, 11, 0)
    grouper.add(low_alert(EventKind.RESOLVED, saturday), plans, saturday)
    [due] = grouper.due(london(2024, 4, 1, 9, 0))
    assert due.kind is DueKind.RESOLVE
    assert [a.ends_at for a in due.alerts] == [saturday]
    assert len(grouper) == 0


def test_repeats_outside_business_hours_wait_for_the_opening() -> None:
    grouper = Grouper(intervals(BUSINESS_HOURS))
    friday_5pm = london(2024, 3, 29, 17, 0)
    plans = Router(ROUTE).match({"alertname": "TableBloat", "severity": "low"})
    grouper.add(low_alert(EventKind.FIRING, friday_5pm), plans, friday_5pm)
    assert [d.kind for d in grouper.due(friday_5pm + 30)] == [DueKind.FIRST]
    sent: list[tuple[float, DueKind]] = []
    while (wake := grouper.next_wakeup()) is not None and wake <= london(2024, 4, 1, 12, 0):
        sent.extend((wake, d.kind) for d in grouper.due(wake))
    # The 4 h repeat falls on Friday 21:00; it waits for Monday 09:00, then beats on.
    assert sent == [(london(2024, 4, 1, 9, 0), DueKind.REPEAT)]
