"""CostCollector: Supabase's billing rules, and usage from a real PostgreSQL priced on a fixed
clock (``tests/clock.py``): every row is stamped from that clock, never from now()."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from piggywatch.cli import main as cli_main
from piggywatch.collectors.cost import (
    CAPPED_ITEMS,
    GB,
    PRICES_CHECKED,
    SPECS,
    SUPABASE_PRO,
    Billing,
    CostCollector,
    CostConfig,
    CostModel,
    DiskRules,
    InvocationsTable,
    ProvisionedDisk,
    SessionsTable,
    Usage,
    UsersTable,
    billing_cycle,
    estimate,
    project_mau,
    read_only_eta,
    stale_prices_warning,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.rules.alerts import AlertEvent
from piggywatch.rules.manager import RuleManager
from piggywatch.store import MemoryStore, Sample, labels_of
from tests import cost_cycle
from tests.clock import frozen_now

SCHEMA = "pw_cost"
ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "business.yaml"
DAY = 86400.0
NOW = frozen_now()


def usage(**fields: float) -> Usage:
    """Usage within every Pro quota, with ``fields`` changed."""
    base: dict[str, float] = {"disk_bytes": 2 * GB, "disk_provisioned_gb": 8, "mau": 0,
                              "mau_projected": 0, "invocations": 0}
    return Usage(**(base | fields))


UNCAPPED = Billing(spend_cap=False)


# --- the price table -------------------------------------------------------------------

def test_defaults_are_the_supabase_pro_price_table_with_sources() -> None:
    model = CostModel()
    assert set(CostModel.model_fields) == set(SUPABASE_PRO)
    for name, fact in SUPABASE_PRO.items():
        assert getattr(model, name) == fact.value, name
        assert fact.doc and fact.unit and fact.what, name
    assert (model.egress_included_gb, model.egress_dollars_per_gb) == (250.0, 0.09)
    assert (model.cached_egress_included_gb, model.cached_egress_dollars_per_gb) == (
        250.0, 0.03)
    assert (model.disk_autoscale_at_ratio, model.disk_autoscale_growth_ratio,
            model.disk_read_only_at_ratio, model.disk_changes_per_day) == (0.9, 0.5, 0.95, 4)
    assert date.today() + timedelta(days=1) >= PRICES_CHECKED


def test_every_price_is_overridable_from_config() -> None:
    config = CostConfig.model_validate({
        "target": "main", "monthly_budget_dollars": 100,
        "model": {"plan_dollars_per_month": 599, "mau_dollars_each": 0.01}})
    assert config.model.plan_dollars_per_month == 599
    assert config.model.mau_dollars_each == 0.01
    assert config.model.disk_dollars_per_gb_month == 0.125
    with pytest.raises(ValueError, match="extra"):
        CostConfig.model_validate({"target": "main", "monthly_budget_dollars": 1,
                                   "model": {"plan_price": 1}})


def test_a_price_table_older_than_six_months_is_a_warning() -> None:
    checked = date(2026, 12, 6)
    assert stale_prices_warning(date(2027, 6, 6), checked) is None
    warning = stale_prices_warning(date(2027, 6, 7), checked)
    assert warning is not None and "2026-12-06" in warning and "sources.cost" in warning
    # Six months after August 31st is the last day of February.
    assert stale_prices_warning(date(2027, 2, 28), date(2026, 8, 31)) is None
    assert stale_prices_warning(date(2027, 3, 1), date(2026, 8, 31)) is not None


def test_check_prints_the_stale_price_warning_for_a_cost_source(tmp_path: Path) -> None:
    config = tmp_path / "piggywatch.yaml"
    config.write_text("targets: [{name: main, dsn: 'postgresql://u@127.0.0.1:1/db'}]\n"
                      "sources: {cost: [{target: main, monthly_budget_dollars: 50}]}\n"
                      "rule_files: []\n")
    result = CliRunner().invoke(cli_main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    expected = stale_prices_warning(datetime.now(UTC).date())
    if expected is None:
        assert "price table" not in result.output
    else:
        assert f": {expected}" in result.output and "warning: " in result.output


# --- pricing -----------------------------------------------------------------------------

def test_within_the_pro_quotas_the_bill_is_the_plan() -> None:
    # The Micro compute of one project is covered by the organization's $10 credit.
    cost = estimate(CostModel(), usage(mau=50_000, mau_projected=90_000,
                                       invocations=1_000_000), 0.5, UNCAPPED)
    assert cost.month_to_date_total == 25.0
    assert cost.projected_total == 25.0


def test_overages_are_priced_so_far_and_projected() -> None:
    # Half the cycle gone: 1.5 M invocations project to 3 M, one package of a million over;
    # 200 GB of egress each way project to 400 GB, 150 GB over; a 12 GB disk is 4 GB over
    # for the whole cycle, half of it billed so far; MAU as projected (120,000).
    cost = estimate(CostModel(), usage(
        disk_bytes=11 * GB, disk_provisioned_gb=12, mau=60_000, mau_projected=120_000,
        invocations=1_500_000, file_storage_gb=200, egress_gb=200, cached_egress_gb=200),
        0.5, UNCAPPED)
    assert cost.projected == pytest.approx({
        "plan": 25.0, "compute": 0.0, "addons": 0.0, "disk": 4 * 0.125,
        "file_storage": 100 * 0.021, "egress": 150 * 0.09, "cached_egress": 150 * 0.03,
        "invocations": 2.0, "mau": 20_000 * 0.00325})
    assert cost.month_to_date == pytest.approx({
        "plan": 25.0, "compute": 0.0, "addons": 0.0, "disk": 2 * 0.125,
        "file_storage": 50 * 0.021, "egress": 0.0, "cached_egress": 0.0,
        "invocations": 0.0, "mau": 0.0})


def test_invocations_are_billed_in_whole_millions() -> None:
    model = CostModel(invocations_included=0)

    def bill(n: float) -> float:
        return estimate(model, usage(invocations=n), 1.0, UNCAPPED).projected["invocations"]
    assert [bill(n) for n in (999_999, 1_000_000, 1_000_001, 1_500_000)] == [2, 2, 4, 4]


def test_mau_early_in_a_cycle_is_not_divided_by_the_elapsed_share() -> None:
    """The issue's case: 20,000 distinct users by day 2 of 31, 40,000 in the last 30 days.
    Divided by the elapsed share they would be 310,000 MAU ($682.50 over the quota)."""
    projected = project_mau(so_far=20_000, active_30d=40_000, signups_7d=0, days_left=29)
    assert projected == 40_000
    cost = estimate(CostModel(), usage(mau=20_000, mau_projected=projected), 2 / 31,
                    UNCAPPED)
    assert cost.projected["mau"] == 0.0
    linear = 20_000 / (2 / 31)
    assert (linear - 100_000) * 0.00325 == pytest.approx(682.5)
    # Signups keep coming at the last week's pace until the cycle ends.
    assert project_mau(20_000, 40_000, signups_7d=700, days_left=29) == 40_000 + 100 * 29
    # Late in the cycle the users seen so far are the floor.
    assert project_mau(45_000, 40_000, 0, 1) == 45_000


def test_the_spend_cap_bills_no_overage_and_reports_each_quota() -> None:
    over = usage(disk_bytes=9 * GB, disk_provisioned_gb=12, mau=150_000,
                 mau_projected=150_000, invocations=3_000_000, file_storage_gb=150,
                 egress_gb=300, cached_egress_gb=200)
    capped = estimate(CostModel(), over, 0.5, Billing(spend_cap=True,
                                                      addons_dollars_per_month=4))
    uncapped = estimate(CostModel(), over, 0.5, Billing(spend_cap=False,
                                                        addons_dollars_per_month=4))
    for item in CAPPED_ITEMS:
        assert capped.projected[item] == capped.month_to_date[item] == 0.0, item
        assert uncapped.projected[item] > 0, item
    # Add-ons and compute are never capped.
    assert capped.projected["addons"] == uncapped.projected["addons"] == 4
    assert capped.projected_total == 25 + 4
    assert capped.quota_ratio == pytest.approx({
        "disk": 9 / 8, "file_storage": 1.5, "egress": 300 / 250, "cached_egress": 200 / 250,
        "invocations": 1.5, "mau": 1.5})


def test_cached_egress_has_its_own_quota_and_price() -> None:
    # 250 GB of each are included; the cached excess costs a third of the uncached one.
    cost = estimate(CostModel(), usage(egress_gb=300, cached_egress_gb=300), 1.0, UNCAPPED)
    assert cost.projected["egress"] == pytest.approx(50 * 0.09)
    assert cost.projected["cached_egress"] == pytest.approx(50 * 0.03)


def test_compute_accrues_hourly_and_the_credit_applies_once_per_organization() -> None:
    small = CostModel(compute_dollars_per_month=15)    # a Small instance
    first = estimate(small, usage(), 0.5, UNCAPPED)
    assert first.month_to_date["compute"] == pytest.approx(0.0)     # $7.50 - $10 credit
    assert first.projected["compute"] == pytest.approx(5.0)
    late = estimate(small, usage(), 0.9, UNCAPPED)
    assert late.month_to_date["compute"] == pytest.approx(15 * 0.9 - 10)
    # Another project of the same organization: no plan fee, no credit.
    other = estimate(small, usage(), 0.5, Billing(spend_cap=False, organization_fees=False,
                                                  addons_dollars_per_month=6))
    assert other.month_to_date == pytest.approx({
        "plan": 0.0, "compute": 7.5, "addons": 3.0, "disk": 0.0, "file_storage": 0.0,
        "egress": 0.0, "cached_egress": 0.0, "invocations": 0.0, "mau": 0.0})
    assert other.projected_total == pytest.approx(15 + 6)


# --- billing cycles ----------------------------------------------------------------------

def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_billing_cycle_starts_on_its_day() -> None:
    at = utc(2026, 1, 10, 12)
    assert billing_cycle(at, 15) == (utc(2025, 12, 15), utc(2026, 1, 15))
    assert billing_cycle(at, 1) == (utc(2026, 1, 1), utc(2026, 2, 1))


def test_a_cycle_anchored_on_the_31st_starts_on_the_last_day_of_short_months() -> None:
    assert billing_cycle(utc(2027, 2, 10), 31) == (utc(2027, 1, 31), utc(2027, 2, 28))
    assert billing_cycle(utc(2027, 2, 28, 0, 0, 1), 31) == (utc(2027, 2, 28), utc(2027, 3, 31))
    assert billing_cycle(utc(2028, 2, 29, 12), 31) == (utc(2028, 2, 29), utc(2028, 3, 31))
    assert billing_cycle(utc(2027, 4, 30, 23), 31) == (utc(2027, 4, 30), utc(2027, 5, 31))
    assert billing_cycle(utc(2027, 1, 5), 30) == (utc(2026, 12, 30), utc(2027, 1, 30))
    config = CostConfig(target="main", monthly_budget_dollars=1, billing_cycle_day=31)
    assert config.billing_cycle_day == 31
    with pytest.raises(ValueError, match="less than or equal to 31"):
        CostConfig(target="main", monthly_budget_dollars=1, billing_cycle_day=32)


# --- the disk ----------------------------------------------------------------------------

def test_the_disk_grows_by_half_at_90_percent_at_most_four_times_a_day() -> None:
    rules = DiskRules.of(CostModel(), spend_cap=False)
    disk = ProvisionedDisk(8 * GB, rules)
    t0 = NOW.timestamp()
    assert disk.observe(7 * GB, t0) == 8 * GB                       # 87.5 %: no change
    sizes = [disk.observe(0.9 * size, t0 + hour * 3600) for hour, size in enumerate(
        [8 * GB * 1.5 ** k for k in range(6)], start=1)]
    # Four changes within the rolling 24 hours, then none until the first one is a day old.
    assert sizes == [8 * GB * 1.5 ** k for k in (1, 2, 3, 4, 4, 4)]
    assert disk.changes_last_day() == 4
    assert disk.observe(0.9 * sizes[-1], t0 + DAY + 3600) == 8 * GB * 1.5 ** 5
    # With the spend cap the disk stays within the included size.
    capped = ProvisionedDisk(8 * GB, DiskRules.of(CostModel(), spend_cap=True))
    assert capped.observe(7.9 * GB, t0) == 8 * GB


def test_read_only_comes_when_the_autoscaler_cannot_keep_up() -> None:
    t0 = NOW.timestamp()
    capped = DiskRules.of(CostModel(), spend_cap=True)
    # With the cap: 95 % of 8 GB, at 1 GB a day from 6 GB.
    assert read_only_eta(6 * GB, GB / DAY, 8 * GB, [], t0, capped) == pytest.approx(
        (0.95 * 8 - 6) * DAY)
    free = DiskRules.of(CostModel(), spend_cap=False)
    # A slow growth never outruns the autoscaler within a year.
    assert read_only_eta(6 * GB, GB / DAY, 8 * GB, [], t0, free) is None
    # Four changes already made in the last hours: the disk cannot grow before the oldest
    # is a day old; at 10 GB an hour it fills 95 % first.
    changes = [t0 - 4 * 3600 + k * 600 for k in range(4)]
    eta = read_only_eta(6 * GB, 10 * GB / 3600, 8 * GB, changes, t0, free)
    assert eta == pytest.approx((0.95 * 8 - 6) / 10 * 3600)


# --- against the database ----------------------------------------------------------------

def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture(scope="module")
def app_dsn(pg_cluster: ThrowawayCluster) -> Iterator[str]:
    """Users and invocations stamped from the test clock: 4 users active this cycle (one by
    a token refresh only), one 40 days ago, one never; one row after NOW."""
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    start, _ = billing_cycle(NOW.timestamp(), NOW.day)
    # Within the cycle: between its start and NOW, away from both.
    inside = [datetime.fromtimestamp(start + (NOW.timestamp() - start) * k / 5, UTC)
              for k in (1, 2, 3, 4)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
            CREATE SCHEMA {SCHEMA};
            CREATE TABLE {SCHEMA}.users (id bigint, created_at timestamptz,
                                         last_sign_in_at timestamptz);
            CREATE TABLE {SCHEMA}.sessions (user_id bigint, created_at timestamptz,
                                            refreshed_at timestamp);
            CREATE TABLE {SCHEMA}.logs (id serial, created_at timestamptz);
            CREATE TABLE {SCHEMA}.filler (payload text);
            GRANT USAGE ON SCHEMA {SCHEMA} TO {MONITOR_ROLE};
            GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {MONITOR_ROLE};
        """)
        with conn.cursor() as cur:
            old = ago(60)
            cur.executemany(f"INSERT INTO {SCHEMA}.users VALUES (%s, %s, %s)", [
                (1, old, inside[0]), (2, old, inside[1]), (3, old, inside[2]),
                (4, old, ago(40)), (5, old, None), (6, old, ago(41)),
                (7, old, NOW + timedelta(minutes=5))])
            # User 6 stays signed in: a token refresh this cycle, no sign-in.
            cur.execute(f"INSERT INTO {SCHEMA}.sessions VALUES (6, %s, %s)",
                        (ago(41), inside[3].replace(tzinfo=None)))
            cur.executemany(f"INSERT INTO {SCHEMA}.logs (created_at) VALUES (%s)",
                            [(inside[0],), (inside[2],), (inside[3],), (ago(40),),
                             (NOW + timedelta(minutes=1),)])
    try:
        yield dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture
