"""pg_stat_statements at one moment, kept as PostgreSQL sent it.

A whole read of the view arrives as the bytes of binary arrays (one per column) and stays
that way until needed: the key columns are compared as bytes and decoded only when they
differ from the previous snapshot's, the counters decoded only where they are read. The
collector's usual read brings only the entries that changed; the snapshot it keeps is then
decoded columns patched in place, and has no bytes (``raw`` is None).

Decoded columns are arrays (``array.array``), not lists: a snapshot is kept for as long as
the collector runs, and a list of 5,000 numbers holds 5,000 objects (~40 bytes each, where
an array holds 8 bytes or less) that every cycle's garbage collection then walks past.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from functools import cache
from itertools import compress, repeat
from operator import itemgetter, ne, sub
from typing import Any

# One entry of pg_stat_statements: dbid, userid, queryid, toplevel.
Key = tuple[int, int, int, bool]
# The key columns as a read brings them, entry i at index i of each: dbids, userids,
# queryids, toplevel flags.
KeyColumns = tuple[list[int], list[int], list[int], list[bool]]
# The key columns as a snapshot holds them (toplevel flags as 0 and 1).
HeldKeys = tuple["array[int]", "array[int]", "array[int]", "array[int]"]
# One exported series: dbid, userid, queryid. Entries differing only in toplevel add up into
# one, because postgres_exporter's labels (queryid, datname, user) have no toplevel.
Group = tuple[int, int, int]
# calls, exec time (ms), rows, block read time (ms), block write time (ms).
Counters = tuple[Any, ...]

ZERO: Counters = (0, 0.0, 0, 0.0, 0.0)


# A one-dimensional PostgreSQL array without NULLs in binary format: number of dimensions,
# has-NULLs flag, element type, size and lower bound of the dimension; then each element as
# its length (4 bytes) and its bytes, big-endian.
ARRAY_HEADER = struct.Struct(">iiIii")
_CHUNK = 256
_TYPE_OIDS = {"I": 26, "q": 20, "d": 701, "?": 16}  # oid, int8, float8, bool
# The array type code that holds each element type (bools as 0 and 1).
_ARRAY_CODES = {"I": "I", "q": "q", "d": "d", "?": "b"}
# calls, exec time, rows, block read time, block write time.
COUNTER_CODES = ("q", "d", "q", "d", "d")


@cache
def _elements(code: str, count: int) -> struct.Struct:
    return struct.Struct(">" + f"4x{code}" * count)


@cache
def _element(code: str) -> struct.Struct:
    """One element with its length."""
    return struct.Struct(f">i{code}")


def decode_array(raw: bytes | None, code: str) -> list[Any]:
    """The elements of a binary array of ``code`` ("I" oid, "q" int8, "d" float8, "?" bool)."""
    if not raw:
        return []
    ndim, has_nulls, _, size, _ = ARRAY_HEADER.unpack_from(raw)
    if ndim != 1 or has_nulls:
        raise ValueError("expected a one-dimensional array without NULLs")
    out: list[Any] = []
    offset, step = ARRAY_HEADER.size, 4 + struct.calcsize(">" + code)
    for start in range(0, size, _CHUNK):
        count = min(_CHUNK, size - start)
        out.extend(_elements(code, count).unpack_from(raw, offset))
        offset += count * step
    return out


def held(values: Sequence[Any], code: str) -> array[Any]:
    """``values`` (elements of ``code``, as in ``decode_array``) as an array, as snapshots
    hold them; an array of that type as it is."""
    typecode = _ARRAY_CODES[code]
    if isinstance(values, array) and values.typecode == typecode:
        return values
    return array(typecode, values)


def runs(positions: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Ascending ``positions`` as runs of consecutive ones: for run r, the indexes
    ``firsts[r]`` to ``lasts[r]`` (excluded) of ``positions`` hold ``at[r]`` and those after.

    Entries that moved (an insertion shifts all those after it) come back as a few long
    runs, each copied in one step where entry by entry would cost Python time each.
    """
    if not positions:
        return [], [], []
    if positions[-1] - positions[0] == len(positions) - 1:  # one run (ascending, distinct)
        return [0], [len(positions)], [positions[0]]
    # Where the step from one position to the next is not 1, a run starts.
    breaks = list(compress(range(1, len(positions)),
                           map(ne, map(sub, positions[1:], positions), repeat(1))))
    firsts = [0, *breaks]
    return firsts, [*breaks, len(positions)], list(map(positions.__getitem__, firsts))


