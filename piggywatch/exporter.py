"""Exposition: a prometheus-client collector that reads the store."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector

from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample

# Counters are only ever read through the store; the _created series would be noise.
disable_created_metrics()  # type: ignore[no-untyped-call]


class StoreCollector(PromCollector):
    """Turns the store's latest snapshot into metric families at scrape time.

    Counters named like postgres_exporter's (without ``_total``) are exposed as untyped:
    the text format requires ``_total`` on a counter, and their names must stay as they are
    for existing dashboards. ``rate()`` works the same on them.
    """

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        # Describing every declared family keeps ?name[]= filtering working (PITFALLS).
        for spec in self._store.specs():
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        for spec, samples in self._store.current():
            if samples:
                yield _family(spec, samples)


def _family(spec: MetricSpec, samples: list[Sample] | None = None) -> Metric:
    if spec.kind is MetricKind.COUNTER and spec.name.endswith("_total"):
        family = Metric(spec.name.removesuffix("_total"), spec.help, "counter")
    elif spec.kind is MetricKind.COUNTER:
        family = Metric(spec.name, spec.help, "unknown")
    else:
        family = Metric(spec.name, spec.help, "gauge")
    for sample in samples or ():
        family.add_sample(spec.name, dict(sample.labels), sample.value)
    return family


def build_registry(store: MemoryStore, *, process_metrics: bool = True) -> CollectorRegistry:
    """A registry exposing the store, plus the standard process metrics."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    if process_metrics:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry
