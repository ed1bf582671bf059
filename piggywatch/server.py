"""HTTP endpoints: /metrics, /healthz, /readyz and the read-only API."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Endpoints:
    """The daemon's HTTP surface as a WSGI app; the daemon supplies the answers."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], tuple[bool, str]],
        statements: Callable[[], dict[str, Any]],
        alerts: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._statements = statements
        self._alerts = alerts

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            metrics: Iterable[bytes] = self._metrics(environ, start_response)
            return metrics
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            ready, why = self._ready()
            return _text(start_response, "200 OK" if ready else "503 Service Unavailable",
                         why + "\n")
        if path == "/api/v1/statements":
            return _json(start_response, "200 OK", {"status": "success",
                                                     "data": self._statements()})
        if path == "/api/v1/alerts":
            return _json(start_response, "200 OK", {"status": "success",
                                                     "data": {"alerts": self._alerts()}})
        if path == "/":
            return _text(start_response, "200 OK", "PiggyWatch: /metrics /healthz /readyz "
                         "/api/v1/alerts /api/v1/statements\n")
        return _text(start_response, "404 Not Found", "not found\n")


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


def _json(start_response: StartResponse, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body, ensure_ascii=False).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


class _QuietHandler(WSGIRequestHandler):
    """Access lines at DEBUG instead of on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class HttpServer:
    """A threaded WSGI server running in a background thread."""

    def __init__(self, app: WSGIApp, host: str, port: int) -> None:
        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
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
