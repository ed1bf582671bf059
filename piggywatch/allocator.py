"""glibc's malloc, tuned for a long-running daemon whose collections allocate and free
megabytes every cycle (issue 13's memory budget).

Python's own allocator takes small objects from its arenas; everything larger (list and
dict tables, bytes of an exposition, libpq's result buffers) comes from malloc. glibc gives
threads arenas of their own (up to 8 per core), each holding its free memory, and
returns the memory freed inside a heap to the system only when asked. ``tune`` (at start)
caps the arenas at two; ``release_free_memory`` returns the free pages now and then.
Measured with ``python -m bench.side_by_side --top-k 5000`` (RSS median of the daemon):
141 MB as glibc has it, 132 MB with two arenas, and no slower. A fixed mmap threshold
(``MALLOC_MMAP_THRESHOLD_=131072``: large blocks given back when freed) saved 8 MB more but
made each /metrics scrape of 25,000 samples about 8 ms slower (page faults on every large
block), and 1-4 MiB thresholds saved nothing: not used.
Elsewhere (musl, macOS) these calls are not there, and nothing is done.
"""

from __future__ import annotations

import ctypes

__all__ = ["ARENAS", "release_free_memory", "tune"]

# Two arenas shared by the scheduler's and the HTTP server's threads: more than one, so
# that a scrape does not wait on a collection's allocations.
ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def tune(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas (as ``MALLOC_ARENA_MAX`` would); call before the
    threads start. True when the allocator took it."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)))


def release_free_memory() -> bool:
    """Give the pages malloc holds free back to the system (``malloc_trim(0)``: in every
    arena, not only at the top of the heap). True when some were released."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(ctypes.c_size_t(0)))
