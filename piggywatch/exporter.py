"""Exposition: a prometheus-client collector that reads the store, rendered in the text format.

Two things the stock exposition cannot do for us, both for dashboards and rules written
for postgres_exporter:

- **Counters keep postgres_exporter's names.** ``pg_stat_database_xact_commit`` is a
  counter there, typed ``counter`` in the text format though its name lacks ``_total``.
  prometheus-client appends ``_total`` to a counter's TYPE line, and OpenMetrics requires
  it on the samples too, so the store's families are rendered here, always in the text
  format (version 0.0.4), with their own name on the TYPE line.
- **Samples carry the time they were collected** when their source asks for it (see
  ``MemoryStore.publish``): a collector that runs every 15 s scraped every 5 s then shows
  each collection once, at its own time, so ``irate()`` never sees two equal values 5 s
  apart (a spurious 0) followed by a 15 s rise counted over 5 s (double the rate).

``job`` and ``instance`` are the labels Prometheus gives the scrape target itself; the
store's own (used by PiggyWatch's evaluator) are left out of the exposition so that they
neither clash with Prometheus's nor turn into ``exported_job`` / ``exported_instance``.

**A scrape serves bytes rendered when the samples were published** (``store.exposition``):
the store's part of /metrics is joined from each source's chunks and cached until the next
publish, gzip included, so a scrape costs about a microsecond per series and never waits for
a collector. Only the process metrics are rendered at scrape time. ``StoreCollector`` reads
the same store through prometheus-client's model, for ``generate_latest`` and the tests that
hold the cached bytes to it.

OpenMetrics is not offered, even when asked for: it requires ``_total`` on every counter's
samples, so postgres_exporter's counter names could not be kept typed ``counter``, and the
exposition would no longer be the same one. A scraper asking for OpenMetrics accepts the text
format too (Prometheus sends both in its Accept header).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.utils import floatToGoString

from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample
from piggywatch.store.exposition import (
    Exposition,
    deflate_block,
    exposed_labels,
    gzip_member,
)

log = logging.getLogger(__name__)

# Counters are only ever read through the store; the _created series would be noise.
disable_created_metrics()  # type: ignore[no-untyped-call]

_go_float = cast(Callable[[float], str], floatToGoString)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge",
          MetricKind.UNTYPED: "unknown"}


class StoreCollector(PromCollector):
    """Turns the store's latest snapshot into metric families at scrape time."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        # Describing every declared family keeps ?name[]= filtering working (PITFALLS).
        for spec in self._store.specs():
            yield _family(spec, [], [])

    def collect(self) -> Iterator[Metric]:
        for spec, stamped, unstamped in self._store.exposed():
            if stamped or unstamped:
                yield _family(spec, stamped, unstamped)


def _family(spec: MetricSpec, stamped: list[Sample], unstamped: list[Sample]) -> Metric:
    family = Metric(spec.name, spec.help, _TYPES[spec.kind])
    name = spec.name
    for samples, with_time in ((stamped, True), (unstamped, False)):
        for sample in samples:
            labels = dict(exposed_labels(sample.labels))
            family.add_sample(name, labels, sample.value,
                              sample.timestamp if with_time else None)
    return family


