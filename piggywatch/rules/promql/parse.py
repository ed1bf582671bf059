"""Parse PromQL with promql-parser, then check it against PiggyWatch's documented subset.

The result is a tree of ``nodes`` the evaluator understands; anything outside the subset is
rejected here, at rule-load time, naming the construct and where it is in the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import promql_parser as pp

from piggywatch.rules.promql.errors import ExpressionSyntaxError, UnsupportedExpression
from piggywatch.rules.promql.nodes import (
    DEFAULT_MATCHING,
    DEFAULT_SET_MATCHING,
    AggregateExpr,
    BinaryExpr,
    Call,
    Cardinality,
    Expr,
    MatrixSelector,
    NumberLiteral,
    ParenExpr,
    StringLiteral,
    UnaryExpr,
    VectorMatching,
    VectorSelector,
)
from piggywatch.store.series import LabelMatcher, MatchOp

SUPPORTED_FUNCTIONS: tuple[str, ...] = (
    "rate", "irate", "increase", "delta", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "last_over_time", "absent",
    "absent_over_time", "changes", "resets", "deriv", "predict_linear", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "sqrt", "ln", "exp", "histogram_quantile", "time", "vector",
    "scalar", "label_replace",
)  # fmt: skip
"""PromQL functions PiggyWatch evaluates (the README lists them)."""

SUPPORTED_AGGREGATIONS: tuple[str, ...] = (
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile",
)  # fmt: skip
"""Aggregation operators PiggyWatch evaluates, each with ``by`` / ``without``."""

ARITHMETIC_OPERATORS: tuple[str, ...] = ("+", "-", "*", "/", "%", "^")
COMPARISON_OPERATORS: tuple[str, ...] = ("==", "!=", ">", "<", ">=", "<=")
SET_OPERATORS: tuple[str, ...] = ("and", "or", "unless")

# Prometheus 2.x functions that newer promql-parser releases no longer know: rejecting them as
# "not supported" (rather than "unknown") tells the user the rule is fine for Prometheus.
_REMOVED_PROMETHEUS_FUNCTIONS = frozenset({"holt_winters"})
_SCALAR_FUNCTIONS = frozenset({"time", "scalar"})
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Quoted strings and comments, blanked out before searching the text for a construct.
_NOT_CODE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`|#[^\n]*')
# Prometheus 2.x requires a unit on every duration; promql-parser would read "5" as 5s.
_UNITLESS_DURATION = re.compile(
    r"\[\s*(\d+(?:\.\d*)?)\s*[]:]|:\s*(\d+(?:\.\d*)?)\s*]|\boffset\s+-?\s*(\d+(?:\.\d*)?)(?![\w.])"
)
_MATCH_OPS = (
    (pp.MatchOp.Equal, MatchOp.EQUAL),
    (pp.MatchOp.NotEqual, MatchOp.NOT_EQUAL),
    (pp.MatchOp.Re, MatchOp.REGEX),
    (pp.MatchOp.NotRe, MatchOp.NOT_REGEX),
)
_CARDINALITIES = (
    (pp.VectorMatchCardinality.OneToOne, Cardinality.ONE_TO_ONE),
    (pp.VectorMatchCardinality.ManyToOne, Cardinality.MANY_TO_ONE),
    (pp.VectorMatchCardinality.OneToMany, Cardinality.ONE_TO_MANY),
    (pp.VectorMatchCardinality.ManyToMany, Cardinality.MANY_TO_MANY),
)

ValueType = Literal["scalar", "vector", "matrix", "string"]

__all__ = [
    "ARITHMETIC_OPERATORS",
    "COMPARISON_OPERATORS",
    "SET_OPERATORS",
    "SUPPORTED_AGGREGATIONS",
    "SUPPORTED_FUNCTIONS",
    "Expr",
    "ExpressionSyntaxError",
    "UnsupportedExpression",
    "ValueType",
    "lookback_window",
    "parse_expr",
    "value_type",
    "walk",
]


def parse_expr(text: str) -> Expr:
    """Parse ``text`` and check it against the subset.

    Raises ``ExpressionSyntaxError`` when it is not valid PromQL and ``UnsupportedExpression``
    when it uses a construct PiggyWatch does not evaluate.
    """
    masked = _NOT_CODE.sub(lambda m: " " * len(m.group(0)), text)
    unitless = _UNITLESS_DURATION.search(masked)
    if unitless is not None:
        number = next(group for group in unitless.groups() if group is not None)
        raise ExpressionSyntaxError(
            f"duration {number!r} needs a unit such as s, m or h "
            f"({_where(masked, unitless.start())}in {text!r})"
        )
    try:
        tree = pp.parse(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the Rust side can raise a PanicException (a BaseException)
        raise _syntax_error(text, masked, str(exc)) from None
    expr = _Converter(text, masked).convert(tree)
    if value_type(expr) == "matrix":
        raise UnsupportedExpression(
            "a range vector as the result of an expression",
            snippet=_snippet(expr),
            hint="wrap it in a function such as rate() or max_over_time()",
        )
    return expr


def value_type(expr: Expr) -> ValueType:
    """The PromQL type an expression evaluates to."""
    match expr:
        case NumberLiteral():
            return "scalar"
        case StringLiteral():
            return "string"
        case MatrixSelector():
            return "matrix"
        case ParenExpr(inner) | UnaryExpr(inner):
            return value_type(inner)
        case BinaryExpr(lhs=lhs, rhs=rhs):
            both_scalar = value_type(lhs) == value_type(rhs) == "scalar"
            return "scalar" if both_scalar else "vector"
        case Call(func=func):
            return "scalar" if func in _SCALAR_FUNCTIONS else "vector"
        case _:
            return "vector"


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of the tree, parents before children."""
    yield expr
    match expr:
        case ParenExpr(inner) | UnaryExpr(inner):
            yield from walk(inner)
        case MatrixSelector(selector):
            yield from walk(selector)
        case BinaryExpr(lhs=lhs, rhs=rhs):
            yield from walk(lhs)
            yield from walk(rhs)
        case AggregateExpr(expr=inner, param=param):
            if param is not None:
                yield from walk(param)
            yield from walk(inner)
        case Call(args=args):
            for arg in args:
                yield from walk(arg)
        case _:
            pass


