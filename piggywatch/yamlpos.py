"""YAML with positions: the line of every key and item, so problems can say where they are.

Files are read within limits (size, nesting, alias expansion), so that a hostile or broken
file is refused in well under a second and in little memory, instead of being expanded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.resolver import Resolver

KeyPath = tuple[str | int, ...]

# The largest configuration or rule file read (documented in the README).
MAX_FILE_BYTES = 4 * 1024 * 1024
# Nodes that aliases may add to a document in all (each alias counts the nodes it repeats).
MAX_ALIASED_NODES = 100_000
# Mappings and lists inside one another.
MAX_DEPTH = 100


class YamlSyntaxError(ValueError):
    """The text is not valid YAML; ``line`` is 1-based when known."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.line = line

    @property
    def message(self) -> str:
        """What to tell the user (without the file and line)."""
        return f"not valid YAML: {self}"


class YamlInputError(YamlSyntaxError):
    """The file cannot be read as YAML text at all: too large, not UTF-8, an alias bomb."""

    @property
    def message(self) -> str:
        """What to tell the user (without the file and line)."""
        return str(self)


def read_yaml_file(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a YAML file. Raises OSError when it cannot be read, and YamlInputError
    when it is larger than ``limit`` bytes or not UTF-8 text."""
    with path.open("rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise YamlInputError(f"the file is larger than {limit // (1024 * 1024)} MiB, the most "
                             "PiggyWatch reads from one file; split it into several", None)
    return decode_yaml_bytes(data)


def decode_yaml_bytes(data: bytes) -> str:
    """UTF-8 text, or YamlInputError naming the byte offset (and line) of the first bad byte."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlInputError("the file is UTF-16 (it starts with a UTF-16 byte order mark); "
                             "save it as UTF-8", 1)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise YamlInputError(f"NUL byte at byte offset {nul}: this is not a text file (or it "
                             "is UTF-16 or UTF-32); save it as UTF-8", _line_at(data, nul))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} cannot be "
            "decoded; save the file as UTF-8", _line_at(data, exc.start)) from None
    return text.removeprefix("\ufeff")


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


class _LimitedComposer(Composer):
    """PyYAML's composer, counting depth and what aliases add as it goes.

    Aliases are shared nodes after composing, but everything after (line indexing, the
    settings' interpolation, validation) walks them expanded: a few hundred bytes of
    nested aliases are billions of nodes. So the nodes each alias repeats are counted, and
    the document is refused once they pass MAX_ALIASED_NODES, before anything expands.
    """

    if TYPE_CHECKING:  # provided by the parser the composer is mixed with
        def check_event(self, *choices: Any) -> bool: ...
        def peek_event(self) -> Any: ...

    def __init__(self) -> None:
        super().__init__()
        self._init_limits()

    def _init_limits(self) -> None:
        self._depth = 0
        self._aliased = 0
        # Per open node, how many nodes it holds so far (aliases counted expanded).
        self._counts: list[int] = []
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size
        self._open: set[str] = set()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise YamlInputError(f"alias *{event.anchor} is inside the node it names "
                                     "(a recursive alias)", event.start_mark.line + 1)
            node: yaml.Node | None = super().compose_node(parent, index)
            size = self._sizes.get(id(node), 1)
            self._aliased += size
            if self._aliased > MAX_ALIASED_NODES:
                raise YamlInputError(
                    f"aliases repeat more than {MAX_ALIASED_NODES:,} nodes (the last one, "
                    f"*{event.anchor}, repeats {size:,}); an alias bomb? Write the values "
                    "out, or use fewer aliases", event.start_mark.line + 1)
            if self._counts:
                self._counts[-1] += size
            assert node is not None
            return node
        event = self.peek_event()
        collection = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise YamlInputError(f"lists and mappings are nested more than {MAX_DEPTH} "
                                     "deep", event.start_mark.line + 1)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._counts.append(1)
        try:
            node = super().compose_node(parent, index)
        finally:
            size = self._counts.pop()
            if collection:
                self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if anchor is not None:
            self._sizes[id(node)] = size
        if self._counts:
            self._counts[-1] += size
        assert node is not None
        return node


def _position_loader(text: str) -> _LimitedComposer:
    """The safe loader with the limited composer, on libyaml's event parser (several times
    faster than PyYAML's own) where PyYAML was built with it."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # pragma: no cover - PyYAML built without libyaml
        from yaml import SafeLoader

        class PythonLoader(_LimitedComposer, SafeLoader):
            def __init__(self, stream: str) -> None:
                SafeLoader.__init__(self, stream)
                self._init_limits()

        return PythonLoader(text)

    class CLoader(_LimitedComposer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _LimitedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return CLoader(text)


def load_with_lines(text: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse ``text`` (safe loader) and map each key path to its 1-based line."""
    loader: Any = _position_loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except YamlInputError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlSyntaxError(exc.problem or str(exc), line) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlSyntaxError(f"character {exc.character!r} at character {exc.position} is "
                              "not allowed in YAML", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from exc
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index(node, (), lines)
    return data, lines


def _index(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            _index(value, child, lines)
            # A key's own line, not its value's (they differ for block mappings).
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, (*path, index), lines)


def line_for(path: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def dotted(path: KeyPath) -> str:
    """``("targets", 0, "dsn")`` → ``targets[0].dsn``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True)
class FileProblem:
    """One thing wrong with a file, in the user's words: where it is, and why."""

    file: str
    line: int | None
    where: str  # a key path, or "group 'x', rule 'y'"; may be empty
    reason: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.where}: {self.reason}" if self.where else f"{place}: {self.reason}"


class FileProblems(Exception):
    """A file that cannot be used; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
