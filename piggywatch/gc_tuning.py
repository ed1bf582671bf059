"""Python's cyclic garbage collector, tuned for a daemon that holds its data for long.

A daemon watching a busy database holds hundreds of thousands of long-lived objects (the
series of the store, their labels, the rules' state) and allocates a few thousand short-lived
ones every cycle. With CPython's default thresholds (700, 10, 10) a collection of the
youngest generation runs every 700 allocations, and the objects that survive it pile into
the older generations, whose collections walk them all: at statements top_k 5000, about
143 ms of pauses every 48 s, full collections of 35 ms among them (``gc.callbacks``
measured in ``bench.side_by_side``'s daemon). Collecting the youngest generation every
10,000 allocations instead, and the older ones more rarely, leaves 47 ms in the same
time, none over 12 ms. Reference counting frees everything that is not a cycle as before;
cycles (an exception and its traceback) wait a little longer.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "tune"]

# Allocations between collections of the youngest generation, and collections of each
# generation between collections of the next.
THRESHOLDS = (10_000, 20, 20)


def tune() -> None:
    """Set the collector's thresholds for a long-running daemon (``run`` calls this)."""
    gc.set_threshold(*THRESHOLDS)
