"""Tokenizer for Go text/template source, following Go 1.19's text/template/parse/lex.go.

Positions are character offsets into the template text; Go reports byte offsets, which
agree for the ASCII text where template errors usually point.
"""

from __future__ import annotations

import bisect
import enum
import unicodedata
from dataclasses import dataclass

LEFT_DELIM = "{{"
RIGHT_DELIM = "}}"
LEFT_COMMENT = "/*"
RIGHT_COMMENT = "*/"
_SPACE = " \t\r\n"


class Kind(enum.Enum):
    """Token kinds, named as in Go's lexer."""

    ERROR = "error"
    BOOL = "bool"
    CHAR = "char"
    CHAR_CONSTANT = "char constant"
    COMMENT = "comment"
    ASSIGN = "="
    DECLARE = ":="
    EOF = "EOF"
    FIELD = "field"
    IDENTIFIER = "identifier"
    LEFT_DELIM = "{{"
    LEFT_PAREN = "("
    NUMBER = "number"
    PIPE = "|"
    RAW_STRING = "raw string"
    RIGHT_DELIM = "}}"
    RIGHT_PAREN = ")"
    SPACE = "space"
    STRING = "string"
    TEXT = "text"
    VARIABLE = "variable"
    DOT = "."
    # Keywords: printed as <name> in error messages, like Go's item.String().
    BLOCK = "block"
    BREAK = "break"
    CONTINUE = "continue"
    DEFINE = "define"
    ELSE = "else"
    END = "end"
    IF = "if"
    NIL = "nil"
    RANGE = "range"
    TEMPLATE = "template"
    WITH = "with"


KEYWORDS = {
    k.value: k
    for k in (
        Kind.BLOCK, Kind.BREAK, Kind.CONTINUE, Kind.DEFINE, Kind.ELSE, Kind.END,
        Kind.IF, Kind.NIL, Kind.RANGE, Kind.TEMPLATE, Kind.WITH,
    )
}
_KEYWORD_KINDS = frozenset(KEYWORDS.values()) | {Kind.DOT}


@dataclass(frozen=True)
class Token:
    """One lexed item: its kind, source text, offset and 1-based line."""

    kind: Kind
    val: str
    pos: int
    line: int

    def __str__(self) -> str:
        # Mirrors Go's item.String(), which parse errors embed verbatim.
        if self.kind is Kind.EOF:
            return "EOF"
        if self.kind is Kind.ERROR:
            return self.val
        if self.kind in _KEYWORD_KINDS and self.kind is not Kind.DOT:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return go_quote_prefix(self.val, 10) + "..."
        return go_quote_prefix(self.val, len(self.val))


def go_quote_prefix(s: str, n: int) -> str:
    """Quote the first n characters the way Go's %.Nq does for plain text."""
    body = s[:n].replace("\\", "\\\\").replace('"', '\\"')
    body = body.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{body}"'


def is_space(c: str) -> bool:
    return c != "" and c in _SPACE


def is_alnum(c: str) -> bool:
    if c == "":
        return False
    if c == "_":
        return True
    cat = unicodedata.category(c)
    return cat.startswith("L") or cat == "Nd"


def format_rune(c: str) -> str:
    """Go's %#U: U+0029 ')'."""
    return f"U+{ord(c):04X} '{c}'"