def target(target: PostgresTarget, app_dsn: str) -> PostgresTarget:
    """The monitoring role's target (conftest), once this module's tables exist."""
    return target


def small_budget(**overrides: object) -> CostConfig:
    """$25 plan, $1 per MAU from the first, $2 per million invocations, no spend cap."""
    fields: dict[str, object] = {
        "target": "main", "monthly_budget_dollars": 35.0, "billing_cycle_day": NOW.day,
        "spend_cap": False,
        "model": {"mau_included": 0, "mau_dollars_each": 1.0, "invocations_included": 0,
                  "disk_included_gb": 1000},
        "users": UsersTable(table=f"{SCHEMA}.users"),
        "sessions": SessionsTable(table=f"{SCHEMA}.sessions"),
        "invocations": InvocationsTable(table=f"{SCHEMA}.logs"),
        "disk_quota_gb": 1000,
    }
    fields.update(overrides)
    return CostConfig.model_validate(fields)


def values(samples: list[Sample]) -> dict[str, float]:
    out = {}
    for s in samples:
        labels = dict(s.labels)
        out[f"{s.name}{{{labels['item']}}}" if "item" in labels else s.name] = s.value
    return out


def test_synthetic_usage_gives_the_expected_figures(target: PostgresTarget) -> None:
    now = NOW.timestamp()
    start, end = billing_cycle(now, NOW.day)
    got = values(CostCollector(target, small_budget()).collect(now))
    # Users 1-3 signed in this cycle, user 6 refreshed a token; user 7's sign-in is after
    # NOW. The last 30 days hold the same 4 whatever the day, no signups in the last week.
    assert got["cost_usage_mau"] == 4
    assert got["cost_projected_mau"] == 4
    assert got["cost_usage_function_invocations"] == 3
    assert got["cost_billing_cycle_elapsed_ratio"] == pytest.approx((now - start) / (end - start))
    # 4 MAU at $1 each; 3 invocations project to one package of a million, $2.
    projected = 25.0 + 4 + 2.0
    assert got["cost_projected_month_dollars"] == pytest.approx(projected)
    assert got["cost_projected_item_dollars{mau}"] == 4
    assert got["cost_month_to_date_dollars"] == pytest.approx(25.0 + 4 + 2.0)
    assert got["cost_budget_ratio"] == pytest.approx(projected / 35.0)
    assert got["cost_per_active_user_dollars"] == pytest.approx(projected / 4)
    # Nothing is included in this model, so there is no quota to report.
    assert "cost_quota_ratio{invocations}" not in got and "cost_quota_ratio{mau}" not in got
    assert got["cost_disk_quota_ratio"] == pytest.approx(
        got["cost_usage_disk_bytes"] / (1000 * GB))
    assert got["cost_spend_cap_enabled"] == 0
    # One reading: no growth yet.
    assert "cost_storage_growth_bytes_per_day" not in got


