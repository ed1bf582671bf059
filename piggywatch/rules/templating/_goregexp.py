"""Go (RE2) regular expressions on top of Python's re, for match and reReplaceAll.

RE2 and Python agree on the common syntax. Where they differ this module translates
(\\z, $, [[:alpha:]], \\Q..\\E, \\x{..}, octal escapes, (?i) in mid-pattern, ASCII-only \\d
\\w \\s) or rejects what Go rejects (backreferences, lookaround) with Go's wording.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from . import _strconv

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_PERL_CLASS = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}


class GoRegexpError(ValueError):
    """A pattern Go's regexp package would reject; str() is Go's error text."""


def _unicode_class_name(pattern: str, i: int) -> tuple[str, int]:
    """Name and source length of the class after \\p: "L" for \\pL, "Lu" for \\p{Lu}."""
    if pattern.startswith("{", i):
        close = pattern.find("}", i)
        if close < 0:
            raise _go_error("invalid character class range", pattern[i - 2 :])
        return pattern[i + 1 : close], close - i + 1
    return pattern[i : i + 1], 1


@functools.lru_cache(maxsize=64)
def _unicode_category(name: str) -> str | None:
    """A character-class body for a Unicode general category (L, Lu, Nd, ...), or None."""
    if not (1 <= len(name) <= 2 and name[0] in "CLMNPSZ"):
        return None
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)).startswith(name):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    if not ranges:
        return None
    return "".join(
        f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges
    )


def _go_error(code: str, expr: str) -> GoRegexpError:
    return GoRegexpError(f"error parsing regexp: {code}: `{expr}`")


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(pattern)
    depth = 0
    # Scoped flag groups we opened for a mid-pattern (?i), to close with their parent.
    pending: list[int] = []
    in_class = False
    multiline = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise _go_error("trailing backslash at end of expression", "")
            e = pattern[i + 1]
            if e == "Q":
                end = pattern.find("\\E", i + 2)
                literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
                out.append(re.escape(literal))
                i = n if end < 0 else end + 2
                continue
            if e == "z":
                out.append("\\Z")
            elif e in "dws" and in_class:
                out.append(_PERL_CLASS[e])
            elif e in "dws":
                out.append("[" + _PERL_CLASS[e] + "]")
            elif e in "DWS":
                if in_class:
                    raise _go_error("invalid character class range", pattern[i : i + 2])
                out.append("[^" + _PERL_CLASS[e.lower()] + "]")
            elif e == "x" and pattern.startswith("{", i + 2):
                close = pattern.find("}", i + 3)
                if close < 0:
                    raise _go_error("invalid escape sequence", pattern[i:])
                out.append(f"\\U{int(pattern[i + 3 : close], 16):08x}")
                i = close + 1
                continue
            elif e in "01234567":
                m = re.match(r"[0-7]{1,3}", pattern[i + 1 :])
                assert m is not None
                digits = m.group(0)
                if e != "0" and len(digits) == 1:
                    raise _go_error("invalid escape sequence", pattern[i : i + 2])
                out.append(f"\\u{int(digits, 8):04x}")
                i += 1 + len(digits)
                continue
            elif e in "pP":
                name, length = _unicode_class_name(pattern, i + 2)
                ranges = _unicode_category(name)
                if ranges is None:
                    raise GoRegexpError(
                        f"error parsing regexp: unsupported Unicode class (only general "
                        f"categories such as \\pL or \\p{{Lu}} are available): "
                        f"`{pattern[i : i + 2 + length]}`"
                    )
                negate = e == "P"
                if in_class:
                    if negate:
                        raise _go_error("invalid character class range", pattern[i : i + 3])
                    out.append(ranges)
                else:
                    out.append(("[^" if negate else "[") + ranges + "]")
                i += 2 + length
                continue
            elif e.isalnum() and e not in "afnrtvxAbB":
                raise _go_error("invalid escape sequence", pattern[i : i + 2])
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                close = pattern.find(":]", i + 2)
                name = pattern[i + 2 : close] if close >= 0 else ""
                if name in _POSIX:
                    out.append(_POSIX[name])
                    i = close + 2
                    continue
                if name.startswith("^") and name[1:] in _POSIX:
                    raise _go_error("invalid character class range", pattern[i : close + 2])
            if c == "]" and not (out and out[-1] in ("[", "[^")):
                in_class = False
            out.append("\\[" if c == "[" else c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                m = re.match(r"\(\?([imsU-]*)(\)|:)", pattern[i:])
                if pattern.startswith("(?P<", i):
                    depth += 1
                    out.append("(?P<")
                    i += 4
                    continue
                if m is None:
                    raise _go_error("invalid or unsupported Perl syntax", pattern[i : i + 3])
                flags = m.group(1)
                if "U" in flags:
                    raise _go_error("invalid or unsupported Perl syntax", m.group(0))
                on, _, off = flags.partition("-")
                if "m" in on:
                    multiline = True
                spec = on + ("-" + off if off else "")
                if m.group(2) == ":":
                    depth += 1
                    out.append(f"(?{spec}:" if spec else "(?:")
                elif spec:
                    # Go scopes a bare (?i) to the rest of the enclosing group.
                    out.append(f"(?{spec}:")
                    pending.append(depth)
                i += len(m.group(0))
                continue
            depth += 1
            out.append("(")
            i += 1
            continue
        if c == ")":
            while pending and pending[-1] == depth:
                pending.pop()
                out.append(")")
            depth -= 1
            if depth < 0:
                raise _go_error("unexpected )", pattern)
            out.append(")")
            i += 1
            continue
        if c == "$" and not multiline:
            out.append("\\Z")
            i += 1
            continue
        out.append(c)
        i += 1
    if in_class:
        raise _go_error("missing closing ]", pattern[pattern.rfind("[") :])
    if depth > 0:
        raise _go_error("missing closing )", pattern)
    out.extend(")" for _ in pending)
    return "".join(out)


_PY_TO_GO = (
    ("bad character range", "invalid character class range"),
    ("unbalanced parenthesis", "unexpected )"),
    ("missing )", "missing closing )"),
    ("unterminated character set", "missing closing ]"),
)
_REPEAT_OP = re.compile(r"[*+?]|\{[0-9]*(?:,[0-9]*)?\}")


def _repetition_error(pattern: str, e: re.error) -> GoRegexpError | None:
    """Go names the operator(s) at fault: `*` with nothing to repeat, `**` when nested."""
    pos = e.pos if e.pos is not None else 0
    if "nothing to repeat" in e.msg:
        m = _REPEAT_OP.match(pattern, pos)
        return _go_error("missing argument to repetition operator", m.group(0) if m else "")
    if "multiple repeat" in e.msg:
        start = pos - 1
        if pattern[start] == "}":
            start = pattern.rfind("{", 0, start)
        m = _REPEAT_OP.match(pattern, pos)
        end = m.end() if m else pos + 1
        return _go_error("invalid nested repetition operator", pattern[start:end])
    return None


@functools.lru_cache(maxsize=256)
def compile_go(pattern: str) -> re.Pattern[str]:
    """Compile a Go regexp; raises GoRegexpError with Go's message on bad syntax."""
    translated = _translate(pattern)
    try:
        return re.compile(translated)
    except re.error as e:
        # The translation preserves operator positions only for plain patterns.
        repetition = _repetition_error(pattern, e) if translated == pattern else None
        if repetition is not None:
            raise repetition from None
        for py, go in _PY_TO_GO:
            if py in str(e):
                raise _go_error(go, pattern) from None
        raise GoRegexpError(f"error parsing regexp: {e}: `{pattern}`") from None


