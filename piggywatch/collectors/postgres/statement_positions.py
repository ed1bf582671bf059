"""Reading only the pg_stat_statements entries that changed since the last read.

PostgreSQL lists the entries of pg_stat_statements in the order of its hash table, the same
from one read to the next but for entries added or removed. So the collector sends back,
position by position, what it last read there (calls and toplevel as one number, the
queryid, dbid and userid as another), and the main query (statements_setup) returns only
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
from operator import add, mul, ne
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.numeric import Int8

from piggywatch.collectors.postgres.statement_snapshot import (
    COUNTER_CODES,
    KeyColumns,
    decode_array,
)
from piggywatch.collectors.postgres.statements_setup import StatementsSetup
from piggywatch.collectors.postgres.target import Session

# A binary int8[]: header (dimensions, has-NULLs flag, element type, size, lower bound), then
# each element as its length (4 bytes) and its value, big-endian.
_HEADER = struct.Struct(">iiIii")
_EMPTY = struct.pack(">iiI", 0, 0, 20)
_INT8 = struct.Struct(">iq")
# dbid and userid side by side are the bytes of the int8 (dbid << 32) | userid.
_OWNER = struct.Struct(">iII")
_WIDTH = _INT8.size


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
    ``counters`` their columns. ``stats_reset`` and ``reset_after`` (epoch seconds) and
    ``dealloc`` are None before PostgreSQL 14.
    """

    positions: list[int]
    keys: KeyColumns
    counters: list[list[Any]]
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
        return Read(list(range(len(queryids))), (dbids, userids, queryids, toplevel),
                    counters, self.dealloc, self.stats_reset, self.reset_after, self.whole)


class Positions:
    """What the last snapshot holds at each position, kept as the main query's parameters.

    Patched where a read returned entries: the cost of a cycle is what changed.
    """

    def __init__(self) -> None:
        self._stamps = bytearray()
        self._queryids = bytearray()
        self._owners = bytearray()
        self.size = 0

    def clear(self) -> None:
        """Forget every position: the next read is of the whole view."""
        self.__init__()  # type: ignore[misc]

    def params(self) -> tuple[Int8, PackedInt8Array, PackedInt8Array, PackedInt8Array]:
        """The last position, then per position: calls * 2 + toplevel, queryid, owner."""
        n = self.size
        if not n:
            empty = PackedInt8Array(_EMPTY)
            return Int8(0), empty, empty, empty
        header = _HEADER.pack(1, 0, 20, n, 1)
        return (Int8(n), PackedInt8Array(header + self._stamps),
                PackedInt8Array(header + self._queryids), PackedInt8Array(header + self._owners))

    def patch(self, read: Read, size: int) -> None:
        """Take the entries of ``read``; the view has ``size`` entries."""
        positions = read.positions
        dbids, userids, queryids, toplevel = read.keys
        stamps = list(map(add, map(mul, read.counters[0], repeat(2)), toplevel))
        offsets = list(map(mul, positions, repeat(_WIDTH)))
        for buffer, struct_, values in ((self._stamps, _INT8, (stamps,)),
                                        (self._queryids, _INT8, (queryids,)),
                                        (self._owners, _OWNER, (dbids, userids))):
            end = size * _WIDTH
            if end < len(buffer):
                del buffer[end:]
            else:
                buffer.extend(bytes(end - len(buffer)))
            deque(map(struct_.pack_into, repeat(buffer), offsets, repeat(8), *values),
                  maxlen=0)
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
                for column, code in zip(raw[5:], COUNTER_CODES, strict=True)]
    return Read(list(map(add, ordinals, repeat(-1))), (dbids, userids, queryids, toplevel),
                counters, dealloc, stats_reset, reset_after, whole=positions is None or
                not positions.size)
