"""The edge-functions collector: counters from the settled and pending aggregates, gauges
from the window, function labels bounded to the top N."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.edge_functions.model import (
    OTHER,
    STATUS_CLASSES,
    EdgeFunctionsConfig,
    EdgeLogSource,
    Reading,
    Totals,
    WindowStats,
    add_into,
    add_to,
    volume_by_function,
)
from piggywatch.collectors.edge_functions.sql_source import SqlEdgeSource
from piggywatch.collectors.edge_functions.watermark import EdgeStateDB
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.state import STATE_ERRORS
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

if TYPE_CHECKING:
    from piggywatch.collectors.edge_functions.http_source import HttpEdgeSource

_C, _G = MetricKind.COUNTER, MetricKind.GAUGE
# The exporter has no histogram kind: the histogram's three families are counters named
# as Prometheus names a histogram's series, so histogram_quantile() works on them.
SPECS = (
    MetricSpec("edge_function_invocations_total", _C,
               "Edge-function invocations by function and status class"),
    MetricSpec("edge_function_duration_seconds_bucket", _C,
               "Edge-function durations: invocations at or under each bound (histogram)"),
    MetricSpec("edge_function_duration_seconds_sum", _C,
               "Edge-function durations: total seconds (histogram)"),
    MetricSpec("edge_function_duration_seconds_count", _C,
               "Edge-function durations: invocations (histogram)"),
    MetricSpec("edge_function_error_ratio", _G,
               "Share of invocations answered with a 5xx over the gauge window"),
    MetricSpec("edge_function_duration_p50_seconds", _G,
               "Median invocation duration over the gauge window"),
    MetricSpec("edge_function_duration_p95_seconds", _G,
               "95th percentile invocation duration over the gauge window"),
    MetricSpec("edge_function_duration_p99_seconds", _G,
               "99th percentile invocation duration over the gauge window"),
)
_QUANTILE_NAMES = ("edge_function_duration_p50_seconds", "edge_function_duration_p95_seconds",
                   "edge_function_duration_p99_seconds")


class EdgeFunctionsCollector:
    """Invocations, errors and latency of the app's edge functions, from one log source."""

    name = "edge_functions"

    def __init__(self, source: EdgeLogSource, state: EdgeStateDB, *,
                 buckets: Sequence[float], top_n: int) -> None:
        self._source = source
        self._state = state
        self._buckets = list(buckets)
        self._top_n = top_n
        self._since: datetime | None = None
        self._settled: Totals = {}
        self._loaded = False

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def close(self) -> None:
        """Release the source's HTTP client, if it has one (the state is shared)."""
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def collect(self, now: float) -> list[Sample]:
        """Read the tail since the watermark, settle what is past the lateness, export."""
        if not self._loaded:
            try:
                self._since, self._settled = self._state.load(self._source.key, self._buckets)
            except STATE_ERRORS as exc:
                raise CollectorError("state", f"cannot read the edge watermark: {exc}") from exc
            self._loaded = True
        reading = self._source.read(self._since, now, self._rank)
        try:
            reading = self._save(reading, now)
        except STATE_ERRORS as exc:
            # Nothing moved: the next cycle re-reads from the old watermark, still exact.
            raise CollectorError("state", f"cannot save the edge watermark: {exc}") from exc
        # A standby's settle writes nothing, so its totals and watermark advance here only,
        # in memory, exactly as the leader's do.
        add_into(self._settled, reading.settled)
        self._since = reading.settle_before
        cumulative = dict(self._settled)
        add_into(cumulative, reading.pending)
        labels = self._labels(volume_by_function(cumulative))
        return self._counters(cumulative, labels, now) + _gauges(reading.window, now)

    def _save(self, reading: Reading, now: float) -> Reading:
        """Settle ``reading`` in the state; the reading to export.

        When the stored watermark is not this collector's (it was a standby while the
        leader settled, or another replica led for a while), the stored state wins: the
        totals and watermark are reloaded and the tail re-read from there, so the state
        keeps counting every row once.
        """
        key = self._source.key
        if self._state.settle(key, reading.settle_before, reading.settled, self._buckets,
                              since=self._since) != "moved":
            return reading
        since, settled = self._state.load(key, self._buckets)
        if since is None:
            # Nothing is stored although this replica has counted (it was a standby before
            # any leader settled): its own totals become the stored ones.
            full = dict(self._settled)
            add_into(full, reading.settled)
            if self._state.settle(key, reading.settle_before, full, self._buckets,
                                  since=None) != "moved":
                return reading
            since, settled = self._state.load(key, self._buckets)
        self._since, self._settled = since, settled
        reading = self._source.read(self._since, now, self._rank)
        if self._state.settle(key, reading.settle_before, reading.settled, self._buckets,
                              since=self._since) == "moved":
            raise CollectorError("state", "another replica keeps moving the edge watermark")
        return reading

    def _rank(self, settled: Totals, pending: Totals) -> list[str]:
        volume = volume_by_function(self._settled)
        for part in (settled, pending):
            for function, n in volume_by_function(part).items():
                volume[function] = volume.get(function, 0.0) + n
        return [f for f in self._labels(volume).values() if f != OTHER]

    def _labels(self, volume: dict[str, float]) -> dict[str, str]:
        """Function -> label: the top N by cumulative volume keep their name (bounded)."""
        ranked = sorted(volume, key=lambda f: (-volume[f], f))
        return {f: (f if i < self._top_n and f != OTHER else OTHER)
                for i, f in enumerate(ranked)}

    def _counters(self, totals: Totals, labels: dict[str, str], now: float) -> list[Sample]:
        by_label: Totals = {}
        for (function, series), value in totals.items():
            add_to(by_label, labels.get(function, OTHER), series, value)
        out: list[Sample] = []
        for label in sorted({f for f, _ in by_label}):
            for status_class in STATUS_CLASSES:
                n = by_label.get((label, f"status:{status_class}"))
                if n is not None:
                    out.append(Sample("edge_function_invocations_total",
                                      labels_of(function=label, status_class=status_class),
                                      n, now))
            running = 0.0
            for i, bound in enumerate([*self._buckets, math.inf]):
                running += by_label.get((label, f"bucket:{i}"), 0.0)
                out.append(Sample("edge_function_duration_seconds_bucket",
                                  labels_of(function=label, le=_le(bound)), running, now))
            out.append(Sample("edge_function_duration_seconds_count",
                              labels_of(function=label), running, now))
            out.append(Sample("edge_function_duration_seconds_sum",
                              labels_of(function=label), by_label.get((label, "sum"), 0.0),
                              now))
        return out


