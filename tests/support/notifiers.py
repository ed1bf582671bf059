"""Recording notifiers: channels that take every notification and keep what they were sent,
for tests of the pipeline (dispatcher, outbox, API) that are not about one channel's wire
format (those use the local servers in tests/support/servers/)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from piggywatch.alerting.model import Delivery, Notification, Outcome


class RecordingNotifier:
    """Accepts everything and records it, in order (thread-safe: the outbox sends from its
    lanes' threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: list[Notification] = []

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        with self._lock:
            self.sent.append(notification)
        return Delivery(Outcome.ACCEPTED)

    def got(self) -> Counter[tuple[str, str, int]]:
        """(receiver, action, level) → how many times it was received."""
        with self._lock:
            return Counter((n.receiver, n.action.value, n.level) for n in self.sent)
