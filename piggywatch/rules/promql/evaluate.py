"""Evaluate a parsed expression at one instant against a ``SeriesSource``, as Prometheus 2.x does.

Selection follows Prometheus 2.x exactly: an instant selector takes each series' newest
point in ``[t - lookback, t]`` unless that point is a stale marker; a range selector ``[d]``
takes the points in ``[t - d, t]`` (both ends included, as in 2.x; 3.x excludes the start),
dropping stale markers. ``offset o`` shifts ``t`` to ``t - o``; ``@ a`` replaces ``t`` with
``a`` (``start()`` and ``end()`` are the time the query was asked for, even in a subquery).
A subquery ``e[d:s]`` evaluates ``e`` at every multiple of ``s`` in ``[t - d, t]``.
Functions and aggregations come from ``registry``; this module is the ``Context`` they use.
"""

from __future__ import annotations

import functools
import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

from piggywatch.rules.promql.binary import (
    scalar_binop,
    set_binop,
    vector_binop,
    vector_scalar_binop,
)
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.nodes import (
    AggregateExpr,
    At,
    BinaryExpr,
    Call,
    Expr,
    MatrixSelector,
    NumberLiteral,
    ParenExpr,
    StringLiteral,
    SubqueryExpr,
    UnaryExpr,
    VectorSelector,
)
from piggywatch.rules.promql.parse import SET_OPERATORS, parse_expr
from piggywatch.rules.promql.range_functions import RangeFunction, RangeWindow
from piggywatch.rules.promql.registry import AGGREGATIONS, FUNCTIONS
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

DEFAULT_SUBQUERY_STEP = 60.0
"""The step of a subquery written without one (``x[1h:]``): Prometheus's default global
evaluation interval."""

_Window = tuple[Labels, Sequence[float], Sequence[float]]


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Expr:
    return parse_expr(text)


