"""Growth and business metrics of the app, computed in SQL from its own tables.

Every figure is computed by the database from the rows as they are now, so no history is
needed: a restarted daemon reports the same week-over-week growth as one that has been
running for a month. Windows are rolling and end at the collector's ``now`` (passed to the
query as a parameter, so the daemon's clock is the only one that matters; rows stamped
after it are not counted):

- *day* is the last 24 hours, *week* the last 7 days, *month* the last 30 days; the
  previous week is the 7 days before that (from 14 to 7 days ago).
- ``app_users_growth_wow_ratio`` is (new users this week / new users the previous week)
  - 1, so +20% week over week reads ``app_users_growth_wow_ratio > 0.2``. It is absent
  while the previous week had no signups (growth from nothing is undefined).
- A user is *active* at their latest sign-in (``last_sign_in_at``), session start or token
  refresh (``auth.sessions.created_at`` / ``refreshed_at``), as Supabase counts MAU: an app
  whose users stay signed in refreshes tokens without signing in again. Anonymous users are
  users like any other. DAU and MAU count users active in the last 24 hours / 30 days: exact,
  because a user active within the window has their latest activity in it (sessions deleted
  at sign-out take their refreshes with them, so this is a lower bound of Supabase's count).
- ``app_users_retention_ratio{day="N"}`` is rolling day-N retention of a signup cohort:
  of the users who signed up between N + 7 and N days ago (the cohort width is
  ``retention_cohort``), the share whose latest activity is at least N days after their own
  signup. Every member of that cohort has had N days to come back; only the latest activity
  is stored, so "came back on day N or later" is what can be measured exactly.
- ``app_users_paid_ratio`` is the share of all users on a paid plan (free → paid).
- ``app_revenue_month_to_date_dollars`` sums purchases since the start of the calendar
  month in UTC; ``app_arpu_dollars`` is the revenue of the last 30 days / MAU.
- Times are compared as epoch seconds, so ``timestamp`` columns (Supabase's
  ``auth.sessions.refreshed_at``) are read as UTC and ``timestamptz`` ones as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from piggywatch.collectors.base import SourceContext, SourceJob
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

__all__ = [
    "RETENTION_DAYS",
    "GrowthCollector",
    "GrowthConfig",
    "PurchasesTable",
    "SessionsTable",
    "qualified_name",
    "user_activity",
]

RETENTION_DAYS = (1, 7, 30)

_G = MetricKind.GAUGE
_USER_SPECS = (
    MetricSpec("app_users_total", _G, "Users in the users table"),
    MetricSpec("app_users_new_day", _G, "Users who signed up in the last 24 hours"),
    MetricSpec("app_users_new_week", _G, "Users who signed up in the last 7 days"),
    MetricSpec("app_users_growth_wow_ratio", _G,
               "New users of the last 7 days / new users of the 7 days before, minus 1"),
    MetricSpec("app_users_active_day", _G,
               "Users who signed in or refreshed a token within the last 24 hours (DAU)"),
    MetricSpec("app_users_active_month", _G,
               "Users who signed in or refreshed a token within the last 30 days (MAU)"),
    MetricSpec("app_users_dau_mau_ratio", _G, "DAU / MAU"),
    MetricSpec("app_users_retention_ratio", _G,
               "Share of the signup cohort aged N to N + cohort days that signed in again "
               "(or refreshed a token) at least N days after signing up"),
)
_PAID_SPEC = MetricSpec("app_users_paid_ratio", _G, "Share of users on a paid plan")
_PURCHASE_SPECS = (
    MetricSpec("app_revenue_month_to_date_dollars", _G,
               "Purchases since the start of the calendar month (UTC), in dollars"),
    MetricSpec("app_paying_users_month_to_date", _G,
               "Distinct users with a purchase since the start of the calendar month (UTC)"),
    MetricSpec("app_arpu_dollars", _G,
               "Revenue of the last 30 days / users active in the last 30 days"),
)

_IDENT = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"
_COLUMN = r"^[A-Za-z_][A-Za-z0-9_$]*$"


def qualified_name(name: str) -> sql.Identifier:
    """``schema.table`` or ``table`` as a quoted SQL identifier (never string-formatted)."""
    return sql.Identifier(*name.split("."))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SessionsTable(_Strict):
    """Sessions whose start and latest token refresh count as activity (``auth.sessions``)."""

    table: str = Field(default="auth.sessions", pattern=_IDENT)
    """The table, `schema.table` or `table`."""
    user_column: str = Field(default="user_id", pattern=_COLUMN)
    """The column holding the session's user (the users table's id)."""
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)
    """The column holding when the row was created."""
    refreshed_at_column: str = Field(default="refreshed_at", pattern=_COLUMN)
    """When the session's token was last refreshed (a timestamp without time zone is UTC)."""


