"""Database-wide activity: pg_stat_database, database sizes, cache hits and replication."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from piggywatch.collectors.postgres.target import PostgresTarget, Session
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

_C = MetricKind.COUNTER
_G = MetricKind.GAUGE


@dataclass(frozen=True, slots=True)
class _Column:
    """A pg_stat_database column and the metric it becomes."""

    column: str
    metric: str
    kind: MetricKind
    help: str
    divisor: float = 1.0


# postgres_exporter's names (counters without _total, as it exposes them) so dashboards
# built for it work unchanged. Times are ms in the view; ours are seconds, hence new names.
_MS = 1000.0
COLUMNS = (
    _Column("numbackends", "pg_stat_database_numbackends", _G,
            "Number of backends currently connected to this database"),
    _Column("xact_commit", "pg_stat_database_xact_commit", _C,
            "Number of transactions in this database that have been committed"),
    _Column("xact_rollback", "pg_stat_database_xact_rollback", _C,
            "Number of transactions in this database that have been rolled back"),
    _Column("blks_read", "pg_stat_database_blks_read", _C,
            "Number of disk blocks read in this database"),
    _Column("blks_hit", "pg_stat_database_blks_hit", _C,
            "Number of times disk blocks were found already in the buffer cache"),
    _Column("tup_returned", "pg_stat_database_tup_returned", _C,
            "Number of rows returned by queries in this database"),
    _Column("tup_fetched", "pg_stat_database_tup_fetched", _C,
            "Number of rows fetched by queries in this database"),
    _Column("tup_inserted", "pg_stat_database_tup_inserted", _C,
            "Number of rows inserted by queries in this database"),
    _Column("tup_updated", "pg_stat_database_tup_updated", _C,
            "Number of rows updated by queries in this database"),
    _Column("tup_deleted", "pg_stat_database_tup_deleted", _C,
            "Number of rows deleted by queries in this database"),
    _Column("conflicts", "pg_stat_database_conflicts", _C,
            "Number of queries canceled due to conflicts with recovery (standbys only)"),
    _Column("temp_files", "pg_stat_database_temp_files", _C,
            "Number of temporary files created by queries in this database"),
    _Column("temp_bytes", "pg_stat_database_temp_bytes", _C,
            "Total amount of data written to temporary files by queries in this database"),
    _Column("deadlocks", "pg_stat_database_deadlocks", _C,
            "Number of deadlocks detected in this database"),
    _Column("checksum_failures", "pg_stat_database_checksum_failures", _C,
            "Number of data page checksum failures (only when data checksums are enabled)"),
    _Column("blk_read_time", "pg_stat_database_blk_read_seconds_total", _C,
            "Time spent reading data file blocks by backends, in seconds "
            "(zero unless track_io_timing is on)", _MS),
    _Column("blk_write_time", "pg_stat_database_blk_write_seconds_total", _C,
            "Time spent writing data file blocks by backends, in seconds "
            "(zero unless track_io_timing is on)", _MS),
    _Column("session_time", "pg_stat_database_session_seconds_total", _C,
            "Time spent by sessions in this database, in seconds", _MS),
    _Column("active_time", "pg_stat_database_active_seconds_total", _C,
            "Time spent executing SQL statements in this database, in seconds", _MS),
    _Column("idle_in_transaction_time", "pg_stat_database_idle_in_transaction_seconds_total",
            _C, "Time spent idle in a transaction in this database, in seconds", _MS),
    _Column("sessions", "pg_stat_database_sessions_total", _C,
            "Total number of sessions established to this database"),
    _Column("sessions_abandoned", "pg_stat_database_sessions_abandoned_total", _C,
            "Sessions terminated because the client went away without ending them"),
    _Column("sessions_fatal", "pg_stat_database_sessions_fatal_total", _C,
            "Sessions terminated by fatal errors"),
    _Column("sessions_killed", "pg_stat_database_sessions_killed_total", _C,
            "Sessions terminated by operator intervention"),
)
_STATS_RESET = "stats_reset"

SPECS = (
    *(MetricSpec(c.metric, c.kind, c.help) for c in COLUMNS),
    MetricSpec("pg_stat_database_stats_reset_timestamp_seconds", _G,
               "When the statistics of this database were last reset, as a Unix time"),
    MetricSpec("pg_stat_database_cache_hit_ratio", _G,
               "Share of block reads served from the buffer cache since the last stats reset"),
    MetricSpec("pg_database_size_bytes", _G,
               "Disk space used by the database, for databases the role may connect to"),
    MetricSpec("pg_replication_is_replica", _G,
               "1 if the server is a standby in recovery, 0 if it is a primary"),
    MetricSpec("pg_replication_lag_seconds", _G,
               "On a standby: seconds since the last replayed transaction was committed on "
               "the primary, 0 when all received WAL has been replayed"),
    MetricSpec("pg_stat_replication_replay_lag_seconds", _G,
               "On a primary: replay lag of each connected standby, in seconds"),
)

# pg_database_size() refuses databases the role may not connect to, unless it holds
# pg_read_all_stats; asking only for the others keeps one private database from failing
# the whole cycle.
_SIZES = """
SELECT datname, pg_database_size(oid)::float8 FROM pg_database
WHERE has_database_privilege(oid, 'CONNECT') OR pg_has_role('pg_read_all_stats', 'MEMBER')
"""

# Receive LSN equal to replay LSN means nothing is pending: the lag is 0 however long ago
# the last transaction was, so the standby of a quiet primary does not look like lagging.
_REPLICATION = """
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))
       END::float8
