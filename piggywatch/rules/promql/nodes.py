"""The expression tree the evaluator walks: small frozen nodes, already checked against the subset.

Durations are float seconds and matchers are compiled ``LabelMatcher``s, so evaluation never
goes back to the parser's objects. ``text`` holds the parser's rendering of a node, for
error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeAlias

from piggywatch.store.series import LabelMatcher


class Cardinality(StrEnum):
    """How the two sides of a binary operation between vectors match up."""

    ONE_TO_ONE = "one-to-one"
    MANY_TO_ONE = "many-to-one"  # group_left
    ONE_TO_MANY = "one-to-many"  # group_right
    MANY_TO_MANY = "many-to-many"  # and / or / unless


@dataclass(frozen=True, slots=True)
class VectorMatching:
    """``on(labels)`` (``on=True``) or ``ignoring(labels)``, plus ``group_x(include)`` labels."""

    card: Cardinality
    on: bool
    labels: tuple[str, ...]
    include: tuple[str, ...] = ()


DEFAULT_MATCHING = VectorMatching(Cardinality.ONE_TO_ONE, on=False, labels=())
DEFAULT_SET_MATCHING = VectorMatching(Cardinality.MANY_TO_MANY, on=False, labels=())


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    """A number such as ``0.95``, ``1e3`` or ``Inf``."""

    value: float


@dataclass(frozen=True, slots=True)
class StringLiteral:
    """A quoted string (only as a function argument or a whole expression)."""

    value: str


At: TypeAlias = float | Literal["start", "end"] | None
"""An ``@`` modifier: a Unix time, ``start()`` / ``end()`` (in a rule, both are the evaluation
time of the rule, even inside a subquery), or None without one."""


@dataclass(frozen=True, slots=True)
class VectorSelector:
    """``name{matchers} [@ at] [offset d]``; ``matchers`` include the ``__name__`` one if named."""

    matchers: tuple[LabelMatcher, ...]
    offset: float
    text: str
    at: At = None


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    """``selector[range]``: the points in the range before the (offset) evaluation time."""

    selector: VectorSelector
    range: float
    text: str


@dataclass(frozen=True, slots=True)
class SubqueryExpr:
    """``expr[range:step] [@ at] [offset d]``: ``expr`` evaluated at every multiple of ``step``
    (counted from the Unix epoch, as Prometheus aligns them) inside the range."""

    expr: Expr
    range: float
    step: float
    offset: float
    at: At
    text: str


@dataclass(frozen=True, slots=True)
class ParenExpr:
    """``(expr)``, kept so that error messages quote the expression as written."""

    expr: Expr
    text: str


@dataclass(frozen=True, slots=True)
class UnaryExpr:
    """``-expr`` (a unary plus is dropped by the parser)."""

    expr: Expr
    text: str


@dataclass(frozen=True, slots=True)
class BinaryExpr:
    """``lhs op [bool] [on|ignoring(...)] [group_x(...)] rhs``.

    ``matching`` is None when either side is a scalar.
    """

    op: str
    lhs: Expr
    rhs: Expr
    matching: VectorMatching | None
    return_bool: bool
    text: str


@dataclass(frozen=True, slots=True)
class AggregateExpr:
    """``op [by|without (grouping)] ([param,] expr)``."""

    op: str
    expr: Expr
    param: Expr | None
    grouping: tuple[str, ...]
    without: bool
    text: str


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args...)``; a range argument is a ``MatrixSelector`` or a ``SubqueryExpr``
    (parentheses removed)."""

    func: str
    args: tuple[Expr, ...]
    text: str


Expr: TypeAlias = (
    NumberLiteral
    | StringLiteral
    | VectorSelector
    | MatrixSelector
    | SubqueryExpr
    | ParenExpr
    | UnaryExpr
    | BinaryExpr
    | AggregateExpr
    | Call
)
