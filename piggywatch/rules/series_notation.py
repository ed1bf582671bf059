"""The input-series notation of rule unit tests, read exactly as ``promtool test rules`` does.

A series is written ``name{label="value"}`` and its values as space-separated items:
``7`` one value, ``1+2x3`` four values starting at 1 stepping by 2 (``1 3 5 7``), ``5-1x2``
counting down, ``4x2`` the value repeated (three times: ``n`` repetitions after the first),
``_`` no sample, ``_x3`` three missing samples, ``stale`` a staleness marker, and ``Inf``,
``NaN`` and scientific notation (``1.5e3``) as numbers. Steps are added one at a time,
as promtool does, so ``0.1+0.1x2`` ends at ``0.30000000000000004``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import promql_parser

from piggywatch.store.samples import Labels
from piggywatch.store.series import STALE_NAN

_DIGITS = "0123456789"
_SPACES = " \t\n\r"
# PromQL keywords (besides inf and nan) that the lexer turns into their own tokens.
_KEYWORDS = frozenset({
    "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "start", "end", "sum", "avg", "count", "min", "max",
    "group", "stddev", "stdvar", "topk", "bottomk", "count_values", "quantile",
})


_MATCH_OPS = {"NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


class NotationError(ValueError):
    """Input-series text that promtool would refuse; ``column`` is 1-based."""

    def __init__(self, reason: str, column: int | None = None) -> None:
        self.reason = reason
        self.column = column
        super().__init__(f"column {column}: {reason}" if column else reason)


@dataclass(frozen=True)
class _Token:
    kind: str  # space, add, sub, times, blank, number, identifier, other
    text: str
    column: int


def _is_alpha(ch: str) -> bool:
    return ch == "_" or "a" <= ch <= "z" or "A" <= ch <= "Z"


def _is_alnum(ch: str) -> bool:
    return _is_alpha(ch) or ch in _DIGITS


def _tokens(text: str) -> Iterator[_Token]:
    """Prometheus's lexer in series-description mode, restricted to the value part."""
    pos = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        start = pos
        if ch in _SPACES:
            while pos < n and text[pos] in _SPACES:
                pos += 1
            yield _Token("space", text[start:pos], start + 1)
            continue
        single = {"+": "add", "-": "sub", "x": "times", "_": "blank"}.get(ch)
        if single is not None:
            yield _Token(single, ch, start + 1)
            pos += 1
            continue
        if ch in _DIGITS or (ch == "." and pos + 1 < n and text[pos + 1] in _DIGITS):
            pos = _scan_number(text, pos)
            yield _Token("number", text[start:pos], start + 1)
            continue
        if _is_alpha(ch):
            while pos < n and (_is_alnum(text[pos]) or text[pos] == ":"):
                pos += 1
            word = text[start:pos]
            kind = "number" if word.lower() in ("inf", "nan") else "identifier"
            if word.lower() in _KEYWORDS or ":" in word:
                kind = "other"
            yield _Token(kind, word, start + 1)
            continue
        raise NotationError(f"unexpected character {ch!r}", start + 1)


def _scan_number(text: str, pos: int) -> int:
    start = pos
    n = len(text)

    def run(chars: str) -> None:
        nonlocal pos
        while pos < n and text[pos] in chars:
            pos += 1

    run(_DIGITS)
    if pos < n and text[pos] == ".":
        pos += 1
        run(_DIGITS)
    if pos < n and text[pos] in "eE":
        pos += 1
        if pos < n and text[pos] in "+-":
            pos += 1
        run(_DIGITS)
    # Hexadecimal is refused in series values: "0x10" is 0 repeated 10 times.
    if pos < n and text[pos] != "x" and _is_alnum(text[pos]):
        raise NotationError(f"bad number syntax {text[start:pos + 1]!r}", start + 1)
    return pos


def _number(token: _Token) -> float:
    try:
        return float(token.text)
    except ValueError:
        raise NotationError(f"bad number {token.text!r}", token.column) from None


