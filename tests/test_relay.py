"""The relay's decisions, with in-memory legs and twisted.internet.testing's Clock."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import Clock, MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from wsgate._closecodes import Cause, Close, Side
from wsgate._config import RouteSettings
from wsgate._relay import Leg, Relay
from wsgate._tcpleg import StreamLeg
from wsgate._wsleg import RelayedLeg, leg_options


@dataclass
class FakeLeg:
    side: Side
    sent: list[tuple[str, object]] = field(default_factory=list)
    reading: bool = False
    producer_of: Leg | None = None
    finished_ending: int = 0

    def send_begin(self, binary: bool) -> None:
        self.sent.append(("begin", binary))

    def send_data(self, data: bytes, final: bool) -> None:
        self.sent.append(("data", (data, final)))

    def send_message(self, binary: bool, data: bytes) -> None:
        self.sent.append(("message", (binary, data)))

    def send_close(self, close: Close) -> None:
        self.sent.append(("close", close))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def register_producer_of(self, other: Leg) -> None:
        self.producer_of = other

    def unregister_producer(self) -> None:
        self.producer_of = None

    def finish_ending(self) -> None:
        self.finished_ending += 1

    def fail(self, code: int, reason: str) -> None:
        self.sent.append(("fail", (code, reason)))


def _pair() -> tuple[FakeLeg, FakeLeg, Relay, Clock, list[Relay]]:
    clock = Clock()
    finished: list[Relay] = []
    client, backend = FakeLeg(Side.CLIENT), FakeLeg(Side.BACKEND)
    relay = Relay(client, backend, clock, finished.append)
    return client, backend, relay, clock, finished


def test_start_wires_backpressure_both_ways_and_reads() -> None:
    client, backend, relay, _, _ = _pair()
    relay.start()
    assert client.producer_of is backend and backend.producer_of is client
    assert client.reading and backend.reading


def test_messages_cross_in_order_both_ways() -> None:
    client, backend, relay, _, _ = _pair()
    relay.start()
    relay.message_begin(Side.CLIENT, False)
    relay.message_data(Side.CLIENT, b"he", False)
    relay.message_begin(Side.BACKEND, True)
    relay.message_data(Side.CLIENT, b"llo", True)
    relay.message_data(Side.BACKEND, b"\x00", True)
    assert backend.sent == [("begin", False), ("data", (b"he", False)), ("data", (b"llo", True))]
    assert client.sent == [("begin", True), ("data", (b"\x00", True))]
    assert (relay.stats.upstream.messages, relay.stats.upstream.bytes) == (1, 5)
    assert (relay.stats.downstream.messages, relay.stats.downstream.bytes) == (1, 1)


def test_a_whole_message_crosses_as_one_and_counts_as_begin_and_data_do() -> None:
    client, backend, relay, clock, _ = _pair()
    relay.start()
    clock.advance(3)
    relay.message(Side.CLIENT, False, b"hello")
    relay.message(Side.BACKEND, True, b"\x00\x01")
    assert backend.sent == [("message", (False, b"hello"))]
    assert client.sent == [("message", (True, b"\x00\x01"))]
    assert (relay.stats.upstream.messages, relay.stats.upstream.bytes) == (1, 5)
    assert (relay.stats.downstream.messages, relay.stats.downstream.bytes) == (1, 2)
    assert relay.heard_at(Side.CLIENT) == relay.heard_at(Side.BACKEND) == 3


def test_a_whole_message_from_the_side_that_ended_goes_nowhere() -> None:
    client, backend, relay, _, _ = _pair()
    relay.start()
    relay.leg_ending(Side.CLIENT, Cause.FAILED, 1002, "bad frame")
    relay.message(Side.CLIENT, False, b"late")
    relay.message(Side.BACKEND, False, b"echo")
    assert backend.sent == [("close", Close(1001, "client failed (1002: bad frame)"))]
    assert client.sent == [("message", (False, b"echo"))]


def test_a_whole_message_before_start_waits_as_begin_and_data() -> None:
    client, _backend, relay, _, _ = _pair()
    relay.message(Side.BACKEND, False, b"welcome")
    assert client.sent == []
    relay.start()
    assert client.sent == [("begin", False), ("data", (b"welcome", True))]


def test_events_before_start_wait_in_order() -> None:
    """A backend may speak (and even close) in the same packet as its 101."""
    client, _backend, relay, _, _ = _pair()
    relay.message_begin(Side.BACKEND, False)
    relay.message_data(Side.BACKEND, b"welcome", True)
    relay.leg_ending(Side.BACKEND, Cause.PEER_CLOSED, 4000, "bye")
    assert client.sent == []
    relay.start()
    assert client.sent == [
        ("begin", False),
        ("data", (b"welcome", True)),
        ("close", Close(4000, "bye")),
    ]


def test_first_close_wins_and_resumes_the_other_leg() -> None:
    client, backend, relay, _, _ = _pair()
    relay.start()
    backend.pause_reading()  # held back by a full client buffer
    relay.leg_ending(Side.CLIENT, Cause.PEER_CLOSED, 1000, "done")
    relay.leg_ending(Side.BACKEND, Cause.PEER_CLOSED, 1001, "late")
    assert backend.sent == [("close", Close(1000, "done"))]
    assert client.sent == []
    assert backend.reading
    assert client.producer_of is None and backend.producer_of is None


def test_after_an_ending_only_the_other_side_still_talks() -> None:
    """The leg that ended first says nothing more; the other leg's peer may
    still be answering (an echo in flight), and that reaches the ended leg."""
    client, backend, relay, _, _ = _pair()
    relay.start()
    assert relay.may_hold_failure(Side.CLIENT)
    relay.leg_ending(Side.CLIENT, Cause.FAILED, 1002, "bad frame")
    assert not relay.may_hold_failure(Side.BACKEND)
    relay.message_begin(Side.CLIENT, False)
    relay.message_data(Side.CLIENT, b"dropped", True)
    relay.message_begin(Side.BACKEND, False)
    relay.message_data(Side.BACKEND, b"echo", True)
    assert backend.sent == [("close", Close(1001, "client failed (1002: bad frame)"))]
    assert client.sent == [("begin", False), ("data", (b"echo", True))]


def test_held_ending_finishes_when_the_other_leg_has_closed() -> None:
    client, backend, relay, _, _ = _pair()
    relay.start()
    relay.leg_ending(Side.BACKEND, Cause.FAILED, 1007, "bad")
    assert client.sent == [("close", Close(1014, "backend failed (1007: bad)"))]
    assert backend.finished_ending == 0
    relay.leg_closed(Side.CLIENT, 1014, "backend failed (1007: bad)")
    assert backend.finished_ending == 1
    relay.leg_closed(Side.BACKEND, 1007, "bad")
    assert (client.finished_ending, backend.finished_ending) == (0, 1)


def test_drop_without_close_maps_and_finishes_once() -> None:
    client, _backend, relay, clock, finished = _pair()
    relay.start()
    clock.advance(2.5)
    relay.leg_closed(Side.BACKEND, 1006, "connection lost")
    assert client.sent == [("close", Close(1011, "backend went away"))]
    assert relay.first_close == (Side.BACKEND, Cause.DROPPED, 1006, "connection lost")
    assert finished == []
    relay.leg_closed(Side.CLIENT, 1011, "backend went away")
    relay.leg_closed(Side.CLIENT, 1011, "again")
    assert finished == [relay]
    assert relay.duration() == 2.5
    assert relay.closed_with(Side.CLIENT) == (1011, "backend went away")


def test_idle_timeout_counts_from_the_last_message_or_ping() -> None:
    client, backend, relay, clock, _ = _pair()
    relay.start()
    relay.idle_timeout(10)
    clock.advance(5)
    relay.message_begin(Side.CLIENT, False)
    relay.message_data(Side.CLIENT, b"hi", True)
    clock.advance(9)  # 9 s since the message
    relay.touch(Side.BACKEND)  # a ping
    clock.advance(9.5)
    assert not [s for s in client.sent + backend.sent if s[0] == "close"]
    clock.advance(0.5)
    idle = Close(1001, "idle for 10 s")
    assert client.sent[-1] == ("close", idle) and backend.sent[-1] == ("close", idle)
    assert client.reading and backend.reading  # to read the answers to the closes
    assert relay.first_close == (Side.CLIENT, Cause.IDLE, None, "idle for 10 s")
    # Later endings are not relayed again.
    relay.leg_ending(Side.BACKEND, Cause.PEER_CLOSED, 1001, "idle for 10 s")
    assert [s for s in client.sent if s[0] == "close"] == [("close", idle)]


def test_each_sides_peer_is_heard_apart() -> None:
    """What a leg's keepalive reads: its own peer's last message piece,
    ping or pong, not the other side's."""
    _client, _backend, relay, clock, _ = _pair()
    relay.start()
    assert relay.heard_at(Side.CLIENT) == relay.heard_at(Side.BACKEND) == 0
    clock.advance(3)
    relay.message_begin(Side.CLIENT, True)
    relay.message_data(Side.CLIENT, b"a", False)
    clock.advance(2)
    relay.message_data(Side.CLIENT, b"b", True)
    assert (relay.heard_at(Side.CLIENT), relay.heard_at(Side.BACKEND)) == (5, 0)
    clock.advance(1)
    relay.touch(Side.BACKEND)  # a pong
    assert (relay.heard_at(Side.CLIENT), relay.heard_at(Side.BACKEND)) == (5, 6)


