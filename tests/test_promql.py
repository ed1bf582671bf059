"""The PromQL subset: what it accepts, what it computes (as Prometheus 2.x), and promtool's word.

Expected numbers in the example tests were checked with ``promtool test rules`` (2.42);
``test_agrees_with_promtool`` re-checks a batch on every run where promtool is installed.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piggywatch.rules.promql import (
    AGGREGATIONS,
    FUNCTIONS,
    SUPPORTED_AGGREGATIONS,
    SUPPORTED_FUNCTIONS,
    EvaluationError,
    Evaluator,
    ExpressionSyntaxError,
    Scalar,
    String,
    UnsupportedExpression,
    Vector,
    VectorSample,
    lookback_window,
    parse_expr,
)
from piggywatch.store.samples import Labels
from piggywatch.store.series import STALE_NAN, LabelMatcher, Series, is_stale

# -- a list of series as the source, written in promtool's input_series notation ------------


class ListSource:
    """The simplest SeriesSource: every series in a list, filtered by matchers and time."""

    def __init__(self, series: Iterable[Series]) -> None:
        self.series = list(series)

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        found = []
        for series in self.series:
            labels = dict(series.labels)
            if not all(m.matches(labels.get(m.name, "")) for m in matchers):
                continue
            points = [
                (t, v) for t, v in zip(series.timestamps, series.values, strict=True)
                if start <= t <= end
            ]  # fmt: skip
            if points:
                found.append(Series(series.labels, [t for t, _ in points], [v for _, v in points]))
        return found


_SELECTOR = re.compile(r"\s*([a-zA-Z_:][\w:]*)?\s*(?:\{(.*)\})?\s*")
_LABEL = re.compile(r'\s*([a-zA-Z_]\w*)\s*=\s*"([^"]*)"\s*,?')
_NUMBER = r"[-+]?(?:Inf|NaN|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_EXPANDING = re.compile(rf"({_NUMBER})(?:([-+])(\d+(?:\.\d*)?))?x(\d+)")


def labels_of_text(text: str) -> Labels:
    """``foo{a="1"}`` as sorted label pairs including ``__name__``."""
    match = _SELECTOR.fullmatch(text)
    assert match is not None, text
    pairs = dict(_LABEL.findall(match.group(2) or ""))
    if match.group(1):
        pairs["__name__"] = match.group(1)
    return tuple(sorted(pairs.items()))


def expand(notation: str) -> list[float | None]:
    """promtool's values: ``1 2 _ stale 3``, ``0+10x5`` (6 values), ``7x3``, ``_x2``."""
    values: list[float | None] = []
    for token in notation.split():
        if token == "_":
            values.append(None)
        elif token == "stale":
            values.append(STALE_NAN)
        elif token.startswith("_x"):
            values.extend([None] * int(token[2:]))
        elif (m := _EXPANDING.fullmatch(token)) is not None:
            start, sign, step, count = m.groups()
            delta = float(step or 0) * (-1 if sign == "-" else 1)
            values.extend(float(start) + i * delta for i in range(int(count) + 1))
        else:
            values.append(float(token))
    return values


def build(data: Sequence[tuple[str, str]], interval: float = 60.0) -> list[Series]:
    """Series from (selector text, values notation); point i is at ``i * interval``."""
    out = []
    for text, notation in data:
        points = [(i * interval, v) for i, v in enumerate(expand(notation)) if v is not None]
        out.append(Series(labels_of_text(text), [t for t, _ in points], [v for _, v in points]))
    return out


def evaluate(
    data: Sequence[tuple[str, str]], expr: str, at: float, interval: float = 60.0
) -> Vector | Scalar | String:
    return Evaluator(ListSource(build(data, interval))).instant(expr, at)


def render(labels: Labels) -> str:
    name = dict(labels).get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
    return f"{name}{{{rest}}}"


def as_dict(result: object) -> dict[str, float]:
    assert isinstance(result, list), result
    assert all(isinstance(s, VectorSample) for s in result)
    return {render(s.labels): s.value for s in result}


def vector(result: object) -> list[VectorSample]:
    assert isinstance(result, list), result
    return result


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- example-based: each construct, with values promtool 2.42 gives -------------------------

DATA = [
    ('foo{a="1",b="x"}', "1 2 3 4 5"),
    ('foo{a="2",b="y"}', "10 20 30 40 50"),
    ('bar{a="1",c="p"}', "2 2 2 2 2"),
    ('bar{a="2",c="q"}', "100 5 5 5 5"),
    ('info{a="1",b="zz",v="1.0"}', "1 1 1 1 1"),
    ('info{a="2",v="2.0"}', "1 1 1 1 1"),
    ("one", "7 7 7 7 7"),
    ('dup{a="1",b="x"}', "1 1 1 1 1"),
    ('st{a="1"}', "1 2 stale 4 stale"),
    ('r{a="1"}', "10 20 5 8 1"),
    ('neg{a="1"}', "-2.5 -1.5 0.5 1.5 2.5"),
    ('zero{a="1"}', "0 0 0 0 0"),
    ('c{a="1"}', "3 4 5 6 7"),
    ('c{a="2"}', "_ _ 100 101 102 103 104"),
    ('late{a="0"}', "_ _ _ 1 2 3"),
    ('g{a="1"}', "0.5 0.1 -0.2 3 7"),
    ('n{x="1"}', "NaN 1 2"),
    ('n{x="2"}', "5 NaN 3"),
    ('n{x="3"}', "4 4 4"),
    ('h_bucket{le="0.1"}', "0"),
    ('h_bucket{le="0.5"}', "5"),
    ('h_bucket{le="1"}', "8"),
    ('h_bucket{le="+Inf"}', "10"),
    ('hbad_bucket{le="0.1"}', "3"),
    ('hbad_bucket{le="0.5"}', "2"),
    ('hbad_bucket{le="+Inf"}', "10"),
    ('hneg_bucket{le="-1"}', "5"),
    ('hneg_bucket{le="+Inf"}', "10"),
    ('lr{src="abc-123",dst="old"}', "1"),
    ('counter{job="api"}', "5 6 7 1 2 3 4 5 6 7 8"),
    ('seq{job="api"}', "0+1x20"),
]

