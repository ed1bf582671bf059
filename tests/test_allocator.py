"""glibc's malloc as `piggywatch run` tunes it (issue 13's memory budget): threads share two
arenas instead of taking one each, and the memory the heap holds free goes back to the
system. Each case runs in a fresh interpreter, on the real allocator."""

from __future__ import annotations

import json
import subprocess
import sys

# Eight threads allocate at once (bytes of more than 512 bytes come from malloc, not from
# Python's own arenas); malloc_info then lists one <heap> per arena.
_ARENAS = """
import ctypes, os, sys, tempfile, threading
from piggywatch import allocator
tuned = allocator.tune() if sys.argv[1] == "tuned" else None
start = threading.Barrier(8)
def work():
    start.wait()
    kept = [bytes(4096) for _ in range(200)]
    start.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(tuned, open(path).read().count("<heap nr="))
"""

# Allocates 80 blocks of 256 KiB, each followed by a small one that stays, then frees the
# large ones: the small ones above them keep the heap from shrinking on its own.
_HOLES = """
import json, sys
from piggywatch import allocator
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
big = 256 * 1024
first = bytes(big)
del first  # glibc raises its mmap threshold above a freed mapped block: the next are heap
before = rss_kb()
blocks, kept = [], []
for i in range(80):
    blocks.append(bytes([i % 251]) * big)
    kept.append(bytes([i % 7]) * 600)
peak = rss_kb()
blocks.clear()
freed = rss_kb()
released = allocator.release_free_memory()
print(json.dumps({"released": released, "peak_mb": (peak - before) / 1024,
                  "freed_mb": (freed - before) / 1024, "trimmed_mb": (rss_kb() - before) / 1024}))
"""


# A cycle's large blocks (256 KiB) freed after the first one raised glibc's own threshold:
# tuned, each goes back to the system when freed; as glibc has it, they stay in the heap.
_LARGE_FREED = """
import json, sys
from piggywatch import allocator
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
if sys.argv[1] == "tuned":
    allocator.tune()
big = 256 * 1024
first = bytes(big)
del first
before = rss_kb()
blocks, kept = [], []
for i in range(80):
    blocks.append(bytes([i % 251]) * big)
    kept.append(bytes([i % 7]) * 600)
blocks.clear()
print(json.dumps({"freed_mb": (rss_kb() - before) / 1024}))
"""


def run(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, check=True).stdout


def test_threads_share_two_arenas_once_tuned() -> None:
    tuned, arenas = run(_ARENAS, "tuned").split()
    assert (tuned, int(arenas)) == ("True", 2)
    # As glibc has it, each of the eight threads takes an arena of its own.
    default, arenas = run(_ARENAS, "default").split()
    assert default == "None" and int(arenas) >= 8


def test_release_free_memory_returns_what_the_heap_holds_free() -> None:
    holes = json.loads(run(_HOLES))
    # 80 blocks of 256 KiB: 20 MiB, still resident after they were freed, until released.
    assert holes["peak_mb"] > 15 and holes["freed_mb"] > 15
    assert holes["released"] is True
    assert holes["trimmed_mb"] < 2


def test_large_blocks_go_back_to_the_system_when_freed_once_tuned() -> None:
    tuned = json.loads(run(_LARGE_FREED, "tuned"))
    default = json.loads(run(_LARGE_FREED, "default"))
    # 80 blocks of 256 KiB (20 MiB) were freed: held in the heap as glibc has it.
    assert default["freed_mb"] > 15
    assert tuned["freed_mb"] < 2