def test_no_idle_timeout_by_default_and_none_after_the_end() -> None:
    client, backend, relay, clock, finished = _pair()
    relay.start()
    clock.advance(10_000)
    assert not client.sent and not backend.sent
    relay.idle_timeout(1)
    relay.leg_closed(Side.CLIENT, 1000, "")
    relay.leg_closed(Side.BACKEND, 1000, "")
    assert finished and not clock.getDelayedCalls()


def test_the_other_legs_transport_is_paused_and_resumed_but_never_stopped() -> None:
    """A transport whose connection is lost calls ``stopProducing()`` on its
    producer (Twisted's FileDescriptor): a dying leg must not close the
    surviving leg's transport, whose closing handshake the relay runs."""
    dying, survivor = StreamLeg(None, Clock(), 5.0), StreamLeg(None, Clock(), 5.0)
    dying.makeConnection(StringTransport())
    survivor.makeConnection(StringTransport())
    dying.register_producer_of(survivor)
    producer = dying.transport.producer
    producer.resumeProducing()
    assert survivor.transport.producerState == "producing"
    producer.pauseProducing()
    assert survivor.transport.producerState == "paused"
    producer.resumeProducing()
    producer.stopProducing()  # what the dying leg's transport does when lost
    assert survivor.transport.producerState == "producing"
    assert not survivor.transport.disconnecting


