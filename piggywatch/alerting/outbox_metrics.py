"""The outbox's figures, as samples for the store: results, depth, age and latency.

Latency is a summary without quantiles, ``_sum`` and ``_count`` as two counters (the
exporter knows counters and gauges only): ``rate(…_sum[5m]) / rate(…_count[5m])`` is the
mean time from a notification's creation to its acceptance over the window, retries included.
"""

from __future__ import annotations

from collections.abc import Iterable

from piggywatch.alerting.outbox_lane import Lane
from piggywatch.store.samples import MetricKind, MetricSpec, Sample, labels_of

__all__ = ["RESULTS", "SPECS", "STORE_KEY", "OutboxMetrics"]

STORE_KEY = "piggywatch/outbox"
RESULTS = ("accepted", "retried", "failed")

SPECS = (
    MetricSpec("piggywatch_notifications_total", MetricKind.COUNTER,
               "Delivery attempts by receiver and result: accepted and failed (given up for "
               "good) end a notification, retried ones are tried again"),
    MetricSpec("piggywatch_outbox_depth", MetricKind.GAUGE,
               "Notifications waiting in the outbox, by receiver (sum() for the total)"),
    MetricSpec("piggywatch_outbox_oldest_age_seconds", MetricKind.GAUGE,
               "Seconds since the oldest notification waiting for the receiver was created; "
               "0 when none waits"),
    MetricSpec("piggywatch_notification_latency_seconds_sum", MetricKind.COUNTER,
               "Seconds from creation to acceptance, summed over accepted notifications"),
    MetricSpec("piggywatch_notification_latency_seconds_count", MetricKind.COUNTER,
               "Accepted notifications counted in the latency sum"),
)


class OutboxMetrics:
    """Counts of attempts by result and the latency summary; not thread-safe (the outbox
    calls it under its lock)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[str, tuple[float, int]] = {}

    def add_receiver(self, receiver: str) -> None:
        """Start a receiver's counters at zero, so rate() works from its first failure."""
        for result in RESULTS:
            self._counts.setdefault((receiver, result), 0)

    def count(self, receiver: str, result: str) -> None:
        """One attempt with this result."""
        key = (receiver, result)
        self._counts[key] = self._counts.get(key, 0) + 1

    def accepted(self, receiver: str, latency: float) -> None:
        """One notification accepted ``latency`` seconds after its creation."""
        self.count(receiver, "accepted")
        total, count = self._latency.get(receiver, (0.0, 0))
        self._latency[receiver] = (total + max(0.0, latency), count + 1)

    def samples(self, now: float, lanes: Iterable[Lane]) -> list[Sample]:
        """Every figure at ``now``; depth and age from the lanes as they stand."""
        out: list[Sample] = []
        for (receiver, result), count in sorted(self._counts.items()):
            out.append(Sample("piggywatch_notifications_total",
                              labels_of(receiver=receiver, result=result), count, now))
        for lane in sorted(lanes, key=lambda lane: lane.receiver):
            labels = labels_of(receiver=lane.receiver)
            oldest = lane.oldest_created_at()
            out.append(Sample("piggywatch_outbox_depth", labels, lane.size, now))
            out.append(Sample("piggywatch_outbox_oldest_age_seconds", labels,
                              0.0 if oldest is None else max(0.0, now - oldest), now))
        for receiver, (total, count) in sorted(self._latency.items()):
            labels = labels_of(receiver=receiver)
            out.append(Sample("piggywatch_notification_latency_seconds_sum", labels, total, now))
            out.append(Sample("piggywatch_notification_latency_seconds_count", labels,
                              count, now))
        return out
