"""Parse-tree nodes of a Go template; str() of a node is Go's Node.String().

Execution errors quote str(node) as their context, so these must print exactly like Go.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    """Base of all nodes: pos is the offset of the node in the template text."""

    pos: int


@dataclass
class TextNode(Node):
    """Plain text between actions."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class DotNode(Node):
    """The cursor, '.'."""

    def __str__(self) -> str:
        return "."


@dataclass
class NilNode(Node):
    """The untyped nil constant."""

    def __str__(self) -> str:
        return "nil"


@dataclass
class BoolNode(Node):
    """true or false."""

    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass
class NumberNode(Node):
    """A numeric constant with every Go interpretation that fits it."""

    text: str
    is_int: bool = False
    int_value: int = 0
    is_float: bool = False
    float_value: float = 0.0

    def __str__(self) -> str:
        return self.text


@dataclass
class StringNode(Node):
    """A quoted or raw string constant; quoted is the source text."""

    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass
class IdentifierNode(Node):
    """A function name."""

    ident: str

    def __str__(self) -> str:
        return self.ident


@dataclass
class VariableNode(Node):
    """$x, or $x.Field.Chain; ident[0] is the variable name."""

    ident: list[str]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass
class FieldNode(Node):
    """.Field.Chain applied to dot."""

    ident: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


@dataclass
class ChainNode(Node):
    """(pipeline).Field.Chain."""

    node: Node
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


@dataclass
class CommandNode(Node):
    """One stage of a pipeline: a function, field or constant plus arguments."""

    args: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, PipeNode) else str(a) for a in self.args)


@dataclass
class PipeNode(Node):
    """Commands joined by '|', optionally declaring or assigning variables."""

    line: int
    is_assign: bool = False
    decl: list[VariableNode] = field(default_factory=list)
    cmds: list[CommandNode] = field(default_factory=list)

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass
class ListNode(Node):
    """A sequence of nodes."""

    nodes: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


@dataclass
class ActionNode(Node):
    """{{pipeline}}: evaluate and print unless it declares variables."""

    line: int
    pipe: PipeNode

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass
class BranchNode(Node):
    """Shared shape of if, range and with."""

    line: int
    pipe: PipeNode
    body: ListNode
    else_body: ListNode | None

    keyword = ""

    def __str__(self) -> str:
        s = "{{" + self.keyword + " " + str(self.pipe) + "}}" + str(self.body)
        if self.else_body is not None:
            s += "{{else}}" + str(self.else_body)
        return s + "{{end}}"


class IfNode(BranchNode):
    """{{if}}...{{else}}...{{end}}."""

    keyword = "if"


class RangeNode(BranchNode):
    """{{range}}...{{else}}...{{end}}."""

    keyword = "range"


class WithNode(BranchNode):
    """{{with}}...{{else}}...{{end}}."""

    keyword = "with"


@dataclass
class BreakNode(Node):
    """{{break}} inside range."""

    line: int

    def __str__(self) -> str:
        return "{{break}}"


@dataclass
class ContinueNode(Node):
    """{{continue}} inside range."""

    line: int

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass
class TemplateNode(Node):
    """{{template "name" pipeline}}."""

    line: int
    name: str
    pipe: PipeNode | None

    def __str__(self) -> str:
        quoted = '"' + self.name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if self.pipe is None:
            return "{{template " + quoted + "}}"
        return "{{template " + quoted + " " + str(self.pipe) + "}}"


@dataclass
class EndNode(Node):
    """{{end}}; only seen while parsing."""

    def __str__(self) -> str:
        return "{{end}}"


@dataclass
class ElseNode(Node):
    """{{else}}; only seen while parsing."""

    line: int

    def __str__(self) -> str:
        return "{{else}}"

