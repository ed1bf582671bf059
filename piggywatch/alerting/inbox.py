"""What flows into the dispatcher, as data: alert events from the rules and the outbox's
permanent failures, queued here and drained by the dispatcher's own pass.

Nothing here calls back into the dispatcher: the rules and the outbox only append, and one
event wakes the dispatcher's thread so a page still leaves within milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from piggywatch.alerting.model import Delivery, Notification
from piggywatch.rules.alerts import AlertEvent

__all__ = ["DeliveryFailure", "Drained", "FailureSink", "Inbox"]


class FailureSink(Protocol):
    """Where the outbox records the notifications it gave up."""

    def failed(self, notification: Notification, delivery: Delivery) -> None:
        """Record one notification given up (never raises, never blocks on I/O)."""
        ...


@dataclass(frozen=True)
class DeliveryFailure:
    """A notification the outbox gave up (refused for good, or too old), and why."""

    notification: Notification
    delivery: Delivery


@dataclass(frozen=True)
class Drained:
    """What one pass takes from the inbox, in arrival order within each kind."""

    events: list[AlertEvent]
    failures: list[DeliveryFailure]


class Inbox:
    """The rules' alert sink and the outbox's failure sink, owned by delivery."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[AlertEvent] = []
        self._failures: list[DeliveryFailure] = []
        self._arrived = threading.Event()

    def __call__(self, event: AlertEvent) -> None:
        """The rules' sink (``AlertSink``): queue one event (never blocks on I/O)."""
        self.put([event])

    def put(self, events: Iterable[AlertEvent]) -> None:
        """Queue events and wake the dispatcher."""
        with self._lock:
            self._events.extend(events)
        self._arrived.set()

    def failed(self, notification: Notification, delivery: Delivery) -> None:
        """The outbox gave ``notification`` up: recorded for the dispatcher's next pass."""
        with self._lock:
            self._failures.append(DeliveryFailure(notification, delivery))
        self._arrived.set()

    def drain(self) -> Drained:
        """Everything queued since the last drain."""
        with self._lock:
            drained = Drained(self._events, self._failures)
            self._events, self._failures = [], []
        return drained

    def clear(self) -> None:
        """Drop what is queued (a deposed leader's dispatcher will not take it)."""
        self.drain()

    def wake(self) -> None:
        """Wake the dispatcher's thread without queueing anything."""
        self._arrived.set()

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds for something to arrive, then re-arm."""
        self._arrived.wait(timeout)
        self._arrived.clear()
