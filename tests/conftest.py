"""Shared fixtures: one throwaway PostgreSQL with the PiggyBong demo for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster

# CI machines are shared and sometimes slow: a property that holds should not fail because
# one example took longer than hypothesis's default 200 ms.
settings.register_profile("piggywatch", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("piggywatch")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """A running cluster (max_connections=20) with the ``piggybong`` demo bootstrapped."""
    cluster = ThrowawayCluster(max_connections=20)
    cluster.start()
    try:
        cluster.bootstrap_demo()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def target(pg_cluster: ThrowawayCluster) -> Iterator[PostgresTarget]:
    """The monitoring role's connection to the demo database, as the daemon makes it."""
    target = PostgresTarget("main", pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE))
    yield target
    target.close()
