"""RedisCollector against a real redis-server started on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.redis_cache import RedisCollector, RedisConfig, RedisUnreachable
from piggywatch.store import Sample
from tests.support.ports import free_port

redis = pytest.importorskip("redis")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(not Path(REDIS_SERVER).exists(),
                                reason="redis-server is not installed")


class RedisServer:
    """A throwaway redis-server: no persistence, its files in a temp dir."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(directory), "--save", "", "--appendonly", "no",
             "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def collector_for(url: str) -> RedisCollector:
    return RedisCollector(RedisConfig(name="cache", url=SecretStr(url), timeout=1.0))


def by_name(samples: list[Sample]) -> dict[str, float]:
    assert {s.labels for s in samples} == {(("instance", "cache"),)}
    return {s.name: s.value for s in samples}


def test_hit_ratio_matches_the_test_traffic(server: RedisServer) -> None:
    collector = collector_for(server.url)
    app = redis.Redis.from_url(server.url)
    before = by_name(collector.collect(1.0))

    app.mset({f"user:{i}": "x" for i in range(30)})
    for i in range(30):
        app.get(f"user:{i}")            # 30 hits
    for i in range(10):
        app.get(f"absent:{i}")          # 10 misses
    after = by_name(collector.collect(2.0))

    hits = after["redis_keyspace_hits_total"] - before["redis_keyspace_hits_total"]
    misses = after["redis_keyspace_misses_total"] - before["redis_keyspace_misses_total"]
    assert (hits, misses) == (30, 10)
    # A fresh server has seen only this traffic, so the cumulative ratio is exactly ours.
    assert after["redis_cache_hit_ratio"] == 30 / 40
    assert after["redis_up"] == 1.0
    assert after["redis_memory_max_bytes"] == 64 * 1024 * 1024
    assert after["redis_memory_used_bytes"] > 0
    assert after["redis_connected_clients"] >= 2    # the collector and the app
    assert after["redis_evicted_keys_total"] == 0
    app.close()
    collector.close()


def test_no_lookups_yet_gives_no_ratio_rather_than_a_division_by_zero(
        server: RedisServer) -> None:
    values = by_name(collector_for(server.url).collect(1.0))
    assert "redis_cache_hit_ratio" not in values
    assert values["redis_keyspace_hits_total"] == 0


def test_a_stopped_redis_reports_down_without_crashing(server: RedisServer) -> None:
    collector = collector_for(server.url)
    assert by_name(collector.collect(1.0))["redis_up"] == 1.0
    server.stop()

    with pytest.raises(CollectorError) as caught:
        collector.collect(2.0)

    assert caught.value.reason == "connect"
    assert isinstance(caught.value, RedisUnreachable)
    assert list(caught.value.samples) == [Sample("redis_up", (("instance", "cache"),), 0.0, 2.0)]
    assert str(caught.value).startswith("redis cache: ")
    assert collector.up is False


def test_a_redis_that_never_answered_is_down_too() -> None:
    collector = collector_for(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnreachable):
        collector.collect(1.0)
    assert collector.up is False


def test_the_url_must_be_a_redis_url() -> None:
    with pytest.raises(ValidationError, match="redis://"):
        RedisConfig(name="cache", url=SecretStr("http://localhost:6379"))
