"""Steady-state RSS of `piggywatch run` against the demo database under synthetic load.

Budget (issue 2): under 80 MB. Prints the figures; exits 1 when over budget.

    python bench/rss_bench.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx

from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.demo.run import shipped_rules_dir
from piggywatch.demo.workload import SyntheticWorkload

BUDGET_MB = 80.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time")
    parser.add_argument("--warmup", type=float, default=20.0, help="time before measuring")
    args = parser.parse_args()
    config = resources.files("piggywatch.demo").joinpath("piggywatch.yaml").read_text()
    with ThrowawayCluster(max_connections=50) as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.bootstrap_demo()
        path = Path(tmp) / "piggywatch.yaml"
        path.write_text(config)
        env = {**os.environ, "PIGGYWATCH_DEMO_DSN": cluster.dsn(
            dbname="piggybong", user="piggywatch", password=cluster.role_password("piggywatch")),
            # The shipped rules are evaluated too, as in `piggywatch demo`.
            "PIGGYWATCH_DEMO_RULES": str(shipped_rules_dir()),
            "PIGGYWATCH_DEMO_STATE": str(Path(tmp) / "state.db"),
            "PIGGYWATCH_DEMO_API_TOKEN": "bench-token"}
        listen = "127.0.0.1:19790"
        with SyntheticWorkload(cluster.dsn(dbname="piggybong"), workers=2):
            proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "run", "--config",
                                     str(path), "--listen", listen], env=env,
                                    stderr=subprocess.DEVNULL)
            try:
                time.sleep(args.warmup)
                readings = []
                scrapes = 0
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    # Scrape like Prometheus would, so exposition is part of the picture.
                    httpx.get(f"http://{listen}/metrics", timeout=5).raise_for_status()
                    scrapes += 1
                    readings.append(rss_mb(proc.pid))
                    time.sleep(1.0)
                series = httpx.get(f"http://{listen}/metrics", timeout=5).text.count("\n")
            except Exception:
                proc.terminate()
                raise SystemExit(
                    f"the daemon did not serve /metrics (exit {proc.wait(10)})") from None
            finally:
                proc.terminate()
                proc.wait(10)
    median, peak = statistics.median(readings), max(readings)
    print(f"piggywatch run, demo config, synthetic load, {scrapes} scrapes over "
          f"{args.seconds:.0f} s after {args.warmup:.0f} s warm-up")
    print(f"  exposition lines: {series}")
    print(f"  RSS median: {median:.1f} MB   max: {peak:.1f} MB   budget: {BUDGET_MB:.0f} MB")
    return 0 if peak < BUDGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
