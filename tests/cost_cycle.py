"""A simulated billing cycle in a real PostgreSQL: synthetic auth users, sessions and usage.

The app's whole history is stored as events in a private schema; views in ``SCHEMA`` show
the tables as they were at a settable instant (``auth.users``-like ``users``,
``auth.sessions``-like ``sessions``, an invocation log ``logs``), so a collector can be asked
about every day of a cycle without rewriting data. :meth:`SyntheticApp.oracle` counts the
same events in Python, independently of the collector's SQL.

``python -m tests.cost_cycle`` prints the day-by-day figures of the scenarios (used for the
before/after table of issue 17).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from piggywatch.demo.cluster import MONITOR_ROLE

SCHEMA = "pw_cost_sim"
EVENTS = "pw_cost_sim_events"
DAY = 86400.0
HOUR = 3600.0


def at(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class SyntheticApp:
    """Users (created, anonymous), sign-ins, sessions, token refreshes and invocations."""

    users: dict[int, tuple[float, bool]] = field(default_factory=dict)
    sign_ins: list[tuple[int, float]] = field(default_factory=list)
    sessions: dict[int, tuple[int, float]] = field(default_factory=dict)
    refreshes: list[tuple[int, float]] = field(default_factory=list)
    invocations: list[float] = field(default_factory=list)

    def user(self, uid: int, created: float, anonymous: bool = False) -> None:
        self.users[uid] = (created, anonymous)

    def sign_in(self, uid: int, when: float) -> None:
        """A sign-in: the user's last_sign_in_at, and a new session."""
        self.sign_ins.append((uid, when))
        self.sessions[len(self.sessions) + 1] = (uid, when)

    def refresh(self, session: int, when: float) -> None:
        self.refreshes.append((session, when))

    def activity(self) -> dict[int, list[float]]:
        """Every instant each user was active (sign-in, session start, token refresh)."""
        out: dict[int, list[float]] = {uid: [] for uid in self.users}
        for uid, when in self.sign_ins:
            out[uid].append(when)
        for uid, when in self.sessions.values():
            out[uid].append(when)
        for session, when in self.refreshes:
            out[self.sessions[session][0]].append(when)
        return out

    def oracle(self, now: float, start: float) -> tuple[int, int, int]:
        """(active since ``start``, active in the 30 days to ``now``, signups in the last 7
        days) as of ``now``, counted in Python."""
        users = {uid for uid, (created, _) in self.users.items() if created <= now}
        activity = self.activity()
        so_far = sum(1 for uid in users if any(start <= t <= now for t in activity[uid]))
        month = sum(1 for uid in users if any(now - 30 * DAY < t <= now for t in activity[uid]))
        week = sum(1 for uid in users if now - 7 * DAY < self.users[uid][0] <= now)
        return so_far, month, week

    def load(self, dsn: str) -> None:
        """Write the events and (re)create the views, readable by the monitoring role."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"""
                DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
                DROP SCHEMA IF EXISTS {EVENTS} CASCADE;
                CREATE SCHEMA {EVENTS};
                CREATE TABLE {EVENTS}.clock (at timestamptz NOT NULL);
                INSERT INTO {EVENTS}.clock VALUES ('-infinity');
                CREATE TABLE {EVENTS}.users (id bigint, created_at timestamptz,
                                            is_anonymous boolean);
                CREATE TABLE {EVENTS}.sign_ins (user_id bigint, at timestamptz);
                CREATE TABLE {EVENTS}.sessions (id bigint, user_id bigint,
                                               created_at timestamptz);
                CREATE TABLE {EVENTS}.refreshes (session_id bigint, at timestamptz);
                CREATE TABLE {EVENTS}.invocations (at timestamptz);
            """)
            copies: list[tuple[str, Iterable[tuple[object, ...]]]] = [
                ("users (id, created_at, is_anonymous)",
                 ((uid, at(c), anon) for uid, (c, anon) in self.users.items())),
                ("sign_ins (user_id, at)", ((uid, at(w)) for uid, w in self.sign_ins)),
                ("sessions (id, user_id, created_at)",
                 ((sid, uid, at(w)) for sid, (uid, w) in self.sessions.items())),
                ("refreshes (session_id, at)", ((s, at(w)) for s, w in self.refreshes)),
                ("invocations (at)", ((at(w),) for w in self.invocations)),
            ]
            with conn.cursor() as cur:
                for table, rows in copies:
                    with cur.copy(f"COPY {EVENTS}.{table} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            # Supabase's auth.sessions.refreshed_at is a timestamp without time zone, in UTC.
            conn.execute(f"""
                CREATE INDEX ON {EVENTS}.invocations (at);
                ANALYZE {EVENTS}.users, {EVENTS}.sign_ins, {EVENTS}.sessions,
                        {EVENTS}.refreshes, {EVENTS}.invocations;
                CREATE SCHEMA {SCHEMA};
                CREATE VIEW {SCHEMA}.users AS
                    SELECT u.id, u.created_at, s.last AS last_sign_in_at, u.is_anonymous
                    FROM {EVENTS}.users u
                    LEFT JOIN (SELECT user_id, max(at) AS last FROM {EVENTS}.sign_ins
                               WHERE at <= (SELECT at FROM {EVENTS}.clock)
                               GROUP BY user_id) s ON s.user_id = u.id
                    WHERE u.created_at <= (SELECT at FROM {EVENTS}.clock);
                CREATE VIEW {SCHEMA}.sessions AS
                    SELECT s.id, s.user_id, s.created_at,
                           r.last AT TIME ZONE 'UTC' AS refreshed_at
                    FROM {EVENTS}.sessions s
                    LEFT JOIN (SELECT session_id, max(at) AS last FROM {EVENTS}.refreshes
                               WHERE at <= (SELECT at FROM {EVENTS}.clock)
                               GROUP BY session_id) r ON r.session_id = s.id
                    WHERE s.created_at <= (SELECT at FROM {EVENTS}.clock);
                CREATE VIEW {SCHEMA}.logs AS
                    SELECT at AS created_at FROM {EVENTS}.invocations
                    WHERE at <= (SELECT at FROM {EVENTS}.clock);
                GRANT USAGE ON SCHEMA {SCHEMA} TO {MONITOR_ROLE};
                GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {MONITOR_ROLE};
            """)

    @staticmethod
    def set_clock(dsn: str, now: float) -> None:
        """Show the tables as they were at ``now``."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {EVENTS}.clock SET at = %s", (at(now),))

    @staticmethod
    def drop(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; "
                         f"DROP SCHEMA IF EXISTS {EVENTS} CASCADE")


