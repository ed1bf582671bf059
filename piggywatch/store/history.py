"""Durable, downsampled history in SQLite, for rules that look further back than memory.

The in-memory store keeps a short window (about an hour). Rules such as week-over-week
growth (``offset 7d``) or a disk-full forecast (``[7d]``) need more, and must keep working
across restarts. ``History`` persists, for the series those rules select, at most one point
per series per ``resolution`` bucket (the bucket's last point, raw, so counter resets stay
visible); ``CombinedSource`` puts it in front of the in-memory store so the evaluator sees
one continuous series: coarse in the past, fine recently.

Tables are prefixed ``history_`` because the same state file holds other parts' tables.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from piggywatch.state_file import connect_state_file
from piggywatch.store.samples import Labels
from piggywatch.store.series import LabelMatcher, MatchOp, Series, SeriesSource, is_stale

__all__ = ["SCHEMA_VERSION", "CombinedSource", "History", "HistorySchemaError"]

SCHEMA_VERSION = 1

# Separate statements: executescript() would commit the transaction they run in.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS history_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS history_series (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        UNIQUE (name, labels_json)
    )""",
    """CREATE TABLE IF NOT EXISTS history_points (
        series_id INTEGER NOT NULL REFERENCES history_series (id),
        ts        REAL NOT NULL,
        value     REAL,
        PRIMARY KEY (series_id, ts)
    ) WITHOUT ROWID""",
)
# ``value`` is nullable because SQLite stores a NaN as NULL; NULL reads back as NaN. Stale
# markers (the one NaN that means something) are never stored, so no meaning is lost.
# ``UNIQUE (name, labels_json)`` doubles as the index for selecting by metric name.

# Drop older points of the bucket, then write the new one unless the bucket already holds a
# later point: rewriting a bucket is idempotent and never moves it backwards in time.
_DELETE_OLDER_IN_BUCKET = (
    "DELETE FROM history_points WHERE series_id = ? AND ts >= ? AND ts < ?"
)
_UPSERT_UNLESS_NEWER = (
    "INSERT OR REPLACE INTO history_points (series_id, ts, value) "
    "SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM history_points "
    "WHERE series_id = ? AND ts > ? AND ts < ?)"
)


class HistorySchemaError(RuntimeError):
    """The state file's history tables were written by an incompatible PiggyWatch."""