SUPABASE_USERS = "auth.users"


def default_sessions(data: object, users_table: str | None) -> object:
    """Fill in ``sessions: auth.sessions`` when the users are Supabase Auth's and the
    configuration does not say; other users tables have no sessions unless configured."""
    if isinstance(data, dict) and "sessions" not in data and users_table == SUPABASE_USERS:
        return {**data, "sessions": SessionsTable()}
    return data


_NO_COLUMNS = sql.SQL("")


def _epoch(column: sql.Composable) -> sql.Composed:
    return sql.SQL("extract(epoch FROM {})::float8").format(column)


def user_activity(users: str, id_column: str, created_at_column: str, last_sign_in_column: str,
                  sessions: SessionsTable | None,
                  extra: sql.Composable = _NO_COLUMNS) -> sql.Composed:
    """A subquery (``activity``) with one row per user created by ``%(now)s`` (epoch seconds):
    ``created`` and ``last_seen``, the latest sign-in, session start or token refresh at or
    before ``%(now)s``, as epoch seconds. ``extra`` adds columns of ``u`` (the users table)."""
    seen = _epoch(sql.SQL("u.{}").format(sql.Identifier(last_sign_in_column)))
    latest_session: sql.Composable = sql.SQL("NULL::float8")
    join: sql.Composable = sql.SQL("")
    if sessions is not None:
        user = sql.Identifier(sessions.user_column)
        table = qualified_name(sessions.table)
        latest_session = sql.SQL("s.at")
        join = sql.SQL("""
  LEFT JOIN (SELECT uid, max(at) AS at
             FROM (SELECT {user} AS uid, {created} AS at FROM {table}
                   UNION ALL
                   SELECT {user}, {refreshed} FROM {table}) e
             WHERE at <= %(now)s
             GROUP BY uid) s ON s.uid = u.{id}""").format(
            user=user, table=table, id=sql.Identifier(id_column),
            created=_epoch(sql.Identifier(sessions.created_at_column)),
            refreshed=_epoch(sql.Identifier(sessions.refreshed_at_column)))
    return sql.SQL("""(SELECT {created} AS created,
        greatest(CASE WHEN {seen} <= %(now)s THEN {seen} END, {latest_session}) AS last_seen
        {extra}
  FROM {users} u{join}
  WHERE {created} <= %(now)s) AS activity""").format(
        created=_epoch(sql.SQL("u.{}").format(sql.Identifier(created_at_column))),
        seen=seen, latest_session=latest_session, extra=extra,
        users=qualified_name(users), join=join)


class PurchasesTable(_Strict):
    """Where the app records purchases, for revenue and ARPU."""

    table: str = Field(default="purchases", pattern=_IDENT)
    """The table, `schema.table` or `table`."""
    user_column: str = Field(default="user_id", pattern=_COLUMN)
    """The column holding the buyer's user id."""
    amount_column: str = Field(default="amount_cents", pattern=_COLUMN)
    """The column holding the amount."""
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)
    """The column holding when the row was created."""
    amount_unit_dollars: float = Field(default=0.01, gt=0)
    """Dollars per unit of the amount column: 0.01 for cents, 1 for dollars."""
    currency_column: str | None = Field(default=None, pattern=_COLUMN)
    """Set with the column holding the currency: only purchases in ``currency`` are summed, since
    adding won to dollars would make the figure meaningless."""
    currency: str = "USD"
    """The currency summed when `currency_column` is set."""


class GrowthConfig(_Strict):
    """Growth and business metrics of one target's app tables."""

    target: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The name of the PostgreSQL target (`targets[].name`) it reads from."""
    enabled: bool = True
    """Whether this runs at all."""
    interval: Duration = 300.0
    """Signups move slowly; a query every few minutes is plenty and cheap on the database."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    users_table: str = Field(default=SUPABASE_USERS, pattern=_IDENT)
    """The table of users, `schema.table` or `table`."""
    id_column: str = Field(default="id", pattern=_COLUMN)
    """The users' primary key, joined to the sessions' user column."""
    created_at_column: str = Field(default="created_at", pattern=_COLUMN)
    """The column holding when the row was created."""
    last_sign_in_column: str = Field(default="last_sign_in_at", pattern=_COLUMN)
    """The column holding the user's last sign-in time."""
    sessions: SessionsTable | None = None
    """Token refreshes count as activity; defaults to auth.sessions with auth.users."""
    retention_cohort: Duration = 7 * 86400.0
    """The age of the cohort whose retention is measured."""
    plan_column: str | None = Field(default=None, pattern=_COLUMN)
    """Free → paid conversion, when the users table says which plan a user is on."""
    paid_plans: list[str] = []
    """Values of `plan_column` that count as paid."""
    purchases: PurchasesTable | None = None

    @model_validator(mode="before")
    @classmethod
    def _supabase_sessions(cls, data: object) -> object:
        table = data.get("users_table", SUPABASE_USERS) if isinstance(data, dict) else None
        return default_sessions(data, table)

    @field_validator("paid_plans")
    @classmethod
    def _no_blank_plans(cls, value: list[str]) -> list[str]:
        if any(not plan.strip() for plan in value):
            raise ValueError("a paid plan name is empty")
        return value

    @model_validator(mode="after")
    def _plans_with_column(self) -> GrowthConfig:
        if self.plan_column is not None and not self.paid_plans:
            raise ValueError("plan_column is set but paid_plans is empty: list the plan "
                             "values that count as paid, e.g. [pro, team]")
        if self.plan_column is None and self.paid_plans:
            raise ValueError("paid_plans needs plan_column: the users column holding the plan")
        return self


# Rolling windows end at %(now)s, the collector's clock in epoch seconds (see the docstring).
_USERS = sql.SQL("""
SELECT count(*),
       count(*) FILTER (WHERE created > %(now)s - 86400),
       count(*) FILTER (WHERE created > %(now)s - 7 * 86400),
       count(*) FILTER (WHERE created > %(now)s - 14 * 86400
                          AND created <= %(now)s - 7 * 86400),
       count(*) FILTER (WHERE last_seen > %(now)s - 86400),
       count(*) FILTER (WHERE last_seen > %(now)s - 30 * 86400),
       {paid},
       {retention}
FROM {activity}
""")
_RETENTION = sql.SQL("""ARRAY[
    count(*) FILTER (WHERE created <= %(now)s - {n} * 86400
                       AND created > %(now)s - {n} * 86400 - %(cohort)s),
    count(*) FILTER (WHERE created <= %(now)s - {n} * 86400
                       AND created > %(now)s - {n} * 86400 - %(cohort)s
                       AND last_seen >= created + {n} * 86400)]""")


# Month to date is the calendar month in UTC, whatever the server's TimeZone; %(at)s is the
# collector's clock as a timestamptz.
_PURCHASES_SQL = sql.SQL("""
SELECT COALESCE(sum({amount}) FILTER (WHERE {created} >= month_start), 0)::float8
           * %(unit)s,
       count(DISTINCT {user}) FILTER (WHERE {created} >= month_start),
       COALESCE(sum({amount}) FILTER (WHERE {created} > %(at)s - interval '30 days'), 0)::float8
           * %(unit)s
FROM {purchases},
     LATERAL (SELECT date_trunc('month', %(at)s AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
              AS month_start) m
WHERE {created} >= least(%(at)s - interval '30 days', month_start)
  AND {created} <= %(at)s
  AND {currency_filter}
""")


