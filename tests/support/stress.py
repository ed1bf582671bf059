"""Keeps every core busy for a while: ``python -m tests.support.stress --seconds 900``.

The suite must pass while another process loads the machine (issue 18's acceptance: run the
whole suite with this in the background). One busy-looping process per core (or
``--processes``); it stops by itself after ``--seconds``, or at SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time


def spin(until: float) -> None:
    """Burn one core until the monotonic clock passes ``until``."""
    count = 0
    while time.monotonic() < until:
        for _ in range(100_000):
            count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900.0,
                        help="stop after this many seconds (default 900)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2,
                        help="busy processes (default: one per core)")
    args = parser.parse_args()
    until = time.monotonic() + args.seconds
    workers = [multiprocessing.Process(target=spin, args=(until,), daemon=True)
               for _ in range(args.processes)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: object) -> None:
        for worker in workers:
            worker.terminate()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"stress: {args.processes} busy processes for {args.seconds:.0f} s", flush=True)
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)


if __name__ == "__main__":
    main()
