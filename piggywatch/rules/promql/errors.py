"""What can go wrong with an expression: it does not parse, is outside the subset, or fails."""

from __future__ import annotations


class PromQLError(ValueError):
    """Base class of every error this package raises about an expression."""


class ExpressionSyntaxError(PromQLError):
    """The text is not valid PromQL (or a regex or label name inside it is invalid)."""


class UnsupportedExpression(PromQLError):
    """Valid PromQL that uses a construct outside PiggyWatch's documented subset.

    ``construct`` names it in the user's words ("function 'holt_winters'"); ``line`` and
    ``column`` (1-based) point at it in the expression text when it could be found there;
    ``snippet`` is the offending sub-expression.
    """

    def __init__(
        self,
        construct: str,
        *,
        snippet: str,
        line: int | None = None,
        column: int | None = None,
        hint: str = "",
        plural: bool = False,
    ) -> None:
        self.construct = construct
        self.snippet = snippet
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        verb = "are" if plural else "is"
        message = f"{construct} {verb} not supported ({where}{snippet})"
        super().__init__(f"{message}; {hint}" if hint else message)


class EvaluationError(PromQLError):
    """Evaluation failed the way Prometheus fails it (for example many-to-many matching)."""