def test_the_closing_line_has_what_was_sent_and_received_on_each_leg() -> None:
    _client, _backend, relay, _, finished = _pair()
    relay.start()
    relay.leg_closed(Side.BACKEND, 1006, "connection lost")
    relay.leg_closed(Side.CLIENT, 1002, "incomplete fragmented message", sent=1011)
    assert finished == [relay]
    assert relay.sent_on(Side.CLIENT) == 1011 and relay.sent_on(Side.BACKEND) is None
    assert relay.closed_with(Side.CLIENT) == (1002, "incomplete fragmented message")
    assert relay.closed_with(Side.BACKEND) == (1006, "connection lost")


def _stream_leg(clock: Clock) -> StreamLeg:
    leg = StreamLeg(None, clock, 5.0)
    leg.makeConnection(StringTransport())
    return leg


def test_a_stream_leg_keeps_what_arrives_before_the_relay_runs() -> None:
    """A paused TLS transport still delivers what it already decrypted, and a
    VNC server speaks first: nothing is dropped and the order holds."""
    clock = Clock()
    leg = _stream_leg(clock)
    leg.dataReceived(b"RFB 003.008\n")
    leg.dataReceived(b"burst")
    client = FakeLeg(Side.CLIENT)
    relay = leg.relay = Relay(client, leg, clock)
    leg.dataReceived(b" and more")
    assert client.sent == []
    relay.start()
    assert [data for kind, data in client.sent if kind == "data"] == [
        (b"RFB 003.008\n", True),
        (b"burst", True),
        (b" and more", True),
    ]


