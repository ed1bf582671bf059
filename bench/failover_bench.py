"""Failover time: from the leader's death (SIGKILL) to the first notification the new leader
sends, over N kills, for one or more ``ha.takeover_after`` settings.

Two real daemons share a PostgreSQL state database in a throwaway cluster. An always-firing
alert (``vector(1)``) is re-notified every second (repeat_interval 1s) to a local webhook
server that stamps each POST as it arrives. Each round kills the leader with SIGKILL, waits
for the first POST after the kill (only the new leader is alive to send it), then restarts
the killed daemon as the next standby.

    python bench/failover_bench.py [--kills 10] [--takeover 15 3]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.ports import free_port
from tests.support.processes import stop_process

RULES = """\
groups:
  - name: watchdog
    rules:
      - alert: Watchdog
        expr: vector(1)
        labels: {severity: low}
        annotations: {summary: "the pipeline is alive"}
"""


class Stamps(ThreadingHTTPServer):
    """A webhook receiver that keeps the arrival time (monotonic) of every POST."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def after(self, t: float) -> float | None:
        with self.lock:
            return next((x for x in self.times if x > t), None)


class _Handler(BaseHTTPRequestHandler):
    server: Stamps

    def do_POST(self) -> None:
        now = time.monotonic()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.times.append(now)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Replica:
    def __init__(self, config: Path, workdir: Path) -> None:
        self.config, self.workdir = config, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / f"replica-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "piggywatch", "run", "--config", str(self.config),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
        wait(lambda: self.get("/readyz") == 200, 30, "replica ready")

    def get(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def leads(self) -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        for family in text_string_to_metric_families(text):
            if family.name == "piggywatch_leader":
                return any(s.value == 1.0 for s in family.samples)
        return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def run(cluster: ThrowawayCluster, takeover: float, kills: int, workdir: Path) -> list[float]:
    stamps = Stamps()
    threading.Thread(target=stamps.serve_forever, daemon=True).start()
    (workdir / "rules.yaml").write_text(RULES)
    config = workdir / "piggywatch.yaml"
    config.write_text(f"""\
targets:
  - name: main
    dsn: {cluster.dsn()}
    collectors:
      connections: {{interval: 5s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: {cluster.dsn()}
state_schema: bench_{uuid.uuid4().hex[:8]}
ha: {{takeover_after: {takeover:g}s}}
receivers:
  - name: hook
    webhook: {{url: "http://127.0.0.1:{stamps.server_address[1]}/"}}
route: {{receiver: hook, group_by: [alertname], group_wait: 0s, group_interval: 1s,
         repeat_interval: 1s}}
logging: {{level: INFO, format: json}}
""")
    replicas = [Replica(config, workdir), Replica(config, workdir)]
    times: list[float] = []
    try:
        for replica in replicas:
            replica.start()
        for round_ in range(kills):
            wait(lambda: sum(r.leads() for r in replicas) == 1, 3 * takeover + 10, "a leader")
            leader = next(r for r in replicas if r.leads())
            wait(lambda: stamps.after(time.monotonic() - 1.5) is not None, 10,
                 "notifications flowing")
            # At a random moment of the standby's polling cycle, not always the same one.
            time.sleep(random.uniform(0.0, 1.0))
            leader.kill()
            killed = time.monotonic()
            wait(lambda at=killed: stamps.after(at) is not None, 3 * takeover + 30,
                 "the new leader's first notification")
            first = stamps.after(killed)
            assert first is not None
            times.append(first - killed)
            print(f"  takeover_after={takeover:g}s kill {round_ + 1}: first notification "
                  f"{times[-1]:.2f} s after the kill", flush=True)
            leader.start()  # back as the standby for the next round
    finally:
        for replica in replicas:
            replica.stop()
        stamps.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--takeover", type=float, nargs="+", default=[15.0, 3.0],
                        help="ha.takeover_after settings to measure (seconds)")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.kills, args.takeover = 1, [3.0]
    results = {}
    with ThrowawayCluster(max_connections=100) as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        for takeover in args.takeover:
            workdir = Path(tmp) / f"t{takeover:g}"
            workdir.mkdir()
            results[takeover] = run(cluster, takeover, args.kills, workdir)
    print("\nfailover: leader SIGKILLed -> first notification sent by the new leader")
    for takeover, times in results.items():
        print(f"  takeover_after={takeover:g}s over {len(times)} kills: median "
              f"{statistics.median(times):.2f} s, max {max(times):.2f} s, min "
              f"{min(times):.2f} s (budget: within takeover_after = {takeover:g} s)")


if __name__ == "__main__":
    main()
