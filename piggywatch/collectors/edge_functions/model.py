"""Edge-function telemetry: its configuration and the aggregates both log sources produce."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from piggywatch.config_types import Duration

OTHER = "other"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
QUANTILES = (0.5, 0.95, 0.99)
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class EdgeSqlSourceConfig(_Strict):
    """A log table in a monitored database; every name is configurable."""

    target: str = Field(min_length=1, description="name of the PostgreSQL target to read")
    table: str = Field("edge_functions_logs", description="table, optionally schema.table")
    function_column: str = "function_name"
    """The column holding the function's name."""
    duration_column: str = "duration_ms"
    """The column holding the invocation's duration."""
    duration_unit: Literal["ms", "s"] = "ms"
    """The unit of the duration column."""
    status_column: str = "status_code"
    """The column holding the HTTP status code."""
    created_at_column: str = "created_at"
    """The column holding when the row was created."""


class EdgeHttpSourceConfig(_Strict):
    """The Supabase Management API's analytics logs endpoint (``function_edge_logs``)."""

    base_url: str = "https://api.supabase.com"
    """The Supabase Management API base URL."""
    project_ref: str = Field(min_length=1)
    """The Supabase project's reference id."""
    access_token: SecretStr
    """A Supabase personal access token (a secret)."""
    dialect: Literal["clickhouse", "bigquery"] = "clickhouse"
    """"clickhouse": the endpoint "logs" (ClickHouse SQL over one `logs` table filtered by source).
    "bigquery": "logs.all" (BigQuery SQL, one table per source), which Supabase removed on
    2026-09-23; kept for APIs that still serve it (older self-hosted ones)."""
    max_window: Duration = 86400.0
    """The API refuses ranges over 24 hours; longer gaps (first run, downtime) are split."""
    page_size: int = Field(1000, ge=1, le=10000)
    """Rows per API request."""

    @field_validator("max_window")
    @classmethod
    def _at_most_a_day(cls, value: float) -> float:
        if value > 86400.0:
            raise ValueError("the logs API accepts windows of at most 24h")
        return value


class EdgeFunctionsConfig(_Strict):
    """Edge-function telemetry: one source (sql or http), windows, buckets and label bounds."""

    sql: EdgeSqlSourceConfig | None = None
    http: EdgeHttpSourceConfig | None = None
    interval: Duration = 60.0
    """How often it is sampled."""
    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    lateness: Duration = 300.0
    """How late (after its created_at) a row may still be inserted and be counted."""
    window: Duration = 300.0
    """The window of the error-ratio and percentile gauges."""
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    """Histogram bucket bounds of the duration, in seconds."""
    top_n: int = Field(10, ge=1, le=200)
    """How many of the largest items are exported (the rest are summed)."""

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(b <= a for a, b in pairwise(value)):
            raise ValueError("buckets must be a non-empty list of increasing upper bounds")
        if any(not math.isfinite(b) or b <= 0 for b in value):
            raise ValueError("bucket bounds are positive numbers of seconds (+Inf is implied)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EdgeFunctionsConfig:
        if (self.sql is None) == (self.http is None):
            raise ValueError("configure exactly one edge-functions source: sql or http")
        return self



# (function, series) -> value, where series is "status:<class>", "bucket:<i>" (i-th bucket,
# not cumulative; i == len(buckets) is +Inf) or "sum" (seconds). Flat, so adding two
# aggregates and storing them are trivial.
Totals = dict[tuple[str, str], float]


def add_into(into: Totals, more: Totals) -> None:
    """Add ``more`` to ``into`` in place."""
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def volume_by_function(totals: Totals) -> dict[str, float]:
    """Invocations per function."""
    out: dict[str, float] = {}
    for (function, series), value in totals.items():
        if series.startswith("status:"):
            out[function] = out.get(function, 0.0) + value
    return out


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One function label's invocations, 5xx count and duration quantiles (seconds)."""

    count: float
    errors: float
    quantiles: tuple[float, float, float]


@dataclass(slots=True)
class Reading:
    """One cycle's read: the new watermark, the newly settled and the pending aggregates."""

    settle_before: datetime
    settled: Totals = field(default_factory=dict)
    pending: Totals = field(default_factory=dict)
    window: dict[str, WindowStats] = field(default_factory=dict)


# Picks the function labels for the window gauges from this cycle's settled and pending
# aggregates (the collector adds its durable totals), so ranking sees the newest volume.
Ranker = Callable[[Totals, Totals], list[str]]


class EdgeLogSource(Protocol):
    """Where edge-function log rows come from."""

    @property
    def key(self) -> str:
        """Identifies this source's watermark in the shared state."""
        ...

    def read(self, since: datetime | None, now: float, rank: Ranker) -> Reading:
        """Aggregate rows from ``since`` (None: first run) and the gauge window."""
        ...


def add_to(totals: Totals, function: str, series: str, value: float) -> None:
    """Add ``value`` to one (function, series) of ``totals``."""
    key = (function, series)
    totals[key] = totals.get(key, 0.0) + value
