"""Edge-function logs from the Supabase Management API (``function_edge_logs``).

``GET /v1/projects/{ref}/analytics/endpoints/logs`` takes a ClickHouse SQL query over one
``logs`` table (``source = 'function_edge_logs'``, fields in the ``log_attributes`` map, as
strings) and a time range (``iso_timestamp_start`` / ``iso_timestamp_end``, at most 24
hours, rounded to the nearest minute), and answers ``{"result": [...], "error": null}``;
a query the store refuses is answered HTTP 200 with ``"error"`` set. At most 60 requests a
minute. ``logs.all`` (BigQuery SQL, one table per source), removed on 2026-09-23, is still
spoken with ``dialect: bigquery``. The log store does the filtering and paging; the few
aggregates per cycle are computed here, over rows bounded by the page size and the range.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.edge_functions.model import (
    QUANTILES,
    EdgeHttpSourceConfig,
    Ranker,
    Reading,
    Totals,
    WindowStats,
    add_to,
)
from piggywatch.store.samples import text_value

# One row per invocation: id, timestamp, function id, status and duration. The nested
# fields are unnested the way Supabase's log explorer documents it.
_BIGQUERY = """select id, function_edge_logs.timestamp as timestamp,
  m.function_id as function_id, m.execution_time_ms as execution_time_ms,
  r.status_code as status_code
from function_edge_logs
  cross join unnest(metadata) as m
  cross join unnest(m.response) as r
order by timestamp asc, id asc
limit {limit} offset {offset}"""

# The same rows from the one `logs` table. Map values are strings: numbers are converted
# by the store (toXOrZero gives 0 for a missing or malformed value, never an error).
_CLICKHOUSE = """-- piggywatch: edge function invocations
select id, timestamp,
  log_attributes['function_id'] as function_id,
  toFloat64OrZero(log_attributes['execution_time_ms']) as execution_time_ms,
  toInt32OrZero(log_attributes['response.status_code']) as status_code
