"""Go text/template's builtin functions (funcs.go, Go 1.19) and the function model.

Each function is declared with its Go parameter types, because Go converts and checks
arguments by those types: an untyped 1 is an int for interface{} but an error for string.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _gofmt, _strconv
from ._values import (
    HTML,
    GoMap,
    QueryResult,
    Sample,
    basic_kind,
    go_kind,
    is_comparable,
    is_pointer,
    is_true,
    type_name,
)

ANY = "interface {}"
VALUE = "reflect.Value"
STRING = "string"
FLOAT = "float64"
RESULT = "template.queryResult"
SAMPLE = "*template.sample"
NILABLE = frozenset({ANY, VALUE, RESULT, SAMPLE})


class FuncError(Exception):
    """An error returned by a template function; str() is Go's error text."""


@dataclass(frozen=True)
class Func:
    """A template function: Go parameter types (last one variadic if so) and body."""

    params: tuple[str, ...]
    impl: Callable[..., object]
    variadic: bool = False


# Comparison (funcs.go).
_BAD_TYPE = "invalid type for comparison"
_BAD_CMP = "incompatible types for comparison"


def _eq(arg1: object, *args: object) -> bool:
    """Go 1.19's eq: basic kinds compare by value, nil compares with any nillable kind."""
    if not args:
        raise FuncError("missing argument for comparison")
    k1 = basic_kind(arg1)
    for arg in args:
        k2 = basic_kind(arg)
        if k1 != k2:
            if arg1 is not None and arg is not None:
                raise FuncError(_BAD_CMP)
            truth = False
        elif k1 != "invalid":
            truth = arg1 == arg
        else:
            g1, g2 = go_kind(arg1), go_kind(arg)
            if g1 != g2 and "invalid" not in (g1, g2):
                raise FuncError(
                    f"non-comparable types {_gofmt.sprint([arg1])}: {type_name(arg1)}, "
                    f"{type_name(arg)}: {_gofmt.sprint([arg])}"
                )
            if _is_nil(arg1) or _is_nil(arg):
                truth = _is_nil(arg1) == _is_nil(arg)
            elif not is_comparable(arg):
                raise FuncError(f"non-comparable type {_gofmt.sprint([arg])}: {type_name(arg)}")
            elif not is_comparable(arg1):
                raise FuncError(f"runtime error: comparing uncomparable type {type_name(arg1)}")
            else:
                truth = arg1 is arg or (not is_pointer(arg1) and type(arg1) is type(arg)
                                        and arg1 == arg)
        if truth:
            return True
    return False


def _is_nil(v: object) -> bool:
    return v is None


def _lt(arg1: object, arg2: object) -> bool:
    k1, k2 = basic_kind(arg1), basic_kind(arg2)
    if k1 == "invalid" or k2 == "invalid":
        raise FuncError(_BAD_TYPE)
    if k1 != k2:
        raise FuncError(_BAD_CMP)
    if isinstance(arg1, str) and isinstance(arg2, str):
        return arg1 < arg2
    if isinstance(arg1, bool) or not isinstance(arg1, int | float):
        raise FuncError(_BAD_TYPE)
    assert isinstance(arg2, int | float)
    return arg1 < arg2


def _le(a: object, b: object) -> bool:
    return _lt(a, b) or _eq(a, b)


# Builtins that inspect containers.
def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _index_arg(index: object, cap: int) -> int:
    if index is None:
        raise FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise FuncError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise FuncError(f"index out of range: {index}")
    return int(index)


def _index(item: object, *indexes: object) -> object:
    if item is None:
        raise FuncError("index of untyped nil")
    for index in indexes:
        if isinstance(item, str | QueryResult | list):
            seq: bytes | list[object] = _utf8(item) if isinstance(item, str) else list(item)
            x = _index_arg(index, len(seq))
            if x == len(seq):
                kind = "string" if isinstance(item, str) else "slice"
                raise FuncError(f"reflect: {kind} index out of range")
            item = seq[x]
        elif isinstance(item, GoMap):
            if index is None:
                index = ""
            if not isinstance(index, str) or isinstance(index, HTML):
                raise FuncError(f"value has type {type_name(index)}; should be string")
            item = item.get(index, item.zero)
        else:
            raise FuncError(f"can't index item of type {type_name(item)}")
    return item


