"""postgres_exporter's default families that the other collectors do not already export.

One cycle reads settings, the background writer (or checkpointer), the archiver, the
per-database statistics under upstream's names, recovery conflicts, locks by mode, the
version, the postmaster's start time and replication slots: nine small catalog queries on
the target's one connection. Turned off per target with ``collectors.compat.enabled``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from piggywatch.collectors.postgres import (
    compat_database,
    compat_server,
    compat_settings,
    compat_stats,
)
from piggywatch.collectors.postgres import connections as connections_collector
from piggywatch.collectors.postgres import database as database_collector
from piggywatch.collectors.postgres.target import PostgresTarget, Session
from piggywatch.store import MetricSpec, Sample, labels_of

_NAN = float("nan")
_CLOSED_DATABASES = "SELECT datname FROM pg_catalog.pg_database WHERE NOT datallowconn"
# pg_stat_database_checksum_failures is the database collector's family; compat adds its
# NaN rows (no data checksums), so it declares the family too, for when that one is off.
_STATIC_SPECS = (*compat_stats.SPECS, *compat_database.SPECS, *compat_server.SPECS,
                 *(s for s in database_collector.SPECS
                   if s.name == "pg_stat_database_checksum_failures"))


class CompatCollector:
    """Families a postgres_exporter user's dashboards and rules read.

    Settings are discovered from the server, so the family list grows on the first cycle:
    ``dynamic_specs`` tells the job to declare them before publishing.
    """

    name = "compat"
    dynamic_specs = True

    def __init__(self, target: PostgresTarget, *, timeout: float,
                 skip_settings: Iterable[str] = (), shared_row: bool = False,
                 closed_databases: bool = False) -> None:
        self._target = target
        self._timeout = timeout
        # Rows upstream has and the other collectors leave out: pg_stat_database's
        # shared-objects row (datid 0) and pg_stat_activity of databases that take no
        # connections (template0), each only when that collector runs.
        self._shared_row = shared_row
        self._closed_databases = closed_databases
        # Settings another collector already exports under the same name.
        self._skip_settings = tuple(skip_settings)
        self._settings_specs: dict[str, MetricSpec] = {}
        self._columns: tuple[int, set[str], set[str]] | None = None

    def specs(self) -> Sequence[MetricSpec]:
        """The fixed families, and the settings seen so far."""
        return (*_STATIC_SPECS, *self._settings_specs.values())

    def collect(self, now: float) -> list[Sample]:
        """One cycle of every compat family."""
        out: list[Sample] = []
        with self._target.session(self._timeout) as db:
            stat_columns, conflict_columns = self._view_columns(db)
            settings = db.fetch(compat_settings.QUERY,
                                compat_settings.query_params(self._skip_settings))
            bgwriter = db.fetch(compat_stats.bgwriter_query(db.server_version_num))
            archiver = db.fetch(compat_stats.ARCHIVER)
            stat_cols, checksums, stat_query = compat_database.stat_database_select(
                stat_columns)
            stat_rows = db.fetch(stat_query)
            conflict_cols, conflict_query = compat_database.conflicts_select(conflict_columns)
            conflict_rows = db.fetch(conflict_query)
            locks = db.fetch(compat_database.LOCKS, (list(compat_database.LOCK_MODES),))
            version, server_version, started = db.fetch(compat_server.SERVER)[0]
            slots = db.fetch(compat_server.SLOTS)
            shared = db.fetch(self._shared_query(stat_columns)) if self._shared_row else []
            closed = db.fetch(_CLOSED_DATABASES) if self._closed_databases else []
        self._settings(settings, now, out)
        for (view_column, _), value in zip(compat_stats.BGWRITER, bgwriter[0], strict=True):
            out.append(Sample(f"pg_stat_bgwriter_{view_column}_total", (), _num(value), now))
        archived, failed, age = archiver[0]
        out.append(Sample("pg_stat_archiver_archived_count", (), _num(archived), now))
        out.append(Sample("pg_stat_archiver_failed_count", (), _num(failed), now))
        out.append(Sample("pg_stat_archiver_last_archive_age", (), _num(age), now))
        for datid, datname, *values in stat_rows:
            labels = labels_of(datid=str(datid), datname=datname)
            for column, value in zip(stat_cols, values, strict=False):
                out.append(Sample(column.metric, labels, _num(value), now))
            if checksums and values[-1] is None:
                out.append(Sample("pg_stat_database_checksum_failures", labels, _NAN, now))
        for datid, datname, *values in conflict_rows:
            labels = labels_of(datid=str(datid), datname=datname)
            for column, value in zip(conflict_cols, values, strict=True):
                out.append(Sample(column.metric, labels, _num(value), now))
        for datname, mode, count in locks:
            out.append(Sample("pg_locks_count", labels_of(datname=datname, mode=mode),
                              count, now))
        out.append(Sample("pg_static", labels_of(
            version=version, short_version=compat_server.short_version(server_version)),
            1.0, now))
        out.append(Sample("pg_postmaster_start_time_seconds", (), started, now))
        self._slots(slots, now, out)
        if shared:
            self._shared(stat_columns, shared[0], now, out)
        for (datname,) in closed:
            for state in connections_collector.STATES:
                labels = labels_of(datname=datname, state=state)
                out.append(Sample("pg_stat_activity_count", labels, 0.0, now))
                out.append(Sample("pg_stat_activity_max_tx_duration", labels, 0.0, now))
        return out

    @staticmethod
    def _shared_columns(available: set[str]) -> list[database_collector._Column]:
        return [c for c in database_collector.COLUMNS if c.column in available]

    def _shared_query(self, available: set[str]) -> str:
        columns = self._shared_columns(available)
        return ("SELECT " + ", ".join(f"{c.column}::float8" for c in columns)
                + " FROM pg_catalog.pg_stat_database WHERE datid = 0")

    def _shared(self, available: set[str], row: tuple[Any, ...], now: float,
                out: list[Sample]) -> None:
        labels = labels_of(datid="0", datname="")
        for column, value in zip(self._shared_columns(available), row, strict=True):
            if value is not None:
                out.append(Sample(column.metric, labels, value / column.divisor, now))

    def _view_columns(self, db: Session) -> tuple[set[str], set[str]]:
        # Read from the catalog once per server version (PostgreSQL 14 added the session
        # columns, 16 confl_active_logicalslot).
        cached = self._columns
        if cached is None or cached[0] != db.server_version_num:
            cached = (db.server_version_num, db.columns("pg_stat_database"),
                      db.columns("pg_stat_database_conflicts"))
            self._columns = cached
        return cached[1], cached[2]

    def _settings(self, rows: list[tuple[Any, ...]], now: float, out: list[Sample]) -> None:
        for name, setting, unit, vartype in rows:
            found = compat_settings.setting_value(name, setting, unit, vartype)
            if found is None:
                continue
            if found.metric not in self._settings_specs:
                self._settings_specs[found.metric] = compat_settings.spec_of(found)
            out.append(Sample(found.metric, (), found.value, now))

    @staticmethod
    def _slots(rows: list[tuple[Any, ...]], now: float, out: list[Sample]) -> None:
        for name, kind, wal_lsn, flush_lsn, active, safe_wal, wal_status in rows:
            labels = labels_of(slot_name=name or "unknown", slot_type=kind or "unknown")
            out.append(Sample("pg_replication_slot_slot_current_wal_lsn", labels,
                              _num(wal_lsn, 0.0), now))
            if active:
                out.append(Sample("pg_replication_slot_slot_confirmed_flush_lsn", labels,
                                  _num(flush_lsn, 0.0), now))
            out.append(Sample("pg_replication_slot_slot_is_active", labels,
                              1.0 if active else 0.0, now))
            if safe_wal is not None:
                out.append(Sample("pg_replication_slot_safe_wal_size_bytes", labels,
                                  safe_wal, now))
            if wal_status is not None:
                out.append(Sample("pg_replication_slot_wal_status",
                                  labels_of(dict(labels), wal_status=wal_status), 1.0, now))


def _num(value: float | None, default: float = _NAN) -> float:
    return default if value is None else float(value)