def test_a_stream_that_ends_before_the_relay_runs_ends_after_its_data() -> None:
    clock = Clock()
    leg = _stream_leg(clock)
    leg.dataReceived(b"bye")
    leg.readConnectionLost()
    leg.connectionLost(Failure(ConnectionDone()))
    client = FakeLeg(Side.CLIENT)
    relay = leg.relay = Relay(client, leg, clock)
    relay.start()
    assert client.sent == [("begin", True), ("data", (b"bye", True)), ("close", Close(1000, ""))]
    assert relay.closed_with(Side.BACKEND) == (1000, "")


def test_a_stream_flooding_past_its_pause_is_cut() -> None:
    leg = _stream_leg(Clock())
    for _ in range(17):
        leg.dataReceived(bytes(64 * 1024))
    assert leg.transport.disconnecting or leg.transport.disconnected


class _ServerLeg(RelayedLeg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None  # as a real transport does, registered or not


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (mask of zeros: the payload goes as it is)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\x00" * 4 + payload


def test_the_surviving_leg_reads_until_its_peers_close_then_sends_a_fin() -> None:
    """The backend died: the client gets 1011, what it still sends is read
    (and goes nowhere), and its close answer ends the TCP connection with a
    FIN (loseConnection), not a reset (Twisted's abortConnection, which
    Autobahn's server uses here)."""
    reactor = MemoryReactorClock()
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(**leg_options(RouteSettings()))
    factory.protocol = _ServerLeg
    leg = factory.buildProtocol(None)
    transport = _Transport()
    leg.makeConnection(transport)
    leg.dataReceived(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    backend = FakeLeg(Side.BACKEND)
    relay = leg.relay = Relay(leg, backend, reactor)
    relay.start()
    transport.clear()

    relay.leg_closed(Side.BACKEND, 1006, "connection lost")
    close = struct.pack("!H", 1011) + b"backend went away"
    assert transport.value() == bytes([0x88, len(close)]) + close
    leg.dataReceived(_client_frame(0x2, b"still uploading"))
    assert not transport.disconnecting
    leg.dataReceived(_client_frame(0x8, struct.pack("!H", 1011)))
    assert transport.disconnecting and not transport.disconnected  # a FIN, not a reset
    # A peer that never reads what is left to write does not hold it open.
    reactor.advance(RouteSettings().close_timeout)
    assert transport.disconnected

    leg.connectionLost(Failure(ConnectionDone()))
    assert relay.finished and not reactor.getDelayedCalls()
    assert relay.sent_on(Side.CLIENT) == 1011 and relay.closed_with(Side.CLIENT) == (1011, "")
    assert relay.sent_on(Side.BACKEND) is None


def test_go_away_closes_both_legs_with_1001_once() -> None:
    client, backend, relay, _, _ = _pair()
    assert not relay.go_away()  # not running yet: nothing to close gracefully
    relay.start()
    assert relay.go_away()
    away = Close(1001, "going away")
    assert client.sent[-1] == ("close", away) and backend.sent[-1] == ("close", away)
    assert client.reading and backend.reading
    assert relay.first_close == (Side.CLIENT, Cause.DRAINING, None, "going away")
    assert not relay.go_away()
