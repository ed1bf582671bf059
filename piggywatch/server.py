"""HTTP endpoints: /metrics, /healthz, /readyz and the /api/v1 API.

Every /api/v1 call needs ``Authorization: Bearer <server.api_token>``; an empty configured
token refuses every call, so an API that can silence pages is never open by accident.
/metrics can sit behind basic auth, and the whole server behind TLS.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from piggywatch.exporter import MetricsApp
from piggywatch.http_server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    HttpServer,
)
from piggywatch.state import STATE_ERRORS
from piggywatch.wsgi_adapter import WSGIApp

if TYPE_CHECKING:
    from piggywatch.ack.http import HookEndpoints, HookForward
    from piggywatch.ack.service import AckService
    from piggywatch.config import ServerConfig

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_REQUEST_TIMEOUT_SECONDS", "MAX_BODY_BYTES",
           "Access", "AlertingApi", "ApiError", "Endpoints", "Forward", "HttpServer", "WSGIApp",
           "read_body", "split_listen"]

StartResponse = Callable[..., Any]
# (method, path, WSGI environ) → (status, JSON body) from the leader, or None.
Forward = Callable[[str, str, dict[str, Any]], tuple[int, bytes] | None]

# A request body larger than this is refused: acks and silences are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024

_ACK = re.compile(r"^/api/v1/alerts/([0-9A-Za-z]{1,64})/ack$")
_SILENCE = re.compile(r"^/api/v1/silences/([0-9A-Za-z_-]{1,64})$")


class ApiError(Exception):
    """A request the API refuses, with the HTTP status and a reason for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AlertingApi(Protocol):
    """What the API asks of the daemon's alerting side."""

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts with their delivery state."""
        ...

    def acknowledge(self, fingerprint: str, by: str, comment: str,
                    source: str = "api") -> dict[str, Any]:
        """Acknowledge the incident of an alert (``source``: api or cli); ApiError(404) if
        there is none."""
        ...

    def silences(self) -> list[dict[str, Any]]:
        """Every silence, active, pending or expired."""
        ...

    def add_silence(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a silence; ApiError(400) on a bad request."""
        ...

    def expire_silence(self, silence_id: str) -> dict[str, Any]:
        """End a silence now; ApiError(404) if unknown."""
        ...


@dataclass(frozen=True)
class Access:
    """Who may call what: the API token, and optional basic auth on /metrics."""

    api_token: str = ""
    metrics_username: str = ""
    metrics_password: str = ""

    @classmethod
    def from_config(cls, server: ServerConfig) -> Access:
        """The access rules the ``server`` settings describe."""
        basic = server.metrics_basic_auth
        return cls(api_token=server.api_token.get_secret_value(),
                   metrics_username=basic.username if basic else "",
                   metrics_password=basic.password.get_secret_value() if basic else "")

    def api_allowed(self, header: str) -> bool:
        """Whether an Authorization header carries the API token (constant time)."""
        scheme, _, token = header.partition(" ")
        if not self.api_token or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.api_token.encode())

    def metrics_allowed(self, header: str) -> bool:
        """Whether /metrics may be read with this Authorization header."""
        if not self.metrics_username:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Both compared, always, so the time taken says nothing about which one was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.metrics_username.encode())
        password_ok = hmac.compare_digest(password.encode(), self.metrics_password.encode())
        return user_ok and password_ok


