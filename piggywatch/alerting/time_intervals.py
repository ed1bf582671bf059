"""Named, time-zone aware time intervals (business hours) and when they next open.

Each field follows Alertmanager's ``time_interval``: ``weekdays`` (``monday:friday``,
``saturday``), ``times`` (``09:00`` to ``18:00``, the end exclusive, ``24:00`` allowed as an
end), ``days_of_month`` (``1:7``; negative days count from the month's end, ``-1`` is its
last day) and ``months`` (``january:march`` or ``1:3``); an empty field matches everything,
and a time matches when every field does, read on the wall clock of ``time_zone``.
Several entries with the same name form one interval (their union), which is how
Alertmanager's list of ``time_intervals`` under one name is written here.

How routes use them (see grouping.py): a notification of a route with
``active_time_intervals`` that falls outside all of them, or one of a route with
``mute_time_intervals`` that falls inside any of them, is *deferred* to the next instant
the route is allowed to notify (``next_allowed``), never dropped. Alertmanager drops
muted notifications; we defer, because a low-severity alert at Friday 19:00 must still
reach someone at Monday 09:00.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TimeInterval", "TimeIntervals", "TimeRange", "parse_time_interval"]

_WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
_DAY = 86400.0
# How far ahead an opening is looked for: past any calendar pattern the fields can express
# (29 February needs four years), short enough to answer quickly when none exists.
_HORIZON_DAYS = 5 * 366

Range = tuple[int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TimeRange(_Strict):
    """``09:00`` to ``18:00`` (end exclusive)."""

    start_time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    """Start, `HH:MM` (inclusive)."""
    end_time: str = Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")
    """End, `HH:MM` (exclusive; `24:00` allowed)."""

    @model_validator(mode="after")
    def _start_before_end(self) -> TimeRange:
        # Zero-padded HH:MM compares correctly as text.
        if self.start_time >= self.end_time:
            raise ValueError(f"{self.start_time} to {self.end_time} is empty: the start must be "
                             "before the end (split a range across midnight in two)")
        return self


class TimeInterval(_Strict):
    """A named, time-zone aware set of opening times (business hours)."""

    name: str
    """Its name; unique among its kind."""
    time_zone: str = "UTC"
    """The IANA time zone the times are in."""
    weekdays: list[str] = []  # "monday:friday", "saturday"
    """Days of the week or ranges, e.g. `monday:friday`."""
    times: list[TimeRange] = []
    """Times of day."""
    days_of_month: list[str] = []  # "1:7", "-1"
    """Days of the month or ranges; negative counts from the end."""
    months: list[str] = []  # "january:march", "12"
    """Months or ranges, by name or number."""

    @model_validator(mode="after")
    def _parses(self) -> TimeInterval:
        parse_time_interval(self)  # the zone exists, the ranges read and run forwards
        return self


@dataclass(frozen=True)
class _Spec:
    """One parsed entry; ``times`` in minutes of the day, ``weekdays`` 0 = Sunday."""

    zone: ZoneInfo
    times: tuple[Range, ...]
    weekdays: tuple[Range, ...]
    days_of_month: tuple[Range, ...]
    months: tuple[Range, ...]

    def contains(self, t: float) -> bool:
        local = datetime.fromtimestamp(t, self.zone)
        minute = local.hour * 60 + local.minute
        if self.times and not any(a <= minute < b for a, b in self.times):
            return False
        return self.day_matches(local.date())

    def day_matches(self, day: date) -> bool:
        if self.months and not any(a <= day.month <= b for a, b in self.months):
            return False
        weekday = (day.weekday() + 1) % 7
        if self.weekdays and not any(a <= weekday <= b for a, b in self.weekdays):
            return False
        return not self.days_of_month or any(
            _day_in(day, a, b) for a, b in self.days_of_month)

    def boundaries(self, day: date) -> list[float]:
        """Instants on ``day`` where ``contains`` may change: candidates for an opening."""
        minutes = {0}
        if self.day_matches(day):
            for a, b in self.times:
                minutes.update((a, b))
        found: set[float] = set()
        for minute in minutes:
            if minute >= 1440:
                continue  # the next day's midnight, which that day yields
            wall = datetime.combine(day, time(minute // 60, minute % 60))
            for fold in (0, 1):  # both readings of a time the clocks show twice
                found.add(wall.replace(tzinfo=self.zone, fold=fold).timestamp())
        found.update(_transitions(self.zone, day))
        return sorted(found)


class TimeIntervals:
    """The configured time intervals by name; answers "inside?" and "when next allowed?"."""

    def __init__(self, configs: Iterable[TimeInterval] = ()) -> None:
        self._by_name: dict[str, list[_Spec]] = {}
        for config in configs:
            self._by_name.setdefault(config.name, []).append(parse_time_interval(config))

    def names(self) -> set[str]:
        """The names defined."""
        return set(self._by_name)

    def contains(self, name: str, t: float) -> bool:
        """Whether the instant ``t`` (epoch seconds) lies in the named interval."""
        try:
            specs = self._by_name[name]
        except KeyError:
            raise KeyError(f"no time interval named {name!r}") from None
        return any(spec.contains(t) for spec in specs)

    def allows(self, active: Sequence[str], mute: Sequence[str], t: float) -> bool:
        """Whether a route with these active and mute intervals may notify at ``t``.

        Names that are not defined are ignored (a reload may have removed one while an
        alert group still refers to it).
        """
        active = [n for n in active if n in self._by_name]
        if active and not any(self.contains(n, t) for n in active):
            return False
        return not any(self.contains(n, t) for n in mute if n in self._by_name)

    def next_opening(self, names: Sequence[str], t: float) -> float:
        """The first instant at or after ``t`` inside any of ``names`` (``t`` if inside).

        ``math.inf`` when none opens within five years.
        """
        return self.next_allowed(names, (), t)

    def next_allowed(self, active: Sequence[str], mute: Sequence[str], t: float) -> float:
        """The first instant at or after ``t`` at which ``allows`` holds; ``math.inf`` if none
        within five years."""
        if self.allows(active, mute, t):
            return t
        specs = [spec for name in (*active, *mute) for spec in self._by_name.get(name, ())]
        # Whether a time is allowed changes only where some interval's wall clock crosses
        # one of its boundaries, so only those instants need checking, in order. Walking
        # one UTC day at a time keeps candidates of different time zones in order.
        days_seen: dict[tuple[int, date], list[float]] = {}
        start = t
        for _ in range(_HORIZON_DAYS):
            end = start + _DAY
            candidates: set[float] = set()
            for index, spec in enumerate(specs):
                first = datetime.fromtimestamp(start, spec.zone).date() - timedelta(days=1)
                last = datetime.fromtimestamp(end, spec.zone).date() + timedelta(days=1)
                day = first
                while day <= last:
                    key = (index, day)
                    if key not in days_seen:
                        days_seen[key] = spec.boundaries(day)
                    candidates.update(c for c in days_seen[key] if start <= c < end)
                    day += timedelta(days=1)
            for candidate in sorted(candidates):
                if candidate >= t and self.allows(active, mute, candidate):
                    return candidate
            start = end
        return math.inf


def parse_time_interval(config: TimeInterval) -> _Spec:
    """Check and compile one configured interval; ValueError says what is wrong."""
    try:
        zone = ZoneInfo(config.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {config.time_zone!r}; use an IANA name such "
                         "as Europe/London or UTC") from None
    times = []
    for item in config.times:
        # TimeRange has checked that the start is before the end.
        times.append((_minutes(item.start_time), _minutes(item.end_time)))
    return _Spec(
        zone=zone,
        times=tuple(times),
        weekdays=tuple(_weekday_range(text) for text in config.weekdays),
        days_of_month=tuple(_day_range(text) for text in config.days_of_month),
        months=tuple(_month_range(text) for text in config.months),
    )


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _split(text: str) -> tuple[str, str]:
    parts = text.strip().lower().split(":")
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"{text!r} is not a value or a start:end range")


def _weekday_range(text: str) -> Range:
    begin, end = (_named(part, _WEEKDAYS, "weekday", numbers=False) for part in _split(text))
    if begin > end:
        raise ValueError(f"weekdays: {text!r} runs backwards; weeks start on sunday, so "
                         "write e.g. saturday and sunday as two entries")
    return begin, end


def _month_range(text: str) -> Range:
    begin, end = (_named(part, _MONTHS, "month", numbers=True) + 1 for part in _split(text))
    if begin > end:
        raise ValueError(f"months: {text!r} runs backwards; write a range across the new "
                         "year as two entries")
    return begin, end


def _named(part: str, names: tuple[str, ...], what: str, *, numbers: bool) -> int:
    if part in names:
        return names.index(part)
    if numbers and part.isdigit() and 1 <= int(part) <= len(names):
        return int(part) - 1
    raise ValueError(f"{part!r} is not a {what}; use one of {', '.join(names)}")


def _day_range(text: str) -> Range:
    try:
        begin, end = (int(part) for part in _split(text))
    except ValueError:
        raise ValueError(f"days_of_month: {text!r} is not a day (1 to 31, or -1 for the last "
                         "day) or a start:end range") from None
    for day in (begin, end):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(f"days_of_month: {day} is not a day of the month (1 to 31, or "
                             "-31 to -1 counting from the end)")
    if begin < 0 < end:
        raise ValueError(f"days_of_month: {text!r} starts from the month's end but ends "
                         "from its start; make both negative or both positive")
    # Like Alertmanager, judge negative days on a 28-day month: only always-empty ranges fail.
    if (28 + begin if begin < 0 else begin) > (28 + end if end < 0 else end):
        raise ValueError(f"days_of_month: {text!r} ends before it starts")
    return begin, end


def _day_in(day: date, begin: int, end: int) -> bool:
    length = _days_in_month(day)
    first = length + begin + 1 if begin < 0 else begin
    last = length + end + 1 if end < 0 else end
    if first > length:
        return False  # e.g. the 31st in a 30-day month
    return max(first, 1) <= day.day <= min(last, length)


def _days_in_month(day: date) -> int:
    following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


def _transitions(zone: ZoneInfo, day: date) -> list[float]:
    """The instants during ``day`` at which the zone's UTC offset changes (DST)."""
    lo = datetime.combine(day, time(0), tzinfo=zone).timestamp() - 3 * 3600
    hi = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).timestamp() + 3 * 3600
    before, after = _offset(zone, lo), _offset(zone, hi)
    if before == after:
        return []
    # One change a day at most, in every zone's history that matters here: bisect to it.
    low, high = int(lo), int(hi)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, middle) == before:
            low = middle
        else:
            high = middle
    return [float(high)]


def _offset(zone: ZoneInfo, t: float) -> timedelta | None:
    return datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
