"""The Supabase-shaped demo database, seen by monitoring roles with more or fewer grants.

``pg_cluster`` (tests/conftest.py) is already Supabase-shaped: ``bootstrap_demo()`` loads
Supabase's roles and its auth, storage, extensions and supabase_migrations schemas, and
``MONITOR_ROLE`` holds exactly ``MONITORING_GRANTS``. This module makes other monitoring
roles, each missing chosen grants, to show what degrades without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from piggywatch.demo.cluster import (
    DEMO_DATABASE,
    MONITORING_GRANTS,
    MonitoringGrant,
    ThrowawayCluster,
    grant_monitoring,
)

SUPABASE_SCHEMAS = ("auth", "storage", "extensions", "supabase_migrations")
SUPABASE_ROLES = ("anon", "authenticated", "service_role", "supabase_admin")


@contextmanager
def monitoring_role(cluster: ThrowawayCluster,
                    grants: Sequence[MonitoringGrant] = MONITORING_GRANTS) -> Iterator[str]:
    """A fresh LOGIN role holding only ``grants``; yields its DSN to the demo database and
    drops the role (and its policies) afterwards."""
    name = f"pw_monitor_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    admin = cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        grant_monitoring(conn, name, grants)
    try:
        yield cluster.dsn(DEMO_DATABASE, user=name, password=password)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (name,))
            # Also drops the policies naming only this role.
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
