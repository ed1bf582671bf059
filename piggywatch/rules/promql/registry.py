"""Every PromQL function and aggregation PiggyWatch evaluates: one table each.

The parser's supported lists, the type of a call and the evaluator's dispatch all come from
here, so adding a function is one ``FunctionSpec`` entry plus its implementation (a range
function in ``range_functions``, a per-value one in ``floats`` / ``dates``, anything else in
``functions``), its tests and a word in the README. The argument types are Prometheus 2.x's;
promql-parser checks arity and types at parse time, and ``tests/test_promql_registry.py``
checks that it agrees with this table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from piggywatch.rules.promql import aggregations, dates, floats, functions, range_functions
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.nodes import Call, Expr, StringLiteral
from piggywatch.rules.promql.range_functions import RangeFunction
from piggywatch.rules.promql.values import Samples, Scalar, Value

ValueType: TypeAlias = Literal["scalar", "vector", "matrix", "string"]


class Context(Protocol):
    """What an implementation may ask of the evaluator (``Evaluator`` provides it)."""

    def vector(self, expr: Expr, t: float) -> Samples:
        """``expr`` evaluated at ``t`` as an instant vector."""
        ...

    def scalar(self, expr: Expr, t: float) -> float:
        """``expr`` evaluated at ``t`` as a scalar."""
        ...

    def sample_times(self, expr: Expr, t: float) -> Samples:
        """``expr``'s samples with their timestamps as values (``t`` unless a selector)."""
        ...

    def over_range(self, call: Call, t: float, fn: RangeFunction, keep_name: bool) -> Samples:
        """``fn`` applied to every series of the call's range argument (selector or subquery)."""
        ...

    def range_has_data(self, call: Call, t: float) -> bool:
        """Whether any series has a point in the call's range argument."""
        ...


Implementation: TypeAlias = Callable[[Context, Call, float], Value]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One function: Prometheus 2.x's signature and PiggyWatch's implementation.

    ``optional`` trailing arguments may be left out (-1: the last may repeat, as in
    ``label_join``). ``parser_knows`` is False for functions promql-parser has dropped
    (``holt_winters``, renamed in Prometheus 3): they are registered with it at import.
    """

    name: str
    args: tuple[ValueType, ...]
    returns: ValueType
    evaluate: Implementation
    optional: int = 0
    parser_knows: bool = True


@dataclass(frozen=True, slots=True)
class AggregationSpec:
    """One aggregation operator: its parameter's type (if it takes one) and implementation."""

    name: str
    param: ValueType | None
    evaluate: aggregations.Aggregation


# -- adapters from the shapes of implementation to Implementation --------------------------


def _per_value(fn: Callable[[float], float]) -> Implementation:
    def evaluate(ctx: Context, call: Call, t: float) -> Value:
        return functions.elementwise(fn, ctx.vector(call.args[0], t), call.text)

    return evaluate


def _date(fn: Callable[[float], float]) -> Implementation:
    def evaluate(ctx: Context, call: Call, t: float) -> Value:
        vector: Samples = ctx.vector(call.args[0], t) if call.args else [((), t)]
        return functions.elementwise(fn, vector, call.text)

    return evaluate


def _over_range(fn: RangeFunction, *, keep_name: bool = False) -> Implementation:
    def evaluate(ctx: Context, call: Call, t: float) -> Value:
        return ctx.over_range(call, t, fn, keep_name)

    return evaluate


def _string(arg: Expr) -> str:
    if not isinstance(arg, StringLiteral):
        raise EvaluationError(f"expected a string literal, got {getattr(arg, 'text', arg)!r}")
    return arg.value


# -- implementations that need more than one shape -------------------------------------------


def _absent(ctx: Context, call: Call, t: float) -> Value:
    if ctx.vector(call.args[0], t):
        return []
    return [(functions.absent_labels(call.args[0]), 1.0)]


def _absent_over_time(ctx: Context, call: Call, t: float) -> Value:
    if ctx.range_has_data(call, t):
        return []
    return [(functions.absent_labels(call.args[0]), 1.0)]


def _clamp(ctx: Context, call: Call, t: float) -> Value:
    vector = ctx.vector(call.args[0], t)
    low, high = ctx.scalar(call.args[1], t), ctx.scalar(call.args[2], t)
    return functions.clamp(vector, low, high, call.text)


