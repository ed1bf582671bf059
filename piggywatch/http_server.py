"""The HTTP transport under the endpoints: slow or many clients cannot starve /metrics.

One thread reads and writes every connection without blocking (TLS handshake included); only
complete requests go to a small fixed pool of threads that run the WSGI app through wsgiref,
into memory (``wsgi_adapter.py``), and the reading thread sends their responses. So:

- a client that sends half a request, or none, or reads its response slowly, costs a socket
  and a buffer, not a thread;
- the whole request (handshake, head and body) must arrive within ``request_timeout`` of the
  connection's accept, however the client paces its bytes, and the response must be taken
  within ``request_timeout`` of its being ready;
- at most ``max_connections`` are open: when all are taken, a new connection displaces the one
  that has waited longest for its client's request; only when every connection is being
  answered does a new one get 503;
- everything the transport has to say goes through ``logging`` (JSON lines in the daemon),
  never a raw traceback on stderr.

Well-kept servers were weighed first: waitress reads asynchronously too but has no TLS and
only an inactivity timeout (a client sending a byte a second is never cut); cheroot has TLS
but does the handshake on its accepting thread and reads requests on its workers, so 150
half-sent requests hold every worker and /healthz does not answer.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import re
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from piggywatch.wsgi_adapter import Request, WSGIApp, answer, wsgi_server

log = logging.getLogger("piggywatch.server")

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0
# Threads that run the app (no client I/O: the app answers into memory). Few, because each
# thread that builds a large /metrics keeps its own malloc arena: 4 threads add ~0.5 MB of
# RSS after 100 scrapes, 16 add ~4 MB (bench/http_bench.py).
WORKER_THREADS = 4
# The reader waits for a body up to this size; the app refuses anything over its own limit.
MAX_BUFFERED_BODY_BYTES = 256 * 1024
# A head longer than this is handed over as it is, and wsgiref answers 414 / 431.
MAX_HEAD_BYTES = 64 * 1024
# A client answered 503 gets this long to read it and hang up before its socket is closed.
LINGER_SECONDS = 1.0
REFUSALS_LOGGED_EVERY_SECONDS = 60.0

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r\n", re.I)


@dataclass(eq=False)
class _Connection:
    """A client the reader is waiting for (or, lingering, one it has answered 503)."""

    sock: socket.socket
    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    handshaken: bool = True
    lingering: bool = False
    # A response being sent: what is left of it.
    out: memoryview | None = None


class HttpServer:
    """The daemon's HTTP server, optionally over TLS: ``start()`` serves in the background."""

    def __init__(self, app: WSGIApp, host: str, port: int, *, tls: tuple[str, str] | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
                 threads: int = WORKER_THREADS) -> None:
        if max_connections < 1 or not 0 < request_timeout < float("inf"):
            raise ValueError("max_connections must be >= 1 and request_timeout > 0 seconds")
        self._wsgi = wsgi_server(host, port)
        try:
            self._wsgi.server_bind()
            self._wsgi.server_activate()
        except OSError:
            self._wsgi.server_close()
            raise
        self._wsgi.set_app(app)
        self._listener = self._wsgi.socket
        self._listener.setblocking(False)
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls[0], tls[1])
            self._tls = context
        self._max_connections = max_connections
        self._timeout = request_timeout
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # Oldest first: expiry and displacement both look at the front.
        self._reading: collections.OrderedDict[int, _Connection] = collections.OrderedDict()
        self._lingering: dict[int, _Connection] = {}
        self._writing: dict[int, _Connection] = {}
        # Responses the workers have finished, for the reader thread to send.
        self._responses: queue.SimpleQueue[tuple[socket.socket, bytes]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._answering = 0  # handed to the workers and not yet closed
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._stopping = False
        self._refused = 0
        self._refusal_logged_at = -REFUSALS_LOGGED_EVERY_SECONDS
        self._reader = threading.Thread(target=self._read_loop, name="http", daemon=True)
        self._workers = [threading.Thread(target=self._work, name=f"http-{n}", daemon=True)
                         for n in range(threads)]

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._wsgi.server_address[1])

    def start(self) -> None:
        """Start serving."""
        for worker in self._workers:
            worker.start()
        self._reader.start()

    def stop(self) -> None:
        """Stop serving and close every socket (requests being answered finish on their own)."""
        self._stopping = True
        self._wake_w.send(b"x")
        if self._reader.is_alive():
            self._reader.join(5)
        for _ in self._workers:
            self._queue.put(None)
        for connection in [*self._reading.values(), *self._lingering.values(),
                           *self._writing.values()]:
            _close(connection.sock)
        self._reading.clear()
        self._lingering.clear()
        self._writing.clear()
        self._selector.close()
        self._wsgi.server_close()
        self._wake_r.close()
        self._wake_w.close()

    # The reader thread: accepts, handshakes, reads, and enforces the limits.

    def _read_loop(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not self._stopping:
            wait = self._next_deadline() - time.monotonic()
            try:
                events = self._selector.select(max(0.0, min(wait, 1.0)))
            except OSError:
                if self._stopping:
                    return
                raise
            for key, _ in events:
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        _drain(self._wake_r)
                        self._take_responses()
                    else:
                        self._on_readable(key.data)
                except Exception:  # a bug: drop that connection, keep serving the others
                    log.exception("http: reading a connection failed")
                    if isinstance(key.data, _Connection):
                        if key.data.out is not None:
                            self._done_writing(key.data)
                        else:
                            self._forget(key.data)
            self._expire(time.monotonic())

    def _next_deadline(self) -> float:
        deadlines = [c.deadline for c in (*self._lingering.values(),
                                          *self._writing.values())]
        if self._reading:
            deadlines.append(next(iter(self._reading.values())).deadline)
        return min(deadlines, default=time.monotonic() + 1.0)

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: retry on the next loop
                log.warning("http: could not accept a connection: %s", exc)
                return
            sock.setblocking(False)
            if not self._make_room():
                self._refuse(sock, address)
                continue
            connection = _Connection(sock, address, time.monotonic() + self._timeout)
            if self._tls is not None:
                try:
                    connection.sock = self._tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("http: TLS with %s failed: %s", address, exc)
                    _close(sock)
                    continue
                connection.handshaken = False
            self._reading[connection.sock.fileno()] = connection
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _make_room(self) -> bool:
        """Whether one more connection may open, displacing the longest-waiting reader."""
        with self._lock:
            answering = self._answering
        if answering + len(self._reading) < self._max_connections:
            return True
        if not self._reading:
            return False
        _, oldest = self._reading.popitem(last=False)
        log.debug("http: %s displaced: still sending its request at the connection limit",
                  oldest.address)
        self._forget(oldest)
        return True

    def _refuse(self, sock: socket.socket, address: Any) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSALS_LOGGED_EVERY_SECONDS:
            log.warning("http: %d connection(s) answered 503: all %d connections "
                        "(server.max_connections) are being answered", self._refused,
                        self._max_connections)
            self._refused, self._refusal_logged_at = 0, now
        if self._tls is not None:  # no handshake for a refusal: a clean close
            _close(sock)
            return
        try:
            sock.send(_refusal(self._max_connections))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close(sock)
            return
        if len(self._lingering) >= self._max_connections:
            _close(sock)
            return
        # Read what the client sent until it hangs up, so that closing sends no reset
        # that could overtake the 503.
        connection = _Connection(sock, address, now + LINGER_SECONDS, lingering=True)
        self._lingering[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, connection)

    def _on_readable(self, connection: _Connection) -> None:
        if connection.out is not None:
            self._send(connection)
            return
        if connection.lingering:
            if not _drain(connection.sock):
                self._forget(connection)
            return
        if not connection.handshaken and not self._handshake(connection):
            return
        complete = self._receive(connection)
        if complete is None:
            self._forget(connection)
        elif complete:
            self._selector.unregister(connection.sock)
            del self._reading[connection.sock.fileno()]
            with self._lock:
                self._answering += 1
            self._queue.put(Request(connection.sock, bytes(connection.data)))

    def _handshake(self, connection: _Connection) -> bool:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, connection)
            return False
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, connection)
            return False
        except (ssl.SSLError, OSError) as exc:
            log.debug("http: TLS handshake with %s failed: %s", connection.address, exc)
            self._forget(connection)
            return False
        connection.handshaken = True
        self._selector.modify(sock, selectors.EVENT_READ, connection)
        return True

    def _receive(self, connection: _Connection) -> bool | None:
        """Read what has arrived: True once the request is complete, None if the client
        is gone."""
        data = connection.data
        while True:
            try:
                chunk = connection.sock.recv(16384)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                break
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
            if len(data) > MAX_HEAD_BYTES + MAX_BUFFERED_BODY_BYTES:
                break
        return _is_complete(data)

    def _expire(self, now: float) -> None:
        while self._reading:
            oldest = next(iter(self._reading.values()))
            if oldest.deadline > now:
                break
            log.debug("http: %s dropped: its request did not arrive within %gs "
                      "(server.request_timeout)", oldest.address, self._timeout)
            self._reading.popitem(last=False)
            self._forget(oldest)
        for connection in [c for c in self._lingering.values() if c.deadline <= now]:
            self._forget(connection)
        for connection in [c for c in self._writing.values() if c.deadline <= now]:
            log.debug("http: %s dropped: it did not read its response within %gs "
                      "(server.request_timeout)", connection.address, self._timeout)
            self._done_writing(connection)

    def _take_responses(self) -> None:
        while True:
            try:
                sock, data = self._responses.get_nowait()
            except queue.Empty:
                return
            connection = _Connection(sock, None, time.monotonic() + self._timeout,
                                     out=memoryview(data))
            try:
                sock.setblocking(False)
                connection.address = sock.getpeername()
            except OSError:
                self._done_writing(connection)
                continue
            self._writing[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_WRITE, connection)
            self._send(connection)

    def _send(self, connection: _Connection) -> None:
        """Send what the socket takes now; the whole response goes before its deadline."""
        out = connection.out
        assert out is not None
        try:
            while out:
                sent = connection.sock.send(out[:16384])
                out = out[sent:]
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                ssl.SSLWantReadError):
            connection.out = out
            return
        except OSError as exc:
            log.debug("http: sending to %s failed: %s", connection.address, exc)
        self._done_writing(connection)

    def _done_writing(self, connection: _Connection) -> None:
        self._writing.pop(connection.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        _finish(connection.sock)
        with self._lock:
            self._answering -= 1

    def _forget(self, connection: _Connection) -> None:
        fileno = connection.sock.fileno()
        self._reading.pop(fileno, None)
        self._lingering.pop(fileno, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        _close(connection.sock)

    # The workers: run the app on complete requests.

    def _work(self) -> None:
        """Run the app; the response is written to memory and the reader thread sends it,
        so a client that reads slowly holds no worker either."""
        while (request := self._queue.get()) is not None:
            try:
                answer(request, self._wsgi)
            except OSError as exc:  # the client is gone: nothing to send
                log.debug("http: answering a request failed: %s", exc)
            except Exception:  # a bug: log it, keep serving
                log.exception("http: answering a request failed")
            self._responses.put((request.sock, request.response.getvalue()))
            try:
                self._wake_w.send(b"x")
            except OSError:  # stopped meanwhile
                _close(request.sock)


def _is_complete(data: bytearray) -> bool:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) >= MAX_HEAD_BYTES
    match = _CONTENT_LENGTH.search(data, 0, end + 2)
    length = int(match.group(1)) if match else 0
    return len(data) >= end + 4 + min(length, MAX_BUFFERED_BODY_BYTES)


def _refusal(limit: int) -> bytes:
    body = json.dumps({"status": "error", "error": f"too many connections (the server "
                       f"answers {limit} at a time); retry in a few seconds"}).encode()
    return (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _drain(sock: socket.socket) -> bool:
    """Read and drop what is waiting; False once the peer has closed."""
    try:
        while chunk := sock.recv(65536):
            del chunk
        return False
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False


def _finish(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