M = 60.0
CASES: list[tuple[str, float, dict[str, float]]] = [
    # selectors, lookback, staleness, offset
    ("foo", 0, {'foo{a="1", b="x"}': 1, 'foo{a="2", b="y"}': 10}),
    ('foo{b=~"x|z"}', 0, {'foo{a="1", b="x"}': 1}),
    ('foo{b!="x", a!~"1"}', 0, {'foo{a="2", b="y"}': 10}),
    ('{__name__=~"fo+", a="2"}', 4 * M, {'foo{a="2", b="y"}': 50}),
    ("foo offset 1m", 2 * M, {'foo{a="1", b="x"}': 2, 'foo{a="2", b="y"}': 20}),
    ("st", 2 * M, {}),
    ("st", 3 * M, {'st{a="1"}': 4}),
    ("st", 4 * M, {}),
    ("foo", 9 * M, {'foo{a="1", b="x"}': 5, 'foo{a="2", b="y"}': 50}),
    ("foo", 9 * M + 1, {}),
    # range functions
    ("count_over_time(seq[5m])", 10 * M, {'{job="api"}': 6}),
    ("count_over_time(st[5m])", 4 * M, {'{a="1"}': 3}),
    ("last_over_time(st[5m])", 2 * M, {'st{a="1"}': 2}),
    ("rate(counter[5m])", 10 * M, {'{job="api"}': 0.016666666666666666}),
    ("increase(counter[5m])", 4 * M, {'{job="api"}': 5}),
    ("increase(c[3m])", 4 * M, {'{a="1"}': 3, '{a="2"}': 3}),
    ("increase(c[2m])", 4 * M, {'{a="1"}': 2, '{a="2"}': 2}),
    ("increase(c[3m])", 6 * M, {'{a="1"}': 1.5, '{a="2"}': 3}),
    ("rate(c[3m])", 6 * M, {'{a="1"}': 0.008333333333333333, '{a="2"}': 0.016666666666666666}),
    ("increase(late[5m])", 5 * M, {'{a="0"}': 3}),
    ("rate(foo[2m] offset 1m)", 3 * M, {'{a="1", b="x"}': 1 / 60, '{a="2", b="y"}': 10 / 60}),
    ("delta(g[3m])", 4 * M, {'{a="1"}': 6.9}),
    ("irate(r[5m])", 4 * M, {'{a="1"}': 0.016666666666666666}),
    ("irate(r[5m])", 3 * M, {'{a="1"}': 0.05}),
    ("deriv(g[5m])", 4 * M, {'{a="1"}': 0.0265}),
    ("predict_linear(g[5m], 60)", 4 * M, {'{a="1"}': 6.85}),
    ("predict_linear(foo[2m] offset 1m, 60)", 3 * M, {'{a="1", b="x"}': 5, '{a="2", b="y"}': 50}),
    ("changes(n[5m])", 2 * M, {'{x="1"}': 2, '{x="2"}': 2, '{x="3"}': 0}),
    ("resets(r[5m])", 4 * M, {'{a="1"}': 2}),
    ("quantile_over_time(0.3, r[5m])", 4 * M, {'{a="1"}': 5.6}),
    ("quantile_over_time(2, r[5m])", 4 * M, {'{a="1"}': math.inf}),
    ("max_over_time(n[5m])", 2 * M, {'{x="1"}': 2, '{x="2"}': 5, '{x="3"}': 4}),
    ("min_over_time(n[5m])", 2 * M, {'{x="1"}': 1, '{x="2"}': 3, '{x="3"}': 4}),
    ("sum_over_time(foo[5m])", 4 * M, {'{a="1", b="x"}': 15, '{a="2", b="y"}': 150}),
    ("avg_over_time(foo[5m])", 4 * M, {'{a="1", b="x"}': 3, '{a="2", b="y"}': 30}),
    # aggregations
    ("sum by (a) (foo)", 0, {'{a="1"}': 1, '{a="2"}': 10}),
    ("sum without (b) (foo)", 0, {'{a="1"}': 1, '{a="2"}': 10}),
    ("count without (a) (foo)", 0, {'{b="x"}': 1, '{b="y"}': 1}),
    ("sum by (__name__) (foo)", 0, {"foo{}": 11}),
    ("avg(foo)", 0, {"{}": 5.5}),
    ("max(n)", 0, {"{}": 5}),
    ("min(n)", M, {"{}": 1}),
    ("quantile(0.5, n)", M, {"{}": 1}),
    ("quantile(0.5, foo)", 0, {"{}": 5.5}),
    ("quantile(-1, foo)", 0, {"{}": -math.inf}),
    ("topk(1, n)", 0, {'n{x="2"}': 5}),
    ("bottomk(2, n)", M, {'n{x="1"}': 1, 'n{x="3"}': 4}),
    ("topk(1.9, foo)", 0, {'foo{a="2", b="y"}': 10}),
    ("topk(0, foo)", 0, {}),
    ("topk by (a) (1, foo)", 0, {'foo{a="1", b="x"}': 1, 'foo{a="2", b="y"}': 10}),
    # arithmetic and comparisons with scalars
    ("foo + 1", 0, {'{a="1", b="x"}': 2, '{a="2", b="y"}': 11}),
    ("foo > 1", M, {'foo{a="1", b="x"}': 2, 'foo{a="2", b="y"}': 20}),
    ("foo > bool 2", M, {'{a="1", b="x"}': 0, '{a="2", b="y"}': 1}),
    ("1 < foo", 0, {'foo{a="2", b="y"}': 10}),
    ("-foo", 0, {'{a="1", b="x"}': -1, '{a="2", b="y"}': -10}),
    ("zero / zero", 0, {'{a="1"}': math.nan}),
    ("neg / zero", 0, {'{a="1"}': -math.inf}),
    ("neg % zero", 0, {'{a="1"}': math.nan}),
    ("neg ^ 0.5", 0, {'{a="1"}': math.nan}),
    ("foo ^ 1000", 4 * M, {'{a="1", b="x"}': math.inf, '{a="2", b="y"}': math.inf}),
    ("1 + 2 * 3", 0, {"scalar": 7}),
    ("2 > bool 1", 0, {"scalar": 1}),
    ("-5 % 3", 0, {"scalar": -2}),
    # vector matching
    ("foo == bool on(a) bar", 0, {'{a="1"}': 0, '{a="2"}': 0}),
    ("foo > on(a) bar", 4 * M, {'{a="1"}': 5, '{a="2"}': 50}),
    ("foo > ignoring(b, c) bar", 4 * M, {'foo{a="1"}': 5, 'foo{a="2"}': 50}),
    (
        "foo * on(a) group_left(v) info",
        0,
        {'{a="1", b="x", v="1.0"}': 1, '{a="2", b="y", v="2.0"}': 10},
    ),
    ("foo * on(a) group_left(b) info", 0, {'{a="1", b="zz"}': 1, '{a="2"}': 10}),
    ("info * on(a) group_right(b) foo", 0, {'{a="1", b="zz"}': 1, '{a="2"}': 10}),
    ("foo * on(a) group_left info", 0, {'{a="1", b="x"}': 1, '{a="2", b="y"}': 10}),
    ("info * on() group_left one", 0, {'{a="1", b="zz", v="1.0"}': 7, '{a="2", v="2.0"}': 7}),
    ("foo and on(a) bar", 0, {'foo{a="1", b="x"}': 1, 'foo{a="2", b="y"}': 10}),
    ("foo unless on(a) bar > 50", 0, {'foo{a="1", b="x"}': 1}),
    (
        "bar > 50 or foo",
        0,
        {'bar{a="2", c="q"}': 100, 'foo{a="1", b="x"}': 1, 'foo{a="2", b="y"}': 10},
    ),
    ("foo or on(a) bar", 0, {'foo{a="1", b="x"}': 1, 'foo{a="2", b="y"}': 10}),
    # instant-vector functions
    ("abs(neg)", 0, {'{a="1"}': 2.5}),
    ("ceil(neg)", 0, {'{a="1"}': -2}),
    ("floor(neg)", 0, {'{a="1"}': -3}),
    ("round(neg)", 0, {'{a="1"}': -2}),
    ("round(neg)", M, {'{a="1"}': -1}),
    ("round(foo, 0.3)", 4 * M, {'{a="1", b="x"}': 5.1, '{a="2", b="y"}': 50.099999999999994}),
    ("sqrt(neg)", 0, {'{a="1"}': math.nan}),
    ("ln(zero)", 0, {'{a="1"}': -math.inf}),
    (
        "exp(foo * 100)",
        4 * M,
        {'{a="1", b="x"}': 1.4035922178528375e217, '{a="2", b="y"}': math.inf},
    ),
    ("clamp_min(n, 3)", 0, {'{x="1"}': math.nan, '{x="2"}': 5, '{x="3"}': 4}),
    ("clamp_max(foo, 3)", 4 * M, {'{a="1", b="x"}': 3, '{a="2", b="y"}': 3}),
    ("histogram_quantile(0.5, h_bucket)", 0, {"{}": 0.5}),
    ("histogram_quantile(0.99, h_bucket)", 0, {"{}": 1}),
    ("histogram_quantile(0, h_bucket)", 0, {"{}": math.nan}),
    ("histogram_quantile(1.5, h_bucket)", 0, {"{}": math.inf}),
    ("histogram_quantile(0.5, hbad_bucket)", 0, {"{}": 0.5}),
    ("histogram_quantile(0.2, hneg_bucket)", 0, {"{}": -1}),
    (
        'label_replace(lr, "dst", "$1-$2x${2}y$$", "src", "([a-z]+)-([0-9]+)")',
        0,
        {'lr{dst="abc-123y$", src="abc-123"}': 1},
    ),
    ('label_replace(lr, "dst", "", "src", ".*")', 0, {'lr{src="abc-123"}': 1}),
    ('label_replace(lr, "dst", "z", "src", "nomatch")', 0, {'lr{dst="old", src="abc-123"}': 1}),
    ('label_replace(lr, "__name__", "q", "src", ".*")', 0, {'q{dst="old", src="abc-123"}': 1}),
    (
        'label_replace(lr, "dst", "$first", "src", "(?P<first>[a-z]+).*")',
        0,
        {'lr{dst="abc", src="abc-123"}': 1},
    ),
    ('label_replace(lr, "dst", "$1x", "src", "([a-z]+).*")', 0, {'lr{src="abc-123"}': 1}),
    ('absent(nope{a="b", c=~"x", d="e", d!="f", e=""})', 0, {'{a="b"}': 1}),
    ('absent(nope{x="", x="1"})', 0, {"{}": 1}),
    ('absent((nope{x="1"}))', 0, {'{x="1"}': 1}),
    ("absent(sum(nope))", 0, {"{}": 1}),
    ("absent(foo)", 0, {}),
    ('absent_over_time(foo{a="9", b=~"."}[1m])', 0, {'{a="9"}': 1}),
    ("absent_over_time(foo[1m])", 0, {}),
    ("vector(1)", 0, {"{}": 1}),
    ("vector(scalar(one))", 0, {"{}": 7}),
    ("scalar(foo)", 0, {"scalar": math.nan}),
    ("scalar(one)", 0, {"scalar": 7}),
    ("time()", 2 * M, {"scalar": 120}),
]