from logs
where source = 'function_edge_logs'
order by timestamp asc, id asc
limit {limit} offset {offset}"""

_PATHS = {"bigquery": "logs.all", "clickhouse": "logs"}
_QUERIES = {"bigquery": _BIGQUERY, "clickhouse": _CLICKHOUSE}
_ENDPOINT = "analytics/endpoints/{}"
# What the API says when the endpoint, or the table the SQL names, does not exist.
_MISSING_TABLE = re.compile(r"unknown table|UNKNOWN_TABLE|table not found|not found: table|"
                            r"does not exist|can't find source", re.IGNORECASE)
# The API rounds both ends of a range to the nearest minute: ask for whole minutes that
# cover the chunk (and keep the rows of the chunk only), so no row falls between chunks.
_MINUTE = timedelta(minutes=1)
_API_MAX_WINDOW = 86400.0

Row = tuple[datetime, str, int, float]  # timestamp, function, status, seconds


class HttpEdgeSource:
    """Reads ``function_edge_logs`` from the Management API with a bearer access token."""

    def __init__(self, config: EdgeHttpSourceConfig, *, timeout: float, lateness: float,
                 window: float, buckets: list[float] | tuple[float, ...],
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._config = config
        self._timeout = timeout
        self._lateness = lateness
        self._window = window
        self._buckets = list(buckets)
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"), transport=transport, timeout=timeout,
            headers={"Authorization": f"Bearer {config.access_token.get_secret_value()}",
                     "Accept": "application/json"})
        self._path = (f"/v1/projects/{config.project_ref}/analytics/endpoints/"
                      f"{_PATHS[config.dialect]}")
        self.key = f"http:{config.project_ref}"

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def read(self, since: datetime | None, now: float, rank: Ranker) -> Reading:
        """Fetch the tail since the watermark (and the gauge window), then aggregate."""
        deadline = time.monotonic() + self._timeout
        end = datetime.fromtimestamp(now, UTC)
        settle_before = end - timedelta(seconds=self._lateness)
        window_start = end - timedelta(seconds=self._window)
        # First run: count from the gauge window (or the lateness, if longer), as the SQL
        # source does.
        tail_start = min(settle_before, window_start) if since is None else since
        rows = self._fetch(min(tail_start, window_start), end, deadline)
        reading = Reading(settle_before)
        for ts, function, status, seconds in rows:
            if ts < tail_start:
                continue
            part = reading.settled if ts < settle_before else reading.pending
            _count(part, function, status, seconds, self._buckets)
        top = set(rank(reading.settled, reading.pending))
        windowed: dict[str, list[tuple[int, float]]] = {}
        for ts, function, status, seconds in rows:
            if ts >= window_start:
                label = function if function in top else "other"
                windowed.setdefault(label, []).append((status, seconds))
        for label, calls in windowed.items():
            durations = sorted(s for _, s in calls)
            errors = sum(1 for status, _ in calls if status >= 500)
            q = [percentile_cont(durations, p) for p in QUANTILES]
            reading.window[label] = WindowStats(float(len(calls)), float(errors),
                                                (q[0], q[1], q[2]))
        return reading

    def _fetch(self, start: datetime, end: datetime, deadline: float) -> list[Row]:
        rows: list[Row] = []
        # Widened to whole minutes, a chunk must still fit in the API's 24 hours.
        step = timedelta(seconds=min(self._config.max_window, _API_MAX_WINDOW - 120))
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(chunk_start + step, end)
            ask_start, ask_end = _floor_minute(chunk_start), _ceil_minute(chunk_end)
            offset = 0
            while True:
                page = self._page(ask_start, ask_end, offset, deadline)
                # The range is half-open, so adjacent chunks never share a row.
                rows.extend(r for r in map(_row, page) if chunk_start <= r[0] < chunk_end)
                if len(page) < self._config.page_size:
                    break
                offset += len(page)
            chunk_start = chunk_end
        return rows

    def _page(self, start: datetime, end: datetime, offset: int,
              deadline: float) -> list[dict[str, Any]]:
        query = _QUERIES[self._config.dialect].format(limit=self._config.page_size,
                                                      offset=offset)
        params = {"iso_timestamp_start": _iso(start), "iso_timestamp_end": _iso(end),
                  "sql": query}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CollectorError("timeout", "the logs API did not answer within the cycle")
            try:
                response = self._client.get(self._path, params=params, timeout=remaining)
            except httpx.TimeoutException:
                raise CollectorError("timeout", "the logs API timed out") from None
            except httpx.HTTPError as exc:
                raise CollectorError("connect", f"logs API: {exc}") from None
            if response.status_code == 429:
                # Honour the API's rate limit: wait as told if the cycle has time left,
                # else give up this cycle (the watermark has not moved, nothing is lost).
                wait = retry_after(response.headers.get("Retry-After"), time.time())
                if wait >= deadline - time.monotonic():
                    raise CollectorError("rate_limited",
                                         f"logs API rate limited; retry after {wait:.0f}s")
                self._sleep(wait)
                continue
            if response.status_code in (401, 403):
                raise CollectorError("auth", f"logs API refused the access token "
                                             f"(HTTP {response.status_code})")
            if response.status_code in (404, 410):
                raise CollectorError("query", self._no_endpoint(response.status_code))
            if response.status_code >= 400:
                raise CollectorError("query", f"logs API answered HTTP "
                                              f"{response.status_code}: {response.text[:200]}")
            body = response.json()
            if body.get("error"):
                error = str(body["error"])
                if _MISSING_TABLE.search(error):
                    error = f"{error} ({self._dialect_hint()})"
                raise CollectorError("query", f"logs API: {error}")
            result: list[dict[str, Any]] = body.get("result") or []
            return result


    def _no_endpoint(self, status: int) -> str:
        endpoint = _ENDPOINT.format(_PATHS[self._config.dialect])
        if self._config.dialect == "bigquery":
            return (f"logs API: no endpoint {endpoint} (HTTP {status}): Supabase removed it, "
                    "and its BigQuery dialect, on 2026-09-23; remove `dialect: bigquery` to "
                    f"use the current endpoint {_ENDPOINT.format(_PATHS['clickhouse'])} "
                    "(ClickHouse SQL)")
        return (f"logs API: no endpoint {endpoint} (HTTP {status}): check base_url and "
                f"project_ref; {self._dialect_hint()}")

    def _dialect_hint(self) -> str:
        current = _ENDPOINT.format(_PATHS["clickhouse"])
        legacy = _ENDPOINT.format(_PATHS["bigquery"])
        if self._config.dialect == "bigquery":
            return (f"the `bigquery` dialect reads one table per source of {legacy}, which "
                    f"Supabase replaced by {current} (ClickHouse SQL): remove "
                    "`dialect: bigquery`")
        return (f"the `clickhouse` dialect reads the one `logs` table of {current}; an API "
                f"that serves only {legacy} (BigQuery SQL) needs `dialect: bigquery`")


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: datetime) -> datetime:
    floor = _floor_minute(moment)
    return floor if floor == moment else floor + _MINUTE


def _count(totals: Totals, function: str, status: int, seconds: float,
           buckets: list[float]) -> None:
    status_class = f"{status // 100}xx" if 100 <= status <= 599 else "other"
    index = next((i for i, b in enumerate(buckets) if seconds <= b), len(buckets))
    for series, value in ((f"status:{status_class}", 1.0), (f"bucket:{index}", 1.0),
                          ("sum", seconds)):
        add_to(totals, function, series, value)


def _row(item: dict[str, Any]) -> Row:
    # A function id is a label and a key in the state database: text UTF-8 can encode.
    return (parse_timestamp(item["timestamp"]),
            text_value(str(item.get("function_id") or "unknown")),
            int(item.get("status_code") or 0), float(item.get("execution_time_ms") or 0) / 1000)


def parse_timestamp(value: object) -> datetime:
    """The logs API's timestamps: microseconds since the epoch, or ISO 8601 text."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1_000_000, UTC)
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def retry_after(header: str | None, now: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); 1 if absent."""
    if not header:
        return 1.0
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - now)


def percentile_cont(ordered: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the nearest ranks."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
