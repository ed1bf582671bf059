"""Durable, downsampled history in the state database, for rules that look further back
than memory.

The in-memory store keeps a short window (about an hour). Rules such as week-over-week
growth (``offset 7d``) or a disk-full forecast (``[7d]``) need more, and must keep working
across restarts. ``History`` persists, for the series those rules select, at most one point
per series per ``resolution`` bucket (the bucket's last point, raw, so counter resets stay
visible); ``CombinedSource`` puts it in front of the in-memory store so the evaluator sees
one continuous series: coarse in the past, fine recently.

Tables are prefixed ``history_`` because the same state holds other parts' tables; they are
created by the state's migrations (``piggywatch.state.migrations``).
"""

from __future__ import annotations

import json
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from piggywatch.state import SQLiteState, StateConn, StateLike, Tx, open_state
from piggywatch.store.samples import Labels
from piggywatch.store.series import LabelMatcher, MatchOp, Series, SeriesSource, is_stale

__all__ = ["SCHEMA_VERSION", "CombinedSource", "History", "HistorySchemaError"]

SCHEMA_VERSION = 1

# ``history_points.value`` is nullable and a NaN is stored as NULL on both engines (SQLite
# cannot store NaN; PostgreSQL could, but the two must read back alike); NULL reads back as
# NaN. Stale markers (the one NaN that means something) are never stored, so no meaning is
# lost. ``UNIQUE (name, labels_json)`` doubles as the index for selecting by metric name.

# Drop older points of the bucket, then write the new one unless the bucket already holds a
# later point: rewriting a bucket is idempotent and never moves it backwards in time. (The
# SELECT needs its WHERE for SQLite to parse the ON CONFLICT clause after it.)
_DELETE_OLDER_IN_BUCKET = (
    "DELETE FROM history_points WHERE series_id = ? AND ts >= ? AND ts < ?"
)
_UPSERT_UNLESS_NEWER = (
    "INSERT INTO history_points (series_id, ts, value) "
    "SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM history_points "
    "WHERE series_id = ? AND ts > ? AND ts < ?) "
    "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value"
)
# Looking new series' ids up one by one costs a round trip each on PostgreSQL; past this
# many (the first batch after a start), the whole catalogue is read once instead.
_LOOKUP_ONE_BY_ONE = 32


class HistorySchemaError(RuntimeError):
    """The state's history tables were written by an incompatible PiggyWatch."""


