"""The splice between two legs, written once for both directions.

A leg is anything that can send a message piece by piece, close, and pause
its reading: an Autobahn server or client protocol, or a raw stream
(``_tcpleg``). The relay does not know which; it moves message pieces from one leg
to the other, wires backpressure portforward-style, relays the first close,
and keeps the figures for the connection's closing log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wsgate import _closecodes
from wsgate._closecodes import Cause, Close, Side

_CLIENT = Side.CLIENT


class Clock(Protocol):
    """The part of IReactorTime the relay uses (a reactor, or a test's Clock)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> Any: ...


class Leg(Protocol):
    """What the relay needs from one side of a connection."""

    side: Side

    def send_begin(self, binary: bool) -> None:
        """Start an outgoing message."""

    def send_data(self, data: bytes, final: bool) -> None:
        """Send a piece of the current message; ``final`` ends it."""

    def send_message(self, binary: bool, data: bytes) -> None:
        """Send a whole message: ``send_begin`` and ``send_data(data, True)``."""

    def send_close(self, close: Close) -> None:
        """Start the closing handshake (or drop a leg that has none)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def register_producer_of(self, other: Leg) -> None:
        """Pause ``other``'s reading while this leg's write buffer is full."""

    def unregister_producer(self) -> None: ...

    def finish_ending(self) -> None:
        """The other leg has closed; complete this leg's own (held) ending."""

    def fail(self, code: int, reason: str) -> None:
        """Fail this leg's connection with ``code`` (its peer sent what cannot cross)."""


@implementer(IPushProducer)
class ReadingOf:
    """One leg's reading as the producer for the other leg's transport.

    portforward registers the other transport itself; but a transport whose
    connection is lost calls ``stopProducing()`` on its producer, and a
    transport's ``stopProducing`` closes it at once: the dying leg would cut
    the survivor's closing handshake short (its close reply unread, a reset
    while its peer still sends). Here ``stopProducing`` does nothing: the
    relay ends the surviving leg itself.
    """

    __slots__ = ("_leg",)

    def __init__(self, leg: Leg) -> None:
        self._leg = leg

    def pauseProducing(self) -> None:
        self._leg.pause_reading()

    def resumeProducing(self) -> None:
        self._leg.resume_reading()

    def stopProducing(self) -> None:
        pass


class TransportLeg:
    """Flow control and the ending notice for a leg on a Twisted transport:
    what the WebSocket legs (``_wsleg.RelayedLeg``) and the stream leg
    (``_tcpleg.StreamLeg``) share. Comes before the protocol class in the bases.
    """

    side: Side
    relay: Relay | None = None
    transport: Any  # an ITransport (TCP, TLS, unix); zope interfaces confuse mypy
    _ending_told: bool = False

    def send_message(self, binary: bool, data: bytes) -> None:
        self.send_begin(binary)  # type: ignore[attr-defined]
        self.send_data(data, True)  # type: ignore[attr-defined]

    def _may_read(self) -> bool:
        """Whether resuming the transport makes sense (a closed one reads nothing)."""
        return True

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None and self._may_read():
            self.transport.resumeProducing()

    def register_producer_of(self, other: Leg) -> None:
        if self.transport is not None and getattr(other, "transport", None) is not None:
            if getattr(self.transport, "producer", None) is not None:
                # A connection that served static files first still has the
                # HTTP channel registered.
                self.transport.unregisterProducer()
            self.transport.registerProducer(ReadingOf(other), True)

    def unregister_producer(self) -> None:
        if self.transport is not None and getattr(self.transport, "producer", 1) is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                self.transport.unregisterProducer()

    def _tell_ending(self, cause: Cause, code: int | None, reason: str) -> None:
        """Tell the relay, once, that this leg started to end."""
        if self._ending_told:
            return
        self._ending_told = True
        if self.relay is not None:
            self.relay.leg_ending(self.side, cause, code, reason)


@dataclass(slots=True)
class _Direction:
    messages: int = 0
    bytes: int = 0
    #: When this side's peer was last heard (a message piece, a ping, a pong):
    #: one clock read per piece serves the idle timeout and the keepalive.
    heard_at: float = 0.0


@dataclass(slots=True)
class _Ending:
    cause: Cause
    code: int | None
    reason: str


@dataclass(slots=True)
class Stats:
    """What the closing log line reports."""

    upstream: _Direction = field(default_factory=_Direction)  # client -> backend
    downstream: _Direction = field(default_factory=_Direction)  # backend -> client


class Relay:
    """Joins a client leg and a backend leg for one connection's lifetime."""

    def __init__(
        self,
        client: Leg,
        backend: Leg,
        clock: Clock,
        on_finished: Callable[[Relay], None] | None = None,
    ) -> None:
        self._client, self._backend = client, backend
        self._clock = clock
        self._on_finished = on_finished
        self._started = False
        self._pending: list[tuple[Side, Callable[..., None], tuple[Any, ...]]] = []
        self._first_close: tuple[Side, _Ending] | None = None
        self._closed: dict[Side, tuple[int | None, str]] = {}
        self._sent: dict[Side, int | None] = {}
        self.stats = Stats()
        self.opened_at = clock.seconds()
        self.stats.upstream.heard_at = self.stats.downstream.heard_at = self.opened_at
        self._idle_timeout = 0.0
        self._idle_call: Any = None

    # By identity, not a dict keyed by Side (an Enum's hash is a Python call).
    def leg(self, side: Side) -> Leg:
        return self._client if side is _CLIENT else self._backend

    def _other(self, side: Side) -> Leg:
        return self._backend if side is _CLIENT else self._client

    def _direction(self, side: Side) -> _Direction:
        return self.stats.upstream if side is _CLIENT else self.stats.downstream

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Both legs are open: deliver what waited, wire backpressure, read."""
        if self._started:
            return
        self._started = True
        client, backend = self._client, self._backend
        client.register_producer_of(backend)
        backend.register_producer_of(client)
        pending, self._pending = self._pending, []
        for side, method, args in pending:
            method(side, *args)
        client.resume_reading()
        backend.resume_reading()

    def _deliver(self, side: Side, method: Callable[..., None], *args: Any) -> bool:
        """Queue an event from a leg that opened before the other one did."""
        if self._started:
            return True
        self._pending.append((side, method, args))
        return False

    # -- messages, from either leg ------------------------------------------

    def _from_open_side(self, side: Side) -> bool:
        """Messages cross until their own leg ends; the other leg may still
        take them (its close may be held back to let them through)."""
        return self._first_close is None or self._first_close[0] is not side

    def message_begin(self, side: Side, binary: bool) -> None:
        if not self._deliver(side, self.message_begin, binary):
            return
        if self._from_open_side(side):
            self._direction(side).messages += 1
            self._other(side).send_begin(binary)

    def message(self, side: Side, binary: bool, data: bytes) -> None:
        """A whole message: ``message_begin`` and its one, final piece at once
        (the compiled reader's common case, in fewer calls)."""
        if not self._started:
            self._pending.append((side, self.message_begin, (binary,)))
            self._pending.append((side, self.message_data, (data, True)))
            return
        first_close = self._first_close
        if first_close is None or first_close[0] is not side:
            if side is _CLIENT:
                direction, other = self.stats.upstream, self._backend
            else:
                direction, other = self.stats.downstream, self._client
            direction.messages += 1
            direction.bytes += len(data)
            direction.heard_at = self._clock.seconds()
            other.send_message(binary, data)

    def message_data(self, side: Side, data: bytes, final: bool) -> None:
        if not self._deliver(side, self.message_data, data, final):
            return
        if self._from_open_side(side):
            direction = self._direction(side)
            direction.bytes += len(data)
            direction.heard_at = self._clock.seconds()
            self._other(side).send_data(data, final)

    # -- idle connections ----------------------------------------------------------

    def touch(self, side: Side) -> None:
        """A ping or pong from ``side``'s peer: the connection is in use."""
        self._direction(side).heard_at = self._clock.seconds()

    def heard_at(self, side: Side) -> float:
        """When ``side``'s peer was last heard (for its leg's keepalive)."""
        return self._direction(side).heard_at

    def idle_timeout(self, seconds: float) -> None:
        """Close both legs once nothing crossed for ``seconds`` (0: never)."""
        self._idle_timeout = seconds
        if seconds > 0 and self._idle_call is None:
            self._idle_call = self._clock.callLater(seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_call = None
        if self._first_close is not None or self.finished:
            return
        stats = self.stats
        idle_for = self._clock.seconds() - max(stats.upstream.heard_at, stats.downstream.heard_at)
        if idle_for < self._idle_timeout:
            self._idle_call = self._clock.callLater(self._idle_timeout - idle_for, self._check_idle)
            return
        self._close_both(Cause.IDLE, f"idle for {self._idle_timeout:g} s")

    def go_away(self) -> bool:
        """Close both legs with 1001 "going away" (the process is draining).
        False if the connection is not running (yet, or any more)."""
        if not self._started or self._first_close is not None or self.finished:
            return False
        self._close_both(Cause.DRAINING, "going away")
        return True

    def _close_both(self, cause: Cause, reason: str) -> None:
        self._first_close = (Side.CLIENT, _Ending(cause, None, reason))
        for leg in (self._client, self._backend):
            leg.unregister_producer()
            leg.resume_reading()
            leg.send_close(Close(_closecodes.GOING_AWAY, reason))

    # -- endings -------------------------------------------------------------

    def leg_ending(self, side: Side, cause: Cause, code: int | None, reason: str) -> None:
        """A leg started to end; the first ending is relayed to the other leg."""
        if not self._deliver(side, self.leg_ending, cause, code, reason):
            return
        if self._first_close is not None:
            return
        self._first_close = (side, _Ending(cause, code, reason))
        other = self._other(side)
        # Its reading may be paused by backpressure from the leg that ended:
        # it must read again to see its peer's answer to our close.
        self.leg(side).unregister_producer()
        other.unregister_producer()
        other.resume_reading()
        other.send_close(_closecodes.for_other_leg(side, cause, code, reason))

    def may_hold_failure(self, side: Side) -> bool:
        """Whether a leg that found a protocol error may wait for the other
        leg to close first: only when that leg is running and still open."""
        return self._started and self._first_close is None

    def leg_closed(
        self, side: Side, code: int | None, reason: str, sent: int | None = None
    ) -> None:
        """A leg's transport is gone. Once both are, the connection is over.

        ``code`` and ``reason`` are what the leg received (1006: no close
        frame), ``sent`` the code wsgate sent on it (None: no close frame).
        """
        if side in self._closed:
            return
        self._sent[side] = sent
        if self._first_close is None:
            # Gone without a close we saw start (TCP reset, handshake timeout).
            self._started = True
            self._pending.clear()
            self.leg_ending(side, Cause.DROPPED, code, reason)
        self._closed[side] = (code, reason)
        first = self._first_close
        if first is not None and first[0] is not side and first[0] not in self._closed:
            self.leg(first[0]).finish_ending()
        if len(self._closed) == 2:
            if self._idle_call is not None and self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None
            if self._on_finished is not None:
                self._on_finished(self)

    @property
    def finished(self) -> bool:
        return len(self._closed) == 2

    def closed_with(self, side: Side) -> tuple[int | None, str] | None:
        """The code and reason the leg received, once it is closed."""
        return self._closed.get(side)

    def sent_on(self, side: Side) -> int | None:
        """The close code wsgate sent on the leg (None: none, or not closed yet)."""
        return self._sent.get(side)

    @property
    def first_close(self) -> tuple[Side, Cause, int | None, str] | None:
        if self._first_close is None:
            return None
        side, ending = self._first_close
        return side, ending.cause, ending.code, ending.reason

    def duration(self) -> float:
        return self._clock.seconds() - self.opened_at
