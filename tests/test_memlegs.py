"""The legs in memory: a real FrontendProtocol and real backend legs, their
peers Autobahn protocols or raw bytes, joined by iosim transports (see
memlegs.py) on a MemoryReactorClock. Milliseconds each: no sockets, no
sleeps, no global reactor.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from memlegs import (
    CLIENT_ADDRESS,
    Network,
    Pipe,
    RawPeer,
    autobahn_timers,
    frontend_factory,
    ws_client,
    ws_server,
)
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport

from wsgate._config import RouteSettings
from wsgate._configfile import load_file
from wsgate._relay import ReadingOf
from wsgate._tcpleg import StreamLeg


@pytest.fixture
def reactor() -> Iterator[MemoryReactorClock]:
    clock = MemoryReactorClock()
    with autobahn_timers(clock):
        yield clock


class _Gate:
    """One client through a frontend to one backend, all in memory."""

    def __init__(self, reactor: MemoryReactorClock, *args: str, echo: bool = False) -> None:
        self.reactor = reactor
        self.backend = ws_server(reactor, echo=echo)
        self.net = Network(reactor, serve=lambda host, port: self.backend)
        self.factory = frontend_factory(reactor, *args)
        self.client = ws_client(reactor)
        self.frontend, self.front_pipe, self.client_pipe = self.net.connect_client(
            self.factory, self.client
        )
        self.net.flush()

    @property
    def leg_pipe(self) -> Pipe:
        """The backend leg's end of its connection."""
        return self.net.backends[0][3]

    @property
    def backend_pipe(self) -> Pipe:
        """The backend peer's end."""
        return self.net.backends[0][2]


def _gate(reactor: MemoryReactorClock, echo: bool = False, *args: str) -> _Gate:
    gate = _Gate(reactor, "--backend", "ws://127.0.0.1:9000", *args, echo=echo)
    assert gate.client.events.opened and gate.backend.events.opened
    return gate


# -- a message in pieces ----------------------------------------------------------


@pytest.mark.parametrize("read_size", [1, 7, 1000])
def test_fragments_split_at_odd_boundaries_cross_whole(
    reactor: MemoryReactorClock, read_size: int
) -> None:
    gate = _gate(reactor)
    gate.front_pipe.max_read = gate.backend_pipe.max_read = read_size
    gate.leg_pipe.max_read = gate.client_pipe.max_read = read_size
    text = "héllo wörld " * 20
    gate.client.sendMessage(text.encode("utf-8"), False, fragmentSize=13)
    blob = bytes(range(256)) * 12
    gate.client.sendMessage(blob, True, fragmentSize=997)
    gate.net.flush()
    assert gate.backend.events.messages == [(text.encode("utf-8"), False), (blob, True)]
    gate.backend.sendMessage(blob[:2001], True, fragmentSize=1000)
    gate.backend.sendMessage(b"", False)
    gate.net.flush()
    assert gate.client.events.messages == [(blob[:2001], True), (b"", False)]


def test_a_message_streams_before_its_end_arrives(reactor: MemoryReactorClock) -> None:
    # The client's first fragment reaches the backend's socket before the
    # client has sent the rest: nothing holds a whole message.
    gate = _gate(reactor)
    raw = RawPeer()
    gate.backend_pipe.protocol = raw  # read the backend's wire as bytes
    gate.client.beginMessage(isBinary=True)
    gate.client.sendMessageFrame(b"a" * 1000)
    gate.net.flush()
    first = bytes(raw.received)
    # One binary frame, not final, masked, 1000 bytes: the whole first piece.
    assert first[:4] == b"\x02\xfe" + struct.pack("!H", 1000) and len(first) == 1008
    gate.client.sendMessageFrame(b"b" * 10)
    gate.client.endMessage()
    gate.net.flush()
    rest = bytes(raw.received[1008:])
    # A continuation of 10 bytes, then an empty final one (masks: 4 bytes each).
    assert rest[:2] == b"\x00\x8a" and rest[16:18] == b"\x80\x80" and len(rest) == 22


# -- what an open connection holds --------------------------------------------------

#: Options a connection sets itself once routed (its route's).
_PER_ROUTE = {"maxMessagePayloadSize", "closeHandshakeTimeout", "perMessageCompressionAccept"}


