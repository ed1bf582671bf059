"""The WSGI side of the HTTP server: a request read in full by the connection loop
(``http_server.py``) is answered by the app through wsgiref, into memory; the loop sends
the bytes. wsgiref's errors become log lines and JSON answers, never a traceback on stderr.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

__all__ = ["Request", "ResponseBuffer", "WSGIApp", "answer", "wsgi_server"]

log = logging.getLogger("piggywatch.server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_server(host: str, port: int) -> WSGIServer:
    """wsgiref's server, bound and listening on (host, port): used for its socket and its
    WSGI environ (the loop is the caller's). Set the app with ``set_app``."""
    server_class = _IPv6WSGIServer if ":" in host else _WSGIServer
    return server_class((host, port), _RequestHandler, bind_and_activate=False)


def answer(request: Request, server: WSGIServer) -> None:
    """Run the app on a complete request; the response is written to ``request.response``.
    Raises OSError when the client is gone."""
    address = request.sock.getpeername()
    # wsgiref types its request as a socket; ours carries the bytes read as well.
    _RequestHandler(request, address, server)  # type: ignore[arg-type]


class ResponseBuffer(io.BufferedIOBase):
    """Where wsgiref writes the response (the reader thread sends it afterwards)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


@dataclass(frozen=True)
class Request:
    """A connection whose request has arrived in full, for a worker to answer."""

    sock: socket.socket
    data: bytes
    response: ResponseBuffer = field(default_factory=ResponseBuffer)


class _WSGIServer(WSGIServer):
    """Used for its bound socket and WSGI environ; the loop is HttpServer's."""

    request_queue_size = 128


class _IPv6WSGIServer(_WSGIServer):
    address_family = socket.AF_INET6


class _LogStream(io.TextIOBase):
    """wsgi.errors: what an app writes there becomes a log line."""

    def write(self, text: str) -> int:
        if text.strip():
            log.warning("http: %s", text.strip())
        return len(text)


class _ServerHandler(ServerHandler):
    """wsgiref's handler with its errors logged, and a JSON 500 without the traceback."""

    error_status = "500 Internal Server Error"
    error_headers = [("Content-Type", "application/json")]  # noqa: RUF012 (wsgiref copies it)
    error_body = json.dumps({"status": "error", "error": "internal error; the daemon's log "
                             "has the details"}).encode()

    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], OSError):
            log.debug("http: the client went away: %s", exc_info[1])
        else:
            log.error("http: the request failed", exc_info=exc_info)


class _RequestHandler(WSGIRequestHandler):
    """wsgiref's request handler over a request already read in full."""

    request: Request

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = self.request.response

    def get_stderr(self) -> Any:
        return _LogStream()

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _ServerHandler(self.rfile, cast(IO[bytes], self.wfile), self.get_stderr(),
                                 self.get_environ(), multithread=True)
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back pointer
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """A request wsgiref cannot parse: a JSON error instead of its HTML page."""
        reason = self.responses.get(code, ("Error", ""))[0]
        body = json.dumps({"status": "error", "error": message or reason}).encode()
        self.close_connection = True
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)
