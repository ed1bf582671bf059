"""glibc's malloc as `piggywatch run` tunes it: large blocks freed go back to the system
instead of staying in the heap behind a small block still in use (issue 13's memory budget).
Each case runs in a fresh interpreter, on the real allocator."""

from __future__ import annotations

import json
import subprocess
import sys

# Frees a large block (glibc then raises its mmap threshold above that size), then
# allocates 80 large blocks, each followed by a small one that stays (bytes of more than
# 512 bytes come from malloc, not from Python's own arenas), and frees the large ones.
_CYCLE = """
import json, sys
from piggywatch import allocator
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
tuned = allocator.tune() if sys.argv[1] == "tuned" else None
big = 256 * 1024
del_me = bytes(big)
del del_me
before = rss_kb()
blocks, kept = [], []
for i in range(80):
    blocks.append(bytes([i % 251]) * big)
    kept.append(bytes([i % 7]) * 600)
peak = rss_kb()
blocks.clear()
released = allocator.release_free_memory() if sys.argv[2] == "trim" else None
print(json.dumps({"tuned": tuned, "released": released, "peak_mb": (peak - before) / 1024,
                  "kept_mb": (rss_kb() - before) / 1024}))
"""


def cycle(tuned: bool, trim: bool = False) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _CYCLE, "tuned" if tuned else "default",
                           "trim" if trim else "-"], capture_output=True, text=True,
                          check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def test_tuned_malloc_returns_large_freed_blocks_that_glibc_would_keep() -> None:
    kept_by_default = cycle(tuned=False)
    tuned = cycle(tuned=True)
    assert tuned["tuned"] is True
    # 80 blocks of 256 KiB: 20 MiB allocated in both runs.
    assert kept_by_default["peak_mb"] > 15 and tuned["peak_mb"] > 15
    assert kept_by_default["kept_mb"] > 15
    assert tuned["kept_mb"] < 2


def test_release_free_memory_returns_what_the_heap_holds_free() -> None:
    trimmed = cycle(tuned=False, trim=True)
    assert trimmed["released"] is True
    assert trimmed["kept_mb"] < 2
