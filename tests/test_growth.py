"""GrowthCollector against a real PostgreSQL: exact figures from constructed users."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from pydantic import ValidationError

from piggywatch.collectors import CollectorError
from piggywatch.collectors.growth import (
    GrowthCollector,
    GrowthConfig,
    PurchasesTable,
    SessionsTable,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.store import Sample
from tests.clock import frozen_now

SCHEMA = "pw_growth"
# Every time below is computed from this clock, never from the database's now().
NOW = frozen_now()

# (signed up, last signed in) in days before NOW; every point lies hours away from a
# window's edge. Negative: after NOW (rows the collector must not count yet).
USERS: list[tuple[str, float, float | None, str]] = [
    # This week: 6 signups, 2 of them in the last day.
    ("a", 0.5, 0.1, "pro"),
    ("b", 0.5, None, "free"),
    ("c", 2.5, 1.2, "free"),     # came back 1.3 days after signing up
    ("d", 3.5, 3.4, "free"),     # came back the same day only
    ("e", 5.5, 0.2, "pro"),
    ("f", 6.5, None, "free"),
    ("q", 3.0, None, "free"),    # anonymous; active through its session only (SESSIONS)
    # The week before: 4 signups.
    ("g", 8.5, 0.3, "free"),     # back 8.2 days later
    ("i", 10.5, 2.0, "pro"),     # back 8.5 days later
    ("j", 12.5, None, "free"),
    ("k", 13.5, 6.0, "free"),    # back 7.5 days later
    # Older.
    ("l", 31.5, 29.0, "free"),   # D30 cohort, back 2.5 days later
    ("m", 33.0, 1.5, "pro"),     # D30 cohort, back 31.5 days later
    ("p", 40.0, 35.0, "free"),   # signed in long ago, still refreshing its token (SESSIONS)
    ("n", 60.0, 20.0, "free"),
    ("o", 90.0, None, "free"),
    # After NOW: not a user yet.
    ("r", -1.0, -0.5, "free"),
]
# (user, session started, token last refreshed) in days before NOW; refreshed_at is a
# timestamp without time zone in UTC, as in Supabase's auth.sessions.
SESSIONS: list[tuple[str, float, float | None]] = [
    ("p", 35.0, 0.3),            # token refreshed 7 hours ago: active today, no sign-in
    ("q", 2.9, 1.8),             # anonymous: back 1.2 days after signing up
    ("o", 89.0, -1.0),           # a refresh after NOW does not count yet
]
ANONYMOUS = {"q"}


def ago(days: float) -> datetime:
    """NOW minus ``days`` days, as an aware UTC datetime."""
    return NOW - timedelta(days=days)


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
                plan text NOT NULL, is_anonymous boolean NOT NULL DEFAULT false);
            CREATE TABLE {SCHEMA}.sessions (id bigserial PRIMARY KEY, user_id bigint,
                created_at timestamptz, refreshed_at timestamp without time zone);
            CREATE TABLE {SCHEMA}.purchases (id bigserial PRIMARY KEY, user_id bigint,
                amount_cents integer NOT NULL, currency text NOT NULL,
                created_at timestamptz NOT NULL);
            GRANT USAGE ON SCHEMA {SCHEMA} TO {MONITOR_ROLE};
            GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {MONITOR_ROLE};
        """)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {SCHEMA}.users "
                "(name, created_at, last_sign_in_at, plan, is_anonymous) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(name, ago(created), None if seen is None else ago(seen), plan,
                  name in ANONYMOUS) for name, created, seen, plan in USERS])
            cur.executemany(
                f"INSERT INTO {SCHEMA}.sessions (user_id, created_at, refreshed_at) "
                f"SELECT id, %s, %s FROM {SCHEMA}.users WHERE name = %s",
                [(ago(started), None if refreshed is None
                  else ago(refreshed).replace(tzinfo=None), name)
                 for name, started, refreshed in SESSIONS])
            cur.executemany(
                f"INSERT INTO {SCHEMA}.purchases (user_id, amount_cents, currency, created_at) "
                "VALUES (%s, %s, %s, %s)",
                [(user, cents, currency, NOW - timedelta(seconds=seconds))
                 for user, cents, currency, seconds in PURCHASES])
    try:
        yield dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


# (user id, cents, currency, seconds before NOW); the last one is after NOW.
PURCHASES = [(1, 1000, "USD", 60), (5, 2500, "USD", 120), (8, 99999, "KRW", 180),
             (1, 5000, "USD", 40 * 86400), (2, 700, "USD", 86400 + 1), (1, 9900, "USD", -60)]


@pytest.fixture
def target(target: PostgresTarget, app_dsn: str) -> PostgresTarget:
    """The monitoring role's target (conftest), once this module's tables exist."""
    return target