def test_open_legs_read_their_options_from_their_class_not_a_copy_each(
    reactor: MemoryReactorClock,
) -> None:
    """Autobahn copies every option its protocol class lacks onto each
    connection; the legs' classes carry their factory's, so an idle
    connection holds none of them but its route's own."""
    gate = _gate(
        reactor,
        False,
        *("--max-message-size", "5000", "--handshake-timeout", "7", "--backend-deflate", "on"),
    )
    front, leg = gate.frontend, gate.frontend._backend
    for protocol in (front, leg):
        copied = set(vars(protocol)) & set(protocol.CONFIG_ATTRS)
        assert copied <= _PER_ROUTE, copied
        for name in set(protocol.CONFIG_ATTRS) - _PER_ROUTE:
            # The factory's very value (a function not bound to the leg).
            assert getattr(protocol, name) is getattr(protocol.factory, name), name
        assert protocol.failByDrop is False
        assert protocol.maxMessagePayloadSize == 5000
    assert leg.openHandshakeTimeout == 7
    assert front.openHandshakeTimeout == gate.factory.openHandshakeTimeout
    # The limit still holds on both legs.
    gate.client.sendMessage(b"x" * 5001, True)
    gate.net.flush()
    assert gate.client.events.closed is not None and gate.client.events.closed[1] == 1009


def test_open_legs_drop_the_handshake_and_keep_a_compact_dict(
    reactor: MemoryReactorClock,
) -> None:
    gate = _gate(reactor)
    front, leg = gate.frontend, gate.frontend._backend
    for protocol in (front, leg):
        attributes = vars(protocol)
        assert not {
            "http_request_data",
            "http_headers",
            "_wskey",
            "websocket_key",
            "_transport_details",
        } & set(attributes)
        assert protocol.transport_details is None
        # No table kept from before the handshake's attributes went.
        assert sys.getsizeof(attributes) <= sys.getsizeof(dict(attributes))
    assert "_head" not in vars(front)
    # And the connection works on.
    gate.client.sendMessage(b"still here", True)
    gate.net.flush()
    assert gate.backend.events.messages == [(b"still here", True)]


def test_open_legs_still_send_chopped_and_synced_writes(reactor: MemoryReactorClock) -> None:
    """An open leg holds no send queue until Autobahn's queued writes need one."""
    gate = _gate(reactor)
    gate.frontend.sendFrame(opcode=2, payload=b"chopped up", chopsize=3)
    gate.frontend._backend.sendMessage(b"synced", True, sync=True)
    gate.frontend.sendMessage(b"after", True)
    for _ in range(10):
        gate.net.advance(0.01)
    assert gate.client.events.messages == [(b"chopped up", True), (b"after", True)]
    assert gate.backend.events.messages == [(b"synced", True)]


# -- backpressure -------------------------------------------------------------------


def test_producers_are_registered_both_ways(reactor: MemoryReactorClock) -> None:
    gate = _gate(reactor)
    front, leg = gate.front_pipe, gate.leg_pipe
    assert isinstance(front.producer, ReadingOf) and front.streamingProducer
    assert isinstance(leg.producer, ReadingOf) and leg.streamingProducer
    assert front.producer._leg is gate.frontend._backend
    assert leg.producer._leg is gate.frontend


def test_a_backend_that_reads_nothing_pauses_the_client(reactor: MemoryReactorClock) -> None:
    gate = _gate(reactor)
    gate.backend_pipe.pauseProducing()  # the backend stops reading
    gate.client_pipe.max_read = 16_384
    chunk = b"x" * 16_384
    for _ in range(40):  # 640 KiB
        gate.client.sendMessage(chunk, True)
    gate.net.flush()
    assert gate.leg_pipe.producer_paused  # the leg's buffer filled up...
    assert not gate.front_pipe.reading  # ...so the client's socket is not read
    held = gate.client_pipe.buffered()
    assert held > 0 and gate.leg_pipe.buffered() < Pipe.high_water + 2 * len(chunk)
    gate.backend_pipe.resumeProducing()
    gate.net.flush()
    assert gate.front_pipe.reading and gate.client_pipe.buffered() == 0
    assert gate.backend.events.messages == [(chunk, True)] * 40


def test_a_client_that_reads_nothing_pauses_the_backend(reactor: MemoryReactorClock) -> None:
    gate = _gate(reactor)
    gate.client_pipe.pauseProducing()  # the client stops reading
    gate.backend_pipe.max_read = 16_384
    chunk = b"y" * 16_384
    for _ in range(40):
        gate.backend.sendMessage(chunk, True)
    gate.net.flush()
    assert gate.front_pipe.producer_paused
    assert not gate.leg_pipe.reading
    assert gate.backend_pipe.buffered() > 0
    gate.client_pipe.resumeProducing()
    gate.net.flush()
    assert gate.leg_pipe.reading and gate.backend_pipe.buffered() == 0
    assert gate.client.events.messages == [(chunk, True)] * 40