def test_disk_usage_is_the_databases_plus_the_wal(pg_cluster: ThrowawayCluster,
                                                   target: PostgresTarget) -> None:
    def measured() -> float:
        with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
            row = conn.execute("SELECT (SELECT sum(pg_database_size(oid)) FROM pg_database)"
                               " + (SELECT sum(size) FROM pg_ls_waldir())").fetchone()
            assert row is not None
            return float(row[0])
    before = measured()
    got = values(CostCollector(target, small_budget()).collect(NOW.timestamp()))
    after = measured()
    wal_segment = 16 * 1024 ** 2
    assert before - wal_segment <= got["cost_usage_disk_bytes"] <= after + wal_segment
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        row = conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()
        assert row is not None
    assert got["cost_usage_disk_bytes"] > float(row[0])


def test_storage_growth_and_read_only_eta_from_two_readings(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    # A 1 GB disk that the spend cap keeps from growing, so the runway is finite.
    collector = CostCollector(target, small_budget(
        disk_quota_gb=1, spend_cap=True,
        model={"mau_included": 0, "mau_dollars_each": 1.0, "disk_included_gb": 1}))
    t0 = NOW.timestamp()
    first = values(collector.collect(t0))
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {SCHEMA}.filler "
                     "SELECT repeat(md5(g::text), 10) FROM generate_series(1, 20000) g")
    second = values(collector.collect(t0 + 3600))
    grown = second["cost_usage_disk_bytes"] - first["cost_usage_disk_bytes"]
    assert grown > 0
    assert second["cost_storage_growth_bytes_per_day"] == pytest.approx(grown * 24)
    assert second["cost_disk_provisioned_bytes"] == GB
    left = 0.95 * GB - second["cost_usage_disk_bytes"]
    assert second["cost_disk_read_only_eta_seconds"] == pytest.approx(
        left / (grown * 24) * DAY)