class History:
    """Downsampled series kept in one SQLite file, readable as a ``SeriesSource``.

    Safe to share between threads. Writes go through one connection under a lock, each
    ``record()`` in one transaction; selects use a second, read-only connection under its
    own lock, so in WAL mode they read the last committed state and never wait for a
    write in progress (a ``:memory:`` database has one connection for both).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resolution: float = 300.0,
        retention: float = 8 * 86400,
    ) -> None:
        if resolution <= 0 or retention <= 0:
            raise ValueError("history resolution and retention must be positive")
        self.path = Path(path)
        self.resolution = float(resolution)
        self.retention = float(retention)
        # Transactions are explicit (BEGIN IMMEDIATE), so the writer never has to upgrade
        # a read lock, which is where SQLite deadlocks with another connection to the file.
        # Losing the newest bucket on power loss is fine for history: commits need not sync.
        self._conn = connect_state_file(path)
        self._lock = threading.Lock()
        try:
            self._create_schema()
        except BaseException:
            self._conn.close()
            raise
        # A batch of 5,000 series takes a few hundred ms to write; a select waiting for it
        # would stall rule evaluation, so reads have their own connection.
        if str(path) == ":memory:":
            self._reader, self._read_lock = self._conn, self._lock
        else:
            self._reader, self._read_lock = connect_state_file(path), threading.Lock()
            self._reader.execute("PRAGMA query_only=1")
        # Serialises record()/keep() so the selectors and watermarks change in one place;
        # distinct from _lock so reading the source never holds up expire().
        self._record_lock = threading.Lock()
        self._kept: tuple[tuple[LabelMatcher, ...], ...] = ()
        self._watermarks: dict[tuple[LabelMatcher, ...], float] = {}
        self._ids: dict[Labels, int] = {}

    def _create_schema(self) -> None:
        conn = self._conn
        with _transaction(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM history_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO history_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise HistorySchemaError(
                    f"{self.path}: history tables have schema version {row[0]}, this "
                    f"PiggyWatch reads version {SCHEMA_VERSION}; use a matching PiggyWatch "
                    "or move the state file aside (history is rebuilt from new samples)"
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
                with _transaction(self._conn):
                    for labels, rows in prepared:
                        series_id = self._series_id(labels)
                        for ts, stored, lo, hi in rows:
                            deletes.append((series_id, lo, ts))
                            upserts.append((series_id, ts, stored, series_id, ts, hi))
                    self._conn.executemany(_DELETE_OLDER_IN_BUCKET, deletes)
                    self._conn.executemany(_UPSERT_UNLESS_NEWER, upserts)
            except BaseException:
                # Ids handed out inside the rolled-back transaction no longer exist.
                self._ids.clear()
                raise
        return len(upserts)

    def _series_id(self, labels: Labels) -> int:
        """The id of a series, creating its row; call inside a write transaction."""
        found = self._ids.get(labels)
        if found is not None:
            return found
        name, labels_json = _encode(labels)
        self._conn.execute(
            "INSERT OR IGNORE INTO history_series (name, labels_json) VALUES (?, ?)",
            (name, labels_json),
        )
        row = self._conn.execute(
            "SELECT id FROM history_series WHERE name = ? AND labels_json = ?",
            (name, labels_json),
        ).fetchone()
        series_id = int(row[0])
        self._ids[labels] = series_id
        return series_id

    def expire(self, now: float) -> int:
        """Delete points older than the retention, then series left without points.

        Returns how many points were deleted.
        """
        horizon = now - self.retention
        with self._lock, _transaction(self._conn):
            # Per series, so each delete is a range seek on the primary key instead of a
            # scan of every point for the timestamp.
            ids = [row[0] for row in self._conn.execute("SELECT id FROM history_series")]
            before = self._conn.total_changes
            self._conn.executemany(
                "DELETE FROM history_points WHERE series_id = ? AND ts < ?",
                [(series_id, horizon) for series_id in ids],
            )
            deleted = self._conn.total_changes - before
            gone = self._conn.execute(
                "DELETE FROM history_series WHERE NOT EXISTS "
                "(SELECT 1 FROM history_points WHERE series_id = history_series.id)"
            ).rowcount
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
        with self._read_lock:
            if name is None:
                rows = self._reader.execute("SELECT id, name, labels_json FROM history_series")
            else:
                rows = self._reader.execute(
                    "SELECT id, name, labels_json FROM history_series WHERE name = ?", (name,)
                )
            catalog = rows.fetchall()
        found: list[Series] = []
        for series_id, series_name, labels_json in catalog:
            labels = _decode(series_name, labels_json)
            present = dict(labels)
            if not all(m.matches(present.get(m.name, "")) for m in matchers):
                continue
            # One series per lock hold, so evaluator threads selecting at once take turns.
            with self._read_lock:
                points = self._reader.execute(
                    "SELECT ts, value FROM history_points "
                    "WHERE series_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                    (series_id, start, end),
                ).fetchall()
            if points:
                found.append(Series(
                    labels,
                    [ts for ts, _ in points],
                    [math.nan if value is None else value for _, value in points],
                ))
        found.sort(key=lambda s: s.labels)
        return found

    def close(self) -> None:
        """Close the connections; the file stays consistent whenever this is skipped."""
        with self._read_lock:
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
        history: History,
        recent_window: Callable[[], float],
    ) -> None:
        self._recent = recent
        self._history = history
        self._recent_window = recent_window

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        """Series matching every matcher, with their points in ``[start, end]``, oldest first."""
        recent = list(self._recent.select(matchers, start, end))
        if self._memory_covers(recent, start, end):
            return recent
        older = {s.labels: s for s in self._history.select(matchers, start, end)}
        combined: list[Series] = []
        for series in recent:
            past = older.pop(series.labels, None)
            combined.append(series if past is None else _stitch(past, series))
        combined.extend(older[labels] for labels in sorted(older))
        return combined

    def _memory_covers(self, recent: Sequence[Series], start: float, end: float) -> bool:
        # A series starting more than one history bucket after ``start`` may have older
        # points in the history (memory restarted, or the range reaches past its window);
        # asking the history then costs a little time and never changes a covered result.
        if start < end - self._recent_window() or not recent:
            return False
        slack = self._history.resolution
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


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on error (autocommit connection)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
