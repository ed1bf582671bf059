"""Functions over a range vector (``rate(x[5m])``, ``max_over_time(x[1h])``), series by series.

Each takes a series' points inside the window (stale markers already dropped, at least one
point) and returns the output value, or None to drop the series, exactly as Prometheus 2.x.
Loops over points run in C (``sum``, ``map``, ``compress``) wherever the semantics allow,
because a rule may apply these to thousands of series every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, islice
from operator import gt, ne
from typing import TypeAlias

from piggywatch.rules.promql import floats
from piggywatch.rules.promql.errors import EvaluationError


@dataclass(frozen=True, slots=True)
class RangeWindow:
    """Where a range selector looked: ``[start, end]``, its length, the evaluation time, and
    the function's scalar arguments (``quantile_over_time``'s q, ``predict_linear``'s seconds,
    ``holt_winters``'s smoothing and trend factors).
    """

    start: float
    end: float
    length: float
    at: float
    param: float = math.nan
    param2: float = math.nan


RangeFunction: TypeAlias = Callable[[Sequence[float], Sequence[float], RangeWindow], float | None]


def _extrapolated_rate(
    ts: Sequence[float], vs: Sequence[float], w: RangeWindow, counter: bool, per_second: bool
) -> float | None:
    n = len(vs)
    if n < 2:
        return None
    first = vs[0]
    result = vs[-1] - first
    if counter and not _never_drops(vs):
        # A drop means the counter restarted from zero: add back what it had reached.
        for before_reset in compress(vs, map(gt, vs, islice(vs, 1, None))):
            result += before_reset
    to_start = ts[0] - w.start
    to_end = w.end - ts[-1]
    sampled = ts[-1] - ts[0]
    average_step = sampled / (n - 1)
    if counter and result > 0 and first >= 0:
        # Counters cannot go below zero, so do not extrapolate past where this one was zero.
        to_zero = sampled * (first / result)
        if to_zero < to_start:
            to_start = to_zero
    # Extrapolate to a range boundary only if a sample there was due; otherwise assume the
    # series started or ended half a step beyond the samples seen.
    threshold = average_step * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average_step / 2
    interval += to_end if to_end < threshold else average_step / 2
    factor = interval / sampled  # not zero: a series has one point per timestamp
    if per_second:
        factor /= w.length
    return result * factor


def _never_drops(vs: Sequence[float]) -> bool:
    """True only if no value is below its predecessor (False may be wrong, never True).

    ``sorted`` compares floats natively, ten times faster than a Python-level pairwise
    scan; it proves nothing once a NaN is in play, hence the NaN check first.
    """
    total = sum(vs)
    return total == total and sorted(vs) == vs


def rate(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Per-second increase of a counter, reset-corrected and extrapolated."""
    return _extrapolated_rate(ts, vs, w, True, True)


