"""Freed heap memory handed back once per wave of frees, on a Clock."""

from __future__ import annotations

import ctypes
import platform

import pytest
from twisted.internet.task import Clock

from wsgate import _heap
from wsgate._heap import DELAY, MAX_WAIT, MIN_BYTES, MIN_INTERVAL, HeapTrim

CHUNK = MIN_BYTES // 10


def _heap_on(clock: Clock) -> tuple[HeapTrim, list[float]]:
    trims: list[float] = []
    return HeapTrim(lambda: trims.append(clock.seconds())), trims


def test_small_frees_are_left_to_malloc() -> None:
    clock = Clock()
    heap, trims = _heap_on(clock)
    for _ in range(9):
        heap.freed(clock, CHUNK)
    assert not clock.getDelayedCalls()
    heap.freed(clock, CHUNK * 2)
    clock.advance(DELAY)
    assert len(trims) == 1


def test_one_trim_when_a_wave_ends() -> None:
    clock = Clock()
    heap, trims = _heap_on(clock)
    for _ in range(100):
        heap.freed(clock, CHUNK)
        clock.advance(DELAY / 20)
    assert trims == []
    clock.advance(DELAY - DELAY / 10)  # the last drop was at 4.95
    assert trims == []
    clock.advance(DELAY / 10)
    assert trims == pytest.approx([5.0 + DELAY])
    assert not clock.getDelayedCalls()


def test_drops_that_go_on_wait_at_most_max_wait_then_min_interval() -> None:
    clock = Clock()
    heap, trims = _heap_on(clock)
    for _ in range(1000):
        heap.freed(clock, MIN_BYTES)
        clock.advance(DELAY / 2)
    # MAX_WAIT after the first drop, then every MIN_INTERVAL.
    assert trims == pytest.approx([MAX_WAIT + MIN_INTERVAL * k for k in range(50)])


def test_another_clock_does_not_inherit_the_last_trim_s_time() -> None:
    """Legs on another clock (tests run many) are not held back by a trim
    timed on the first one."""
    first, later = Clock(), Clock()
    trims: list[str] = []
    heap = HeapTrim(lambda: trims.append("trim"))
    first.advance(1000)
    heap.freed(first, MIN_BYTES)
    first.advance(DELAY)
    assert trims == ["trim"]
    heap.freed(later, MIN_BYTES)  # at 0 on its own clock
    later.advance(DELAY)
    assert trims == ["trim", "trim"]


def test_without_glibc_nothing_is_scheduled() -> None:
    clock = Clock()
    HeapTrim(None).freed(clock, MIN_BYTES * 10)
    assert not clock.getDelayedCalls()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_hands_freed_pages_back() -> None:
    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    assert _heap.TRIM._trim is not None
    # 64 MiB in blocks under glibc's mmap threshold, with a live block
    # between each two freed ones, so free() alone cannot shrink the heap.
    blocks = [ctypes.create_string_buffer(30_000) for _ in range(2236)]
    keep = blocks[1::2]
    before = rss_kib()
    del blocks
    assert rss_kib() > before - 8 * 1024
    clock = Clock()
    _heap.TRIM.freed(clock, 32 << 20)
    clock.advance(DELAY)
    assert rss_kib() < before - 16 * 1024
    assert len(keep) == 1118
