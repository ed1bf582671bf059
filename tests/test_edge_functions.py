"""Edge-function telemetry against a real PostgreSQL and a local logs-API server."""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.edge_functions import (
    EdgeFunctionsCollector,
    EdgeFunctionsConfig,
    EdgeStateDB,
    build_edge_functions_collector,
)
from piggywatch.collectors.edge_functions.http_source import HttpEdgeSource, percentile_cont
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.store import Sample
from tests.support.servers._http import Reply
from tests.support.servers.supabase_logs import (
    CURRENT,
    LEGACY,
    LogRow,
    SupabaseLogsApi,
    edge_invocation,
)

_tables = itertools.count()


def values(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric, by labels."""
    return {s.labels: s.value for s in samples if s.name == name}


def total_invocations(samples: list[Sample]) -> float:
    return sum(values(samples, "edge_function_invocations_total").values())


@pytest.fixture
def log_table(pg_cluster: ThrowawayCluster) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """A fresh edge-log table the monitor role may read, and a superuser connection."""
    table = f"edge_logs_test_{next(_tables)}"
    with psycopg.connect(pg_cluster.dsn(dbname="piggybong"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (LIKE edge_functions_logs INCLUDING ALL)")
        conn.execute(f"GRANT SELECT ON {table} TO piggywatch")
        try:
            yield table, conn
        finally:  # the session's demo database keeps only its own tables and grants
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def sql_collector(table: str, target: PostgresTarget, state: Path, *, lateness: str = "2m",
                  top_n: int = 10) -> EdgeFunctionsCollector:
    config = EdgeFunctionsConfig.model_validate({
        "sql": {"target": "main", "table": table}, "lateness": lateness, "window": "5m",
        "top_n": top_n, "buckets": [0.05, 0.1, 0.25, 0.5, 1]})
    return build_edge_functions_collector(config, EdgeStateDB(state), targets={"main": target})


def test_1000_rows_with_30_5xx_give_an_error_ratio_of_exactly_3_percent_and_exact_p95(
        log_table: tuple[str, psycopg.Connection[Any]], target: PostgresTarget,
        tmp_path: Path) -> None:
    table, conn = log_table
    collector = sql_collector(table, target, tmp_path / "state.db")
    assert collector.collect(time.time()) == []
    rng = random.Random(5)
    durations = [round(rng.uniform(5, 900), 2) for _ in range(1000)]
    statuses = [503] * 30 + [404] * 20 + [200] * 950
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (function_name, duration_ms, status_code) "
                        "VALUES ('purchase-checkout', %s, %s)",
                        list(zip(durations, statuses, strict=True)))

    samples = collector.collect(time.time())

    fn = (("function", "purchase-checkout"),)
    assert values(samples, "edge_function_error_ratio") == {fn: 0.03}
    expected_p95 = percentile_cont(sorted(durations), 0.95) / 1000
    assert values(samples, "edge_function_duration_p95_seconds")[fn] == pytest.approx(
        expected_p95, rel=1e-12)
    assert values(samples, "edge_function_duration_p50_seconds")[fn] == pytest.approx(
        percentile_cont(sorted(durations), 0.5) / 1000, rel=1e-12)
    invocations = values(samples, "edge_function_invocations_total")
    assert invocations == {
        (("function", "purchase-checkout"), ("status_class", "2xx")): 950,
        (("function", "purchase-checkout"), ("status_class", "4xx")): 20,
        (("function", "purchase-checkout"), ("status_class", "5xx")): 30,
    }
    buckets = {dict(k)["le"]: v
               for k, v in values(samples, "edge_function_duration_seconds_bucket").items()}
    # le is inclusive, as in Prometheus: a 500.00 ms call is in the 0.5 bucket.
    assert buckets == {str(le): float(sum(d <= le * 1000 for d in durations))
                       for le in (0.05, 0.1, 0.25, 0.5, 1.0)} | {"+Inf": 1000.0}
    assert values(samples, "edge_function_duration_seconds_count") == {fn: 1000}
    assert values(samples, "edge_function_duration_seconds_sum")[fn] == pytest.approx(
        sum(durations) / 1000)


def test_function_labels_are_the_top_n_by_volume_plus_other(
        log_table: tuple[str, psycopg.Connection[Any]], target: PostgresTarget,
        tmp_path: Path) -> None:
    table, conn = log_table
    collector = sql_collector(table, target, tmp_path / "state.db", top_n=2)
    for function, n, status in (("f1", 50, 200), ("f2", 40, 200), ("f3", 30, 500),
                                ("f0", 10, 200)):
        conn.execute(f"INSERT INTO {table} (function_name, duration_ms, status_code) "
                     "SELECT %s, 10, %s FROM generate_series(1, %s)", (function, status, n))
    samples = collector.collect(time.time())
    counts = {dict(k)["function"]: v for k, v in
              values(samples, "edge_function_duration_seconds_count").items()}
    assert counts == {"f1": 50, "f2": 40, "other": 40}
    ratios = {dict(k)["function"]: v for k, v in
              values(samples, "edge_function_error_ratio").items()}
    # 'other' holds f3 (30 calls, all 5xx) and f0 (10 calls): its ratio is of its rows.
    assert ratios == {"f1": 0.0, "f2": 0.0, "other": 0.75}


def test_watermark_survives_restarts_and_counts_late_rows_once(
        log_table: tuple[str, psycopg.Connection[Any]], target: PostgresTarget,
        tmp_path: Path) -> None:
    table, conn = log_table
    state = tmp_path / "state.db"

    def insert(n: int, age: str = "0s") -> None:
        conn.execute(f"INSERT INTO {table} (function_name, duration_ms, status_code, "
                     f"created_at) SELECT 'news-feed', 20, 200, now() - %s::interval "
                     f"FROM generate_series(1, %s)", (age, n))

    first = sql_collector(table, target, state, lateness="2s")
    assert total_invocations(first.collect(time.time())) == 0
    insert(100)
    assert total_invocations(first.collect(time.time())) == 100
    time.sleep(2.2)  # those rows are now past the lateness: settled into the state file
    assert total_invocations(first.collect(time.time())) == 100
    insert(10)
    assert total_invocations(first.collect(time.time())) == 110
    # Out of order: created before the 10 rows already counted, but within the lateness.
    insert(40, "1.5s")

    restarted = sql_collector(table, target, state, lateness="2s")
    assert total_invocations(restarted.collect(time.time())) == 150
    time.sleep(2.2)
    assert total_invocations(restarted.collect(time.time())) == 150
    again = sql_collector(table, target, state, lateness="2s")
    assert total_invocations(again.collect(time.time())) == 150
    # Later than the lateness allows: before the watermark, deliberately not counted.
    insert(5, "1h")
    insert(1)
    assert total_invocations(again.collect(time.time())) == 151


# --- the Management API source ----------------------------------------------------------

def _micros(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1_000_000)


def http_config(api: SupabaseLogsApi, **http: Any) -> EdgeFunctionsConfig:
    return EdgeFunctionsConfig.model_validate({
        "http": {"base_url": api.base_url, "project_ref": api.ref, "access_token": api.token,
                 **http},
        "lateness": "10s", "window": "5m", "timeout": "10s"})


def test_http_source_reads_the_current_logs_endpoint_honouring_429_retry_after(
        tmp_path: Path) -> None:
    now = time.time()
    rng = random.Random(7)
    with SupabaseLogsApi(token="sbp_secret", ref="abcd") as api:
        api.rows = [edge_invocation(i, now - 60 + i * 0.05, "auth-signin",
                                    500 if i < 6 else 200, round(rng.uniform(10, 2000), 1))
                    for i in range(200)]
        # Other sources share the one logs table: only function_edge_logs may be counted.
        api.rows += [LogRow(f"edge-{i}", datetime.fromtimestamp(now - 30, UTC), "edge_logs",
                            "GET | 200", {"response.status_code": "200"}) for i in range(30)]
        api.script(Reply(429, {"message": "ThrottlerException: Too Many Requests"},
                         {"Retry-After": "1"}))
        config = http_config(api, page_size=50, max_window="2m")
        state = EdgeStateDB(tmp_path / "state.db")
        collector = build_edge_functions_collector(config, state)
        started = time.monotonic()
        samples = collector.collect(now)
        assert time.monotonic() - started >= 1.0  # waited as Retry-After asked
        fn = (("function", "auth-signin"),)
        assert values(samples, "edge_function_error_ratio") == {fn: 0.03}
        durations = sorted(float(r.log_attributes["execution_time_ms"]) / 1000
                           for r in api.rows if r.source == "function_edge_logs")
        assert values(samples, "edge_function_duration_p95_seconds")[fn] == pytest.approx(
            percentile_cont(durations, 0.95), rel=1e-12)
        # A first cycle counts from the gauge window (5m): all 200 rows, although the API
        # rounds every range to the minute and the 2m chunks do not start on one.
        assert total_invocations(samples) == 200
        # The current endpoint, in its ClickHouse shape, and ranges of whole minutes that
        # stay within the 24h the API accepts.
        assert {r.path for r in api.requests} == {api.path(CURRENT)}
        for query in api.queries():
            assert "from logs" in query["sql"].lower()
            assert "where source = 'function_edge_logs'" in query["sql"].lower()
            start = _micros(query["iso_timestamp_start"])
            end = _micros(query["iso_timestamp_end"])
            assert start % 60_000_000 == 0 and end % 60_000_000 == 0
            assert end - start <= 180_000_000

        # Next cycle, after a restart: new rows are added once, old ones are not repeated.
        later = now + 30
        api.rows.extend(edge_invocation(1000 + i, now + 5 + i * 0.1, "auth-signin", 200, 50.0)
                        for i in range(20))
        # A row older than the watermark appearing now is not counted by the next cycles.
        api.rows.append(edge_invocation(999, now - 400, "auth-signin", 200, 1.0))
        restarted = build_edge_functions_collector(config, EdgeStateDB(tmp_path / "state.db"))
        assert total_invocations(restarted.collect(later)) == 220
        assert total_invocations(restarted.collect(later)) == 220


def test_http_source_gives_up_the_cycle_when_retry_after_exceeds_it(tmp_path: Path) -> None:
    with SupabaseLogsApi(token="t", ref="r") as api:
        api.script(*[Reply(429, {"message": "Too Many Requests"}, {"Retry-After": "60"})] * 5)
        config = http_config(api)
        assert config.http is not None
        source = HttpEdgeSource(config.http, timeout=0.5, lateness=60, window=60,
                                buckets=config.buckets)
        collector = EdgeFunctionsCollector(source, EdgeStateDB(tmp_path / "s.db"),
                                           buckets=config.buckets, top_n=5)
        with pytest.raises(CollectorError) as caught:
            collector.collect(time.time())
        assert caught.value.reason == "rate_limited"


def one_cycle(api: SupabaseLogsApi, tmp_path: Path, **http: Any) -> list[Sample]:
    collector = build_edge_functions_collector(http_config(api, **http),
                                               EdgeStateDB(tmp_path / "state.db"))
    return collector.collect(time.time())



def test_a_function_id_with_half_an_emoji_costs_only_that_character(tmp_path: Path) -> None:
    # JSON's "\\ud83d" escape, in a log line, gives a lone surrogate, which neither SQLite
    # (the watermark), /metrics nor a channel can encode: every cycle failed on it.
    now = time.time()
    with SupabaseLogsApi(token="t", ref="r") as api:
        api.rows = [edge_invocation(i, now - 60 + i, "resize\ud83d" if i % 2 else "thumb",
                                    500 if i < 4 else 200, 10.0) for i in range(20)]
        samples = one_cycle(api, tmp_path)
    assert values(samples, "edge_function_error_ratio") == {
        (("function", "resize\ufffd"),): 0.2, (("function", "thumb"),): 0.2}


def test_the_removed_logs_all_endpoint_is_an_error_that_names_the_dialect_to_use(
        tmp_path: Path) -> None:
    with SupabaseLogsApi(token="t", ref="r") as api:
        with pytest.raises(CollectorError) as caught:
            one_cycle(api, tmp_path, dialect="bigquery")
        assert [r.path for r in api.requests] == [api.path(LEGACY)]
    assert caught.value.reason == "query"
    assert str(caught.value) == (
        "logs API: no endpoint analytics/endpoints/logs.all (HTTP 404): Supabase removed "
        "it, and its BigQuery dialect, on 2026-09-23; remove `dialect: bigquery` to use "
        "the current endpoint analytics/endpoints/logs (ClickHouse SQL)")


def test_the_legacy_endpoint_is_still_an_explicit_choice(tmp_path: Path) -> None:
    now = time.time()
    with SupabaseLogsApi(token="t", ref="r", legacy=True) as api:
        api.rows = [edge_invocation(i, now - 30 + i, "purchase", 200, 100.0) for i in range(7)]
        assert total_invocations(one_cycle(api, tmp_path, dialect="bigquery")) == 7
        assert {r.path for r in api.requests} == {api.path(LEGACY)}
        # Without the explicit choice, the current endpoint is asked, which this API lacks.
        with pytest.raises(CollectorError, match=re.escape(
                "an API that serves only analytics/endpoints/logs.all (BigQuery SQL) needs "
                "`dialect: bigquery`")):
            one_cycle(api, tmp_path / "x")


def test_an_unknown_table_is_an_error_that_names_the_dialect_to_use(tmp_path: Path) -> None:
    with SupabaseLogsApi(token="t", ref="r") as api:
        # As the log store answers a query over a table it does not have.
        api.script(Reply(200, {"result": None, "error": (
            "Code: 60. DB::Exception: Unknown table expression identifier 'logs' in scope "
            "SELECT id FROM logs. (UNKNOWN_TABLE)")}))
        with pytest.raises(CollectorError) as caught:
            one_cycle(api, tmp_path)
    assert str(caught.value).startswith(
        "logs API: Code: 60. DB::Exception: Unknown table expression identifier 'logs'")
    assert str(caught.value).endswith(
        "(the `clickhouse` dialect reads the one `logs` table of analytics/endpoints/logs; "
        "an API that serves only analytics/endpoints/logs.all (BigQuery SQL) needs "
        "`dialect: bigquery`)")


def test_config_requires_one_source_and_windows_of_at_most_a_day() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        EdgeFunctionsConfig.model_validate({})
    with pytest.raises(ValidationError, match="at most 24h"):
        EdgeFunctionsConfig.model_validate({"http": {
            "project_ref": "r", "access_token": "t", "max_window": "25h"}})
    with pytest.raises(ValidationError, match="increasing"):
        EdgeFunctionsConfig.model_validate({"sql": {"target": "m"}, "buckets": [1, 0.5]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EdgeFunctionsConfig.model_validate({"sql": {"target": "m", "tabel": "x"}})


def test_a_3_percent_error_ratio_fires_the_shipped_2_percent_rule(
        log_table: tuple[str, psycopg.Connection[Any]], target: PostgresTarget,
        tmp_path: Path) -> None:
    from piggywatch.rules.alerts import AlertEvent, EventKind
    from piggywatch.rules.manager import NoData, RuleManager
    from piggywatch.store import MemoryStore, labels_of

    table, conn = log_table
    collector = sql_collector(table, target, tmp_path / "state.db")
    collector.collect(time.time())
    store = MemoryStore()
    store.register(collector.specs())
    clock = [time.time()]
    events: list[AlertEvent] = []
    manager = RuleManager(store, store, events.append, no_data=NoData.OK,
                          clock=lambda: clock[0])
    rules = Path(__file__).parent.parent / "rules" / "edge_functions.yaml"
    assert manager.load([rules]) == []

    def publish(samples: list[Sample]) -> None:
        # As the daemon does: the target label, stamped at the (simulated) cycle time.
        store.publish("main/edge_functions", [
            Sample(s.name, labels_of(dict(s.labels), target="main"), s.value, clock[0])
            for s in samples], clock[0])

    # Two batches a minute apart, 1,000 calls in all of which 30 answer 503.
    for _ in range(2):
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (function_name, duration_ms, status_code) "
                            "VALUES ('purchase-checkout', 120, %s)",
                            [(503,)] * 15 + [(200,)] * 485)
        samples = collector.collect(time.time())
        publish(samples)
        manager.evaluate_group("edge-functions", clock[0])
        clock[0] += 60
    fn = (("function", "purchase-checkout"),)
    assert values(samples, "edge_function_error_ratio") == {fn: 0.03}
    # The same figures hold while the `for: 5m` clock runs; then the rule fires.
    fired: list[AlertEvent] = []
    for _ in range(6):
        publish(samples)
        fired += manager.evaluate_group("edge-functions", clock[0])
        clock[0] += 60
    assert [(e.kind, e.alert.label("alertname"), e.alert.label("severity")) for e in fired] \
        == [(EventKind.FIRING, "EdgeFunctionErrorRateHigh", "high")]
    assert fired[0].alert.annotations["summary"] == \
        "Edge function purchase-checkout: 3% of calls fail with a 5xx"
