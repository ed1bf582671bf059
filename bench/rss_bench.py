"""Steady-state RSS of `piggywatch run` against the demo database under synthetic load.

Budgets (issue 13): RSS at most 60 MB steady (the PostgreSQL collectors, the shipped rules,
SQLite state), flat over time: the slope of RSS over the measuring window (least squares,
per 10 minutes, after the warm-up) under 1 MB; and PiggyWatch's own statements, as
PostgreSQL accounts them in pg_stat_statements (role piggywatch, planning + execution), at
most 1 % of one core. ``--default-intervals`` samples at the configuration's defaults
instead of the demo's shorter intervals. Prints the figures; exits 1 when over budget.

    python bench/rss_bench.py [--seconds 1800] [--default-intervals] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
import psycopg

from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.demo.run import shipped_rules_dir
from piggywatch.demo.workload import SyntheticWorkload

BUDGET_MB = 60.0
BUDGET_SLOPE_MB = 1.0  # per 10 minutes
BUDGET_CORE = 0.01


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time")
    parser.add_argument("--warmup", type=float, default=20.0, help="time before measuring")
    parser.add_argument("--postgres-only", action="store_true",
                        help="the PostgreSQL collectors and the rules only: the demo's other "
                        "sources (edge functions, growth, cost, probes, memory) left out")
    parser.add_argument("--default-intervals", action="store_true",
                        help="the collectors' default intervals, not the demo's")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 5.0, 5.0
    config = resources.files("piggywatch.demo").joinpath("piggywatch.yaml").read_text()
    if args.postgres_only:
        config = re.sub(r"(?ms)^sources:.*?(?=^# The shipped rules)", "", config)
    if args.default_intervals:
        # Only the PostgreSQL collectors' ({interval: 10s} or {interval: 5s, top_n: 10}).
        config = re.sub(r"\{interval: \d+s\}", "{}", re.sub(r"interval: \d+s, ", "", config))
    with ThrowawayCluster(max_connections=50) as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.bootstrap_demo()
        path = Path(tmp) / "piggywatch.yaml"
        path.write_text(config)
        env = {**os.environ, "PIGGYWATCH_DEMO_DSN": cluster.dsn(
            dbname="piggybong", user="piggywatch", password=cluster.role_password("piggywatch")),
            # The shipped rules are evaluated too, as in `piggywatch demo`.
            "PIGGYWATCH_DEMO_RULES": str(shipped_rules_dir()),
            "PIGGYWATCH_DEMO_STATE": str(Path(tmp) / "state.db"),
            "PIGGYWATCH_DEMO_API_TOKEN": "bench-token-0123456789"}
        with socket.socket() as probe:  # a free port: two runs may overlap
            probe.bind(("127.0.0.1", 0))
            listen = f"127.0.0.1:{probe.getsockname()[1]}"
        with SyntheticWorkload(cluster.dsn(dbname="piggybong"), workers=2):
            proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "run", "--config",
                                     str(path), "--listen", listen], env=env,
                                    stderr=(Path(tmp) / "stderr").open("wb"))
            try:
                up_by = time.monotonic() + 60
                while True:  # started (imports, first connection) before the warm-up counts
                    try:
                        if httpx.get(f"http://{listen}/metrics", timeout=5).is_success:
                            break
                    except httpx.TransportError:
                        if time.monotonic() > up_by or proc.poll() is not None:
                            raise
                    time.sleep(0.2)
                time.sleep(args.warmup)
                own_before, own_at = own_ms(cluster), time.monotonic()
                readings = []
                times = []
                scrapes = 0
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    # Scrape like Prometheus would, so exposition is part of the picture.
                    httpx.get(f"http://{listen}/metrics", timeout=5).raise_for_status()
                    scrapes += 1
                    readings.append(rss_mb(proc.pid))
                    times.append(time.monotonic())
                    time.sleep(1.0)
                core = (own_ms(cluster) - own_before) / 1000 / (time.monotonic() - own_at)
                series = httpx.get(f"http://{listen}/metrics", timeout=5).text.count("\n")
            except Exception as exc:
                proc.terminate()
                tail = (Path(tmp) / "stderr").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{type(exc).__name__}: {exc} (daemon exit {proc.wait(10)})\n"
                                 f"{tail}") from None
            finally:
                proc.terminate()
                proc.wait(10)
    median, peak = statistics.median(readings), max(readings)
    slope = statistics.linear_regression(times, readings).slope * 600 if len(times) > 1 else 0.0
    print(f"piggywatch run, demo config{' (PostgreSQL only)' if args.postgres_only else ''}"
          f"{' at default intervals' if args.default_intervals else ''}"
          f", synthetic load, {scrapes} scrapes over {args.seconds:.0f} s after "
          f"{args.warmup:.0f} s warm-up")
    print(f"  exposition lines: {series}")
    print(f"  RSS median: {median:.1f} MB   max: {peak:.1f} MB   budget: {BUDGET_MB:.0f} MB")
    print(f"  RSS slope: {slope:+.2f} MB per 10 min over the window   budget: < "
          f"{BUDGET_SLOPE_MB:g} MB")
    print(f"  own statements in PostgreSQL: {core * 100:.3f} % of one core   budget: "
          f"{BUDGET_CORE * 100:g} %")
    return 0 if peak < BUDGET_MB and abs(slope) < BUDGET_SLOPE_MB and core <= BUDGET_CORE \
        else 1


def own_ms(cluster: ThrowawayCluster) -> float:
    """Planning + execution time (ms) PostgreSQL has accounted to the daemon's role."""
    with psycopg.connect(cluster.dsn(dbname="piggybong"), autocommit=True) as conn:
        conn.execute("SET search_path = extensions, public")
        row = conn.execute(
            "SELECT coalesce(sum(total_exec_time + total_plan_time), 0) "
            "FROM pg_stat_statements WHERE userid = 'piggywatch'::regrole").fetchone()
    return 0.0 if row is None else float(row[0])


if __name__ == "__main__":
    code = main()
    # --quick keeps a bench working in CI; its figures are not held to the budgets.
    raise SystemExit(0 if "--quick" in sys.argv[1:] else code)
