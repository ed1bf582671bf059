"""postgres_exporter users switching over, proven with a real Prometheus.

One Prometheus scrapes, every 5 s, Debian's postgres_exporter and a real PiggyWatch daemon
(its collectors every 15 s) on the same PostgreSQL under constant load. Then:

- ``irate()`` of a PiggyWatch counter has no spurious zeros (issue 14, section 2);
- every expression of our Grafana dashboard, and every expression written the way
  postgres_exporter dashboards query, that returns data for postgres_exporter returns data
  for PiggyWatch (section 4).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import yaml

from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from tests.support.compat import POSTGRES_EXPORTER, postgres_exporter
from tests.support.daemon_process import DaemonProcess
from tests.support.prometheus import running_prometheus
from tests.test_grafana_prometheus import dashboard_panels, query, wait_for

pytestmark = [
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="the prometheus server is not installed"),
    pytest.mark.skipif(POSTGRES_EXPORTER is None,
                       reason="prometheus-postgres-exporter is not installed"),
]

SCRAPE = 5
COLLECT = 15

# The way postgres_exporter dashboards and the mixin query (Grafana's $instance filled in
# per exporter): every family, counters through rate/irate, $__rate_interval as 1m.
EXPORTER_STYLE = [
    'pg_up{instance="$instance"}',
    'pg_static{instance="$instance"}',
    'pg_postmaster_start_time_seconds{instance="$instance"}',
    'time() - pg_postmaster_start_time_seconds{instance="$instance"}',
    'sum by (state) (pg_stat_activity_count{instance="$instance", datname=~".+"})',
    'max by (datname) (pg_stat_activity_max_tx_duration{instance="$instance"})',
    'sum by (job, instance, server) (pg_stat_activity_count{instance="$instance"})',
    'max(pg_settings_max_connections{instance="$instance"})',
    'pg_settings_shared_buffers_bytes{instance="$instance"}',
    'pg_settings_effective_cache_size_bytes{instance="$instance"}',
    'pg_settings_maintenance_work_mem_bytes{instance="$instance"}',
    'pg_settings_work_mem_bytes{instance="$instance"}',
    'pg_settings_max_wal_size_bytes{instance="$instance"}',
    'pg_settings_random_page_cost{instance="$instance"}',
    'pg_settings_seq_page_cost{instance="$instance"}',
    'pg_settings_max_worker_processes{instance="$instance"}',
    'pg_settings_max_parallel_workers{instance="$instance"}',
    'pg_settings_checkpoint_timeout_seconds{instance="$instance"}',
    'pg_settings_fsync{instance="$instance"}',
    'pg_settings_autovacuum_vacuum_scale_factor{instance="$instance"}',
    'pg_settings_max_locks_per_transaction{instance="$instance"}',
    *(f'irate(pg_stat_database_{c}{{instance="$instance", datname="{DEMO_DATABASE}"}}[1m])'
      for c in ("xact_commit", "xact_rollback", "tup_fetched", "tup_returned", "tup_inserted",
                "tup_updated", "tup_deleted", "blks_hit", "blks_read")),
    *(f'rate(pg_stat_database_{c}{{instance="$instance"}}[1m])'
      for c in ("temp_bytes", "temp_files", "deadlocks", "conflicts", "blk_read_time",
                "blk_write_time", "active_time", "session_time", "idle_in_transaction_time",
                "sessions", "sessions_abandoned", "sessions_fatal", "sessions_killed")),
    'pg_stat_database_numbackends{instance="$instance"}',
    'pg_stat_database_stats_reset{instance="$instance"}',
    *(f'rate(pg_stat_database_conflicts_confl_{c}{{instance="$instance"}}[1m])'
      for c in ("tablespace", "lock", "snapshot", "bufferpin", "deadlock")),
    *(f'irate(pg_stat_bgwriter_{c}_total{{instance="$instance"}}[1m])'
      for c in ("checkpoints_timed", "checkpoints_req", "checkpoint_write_time",
                "checkpoint_sync_time", "buffers_checkpoint", "buffers_clean",
                "maxwritten_clean", "buffers_backend", "buffers_backend_fsync",
                "buffers_alloc")),
    'pg_stat_bgwriter_stats_reset_total{instance="$instance"}',
    'rate(pg_stat_archiver_archived_count{instance="$instance"}[1m])',
    'rate(pg_stat_archiver_failed_count{instance="$instance"}[1m])',
    'pg_stat_archiver_last_archive_age{instance="$instance"}',
    'sum by (datname, mode) (pg_locks_count{instance="$instance"})',
    'pg_locks_count{instance="$instance", datname="template0", mode="sireadlock"}',
    'pg_database_size_bytes{instance="$instance", datname="template0"}',
    'sum(pg_database_size_bytes{instance="$instance"})',
    'pg_stat_database_xact_commit{instance="$instance", datid="0"}',
    'pg_exporter_last_scrape_duration_seconds{instance="$instance"}',
    'pg_exporter_last_scrape_error{instance="$instance"}',
    'rate(pg_exporter_scrapes_total{instance="$instance"}[1m])',
    'pg_scrape_collector_success{instance="$instance"}',
    'group by (datname) (pg_stat_database_numbackends{instance="$instance"})',
    'timestamp(pg_up{instance="$instance"})',
    'pg_replication_slot_slot_is_active{instance="$instance"}',
]


@pytest.fixture(scope="module")
def under_load(pg_cluster: ThrowawayCluster) -> Iterator[None]:
    """A steady stream of committed transactions on the demo database."""
    stop = threading.Event()

    def work() -> None:
        with psycopg.connect(pg_cluster.dsn(dbname=DEMO_DATABASE), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT 1")
                stop.wait(0.005)  # pacing: about 200 commits a second

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def scrapers(pg_cluster: ThrowawayCluster, under_load: None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """postgres_exporter and PiggyWatch on the same database: their scrape addresses."""
    home = tmp_path_factory.mktemp("compat")
    dsn = pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)
    config = home / "piggywatch.yaml"
    config.write_text(yaml.safe_dump({
        "targets": [{"name": "main", "dsn": dsn, "collectors": {
            "connections": {"interval": f"{COLLECT}s"}, "database": {"interval": f"{COLLECT}s"},
            "compat": {"interval": f"{COLLECT}s"}, "statements": {"enabled": False},
            "tables": {"enabled": False}}}],
        "state": "sqlite:///./state.db"}))
    with postgres_exporter(dsn) as exporter_url, DaemonProcess(config, home) as daemon:
        yield {"postgres_exporter": exporter_url.removeprefix("http://").removesuffix("/metrics"),
               "piggywatch": daemon.url.removeprefix("http://")}


@pytest.fixture(scope="module")
def prometheus(scrapers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """A real Prometheus scraping both every 5 s; its URL once both have been scraped."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE}s", "scrape_timeout": f"{SCRAPE}s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [address]}]}
                           for job, address in scrapers.items()],
    }
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), config) as (url, proc, log):
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).is_success,
                 30, "Prometheus did not become ready", proc, log)
        # Two collections of PiggyWatch's collectors are in once a rate over them exists.
        wait_for(lambda: query(url, 'rate(pg_stat_database_xact_commit{job="piggywatch"}[1m])')
                 and query(url, 'rate(pg_stat_bgwriter_buffers_alloc_total'
                                '{job="piggywatch"}[1m])')
                 and query(url, 'rate(pg_stat_database_xact_commit'
                                '{job="postgres_exporter"}[1m])'),
                 60, "Prometheus did not get two collections of both", proc, log)
        yield url


