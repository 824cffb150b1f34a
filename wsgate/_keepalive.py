"""Keepalive for WebSocket legs: ping a quiet peer, give up on a dead one.

A peer that vanished without a FIN (a frozen VM, a cut cable, a NAT that
forgot the flow) is otherwise noticed only when something is written to it,
and a proxy's idle timeout kills a connection that is quiet but alive. Each
leg pings its own peer after ``interval`` seconds without hearing from it,
whatever the other leg does; no answer (any frame counts, a pong included)
within ``timeout`` seconds means the peer is gone.

Hearing costs nothing per read: the relay already notes when each side's
peer last sent a message piece, a ping or a pong (for the idle timeout),
and the timer, firing about once per ``interval``, reads that time.

Idle connections are what a gateway holds most of, so a leg's timer is a
small slotted entry in one wheel per clock, not a ``DelayedCall`` of its
own (with its bound methods and argument dicts, about 1.2 KiB a leg): delays
of 2 s and more are rounded up to the next whole second of the clock, so
every leg due in the same second shares one ``DelayedCall``; shorter delays
(tests, unusual settings) keep their exact time. A leg is never pinged or
given up on early; at most a second late.
"""

from __future__ import annotations

import heapq
import math
import weakref
from typing import Any, Protocol

from twisted.logger import Logger

from wsgate._relay import Clock

_log = Logger(namespace="wsgate")

#: Delays from this many seconds on are rounded up to a whole second.
_COARSE = 2.0


class Pinged(Protocol):
    """The leg a keepalive watches."""

    def keepalive_ping(self) -> bool:
        """Send a ping; False when the leg can take none any more (closing)."""

    def keepalive_dead(self) -> None:
        """A ping went unanswered for ``timeout`` seconds."""

    def keepalive_heard_at(self) -> float:
        """When the peer last sent something (the relay's time)."""


class Keepalive:
    """The ping timer of one leg, driven by an injected clock.

    ``leg.keepalive_ping()`` sends a ping and returns False when the leg can
    no longer take one (it is closing): the keepalive then stops.
    ``leg.keepalive_dead()`` is called once, when a ping went unanswered for
    ``timeout`` seconds. A ``timeout`` of 0 sends pings (to keep
    intermediaries' idle timers happy) but never gives up on the peer.
    """

    __slots__ = (
        "_at",
        "_heard_at",
        "_leg",
        "_paused",
        "_pinged_at",
        "_wheel",
        "interval",
        "timeout",
    )

    def __init__(self, clock: Clock, interval: float, timeout: float, leg: Pinged) -> None:
        self._wheel = _wheel(clock)
        self._leg: Pinged | None = leg
        self.interval = interval
        self.timeout = timeout
        self._heard_at = clock.seconds()
        self._pinged_at: float | None = None
        self._paused = False
        #: The wheel's slot this entry waits in (None: not scheduled).
        self._at: float | None = None
        self._wheel.add(self, interval)

    def pause(self) -> None:
        """The leg stopped reading (backpressure): its peer's answers wait
        unread in the socket, so silence proves nothing until it reads again."""
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._heard_at = self._wheel.seconds()

    def stop(self) -> None:
        if self._at is not None:
            self._wheel.cancel(self)
        self._leg = None  # a stopped entry left in its slot holds no leg

    @property
    def running(self) -> bool:
        return self._at is not None

    def _tick(self, now: float) -> None:
        leg = self._leg
        if leg is None:
            return
        self._heard_at = max(self._heard_at, leg.keepalive_heard_at())
        if self._paused:
            self._heard_at = now
        if self._pinged_at is not None:
            if self._heard_at < self._pinged_at:
                self._leg = None
                leg.keepalive_dead()
                return
            self._pinged_at = None
        quiet = now - self._heard_at
        if quiet < self.interval:
            self._wheel.add(self, self.interval - quiet)
            return
        if not leg.keepalive_ping():
            self._leg = None
            return
        if self.timeout > 0:
            self._pinged_at = now
            self._wheel.add(self, self.timeout)
        else:
            self._heard_at = now  # nothing to wait for: ping again after interval
            self._wheel.add(self, self.interval)


class _Wheel:
    """Every keepalive of one clock: entries in slots by due time, one
    ``DelayedCall`` for the earliest slot. Cancelling marks the entry (its
    ``_at`` no longer names the slot it sits in); the last cancel stops the
    ``DelayedCall`` and drops the slots."""

    __slots__ = ("__weakref__", "_call", "_call_at", "_clock", "_live", "_slots", "_times")

    def __init__(self, clock: Clock) -> None:
        # Weak: the registry's key is the clock, and a value that held it
        # would keep both forever.
        self._clock = weakref.ref(clock)
        self._slots: dict[float, list[Keepalive]] = {}
        self._times: list[float] = []  # a heap of the slots' times
        self._call: Any = None
        self._call_at = math.inf
        self._live = 0

    def seconds(self) -> float:
        clock = self._clock()
        assert clock is not None
        return clock.seconds()

    def add(self, entry: Keepalive, delay: float) -> None:
        due = self.seconds() + delay
        at = float(math.ceil(due)) if delay >= _COARSE else due
        slot = self._slots.get(at)
        if slot is None:
            slot = self._slots[at] = []
            heapq.heappush(self._times, at)
        slot.append(entry)
        entry._at = at
        self._live += 1
        if at < self._call_at:
            self._arm(at)

    def cancel(self, entry: Keepalive) -> None:
        entry._at = None
        self._live -= 1
        if self._live == 0:
            self._disarm()
            self._slots.clear()
            self._times.clear()

    def _arm(self, at: float) -> None:
        clock = self._clock()
        assert clock is not None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call_at = at
        self._call = clock.callLater(max(0.0, at - clock.seconds()), self._fire)

    def _disarm(self) -> None:
        call, self._call = self._call, None
        self._call_at = math.inf
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        now = self.seconds()
        # Entries the ticks re-add are due after now: arm once, at the end.
        self._call, self._call_at = None, now
        times, slots = self._times, self._slots
        while times and times[0] <= now:
            at = heapq.heappop(times)
            for entry in slots.pop(at, ()):
                if entry._at != at:
                    continue  # cancelled
                entry._at = None
                self._live -= 1
                try:
                    entry._tick(now)
                except Exception:
                    # One leg's failure must not stop every other leg's timer.
                    _log.failure("keepalive of a leg failed")
        if self._live == 0:  # what is left was cancelled
            self._disarm()
            slots.clear()
            times.clear()
        elif times[0] < self._call_at or self._call is None:
            self._arm(times[0])


#: One wheel per clock (a reactor, or a test's Clock).
_wheels: weakref.WeakKeyDictionary[Clock, _Wheel] = weakref.WeakKeyDictionary()


def _wheel(clock: Clock) -> _Wheel:
    wheel = _wheels.get(clock)
    if wheel is None:
        wheel = _wheels[clock] = _Wheel(clock)
    return wheel


__all__ = ["Keepalive", "Pinged"]
