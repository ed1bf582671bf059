"""Parser for Go text/template, following Go 1.19's text/template/parse/parse.go.

Produces the same tree, the same node positions and the same error messages as Go, so
that execution errors and parse errors read exactly as Prometheus would print them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import _strconv
from ._lexer import Kind, Token, lex
from ._nodes import (
    ActionNode,
    BoolNode,
    BranchNode,
    BreakNode,
    ChainNode,
    CommandNode,
    ContinueNode,
    DotNode,
    ElseNode,
    EndNode,
    FieldNode,
    IdentifierNode,
    IfNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    PipeNode,
    RangeNode,
    StringNode,
    TemplateNode,
    TextNode,
    VariableNode,
    WithNode,
)


class ParseError(Exception):
    """A template syntax error; message is Go's, without the "template: name:line:" prefix."""

    def __init__(self, message: str, *, pos: int, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.line = line


@dataclass
class Tree:
    """A parsed template: the main tree plus the {{define}}d ones, by name."""

    name: str
    text: str
    root: ListNode
    templates: dict[str, ListNode]


_TERM_KINDS = frozenset({
    Kind.BOOL, Kind.CHAR_CONSTANT, Kind.DOT, Kind.FIELD, Kind.IDENTIFIER, Kind.NUMBER,
    Kind.NIL, Kind.RAW_STRING, Kind.STRING, Kind.VARIABLE, Kind.LEFT_PAREN,
})


class _Parser:
    def __init__(self, text: str, has_function: Callable[[str], bool]) -> None:
        self.text = text
        self.tokens = lex(text)
        self.index = 0
        self.last: Token = self.tokens[0]
        self.has_function = has_function
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.action_line = 0
        self.templates: dict[str, ListNode] = {}

    # Token plumbing. Lexer errors arrive as ERROR tokens and are reported by the
    # grammar rule that meets them, with that rule's context, as Go does.
    def _raw_next(self) -> Token:
        tok = self.tokens[min(self.index, len(self.tokens) - 1)]
        self.index += 1
        self.last = tok
        return tok

    def _backup(self, n: int = 1) -> None:
        self.index -= n

    def _peek(self) -> Token:
        return self.tokens[min(self.index, len(self.tokens) - 1)]

    def _next_non_space(self) -> Token:
        tok = self._raw_next()
        while tok.kind is Kind.SPACE:
            tok = self._raw_next()
        return tok

    def _peek_non_space(self) -> Token:
        save = self.index
        tok = self._next_non_space()
        self.index = save
        return tok

    def _error(self, message: str) -> ParseError:
        return ParseError(message, pos=self.last.pos, line=self.last.line)

    def _unexpected(self, tok: Token, context: str) -> None:
        if tok.kind is Kind.ERROR:
            extra = ""
            if self.action_line and self.action_line != tok.line:
                ctx = context.removesuffix(" clause")
                extra = f" in {ctx} starting at line {self.action_line}"
            raise self._error(f"{tok}{extra}")
        raise self._error(f"unexpected {tok} in {context}")

    def _expect(self, kind: Kind, context: str) -> Token:
        tok = self._next_non_space()
        if tok.kind is not kind:
            self._unexpected(tok, context)
        return tok

    # Grammar.
    def parse(self) -> ListNode:
        root = ListNode(self._peek().pos)
        while self._peek().kind is not Kind.EOF:
            if self._peek().kind is Kind.LEFT_DELIM:
                save = self.index
                self._raw_next()
                if self._next_non_space().kind is Kind.DEFINE:
                    self._parse_definition()
                    continue
                self.index = save
            n = self._text_or_action()
            if isinstance(n, EndNode | ElseNode):
                raise self._error(f"unexpected {n}")
            root.nodes.append(n)
        return root

    def _parse_definition(self) -> None:
        context = "define clause"
        tok = self._next_non_space()
        if tok.kind not in (Kind.STRING, Kind.RAW_STRING):
            self._unexpected(tok, context)
        name = self._unquote(tok.val)
        self._expect(Kind.RIGHT_DELIM, context)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, EndNode):
            raise self._error(f"unexpected {end} in {context}")
        self._add_template(name, body)

    def _add_template(self, name: str, body: ListNode) -> None:
        existing = self.templates.get(name)
        if existing is not None and existing.nodes and body.nodes:
            raise self._error(f"template: multiple definition of template {_quote(name)}")
        if existing is None or body.nodes:
            self.templates[name] = body

    def _item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self._peek_non_space().pos)
        while self._peek_non_space().kind is not Kind.EOF:
            n = self._text_or_action()
            if isinstance(n, EndNode | ElseNode):
                return lst, n
            lst.nodes.append(n)
        raise self._error("unexpected EOF")

    def _text_or_action(self) -> Node:
        tok = self._next_non_space()
        if tok.kind is Kind.TEXT:
            return TextNode(tok.pos, tok.val)
        if tok.kind is Kind.LEFT_DELIM:
            self.action_line = tok.line
            try:
                return self._action()
            finally:
                self.action_line = 0
        self._unexpected(tok, "input")
        raise AssertionError("unreachable")

    def _action(self) -> Node:
        tok = self._next_non_space()
        handlers: dict[Kind, Callable[[Token], Node]] = {
            Kind.BLOCK: self._block_control,
            Kind.BREAK: self._break_control,
            Kind.CONTINUE: self._continue_control,
            Kind.ELSE: self._else_control,
            Kind.END: self._end_control,
            Kind.IF: self._if_control,
            Kind.RANGE: self._range_control,
            Kind.TEMPLATE: self._template_control,
            Kind.WITH: self._with_control,
        }
        handler = handlers.get(tok.kind)
        if handler is not None:
            return handler(tok)
        self._backup()
        start = self._peek()
        # Variables declared by a plain action persist until the enclosing {{end}}.
        return ActionNode(start.pos, start.line, self._pipeline("command", Kind.RIGHT_DELIM))

    def _break_control(self, tok: Token) -> Node:
        nxt = self._next_non_space()
        if nxt.kind is not Kind.RIGHT_DELIM:
            self._unexpected(nxt, "{{break}}")
        if self.range_depth == 0:
            raise self._error("{{break}} outside {{range}}")
        return BreakNode(tok.pos, tok.line)

    def _continue_control(self, tok: Token) -> Node:
        nxt = self._next_non_space()
        if nxt.kind is not Kind.RIGHT_DELIM:
            self._unexpected(nxt, "{{continue}}")
        if self.range_depth == 0:
            raise self._error("{{continue}} outside {{range}}")
        return ContinueNode(tok.pos, tok.line)

    def _pipeline(self, context: str, end: Kind) -> PipeNode:
        tok = self._peek_non_space()
        pipe = PipeNode(tok.pos, tok.line)
        while True:  # loops only for the second variable of a range declaration
            v = self._peek_non_space()
            if v.kind is not Kind.VARIABLE:
                break
            self._next_non_space()
            v_index = self.index - 1
            nxt = self._peek_non_space()
            if nxt.kind in (Kind.ASSIGN, Kind.DECLARE):
                pipe.is_assign = nxt.kind is Kind.ASSIGN
                self._next_non_space()
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                break
            if nxt.kind is Kind.CHAR and nxt.val == ",":
                self._next_non_space()
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self._peek_non_space().kind in (
                        Kind.VARIABLE, Kind.RIGHT_DELIM, Kind.RIGHT_PAREN,
                    ):
                        continue
                    raise self._error("range can only initialize variables")
                raise self._error(f"too many declarations in {context}")
            # "$x foo": $x is an argument, not a declaration; give it back.
            self.index = v_index
            break
        while True:
            tok = self._next_non_space()
            if tok.kind is end:
                self._check_pipeline(pipe, context)
                return pipe
            if tok.kind in _TERM_KINDS:
                self._backup()
                pipe.cmds.append(self._command())
            else:
                self._unexpected(tok, context)

    def _check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise self._error(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], BoolNode | DotNode | NilNode | NumberNode | StringNode):
                raise self._error(f"non executable command in pipeline stage {i + 2}")

    def _parse_control(
        self, allow_else_if: bool, context: str
    ) -> tuple[int, int, PipeNode, ListNode, ListNode | None]:
        saved = len(self.vars)
        try:
            pipe = self._pipeline(context, Kind.RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            body, nxt = self._item_list()
            if context == "range":
                self.range_depth -= 1
            else_body: ListNode | None = None
            if isinstance(nxt, ElseNode):
                if allow_else_if and self._peek().kind is Kind.IF:
                    # {{else if b}} is parsed as {{else}}{{if b}}...{{end}}, sharing one {{end}}.
                    if_tok = self._raw_next()
                    else_body = ListNode(nxt.pos)
                    else_body.nodes.append(self._if_control(if_tok))
                else:
                    else_body, end = self._item_list()
                    if not isinstance(end, EndNode):
                        raise self._error(f"expected end; found {end}")
            return pipe.pos, pipe.line, pipe, body, else_body
        finally:
            del self.vars[saved:]

    def _if_control(self, tok: Token) -> Node:
        pos, line, pipe, body, else_body = self._parse_control(True, "if")
        return IfNode(pos, line, pipe, body, else_body)

    def _range_control(self, tok: Token) -> Node:
        pos, line, pipe, body, else_body = self._parse_control(False, "range")
        return RangeNode(pos, line, pipe, body, else_body)

    def _with_control(self, tok: Token) -> Node:
        pos, line, pipe, body, else_body = self._parse_control(False, "with")
        return WithNode(pos, line, pipe, body, else_body)

    def _end_control(self, tok: Token) -> Node:
        return EndNode(self._expect(Kind.RIGHT_DELIM, "end").pos)

    def _else_control(self, tok: Token) -> Node:
        peek = self._peek_non_space()
        if peek.kind is Kind.IF:
            # Leave the "if" pending; _parse_control turns it into a nested {{if}}.
            while self._peek().kind is Kind.SPACE:
                self._raw_next()
            return ElseNode(peek.pos, peek.line)
        end = self._expect(Kind.RIGHT_DELIM, "else")
        return ElseNode(end.pos, end.line)

    def _block_control(self, tok: Token) -> Node:
        context = "block clause"
        name_tok = self._next_non_space()
        name = self._template_name(name_tok, context)
        pipe = self._pipeline(context, Kind.RIGHT_DELIM)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, EndNode):
            raise self._error(f"unexpected {end} in {context}")
        self._add_template(name, body)
        return TemplateNode(name_tok.pos, name_tok.line, name, pipe)

    def _template_control(self, tok: Token) -> Node:
        context = "template clause"
        name_tok = self._next_non_space()
        name = self._template_name(name_tok, context)
        pipe: PipeNode | None = None
        if self._next_non_space().kind is not Kind.RIGHT_DELIM:
            self._backup()
            pipe = self._pipeline(context, Kind.RIGHT_DELIM)
        return TemplateNode(name_tok.pos, name_tok.line, name, pipe)

    def _template_name(self, tok: Token, context: str) -> str:
        if tok.kind in (Kind.STRING, Kind.RAW_STRING):
            return self._unquote(tok.val)
        self._unexpected(tok, context)
        raise AssertionError("unreachable")

    def _unquote(self, quoted: str) -> str:
        try:
            return _strconv.unquote(quoted)
        except _strconv.SyntaxErr as e:
            raise self._error(str(e)) from None

    def _command(self) -> CommandNode:
        cmd = CommandNode(self._peek_non_space().pos)
        while True:
            self._peek_non_space()
            operand = self._operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self._raw_next()
            if tok.kind is Kind.SPACE:
                continue
            if tok.kind in (Kind.RIGHT_DELIM, Kind.RIGHT_PAREN):
                self._backup()
            elif tok.kind is not Kind.PIPE:
                self._unexpected(tok, "operand")
            break
        if not cmd.args:
            raise self._error("empty command")
        return cmd

    def _operand(self) -> Node | None:
        node = self._term()
        if node is None:
            return None
        if self._peek().kind is Kind.FIELD:
            chain = ChainNode(self._peek().pos, node)
            while self._peek().kind is Kind.FIELD:
                chain.fields.append(self._raw_next().val[1:])
            # Like Go, fold fields onto field and variable nodes; keep a chain otherwise.
            if isinstance(node, FieldNode):
                return FieldNode(chain.pos, [*node.ident, *chain.fields])
            if isinstance(node, VariableNode):
                return VariableNode(chain.pos, [*node.ident, *chain.fields])
            if isinstance(node, BoolNode | StringNode | NumberNode | NilNode | DotNode):
                raise self._error(f"unexpected . after term {_quote(str(node))}")
            return chain
        return node

    def _term(self) -> Node | None:
        tok = self._next_non_space()
        kind = tok.kind
        if kind is Kind.ERROR:
            self._unexpected(tok, "operand")
        if kind is Kind.IDENTIFIER:
            if not self.has_function(tok.val):
                raise self._error(f"function {_quote(tok.val)} not defined")
            return IdentifierNode(tok.pos, tok.val)
        if kind is Kind.DOT:
            return DotNode(tok.pos)
        if kind is Kind.NIL:
            return NilNode(tok.pos)
        if kind is Kind.VARIABLE:
            return self._use_var(tok)
        if kind is Kind.FIELD:
            return FieldNode(tok.pos, [tok.val[1:]])
        if kind is Kind.BOOL:
            return BoolNode(tok.pos, tok.val == "true")
        if kind in (Kind.CHAR_CONSTANT, Kind.NUMBER):
            return self._number(tok)
        if kind is Kind.LEFT_PAREN:
            return self._pipeline("parenthesized pipeline", Kind.RIGHT_PAREN)
        if kind in (Kind.STRING, Kind.RAW_STRING):
            return StringNode(tok.pos, tok.val, self._unquote(tok.val))
        self._backup()
        return None

    def _use_var(self, tok: Token) -> VariableNode:
        if tok.val not in self.vars:
            raise self._error(f"undefined variable {_quote(tok.val)}")
        return VariableNode(tok.pos, [tok.val])

    def _number(self, tok: Token) -> NumberNode:
        text = tok.val
        n = NumberNode(tok.pos, text)
        if tok.kind is Kind.CHAR_CONSTANT:
            try:
                r = ord(_strconv.unquote(text))
            except _strconv.SyntaxErr:
                if len(text) > 3 and text[1] != "\\":
                    raise self._error(f"malformed character constant: {text}") from None
                raise self._error("invalid syntax") from None
            n.is_int, n.int_value, n.is_float, n.float_value = True, r, True, float(r)
            return n
        if text.endswith("i"):
            raise self._error(f"complex constants are not supported: {text}")
        try:
            n.int_value = _strconv.parse_int(text)
            n.is_int = True
        except _strconv.SyntaxErr:
            pass
        if n.is_int:
            n.is_float, n.float_value = True, float(n.int_value)
            return n
        try:
            f = _strconv.parse_float(text)
        except _strconv.SyntaxErr as e:
            if "out of range" in str(e):
                raise self._error(f"illegal number syntax: {_quote(text)}") from None
            try:
                _strconv.parse_int(text, unsigned=True)
            except _strconv.SyntaxErr:
                raise self._error(f"illegal number syntax: {_quote(text)}") from None
            # Fits uint64 but not int64: Go accepts it as a uint, which we never need.
            raise self._error(f"integer overflow: {_quote(text)}") from None
        if not any(c in text for c in ".eEpP"):
            raise self._error(f"integer overflow: {_quote(text)}")
        n.is_float, n.float_value = True, f
        if f.is_integer() and -(2**63) <= f < 2**63:
            n.is_int, n.int_value = True, int(f)
        return n


def _quote(s: str) -> str:
    return _strconv.quote(s)


def parse(name: str, text: str, has_function: Callable[[str], bool]) -> Tree:
    """Parse a template; raises ParseError with Go's message, offset and line."""
    p = _Parser(text, has_function)
    root = p.parse()
    return Tree(name, text, root, p.templates)


__all__ = ["BranchNode", "ParseError", "Tree", "parse"]
