"""Executes a parsed template, following Go 1.19's text/template/exec.go.

The evaluation order, the argument conversions and the error texts are Go's, because
Prometheus shows the error text to users inside the annotation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

from . import _gofmt, _strconv
from ._builtins import ANY, BUILTINS, FLOAT, NILABLE, RESULT, SAMPLE, STRING, VALUE, Func
from ._gotime import GoTime
from ._nodes import (
    ActionNode,
    BoolNode,
    BreakNode,
    ChainNode,
    CommandNode,
    ContinueNode,
    DotNode,
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
from ._parser import Tree
from ._values import HTML, AlertData, GoMap, QueryResult, Sample, is_true, type_name

# Go allows 100000 nested {{template}} calls; Python's stack does not, so we stop sooner.
MAX_TEMPLATE_DEPTH = 100


class ExecError(Exception):
    """An execution error; str() is Go's full message ("template: name:1:2: executing ...")."""


class _Missing:
    """Go's missingVal: no value is being piped into this command."""


MISSING = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _byte_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogateescape"))


class _State:
    def __init__(self, tree: Tree, funcs: Mapping[str, Func]) -> None:
        self.tree = tree
        self.funcs = funcs
        self.tmpl_name = tree.name
        self.node: Node | None = None
        self.vars: list[tuple[str, object]] = []
        self.depth = 0
        self.out: list[str] = []

    # Errors.
    def at(self, node: Node) -> None:
        self.node = node

    def error(self, message: str) -> NoReturn:
        name = self.tmpl_name
        if self.node is None:
            raise ExecError(f"template: {name}: {message}")
        # ErrorContext: line and byte column of the node; the first line counts from 0.
        before = self.tree.text[: self.node.pos]
        newline = before.rfind("\n")
        col = _byte_len(before) if newline < 0 else _byte_len(before[newline + 1 :])
        line = 1 + before.count("\n")
        context = str(self.node)
        raise ExecError(
            f"template: {self.tree.name}:{line}:{col}: executing {_strconv.quote(name)} "
            f"at <{context}>: {message}"
        )

    # Variables.
    def push(self, name: str, value: object) -> None:
        self.vars.append((name, value))

    def set_var(self, name: str, value: object) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        self.error(f"undefined variable: {name}")

    def set_top_var(self, n: int, value: object) -> None:
        self.vars[-n] = (self.vars[-n][0], value)

    def var_value(self, name: str) -> object:
        for var_name, value in reversed(self.vars):
            if var_name == name:
                return value
        self.error(f"undefined variable: {name}")

    # Statements.
    def walk(self, dot: object, node: Node) -> None:
        self.at(node)
        if isinstance(node, ActionNode):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, val)
        elif isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, IfNode | WithNode):
            mark = len(self.vars)
            try:
                val = self.eval_pipeline(dot, node.pipe)
                if is_true(val):
                    self.walk(val if isinstance(node, WithNode) else dot, node.body)
                elif node.else_body is not None:
                    self.walk(dot, node.else_body)
            finally:
                del self.vars[mark:]
        elif isinstance(node, RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue
        else:
            self.error(f"unknown node: {node}")

    def walk_range(self, dot: object, r: RangeNode) -> None:
        self.at(r)
        outer = len(self.vars)
        try:
            val = self.eval_pipeline(dot, r.pipe)
            if isinstance(val, Sample):
                val = val.deref()
            mark = len(self.vars)
            items: list[tuple[object, object]]
            if isinstance(val, QueryResult | list):
                items = [(i, e) for i, e in enumerate(val)]
            elif isinstance(val, GoMap):
                items = [(k, val[k]) for k in sorted(val)]
            elif val is None:
                items = []
            else:
                self.error(f"range can't iterate over {_gofmt.sprint([val])}")
            try:
                for index, elem in items:
                    self._range_iteration(r, index, elem, mark)
            except _Break:
                return
            if not items and r.else_body is not None:
                self.walk(dot, r.else_body)
        finally:
            del self.vars[outer:]

    def _range_iteration(self, r: RangeNode, index: object, elem: object, mark: int) -> None:
        decl = r.pipe.decl
        if decl:
            if r.pipe.is_assign:
                self.set_var(decl[0].ident[0], index if len(decl) > 1 else elem)
            else:
                self.set_top_var(1, elem)
        if len(decl) > 1:
            if r.pipe.is_assign:
                self.set_var(decl[1].ident[0], elem)
            else:
                self.set_top_var(2, index)
        try:
            self.walk(elem, r.body)
        except _Continue:
            pass
        finally:
            del self.vars[mark:]

    def walk_template(self, dot: object, t: TemplateNode) -> None:
        self.at(t)
        body = self.tree.templates.get(t.name)
        if body is None and t.name == self.tree.name:
            body = self.tree.root
        if body is None:
            self.error(f"template {_strconv.quote(t.name)} not defined")
        if self.depth >= MAX_TEMPLATE_DEPTH:
            self.error(f"exceeded maximum template depth ({MAX_TEMPLATE_DEPTH})")
        # Without a pipeline the template runs with dot = nil, not the caller's dot.
        dot = self.eval_pipeline(dot, t.pipe) if t.pipe is not None else None
        saved = (self.tmpl_name, self.vars)
        self.tmpl_name, self.vars = t.name, [("$", dot)]
        self.depth += 1
        try:
            self.walk(dot, body)
        finally:
            self.depth -= 1
            self.tmpl_name, self.vars = saved

    def print_value(self, node: Node, v: object) -> None:
        self.at(node)
        if v is None:
            self.out.append("<no value>")
            return
        if isinstance(v, Sample) and v.pointer:
            v = v.deref()
        self.out.append(_gofmt.sprint([v]))

    # Expressions.
    def eval_pipeline(self, dot: object, pipe: PipeNode) -> object:
        self.at(pipe)
        value: object = MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.ident[0], value)
            else:
                self.push(var.ident[0], value)
        return value

    def not_a_function(self, args: list[Node], final: object) -> None:
        if len(args) > 1 or final is not MISSING:
            self.error(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: object, cmd: CommandNode, final: object) -> object:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain_node(dot, first, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            return self.eval_variable_node(dot, first, cmd.args, final)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            self.error("nil is not a command")
        if isinstance(first, NumberNode):
            return self.ideal_constant(first)
        if isinstance(first, StringNode):
            return first.text
        self.error(f"can't evaluate command {_strconv.quote(str(first))}")

    def ideal_constant(self, n: NumberNode) -> object:
        self.at(n)
        text = n.text
        is_hex_int = text.lower().startswith(("0x", "-0x", "+0x")) and "p" not in text.lower()
        if n.is_float and not is_hex_int and not text.startswith("'") and any(
            c in text for c in ".eEpP"
        ):
            return n.float_value
        if n.is_int:
            return n.int_value
        self.error(f"{text} overflows int")

    def eval_field_node(
        self, dot: object, field: FieldNode, args: list[Node] | None, final: object
    ) -> object:
        self.at(field)
        return self.eval_field_chain(dot, dot, field, field.ident, args, final)

    def eval_chain_node(
        self, dot: object, chain: ChainNode, args: list[Node] | None, final: object
    ) -> object:
        self.at(chain)
        if isinstance(chain.node, NilNode):
            self.error(f"indirection through explicit nil in {chain}")
        receiver = self.eval_arg(dot, None, chain.node)
        return self.eval_field_chain(dot, receiver, chain, chain.fields, args, final)

    def eval_variable_node(
        self, dot: object, var: VariableNode, args: list[Node] | None, final: object
    ) -> object:
        self.at(var)
        value = self.var_value(var.ident[0])
        if len(var.ident) == 1:
            self.not_a_function(args or [var], final)
            return value
        return self.eval_field_chain(dot, value, var, var.ident[1:], args, final)

    def eval_field_chain(
        self, dot: object, receiver: object, node: Node, ident: list[str],
        args: list[Node] | None, final: object,
    ) -> object:
        # Go names the static type in errors: a map[string]interface{} element is an
        # "interface {}" whatever it holds.
        static: str | None = None
        for name in ident[:-1]:
            next_static = receiver.elem_type if isinstance(receiver, GoMap) else None
            receiver = self.eval_field(dot, name, node, None, MISSING, receiver, static)
            static = next_static
        return self.eval_field(dot, ident[-1], node, args, final, receiver, static)

    def eval_field(
        self, dot: object, name: str, node: Node, args: list[Node] | None, final: object,
        receiver: object, static: str | None = None,
    ) -> object:
        if static != ANY:
            static = None
        if receiver is None:
            if static == ANY:
                self.error(f"nil pointer evaluating interface {{}}.{name}")
            return None  # missingkey=zero: a field of nothing is nothing
        if isinstance(receiver, GoTime):
            method = receiver.method(name)
            if method is not None:
                arity, fn = method
                params = (STRING,) * arity
                return self.eval_call(dot, Func(params, fn), False, node, name, args, final)
        has_args = (args is not None and len(args) > 1) or final is not MISSING
        if isinstance(receiver, AlertData | Sample):
            for field_name, value in receiver.fields():
                if field_name == name:
                    if has_args:
                        self.error(f"{name} has arguments but cannot be invoked as function")
                    return value
        elif isinstance(receiver, GoMap):
            if has_args:
                self.error(f"{name} is not a method but has arguments")
            return receiver.get(name, receiver.zero)
        self.error(f"can't evaluate field {name} in type {static or type_name(receiver)}")

    def eval_function(
        self, dot: object, node: IdentifierNode, cmd: Node, args: list[Node] | None,
        final: object,
    ) -> object:
        self.at(node)
        name = node.ident
        fn = self.funcs.get(name)
        if fn is None:
            self.error(f"{_strconv.quote(name)} is not a defined function")
        return self.eval_call(dot, fn, name in BUILTINS, cmd, name, args, final)

    def eval_call(
        self, dot: object, fn: Func, is_builtin: bool, node: Node, name: str,
        args: list[Node] | None, final: object,
    ) -> object:
        arg_nodes = args[1:] if args else []
        params = fn.params
        num_in = len(arg_nodes) + (0 if final is MISSING else 1)
        num_fixed = len(arg_nodes)
        if fn.variadic:
            num_fixed = len(params) - 1
            if num_in < num_fixed:
                self.error(
                    f"wrong number of args for {name}: want at least {num_fixed} "
                    f"got {len(arg_nodes)}"
                )
        elif num_in != len(params):
            self.error(f"wrong number of args for {name}: want {len(params)} got {num_in}")

        if is_builtin and name in ("and", "or"):
            # and/or evaluate their arguments lazily and return one of them.
            v: object = None
            for a in arg_nodes:
                v = self.eval_arg(dot, VALUE, a)
                if is_true(v) == (name == "or"):
                    return v
            if final is not MISSING:
                v = self.validate_type(final, VALUE)
            return v

        argv: list[object] = []
        i = 0
        while i < num_fixed and i < len(arg_nodes):
            argv.append(self.eval_arg(dot, params[i], arg_nodes[i]))
            i += 1
        if fn.variadic:
            while i < len(arg_nodes):
                argv.append(self.eval_arg(dot, params[-1], arg_nodes[i]))
                i += 1
        if final is not MISSING:
            t = params[-1]
            if fn.variadic and num_in - 1 < num_fixed:
                t = params[num_in - 1]
            argv.append(self.validate_type(final, t))
        try:
            return fn.impl(*argv)
        except Exception as e:
            self.at(node)
            self.error(f"error calling {name}: {e}")

    def eval_arg(self, dot: object, typ: str | None, n: Node) -> object:
        self.at(n)
        if isinstance(n, DotNode):
            return self.validate_type(dot, typ)
        if isinstance(n, NilNode):
            if typ is None or typ in NILABLE:
                return None
            self.error(f"cannot assign nil to {typ}")
        if isinstance(n, FieldNode):
            return self.validate_type(self.eval_field_node(dot, n, [n], MISSING), typ)
        if isinstance(n, VariableNode):
            return self.validate_type(self.eval_variable_node(dot, n, None, MISSING), typ)
        if isinstance(n, PipeNode):
            return self.validate_type(self.eval_pipeline(dot, n), typ)
        if isinstance(n, IdentifierNode):
            return self.validate_type(self.eval_function(dot, n, n, None, MISSING), typ)
        if isinstance(n, ChainNode):
            return self.validate_type(self.eval_chain_node(dot, n, None, MISSING), typ)
        if typ == STRING:
            if isinstance(n, StringNode):
                return n.text
            self.error(f"expected string; found {n}")
        if typ == FLOAT:
            if isinstance(n, NumberNode) and n.is_float:
                return n.float_value
            self.error(f"expected float; found {n}")
        if typ in (ANY, VALUE):
            if isinstance(n, BoolNode):
                return n.value
            if isinstance(n, NumberNode):
                return self.ideal_constant(n)
            if isinstance(n, StringNode):
                return n.text
            self.error(f"can't handle assignment of {n} to empty interface argument")
        self.error(f"can't handle {n} for arg of type {typ}")

    def validate_type(self, value: object, typ: str | None) -> object:
        if typ is None or typ in (ANY, VALUE):
            return value
        if value is None:
            if typ in NILABLE:
                return None
            self.error(f"invalid value; expected {typ}")
        ok = {
            STRING: type(value) is str,
            FLOAT: type(value) is float,
            RESULT: isinstance(value, QueryResult),
            SAMPLE: isinstance(value, Sample) and value.pointer,
        }.get(typ, False)
        if not ok:
            self.error(f"wrong type for value; expected {typ}; got {type_name(value)}")
        return value


def execute(
    tree: Tree, data: object, funcs: Mapping[str, Func], *,
    declared: Sequence[tuple[str, object]] = (), skip: int = 0,
) -> str:
    """Run a parsed template against dot; raises ExecError on failure.

    declared and skip shortcut a prelude of variable declarations that cannot fail or
    print (Prometheus's ``{{$labels := .Labels}}``...): the first ``skip`` nodes of the
    root are not run, and ``declared`` are the variables they would have declared.
    """
    state = _State(tree, funcs)
    state.vars = [("$", data), *declared]
    if skip:
        state.at(tree.root)
        for node in tree.root.nodes[skip:]:
            state.walk(data, node)
    else:
        state.walk(data, tree.root)
    return "".join(state.out)


__all__ = ["HTML", "MAX_TEMPLATE_DEPTH", "ExecError", "execute"]
