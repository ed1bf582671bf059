"""The date functions (``hour``, ``day_of_week``, ``days_in_month``, ...): UTC, as Prometheus.

Prometheus takes ``time.Unix(int64(v), 0).UTC()``: the value is truncated toward zero, and a
value no int64 holds (NaN, ±Inf, beyond ±9.2e18) becomes the smallest int64, which Go's
calendar arithmetic then wraps (``year(vector(NaN))`` is 292277026596). Go's own algorithm is
ported here, in 64-bit unsigned arithmetic, so every input gives Prometheus's answer;
``datetime`` would refuse years past 9999.
"""

from __future__ import annotations

from collections.abc import Callable

_U64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_SECONDS_PER_DAY = 86_400
_SECONDS_PER_WEEK = 7 * _SECONDS_PER_DAY
_DAYS_PER_400_YEARS = 365 * 400 + 97
_DAYS_PER_100_YEARS = 365 * 100 + 24
_DAYS_PER_4_YEARS = 365 * 4 + 1
_ABSOLUTE_ZERO_YEAR = -292277022399
_UNIX_TO_INTERNAL = (1969 * 365 + 1969 // 4 - 1969 // 100 + 1969 // 400) * _SECONDS_PER_DAY
_ABSOLUTE_TO_INTERNAL = (_ABSOLUTE_ZERO_YEAR - 1) * 3652425 * _SECONDS_PER_DAY // 10000  # exact
_UNIX_TO_ABSOLUTE = _UNIX_TO_INTERNAL - _ABSOLUTE_TO_INTERNAL
# Days before the start of each month (January = index 0) in a non-leap year.
_DAYS_BEFORE = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365)
_MONDAY = 1


def _int64(v: float) -> int:
    """Go's ``int64(v)`` on amd64: truncation, and the smallest int64 when out of range."""
    if v != v or not -(2.0**63) <= v < 2.0**63:
        return _INT64_MIN
    return int(v)


def _wrap64(n: int) -> int:
    n &= _U64
    return n - (1 << 64) if n >> 63 else n


def _absolute(v: float) -> int:
    """Go's ``Time.abs()`` of ``time.Unix(int64(v), 0).UTC()``: seconds from Go's year zero."""
    return _wrap64(_int64(v) + _UNIX_TO_ABSOLUTE) & _U64


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _year_and_yday(absolute: int) -> tuple[int, int]:
    # Go's absDate, cycle by cycle (400, 100, 4 and 1 years); yday counts from 0.
    d = absolute // _SECONDS_PER_DAY
    n = d // _DAYS_PER_400_YEARS
    y = 400 * n
    d -= _DAYS_PER_400_YEARS * n
    n = d // _DAYS_PER_100_YEARS
    n -= n >> 2
    y += 100 * n
    d -= _DAYS_PER_100_YEARS * n
    n = d // _DAYS_PER_4_YEARS
    y += 4 * n
    d -= _DAYS_PER_4_YEARS * n
    n = d // 365
    n -= n >> 2
    y += n
    d -= 365 * n
    return _wrap64(y + _ABSOLUTE_ZERO_YEAR), d


def _month_and_day(year: int, yday: int) -> tuple[int, int]:
    day = yday
    if _is_leap(year):
        if day > 31 + 29 - 1:
            day -= 1  # after the leap day: count as if it were not there
        elif day == 31 + 29 - 1:
            return 2, 29
    month = day // 31  # a guess, at most one month too early
    end = _DAYS_BEFORE[month + 1]
    if day >= end:
        month += 1
        begin = end
    else:
        begin = _DAYS_BEFORE[month]
    return month + 1, day - begin + 1


def minute(v: float) -> float:
    """The minute of the hour (0-59)."""
    return float(_absolute(v) % 3600 // 60)


def hour(v: float) -> float:
    """The hour of the day (0-23)."""
    return float(_absolute(v) % _SECONDS_PER_DAY // 3600)


def day_of_week(v: float) -> float:
    """The day of the week, 0 for Sunday to 6 for Saturday."""
    seconds = (_absolute(v) + _MONDAY * _SECONDS_PER_DAY) % _SECONDS_PER_WEEK
    return float(seconds // _SECONDS_PER_DAY)


def day_of_month(v: float) -> float:
    """The day of the month (1-31)."""
    year, yday = _year_and_yday(_absolute(v))
    return float(_month_and_day(year, yday)[1])


def day_of_year(v: float) -> float:
    """The day of the year (1-365, 366 in leap years)."""
    return float(_year_and_yday(_absolute(v))[1] + 1)


def days_in_month(v: float) -> float:
    """How many days the month has (28-31)."""
    year, yday = _year_and_yday(_absolute(v))
    month, _ = _month_and_day(year, yday)
    if month == 2:
        return 29.0 if _is_leap(year) else 28.0
    return float(_DAYS_BEFORE[month] - _DAYS_BEFORE[month - 1])


def month(v: float) -> float:
    """The month of the year (1-12)."""
    year, yday = _year_and_yday(_absolute(v))
    return float(_month_and_day(year, yday)[0])


def year(v: float) -> float:
    """The year."""
    return float(_year_and_yday(_absolute(v))[0])


DATE_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "minute": minute,
    "hour": hour,
    "day_of_week": day_of_week,
    "day_of_month": day_of_month,
    "day_of_year": day_of_year,
    "days_in_month": days_in_month,
    "month": month,
    "year": year,
}
"""By name; each defaults to ``vector(time())`` when called without an argument."""