class History:
    """Downsampled series kept in the state database, readable as a ``SeriesSource``.

    Safe to share between threads. Writes go through one connection under a lock, each
    ``record()`` in one transaction; selects use a second, read-only connection, so they
    read the last committed state and never wait for a write in progress (SQLite in WAL
    mode, PostgreSQL by MVCC; a SQLite ``:memory:`` database has one connection for both).
    """

    def __init__(
        self,
        state: StateLike,
        *,
        resolution: float = 300.0,
        retention: float = 8 * 86400,
    ) -> None:
        if resolution <= 0 or retention <= 0:
            raise ValueError("history resolution and retention must be positive")
        self.state = open_state(state)
        # The SQLite file, for messages and tools that look at it; None on PostgreSQL.
        self.path: Path | None = (
            self.state.path if isinstance(self.state, SQLiteState) else None)
        self.resolution = float(resolution)
        self.retention = float(retention)
        # Losing the newest bucket on power loss is fine for history: commits need not sync.
        self._conn = self.state.connect()
        # Serialises writes with the series-id cache they fill; expire() takes it too.
        self._lock = threading.Lock()
        try:
            self._check_schema()
            # A batch of 5,000 series takes a few hundred ms to write; a select waiting for
            # it would stall rule evaluation, so reads have their own connection.
            self._reader = self._open_reader()
        except BaseException:
            self._conn.close()
            raise
        # Serialises record()/keep() so the selectors and watermarks change in one place;
        # distinct from _lock so reading the source never holds up expire().
        self._record_lock = threading.Lock()
        self._kept: tuple[tuple[LabelMatcher, ...], ...] = ()
        self._watermarks: dict[tuple[LabelMatcher, ...], float] = {}
        self._ids: dict[Labels, int] = {}

    def _open_reader(self) -> StateConn:
        if self.path is not None and str(self.path) == ":memory:":
            return self._conn  # each connection to ":memory:" is a database of its own
        return self.state.connect(read_only=True)

    def _check_schema(self) -> None:
        with self._conn.transaction() as tx:
            tx.execute(
                "INSERT INTO history_meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            row = tx.one("SELECT value FROM history_meta WHERE key = 'schema_version'")
        if row is not None and row[0] != str(SCHEMA_VERSION):
            raise HistorySchemaError(
                f"{self.state.describe()}: history tables have schema version {row[0]}, "
                f"this PiggyWatch reads version {SCHEMA_VERSION}; use a matching PiggyWatch "
                "or move the state aside (history is rebuilt from new samples)"
            )

    def keep(self, matchers_sets: Sequence[Sequence[LabelMatcher]]) -> None:
        """Persist from now on the series matched by any of these selectors (replaces the set)."""
        kept = tuple(dict.fromkeys(tuple(m) for m in matchers_sets))
        with self._record_lock:
            self._kept = kept
            self._watermarks = {k: v for k, v in self._watermarks.items() if k in kept}

    def record(self, source: SeriesSource, now: float) -> int:
        """Copy the kept series' new points from ``source``; returns how many were written.

        Every bucket from the one open at the previous call onwards is re-read, so a point
        that arrived late is still seen and calling twice for the same bucket changes
        nothing. The first call for a selector reads everything the source still holds.
        """
        with self._record_lock:
            found: dict[Labels, list[Series]] = {}
            for selector in self._kept:
                since = self._watermarks.get(selector, now - self.retention)
                for series in source.select(selector, min(since, now), now):
                    found.setdefault(series.labels, []).append(series)
            written = self._write({labels: self._last_per_bucket(_merged(parts))
                                   for labels, parts in found.items()})
            reread_from = self._bucket_start(self._bucket_of(now))
            for selector in self._kept:
                self._watermarks[selector] = reread_from
            return written

    def _write(self, lasts: dict[Labels, list[tuple[float, float]]]) -> int:
        # Everything but the series ids is prepared before taking the lock expire() waits on.
        prepared: list[tuple[Labels, list[tuple[float, float | None, float, float]]]] = []
        for labels, bucket_points in lasts.items():
            rows = []
            for ts, value in bucket_points:
                lo, hi = self._bucket_bounds(ts)
                rows.append((ts, None if math.isnan(value) else value, lo, hi))
            prepared.append((labels, rows))
        deletes: list[tuple[int, float, float]] = []
        upserts: list[tuple[int, float, float | None, int, float, float]] = []
        with self._lock:
            try:
                # One transaction for the whole batch; executemany is one statement prepared
                # once on SQLite and pipelined (no round trip per row) by psycopg.
                with self._conn.transaction() as tx:
                    ids = self._series_ids(tx, [labels for labels, _ in prepared])
                    for labels, rows in prepared:
                        series_id = ids[labels]
                        for ts, stored, lo, hi in rows:
                            deletes.append((series_id, lo, ts))
                            upserts.append((series_id, ts, stored, series_id, ts, hi))
                    tx.executemany(_DELETE_OLDER_IN_BUCKET, deletes)
                    tx.executemany(_UPSERT_UNLESS_NEWER, upserts)
            except BaseException:
                # Ids handed out inside the rolled-back transaction no longer exist.
                self._ids.clear()
                raise
        return len(upserts)

    def _series_ids(self, tx: Tx, wanted: Sequence[Labels]) -> dict[Labels, int]:
        """The ids of these series, creating their rows; call inside a write transaction."""
        missing = {labels: _encode(labels) for labels in wanted if labels not in self._ids}
        if missing:
            tx.executemany(
                "INSERT INTO history_series (name, labels_json) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                list(missing.values()),
            )
            if len(missing) <= _LOOKUP_ONE_BY_ONE:
                for labels, key in missing.items():
                    row = tx.one(
                        "SELECT id FROM history_series WHERE name = ? AND labels_json = ?", key)
                    assert row is not None  # inserted just above, in this transaction
                    self._ids[labels] = int(row[0])
            else:
                by_key = {key: labels for labels, key in missing.items()}
                for series_id, name, labels_json in tx.query(
                        "SELECT id, name, labels_json FROM history_series"):
                    found = by_key.get((name, labels_json))
                    if found is not None:
                        self._ids[found] = int(series_id)
        return {labels: self._ids[labels] for labels in wanted}

    def expire(self, now: float) -> int:
        """Delete points older than the retention, then series left without points.

        Returns how many points were deleted.
        """
        horizon = now - self.retention
        with self._lock, self._conn.transaction() as tx:
            # Per series, so each delete is a range seek on the primary key instead of a
            # scan of every point for the timestamp.
            ids = [row[0] for row in tx.query("SELECT id FROM history_series")]
            deleted = tx.executemany(
                "DELETE FROM history_points WHERE series_id = ? AND ts < ?",
                [(series_id, horizon) for series_id in ids],
            ) if ids else 0
            gone = tx.execute(
                "DELETE FROM history_series WHERE NOT EXISTS "
                "(SELECT 1 FROM history_points WHERE series_id = history_series.id)"
            )
            if gone:
                self._ids.clear()
        return deleted

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        """Stored series matching every matcher, with their points in ``[start, end]``."""
        if start > end:
            return []
        name = next(
            (m.value for m in matchers if m.name == "__name__" and m.op is MatchOp.EQUAL), None
        )
        if name is None:
            catalog = self._reader.query("SELECT id, name, labels_json FROM history_series")
        else:
            catalog = self._reader.query(
                "SELECT id, name, labels_json FROM history_series WHERE name = ?", (name,)
            )
        found: list[Series] = []
        for series_id, series_name, labels_json in catalog:
            labels = _decode(series_name, labels_json)
            present = dict(labels)
            if not all(m.matches(present.get(m.name, "")) for m in matchers):
                continue
            # One series per transaction, so evaluator threads selecting at once take turns.
            points = self._reader.query(
                "SELECT ts, value FROM history_points "
                "WHERE series_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                (series_id, start, end),
            )
            if points:
                found.append(Series(
                    labels,
                    [float(ts) for ts, _ in points],
                    [math.nan if value is None else float(value) for _, value in points],
                ))
        found.sort(key=lambda s: s.labels)
        return found

    def close(self) -> None:
        """Close the connections; the state stays consistent whenever this is skipped.

        A store passed in (rather than a path) is not closed: its owner closes it.
        """
        if self._reader is not self._conn:
            self._reader.close()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _last_per_bucket(self, series: Series) -> list[tuple[float, float]]:
        """The latest non-stale point of each bucket, oldest bucket first."""
        # Walking back from the newest point and jumping over the rest of its bucket costs
        # a bisection per bucket instead of work per point: a batch re-reads ~40 points of
        # each of thousands of series to write two buckets each.
        timestamps, values = series.timestamps, series.values
        lasts: list[tuple[float, float]] = []
        i = len(timestamps) - 1
        while i >= 0:
            value = values[i]
            if is_stale(value):
                i -= 1
                continue
            ts = timestamps[i]
            lasts.append((ts, value))
            i = bisect_left(timestamps, self._bucket_start(self._bucket_of(ts)), 0, i) - 1
        lasts.reverse()
        return lasts

    def _bucket_of(self, ts: float) -> int:
        # Nudged so that membership agrees exactly with the float bounds used in SQL.
        bucket = math.floor(ts / self.resolution)
        if ts < self._bucket_start(bucket):
            bucket -= 1
        elif ts >= self._bucket_start(bucket + 1):
            bucket += 1
        return bucket

    def _bucket_start(self, bucket: int) -> float:
        return bucket * self.resolution

    def _bucket_bounds(self, ts: float) -> tuple[float, float]:
        bucket = self._bucket_of(ts)
        return self._bucket_start(bucket), self._bucket_start(bucket + 1)


class CombinedSource:
    """The in-memory store with the history behind it, as one ``SeriesSource``.

    When the in-memory store cannot cover a select, each series gets the history points
    older than its first in-memory point followed by its in-memory points, and series known
    only to the history are returned as stored.

    Whether memory covers ``[start, end]`` is judged from what it returned, not only from
    ``end - recent_window()``: an ``offset 7d`` selector asks for a short range whose end is
    a week ago, which memory does not hold although the range is short.
    """

    def __init__(
        self,
        recent: SeriesSource,
        history: History | None,
        recent_window: Callable[[], float],
    ) -> None:
        self._recent = recent
        # Swappable: None while there is no history open (a standby replica), and the
        # select then answers from memory alone.
        self.history: History | None = history
        self._recent_window = recent_window

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        """Series matching every matcher, with their points in ``[start, end]``, oldest first."""
        recent = list(self._recent.select(matchers, start, end))
        history = self.history  # read once: another thread may swap it meanwhile
        if history is None or self._memory_covers(recent, start, end, history.resolution):
            return recent
        older = {s.labels: s for s in history.select(matchers, start, end)}
        combined: list[Series] = []
        for series in recent:
            past = older.pop(series.labels, None)
            combined.append(series if past is None else _stitch(past, series))
        combined.extend(older[labels] for labels in sorted(older))
        return combined

    def _memory_covers(self, recent: Sequence[Series], start: float, end: float,
                       slack: float) -> bool:
        # A series starting more than one history bucket after ``start`` may have older
        # points in the history (memory restarted, or the range reaches past its window);
        # asking the history then costs a little time and never changes a covered result.
        if start < end - self._recent_window() or not recent:
            return False
        return all(s.timestamps and s.timestamps[0] - start <= slack for s in recent)


def _merged(parts: list[Series]) -> Series:
    """One series from the answers of several selectors that matched it, oldest first."""
    if len(parts) == 1:
        return parts[0]
    points = sorted(
        {t: v for part in parts for t, v in zip(part.timestamps, part.values, strict=True)}
        .items()
    )
    return Series(parts[0].labels, [t for t, _ in points], [v for _, v in points])


def _stitch(past: Series, recent: Series) -> Series:
    """``past``'s points older than ``recent``'s first, then ``recent``'s."""
    if not recent.timestamps:
        return past
    cut = bisect_left(past.timestamps, recent.timestamps[0])
    if cut == 0:
        return recent
    return Series(
        recent.labels,
        [*past.timestamps[:cut], *recent.timestamps],
        [*past.values[:cut], *recent.values],
    )


def _encode(labels: Labels) -> tuple[str, str]:
    """(metric name, canonical JSON of the other labels): the series' unique key."""
    others = {k: v for k, v in labels if k != "__name__"}
    name = dict(labels).get("__name__", "")
    return name, json.dumps(others, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _decode(name: str, labels_json: str) -> Labels:
    pairs: dict[str, str] = json.loads(labels_json)
    if name:
        pairs["__name__"] = name
    return tuple(sorted(pairs.items()))