def encode_array(values: Sequence[Any], code: str) -> bytes:
    """The binary array of ``values``, as PostgreSQL sends it (for tests and fixtures)."""
    if not values:
        return b""
    one = _element(code)
    body = b"".join(one.pack(one.size - 4, value) for value in values)
    return ARRAY_HEADER.pack(1, 0, _TYPE_OIDS[code], len(values), 1) + body


class PackedKeys:
    """The key columns of a snapshot (dbid, userid, queryid, toplevel), as PostgreSQL sent
    them: binary arrays, decoded on first use.

    From one snapshot to the next the keys are nearly always identical, byte for byte, so
    comparing the bytes stands in for decoding and comparing thousands of numbers, and the
    decoded lists are carried over.
    """

    __slots__ = ("_decoded", "raw")

    def __init__(self, dbids: bytes | None, userids: bytes | None, queryids: bytes | None,
                 toplevel: bytes | None) -> None:
        self.raw: tuple[bytes, bytes, bytes, bytes] | None = (
            dbids or b"", userids or b"", queryids or b"", toplevel or b"")
        self._decoded: HeldKeys | None = None

    @classmethod
    def of_lists(cls, columns: KeyColumns | HeldKeys) -> PackedKeys:
        """Keys held decoded only (no bytes): ``raw`` is None."""
        keys = cls(None, None, None, None)
        keys.raw = None
        keys._decoded = _held_keys(columns)
        return keys

    @classmethod
    def of(cls, dbids: Sequence[int], userids: Sequence[int], queryids: Sequence[int],
           toplevel: Sequence[bool]) -> PackedKeys:
        """Keys from lists, packed as PostgreSQL would send them."""
        return cls(encode_array(dbids, "I"), encode_array(userids, "I"),
                   encode_array(queryids, "q"), encode_array(toplevel, "?"))

    def adopt_decoded(self, columns: HeldKeys) -> None:
        """Take ``columns`` as what decoding ``raw`` gives (the caller built them from the
        previous sample's decoded keys), instead of decoding thousands of entries again."""
        self._decoded = columns

    @property
    def decoded(self) -> HeldKeys:
        """dbids, userids, queryids and toplevel flags, entry i at index i of each."""
        if self._decoded is None:
            assert self.raw is not None  # set by __init__, cleared only with _decoded set
            dbids, userids, queryids, toplevel = self.raw
            self._decoded = _held_keys((decode_array(dbids, "I"), decode_array(userids, "I"),
                                        decode_array(queryids, "q"),
                                        decode_array(toplevel, "?")))
        return self._decoded


def _held_keys(columns: KeyColumns | HeldKeys) -> HeldKeys:
    dbids, userids, queryids, toplevel = columns
    return held(dbids, "I"), held(userids, "I"), held(queryids, "q"), held(toplevel, "?")


