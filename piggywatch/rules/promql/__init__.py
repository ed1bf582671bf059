"""PromQL as Prometheus 2.x evaluates it: parsed by promql-parser, evaluated against the store."""

from piggywatch.rules.promql.errors import (
    EvaluationError,
    ExpressionSyntaxError,
    PromQLError,
    UnsupportedExpression,
)
from piggywatch.rules.promql.evaluate import DEFAULT_LOOKBACK, Evaluator
from piggywatch.rules.promql.nodes import Expr
from piggywatch.rules.promql.parse import (
    SUPPORTED_AGGREGATIONS,
    SUPPORTED_FUNCTIONS,
    lookback_window,
    names_read_over_time,
    parse_expr,
)
from piggywatch.rules.promql.registry import (
    AGGREGATIONS,
    FUNCTIONS,
    AggregationSpec,
    FunctionSpec,
)
from piggywatch.rules.promql.values import Scalar, String, Vector, VectorSample

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_LOOKBACK",
    "FUNCTIONS",
    "SUPPORTED_AGGREGATIONS",
    "SUPPORTED_FUNCTIONS",
    "AggregationSpec",
    "EvaluationError",
    "Evaluator",
    "Expr",
    "ExpressionSyntaxError",
    "FunctionSpec",
    "PromQLError",
    "Scalar",
    "String",
    "UnsupportedExpression",
    "Vector",
    "VectorSample",
    "lookback_window",
    "names_read_over_time",
    "parse_expr",
]
