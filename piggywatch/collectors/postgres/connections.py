"""Connections: pg_stat_activity by state, limits, utilization, and who holds them."""

from __future__ import annotations

from collections.abc import Sequence

from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

# The states postgres_exporter always reports (zero when empty), so a dashboard's series
# exist before the first connection in that state.
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)",
          "fastpath function call", "disabled")
OTHER = "other"

_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("pg_stat_activity_count", _G, "Number of connections in this state"),
    MetricSpec("pg_stat_activity_max_tx_duration", _G,
               "Longest running transaction in this state, in seconds"),
    MetricSpec("pg_settings_max_connections", _G, "Server setting max_connections"),
    MetricSpec("pg_settings_superuser_reserved_connections", _G,
               "Server setting superuser_reserved_connections"),
    MetricSpec("pg_settings_reserved_connections", _G,
               "Server setting reserved_connections (PostgreSQL 16 and later, else 0)"),
    MetricSpec("pg_connections_client_backends", _G, "Client backends connected now"),
    MetricSpec("pg_connections_utilization_ratio", _G,
               "Client backends / (max_connections - reserved connections)"),
    MetricSpec("pg_connections_by_application", _G,
               "Client backends by application_name (top N, the rest as 'other')"),
    MetricSpec("pg_connections_by_wait_event_type", _G,
               "Client backends by wait_event_type ('none' when not waiting)"),
)

_ACTIVITY = """
SELECT d.datname, s.state, COALESCE(a.n, 0), COALESCE(a.max_tx, 0)
FROM pg_database d
CROSS JOIN unnest(%s::text[]) AS s(state)
LEFT JOIN (
    SELECT datname, state, count(*) AS n,
           max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start))::float8 AS max_tx
    FROM pg_stat_activity WHERE backend_type = 'client backend'
    GROUP BY datname, state
) a ON a.datname = d.datname AND a.state = s.state
WHERE d.datallowconn
"""

_SETTINGS = """
SELECT name, setting::float8 FROM pg_settings
WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')
"""

_BREAKDOWN = """
SELECT 'app', COALESCE(NULLIF(application_name, ''), 'unnamed'), count(*)
FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 2
UNION ALL
SELECT 'wait', COALESCE(wait_event_type, 'none'), count(*)
FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 2
"""


class ConnectionsCollector:
    """How close the database is to refusing connections, and who is using them."""

    name = "connections"

    def __init__(self, target: PostgresTarget, *, timeout: float, top_n: int) -> None:
        self._target = target
        self._timeout = timeout
        self._top_n = top_n

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One cycle: activity by state, settings, utilization and breakdowns."""
        with self._target.session(self._timeout) as db:
            activity = db.fetch(_ACTIVITY, (list(STATES),))
            settings = {name: value for name, value in db.fetch(_SETTINGS)}
            breakdown = db.fetch(_BREAKDOWN)
        out: list[Sample] = []
        for datname, state, count, max_tx in activity:
            labels = labels_of(datname=datname, state=state)
            out.append(Sample("pg_stat_activity_count", labels, float(count), now))
            out.append(Sample("pg_stat_activity_max_tx_duration", labels, float(max_tx), now))
        max_conn = settings.get("max_connections", 0.0)
        su_reserved = settings.get("superuser_reserved_connections", 0.0)
        reserved = settings.get("reserved_connections", 0.0)
        out.append(Sample("pg_settings_max_connections", (), max_conn, now))
        out.append(Sample("pg_settings_superuser_reserved_connections", (), su_reserved, now))
        out.append(Sample("pg_settings_reserved_connections", (), reserved, now))
        apps = {name: float(n) for kind, name, n in breakdown if kind == "app"}
        waits = {name: float(n) for kind, name, n in breakdown if kind == "wait"}
        clients = sum(apps.values())
        usable = max_conn - su_reserved - reserved
        out.append(Sample("pg_connections_client_backends", (), clients, now))
        if usable > 0:
            out.append(Sample("pg_connections_utilization_ratio", (), clients / usable, now))
        for app, n in top_n_with_other(apps, self._top_n).items():
            out.append(Sample("pg_connections_by_application",
                              labels_of(application_name=app), n, now))
        for wait, n in top_n_with_other(waits, self._top_n).items():
            out.append(Sample("pg_connections_by_wait_event_type",
                              labels_of(wait_event_type=wait), n, now))
        return out


def top_n_with_other(counts: dict[str, float], n: int) -> dict[str, float]:
    """Keep the ``n`` largest entries and fold the rest into 'other' (bounded cardinality)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:n])
    rest = sum(v for _, v in ranked[n:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0.0) + rest
    return kept