class _Collectable(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _One:
    """One metric family, for prometheus-client's renderer."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


class StoreRegistry(CollectorRegistry):
    """The daemon's registry: the store (served from its cached exposition) and ``others``."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(auto_describe=True)
        self.store = store
        # Rendered at scrape time: the process metrics, a few dozen samples.
        self.others = CollectorRegistry(auto_describe=True)
        self.register(StoreCollector(store))

    def add_other(self, collector: PromCollector) -> None:
        """Register a collector rendered at scrape time, after the store's families."""
        self.register(collector)
        self.others.register(collector)


def render_text(registry: _Collectable) -> bytes:
    """The registry in the text format, the store's families with their own names."""
    if isinstance(registry, StoreRegistry):
        return registry.store.exposition.body() + render_text(registry.others)
    out: list[str] = []
    for metric in registry.collect():
        name = _plain_name(metric)
        if name is not None:
            _render_plain(metric, name, out)
        else:
            out.append(generate_latest(_One(metric)).decode())
    return "".join(out).encode()


def _plain_name(metric: Metric) -> str | None:
    """The name of ``metric``'s samples when they all have one and need no more than a
    HELP and a TYPE line of it (a store counter keeps its own name; prometheus-client's
    counters, the GC collector's, are named with _total): else None."""
    if metric.type not in ("counter", "gauge", "unknown"):
        return None
    names = (metric.name, metric.name + "_total") if metric.type == "counter" else (metric.name,)
    for name in names:
        if all(sample.name == name for sample in metric.samples):
            return name
    return None


def _render_plain(metric: Metric, name: str, out: list[str]) -> None:
    kind = "untyped" if metric.type == "unknown" else metric.type
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
    for sample in metric.samples:
        if sample.labels:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            head = f"{sample.name}{{{pairs}}}"
        else:
            head = sample.name
        if sample.timestamp is None:
            out.append(f"{head} {_go_float(sample.value)}\n")
        else:
            millis = round(float(sample.timestamp) * 1000)
            out.append(f"{head} {_go_float(sample.value)} {millis}\n")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


# While gzip scrapes come (Prometheus always asks for gzip), the store's changed families are
# compressed as soon as they are published, so that a scrape only joins bytes; after this
# long without one, the compressing thread ends until the next.
WARM_WHILE_SCRAPED = 600.0
# How long the thread lets a publishing cycle finish (and a burst of publishes gather)
# before it compresses.
WARM_SETTLE = 0.02


class MetricsApp:
    """/metrics as a WSGI app: ``registry`` in the text format (``name[]`` filtering, gzip).

    Compressing the families that changed since the last scrape is most of what a scrape
    costs (about 0.6 ms for the 100 KB of a top-100 statements family): a thread of its own
    does it when they are published, not the scrape that comes next. Close it with
    ``close()``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._last_gzip = 0.0
        self._warmer: threading.Thread | None = None
        self._closed = False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        registry = self._registry
        params = parse_qs(environ.get("QUERY_STRING", ""))
        names = params.get("name[]")
        zipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        headers = [("Content-Type", CONTENT_TYPE)]
        if zipped:
            headers.append(("Content-Encoding", "gzip"))
        if not isinstance(registry, StoreRegistry):
            body = render_text(registry.restricted_registry(names) if names else registry)
            body = gzip.compress(body, compresslevel=1) if zipped else body
        elif names:
            body = registry.store.exposition.body(set(names)) + render_text(
                registry.others.restricted_registry(names))
            body = gzip.compress(body, compresslevel=1) if zipped else body
        else:
            if zipped:
                self._scraped(registry.store.exposition)
            body = _cached(registry, zipped)
        start_response("200 OK", headers)
        return [body]

    def close(self) -> None:
        """Stop compressing ahead of scrapes (the thread ends within ``WARM_WHILE_SCRAPED``
        at the latest; at once when a publish wakes it)."""
        with self._lock:
            self._closed = True
            warmer = self._warmer
        if warmer is not None:
            exposition = cast(StoreRegistry, self._registry).store.exposition
            exposition.changed.set()
            warmer.join(timeout=5)

    def _scraped(self, exposition: Exposition) -> None:
        with self._lock:
            self._last_gzip = time.monotonic()
            if self._warmer is None and not self._closed:
                self._warmer = threading.Thread(target=self._warm, args=(exposition,),
                                                name="metrics-gzip", daemon=True)
                self._warmer.start()

    def _warm(self, exposition: Exposition) -> None:
        while self._warming():
            if not exposition.changed.wait(WARM_WHILE_SCRAPED):
                continue
            if not self._warming():  # a close() sets the event to end the wait
                return
            time.sleep(WARM_SETTLE)
            exposition.changed.clear()
            try:
                exposition.gzipped_parts()
            except Exception:  # a scrape would meet it too, and say so
                log.exception("compressing the exposition ahead of scrapes failed")

    def _warming(self) -> bool:
        """Whether the thread goes on: not closed, and a gzip scrape came lately. When not,
        the thread is forgotten (a next gzip scrape starts another)."""
        with self._lock:
            if self._closed or time.monotonic() - self._last_gzip > WARM_WHILE_SCRAPED:
                self._warmer = None
                return False
            return True


def _cached(registry: StoreRegistry, zipped: bool) -> bytes:
    """The whole exposition from the store's cache, the process metrics appended."""
    exposition = registry.store.exposition
    others = render_text(registry.others)
    if not zipped:
        return exposition.body() + others
    # The store's families stay compressed between publishes; only the rest is compressed
    # now, and joined to them in one gzip member.
    blocks, crc, size = exposition.gzipped_parts()
    if others:
        blocks = [*blocks, deflate_block(others)]
        crc = zlib.crc32(others, crc)
        size += len(others)
    return gzip_member(blocks, crc, size)


def build_registry(store: MemoryStore, *, process_metrics: bool = True) -> StoreRegistry:
    """A registry exposing the store, plus the standard process metrics."""
    registry = StoreRegistry(store)
    if process_metrics:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.add_other(collector)
    return registry
