"""Collector jobs: which collectors a configuration asks for, and one sampling cycle each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module

from piggywatch.collectors import Collector, CollectorError
from piggywatch.collectors.base import CollectsChanges, SourceContext, SourceJob
from piggywatch.collectors.postgres.compat import CompatCollector
from piggywatch.collectors.postgres.connections import SPECS as CONNECTIONS_SPECS
from piggywatch.collectors.postgres.connections import ConnectionsCollector
from piggywatch.collectors.postgres.database import DatabaseCollector
from piggywatch.collectors.postgres.server_label import target_labels
from piggywatch.collectors.postgres.statements import StatementsCollector
from piggywatch.collectors.postgres.tables import TablesCollector
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config import Settings, TargetConfig
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.state import StateStore
from piggywatch.store import Changes, Labels, MemoryStore, Sample, text_labels

log = logging.getLogger("piggywatch.daemon")

# A named tuple's own __new__ is a Python function; the tuple's is not (a third of the time
# for the tens of thousands of samples of a statements cycle).
_new_sample = tuple.__new__

# Samples of a job this frequent are exposed with their collection time (exporter.py);
# a slower one's would fall out of Prometheus's 5-minute lookback between two collections.
STAMPED_MAX_INTERVAL = 120.0


@dataclass
class CollectorJob:
    """One collector, run on its own interval; never raises.

    ``owner`` names the job in logs and self metrics: the PostgreSQL target it samples, or
    the source for collectors bound to no database (Redis, probes, memory). Samples of a
    job with a ``target`` get that target's name as their ``target`` label.
    """

    owner: str
    target: PostgresTarget | None
    collector: Collector
    interval: float
    store: MemoryStore
    self_metrics: SelfMetrics
    clock: Callable[[], float] = time.time
    attempted: bool = False
    running: bool = False
    _failing: str | None = field(default=None, repr=False)
    # The last cycle's label sets with the target's labels merged in, by id of the original.
    _merged: dict[int, tuple[Labels, Labels]] = field(default_factory=dict, repr=False)
    _merge_key: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Whether the store's snapshot of this job is one its changes apply to (CollectsChanges).
    _changing: bool = field(default=False, repr=False)

    @property
    def store_key(self) -> str:
        """The store key of this job's snapshot."""
        return f"{self.owner}/{self.collector.name}"

    def run(self) -> None:
        """One sampling cycle: collect, publish, count."""
        self.running = True
        try:
            self._cycle()
        finally:
            self.running = False

    def _cycle(self) -> None:
        if isinstance(self.collector, CollectsChanges):
            self._changes_cycle(self.collector)
            return
        started = time.monotonic()
        now = self.clock()
        error: str | None = None
        samples: list[Sample] = []
        try:
            samples = self.collector.collect(now)
        except CollectorError as exc:
            error = exc.reason
            samples = list(exc.samples)
            self._report_failure(exc.reason, str(exc))
        except Exception:
            error = "internal"
            # An unexpected error is a bug in PiggyWatch: full traceback, and Sentry if set.
            log.exception("collector %s of %s crashed", self.collector.name, self.owner)
        if self.target is not None:
            samples = self._with_target_labels(samples)
        else:
            # A source reads text that PostgreSQL never checked (JSON, HTTP answers).
            samples = _text_samples(samples)
        if getattr(self.collector, "dynamic_specs", False):
            # Families discovered by this cycle (e.g. the server's settings).
            self.store.register(self.collector.specs())
        self._finish(samples, error, now, started)

    def _finish(self, samples: list[Sample], error: str | None, now: float,
                started: float, *, published: int | None = None) -> None:
        """Publish a cycle's samples (``published``: a changes cycle has published its own,
        this many series) and count it."""
        if published is None:
            if error is None or samples:
                # After a failure, only what it established (e.g. redis_up 0) stays current.
                self.store.publish(self.store_key, samples, now,
                                   stamped=self.interval <= STAMPED_MAX_INTERVAL)
            else:
                # Stale figures would look current; drop them until the next success.
                self.store.clear(self.store_key)
        if error is None and self._failing is not None:
            log.info("collector %s of %s recovered", self.collector.name, self.owner)
            self._failing = None
        self.attempted = True
        self.self_metrics.cycle_done(
            self.owner, self.collector.name, duration=time.monotonic() - started, now=now,
            error=error, samples=len(samples) if published is None else published,
            up=self.target.up if self.target is not None else None)

    def _changes_cycle(self, collector: CollectsChanges) -> None:
        """One cycle of a collector that tells what changed: only that is labelled and
        published (a failed cycle is handled as ``_cycle`` handles it)."""
        started = time.monotonic()
        now = self.clock()
        # New target labels (the server's, once known) change every series: tell all.
        full = not self._changing or (self.target is not None and self._merge_key != (
            *self.target.labels, ("target", self.target.name)))
        stamped = self.interval <= STAMPED_MAX_INTERVAL
        try:
            changed, removed = collector.collect_changes(now, full=full)
        except CollectorError as exc:
            self._changing = False
            self._report_failure(exc.reason, str(exc))
            samples = self._with_target_labels(list(exc.samples)) \
                if self.target is not None else list(exc.samples)
            self._finish(samples, exc.reason, now, started)
            return
        except Exception:
            self._changing = False
            log.exception("collector %s of %s crashed", self.collector.name, self.owner)
            self._finish([], "internal", now, started)
            return
        if self.target is not None:
            changed = self._with_target_labels(changed, keep=not full)
            merged = self._merged
            gone = []
            # The families of a series share its labels object: forget it after them all.
            forget = set()
            for name, labels in removed:
                hit = merged.get(id(labels))
                if hit is None or hit[0] is not labels:
                    hit = (labels, self._merged_labels(labels))
                gone.append((name, hit[1]))
                forget.add(id(labels))
            for key in forget:
                merged.pop(key, None)
            removed = gone
        self.store.publish_changes(self.store_key, Changes(changed, removed), now,
                                   stamped=stamped, full=full)
        size = self.store.source_size(self.store_key)
        # Label sets of series that left without being told (a collector that renamed a
        # series' labels object) would pile up: the next cycle tells all, which starts over.
        self._changing = len(self._merged) <= 2 * size + 64
        self._finish([], None, now, started, published=size)

    def _with_target_labels(self, samples: list[Sample], *, keep: bool = False
                            ) -> list[Sample]:
        """``samples`` with the target's labels, merged once per distinct label set.

        Collectors hand the same labels object to the samples of one series' families (and
        keep it from cycle to cycle), so the merge is looked up by identity: thousands of
        statement series cost a lookup each, not a dict built and sorted per sample.
        """
        assert self.target is not None
        extra = (*self.target.labels, ("target", self.target.name))
        if self._merge_key != extra:
            self._merge_key, self._merged = extra, {}
        merged = self._merged
        fresh: dict[int, tuple[Labels, Labels]] = {}
        out = []
        last: Labels | None = None
        with_target: Labels = ()
        for s in samples:
            labels = s.labels
            if labels is not last:  # a series' families come one after another
                last = labels
                key = id(labels)
                hit = fresh.get(key) or merged.get(key)
                if hit is None or hit[0] is not labels:
                    hit = (labels, self._merged_labels(labels))
                fresh[key] = hit
                with_target = hit[1]
            out.append(s if with_target is labels
                       else _new_sample(Sample, (s[0], with_target, s[2], s[3])))
        # Only this cycle's label sets are kept (each entry holds its key object alive,
        # so an id is never reused while its entry is here); with ``keep``, those of the
        # series that did not change too (a changes-only cycle has only the changed ones).
        if keep:
            merged.update(fresh)
        else:
            self._merged = fresh
        return out

    def _merged_labels(self, labels: Labels) -> Labels:
        """``labels`` with the target's (which win); the same object when it carries them
        already, so that its samples are kept as they are. Made of the pairs the collector
        and the target hold, not copies: 5,000 statements' label sets share the target's
        five pairs instead of each holding its own (1.4 MB at top_k 5000)."""
        target = {pair[0]: pair for pair in self._merge_key}
        merged = tuple(sorted([*(pair for pair in labels if pair[0] not in target),
                               *target.values()]))
        return labels if merged == labels else merged

    def _report_failure(self, reason: str, message: str) -> None:
        # Log a failure when it starts or changes, not every cycle it persists: a database
        # that is down for an hour should not write thousands of identical lines.
        text = f"collector {self.collector.name} of {self.owner}: {message}"
        if self._failing != message:
            log.warning(text, extra={"target": self.owner, "collector": self.collector.name})
            self._failing = message
        else:
            log.debug(text)


def build_collectors(config: TargetConfig, target: PostgresTarget) -> list[tuple[Collector, float]]:
    """The enabled collectors of one target, each with its interval."""
    opts = config.collectors
    target.labels = target_labels(config.dsn.get_secret_value(), job=config.job,
                                  instance=config.instance)
    found: list[tuple[Collector, float]] = []
    if opts.connections.enabled:
        found.append((ConnectionsCollector(target, timeout=opts.connections.timeout,
                                           top_n=opts.connections.top_n),
                      opts.connections.interval))
    if opts.database.enabled:
        found.append((DatabaseCollector(target, timeout=opts.database.timeout),
                      opts.database.interval))
    if opts.statements.enabled:
        found.append((StatementsCollector(target, timeout=opts.statements.timeout,
                                          top_k=opts.statements.top_k,
                                          schema=opts.statements.schema_name),
                      opts.statements.interval))
    if opts.tables.enabled:
        found.append((TablesCollector(target, timeout=opts.tables.timeout,
                                      top_n=opts.tables.top_n),
                      opts.tables.interval))
    if opts.compat.enabled:
        # The connections collector exports these settings already (same names).
        skip = [s.name.removeprefix("pg_settings_") for s in CONNECTIONS_SPECS
                if s.name.startswith("pg_settings_")] if opts.connections.enabled else []
        found.append((CompatCollector(target, timeout=opts.compat.timeout, skip_settings=skip,
                                      shared_row=opts.database.enabled,
                                      closed_databases=opts.connections.enabled),
                      opts.compat.interval))
    return found


