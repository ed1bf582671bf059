"""Custom SQL metrics against a real PostgreSQL: exact values, errors named, isolation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.custom_sql import (
    CustomQueryConfig,
    CustomSqlCollector,
    custom_sql_collectors,
)
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_file import ConfigError, parse_settings
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.jobs import CollectorJob
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.store import MemoryStore, MetricKind, Sample


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


def test_a_failing_query_is_named_and_other_queries_still_run(
        target: PostgresTarget) -> None:
    broken, good = custom_sql_collectors(target, [
        query(name="broken", sql="SELECT count(*) AS n FROM pw_no_such_table",
              value_columns=["n"]),
        query(name="relations", sql="SELECT 5 AS n", value_columns=["n"]),
        query(name="elsewhere", target="replica", sql="SELECT 1 AS n", value_columns=["n"]),
    ])

    with pytest.raises(CollectorError) as caught:
        broken.collect(1.0)
    assert caught.value.reason == "query"
    assert str(caught.value).startswith("custom query 'broken': ")
    assert 'relation "pw_no_such_table" does not exist' in str(caught.value)
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


def test_a_data_modifying_with_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="holds a data-modifying INSERT"):
        query(name="sneaky", value_columns=["n"],
              sql="WITH w AS (INSERT INTO pw_nowhere VALUES (1) RETURNING 1) SELECT 1 AS n "
                  "FROM w")


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


# --- exactly one read-only statement ----------------------------------------------------

CONFIG = """\
targets:
  - name: main
    dsn: postgresql://piggywatch@127.0.0.1/piggybong
sources:
  custom_sql:
    - name: fine
      target: main
      sql: SELECT 1 AS n
      value_columns: [n]
    - name: sneaky
      target: main
      value_columns: [n]
      sql: |
        SELECT 1 AS n
        FROM pg_class LIMIT 1; DROP TABLE x
"""


def test_more_than_one_statement_is_refused_at_load_with_file_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(CONFIG, "piggywatch.yaml", {})
    [problem] = caught.value.problems
    assert str(problem) == (
        "piggywatch.yaml:13: sources.custom_sql[1].sql: holds 2 statements (the second "
        "begins at line 2 of the query, column 24: 'DROP TABLE x'); custom SQL must be "
        "exactly one SELECT: remove the others")


@pytest.mark.parametrize("text", [
    # Quoting that a naive splitter gets wrong, each still one statement.
    "SELECT ';' AS n",
    "SELECT E'it\\'s; DROP TABLE x' AS n",
    "SELECT $$;$$ AS n, $tag$ $$ ; $tag$ AS m",
    "SELECT 1 AS n /* a /* nested ; */ comment ; */",
    'SELECT 1 AS "a;b" -- ; DROP TABLE x',
    "SELECT 1 AS n;",
])
def test_one_statement_with_tricky_quoting_is_accepted(text: str) -> None:
    assert query(name="q", sql=text, value_columns=["n"]).sql_text == text


@pytest.mark.parametrize(("text", "message"), [
    # With standard_conforming_strings (the default since 9.1) a backslash does not escape:
    # this is two statements, though a splitter that honours \' sees one.
    ("SELECT 'a\\'; DROP TABLE x; --' AS n", "2 statements"),
    ("SELECT 1 AS n; SELECT 2 AS n", "2 statements"),
    ("DELETE FROM orders RETURNING 1 AS n", "not a SELECT"),
    ("SELECT 1 AS n INTO new_table", "SELECT INTO"),
    ("-- nothing but a comment", "no statement"),
    ("SELEC 1 AS n", "syntax error"),
])
def test_what_is_not_one_select_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        query(name="q", sql=text, value_columns=["n"])


@pytest.fixture
def guarded_table(pg_cluster: ThrowawayCluster) -> Iterator[psycopg.Connection[Any]]:
    """A table the monitoring role may write to, and a VOLATILE function that writes it:
    only the read-only transaction stands between a custom query and a write."""
    with psycopg.connect(pg_cluster.dsn(dbname=DEMO_DATABASE), autocommit=True) as admin:
        admin.execute("CREATE TABLE pw_guarded (n int)")
        admin.execute("CREATE FUNCTION pw_write() RETURNS int VOLATILE LANGUAGE sql "
                      "AS 'INSERT INTO pw_guarded VALUES (1) RETURNING n'")
        admin.execute(f"GRANT INSERT, SELECT ON pw_guarded TO {MONITOR_ROLE}")
        try:
            yield admin
        finally:
            admin.execute("DROP FUNCTION pw_write()")
            admin.execute("DROP TABLE pw_guarded")


def test_a_query_that_turns_off_read_only_cannot_open_the_connection_to_writes(
        target: PostgresTarget, guarded_table: psycopg.Connection[Any]) -> None:
    opener, writer = custom_sql_collectors(target, [
        query(name="opener", value_columns=["n"], sql=(
            "SELECT length(set_config('default_transaction_read_only', 'off', false)) AS n")),
        query(name="writer", value_columns=["n"], sql="SELECT pw_write() AS n"),
    ])
    store = MemoryStore()
    self_metrics = SelfMetrics(store)
    jobs = [CollectorJob("main", target, c, 60.0, store, self_metrics)
            for c in (opener, writer)]
    for job in jobs:
        store.register(job.collector.specs())
        job.run()  # never raises: a failure is counted

    assert guarded_table.execute("SELECT count(*) FROM pw_guarded").fetchone() == (0,)
    errors = {dict(s.labels)["collector"]: (dict(s.labels)["reason"], s.value)
              for spec, samples in store.current()
              if spec.name == "piggywatch_collector_errors_total" for s in samples}
    assert errors == {"custom_sql:writer": ("query", 1.0)}
    with pytest.raises(CollectorError,
                       match="custom query 'writer': cannot execute INSERT in a read-only "
                             "transaction"):
        writer.collect(2.0)
    # The built-in collectors' queries run read-only too, and the connection still works.
    with target.session(5.0) as db:
        assert db.fetch("SELECT current_setting('transaction_read_only')") == [("on",)]
    assert guarded_table.execute("SELECT count(*) FROM pw_guarded").fetchone() == (0,)


def test_queries_use_the_extended_protocol(target: PostgresTarget,
                                           pg_cluster: ThrowawayCluster) -> None:
    # The simple query protocol runs every statement of a string; the extended one refuses
    # a second statement outright. Even text that slipped past the load-time check (here
    # passed to the session directly) cannot run two statements.
    with target.session(5.0) as db, pytest.raises(CollectorError,
                                                   match="multiple commands"):
        db.fetch("SELECT 1; SELECT 2")