def steady_app(start: float, end: float, users: int = 40_000,
               invocations_per_day: int = 1000) -> SyntheticApp:
    """Regular users, all active last cycle and again in this one within its first 4 days:
    half sign in again, half only refresh the token of last cycle's session (their app keeps
    them signed in); every tenth user is anonymous. No new users; steady invocations."""
    app = SyntheticApp()
    for uid in range(1, users + 1):
        app.user(uid, start - 60 * DAY + uid % 1000, anonymous=uid % 10 == 0)
        app.sign_in(uid, start - 20 * DAY + (uid % 24) * HOUR)
        session = len(app.sessions)
        app.refresh(session, start - 3 * DAY + (uid % 24) * HOUR)
        back = start + (uid % 4) * DAY + 6 * HOUR
        if uid % 2:
            app.refresh(session, back)
        else:
            app.sign_in(uid, back)
    days = round((end - start) / DAY)
    step = DAY / invocations_per_day
    app.invocations = [start + d * DAY + (k + 0.5) * step
                       for d in range(days) for k in range(invocations_per_day)]
    return app


def growing_app(start: float, end: float, regulars: int = 800, from_day: int = 5,
                signups_per_day: int = 60) -> SyntheticApp:
    """``regulars`` users active last cycle and in this one's first 4 days, then from
    ``from_day`` on ``signups_per_day`` new users a day, each signing in at signup."""
    app = SyntheticApp()
    for uid in range(1, regulars + 1):
        app.user(uid, start - 60 * DAY)
        app.sign_in(uid, start - 15 * DAY + (uid % 24) * HOUR)
        app.sign_in(uid, start + (uid % 4) * DAY + 6 * HOUR)
    uid = regulars
    for day in range(from_day, round((end - start) / DAY)):
        for k in range(signups_per_day):
            uid += 1
            when = start + day * DAY + (k + 0.5) * DAY / signups_per_day
            app.user(uid, when)
            app.sign_in(uid, when)
    return app