class PackedColumn:
    """A column of numbers as the bytes of a PostgreSQL binary array, decoded where read.

    Most entries of pg_stat_statements do nothing in an interval; their values are only ever
    compared, so only the columns that decide what changed are decoded in full.
    """

    __slots__ = ("code", "decoded", "element", "raw")

    def __init__(self, raw: bytes | None, code: str) -> None:
        self.raw = raw or b""
        self.code = code
        self.element = _element(code)
        self.decoded: array[Any] | None = None

    @classmethod
    def of_list(cls, values: Sequence[Any], code: str) -> PackedColumn:
        """A column held decoded only; its ``raw`` bytes are not kept up to date."""
        column = cls(None, code)
        column.decoded = held(values, code)
        return column

    @classmethod
    def of(cls, values: Sequence[Any], code: str) -> PackedColumn:
        """A column from a list, packed as PostgreSQL would send it."""
        return cls(encode_array(values, code), code)

    def __len__(self) -> int:
        if self.decoded is not None:  # patched in place: the array is the truth
            return len(self.decoded)
        return ARRAY_HEADER.unpack_from(self.raw)[3] if self.raw else 0

    def all(self) -> array[Any]:
        """Every element, decoded once."""
        if self.decoded is None:
            self.decoded = held(decode_array(self.raw, self.code), self.code)
        return self.decoded


class Snapshot:
    """pg_stat_statements at one moment, column by column (entry i is index i of each)."""

    __slots__ = ("columns", "keys")

    def __init__(self, keys: PackedKeys, calls: PackedColumn, exec_ms: PackedColumn,
                 rows: PackedColumn, read_ms: PackedColumn, write_ms: PackedColumn) -> None:
        self.keys = keys
        # calls, exec time (ms), rows, block read time (ms), block write time (ms).
        self.columns = (calls, exec_ms, rows, read_ms, write_ms)

    @classmethod
    def of_lists(cls, keys: KeyColumns | HeldKeys,
                 counters: Sequence[Sequence[Any]]) -> Snapshot:
        """A snapshot held decoded only (see ``PackedKeys.of_lists``)."""
        calls, exec_ms, rows, read_ms, write_ms = (
            PackedColumn.of_list(values, code)
            for values, code in zip(counters, COUNTER_CODES, strict=True))
        return cls(PackedKeys.of_lists(keys), calls, exec_ms, rows, read_ms, write_ms)

    @classmethod
    def empty(cls) -> Snapshot:
        """A snapshot of an empty view."""
        return cls(PackedKeys(None, None, None, None), *(PackedColumn(None, code)
                                                         for code in COUNTER_CODES))

    def __len__(self) -> int:
        return len(self.columns[0])

    @property
    def calls(self) -> array[int]:
        """The calls of every entry (decoded: they decide which entries changed)."""
        return self.columns[0].all()

    def group(self, i: int) -> Group:
        """The group (dbid, userid, queryid) of entry ``i``."""
        dbids, userids, queryids, _ = self.keys.decoded
        return dbids[i], userids[i], queryids[i]

    def columns_at(self, positions: Sequence[int]) -> list[list[Any]]:
        """Each counter column's values at ``positions``; one past the end reads as 0."""
        size = len(self)
        padded = bool(positions) and max(positions) >= size
        offsets: list[int] | None = None
        out = []
        for column in self.columns:
            if column.decoded is None and len(positions) * 8 > size:
                column.all()  # reading much of it: decoding it all is cheaper
            if column.decoded is not None:
                values: Sequence[Any] = [*column.decoded, 0] if padded else column.decoded
                out.append(list(map(values.__getitem__, positions)))
                continue
            if offsets is None:  # every counter is 8 bytes, so one stride fits all
                step = column.element.size
                offsets = list(map(ARRAY_HEADER.size.__add__, map(step.__mul__, positions)))
            element = column.element
            raw = column.raw + element.pack(element.size - 4, 0) if padded else column.raw
            out.append(list(map(itemgetter(1), map(element.unpack_from, repeat(raw), offsets))))
        return out

    def counters_at(self, positions: Sequence[int]) -> list[Counters]:
        """The counters of the entries at ``positions``."""
        return list(zip(*self.columns_at(positions), strict=True))

    def counters(self, i: int) -> Counters:
        """The counters of entry ``i``."""
        return self.counters_at((i,))[0]
