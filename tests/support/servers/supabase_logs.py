"""The Supabase Management API's log query endpoints, as their reference documents them.

``GET /v1/projects/{ref}/analytics/endpoints/logs`` (current) takes ClickHouse SQL over one
``logs`` table: columns ``id``, ``timestamp`` (DateTime64, answered as
``2026-06-22T09:34:06.215000``), ``event_message``, ``source`` and ``log_attributes`` (a
``Map(String, String)`` keyed by the dotted path without ``metadata.``); ``count(*)`` and
``select *`` are refused. ``.../logs.all`` (BigQuery SQL, one table per source, nested
fields reached through ``cross join unnest(metadata)``, microsecond timestamps) was removed
on 2026-09-23: ``legacy=True`` serves it instead (an API as it was before).

Both take ``sql``, ``iso_timestamp_start`` and ``iso_timestamp_end`` (at most 24 hours,
rounded to the nearest minute) and answer ``{"result": [...], "error": null}``; a query
the log store refuses is answered HTTP 200 with ``{"result": null, "error": "..."}``. At
most 60 requests a minute (429 with Retry-After beyond). Only the SQL shapes PiggyWatch
sends are evaluated; anything else is refused as the real store would refuse an unknown
table or column, so a wrong shape fails the test instead of passing by accident.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply

CURRENT = "logs"
LEGACY = "logs.all"
RATE_LIMIT = 60  # requests per minute

# ClickHouse: `<expr> as <alias>` items over the logs table's columns and map entries.
_CH_ITEM = re.compile(
    r"^(?:(?P<column>id|timestamp|event_message|source)"
    r"|(?P<fn>toInt32OrZero|toFloat64OrZero)\(log_attributes\['(?P<fkey>[^']+)'\]\)"
    r"|log_attributes\['(?P<key>[^']+)'\])(?:\s+as\s+(?P<alias>\w+))?$", re.I)
_CH_QUERY = re.compile(
    r"^(?:--[^\n]*\n)*\s*select\s+(?P<items>.+?)\s+from\s+logs\s+"
    r"where\s+source\s*=\s*'(?P<source>\w+)'\s+"
    r"order\s+by\s+timestamp\s+asc\s*,\s*id\s+asc\s+"
    r"limit\s+(?P<limit>\d+)\s+offset\s+(?P<offset>\d+)\s*$", re.I | re.S)
_BQ_QUERY = re.compile(
    r"^select\s+id,\s*function_edge_logs\.timestamp\s+as\s+timestamp,\s*"
    r"m\.function_id\s+as\s+function_id,\s*m\.execution_time_ms\s+as\s+execution_time_ms,\s*"
    r"r\.status_code\s+as\s+status_code\s+"
    r"from\s+(?P<table>\w+)\s+cross\s+join\s+unnest\(metadata\)\s+as\s+m\s+"
    r"cross\s+join\s+unnest\(m\.response\)\s+as\s+r\s+"
    r"order\s+by\s+timestamp\s+asc,\s*id\s+asc\s+"
    r"limit\s+(?P<limit>\d+)\s+offset\s+(?P<offset>\d+)\s*$", re.I | re.S)
_FROM = re.compile(r"\bfrom\s+([\w.`]+)", re.I)
_BQ_TABLES = {"function_edge_logs", "edge_logs", "postgres_logs", "auth_logs",
              "function_logs"}


@dataclass
class LogRow:
    """One row of the unified ``logs`` table."""

    id: str
    timestamp: datetime
    source: str
    event_message: str = ""
    log_attributes: dict[str, str] = field(default_factory=dict)


def edge_invocation(i: int, ts: float, function: str, status: int, ms: float) -> LogRow:
    """A ``function_edge_logs`` row, with the attributes Supabase's docs list for it."""
    return LogRow(f"row-{i}", datetime.fromtimestamp(ts, UTC), "function_edge_logs",
                  f"POST | {status} | https://x.supabase.co/functions/v1/{function}",
                  {"function_id": function, "execution_time_ms": repr(float(ms)),
                   "response.status_code": str(status), "request.method": "POST",
                   "execution_id": f"exec-{i}", "deployment_id": f"{function}_1"})


