"""Parse PromQL with promql-parser, then check it against PiggyWatch's documented subset.

The result is a tree of ``nodes`` the evaluator understands; anything outside the subset is
rejected here, at rule-load time, naming the construct and where it is in the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import promql_parser as pp

from piggywatch.rules.promql.errors import ExpressionSyntaxError, UnsupportedExpression
from piggywatch.rules.promql.nodes import (
    DEFAULT_MATCHING,
    DEFAULT_SET_MATCHING,
    AggregateExpr,
    At,
    BinaryExpr,
    Call,
    Cardinality,
    Expr,
    MatrixSelector,
    NumberLiteral,
    ParenExpr,
    StringLiteral,
    SubqueryExpr,
    UnaryExpr,
    VectorMatching,
    VectorSelector,
)
from piggywatch.rules.promql.registry import AGGREGATIONS, FUNCTIONS, ValueType
from piggywatch.store.series import LabelMatcher, MatchOp

SUPPORTED_FUNCTIONS: tuple[str, ...] = tuple(FUNCTIONS)
"""PromQL functions PiggyWatch evaluates (from the registry; the README lists them)."""

SUPPORTED_AGGREGATIONS: tuple[str, ...] = tuple(AGGREGATIONS)
"""Aggregation operators PiggyWatch evaluates, each with ``by`` / ``without``."""

ARITHMETIC_OPERATORS: tuple[str, ...] = ("+", "-", "*", "/", "%", "^", "atan2")
COMPARISON_OPERATORS: tuple[str, ...] = ("==", "!=", ">", "<", ">=", "<=")
SET_OPERATORS: tuple[str, ...] = ("and", "or", "unless")

_PARSER_TYPES = {
    "scalar": pp.ValueType.Scalar,
    "vector": pp.ValueType.Vector,
    "matrix": pp.ValueType.Matrix,
    "string": pp.ValueType.String,
}
# Prometheus 2.x functions newer promql-parser releases have dropped (holt_winters is
# double_exponential_smoothing in Prometheus 3): taught to the parser with 2.x's signature.
pp.register_extra_functions([
    pp.Function(spec.name, [_PARSER_TYPES[arg] for arg in spec.args],
                _PARSER_TYPES[spec.returns], spec.optional)
    for spec in FUNCTIONS.values() if not spec.parser_knows
])  # fmt: skip
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
        case MatrixSelector() | SubqueryExpr():
            return "matrix"
        case ParenExpr(inner) | UnaryExpr(inner):
            return value_type(inner)
        case BinaryExpr(lhs=lhs, rhs=rhs):
            both_scalar = value_type(lhs) == value_type(rhs) == "scalar"
            return "scalar" if both_scalar else "vector"
        case Call(func=func):
            return FUNCTIONS[func].returns
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
        case SubqueryExpr(expr=inner):
            yield from walk(inner)
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
    instant selectors (a subquery adds its range and offset to what its inside reads), so the
    store can keep at least this much. A selector pinned with ``@ <time>`` reads around that
    time instead, which no length of history before the evaluation time covers; it counts
    as if evaluated now.
    """
    tree = parse_expr(expr) if isinstance(expr, str) else expr
    return _reach(tree, lookback)


def names_read_over_time(expr: Expr | str) -> frozenset[str] | None:
    """The metric names whose past points ``expr`` reads, or None when any name may be.

    An instant selector without ``offset`` or ``@`` reads only each series' newest point at
    the evaluation time; every other selector reads the past: a range selector, every selector
    inside a subquery, one with an offset or ``@``. None when such a selector names no metric
    (``{__name__=~"pg_.+"}[5m]``, ``{job="x"} offset 1h``).
    """
    tree = parse_expr(expr) if isinstance(expr, str) else expr
    past: list[VectorSelector] = []
    for node in walk(tree):
        match node:
            case MatrixSelector(selector=selector):
                past.append(selector)
            case SubqueryExpr(expr=inner):
                past += [n for n in walk(inner) if isinstance(n, VectorSelector)]
            case VectorSelector(offset=offset, at=at) if offset or at is not None:
                past.append(node)
    names: set[str] = set()
    for selector in past:
        name = next((m.value for m in selector.matchers
                     if m.name == "__name__" and m.op is MatchOp.EQUAL), None)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)


def _reach(expr: Expr, lookback: float) -> float:
    match expr:
        case VectorSelector(offset=offset):
            return lookback + offset
        case MatrixSelector(selector=selector, range=length):
            return length + selector.offset
        case SubqueryExpr(expr=inner, range=length, offset=offset):
            return length + offset + _reach(inner, lookback)
        case ParenExpr(inner) | UnaryExpr(inner):
            return _reach(inner, lookback)
        case BinaryExpr(lhs=lhs, rhs=rhs):
            return max(_reach(lhs, lookback), _reach(rhs, lookback))
        case AggregateExpr(expr=inner, param=param):
            return max(_reach(inner, lookback), _reach(param, lookback) if param else 0.0)
        case Call(args=args):
            return max((_reach(arg, lookback) for arg in args), default=0.0)
        case _:
            return 0.0


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
        return VectorSelector(tuple(matchers), offset, str(node), _at(node.at))

    def _matrix(self, node: Any) -> MatrixSelector:
        selector = self._selector(node.vector_selector)
        return MatrixSelector(selector, node.range.total_seconds(), str(node))

    def _subquery(self, node: Any) -> SubqueryExpr:
        step = node.step.total_seconds() if node.step is not None else 0.0
        offset = node.offset.total_seconds() if node.offset is not None else 0.0
        return SubqueryExpr(
            self.convert(node.expr), node.range.total_seconds(), step, offset, _at(node.at),
            str(node),
        )  # fmt: skip

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
        if param is not None and AGGREGATIONS[op].param == "string":
            param = _unwrap_literal_arg(param)
            if not isinstance(param, StringLiteral):
                raise ExpressionSyntaxError(
                    f"{op}() needs a string literal as its first argument in {self._text!r}"
                )
        return AggregateExpr(op, self.convert(node.expr), param, grouping, without, str(node))

    def _call(self, node: Any) -> Call:
        name = str(node.func.name)
        if name not in SUPPORTED_FUNCTIONS:
            raise self._unsupported(f"function '{name}'", node, rf"\b{name}\s*\(")
        args = tuple(_unwrap_literal_arg(self.convert(arg)) for arg in node.args)
        if name == "label_replace":
            _check_label_replace(args, self._text)
        if name == "label_join":
            _check_label_join(args, self._text)
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
    literal = MatrixSelector | SubqueryExpr | StringLiteral | NumberLiteral
    return inner if isinstance(inner, literal) else arg


def _at(modifier: Any) -> At:
    if modifier is None:
        return None
    if modifier.type == pp.AtModifierType.Start:
        return "start"
    if modifier.type == pp.AtModifierType.End:
        return "end"
    return float(modifier.at.timestamp())


def _check_label_join(args: tuple[Expr, ...], text: str) -> None:
    # As label_replace: what Prometheus finds at evaluation time, found at load time.
    for i, arg in enumerate(args[1:], start=1):
        if i == 2 or not isinstance(arg, StringLiteral):
            continue  # the separator may be anything
        if not _LABEL_NAME.fullmatch(arg.value):
            which = "destination" if i == 1 else "source"
            raise ExpressionSyntaxError(
                f"invalid {which} label name in label_join(): {arg.value!r} in {text!r}"
            )


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
