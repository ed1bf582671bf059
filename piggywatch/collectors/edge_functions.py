"""Edge functions: invocations, errors and latency from the app's edge-function logs.

Two sources feed one collector: a log table in the monitored database (read here, with
every aggregate computed by PostgreSQL) and the Supabase Management API's analytics logs
(``edge_functions_http``). Both are read incrementally from a durable watermark.

How the watermark counts every row exactly once, also when rows arrive out of order:

* ``settled_before`` (S) is kept in the state database with the *settled totals*: the
  aggregates of every row whose ``created_at`` is before S. Rows before S are never read again.
* Each cycle reads the tail ``created_at >= S`` once, split at S' = now - lateness: the part
  before S' is added to the settled totals and S moves to S' (one transaction); the
  part after S' is *pending* and is re-read, from scratch, next cycle.
* Exported counters are settled totals + pending aggregates. The pending part is recomputed
  rather than accumulated, so a late row landing in it is counted once, and a restart
  (new process, same state) loses and repeats nothing: it resumes from S.

A row inserted more than ``lateness`` after its ``created_at`` may fall before S and is not
counted: that is the price of never re-reading settled rows, and why lateness is a setting.
No per-row ids are stored, so the state stays a few rows per function whatever the volume.

Replicas sharing the state: only the leader persists (``EdgeStateDB(may_write=...)``); a
standby counts in memory from where the state was when it started. Saving moves S only
from the value the saver last saw, so a replica that was not the one saving (a standby just
promoted) finds S elsewhere and continues from the stored S and totals instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Literal, Protocol

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_types import Duration
from piggywatch.state import STATE_ERRORS, StateConn, StateLike, connect
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

if TYPE_CHECKING:
    from piggywatch.collectors.edge_functions_http import HttpEdgeSource

__all__ = [
    "EdgeFunctionsCollector", "EdgeFunctionsConfig", "EdgeHttpSourceConfig",
    "EdgeSqlSourceConfig", "EdgeStateDB", "SqlEdgeSource", "build_edge_functions_collector",
]

OTHER = "other"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
QUANTILES = (0.5, 0.95, 0.99)
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EdgeSqlSourceConfig(_Strict):
    """A log table in a monitored database; every name is configurable."""

    target: str = Field(min_length=1, description="name of the PostgreSQL target to read")
    table: str = Field("edge_functions_logs", description="table, optionally schema.table")
    function_column: str = "function_name"
    duration_column: str = "duration_ms"
    duration_unit: Literal["ms", "s"] = "ms"
    status_column: str = "status_code"
    created_at_column: str = "created_at"


class EdgeHttpSourceConfig(_Strict):
    """The Supabase Management API's analytics logs endpoint (``function_edge_logs``)."""

    base_url: str = "https://api.supabase.com"
    project_ref: str = Field(min_length=1)
    access_token: SecretStr
    # "clickhouse": the endpoint "logs" (ClickHouse SQL over one `logs` table filtered by
    # source). "bigquery": "logs.all" (BigQuery SQL, one table per source), which Supabase
    # removed on 2026-09-23; kept for APIs that still serve it (older self-hosted ones).
    dialect: Literal["clickhouse", "bigquery"] = "clickhouse"
    # The API refuses ranges over 24 hours; longer gaps (first run, downtime) are split.
    max_window: Duration = 86400.0
    page_size: int = Field(1000, ge=1, le=10000)

    @field_validator("max_window")
    @classmethod
    def _at_most_a_day(cls, value: float) -> float:
        if value > 86400.0:
            raise ValueError("the logs API accepts windows of at most 24h")
        return value


