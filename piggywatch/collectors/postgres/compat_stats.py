"""Server-wide statistics views: background writer, checkpointer and WAL archiver."""

from __future__ import annotations

from piggywatch.store import MetricKind, MetricSpec

_C = MetricKind.COUNTER
_G = MetricKind.GAUGE

# Upstream's names (the ``_total`` ones of its collector package); times in ms as there.
BGWRITER = (
    ("checkpoints_timed", "Number of scheduled checkpoints that have been performed"),
    ("checkpoints_req", "Number of requested checkpoints that have been performed"),
    ("checkpoint_write_time", "Total amount of time that has been spent in the portion of "
     "checkpoint processing where files are written to disk, in milliseconds"),
    ("checkpoint_sync_time", "Total amount of time that has been spent in the portion of "
     "checkpoint processing where files are synchronized to disk, in milliseconds"),
    ("buffers_checkpoint", "Number of buffers written during checkpoints"),
    ("buffers_clean", "Number of buffers written by the background writer"),
    ("maxwritten_clean", "Number of times the background writer stopped a cleaning scan "
     "because it had written too many buffers"),
    ("buffers_backend", "Number of buffers written directly by a backend"),
    ("buffers_backend_fsync", "Number of times a backend had to execute its own fsync call "
     "(normally the background writer handles those even when the backend does its own write)"),
    ("buffers_alloc", "Number of buffers allocated"),
    ("stats_reset", "Time at which these statistics were last reset"),
)

SPECS = (
    *(MetricSpec(f"pg_stat_bgwriter_{column}_total", _C, text) for column, text in BGWRITER),
    MetricSpec("pg_stat_archiver_archived_count", _C,
               "Number of WAL files that have been successfully archived"),
    MetricSpec("pg_stat_archiver_failed_count", _C,
               "Number of failed attempts for archiving WAL files"),
    MetricSpec("pg_stat_archiver_last_archive_age", _G,
               "Time in seconds since last WAL segment was successfully archived"),
)

_RESET = "COALESCE(EXTRACT(EPOCH FROM stats_reset), 'NaN')::float8"

# Before PostgreSQL 17 every column is in pg_stat_bgwriter.
BGWRITER_UP_TO_16 = f"""
SELECT checkpoints_timed::float8, checkpoints_req::float8, checkpoint_write_time::float8,
       checkpoint_sync_time::float8, buffers_checkpoint::float8, buffers_clean::float8,
       maxwritten_clean::float8, buffers_backend::float8, buffers_backend_fsync::float8,
       buffers_alloc::float8, {_RESET}
FROM pg_catalog.pg_stat_bgwriter
"""

# From 17 on the checkpoint columns moved to pg_stat_checkpointer and the backends' writes
# and fsyncs to pg_stat_io, where upstream reads them too.
BGWRITER_FROM_17 = """
SELECT c.num_timed::float8, c.num_requested::float8, c.write_time::float8,
       c.sync_time::float8, c.buffers_written::float8, b.buffers_clean::float8,
       b.maxwritten_clean::float8, COALESCE(io.writes, 0)::float8,
       COALESCE(io.fsyncs, 0)::float8, b.buffers_alloc::float8,
       COALESCE(EXTRACT(EPOCH FROM b.stats_reset), 'NaN')::float8
FROM pg_catalog.pg_stat_bgwriter b
CROSS JOIN pg_catalog.pg_stat_checkpointer c
CROSS JOIN (SELECT sum(writes) AS writes, sum(fsyncs) AS fsyncs FROM pg_catalog.pg_stat_io
            WHERE backend_type = 'client backend') io
"""

ARCHIVER = """
SELECT archived_count::float8, failed_count::float8,
       COALESCE(EXTRACT(EPOCH FROM now() - last_archived_time), 'NaN')::float8
FROM pg_catalog.pg_stat_archiver
"""


def bgwriter_query(server_version_num: int) -> str:
    """The query for this server's version, its columns in BGWRITER's order."""
    return BGWRITER_FROM_17 if server_version_num >= 170000 else BGWRITER_UP_TO_16
