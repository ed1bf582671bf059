"""The parts of Go's strconv package that templates observe: quoting, number parsing and
float formatting.

Python's own float formatting differs from Go's in the exponent threshold of %v, in the
spelling of Inf and NaN, and in %x, so numbers are laid out here from decimal digits that
Python rounds correctly, as Go does.
"""

from __future__ import annotations

import math
import re
import unicodedata

_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
}


class SyntaxErr(ValueError):
    """strconv.ErrSyntax / ErrRange, carrying Go's message."""


def unquote(s: str) -> str:
    """strconv.Unquote for "double", `raw` and 'c' quoted literals."""
    if len(s) < 2 or s[0] != s[-1] or s[0] not in "\"'`":
        raise SyntaxErr("invalid syntax")
    quote_char, body = s[0], s[1:-1]
    if quote_char == "`":
        if "`" in body:
            raise SyntaxErr("invalid syntax")
        return body.replace("\r", "")
    if "\n" in body:
        raise SyntaxErr("invalid syntax")
    # Go strings are bytes: \xNN escapes may spell out UTF-8 sequences byte by byte.
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote_char:
            raise SyntaxErr("invalid syntax")
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(body):
            raise SyntaxErr("invalid syntax")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e].encode()
        elif e in "\"'":
            if e != quote_char:
                raise SyntaxErr("invalid syntax")
            out += e.encode()
        elif e in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i : i + n]
            if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise SyntaxErr("invalid syntax")
            v = int(digits, 16)
            i += n
            if e == "x":
                out.append(v)
            else:
                if v > 0x10FFFF or 0xD800 <= v < 0xE000:
                    raise SyntaxErr("invalid syntax")
                out += chr(v).encode()
        elif e in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise SyntaxErr("invalid syntax")
            out.append(int(digits, 8))
            i += 2
        else:
            raise SyntaxErr("invalid syntax")
    result = out.decode("utf-8", "surrogateescape")
    if quote_char == "'" and len(result) != 1:
        raise SyntaxErr("invalid syntax")
    return result


def _underscore_ok(s: str) -> bool:
    """Go's underscoreOK: underscores only between digits or after a base prefix."""
    if s[:1] in ("+", "-"):
        s = s[1:]
    saw = "^"
    i = 0
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        c = s[i]
        if c.isdigit() or (hexa and c.lower() in "abcdef"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        i += 1
    return saw != "_"


def parse_int(text: str, *, unsigned: bool = False) -> int:
    """strconv.ParseInt / ParseUint with base 0 and bitSize 64."""
    s = text
    neg = False
    if not unsigned and s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    base = 10
    if s.startswith(("0x", "0X")):
        base, s = 16, s[2:]
    elif s.startswith(("0o", "0O")):
        base, s = 8, s[2:]
    elif s.startswith(("0b", "0B")):
        base, s = 2, s[2:]
    elif len(s) > 1 and s[0] == "0":
        base, s = 8, s[1:]
    if "_" in text and not _underscore_ok(text):
        raise SyntaxErr("invalid syntax")
    s = s.replace("_", "")
    valid = "0123456789abcdef"[:base]
    if s == "" or any(c.lower() not in valid for c in s):
        raise SyntaxErr("invalid syntax")
    v = int(s, base)
    if neg:
        v = -v
    if unsigned and v > 2**64 - 1:
        raise SyntaxErr("value out of range")
    if not unsigned and not -(2**63) <= v <= 2**63 - 1:
        raise SyntaxErr("value out of range")
    return v


_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9_]+\.?[0-9_]*|\.[0-9_]+)(?:[eE][+-]?[0-9_]+)?")
_HEX_FLOAT = re.compile(r"([+-]?)0[xX]([0-9a-fA-F_]*)(?:\.([0-9a-fA-F_]*))?[pP]([+-]?[0-9_]+)")


def parse_float(text: str) -> float:
    """strconv.ParseFloat(text, 64); raises SyntaxErr with Go's error text."""
    lower = text.lower()
    body = lower[1:] if lower[:1] in ("+", "-") else lower
    if body in ("inf", "infinity"):
        return -math.inf if lower[0] == "-" else math.inf
    if lower == "nan":
        return math.nan
    if "_" in text and not _underscore_ok(text):
        raise SyntaxErr(f"strconv.ParseFloat: parsing {quote(text)}: invalid syntax")
    value: float
    if _DEC_FLOAT.fullmatch(text):
        value = float(text.replace("_", ""))
    elif m := _HEX_FLOAT.fullmatch(text):
        mant = (m.group(2) + (m.group(3) or "")).replace("_", "") or "0"
        frac = len((m.group(3) or "").replace("_", ""))
        try:
            value = math.ldexp(float(int(mant, 16)), int(m.group(4).replace("_", "")) - 4 * frac)
        except OverflowError:
            value = math.inf
        if m.group(1) == "-":
            value = -value
    else:
        raise SyntaxErr(f'strconv.ParseFloat: parsing {quote(text)}: invalid syntax')
    if math.isinf(value):
        raise SyntaxErr(f"strconv.ParseFloat: parsing {quote(text)}: value out of range")
    return value


def is_print(c: str) -> bool:
    """unicode.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space."""
    if c == " ":
        return True
    return unicodedata.category(c)[0] in "LMNPS"


