"""Waiting for conditions, never for a fixed time: one ``wait_for`` polls until the
condition holds and fails naming what it waited for; ``wait_until_quiet`` is the positive
signal that a system has settled (its figures stopped changing over several reads) before a
test asserts that something did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")
H = TypeVar("H", bound=Hashable)

INTERVAL = 0.05


def wait_for(condition: Callable[[], T], timeout: float, what: str, *,
             interval: float = INTERVAL, details: Callable[[], str] | None = None) -> T:
    """Poll ``condition`` until it returns something true and return that; after
    ``timeout`` seconds fail with "timed out after …s waiting for <what>" (and ``details()``,
    e.g. a daemon's log)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_until_quiet(read: Callable[[], H], timeout: float, what: str, *, reads: int = 3,
                     interval: float = 0.2) -> H:
    """Poll ``read`` until it returned the same value ``reads`` times in a row, and return
    it: the figures a test then asserts on are settled, not caught mid-change."""
    deadline = time.monotonic() + timeout
    last = read()
    same = 1
    while same < reads:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} to settle "
                                 f"(last read {last!r})")
        time.sleep(interval)
        now = read()
        same = same + 1 if now == last else 1
        last = now
    return last
