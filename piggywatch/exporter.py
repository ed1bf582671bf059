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
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.utils import floatToGoString

from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample

# Counters are only ever read through the store; the _created series would be noise.
disable_created_metrics()  # type: ignore[no-untyped-call]

_go_float = cast(Callable[[float], str], floatToGoString)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus's own target labels: kept in the store for the evaluator, not exposed.
TARGET_LABELS = frozenset({"job", "instance"})
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
            labels = {k: v for k, v in sample.labels if k not in TARGET_LABELS}
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


def render_text(registry: _Collectable) -> bytes:
    """The registry in the text format, the store's families with their own names."""
    out: list[str] = []
    for metric in registry.collect():
        if metric.type in ("counter", "gauge", "unknown") and \
                all(s.name == metric.name for s in metric.samples):
            _render_plain(metric, out)
        else:
            out.append(generate_latest(_One(metric)).decode())
    return "".join(out).encode()


def _render_plain(metric: Metric, out: list[str]) -> None:
    kind = "untyped" if metric.type == "unknown" else metric.type
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {kind}\n")
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


def metrics_app(registry: CollectorRegistry) -> Callable[[dict[str, Any], StartResponse],
                                                         Iterable[bytes]]:
    """A WSGI app serving ``registry`` in the text format (``name[]`` filtering, gzip)."""
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        params = parse_qs(environ.get("QUERY_STRING", ""))
        names = params.get("name[]")
        body = render_text(registry.restricted_registry(names) if names else registry)
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


def build_registry(store: MemoryStore, *, process_metrics: bool = True) -> CollectorRegistry:
    """A registry exposing the store, plus the standard process metrics."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    if process_metrics:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry
