"""Redis, the app's cache: hits, misses, hit ratio, memory, clients and evictions from INFO.

redis-py is imported only when a Redis source is configured, so installations without a
cache never need it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from piggywatch.collectors.base import CollectorError, SourceContext, SourceJob
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

if TYPE_CHECKING:
    import redis

_G = MetricKind.GAUGE
_C = MetricKind.COUNTER
SPECS = (
    MetricSpec("redis_up", _G, "Whether the last INFO call to this Redis worked (1) or not (0)"),
    MetricSpec("redis_keyspace_hits_total", _C, "Successful key lookups since Redis started"),
    MetricSpec("redis_keyspace_misses_total", _C, "Failed key lookups since Redis started"),
    # Cumulative since the server started, so it barely moves once traffic is old: alert
    # on rate(hits) / (rate(hits) + rate(misses)) instead (rules/app.yaml does).
    MetricSpec("redis_cache_hit_ratio", _G,
               "hits / (hits + misses) since Redis started; alert on rates instead"),
    MetricSpec("redis_memory_used_bytes", _G, "Memory allocated by Redis (used_memory)"),
    MetricSpec("redis_memory_max_bytes", _G, "The maxmemory setting; 0 means no limit"),
    MetricSpec("redis_connected_clients", _G, "Client connections open now"),
    MetricSpec("redis_evicted_keys_total", _C, "Keys evicted because of maxmemory"),
)

# INFO field -> metric name, for the fields exported as they are.
_FIELDS = {
    "keyspace_hits": "redis_keyspace_hits_total",
    "keyspace_misses": "redis_keyspace_misses_total",
    "used_memory": "redis_memory_used_bytes",
    "maxmemory": "redis_memory_max_bytes",
    "connected_clients": "redis_connected_clients",
    "evicted_keys": "redis_evicted_keys_total",
}


class RedisConfig(BaseModel):
    """One Redis instance to watch."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The ``instance`` label of its metrics."""
    url: SecretStr
    """Redis://[:password@]host:port/db or rediss:// for TLS; a secret (it may hold a password)."""
    interval: Duration = 30.0
    """How often it is sampled."""
    timeout: Duration = 5.0
    """How long one attempt may take before it counts as failed."""

    @field_validator("url")
    @classmethod
    def _url_is_redis(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        if not raw.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the URL must start with redis://, rediss:// or unix:// "
                             "(is its ${VARIABLE} set?)")
        return value

    def secrets(self) -> list[str]:
        """Values to scrub from logs and errors."""
        return [self.url.get_secret_value()]


class RedisUnreachable(CollectorError):
    """Redis did not answer; ``samples`` still says so (``redis_up 0``)."""

    def __init__(self, message: str, samples: list[Sample]) -> None:
        super().__init__("connect", message, samples)


class RedisCollector:
    """Samples one Redis with INFO; a Redis that is down gives ``redis_up 0``, not a crash."""

    name = "redis"

    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self._labels = labels_of(instance=config.name)
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._up: bool | None = None
        self.last_error: str | None = None

    @property
    def up(self) -> bool | None:
        """Whether the last INFO call worked; None before the first."""
        return self._up

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """One INFO call. Raises RedisUnreachable (reason ``connect``) when Redis is down."""
        import redis  # lazily: only needed when a Redis source is configured

        with self._lock:
            try:
                # The synchronous client returns a dict; the stubs also allow an awaitable.
                info = cast(dict[str, Any], self._connect().info())
            except redis.RedisError as exc:
                # A dropped connection is rebuilt by the pool on the next cycle.
                self._up = False
                self.last_error = f"redis {self._config.name}: {_first_line(exc)}"
                raise RedisUnreachable(
                    self.last_error, [Sample("redis_up", self._labels, 0.0, now)]) from None
        self._up = True
        self.last_error = None
        return self._samples(info, now)

    def close(self) -> None:
        """Close the connection pool (at shutdown)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _connect(self) -> redis.Redis:
        import redis

        if self._client is None:
            timeout = self._config.timeout
            self._client = redis.Redis.from_url(
                self._config.url.get_secret_value(), socket_timeout=timeout,
                socket_connect_timeout=timeout, client_name="piggywatch",
                # The daemon retries every interval anyway; a retry here only delays the
                # report that Redis is down.
                retry_on_timeout=False)
        return self._client

    def _samples(self, info: dict[str, Any], now: float) -> list[Sample]:
        out = [Sample("redis_up", self._labels, 1.0, now)]
        for field, metric in _FIELDS.items():
            value = info.get(field)
            if isinstance(value, int | float):
                out.append(Sample(metric, self._labels, float(value), now))
        hits, misses = info.get("keyspace_hits"), info.get("keyspace_misses")
        if isinstance(hits, int) and isinstance(misses, int) and hits + misses > 0:
            out.append(Sample("redis_cache_hit_ratio", self._labels, hits / (hits + misses), now))
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def build(configs: list[RedisConfig], context: SourceContext) -> list[SourceJob]:
    """One collector per Redis instance."""
    return [(f"redis:{r.name}", None, RedisCollector(r), r.interval) for r in configs]