class Evaluator:
    """Evaluates PromQL expressions at a given time against a series source.

    ``subquery_step`` is the step of subqueries written without one: Prometheus takes its
    global evaluation interval.
    """

    def __init__(
        self,
        source: SeriesSource,
        *,
        lookback: float = DEFAULT_LOOKBACK,
        subquery_step: float = DEFAULT_SUBQUERY_STEP,
    ) -> None:
        self._source = source
        self._lookback = lookback
        self._subquery_step = subquery_step
        # The time instant() was asked for, which @ start() / end() mean; per thread, since
        # templates may query from another thread while rules evaluate.
        self._query = threading.local()
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

    def instant(self, expr: Expr | str, t: float) -> Vector | Scalar | String:
        """Evaluate ``expr`` (a tree from ``parse_expr``, or text) at time ``t`` (seconds).

        Raises ``EvaluationError`` where Prometheus fails the query (duplicate matches,
        duplicate label sets), and the errors of ``parse_expr`` for bad text.
        """
        tree = _parse_cached(expr) if isinstance(expr, str) else expr
        self._query.time = t
        value = self._eval(tree, t)
        return to_vector(value) if isinstance(value, list) else value

    def _eval(self, expr: Expr, t: float) -> Value:
        evaluate = self._eval_by_node.get(type(expr))
        if evaluate is None:
            raise EvaluationError(f"cannot evaluate {getattr(expr, 'text', expr)} on its own")
        return evaluate(expr, t)

    # -- the Context the registry's implementations use ------------------------------------------

    def vector(self, expr: Expr, t: float) -> Samples:
        """``expr`` at ``t`` as an instant vector (``EvaluationError`` if it is not one)."""
        value = self._eval(expr, t)
        if not isinstance(value, list):
            raise EvaluationError(f"expected an instant vector, got {value!r}")
        return value

    def scalar(self, expr: Expr, t: float) -> float:
        """``expr`` at ``t`` as a scalar (``EvaluationError`` if it is not one)."""
        value = self._eval(expr, t)
        if not isinstance(value, Scalar):
            raise EvaluationError(f"expected a scalar, got {value!r}")
        return value.value

    def sample_times(self, expr: Expr, t: float) -> Samples:
        """``timestamp()``'s view: a selector's samples carry their own times, as values;
        anything else is computed at ``t``."""
        inner = expr
        while isinstance(inner, ParenExpr):
            inner = inner.expr
        if isinstance(inner, VectorSelector):
            return self._select_instant(inner, t, times=True)
        return [(labels, t) for labels, _ in self.vector(expr, t)]

    def over_range(self, call: Call, t: float, fn: RangeFunction, keep_name: bool) -> Samples:
        """``fn`` applied to each series of the call's range argument."""
        matrix = _range_arg(call)
        params = [self.scalar(arg, t) for arg in call.args if arg is not matrix]
        if isinstance(matrix, SubqueryExpr):
            return self._over_subquery(call, matrix, t, fn, keep_name, params)
        return self._over_selector(call, matrix, t, fn, keep_name, params)

    def range_has_data(self, call: Call, t: float) -> bool:
        """Whether any series has a point in the call's range argument."""
        matrix = _range_arg(call)
        if isinstance(matrix, SubqueryExpr):
            return bool(self._subquery_series(matrix, t)[2])
        selector = matrix.selector
        end = self._anchor(selector.at, t) - selector.offset
        return any(True for _ in self._select_range(selector, end - matrix.range, end))

    # -- selection ---------------------------------------------------------------------------

    def _anchor(self, at: At, t: float) -> float:
        """The time a selector or subquery with ``@ at`` looks from, evaluated at ``t``."""
        if at is None:
            return t
        if isinstance(at, str):  # start() / end(): the time of the whole query
            query_time: float = getattr(self._query, "time", t)
            return query_time
        return at

    def _select_instant(
        self, selector: VectorSelector, t: float, *, times: bool = False
    ) -> Samples:
        at = selector.at
        reference = (t if at is None else self._anchor(at, t)) - selector.offset
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
            append((series.labels, timestamps[newest] if times else value))
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
        spec = AGGREGATIONS[node.op]
        param: float | str = math.nan
        if node.param is not None:
            if spec.param == "string":
                param = _string_arg(node.param)
            else:
                param = self.scalar(node.param, t)
        vector = self.vector(node.expr, t)
        return spec.evaluate(vector, node.grouping, node.without, param)

    # -- functions ---------------------------------------------------------------------------

    def _call(self, node: Call, t: float) -> Value:
        return FUNCTIONS[node.func].evaluate(self, node, t)

    def _over_selector(
        self,
        node: Call,
        matrix: MatrixSelector,
        t: float,
        function: RangeFunction,
        keep_name: bool,
        params: list[float],
    ) -> Samples:
        selector = matrix.selector
        at = selector.at
        end = (t if at is None else self._anchor(at, t)) - selector.offset
        start = end - matrix.range
        window = _range_window(start, end, matrix.range, t, params)
        out: Samples = []
        append = out.append
        # The selection loop is written out here, not taken from _select_range: this is the
        # hottest loop of rule evaluation and a generator costs a fifth of it.
        # _range_points is inlined too, for the common case: a window the source cut exactly,
        # of plain lists, without NaN.
        for series in self._source.select(selector.matchers, start, end):
            timestamps = series.timestamps
            values = series.values
            if (
                not timestamps
                or timestamps[0] < start
                or timestamps[-1] > end
                or type(values) is not list
            ):
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

    def _over_subquery(
        self,
        node: Call,
        subquery: SubqueryExpr,
        t: float,
        function: RangeFunction,
        keep_name: bool,
        params: list[float],
    ) -> Samples:
        start, end, series = self._subquery_series(subquery, t)
        window = _range_window(start, end, subquery.range, t, params)
        out: Samples = []
        for labels, (timestamps, values) in series.items():
            value = function(timestamps, values, window)
            if value is not None:
                out.append((labels if keep_name else drop_name(labels), value))
        return ensure_unique(out, node.text)

    def _subquery_series(
        self, subquery: SubqueryExpr, t: float
    ) -> tuple[float, float, dict[Labels, tuple[list[float], list[float]]]]:
        """``[start, end]`` and, per label set, the inner expression's values at each step.

        Prometheus counts in whole milliseconds and evaluates at the multiples of the step
        (from the Unix epoch) in ``[start, end]``, so the points do not move with ``t``.
        """
        end = self._anchor(subquery.at, t) - subquery.offset
        start = end - subquery.range
        step_ms = round((subquery.step or self._subquery_step) * 1000)
        start_ms, end_ms = round(start * 1000), round(end * 1000)
        step_time = -(-start_ms // step_ms) * step_ms  # the first multiple at or after start
        series: dict[Labels, tuple[list[float], list[float]]] = {}
        while step_time <= end_ms:
            at = step_time / 1000
            for labels, value in self.vector(subquery.expr, at):
                points = series.get(labels)
                if points is None:
                    points = series[labels] = ([], [])
                points[0].append(at)
                points[1].append(value)
            step_time += step_ms
        return start, end, series


def _one_metric_name(selector: VectorSelector) -> bool:
    return any(m.name == METRIC_NAME and m.op is MatchOp.EQUAL for m in selector.matchers)


def _range_arg(node: Call) -> MatrixSelector | SubqueryExpr:
    for arg in node.args:
        if isinstance(arg, MatrixSelector | SubqueryExpr):
            return arg
    raise EvaluationError(f"{node.func}() needs a range selector such as x[5m]: {node.text}")


def _range_window(
    start: float, end: float, length: float, t: float, params: list[float]
) -> RangeWindow:
    # A range function's scalar arguments, in order: quantile_over_time's q,
    # predict_linear's seconds, holt_winters's two factors.
    first = params[0] if params else math.nan
    second = params[1] if len(params) > 1 else math.nan
    return RangeWindow(start, end, length, t, first, second)


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
