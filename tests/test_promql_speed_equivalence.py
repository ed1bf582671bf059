"""The evaluator's fast paths give bit-for-bit what the plain loops they replaced gave.

Covers the x-sums cache of the linear regression (predict_linear, deriv), the unchecked first
pass of avg_over_time's mean, the store's inlined select loop and the evaluator's inlined
range selection, over random series with stale markers, counter resets, gaps and odd values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piggywatch.rules.promql import Evaluator, floats, range_functions
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from piggywatch.store.series import STALE_NAN, LabelMatcher, MatchOp, Series


def bits(value: float | None) -> int | None:
    """The exact bits of a float: tells -0.0 from 0.0 and one NaN from another."""
    return None if value is None else struct.unpack("<Q", struct.pack("<d", value))[0]


# -- the loops as they were, for reference ----------------------------------------------------


def ref_linear_regression(
    ts: Sequence[float], vs: Sequence[float], intercept_time: float
) -> tuple[float, float]:
    first = vs[0]
    if all(v == first for v in vs):
        if math.isinf(first):
            return math.nan, math.nan
        return 0.0, first
    n = 0.0
    sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    for t, v in zip(ts, vs, strict=True):
        n += 1.0
        x = t - intercept_time
        for_sum = sum_x + x
        if (sum_x if sum_x >= 0 else -sum_x) >= (x if x >= 0 else -x):
            c_x += (sum_x - for_sum) + x
        else:
            c_x += (x - for_sum) + sum_x
        sum_x = for_sum
        for_sum = sum_y + v
        if (sum_y if sum_y >= 0 else -sum_y) >= (v if v >= 0 else -v):
            c_y += (sum_y - for_sum) + v
        else:
            c_y += (v - for_sum) + sum_y
        sum_y = for_sum
        xv = x * v
        for_sum = sum_xy + xv
        if (sum_xy if sum_xy >= 0 else -sum_xy) >= (xv if xv >= 0 else -xv):
            c_xy += (sum_xy - for_sum) + xv
        else:
            c_xy += (xv - for_sum) + sum_xy
        sum_xy = for_sum
        xx = x * x
        for_sum = sum_x2 + xx
        if sum_x2 >= xx:
            c_x2 += (sum_x2 - for_sum) + xx
        else:
            c_x2 += (xx - for_sum) + sum_x2
        sum_x2 = for_sum
    sum_x += c_x
    sum_y += c_y
    sum_xy += c_xy
    sum_x2 += c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = floats.div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def ref_kahan_mean(values: Sequence[float]) -> float:
    mean = c = count = 0.0
    for v in values:
        count += 1.0
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and v == v:
                continue
        inc = v / count - mean / count
        t = mean + inc
        if abs(mean) >= abs(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean if math.isinf(mean) else mean + c


# -- the functions on their own -----------------------------------------------------------------

_odd = st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e308, -1e308, 5e-324, 1e-300])
_value = st.one_of(
    st.floats(0, 1), st.floats(-1e6, 1e6), st.integers(-50, 50).map(float),
    st.floats(allow_nan=True, allow_infinity=True), _odd,
)  # fmt: skip


@st.composite
def _points(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    n = draw(st.integers(2, 80))
    start = draw(st.sampled_from([0.0, 1_800_000_000.0, 1_800_000_000.123, -5.0]))
    steps = draw(st.lists(st.sampled_from([0.001, 1.0, 14.999, 15.0, 15.0, 60.0]),
                          min_size=n - 1, max_size=n - 1))  # fmt: skip
    ts = [start]
    for step in steps:
        ts.append(ts[-1] + step)
    if draw(st.booleans()):
        vs = [draw(_value)] * n  # constant series take a shortcut
    else:
        vs = draw(st.lists(_value, min_size=n, max_size=n))
    return ts, vs


@pytest.fixture(params=[True, False], ids=["cache", "no-cache"])
def x_sums_cache(request: pytest.FixtureRequest) -> Iterator[bool]:
    saved = range_functions.X_SUMS_CACHE_ENABLED
    range_functions.X_SUMS_CACHE_ENABLED = request.param
    range_functions._x_sums_cache.clear()
    try:
        yield request.param
    finally:
        range_functions.X_SUMS_CACHE_ENABLED = saved
        range_functions._x_sums_cache.clear()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(points=_points(), others=st.lists(_points(), max_size=3),
       at=st.sampled_from([0.0, -0.0, 1_800_000_000.0, 1_800_001_000.5, 7.25]))  # fmt: skip
def test_linear_regression_is_the_plain_loop(
    x_sums_cache: bool, points: tuple[list[float], list[float]],
    others: list[tuple[list[float], list[float]]], at: float,
) -> None:
    ts, vs = points
    # Same timestamps with other values (cache hits), other timestamps in between (misses).
    runs = [(ts, vs), *others, (list(ts), vs[::-1]), (ts, vs)]
    for run_ts, run_vs in runs:
        want = ref_linear_regression(run_ts, run_vs, at)
        got = range_functions._linear_regression(run_ts, run_vs, at)
        assert [bits(v) for v in got] == [bits(v) for v in want], (run_ts, run_vs, at)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(_value, min_size=1, max_size=60))
def test_kahan_mean_is_the_plain_loop(values: list[float]) -> None:
    assert bits(floats.kahan_mean(values)) == bits(ref_kahan_mean(values))


# -- whole queries against the store --------------------------------------------------------------

_SERIES = [labels_of(job="a", i=str(i)) for i in range(4)]

# One publish: (seconds since the previous one, which series it holds, counter step kinds,
# gauge values).
_publish = st.tuples(
    st.sampled_from([1, 7, 15, 15, 15, 15, 30, 200]),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.lists(st.sampled_from(["up", "up", "same", "reset"]), min_size=4, max_size=4),
    st.lists(st.one_of(st.floats(-100, 100), st.floats(0, 1), _odd), min_size=4, max_size=4),
)  # fmt: skip

_EXPRESSIONS = [
    "predict_linear(g[{r}], 600)",
    "predict_linear(g[{r}] offset 1m, 3600) > 0",
    "deriv(g[{r}])",
    "rate(c_total[{r}])",
    "increase(c_total[{r}])",
    "delta(g[{r}])",
    "sum by (job) (rate(c_total[{r}]))",
    "rate(c_total[{r}]) / rate(c_total[{r}] offset 30s)",
    "avg_over_time(g[{r}])",
    "max_over_time(g[{r}])",
    "resets(c_total[{r}])",
    "last_over_time(g[{r}])",
    "g",
    "g offset 1m",
    "time() - g",
    "max by (job) (g)",
    "absent_over_time(g[{r}])",
]


class WholeSeries:
    """The store's series whole, stale markers and all, for the evaluator to cut itself."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def select(self, matchers: Sequence[LabelMatcher], start: float,
               end: float) -> Iterator[Series]:  # fmt: skip
        for name in ("g", "c_total"):
            # In the store's order: a sum adds in the order it is given.
            for labels in list(self.store._by_name.get(name, {})):
                full = (("__name__", name), *labels)
                if not all(m.matches(dict(full).get(m.name, "")) for m in matchers):
                    continue
                points = self.store.history(name, labels)
                if points:
                    yield Series(full, [p.timestamp for p in points], [p.value for p in points])