Alerts = dict[str, list[tuple[int, str]]]


def alerts_over(samples_at: Callable[[float], list[Sample]], times: list[float],
                groups: tuple[str, ...]) -> Alerts:
    """Evaluate the shipped rules on the samples of each time, held for 30 minutes; for each
    alert, the (index of the time, severity) at which it started firing."""
    store = MemoryStore()
    store.register(SPECS)
    events: list[AlertEvent] = []
    clock = [times[0]]

    def sink(event: AlertEvent) -> None:
        events.append(event)
    manager = RuleManager(store, store, sink, clock=lambda: clock[0])
    assert manager.load([RULES]) == []
    fired: Alerts = {}
    for index, now in enumerate(times):
        # The daemon labels a target's samples with it; do the same here.
        labelled = [Sample(s.name, labels_of(dict(s.labels), target="main"), s.value, now)
                    for s in samples_at(now)]
        for minute in range(0, 31, 5):
            at = now + minute * 60
            clock[0] = at
            store.publish("main/cost", [Sample(s.name, s.labels, s.value, at)
                                        for s in labelled], at)
            for group in groups:
                manager.evaluate_group(group, at)
        for event in events:
            if event.kind.value == "firing":
                fired.setdefault(event.rule, []).append(
                    (index, dict(event.alert.labels)["severity"]))
        events.clear()
    return fired


