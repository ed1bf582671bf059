"""Statements: pg_stat_statements as per-interval deltas, exported for the top K statements.

pg_stat_statements can hold thousands of entries; exporting all of them would swamp
Prometheus. The collector keeps the previous snapshot, works out what each statement did
since then, and exports the K statements that spent the most time in that interval, with
postgres_exporter's names and labels so its dashboards work unchanged. Query text is never
a label: it is served, scrubbed of literals, by ``top_statements()``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from psycopg import sql

from piggywatch.collectors.base import CollectorError, Report
from piggywatch.collectors.postgres.query_text import QueryTexts
from piggywatch.collectors.postgres.statement_counters import Continuity, StatementCounters
from piggywatch.collectors.postgres.statement_snapshot import (
    COUNTER_CODES,
    ZERO,
    Counters,
    Group,
    PackedColumn,
    PackedKeys,
    Snapshot,
)
from piggywatch.collectors.postgres.statements_setup import (
    NOT_LOADED,
    StatementsSetup,
    find_statements,
)
from piggywatch.collectors.postgres.target import PostgresTarget, Session
from piggywatch.store import Labels, MetricKind, MetricSpec, Sample, labels_of

CALLS = "pg_stat_statements_calls_total"
SECONDS = "pg_stat_statements_seconds_total"
ROWS = "pg_stat_statements_rows_total"
BLOCK_READ = "pg_stat_statements_block_read_seconds_total"
BLOCK_WRITE = "pg_stat_statements_block_write_seconds_total"

_C = MetricKind.COUNTER
_G = MetricKind.GAUGE
SPECS = (
    MetricSpec(CALLS, _C, "Number of times the statement was executed"),
    MetricSpec(SECONDS, _C, "Total time spent executing the statement, in seconds"),
    MetricSpec(ROWS, _C, "Total number of rows retrieved or affected by the statement"),
    MetricSpec(BLOCK_READ, _C,
               "Total time the statement spent reading blocks, in seconds (track_io_timing)"),
    MetricSpec(BLOCK_WRITE, _C,
               "Total time the statement spent writing blocks, in seconds (track_io_timing)"),
    MetricSpec("pg_stat_statements_entries", _G, "Statements tracked by pg_stat_statements now"),
    MetricSpec("pg_stat_statements_max_entries", _G,
               "Server setting pg_stat_statements.max: statements it can track"),
    MetricSpec("pg_stat_statements_fill_ratio", _G,
               "pg_stat_statements entries / pg_stat_statements.max"),
    MetricSpec("pg_stat_statements_dealloc_total", _C,
               "Times pg_stat_statements evicted its least-used entries to make room"),
    MetricSpec("pg_stat_statements_stats_reset_timestamp_seconds", _G,
               "When pg_stat_statements was last reset, as a Unix timestamp"),
)

# Query texts cached per top-K slot: generous, so statements drifting in and out of the top
# K do not send the collector back to the (expensive) query texts every cycle.
_TEXTS_PER_SLOT = 10
_MIN_TEXTS = 1000
# Database and role names are cached; renames are rare but should show up eventually.
_NAMES_MAX_AGE = 300.0
# Asking for any query text makes PostgreSQL read all of them (costing about what a whole
# cycle costs), so statements new to the top K wait at most this long for their text.
TEXT_REFRESH = 60.0


@dataclass(frozen=True, slots=True)
class StatementFigures:
    """One exported statement: what it did in the last interval, and in total.

    ``interval_seconds`` is the time between the two snapshots the interval figures come
    from; it is 0 after the first snapshot, when there is no interval yet. ``query`` has its
    literals replaced by ``?``. Totals are the exported counters (since first seen).
    """

    queryid: int
    datname: str
    user: str
    query: str
    interval_seconds: float
    calls: int
    seconds: float
    rows: int
    mean_ms: float
    total_calls: int
    total_seconds: float
    total_rows: int
    total_mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; queryid as a string, since it overflows JavaScript numbers."""
        return {
            "queryid": str(self.queryid), "datname": self.datname, "user": self.user,
            "query": self.query, "interval_seconds": self.interval_seconds,
            "calls": self.calls, "seconds": self.seconds, "rows": self.rows,
            "mean_ms": self.mean_ms, "total_calls": self.total_calls,
            "total_seconds": self.total_seconds, "total_rows": self.total_rows,
            "total_mean_ms": self.total_mean_ms,
        }