# -- close paths ----------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "backend"])
@pytest.mark.parametrize(("code", "reason"), [(1000, "bye"), (4001, "custom"), (3000, "")])
def test_a_close_crosses_with_its_code(
    reactor: MemoryReactorClock, closer: str, code: int, reason: str
) -> None:
    gate = _gate(reactor)
    getattr(gate, closer).sendClose(code, reason)
    gate.net.flush()
    assert gate.backend.events.closed == (True, code, reason or None)
    assert gate.client.events.closed == (True, code, reason or None)
    assert gate.frontend.relay.finished
    assert gate.front_pipe.disconnected and gate.leg_pipe.disconnected


@pytest.mark.parametrize(
    ("dropped", "other", "close"),
    [
        ("client_pipe", "backend", (True, 1001, "client went away")),
        ("backend_pipe", "client", (True, 1011, "backend went away")),
    ],
)
def test_a_drop_closes_the_other_leg(
    reactor: MemoryReactorClock, dropped: str, other: str, close: tuple[bool, int, str]
) -> None:
    gate = _gate(reactor)
    getattr(gate, dropped).abortConnection()
    gate.net.flush()
    assert getattr(gate, other).events.closed == close
    assert gate.frontend.relay.finished


def test_bad_utf8_from_the_client_is_1007_there_and_1001_to_the_backend(
    reactor: MemoryReactorClock,
) -> None:
    gate = _gate(reactor)
    gate.client.sendMessage(b"ok", False)
    gate.client.sendMessage(b"\xff\xfe", False)  # Autobahn's client sends it as is
    gate.net.flush()
    assert gate.backend.events.messages == [(b"ok", False)]
    assert gate.backend.events.closed is not None
    assert gate.backend.events.closed[1] == 1001
    assert "client failed (1007" in (gate.backend.events.closed[2] or "")
    assert gate.client.events.closed is not None and gate.client.events.closed[1] == 1007
    assert gate.frontend.relay.finished


def test_a_protocol_error_from_the_backend_is_1014_to_the_client(
    reactor: MemoryReactorClock,
) -> None:
    gate = _gate(reactor)
    gate.backend.sendFrame(opcode=3, payload=b"?")  # a reserved opcode
    gate.net.flush()
    assert gate.backend.events.closed == (True, 1002, "data frame using reserved opcode 3")
    # The client's close frame (Autobahn's client itself refuses 1014 on receipt).
    reason = b"backend failed (1002: data frame using reserved opcode 3)"
    close = b"\x88" + bytes([2 + len(reason)]) + struct.pack("!H", 1014) + reason
    assert bytes(gate.client.wire).endswith(close)
    assert gate.frontend.relay.finished


def test_a_backend_that_never_connects_is_504_on_the_clock(reactor: MemoryReactorClock) -> None:
    net = Network(reactor)  # nothing answers
    factory = frontend_factory(
        reactor, "--backend", "ws://127.0.0.1:9000", "--connect-timeout", "3"
    )
    client = RawPeer()
    _, _, client_pipe = net.connect_client(factory, client)
    client_pipe.write(_upgrade())
    net.flush()
    assert len(net.pending()) == 1 and client.received == b""
    net.advance(3)
    assert client.received.startswith(b"HTTP/1.1 504 ")
    assert b"timed out" in client.received


def _upgrade(path: str = "/", protocols: str = "") -> bytes:
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    )
    if protocols:
        head += f"Sec-WebSocket-Protocol: {protocols}\r\n"
    return (head + "\r\n").encode("latin-1")


# -- the stream leg --------------------------------------------------------------------


class _Stream:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.server = RawPeer()
        self.net = Network(reactor, serve=lambda host, port: self.server)
        factory = frontend_factory(reactor, "--backend", "tcp:127.0.0.1:5900")
        self.client = ws_client(reactor, protocols=["binary"])
        self.frontend, self.front_pipe, self.client_pipe = self.net.connect_client(
            factory, self.client
        )
        self.net.flush()
        self.leg = self.frontend._backend
        assert isinstance(self.leg, StreamLeg)
        self.server_pipe, self.leg_pipe = self.net.backends[0][2:]


def test_stream_bytes_both_ways_in_pieces(reactor: MemoryReactorClock) -> None:
    s = _Stream(reactor)
    s.server_pipe.write(b"RFB 003.008\n")  # the server speaks first
    s.net.flush()
    assert s.client.events.messages == [(b"RFB 003.008\n", True)]
    s.client_pipe.max_read = 3
    s.client.sendMessage(b"0123456789" * 100, True, fragmentSize=101)
    s.net.flush()
    assert bytes(s.server.received) == b"0123456789" * 100


def test_stream_backpressure_both_ways(reactor: MemoryReactorClock) -> None:
    s = _Stream(reactor)
    s.server_pipe.max_read = s.client_pipe.max_read = 16_384
    s.client_pipe.pauseProducing()
    for _ in range(20):
        s.server_pipe.write(b"z" * 16_384)
    s.net.flush()
    assert not s.leg_pipe.reading and s.server_pipe.buffered() > 0
    s.client_pipe.resumeProducing()
    s.net.flush()
    assert sum(len(m) for m, _ in s.client.events.messages) == 20 * 16_384
    s.server_pipe.pauseProducing()
    for _ in range(40):
        s.client.sendMessage(b"w" * 16_384, True)
    s.net.flush()
    assert not s.front_pipe.reading and s.client_pipe.buffered() > 0
    s.server_pipe.resumeProducing()
    s.net.flush()
    assert len(s.server.received) == 40 * 16_384


def test_stream_eof_closes_the_client_with_1000(reactor: MemoryReactorClock) -> None:
    s = _Stream(reactor)
    s.server_pipe.write(b"bye")
    s.server_pipe.loseConnection()
    s.net.flush()
    assert s.client.events.messages == [(b"bye", True)]
    assert s.client.events.closed == (True, 1000, None)


def test_stream_reset_closes_the_client_with_1011(reactor: MemoryReactorClock) -> None:
    s = _Stream(reactor)
    s.server_pipe.abortConnection()
    s.net.flush()
    assert s.client.events.closed is not None and s.client.events.closed[1] == 1011


def test_client_close_ends_the_stream(reactor: MemoryReactorClock) -> None:
    s = _Stream(reactor)
    s.client.sendMessage(b"last", True)
    s.client.sendClose(1000)
    s.net.flush()
    assert bytes(s.server.received) == b"last"
    assert s.server.lost is not None and s.server.lost.check(error.ConnectionDone)
    assert s.client.events.closed == (True, 1000, None)


# -- failover ---------------------------------------------------------------------------


def test_a_refused_backend_fails_over_to_the_next(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    config = _two_backends(tmp_path)
    backend = ws_server(reactor, echo=True)
    net = Network(reactor)
    factory = frontend_factory(reactor, config=config)
    client = ws_client(reactor)
    net.connect_client(factory, client)
    net.flush()
    assert [(h, p) for h, p, _ in net.pending()] == [("127.0.0.1", 9001)]
    net.refuse()
    net.flush()
    assert [(h, p) for h, p, _ in net.pending()] == [("127.0.0.1", 9002)]
    net.answer(backend)
    net.flush()
    client.sendMessage(b"hi", False)
    net.flush()
    assert client.events.messages == [(b"hi", False)]


def _two_backends(tmp_path: Path) -> Any:
    path = tmp_path / "wsgate.toml"
    path.write_text(
        '[[listener]]\nendpoint = "tcp:8080"\n'
        '[[route]]\nbackends = ["ws://127.0.0.1:9001", "ws://127.0.0.1:9002"]\n'
    )
    return load_file(str(path))


def test_a_client_gone_while_connecting_tries_no_other_backend(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    config = _two_backends(tmp_path)
    net = Network(reactor)  # the first backend's connect hangs
    factory = frontend_factory(reactor, config=config)
    _, _, client_pipe = net.connect_client(factory, RawPeer())
    client_pipe.write(_upgrade())
    net.flush()
    assert len(net.pending()) == 1
    client_pipe.abortConnection()
    net.flush()
    # No second connect for a client that is gone, and the first backend
    # did nothing wrong.
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9001)]
    assert reactor.connectors[0].stoppedConnecting
    pool = factory.routes.routes[0].pool
    assert pool is not None
    assert [b["state"] for b in pool.status()] == ["up", "up"]


# -- the request head's timer ---------------------------------------------------------


def test_the_request_head_timer_is_one_call_moved_once_routed(reactor: MemoryReactorClock) -> None:
    """wsgate's own timer from the first byte (Autobahn's is off: it rounds to
    whole seconds); routing moves that same call to the backends' budget
    rather than cancelling it and making another."""
    factory = frontend_factory(
        reactor, "--backend", "ws://127.0.0.1:9000", "--request-timeout", "0.5"
    )
    frontend = factory.buildProtocol(CLIENT_ADDRESS)
    frontend.makeConnection(StringTransport(peerAddress=CLIENT_ADDRESS))
    [call] = reactor.getDelayedCalls()
    assert call.getTime() == 0.5 and frontend.openHandshakeTimeoutCall is call
    frontend.dataReceived(
        b"GET / HTTP/1.1\r\nHost: gate\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    settings = RouteSettings()
    budget = settings.connect_timeout + settings.handshake_timeout + 5
    assert frontend.openHandshakeTimeoutCall is call and call.getTime() == budget
    assert reactor.tcpClients  # the backend is being opened
