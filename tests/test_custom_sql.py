"""Custom SQL metrics against a real PostgreSQL: exact values, errors named, isolation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.custom_sql import (
    CustomQueryConfig,
    CustomSqlCollector,
    custom_sql_collectors,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.store import MetricKind, Sample


def query(**fields: Any) -> CustomQueryConfig:
    return CustomQueryConfig.model_validate({"target": "main", **fields})


def values(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in samples}


ORDERS = """
SELECT * FROM (VALUES ('pending', 'eu', 3, 12.5::numeric),
                      ('paid', 'us', 7, NULL),
                      ('paid', 'eu', 2, 40)) AS t(status, region, n, amount)  -- a trailing comment
"""


def test_value_columns_export_exact_values_with_stringified_labels(
        target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(
        name="app_orders", help="Orders by status", sql=ORDERS,
        value_columns=["n", "amount"], label_columns=["status", "region"]))

    samples = collector.collect(1000.0)

    assert values(samples) == {
        ("app_orders_n", (("region", "eu"), ("status", "pending"))): 3.0,
        ("app_orders_n", (("region", "us"), ("status", "paid"))): 7.0,
        ("app_orders_n", (("region", "eu"), ("status", "paid"))): 2.0,
        ("app_orders_amount", (("region", "eu"), ("status", "pending"))): 12.5,
        # the NULL amount of ('paid', 'us') is skipped, not exported as 0
        ("app_orders_amount", (("region", "eu"), ("status", "paid"))): 40.0,
    }
    assert {s.timestamp for s in samples} == {1000.0}
    assert [(s.name, s.kind, s.help) for s in collector.specs()] == [
        ("app_orders_n", MetricKind.GAUGE, "Orders by status"),
        ("app_orders_amount", MetricKind.GAUGE, "Orders by status")]


def test_metrics_list_sets_names_kinds_and_help(target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(
        name="app", sql="SELECT 42::bigint AS signups, true AS flag, 7 AS day;",
        metrics=[{"name": "signups_total", "kind": "counter", "help": "Signups",
                  "value_column": "signups"},
                 {"name": "maintenance", "value_column": "flag"}],
        label_columns=["day"]))

    assert values(collector.collect(5.0)) == {
        ("app_signups_total", (("day", "7"),)): 42.0,
        ("app_maintenance", (("day", "7"),)): 1.0,
    }
    assert [(s.name, s.kind) for s in collector.specs()] == [
        ("app_signups_total", MetricKind.COUNTER), ("app_maintenance", MetricKind.GAUGE)]


def test_syntax_error_names_the_query_and_other_queries_still_run(
        target: PostgresTarget) -> None:
    broken, good = custom_sql_collectors(target, [
        query(name="broken", sql="SELECT count(*) AS n FROMM pg_class", value_columns=["n"]),
        query(name="relations", sql="SELECT 5 AS n", value_columns=["n"]),
        query(name="elsewhere", target="replica", sql="SELECT 1 AS n", value_columns=["n"]),
    ])

    with pytest.raises(CollectorError) as caught:
        broken.collect(1.0)
    assert caught.value.reason == "query"
    assert str(caught.value).startswith("custom query 'broken': ")
    assert 'syntax error at or near "FROMM"' in str(caught.value)
    assert values(good.collect(2.0)) == {("relations_n", ()): 5.0}
    assert broken.name == "custom_sql:broken"


def test_a_missing_column_is_named_by_the_database(target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(name="q", sql="SELECT 1 AS n",
                                                 value_columns=["count"]))
    with pytest.raises(CollectorError, match=r"custom query 'q': .*column .*count.* does not"):
        collector.collect(1.0)


def test_a_text_value_column_is_a_clear_error(target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(name="q", sql="SELECT 'abc' AS n",
                                                 value_columns=["n"]))
    with pytest.raises(CollectorError) as caught:
        collector.collect(1.0)
    assert caught.value.reason == "query"
    assert "custom query 'q': value column 'n' is str ('abc'), not a number" in str(caught.value)


def test_writes_are_refused_by_the_read_only_transaction(target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(
        name="sneaky", value_columns=["n"],
        sql="WITH w AS (INSERT INTO pw_nowhere VALUES (1) RETURNING 1) SELECT 1 AS n FROM w"))
    with pytest.raises(CollectorError, match="custom query 'sneaky'"):
        collector.collect(1.0)
    # CREATE TABLE would also be refused; the point is nothing was written.
    ok = CustomSqlCollector(target, query(name="ok", sql="SELECT 1 AS n", value_columns=["n"]))
    assert values(ok.collect(1.0)) == {("ok_n", ()): 1.0}


def test_the_query_timeout_bounds_the_statement(target: PostgresTarget) -> None:
    collector = CustomSqlCollector(target, query(
        name="slow", sql="SELECT 1 AS n FROM pg_sleep(3)", value_columns=["n"], timeout="500ms"))
    with pytest.raises(CollectorError) as caught:
        collector.collect(1.0)
    assert caught.value.reason == "timeout"
    assert str(caught.value).startswith("custom query 'slow': ")


@pytest.mark.parametrize(("fields", "message"), [
    ({"value_columns": ["n"], "metrics": [{"name": "x", "value_column": "n"}]}, "exactly one"),
    ({}, "exactly one"),
    ({"value_columns": ["n"], "label_columns": ["target"]}, "set by PiggyWatch"),
    ({"value_columns": ["n"], "label_columns": ["n"]}, "both a value and a label"),
    ({"value_columns": ["n"], "label_columns": ["bad-name"]}, "not a valid label name"),
    ({"value_columns": ["n"], "unknown": 1}, "Extra inputs"),
])
def test_config_mistakes_are_explained(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        query(name="q", sql="SELECT 1 AS n", **fields)
