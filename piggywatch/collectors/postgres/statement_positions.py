"""Reading only the pg_stat_statements entries that changed since the last read.

PostgreSQL lists the entries of pg_stat_statements in the order of its hash table, the same
from one read to the next but for entries added or removed. So the collector sends back,
position by position, what it last read there (the entry's identity and calls folded into
one int8, as the query computed it), and the main query (statements_setup) returns only
the entries that differ there, plus every entry from the last known position on (so that a
view that shrank shows as the last known position missing). Shipping a few hundred entries
instead of thousands is what brings a cycle near PostgreSQL's own cost of reading the view.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, ne, sub
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.numeric import Int8

from piggywatch.collectors.postgres.statement_snapshot import (
    ARRAY_HEADER,
    COUNTER_CODES,
    KeyColumns,
    decode_array,
    runs,
)
from piggywatch.collectors.postgres.statements_setup import StatementsSetup
from piggywatch.collectors.postgres.target import Session

# A binary int8[] (see statement_snapshot): the folds the query returns are elements of the
# parameter it takes, byte for byte.
_EMPTY = struct.pack(">iiI", 0, 0, 20)
_ELEMENT = struct.Struct(">iq")


class PackedInt8Array:
    """An int8[] parameter already in PostgreSQL's binary format: sent as it is, where
    psycopg would adapt thousands of numbers one by one."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _PackedInt8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1016  # int8[]

    def dump(self, obj: Any) -> bytes:
        return obj.data  # type: ignore[no-any-return]


psycopg.adapters.register_dumper(PackedInt8Array, _PackedInt8ArrayDumper)


@dataclass(frozen=True, slots=True)
class Read:
    """One read of the view: pg_stat_statements_info around it, and the entries returned.

    ``positions`` (from 0) are where the entries returned are in the view; ``keys`` and
    ``counters`` their columns; ``folds`` their folds, as the binary int8[] the query
    returned (see ``Positions``). ``stats_reset`` and ``reset_after`` (epoch seconds) and
    ``dealloc`` are None before PostgreSQL 14.
    """

    positions: list[int]
    keys: KeyColumns
    counters: list[list[Any]]
    folds: bytes
    dealloc: int | None
    stats_reset: float | None
    reset_after: float | None
    whole: bool

    @property
    def hidden(self) -> bool:
        """Whether an entry returned is one whose queryid the role may not see (as 0)."""
        return 0 in self.keys[2]

    def visible(self) -> Read:
        """The whole read without hidden entries, positions counted among the rest."""
        keep = list(map(ne, self.keys[2], repeat(0)))
        dbids, userids, queryids = (list(compress(c, keep)) for c in self.keys[:3])
        toplevel = list(compress(self.keys[3], keep))
        counters = [list(compress(column, keep)) for column in self.counters]
        # No folds: positions are not kept while entries are hidden.
        return Read(list(range(len(queryids))), (dbids, userids, queryids, toplevel),
                    counters, b"", self.dealloc, self.stats_reset, self.reset_after, self.whole)


class Positions:
    """What the last snapshot holds at each position, kept as the main query's parameter:
    the entry's fold (statements_setup), as the elements of a binary int8[].

    Patched where a read returned entries, with the bytes the read brought: the cost of a
    cycle is what changed, and a run of entries that moved is one copy.
    """

    def __init__(self) -> None:
        self._folds = bytearray()
        self.size = 0

    def clear(self) -> None:
        """Forget every position: the next read is of the whole view."""
        self.__init__()  # type: ignore[misc]

    def params(self) -> tuple[Int8, PackedInt8Array]:
        """The last position, then the fold of the entry at each position."""
        n = self.size
        if not n:
            return Int8(0), PackedInt8Array(_EMPTY)
        return Int8(n), PackedInt8Array(ARRAY_HEADER.pack(1, 0, 20, n, 1) + self._folds)

    def patch(self, read: Read, size: int) -> None:
        """Take the entries of ``read``; the view has ``size`` entries."""
        folds, end = self._folds, size * _ELEMENT.size
        if end < len(folds):
            del folds[end:]
        else:
            folds.extend(bytes(end - len(folds)))
        positions, width, raw = read.positions, _ELEMENT.size, read.folds
        firsts, lasts, at = runs(positions)
        if len(firsts) * 4 > len(positions):  # scattered: entry by entry is cheaper
            deque(map(_ELEMENT.pack_into, repeat(folds), map(width.__mul__, positions),
                      repeat(8), decode_array(raw, "q")), maxlen=0)
            self.size = size
            return
        # Run r: the read's entries firsts[r] to lasts[r] (excluded) go to positions at[r] on.
        sources = map(slice, map(ARRAY_HEADER.size.__add__, map(width.__mul__, firsts)),
                      map(ARRAY_HEADER.size.__add__, map(width.__mul__, lasts)))
        targets = map(slice, map(width.__mul__, at),
                      map(width.__mul__, map(add, at, map(sub, lasts, firsts))))
        deque(map(folds.__setitem__, targets, map(raw.__getitem__, sources)), maxlen=0)
        self.size = size


def read_view(db: Session, setup: StatementsSetup, positions: Positions | None) -> Read:
    """Run the main query: the entries that differ from ``positions``, or (None) them all."""
    params = (positions or Positions()).params()
    rows = db.fetch(setup.main, params, binary=True)
    if len(rows) == 3:
        (dealloc, stats_reset, *_), row, (_, reset_after, *_) = rows
    else:
        (dealloc, stats_reset, reset_after), row = (None, None, None), rows[0]
    raw: Sequence[bytes | None] = row[2:]
    ordinals = decode_array(raw[0], "q")
    dbids, userids, queryids, toplevel = (
        decode_array(column, code) for column, code in zip(raw[1:5], "IIq?", strict=True))
    counters = [decode_array(column, code)
                for column, code in zip(raw[5:10], COUNTER_CODES, strict=True)]
    return Read(list(map(add, ordinals, repeat(-1))), (dbids, userids, queryids, toplevel),
                counters, raw[10] or b"", dealloc, stats_reset, reset_after,
                whole=positions is None or not positions.size)
