"""PiggyWatch against a Supabase-shaped database, as an ordinary role with only its grants.

The shared ``pg_cluster`` is Supabase-shaped and ``target`` connects as ``MONITOR_ROLE``,
so every collector, source and end-to-end test already runs through it; these tests check
the shape itself and, grant by grant, what degrades without it (never a crash).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import piggywatch.demo
from piggywatch.collectors.base import Collector, CollectorError
from piggywatch.collectors.cost import CostCollector, CostConfig
from piggywatch.collectors.growth import GrowthCollector, GrowthConfig
from piggywatch.collectors.postgres.connections import ConnectionsCollector
from piggywatch.collectors.postgres.database import DatabaseCollector
from piggywatch.collectors.postgres.statements import StatementsCollector
from piggywatch.collectors.postgres.tables import TablesCollector
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import (
    DEMO_DATABASE,
    MONITOR_ROLE,
    MONITORING_GRANTS,
    ThrowawayCluster,
)
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import value
from tests.support.supabase import SUPABASE_ROLES, SUPABASE_SCHEMAS, monitoring_role

COLLECTORS: dict[str, Callable[[PostgresTarget], Collector]] = {
    "connections": lambda t: ConnectionsCollector(t, timeout=5, top_n=5),
    "database": lambda t: DatabaseCollector(t, timeout=5),
    "statements": lambda t: StatementsCollector(t, timeout=5, top_k=5, schema=None),
    "tables": lambda t: TablesCollector(t, timeout=5, top_n=5),
    # Supabase's defaults: auth.users with auth.sessions.
    "growth": lambda t: GrowthCollector(t, GrowthConfig(target="main")),
    "growth_public": lambda t: GrowthCollector(
        t, GrowthConfig(target="main", users_table="public.users")),
    "cost": lambda t: CostCollector(t, CostConfig(target="main", monthly_budget_dollars=30)),
}

# Without grant i (MONITORING_GRANTS[i]): the collectors that fail, and with which reason.
DEGRADES = [
    {"statements": "setup", "cost": "permission"},        # pg_monitor
    {"statements": "setup"},                              # USAGE ON SCHEMA extensions
    {"growth_public": "permission"},                      # SELECT on the public tables
    {"growth": "permission", "cost": "permission"},       # auth schema and tables
    {},                                                   # RLS policies: rows hidden, below
]
MAU = "cost_usage_mau"


def run_all(dsn: str) -> tuple[dict[str, str | None], dict[str, list[float]]]:
    """Every collector once: its failure reason (None when it worked) and its MAU samples."""
    target = PostgresTarget("main", dsn)
    reasons: dict[str, str | None] = {}
    mau: dict[str, list[float]] = {}
    try:
        for name, make in COLLECTORS.items():
            try:
                samples = make(target).collect(time.time())
            except CollectorError as exc:
                reasons[name] = exc.reason
                assert "Traceback" not in str(exc)
                continue
            reasons[name] = None
            mau[name] = [s.value for s in samples if s.name == MAU]
    finally:
        target.close()
    return reasons, mau


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_the_demo_database_is_shaped_like_a_supabase_project(
        pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    schemas = scalar(dsn, "SELECT array_agg(nspname::text) FROM pg_namespace")
    assert set(SUPABASE_SCHEMAS) <= set(schemas)
    roles = scalar(dsn, "SELECT array_agg(rolname::text) FROM pg_roles")
    assert set(SUPABASE_ROLES) <= set(roles)
    assert scalar(dsn, "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE extname = 'pg_stat_statements'"
                  ) == "extensions"
    # As on Supabase since 2024-06: row level security on, auth tables owned by GoTrue.
    assert scalar(dsn, "SELECT relrowsecurity FROM pg_class WHERE oid = 'auth.users'::regclass")
    assert scalar(dsn, "SELECT tableowner FROM pg_tables WHERE schemaname = 'auth' "
                       "AND tablename = 'users'") == "supabase_auth_admin"
    assert scalar(dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                       "attrelid = 'auth.sessions'::regclass AND attname = 'refreshed_at'"
                  ) == "timestamp without time zone"
    assert scalar(dsn, "SELECT count(*) FROM supabase_migrations.schema_migrations") == 1
    # Every auth user is one of the demo's fans (tests add fans later, not auth users).
    assert scalar(dsn, "SELECT count(*) FROM auth.users") > 0
    assert scalar(dsn, "SELECT count(*) FROM auth.users a WHERE NOT EXISTS "
                       "(SELECT 1 FROM public.users u WHERE u.email = a.email)") == 0


DEMO_SQL = Path(piggywatch.demo.__file__).parent


def demo_tables() -> set[str]:
    """schema.table of every table the demo's SQL files create (public when unqualified)."""
    sql = "\n".join(p.read_text() for p in DEMO_SQL.glob("*.sql"))
    names = re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([\w.]+)", sql, re.IGNORECASE)
    return {name if "." in name else f"public.{name}" for name in names}