def test_small_budget_fires_the_80_percent_alert(target: PostgresTarget) -> None:
    now = NOW.timestamp()
    # $1 per MAU from the first: 4 MAU and one package of invocations make $31 of $35.
    config = small_budget()
    samples = CostCollector(target, config).collect(now)
    ratio = values(samples)["cost_budget_ratio"]
    assert 0.8 < ratio <= 1.0
    fired = alerts_over(lambda at: [Sample(s.name, s.labels, s.value, at) for s in samples],
                        [now], ("business-cost",))
    assert fired == {"SpendOverBudgetForecast80": [(0, "medium")]}


# --- a simulated cycle --------------------------------------------------------------------

@pytest.fixture
def simulated(pg_cluster: ThrowawayCluster, target: PostgresTarget) -> Iterator[str]:
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    yield dsn
    cost_cycle.SyntheticApp.drop(dsn)


def cycle_config(**overrides: object) -> CostConfig:
    fields: dict[str, object] = {
        "target": "main", "monthly_budget_dollars": 50.0, "billing_cycle_day": NOW.day,
        "users": {"table": f"{cost_cycle.SCHEMA}.users"},
        "sessions": {"table": f"{cost_cycle.SCHEMA}.sessions"},
        "invocations": {"table": f"{cost_cycle.SCHEMA}.logs"},
        "addons_dollars_per_month": 4.0,
        "assumed_usage": {"egress_gb_per_month": 200, "cached_egress_gb_per_month": 300}}
    return CostConfig.model_validate(fields | overrides)


