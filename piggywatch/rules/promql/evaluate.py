"""Evaluate a parsed expression at one instant against a ``SeriesSource``, as Prometheus 2.x does.

Selection follows Prometheus 2.x exactly: an instant selector takes each series' newest
point in ``[t - lookback, t]`` unless that point is a stale marker; a range selector ``[d]``
takes the points in ``[t - d, t]`` (both ends included, as in 2.x; 3.x excludes the start),
dropping stale markers. ``offset o`` shifts ``t`` to ``t - o``.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

from piggywatch.rules.promql import functions
from piggywatch.rules.promql.aggregations import aggregate
from piggywatch.rules.promql.binary import (
    scalar_binop,
    set_binop,
    vector_binop,
    vector_scalar_binop,
)
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.nodes import (
    AggregateExpr,
    BinaryExpr,
    Call,
    Expr,
    MatrixSelector,
    NumberLiteral,
    ParenExpr,
    StringLiteral,
    UnaryExpr,
    VectorSelector,
)
from piggywatch.rules.promql.parse import SET_OPERATORS, parse_expr
from piggywatch.rules.promql.range_functions import RANGE_FUNCTIONS, RangeWindow
from piggywatch.rules.promql.values import (
    METRIC_NAME,
    Samples,
    Scalar,
    String,
    Value,
    Vector,
    VectorSample,
    drop_name,
    ensure_unique,
    to_vector,
)
from piggywatch.store.samples import Labels
from piggywatch.store.series import MatchOp, Series, SeriesSource, is_stale

__all__ = [
    "DEFAULT_LOOKBACK",
    "EvaluationError",
    "Evaluator",
    "Scalar",
    "String",
    "Vector",
    "VectorSample",
]

DEFAULT_LOOKBACK = 300.0
"""Prometheus's default lookback delta: how old an instant selector's newest point may be."""

_Window = tuple[Labels, Sequence[float], Sequence[float]]


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Expr:
    return parse_expr(text)


class Evaluator:
    """Evaluates PromQL-subset expressions at a given time against a series source."""

    def __init__(self, source: SeriesSource, *, lookback: float = DEFAULT_LOOKBACK) -> None:
        self._source = source
        self._lookback = lookback
        self._eval_by_node: dict[type, Callable[[Any, float], Value]] = {
            NumberLiteral: lambda node, t: Scalar(node.value),
            StringLiteral: lambda node, t: String(node.value),
            VectorSelector: self._select_instant,
            ParenExpr: lambda node, t: self._eval(node.expr, t),
            UnaryExpr: self._negate,
            BinaryExpr: self._binary,
            AggregateExpr: self._aggregate,
            Call: self._call,
        }
        self._eval_by_function: dict[str, Callable[[Call, float], Value]] = {
            "absent": self._absent,
            "absent_over_time": self._absent_over_time,
            "clamp_min": lambda c, t: functions.clamp_min(
                self._vector(c.args[0], t), self._scalar(c.args[1], t), c.text
            ),
            "clamp_max": lambda c, t: functions.clamp_max(
                self._vector(c.args[0], t), self._scalar(c.args[1], t), c.text
            ),
            "round": lambda c, t: functions.round_to(
                self._vector(c.args[0], t),
                self._scalar(c.args[1], t) if len(c.args) > 1 else 1.0,
                c.text,
            ),
            "histogram_quantile": lambda c, t: functions.histogram_quantile(
                self._scalar(c.args[0], t), self._vector(c.args[1], t), c.text
            ),
            "label_replace": self._label_replace,
            "time": lambda c, t: Scalar(t),
            "vector": lambda c, t: [((), self._scalar(c.args[0], t))],
            "scalar": self._to_scalar,
        }
        for name in functions.ELEMENTWISE:
            self._eval_by_function[name] = self._elementwise

    def instant(self, expr: Expr | str, t: float) -> Vector | Scalar | String:
        """Evaluate ``expr`` (a tree from ``parse_expr``, or text) at time ``t`` (seconds).

        Raises ``EvaluationError`` where Prometheus fails the query (duplicate matches,
        duplicate label sets), and the errors of ``parse_expr`` for bad text.
        """
        tree = _parse_cached(expr) if isinstance(expr, str) else expr
        value = self._eval(tree, t)
        return to_vector(value) if isinstance(value, list) else value

    def _eval(self, expr: Expr, t: float) -> Value:
        evaluate = self._eval_by_node.get(type(expr))
        if evaluate is None:
            raise EvaluationError(f"cannot evaluate {getattr(expr, 'text', expr)} on its own")
        return evaluate(expr, t)

    def _vector(self, expr: Expr, t: float) -> Samples:
        value = self._eval(expr, t)
        if not isinstance(value, list):
            raise EvaluationError(f"expected an instant vector, got {value!r}")
        return value

    def _scalar(self, expr: Expr, t: float) -> float:
        value = self._eval(expr, t)
        if not isinstance(value, Scalar):
            raise EvaluationError(f"expected a scalar, got {value!r}")
        return value.value

    # -- selection ---------------------------------------------------------------------------

    def _select_instant(self, selector: VectorSelector, t: float) -> Samples:
        reference = t - selector.offset
        start = reference - self._lookback
        out: Samples = []
        append = out.append
        for series in self._source.select(selector.matchers, start, reference):
            timestamps = series.timestamps
            if not timestamps:
                continue
            # The source mostly cuts the window exactly: then the newest point is the last.
            newest = len(timestamps) - 1
            if timestamps[newest] > reference:
                newest = bisect_right(timestamps, reference) - 1
            if newest < 0 or timestamps[newest] < start:
                continue
            value = series.values[newest]
            if value != value and is_stale(value):
                continue  # the series ended: absent at once, not for the whole lookback
            append((series.labels, value))
        return out

    def _select_range(
        self, selector: VectorSelector, start: float, end: float
    ) -> Iterator[_Window]:
        for series in self._source.select(selector.matchers, start, end):
            points = _range_points(series, start, end)
            if points is not None:
                yield series.labels, points[0], points[1]

    # -- operators ---------------------------------------------------------------------------

    def _negate(self, node: UnaryExpr, t: float) -> Value:
        value = self._eval(node.expr, t)
        if isinstance(value, Scalar):
            return Scalar(-value.value)
        if not isinstance(value, list):
            raise EvaluationError(f"cannot negate {node.text}")
        negated = [(drop_name(labels), -v) for labels, v in value]
        return ensure_unique(negated, node.text)

    def _binary(self, node: BinaryExpr, t: float) -> Value:
        lhs = self._eval(node.lhs, t)
        rhs = self._eval(node.rhs, t)
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            return scalar_binop(node.op, lhs.value, rhs.value)
        if isinstance(lhs, Scalar) and isinstance(rhs, list):
            return vector_scalar_binop(
                node.op, rhs, lhs.value, scalar_on_left=True,
                return_bool=node.return_bool, where=node.text,
            )  # fmt: skip
        if isinstance(lhs, list) and isinstance(rhs, Scalar):
            return vector_scalar_binop(
                node.op, lhs, rhs.value, scalar_on_left=False,
                return_bool=node.return_bool, where=node.text,
            )  # fmt: skip
        if isinstance(lhs, list) and isinstance(rhs, list) and node.matching is not None:
            if node.op in SET_OPERATORS:
                return set_binop(node.op, lhs, rhs, node.matching)
            return vector_binop(node.op, lhs, rhs, node.matching, node.return_bool, node.text)
        raise EvaluationError(f"operator {node.op!r} cannot combine these operands: {node.text}")

    def _aggregate(self, node: AggregateExpr, t: float) -> Samples:
        param = self._scalar(node.param, t) if node.param is not None else math.nan
        vector = self._vector(node.expr, t)
        return aggregate(node.op, vector, node.grouping, node.without, param)

    # -- functions ---------------------------------------------------------------------------

    def _call(self, node: Call, t: float) -> Value:
        if node.func in RANGE_FUNCTIONS:
            return self._range_call(node, t)
        return self._eval_by_function[node.func](node, t)

    def _range_call(self, node: Call, t: float) -> Samples:
        matrix = _matrix_arg(node)
        params = [arg for arg in node.args if arg is not matrix]
        param = self._scalar(params[0], t) if params else math.nan
        selector = matrix.selector
        end = t - selector.offset
        start = end - matrix.range
        window = RangeWindow(start, end, matrix.range, t, param)
        function = RANGE_FUNCTIONS[node.func]
        # last_over_time acts like a selector, so it alone keeps the metric name.
        keep_name = node.func == "last_over_time"
        out: Samples = []
        append = out.append
        # The selection loop is written out here, not taken from _select_range: this is the
        # hottest loop of rule evaluation and a generator costs a fifth of it.
        # _range_points is inlined too, for the common case: a window the source cut exactly,
        # of plain lists, without NaN.
        for series in self._source.select(selector.matchers, start, end):
            timestamps = series.timestamps
            values = series.values
            if (not timestamps or timestamps[0] < start or timestamps[-1] > end
                    or type(values) is not list):
                points = _range_points(series, start, end)
                if points is None:
                    continue
                timestamps, values = points
            else:
                total = sum(values)
                if total != total:  # a NaN somewhere, possibly stale markers
                    timestamps, values = _without_stale(timestamps, values)
                    if not values:
                        continue
            value = function(timestamps, values, window)
            if value is not None:
                labels = series.labels
                append((labels if keep_name else drop_name(labels), value))
        if keep_name or _one_metric_name(selector):
            return out  # distinct series of one metric stay distinct without the name
        return ensure_unique(out, node.text)

    def _elementwise(self, node: Call, t: float) -> Samples:
        function = functions.ELEMENTWISE[node.func]
        return functions.elementwise(function, self._vector(node.args[0], t), node.text)

    def _absent(self, node: Call, t: float) -> Samples:
        if self._vector(node.args[0], t):
            return []
        return [(functions.absent_labels(node.args[0]), 1.0)]

    def _absent_over_time(self, node: Call, t: float) -> Samples:
        matrix = _matrix_arg(node)
        end = t - matrix.selector.offset
        for _ in self._select_range(matrix.selector, end - matrix.range, end):
            return []
        return [(functions.absent_labels(matrix), 1.0)]

    def _label_replace(self, node: Call, t: float) -> Samples:
        vector = self._vector(node.args[0], t)
        dst, replacement, src, regex = (_string_arg(arg) for arg in node.args[1:5])
        return functions.label_replace(vector, dst, replacement, src, regex, node.text)

    def _to_scalar(self, node: Call, t: float) -> Scalar:
        vector = self._vector(node.args[0], t)
        return Scalar(vector[0][1] if len(vector) == 1 else math.nan)


def _one_metric_name(selector: VectorSelector) -> bool:
    return any(m.name == METRIC_NAME and m.op is MatchOp.EQUAL for m in selector.matchers)


def _matrix_arg(node: Call) -> MatrixSelector:
    for arg in node.args:
        if isinstance(arg, MatrixSelector):
            return arg
    raise EvaluationError(f"{node.func}() needs a range selector such as x[5m]: {node.text}")


def _string_arg(arg: Expr) -> str:
    if not isinstance(arg, StringLiteral):
        raise EvaluationError(f"expected a string literal, got {getattr(arg, 'text', arg)!r}")
    return arg.value


def _range_points(
    series: Series, start: float, end: float
) -> tuple[Sequence[float], Sequence[float]] | None:
    """The series' points in ``[start, end]`` without stale markers, or None if none."""
    timestamps = series.timestamps
    values = series.values
    if not timestamps:
        return None
    if timestamps[0] < start or timestamps[-1] > end:
        # The source gave more than asked for (it may, cheaply): cut the window out.
        first = bisect_left(timestamps, start)
        stop = bisect_right(timestamps, end)
        if first >= stop:
            return None
        timestamps = _window(timestamps, first, stop)
        values = _window(values, first, stop)
    total = sum(values)
    if total != total:  # a NaN somewhere, possibly stale markers
        timestamps, values = _without_stale(timestamps, values)
        if not values:
            return None
    if type(values) is not list:
        values = list(values)  # the range functions' fast paths compare lists
    return timestamps, values


def _window(points: Sequence[float], first: int, stop: int) -> Sequence[float]:
    try:
        return points[first:stop]
    except TypeError:  # a deque, say: no slicing
        return list(islice(points, first, stop))


def _without_stale(
    timestamps: Sequence[float], values: Sequence[float]
) -> tuple[Sequence[float], Sequence[float]]:
    kept = [(t, v) for t, v in zip(timestamps, values, strict=True) if not is_stale(v)]
    return [t for t, _ in kept], [v for _, v in kept]
