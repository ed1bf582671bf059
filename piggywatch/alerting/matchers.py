"""Alertmanager matcher strings (``severity=~"high|critical"``) as label matchers.

The syntax is Alertmanager's "classic" matcher: a label name, one of ``=``, ``!=``, ``=~``,
``!~``, and a value that is double-quoted (``\\"``, ``\\\\`` and ``\\n`` are escapes; any
other backslash is kept, so regexes such as ``"api\\.example"`` read as written) or bare.
Regexes are anchored at both ends, as in Alertmanager and Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from piggywatch.store.series import LabelMatcher

__all__ = ["MatcherError", "format_matcher", "matches", "parse_matcher", "parse_matchers"]

_HEAD = re.compile(r"\s*([^=!~\s\"]*)\s*(=~|!~|!=|=)\s*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


class MatcherError(ValueError):
    """A matcher string that cannot be used; the message says why, in the user's words."""


def parse_matcher(text: str) -> LabelMatcher:
    """``'severity=~"high|critical"'`` → a LabelMatcher, or MatcherError saying what is wrong."""
    stripped = text.strip()
    if stripped.startswith("{") or stripped.endswith("}"):
        raise MatcherError(f"{text!r}: write one matcher per list item, without braces")
    head = _HEAD.match(text)
    if head is None:
        raise MatcherError(f"{text!r} is not a matcher; write it like severity=\"critical\" "
                           "(operators: =, !=, =~, !~)")
    name, op = head.group(1), head.group(2)
    if not name:
        raise MatcherError(f"{text!r} has no label name before {op!r}")
    if not _LABEL_NAME.fullmatch(name):
        raise MatcherError(f"{text!r}: {name!r} is not a label name (letters, digits and "
                           "underscores, not starting with a digit)")
    value = _unquote(text[head.end():].rstrip(), text)
    try:
        return LabelMatcher.of(name, op, value)
    except re.error as exc:
        raise MatcherError(f"{text!r}: the regular expression is not valid: {exc}") from None


def parse_matchers(texts: Iterable[str]) -> tuple[LabelMatcher, ...]:
    """Parse every matcher string (all must hold for a match)."""
    return tuple(parse_matcher(text) for text in texts)


def matches(matchers: Iterable[LabelMatcher], labels: Mapping[str, str]) -> bool:
    """Whether every matcher holds for ``labels``; a missing label has the value ``""``."""
    return all(m.matches(labels.get(m.name, "")) for m in matchers)


def format_matcher(matcher: LabelMatcher) -> str:
    """The canonical text of a matcher, which ``parse_matcher`` reads back unchanged."""
    escaped = matcher.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{matcher.name}{matcher.op.value}"{escaped}"'


def _unquote(raw: str, text: str) -> str:
    # Alertmanager's classic parser, so that configs copied from Alertmanager mean the same:
    # a backslash before anything but n, " or \ is a literal backslash (regexes need them).
    quoted = raw.startswith('"')
    body = raw[1:] if quoted else raw
    out: list[str] = []
    closed = False
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            following = body[i + 1]
            out.append(_ESCAPES.get(following, "\\" + following))
            i += 2
            continue
        if char == '"':
            if not quoted or i != len(body) - 1:
                raise MatcherError(f"{text!r}: the value has an unescaped double quote; "
                                   'write \\" inside a quoted value')
            closed = True
        else:
            out.append(char)
        i += 1
    if quoted and not closed:
        raise MatcherError(f"{text!r}: the value's closing double quote is missing")
    return "".join(out)

