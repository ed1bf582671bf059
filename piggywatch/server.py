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
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from piggywatch.state import STATE_ERRORS

if TYPE_CHECKING:
    from piggywatch.config import ServerConfig

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
# (method, path, WSGI environ) → (status, JSON body) from the leader, or None.
Forward = Callable[[str, str, dict[str, Any]], tuple[int, bytes] | None]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# A request body larger than this is refused: acks and silences are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
# A client that does not finish its request (or TLS handshake) in this time is dropped.
REQUEST_TIMEOUT_SECONDS = 30.0

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

    def acknowledge(self, fingerprint: str, by: str, comment: str) -> dict[str, Any]:
        """Acknowledge the incident of an alert; ApiError(404) if there is none."""
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
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._statements = statements
        # Swapped by the daemon when this replica becomes the leader or a standby.
        self.alerting = alerting
        # On a standby: sends an alerting call to the leader and returns its answer
        # (status, JSON body), or None to answer here.
        self.forward: Forward | None = None
        self._access = access

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
        if path == "/readyz":
            ready, why = self._ready()
            return _text(start_response, "200 OK" if ready else "503 Service Unavailable",
                         why + "\n")
        if path.startswith("/api/"):
            if not self._access.api_allowed(authorization):
                return _json(start_response, 401, {"status": "error", "error": "unauthorized: "
                             "send Authorization: Bearer <server.api_token>"},
                             [("WWW-Authenticate", 'Bearer realm="piggywatch"')])
            try:
                method = environ.get("REQUEST_METHOD", "GET")
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
            return self.alerting.acknowledge(match.group(1), by.strip(), comment)
        if path == "/api/v1/silences":
            if method == "POST":
                return self.alerting.add_silence(_body(environ))
            _allow(method, "GET")
            return {"silences": self.alerting.silences()}
        if match := _SILENCE.match(path):
            _allow(method, "DELETE")
            return self.alerting.expire_silence(match.group(1))
        raise ApiError(404, f"no such endpoint: {path}")


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
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


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


class _QuietHandler(WSGIRequestHandler):
    """Access lines at DEBUG instead of on stderr for every scrape."""

    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingWSGIServer):
    """Threaded; with TLS, each connection's handshake runs in its own thread, so a slow
    or broken client never holds up the others."""

    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(REQUEST_TIMEOUT_SECONDS)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            # The plain socket was handed over to the TLS one, which is closed here.
            self.shutdown_request(secure)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """A threaded WSGI server running in a background thread, optionally over TLS."""

    def __init__(self, app: WSGIApp, host: str, port: int, *,
                 tls: tuple[str, str] | None = None) -> None:
        server_class = _IPv6Server if ":" in host else _Server
        self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls[0], tls[1])
            self._server.tls = context
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def split_listen(listen: str) -> tuple[str, int]:
    """``"0.0.0.0:9790"`` or ``"[::1]:9790"`` → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