def _answer(evaluator: Evaluator, expr: str, at: float) -> object:
    value = evaluator.instant(expr, at)
    if isinstance(value, list):
        return sorted((s.labels, bits(s.value)) for s in value)
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(publishes=st.lists(_publish, min_size=2, max_size=60),
       when=st.lists(st.integers(0, 120), min_size=1, max_size=4),
       window=st.sampled_from(["30s", "1m", "2m", "5m", "10m"]))  # fmt: skip
def test_queries_give_what_the_plain_paths_give(
    publishes: list[tuple[int, list[bool], list[str], list[float]]], when: list[int], window: str
) -> None:
    store = MemoryStore(retention=600)
    store.register([MetricSpec("g", MetricKind.GAUGE, "g"),
                    MetricSpec("c_total", MetricKind.COUNTER, "c")])  # fmt: skip
    t = 1_800_000_000.0
    counters = [0.0] * len(_SERIES)
    for gap, present, kinds, gauges in publishes:
        t += gap
        batch = []
        for s, labels in enumerate(_SERIES):
            if kinds[s] == "reset":
                counters[s] = float(s)
            elif kinds[s] == "up":
                counters[s] += 3.5 + s
            if present[s]:  # a series left out gets a stale marker
                batch.append(Sample("g", labels, gauges[s], t))
                batch.append(Sample("c_total", labels, counters[s], t))
        store.publish("src", batch, t)
    end = t
    fast = Evaluator(store)
    plain = Evaluator(WholeSeries(store))
    saved = range_functions.X_SUMS_CACHE_ENABLED
    try:
        for percent in when:
            at = end - 700 + 800 * percent / 100
            for template in _EXPRESSIONS:
                expr = template.format(r=window)
                range_functions.X_SUMS_CACHE_ENABLED = True
                cached = _answer(fast, expr, at)
                again = _answer(fast, expr, at)  # the cache is warm now
                range_functions.X_SUMS_CACHE_ENABLED = False
                uncached = _answer(fast, expr, at)
                whole = _answer(plain, expr, at)
                assert cached == again == uncached == whole, (expr, at)
    finally:
        range_functions.X_SUMS_CACHE_ENABLED = saved
        range_functions._x_sums_cache.clear()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(publishes=st.lists(_publish, min_size=1, max_size=40),
       bounds=st.tuples(st.integers(-100, 1000), st.integers(0, 1000)))  # fmt: skip
def test_select_gives_the_stored_points_in_range(
    publishes: list[tuple[int, list[bool], list[str], list[float]]], bounds: tuple[int, int]
) -> None:
    store = MemoryStore(retention=300)
    store.register([MetricSpec("g", MetricKind.GAUGE, "g")])
    t = 1_800_000_000.0
    for gap, present, _, gauges in publishes:
        t += gap
        # Two sources: series on two timelines, and series published off their timeline.
        for source, half in (("one", _SERIES[:2]), ("two", _SERIES[2:])):
            offset = 0.0 if source == "one" or gap % 2 else 0.5
            batch = [Sample("g", labels, gauges[s], t + offset * (s % 2))
                     for s, labels in enumerate(half) if present[s]]  # fmt: skip
            store.publish(source, batch, t)
    start = t - 1000 + bounds[0]
    stop = start + bounds[1]
    matchers = [LabelMatcher.of("__name__", MatchOp.EQUAL, "g")]
    got = {s.labels: (s.timestamps, [bits(v) for v in s.values])
           for s in store.select(matchers, start, stop)}  # fmt: skip
    want = {}
    for labels in _SERIES:
        points = [p for p in store.history("g", labels) if start <= p.timestamp <= stop]
        if points:
            want[(("__name__", "g"), *labels)] = (
                [p.timestamp for p in points], [bits(p.value) for p in points])
    assert got == want
    assert STALE_NAN != STALE_NAN  # markers are compared by their bits above
