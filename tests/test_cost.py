"""CostCollector: the price model, and usage from a real PostgreSQL priced against a budget."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from piggywatch.collectors.cost import (
    GB,
    CostCollector,
    CostConfig,
    CostModel,
    InvocationsTable,
    Usage,
    UsersTable,
    billing_cycle,
    estimate,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.rules.alerts import AlertEvent
from piggywatch.rules.manager import RuleManager
from piggywatch.store import MemoryStore, Sample, labels_of

SCHEMA = "pw_cost"
RULES = Path(__file__).resolve().parent.parent / "rules" / "business.yaml"
DAY = 86400.0


def test_defaults_are_the_supabase_pro_price_list() -> None:
    model = CostModel()
    assert model.plan_dollars_per_month == 25.0
    assert (model.disk_included_gb, model.disk_dollars_per_gb_month) == (8.0, 0.125)
    assert (model.file_storage_included_gb, model.file_storage_dollars_per_gb_month) == (
        100.0, 0.021)
    assert (model.egress_included_gb, model.egress_dollars_per_gb) == (250.0, 0.09)
    assert (model.invocations_included, model.invocations_dollars_per_million) == (
        2_000_000, 2.0)
    assert (model.mau_included, model.mau_dollars_each) == (100_000, 0.00325)


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


def test_within_the_pro_quotas_the_bill_is_the_plan() -> None:
    usage = Usage(disk_bytes=2 * GB, mau=50_000, invocations=1_000_000)
    cost = estimate(CostModel(), usage, 0.5, disk_quota_gb=8)
    assert cost.month_to_date_total == 25.0
    assert cost.projected_total == 25.0


def test_overages_are_priced_so_far_and_projected_linearly() -> None:
    # Half the cycle gone: 60,000 MAU so far projects to 120,000, 20,000 over the quota;
    # 1.5 M invocations project to 3 M, one package of a million over; a 12 GB disk is
    # 4 GB over for the whole cycle, half of it billed so far.
    usage = Usage(disk_bytes=12 * GB, mau=60_000, invocations=1_500_000,
                  file_storage_gb=200, egress_gb=200)
    cost = estimate(CostModel(), usage, 0.5, disk_quota_gb=8)
    assert cost.projected == pytest.approx({
        "plan": 25.0, "compute": 0.0, "disk": 4 * 0.125, "file_storage": 100 * 0.021,
        "egress": 150 * 0.09, "invocations": 2.0, "mau": 20_000 * 0.00325})
    assert cost.month_to_date == pytest.approx({
        "plan": 25.0, "compute": 0.0, "disk": 2 * 0.125, "file_storage": 50 * 0.021,
        "egress": 0.0, "invocations": 0.0, "mau": 0.0})


def test_invocations_are_billed_in_whole_millions() -> None:
    model = CostModel(invocations_included=0)
    def bill(n: float) -> float:
        return estimate(model, Usage(0, 0, n), 1.0, 8).projected["invocations"]
    assert [bill(n) for n in (999_999, 1_000_000, 1_000_001, 1_500_000)] == [2, 2, 4, 4]


def test_billing_cycle_starts_on_its_day() -> None:
    at = datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp()
    assert billing_cycle(at, 15) == (datetime(2025, 12, 15, tzinfo=UTC).timestamp(),
                                     datetime(2026, 1, 15, tzinfo=UTC).timestamp())
    assert billing_cycle(at, 1) == (datetime(2026, 1, 1, tzinfo=UTC).timestamp(),
                                    datetime(2026, 2, 1, tzinfo=UTC).timestamp())


# --- against the database --------------------------------------------------------------

@pytest.fixture(scope="module")
def app_dsn(pg_cluster: ThrowawayCluster) -> Iterator[str]:
    """A schema with 4 users signed in this cycle (one 40 days ago) and 3 invocations."""
    dsn = pg_cluster.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
            CREATE SCHEMA {SCHEMA};
            CREATE TABLE {SCHEMA}.users (id serial, last_sign_in_at timestamptz);
            INSERT INTO {SCHEMA}.users (last_sign_in_at) VALUES
                (now() - interval '1 minute'), (now() - interval '2 minutes'),
                (now() - interval '3 minutes'), (now() - interval '4 minutes'),
                (now() - interval '40 days'), (NULL);
            CREATE TABLE {SCHEMA}.logs (id serial, created_at timestamptz);
            INSERT INTO {SCHEMA}.logs (created_at) VALUES
                (now() - interval '1 minute'), (now() - interval '2 minutes'),
                (now() - interval '3 minutes'), (now() - interval '40 days');
            CREATE TABLE {SCHEMA}.filler (payload text);
            GRANT USAGE ON SCHEMA {SCHEMA} TO {MONITOR_ROLE};
            GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {MONITOR_ROLE};
        """)
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
    """$25 plan, $1 per MAU from the first, $2 per million invocations, a $35 budget."""
    fields: dict[str, object] = {
        "target": "main", "monthly_budget_dollars": 35.0,
        "model": {"mau_included": 0, "mau_dollars_each": 1.0, "invocations_included": 0,
                  "disk_included_gb": 1000},
        "users": UsersTable(table=f"{SCHEMA}.users"),
        "invocations": InvocationsTable(table=f"{SCHEMA}.logs"),
        "disk_quota_gb": 1000,
    }
    fields.update(overrides)
    return CostConfig.model_validate(fields)


