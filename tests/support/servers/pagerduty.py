"""A PagerDuty Events API v2 endpoint that checks every event strictly."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from typing import Any

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply

EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
EVENT_KEYS = {"routing_key", "event_action", "dedup_key", "payload", "images", "links",
              "client", "client_url"}
PAYLOAD_KEYS = {"summary", "source", "severity", "timestamp", "component", "group", "class",
                "custom_details"}
MAX_EVENT_BYTES = 512 * 1024


def validate_event(event: Any) -> list[str]:
    """Every way ``event`` breaks the Events API v2 schema (empty when it is valid)."""
    if not isinstance(event, dict):
        return ["event must be a JSON object"]
    errors = [f"unknown field '{k}'" for k in sorted(set(event) - EVENT_KEYS)]
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32 character string")
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append(f"'event_action' must be one of {', '.join(EVENT_ACTIONS)}")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= 255):
        errors.append("'dedup_key' must be a string of 1 to 255 characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        errors.append(f"'dedup_key' is required for {action}")
    if action == "trigger":
        errors += _payload_errors(event.get("payload"))
    elif "payload" in event and not isinstance(event["payload"], dict):
        errors.append("'payload' must be an object")
    errors += _list_errors(event, "links", required={"href"}, allowed={"href", "text"})
    errors += _list_errors(event, "images", required={"src"}, allowed={"src", "href", "alt"})
    for name in ("client", "client_url"):
        if name in event and not isinstance(event[name], str):
            errors.append(f"'{name}' must be a string")
    return errors


def _payload_errors(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is required for trigger and must be an object"]
    errors = [f"unknown field 'payload.{k}'" for k in sorted(set(payload) - PAYLOAD_KEYS)]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        errors.append("'payload.summary' is longer than 1024 characters")
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
    if "timestamp" in payload:
        try:
            datetime.fromisoformat(str(payload["timestamp"]))
        except ValueError:
            errors.append("'payload.timestamp' is not an ISO 8601 timestamp")
    for name in ("component", "group", "class"):
        if name in payload and (not isinstance(payload[name], str) or not payload[name]):
            errors.append(f"'payload.{name}' must be a non-empty string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")
    return errors


def _list_errors(event: dict[str, Any], name: str, *, required: set[str], allowed: set[str]
                 ) -> list[str]:
    if name not in event:
        return []
    items = event[name]
    if not isinstance(items, list):
        return [f"'{name}' must be an array"]
    errors = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(f"'{name}[{i}]' must be an object")
            continue
        errors += [f"unknown field '{name}[{i}].{k}'" for k in sorted(set(item) - allowed)]
        errors += [f"'{name}[{i}].{k}' is required" for k in sorted(required - set(item))]
        errors += [f"'{name}[{i}].{k}' must be a string" for k, v in item.items()
                   if not isinstance(v, str)]
    return errors


class PagerDutyServer(LocalHTTPServer):
    """``POST /v2/enqueue``. Valid events get 202 and are kept in ``events``; invalid ones
    get PagerDuty's 400 with the reasons. It tracks each dedup_key's alert as PagerDuty
    does (``alert_status``). ``routing_key`` limits the keys it accepts."""

    def __init__(self, routing_key: str | None = None) -> None:
        super().__init__()
        self.routing_key = routing_key
        self._events: list[dict[str, Any]] = []
        self._alerts: dict[str, str] = {}
        self._state_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The enqueue URL to configure."""
        return f"{self.base_url}/v2/enqueue"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The accepted events, in order."""
        with self._state_lock:
            return list(self._events)

    def alert_status(self, dedup_key: str) -> str | None:
        """``triggered``, ``acknowledged``, ``resolved``, or None if never triggered."""
        with self._state_lock:
            return self._alerts.get(dedup_key)

    def fail(self, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``times`` events with ``status`` (429 carries ``retry_after``)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"status": "throttle event", "message": "Requests for this service are "
                "arriving too quickly. Please retry later."} if status == 429 else {
                "status": "error", "message": "Internal error"}
        self.script(*[Reply(status, body, headers)] * times)

    def handle(self, request: RecordedRequest) -> Reply:
        if request.path != "/v2/enqueue":
            return Reply(404, {"status": "error", "message": "Not found"})
        if request.method != "POST":
            return Reply(405, {"status": "error", "message": "Method not allowed"})
        if not (request.header("content-type") or "").startswith("application/json"):
            return _invalid(["Content-Type must be application/json"])
        if len(request.body) > MAX_EVENT_BYTES:
            return _invalid(["Event object is larger than 512 KB"])
        try:
            event = json.loads(request.body)
        except ValueError:
            return Reply(400, {"status": "invalid event", "message": "Malformed JSON"})
        errors = validate_event(event)
        if not errors and self.routing_key is not None and event["routing_key"] != (
                self.routing_key):
            errors = ["Invalid routing key"]
        if errors:
            return _invalid(errors)
        dedup_key = event.get("dedup_key") or uuid.uuid4().hex
        with self._state_lock:
            self._events.append(event)
            status = self._alerts.get(dedup_key)
            open_alert = status in ("triggered", "acknowledged")
            action = event["event_action"]
            if action == "trigger" and not open_alert:
                self._alerts[dedup_key] = "triggered"
            elif action == "acknowledge" and open_alert:
                self._alerts[dedup_key] = "acknowledged"
            elif action == "resolve" and open_alert:
                self._alerts[dedup_key] = "resolved"
        return Reply(202, {"status": "success", "message": "Event processed",
                           "dedup_key": dedup_key})


def _invalid(errors: list[str]) -> Reply:
    return Reply(400, {"status": "invalid event", "message": "Event object is invalid",
                       "errors": errors})
