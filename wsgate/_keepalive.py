"""Keepalive for one WebSocket leg: ping a quiet peer, give up on a dead one.

A peer that vanished without a FIN (a frozen VM, a cut cable, a NAT that
forgot the flow) is otherwise noticed only when something is written to it,
and a proxy's idle timeout kills a connection that is quiet but alive. Each
leg pings its own peer after ``interval`` seconds without hearing from it,
whatever the other leg does; no answer (any frame counts, a pong included)
within ``timeout`` seconds means the peer is gone.

Hearing costs nothing per read: the relay already notes when each side's
peer last sent a message piece, a ping or a pong (for the idle timeout),
and the timer, firing about once per ``interval``, reads that time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsgate._relay import Clock


class Keepalive:
    """The ping timer of one leg, driven by an injected clock.

    ``last_heard()`` tells when the peer last sent something. ``ping()``
    sends a ping and returns False when the leg can no longer take one (it
    is closing): the keepalive then stops. ``dead()`` is called once, when
    a ping went unanswered for ``timeout`` seconds. A ``timeout`` of 0 sends
    pings (to keep intermediaries' idle timers happy) but never gives up on
    the peer.
    """

    __slots__ = (
        "_call",
        "_clock",
        "_dead",
        "_heard_at",
        "_interval",
        "_last_heard",
        "_paused",
        "_ping",
        "_pinged_at",
        "_timeout",
    )

    def __init__(
        self,
        clock: Clock,
        interval: float,
        timeout: float,
        ping: Callable[[], bool],
        dead: Callable[[], None],
        last_heard: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._last_heard = last_heard
        self._interval = interval
        self._timeout = timeout
        self._ping = ping
        self._dead = dead
        self._heard_at = clock.seconds()
        self._pinged_at: float | None = None
        self._paused = False
        self._call: Any = clock.callLater(interval, self._tick)

    def pause(self) -> None:
        """The leg stopped reading (backpressure): its peer's answers wait
        unread in the socket, so silence proves nothing until it reads again."""
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._heard_at = self._clock.seconds()

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def running(self) -> bool:
        return self._call is not None

    def _tick(self) -> None:
        self._call = None
        now = self._clock.seconds()
        self._heard_at = max(self._heard_at, self._last_heard())
        if self._paused:
            self._heard_at = now
        if self._pinged_at is not None:
            if self._heard_at < self._pinged_at:
                self._dead()
                return
            self._pinged_at = None
        quiet = now - self._heard_at
        if quiet < self._interval:
            self._call = self._clock.callLater(self._interval - quiet, self._tick)
            return
        if not self._ping():
            return
        if self._timeout > 0:
            self._pinged_at = now
            self._call = self._clock.callLater(self._timeout, self._tick)
        else:
            self._heard_at = now  # nothing to wait for: ping again after interval
            self._call = self._clock.callLater(self._interval, self._tick)


__all__ = ["Keepalive"]