# Every app-telemetry source: its key under ``sources:`` and its module, which exports the
# key's config model, ``SPECS`` and ``build(config, context) -> [SourceJob]``. A module
# (and its library: redis-py, httpx) is imported only when its key is configured.
SOURCES: dict[str, str] = {
    "edge_functions": "piggywatch.collectors.edge_functions",
    "growth": "piggywatch.collectors.growth",
    "cost": "piggywatch.collectors.cost",
    "custom_sql": "piggywatch.collectors.custom_sql",
    "redis": "piggywatch.collectors.redis_cache",
    "probes": "piggywatch.collectors.probes",
    "system_memory": "piggywatch.collectors.system_memory",
}


def _configured(config: object) -> bool:
    items = config if isinstance(config, list) else [] if config is None else [config]
    return any(getattr(item, "enabled", True) for item in items)


def build_source_collectors(settings: Settings, targets: dict[str, PostgresTarget],
                            state: StateStore, may_write: Callable[[], bool] = lambda: True,
                            ) -> list[SourceJob]:
    """Collectors of the app-telemetry sources: (owner, target or None, collector, interval)."""
    context = SourceContext(targets, state, may_write)
    found: list[SourceJob] = []
    for key, module in SOURCES.items():
        config = getattr(settings.sources, key)
        if _configured(config):
            found.extend(import_module(module).build(config, context))
    return found


def _text_samples(samples: list[Sample]) -> list[Sample]:
    """``samples``, any label value's lone surrogate replaced (see ``text_labels``)."""
    out = samples
    for i, sample in enumerate(samples):
        labels = text_labels(sample.labels)
        if labels is not sample.labels:
            if out is samples:
                out = list(samples)
            out[i] = Sample(sample.name, labels, sample.value, sample.timestamp)
    return out
