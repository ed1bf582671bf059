"""Alert-template expansion as Prometheus does it in rules/alerting.go and template.go."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import _check, _exec, _gofmt, _nodes, _parser, _prometheus
from ._values import AlertData, string_map

# Prometheus prepends these definitions to every label and annotation template.
PREFIX = (
    "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}"
    "{{$externalURL := .ExternalURL}}{{$value := .Value}}"
)
_PREFIX_NODES = 4


@dataclass(frozen=True)
class QuerySample:
    """One series of a `query` result as a template sees it: its labels and value."""

    labels: Mapping[str, str]
    value: float


QueryFunc = Callable[[str], Sequence[QuerySample]]


class TemplateError(Exception):
    """A template that cannot be parsed, fails a load-time check, or fails to render.

    line and column (1-based, in the user's template) are set when known.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def _template_name(alert_name: str) -> str:
    return "__alert_" + alert_name


@functools.lru_cache(maxsize=1024)
def _parse(name: str, text: str) -> _parser.Tree | _parser.ParseError:
    try:
        return _parser.parse(name, PREFIX + text, _prometheus.FUNCTION_NAMES.__contains__)
    except _parser.ParseError as e:
        return e
    except RecursionError:
        # Go has no such limit; thousands of nested parentheses are not a real template.
        return _parser.ParseError("template nesting too deep", pos=len(PREFIX), line=1)


# Functions whose result is not a function of the template's inputs (the alert's labels and
# value, the external labels and URL): they read live data. Prometheus has only `query`.
LIVE_FUNCTIONS = frozenset({"query"})
# Deeper templates are never cached: how deep Python can recurse while rendering depends
# on the caller's stack, so their "nesting too deep" error is not a function of the inputs.
_MAX_CACHED_DEPTH = 40


@dataclass(frozen=True)
class TemplateInputs:
    """What one template's rendered text can depend on, decided from its parse tree.

    live: it calls a function that reads live data (``query``) or cannot be analysed
    safely; it must be rendered every time. Otherwise the text is a function of the
    template, $labels, the external labels and URL, and -- if uses_value -- $value.
    uses_value is conservative: any use of $value, $, dot or a field of dot counts.
    """

    live: bool
    uses_value: bool


class _Scan:
    def __init__(self) -> None:
        self.identifiers: set[str] = set()
        self.variables: set[str] = set()
        self.dot = False
        self.template_call = False
        self.too_deep = False

    def visit(self, node: object, depth: int) -> None:
        if depth > _MAX_CACHED_DEPTH:
            self.too_deep = True
            return
        if isinstance(node, _nodes.IdentifierNode):
            self.identifiers.add(node.ident)
        elif isinstance(node, _nodes.VariableNode):
            self.variables.add(node.ident[0])
        elif isinstance(node, (_nodes.DotNode, _nodes.FieldNode)):
            self.dot = True
        elif isinstance(node, _nodes.ChainNode):
            self.visit(node.node, depth + 1)
        elif isinstance(node, _nodes.CommandNode):
            for arg in node.args:
                self.visit(arg, depth + 1)
        elif isinstance(node, _nodes.PipeNode):
            for var in node.decl:
                self.visit(var, depth + 1)
            for cmd in node.cmds:
                self.visit(cmd, depth + 1)
        elif isinstance(node, _nodes.ListNode):
            for child in node.nodes:
                self.visit(child, depth + 1)
        elif isinstance(node, _nodes.ActionNode):
            self.visit(node.pipe, depth + 1)
        elif isinstance(node, _nodes.BranchNode):
            self.visit(node.pipe, depth + 1)
            self.visit(node.body, depth + 1)
            if node.else_body is not None:
                self.visit(node.else_body, depth + 1)
        elif isinstance(node, _nodes.TemplateNode):
            self.template_call = True
            if node.pipe is not None:
                self.visit(node.pipe, depth + 1)
        elif not isinstance(node, (_nodes.TextNode, _nodes.NilNode, _nodes.BoolNode,
                                   _nodes.NumberNode, _nodes.StringNode,
                                   _nodes.BreakNode, _nodes.ContinueNode)):
            # A node kind this analysis does not know: assume the worst.
            self.identifiers.update(LIVE_FUNCTIONS)


@functools.lru_cache(maxsize=1024)
def template_inputs(template: str) -> TemplateInputs:
    """What ``template``'s rendered text depends on (see TemplateInputs)."""
    tree = _parse("__alert_", template)
    if isinstance(tree, _parser.ParseError):
        # The text is the parse error, which depends on the template alone.
        return TemplateInputs(live=False, uses_value=False)
    scan = _Scan()
    for node in tree.root.nodes[_PREFIX_NODES:]:
        scan.visit(node, 1)
    for body in tree.templates.values():
        if body is not tree.root:
            scan.visit(body, 1)
    live = bool(scan.identifiers & LIVE_FUNCTIONS) or scan.too_deep or scan.template_call
    uses_value = scan.dot or bool(scan.variables & {"$", "$value"})
    return TemplateInputs(live=live, uses_value=uses_value)


_PREFIX_VARIABLES = ("$labels", "$externalLabels", "$externalURL", "$value")
_PREFIX_ACTIONS = tuple(
    "{{" + var + " := ." + field + "}}"
    for var, field in zip(_PREFIX_VARIABLES,
                          ("Labels", "ExternalLabels", "ExternalURL", "Value"), strict=True)
)


@functools.lru_cache(maxsize=1024)
def _has_prefix(name: str, text: str) -> bool:
    """Whether the parsed template starts with exactly the four prefix declarations."""
    tree = _parse(name, text)
    if isinstance(tree, _parser.ParseError) or len(tree.root.nodes) < _PREFIX_NODES:
        return False
    return all(isinstance(node, _nodes.ActionNode) and str(node) == action
               for node, action in zip(tree.root.nodes, _PREFIX_ACTIONS, strict=False))


def _user_position(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column in the user's template of an offset in PREFIX + text."""
    offset = max(pos - len(PREFIX), 0)
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


_TEXT, _LABEL, _VALUE = "text", "label", "value"


@functools.lru_cache(maxsize=1024)
def _direct_parts(name: str, text: str) -> tuple[tuple[str, str], ...] | None:
    """The template as (_TEXT, text), (_LABEL, name) and (_VALUE, "") parts when that is all
    it is -- text, ``{{ $labels.x }}`` and ``{{ $value }}``, as most alert templates are --
    so it renders by joining, without running the interpreter; otherwise None.

    Such a template cannot fail: $labels and $value are the prefix's (nothing else declares
    a variable), a missing label reads as "" (missingkey=zero) and $value prints as Go's %v.
    """
    tree = _parse(name, text)
    if isinstance(tree, _parser.ParseError) or not _has_prefix(name, text) or any(
            body is not tree.root for body in tree.templates.values()):
        return None
    parts: list[tuple[str, str]] = []
    for node in tree.root.nodes[_PREFIX_NODES:]:
        if isinstance(node, _nodes.TextNode):
            parts.append((_TEXT, node.text))
            continue
        if not isinstance(node, _nodes.ActionNode) or node.pipe.decl or len(
                node.pipe.cmds) != 1 or len(node.pipe.cmds[0].args) != 1:
            return None
        arg = node.pipe.cmds[0].args[0]
        if not isinstance(arg, _nodes.VariableNode):
            return None
        if arg.ident == ["$value"]:
            parts.append((_VALUE, ""))
        elif len(arg.ident) == 2 and arg.ident[0] == "$labels":
            parts.append((_LABEL, arg.ident[1]))
        else:
            return None
    return tuple(parts)


def check_template(template: str) -> None:
    """Reject a template Prometheus could not parse or that is bound to fail when rendered.

    Beyond Go's parse errors (unknown function, undefined variable, bad syntax) this
    rejects unknown fields of the alert data (.Foo), fields of $value or a label value,
    wrong argument counts, constants of the wrong type, and comparisons of $value with an
    integer constant. The message names the position (line, column) and the culprit.
    """
    tree = _parse("__alert_", template)
    if isinstance(tree, _parser.ParseError):
        line, column = _user_position(template, tree.pos)
        raise TemplateError(
            f"line {line}, column {column}: {tree.message}", line=line, column=column
        )
    env = _prometheus.Env(query=None, external_url="")
    problems = _check.check_tree(tree, _prometheus.functions(env), skip_nodes=_PREFIX_NODES)
    if problems:
        first = problems[0]
        line, column = _user_position(template, first.pos)
        raise TemplateError(
            f"line {line}, column {column}: {first.message}", line=line, column=column
        )


def render(
    template: str,
    *,
    labels: Mapping[str, str],
    value: float,
    query: QueryFunc | None = None,
    external_labels: Mapping[str, str] | None = None,
    external_url: str = "",
    alert_name: str = "",
) -> str:
    """Expand an alert label or annotation template exactly as Prometheus would.

    labels are the alert's sample labels ($labels), value its sample value ($value);
    query serves the `query` function; alert_name names the template in error messages
    ("__alert_<name>"), as Prometheus does. Raises TemplateError with Prometheus's text.
    """
    name = _template_name(alert_name)
    tree = _parse(name, template)
    if isinstance(tree, _parser.ParseError):
        raise TemplateError(
            f"error parsing template {name}: template: {name}:{tree.line}: {tree.message}"
        )
    direct = _direct_parts(name, template)
    if direct is not None:
        return "".join([text if kind == _TEXT else labels.get(text, "") if kind == _LABEL
                        else _gofmt.sprint([float(value)]) for kind, text in direct])
    data = AlertData(
        labels=string_map(labels.items()),
        external_labels=string_map((external_labels or {}).items()),
        external_url=external_url,
        value=float(value),
    )
    env = _prometheus.Env(query=query, external_url=external_url)
    try:
        if _has_prefix(name, template):
            # The prefix only declares $labels, $externalLabels, $externalURL and $value
            # from dot's fields, which cannot fail: declare them without running it.
            declared = [(var, value) for var, (_, value) in zip(
                _PREFIX_VARIABLES, data.fields(), strict=True)]
            return _exec.execute(tree, data, _prometheus.functions(env),
                                 declared=declared, skip=_PREFIX_NODES)
        return _exec.execute(tree, data, _prometheus.functions(env))
    except _exec.ExecError as e:
        raise TemplateError(f"error executing template {name}: {e}") from None
    except RecursionError:
        raise TemplateError(
            f"error executing template {name}: template nesting too deep"
        ) from None


def render_or_error(
    template: str,
    *,
    labels: Mapping[str, str],
    value: float,
    query: QueryFunc | None = None,
    external_labels: Mapping[str, str] | None = None,
    external_url: str = "",
    alert_name: str = "",
) -> str:
    """render(), but a failure becomes "<error expanding template: ...>" as in Prometheus."""
    try:
        return render(
            template, labels=labels, value=value, query=query,
            external_labels=external_labels, external_url=external_url, alert_name=alert_name,
        )
    except TemplateError as e:
        return f"<error expanding template: {e}>"