def _slice(item: object, *indexes: object) -> object:
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        seq: bytes | list[Sample] = _utf8(item)
    elif isinstance(item, QueryResult):
        seq = list(item)
    else:
        raise FuncError(f"can't slice item of type {type_name(item)}")
    idx = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(seq))
    if idx[0] > idx[1]:
        raise FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    part = seq[idx[0] : idx[1]]
    if isinstance(part, bytes):
        return part.decode("utf-8", "surrogateescape")
    return QueryResult(part)


def _len(item: object) -> int:
    if isinstance(item, str):
        return len(_utf8(item))
    if isinstance(item, GoMap | QueryResult | list):
        return len(item)
    if item is None:
        raise FuncError("len of nil pointer")
    raise FuncError(f"len of type {type_name(item)}")


def _call(fn: object, *args: object) -> object:
    if fn is None:
        raise FuncError("call of nil")
    raise FuncError(f"non-function of type {type_name(fn)}")


def _eval_args(args: Sequence[object]) -> str:
    """funcs.go evalArgs: the Sprint of the arguments, pointers dereferenced."""
    if len(args) == 1 and type(args[0]) is str:
        return str(args[0])
    return _gofmt.sprint([printable(a) for a in args])


def printable(v: object) -> object:
    """Go's printableValue: pointers are dereferenced, so a *sample prints without '&'."""
    if isinstance(v, Sample) and v.pointer:
        return v.deref()
    return v


def html_escape(s: str) -> str:
    """template.HTMLEscapeString."""
    table = {"\0": "\ufffd", '"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
    return "".join(table.get(c, c) for c in s)


def js_escape(s: str) -> str:
    """template.JSEscapeString (Go 1.19)."""
    out: list[str] = []
    table = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E",
             "&": "\\u0026", "=": "\\u003D"}
    for c in s:
        if c in table:
            out.append(table[c])
        elif ord(c) < 0x20:
            out.append(f"\\u00{ord(c):02X}")
        elif ord(c) < 0x80 or _strconv.is_print(c):
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04X}")
    return "".join(out)


def url_query_escape(s: str) -> str:
    """url.QueryEscape."""
    return urllib.parse.quote_plus(s, safe="")


BUILTINS: dict[str, Func] = {
    "and": Func((VALUE, VALUE), lambda *a: a[-1], variadic=True),  # evaluated lazily by exec
    "or": Func((VALUE, VALUE), lambda *a: a[-1], variadic=True),  # evaluated lazily by exec
    "call": Func((VALUE, VALUE), _call, variadic=True),
    "html": Func((ANY,), lambda *a: html_escape(_eval_args(a)), variadic=True),
    "index": Func((VALUE, VALUE), _index, variadic=True),
    "slice": Func((VALUE, VALUE), _slice, variadic=True),
    "js": Func((ANY,), lambda *a: js_escape(_eval_args(a)), variadic=True),
    "len": Func((VALUE,), _len),
    "not": Func((VALUE,), lambda a: not is_true(a)),
    "print": Func((ANY,), lambda *a: _gofmt.sprint(list(a)), variadic=True),
    "printf": Func((STRING, ANY), lambda f, *a: _gofmt.sprintf(f, list(a)), variadic=True),
    "println": Func((ANY,), lambda *a: _gofmt.sprintln(list(a)), variadic=True),
    "urlquery": Func((ANY,), lambda *a: url_query_escape(_eval_args(a)), variadic=True),
    "eq": Func((VALUE, VALUE), _eq, variadic=True),
    "ne": Func((VALUE, VALUE), lambda a, b: not _eq(a, b)),
    "lt": Func((VALUE, VALUE), _lt),
    "le": Func((VALUE, VALUE), _le),
    "gt": Func((VALUE, VALUE), lambda a, b: not _le(a, b)),
    "ge": Func((VALUE, VALUE), lambda a, b: not _lt(a, b)),
}