class Endpoints:
    """The daemon's HTTP surface as a WSGI app; the daemon supplies the answers."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], tuple[bool, str]],
        statements: Callable[[], dict[str, Any]],
        alerting: AlertingApi,
        access: Access,
    ) -> None:
        # The text format with postgres_exporter's counter names and collection times.
        self._metrics = MetricsApp(registry)
        self._ready = ready
        self._statements = statements
        # Swapped by the daemon when this replica becomes the leader or a standby.
        self.alerting = alerting
        # On a standby: sends an alerting call to the leader and returns its answer
        # (status, JSON body), or None to answer here.
        self.forward: Forward | None = None
        self._access = access
        # /hooks/* and /ack/*: each request proves itself (a signature, a signed token), so
        # no API token; the daemon points ``hook_service`` at the leader's delivery.
        self.hook_service: AckService | None = None
        # On a standby: sends a hook request to the leader (see LeaderForward.hook).
        self.forward_hook: HookForward | None = None
        self._hooks: HookEndpoints | None = None

    def close(self) -> None:
        """Stop the work done ahead of requests (compressing /metrics)."""
        self._metrics.close()

    def _hook_endpoints(self) -> HookEndpoints:
        # The ack package is imported on the first hook request, not at start: most
        # configurations have no hooks, and it costs ~0.8 MB RSS (issue 13).
        if self._hooks is None:
            from piggywatch.ack.http import HookEndpoints

            self._hooks = HookEndpoints()
        self._hooks.service = self.hook_service
        self._hooks.forward = self.forward_hook
        return self._hooks

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        if path == "/metrics":
            if not self._access.metrics_allowed(authorization):
                return _text(start_response, "401 Unauthorized", "unauthorized\n",
                             [("WWW-Authenticate", 'Basic realm="piggywatch"')])
            metrics: Iterable[bytes] = self._metrics(environ, start_response)
            return metrics
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path.startswith(("/hooks/", "/ack/")):
            return self._hook_endpoints()(environ, start_response)
        if path == "/readyz":
            ready, why = self._ready()
            return _text(start_response, "200 OK" if ready else "503 Service Unavailable",
                         why + "\n")
        if path.startswith("/api/"):
            if not self._access.api_allowed(authorization):
                return _json(start_response, 401, {"status": "error", "error": "unauthorized: "
                             "send Authorization: Bearer <server.api_token>"},
                             [("WWW-Authenticate", 'Bearer realm="piggywatch"')])
            method = environ.get("REQUEST_METHOD", "GET")
            try:
                _check_path(path)
                if self.forward is not None and path != "/api/v1/statements":
                    forwarded = self.forward(method, path, environ)
                    if forwarded is not None:
                        return _raw_json(start_response, *forwarded)
                data = self._api(method, path, environ)
            except ApiError as exc:
                return _json(start_response, exc.status, {"status": "error",
                                                          "error": exc.message})
            except STATE_ERRORS as exc:
                log.warning("%s %s: the state database failed: %s", method, path, exc)
                return _json(start_response, 503, {
                    "status": "error", "error": "the state database is unavailable "
                    f"({type(exc).__name__}); retry in a few seconds"})
            except Exception:
                # A bug, not the caller's fault: the details go to the log, not to the client.
                log.exception("%s %s failed", method, path.encode("unicode_escape").decode())
                return _json(start_response, 500, {
                    "status": "error", "error": "internal error; the daemon's log has the "
                    "details"})
            return _json(start_response, 200, {"status": "success", "data": data})
        if path == "/":
            return _text(start_response, "200 OK", "PiggyWatch: /metrics /healthz /readyz "
                         "/api/v1/alerts /api/v1/silences /api/v1/statements\n")
        return _text(start_response, "404 Not Found", "not found\n")

    def _api(self, method: str, path: str, environ: dict[str, Any]) -> Any:
        if path == "/api/v1/statements":
            _allow(method, "GET")
            return self._statements()
        if path == "/api/v1/alerts":
            _allow(method, "GET")
            return {"alerts": self.alerting.alerts()}
        if match := _ACK.match(path):
            _allow(method, "POST")
            body = _body(environ)
            by, comment = body.get("by", ""), body.get("comment", "")
            if not isinstance(by, str) or not by.strip() or len(by) > 200:
                raise ApiError(400, 'give "by": who acknowledges (1 to 200 characters)')
            if not isinstance(comment, str) or len(comment) > 2000:
                raise ApiError(400, '"comment" must be text of at most 2000 characters')
            source = body.get("source", "api")
            if source not in ("api", "cli"):
                raise ApiError(400, '"source" is "api" (the default) or "cli"')
            return self.alerting.acknowledge(match.group(1), by.strip(), comment, source)
        if path == "/api/v1/silences":
            if method == "POST":
                return self.alerting.add_silence(_body(environ))
            _allow(method, "GET")
            return {"silences": self.alerting.silences()}
        if match := _SILENCE.match(path):
            _allow(method, "DELETE")
            return self.alerting.expire_silence(match.group(1))
        raise ApiError(404, f"no such endpoint: {path}")


def _check_path(path: str) -> None:
    """API paths are printable ASCII; anything else (CR/LF that a standby would forward,
    bytes that are not UTF-8) is refused before it goes anywhere."""
    for offset, char in enumerate(path):
        if not " " < char < "\x7f":
            raise ApiError(400, f"the path has the character {char!r} at offset {offset}: "
                                "API paths are printable ASCII; percent-encode nothing "
                                "beyond the documented endpoints")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError(405, f"use {allowed}")


def read_body(environ: dict[str, Any]) -> bytes:
    """The request's body, refused beyond MAX_BODY_BYTES."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0 or length > MAX_BODY_BYTES:
        raise ApiError(400, f"the body must be JSON of at most {MAX_BODY_BYTES} bytes")
    return bytes(environ["wsgi.input"].read(length)) if length else b""


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    raw = read_body(environ) or b"{}"
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply; acks and silences are flat "
                            "JSON objects") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ApiError(400, f"the body is not valid JSON: {_short(exc)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large")
    return number


def _short(exc: ValueError) -> str:
    """The parser's reason, without echoing a long stretch of the body."""
    return str(exc)[:200]


def _text(start_response: StartResponse, status: str, body: str,
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data))), *(headers or [])])
    return [data]


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 502: "Bad Gateway",
            503: "Service Unavailable"}


def _json(start_response: StartResponse, status: int, body: Any,
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    return _raw_json(start_response, status, json.dumps(body, ensure_ascii=False).encode(),
                     headers)


def _raw_json(start_response: StartResponse, status: int, data: bytes,
              headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(f"{status} {_REASONS.get(status, 'Error')}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                    *(headers or [])])
    return [data]


def split_listen(listen: str) -> tuple[str, int]:
    """``"0.0.0.0:9790"`` or ``"[::1]:9790"`` → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