def must_compile_message(pattern: str, err: GoRegexpError) -> str:
    """The panic text of regexp.MustCompile, which template functions surface as an error."""
    quoted = f"`{pattern}`" if _strconv.can_backquote(pattern) else _strconv.quote(pattern)
    return f"regexp: Compile({quoted}): {err}"


def _expand(template: str, m: re.Match[str]) -> str:
    """Regexp.Expand: $1, ${1}, $name, ${name}, $$; unknown groups expand to nothing."""
    out: list[str] = []
    names = m.re.groupindex
    while template:
        before, sep, after = template.partition("$")
        if not sep:
            break
        out.append(before)
        template = after
        if template.startswith("$"):
            out.append("$")
            template = template[1:]
            continue
        brace = template.startswith("{")
        rest = template[1:] if brace else template
        j = 0
        while j < len(rest) and (rest[j] == "_" or rest[j].isalnum()):
            j += 1
        if j == 0 or (brace and (j >= len(rest) or rest[j] != "}")):
            out.append("$")
            continue
        name = rest[:j]
        template = rest[j + 1 :] if brace else rest[j:]
        if name.isascii() and name.isdigit() and not (name[0] == "0" and len(name) > 1):
            num = int(name)
            if num <= m.re.groups and m.group(num) is not None:
                out.append(m.group(num))
        elif name in names and m.group(name) is not None:
            out.append(m.group(name))
    out.append(template)
    return "".join(out)


def replace_all(regex: re.Pattern[str], src: str, repl: str) -> str:
    """Regexp.ReplaceAllString: Go skips an empty match right after a previous match."""
    out: list[str] = []
    last_end = 0
    search_pos = 0
    while search_pos <= len(src):
        m = regex.search(src, search_pos)
        if m is None:
            break
        start, end = m.span()
        out.append(src[last_end:start])
        if end > last_end or start == 0:
            out.append(_expand(repl, m))
        last_end = end
        search_pos = search_pos + 1 if search_pos + 1 > end else end
    out.append(src[last_end:])
    return "".join(out)
