"""In-memory store: the latest snapshot of every source plus a bounded ring buffer per series."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from piggywatch.store.samples import Labels, MetricSpec, Sample

SeriesKey = tuple[str, Labels]


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One stored point of a series."""

    timestamp: float
    value: float


class MemoryStore:
    """Holds what collectors published.

    Each source (one collector of one target) replaces its own snapshot on every cycle, so a
    series that a source stops reporting (a statement leaving the top K, a dropped table)
    disappears from the exposition at once instead of lingering with a stale value. History
    is kept per series for ``retention`` seconds, at most ``max_points`` points each, so
    memory is bounded by series x min(retention / interval, max_points).
    """

    def __init__(self, *, retention: float = 3600.0, max_points: int = 720) -> None:
        self._retention = retention
        self._max_points = max_points
        self._lock = threading.Lock()
        self._specs: dict[str, MetricSpec] = {}
        self._snapshots: dict[str, tuple[Sample, ...]] = {}
        self._history: dict[SeriesKey, deque[SeriesPoint]] = {}

    def register(self, specs: Iterable[MetricSpec]) -> None:
        """Declare metric families so they are described even before their first sample."""
        with self._lock:
            for spec in specs:
                known = self._specs.get(spec.name)
                if known is not None and known != spec:
                    raise ValueError(f"metric {spec.name} declared twice with different meaning")
                self._specs[spec.name] = spec

    def specs(self) -> list[MetricSpec]:
        """Every declared metric family, sorted by name."""
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def publish(self, source: str, samples: Iterable[Sample], now: float) -> None:
        """Replace ``source``'s snapshot with ``samples`` and append them to history."""
        batch = tuple(samples)
        horizon = now - self._retention
        with self._lock:
            for sample in batch:
                if sample.name not in self._specs:
                    raise KeyError(f"sample of undeclared metric {sample.name}")
                key = (sample.name, sample.labels)
                points = self._history.get(key)
                if points is None:
                    points = deque(maxlen=self._max_points)
                    self._history[key] = points
                points.append(SeriesPoint(sample.timestamp, sample.value))
            self._snapshots[source] = batch
            self._expire(horizon)

    def clear(self, source: str) -> None:
        """Forget ``source``'s snapshot (its history ages out on its own)."""
        with self._lock:
            self._snapshots.pop(source, None)

    def current(self) -> Iterator[tuple[MetricSpec, list[Sample]]]:
        """The latest samples of every source, grouped by metric family."""
        with self._lock:
            grouped: dict[str, list[Sample]] = {name: [] for name in self._specs}
            for batch in self._snapshots.values():
                for sample in batch:
                    grouped[sample.name].append(sample)
            specs = dict(self._specs)
        for name in sorted(grouped):
            yield specs[name], grouped[name]

    def history(self, name: str, labels: Labels) -> list[SeriesPoint]:
        """Stored points of one series, oldest first."""
        with self._lock:
            return list(self._history.get((name, labels), ()))

    def series_count(self) -> int:
        """How many series have history."""
        with self._lock:
            return len(self._history)

    def _expire(self, horizon: float) -> None:
        stale = []
        for key, points in self._history.items():
            while points and points[0].timestamp < horizon:
                points.popleft()
            if not points:
                stale.append(key)
        for key in stale:
            del self._history[key]