def range_values(prometheus: str, expr: str, seconds: float) -> list[float]:
    """The values of a one-series range query over the last ``seconds``, one per scrape."""
    end = time.time()
    body = httpx.get(f"{prometheus}/api/v1/query_range", timeout=5, params={
        "query": expr, "start": end - seconds, "end": end, "step": SCRAPE}).json()
    assert body["status"] == "success", body
    [series] = body["data"]["result"]
    return [float(v) for _, v in series["values"]]


def test_irate_of_a_counter_collected_every_15s_scraped_every_5s_has_no_spurious_zeros(
        prometheus: str, scrapers: dict[str, str]) -> None:
    expr = (f'irate(pg_stat_database_xact_commit{{job="piggywatch", '
            f'datname="{DEMO_DATABASE}"}}[1m])')

    def window() -> list[float]:
        try:
            values = range_values(prometheus, expr, 3 * SCRAPE)
        except ValueError:  # no series yet
            return []
        return values if len(values) >= 3 else []

    # Collections 15 s apart: wait until irate has a value at each scrape of the window
    # (two collections lie behind it), then look for zeros in it.
    ours = wait_for(window, 12 * SCRAPE,
                    "irate over three scrapes of PiggyWatch's counter")
    theirs = range_values(prometheus, expr.replace("piggywatch", "postgres_exporter"),
                          3 * SCRAPE)
    assert len(ours) >= 3
    assert all(v > 0 for v in theirs), theirs
    assert all(v > 0 for v in ours), f"irate under constant load: {ours}"


def _for_instance(expr: str, address: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: {"instance": address, "target": ".*",
                                                "__rate_interval": "1m"}[m[1]], expr)


def test_every_expression_with_data_for_postgres_exporter_has_data_for_piggywatch(
        prometheus: str, scrapers: dict[str, str]) -> None:
    panels = [target["expr"] for panel in dashboard_panels()
              for target in panel.get("targets", [])]
    expressions = [*panels, *EXPORTER_STYLE]
    missing = []
    compared = 0
    for expr in expressions:
        theirs = query(prometheus, _for_instance(expr, scrapers["postgres_exporter"]))
        if not theirs:
            continue
        compared += 1
        if not query(prometheus, _for_instance(expr, scrapers["piggywatch"])):
            missing.append(expr)
    assert compared >= len(EXPORTER_STYLE) - 3, "postgres_exporter answered too few"
    assert not missing, "no data from PiggyWatch for:\n" + "\n".join(missing)


def test_piggywatch_counters_are_typed_counter_in_prometheus_metadata(
        prometheus: str) -> None:
    metadata = httpx.get(f"{prometheus}/api/v1/targets/metadata", timeout=5, params={
        "match_target": '{job="piggywatch"}'}).json()["data"]
    types = {m["metric"]: m["type"] for m in metadata}
    for name in ("pg_stat_database_xact_commit", "pg_stat_database_blks_hit",
                 "pg_stat_bgwriter_buffers_alloc_total", "pg_stat_archiver_archived_count",
                 "pg_stat_database_conflicts_confl_lock", "pg_exporter_scrapes_total"):
        assert types.get(name) == "counter", (name, types.get(name))
    assert types.get("pg_locks_count") == "gauge"