class GrowthCollector:
    """Signups, active users, retention, conversion and revenue of the app, in two queries."""

    name = "growth"

    def __init__(self, target: PostgresTarget, config: GrowthConfig) -> None:
        self._target = target
        self._config = config
        self._users_query = self._build_users_query(config)
        self._purchases_query = (None if config.purchases is None
                                 else self._build_purchases_query(config.purchases))

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families this configuration produces."""
        specs = list(_USER_SPECS)
        if self._config.plan_column is not None:
            specs.append(_PAID_SPEC)
        if self._config.purchases is not None:
            specs.extend(_PURCHASE_SPECS)
        return specs

    def collect(self, now: float) -> list[Sample]:
        """One cycle: one query on the users table, one on purchases when configured."""
        config = self._config
        params = {"cohort": config.retention_cohort, "paid": list(config.paid_plans),
                  "now": now}
        with self._target.session(config.timeout) as db:
            (total, new_day, new_week, prev_week, dau, mau, paid, retention), = db.fetch(
                self._users_query, params)
            bought = None
            if self._purchases_query is not None and config.purchases is not None:
                bought = db.fetch(self._purchases_query,
                                  {"unit": config.purchases.amount_unit_dollars,
                                   "currency": config.purchases.currency,
                                   "at": datetime.fromtimestamp(now, UTC)})[0]

        def sample(name: str, value: float, **labels: str) -> Sample:
            return Sample(name, labels_of(labels), float(value), now)

        out = [sample("app_users_total", total), sample("app_users_new_day", new_day),
               sample("app_users_new_week", new_week),
               sample("app_users_active_day", dau), sample("app_users_active_month", mau)]
        if prev_week:
            out.append(sample("app_users_growth_wow_ratio", new_week / prev_week - 1.0))
        if mau:
            out.append(sample("app_users_dau_mau_ratio", dau / mau))
        for days, (cohort, returned) in zip(RETENTION_DAYS, retention, strict=True):
            # An empty cohort has no retention; a zero would read as "everyone left".
            if cohort:
                out.append(sample("app_users_retention_ratio", returned / cohort,
                                  day=str(days)))
        if config.plan_column is not None and total:
            out.append(sample("app_users_paid_ratio", paid / total))
        if bought is not None:
            revenue_mtd, payers_mtd, revenue_30d = bought
            out.append(sample("app_revenue_month_to_date_dollars", revenue_mtd))
            out.append(sample("app_paying_users_month_to_date", payers_mtd))
            if mau:
                out.append(sample("app_arpu_dollars", revenue_30d / mau))
        return out

    @staticmethod
    def _build_users_query(config: GrowthConfig) -> sql.Composed:
        paid: sql.Composable = sql.SQL("NULL::bigint")
        extra: sql.Composable = sql.SQL("")
        if config.plan_column is not None:
            paid = sql.SQL("count(*) FILTER (WHERE plan = ANY(%(paid)s::text[]))")
            extra = sql.SQL(", u.{} AS plan").format(sql.Identifier(config.plan_column))
        retention = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(
            _RETENTION.format(n=sql.Literal(n)) for n in RETENTION_DAYS))
        activity = user_activity(config.users_table, config.id_column,
                                 config.created_at_column, config.last_sign_in_column,
                                 config.sessions, extra)
        return _USERS.format(paid=paid, retention=retention, activity=activity)

    @staticmethod
    def _build_purchases_query(purchases: PurchasesTable) -> sql.Composed:
        created = sql.Identifier(purchases.created_at_column)
        amount = sql.Identifier(purchases.amount_column)
        currency_filter: sql.Composable = sql.SQL("true")
        if purchases.currency_column is not None:
            currency_filter = sql.SQL("{} = %(currency)s").format(
                sql.Identifier(purchases.currency_column))
        return _PURCHASES_SQL.format(
            created=created, amount=amount, user=sql.Identifier(purchases.user_column),
            purchases=qualified_name(purchases.table), currency_filter=currency_filter)


SPECS = (*_USER_SPECS, *_PURCHASE_SPECS, _PAID_SPEC)


def build(configs: list[GrowthConfig], context: SourceContext) -> list[SourceJob]:
    """One collector per enabled entry, on its target."""
    return [(context.targets[g.target].name, context.targets[g.target],
             GrowthCollector(context.targets[g.target], g), g.interval)
            for g in configs if g.enabled]
