"""Series as the evaluator sees them: labels including ``__name__``, points, matchers."""

from __future__ import annotations

import math
import re
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain, repeat
from typing import Protocol, overload

from piggywatch.store.samples import Labels

# Prometheus marks a series that disappeared with this exact NaN ("stale marker"), so that
# an instant query stops returning it at once instead of for the 5 m lookback.
_STALE_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", _STALE_BITS))[0]


def is_stale(value: float) -> bool:
    """Whether ``value`` is the stale marker (not any other NaN)."""
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == _STALE_BITS


class MatchOp(StrEnum):
    """The four PromQL label matcher kinds."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """``name op "value"``; regexes are anchored at both ends, as in Prometheus."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, op: MatchOp | str, value: str) -> LabelMatcher:
        """Build a matcher, compiling its regex once."""
        kind = MatchOp(op)
        regex = re.compile(value, re.DOTALL) if kind in (MatchOp.REGEX, MatchOp.NOT_REGEX) else None
        return cls(name, kind, value, regex)

    def matches(self, value: str) -> bool:
        """Whether a label value (``""`` when the label is absent) satisfies the matcher."""
        if self.op is MatchOp.EQUAL:
            return value == self.value
        if self.op is MatchOp.NOT_EQUAL:
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value) is not None
        return found if self.op is MatchOp.REGEX else not found


@dataclass(frozen=True, slots=True)
class Series:
    """One series: labels including ``__name__`` (sorted pairs) and its points, oldest first.

    ``timestamps`` and ``values`` are parallel; values may hold STALE_NAN markers.
    """

    labels: Labels
    timestamps: Sequence[float]
    values: Sequence[float]


class HeldValues(Sequence[float]):
    """A read's values of a series that stood still: its written points, then its held value
    ``times`` times, without a copy of each (see ``MemoryStore.select``).

    A [10m] read of 5,000 idle statements would otherwise copy 5,000 windows of one value at
    once; a range function reads these one series at a time.
    """

    __slots__ = ("times", "value", "written")

    def __init__(self, written: array[float], value: float, times: int) -> None:
        self.written = written
        self.value = value
        self.times = times

    def __len__(self) -> int:
        return len(self.written) + self.times

    def __iter__(self) -> Iterator[float]:
        return chain(self.written, repeat(self.value, self.times))

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[float]: ...

    def __getitem__(self, index: int | slice) -> float | Sequence[float]:
        if isinstance(index, slice):
            return array("d", self)[index]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("HeldValues index out of range")
        written = self.written
        return written[index] if index < len(written) else self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (HeldValues, array, list, tuple)):
            return len(self) == len(other) and all(
                a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HeldValues({list(self)!r})"


class SeriesSource(Protocol):
    """Where the evaluator reads series from: the live store, or a rule unit test's input."""

    def select(self, matchers: Sequence[LabelMatcher], start: float,
               end: float) -> Iterable[Series]:
        """Series matching every matcher, with their points in ``[start, end]``."""
        ...