@pytest.mark.parametrize(
    ("expr", "at", "expected"), CASES, ids=[f"{e} @{t:g}" for e, t, _ in CASES]
)
def test_evaluates_like_prometheus(expr: str, at: float, expected: dict[str, float]) -> None:
    result = evaluate(DATA, expr, at)
    got = {"scalar": result.value} if isinstance(result, Scalar) else as_dict(result)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert same_number(got[key], value) or math.isclose(got[key], value, rel_tol=1e-12), key


def test_evaluates_text_or_parsed_tree_and_string_literals() -> None:
    evaluator = Evaluator(ListSource(build(DATA)))
    assert evaluator.instant(parse_expr("foo > 5"), 0) == evaluator.instant("foo > 5", 0)
    assert evaluator.instant('"hello"', 0) == String("hello")


def test_range_selection_includes_the_start_like_prometheus_2() -> None:
    # Prometheus 3 made ranges left-open; 2.x (and PiggyWatch) count a point at t - range.
    assert as_dict(evaluate(DATA, "count_over_time(seq[1m])", 10 * M)) == {'{job="api"}': 2}


def test_instant_lookback_is_configurable() -> None:
    evaluator = Evaluator(ListSource(build(DATA)), lookback=60.0)
    assert as_dict(evaluator.instant("foo", 5 * M)) == {
        'foo{a="1", b="x"}': 5,
        'foo{a="2", b="y"}': 50,
    }
    assert evaluator.instant("foo", 5 * M + 1) == []


