"""Query text made safe to show: literals and comments removed.

pg_stat_statements replaces constants with ``$n`` only in statements it can jumble; utility
statements are stored as written, so ``ALTER ROLE app PASSWORD 'secret'`` keeps its secret.
The text is therefore scrubbed here again before anyone sees it.
"""

from __future__ import annotations

from collections.abc import Hashable

PLACEHOLDER = "?"

# Text longer than this is cut: the API shows statements to a person, not to a parser.
MAX_LENGTH = 4096

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_PART = _IDENT_START | frozenset("0123456789$")
_DIGITS = frozenset("0123456789")
_HEX = _DIGITS | frozenset("abcdefABCDEF")
_STRING_PREFIXES = frozenset("eEbBxXnN")


def _is_ident_char(ch: str, *, start: bool = False) -> bool:
    # Non-ASCII letters are legal in unquoted identifiers.
    return ch in (_IDENT_START if start else _IDENT_PART) or ch >= "\x80"


def normalize_query(text: str) -> str:
    """``text`` with every string, dollar-quoted and numeric literal replaced by ``?``.

    Comments are dropped too (they can hold anything); quoted identifiers, ``$n``
    parameters and digits inside identifiers are kept. Anything unterminated is treated
    as a literal running to the end, so a cut-off text cannot leak its tail.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if ch == "-" and nxt == "-":
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif ch == "/" and nxt == "*":
            i = _skip_block_comment(text, i)
            out.append(" ")
        elif ch == "'":
            i = _skip_string(text, i, backslash_escapes=False)
            out.append(PLACEHOLDER)
        elif ch in _STRING_PREFIXES and nxt == "'" and not _follows_ident(text, i):
            i = _skip_string(text, i + 1, backslash_escapes=ch in "eE")
            out.append(PLACEHOLDER)
        elif ch in "uU" and text.startswith("&'", i + 1) and not _follows_ident(text, i):
            i = _skip_string(text, i + 2, backslash_escapes=False)
            out.append(PLACEHOLDER)
        elif ch == '"':
            end = _skip_quoted_identifier(text, i)
            out.append(text[i:end])
            i = end
        elif ch == "$" and not _follows_ident(text, i):
            i = _dollar(text, i, out)
        elif _is_ident_char(ch, start=True):
            end = i + 1
            while end < n and _is_ident_char(text[end]):
                end += 1
            out.append(text[i:end])
            i = end
        elif ch in _DIGITS or (ch == "." and nxt in _DIGITS):
            i = _skip_number(text, i)
            out.append(PLACEHOLDER)
        else:
            out.append(ch)
            i += 1
    result = "".join(out)
    if len(result) > MAX_LENGTH:
        result = result[:MAX_LENGTH] + "…"
    return result


class QueryTexts:
    """A bounded cache of query texts by statement, scrubbed when first read.

    Texts are fetched in batches (asking PostgreSQL for any text makes it read all of them),
    often for statements nobody looks at, so scrubbing waits until a text is read. The least
    recently read texts go first when the cache is full.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._scrubbed: dict[Hashable, str] = {}
        self._raw: dict[Hashable, str] = {}
        # Texts pushed out so far: a caller that knows which keys have a text need only
        # look again when this moved.
        self.evicted = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._scrubbed or key in self._raw

    def __len__(self) -> int:
        return len(self._scrubbed) + len(self._raw)

    def add(self, key: Hashable, text: str) -> None:
        """Remember ``text`` (as stored by pg_stat_statements) for ``key``."""
        # Cut before scrubbing is safe: a literal cut open is scrubbed to the end.
        self._raw[key] = text[: 2 * MAX_LENGTH]
        self._trim()

    def get(self, key: Hashable) -> str | None:
        """The scrubbed text of ``key``, or None when not cached."""
        text = self._scrubbed.pop(key, None)
        if text is None:
            raw = self._raw.pop(key, None)
            if raw is None:
                return None
            text = normalize_query(raw)
        self._scrubbed[key] = text  # re-inserted last: most recently read
        self._trim()
        return text

    def _trim(self) -> None:
        while len(self) > self._limit:
            oldest = self._raw if self._raw else self._scrubbed
            del oldest[next(iter(oldest))]
            self.evicted += 1


def _follows_ident(text: str, i: int) -> bool:
    return i > 0 and _is_ident_char(text[i - 1])


def _skip_block_comment(text: str, i: int) -> int:
    # PostgreSQL block comments nest.
    depth, i, n = 0, i, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_string(text: str, quote: int, *, backslash_escapes: bool) -> int:
    """Index just past the string literal whose opening quote is at ``quote``."""
    i, n = quote + 1, len(text)
    while i < n:
        ch = text[i]
        if backslash_escapes and ch == "\\":
            i += 2
        elif ch == "'":
            if i + 1 < n and text[i + 1] == "'":
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _skip_quoted_identifier(text: str, quote: int) -> int:
    i, n = quote + 1, len(text)
    while i < n:
        if text[i] == '"':
            if i + 1 < n and text[i + 1] == '"':
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _dollar(text: str, i: int, out: list[str]) -> int:
    """Handle ``$n`` (kept) or a dollar-quoted string ``$tag$...$tag$`` (replaced)."""
    n = len(text)
    end = i + 1
    if end < n and text[end] in _DIGITS:
        while end < n and text[end] in _DIGITS:
            end += 1
        out.append(text[i:end])
        return end
    if end < n and _is_ident_char(text[end], start=True):
        end += 1
        while end < n and text[end] != "$" and _is_ident_char(text[end]):
            end += 1
    if end < n and text[end] == "$":
        tag = text[i:end + 1]
        close = text.find(tag, end + 1)
        out.append(PLACEHOLDER)
        return n if close < 0 else close + len(tag)
    out.append("$")
    return i + 1


def _skip_number(text: str, i: int) -> int:
    n = len(text)
    if text[i] == "0" and i + 1 < n and text[i + 1] in "xXoObB":
        # 0x1F, 0o17, 0b101 (PostgreSQL 16); the digits of any base are a subset of hex.
        end = i + 2
        while end < n and (text[end] in _HEX or text[end] == "_"):
            end += 1
        return end
    end = i
    while end < n and (text[end] in _DIGITS or text[end] == "_"):
        end += 1
    if end < n and text[end] == ".":
        end += 1
        while end < n and (text[end] in _DIGITS or text[end] == "_"):
            end += 1
    if end < n and text[end] in "eE":
        exp = end + 1
        if exp < n and text[exp] in "+-":
            exp += 1
        if exp < n and text[exp] in _DIGITS:
            end = exp
            while end < n and text[end] in _DIGITS:
                end += 1
    return end
