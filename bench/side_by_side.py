"""postgres_exporter and `piggywatch run` side by side on one database of 5,000 statements.

Builds a throwaway PostgreSQL with ``--statements`` distinct statements in pg_stat_statements
and a skewed workload running through them, then, one after the other on that database:

- Debian's postgres_exporter (when installed) with the top-100 statements query as an
  extended query: its scrape time, its statements query's time as PostgreSQL accounts it,
  its RSS;
- ``piggywatch run`` with the connections, database and statements collectors every
  ``--interval`` seconds, the shipped rules and SQLite state, at top_k 100 and 5000: the
  statements collector's own duration (``piggywatch_collector_duration_seconds``), the
  /metrics scrape (wall time and samples, as Prometheus asks: gzip), RSS;
- the floor: PostgreSQL's own planning + execution time of reading every entry of
  ``pg_stat_statements(false)`` (EXPLAIN ANALYZE, no texts), measured beside each column.

``--before DIR`` runs the daemon of another checkout as well (``git worktree add DIR <sha>``),
in the same run, so the table shows before and after. Prints one table and the ratios
against the issue's budgets; exits 1 when over budget (never in ``--quick`` mode, which runs
in seconds so that CI keeps the bench working).

    python bench/side_by_side.py [--statements 5000] [--seconds 40] [--before /tmp/pw-before]
    python bench/side_by_side.py --quick
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.statements_bench import (
    FLOOR_ROLE,
    MONITOR,
    MONITOR_PASSWORD,
    Workload,
    floor_ms,
    make_statements,
)
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.demo.run import shipped_rules_dir
from tests.support.compat import POSTGRES_EXPORTER
from tests.support.ports import free_port
from tests.support.processes import stop_process

HERE = Path(__file__).resolve().parent.parent
# Issue 13's budgets.
SCRAPE_US_PER_SAMPLE = 1.0
STATEMENTS_RATIO = {100: 1.5, 5000: 3.0}
RSS_MB = {100: 60.0, 5000: 100.0}

# postgres_exporter's classic queries.yaml entry for pg_stat_statements, top 100 by time.
EXPORTER_QUERIES = """\
pg_stat_statements:
  query: "SELECT t2.rolname, t3.datname, queryid, calls, total_exec_time / 1000 as \
total_time_seconds, min_exec_time / 1000 as min_time_seconds, max_exec_time / 1000 as \
max_time_seconds, mean_exec_time / 1000 as mean_time_seconds, stddev_exec_time / 1000 as \
stddev_time_seconds, rows, shared_blks_hit, shared_blks_read, shared_blks_dirtied, \
shared_blks_written, local_blks_hit, local_blks_read, local_blks_dirtied, local_blks_written, \
temp_blks_read, temp_blks_written, blk_read_time / 1000 as blk_read_time_seconds, \
blk_write_time / 1000 as blk_write_time_seconds FROM pg_stat_statements t1 JOIN pg_roles t2 \
ON (t1.userid=t2.oid) JOIN pg_database t3 ON (t1.dbid=t3.oid) WHERE t2.rolname != 'rdsadmin' \
ORDER BY total_exec_time DESC LIMIT 100"
  master: true
  metrics:
    - rolname: {usage: "LABEL", description: "Name of user"}
    - datname: {usage: "LABEL", description: "Name of database"}
    - queryid: {usage: "LABEL", description: "Query ID"}
    - calls: {usage: "COUNTER", description: "Number of times executed"}
    - total_time_seconds: {usage: "COUNTER", description: "Total time spent, in seconds"}
    - min_time_seconds: {usage: "GAUGE", description: "Minimum time, in seconds"}
    - max_time_seconds: {usage: "GAUGE", description: "Maximum time, in seconds"}
    - mean_time_seconds: {usage: "GAUGE", description: "Mean time, in seconds"}
    - stddev_time_seconds: {usage: "GAUGE", description: "Standard deviation, in seconds"}
    - rows: {usage: "COUNTER", description: "Rows retrieved or affected"}
    - shared_blks_hit: {usage: "COUNTER", description: "Shared block cache hits"}
    - shared_blks_read: {usage: "COUNTER", description: "Shared blocks read"}
    - shared_blks_dirtied: {usage: "COUNTER", description: "Shared blocks dirtied"}
    - shared_blks_written: {usage: "COUNTER", description: "Shared blocks written"}
    - local_blks_hit: {usage: "COUNTER", description: "Local block cache hits"}
    - local_blks_read: {usage: "COUNTER", description: "Local blocks read"}
    - local_blks_dirtied: {usage: "COUNTER", description: "Local blocks dirtied"}
    - local_blks_written: {usage: "COUNTER", description: "Local blocks written"}
    - temp_blks_read: {usage: "COUNTER", description: "Temp blocks read"}
    - temp_blks_written: {usage: "COUNTER", description: "Temp blocks written"}
    - blk_read_time_seconds: {usage: "COUNTER", description: "Time reading blocks"}
    - blk_write_time_seconds: {usage: "COUNTER", description: "Time writing blocks"}
