"""Per-database families under postgres_exporter's names: the pg_stat_database columns our
own collector exports in other units, recovery conflicts, and lock counts by mode."""

from __future__ import annotations

from dataclasses import dataclass

from piggywatch.store import MetricKind, MetricSpec

_C = MetricKind.COUNTER
_G = MetricKind.GAUGE


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a statistics view and its family."""

    column: str
    metric: str
    kind: MetricKind
    help: str


# Upstream keeps these in the view's units (ms). The database collector's seconds-based
# `_seconds_total` families stay beside them. NULL becomes NaN, as upstream shows it.
STAT_DATABASE = (
    Column("blk_read_time", "pg_stat_database_blk_read_time", _C,
           "Time spent reading data file blocks by backends in this database, in milliseconds"),
    Column("blk_write_time", "pg_stat_database_blk_write_time", _C,
           "Time spent writing data file blocks by backends in this database, in milliseconds"),
    Column("session_time", "pg_stat_database_session_time", _C,
           "Time spent by database sessions in this database, in milliseconds"),
    Column("active_time", "pg_stat_database_active_time", _C,
           "Time spent executing SQL statements in this database, in milliseconds"),
    Column("idle_in_transaction_time", "pg_stat_database_idle_in_transaction_time", _C,
           "Time spent idling while in a transaction in this database, in milliseconds"),
    Column("sessions", "pg_stat_database_sessions", _C,
           "Total number of sessions established to this database"),
    Column("sessions_abandoned", "pg_stat_database_sessions_abandoned", _C,
           "Number of database sessions to this database that were terminated because "
           "connection to the client was lost"),
    Column("sessions_fatal", "pg_stat_database_sessions_fatal", _C,
           "Number of database sessions to this database that were terminated by fatal errors"),
    Column("sessions_killed", "pg_stat_database_sessions_killed", _C,
           "Number of database sessions to this database that were terminated by operator "
           "intervention"),
    # PostgreSQL 18.
    Column("parallel_workers_to_launch", "pg_stat_database_parallel_workers_to_launch", _C,
           "Number of parallel workers planned to be launched by queries on this database"),
    Column("parallel_workers_launched", "pg_stat_database_parallel_workers_launched", _C,
           "Number of parallel workers launched by queries on this database"),
    Column("checksum_last_failure", "pg_stat_database_checksum_last_failure", _G,
           "Time at which the last data page checksum failure was detected in this database"),
    Column("stats_reset", "pg_stat_database_stats_reset", _C,
           "Time at which these statistics were last reset"),
)
# Upstream also shows checksum_failures as NaN where the view has NULL (no data checksums);
# the database collector exports the non-NULL values.
CHECKSUM_FAILURES = "checksum_failures"
_TIMESTAMPS = ("checksum_last_failure", "stats_reset")

CONFLICTS = (
    Column("confl_tablespace", "pg_stat_database_conflicts_confl_tablespace", _C,
           "Number of queries in this database that have been canceled due to dropped "
           "tablespaces"),
    Column("confl_lock", "pg_stat_database_conflicts_confl_lock", _C,
           "Number of queries in this database that have been canceled due to lock timeouts"),
    Column("confl_snapshot", "pg_stat_database_conflicts_confl_snapshot", _C,
           "Number of queries in this database that have been canceled due to old snapshots"),
    Column("confl_bufferpin", "pg_stat_database_conflicts_confl_bufferpin", _C,
           "Number of queries in this database that have been canceled due to pinned buffers"),
    Column("confl_deadlock", "pg_stat_database_conflicts_confl_deadlock", _C,
           "Number of queries in this database that have been canceled due to deadlocks"),
    Column("confl_active_logicalslot", "pg_stat_database_conflicts_confl_active_logicalslot",
           _C, "Number of uses of logical slots in this database that have been canceled due "
           "to old snapshots or too low a wal_level on the primary"),
)

# Every mode upstream reports, lower-cased as it does, 0 when no lock is held.
LOCK_MODES = ("accesssharelock", "rowsharelock", "rowexclusivelock",
              "shareupdateexclusivelock", "sharelock", "sharerowexclusivelock",
              "exclusivelock", "accessexclusivelock", "sireadlock")

LOCKS = """
SELECT d.datname, m.mode, COALESCE(l.n, 0)::float8
FROM pg_catalog.pg_database d
CROSS JOIN unnest(%s::text[]) AS m(mode)
LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS n FROM pg_catalog.pg_locks
           WHERE database IS NOT NULL GROUP BY 1, 2) l
       ON l.database = d.oid AND l.mode = m.mode
"""

SPECS = (
    *(MetricSpec(c.metric, c.kind, c.help) for c in (*STAT_DATABASE, *CONFLICTS)),
    MetricSpec("pg_locks_count", _G, "Number of locks"),
)


def stat_database_select(available: set[str]) -> tuple[tuple[Column, ...], bool, str]:
    """The columns this server has, whether checksum_failures is among them, and the query."""
    columns = tuple(c for c in STAT_DATABASE if c.column in available)
    checksums = CHECKSUM_FAILURES in available
    parts = [f"EXTRACT(EPOCH FROM {c.column})::float8" if c.column in _TIMESTAMPS
             else f"{c.column}::float8" for c in columns]
    if checksums:
        parts.append(f"{CHECKSUM_FAILURES}::float8")
    query = ("SELECT datid::int8, COALESCE(datname, ''), " + ", ".join(parts)
             + " FROM pg_catalog.pg_stat_database")
    return columns, checksums, query


def conflicts_select(available: set[str]) -> tuple[tuple[Column, ...], str]:
    """The conflict columns this server has and the query reading them."""
    columns = tuple(c for c in CONFLICTS if c.column in available)
    query = ("SELECT datid::int8, datname, "
             + ", ".join(f"{c.column}::float8" for c in columns)
             + " FROM pg_catalog.pg_stat_database_conflicts")
    return columns, query
