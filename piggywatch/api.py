"""The answers of /api/v1/alerts and /api/v1/silences: the rules' alerts joined with their
delivery state (level, acknowledgement, silences, inhibition), acks and silences."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from piggywatch.config_types import parse_duration
from piggywatch.rules.manager import RuleManager
from piggywatch.rules.templating import format_go_float
from piggywatch.server import ApiError, read_body
from piggywatch.state import STATE_ERRORS

if TYPE_CHECKING:
    import httpx

    # Annotations only: the incidents (and the outbox they bring) are imported by delivery,
    # when a route is configured, not by every daemon (issue 13: ~2 MB RSS).
    from piggywatch.alerting.incidents import Incidents
    from piggywatch.alerting.silences import Silence
    from piggywatch.leadership import Leadership

log = logging.getLogger(__name__)

NO_DELIVERY = "alert delivery is not configured (the configuration has no route)"
# Marks a call a standby forwarded, so it is never forwarded twice (leadership changing).
FORWARDED_HEADER = "X-PiggyWatch-Forwarded-By"
FORWARD_TIMEOUT_SECONDS = 10.0
FORWARD_CONNECT_SECONDS = 2.0
FORWARDS_AT_ONCE = 2
# What a hook request's sender signs or says about its body, forwarded with it.
_HOOK_HEADERS = (("Content-Type", "CONTENT_TYPE"),
                 ("X-PagerDuty-Signature", "HTTP_X_PAGERDUTY_SIGNATURE"),
                 ("X-Slack-Signature", "HTTP_X_SLACK_SIGNATURE"),
                 ("X-Slack-Request-Timestamp", "HTTP_X_SLACK_REQUEST_TIMESTAMP"))
# A silence ends within this time: a longer one is a typo (or a hostile number).
MAX_SILENCE_SECONDS = 10 * 365 * 86400


class DaemonApi:
    """The daemon's AlertingApi: reads the rules' alerts, acts through the incident desk."""

    def __init__(self, rules: RuleManager | None, incidents: Incidents | None, *,
                 clock: Callable[[], float] = time.time, unavailable: str = "") -> None:
        self._rules = rules
        self._incidents = incidents
        self._clock = clock
        # Set while leadership changes: every call answers 503 (clients retry).
        self._unavailable = unavailable

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, shaped like Prometheus's /api/v1/alerts, plus their
        delivery state when delivery is configured."""
        self._check_available()
        if self._rules is None:
            return []
        active = self._rules.active_alerts()
        delivery = {} if self._incidents is None else self._incidents.status(
            ((a.fingerprint, dict(a.labels)) for _, _, a in active), self._clock())
        found = []
        for group, _, alert in active:
            item: dict[str, Any] = {
                "labels": dict(alert.labels),
                "annotations": alert.annotations,
                "state": alert.state.value,
                "activeAt": _iso(alert.active_at),
                "activeAtUnix": alert.active_at,
                "value": format_go_float(alert.value),
                "fingerprint": alert.fingerprint,
                "group": group,
            }
            item.update(delivery.get(alert.fingerprint, {}))
            found.append(item)
        return found

    def acknowledge(self, fingerprint: str, by: str, comment: str,
                    source: str = "api") -> dict[str, Any]:
        """Acknowledge the incident(s) an alert was notified in (or an incident by its key)."""
        result = self._delivery().acknowledge(fingerprint, by, comment, source=source)
        if result is None:
            raise ApiError(404, f"{fingerprint} is no notified incident nor an alert in one "
                                "(it is not firing, or its group has not notified yet)")
        first, new = result.acks[0]
        return {"fingerprint": fingerprint, "incident": first.incident, "new": new,
                "ack": first.as_dict(),
                "incidents": [{"incident": a.incident, "new": n, "ack": a.as_dict()}
                              for a, n in result.acks]}

    def silences(self) -> list[dict[str, Any]]:
        """Every silence kept: pending, active, and expired within the last day."""
        now = self._clock()
        return [_silence(s, now) for s in self._delivery().silences.list_all(now)]

    def add_silence(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a silence from ``{"matchers": [...], "duration": "2h" | "ends_at": unix,
        "comment": "...", "created_by": "..."}``."""
        silences = self._delivery().silences
        now = self._clock()
        matchers = body.get("matchers")
        if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
            raise ApiError(400, 'give "matchers": a list of matcher strings such as '
                                '["alertname=\\"PostgresSlowStatement\\""]')
        comment, created_by = body.get("comment", ""), body.get("created_by", "")
        if not isinstance(comment, str) or not comment.strip():
            raise ApiError(400, 'give "comment": why the silence is needed')
        if not isinstance(created_by, str) or not created_by.strip():
            raise ApiError(400, 'give "created_by": who creates the silence')
        try:
            if "ends_at" in body:
                ends_at = float(body["ends_at"])
            else:
                ends_at = now + parse_duration(body.get("duration"))
            if not math.isfinite(ends_at) or ends_at > now + MAX_SILENCE_SECONDS:
                raise ValueError('"ends_at" / "duration" must end a silence within '
                                 f"{MAX_SILENCE_SECONDS // 86400 // 365} years")
            silence = silences.create(matchers, ends_at=ends_at, now=now,
                                      created_by=created_by.strip(), comment=comment.strip())
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        except OverflowError:
            raise ApiError(400, '"ends_at" / "duration" is too large a number') from None
        return {"silence": _silence(silence, now)}

    def expire_silence(self, silence_id: str) -> dict[str, Any]:
        """End a silence now."""
        now = self._clock()
        try:
            silence = self._delivery().silences.expire(silence_id, now)
        except KeyError:
            raise ApiError(404, f"no silence with id {silence_id}") from None
        return {"silence": _silence(silence, now)}

    def _check_available(self) -> None:
        if self._unavailable:
            raise ApiError(503, self._unavailable)

    def _delivery(self) -> Incidents:
        self._check_available()
        if self._incidents is None:
            raise ApiError(409, NO_DELIVERY)
        return self._incidents


def _silence(silence: Silence, now: float) -> dict[str, Any]:
    return {"id": silence.id, "matchers": list(silence.matchers), "state":
            silence.state(now).value, "starts_at": silence.starts_at, "ends_at": silence.ends_at,
            "created_by": silence.created_by, "comment": silence.comment}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")



class LeaderForward:
    """On a standby replica, alerting API calls go to the leader, which holds the alerts,
    acks and silences in force; the caller gets the leader's answer unchanged."""

    def __init__(self, leadership: Leadership, instance: str, *, ca_file: str | None = None
                 ) -> None:
        self._leadership = leadership
        self._instance = instance
        self._verify: str | bool = ca_file or True
        # A leader that does not answer holds a forward for its timeout: at most this many
        # at once, so /healthz and /metrics keep HTTP workers of their own.
        self._slots = threading.BoundedSemaphore(FORWARDS_AT_ONCE)

    def __call__(self, method: str, path: str, environ: dict[str, Any]
                 ) -> tuple[int, bytes] | None:
        """An API call's (status, JSON body) from the leader, or None on the leader."""
        if self._leadership.is_leader():
            return None  # (before the body is read: the call is answered here)
        response = self._send(method, path, environ, read_body(environ), {
            "Authorization": environ.get("HTTP_AUTHORIZATION", ""),
            "Content-Type": "application/json"})
        return response.status_code, response.content

    def hook(self, method: str, path: str, environ: dict[str, Any], body: bytes
             ) -> tuple[int, bytes, str] | None:
        """A hook request's (status, body, content type) from the leader, or None on the
        leader. PagerDuty's and Slack's requests, and an ack link's page, reach whichever
        replica the load balancer picks: the leader holds the incidents they act on. The
        body and the signature headers go unchanged, so the leader checks the signature."""
        try:
            if self._leadership.is_leader():
                return None
            headers = {name: environ[key] for name, key in _HOOK_HEADERS if environ.get(key)}
            if not all(value.isascii() and value.isprintable() for value in headers.values()):
                raise ApiError(400, "a header of the request is not printable ASCII")
            response = self._send(method, path, environ, body, headers)
        except ApiError as exc:
            return exc.status, json.dumps({"status": "error", "error": exc.message}).encode(), \
                "application/json"
        except STATE_ERRORS as exc:  # who leads could not be read: the sender retries
            log.warning("%s %s: cannot tell the leader: %s", method, path, exc)
            return 503, json.dumps({"status": "error", "error": "the state database is "
                                    "unavailable; retry"}).encode(), "application/json"
        return (response.status_code, response.content,
                response.headers.get("Content-Type", "application/octet-stream"))

    def _send(self, method: str, path: str, environ: dict[str, Any], body: bytes,
              headers: dict[str, str]) -> httpx.Response:
        if environ.get("HTTP_" + FORWARDED_HEADER.upper().replace("-", "_")):
            raise ApiError(503, "leadership is changing; retry in a few seconds")
        url = self._leadership.leader_url()
        if not url:
            raise ApiError(503, "this replica is a standby and no leader is known yet; "
                                "retry in a few seconds")
        import httpx

        query = environ.get("QUERY_STRING", "")
        target = url.rstrip("/") + path + (f"?{query}" if query else "")
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, "this standby is forwarding as many requests as it may; "
                                "retry in a few seconds")
        try:
            return httpx.request(method, target, content=body,
                                 headers={**headers, FORWARDED_HEADER: self._instance},
                                 timeout=httpx.Timeout(FORWARD_TIMEOUT_SECONDS,
                                                       connect=FORWARD_CONNECT_SECONDS),
                                 verify=self._verify)
        except httpx.InvalidURL as exc:
            raise ApiError(400, f"the request cannot be forwarded to the leader: {exc}"
                           ) from None
        except httpx.HTTPError as exc:
            raise ApiError(502, f"the leader at {url} did not answer: "
                                f"{type(exc).__name__}") from None
        finally:
            self._slots.release()