class EdgeFunctionsConfig(_Strict):
    """Edge-function telemetry: one source (sql or http), windows, buckets and label bounds."""

    sql: EdgeSqlSourceConfig | None = None
    http: EdgeHttpSourceConfig | None = None
    interval: Duration = 60.0
    timeout: Duration = 10.0
    # How late (after its created_at) a row may still be inserted and be counted.
    lateness: Duration = 300.0
    # The window of the error-ratio and percentile gauges.
    window: Duration = 300.0
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    top_n: int = Field(10, ge=1, le=200)

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(b <= a for a, b in pairwise(value)):
            raise ValueError("buckets must be a non-empty list of increasing upper bounds")
        if any(not math.isfinite(b) or b <= 0 for b in value):
            raise ValueError("bucket bounds are positive numbers of seconds (+Inf is implied)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EdgeFunctionsConfig:
        if (self.sql is None) == (self.http is None):
            raise ValueError("configure exactly one edge-functions source: sql or http")
        return self


# --- aggregates -----------------------------------------------------------------------

# (function, series) -> value, where series is "status:<class>", "bucket:<i>" (i-th bucket,
# not cumulative; i == len(buckets) is +Inf) or "sum" (seconds). Flat, so adding two
# aggregates and storing them are trivial.
Totals = dict[tuple[str, str], float]


def add_into(into: Totals, more: Totals) -> None:
    """Add ``more`` to ``into`` in place."""
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def volume_by_function(totals: Totals) -> dict[str, float]:
    """Invocations per function."""
    out: dict[str, float] = {}
    for (function, series), value in totals.items():
        if series.startswith("status:"):
            out[function] = out.get(function, 0.0) + value
    return out


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One function label's invocations, 5xx count and duration quantiles (seconds)."""

    count: float
    errors: float
    quantiles: tuple[float, float, float]


@dataclass(slots=True)
class Reading:
    """One cycle's read: the new watermark, the newly settled and the pending aggregates."""

    settle_before: datetime
    settled: Totals = field(default_factory=dict)
    pending: Totals = field(default_factory=dict)
    window: dict[str, WindowStats] = field(default_factory=dict)


# Picks the function labels for the window gauges from this cycle's settled and pending
# aggregates (the collector adds its durable totals), so ranking sees the newest volume.
Ranker = Callable[[Totals, Totals], list[str]]


class EdgeLogSource(Protocol):
    """Where edge-function log rows come from."""

    @property
    def key(self) -> str:
        """Identifies this source's watermark in the shared state."""
        ...

    def read(self, since: datetime | None, now: float, rank: Ranker) -> Reading:
        """Aggregate rows from ``since`` (None: first run) and the gauge window."""
        ...


# --- durable state -------------------------------------------------------------------

# What settle() did: saved the new watermark, left the database alone (a standby), or found
# the database's watermark elsewhere than the caller's (another replica settled meanwhile).
Settled = Literal["saved", "standby", "moved"]


class EdgeStateDB:
    """The watermark and settled totals of each edge source, in the state database (tables
    ``edge_*``).

    ``may_write`` says whether this replica persists: a standby of a high-availability pair
    reads the state at start but leaves it to the leader, keeping its own totals in memory.
    """

    def __init__(self, state: StateLike, *,
                 may_write: Callable[[], bool] = lambda: True) -> None:
        self._state = state
        self._connection: StateConn | None = None
        self._may_write = may_write

    @property
    def _conn(self) -> StateConn:
        # Connected on first use, so a state database that is down at start makes a failed
        # collection (retried), not a daemon that cannot start.
        if self._connection is None:
            self._connection = connect(self._state)
        return self._connection

    def load(self, source: str, buckets: Sequence[float]) -> tuple[datetime | None, Totals]:
        """The watermark and settled totals; histogram totals are dropped if buckets changed."""
        writing = self._may_write()
        with self._conn.transaction() as tx:
            row = tx.one("SELECT settled_before, buckets FROM edge_watermark WHERE source = ?",
                         (source,))
            if row is None:
                return None, {}
            changed = json.loads(row[1]) != list(buckets)
            if changed and writing:
                # Old bucket counts mean nothing under new bounds: restart the histogram
                # (a counter reset, which rate() handles) but keep invocation counts.
                tx.execute("DELETE FROM edge_settled WHERE source = ? AND "
                           "series NOT LIKE 'status:%'", (source,))
                tx.execute("UPDATE edge_watermark SET buckets = ? WHERE source = ?",
                           (json.dumps(list(buckets)), source))
            rows = tx.query("SELECT function, series, value FROM edge_settled WHERE source = ?",
                            (source,))
        # A standby drops the old histogram in memory only; the leader rewrites the state.
        totals = {(f, s): float(v) for f, s, v in rows
                  if not changed or s.startswith("status:")}
        return datetime.fromisoformat(row[0]), totals

    def settle(self, source: str, settled_before: datetime, added: Totals,
               buckets: Sequence[float], *, since: datetime | None) -> Settled:
        """Move the watermark from ``since`` and add the newly settled totals, atomically.

        Nothing is written when this replica may not write ("standby"), nor when the stored
        watermark is not ``since`` ("moved": another replica settled since this one last
        loaded or saved), as adding then would count rows twice or never.
        """
        if not self._may_write():
            return "standby"
        encoded = json.dumps(list(buckets))
        with self._conn.transaction() as tx:
            if since is None:
                moved = tx.execute(
                    "INSERT INTO edge_watermark (source, settled_before, buckets) "
                    "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (source, settled_before.isoformat(), encoded))
            else:
                moved = tx.execute(
                    "UPDATE edge_watermark SET settled_before = ?, buckets = ? "
                    "WHERE source = ? AND settled_before = ?",
                    (settled_before.isoformat(), encoded, source, since.isoformat()))
            if moved != 1:
                return "moved"
            tx.executemany(
                "INSERT INTO edge_settled (source, function, series, value) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (source, function, series) DO UPDATE "
                "SET value = edge_settled.value + excluded.value",
                [(source, f, s, v) for (f, s), v in added.items()])
        return "saved"

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()


# --- the SQL source ------------------------------------------------------------------

_NOW = "SELECT now(), now() - make_interval(secs => %s)"

# The tail counts status classes and buckets with FILTER clauses over (settled, function)
# groups instead of grouping by them too: with few estimated groups PostgreSQL hashes
# rather than sorting every row (measured at 1M rows: ~200 ms instead of ~550 ms).

# The tail since the watermark, by (settled?, function): invocations, total duration, one
# count per status class and one per histogram bound (cumulative, le-inclusive like
# Prometheus). {classes} and {buckets} are generated from the configured bounds.
_TAIL = """
SELECT {created_at} < %(settle)s AS settled, {function},
       count(*)::float8, sum({duration})::float8{classes}{buckets}
FROM {table}
WHERE {created_at} >= %(since)s
GROUP BY 1, 2
"""

# The gauge window by label: the top functions are numbered 1..N by array_position and the
# rest are 0 ('other'), so the percentiles of 'other' are of its rows together (quantiles
# cannot be merged afterwards). An integer label sorts faster than the function's text.
# (One FILTERed percentile_cont per label was tried: each keeps its own sort in memory at
# once, and at 8 labels it ran 4x slower than this GROUP BY.)
_WINDOW = """
SELECT COALESCE(array_position(%(top)s::text[], {function}), 0) AS label,
       count(*)::float8,
       (count(*) FILTER (WHERE {status} >= 500))::float8,
       percentile_cont(%(quantiles)s::float8[]) WITHIN GROUP (ORDER BY {duration})
FROM {table}
WHERE {created_at} >= %(start)s
GROUP BY 1
"""
_CLASS_STATUS = ("1xx", "2xx", "3xx", "4xx", "5xx")


class SqlEdgeSource:
    """Edge-function logs in a table of a monitored database, aggregated by PostgreSQL."""

    def __init__(self, target: PostgresTarget, source: EdgeSqlSourceConfig, *,
                 timeout: float, lateness: float, window: float,
                 buckets: Sequence[float]) -> None:
        self._target = target
        self._timeout = timeout
        self._lateness = lateness
        self._window = window
        self._buckets = list(buckets)
        scale = 1000.0 if source.duration_unit == "ms" else 1.0
        self._to_seconds = 1.0 / scale
        self._names = {
            "table": sql.Identifier(*source.table.split(".")),
            "function": sql.Identifier(source.function_column),
            "duration": sql.Identifier(source.duration_column),
            "status": sql.Identifier(source.status_column),
            "created_at": sql.Identifier(source.created_at_column),
        }
        status, duration = self._names["status"], self._names["duration"]
        classes = sql.SQL("").join(
            sql.SQL(", count(*) FILTER (WHERE {s} BETWEEN {lo} AND {hi})::float8").format(
                s=status, lo=sql.Literal(100 * k), hi=sql.Literal(100 * k + 99))
            for k in range(1, 6))
        # Bounds in the column's unit, as literals: the statement's text depends only on
        # the configuration, so pg_stat_statements keeps one entry for it.
        bucket_counts = sql.SQL("").join(
            sql.SQL(", count(*) FILTER (WHERE {d} <= {b})::float8").format(
                d=duration, b=sql.Literal(bound * scale)) for bound in self._buckets)
        self._tail = sql.SQL(_TAIL).format(classes=classes, buckets=bucket_counts,
                                           **self._names)
        self._window_query = sql.SQL(_WINDOW).format(**self._names)
        self.key = f"sql:{source.target}:{source.table}"

    def read(self, since: datetime | None, now: float, rank: Ranker) -> Reading:
        """One session: the database's clock, the tail, then the gauge window."""
        del now  # the database's clock decides, as it stamps created_at
        with self._target.session(self._timeout) as db:
            db_now, settle_before = db.fetch(_NOW, (self._lateness,))[0]
            window_start = db_now - timedelta(seconds=self._window)
            # First run: count from the gauge window (or the lateness, if longer), not the
            # whole history: old rows are not news, and the gauges' functions get counted.
            start = min(settle_before, window_start) if since is None else since
            rows = db.fetch(self._tail, {"settle": settle_before, "since": start})
            reading = Reading(settle_before)
            for settled, function, count, total, *counts in rows:
                part = reading.settled if settled else reading.pending
                self._add_row(part, function, count, total, counts)
            top = rank(reading.settled, reading.pending)
            stats = db.fetch(self._window_query, {"top": top, "quantiles": list(QUANTILES),
                                                  "start": window_start})
        labels = [OTHER, *top]
        for label, count, errors, quantiles in stats:
            q = [float(v) * self._to_seconds for v in quantiles]
            reading.window[labels[label]] = WindowStats(count, errors, (q[0], q[1], q[2]))
        return reading

    def _add_row(self, part: Totals, function: str, count: float, total: float,
                 counts: list[float]) -> None:
        by_class, cumulative = counts[:len(_CLASS_STATUS)], counts[len(_CLASS_STATUS):]
        for status_class, n in zip(_CLASS_STATUS, by_class, strict=True):
            if n:
                _add(part, function, f"status:{status_class}", n)
        if count - sum(by_class):
            _add(part, function, "status:other", count - sum(by_class))
        # Stored per bucket (not cumulative) so totals of different cycles simply add up.
        below = 0.0
        for i, n in enumerate([*cumulative, count]):
            if n - below:
                _add(part, function, f"bucket:{i}", n - below)
            below = n
        _add(part, function, "sum", total * self._to_seconds)


def _add(totals: Totals, function: str, series: str, value: float) -> None:
    key = (function, series)
    totals[key] = totals.get(key, 0.0) + value


# --- the collector -------------------------------------------------------------------

_C, _G = MetricKind.COUNTER, MetricKind.GAUGE
# The exporter has no histogram kind: the histogram's three families are counters named
# as Prometheus names a histogram's series, so histogram_quantile() works on them.
SPECS = (
    MetricSpec("edge_function_invocations_total", _C,
               "Edge-function invocations by function and status class"),
    MetricSpec("edge_function_duration_seconds_bucket", _C,
               "Edge-function durations: invocations at or under each bound (histogram)"),
    MetricSpec("edge_function_duration_seconds_sum", _C,
               "Edge-function durations: total seconds (histogram)"),
    MetricSpec("edge_function_duration_seconds_count", _C,
               "Edge-function durations: invocations (histogram)"),
    MetricSpec("edge_function_error_ratio", _G,
               "Share of invocations answered with a 5xx over the gauge window"),
    MetricSpec("edge_function_duration_p50_seconds", _G,
               "Median invocation duration over the gauge window"),
    MetricSpec("edge_function_duration_p95_seconds", _G,
               "95th percentile invocation duration over the gauge window"),
    MetricSpec("edge_function_duration_p99_seconds", _G,
               "99th percentile invocation duration over the gauge window"),
)
_QUANTILE_NAMES = ("edge_function_duration_p50_seconds", "edge_function_duration_p95_seconds",
                   "edge_function_duration_p99_seconds")


class EdgeFunctionsCollector:
    """Invocations, errors and latency of the app's edge functions, from one log source."""

    name = "edge_functions"

    def __init__(self, source: EdgeLogSource, state: EdgeStateDB, *,
                 buckets: Sequence[float], top_n: int) -> None:
        self._source = source
        self._state = state
        self._buckets = list(buckets)
        self._top_n = top_n
        self._since: datetime | None = None
        self._settled: Totals = {}
        self._loaded = False

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def close(self) -> None:
        """Release the source's HTTP client, if it has one (the state is shared)."""
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def collect(self, now: float) -> list[Sample]:
        """Read the tail since the watermark, settle what is past the lateness, export."""
        if not self._loaded:
            try:
                self._since, self._settled = self._state.load(self._source.key, self._buckets)
            except STATE_ERRORS as exc:
                raise CollectorError("state", f"cannot read the edge watermark: {exc}") from exc
            self._loaded = True
        reading = self._source.read(self._since, now, self._rank)
        try:
            reading = self._save(reading, now)
        except STATE_ERRORS as exc:
            # Nothing moved: the next cycle re-reads from the old watermark, still exact.
            raise CollectorError("state", f"cannot save the edge watermark: {exc}") from exc
        # A standby's settle writes nothing, so its totals and watermark advance here only,
        # in memory, exactly as the leader's do.
        add_into(self._settled, reading.settled)
        self._since = reading.settle_before
        cumulative = dict(self._settled)
        add_into(cumulative, reading.pending)
        labels = self._labels(volume_by_function(cumulative))
        return self._counters(cumulative, labels, now) + _gauges(reading.window, now)

    def _save(self, reading: Reading, now: float) -> Reading:
        """Settle ``reading`` in the state; the reading to export.

        When the stored watermark is not this collector's (it was a standby while the
        leader settled, or another replica led for a while), the stored state wins: the
        totals and watermark are reloaded and the tail re-read from there, so the state
        keeps counting every row once.
        """
        key = self._source.key
        if self._state.settle(key, reading.settle_before, reading.settled, self._buckets,
                              since=self._since) != "moved":
            return reading
        since, settled = self._state.load(key, self._buckets)
        if since is None:
            # Nothing is stored although this replica has counted (it was a standby before
            # any leader settled): its own totals become the stored ones.
            full = dict(self._settled)
            add_into(full, reading.settled)
            if self._state.settle(key, reading.settle_before, full, self._buckets,
                                  since=None) != "moved":
                return reading
            since, settled = self._state.load(key, self._buckets)
        self._since, self._settled = since, settled
        reading = self._source.read(self._since, now, self._rank)
        if self._state.settle(key, reading.settle_before, reading.settled, self._buckets,
                              since=self._since) == "moved":
            raise CollectorError("state", "another replica keeps moving the edge watermark")
        return reading

    def _rank(self, settled: Totals, pending: Totals) -> list[str]:
        volume = volume_by_function(self._settled)
        for part in (settled, pending):
            for function, n in volume_by_function(part).items():
                volume[function] = volume.get(function, 0.0) + n
        return [f for f in self._labels(volume).values() if f != OTHER]

    def _labels(self, volume: dict[str, float]) -> dict[str, str]:
        """Function -> label: the top N by cumulative volume keep their name (bounded)."""
        ranked = sorted(volume, key=lambda f: (-volume[f], f))
        return {f: (f if i < self._top_n and f != OTHER else OTHER)
                for i, f in enumerate(ranked)}

    def _counters(self, totals: Totals, labels: dict[str, str], now: float) -> list[Sample]:
        by_label: Totals = {}
        for (function, series), value in totals.items():
            _add(by_label, labels.get(function, OTHER), series, value)
        out: list[Sample] = []
        for label in sorted({f for f, _ in by_label}):
            for status_class in STATUS_CLASSES:
                n = by_label.get((label, f"status:{status_class}"))
                if n is not None:
                    out.append(Sample("edge_function_invocations_total",
                                      labels_of(function=label, status_class=status_class),
                                      n, now))
            running = 0.0
            for i, bound in enumerate([*self._buckets, math.inf]):
                running += by_label.get((label, f"bucket:{i}"), 0.0)
                out.append(Sample("edge_function_duration_seconds_bucket",
                                  labels_of(function=label, le=_le(bound)), running, now))
            out.append(Sample("edge_function_duration_seconds_count",
                              labels_of(function=label), running, now))
            out.append(Sample("edge_function_duration_seconds_sum",
                              labels_of(function=label), by_label.get((label, "sum"), 0.0),
                              now))
        return out


def _gauges(window: dict[str, WindowStats], now: float) -> list[Sample]:
    out: list[Sample] = []
    for label, stats in sorted(window.items()):
        if stats.count <= 0:
            continue
        labels = labels_of(function=label)
        out.append(Sample("edge_function_error_ratio", labels, stats.errors / stats.count, now))
        for name, value in zip(_QUANTILE_NAMES, stats.quantiles, strict=True):
            out.append(Sample(name, labels, value, now))
    return out


def _le(bound: float) -> str:
    """Prometheus' spelling of a bucket bound: 0.5, 1.0, +Inf."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def build_edge_functions_collector(config: EdgeFunctionsConfig, state: EdgeStateDB, *,
                                   targets: dict[str, PostgresTarget] | None = None,
                                   http_source: HttpEdgeSource | None = None,
                                   ) -> EdgeFunctionsCollector:
    """The collector for ``config``: a SQL source on one of ``targets``, or the HTTP one.

    ``http_source`` lets a caller pass a prepared HTTP source (tests use a short clock)."""
    source: EdgeLogSource
    if config.sql is not None:
        target = (targets or {}).get(config.sql.target)
        if target is None:
            known = ", ".join(sorted(targets or {})) or "none"
            raise ValueError(f"edge_functions.sql.target: no target named "
                             f"{config.sql.target!r} (known: {known})")
        source = SqlEdgeSource(target, config.sql, timeout=config.timeout,
                               lateness=config.lateness, window=config.window,
                               buckets=config.buckets)
    elif http_source is not None:
        source = http_source
    else:
        from piggywatch.collectors.edge_functions_http import HttpEdgeSource

        assert config.http is not None  # the model requires exactly one source
        source = HttpEdgeSource(config.http, timeout=config.timeout,
                                lateness=config.lateness, window=config.window,
                                buckets=config.buckets)
    return EdgeFunctionsCollector(source, state, buckets=config.buckets, top_n=config.top_n)

