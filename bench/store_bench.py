"""Memory and speed of the in-memory store at 50,000 series x 1 h of 15 s points.

Budget: under 200 MiB, both of RSS growth and of Python heap held (tracemalloc), after the
fill and after the steady phase. Prints the figures; exits 1 when over.

    python bench/store_bench.py [--series 50000] [--steady-minutes 10]

Ten sources of 5,000 series each, five metric names per source, 1,000 series per name,
published every 15 s: the fill is one hour (240 points a series, nothing expired yet), the
steady phase keeps publishing so that expiry and compaction run as in a long-lived daemon.
Samples are built on every publish, as collectors do.

Two passes. The first runs untraced, as the daemon does, and measures RSS growth, then the
timings. The second fills a new store under tracemalloc, which slows it to a couple of
minutes. RSS is not measured under tracing: tracemalloc keeps a record per live block in
malloc's heap, between the store's buffers, and the holes those records leave behind added
some 30 MiB of RSS beyond what it reports as its own (get_tracemalloc_memory).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from piggywatch.store import (
    Labels,
    MemoryStore,
    MetricKind,
    MetricSpec,
    Sample,
    labels_of,
)
from piggywatch.store.series import LabelMatcher

BUDGET_MB = 200.0
INTERVAL = 15.0
RETENTION = 3600.0
SOURCES = 10
NAMES_PER_SOURCE = 5
T0 = 1_700_000_000.0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


class Workload:
    """The bench's collectors: per source, per name, a fixed set of label sets."""

    def __init__(self, series: int) -> None:
        per_name = series // (SOURCES * NAMES_PER_SOURCE)
        self.sources: list[tuple[str, list[tuple[str, Labels]]]] = []
        for s in range(SOURCES):
            # As in the daemon, the target name is one string shared by all its samples.
            target = f"db{s}"
            keys = [(f"bench_metric_{s}_{n}_total",
                     labels_of(target=target, datname="app", queryid=str(10**9 + i * 7919)))
                    for n in range(NAMES_PER_SOURCE) for i in range(per_name)]
            self.sources.append((f"db{s}/statements", keys))
        self.per_name = per_name
        self.count = per_name * SOURCES * NAMES_PER_SOURCE

    def specs(self) -> list[MetricSpec]:
        return [MetricSpec(name, MetricKind.COUNTER, "bench")
                for _, keys in self.sources for name in dict.fromkeys(n for n, _ in keys)]

    def publish(self, store: MemoryStore, step: int) -> list[float]:
        """One cycle of every source; the time each publish took."""
        now = T0 + step * INTERVAL
        took = []
        for source, keys in self.sources:
            batch = [Sample(name, labels, float(step * 3 + i), now)
                     for i, (name, labels) in enumerate(keys)]
            started = time.perf_counter()
            store.publish(source, batch, now)
            took.append(time.perf_counter() - started)
        return took


def timed(fn: object, repeat: int) -> tuple[float, float]:
    """Median and best wall time of ``repeat`` calls, in milliseconds."""
    assert callable(fn)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times)


def run(work: Workload, steady_steps: int,
        measure: Callable[[], int]) -> tuple[MemoryStore, float, int, int]:
    """Fill a new store with an hour of points, then publish on for ``steady_steps``.

    Returns the store, the fill's wall time, and ``measure()`` after the fill and at the end.
    """
    store = MemoryStore(retention=RETENTION)
    store.register(work.specs())
    points = int(RETENTION / INTERVAL)
    started = time.perf_counter()
    for step in range(points):
        work.publish(store, step)
    fill_s = time.perf_counter() - started
    gc.collect()
    fill = measure()
    # Steady state: every series now expires a point per publish and compacts now and then.
    for step in range(points, points + steady_steps):
        work.publish(store, step)
    gc.collect()
    return store, fill_s, fill, measure()


