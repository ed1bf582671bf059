"""Durable history at scale: 5,000 kept series recorded every 5 minutes for 7 simulated days.

Prints the state file's size, the time of each record() batch (median, p99, max; the
source's own select time is measured apart and excluded), the bytes written to disk per
batch, the hourly expire(), how long an evaluator's select takes while batches are being
written, and the time of 7-day selects over 100 series, both by metric name (indexed) and by
a label regex (which scans the series catalogue).

Disk writes per batch are roughly one page per kept series whatever the interval, so
``--record-every`` shows what calling record() less often saves.

    python bench/history_bench.py [--series 5000] [--days 7] [--record-every 300] [--path F]

Samples arrive every 15 s with millisecond timestamps, as the in-memory store keeps them;
half the series are counters (integral values), half gauges (arbitrary floats), so the file
size reflects what a real daemon writes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from piggywatch.store.history import History
from piggywatch.store.samples import Labels
from piggywatch.store.series import LabelMatcher, MatchOp, Series

SCRAPE = 15.0
SERIES_PER_NAME = 100
DAY = 86400.0
START = 1_700_000_000.0


class SyntheticSource:
    """The in-memory store's answers for ``n`` series, computed instead of stored."""

    def __init__(self, n: int) -> None:
        rng = random.Random(7)
        self.by_name: dict[str, list[tuple[Labels, float, bool]]] = {}
        for i in range(n):
            name = f"bench_metric_{i // SERIES_PER_NAME}"
            labels: Labels = (("__name__", name), ("instance", f"host-{i % SERIES_PER_NAME}"),
                              ("target", "main"))
            jitter = rng.randrange(0, 15_000) / 1000  # each scrape lands at its own ms
            self.by_name.setdefault(name, []).append((labels, jitter, i % 2 == 0))
        self.seconds = 0.0

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        """Only ``__name__="…"`` selectors are kept in this bench."""
        began = time.perf_counter()
        [name_matcher] = matchers
        found = []
        for labels, jitter, counter in self.by_name.get(name_matcher.value, ()):
            first = START + jitter + max(0, -(-(start - START - jitter) // SCRAPE)) * SCRAPE
            timestamps = []
            t = first
            while t <= end:
                timestamps.append(t)
                t += SCRAPE
            if counter:
                values = [float(int((ts - START) * 3)) for ts in timestamps]
            else:
                values = [50.0 + 10.0 * ((ts * 7.31) % 1.0) for ts in timestamps]
            found.append(Series(labels, timestamps, values))
        self.seconds += time.perf_counter() - began
        return found


def evaluator_waits(history: History, until: threading.Event, waits: list[float]) -> None:
    """Select one series' whole history, as an evaluator would, until told to stop."""
    matchers = [LabelMatcher.of("__name__", MatchOp.EQUAL, "bench_metric_1"),
                LabelMatcher.of("instance", MatchOp.EQUAL, "host-1")]
    while not until.is_set():
        began = time.perf_counter()
        history.select(matchers, START, START + 1e9)
        waits.append((time.perf_counter() - began) * 1000)
        time.sleep(0.005)


def disk_writes() -> int | None:
    """Bytes this process has caused to be written to storage (Linux), None elsewhere."""
    try:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("write_bytes:"))
    except (OSError, StopIteration):
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--record-every", type=float, default=300.0,
                        help="seconds between record() calls (history resolution is 300 s)")
    parser.add_argument("--path", type=Path, help="state file to write (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.series, args.days = 200, 0.25

    with tempfile.TemporaryDirectory() as scratch:
        path = args.path or Path(scratch) / "state.db"
        source = SyntheticSource(args.series)
        record_ms: list[float] = []
        expire_ms: list[float] = []
        history = History(path)
        history.keep([[LabelMatcher.of("__name__", MatchOp.EQUAL, name)]
                      for name in source.by_name])
        end = START + args.days * DAY
        every = args.record_every
        now = START + every
        written = 0
        written_before = disk_writes()
        # The last day runs with an evaluator selecting alongside, to see how long it waits.
        contended_from = end - DAY
        stop = threading.Event()
        waits: list[float] = []
        evaluator = threading.Thread(target=evaluator_waits, args=(history, stop, waits))
        while now <= end:
            if now >= contended_from and not evaluator.is_alive() and not stop.is_set():
                evaluator.start()
            source.seconds = 0.0
            began = time.perf_counter()
            written += history.record(source, now)
            record_ms.append((time.perf_counter() - began - source.seconds) * 1000)
            if (now - START) % 3600 == 0:
                began = time.perf_counter()
                history.expire(now)
                expire_ms.append((time.perf_counter() - began) * 1000)
            now += every
        now -= every
        stop.set()
        evaluator.join()
        written_after = disk_writes()

        by_name = [LabelMatcher.of("__name__", MatchOp.EQUAL, "bench_metric_0")]
        by_regex = [LabelMatcher.of("instance", MatchOp.REGEX, "host-(1|2)"),
                    LabelMatcher.of("target", MatchOp.EQUAL, "main")]
        timings: dict[str, tuple[float, int, int]] = {}
        for label, matchers in (("by name", by_name), ("by regex", by_regex)):
            runs = []
            for _ in range(5):
                began = time.perf_counter()
                found = history.select(matchers, now - 7 * DAY, now)
                runs.append((time.perf_counter() - began) * 1000)
            timings[label] = (statistics.median(runs), len(found),
                              sum(len(s.timestamps) for s in found))
        stored = sum(len(s.timestamps) for s in history.select([], 0.0, now))
        history.close()  # the last connection to close folds the WAL into the file
        size = path.stat().st_size
        wal = path.with_name(path.name + "-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0

    print(f"series kept:          {args.series:,}  ({args.days:g} days, record every "
          f"{args.record_every:g} s, samples every {SCRAPE:g} s)")
    print(f"bucket writes:        {written:,}  (an open bucket is written again when it closes)")
    print(f"state file:           {size / 2**20:.1f} MiB (+ WAL {wal_size / 2**20:.1f} MiB), "
          f"{size / max(stored, 1):.1f} bytes per stored point")
    print(f"record() per batch:   median {statistics.median(record_ms):.1f} ms, "
          f"p99 {percentile(record_ms, 0.99):.1f} ms, max {max(record_ms):.1f} ms "
          f"over {len(record_ms)} batches (source select time excluded)")
    if written_before is not None and written_after is not None:
        per_batch = (written_after - written_before) / len(record_ms) / 2**20
        print(f"disk writes:          {per_batch:.1f} MiB per batch (WAL and checkpoints)")
    print(f"expire() hourly:      median {statistics.median(expire_ms):.1f} ms, "
          f"max {max(expire_ms):.1f} ms")
    print(f"evaluator select:     median {statistics.median(waits):.1f} ms, "
          f"max {max(waits):.1f} ms over {len(waits):,} selects while recording (last day)")
    for label, (ms, count, points) in timings.items():
        print(f"7-day select {label}: {ms:.1f} ms for {count} series, {points:,} points")


if __name__ == "__main__":
    main()
