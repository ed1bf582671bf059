"""Every default family of postgres_exporter, with its labels and type, from PiggyWatch.

Debian's postgres_exporter and PiggyWatch's collectors read the same database; their
expositions are compared family by family (issue 14, section 1).
"""

from __future__ import annotations

import httpx
import pytest

from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.store import MemoryStore
from tests.support.compat import (
    POSTGRES_EXPORTER,
    Exposition,
    piggywatch_exposition,
    piggywatch_jobs,
    postgres_exporter,
)

pytestmark = pytest.mark.skipif(POSTGRES_EXPORTER is None,
                                reason="prometheus-postgres-exporter is not installed")

# postgres_exporter 0.11.1 leaves these untyped; upstream's later releases and PiggyWatch
# type them (the session and time columns are counters, the failure time a gauge).
TYPED_WHERE_UPSTREAM_0_11_IS_NOT = {
    "pg_stat_database_active_time": "counter", "pg_stat_database_session_time": "counter",
    "pg_stat_database_idle_in_transaction_time": "counter",
    "pg_stat_database_sessions": "counter", "pg_stat_database_sessions_abandoned": "counter",
    "pg_stat_database_sessions_fatal": "counter", "pg_stat_database_sessions_killed": "counter",
    "pg_stat_database_checksum_failures": "counter",
    "pg_stat_database_checksum_last_failure": "gauge",
    # Columns newer than upstream 0.11 (PostgreSQL 16 and 18), which it shows untyped.
    "pg_stat_database_conflicts_confl_active_logicalslot": "counter",
    "pg_stat_database_parallel_workers_to_launch": "counter",
    "pg_stat_database_parallel_workers_launched": "counter",
}
# Settings of the reading session, not the server: PiggyWatch's session is read-only with a
# per-query statement_timeout, and psycopg asks for extra_float_digits.
OUR_SESSION = {"pg_settings_default_transaction_read_only", "pg_settings_transaction_read_only",
               "pg_settings_statement_timeout_seconds", "pg_settings_extra_float_digits"}
# Label values compared series by series (the others are server-specific or per process).
COMPARED_LABELS = ("datname", "datid", "mode", "state", "short_version", "slot_name")


@pytest.fixture(scope="module")
def expositions(pg_cluster: ThrowawayCluster) -> tuple[Exposition, Exposition]:
    """(postgres_exporter's, PiggyWatch's) exposition of the demo database."""
    dsn = pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)
    with postgres_exporter(dsn) as url:
        theirs = Exposition.parse(httpx.get(url, timeout=10).text)
    return theirs, Exposition.parse(piggywatch_exposition(dsn))


def test_every_postgres_exporter_family_is_exposed(
        expositions: tuple[Exposition, Exposition]) -> None:
    theirs, ours = expositions
    assert len(theirs.families()) > 250
    assert sorted(theirs.families() - ours.families()) == []


def test_every_family_has_upstreams_type(expositions: tuple[Exposition, Exposition]) -> None:
    theirs, ours = expositions
    differ = {name: (theirs.types[name], ours.types.get(name)) for name in theirs.families()
              if theirs.types[name] != ours.types.get(name)
              and TYPED_WHERE_UPSTREAM_0_11_IS_NOT.get(name) != ours.types.get(name)}
    assert differ == {}


def test_every_family_has_upstreams_label_names_and_values(
        expositions: tuple[Exposition, Exposition]) -> None:
    theirs, ours = expositions
    problems = []
    for name in sorted(theirs.families() & ours.families()):
        their_names = set().union(*map(set, theirs.series[name]))
        our_names = set().union(*map(set, ours.series[name]))
        if their_names - our_names:
            problems.append(f"{name}: labels {sorted(their_names - our_names)} missing")
        for label in COMPARED_LABELS:
            if label in their_names:
                want = {s.get(label) for s in theirs.series[name]}
                got = {s.get(label) for s in ours.series[name]}
                if want != got:
                    differ = sorted(map(str, want ^ got))
                    problems.append(f"{name}: {label} values differ: {differ}")
    assert problems == []


def test_server_label_is_the_dsn_host_and_port_as_upstream_shows_it(
        expositions: tuple[Exposition, Exposition]) -> None:
    theirs, ours = expositions
    [server] = {s["server"] for s in theirs.series["pg_settings_max_connections"]}
    assert {s["server"] for s in ours.series["pg_locks_count"]} == {server}
    # Prometheus gives job and instance from its own scrape config: not in the exposition.
    assert all("instance" not in s and "job" not in s and s["target"] == "main"
               for s in ours.series["pg_stat_database_xact_commit"])


def test_settings_values_match_upstreams_units(expositions: tuple[Exposition, Exposition],
                                                pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)
    with postgres_exporter(dsn) as url:
        text = httpx.get(url, timeout=10).text
    theirs = {line.split("{")[0]: line.rsplit(" ", 1)[1] for line in text.splitlines()
              if line.startswith("pg_settings_")}
    ours_text = piggywatch_exposition(dsn)
    ours = {line.split("{")[0]: line.split()[-2] if line.count(" ") > 1 else line.split()[-1]
            for line in ours_text.splitlines() if line.startswith("pg_settings_")}
    assert len(theirs) > 200
    differ = {name: (value, ours.get(name)) for name, value in theirs.items()
              if float(value) != float(ours.get(name, "nan")) and name not in OUR_SESSION}
    assert differ == {}


def test_compat_switch_leaves_only_the_core_families(pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)
    store = MemoryStore()
    target, jobs = piggywatch_jobs(dsn, store, compat={"enabled": False})
    target.close()
    assert "compat" not in {job.collector.name for job in jobs}
    names = {spec.name for spec in store.specs()}
    assert "pg_stat_database_xact_commit" in names
    assert not names & {"pg_locks_count", "pg_static", "pg_stat_bgwriter_buffers_alloc_total"}
