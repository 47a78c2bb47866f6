"""The server gives freed heap memory back to the system (serving.heap)."""
import json
import os
import subprocess
import sys

from serving.heap import HeapTrimmer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20

# In a fresh interpreter (the heap of a process that ran other tests is laid out by them): 256 MB in
# C blocks below the mmap threshold, each followed by a small pin that stays, so the freed blocks are
# holes between live chunks that free() cannot hand back by shrinking the heap; the RSS after the
# frees and after one trim.
FREED_HOLES = """
import ctypes, ctypes.util, json, os
from benchmarks.machine import process_rss_bytes
from serving.heap import HeapTrimmer
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
trimmer = HeapTrimmer(every_seconds=0.0)
blocks, pins = [], []
for _ in range(4096):
    blocks.append(libc.malloc(64 * 1024))
    ctypes.memset(blocks[-1], 1, 64 * 1024)
    pins.append(libc.malloc(1024))
for block in blocks:
    libc.free(block)
freed = process_rss_bytes(os.getpid())
trimmed = trimmer.maybe_trim()
print(json.dumps({"available": trimmer.available, "trimmed": trimmed, "freed": freed,
                  "after": process_rss_bytes(os.getpid())}))
"""


def test_freed_request_buffers_go_back_to_the_system_when_trimmed():
    """C buffers freed in the middle of the heap (as a large request's leave it) stay resident until
    the trim gives them back."""
    out = subprocess.run([sys.executable, "-c", FREED_HOLES], cwd=ROOT, capture_output=True, text=True, check=True)
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    assert rss["available"] and rss["trimmed"]  # glibc, as on every machine the project runs on
    assert rss["freed"] - rss["after"] > 128 * MB, rss


def test_the_trimmer_trims_at_most_once_per_interval():
    now = [100.0]
    trimmer = HeapTrimmer(every_seconds=10.0, clock=lambda: now[0])
    assert not trimmer.maybe_trim()  # the interval starts when the trimmer does
    now[0] += 10.0
    assert trimmer.maybe_trim()
    now[0] += 9.9
    assert not trimmer.maybe_trim()
