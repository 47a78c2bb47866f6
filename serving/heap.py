"""Giving freed heap memory back to the system.

glibc's malloc keeps what a large request freed in its arenas, so the server's resident memory
stayed at its peak after abuse (``benchmarks/reliability.py``: x1.44-1.67 of the post-load level
after 10,000 malformed requests, while Python objects grew by 2.7 MB). ``malloc_trim(0)`` hands
the free pages back. Where the C library has no ``malloc_trim`` (not glibc), nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

TRIM_EVERY_SECONDS = 10.0  # a trim walks the heap: often enough to matter, rarely enough to cost nothing


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


class HeapTrimmer:
    """``maybe_trim()`` calls malloc_trim(0) at most once every ``every_seconds``."""

    def __init__(self, every_seconds: float = TRIM_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.every_seconds, self.clock = every_seconds, clock
        self._trim = _malloc_trim()
        self._last = clock()
        if self._trim is None:
            log.info("no malloc_trim in this C library: freed heap memory stays with the process")

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trims if the interval has passed; True if it trimmed."""
        now = self.clock()
        if self._trim is None or now - self._last < self.every_seconds:
            return False
        self._last = now
        self._trim(0)
        return True