def mid_cycle() -> float:
    """Half a month into the current cycle, so the projection doubles-ish the usage."""
    start, _ = billing_cycle(time.time(), 1)
    return start + 15 * DAY


def values(samples: list[Sample]) -> dict[str, float]:
    out = {}
    for s in samples:
        labels = dict(s.labels)
        out[f"{s.name}{{{labels['item']}}}" if "item" in labels else s.name] = s.value
    return out


def test_synthetic_usage_gives_the_expected_figures(target: PostgresTarget) -> None:
    now = mid_cycle()
    start, end = billing_cycle(now, 1)
    f = 15 * DAY / (end - start)
    got = values(CostCollector(target, small_budget()).collect(now))
    assert got["cost_usage_mau"] == 4
    assert got["cost_usage_function_invocations"] == 3
    assert got["cost_billing_cycle_elapsed_ratio"] == pytest.approx(f)
    # 4 MAU so far project to 4 / f (about 8) at $1 each; 3 invocations project to one
    # package of a million, $2.
    projected = 25.0 + 4 / f + 2.0
    assert got["cost_projected_month_dollars"] == pytest.approx(projected)
    assert got["cost_projected_item_dollars{mau}"] == pytest.approx(4 / f)
    assert got["cost_month_to_date_dollars"] == pytest.approx(25.0 + 4 + 2.0)
    assert got["cost_budget_ratio"] == pytest.approx(projected / 35.0)
    # Four users signed in within the last 30 days.
    assert got["cost_per_active_user_dollars"] == pytest.approx(projected / 4)
    assert got["cost_disk_quota_ratio"] == pytest.approx(
        got["cost_usage_disk_bytes"] / (1000 * GB))
    # One reading: no growth yet, so no runway.
    assert "cost_storage_growth_bytes_per_day" not in got
    assert "cost_disk_read_only_eta_seconds" not in got


def test_storage_growth_and_read_only_eta_from_two_readings(
        pg_cluster: ThrowawayCluster, target: PostgresTarget) -> None:
    # A 1 GB provisioned disk, so the runway is finite.
    collector = CostCollector(target, small_budget(disk_quota_gb=1))
    first = values(collector.collect(1000.0))
    with psycopg.connect(pg_cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {SCHEMA}.filler "
                     "SELECT repeat(md5(g::text), 10) FROM generate_series(1, 20000) g")
    second = values(collector.collect(1000.0 + 3600))
    grown = second["cost_usage_disk_bytes"] - first["cost_usage_disk_bytes"]
    assert grown > 0
    assert second["cost_storage_growth_bytes_per_day"] == pytest.approx(grown * 24)
    left = 0.95 * GB - second["cost_usage_disk_bytes"]
    assert second["cost_disk_read_only_eta_seconds"] == pytest.approx(
        left / (grown * 24) * DAY)


def test_small_budget_fires_the_80_percent_alert(target: PostgresTarget) -> None:
    now = mid_cycle()
    samples = CostCollector(target, small_budget()).collect(now)
    ratio = values(samples)["cost_budget_ratio"]
    assert 0.8 < ratio <= 1.0

    store = MemoryStore()
    store.register(CostCollector(target, small_budget()).specs())
    events: list[AlertEvent] = []
    clock = [now]
    manager = RuleManager(store, store, events.append, clock=lambda: clock[0])
    assert manager.load([RULES]) == []
    # The daemon labels a target's samples with it; do the same here.
    labelled = [Sample(s.name, labels_of(dict(s.labels), target="main"), s.value, s.timestamp)
                for s in samples]
    for minute in range(0, 32):
        at = now + minute * 60
        clock[0] = at
        store.publish("main/cost", [Sample(s.name, s.labels, s.value, at) for s in labelled],
                      at)
        manager.evaluate_group("business-cost", at)
    firing = [e for e in events if e.kind.value == "firing"]
    assert [e.rule for e in firing] == ["SpendOverBudgetForecast80"]
    alert = firing[0].alert
    assert dict(alert.labels)["severity"] == "medium"
    assert dict(alert.labels)["target"] == "main"
    projected = values(samples)["cost_projected_month_dollars"]
    assert f"projected at ${projected:.2f}" in dict(alert.annotations)["description"]
    assert math.isclose(alert.value, ratio)
