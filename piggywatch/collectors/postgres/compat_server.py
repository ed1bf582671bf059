"""Server-wide facts: version, postmaster start time, replication slots."""

from __future__ import annotations

from piggywatch.store import MetricKind, MetricSpec

_G = MetricKind.GAUGE
_U = MetricKind.UNTYPED

SPECS = (
    MetricSpec("pg_static", _U, "Version string as reported by postgres"),
    MetricSpec("pg_postmaster_start_time_seconds", _G, "Time at which postmaster started"),
    MetricSpec("pg_replication_slot_slot_current_wal_lsn", _G, "current wal lsn value"),
    MetricSpec("pg_replication_slot_slot_confirmed_flush_lsn", _G,
               "last lsn confirmed flushed to the replication slot"),
    MetricSpec("pg_replication_slot_slot_is_active", _G,
               "whether the replication slot is active or not"),
    MetricSpec("pg_replication_slot_safe_wal_size_bytes", _G,
               "number of bytes that can be written to WAL such that this slot is not in "
               "danger of getting in state lost"),
    MetricSpec("pg_replication_slot_wal_status", _G,
               "availability of WAL files claimed by this slot"),
)

SERVER = """
SELECT version(), current_setting('server_version'),
       EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8
"""

SLOTS = """
SELECT slot_name, slot_type,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
             ELSE pg_current_wal_lsn() END - '0/0')::float8,
       (COALESCE(confirmed_flush_lsn, '0/0') - '0/0')::float8,
       active, safe_wal_size::float8, wal_status
FROM pg_catalog.pg_replication_slots
"""


def short_version(server_version: str) -> str:
    """'15.20 (Debian 15.20-0+deb12u1)' -> '15.20.0', as upstream's semver parsing gives."""
    number = server_version.split()[0]
    parts = [p for p in number.split(".") if p.isdigit()][:3]
    while len(parts) < 3:
        parts.append("0")
    return ".".join(parts)