def test_stale_marker_hides_a_series_but_other_nans_do_not() -> None:
    assert is_stale(STALE_NAN)
    data = [('x{k="stale"}', "1 stale"), ('x{k="nan"}', "1 NaN")]
    got = as_dict(evaluate(data, "x", M))
    assert list(got) == ['x{k="nan"}'] and math.isnan(got['x{k="nan"}'])


# -- errors Prometheus raises at evaluation time --------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("foo + on() bar", "found duplicate series for the match group {} on the right hand-side"),
        ("bar + on() group_right foo", "on the left hand-side"),
        ("foo + ignoring(a, b) one", "multiple matches for labels: many-to-one matching must be"),
        ("one + on() group_left(b) info", "found duplicate series"),
        ('{__name__=~"foo|dup"} + on() group_left one', "grouping labels must ensure unique"),
        ('{__name__=~"foo|dup"} * 2', "vector cannot contain metrics with the same labelset"),
        ('rate({__name__=~"foo|dup"}[5m])', "vector cannot contain metrics with the same labelset"),
        ('label_replace({__name__=~"foo|dup"}, "__name__", "x", "a", ".*")', "same labelset"),
        ("topk(scalar(nope), foo)", "overflows int64"),
    ],
)
def test_evaluation_errors_like_prometheus(expr: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=re.escape(message)):
        evaluate(DATA, expr, 3 * M)


def test_duplicate_match_error_names_the_series_and_the_expression() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate(DATA, "foo + on() bar", 0)
    text = str(caught.value)
    assert 'bar{a="1", c="p"}'.replace("bar{", '{__name__="bar", ') in text
    assert "foo{} + on () bar{}" in text


# -- parsing: the subset, and what is turned away ---------------------------------------------


@pytest.mark.parametrize(
    ("expr", "construct"),
    [
        # Prometheus 3 (or experimental in 2.x behind a feature flag): not in 2.x's default
        ('sort_by_label(foo, "a")', "function 'sort_by_label'"),
        ("info(foo)", "function 'info'"),
        ("histogram_avg(foo)", "function 'histogram_avg'"),
        ("limitk(2, foo)", "aggregation 'limitk'"),
        ('foo{a="1" or b="2"}', "'or' between label matchers"),
        ("foo[5m]", "a range vector as the result of an expression"),
        ("rate(foo[5m])[1h:1m]", "a range vector as the result of an expression"),
    ],
)
def test_unsupported_constructs_are_named(expr: str, construct: str) -> None:
    with pytest.raises(UnsupportedExpression) as caught:
        parse_expr(expr)
    assert caught.value.construct == construct
    assert re.search(f"{re.escape(construct)} (is|are) not supported", str(caught.value))