class SupabaseLogsApi(LocalHTTPServer):
    """The log query endpoints of one project, with bearer-token auth."""

    def __init__(self, *, token: str, ref: str, legacy: bool = False) -> None:
        super().__init__()
        self.token = token
        self.ref = ref
        self.legacy = legacy
        self.rows: list[LogRow] = []
        self._recent: deque[float] = deque()
        self._limit_lock = threading.Lock()

    def path(self, endpoint: str) -> str:
        """The path of ``endpoint`` (``logs`` or ``logs.all``) for this project."""
        return f"/v1/projects/{self.ref}/analytics/endpoints/{endpoint}"

    def queries(self) -> list[dict[str, str]]:
        """The query parameters of every request received, in order."""
        return [{k: v[0] for k, v in r.query.items()} for r in self.requests]

    def handle(self, request: RecordedRequest) -> Reply:
        if request.header("authorization") != f"Bearer {self.token}":
            return Reply(401, {"message": "Unauthorized"})
        endpoint = {self.path(CURRENT): CURRENT, self.path(LEGACY): LEGACY}.get(request.path)
        served = LEGACY if self.legacy else CURRENT
        if endpoint != served or request.method != "GET":
            return Reply(404, {"message": "Cannot GET " + request.path})
        if not self._admit():
            return Reply(429, {"message": "ThrottlerException: Too Many Requests"},
                         {"Retry-After": "60"})
        params = {k: v[0] for k, v in request.query.items()}
        try:
            start = _minute(params["iso_timestamp_start"])
            end = _minute(params["iso_timestamp_end"])
        except (KeyError, ValueError) as exc:
            return Reply(400, {"message": f"invalid timestamp range: {exc}"})
        if end - start > timedelta(hours=24):
            return Reply(400, {"message": "Timestamp range cannot exceed 24 hours"})
        sql = params.get("sql", "")
        in_range = [r for r in self.rows if start <= r.timestamp < end]
        if endpoint == CURRENT:
            return _clickhouse(sql, in_range)
        return _bigquery(sql, in_range)

    def _admit(self) -> bool:
        now = time.monotonic()
        with self._limit_lock:
            while self._recent and now - self._recent[0] >= 60:
                self._recent.popleft()
            if len(self._recent) >= RATE_LIMIT:
                return False
            self._recent.append(now)
            return True


def _minute(text: str) -> datetime:
    # "The timestamp range ... is rounded to the nearest minute."
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    floor = moment.replace(second=0, microsecond=0)
    return floor + timedelta(minutes=1) if moment - floor >= timedelta(seconds=30) else floor


def _error(message: str) -> Reply:
    return Reply(200, {"result": None, "error": message})


def _clickhouse(sql: str, rows: list[LogRow]) -> Reply:
    tables = [t.strip("`") for t in _FROM.findall(sql)]
    unknown = [t for t in tables if t != "logs"]
    if unknown:
        return _error(f"Code: 60. DB::Exception: Unknown table expression identifier "
                      f"'{unknown[0]}' in scope {' '.join(sql.split())[:80]}. (UNKNOWN_TABLE)")
    if re.search(r"count\(\*\)|select\s+\*", sql, re.I):
        return _error("count(*) and select * are not supported: use count() and name the "
                      "columns")
    match = _CH_QUERY.match(sql.strip())
    if match is None:
        return _error("the stand-in evaluates one shape only: select <columns and "
                      "log_attributes['key'] items> from logs where source = '...' order by "
                      "timestamp asc, id asc limit N offset M")
    items = [i.strip() for i in match["items"].split(",")]
    parsed = [_CH_ITEM.match(i) for i in items]
    if not all(parsed):
        return _error(f"unsupported select item {items[parsed.index(None)]!r}")
    picked = sorted((r for r in rows if r.source == match["source"]),
                    key=lambda r: (r.timestamp, r.id))
    page = picked[int(match["offset"]):int(match["offset"]) + int(match["limit"])]
    return Reply(200, {"result": [_project(r, [m for m in parsed if m]) for r in page],
                       "error": None})


def _project(row: LogRow, items: list[re.Match[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if item["column"]:
            name = item["alias"] or item["column"].lower()
            value: Any = getattr(row, item["column"].lower())
            if isinstance(value, datetime):
                value = value.astimezone(UTC).replace(tzinfo=None).isoformat(
                    timespec="microseconds")
        elif item["fn"]:
            text = row.log_attributes.get(item["fkey"], "")
            name = item["alias"] or item.group(0)
            converter = int if item["fn"].lower() == "toint32orzero" else float
            try:
                value = converter(text)
            except ValueError:
                value = converter(0)
        else:
            name = item["alias"] or item.group(0)
            value = row.log_attributes.get(item["key"], "")
        out[name] = value
    return out


def _bigquery(sql: str, rows: list[LogRow]) -> Reply:
    tables = [t.strip("`") for t in _FROM.findall(sql)]
    unknown = [t for t in tables if t not in _BQ_TABLES]
    if unknown:
        return _error(f"Table not found: {unknown[0]}")
    match = _BQ_QUERY.match(sql.strip())
    if match is None:
        return _error("the stand-in evaluates one shape only: PiggyWatch's "
                      "function_edge_logs query with cross join unnest(metadata)")
    picked = sorted((r for r in rows if r.source == match["table"]),
                    key=lambda r: (r.timestamp, r.id))
    page = picked[int(match["offset"]):int(match["offset"]) + int(match["limit"])]
    return Reply(200, {"result": [{
        "id": r.id, "timestamp": int(r.timestamp.timestamp() * 1_000_000),
        "function_id": r.log_attributes["function_id"],
        "execution_time_ms": float(r.log_attributes["execution_time_ms"]),
        "status_code": int(r.log_attributes["response.status_code"])} for r in page],
        "error": None})