def _clamp_min(ctx: Context, call: Call, t: float) -> Value:
    bound = ctx.scalar(call.args[1], t)
    return functions.clamp_min(ctx.vector(call.args[0], t), bound, call.text)


def _clamp_max(ctx: Context, call: Call, t: float) -> Value:
    bound = ctx.scalar(call.args[1], t)
    return functions.clamp_max(ctx.vector(call.args[0], t), bound, call.text)


def _round(ctx: Context, call: Call, t: float) -> Value:
    to_nearest = ctx.scalar(call.args[1], t) if len(call.args) > 1 else 1.0
    return functions.round_to(ctx.vector(call.args[0], t), to_nearest, call.text)


def _histogram_quantile(ctx: Context, call: Call, t: float) -> Value:
    q = ctx.scalar(call.args[0], t)
    return functions.histogram_quantile(q, ctx.vector(call.args[1], t), call.text)


def _native_histogram_only(ctx: Context, call: Call, t: float) -> Value:
    # These read native histograms, which PiggyWatch never stores: like Prometheus given
    # only float samples, they return nothing (the arguments are still evaluated).
    *bounds, histograms = call.args
    for bound in bounds:
        ctx.scalar(bound, t)
    ctx.vector(histograms, t)
    return []


def _label_replace(ctx: Context, call: Call, t: float) -> Value:
    dst, replacement, src, regex = (_string(arg) for arg in call.args[1:5])
    vector = ctx.vector(call.args[0], t)
    return functions.label_replace(vector, dst, replacement, src, regex, call.text)


def _label_join(ctx: Context, call: Call, t: float) -> Value:
    dst, separator, *sources = (_string(arg) for arg in call.args[1:])
    return functions.label_join(ctx.vector(call.args[0], t), dst, separator, sources, call.text)


def _sort(descending: bool) -> Implementation:
    def evaluate(ctx: Context, call: Call, t: float) -> Value:
        return functions.sort(ctx.vector(call.args[0], t), descending)

    return evaluate


def _timestamp(ctx: Context, call: Call, t: float) -> Value:
    return functions.elementwise(float, ctx.sample_times(call.args[0], t), call.text)


def _to_scalar(ctx: Context, call: Call, t: float) -> Value:
    vector = ctx.vector(call.args[0], t)
    return Scalar(vector[0][1] if len(vector) == 1 else math.nan)


def _to_vector(ctx: Context, call: Call, t: float) -> Value:
    return [((), ctx.scalar(call.args[0], t))]


# -- the tables ----------------------------------------------------------------------------

_V: tuple[ValueType, ...] = ("vector",)
_M: tuple[ValueType, ...] = ("matrix",)
_VS: tuple[ValueType, ...] = ("vector", "scalar")
_MS: tuple[ValueType, ...] = ("matrix", "scalar")
_SV: tuple[ValueType, ...] = ("scalar", "vector")
_R = range_functions


def _math(name: str, fn: Callable[[float], float]) -> FunctionSpec:
    return FunctionSpec(name, _V, "vector", _per_value(fn))


def _range(name: str, fn: RangeFunction, args: tuple[ValueType, ...] = _M) -> FunctionSpec:
    return FunctionSpec(name, args, "vector", _over_range(fn))


