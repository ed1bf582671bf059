"""The daemon's metrics about itself, kept as samples in the store like everything else."""

from __future__ import annotations

import platform
import threading
from collections import defaultdict
from typing import Protocol

from piggywatch import __version__
from piggywatch.store import Labels, MemoryStore, MetricKind, MetricSpec, Sample, labels_of

REASONS = ("connect", "query", "timeout", "busy", "setup", "internal")
STORE_KEY = "piggywatch/self"

SPECS = (
    MetricSpec("pg_up", MetricKind.GAUGE,
               "Whether the last attempt to query the target database worked (1) or not (0)"),
    MetricSpec("piggywatch_build_info", MetricKind.GAUGE,
               "Always 1; labels carry the PiggyWatch and Python versions"),
    MetricSpec("piggywatch_collector_duration_seconds", MetricKind.GAUGE,
               "Wall time of the collector's last sampling cycle"),
    MetricSpec("piggywatch_collector_runs_total", MetricKind.COUNTER,
               "Sampling cycles run, successful or not"),
    MetricSpec("piggywatch_collector_errors_total", MetricKind.COUNTER,
               "Sampling cycles that failed, by reason"),
    MetricSpec("piggywatch_collector_last_success_timestamp_seconds", MetricKind.GAUGE,
               "Unix time of the collector's last successful sampling cycle"),
    MetricSpec("piggywatch_collector_samples", MetricKind.GAUGE,
               "Samples produced by the collector's last successful cycle"),
    MetricSpec("piggywatch_store_series", MetricKind.GAUGE,
               "Series currently held in the in-memory store"),
    # postgres_exporter's scrape figures (dashboards use them for their variables); a
    # "scrape" is here the last sampling cycle of any collector of the target.
    MetricSpec("pg_exporter_last_scrape_duration_seconds", MetricKind.GAUGE,
               "Duration of the target's last sampling cycle"),
    MetricSpec("pg_exporter_last_scrape_error", MetricKind.GAUGE,
               "Whether the target's last sampling cycle failed (1) or not (0)"),
    MetricSpec("pg_exporter_scrapes_total", MetricKind.COUNTER,
               "Sampling cycles run on the target by all its collectors"),
    MetricSpec("pg_scrape_collector_duration_seconds", MetricKind.GAUGE,
               "Duration of the collector's last sampling cycle"),
    MetricSpec("pg_scrape_collector_success", MetricKind.GAUGE,
               "Whether the collector's last sampling cycle succeeded"),
)

Job = tuple[str, str]


class Labelled(Protocol):
    """A PostgreSQL target: its job, instance and server labels (set once it is built)."""

    @property
    def labels(self) -> Labels: ...


class SelfMetrics:
    """Counts collector cycles and publishes the daemon's own figures into the store."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._duration: dict[Job, float] = {}
        self._runs: dict[Job, int] = defaultdict(int)
        self._errors: dict[tuple[str, str, str], int] = {}
        self._last_success: dict[Job, float] = {}
        self._samples: dict[Job, int] = {}
        self._up: dict[str, float] = {}
        self._last_cycle: dict[str, tuple[float, float, int]] = {}
        self._pg_success: dict[Job, float] = {}
        self._targets: dict[str, Labelled] = {}
        store.register(SPECS)

    def add_job(self, target: str, collector: str, labelled: Labelled | None = None) -> None:
        """Start a job's error counters at zero, so rate() works from the first failure.

        ``labelled``: a PostgreSQL target, whose job, instance and server labels its
        collectors' samples carry: pg_up and the scrape figures carry them too, so that a rule
        written for postgres_exporter (``pg_up{job="postgres"} == 0``, ``$labels.instance``)
        sees them as it sees the rest of the target's series.
        """
        with self._lock:
            if labelled is not None:
                self._targets[target] = labelled
            self._runs[(target, collector)] = 0
            for reason in REASONS:
                self._errors[(target, collector, reason)] = 0

    def cycle_done(self, target: str, collector: str, *, duration: float, now: float,
                   error: str | None, samples: int, up: bool | None) -> None:
        """Record one finished cycle and republish."""
        job = (target, collector)
        with self._lock:
            self._duration[job] = duration
            self._runs[job] += 1
            if error is None:
                self._last_success[job] = now
                self._samples[job] = samples
            else:
                key = (target, collector, error)
                self._errors[key] = self._errors.get(key, 0) + 1
            if up is not None:
                self._up[target] = 1.0 if up else 0.0
                runs = self._last_cycle.get(target, (0.0, 0.0, 0))[2] + 1
                self._last_cycle[target] = (duration, 0.0 if error is None else 1.0, runs)
                self._pg_success[job] = 1.0 if error is None else 0.0
        self.publish(now)

    def _labels(self, target: str, **extra: str) -> Labels:
        labelled = self._targets.get(target)
        own = dict(labelled.labels) if labelled is not None else None
        return labels_of(own, target=target, **extra)

    def publish(self, now: float) -> None:
        """Write the current figures to the store."""
        with self._lock:
            out = [Sample("piggywatch_build_info",
                          labels_of(version=__version__, python=platform.python_version()),
                          1.0, now)]
            for target, value in self._up.items():
                out.append(Sample("pg_up", self._labels(target), value, now))
            for target, (duration, failed, runs) in self._last_cycle.items():
                labels = self._labels(target)
                out.append(Sample("pg_exporter_last_scrape_duration_seconds", labels,
                                  duration, now))
                out.append(Sample("pg_exporter_last_scrape_error", labels, failed, now))
                out.append(Sample("pg_exporter_scrapes_total", labels, runs, now))
            for (target, collector), success in self._pg_success.items():
                labels = self._labels(target, collector=collector)
                out.append(Sample("pg_scrape_collector_duration_seconds", labels,
                                  self._duration[(target, collector)], now))
                out.append(Sample("pg_scrape_collector_success", labels, success, now))
            for (target, collector), value in self._duration.items():
                out.append(Sample("piggywatch_collector_duration_seconds",
                                  labels_of(target=target, collector=collector), value, now))
            for (target, collector), runs in self._runs.items():
                out.append(Sample("piggywatch_collector_runs_total",
                                  labels_of(target=target, collector=collector), runs, now))
            for (target, collector, reason), count in self._errors.items():
                out.append(Sample("piggywatch_collector_errors_total",
                                  labels_of(target=target, collector=collector, reason=reason),
                                  count, now))
            for (target, collector), ts in self._last_success.items():
                out.append(Sample("piggywatch_collector_last_success_timestamp_seconds",
                                  labels_of(target=target, collector=collector), ts, now))
            for (target, collector), n in self._samples.items():
                out.append(Sample("piggywatch_collector_samples",
                                  labels_of(target=target, collector=collector), n, now))
        out.append(Sample("piggywatch_store_series", (), self._store.series_count(), now))
        self._store.publish(STORE_KEY, out, now)