def lookback_window(expr: Expr | str, *, lookback: float = 300.0) -> float:
    """Seconds of history before the evaluation time that ``expr`` reads.

    The longest ``range + offset`` of its range selectors and ``lookback + offset`` of its
    instant selectors, so the store can keep at least this much.
    """
    tree = parse_expr(expr) if isinstance(expr, str) else expr
    longest = 0.0
    in_range: set[int] = set()
    for node in walk(tree):
        if isinstance(node, MatrixSelector):
            in_range.add(id(node.selector))
            longest = max(longest, node.range + node.selector.offset)
        elif isinstance(node, VectorSelector) and id(node) not in in_range:
            longest = max(longest, lookback + node.offset)
    return longest


class _Converter:
    """Turns promql-parser nodes into ``nodes``, rejecting what the subset leaves out."""

    def __init__(self, text: str, masked: str) -> None:
        self._text = text
        self._masked = masked
        self._handlers: dict[type, Callable[[Any], Expr]] = {
            pp.NumberLiteral: lambda n: NumberLiteral(float(n.val)),
            pp.StringLiteral: lambda n: StringLiteral(str(n.val)),
            pp.VectorSelector: self._selector,
            pp.MatrixSelector: self._matrix,
            pp.ParenExpr: lambda n: ParenExpr(self.convert(n.expr), str(n)),
            pp.UnaryExpr: lambda n: UnaryExpr(self.convert(n.expr), str(n)),
            pp.BinaryExpr: self._binary,
            pp.AggregateExpr: self._aggregate,
            pp.Call: self._call,
            pp.SubqueryExpr: self._subquery,
        }

    def convert(self, node: Any) -> Expr:
        handler = self._handlers.get(type(node))
        if handler is None:
            raise self._unsupported(f"expression {type(node).__name__}", node, None)
        return handler(node)

    def _selector(self, node: Any) -> VectorSelector:
        if node.at is not None:
            raise self._unsupported("@ modifier", node, r"@")
        if getattr(node.matchers, "or_matchers", None):
            raise self._unsupported("'or' between label matchers", node, r"\bor\b")
        matchers: list[LabelMatcher] = []
        if node.name:
            matchers.append(LabelMatcher.of("__name__", MatchOp.EQUAL, str(node.name)))
        for matcher in node.matchers.matchers:
            op = next(ours for theirs, ours in _MATCH_OPS if matcher.op == theirs)
            try:
                matchers.append(LabelMatcher.of(str(matcher.name), op, str(matcher.value)))
            except re.error as exc:
                raise ExpressionSyntaxError(
                    f"invalid regular expression {matcher.value!r} for label {matcher.name!r} "
                    f"({exc}) in {self._text!r}"
                ) from None
        offset = node.offset.total_seconds() if node.offset is not None else 0.0
        return VectorSelector(tuple(matchers), offset, str(node))

    def _matrix(self, node: Any) -> MatrixSelector:
        selector = self._selector(node.vector_selector)
        return MatrixSelector(selector, node.range.total_seconds(), str(node))

    def _subquery(self, node: Any) -> Expr:
        raise self._unsupported("subqueries", node, r"\[[^]\[]*:[^]\[]*]", plural=True)

    def _binary(self, node: Any) -> BinaryExpr:
        op = str(node.op)
        if op not in ARITHMETIC_OPERATORS + COMPARISON_OPERATORS + SET_OPERATORS:
            raise self._unsupported(f"operator '{op}'", node, rf"\b{re.escape(op)}\b")
        modifier = node.modifier
        fill = getattr(modifier, "fill_values", None)
        if fill is not None and (fill.lhs is not None or fill.rhs is not None):
            raise self._unsupported("fill modifiers", node, r"\bfill\w*\s*\(", plural=True)
        lhs, rhs = self.convert(node.lhs), self.convert(node.rhs)
        matching: VectorMatching | None = None
        if value_type(lhs) == "vector" and value_type(rhs) == "vector":
            matching = self._matching(op, modifier)
        return_bool = bool(modifier.return_bool) if modifier is not None else False
        return BinaryExpr(op, lhs, rhs, matching, return_bool, str(node))

    @staticmethod
    def _matching(op: str, modifier: Any) -> VectorMatching:
        default = DEFAULT_SET_MATCHING if op in SET_OPERATORS else DEFAULT_MATCHING
        if modifier is None:
            return default
        card = next(ours for theirs, ours in _CARDINALITIES if modifier.card == theirs)
        on, labels = default.on, default.labels
        if modifier.matching is not None:
            on = modifier.matching.type == pp.LabelModifierType.Include
            labels = tuple(str(label) for label in modifier.matching.labels)
        include = tuple(str(label) for label in (modifier.group_labels or ()))
        return VectorMatching(card, on, labels, include)

    def _aggregate(self, node: Any) -> AggregateExpr:
        op = str(node.op)
        if op not in SUPPORTED_AGGREGATIONS:
            raise self._unsupported(f"aggregation '{op}'", node, rf"\b{op}\b")
        modifier = node.modifier
        grouping: tuple[str, ...] = ()
        without = False
        if modifier is not None:
            grouping = tuple(str(label) for label in modifier.labels)
            without = modifier.type == pp.AggModifierType.Without
        param = self.convert(node.param) if node.param is not None else None
        return AggregateExpr(op, self.convert(node.expr), param, grouping, without, str(node))

    def _call(self, node: Any) -> Call:
        name = str(node.func.name)
        if name not in SUPPORTED_FUNCTIONS:
            raise self._unsupported(f"function '{name}'", node, rf"\b{name}\s*\(")
        args = tuple(_unwrap_literal_arg(self.convert(arg)) for arg in node.args)
        if name == "label_replace":
            _check_label_replace(args, self._text)
        return Call(name, args, str(node))

    def _unsupported(
        self, construct: str, node: Any, pattern: str | None, *, plural: bool = False
    ) -> UnsupportedExpression:
        line = column = None
        found = re.search(pattern, self._masked) if pattern is not None else None
        if found is not None:
            line, column = _line_column(self._masked, found.start())
        return UnsupportedExpression(
            construct, snippet=str(node), line=line, column=column, plural=plural
        )


