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
from itertools import filterfalse, repeat
from operator import itemgetter
from typing import Any

from psycopg import sql

from piggywatch.collectors.base import CollectorError, Report
from piggywatch.collectors.postgres.query_text import QueryTexts
from piggywatch.collectors.postgres.statement_counters import Continuity, StatementCounters
from piggywatch.collectors.postgres.statement_positions import Positions, Read, read_view
from piggywatch.collectors.postgres.statement_snapshot import ZERO, Counters, Group
from piggywatch.collectors.postgres.statements_setup import (
    NOT_LOADED,
    StatementsSetup,
    find_statements,
)
from piggywatch.collectors.postgres.target import PostgresTarget, Session
from piggywatch.store import Changes, Labels, MetricKind, MetricSpec, Sample

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

_STATEMENT_METRICS = (CALLS, SECONDS, ROWS, BLOCK_READ, BLOCK_WRITE)
# How busy a statement was in an interval, from its deltas: time, then calls.
_BUSYNESS = itemgetter(1, 0)
# What top_statements() reports with the labels and totals: the exported groups in order,
# and their interval deltas.
_Top = tuple[list[Group], dict[Group, Counters]]

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
        self._positions = Positions()
        self._has_snapshot = False
        self._snapshot_at = 0.0
        self._stats_reset: float | None = None
        # The last result: the exported groups in order (a dict, so that the next cycle
        # copies it rather than hashing thousands of groups again), per exported group its
        # labels (the same object cycle after cycle) and its totals; and the values of the
        # other series.
        self._exported: dict[Group, None] = {}
        self._labels: dict[Group, Labels] = {}
        self._totals: dict[Group, Counters] = {}
        self._gauges: dict[str, float] = {}
        self._datnames: dict[int, str] = {}
        self._usernames: dict[int, str] = {}
        # The datname and user label pairs of each (dbid, userid), shared by its statements'
        # label sets (10,000 tuples less at top_k 5000).
        self._name_pairs: dict[tuple[int, int], tuple[tuple[str, str], tuple[str, str]]] = {}
        self._names_at = float("-inf")
        self._texts = QueryTexts(max(_MIN_TEXTS, _TEXTS_PER_SLOT * top_k))
        # Exported groups without a text yet, and the cache's evictions when that was known.
        self._textless: set[Group] = set()
        self._texts_evicted = 0
        # What top_statements() reports, kept raw: figures (and texts, scrubbed on first
        # read) are worked out only when asked for. The lock guards these, the texts, and
        # the labels and totals, which a cycle changes in place (copying thousands of
        # entries for the rare reader would cost every cycle).
        self._top_lock = threading.Lock()
        self._top: _Top = ([], {})
        self._top_interval = 0.0

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def top_statements(self) -> list[StatementFigures]:
        """The statements exported by the last sample, most time in the interval first."""
        with self._top_lock:
            (chosen, deltas), interval = self._top, self._top_interval
            labels, totals, texts = self._labels, self._totals, self._texts
            rows = [(labels[group], texts.get(group) or "", deltas.get(group, ZERO),
                     totals[group]) for group in chosen]
        return [_figures(*row, interval) for row in rows]

    def reports(self) -> dict[str, Report]:
        """The API report this collector serves (GET /api/v1/statements)."""
        return {"statements": lambda: [s.as_dict() for s in self.top_statements()]}

    @property
    def main_query(self) -> sql.Composed | None:
        """The query run on every cycle (None until the first), for benchmarks and EXPLAIN.

        Its parameters are those of ``statement_positions.Positions.params``."""
        return self._setup.main if self._setup else None

    def main_params(self) -> tuple[Any, ...]:
        """The parameters of the main query's next run (what the last read found)."""
        return self._positions.params()

    def collect(self, now: float) -> list[Sample]:
        """One cycle: read pg_stat_statements, advance the deltas, export the top K."""
        return self.collect_changes(now, full=True).changed

    def collect_changes(self, now: float, *, full: bool) -> Changes:
        """One cycle, told as what changed since the last one's result.

        ``full``: every series in ``changed`` (first cycle, or after a failed one). Else the
        work is what changed: statements that ran, entered or left the top K.
        """
        try:
            with self._target.session(self._timeout) as db:
                return self._cycle(db, now, full)
        except CollectorError as exc:
            # Anything may have changed (extension dropped, updated, privileges): look again.
            self._setup = None
            if exc.reason == "query" and "shared_preload_libraries" in str(exc):
                raise CollectorError("setup", NOT_LOADED) from None
            raise

    def _cycle(self, db: Session, now: float, full: bool) -> Changes:
        setup = self._setup or find_statements(db, self._schema)
        self._setup = setup
        read, size, continuity = self._read(db, setup)
        counters = self._counters
        deltas = counters.advance_read(read.positions, read.keys, read.counters, size,
                                       continuity)
        interval = now - self._snapshot_at if continuity is not Continuity.FIRST else 0.0
        self._has_snapshot = True
        self._snapshot_at = now
        # Only a cycle that continues knows which groups left; else every one is checked. So
        # is it after a failed cycle (``full``): one that failed after its read took the
        # groups that left then with it, and they would stay exported at zero for ever.
        gone = counters.gone if continuity is Continuity.CONTINUES and not full else None

        chosen, entering, leaving, exported = self._choose(deltas, gone)
        relabelled = self._resolve_names(db, entering)
        self._fetch_texts(db, setup, chosen, entering, leaving, deltas)
        with self._top_lock:
            changed, removed = self._update(chosen, entering, leaving, relabelled, now, full,
                                            whole=gone is None)
            self._top, self._top_interval = (chosen, deltas), interval
        gauges, gone_gauges = self._gauge_samples(setup, read, now, full)
        changed += gauges
        self._exported = exported
        return Changes(changed, [] if full else removed + gone_gauges)

    def _update(self, chosen: list[Group], entering: list[Group], leaving: list[Group],
                relabelled: list[tuple[Group, Labels]], now: float, full: bool, *,
                whole: bool) -> tuple[list[Sample], list[tuple[str, Labels]]]:
        """Bring the labels and totals to this cycle's choice (under the top lock): the
        statement series that changed, and those that left. ``whole``: every chosen group
        may have other totals (else only those the counters touched, and the entering)."""
        counters, labels, totals = self._counters, self._labels, self._totals
        # Series that leave: statements out of the top K, and the old labels of renamed ones.
        old_labels = dict(relabelled)
        removed: list[tuple[str, Labels]] = []
        for group in leaving:
            lab = labels.pop(group)
            removed += zip(_STATEMENT_METRICS, repeat(old_labels.pop(group, lab)))
            del totals[group]
        for lab in old_labels.values():
            removed += zip(_STATEMENT_METRICS, repeat(lab))
        if whole:
            dirty = chosen
        else:
            # Only these can have other totals: the rest did nothing since the last cycle.
            dirty = list(dict.fromkeys([*filter(totals.__contains__, counters.touched),
                                        *entering, *old_labels]))
        changed: list[Sample] = []
        for group, values in zip(dirty, counters.totals(dirty), strict=True):
            values = values or ZERO
            known = labels.get(group)
            if known is None:
                known = labels[group] = self._labels_of(group)
            before = None if full or group in old_labels else totals.get(group)
            totals[group] = values
            changed += _statement_samples(known, values, before, now)
        return changed, removed

    def _read(self, db: Session, setup: StatementsSetup) -> tuple[Read, int, Continuity]:
        """Read what changed (the whole view when needed): the read, the view's size (of
        entries the role may see), and how it relates to the last snapshot."""
        positions = self._positions
        read = read_view(db, setup, positions)
        if not read.whole and (
                not read.positions or read.positions[-1] < positions.size - 1  # shrank
                or read.hidden or read.stats_reset != self._stats_reset
                or read.reset_after != read.stats_reset):
            # A reset can leave an entry equal at its position to one before, with other
            # counters; and a view that shrank says how far only by its size.
            read = read_view(db, setup, None)
        continuity = Continuity.CONTINUES if self._has_snapshot else Continuity.FIRST
        if read.stats_reset is not None or read.reset_after is not None:
            # pg_stat_statements_info read on both sides of the snapshot: a reset between
            # the two reads leaves it unknowable whether the entries are from before or after.
            if read.reset_after != read.stats_reset:
                continuity = Continuity.UNKNOWN
            elif self._has_snapshot and read.stats_reset != self._stats_reset:
                continuity = Continuity.RESET
            # The earlier of the two: after an unknowable cycle, the next one then counts
            # everything since the reset, which that cycle did not.
            self._stats_reset = read.stats_reset
        if read.hidden:
            # Entries of roles this one may not see have no queryid: left out, and the
            # positions would not be the view's, so every read is whole while they last.
            read = read.visible()
            positions.clear()
            return read, len(read.positions), continuity
        size = len(read.positions) if read.whole else read.positions[-1] + 1
        positions.patch(read, size)
        return read, size, continuity

    def _choose(self, deltas: dict[Group, Counters], gone: set[Group] | None
                ) -> tuple[list[Group], list[Group], list[Group], dict[Group, None]]:
        """The K groups to export, most time in the interval first; those entering the
        export and those leaving it; and the chosen as the next cycle's ``_exported``.

        Statements idle in the interval tie at zero; among them the ones exported last time
        are kept (so their series don't flap), then the ones with most time in total.
        ``gone``: the groups that left the view, if known (else each is looked up).
        The work is what changed: the last export is copied, not hashed group by group.
        """
        k, counters, labels = self._top_k, self._counters, self._labels
        chosen = _busiest(deltas, k)
        entering = list(filterfalse(labels.__contains__, chosen))
        # The exported (all labelled) that are not busy, in their order.
        kept_keys = self._exported.copy()
        for group in chosen:
            kept_keys.pop(group, None)
        if gone is None:
            leaving = list(filterfalse(counters.__contains__, kept_keys))
            kept = list(filter(counters.__contains__, kept_keys))
            kept_keys = dict.fromkeys(kept)
        else:
            leaving = [group for group in gone if group in labels]
            for group in leaving:
                kept_keys.pop(group, None)
            kept = list(kept_keys)
        room = max(0, k - len(chosen))
        pushed = kept[room:]  # idle, and pushed out by busy ones
        leaving += pushed
        for group in pushed:
            del kept_keys[group]
        exported = dict.fromkeys(chosen)
        exported.update(kept_keys)  # in order, and without hashing the groups again
        chosen += kept[:room]
        if len(chosen) < k and len(counters) > len(chosen):
            more = counters.busiest_overall(k - len(chosen), exported)
            chosen += more
            entering += more  # none of them exported: the exported are all in chosen
            exported.update(dict.fromkeys(more))
        return chosen, entering, leaving, exported

    def _gauge_samples(self, setup: StatementsSetup, read: Read, now: float, full: bool
                       ) -> tuple[list[Sample], list[tuple[str, Labels]]]:
        """The view's own series (entries, fill, evictions, reset time): those that changed,
        and those no longer there."""
        entries = float(len(self._counters))
        values = {"pg_stat_statements_entries": entries,
                  "pg_stat_statements_max_entries": setup.max_entries}
        if setup.max_entries > 0:
            values["pg_stat_statements_fill_ratio"] = entries / setup.max_entries
        if read.dealloc is not None:
            values["pg_stat_statements_dealloc_total"] = float(read.dealloc)
        if read.stats_reset is not None:
            values["pg_stat_statements_stats_reset_timestamp_seconds"] = float(read.stats_reset)
        before, self._gauges = self._gauges, values
        return ([Sample(name, (), value, now) for name, value in values.items()
                 if full or before.get(name) != value],
                [(name, ()) for name in before if name not in values])

    def _labels_of(self, group: Group) -> Labels:
        """postgres_exporter's labels of a statement: datname, queryid, user (sorted)."""
        dbid, userid, queryid = group
        names = self._name_pairs.get((dbid, userid))
        if names is None:
            names = self._name_pairs[dbid, userid] = (("datname", self._datname(dbid)),
                                                      ("user", self._username(userid)))
        return (names[0], ("queryid", str(queryid)), names[1])

    def _datname(self, dbid: int) -> str:
        return self._datnames.get(dbid) or str(dbid)

    def _username(self, userid: int) -> str:
        # pg_get_userbyid's wording for a dropped role, as postgres_exporter would show it.
        return self._usernames.get(userid) or f"unknown (OID={userid})"

    def _resolve_names(self, db: Session, entering: list[Group]) -> list[tuple[Group, Labels]]:
        """Look up database and role names when some are missing or stale; the exported
        groups whose labels that changed, with their old labels (new ones in ``_labels``)."""
        stale = time.monotonic() - self._names_at > _NAMES_MAX_AGE
        missing = any(g[0] not in self._datnames or g[1] not in self._usernames
                      for g in entering)
        if not (stale or missing):
            return []
        rows = db.fetch("SELECT 'd', oid, datname FROM pg_database "
                        "UNION ALL SELECT 'u', oid, rolname FROM pg_roles")
        datnames = {oid: name for kind, oid, name in rows if kind == "d"}
        usernames = {oid: name for kind, oid, name in rows if kind == "u"}
        self._names_at = time.monotonic()
        if datnames == self._datnames and usernames == self._usernames:
            return []
        self._datnames, self._usernames = datnames, usernames
        self._name_pairs = {}
        relabelled = []
        labels = self._labels
        with self._top_lock:
            for group, old in labels.items():
                new = self._labels_of(group)
                if new != old:
                    relabelled.append((group, old))
                    labels[group] = new
        return relabelled

    def _fetch_texts(self, db: Session, setup: StatementsSetup, chosen: list[Group],
                     entering: list[Group], leaving: list[Group],
                     deltas: dict[Group, Counters]) -> None:
        """Fetch the texts of chosen statements not cached yet, and of other busy ones.

        PostgreSQL reads its whole query-text file for any text, so one trip also brings
        the texts of the statements busiest in this interval, the likely next entrants, and
        trips are at most one per ``text_refresh`` seconds.
        """
        texts, textless = self._texts, self._textless
        with self._top_lock:
            if texts.evicted != self._texts_evicted:
                # Texts were pushed out, maybe of exported statements: look at them all.
                textless = self._textless = set(filterfalse(texts.__contains__, chosen))
                self._texts_evicted = texts.evicted
            else:
                textless.difference_update(leaving)
                textless.update(filterfalse(texts.__contains__, entering))
        if not textless or time.monotonic() - self._texts_at < self._text_refresh:
            return
        self._texts_at = time.monotonic()
        missing = list(textless)
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
            # Filling the cache may have pushed out texts of exported statements: should
            # it have, the next cycle looks at them all (evicted moved).
            textless.clear()