def config(**overrides: object) -> GrowthConfig:
    fields: dict[str, object] = {"target": "main", "users_table": f"{SCHEMA}.users",
                                 "sessions": SessionsTable(table=f"{SCHEMA}.sessions")}
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
    got = values(GrowthCollector(target, config()).collect(NOW.timestamp()))
    # Everyone but r, who signs up after NOW.
    assert got["app_users_total"] == len(USERS) - 1
    assert got["app_users_new_day"] == 2
    assert got["app_users_new_week"] == 7
    # 7 signups this week against 4 the week before: +75%.
    assert got["app_users_growth_wow_ratio"] == 0.75


def test_dau_mau_and_retention_are_exact(target: PostgresTarget) -> None:
    got = values(GrowthCollector(target, config()).collect(NOW.timestamp()))
    assert got["app_users_active_day"] == 4             # a, e, g, and p by its token refresh
    assert got["app_users_active_month"] == 12          # all but b, f, j, o (and r)
    assert got["app_users_dau_mau_ratio"] == 4 / 12
    # D1 cohort (1 to 8 days old): c, d, e, f, q; c, e and q came back a day or more later.
    assert got["app_users_retention_ratio{1}"] == 3 / 5
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
    got = values(collector.collect(NOW.timestamp()))
    assert got["app_users_paid_ratio"] == 4 / 16       # a, e, i, m of 16 users
    # USD purchases of this calendar month (UTC) up to NOW: the won purchase, the one 40 days
    # ago and the one after NOW are left out; the one a day ago counts when NOW's month had
    # begun by then, which depends on the clock.
    month_start = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    usd = [(user, cents / 100, NOW - timedelta(seconds=seconds))
           for user, cents, currency, seconds in PURCHASES if currency == "USD" and seconds > 0]
    this_month = [(user, dollars) for user, dollars, at in usd if at >= month_start]
    last_30_days = sum(dollars for _, dollars, at in usd if at > NOW - timedelta(days=30))
    assert got["app_revenue_month_to_date_dollars"] == pytest.approx(
        sum(dollars for _, dollars in this_month))
    assert got["app_paying_users_month_to_date"] == len({user for user, _ in this_month})
    assert got["app_arpu_dollars"] == pytest.approx(last_30_days / 12)


def test_without_plan_or_purchases_those_metrics_are_not_produced(
        target: PostgresTarget) -> None:
    collector = GrowthCollector(target, config())
    got = values(collector.collect(NOW.timestamp()))
    assert "app_users_paid_ratio" not in got
    assert "app_revenue_month_to_date_dollars" not in got
    assert "app_users_paid_ratio" not in {spec.name for spec in collector.specs()}


def test_no_signups_the_week_before_gives_no_growth_ratio(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA}.fresh AS SELECT * FROM {SCHEMA}.users "
                     "WHERE created_at > %s", (ago(7),))
        conn.execute(f"GRANT SELECT ON {SCHEMA}.fresh TO {MONITOR_ROLE}")
    got = values(GrowthCollector(target, config(users_table=f"{SCHEMA}.fresh")).collect(
        NOW.timestamp()))
    assert got["app_users_new_week"] == 7
    assert "app_users_growth_wow_ratio" not in got
    # No cohort old enough: retention is absent rather than a misleading zero.
    assert "app_users_retention_ratio{30}" not in got


def test_a_table_the_monitor_cannot_read_is_a_query_error(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.secret (LIKE {SCHEMA}.users)")
    with pytest.raises(CollectorError) as caught:
        GrowthCollector(target, config(users_table=f"{SCHEMA}.secret")).collect(NOW.timestamp())
    # A grant the monitoring role lacks (issue 16): counted as reason="permission".
    assert caught.value.reason == "permission"
    assert "permission denied" in str(caught.value)


def test_paid_plans_and_plan_column_come_together() -> None:
    with pytest.raises(ValidationError, match="paid_plans is empty"):
        config(plan_column="plan")
    with pytest.raises(ValidationError, match="needs plan_column"):
        config(paid_plans=["pro"])
    with pytest.raises(ValidationError):
        config(users_table="users; DROP TABLE users")


def test_defaults_read_supabase_auth_users_and_sessions() -> None:
    defaults = GrowthConfig(target="main")
    assert (defaults.users_table, defaults.created_at_column,
            defaults.last_sign_in_column) == ("auth.users", "created_at", "last_sign_in_at")
    assert defaults.sessions == SessionsTable(table="auth.sessions")
    # Another users table has no sessions unless configured.
    assert GrowthConfig(target="main", users_table="public.users").sessions is None


def test_a_token_refresh_without_sign_in_makes_a_user_active(target: PostgresTarget) -> None:
    """Supabase counts a user active when they sign in or refresh a token; an app whose users
    stay signed in only refreshes (p), and anonymous users (q) count like the others."""
    with_sessions = values(GrowthCollector(target, config()).collect(NOW.timestamp()))
    sign_ins_only = values(GrowthCollector(target, config(sessions=None)).collect(
        NOW.timestamp()))
    assert with_sessions["app_users_active_day"] - sign_ins_only["app_users_active_day"] == 1
    assert (with_sessions["app_users_active_month"]
            - sign_ins_only["app_users_active_month"]) == 2