def _count(token: _Token | None) -> int:
    if token is None or token.kind != "number" or not token.text.isdigit():
        shown = "end of input" if token is None else repr(token.text)
        column = None if token is None else token.column
        raise NotationError(f"the repetition after 'x' must be a whole number, not {shown}",
                            column)
    return int(token.text)


def expand_values(text: str) -> list[float | None]:
    """The values of one input series, ``None`` where a sample is missing (``_``)."""
    tokens = list(_tokens(text))
    out: list[float | None] = []
    i = 0

    def at(k: int) -> _Token | None:
        return tokens[k] if k < len(tokens) else None

    def unexpected(token: _Token | None, expected: str) -> NotationError:
        if token is None:
            return NotationError(f"unexpected end of input, expected {expected}")
        shown = "a space" if token.kind == "space" else repr(token.text)
        return NotationError(f"unexpected {shown}, expected {expected}", token.column)

    while i < len(tokens):
        token = tokens[i]
        if token.kind == "space":
            i += 1
            continue
        if i > 0 and tokens[i - 1].kind != "space":
            raise unexpected(token, "a space between values")
        if token.kind == "blank":
            if (nxt := at(i + 1)) is not None and nxt.kind == "times":
                out.extend([None] * _count(at(i + 2)))
                i += 3
            else:
                out.append(None)
                i += 1
            continue
        first, i = _series_value(tokens, i)
        nxt = at(i)
        if nxt is None or nxt.kind == "space":
            out.append(first)
            continue
        if nxt.kind == "times":
            out.extend([first] * (_count(at(i + 1)) + 1))
            i += 2
            continue
        if nxt.kind not in ("add", "sub"):
            raise unexpected(nxt, "a space, 'x', '+' or '-'")
        step_token = at(i + 1)
        if step_token is None or step_token.kind != "number":
            raise unexpected(step_token, "a number after the sign")
        step = _number(step_token) * (-1.0 if nxt.kind == "sub" else 1.0)
        times = at(i + 2)
        if times is None or times.kind != "times":
            raise unexpected(times, "'x' and a repetition count")
        value = first
        for _ in range(_count(at(i + 3)) + 1):
            out.append(value)
            # Added one step at a time, as promtool does (not first + k * step).
            value += step
        i += 4
    return out


def _series_value(tokens: list[_Token], i: int) -> tuple[float, int]:
    token = tokens[i]
    if token.kind == "identifier":
        if token.text != "stale":
            raise NotationError(f"unexpected {token.text!r}, expected a number or \"stale\"",
                                token.column)
        return STALE_NAN, i + 1
    sign = 1.0
    if token.kind in ("add", "sub"):
        sign = -1.0 if token.kind == "sub" else 1.0
        i += 1
        token = tokens[i] if i < len(tokens) else _Token("end", "", 0)
    if token.kind != "number":
        shown = "end of input" if token.kind == "end" else repr(token.text)
        raise NotationError(f"unexpected {shown}, expected a number or \"stale\"",
                            token.column or None)
    return sign * _number(token), i + 1


def parse_series(text: str) -> Labels:
    """``name{l="v"}`` as sorted labels including ``__name__``; only ``=`` matchers."""
    stripped = text.strip()
    if stripped in ("", "{}"):
        return ()
    try:
        parsed = promql_parser.parse(stripped)
    except (ValueError, TypeError) as exc:
        raise NotationError(f"not a series {text!r}: {exc}") from None
    if not isinstance(parsed, promql_parser.VectorSelector) or parsed.offset is not None \
            or parsed.at is not None:
        raise NotationError(f"not a series {text!r}: write name{{label=\"value\", ...}}")
    labels: dict[str, str] = {}
    if parsed.name:
        labels["__name__"] = parsed.name
    for matcher in parsed.matchers.matchers:
        if matcher.op != promql_parser.MatchOp.Equal:
            shown = _MATCH_OPS.get(str(matcher.op).rsplit(".", 1)[-1], "?")
            raise NotationError(f"series {text!r}: only label=\"value\" is allowed, "
                                f"not {matcher.name}{shown}...")
        if matcher.name in labels and labels[matcher.name] != matcher.value:
            raise NotationError(f"series {text!r}: label {matcher.name} is given twice")
        labels[matcher.name] = matcher.value
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))
