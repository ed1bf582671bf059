"""PagerDuty's side of the way back: a Webhooks v3 sender (deliveries built and signed as
PagerDuty documents them) and a REST API stand-in for ``GET /incidents`` (polling)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply

__all__ = ["PagerDutyRestServer", "PagerDutyWebhookSender", "incident_delivery", "signature"]


def iso(ts: float) -> str:
    """PagerDuty's timestamps: ISO 8601 in UTC with milliseconds and Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def incident_delivery(event_type: str, incident_key: str, *, occurred_at: float,
                      agent: str = "Jane Oncall", agent_id: str = "PLH1HKV",
                      event_id: str | None = None, incident_id: str = "PGR0VU2",
                      number: int = 2) -> dict[str, Any]:
    """A v3 delivery about an incident, in the shape of PagerDuty's documentation (the
    Overview page's incident.priority_updated example, with this event type and status)."""
    status = {"incident.acknowledged": "acknowledged", "incident.resolved": "resolved",
              "incident.unacknowledged": "triggered", "incident.reassigned": "triggered",
              "incident.escalated": "triggered"}.get(event_type, "triggered")
    return {"event": {
        "id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": iso(occurred_at),
        "agent": {"html_url": f"https://acme.pagerduty.com/users/{agent_id}", "id": agent_id,
                  "self": f"https://api.pagerduty.com/users/{agent_id}", "summary": agent,
                  "type": "user_reference"},
        "client": {"name": "PagerDuty"},
        "data": {
            "id": incident_id, "type": "incident",
            "self": f"https://api.pagerduty.com/incidents/{incident_id}",
            "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
            "number": number, "status": status, "incident_key": incident_key,
            "created_at": iso(occurred_at - 60), "title": "PostgresConnectionsHigh (main)",
            "service": {"html_url": "https://acme.pagerduty.com/services/PF9KMXH",
                        "id": "PF9KMXH", "self": "https://api.pagerduty.com/services/PF9KMXH",
                        "summary": "PiggyBong database", "type": "service_reference"},
            "assignees": [{"html_url": f"https://acme.pagerduty.com/users/{agent_id}",
                           "id": agent_id, "self": f"https://api.pagerduty.com/users/{agent_id}",
                           "summary": agent, "type": "user_reference"}],
            "escalation_policy": {"html_url": "https://acme.pagerduty.com/escalation_policies/"
                                              "PUS0KTE", "id": "PUS0KTE",
                                  "self": "https://api.pagerduty.com/escalation_policies/"
                                          "PUS0KTE", "summary": "Default",
                                  "type": "escalation_policy_reference"},
            "teams": [], "priority": None, "urgency": "high", "conference_bridge": None,
            "resolve_reason": None,
        },
    }}


def signature(body: bytes, secrets: Sequence[str]) -> str:
    """``X-PagerDuty-Signature``: ``v1=<hex HMAC-SHA256>`` per secret, comma-separated."""
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest()
                    for s in secrets)


class PagerDutyWebhookSender:
    """Posts deliveries as PagerDuty does: the JSON body, its signatures, PagerDuty's
    User-Agent; keeps the raw body of each, so a test can redeliver it byte for byte."""

    def __init__(self, url: str, secrets: Sequence[str]) -> None:
        self.url = url
        self.secrets = list(secrets)

    def body(self, delivery: dict[str, Any]) -> bytes:
        """The raw body (compact JSON, as PagerDuty sends)."""
        return json.dumps(delivery, separators=(",", ":")).encode()

    def send(self, delivery: dict[str, Any] | bytes, *, secrets: Sequence[str] | None = None,
             header: str | None = None) -> httpx.Response:
        """POST one delivery (``header`` replaces the computed signature; "" sends none)."""
        body = delivery if isinstance(delivery, bytes) else self.body(delivery)
        headers = {"Content-Type": "application/json", "User-Agent": "PagerDuty-Webhook/V3.0",
                   "X-Webhook-Id": str(uuid.uuid4()), "X-Webhook-Subscription": "PSSVHVS"}
        sig = signature(body, self.secrets if secrets is None else secrets) \
            if header is None else header
        if sig:
            headers["X-PagerDuty-Signature"] = sig
        return httpx.post(self.url, content=body, headers=headers, timeout=10)


class PagerDutyRestServer(LocalHTTPServer):
    """``GET /incidents?incident_key=…`` of the REST API v2, with ``Authorization: Token
    token=…``; tests set each incident's status as a responder would change it."""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self._incidents: dict[str, dict[str, Any]] = {}
        self._state = threading.Lock()

    @property
    def url(self) -> str:
        """The API's base URL."""
        return self.base_url

    def set_status(self, incident_key: str, status: str, *, at: float, by: str = "Jane Oncall",
                   by_id: str = "PLH1HKV", incident_id: str = "Q1ABCDEF") -> None:
        """What the incident with this key looks like from now on."""
        change = {"id": by_id, "summary": by, "type": "user_reference"}
        with self._state:
            self._incidents[incident_key] = {
                "id": incident_id, "type": "incident", "incident_number": 7,
                "title": "PostgresConnectionsHigh", "incident_key": incident_key,
                "status": status, "created_at": iso(at - 60),
                "last_status_change_at": iso(at), "last_status_change_by": change,
                "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
                "acknowledgements": [{"at": iso(at), "acknowledger": change}]
                if status == "acknowledged" else [],
            }

    def handle(self, request: RecordedRequest) -> Reply:
        if request.header("authorization") != f"Token token={self.api_key}":
            return Reply(401, {"error": {"message": "Unauthorized", "code": 2006}})
        if "version=2" not in (request.header("accept") or ""):
            return Reply(406, {"error": {"message": "Not Acceptable"}})
        if request.method != "GET" or request.path != "/incidents":
            return Reply(404, {"error": {"message": "Not Found", "code": 2100}})
        key = request.query.get("incident_key", [""])[0]
        with self._state:
            found = [self._incidents[key]] if key in self._incidents else []
        return Reply(200, {"incidents": found, "limit": 25, "offset": 0, "total": None,
                           "more": False})
