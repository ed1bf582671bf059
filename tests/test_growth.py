"""GrowthCollector against a real PostgreSQL: exact figures from constructed users."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pydantic import ValidationError

from piggywatch.collectors import CollectorError
from piggywatch.collectors.growth import GrowthCollector, GrowthConfig, PurchasesTable
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.store import Sample

SCHEMA = "pw_growth"

# (signed up, last signed in) in days before now; every point lies hours away from a
# window's edge, so the seconds between inserting and querying cannot move it.
USERS: list[tuple[str, float, float | None, str]] = [
    # This week: 6 signups, 2 of them in the last day.
    ("a", 0.5, 0.1, "pro"),
    ("b", 0.5, None, "free"),
    ("c", 2.5, 1.2, "free"),     # came back 1.3 days after signing up
    ("d", 3.5, 3.4, "free"),     # came back the same day only
    ("e", 5.5, 0.2, "pro"),
    ("f", 6.5, None, "free"),
    # The week before: 4 signups.
    ("g", 8.5, 0.3, "free"),     # back 8.2 days later
    ("i", 10.5, 2.0, "pro"),     # back 8.5 days later
    ("j", 12.5, None, "free"),
    ("k", 13.5, 6.0, "free"),    # back 7.5 days later
    # Older.
    ("l", 31.5, 29.0, "free"),   # D30 cohort, back 2.5 days later
    ("m", 33.0, 1.5, "pro"),     # D30 cohort, back 31.5 days later
    ("n", 60.0, 20.0, "free"),
    ("o", 90.0, None, "free"),
]


@pytest.fixture(scope="module")
def app_dsn(pg_cluster: ThrowawayCluster) -> Iterator[str]:
    """A schema of the demo database holding this module's users and purchases only."""
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
            CREATE SCHEMA {SCHEMA};
            CREATE TABLE {SCHEMA}.users (id bigserial PRIMARY KEY, name text NOT NULL,
                created_at timestamptz NOT NULL, last_sign_in_at timestamptz,
                plan text NOT NULL);
            CREATE TABLE {SCHEMA}.purchases (id bigserial PRIMARY KEY, user_id bigint,
                amount_cents integer NOT NULL, currency text NOT NULL,
                created_at timestamptz NOT NULL);
            GRANT USAGE ON SCHEMA {SCHEMA} TO {MONITOR_ROLE};
            GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {MONITOR_ROLE};
        """)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {SCHEMA}.users (name, created_at, last_sign_in_at, plan) "
                "VALUES (%s, now() - make_interval(secs => %s * 86400), "
                "now() - make_interval(secs => %s * 86400), %s)",
                [(name, created, seen, plan) for name, created, seen, plan in USERS])
            cur.executemany(
                f"INSERT INTO {SCHEMA}.purchases (user_id, amount_cents, currency, created_at) "
                "VALUES (%s, %s, %s, now() - make_interval(secs => %s))",
                [(1, 1000, "USD", 60), (5, 2500, "USD", 120), (8, 99999, "KRW", 180),
                 (1, 5000, "USD", 40 * 86400)])
    try:
        yield dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture
def target(target: PostgresTarget, app_dsn: str) -> PostgresTarget:
    """The monitoring role's target (conftest), once this module's tables exist."""
    return target


def config(**overrides: object) -> GrowthConfig:
    fields: dict[str, object] = {"target": "main", "users_table": f"{SCHEMA}.users"}
    fields.update(overrides)
    return GrowthConfig.model_validate(fields)


def values(samples: list[Sample]) -> dict[str, float]:
    """``name`` or ``name{day}`` -> value."""
    out = {}
    for s in samples:
        labels = dict(s.labels)
        key = f"{s.name}{{{labels['day']}}}" if "day" in labels else s.name
        assert key not in out
        out[key] = s.value
    return out


def test_users_across_two_weeks_give_the_exact_wow_ratio(target: PostgresTarget) -> None:
    got = values(GrowthCollector(target, config()).collect(1.0))
    assert got["app_users_total"] == len(USERS)
    assert got["app_users_new_day"] == 2
    assert got["app_users_new_week"] == 6
    # 6 signups this week against 4 the week before: +50%.
    assert got["app_users_growth_wow_ratio"] == 0.5


def test_dau_mau_and_retention_are_exact(target: PostgresTarget) -> None:
    got = values(GrowthCollector(target, config()).collect(1.0))
    assert got["app_users_active_day"] == 3             # a, e, g
    assert got["app_users_active_month"] == 10          # all but b, f, j, o
    assert got["app_users_dau_mau_ratio"] == 3 / 10
    # D1 cohort (1 to 8 days old): c, d, e, f; c and e came back a day or more later.
    assert got["app_users_retention_ratio{1}"] == 2 / 4
    # D7 cohort (7 to 14 days old): g, i, j, k; all but j came back a week or more later.
    assert got["app_users_retention_ratio{7}"] == 3 / 4
    # D30 cohort (30 to 37 days old): l, m; only m came back a month later.
    assert got["app_users_retention_ratio{30}"] == 1 / 2


def test_conversion_and_revenue_when_configured(target: PostgresTarget) -> None:
    collector = GrowthCollector(target, config(
        plan_column="plan", paid_plans=["pro", "team"],
        purchases=PurchasesTable(table=f"{SCHEMA}.purchases", currency_column="currency")))
    names = {spec.name for spec in collector.specs()}
    assert {"app_users_paid_ratio", "app_arpu_dollars"} <= names
    got = values(collector.collect(1.0))
    assert got["app_users_paid_ratio"] == 4 / 14
    # Only the two USD purchases of the last minutes; the won purchase and the one 40 days
    # ago are left out.
    assert got["app_revenue_month_to_date_dollars"] == pytest.approx(35.0)
    assert got["app_paying_users_month_to_date"] == 2
    assert got["app_arpu_dollars"] == pytest.approx(35.0 / 10)


def test_without_plan_or_purchases_those_metrics_are_not_produced(
        target: PostgresTarget) -> None:
    collector = GrowthCollector(target, config())
    got = values(collector.collect(1.0))
    assert "app_users_paid_ratio" not in got
    assert "app_revenue_month_to_date_dollars" not in got
    assert "app_users_paid_ratio" not in {spec.name for spec in collector.specs()}


def test_no_signups_the_week_before_gives_no_growth_ratio(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA}.fresh AS SELECT * FROM {SCHEMA}.users "
                     "WHERE created_at > now() - interval '7 days'")
        conn.execute(f"GRANT SELECT ON {SCHEMA}.fresh TO {MONITOR_ROLE}")
    got = values(GrowthCollector(target, config(users_table=f"{SCHEMA}.fresh")).collect(1.0))
    assert got["app_users_new_week"] == 6
    assert "app_users_growth_wow_ratio" not in got
    # No cohort old enough: retention is absent rather than a misleading zero.
    assert "app_users_retention_ratio{30}" not in got


def test_a_table_the_monitor_cannot_read_is_a_query_error(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.secret (LIKE {SCHEMA}.users)")
    with pytest.raises(CollectorError) as caught:
        GrowthCollector(target, config(users_table=f"{SCHEMA}.secret")).collect(1.0)
    assert caught.value.reason == "query"
    assert "permission denied" in str(caught.value)


def test_paid_plans_and_plan_column_come_together() -> None:
    with pytest.raises(ValidationError, match="paid_plans is empty"):
        config(plan_column="plan")
    with pytest.raises(ValidationError, match="needs plan_column"):
        config(paid_plans=["pro"])
    with pytest.raises(ValidationError):
        config(users_table="users; DROP TABLE users")


def test_defaults_read_supabase_auth_users() -> None:
    defaults = GrowthConfig(target="main")
    assert (defaults.users_table, defaults.created_at_column,
            defaults.last_sign_in_column) == ("auth.users", "created_at", "last_sign_in_at")
