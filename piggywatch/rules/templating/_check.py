"""Load-time checks that go beyond Go's parser.

Go only rejects unknown functions and undefined variables when parsing; Prometheus finds
everything else when the alert fires and then shows "<error expanding template ...>" in
the page. These checks catch the common cases while the rule file loads: unknown fields of
the alert data ($labelz is Go's job, .Foo is ours), fields of a number or a string, wrong
argument counts, constant arguments of the wrong type, {{template}} of an unknown name,
and comparisons of $value with an integer constant (`gt $value 1`), which Go refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._builtins import BUILTINS, FLOAT, RESULT, SAMPLE, STRING, VALUE, Func
from ._goregexp import GoRegexpError, compile_go
from ._nodes import (
    ActionNode,
    BoolNode,
    BranchNode,
    ChainNode,
    CommandNode,
    DotNode,
    FieldNode,
    IdentifierNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    PipeNode,
    RangeNode,
    StringNode,
    TemplateNode,
    VariableNode,
    WithNode,
)
from ._parser import Tree

# What each field of the alert data holds, and what the prefix variables hold.
ROOT_FIELDS = {"Labels": "map", "ExternalLabels": "map", "ExternalURL": "string", "Value": "float"}
_PREFIX_VARS = {
    "$": "root", "$labels": "map", "$externalLabels": "map", "$externalURL": "string",
    "$value": "float",
}
_GO_TYPE = {"string": "string", "float": "float64", "int": "int", "bool": "bool"}
_COMPARISONS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
_REGEXP_FUNCTIONS = frozenset({"match", "reReplaceAll"})


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class Problem:
    """A check failure at an offset of the template text."""

    pos: int
    message: str


def _walk_decls(node: Node) -> Iterator[str]:
    if isinstance(node, PipeNode):
        for v in node.decl:
            yield v.ident[0]
        for c in node.cmds:
            yield from _walk_decls(c)
    elif isinstance(node, CommandNode):
        for a in node.args:
            yield from _walk_decls(a)
    elif isinstance(node, ChainNode):
        yield from _walk_decls(node.node)
    elif isinstance(node, ListNode):
        for n in node.nodes:
            yield from _walk_decls(n)
    elif isinstance(node, ActionNode):
        yield from _walk_decls(node.pipe)
    elif isinstance(node, BranchNode):
        yield from _walk_decls(node.pipe)
        yield from _walk_decls(node.body)
        if node.else_body is not None:
            yield from _walk_decls(node.else_body)
    elif isinstance(node, TemplateNode) and node.pipe is not None:
        yield from _walk_decls(node.pipe)


def _is_int_constant(n: NumberNode) -> bool:
    text = n.text
    is_hex_int = text.lower().lstrip("+-").startswith("0x") and "p" not in text.lower()
    looks_float = any(c in text for c in ".eEpP") and not is_hex_int and not text.startswith("'")
    return not (n.is_float and looks_float)


class _Checker:
    def __init__(self, tree: Tree, funcs: dict[str, Func], skip_nodes: int) -> None:
        self.tree = tree
        self.funcs = funcs
        self.skip = skip_nodes
        self.problems: list[Problem] = []
        user_nodes = tree.root.nodes[skip_nodes:]
        redeclared = {name for n in user_nodes for name in _walk_decls(n)}
        for body in tree.templates.values():
            redeclared.update(_walk_decls(body))
        # A variable the template declares or assigns itself may hold anything.
        self.var_kinds = {k: v for k, v in _PREFIX_VARS.items() if k not in redeclared}

    def run(self) -> list[Problem]:
        for n in self.tree.root.nodes[self.skip :]:
            self.node(n, root=True)
        for body in self.tree.templates.values():
            self.node(body, root=False)
        return self.problems

    def report(self, node: Node, message: str) -> None:
        pos = node.pos
        # Go positions $x.a.b and .A.b at the first chained field; point at the start.
        if isinstance(node, VariableNode) and len(node.ident) > 1:
            pos -= len(node.ident[0])
        elif isinstance(node, FieldNode) and len(node.ident) > 1:
            pos -= len(node.ident[0]) + 1
        self.problems.append(Problem(pos, message))

    def node(self, n: Node, *, root: bool) -> None:
        if isinstance(n, ListNode):
            for child in n.nodes:
                self.node(child, root=root)
        elif isinstance(n, ActionNode):
            self.pipe(n.pipe, root=root)
        elif isinstance(n, BranchNode):
            self.pipe(n.pipe, root=root)
            # with and range move dot into the value; if keeps it.
            self.node(n.body, root=root and not isinstance(n, WithNode | RangeNode))
            if n.else_body is not None:
                self.node(n.else_body, root=root)
        elif isinstance(n, TemplateNode):
            if n.name not in self.tree.templates and n.name != self.tree.name:
                self.report(n, f'template "{n.name}" is not defined')
            if n.pipe is not None:
                self.pipe(n.pipe, root=root)

    def pipe(self, p: PipeNode, *, root: bool) -> None:
        for i, cmd in enumerate(p.cmds):
            self.command(cmd, piped=i > 0, root=root)

    def command(self, cmd: CommandNode, *, piped: bool, root: bool) -> None:
        for arg in cmd.args:
            self.operand(arg, root=root)
        first = cmd.args[0]
        if not isinstance(first, IdentifierNode):
            return
        fn = self.funcs.get(first.ident)
        if fn is None:
            return
        args = cmd.args[1:]
        count = len(args) + (1 if piped else 0)
        if fn.variadic:
            if count < len(fn.params) - 1:
                want = _plural(len(fn.params) - 1, "argument")
                self.report(cmd, f"{first.ident} needs at least {want}, got {count}")
        elif count != len(fn.params):
            want = _plural(len(fn.params), "argument")
            self.report(cmd, f"{first.ident} takes {want}, got {count}")
            return
        for i, a in enumerate(args):
            typ = fn.params[min(i, len(fn.params) - 1)]
            self.constant_type(first.ident, a, typ)
        if first.ident in _COMPARISONS and first.ident in BUILTINS:
            self.comparison(cmd, first.ident, args, root=root)
        if first.ident in _REGEXP_FUNCTIONS and args and isinstance(args[0], StringNode):
            try:
                compile_go(args[0].text)
            except GoRegexpError as e:
                self.report(args[0], f"{first.ident}: {e}")

    def constant_type(self, name: str, a: Node, typ: str) -> None:
        if typ == STRING and isinstance(a, NumberNode | BoolNode | NilNode):
            self.report(a, f"{name} expects a string here, found {a}")
        elif typ in (RESULT, SAMPLE) and isinstance(a, NumberNode | BoolNode | StringNode):
            what = "a query result" if typ == RESULT else "a query sample"
            self.report(a, f"{name} expects {what} here, found {a}")
        elif typ == VALUE and isinstance(a, NilNode):
            self.report(a, f"{name} cannot take nil")
        elif typ == FLOAT and isinstance(a, StringNode | BoolNode | NilNode):
            self.report(a, f"{name} expects a number here, found {a}")

    def comparison(self, cmd: CommandNode, name: str, args: list[Node], *, root: bool) -> None:
        kinds = [(a, self.static_kind(a, root=root)) for a in args]
        known = [(a, k) for a, k in kinds if k is not None]
        if len(known) < 2:
            return
        first_node, first_kind = known[0]
        for a, k in known[1:]:
            if k == first_kind:
                continue
            hint = ""
            pair = {k, first_kind}
            if pair == {"int", "float"}:
                int_node = a if k == "int" else first_node
                hint = f"; write {int_node}.0 to compare with a float"
            self.report(
                cmd,
                f"{name} compares {_GO_TYPE[first_kind]} with {_GO_TYPE[k]}, which fails with "
                f'"incompatible types for comparison"{hint}',
            )
            return

    def static_kind(self, a: Node, *, root: bool) -> str | None:
        if isinstance(a, NumberNode):
            return "int" if _is_int_constant(a) else "float"
        if isinstance(a, StringNode):
            return "string"
        if isinstance(a, BoolNode):
            return "bool"
        if isinstance(a, VariableNode):
            kind = self.var_kinds.get(a.ident[0])
            return self.chain_kind(kind, a.ident[1:]) if kind else None
        if isinstance(a, FieldNode) and root:
            return self.chain_kind("root", a.ident)
        return None

    @staticmethod
    def chain_kind(kind: str | None, idents: list[str]) -> str | None:
        for name in idents:
            if kind == "root":
                kind = ROOT_FIELDS.get(name)
            elif kind == "map":
                kind = "string"
            else:
                return None
        return kind if kind in _GO_TYPE else None

    def operand(self, a: Node, *, root: bool) -> None:
        if isinstance(a, PipeNode):
            self.pipe(a, root=root)
        elif isinstance(a, ChainNode):
            self.operand(a.node, root=root)
        elif isinstance(a, FieldNode) and root:
            self.fields(a, "root", a.ident, "dot")
        elif isinstance(a, VariableNode) and len(a.ident) > 1:
            kind = self.var_kinds.get(a.ident[0])
            if kind is not None:
                self.fields(a, kind, a.ident[1:], a.ident[0])
        elif isinstance(a, DotNode):
            return

    def fields(self, node: Node, kind: str, idents: list[str], start: str) -> None:
        path = "" if start == "dot" else start
        for name in idents:
            if kind == "root":
                if name not in ROOT_FIELDS:
                    known = ", ".join("." + f for f in ROOT_FIELDS)
                    self.report(
                        node, f'unknown field ".{name}" of the alert data (it has {known})'
                    )
                    return
                kind = ROOT_FIELDS[name]
            elif kind == "map":
                kind = "string"
            else:
                self.report(node, f'{path} is a {_GO_TYPE[kind]} and has no field "{name}"')
                return
            path += "." + name


def check_tree(tree: Tree, funcs: dict[str, Func], *, skip_nodes: int) -> list[Problem]:
    """Problems in a parsed alert template; the first skip_nodes root nodes are the prefix."""
    return _Checker(tree, funcs, skip_nodes).run()