"""

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Column:
    """One column of the table: what one exporter (or daemon at one top_k) measured."""

    title: str
    collection_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)
    scrape_ms: list[float] = field(default_factory=list)
    # The same client's round trip for an empty answer (/healthz): what a scrape costs
    # before any sample.
    trip_ms: list[float] = field(default_factory=list)
    samples: int = 0
    rss_mb: list[float] = field(default_factory=list)
    own_ms_per_s: float = 0.0

    @staticmethod
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


class Load:
    """The application's traffic: a skewed hot set, run continuously from another process."""

    def __init__(self, dsn: str, statements: list[str], hot: int) -> None:
        hot_set = statements[:hot]
        self._round = [s for i, s in enumerate(hot_set)
                       for _ in range(-(-len(hot_set) // (i + 1)))]
        self._workload = Workload(dsn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._workload.run(self._round)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._workload.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def own_statements_ms(conn: Conn, role: str) -> float:
    """Plan + exec time (ms) PostgreSQL has accounted to ``role``'s statements."""
    row = conn.execute(
        "SELECT coalesce(sum(total_exec_time + total_plan_time), 0) FROM pg_stat_statements "
        "WHERE userid = %s::regrole", (role,)).fetchone()
    return 0.0 if row is None else float(row[0])


def exporter_query_ms(conn: Conn) -> tuple[int, float]:
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time + total_plan_time), 0) "
        "FROM pg_stat_statements WHERE query LIKE %s",
        ("%FROM pg_stat_statements t1 JOIN pg_roles%",)).fetchone()
    return (0, 0.0) if row is None else (int(row[0]), float(row[1]))


def count_samples(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def measure_exporter(cluster: ThrowawayCluster, conn: Conn, seconds: float,
                     tmp: Path) -> Column:
    assert POSTGRES_EXPORTER is not None
    column = Column("postgres_exporter")
    queries = tmp / "queries.yaml"
    queries.write_text(EXPORTER_QUERIES)
    port = free_port()
    dsn = cluster.dsn(user=MONITOR, password=MONITOR_PASSWORD) + "?sslmode=disable"
    proc = subprocess.Popen(
        [POSTGRES_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
         f"--extend.query-path={queries}"],
        env={**os.environ, "DATA_SOURCE_NAME": dsn},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(url, proc)
        with httpx.Client() as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                calls, total = exporter_query_ms(conn)
                column.floor_ms.append(floor_ms(conn, 1))
                began = time.perf_counter()
                body = client.get(url, timeout=30).text
                column.scrape_ms.append((time.perf_counter() - began) * 1000)
                calls_after, total_after = exporter_query_ms(conn)
                if calls_after > calls:
                    column.query_ms.append((total_after - total) / (calls_after - calls))
                column.samples = count_samples(body)
                column.rss_mb.append(rss_mb(proc.pid))
                time.sleep(1.0)
        column.collection_ms = column.scrape_ms
    finally:
        stop_process(proc, 15)
    return column


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).is_success:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


DAEMON_CONFIG = """\
server: {{listen: "127.0.0.1:{port}", api_token: bench-token-0123456789}}
targets:
  - name: bench
    dsn: "{dsn}"
    collectors:
      connections: {{interval: {interval}s}}
      database: {{interval: {interval}s}}
      statements: {{interval: {interval}s, top_k: {top_k}, timeout: 30s}}
      tables: {{enabled: false}}
      compat: {{enabled: false}}
rule_files: ["{rules}/*.yaml"]
state: "sqlite://{state}"
logging: {{level: WARNING}}
"""


@contextmanager
def daemon(tree: Path, cluster: ThrowawayCluster, top_k: int, interval: float,
           tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    config = workdir / "piggywatch.yaml"
    config.write_text(DAEMON_CONFIG.format(
        port=port, dsn=cluster.dsn(user=MONITOR, password=MONITOR_PASSWORD),
        interval=interval, top_k=top_k, rules=shipped_rules_dir(), state=workdir / "state.db"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    stderr = (workdir / "stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "run", "--config", str(config)],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(f"http://127.0.0.1:{port}/metrics", proc)
        yield proc, f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_process(proc, 15)
        stderr.close()


_DURATION = re.compile(
    r'^piggywatch_collector_duration_seconds\{[^}]*collector="statements"[^}]*\} (\S+)', re.M)


def measure_daemon(title: str, tree: Path, cluster: ThrowawayCluster, conn: Conn,
                   top_k: int, args: argparse.Namespace, tmp: Path) -> Column:
    column = Column(title)
    with daemon(tree, cluster, top_k, args.interval, tmp) as (proc, url), \
            httpx.Client(headers={"Accept-Encoding": "gzip"}) as client:
        time.sleep(args.warmup)
        own_before, own_at = own_statements_ms(conn, MONITOR), time.monotonic()
        seen: set[str] = set()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            column.floor_ms.append(floor_ms(conn, 1))
            began = time.perf_counter()
            client.get(url.replace("/metrics", "/healthz"), timeout=30)
            column.trip_ms.append((time.perf_counter() - began) * 1000)
            # The bytes as the server sends them, as a scraper gets them; decompressing and
            # parsing them is the scraper's own cost.
            began = time.perf_counter()
            with client.stream("GET", url, timeout=30) as response:
                raw = b"".join(response.iter_raw())
            column.scrape_ms.append((time.perf_counter() - began) * 1000)
            encoding = response.headers.get("content-encoding", "")
            body = (gzip.decompress(raw) if encoding == "gzip" else raw).decode()
            column.samples = count_samples(body)
            for match in _DURATION.finditer(body):
                if match[1] not in seen:  # one reading per cycle
                    seen.add(match[1])
                    column.collection_ms.append(float(match[1]) * 1000)
            column.rss_mb.append(rss_mb(proc.pid))
            time.sleep(1.0)
        own_ms = own_statements_ms(conn, MONITOR) - own_before
        column.own_ms_per_s = own_ms / (time.monotonic() - own_at)
    return column


def table(columns: list[Column]) -> None:
    head = "| | " + " | ".join(c.title for c in columns) + " |"
    print(head)
    print("|---" * (len(columns) + 1) + "|")

    def row(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    med = Column.med
    row("statements collection (median ms)", [
        f"scrape {med(c.collection_ms):.1f} (its DB query alone {med(c.query_ms):.1f})"
        if c.query_ms else f"{med(c.collection_ms):.1f}" for c in columns])
    row("floor: PostgreSQL reading every entry of pg_stat_statements(false) (median ms)",
        [f"{med(c.floor_ms):.1f}" for c in columns])
    row("`/metrics` scrape (median ms, gzip)",
        [f"{med(c.scrape_ms):.1f} for {c.samples:,} samples" for c in columns])
    row("the same client's round trip for /healthz (median ms)",
        [f"{med(c.trip_ms):.2f}" if c.trip_ms else "" for c in columns])
    row("RSS (median MB)", [f"{med(c.rss_mb):.0f}" for c in columns])
    row("own statements in PostgreSQL (plan + exec, ms per s of wall time)",
        [f"{c.own_ms_per_s:.2f}" if c.own_ms_per_s else "" for c in columns])


def ratios(columns: list[Column]) -> bool:
    ok = True
    print()
    print("ratios against the budgets (issue 13):")
    for c in columns:
        top_k = getattr(c, "top_k", None)
        if top_k is None:
            continue
        med = Column.med
        # Per sample beyond an empty answer's round trip: the 1 µs budget is about scale
        # (100,000 series in 100 ms); a small scrape is mostly the trip itself.
        per_sample = (med(c.scrape_ms) - med(c.trip_ms)) * 1000 / max(c.samples, 1)
        whole = med(c.scrape_ms) * 1000 / max(c.samples, 1)
        ratio = med(c.collection_ms) / med(c.floor_ms)
        budget_ratio = STATEMENTS_RATIO.get(top_k, 3.0)
        budget_rss = RSS_MB.get(top_k, 100.0)
        checks = [
            (f"scrape {per_sample:.2f} µs/sample beyond the round trip ({whole:.2f} with it; "
             f"≤ {SCRAPE_US_PER_SAMPLE})",
             per_sample <= SCRAPE_US_PER_SAMPLE),
            (f"statements {ratio:.2f}x floor (≤ {budget_ratio})", ratio <= budget_ratio),
            (f"RSS {med(c.rss_mb):.0f} MB (≤ {budget_rss:.0f})", med(c.rss_mb) <= budget_rss),
        ]
        cells = ", ".join(f"{text} {'ok' if good else 'OVER'}" for text, good in checks)
        print(f"  {c.title}: {cells}")
        if getattr(c, "is_after", True):
            ok = ok and all(good for _, good in checks)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--hot", type=int, default=300)
    parser.add_argument("--interval", type=float, default=2.0, help="collector interval (s)")
    parser.add_argument("--seconds", type=float, default=40.0, help="measuring time per column")
    parser.add_argument("--warmup", type=float, default=10.0, help="daemon warm-up (s)")
    parser.add_argument("--top-k", type=int, nargs="+", default=[100, 5000])
    parser.add_argument("--before", type=Path, help="a checkout to measure as 'before'")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds, small database, no budget asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.statements, args.hot, args.seconds, args.warmup = 300, 50, 3.0, 3.0
        args.top_k = [100, 300]
    trees = [("", HERE)] + ([("before ", args.before.resolve())] if args.before else [])
    columns: list[Column] = []
    with ThrowawayCluster(max_connections=30) as cluster, tempfile.TemporaryDirectory() as tmp, \
            psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
            sql.Identifier(MONITOR), sql.Literal(MONITOR_PASSWORD)))
        conn.execute(sql.SQL("CREATE ROLE {} IN ROLE pg_monitor").format(
            sql.Identifier(FLOOR_ROLE)))
        statements = make_statements(conn, args.statements)
        entries = conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        load = Load(cluster.dsn(), statements, args.hot)
        try:
            if POSTGRES_EXPORTER is not None:
                columns.append(measure_exporter(cluster, conn, args.seconds, Path(tmp)))
            else:
                print("postgres_exporter is not installed: PiggyWatch's figures alone",
                      file=sys.stderr)
            for top_k in args.top_k:
                for label, tree in reversed(trees):
                    column = measure_daemon(f"{label}PiggyWatch top_k {top_k}", tree, cluster,
                                            conn, top_k, args, Path(tmp))
                    column.top_k = top_k  # type: ignore[attr-defined]
                    column.is_after = not label  # type: ignore[attr-defined]
                    columns.append(column)
        finally:
            load.close()
    print(f"{entries[0] if entries else '?'} statements in pg_stat_statements, collectors "
          f"every {args.interval:g} s, {args.seconds:g} s measured per column after "
          f"{args.warmup:g} s; trees: " + ", ".join(f"{label or 'after '}{tree}"
                                                   for label, tree in trees))
    table(columns)
    ok = ratios(columns)
    if args.quick:
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