def test_unsupported_construct_points_at_its_line_and_column() -> None:
    text = 'sum(rate(x[5m]))\n  / on(job)\n  sort_by_label(y, "a")'
    with pytest.raises(UnsupportedExpression) as caught:
        parse_expr(text)
    assert (caught.value.line, caught.value.column) == (3, 3)
    assert "line 3, column 3" in str(caught.value)
    # Strings are not searched: the "info(" there is not the construct.
    text = 'label_replace(x, "a", "info(", "b", "") or info(y)'
    with pytest.raises(UnsupportedExpression) as caught:
        parse_expr(text)
    assert caught.value.construct == "function 'info'"
    assert caught.value.column == text.index("info(y)") + 1


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("foo +", "cannot parse expression 'foo +'"),
        ("rate(foo)", "expected type matrix"),
        ("foo[5]", "duration '5' needs a unit"),
        ("foo offset 5", "duration '5' needs a unit"),
        ("nonsense_fn(foo)", "unknown function 'nonsense_fn'"),
        ('foo{a=~"(x"}', "illegal regex"),
        ('label_replace(foo, "1bad", "x", "a", ".*")', "invalid destination label name"),
        ('label_replace(foo, "a", "x", "b", "(.*")', "invalid regular expression in label_replace"),
        ("1 > 2", "comparisons between scalars must use BOOL modifier"),
    ],
)
def test_syntax_errors_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ExpressionSyntaxError, match=re.escape(message)):
        parse_expr(expr)


def test_every_supported_function_and_aggregation_parses() -> None:
    examples = {"scalar": "0.5", "vector": "x", "matrix": "x[5m]", "string": '"a"'}
    for spec in FUNCTIONS.values():
        assert spec.name in SUPPORTED_FUNCTIONS
        parse_expr(f"{spec.name}({', '.join(examples[arg] for arg in spec.args)})")
    for op in SUPPORTED_AGGREGATIONS:
        param = {None: "", "scalar": "2, ", "string": '"v", '}[AGGREGATIONS[op].param]
        parse_expr(f"{op} by (job) ({param}x) / on(job) group_left {op} without (a) ({param}x)")


def test_lookback_window_covers_ranges_offsets_and_instant_lookback() -> None:
    assert lookback_window("rate(x[5m])") == 300
    assert lookback_window("rate(x[1h] offset 30m) > y") == 5400
    assert lookback_window("x offset 1h") == 3900
    assert lookback_window("x", lookback=60) == 60
    assert lookback_window("vector(time()) > 0") == 0
    assert lookback_window(parse_expr("max_over_time(x[10m]) / x offset -1m")) == 600
    assert lookback_window("max_over_time(rate(x[5m])[1h:1m] offset 10m)") == 4500
    assert lookback_window("max_over_time(x[1h:])") == 3900
    assert lookback_window("x @ end() offset 1m") == 360


# -- properties: random series against straightforward reference implementations -----------

# One step: (seconds since the previous point, what happens, size).
# Mostly a steady scrape interval, with jitter and the odd long gap.
_gap = st.sampled_from([1, 7, 14, 15, 15, 15, 15, 16, 30, 60, 200])
_step = st.tuples(
    _gap, st.sampled_from(["up", "up", "up", "same", "reset", "stale"]),
    st.integers(0, 40),
)  # fmt: skip


def _counter(steps: list[tuple[int, str, int]]) -> Series:
    t, value, ts, vs = 0.0, 0.0, [], []
    for gap, kind, size in steps:
        t += gap
        if kind == "reset":
            value = size / 4
        elif kind == "up":
            value += size / 4
        ts.append(t)
        vs.append(STALE_NAN if kind == "stale" else value)
    return Series((("__name__", "c"), ("job", "x")), ts, vs)


def _gauge(steps: list[tuple[int, str, int]]) -> Series:
    t, ts, vs = 0.0, [], []
    for gap, kind, size in steps:
        t += gap
        ts.append(t)
        vs.append(STALE_NAN if kind == "stale" else (size - 20) / 8)
    return Series((("__name__", "g"), ("job", "x")), ts, vs)


def ref_window(series: Series, start: float, end: float) -> tuple[list[float], list[float]]:
    """Points with ``start <= t <= end``, stale markers dropped."""
    kept = [(t, v) for t, v in zip(series.timestamps, series.values, strict=True)
            if start <= t <= end and not is_stale(v)]  # fmt: skip
    return [t for t, _ in kept], [v for _, v in kept]


def ref_rate(ts: list[float], vs: list[float], start: float, end: float,
             counter: bool, per_second: bool) -> float | None:  # fmt: skip
    """Prometheus's extrapolatedRate, written plainly."""
    if len(vs) < 2:
        return None
    result = vs[-1] - vs[0]
    if counter:
        for previous, current in itertools.pairwise(vs):
            if current < previous:
                result += previous  # the counter restarted: count what it had reached
    sampled = ts[-1] - ts[0]
    step = sampled / (len(vs) - 1)
    to_start, to_end = ts[0] - start, end - ts[-1]
    if counter and result > 0 and vs[0] >= 0:
        to_start = min(to_start, sampled * vs[0] / result)
    covered = sampled
    covered += to_start if to_start < 1.1 * step else step / 2
    covered += to_end if to_end < 1.1 * step else step / 2
    result = result * covered / sampled
    return result / (end - start) if per_second else result


def ref_quantile(q: float, values: list[float]) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = max(0, math.floor(rank))
    high = min(len(ordered) - 1, low + 1)
    weight = rank - math.floor(rank)
    return ordered[low] * (1 - weight) + ordered[high] * weight


def _single(result: object) -> float | None:
    assert isinstance(result, list) and len(result) <= 1, result
    return result[0].value if result else None


