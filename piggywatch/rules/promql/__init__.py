"""A documented PromQL subset, parsed by promql-parser and evaluated against the store."""

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
    parse_expr,
)
from piggywatch.rules.promql.values import Scalar, String, Vector, VectorSample

__all__ = [
    "DEFAULT_LOOKBACK",
    "SUPPORTED_AGGREGATIONS",
    "SUPPORTED_FUNCTIONS",
    "EvaluationError",
    "Evaluator",
    "Expr",
    "ExpressionSyntaxError",
    "PromQLError",
    "Scalar",
    "String",
    "UnsupportedExpression",
    "Vector",
    "VectorSample",
    "lookback_window",
    "parse_expr",
]
