"""A small threaded HTTP server on a free loopback port: the base of the fake channels."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body`` is bytes, text, or anything JSON can encode; ``delay``
    holds the answer back (to make a client time out)."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body's bytes and the headers to send with it."""
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            data = self.body
        elif isinstance(self.body, str):
            data = self.body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            data = json.dumps(self.body).encode()
            headers.setdefault("Content-Type", "application/json")
        return data, headers


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header's value, whatever the case of ``name``."""
        return self.headers.get(name.lower())


class LocalHTTPServer:
    """Serves on 127.0.0.1 at a free port from a background thread. Every request is
    recorded; scripted replies (``script``) answer the next requests before ``handle``
    does. Subclasses implement ``handle``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: deque[tuple[str | None, Reply]] = deque()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> Self:
        """Bind a free port and serve until ``stop``."""
        class Handler(_Handler):
            pass

        Handler.server_owner = self
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"{type(self).__name__}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- what tests use --------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None, "start() the server first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order, scripted or not."""
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Answer the next requests (to ``path`` only, if given) with ``replies``, in
        order, before the server's own behaviour resumes."""
        with self._lock:
            self._script.extend((path, reply) for reply in replies)

    def clear(self) -> None:
        """Forget recorded requests and pending scripted replies."""
        with self._lock:
            self._requests.clear()
            self._script.clear()

    def handle(self, request: RecordedRequest) -> Reply:
        """The server's own answer to ``request``."""
        return Reply(404, {"error": "not found"})

    # --- internals -------------------------------------------------------------------
    def _dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            for i, (path, reply) in enumerate(self._script):
                if path is None or path == request.path:
                    del self._script[i]
                    return reply
        try:
            return self.handle(request)
        except Exception:  # a bug in a fake server must show in the failing test
            return Reply(500, traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do: clients pool connections
    timeout = 10  # idle keep-alive connections end, so stopped servers free their threads
    server_owner: LocalHTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command, path=url.path, query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        reply = self.server_owner._dispatch(request)
        if reply.delay:
            time.sleep(reply.delay)
        data, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test): nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        pass
