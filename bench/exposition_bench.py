"""/metrics of a store of 25,000 and 100,000 series: the cached exposition against rendering
at scrape time (the path it replaced), in one run.

Budget (issue 13): a warm scrape costs at most 1 µs per exposed sample (100,000 series in
100 ms, 25,000 in 25 ms), gzip or not. A warm scrape is one after the last publish: the
collectors publish every few seconds, so most scrapes are. Also printed: a scrape right
after the busiest source published (its families compressed again), and what a publish of
that source costs now that it renders its exposition.

Each store is shaped like a daemon's: statements-like sources of five families with the
labels of pg_stat_statements (most of the series), a compat-like source of a few hundred
small families, and the self-metrics. Scrapes go through the WSGI app the server calls.

    python bench/exposition_bench.py [--series 25000 100000] [--scrapes 20] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from piggywatch.exporter import MetricsApp, StoreCollector, build_registry, render_text
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of

BUDGET_US = 1.0
STATEMENT_FAMILIES = ["pg_stat_statements_calls_total", "pg_stat_statements_seconds_total",
                      "pg_stat_statements_rows_total",
                      "pg_stat_statements_block_read_seconds_total",
                      "pg_stat_statements_block_write_seconds_total"]
SMALL_FAMILIES = 300


def fill(store: MemoryStore, series: int, now: float) -> Callable[[float], float]:
    """Publish a daemon-like store of about ``series`` series; returns a republisher of the
    busiest source."""
    store.register(MetricSpec(n, MetricKind.COUNTER, "statement counter")
                   for n in STATEMENT_FAMILIES)
    store.register(MetricSpec(f"pg_settings_setting_{i}", MetricKind.GAUGE, "a setting")
                   for i in range(SMALL_FAMILIES))
    targets = max(1, series // 25_000)
    per_target = (series - SMALL_FAMILIES * targets) // (len(STATEMENT_FAMILIES) * targets)

    def statements(target: int, at: float) -> list[Sample]:
        out = []
        for q in range(per_target):
            labels = labels_of(queryid=str(7_919_000_000_000 + q * 104_729), datname="app",
                               user="authenticated", server=f"db{target}:5432",
                               target=f"t{target}", job="postgres", instance=f"db{target}")
            for i, name in enumerate(STATEMENT_FAMILIES):
                out.append(Sample(name, labels, float(q * 13 + i) + at % 7 * 0.25, at))
        return out

    for target in range(targets):
        store.publish(f"t{target}/statements", statements(target, now), now, stamped=True)
        store.publish(f"t{target}/compat", [
            Sample(f"pg_settings_setting_{i}", labels_of(server=f"db{target}:5432"), float(i),
                   now) for i in range(SMALL_FAMILIES)], now, stamped=True)

    def republish(at: float) -> float:
        batch = statements(0, at)  # built outside the timing, as a collector would
        began = time.perf_counter()
        store.publish("t0/statements", batch, at, stamped=True)
        return (time.perf_counter() - began) * 1000

    return republish


def scrape(app: Callable[..., Iterable[bytes]], gzip: bool) -> int:
    environ: dict[str, Any] = {"QUERY_STRING": ""}
    if gzip:
        environ["HTTP_ACCEPT_ENCODING"] = "gzip"
    return sum(map(len, app(environ, lambda status, headers: None)))


def median_ms(run: Callable[[], object], times: int) -> float:
    taken = []
    for _ in range(times):
        began = time.perf_counter()
        run()
        taken.append((time.perf_counter() - began) * 1000)
    return statistics.median(taken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small stores, no budget (CI)")
    args = parser.parse_args()
    if args.quick:
        args.series, args.scrapes = [2_000], 3
    ok = True
    print(f"{'series':>8} {'samples':>8} {'what':52} {'median ms':>10} {'µs/sample':>10}")
    for series in args.series:
        store = MemoryStore()
        now = time.time()
        republish = fill(store, series, now)
        app = MetricsApp(build_registry(store, process_metrics=True))
        samples = store.exposition.body().count(b"\n") - 2 * len(store.specs())
        old = CollectorRegistry(auto_describe=True)
        old.register(StoreCollector(store))
        rows: list[tuple[str, float, bool]] = []
        for gzip in (False, True):
            scrape(app, gzip)  # warm
            rows.append((f"warm scrape{', gzip' if gzip else ''}",
                         median_ms(lambda g=gzip, a=app: scrape(a, g), args.scrapes), True))
        at = [now]

        after: list[float] = []
        publishes: list[float] = []
        for _ in range(max(3, args.scrapes // 4)):
            at[0] += 2.0
            publishes.append(republish(at[0]))
            began = time.perf_counter()
            scrape(app, True)
            after.append((time.perf_counter() - began) * 1000)
        rows.append(("scrape right after the busiest source published, gzip",
                     statistics.median(after), False))
        ahead: list[float] = []
        for _ in range(max(3, args.scrapes // 4)):
            at[0] += 2.0
            republish(at[0])
            time.sleep(0.1)  # the app's thread compresses what was published
            began = time.perf_counter()
            scrape(app, True)
            ahead.append((time.perf_counter() - began) * 1000)
        app.close()
        rows.append(("scrape 0.1 s after it, compressed ahead, gzip",
                     statistics.median(ahead), False))
        rows.append(("publish of the busiest source (history + rendering)",
                     statistics.median(publishes), False))
        rows.append(("rendering at scrape time (the path replaced)",
                     median_ms(lambda r=old: render_text(r), max(2, args.scrapes // 5)), False))
        for what, ms, budgeted in rows:
            per = ms * 1000 / samples
            over = budgeted and per > BUDGET_US
            ok = ok and not over
            print(f"{series:8d} {samples:8d} {what:52} {ms:10.1f} {per:10.2f}"
                  f"{'  OVER BUDGET' if over else ''}")
    print(f"budget: a warm scrape ≤ {BUDGET_US} µs per sample: "
          f"{'within budget' if ok else 'OVER BUDGET'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