class Lexer:
    """Produces the token list of a template, ending with an EOF or ERROR token."""

    def __init__(self, text: str, *, break_ok: bool = True) -> None:
        self.text = text
        self.start = 0
        self.pos = 0
        self.paren_depth = 0
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.break_ok = break_ok
        self.tokens: list[Token] = []

    def line_at(self, pos: int) -> int:
        """1-based line number of an offset."""
        return 1 + bisect.bisect_left(self._newlines, pos)

    # Character helpers; "" plays the role of Go's eof rune.
    def _next(self) -> str:
        if self.pos >= len(self.text):
            self.pos += 1  # so that backup() stays symmetrical at EOF
            return ""
        c = self.text[self.pos]
        self.pos += 1
        return c

    def _backup(self) -> None:
        self.pos -= 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _emit(self, kind: Kind) -> None:
        self.tokens.append(
            Token(kind, self.text[self.start : self.pos], self.start, self.line_at(self.start))
        )
        self.start = self.pos

    def _ignore(self) -> None:
        self.start = self.pos

    def _error(self, message: str) -> None:
        self.tokens.append(Token(Kind.ERROR, message, self.start, self.line_at(self.start)))

    def _accept(self, chars: str) -> bool:
        c = self._next()
        if c != "" and c in chars:
            return True
        self._backup()
        return False

    def _accept_run(self, chars: str) -> None:
        while True:
            c = self._next()
            if c == "" or c not in chars:
                self._backup()
                return

    def run(self) -> list[Token]:
        """Lex the whole text."""
        inside = False
        while True:
            if not inside:
                if not self._lex_text():
                    return self.tokens
                inside = self._lex_left_delim()
                if self.tokens and self.tokens[-1].kind is Kind.ERROR:
                    return self.tokens
                continue
            state = self._lex_inside_action()
            if state == "error":
                return self.tokens
            if state == "text":
                inside = False

    def _lex_text(self) -> bool:
        """Emit text up to the next '{{'; return False at EOF (EOF emitted)."""
        x = self.text.find(LEFT_DELIM, self.pos)
        if x < 0:
            self.pos = len(self.text)
            if self.pos > self.start:
                self._emit(Kind.TEXT)
            self.tokens.append(Token(Kind.EOF, "", self.pos, self.line_at(self.pos)))
            return False
        if x > self.pos:
            self.pos = x
            trim = 0
            if _has_left_trim_marker(self.text, x + len(LEFT_DELIM)):
                segment = self.text[self.start : x]
                trim = len(segment) - len(segment.rstrip(_SPACE))
            end = x - trim
            if end > self.start:
                text = self.text[self.start : end]
                self.tokens.append(Token(Kind.TEXT, text, self.start, self.line_at(self.start)))
            self.start = x
        return True

    def _lex_left_delim(self) -> bool:
        """Handle '{{'; return True when inside an action afterwards."""
        self.pos += len(LEFT_DELIM)
        trim = _has_left_trim_marker(self.text, self.pos)
        after = 2 if trim else 0
        if self.text.startswith(LEFT_COMMENT, self.pos + after):
            self.pos += after
            self._ignore()
            self._lex_comment()
            return False
        self._emit(Kind.LEFT_DELIM)
        self.pos += after
        self._ignore()
        self.paren_depth = 0
        return True

    def _lex_comment(self) -> None:
        self.pos += len(LEFT_COMMENT)
        x = self.text.find(RIGHT_COMMENT, self.pos)
        if x < 0:
            self._error("unclosed comment")
            return
        self.pos = x + len(RIGHT_COMMENT)
        delim, trim = self._at_right_delim()
        if not delim:
            self._error("comment ends before closing delimiter")
            return
        if trim:
            self.pos += 2
        self.pos += len(RIGHT_DELIM)
        if trim:
            self.pos += _left_trim_length(self.text, self.pos)
        self._ignore()

    def _at_right_delim(self) -> tuple[bool, bool]:
        if _has_right_trim_marker(self.text, self.pos) and self.text.startswith(
            RIGHT_DELIM, self.pos + 2
        ):
            return True, True
        return self.text.startswith(RIGHT_DELIM, self.pos), False

    def _lex_right_delim(self) -> None:
        _, trim = self._at_right_delim()
        if trim:
            self.pos += 2
            self._ignore()
        self.pos += len(RIGHT_DELIM)
        self._emit(Kind.RIGHT_DELIM)
        if trim:
            self.pos += _left_trim_length(self.text, self.pos)
            self._ignore()

    def _at_terminator(self) -> bool:
        c = self._peek()
        if c == "" or is_space(c) or c in ".,|:()":
            return True
        return self.text.startswith(RIGHT_DELIM, self.pos)

    def _lex_inside_action(self) -> str:
        delim, _ = self._at_right_delim()
        if delim:
            if self.paren_depth == 0:
                self._lex_right_delim()
                return "text"
            self._error("unclosed left paren")
            return "error"
        c = self._next()
        if c == "":
            self._error("unclosed action")
            return "error"
        if is_space(c):
            self._backup()
            self._lex_space()
        elif c == "=":
            self._emit(Kind.ASSIGN)
        elif c == ":":
            if self._next() != "=":
                self._error("expected :=")
                return "error"
            self._emit(Kind.DECLARE)
        elif c == "|":
            self._emit(Kind.PIPE)
        elif c == '"':
            return self._lex_escaped('"', Kind.STRING, "unterminated quoted string")
        elif c == "`":
            return self._lex_raw_quote()
        elif c == "$":
            return self._lex_field_or_variable(Kind.VARIABLE)
        elif c == "'":
            return self._lex_escaped("'", Kind.CHAR_CONSTANT,
                                     "unterminated character constant")
        elif c == "." and not ("0" <= self._peek() <= "9" and self._peek() != ""):
            return self._lex_field_or_variable(Kind.FIELD)
        elif c in "+-." or "0" <= c <= "9":
            self._backup()
            return self._lex_number()
        elif is_alnum(c):
            self._backup()
            return self._lex_identifier()
        elif c == "(":
            self.paren_depth += 1
            self._emit(Kind.LEFT_PAREN)
        elif c == ")":
            # Go 1.19 leaves an unbalanced ')' to the parser ("unexpected ")" in command").
            self.paren_depth -= 1
            self._emit(Kind.RIGHT_PAREN)
        elif ord(c) < 0x80 and c.isprintable():
            self._emit(Kind.CHAR)
        else:
            self._error(f"unrecognized character in action: {format_rune(c)}")
            return "error"
        return "action"

    def _lex_space(self) -> None:
        n = 0
        while is_space(self._peek()):
            self._next()
            n += 1
        # A space followed by "-}}" belongs to the trim marker, not to the action.
        if _has_right_trim_marker(self.text, self.pos - 1) and self.text.startswith(
            RIGHT_DELIM, self.pos + 1
        ):
            self._backup()
            if n == 1:
                return
        self._emit(Kind.SPACE)

    def _lex_identifier(self) -> str:
        while is_alnum(self._next()):
            pass
        self._backup()
        word = self.text[self.start : self.pos]
        if not self._at_terminator():
            self._error(f"bad character {format_rune(self._peek())}")
            return "error"
        kind = KEYWORDS.get(word)
        if kind is not None:
            if kind in (Kind.BREAK, Kind.CONTINUE) and not self.break_ok:
                kind = Kind.IDENTIFIER
            self._emit(kind)
        elif word in ("true", "false"):
            self._emit(Kind.BOOL)
        else:
            self._emit(Kind.IDENTIFIER)
        return "action"

    def _lex_field_or_variable(self, kind: Kind) -> str:
        if self._at_terminator():
            self._emit(Kind.VARIABLE if kind is Kind.VARIABLE else Kind.DOT)
            return "action"
        while is_alnum(self._next()):
            pass
        self._backup()
        if not self._at_terminator():
            self._error(f"bad character {format_rune(self._peek())}")
            return "error"
        self._emit(kind)
        return "action"

    def _lex_escaped(self, close: str, kind: Kind, unterminated: str) -> str:
        # Go's lexer: a backslash escapes the next character, a newline or the end of the
        # text ends the constant unterminated.
        while True:
            c = self._next()
            if c == "\\":
                c = self._next()
                if c not in ("", "\n"):
                    continue
            if c in ("", "\n"):
                self._error(unterminated)
                return "error"
            if c == close:
                break
        self._emit(kind)
        return "action"

    def _lex_raw_quote(self) -> str:
        while True:
            c = self._next()
            if c == "":
                self._error("unterminated raw quoted string")
                return "error"
            if c == "`":
                break
        self._emit(Kind.RAW_STRING)
        return "action"

    def _lex_number(self) -> str:
        if not self._scan_number():
            self._error(f"bad number syntax: {go_quote_prefix(self.text[self.start:self.pos], 99)}")
            return "error"
        if self._peek() in ("+", "-") and self._peek() != "":
            # Complex constants such as 1+2i are Go syntax we do not support.
            self._scan_number()
            self._error(
                f"bad number syntax: {go_quote_prefix(self.text[self.start:self.pos], 99)}"
            )
            return "error"
        self._emit(Kind.NUMBER)
        return "action"

    def _scan_number(self) -> bool:
        self._accept("+-")
        digits = "0123456789_"
        if self._accept("0"):
            if self._accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self._accept("oO"):
                digits = "01234567_"
            elif self._accept("bB"):
                digits = "01_"
        self._accept_run(digits)
        if self._accept("."):
            self._accept_run(digits)
        if len(digits) == 11 and self._accept("eE"):
            self._accept("+-")
            self._accept_run("0123456789_")
        if len(digits) == 23 and self._accept("pP"):
            self._accept("+-")
            self._accept_run("0123456789_")
        self._accept("i")
        if is_alnum(self._peek()):
            self._next()
            return False
        return True


def _has_left_trim_marker(text: str, pos: int) -> bool:
    return len(text) >= pos + 2 and text[pos] == "-" and is_space(text[pos + 1])


def _has_right_trim_marker(text: str, pos: int) -> bool:
    return pos >= 0 and len(text) >= pos + 2 and is_space(text[pos]) and text[pos + 1] == "-"


def _left_trim_length(text: str, pos: int) -> int:
    rest = text[pos:]
    return len(rest) - len(rest.lstrip(_SPACE))


def lex(text: str) -> list[Token]:
    """Tokenize a template; the list ends with an EOF or an ERROR token."""
    return Lexer(text).run()
