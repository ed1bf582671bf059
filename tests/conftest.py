"""Shared fixtures: one throwaway PostgreSQL with the PiggyBong demo for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from piggywatch.demo.cluster import ThrowawayCluster


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