def _int8_array(values: Iterable[int]) -> str:
    """``values`` as an int8[] literal, for a ``%s::int8[]`` parameter.

    psycopg adapts a list of ints element by element in Python (about 1.5 µs each, so
    ~1 ms for the hundreds of queryids of a text fetch); joining their decimal forms costs
    a tenth of that, and PostgreSQL's cast parses them just as well.
    """
    return "{" + ",".join(map(str, values)) + "}"


def _statement_samples(labels: Labels, values: Counters, before: Counters | None,
                       now: float) -> list[Sample]:
    """The five series of a statement; with ``before``, only those whose value changed."""
    calls, ms, nrows, read_ms, write_ms = values
    new = tuple.__new__  # Sample's own __new__ is a Python function, five per statement
    if before is None:
        return [new(Sample, (CALLS, labels, float(calls), now)),
                new(Sample, (SECONDS, labels, ms / 1000.0, now)),
                new(Sample, (ROWS, labels, float(nrows), now)),
                new(Sample, (BLOCK_READ, labels, read_ms / 1000.0, now)),
                new(Sample, (BLOCK_WRITE, labels, write_ms / 1000.0, now))]
    out = []
    if calls != before[0]:
        out.append(new(Sample, (CALLS, labels, float(calls), now)))
    if ms != before[1]:
        out.append(new(Sample, (SECONDS, labels, ms / 1000.0, now)))
    if nrows != before[2]:
        out.append(new(Sample, (ROWS, labels, float(nrows), now)))
    if read_ms != before[3]:
        out.append(new(Sample, (BLOCK_READ, labels, read_ms / 1000.0, now)))
    if write_ms != before[4]:
        out.append(new(Sample, (BLOCK_WRITE, labels, write_ms / 1000.0, now)))
    return out


def _busiest(deltas: dict[Group, Counters], k: int) -> list[Group]:
    """Up to ``k`` groups that did something in the interval, most time first, then most
    calls, ties in the order of ``deltas`` (what ``heapq.nlargest`` gives, keys in C)."""
    groups, values = list(deltas), list(deltas.values())
    busyness = list(map(_BUSYNESS, values))
    order = sorted(range(len(values)), key=busyness.__getitem__, reverse=True)[:k]
    return [groups[i] for i in order if values[i][0] > 0 or values[i][1] > 0]


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