def _escape_rune(c: str, quote_char: str, ascii_only: bool) -> str:
    if c == quote_char or c == "\\":
        return "\\" + c
    if (ord(c) < 0x80 or not ascii_only) and is_print(c):
        return c
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\v": "\\v"}
    if c in named:
        return named[c]
    o = ord(c)
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if 0xD800 <= o < 0xE000:
        return "\\ufffd"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def quote(s: str, *, ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteToASCII)."""
    return '"' + "".join(_escape_rune(c, '"', ascii_only) for c in s) + '"'


def quote_rune(r: int, *, ascii_only: bool = False) -> str:
    """strconv.QuoteRune."""
    if r > 0x10FFFF or 0xD800 <= r < 0xE000:
        r = 0xFFFD
    return "'" + _escape_rune(chr(r), "'", ascii_only) + "'"


def can_backquote(s: str) -> bool:
    """strconv.CanBackquote."""
    return all(c != "`" and c != "\ufeff" and (c == "\t" or is_print(c)) for c in s)


def _digits(v: float, mode: str, prec: int) -> tuple[str, int]:
    """Decimal digits d (no trailing zeros) and point position dp: |v| = 0.d x 10**dp.

    mode "shortest" gives the shortest digits that round-trip, like Go's shortest mode;
    mode "e" rounds to prec+1 significant digits, correctly rounded like strconv.
    """
    text = repr(abs(v)) if mode == "shortest" else f"{abs(v):.{prec}e}"
    mantissa, _, exp_text = text.partition("e")
    exp = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    dp = len(int_part) + exp
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        return "", 0
    return digits, dp


def _fmt_e(neg: bool, digits: str, dp: int, prec: int, e_char: str) -> str:
    out = ["-" if neg else "", digits[0] if digits else "0"]
    if prec > 0:
        frac = digits[1 : 1 + prec]
        out.append("." + frac + "0" * (prec - len(frac)))
    exp = dp - 1 if digits else 0
    sign = "-" if exp < 0 else "+"
    exp = abs(exp)
    out.append(f"{e_char}{sign}{exp:02d}")
    return "".join(out)


def _fmt_f(neg: bool, digits: str, dp: int, prec: int) -> str:
    out = ["-" if neg else ""]
    if dp > 0:
        whole = digits[:dp]
        out.append(whole + "0" * (dp - len(whole)))
    else:
        out.append("0")
    if prec > 0:
        frac = []
        for i in range(1, prec + 1):
            j = dp + i - 1
            frac.append(digits[j] if 0 <= j < len(digits) else "0")
        out.append("." + "".join(frac))
    return "".join(out)


def _fmt_x(v: float, prec: int, upper: bool) -> str:
    """strconv 'x' format: -0x1.8p+01 (shortest when prec < 0)."""
    neg = math.copysign(1.0, v) < 0
    mant, exp = 0, 0
    if v != 0:
        m, e = math.frexp(abs(v))
        mant, exp = int(m * (1 << 53)), e - 1  # 53-bit mantissa with the leading 1 on top
    if prec >= 0 and prec < 13:
        shift = 52 - 4 * prec
        q, r = divmod(mant, 1 << shift)
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
        mant = q << shift
        if mant >> 53:
            mant >>= 1
            exp += 1
    frac = f"{mant & ((1 << 52) - 1):013x}" if v != 0 else "0" * 13
    frac = frac.rstrip("0") if prec < 0 else (frac + "0" * prec)[:prec]
    lead = "1" if v != 0 else "0"
    s = ("-" if neg else "") + "0x" + lead + ("." + frac if frac else "")
    s += "p" + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"
    return s.upper().replace("0X", "0X") if upper else s


def format_float(v: float, fmt: str, prec: int) -> str:
    """strconv.FormatFloat(v, fmt, prec, 64) for fmt in e E f g G x X; prec -1 is shortest."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if fmt in "xX":
        return _fmt_x(v, prec, fmt == "X")
    neg = math.copysign(1.0, v) < 0
    shortest = prec < 0
    if fmt == "f" and not shortest:
        text = f"{abs(v):.{prec}f}"
        return ("-" if neg else "") + text
    if shortest:
        digits, dp = _digits(v, "shortest", 0)
    elif fmt in "eE":
        digits, dp = _digits(v, "e", prec)
    else:
        digits, dp = _digits(v, "e", max(prec, 1) - 1)
    nd = len(digits)
    if fmt in "eE":
        return _fmt_e(neg, digits, dp, max(nd - 1, 0) if shortest else prec, fmt)
    if fmt == "f":
        return _fmt_f(neg, digits, dp, max(nd - dp, 0))
    # %g: exponent form when exp < -4 || exp >= eprec, as in strconv's formatDigits.
    if shortest:
        prec = nd
    elif prec == 0:
        prec = 1
    eprec = prec
    if eprec > nd and nd >= dp:
        eprec = nd
    if shortest:
        eprec = 6
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        prec = min(prec, nd)
        return _fmt_e(neg, digits, dp, prec - 1, "e" if fmt == "g" else "E")
    if prec > dp:
        prec = nd
    return _fmt_f(neg, digits, dp, max(prec - dp, 0))
