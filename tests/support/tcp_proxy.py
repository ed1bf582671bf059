"""A loopback TCP proxy that can freeze: the way to make a database connection hang."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class FreezableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; ``freeze()`` stops moving bytes in
    both directions while every socket stays open, as a stalled network path does (the
    kernel still acknowledges, so neither end's TCP timeouts fire). ``cut()`` closes every
    forwarded connection; new ones are still accepted."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> FreezableProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self.cut()
        self._listener.close()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            with self._lock:
                live = {s for pair in self._pairs for s in pair}
            for sock in [s for s in peers if s not in live]:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
                del peers[sock]
            if self._frozen.is_set():
                # Accept nothing and read nothing: the bytes wait in the kernel's buffers.
                self._stop.wait(0.02)
                continue
            try:
                ready = selector.select(timeout=0.02)
            except OSError:  # a socket cut() closed under the selector
                continue
            for key, _ in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept(selector, peers)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        peers[sock].sendall(data)
                        continue
                except OSError:
                    pass
                self._drop(sock, peers[sock])
        selector.close()

    def _accept(self, selector: selectors.BaseSelector,
                peers: dict[socket.socket, socket.socket]) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server = socket.create_connection(self.upstream, timeout=5)
        client.setblocking(True)
        server.setblocking(True)
        with self._lock:
            self._pairs.append((client, server))
        peers[client], peers[server] = server, client
        selector.register(client, selectors.EVENT_READ)
        selector.register(server, selectors.EVENT_READ)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._pairs = [p for p in self._pairs if a not in p]
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.close()