_window = st.tuples(st.sampled_from([30, 60, 120, 300, 300, 600]), st.sampled_from([0, 0, 60]))


# When to evaluate, in percent of the series' time span: mostly inside it, sometimes after.
_when = st.integers(0, 110)


def _time_within(series: Series, percent: int) -> float:
    span = series.timestamps[-1] if series.timestamps else 0.0
    return round(span * percent / 100)


def _range(seconds: int, offset: int) -> str:
    return f"[{seconds}s] offset {offset}s" if offset else f"[{seconds}s]"  # offset 0s is invalid


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=3, max_size=60), when=_when, window=_window)
def test_rate_increase_delta_match_the_reference(
    steps: list[tuple[int, str, int]], when: int, window: tuple[int, int]
) -> None:
    rng, offset = window
    series = _counter(steps)
    at = _time_within(series, when)
    evaluator = Evaluator(ListSource([series]))
    end = at - offset
    ts, vs = ref_window(series, end - rng, end)
    for fn, counter, per_second in [("rate", True, True), ("increase", True, False),
                                    ("delta", False, False)]:  # fmt: skip
        got = _single(evaluator.instant(f"{fn}(c{_range(rng, offset)})", at))
        want = ref_rate(ts, vs, end - rng, end, counter, per_second)
        if want is None:
            assert got is None
        else:
            assert got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=3, max_size=60), when=_when, window=_window,
       q=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]))  # fmt: skip
def test_over_time_functions_match_the_reference(
    steps: list[tuple[int, str, int]], when: int, window: tuple[int, int], q: float
) -> None:
    rng, offset = window
    series = _gauge(steps)
    at = _time_within(series, when)
    evaluator = Evaluator(ListSource([series]))
    _, vs = ref_window(series, at - offset - rng, at - offset)
    pairs = list(itertools.pairwise(vs))
    reference: dict[str, Callable[[], float]] = {
        "sum_over_time": lambda: math.fsum(vs),
        "avg_over_time": lambda: math.fsum(vs) / len(vs),
        "min_over_time": lambda: min(vs),
        "max_over_time": lambda: max(vs),
        "count_over_time": lambda: float(len(vs)),
        "last_over_time": lambda: vs[-1],
        "changes": lambda: float(sum(1 for a, b in pairs if a != b)),
        "resets": lambda: float(sum(1 for a, b in pairs if b < a)),
        f"quantile_over_time({q}, ": lambda: ref_quantile(q, vs),
    }
    for fn, want in reference.items():
        call = fn if fn.endswith(", ") else f"{fn}("
        got = _single(evaluator.instant(f"{call}g{_range(rng, offset)})", at))
        if not vs:
            assert got is None, fn
        else:
            assert got is not None and math.isclose(got, want(), rel_tol=1e-9, abs_tol=1e-9), fn
    if len(vs) < 2:
        assert evaluator.instant(f'absent_over_time(g{{job="x"}}{_range(rng, offset)})', at) == (
            [] if vs else [VectorSample((("job", "x"),), 1.0)]
        )


_lhs_labels = st.sets(st.tuples(st.sampled_from("abc"), st.sampled_from("12")), max_size=6)
_rhs_labels = st.sets(st.tuples(st.sampled_from("abcd"), st.sampled_from("pq")), max_size=6)


def _vectors(lhs: set[tuple[str, str]], rhs: set[tuple[str, str]]) -> list[Series]:
    out = [Series((("__name__", "l"), ("x", x), ("y", y)), [0.0], [float(i + 1)])
           for i, (x, y) in enumerate(sorted(lhs))]  # fmt: skip
    out += [Series((("__name__", "r"), ("x", x), ("z", z)), [0.0], [float(10 * (i + 1))])
            for i, (x, z) in enumerate(sorted(rhs))]  # fmt: skip
    return out


def ref_binop(lhs: list[VectorSample], rhs: list[VectorSample], on: tuple[str, ...],
              group_left: bool, include: tuple[str, ...]) -> dict[Labels, float] | str:  # fmt: skip
    """``lhs - on(on) [group_left(include)] rhs`` by brute force; an error name on failure."""

    def sig(labels: Labels) -> Labels:
        return tuple(p for p in labels if p[0] in on)

    for i, a in enumerate(rhs):
        if any(sig(a.labels) == sig(b.labels) for b in rhs[:i]):
            return "duplicate"
    out: dict[Labels, float] = {}
    used: set[Labels] = set()
    for left in lhs:
        matches = [right for right in rhs if sig(right.labels) == sig(left.labels)]
        if not matches:
            continue
        right = matches[0]
        if group_left:
            labels = dict(left.labels)
            del labels["__name__"]
            for name in include:
                labels.pop(name, None)
                if name in dict(right.labels):
                    labels[name] = dict(right.labels)[name]
            result = tuple(sorted(labels.items()))
            if result in out:
                return "multiple"
        else:
            if sig(left.labels) in used:
                return "multiple"
            used.add(sig(left.labels))
            result = sig(left.labels)
        out[result] = left.value - right.value
    return out


@settings(max_examples=300, deadline=None)
@given(lhs=_lhs_labels, rhs=_rhs_labels, group_left=st.booleans(),
       include=st.sampled_from([(), ("z",), ("y",)]))  # fmt: skip
