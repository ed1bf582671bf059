"""The Go values a Prometheus alert template handles, modelled in Python.

Go's behaviour depends on static types (int vs float64, string vs template.HTML, a map's
element type), so each Go type the templates can meet gets a Python representation:
int -> int, float64 -> float, string -> str, bool -> bool, nil -> None, and the classes
below for the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._gotime import GoMonth, GoTime, GoWeekday

ALERT_DATA_TYPE = (
    "struct { Labels map[string]string; ExternalLabels map[string]string; "
    "ExternalURL string; Value float64 }"
)


class HTML(str):
    """html/template.HTML, what safeHtml returns: a string of a distinct named type."""

    __slots__ = ()
    go_type = "template.HTML"


class GoMap(dict[str, object]):
    """A Go map with string keys; zero is what a missing key reads as."""

    def __init__(
        self, items: Iterable[tuple[str, object]] = (), *, elem_type: str = "string",
        zero: object = "",
    ) -> None:
        super().__init__(items)
        self.elem_type = elem_type
        self.zero = zero

    @property
    def go_type(self) -> str:
        return f"map[string]{self.elem_type}"


def string_map(m: Iterable[tuple[str, str]]) -> GoMap:
    """A map[string]string."""
    return GoMap(m, elem_type="string", zero="")


@dataclass(eq=False)
class Sample:
    """*template.sample: one element of a query result. Identity is pointer identity.

    pointer=False stands for the dereferenced struct, which Go prints without the '&'.
    """

    labels: GoMap
    value: float
    pointer: bool = True

    @property
    def go_type(self) -> str:
        return "*template.sample" if self.pointer else "template.sample"

    def deref(self) -> Sample:
        return Sample(self.labels, self.value, pointer=False)

    def fields(self) -> list[tuple[str, object]]:
        return [("Labels", self.labels), ("Value", self.value)]


class QueryResult(list[Sample]):
    """template.queryResult, what query returns."""

    go_type = "template.queryResult"


@dataclass(eq=False)
class AlertData:
    """The anonymous struct Prometheus hands to alert templates as dot."""

    labels: GoMap
    external_labels: GoMap
    external_url: str
    value: float

    go_type = ALERT_DATA_TYPE
    struct_type = ALERT_DATA_TYPE

    def fields(self) -> list[tuple[str, object]]:
        return [
            ("Labels", self.labels),
            ("ExternalLabels", self.external_labels),
            ("ExternalURL", self.external_url),
            ("Value", self.value),
        ]


def type_name(v: object) -> str:
    """The Go type name of a value, as %T and error messages print it."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    go_type = getattr(v, "go_type", None)
    if isinstance(go_type, str):
        return go_type
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def basic_kind(v: object) -> str:
    """Kind for the comparison functions: bool, int, float, string or invalid."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "invalid"


def go_kind(v: object) -> str:
    """reflect.Kind of a value, for the rules that depend on it (eq's nil handling)."""
    if v is None:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, GoMap):
        return "map"
    if isinstance(v, QueryResult | list):
        return "slice"
    if is_pointer(v):
        return "ptr"
    return "struct"


def is_pointer(v: object) -> bool:
    return isinstance(v, Sample | GoTime) and v.pointer


def is_comparable(v: object) -> bool:
    """Go's Type.Comparable: maps, slices and structs holding them are not."""
    if isinstance(v, Sample):
        return v.pointer
    return not isinstance(v, GoMap | QueryResult | list | AlertData)


def is_true(v: object) -> bool:
    """Go template truth: false, 0, nil and empty strings/maps/slices are false."""
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | GoMap | QueryResult | list):
        return len(v) > 0
    return True


__all__ = [
    "ALERT_DATA_TYPE", "HTML", "AlertData", "GoMap", "GoMonth", "GoTime", "GoWeekday",
    "QueryResult", "Sample", "basic_kind", "go_kind", "is_comparable", "is_pointer", "is_true",
    "string_map", "type_name",
]
