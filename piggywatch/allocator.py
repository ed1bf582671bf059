"""glibc's malloc, tuned for a long-running daemon whose collections allocate and free
megabytes every cycle (issue 13's memory budget).

Python's own allocator takes small objects from its arenas; everything larger (list and
dict tables, bytes of an exposition, libpq's result buffers) comes from malloc. glibc gives
every thread that allocates under contention an arena of its own (up to 8 per core), and
returns the memory freed inside a heap to the system only when asked: at statements
top_k 5000 a fifth of the daemon's RSS was memory freed and kept by glibc. Two settings fix
most of it (``tune``, at start): two arenas, and a fixed mmap threshold, so that a block of
128 KiB or more is its own mapping, returned to the system when freed (glibc otherwise
raises the threshold as such blocks are freed, and the next ones come from, and stay in,
the heap). ``release_free_memory`` returns what is left, now and then. Measured at
statements top_k 5000 after a minute (``python -m bench.side_by_side``'s daemon, RSS):
156 MB as glibc defaults, 137 MB with two arenas, 126 MB with both.
Elsewhere (musl, macOS) these calls are not there, and nothing is done.
"""

from __future__ import annotations

import ctypes

__all__ = ["ARENAS", "MMAP_THRESHOLD", "release_free_memory", "tune"]

# Two arenas shared by the scheduler's and the HTTP server's threads: more than one, so
# that a scrape does not wait on a collection's allocations.
ARENAS = 2
# glibc's initial (and smallest dynamic) threshold, held there.
MMAP_THRESHOLD = 128 * 1024
# mallopt's parameter numbers, from glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def tune(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """At most ``arenas`` malloc arenas and a fixed mmap threshold (as ``MALLOC_ARENA_MAX``
    and ``MALLOC_MMAP_THRESHOLD_`` would); call before the threads start. True when the
    allocator took both."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    took = [mallopt(ctypes.c_int(param), ctypes.c_int(value))
            for param, value in ((_M_ARENA_MAX, arenas), (_M_MMAP_THRESHOLD, mmap_threshold))]
    return all(took)


def release_free_memory() -> bool:
    """Give the pages malloc holds free back to the system (``malloc_trim(0)``: in every
    arena, not only at the top of the heap). True when some were released."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(ctypes.c_size_t(0)))
