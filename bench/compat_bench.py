"""Cost of the postgres_exporter-compatible families next to postgres_exporter itself.

Starts a throwaway PostgreSQL with the demo database, then on the same database, in one run:
PiggyWatch's compat collector cycle (every compat family: settings, bgwriter, archiver,
stat_database upstream names, conflicts, locks, version, postmaster, slots), the same
cycle plus the connections and database collectors (everything postgres_exporter's
defaults cover), and a full scrape of Debian's postgres_exporter. Prints median and p90
wall times and the samples each produced.

    python bench/compat_bench.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import httpx

from piggywatch.collectors.postgres.compat import CompatCollector
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.store import MemoryStore
from tests.support.compat import (
    POSTGRES_EXPORTER,
    piggywatch_jobs,
    postgres_exporter,
)


def timed(run: Callable[[], int], rounds: int) -> tuple[float, float, int]:
    """(median ms, p90 ms, samples of the last round) over ``rounds`` runs after a warm-up."""
    run()
    times = []
    produced = 0
    for _ in range(rounds):
        started = time.perf_counter()
        produced = run()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    rounds = args.rounds
    with ThrowawayCluster(max_connections=20) as cluster:
        cluster.bootstrap_demo()
        dsn = cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)
        store = MemoryStore()
        target, jobs = piggywatch_jobs(dsn, store)
        [compat] = [job.collector for job in jobs if isinstance(job.collector, CompatCollector)]
        rows = []
        rows.append(("piggywatch compat collector",
                     *timed(lambda: len(compat.collect(time.time())), rounds)))

        def all_jobs() -> int:
            for job in jobs:
                job.run()
            return sum(len(samples) for _, samples in store.current())

        rows.append(("piggywatch connections+database+compat", *timed(all_jobs, rounds)))
        target.close()
        if POSTGRES_EXPORTER is not None:
            with postgres_exporter(dsn) as url, httpx.Client() as client:
                def scrape() -> int:
                    text = client.get(url, timeout=30).text
                    return sum(1 for line in text.splitlines()
                               if line.startswith("pg_") and not line.startswith("#"))
                rows.append(("postgres_exporter 0.11.1 scrape (pg_* samples)",
                             *timed(scrape, rounds)))
        else:
            print("postgres_exporter is not installed: no comparison", file=sys.stderr)
    print(f"{'what':48} {'median ms':>10} {'p90 ms':>8} {'samples':>8}")
    for name, median, p90, produced in rows:
        print(f"{name:48} {median:10.1f} {p90:8.1f} {produced:8d}")
    return 0


if __name__ == "__main__":
    code = main()
    # --quick keeps a bench working in CI; its figures are not held to the budgets.
    raise SystemExit(0 if "--quick" in sys.argv[1:] else code)