def test_vector_matching_matches_the_reference(
    lhs: set[tuple[str, str]], rhs: set[tuple[str, str]], group_left: bool, include: tuple[str, ...]
) -> None:
    evaluator = Evaluator(ListSource(_vectors(lhs, rhs)))
    left, right = evaluator.instant("l", 0), evaluator.instant("r", 0)
    assert isinstance(left, list) and isinstance(right, list)
    modifier = f"group_left({', '.join(include)})" if group_left else ""
    want = ref_binop(left, right, ("x",), group_left, include if group_left else ())
    got: dict[Labels, float] | str
    try:
        got = {s.labels: s.value for s in vector(evaluator.instant(f"l - on(x) {modifier} r", 0))}
    except EvaluationError as exc:
        got = "duplicate" if "duplicate series" in str(exc) else "multiple"
    assert got == want

    def sig(sample: VectorSample) -> str:
        return dict(sample.labels)["x"]

    right_x = {sig(s) for s in right}
    left_x = {sig(s) for s in left}
    assert evaluator.instant("l and on(x) r", 0) == [s for s in left if sig(s) in right_x]
    assert evaluator.instant("l unless on(x) r", 0) == [s for s in left if sig(s) not in right_x]
    assert evaluator.instant("l or on(x) r", 0) == left + [s for s in right if sig(s) not in left_x]


# -- agreement with promtool itself -------------------------------------------------------------

PROMTOOL = shutil.which("promtool")

AGREEMENT_SERIES = [
    ('http_requests_total{job="api",code="200"}', "0 12 25 31 2 9 15 _ 40 44 51 60 61 _ _ 80 95"),
    ('http_requests_total{job="api",code="500"}', "0 1 1 2 2 3 stale 1 1 4 5 _ 6 7 9 9 9"),
    ('http_requests_total{job="web",code="200"}', "_ _ 5 9 14 20 24 31 33 40 2 6 9 13 20 26 31"),
    ('queue_depth{job="api"}', "3.5 4.25 7 2.5 -1 0 9.75 12 11 _ 8 6.5 4 3 3 2 1.5"),
    ('queue_depth{job="web"}', "1 1 1 2 2 2 3 3 3 4 4 4 5 5 5 6 6"),
    ('up{job="api",instance="a"}', "1 1 1 1 0 0 1 1 1 1 1 1 1 1 1 1 1"),
    ('up{job="api",instance="b"}', "1 1 1 1 1 1 1 1 1 stale"),
    ('up{job="web",instance="c"}', "1 1 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1"),
    ('latency_bucket{job="api",le="0.1"}', "0+10x3 35 40+10x10"),
    ('latency_bucket{job="api",le="0.5"}', "0+15x3 55 65+15x10"),
    ('latency_bucket{job="api",le="+Inf"}', "0+20x3 75 90+20x10"),
    ('limit{job="api"}', "50 50 50 50 50 50 50 50 50 50 50 50 50 50 50 50 50"),
    ('big{job="api"}', "100000000 100000001 100000002 100000000.1 99999997 100000003 1e8x11"),
    ('epoch{when="leap day"}', "1709164800x16"),
    ('epoch{when="1969"}', "-90.5x16"),
    ('epoch{when="far"}', "1e20x16"),
    ('epoch{when="nan"}', " ".join(["NaN"] * 17)),
    ('epoch{when="2100 end"}', "4133980799x16"),
]

