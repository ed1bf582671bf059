"""One receiver's share of the outbox: its pending items in delivery order, and its pace.

Only the first item of each incident (its head) is ever eligible, so the items of one
incident go strictly in enqueue order; among the heads that are due, the oldest goes first.
Not thread-safe: the outbox calls it with its lock held.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from piggywatch.alerting.model import Notification, Notifier
from piggywatch.alerting.outbox_store import StoredItem

__all__ = ["Lane", "PendingItem"]


@dataclass(eq=False)
class PendingItem:
    """A pending notification and where it stands."""

    seq: int
    notification: Notification
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""
    token: int = -1  # matches its one live heap entry; -1 while not scheduled

    @classmethod
    def from_stored(cls, row: StoredItem) -> PendingItem:
        """The item as it was when the state file last recorded it."""
        return cls(row.seq, row.notification, row.attempts, row.next_attempt_at,
                   row.last_error)

    def stored(self) -> StoredItem:
        """The item as the state file holds it."""
        return StoredItem(self.seq, self.notification, self.attempts, self.next_at,
                          self.last_error)


class Lane:
    """One receiver's pending items, by incident, and when it may send next."""

    def __init__(self, receiver: str) -> None:
        self.receiver = receiver
        self.notifier: Notifier | None = None
        self.throttle = 0.0
        self.ready_at = 0.0  # the throttle and any channel-wide Retry-After
        self.size = 0
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self._incidents: dict[str, deque[PendingItem]] = {}
        self._by_seq: dict[int, PendingItem] = {}
        self._in_flight: PendingItem | None = None
        # Heap entries go stale instead of being removed; a token tells the live one.
        self._waiting: list[tuple[float, int, int]] = []  # heads not yet due: (next_at, seq, token)
        self._due: list[tuple[int, int]] = []  # due heads: (seq, token)
        self._tokens = itertools.count()

    def add(self, item: PendingItem) -> None:
        """Append an item; items must arrive in seq order."""
        queue = self._incidents.setdefault(item.notification.incident, deque())
        queue.append(item)
        self._by_seq[item.seq] = item
        self.size += 1
        if len(queue) == 1:
            self._schedule(item)

    def pick(self, now: float) -> tuple[PendingItem | None, float]:
        """The oldest due head, now in flight; or None and the seconds until one may be."""
        while self._waiting and self._waiting[0][0] <= now:
            _, seq, token = heapq.heappop(self._waiting)
            if self._live(seq, token):
                heapq.heappush(self._due, (seq, token))
        while self._due and not self._live(*self._due[0]):
            heapq.heappop(self._due)
        if self._due:
            if now < self.ready_at:
                return None, self.ready_at - now
            seq, _ = heapq.heappop(self._due)
            item = self._by_seq[seq]
            item.token = -1
            self._in_flight = item
            return item, 0.0
        while self._waiting and not self._live(*self._waiting[0][1:]):
            heapq.heappop(self._waiting)
        if self._waiting:
            return None, max(self._waiting[0][0], self.ready_at) - now
        return None, float("inf")

    def retry_later(self, item: PendingItem, next_at: float) -> None:
        """Put a head that was just tried back, due at ``next_at``."""
        item.next_at = next_at
        if self._in_flight is item:
            self._in_flight = None
        if item.seq in self._by_seq:
            self._schedule(item)

    def remove(self, item: PendingItem) -> None:
        """Forget a finished item; the next item of its incident becomes its head."""
        if self._by_seq.pop(item.seq, None) is None:
            return
        if self._in_flight is item:
            self._in_flight = None
        item.token = -1
        self.size -= 1
        incident = item.notification.incident
        queue = self._incidents[incident]
        was_head = queue[0] is item
        queue.remove(item)
        if not queue:
            del self._incidents[incident]
        elif was_head:
            self._schedule(queue[0])

    def take_expired(self, created_before: float) -> list[PendingItem]:
        """Remove and return the items created before the horizon, except one in flight."""
        old = [item for item in self._by_seq.values()
               if item.notification.created_at < created_before and item is not self._in_flight]
        for item in old:
            self.remove(item)
        return old

    def items(self) -> Iterator[PendingItem]:
        """Every pending item, in no particular order."""
        return iter(list(self._by_seq.values()))

    def oldest_created_at(self) -> float | None:
        """The creation time of the oldest pending notification."""
        return min((i.notification.created_at for i in self._by_seq.values()), default=None)

    def _schedule(self, item: PendingItem) -> None:
        item.token = next(self._tokens)
        heapq.heappush(self._waiting, (item.next_at, item.seq, item.token))

    def _live(self, seq: int, token: int) -> bool:
        item = self._by_seq.get(seq)
        return item is not None and item.token == token