def speed(store: MemoryStore, work: Workload, step: int) -> list[str]:
    """Time publishes and selects on a filled store; the report's lines."""
    publish_ms: list[float] = []
    for _ in range(8):
        publish_ms.extend(t * 1000 for t in work.publish(store, step))
        step += 1
    now = T0 + (step - 1) * INTERVAL

    one_name = [LabelMatcher.of("__name__", "=", "bench_metric_3_2_total")]
    found = store.select(one_name, now - 300, now)
    assert len(found) == work.per_name and len(found[0].values) == 21, (len(found),)
    select_name = timed(lambda: store.select(one_name, now - 300, now), 20)
    one_label = [*one_name, LabelMatcher.of("queryid", "=~", "10000[0-4].*")]
    label_hits = len(store.select(one_label, now - 300, now))
    select_label = timed(lambda: store.select(one_label, now - 300, now), 20)

    # A pattern never seen before misses the match cache: the cost of a first evaluation.
    fresh = iter(range(10**6))

    def regex_uncached() -> int:
        pattern = f"1000[0-4]0.*|x{next(fresh)}"
        return len(store.select([LabelMatcher.of("queryid", "=~", pattern)], now - 300, now))

    regex_cold = timed(regex_uncached, 5)
    regex = [LabelMatcher.of("queryid", "=~", "1000[0-4]0.*")]
    regex_hits = len(store.select(regex, now - 300, now))
    regex_warm = timed(lambda: store.select(regex, now - 300, now), 5)
    by_name_regex = [LabelMatcher.of("__name__", "=~", "bench_metric_[0-4]_1_total")]
    name_regex = timed(lambda: store.select(by_name_regex, now - 300, now), 5)

    batch = work.count // SOURCES
    return [
        f"publish of {batch:,} samples:          median {statistics.median(publish_ms):7.2f} ms"
        f", max {max(publish_ms):7.2f} ms ({len(publish_ms)} publishes)",
        f"select __name__=\"x\" ({work.per_name:,} series, 5 m): "
        f"median {select_name[0]:7.2f} ms, best {select_name[1]:7.2f} ms",
        f"select __name__=\"x\", queryid=~ ({label_hits} match, 5 m, cached): "
        f"median {select_label[0]:7.2f} ms",
        f"select queryid=~ over all {work.count:,} series ({regex_hits} match, 5 m):",
        f"  first time (cache miss)            median {regex_cold[0]:7.2f} ms",
        f"  again (cached match)               median {regex_warm[0]:7.2f} ms",
        f"select __name__=~ (5 names, {5 * work.per_name:,} series, 5 m): "
        f"median {name_regex[0]:7.2f} ms",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=50_000)
    parser.add_argument("--steady-minutes", type=float, default=10.0,
                        help="publishing after the fill, with expiry and compaction (0 to skip)")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.series, args.steady_minutes = 2000, 1.0
    points = int(RETENTION / INTERVAL)
    steady_steps = int(args.steady_minutes * 60 / INTERVAL)

    # Pass 1, untraced: RSS growth, then the timings on the same store.
    gc.collect()
    rss_before = rss_bytes()
    work = Workload(args.series)
    # The label tuples are built once here and shared with the store, which keeps them for
    # as long as it holds the series (in the daemon, collectors build them every cycle and
    # the store keeps the first). Counted apart so both figures can be read.
    gc.collect()
    labels_rss = rss_bytes() - rss_before
    store, fill_s, fill_rss, steady_rss = run(work, steady_steps,
                                              lambda: rss_bytes() - rss_before)

    report = speed(store, work, points + steady_steps)
    series_held = store.series_count()

    # Pass 2, traced: what the store holds, allocation by allocation.
    del store, work
    gc.collect()
    tracemalloc.start()
    work = Workload(args.series)
    labels_bytes = tracemalloc.get_traced_memory()[0]
    _, traced_fill_s, fill, steady = run(work, steady_steps,
                                        lambda: tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()

    total_points = work.count * points
    batch = work.count // SOURCES
    print(f"workload: {work.count:,} series, {SOURCES} sources x {batch:,} samples every "
          f"{INTERVAL:.0f} s, {work.per_name:,} series per metric name, "
          f"retention {RETENTION:.0f} s")
    print(f"fill: {points} publishes per source = {total_points:,} points "
          f"in {fill_s:.1f} s untraced, {traced_fill_s:.1f} s traced")
    print("memory, RSS growth of the process, untraced (MiB):")
    print(f"  after fill                         {mb(fill_rss)}"
          f"  ({fill_rss / total_points:.1f} bytes/point)")
    print(f"    of which label tuples             {mb(labels_rss)}")
    if steady_steps:
        print(f"  after {args.steady_minutes:g} more minutes (expiring)   {mb(steady_rss)}")
    print("memory held by the store (tracemalloc, MiB):")
    print(f"  after fill                         {mb(fill)}"
          f"  ({fill / total_points:.1f} bytes/point)")
    print(f"    of which label tuples             {mb(labels_bytes)}")
    print(f"    store without label tuples       {mb(fill - labels_bytes)}"
          f"  ({(fill - labels_bytes) / total_points:.1f} bytes/point)")
    if steady_steps:
        print(f"  after {args.steady_minutes:g} more minutes (expiring)   {mb(steady)}")
        print(f"    store without label tuples       {mb(steady - labels_bytes)}")
    print(f"series held                          {series_held:8,}")
    for line in report:
        print(line)
    worst_rss = max(fill_rss, steady_rss) / 2**20
    worst_traced = max(fill, steady) / 2**20
    within = max(worst_rss, worst_traced) < BUDGET_MB
    print(f"budget {BUDGET_MB:.0f} MiB (worst of fill/steady): {'within' if within else 'OVER'}"
          f" (RSS {worst_rss:.1f} MiB, tracemalloc {worst_traced:.1f} MiB)")
    return 0 if within else 1


if __name__ == "__main__":
    code = main()
    # --quick keeps a bench working in CI; its figures are not held to the budgets.
    raise SystemExit(0 if "--quick" in sys.argv[1:] else code)
