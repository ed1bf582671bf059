"""What each import costs in RSS: every top-level dependency and our own packages, each in a
fresh interpreter, alone and in the order `piggywatch run` meets them.

Issue 13's memory budget (60 MB steady) starts with the imports: a module's RSS is paid for
the whole life of the daemon, used or not. "alone" is the RSS a module adds to a bare
interpreter (what it drags in included); "in order" is what it adds after everything
listed above it, so the lines sum to the total. The last lines are the whole import set of
`piggywatch run` for a PostgreSQL-only configuration (what the daemon imports before it
reads any configuration) and what a configuration that uses every channel adds. Medians of
``--repeat`` runs; RSS from /proc (Linux).

    python bench/import_cost_bench.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys

# Third-party dependencies (pyproject's), then our own packages, in the order `run` meets them.
DEPENDENCIES = ["click", "yaml", "pydantic", "prometheus_client", "psycopg", "psycopg_pool",
                "apscheduler", "promql_parser", "sentry_sdk", "slack_sdk", "httpx", "redis",
                "pglast", "itsdangerous"]
OWN = ["piggywatch.config", "piggywatch.store", "piggywatch.rules.manager",
       "piggywatch.collectors.postgres", "piggywatch.server", "piggywatch.daemon",
       "piggywatch.delivery", "piggywatch.ack.service"]
# `piggywatch run` with a PostgreSQL-only configuration: the CLI, the daemon and what it
# imports while starting (the scheduler, the API) with no channel, no source but PostgreSQL.
RUN_POSTGRES_ONLY = ["piggywatch.cli", "piggywatch.daemon", "piggywatch.observability",
                     "piggywatch.api", "apscheduler.schedulers.background",
                     "apscheduler.executors.pool"]
# What a configuration with every channel and the acknowledgement hooks adds to that (the
# alerting sections' models included: the settings import them only when present).
RUN_ALL_CHANNELS = [*RUN_POSTGRES_ONLY, "piggywatch.alerting.settings", "piggywatch.delivery",
                    "piggywatch.ack.service", "sentry_sdk", "slack_sdk", "httpx"]

# Run in a fresh interpreter: RSS (kB) before anything and after each group of imports.
_PROBE = """
import importlib, json, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
out = [[None, rss(), 0.0]]
for group in json.loads(sys.argv[1]):
    began = time.perf_counter()
    for name in group:
        importlib.import_module(name)
    out.append([group, rss(), time.perf_counter() - began])
print(json.dumps(out))
"""


def probe(groups: list[list[str]]) -> list[tuple[float, float]]:
    """(RSS added in MB, import seconds) of each group, imported in order in a fresh
    interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(groups)],
                          capture_output=True, text=True, check=True)
    steps = json.loads(done.stdout)
    return [((after[1] - before[1]) / 1024, after[2]) for before, after in
            itertools.pairwise(steps)]


def bare_rss(repeat: int) -> float:
    """A bare interpreter's RSS (MB), the floor every line stands on."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", _PROBE, "[]"], capture_output=True,
                              text=True, check=True)
        runs.append(float(json.loads(done.stdout)[0][1]) / 1024)
    return statistics.median(runs)


def median_of(groups: list[list[str]], repeat: int) -> list[tuple[float, float]]:
    runs = [probe(groups) for _ in range(repeat)]
    return [(statistics.median(r[i][0] for r in runs), statistics.median(r[i][1] for r in runs))
            for i in range(len(groups))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="one run each (CI)")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    modules = DEPENDENCIES + OWN
    print(f"bare interpreter: {bare_rss(repeat):.1f} MB RSS (Python "
          f"{sys.version.split()[0]}); medians of {repeat} run(s)")
    alone = [median_of([[m]], repeat)[0] for m in modules]
    in_order = median_of([[m] for m in modules], repeat)
    print(f"{'module':34} {'alone MB':>9} {'in order MB':>12} {'alone ms':>9}")
    for name, (mb, seconds), (order_mb, _) in zip(modules, alone, in_order,
                                                     strict=True):
        print(f"{name:34} {mb:9.1f} {order_mb:12.1f} {seconds * 1000:9.0f}")
    print(f"{'sum in order':34} {'':9} {sum(mb for mb, _ in in_order):12.1f}")
    for label, group in (("`run`, PostgreSQL-only configuration", RUN_POSTGRES_ONLY),
                         ("`run`, every channel and the ack hooks", RUN_ALL_CHANNELS)):
        mb, seconds = median_of([group], repeat)[0]
        print(f"{label}: +{mb:.1f} MB RSS over the bare interpreter, {seconds * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