def run(dsn: str, target: PostgresTarget, app: cost_cycle.SyntheticApp, config: CostConfig,
        groups: tuple[str, ...]) -> tuple[list[float], list[dict[str, float]], Alerts]:
    start, end = billing_cycle(NOW.timestamp(), config.billing_cycle_day)
    collector = CostCollector(target, config)
    times = cost_cycle.evaluation_times(start, end)
    app.load(dsn)
    seen: list[dict[str, float]] = []

    def samples_at(now: float) -> list[Sample]:
        cost_cycle.SyntheticApp.set_clock(dsn, now)
        samples = collector.collect(now)
        seen.append(values(samples))
        return samples
    fired = alerts_over(samples_at, times, groups)
    return times, seen, fired


def test_a_steady_app_under_budget_never_fires_a_forecast_alert(
        simulated: str, target: PostgresTarget) -> None:
    start, end = billing_cycle(NOW.timestamp(), NOW.day)
    app = cost_cycle.steady_app(start, end)
    # No spend cap, so a wrong MAU projection would show in the bill.
    times, seen, fired = run(simulated, target, app, cycle_config(spend_cap=False),
                             ("business-cost",))
    assert fired == {}
    # Every regular user is seen by day 4, half of them by a token refresh only.
    assert [got["cost_usage_mau"] for got in seen[3:]] == [len(app.users)] * len(seen[3:])
    assert seen[1]["cost_usage_mau"] == app.oracle(times[1], start)[0] < len(app.users)
    # The bill: plan, add-ons and 50 GB of cached egress over its quota, every day.
    bill = 25 + 4 + 50 * 0.03
    assert [got["cost_projected_month_dollars"] for got in seen] == pytest.approx(
        [bill] * len(seen))