class StatementsCollector:
    """The top K statements by time spent since the last sample, from pg_stat_statements."""

    name = "statements"

    def __init__(self, target: PostgresTarget, *, timeout: float, top_k: int,
                 schema: str | None, text_refresh: float = TEXT_REFRESH) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self._target = target
        self._text_refresh = text_refresh
        self._texts_at = float("-inf")
        self._timeout = timeout
        self._top_k = top_k
        self._schema = schema
        self._setup: StatementsSetup | None = None
        self._counters = StatementCounters()
        self._has_snapshot = False
        self._snapshot_at = 0.0
        self._stats_reset: float | None = None
        self._exported: list[Group] = []
        self._labels: dict[Group, Labels] = {}
        self._datnames: dict[int, str] = {}
        self._usernames: dict[int, str] = {}
        self._names_at = float("-inf")
        self._texts = QueryTexts(max(_MIN_TEXTS, _TEXTS_PER_SLOT * top_k))
        # What top_statements() reports, kept raw: figures (and texts, scrubbed on first
        # read) are worked out only when asked for. The lock guards these and the texts.
        self._top_lock = threading.Lock()
        self._top: tuple[tuple[Group, Labels, Counters, Counters], ...] = ()
        self._top_interval = 0.0

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def top_statements(self) -> list[StatementFigures]:
        """The statements exported by the last sample, most time in the interval first."""
        with self._top_lock:
            top, interval = self._top, self._top_interval
            texts = [self._texts.get(group) or "" for group, *_ in top]
        return [_figures(labels, text, delta, totals, interval)
                for (_, labels, delta, totals), text in zip(top, texts, strict=True)]

    def reports(self) -> dict[str, Report]:
        """The API report this collector serves (GET /api/v1/statements)."""
        return {"statements": lambda: [s.as_dict() for s in self.top_statements()]}

    @property
    def main_query(self) -> sql.Composed | None:
        """The query run on every cycle (None until the first), for benchmarks and EXPLAIN."""
        return self._setup.main if self._setup else None

    def collect(self, now: float) -> list[Sample]:
        """One cycle: read pg_stat_statements, advance the deltas, export the top K."""
        try:
            with self._target.session(self._timeout) as db:
                return self._cycle(db, now)
        except CollectorError as exc:
            # Anything may have changed (extension dropped, updated, privileges): look again.
            self._setup = None
            if exc.reason == "query" and "shared_preload_libraries" in str(exc):
                raise CollectorError("setup", NOT_LOADED) from None
            raise

    def _cycle(self, db: Session, now: float) -> list[Sample]:
        setup = self._setup or find_statements(db, self._schema)
        self._setup = setup
        # Binary: arrays of thousands of numbers load far faster than from text.
        rows = db.fetch(setup.main, binary=True)
        continuity = Continuity.CONTINUES if self._has_snapshot else Continuity.FIRST
        if len(rows) == 3:
            # pg_stat_statements_info read on both sides of the snapshot: a reset between
            # the two reads leaves it unknowable whether the entries are from before or after.
            (dealloc, stats_reset, *_), snapshot_row, (_, reset_after, *_) = rows
            if reset_after != stats_reset:
                continuity = Continuity.UNKNOWN
            elif self._has_snapshot and stats_reset != self._stats_reset:
                continuity = Continuity.RESET
            # The earlier of the two: after an unknowable cycle, the next one then counts
            # everything since the reset, which that cycle did not.
            self._stats_reset = stats_reset
        else:
            (dealloc, stats_reset, *_), snapshot_row = (None, None), rows[0]
        # array_agg over no rows is NULL.
        snapshot = Snapshot(PackedKeys(*snapshot_row[2:6]), *(
            PackedColumn(raw, code)
            for raw, code in zip(snapshot_row[6:], COUNTER_CODES, strict=True)))
        deltas = self._counters.advance(snapshot, continuity)
        interval = now - self._snapshot_at if continuity is not Continuity.FIRST else 0.0
        self._has_snapshot = True
        self._snapshot_at = now

        chosen = self._choose(deltas)
        self._exported = chosen
        self._resolve_names(db, chosen)
        self._fetch_texts(db, setup, chosen, deltas)

        counters = self._counters
        totals = [found or ZERO for found in counters.totals(chosen)]
        out = self._statement_samples(chosen, totals, now)
        entries = float(len(counters))
        out.append(Sample("pg_stat_statements_entries", (), entries, now))
        out.append(Sample("pg_stat_statements_max_entries", (), setup.max_entries, now))
        if setup.max_entries > 0:
            out.append(Sample("pg_stat_statements_fill_ratio", (),
                              entries / setup.max_entries, now))
        if dealloc is not None:
            out.append(Sample("pg_stat_statements_dealloc_total", (), float(dealloc), now))
        if stats_reset is not None:
            out.append(Sample("pg_stat_statements_stats_reset_timestamp_seconds", (),
                              float(stats_reset), now))
        top = tuple(zip(chosen, map(self._labels.__getitem__, chosen),
                        map(deltas.get, chosen, repeat(ZERO)), totals, strict=True))
        with self._top_lock:
            self._top, self._top_interval = top, interval
        return out

    def _choose(self, deltas: dict[Group, Counters]) -> list[Group]:
        """The K groups to export: most time in the interval first.

        Statements idle in the interval tie at zero; among them the ones exported last time
        are kept (so their series don't flap), then the ones with most time in total.
        """
        k, counters = self._top_k, self._counters
        chosen = [group for group, d in heapq.nlargest(k, deltas.items(), key=_busyness)
                  if d[0] > 0 or d[1] > 0]
        if len(chosen) < k and len(counters) > len(chosen):
            seen = set(chosen)
            for group in self._exported:
                if len(chosen) >= k:
                    break
                if group not in seen and group in counters:
                    chosen.append(group)
                    seen.add(group)
            if len(chosen) < k and len(counters) > len(chosen):
                chosen.extend(counters.busiest_overall(k - len(chosen), seen))
        return chosen

    def _statement_samples(self, chosen: list[Group], totals: list[Counters],
                           now: float) -> list[Sample]:
        old_labels = self._labels
        labels: dict[Group, Labels] = {}
        out: list[Sample] = []
        append = out.append
        new = tuple.__new__
        for group, (calls, ms, nrows, read_ms, write_ms) in zip(chosen, totals, strict=True):
            lab = old_labels.get(group)
            if lab is None:
                dbid, userid, queryid = group
                lab = labels_of(queryid=str(queryid), datname=self._datname(dbid),
                                user=self._username(userid))
            labels[group] = lab
            # tuple.__new__: Sample's own __new__ is a Python function, five per statement.
            append(new(Sample, (CALLS, lab, float(calls), now)))
            append(new(Sample, (SECONDS, lab, ms / 1000.0, now)))
            append(new(Sample, (ROWS, lab, float(nrows), now)))
            append(new(Sample, (BLOCK_READ, lab, read_ms / 1000.0, now)))
            append(new(Sample, (BLOCK_WRITE, lab, write_ms / 1000.0, now)))
        self._labels = labels
        return out

    def _datname(self, dbid: int) -> str:
        return self._datnames.get(dbid) or str(dbid)

    def _username(self, userid: int) -> str:
        # pg_get_userbyid's wording for a dropped role, as postgres_exporter would show it.
        return self._usernames.get(userid) or f"unknown (OID={userid})"

    def _resolve_names(self, db: Session, chosen: list[Group]) -> None:
        stale = time.monotonic() - self._names_at > _NAMES_MAX_AGE
        missing = any(g[0] not in self._datnames or g[1] not in self._usernames for g in chosen)
        if not (stale or missing):
            return
        rows = db.fetch("SELECT 'd', oid, datname FROM pg_database "
                        "UNION ALL SELECT 'u', oid, rolname FROM pg_roles")
        datnames = {oid: name for kind, oid, name in rows if kind == "d"}
        usernames = {oid: name for kind, oid, name in rows if kind == "u"}
        if datnames != self._datnames or usernames != self._usernames:
            self._labels = {}
        self._datnames, self._usernames = datnames, usernames
        self._names_at = time.monotonic()

    def _fetch_texts(self, db: Session, setup: StatementsSetup, chosen: list[Group],
                     deltas: dict[Group, Counters]) -> None:
        """Fetch the texts of chosen statements not cached yet, and of other busy ones.

        PostgreSQL reads its whole query-text file for any text, so one trip also brings
        the texts of the statements busiest in this interval, the likely next entrants, and
        trips are at most one per ``text_refresh`` seconds.
        """
        texts = self._texts
        with self._top_lock:
            missing = [group for group in chosen if group not in texts]
        if not missing or time.monotonic() - self._texts_at < self._text_refresh:
            return
        self._texts_at = time.monotonic()
        wanted = set(missing)
        room = _MIN_TEXTS // 2
        for group in heapq.nlargest(room, deltas, key=lambda g: deltas[g][1]):
            if group not in texts:
                wanted.add(group)
        rows = db.fetch(setup.texts, (_int8_array({g[2] for g in wanted}),))
        found = {}
        for dbid, userid, queryid, query in rows:
            group = (dbid, userid, queryid)
            if group in wanted:
                found[group] = query or ""
        with self._top_lock:
            # The chosen last, so that filling the cache never pushes them out.
            for group in wanted.difference(missing):
                if group in found:
                    texts.add(group, found[group])
            for group in missing:
                # Not found: gone since the snapshot; "" so as not to ask again every cycle.
                texts.add(group, found.get(group, ""))


