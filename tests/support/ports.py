"""Free loopback ports for the local servers and daemons that tests and benches start.

A port found free can be taken by someone else before it is bound (another test's server,
a parallel run): ``free_port`` never hands the same port out twice in one process, and
``start_on_free_port`` starts a server again on another port when its port was taken.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 5
_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now and this process has not handed out."""
    with _lock:
        for _ in range(100):
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError(f"no free port on {host} that was not already handed out")


def address_in_use(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the port was taken."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def start_on_free_port(start: Callable[[int], T], attempts: int = ATTEMPTS,
                       host: str = "127.0.0.1") -> T:
    """``start(port)`` on a free port, again on another one while the port was taken
    (``start`` raises an error saying "address in use"); any other error is raised."""
    for attempt in range(attempts):
        try:
            return start(free_port(host))
        except Exception as exc:
            if attempt == attempts - 1 or not address_in_use(exc):
                raise
    raise AssertionError("unreachable")