def test_the_monitoring_role_is_ordinary_with_only_the_documented_grants(
        pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    attributes = scalar(dsn, f"SELECT ARRAY[rolsuper, rolbypassrls, rolcreaterole, "
                             f"rolcreatedb, rolreplication] FROM pg_roles "
                             f"WHERE rolname = '{MONITOR_ROLE}'")
    assert attributes == [False] * 5
    member_of = scalar(dsn, f"SELECT array_agg(b.rolname::text) FROM pg_auth_members m "
                            f"JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles r "
                            f"ON r.oid = m.member WHERE r.rolname = '{MONITOR_ROLE}'")
    assert member_of == ["pg_monitor"]
    tables = scalar(dsn, f"SELECT array_agg(table_schema || '.' || table_name || ':' "
                         f"|| privilege_type) FROM information_schema.role_table_grants "
                         f"WHERE grantee = '{MONITOR_ROLE}'")
    # Other tests of the session add tables (and grants) of their own: only the demo's
    # tables are the bootstrap's business.
    demo = demo_tables()
    tables = [t for t in tables if t.split(":")[0] in demo]
    assert sorted(tables) == sorted(["auth.sessions:SELECT", "auth.users:SELECT",
                             "public.edge_functions_logs:SELECT", "public.purchases:SELECT",
                             "public.users:SELECT"])


def test_every_collector_and_source_works_as_the_monitoring_role(
        pg_cluster: ThrowawayCluster) -> None:
    reasons, mau = run_all(pg_cluster.dsn(DEMO_DATABASE, user=MONITOR_ROLE))
    assert reasons == dict.fromkeys(COLLECTORS), reasons
    # auth.users through its row level security: the policy lets the role count them.
    assert mau["cost"] and mau["cost"][0] > 0


@pytest.mark.parametrize("missing", range(len(MONITORING_GRANTS)),
                         ids=[g.statements[0].split(" ON ")[0].split(" TO ")[0][:40]
                              for g in MONITORING_GRANTS])
def test_without_a_grant_collectors_degrade_as_documented(
        pg_cluster: ThrowawayCluster, missing: int) -> None:
    grants = [g for i, g in enumerate(MONITORING_GRANTS) if i != missing]
    with monitoring_role(pg_cluster, grants) as dsn:
        reasons, mau = run_all(dsn)
    failed = {name: reason for name, reason in reasons.items() if reason is not None}
    assert failed == DEGRADES[missing], MONITORING_GRANTS[missing].without
    if not DEGRADES[missing]:
        # Row level security without a policy: no error, every auth row hidden.
        assert mau["cost"] == [0.0], MONITORING_GRANTS[missing].without


def test_a_daemon_without_a_grant_counts_permission_errors_and_logs_once(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    auth_grants = [g for g in MONITORING_GRANTS if "auth" not in " ".join(g.statements)]
    with monitoring_role(pg_cluster, auth_grants) as dsn:
        config = tmp_path / "piggywatch.yaml"
        config.write_text(f"""\
targets:
  - name: main
    dsn: {dsn}
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
      compat: {{enabled: false}}
sources:
  growth:
    - target: main
      interval: 1s
state: sqlite:///{tmp_path}/state.db
""")
        with DaemonProcess(config, tmp_path) as daemon:
            daemon.wait_for_metric(
                lambda v: (value(v, "piggywatch_collector_errors_total", target="main",
                                 collector="growth", reason="permission") or 0) >= 3,
                20, "three growth cycles failed with reason=permission")
            values = daemon.metrics()
            assert value(values, "pg_up", target="main") == 1.0
            stderr = daemon.stderr()
    lines = [line for line in stderr.splitlines() if "not visible to role" in line]
    assert len(lines) == 1, stderr
    assert "permission denied for schema auth" in lines[0]
    assert "Traceback" not in stderr
    # psycopg's own "error ignored terminating <Pipeline>" would be a second line per cycle.
    assert "pipeline aborted" not in stderr