def _unwrap_literal_arg(arg: Expr) -> Expr:
    """``rate((x[5m]))`` and ``label_replace(v, ("a"), ...)`` mean the same without parens."""
    inner = arg
    while isinstance(inner, ParenExpr):
        inner = inner.expr
    return inner if isinstance(inner, MatrixSelector | StringLiteral | NumberLiteral) else arg


def _check_label_replace(args: tuple[Expr, ...], text: str) -> None:
    # Prometheus only finds these at evaluation time; for a rule file, load time is kinder.
    dst, regex = args[1], args[4]
    if isinstance(dst, StringLiteral) and not _LABEL_NAME.fullmatch(dst.value):
        raise ExpressionSyntaxError(
            f"invalid destination label name in label_replace(): {dst.value!r} in {text!r}"
        )
    if isinstance(regex, StringLiteral):
        try:
            re.compile(regex.value)
        except re.error as exc:
            raise ExpressionSyntaxError(
                f"invalid regular expression in label_replace(): {regex.value!r} ({exc}) "
                f"in {text!r}"
            ) from None


def _syntax_error(text: str, masked: str, message: str) -> Exception:
    unknown = re.fullmatch(r"unknown function with name '(\w+)'", message)
    if unknown is not None:
        name = unknown.group(1)
        found = re.search(rf"\b{name}\s*\(", masked)
        line, column = _line_column(masked, found.start()) if found else (None, None)
        if name in _REMOVED_PROMETHEUS_FUNCTIONS:
            return UnsupportedExpression(
                f"function '{name}'", snippet=text, line=line, column=column
            )
        where = f"line {line}, column {column}: " if line is not None else ""
        return ExpressionSyntaxError(f"unknown function '{name}' ({where}{text})")
    return ExpressionSyntaxError(f"cannot parse expression {text!r}: {message}")


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _where(text: str, offset: int) -> str:
    line, column = _line_column(text, offset)
    return f"line {line}, column {column}, "


def _snippet(expr: Expr) -> str:
    return getattr(expr, "text", repr(expr))