_FUNCTION_LIST: tuple[FunctionSpec, ...] = (
    # counters and gauges over a range
    _range("rate", _R.rate),
    _range("irate", _R.irate),
    _range("increase", _R.increase),
    _range("delta", _R.delta),
    _range("idelta", _R.idelta),
    _range("deriv", _R.deriv),
    _range("predict_linear", _R.predict_linear, _MS),
    FunctionSpec(
        "holt_winters",
        ("matrix", "scalar", "scalar"),
        "vector",
        _over_range(_R.holt_winters),
        parser_knows=False,
    ),
    _range("changes", _R.changes),
    _range("resets", _R.resets),
    # aggregation over time
    _range("avg_over_time", _R.avg_over_time),
    _range("min_over_time", _R.min_over_time),
    _range("max_over_time", _R.max_over_time),
    _range("sum_over_time", _R.sum_over_time),
    _range("count_over_time", _R.count_over_time),
    _range("quantile_over_time", _R.quantile_over_time, ("scalar", "matrix")),
    _range("stddev_over_time", _R.stddev_over_time),
    _range("stdvar_over_time", _R.stdvar_over_time),
    _range("mad_over_time", _R.mad_over_time),
    _range("present_over_time", _R.present_over_time),
    # last_over_time acts like a selector, so it alone keeps the metric name.
    FunctionSpec("last_over_time", _M, "vector", _over_range(_R.last_over_time, keep_name=True)),
    FunctionSpec("absent_over_time", _M, "vector", _absent_over_time),
    FunctionSpec("absent", _V, "vector", _absent),
    # math, value by value
    _math("abs", abs),
    _math("ceil", floats.ceil),
    _math("floor", floats.floor),
    _math("sqrt", floats.sqrt),
    _math("exp", floats.exp),
    _math("ln", floats.ln),
    _math("log2", floats.log2),
    _math("log10", floats.log10),
    _math("sgn", floats.sgn),
    _math("sin", floats.sin),
    _math("cos", floats.cos),
    _math("tan", floats.tan),
    _math("asin", floats.asin),
    _math("acos", floats.acos),
    _math("atan", floats.atan),
    _math("sinh", floats.sinh),
    _math("cosh", floats.cosh),
    _math("tanh", floats.tanh),
    _math("asinh", floats.asinh),
    _math("acosh", floats.acosh),
    _math("atanh", floats.atanh),
    _math("deg", floats.deg),
    _math("rad", floats.rad),
    FunctionSpec("pi", (), "scalar", lambda ctx, call, t: Scalar(math.pi)),
    FunctionSpec("round", _VS, "vector", _round, optional=1),
    FunctionSpec("clamp", ("vector", "scalar", "scalar"), "vector", _clamp),
    FunctionSpec("clamp_min", _VS, "vector", _clamp_min),
    FunctionSpec("clamp_max", _VS, "vector", _clamp_max),
    # time and dates (UTC)
    FunctionSpec("time", (), "scalar", lambda ctx, call, t: Scalar(t)),
    FunctionSpec("timestamp", _V, "vector", _timestamp),
    *(
        FunctionSpec(name, _V, "vector", _date(fn), optional=1)
        for name, fn in dates.DATE_FUNCTIONS.items()
    ),
    # histograms: classic buckets; native ones are never stored here
    FunctionSpec("histogram_quantile", _SV, "vector", _histogram_quantile),
    FunctionSpec("histogram_count", _V, "vector", _native_histogram_only),
    FunctionSpec("histogram_sum", _V, "vector", _native_histogram_only),
    FunctionSpec(
        "histogram_fraction", ("scalar", "scalar", "vector"), "vector", _native_histogram_only
    ),
    # labels, types and order
    FunctionSpec(
        "label_replace",
        ("vector", "string", "string", "string", "string"),
        "vector",
        _label_replace,
    ),
    FunctionSpec(
        "label_join", ("vector", "string", "string", "string"), "vector", _label_join, optional=-1
    ),
    FunctionSpec("vector", ("scalar",), "vector", _to_vector),
    FunctionSpec("scalar", _V, "scalar", _to_scalar),
    FunctionSpec("sort", _V, "vector", _sort(descending=False)),
    FunctionSpec("sort_desc", _V, "vector", _sort(descending=True)),
)

FUNCTIONS: dict[str, FunctionSpec] = {spec.name: spec for spec in _FUNCTION_LIST}
"""PromQL functions PiggyWatch evaluates, by name (the README lists them)."""

AGGREGATIONS: dict[str, AggregationSpec] = {
    spec.name: spec
    for spec in (
        AggregationSpec("sum", None, aggregations.sum_),
        AggregationSpec("avg", None, aggregations.avg),
        AggregationSpec("min", None, aggregations.min_),
        AggregationSpec("max", None, aggregations.max_),
        AggregationSpec("count", None, aggregations.count),
        AggregationSpec("group", None, aggregations.group),
        AggregationSpec("stddev", None, aggregations.stddev),
        AggregationSpec("stdvar", None, aggregations.stdvar),
        AggregationSpec("count_values", "string", aggregations.count_values),
        AggregationSpec("topk", "scalar", aggregations.topk),
        AggregationSpec("bottomk", "scalar", aggregations.bottomk),
        AggregationSpec("quantile", "scalar", aggregations.quantile),
    )
}
"""Aggregation operators PiggyWatch evaluates, each with ``by`` / ``without``."""