AGREEMENT_EXPRESSIONS = [
    ("rate(http_requests_total[1m])", 240),
    ("increase(http_requests_total[2m])", 150),
    ("rate(http_requests_total[1m] offset 30s)", 225),
    ("irate(http_requests_total[1m])", 195),
    ("sum by (job) (rate(http_requests_total[2m]))", 240),
    (
        'sum(rate(http_requests_total{code=~"5.."}[2m])) by (job) '
        "/ sum(rate(http_requests_total[2m])) by (job)",
        240,
    ),
    ("delta(queue_depth[1m])", 135),
    ("deriv(queue_depth[2m])", 240),
    ("predict_linear(queue_depth[2m], 600) > 5", 240),
    ("avg_over_time(queue_depth[3m])", 240),
    ("max_over_time(queue_depth[1m]) - min_over_time(queue_depth[1m])", 105),
    ("quantile_over_time(0.9, queue_depth[2m])", 180),
    ("changes(up[4m])", 240),
    ("resets(http_requests_total[4m])", 240),
    ("count by (job) (up == 0)", 75),
    ("sum without (instance) (up)", 120),
    ("up == bool on(job) group_left limit > bool 0", 60),
    ('absent(up{job="db"})', 0),
    ('absent_over_time(up{instance="b"}[30s])', 225),
    ("histogram_quantile(0.9, rate(latency_bucket[1m]))", 240),
    ("topk(1, queue_depth)", 60),
    ("queue_depth / on(job) group_left limit * 100", 90),
    ('label_replace(up, "host", "h-$1", "instance", "(.*)") unless up == 0', 75),
    ("clamp_max(queue_depth, 5) + clamp_min(queue_depth, 2)", 45),
    ("round(queue_depth / 3, 0.5)", 30),
    ("scalar(sum(up)) * vector(2)", 30),
    ("time() - 60", 30),
    # aggregations added for issue 14
    ("group by (job) (http_requests_total)", 120),
    ("stddev by (job) (queue_depth)", 60),
    ("stdvar(queue_depth)", 165),
    ("stddev without (instance) (up)", 75),
    ("stdvar(big)", 60),
    ('count_values("value", up)', 75),
    ('count_values by (job) ("v", up)', 75),
    ('count_values without (instance) ("job", up)', 75),
    ('count_values("depth", queue_depth * 1e17)', 45),
    # range functions
    ("stddev_over_time(big[1m])", 60),
    ("stdvar_over_time(queue_depth[2m])", 240),
    ("stddev_over_time(http_requests_total[4m])", 240),
    ("present_over_time(up[30s])", 225),
    ("idelta(http_requests_total[1m])", 195),
    ("holt_winters(queue_depth[2m], 0.3, 0.6)", 240),
    ("holt_winters(http_requests_total[4m], 0.9, 0.1)", 240),
    ("holt_winters(nope[4m], 0, 2)", 240),
    # instant-vector functions
    ("timestamp(up)", 150),
    ("timestamp((queue_depth))", 145),
    ("timestamp(queue_depth offset 1m)", 200),
    ("timestamp(rate(http_requests_total[1m]))", 200),
    ('label_join(up, "dst", "-", "job", "instance")', 60),
    ('label_join(up, "job", "", "nope")', 60),
    ('label_join(up, "__name__", "_", "job", "instance")', 60),
    ("sort(queue_depth)", 30),
    ("sort_desc(http_requests_total)", 120),
    ("sgn(queue_depth - 3)", 60),
    ("sgn(-queue_depth * 0)", 60),
    ("log2(queue_depth > 0)", 240),
    ("log2(limit * 2)", 0),
    ("deg(queue_depth) + rad(queue_depth)", 105),
    ("queue_depth * pi()", 105),
    ("clamp(queue_depth, 2, 4)", 60),
    ("clamp(queue_depth, 4, 2)", 60),
    ("histogram_count(latency_bucket)", 60),
    ("histogram_fraction(0, 0.2, latency_bucket)", 60),
    ("up atan2 0", 60),
    ("-queue_depth atan2 -1", 60),
    ("1 atan2 2", 0),
    # dates (UTC), with the values Go's calendar gives NaN and overflowing numbers
    ("minute(epoch)", 0),
    ("hour(epoch)", 0),
    ("day_of_week(epoch)", 0),
    ("day_of_month(epoch)", 0),
    ("day_of_year(epoch)", 0),
    ("days_in_month(epoch)", 0),
    ("month(epoch)", 0),
    ("year(epoch)", 0),
    ("year() + month() + day_of_month()", 200),
    ("day_of_week() + hour() + minute() + day_of_year() + days_in_month()", 200),
    ("hour(vector(time() * 1000)) + minute(vector(time() * 1000))", 200),
    # subqueries: steps at multiples of the step, [t - range, t] inclusive
    ("max_over_time(rate(http_requests_total[1m])[2m:30s])", 240),
    ("avg_over_time(queue_depth[1m:15s])", 200),
    ("sum_over_time(queue_depth[2m:45s] offset 10s)", 230),
    ("count_over_time(up[1m:])", 200),
    ("last_over_time(queue_depth[1m:20s])", 235),
    ("rate(http_requests_total[2m:15s])", 240),
    ("min_over_time(sum by (job) (rate(http_requests_total[1m]))[90s:15s])", 240),
    ("max_over_time(max_over_time(queue_depth[30s:5s])[1m:20s])", 220),
    ("absent_over_time(nope[1m:15s])", 200),
    ("absent_over_time(queue_depth[1m:15s])", 200),
    # the @ modifier; start() and end() are the evaluation time
    ("queue_depth @ 60", 240),
    ("queue_depth @ 60 offset 15s", 240),
    ("rate(http_requests_total[1m] @ 120)", 240),
    ("rate(http_requests_total[1m] @ end())", 180),
    ("queue_depth - queue_depth @ start()", 150),
    ("max_over_time(queue_depth[1m:15s] @ 90)", 240),
    ("max_over_time(queue_depth[1m:15s] @ 100)", 240),
    ("max_over_time((queue_depth @ end())[1m:15s])", 160),
    ("predict_linear(queue_depth[1m] @ 120, 0)", 240),
    ("timestamp(up @ 100)", 240),
]


def _promtool_labels(labels: Labels) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_agrees_with_promtool(tmp_path: Path) -> None:
    # promtool gives subqueries without a step the test file's evaluation interval.
    evaluator = Evaluator(ListSource(build(AGREEMENT_SERIES, interval=15.0)), subquery_step=15.0)
    expr_tests = []
    for expr, at in AGREEMENT_EXPRESSIONS:
        result = evaluator.instant(expr, at)
        if isinstance(result, Scalar):
            samples = [{"labels": "{}", "value": result.value}]
        else:
            assert isinstance(result, list)
            samples = [{"labels": _promtool_labels(s.labels), "value": s.value} for s in result]
        expr_tests.append({"expr": expr, "eval_time": f"{at}s", "exp_samples": samples})
    alert_expr = "rate(http_requests_total[1m]) > 0.2"
    firing = evaluator.instant(alert_expr, 240)
    assert isinstance(firing, list) and firing
    rules = {"groups": [{"name": "g", "interval": "15s", "rules": [
        {"alert": "ManyRequests", "expr": alert_expr, "labels": {"severity": "low"}},
    ]}]}  # fmt: skip
    exp_alerts = [
        {"exp_labels": {**dict(s.labels), "alertname": "ManyRequests", "severity": "low"}}
        for s in firing
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": s, "values": v} for s, v in AGREEMENT_SERIES],
            "promql_expr_test": expr_tests,
            "alert_rule_test": [{"eval_time": "240s", "alertname": "ManyRequests",
                                 "exp_alerts": exp_alerts}],
        }],
    }))  # fmt: skip
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