def increase(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Increase of a counter over the range, reset-corrected and extrapolated."""
    return _extrapolated_rate(ts, vs, w, True, False)


def delta(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Difference of a gauge between the range's ends, extrapolated."""
    return _extrapolated_rate(ts, vs, w, False, False)


def irate(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Per-second rate between the last two samples."""
    if len(vs) < 2:
        return None
    last, previous = vs[-1], vs[-2]
    result = last if last < previous else last - previous
    step = ts[-1] - ts[-2]
    if step == 0:
        return None
    return result / step


def avg_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Mean of the samples in the range."""
    return floats.kahan_mean(vs)


def sum_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Sum of the samples in the range."""
    return floats.kahan_sum(vs)


def count_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Number of samples in the range."""
    return float(len(vs))


def min_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Smallest sample in the range (NaN only if every sample is NaN)."""
    return floats.smallest(vs)


def max_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Largest sample in the range (NaN only if every sample is NaN)."""
    return floats.largest(vs)


def quantile_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """The ``w.param``-quantile of the samples in the range."""
    return floats.quantile(w.param, vs)


def last_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """The newest sample in the range."""
    return vs[-1]


def changes(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """How many times the value changed (NaN to NaN is no change)."""
    total = sum(vs)
    if total == total:
        return float(sum(map(ne, vs, islice(vs, 1, None))))
    count = 0
    previous = vs[0]
    for current in islice(vs, 1, None):
        if current != previous and not (current != current and previous != previous):
            count += 1
        previous = current
    return float(count)


def resets(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """How many times the value dropped (counter resets)."""
    if _never_drops(vs):
        return 0.0
    return float(sum(map(gt, vs, islice(vs, 1, None))))


def _linear_regression(
    ts: Sequence[float], vs: Sequence[float], intercept_time: float
) -> tuple[float, float]:
    # Least squares with compensated sums, x measured from intercept_time (Prometheus's
    # linearRegression, including its special case for a constant series).
    first = vs[0]
    # vs.count(first) matches by identity or ==, which for a non-NaN first is the same as
    # comparing every value with == (and NaN never equals anything).
    if first == first and vs.count(first) == len(vs):
        if math.isinf(first):
            return math.nan, math.nan
        return 0.0, first
    # The sums over x alone depend only on the timestamps, which the series of one source
    # share: computed once per timestamps and intercept time (_x_sums), not once a series.
    xs, sum_x, sum_x2 = _x_sums(ts, intercept_time)
    n = float(len(xs))
    sum_y = c_y = sum_xy = c_xy = 0.0
    absolute = abs
    # Neumaier's compensated sums, written out inline: this loop runs for every point of
    # every series a forecast rule reads, and a function call per step triples its cost
    # (abs() is the exception: on 3.11 it is cheaper than a conditional expression).
    for x, v in zip(xs, vs, strict=True):
        for_sum = sum_y + v
        if absolute(sum_y) >= absolute(v):
            c_y += (sum_y - for_sum) + v
        else:
            c_y += (v - for_sum) + sum_y
        sum_y = for_sum
        xv = x * v
        for_sum = sum_xy + xv
        if absolute(sum_xy) >= absolute(xv):
            c_xy += (sum_xy - for_sum) + xv
        else:
            c_xy += (xv - for_sum) + sum_xy
        sum_xy = for_sum
    sum_y += c_y
    sum_xy += c_xy
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = floats.div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


# (intercept time, number of points, first and last timestamp) -> (the timestamps, what
# _x_sums returns for them). Entries are checked against the whole timestamp list before use,
# so a hit returns exactly what the computation would. Small: a cycle's forecast rules mostly
# read series of a few timelines at one evaluation time.
_XSumsKey: TypeAlias = tuple[float, int, float, float]
_XSums: TypeAlias = tuple[list[float], float, float]
_x_sums_cache: dict[_XSumsKey, tuple[list[float], _XSums]] = {}
_X_SUMS_CACHE_SIZE = 64
X_SUMS_CACHE_ENABLED = True
"""Off only in tests that check the cache changes no result."""


def _x_sums(ts: Sequence[float], intercept_time: float) -> _XSums:
    """x = t - intercept_time for each timestamp, and the compensated sums of x and x²."""
    if not ts:
        return [], 0.0, 0.0
    key = (intercept_time, len(ts), ts[0], ts[-1])
    hit = _x_sums_cache.get(key)
    stamps = ts if type(ts) is list else list(ts)
    if hit is not None and hit[0] == stamps and X_SUMS_CACHE_ENABLED:
        return hit[1]
    xs = [t - intercept_time for t in stamps]
    sum_x = c_x = sum_x2 = c_x2 = 0.0
    for x in xs:
        for_sum = sum_x + x
        if (sum_x if sum_x >= 0 else -sum_x) >= (x if x >= 0 else -x):
            c_x += (sum_x - for_sum) + x
        else:
            c_x += (x - for_sum) + sum_x
        sum_x = for_sum
        xx = x * x
        for_sum = sum_x2 + xx
        if sum_x2 >= xx:  # both are never negative
            c_x2 += (sum_x2 - for_sum) + xx
        else:
            c_x2 += (xx - for_sum) + sum_x2
        sum_x2 = for_sum
    found = (xs, sum_x + c_x, sum_x2 + c_x2)
    if X_SUMS_CACHE_ENABLED:
        if len(_x_sums_cache) >= _X_SUMS_CACHE_SIZE:
            _x_sums_cache.clear()
        _x_sums_cache[key] = (list(stamps), found)
    return found


def deriv(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Per-second slope of a gauge by simple linear regression."""
    if len(vs) < 2:
        return None
    slope, _ = _linear_regression(ts, vs, ts[0])
    return slope


def predict_linear(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """The regression line's value ``w.param`` seconds after the evaluation time."""
    if len(vs) < 2:
        return None
    slope, intercept = _linear_regression(ts, vs, w.at)
    return intercept + slope * w.param


def idelta(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Difference between the last two samples (no counter-reset handling)."""
    if len(vs) < 2:
        return None
    return vs[-1] - vs[-2]


def _stdvar(vs: Sequence[float]) -> float:
    # Welford's online variance with Kahan-Neumaier compensation, step for step as Prometheus.
    count = mean = c_mean = aux = c_aux = 0.0
    for v in vs:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = floats.kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = floats.kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def stdvar_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Population variance of the samples in the range."""
    return _stdvar(vs)


def stddev_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Population standard deviation of the samples in the range."""
    return floats.sqrt(_stdvar(vs))


def present_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """1 for every series with a sample in the range."""
    return 1.0


def mad_over_time(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Median absolute deviation from the median of the samples in the range."""
    median = floats.quantile(0.5, vs)
    return floats.quantile(0.5, [abs(v - median) for v in vs])


def holt_winters(ts: Sequence[float], vs: Sequence[float], w: RangeWindow) -> float | None:
    """Double exponential smoothing with smoothing factor ``w.param`` and trend ``w.param2``.

    Prometheus checks the factors only when a series reaches the function, so an empty
    selection evaluates without error whatever they are.
    """
    sf, tf = w.param, w.param2
    if not 0 < sf < 1:
        raise EvaluationError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:f}")
    if not 0 < tf < 1:
        raise EvaluationError(f"invalid trend factor. Expected: 0 < tf < 1, got: {tf:f}")
    if len(vs) < 2:
        return None
    s0 = 0.0
    s1 = vs[0]
    trend = vs[1] - vs[0]
    for i in range(1, len(vs)):
        x = sf * vs[i]
        if i > 1:  # the first step keeps the initial trend
            trend = tf * (s1 - s0) + (1 - tf) * trend
        y = (1 - sf) * (s1 + trend)
        s0, s1 = s1, x + y
    return s1


RANGE_FUNCTIONS: dict[str, RangeFunction] = {
    "rate": rate,
    "increase": increase,
    "delta": delta,
    "irate": irate,
    "avg_over_time": avg_over_time,
    "sum_over_time": sum_over_time,
    "count_over_time": count_over_time,
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
    "quantile_over_time": quantile_over_time,
    "last_over_time": last_over_time,
    "changes": changes,
    "resets": resets,
    "deriv": deriv,
    "predict_linear": predict_linear,
    "idelta": idelta,
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "present_over_time": present_over_time,
    "mad_over_time": mad_over_time,
    "holt_winters": holt_winters,
}
"""Range-vector functions by name, each applied series by series (the registry maps them)."""
