"""Keepalive per leg: the timer on a Clock, then real peers that stop answering."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from peers import TIMEOUT, backend, client
from rawws import raw_handshake
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.usage import UsageError
from websockets.exceptions import ConnectionClosed

from wsgate._closecodes import Cause, Close, Side
from wsgate._config import RouteSettings
from wsgate._keepalive import Keepalive
from wsgate._relay import Relay
from wsgate._wsleg import RelayedLeg, leg_options
from wsgate.testing import GateFactory, Wsgate, free_port

PEER = str(Path(__file__).with_name("faultpeer.py"))


class Peer:
    """What the keepalive does to its leg: pings it sends, and its verdict."""

    def __init__(self, clock: Clock, interval: float = 20, timeout: float = 20) -> None:
        self.pings: list[float] = []
        self.dead_at: float | None = None
        self.open = True
        self._clock = clock
        #: When the peer was last heard, as the relay would tell.
        self.heard_at = clock.seconds()
        self.keepalive = Keepalive(clock, interval, timeout, self)

    def heard(self) -> None:
        """The peer sent something (a message piece, a ping, a pong)."""
        self.heard_at = self._clock.seconds()

    def keepalive_heard_at(self) -> float:
        return self.heard_at

    def keepalive_ping(self) -> bool:
        if not self.open:
            return False
        self.pings.append(self._clock.seconds())
        return True

    def keepalive_dead(self) -> None:
        assert self.dead_at is None
        self.dead_at = self._clock.seconds()


def test_a_quiet_peer_is_pinged_after_the_interval() -> None:
    clock = Clock()
    peer = Peer(clock)
    clock.advance(19.9)
    assert peer.pings == []
    clock.advance(0.1)
    assert peer.pings == [20.0]


def test_traffic_postpones_the_ping() -> None:
    clock = Clock()
    peer = Peer(clock)
    clock.advance(15)
    peer.heard()
    clock.advance(19)
    assert peer.pings == []
    clock.advance(1)
    assert peer.pings == [35.0]


def test_what_the_relay_heard_postpones_the_ping_too() -> None:
    """The leg's keepalive reads the relay's time of the peer's last message
    piece at each tick: nothing is paid per read."""
    clock = Clock()
    peer = Peer(clock)
    clock.advance(15)
    peer.heard_at = 15.0
    clock.advance(19)
    assert peer.pings == []
    clock.advance(1)
    assert peer.pings == [35.0]
    clock.advance(3)
    peer.heard_at = 38.0  # the pong, as the relay saw it
    clock.advance(20)
    assert peer.pings == [35.0, 58.0]


def test_an_answer_keeps_the_peer_and_pings_go_on() -> None:
    clock = Clock()
    peer = Peer(clock)
    clock.advance(20)
    clock.advance(3)
    peer.heard()  # the pong
    clock.advance(20)
    assert peer.dead_at is None
    assert peer.pings == [20.0, 43.0]


def test_no_answer_within_the_timeout_is_a_dead_peer() -> None:
    clock = Clock()
    peer = Peer(clock, interval=2, timeout=3)
    clock.pump([1] * 4)
    assert peer.pings == [2.0] and peer.dead_at is None
    clock.advance(1)
    assert peer.dead_at == 5.0
    assert not peer.keepalive.running
    clock.pump([1] * 100)
    assert peer.pings == [2.0]


def test_a_paused_leg_does_not_blame_its_peer() -> None:
    """While the leg does not read (backpressure), the pong waits unread."""
    clock = Clock()
    peer = Peer(clock, interval=2, timeout=3)
    clock.advance(2)
    peer.keepalive.pause()
    clock.pump([1] * 30)
    assert peer.dead_at is None
    peer.keepalive.resume()
    clock.pump([1] * 4)
    assert peer.dead_at is None
    clock.pump([1] * 3)
    assert peer.dead_at is not None


def test_timeout_zero_pings_but_never_gives_up() -> None:
    clock = Clock()
    peer = Peer(clock, interval=5, timeout=0)
    clock.pump([1] * 21)
    assert peer.pings == [5.0, 10.0, 15.0, 20.0]
    assert peer.dead_at is None


def test_a_closing_leg_stops_the_pings() -> None:
    clock = Clock()
    peer = Peer(clock, interval=1, timeout=1)
    peer.open = False
    clock.pump([1] * 10)
    assert peer.pings == [] and peer.dead_at is None
    assert not peer.keepalive.running


def test_stop_cancels_the_timer() -> None:
    clock = Clock()
    peer = Peer(clock)
    peer.keepalive.stop()
    assert clock.getDelayedCalls() == []


# -- one timer for many legs -----------------------------------------------------


def test_legs_due_in_the_same_second_share_one_timer() -> None:
    """Idle connections are what a gateway holds most of: a thousand legs
    opened within a second cost one DelayedCall, not a thousand."""
    clock = Clock()
    clock.advance(0.5)
    peers = []
    for _ in range(1000):
        peers.append(Peer(clock))
        clock.advance(0.0004)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(20.4 - clock.seconds())
    assert all(p.pings == [] for p in peers)  # none pinged before its 20 quiet s
    clock.advance(0.6)
    assert all(p.pings == [21.0] for p in peers)  # all in the next whole second
    assert len(clock.getDelayedCalls()) == 1  # their timeouts share one again


def test_coarse_delays_are_never_early_and_at_most_a_second_late() -> None:
    clock = Clock()
    peers = []
    for opened in (0.0, 0.25, 0.5, 0.999, 1.0, 1.001):
        clock.advance(opened - clock.seconds())
        peers.append((opened, Peer(clock, interval=2, timeout=0)))
    clock.pump([0.125] * 40)
    for opened, peer in peers:
        late = peer.pings[0] - (opened + 2)
        assert 0 <= late <= 1, (opened, peer.pings)


def test_short_delays_keep_their_exact_time() -> None:
    clock = Clock()
    peer = Peer(clock, interval=0.5, timeout=0.5)
    clock.advance(0.49)
    assert peer.pings == []
    clock.advance(0.01)
    assert peer.pings == [0.5]
    clock.advance(0.5)
    assert peer.dead_at == 1.0


def test_a_stopped_leg_is_skipped_and_released() -> None:
    """Stopping marks the leg's entry (no search through its slot); the leg
    itself is let go at once, and the others in its slot still tick."""
    clock = Clock()
    kept, stopped = Peer(clock), Peer(clock)
    ref = weakref.ref(stopped)
    stopped.keepalive.stop()
    del stopped
    gc.collect()
    assert ref() is None
    clock.advance(20)
    assert kept.pings == [20.0]


def test_the_timer_goes_when_the_last_leg_stops() -> None:
    clock = Clock()
    peers = [Peer(clock, interval=2 + i) for i in range(5)]
    for p in peers[:-1]:
        p.keepalive.stop()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)  # the first slot's entry was stopped: nothing to do yet
    assert peers[-1].pings == []
    peers[-1].keepalive.stop()
    assert clock.getDelayedCalls() == []


def test_an_earlier_leg_moves_the_timer_sooner() -> None:
    clock = Clock()
    slow = Peer(clock, interval=30)
    fast = Peer(clock, interval=3)
    clock.advance(3)
    assert fast.pings == [3.0] and slow.pings == []
    clock.advance(27)
    assert slow.pings == [30.0]


def test_a_failing_leg_does_not_stop_the_others() -> None:
    clock = Clock()

    class Broken(Peer):
        def keepalive_ping(self) -> bool:
            raise RuntimeError("boom")

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        broken = Broken(clock)
        peer = Peer(clock)
        clock.advance(20)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert peer.pings == [20.0]
    assert not broken.keepalive.running
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0].check(RuntimeError)
    clock.advance(20)
    assert peer.dead_at == 40.0  # its pong never came: the timer still ran


def test_separate_clocks_keep_separate_timers() -> None:
    one, two = Clock(), Clock()
    a, b = Peer(one), Peer(two)
    one.advance(20)
    assert a.pings == [20.0] and b.pings == []
    two.advance(20)
    assert b.pings == [20.0]


# -- end to end ----------------------------------------------------------------

INTERVAL, PING_TIMEOUT = 0.5, 0.5
#: Scheduling slack on a shared machine, on top of interval + timeout.
SLACK = 1.5


def keepalive_gate(wsgate: GateFactory, port: int) -> Wsgate:
    return wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--ping-interval",
        str(INTERVAL),
        "--ping-timeout",
        str(PING_TIMEOUT),
    )


def test_a_frozen_backend_is_detected_and_the_client_gets_1011(wsgate: GateFactory) -> None:
    port = free_port()
    gate = keepalive_gate(wsgate, port)

    async def main() -> tuple[int, float]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            PEER,
            "backend",
            str(port),
            "sink",
            "off",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert (await proc.stdout.readline()).strip() == b"ready"
            async with client(gate.url, ping_interval=None) as ws:
                # The first fragment of a message that never ends: the sink
                # backend waits in the middle of it (a whole message would let
                # it finish and close 1000 before the SIGSTOP lands).
                started = asyncio.Event()

                async def fragments() -> AsyncIterator[bytes]:
                    yield b"x"
                    started.set()
                    await asyncio.Event().wait()
                    yield b""  # pragma: no cover - never reached

                sending = asyncio.create_task(ws.send(fragments()))
                await started.wait()
                proc.send_signal(signal.SIGSTOP)
                frozen = time.monotonic()
                try:
                    async with asyncio.timeout(TIMEOUT):
                        with contextlib.suppress(ConnectionClosed):
                            await ws.recv()
                finally:
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await sending
                took = time.monotonic() - frozen
                assert ws.close_code is not None
                return ws.close_code, took
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()

    code, took = asyncio.run(main())
    assert code == 1011
    assert took < INTERVAL + PING_TIMEOUT + SLACK, took
    gate.wait_for_log("no pong within 0.5 s")


def test_a_client_that_stops_answering_pings_gets_1001_to_the_backend(
    wsgate: GateFactory,
) -> None:
    port = free_port()
    gate = keepalive_gate(wsgate, port)

    async def main() -> tuple[int | None, str, float]:
        async with backend(port) as state:
            _reader, writer = await raw_handshake(gate.port)
            seen = await state.wait_seen()
            quiet = time.monotonic()
            try:
                async with asyncio.timeout(TIMEOUT):
                    await seen.closed.wait()
                return seen.close_code, seen.close_reason, time.monotonic() - quiet
            finally:
                writer.close()

    code, reason, took = asyncio.run(main())
    assert code == 1001, reason
    assert took < INTERVAL + PING_TIMEOUT + SLACK, took


def test_peers_that_answer_stay_connected(wsgate: GateFactory) -> None:
    """Both peers answer pings (websockets does): after several intervals of
    silence, the connection still relays."""
    port = free_port()
    gate = keepalive_gate(wsgate, port)

    async def main() -> bytes:
        async with backend(port), client(gate.url, ping_interval=None) as ws:
            await asyncio.sleep(4 * (INTERVAL + PING_TIMEOUT))  # the thing under test is time
            await ws.send(b"still here")
            async with asyncio.timeout(TIMEOUT):
                answer = await ws.recv()
            assert isinstance(answer, bytes)
            return answer

    assert asyncio.run(main()) == b"still here"


# -- a real leg, in memory ------------------------------------------------------


def _open_leg() -> tuple[Any, StringTransport, FakeBackend, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(**leg_options(RouteSettings()))
    factory.protocol = _ServerLeg
    leg = factory.buildProtocol(None)
    transport = StringTransport()
    leg.makeConnection(transport)
    leg.dataReceived(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    backend = FakeBackend()
    leg.relay = Relay(leg, backend, reactor)
    leg.relay.start()
    leg.keep_alive(reactor, 2, 3)
    return leg, transport, backend, reactor


class _ServerLeg(RelayedLeg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT


class FakeBackend:
    side = Side.BACKEND

    def __init__(self) -> None:
        self.closes: list[Close] = []

    def send_close(self, close: Close) -> None:
        self.closes.append(close)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


PING = b"\x89\x06wsgate"
PONG = b"\x8a\x86\x00\x00\x00\x00wsgate"  # masked with zeros


def test_a_leg_pings_its_quiet_peer_and_a_pong_keeps_it() -> None:
    leg, transport, backend, reactor = _open_leg()
    reactor.advance(1.9)
    assert transport.value() == b""
    reactor.advance(0.1)
    assert transport.value() == PING
    reactor.advance(1)
    leg.dataReceived(PONG)
    reactor.advance(2)  # the answered ping's deadline passes
    assert not transport.disconnecting and backend.closes == []


def test_a_leg_whose_peer_does_not_answer_is_dropped_and_the_backend_gets_1001() -> None:
    leg, transport, backend, reactor = _open_leg()
    reactor.advance(2)
    assert transport.value() == PING
    reactor.advance(3)
    assert transport.disconnecting  # aborted: StringTransport.abortConnection
    assert backend.closes == [Close(1001, "client went away")]
    assert leg.relay.first_close == (Side.CLIENT, Cause.DROPPED, None, "no pong within 3 s")


def test_bad_ping_settings_name_the_option() -> None:
    from wsgate.tap import Options

    for option in ("--ping-interval", "--ping-timeout", "--drain-timeout"):
        options = Options()
        with pytest.raises(UsageError) as e:
            options.parseOptions(["--backend", "ws://127.0.0.1:9", option, "-1"])
        assert f"{option}: '-1' must be 0 (off) or a positive number of seconds" in str(e.value)
