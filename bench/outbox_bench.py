"""The durable outbox: enqueue-to-send latency and throughput, with a channel that answers at once.

Latency: notifications enqueued one at a time, a few milliseconds apart, as a dispatcher
would; measured from the call to enqueue() to the moment the notifier's send() starts
(where a real channel would open its HTTP request), and enqueue() alone (its commit).

Throughput: 5,000 notifications enqueued as fast as one thread can, over one receiver and
then over five, one enqueue() each and then in enqueue_many() batches (a storm's group
commit); measured until the last one is accepted and deleted.

    python bench/outbox_bench.py [--latency-n 1000] [--n 5000] [--dir DIR]

The state file is committed with synchronous=FULL, so the figures depend on the disk's
fsync; ``--dir`` puts it where the daemon's state would live.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from piggywatch.alerting.model import (
    Action,
    AlertInfo,
    AlertStatus,
    Delivery,
    Notification,
    Outcome,
)
from piggywatch.alerting.outbox import Outbox


class FastChannel:
    """Accepts everything at once and notes when each request would have started."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.expected = 0

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        at = time.perf_counter()
        with self.lock:
            self.started[notification.id] = at
            if len(self.started) >= self.expected:
                self.all_in.set()
        return Delivery(Outcome.ACCEPTED, receipt={"ts": notification.id})


def notification(nid: str, receiver: str, incident: str) -> Notification:
    alert = AlertInfo("fp", AlertStatus.FIRING,
                      {"alertname": "PostgresConnectionsHigh", "severity": "high",
                       "target": "main"},
                      {"summary": "92% of max_connections in use",
                       "runbook_url": "https://runbooks.example.com/pg-connections"},
                      starts_at=time.time() - 300, value="0.92")
    return Notification(nid, receiver, Action.TRIGGER, incident,
                        {"alertname": "PostgresConnectionsHigh", "target": "main"},
                        (alert,), time.time())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def bench_latency(directory: Path, n: int) -> None:
    channel = FastChannel()
    channel.expected = n
    outbox = Outbox(directory / "latency.db", {"oncall": channel})
    outbox.start()
    began: dict[str, float] = {}
    enqueue_times = []
    for i in range(n):
        nid = f"lat-{i}"
        t0 = time.perf_counter()
        began[nid] = t0
        outbox.enqueue(notification(nid, "oncall", f"inc-{i % 50}"))
        enqueue_times.append(time.perf_counter() - t0)
        time.sleep(0.003)
    channel.all_in.wait(60)
    outbox.stop(5.0)
    outbox.close()
    latencies = [channel.started[nid] - t0 for nid, t0 in began.items()]
    print(f"latency, {n} notifications enqueued 3 ms apart:")
    print(f"  enqueue() (commit)      p50 {ms(percentile(enqueue_times, 0.5))}  "
          f"p99 {ms(percentile(enqueue_times, 0.99))}  max {ms(max(enqueue_times))}")
    print(f"  enqueue -> send()       p50 {ms(percentile(latencies, 0.5))}  "
          f"p99 {ms(percentile(latencies, 0.99))}  max {ms(max(latencies))}  "
          f"mean {ms(statistics.fmean(latencies))}")


def bench_throughput(directory: Path, n: int, receivers: int, batch: int = 1) -> None:
    channels = {f"r{r}": FastChannel() for r in range(receivers)}
    for channel in channels.values():
        channel.expected = n // receivers
    path = directory / f"throughput-{receivers}-{batch}.db"
    outbox = Outbox(path, channels)
    outbox.start()
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        outbox.enqueue_many([notification(f"tp-{i}", f"r{i % receivers}", f"inc-{i % 200}")
                             for i in range(start, min(n, start + batch))])
    enqueued = time.perf_counter() - t0
    for channel in channels.values():
        channel.all_in.wait(300)
    while outbox.pending():
        time.sleep(0.001)
    total = time.perf_counter() - t0
    outbox.stop(5.0)
    outbox.close()
    how = "one enqueue() each" if batch == 1 else f"enqueue_many() of {batch}"
    print(f"throughput, {n} notifications over {receivers} receiver(s), {how}:")
    print(f"  enqueued in {enqueued:6.2f} s ({n / enqueued:7.0f}/s); all accepted and deleted "
          f"in {total:6.2f} s ({n / total:7.0f}/s); state file {path.stat().st_size // 1024} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-n", type=int, default=1000)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.latency_n, args.n = 50, 200
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"state files in {directory}")
        bench_latency(directory, args.latency_n)
        bench_throughput(directory, args.n, 1)
        bench_throughput(directory, args.n, 5)
        bench_throughput(directory, args.n, 5, batch=50)


if __name__ == "__main__":
    main()
