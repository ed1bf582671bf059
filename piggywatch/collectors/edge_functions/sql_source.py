"""Edge-function logs in a table of a monitored database, every aggregate computed by
PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from psycopg import sql

from piggywatch.collectors.edge_functions.model import (
    OTHER,
    QUANTILES,
    EdgeSqlSourceConfig,
    Ranker,
    Reading,
    Totals,
    WindowStats,
    add_to,
)
from piggywatch.collectors.postgres.target import PostgresTarget

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
                add_to(part, function, f"status:{status_class}", n)
        if count - sum(by_class):
            add_to(part, function, "status:other", count - sum(by_class))
        # Stored per bucket (not cumulative) so totals of different cycles simply add up.
        below = 0.0
        for i, n in enumerate([*cumulative, count]):
            if n - below:
                add_to(part, function, f"bucket:{i}", n - below)
            below = n
        add_to(part, function, "sum", total * self._to_seconds)