def test_a_real_overage_fires_on_the_day_the_projection_crosses_80_percent(
        simulated: str, target: PostgresTarget) -> None:
    start, end = billing_cycle(NOW.timestamp(), NOW.day)
    app = cost_cycle.growing_app(start, end)
    model = {"mau_included": 1000, "mau_dollars_each": 0.05}
    config = cycle_config(spend_cap=False, model=model, addons_dollars_per_month=0,
                          assumed_usage={})
    times, seen, fired = run(simulated, target, app, config, ("business-cost",))
    # The expected bill of each day from the events, counted in Python.
    expected = []
    for now in times:
        so_far, month, week = app.oracle(now, start)
        mau = max(so_far, month) + week / 7 * (end - now) / DAY
        expected.append(25 + max(0.0, mau - 1000) * 0.05)
    assert [got["cost_projected_month_dollars"] for got in seen] == pytest.approx(expected)
    crossing = next(day for day, bill in enumerate(expected) if bill / 50 > 0.8)
    assert crossing > 0
    assert fired["SpendOverBudgetForecast80"][0] == (crossing, "medium")
    # The cycle really ends over budget: the forecast was right.
    assert 25 + (app.oracle(end - 1, start)[0] - 1000) * 0.05 > 50


def test_with_the_spend_cap_an_overage_costs_nothing_but_the_quota_alert_fires(
        simulated: str, target: PostgresTarget) -> None:
    start, end = billing_cycle(NOW.timestamp(), NOW.day)
    app = cost_cycle.growing_app(start, end)
    config = cycle_config(spend_cap=True, model={"mau_included": 1000},
                          addons_dollars_per_month=0, assumed_usage={})
    times, seen, fired = run(simulated, target, app, config,
                             ("business-cost", "business-quota"))
    assert [got["cost_projected_item_dollars{mau}"] for got in seen] == [0.0] * len(seen)
    assert "SpendOverBudgetForecast80" not in fired
    ratios = [app.oracle(now, start)[0] / 1000 for now in times]
    assert [got["cost_quota_ratio{mau}"] for got in seen] == pytest.approx(ratios)
    near = next(day for day, ratio in enumerate(ratios) if ratio > 0.8)
    out = next(day for day, ratio in enumerate(ratios) if ratio >= 1)
    assert fired["SupabaseQuotaNearlyExhausted"] == [(near, "medium")]
    assert fired["SupabaseQuotaExhausted"] == [(out, "critical")]


# --- the README's worked example -----------------------------------------------------------

def test_the_readme_worked_example_adds_up() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- cost-example -->")[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| .*? \| \$([0-9.,]+) \|$", section, re.MULTILINE))
    total = re.search(r"projected bill: \*\*\$([0-9.,]+)\*\*", section)
    assert total is not None
    # The example: day 10 of a 30-day cycle, spend cap off, a Small compute ($15), IPv4
    # ($4), 12 GB provisioned disk, 60,000 MAU so far and 110,000 in the last 30 days with
    # 2,100 signups in the last week, 1.2 M invocations, 100 GB uncached and 120 GB cached
    # egress so far.
    f = 10 / 30
    cost = estimate(
        CostModel(compute_dollars_per_month=15),
        Usage(disk_bytes=10 * GB, disk_provisioned_gb=12, mau=60_000,
              mau_projected=project_mau(60_000, 110_000, 2_100, 20), invocations=1_200_000,
              egress_gb=100, cached_egress_gb=120),
        f, Billing(spend_cap=False, addons_dollars_per_month=4))
    figures = {item: float(text.replace(",", "")) for item, text in rows.items()}
    assert figures == pytest.approx({k: round(v, 2) for k, v in cost.projected.items()},
                                    abs=0.005)
    assert float(total.group(1).replace(",", "")) == pytest.approx(
        round(cost.projected_total, 2), abs=0.005)