def evaluation_times(start: float, end: float) -> list[float]:
    """One instant per day of the cycle: a minute before the day ends."""
    days = round((end - start) / DAY)
    return [start + (d + 1) * DAY - 60 for d in range(days)]


def run_cycle(dsn: str, app: SyntheticApp, start: float, end: float,
              collect: Callable[[float], dict[str, float]]) -> list[tuple[float, dict[str, float]]]:
    """Load ``app`` and collect once a day; [(when, {metric: value})]."""
    app.load(dsn)
    out = []
    for now in evaluation_times(start, end):
        SyntheticApp.set_clock(dsn, now)
        out.append((now, collect(now)))
    return out


def _main() -> None:  # pragma: no cover - a figures script, run by hand
    import argparse
    import importlib.util
    import sys

    from piggywatch.demo.cluster import DEMO_DATABASE, ThrowawayCluster
    from tests.clock import frozen_now

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cost-module", help="a cost.py to load instead of the package "
                        "(e.g. the version before issue 17, from git show)")
    parser.add_argument("--spend-cap", action="store_true", help="with the spend cap on")
    args = parser.parse_args()
    old = args.cost_module is not None
    if old:
        spec = importlib.util.spec_from_file_location("old_cost", args.cost_module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_cost"] = module
        spec.loader.exec_module(module)
    else:
        import piggywatch.collectors.cost as module
    from piggywatch.collectors.postgres.target import PostgresTarget

    now = frozen_now()
    anchor = min(now.day, 28) if old else now.day
    start, end = module.billing_cycle(now.timestamp(), anchor)
    cluster = ThrowawayCluster(max_connections=20)
    cluster.start()
    try:
        cluster.bootstrap_demo()
        dsn = cluster.dsn(DEMO_DATABASE)
        target = PostgresTarget("main", cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE))
        users = {"table": f"{SCHEMA}.users"}
        fields: dict[str, object] = {
            "target": "main", "monthly_budget_dollars": 50.0, "billing_cycle_day": anchor,
            "users": users, "invocations": {"table": f"{SCHEMA}.logs"},
            "assumed_usage": {"egress_gb_per_month": 200, "file_storage_gb": 20}}
        if not old:
            fields |= {"sessions": {"table": f"{SCHEMA}.sessions"},
                       "spend_cap": args.spend_cap, "addons_dollars_per_month": 4,
                       "assumed_usage": {"egress_gb_per_month": 200, "file_storage_gb": 20,
                                         "cached_egress_gb_per_month": 300}}
        collector = module.CostCollector(target, module.CostConfig.model_validate(fields))

        def collect(at: float) -> dict[str, float]:
            out = {}
            for s in collector.collect(at):
                labels = dict(s.labels)
                out[f"{s.name}{{{labels['item']}}}" if "item" in labels else s.name] = s.value
            return out

        print(f"cycle {at(start):%Y-%m-%d} .. {at(end):%Y-%m-%d}, "
              f"{'before' if old else 'after'}, steady app of 40,000 users, budget $50, "
              f"spend cap {'n/a' if old else args.spend_cap}")
        for when, got in run_cycle(dsn, steady_app(start, end), start, end, collect):
            day = int((when - start) // DAY) + 1
            print(f"day {day:2}: MAU so far {got.get('cost_usage_mau', 0):6.0f}  "
                  f"projected ${got['cost_projected_month_dollars']:8.2f} "
                  f"(mau ${got.get('cost_projected_item_dollars{mau}', 0):7.2f})  "
                  f"month to date ${got['cost_month_to_date_dollars']:7.2f}  "
                  f"ratio {got['cost_budget_ratio']:.2f}")
            if day in (2, round((end - start) / DAY)):
                print("        projected items:", {k[28:-1]: round(v, 2) for k, v in got.items()
                                                    if k.startswith("cost_projected_item")})
                print("        disk bytes", got["cost_usage_disk_bytes"], "quota ratios:",
                      {k[17:-1]: round(v, 3) for k, v in got.items()
                       if k.startswith("cost_quota_ratio")})
        target.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":  # pragma: no cover
    _main()