"""

# Without pg_read_all_stats the wal sender's state and positions read as NULL: such rows are
# skipped rather than reported as zero lag. replay_lag goes NULL a while after a standby
# has caught up; it has then replayed everything sent, so its lag is 0.
_REPLICAS = """
SELECT COALESCE(application_name, ''), COALESCE(host(client_addr), ''),
       CASE WHEN replay_lag IS NOT NULL THEN EXTRACT(EPOCH FROM replay_lag)
            WHEN replay_lsn >= sent_lsn THEN 0
       END::float8
FROM pg_stat_replication
WHERE state IS NOT NULL
"""


class DatabaseCollector:
    """Per-database activity counters, sizes, cache efficiency and replication state.

    The pg_stat_database columns are detected at run time, so PostgreSQL 13 to 17 each give
    what they have (session statistics from 14 on). The shared-objects row is skipped.
    """

    name = "database"

    def __init__(self, target: PostgresTarget, *, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._stats_query: _StatsQuery | None = None

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One cycle: pg_stat_database, database sizes and replication state."""
        with self._target.session(self._timeout) as db:
            stats_query = self._detect(db)
            stats = db.fetch(stats_query.query)
            sizes = db.fetch(_SIZES)
            is_replica, lag = db.fetch(_REPLICATION)[0]
            replicas = db.fetch(_REPLICAS)
        out: list[Sample] = []
        for row in stats:
            out.extend(stats_query.samples(row, now))
        for datname, size in sizes:
            # NULL when the database was dropped while we measured it.
            if size is not None:
                out.append(Sample("pg_database_size_bytes", labels_of(datname=datname),
                                  size, now))
        out.append(Sample("pg_replication_is_replica", (), 1.0 if is_replica else 0.0, now))
        if is_replica and lag is not None:
            out.append(Sample("pg_replication_lag_seconds", (), lag, now))
        for application_name, client_addr, replay_lag in replicas:
            if replay_lag is not None:
                labels = labels_of(application_name=application_name, client_addr=client_addr)
                out.append(Sample("pg_stat_replication_replay_lag_seconds", labels,
                                  replay_lag, now))
        return out

    def _detect(self, db: Session) -> _StatsQuery:
        # Re-detected when the server's version changes (a different server behind the same
        # DSN); which columns exist is always read from the catalog, never inferred.
        cached = self._stats_query
        if cached is None or cached.server_version_num != db.server_version_num:
            cached = _StatsQuery.for_columns(db.server_version_num,
                                             db.columns("pg_stat_database"))
            self._stats_query = cached
        return cached


@dataclass(frozen=True, slots=True)
class _StatsQuery:
    """The pg_stat_database query for the columns one server has, and how to read its rows."""

    server_version_num: int
    query: sql.Composed
    columns: tuple[_Column, ...]
    has_reset: bool

    @classmethod
    def for_columns(cls, server_version_num: int, available: set[str]) -> _StatsQuery:
        columns = tuple(c for c in COLUMNS if c.column in available)
        has_reset = _STATS_RESET in available
        select = [sql.SQL("{}::float8").format(sql.Identifier(c.column)) for c in columns]
        if has_reset:
            select.append(sql.SQL("EXTRACT(EPOCH FROM {})::float8").format(
                sql.Identifier(_STATS_RESET)))
        query = sql.SQL(
            "SELECT datid::int8, datname, {} FROM pg_catalog.pg_stat_database "
            "WHERE datname IS NOT NULL"
        ).format(sql.SQL(", ").join(select))
        return cls(server_version_num, query, columns, has_reset)

    def samples(self, row: tuple[Any, ...], now: float) -> list[Sample]:
        datid, datname, *values = row
        labels = labels_of(datid=str(datid), datname=datname)
        out: list[Sample] = []
        for column, value in zip(self.columns, values, strict=False):
            # NULL means "not tracked here", e.g. checksum_failures without data checksums.
            if value is not None:
                out.append(Sample(column.metric, labels, value / column.divisor, now))
        reset = values[-1] if self.has_reset else None
        if reset is not None:
            out.append(Sample("pg_stat_database_stats_reset_timestamp_seconds", labels,
                              reset, now))
        by_column = dict(zip((c.column for c in self.columns), values, strict=False))
        hit, read = by_column.get("blks_hit") or 0.0, by_column.get("blks_read") or 0.0
        if hit + read > 0:
            out.append(Sample("pg_stat_database_cache_hit_ratio", labels,
                              hit / (hit + read), now))
        return out