def _gauges(window: dict[str, WindowStats], now: float) -> list[Sample]:
    out: list[Sample] = []
    for label, stats in sorted(window.items()):
        if stats.count <= 0:
            continue
        labels = labels_of(function=label)
        out.append(Sample("edge_function_error_ratio", labels, stats.errors / stats.count, now))
        for name, value in zip(_QUANTILE_NAMES, stats.quantiles, strict=True):
            out.append(Sample(name, labels, value, now))
    return out


def _le(bound: float) -> str:
    """Prometheus' spelling of a bucket bound: 0.5, 1.0, +Inf."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def build_edge_functions_collector(config: EdgeFunctionsConfig, state: EdgeStateDB, *,
                                   targets: dict[str, PostgresTarget] | None = None,
                                   http_source: HttpEdgeSource | None = None,
                                   ) -> EdgeFunctionsCollector:
    """The collector for ``config``: a SQL source on one of ``targets``, or the HTTP one.

    ``http_source`` lets a caller pass a prepared HTTP source (tests use a short clock)."""
    source: EdgeLogSource
    if config.sql is not None:
        target = (targets or {}).get(config.sql.target)
        if target is None:
            known = ", ".join(sorted(targets or {})) or "none"
            raise ValueError(f"edge_functions.sql.target: no target named "
                             f"{config.sql.target!r} (known: {known})")
        source = SqlEdgeSource(target, config.sql, timeout=config.timeout,
                               lateness=config.lateness, window=config.window,
                               buckets=config.buckets)
    elif http_source is not None:
        source = http_source
    else:
        from piggywatch.collectors.edge_functions.http_source import HttpEdgeSource

        assert config.http is not None  # the model requires exactly one source
        source = HttpEdgeSource(config.http, timeout=config.timeout,
                                lateness=config.lateness, window=config.window,
                                buckets=config.buckets)
    return EdgeFunctionsCollector(source, state, buckets=config.buckets, top_n=config.top_n)
