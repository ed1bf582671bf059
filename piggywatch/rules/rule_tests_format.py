"""How ``promtool test rules`` writes durations, numbers and label sets, so reports match."""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

_UNITS_MS = (("y", 365 * 86_400_000), ("w", 7 * 86_400_000), ("d", 86_400_000),
             ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
               "\v": r"\v", "\\": r"\\", '"': r"\""}


def format_duration(seconds: float) -> str:
    """``90`` → ``1m30s``, the way Prometheus prints a duration (``0s`` for zero)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, mult in _UNITS_MS:
        # Years and weeks only when exact: 90d reads better than 12w6d.
        if unit in ("y", "w") and ms % mult:
            continue
        if ms >= mult:
            out += f"{ms // mult}{unit}"
            ms %= mult
    return out


def format_go_duration(seconds: float) -> str:
    """``300`` → ``5m0s``, the way Go prints a ``time.Duration`` (used for rule errors)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def format_value(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'E', -1, 64)``: ``3E+00``, ``1.5E-01``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    # repr gives the shortest digits that read back exactly, as Go's precision -1 does.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return f"{sign}0E+00"
    stripped = digits.rstrip("0")
    exp = exponent + len(digits) - 1
    head, tail = stripped[0], stripped[1:]
    return f"{sign}{head}{'.' + tail if tail else ''}E{'-' if exp < 0 else '+'}{abs(exp):02d}"


def quote(text: str) -> str:
    """A string as Go's ``strconv.Quote`` writes it."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="1", b="2"}`` from sorted pairs, as Prometheus prints a label set."""
    return "{" + ", ".join(f"{name}={quote(value)}" for name, value in pairs) + "}"
