"""The largest tables of the connected database: size, row estimate and table statistics."""

from __future__ import annotations

from collections.abc import Sequence

from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

_C = MetricKind.COUNTER
_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("pg_table_size_bytes", _G,
               "Total disk space of the table with its indexes and TOAST data "
               "(a partitioned table: all of its partitions)"),
    MetricSpec("pg_table_rows_estimate", _G,
               "Planner estimate of the table's rows as of its last VACUUM or ANALYZE"),
    MetricSpec("pg_stat_user_tables_n_live_tup", _G, "Estimated number of live rows"),
    MetricSpec("pg_stat_user_tables_n_dead_tup", _G, "Estimated number of dead rows"),
    MetricSpec("pg_stat_user_tables_seq_scan", _C,
               "Number of sequential scans initiated on this table"),
    MetricSpec("pg_stat_user_tables_idx_scan", _C,
               "Number of index scans initiated on this table (absent without indexes)"),
    MetricSpec("pg_stat_user_tables_last_autovacuum_timestamp_seconds", _G,
               "When autovacuum last vacuumed this table, as a Unix time"),
    MetricSpec("pg_stat_user_tables_last_autoanalyze_timestamp_seconds", _G,
               "When autovacuum last analyzed this table, as a Unix time"),
)

# Cost stays flat with the number of tables: candidates are ranked by pg_class.relpages
# (catalog only, refreshed by VACUUM, ANALYZE and CREATE INDEX), and only they get
# pg_total_relation_size(), which stats every file and briefly locks each relation. Twice
# top_n candidates are measured because estimates lag behind growth. A partition counts
# towards the root of its partition tree, so time-partitioned tables appear once, whole,
# instead of crowding the list with their partitions.
_TABLES = """
WITH index_pages AS (
    SELECT x.indrelid, sum(i.relpages)::int8 AS pages
    FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
    GROUP BY x.indrelid
), member AS (
    SELECT COALESCE(CASE WHEN c.relispartition THEN pg_partition_root(c.oid) END, c.oid)
               AS root,
           c.oid,
           c.relpages::int8 + COALESCE(t.relpages, 0) + COALESCE(ci.pages, 0)
               + COALESCE(ti.pages, 0) AS pages,
           -- A partitioned table's own estimate already covers its partitions.
           CASE WHEN c.relkind = 'p' THEN 0 ELSE GREATEST(c.reltuples, 0) END::float8
               AS tuples
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
    LEFT JOIN index_pages ci ON ci.indrelid = c.oid
    LEFT JOIN index_pages ti ON ti.indrelid = c.reltoastrelid
    WHERE c.relkind IN ('r', 'p', 'm')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast'
), candidate AS (
    SELECT root, sum(tuples) AS tuples, array_agg(oid) AS members
    FROM member
    GROUP BY root
    ORDER BY sum(pages) DESC, root
    LIMIT %s
)
SELECT current_database(), n.nspname, c.relname, cand.tuples, size.bytes,
       st.n_live_tup, st.n_dead_tup, st.seq_scan, st.idx_scan,
       EXTRACT(EPOCH FROM st.last_autovacuum)::float8,
       EXTRACT(EPOCH FROM st.last_autoanalyze)::float8
FROM candidate cand
JOIN pg_catalog.pg_class c ON c.oid = cand.root
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT sum(pg_total_relation_size(m))::float8 AS bytes FROM unnest(cand.members) AS m
) size
LEFT JOIN LATERAL (
    SELECT sum(s.n_live_tup)::float8 AS n_live_tup, sum(s.n_dead_tup)::float8 AS n_dead_tup,
           sum(s.seq_scan)::float8 AS seq_scan, sum(s.idx_scan)::float8 AS idx_scan,
           max(s.last_autovacuum) AS last_autovacuum,
           max(s.last_autoanalyze) AS last_autoanalyze
    FROM pg_catalog.pg_stat_user_tables s
    WHERE s.relid = ANY (cand.members)
) st ON true
-- NULL size: dropped between ranking and measuring.
WHERE size.bytes IS NOT NULL
ORDER BY size.bytes DESC, n.nspname, c.relname
LIMIT %s
"""

# Metric per column of _TABLES after the size, in order; NULL (never, no index) is omitted.
_STATS = (
    "pg_stat_user_tables_n_live_tup",
    "pg_stat_user_tables_n_dead_tup",
    "pg_stat_user_tables_seq_scan",
    "pg_stat_user_tables_idx_scan",
    "pg_stat_user_tables_last_autovacuum_timestamp_seconds",
    "pg_stat_user_tables_last_autoanalyze_timestamp_seconds",
)


class TablesCollector:
    """The ``top_n`` largest tables of the connected database, cheap on thousands of tables.

    Ordinary tables, partitioned tables (summed over their partitions) and materialized
    views count; system catalogs and TOAST tables do not. A table created and filled since
    the last VACUUM, ANALYZE or autovacuum pass is ranked by stale estimates until then.
    """

    name = "tables"

    def __init__(self, target: PostgresTarget, *, timeout: float, top_n: int) -> None:
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, not {top_n}")
        self._target = target
        self._timeout = timeout
        self._top_n = top_n

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One cycle: rank by estimates, measure the candidates, read their statistics."""
        with self._target.session(self._timeout) as db:
            rows = db.fetch(_TABLES, (2 * self._top_n, self._top_n))
        out: list[Sample] = []
        for datname, schemaname, relname, tuples, size, *stats in rows:
            labels = labels_of(datname=datname, schemaname=schemaname, relname=relname)
            out.append(Sample("pg_table_size_bytes", labels, size, now))
            out.append(Sample("pg_table_rows_estimate", labels, tuples, now))
            for metric, value in zip(_STATS, stats, strict=True):
                if value is not None:
                    out.append(Sample(metric, labels, value, now))
        return out
