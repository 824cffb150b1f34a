"""Give freed heap memory back to the system after a wave of frees.

glibc's ``free`` keeps small blocks for reuse and returns only the top of
the heap, so zlib states dropped by idle connections (``_leandeflate``)
leave the process as large as it was at its busiest: after a burst of
connections, each idle one still counted about 45 KiB per deflating leg in
RSS although nothing used it. ``malloc_trim(0)`` hands whole free pages
back (about 0.1 ms per MiB released). A wave of drops asks for one trim,
when it has ended, and trims are rare (see the constants); elsewhere than
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from wsgate._relay import Clock

#: A trim runs once drops have been quiet this long (the drops of one
#: wave, connections that went quiet together, share it) ...
DELAY = 1.0
#: ... or this long after the wave asked for it, if drops go on ...
MAX_WAIT = 10.0
#: ... but never sooner than this after the last trim: a trim walks every
#: free block of the heap (about 40 ms on a fragmented 660 MiB heap).
MIN_INTERVAL = 10.0
#: Less freed than this is left for malloc to reuse.
MIN_BYTES = 4 << 20


def _malloc_trim() -> Callable[[], Any] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrim:
    """Runs ``trim`` once per wave of ``freed`` calls, on the caller's clock."""

    def __init__(self, trim: Callable[[], Any] | None) -> None:
        self._trim = trim
        self._call: Any = None
        self._clock: Clock | None = None
        self._pending = 0
        self._asked_at = 0.0
        self._last: float | None = None

    def freed(self, clock: Clock, size: int) -> None:
        """``size`` bytes were freed: trim once they add up (once for many calls)."""
        if self._trim is None:
            return
        self._pending += size
        if self._pending < MIN_BYTES:
            return
        now = clock.seconds()
        call = self._call
        if clock is not self._clock:
            self._last = None  # another clock's time says nothing on this one
        if call is None or not call.active() or clock is not self._clock:
            self._clock, self._asked_at = clock, now
            self._call = clock.callLater(self._due(now) - now, self._run)
        else:
            call.reset(self._due(now) - now)

    def _due(self, now: float) -> float:
        due = min(now + DELAY, self._asked_at + MAX_WAIT)
        if self._last is not None:
            due = max(due, self._last + MIN_INTERVAL)
        return due

    def _run(self) -> None:
        self._call = None
        self._pending = 0
        if self._clock is not None:
            self._last = self._clock.seconds()
        if self._trim is not None:
            self._trim()


#: The process's trimmer.
TRIM = HeapTrim(_malloc_trim())

__all__ = ["DELAY", "MAX_WAIT", "MIN_BYTES", "MIN_INTERVAL", "TRIM", "HeapTrim"]
