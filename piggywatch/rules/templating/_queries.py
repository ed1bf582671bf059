"""Which PromQL an alert template's ``query`` calls run, as far as the template alone says.

The daemon keeps the full history of a metric only when something reads its past (issue
13); a template's queries are readers too, so it needs their text before any alert fires.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from . import _nodes, _parser
from ._alert import _PREFIX_NODES, _parse

_QUERY = "query"
# A printf verb, or the escaped percent sign.
_VERB = re.compile(r"%(.?)")


class _Unknown(Exception):
    """A query whose text the template does not tell (a variable, a label, a verb but %q)."""


@functools.lru_cache(maxsize=1024)
def template_queries(template: str) -> tuple[str, ...] | None:
    """The PromQL texts of ``template``'s ``query`` calls, None when one is not known.

    A query's text is known when it is a string constant, or a ``printf`` of a constant
    format whose only verb is ``%q``: each stands for a quoted string (``""`` here), which can
    only be a label value or a string argument, never change what a query reads. Anything
    else (a variable, a label value as the query, ``%s``) may be any query.
    """
    tree = _parse("__alert_", template)
    if isinstance(tree, _parser.ParseError):
        return ()  # rendered as its parse error: no query runs
    bodies: list[_nodes.Node] = list(tree.root.nodes[_PREFIX_NODES:])
    bodies += [body for body in tree.templates.values() if body is not tree.root]
    try:
        return tuple(text for body in bodies for pipe in _pipes(body) for text in _queries(pipe))
    except (_Unknown, RecursionError):
        return None


def _pipes(node: _nodes.Node) -> Iterator[_nodes.PipeNode]:
    """Every pipeline in ``node``, nested ones (parenthesised arguments) included."""
    match node:
        case _nodes.PipeNode():
            yield node
            for command in node.cmds:
                for arg in command.args:
                    yield from _pipes(arg)
        case _nodes.ChainNode():
            yield from _pipes(node.node)
        case _nodes.ListNode():
            for child in node.nodes:
                yield from _pipes(child)
        case _nodes.ActionNode():
            yield from _pipes(node.pipe)
        case _nodes.BranchNode():
            yield from _pipes(node.pipe)
            yield from _pipes(node.body)
            if node.else_body is not None:
                yield from _pipes(node.else_body)
        case _nodes.TemplateNode():
            if node.pipe is not None:
                yield from _pipes(node.pipe)
        case (_nodes.TextNode() | _nodes.NilNode() | _nodes.BoolNode() | _nodes.NumberNode()
              | _nodes.StringNode() | _nodes.IdentifierNode() | _nodes.VariableNode()
              | _nodes.FieldNode() | _nodes.DotNode() | _nodes.BreakNode()
              | _nodes.ContinueNode()):
            pass
        case _:
            raise _Unknown(node)  # a node kind this analysis does not know


def _queries(pipe: _nodes.PipeNode) -> Iterator[str]:
    """The texts of the ``query`` calls of one pipeline (not of those nested in it)."""
    for index, command in enumerate(pipe.cmds):
        for position, arg in enumerate(command.args):
            if not (isinstance(arg, _nodes.IdentifierNode) and arg.ident == _QUERY):
                continue
            if position == 0 and len(command.args) == 2:
                yield _text(command.args[1])  # query TEXT
            elif position == 0 and len(command.args) == 1 and index > 0:
                yield _command_text(pipe.cmds[index - 1])  # TEXT | query
            else:
                raise _Unknown(command)


def _text(arg: _nodes.Node) -> str:
    if isinstance(arg, _nodes.StringNode):
        return arg.text
    if isinstance(arg, _nodes.PipeNode) and not arg.decl and len(arg.cmds) == 1:
        return _command_text(arg.cmds[0])
    raise _Unknown(arg)


def _command_text(command: _nodes.CommandNode) -> str:
    args = command.args
    if len(args) == 1 and isinstance(args[0], _nodes.StringNode):
        return args[0].text
    if len(args) >= 2 and isinstance(args[0], _nodes.IdentifierNode) \
            and args[0].ident == "printf" and isinstance(args[1], _nodes.StringNode):
        return _VERB.sub(_quoted_placeholder, args[1].text)
    raise _Unknown(command)


def _quoted_placeholder(verb: re.Match[str]) -> str:
    if verb.group(1) == "q":
        return '""'
    if verb.group(1) == "%":
        return "%"
    raise _Unknown(verb.group(0))