def _int8_array(values: Iterable[int]) -> str:
    """``values`` as an int8[] literal, for a ``%s::int8[]`` parameter.

    psycopg adapts a list of ints element by element in Python (about 1.5 µs each, so
    ~1 ms for the hundreds of queryids of a text fetch); joining their decimal forms costs
    a tenth of that, and PostgreSQL's cast parses them just as well.
    """
    return "{" + ",".join(map(str, values)) + "}"


def _busyness(item: tuple[Group, Counters]) -> tuple[float, int]:
    """Time in the interval, then calls."""
    return item[1][1], item[1][0]


def _figures(labels: Labels, text: str, delta: Counters, totals: Counters,
             interval: float) -> StatementFigures:
    names = dict(labels)
    calls, ms, nrows = delta[0], delta[1], delta[2]
    total_calls, total_ms, total_rows = totals[0], totals[1], totals[2]
    return StatementFigures(
        queryid=int(names["queryid"]), datname=names["datname"], user=names["user"],
        query=text, interval_seconds=interval,
        calls=int(calls), seconds=ms / 1000.0, rows=int(nrows),
        mean_ms=ms / calls if calls else 0.0,
        total_calls=int(total_calls), total_seconds=total_ms / 1000.0,
        total_rows=int(total_rows),
        total_mean_ms=total_ms / total_calls if total_calls else 0.0,
    )
