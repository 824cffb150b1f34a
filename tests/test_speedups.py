"""The hot path's shortcuts give the same answers as what they replace, and
turn on only where and when they were meant to."""

from __future__ import annotations

import os
import pprint
import select
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import autobahn
import pytest
from autobahn import util as autobahn_util
from autobahn.nvx._utf8validator import Utf8Validator as NativeValidator
from autobahn.nvx._xormasker import create_xor_masker as native_masker
from autobahn.twisted import websocket as autobahn_twisted
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket import utf8validator, xormasker
from autobahn.websocket.protocol import Timings
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error, protocol, ssl
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import tls
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

import twisted
from wsgate import _speedups, _tlspath
from wsgate._service import Gateway
from wsgate.tap import Options
from wsgate.testing import TlsFiles, Wsgate


@pytest.fixture
def pristine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test installs into Autobahn or ``_speedups`` is undone after it."""
    for name in ("create_xor_masker", "Utf8Validator", "pformat", "hltype", "hlval"):
        monkeypatch.setattr(autobahn_protocol, name, getattr(autobahn_protocol, name))
    for name in ("hltype", "hlval"):
        monkeypatch.setattr(autobahn_twisted, name, getattr(autobahn_twisted, name))
    monkeypatch.setattr(Timings, "__str__", Timings.__str__)
    monkeypatch.setattr(_speedups, "_eager", False)
    monkeypatch.setattr(_speedups, "_eager_tls", False)
    monkeypatch.setattr(_tlspath, "_send", None)
    for name in ("_write", "_flushSendBIO", "_flushReceiveBIO"):
        monkeypatch.setattr(tls.TLSMemoryBIOProtocol, name, getattr(tls.TLSMemoryBIOProtocol, name))


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct write turned on, as ``install`` does on the versions it knows."""
    monkeypatch.setattr(_speedups, "_eager", True)


def _wsgate_lines(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == "wsgate"]


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _close(reactor: EPollReactor) -> None:
    """Free a private reactor's descriptors (it was never installed nor run)."""
    for selectable in reactor.removeAll():
        selectable.connectionLost(Failure(error.ConnectionDone()))  # type: ignore[attr-defined]
    reactor.waker.connectionLost(None)  # type: ignore[union-attr]
    reactor._poller.close()  # type: ignore[attr-defined]


# -- the masker and the validator ------------------------------------------------


@given(
    st.binary(min_size=4, max_size=4),
    st.integers(min_value=0, max_value=3 * _speedups._SMALL_FRAME),
    st.integers(min_value=1, max_value=5000),
)
def test_masker_matches_autobahn_s_native_one(mask: bytes, length: int, piece: int) -> None:
    payload = os.urandom(length)
    ours, theirs = _speedups._create_xor_masker(mask, length), native_masker(mask, length)
    # Frames arrive in pieces: the mask must carry on across calls.
    for start in range(0, length, piece):
        chunk = payload[start : start + piece]
        assert ours.process(chunk) == theirs.process(chunk)
        assert ours.pointer() == theirs.pointer()


def test_masker_choice_by_size() -> None:
    small = _speedups._create_xor_masker(b"abcd", _speedups._SMALL_FRAME)
    big = _speedups._create_xor_masker(b"abcd", _speedups._SMALL_FRAME + 1)
    assert type(small).__module__.startswith("wsaccel")
    assert not type(big).__module__.startswith("wsaccel")


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_validator_matches_autobahn_s_native_one(pieces: list[bytes]) -> None:
    ours, theirs = _speedups._WsaccelValidator(), NativeValidator()
    for piece in pieces:
        result = ours.validate(piece)
        assert result == theirs.validate(piece)
        if not result[0]:
            break  # Autobahn fails the connection at the first invalid byte


@given(st.text(max_size=50))
def test_validator_accepts_utf8(text: str) -> None:
    valid, ends_on_code_point, _, _ = _speedups._WsaccelValidator().validate(text.encode())
    assert valid and ends_on_code_point


# -- install: where, and on which versions -----------------------------------------


def _pretend_versions(monkeypatch: pytest.MonkeyPatch, twisted_v: str, autobahn_v: str) -> None:
    monkeypatch.setattr(twisted, "__version__", twisted_v)
    monkeypatch.setattr(autobahn, "__version__", autobahn_v)


def test_install_on_the_versions_it_was_written_for(
    pristine: None, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    want = _speedups._WRITTEN_FOR
    _pretend_versions(monkeypatch, want["Twisted"], want["Autobahn"])
    reactor = EPollReactor()
    try:
        assert _speedups.install(reactor)
        assert autobahn_protocol.create_xor_masker is _speedups._create_xor_masker
        assert autobahn_protocol.Utf8Validator is _speedups._WsaccelValidator
        assert reactor.doIteration.__func__ is _speedups._do_poll  # type: ignore[attr-defined]
        assert _speedups._eager
        assert _wsgate_lines(logged) == [
            f"speedups: on (Twisted {want['Twisted']}, Autobahn {want['Autobahn']}): eager TCP "
            "writes, wsaccel masker and UTF-8 validator, debug formatting only when read, "
            "epoll events without a log context, TLS records written at once"
        ]
        assert autobahn_protocol.pformat is _speedups._LazyFormat
    finally:
        _close(reactor)


@pytest.mark.parametrize(
    ("twisted_v", "autobahn_v"), [("99.1.0", None), (None, "99.2.0"), ("24.10.0", "26.7.1")]
)
def test_install_refuses_other_versions(
    pristine: None,
    monkeypatch: pytest.MonkeyPatch,
    logged: list[dict[str, Any]],
    twisted_v: str | None,
    autobahn_v: str | None,
) -> None:
    want = _speedups._WRITTEN_FOR
    found_twisted, found_autobahn = twisted_v or want["Twisted"], autobahn_v or want["Autobahn"]
    _pretend_versions(monkeypatch, found_twisted, found_autobahn)
    reactor = EPollReactor()
    try:
        assert not _speedups.install(reactor)
        # Autobahn's own, the reactor's own, Twisted's own write.
        assert autobahn_protocol.create_xor_masker is xormasker.create_xor_masker
        assert autobahn_protocol.Utf8Validator is utf8validator.Utf8Validator
        assert "doIteration" not in vars(reactor)
        assert not _speedups._eager
        assert _wsgate_lines(logged) == [
            f"speedups: off (written for Twisted {want['Twisted']} and Autobahn "
            f"{want['Autobahn']}, found Twisted {found_twisted} and Autobahn {found_autobahn})"
        ]
    finally:
        _close(reactor)


def test_a_gateway_leaves_autobahn_and_its_reactor_alone(pristine: None) -> None:
    """Building (and starting) a Gateway installs nothing: that is twistd's
    ``makeService``'s call, so tests and embedders get the plain path."""
    options = Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--backend", "ws://127.0.0.1:9"])
    reactor = EPollReactor()
    try:
        gateway = Gateway(options["config"], reactor)
        gateway.startService()
        gateway.stopService()
        assert autobahn_protocol.create_xor_masker is xormasker.create_xor_masker
        assert autobahn_protocol.Utf8Validator is utf8validator.Utf8Validator
        assert "doIteration" not in vars(reactor)
        assert not _speedups._eager
    finally:
        _close(reactor)


def test_twistd_wsgate_says_whether_they_are_on(tmp_path: Path) -> None:
    found = _speedups._versions()
    with Wsgate("--backend", "ws://127.0.0.1:9", log_path=tmp_path / "wsgate.log") as gate:
        pass
    lines = [line for line in gate.log().splitlines() if "speedups:" in line]
    expected = "speedups: on (" if found == _speedups._WRITTEN_FOR else "speedups: off ("
    # One line per serving process (each worker of a --workers tree).
    assert len(lines) == gate.workers(), gate.log()
    assert all(expected in line for line in lines), gate.log()


def test_autobahn_s_timings_still_print(pristine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Autobahn's ``Timings.__str__`` returns its module's ``pformat``: that
    must stay a str with the speed-ups on (it was a lazy object, a TypeError)."""
    want = _speedups._WRITTEN_FOR
    _pretend_versions(monkeypatch, want["Twisted"], want["Autobahn"])
    assert _speedups.install(MemoryReactorClock())
    timings = Timings()
    timings.track("onOpen")
    assert str(timings) == pprint.pformat(timings._timings)
    assert f"{timings}" == str(timings)


def test_autobahn_s_debug_formatting_is_lazy_and_the_same(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = _speedups._WRITTEN_FOR
    _pretend_versions(monkeypatch, want["Twisted"], want["Autobahn"])
    assert _speedups.install(MemoryReactorClock())
    value = [("applyMask", True, "Factory"), ("maxFramePayloadSize", 0, "Factory")] * 5
    lazy = autobahn_protocol.pformat(value)
    assert not isinstance(lazy, str)  # nothing formatted yet
    assert str(lazy) == pprint.pformat(value)
    assert f"{lazy}" == pprint.pformat(value)


def test_autobahn_s_debug_names_are_lazy_and_the_same(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = _speedups._WRITTEN_FOR
    _pretend_versions(monkeypatch, want["Twisted"], want["Autobahn"])
    method = Timings().track
    plain = (autobahn_util.hltype(method), autobahn_util.hlval(42, color="blue"))
    assert _speedups.install(MemoryReactorClock())
    for module in (autobahn_protocol, autobahn_twisted):
        lazy = (module.hltype(method), module.hlval(42, color="blue"))
        assert not any(isinstance(x, str) for x in lazy)  # nothing formatted yet
        assert tuple(map(str, lazy)) == plain
        assert f"{lazy[0]}|{lazy[1]}" == "|".join(plain)


# -- the direct write, on real TCP connections ----------------------------------


class _Peer(protocol.Protocol):
    """One end of a test connection: keeps what it reads and how it ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


@implementer(IHandshakeListener)
class _TlsPeer(_Peer):
    def __init__(self) -> None:
        super().__init__()
        self.handshaken = False

    def handshakeCompleted(self) -> None:
        self.handshaken = True


class _Net:
    """A private epoll reactor (never installed: the test drives it) and TCP
    connections over 127.0.0.1 made on it."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()
        self.servers: list[_Peer] = []
        self._ports: list[Any] = []

    def connect(
        self,
        peer: type[_Peer] = _Peer,
        rcvbuf: int | None = None,
        server_tls: Any = None,
    ) -> tuple[_Peer, _Peer]:
        """A (client, server) pair; ``rcvbuf`` shrinks the server's receive
        window before the handshake."""
        factory = protocol.Factory.forProtocol(peer)
        factory.buildProtocol = self._keep(factory.buildProtocol)  # type: ignore[method-assign]
        wrapped = (
            tls.TLSMemoryBIOFactory(server_tls, False, factory, self.reactor)
            if server_tls
            else factory
        )
        port = self.reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self._ports.append(port)
        if rcvbuf:
            port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client = peer()
        done = protocol.ClientCreator(self.reactor, lambda: client)
        d = done.connectTCP("127.0.0.1", port.getHost().port)
        connected: list[object] = []
        d.addBoth(connected.append)
        self.run_until(lambda: bool(connected and self.servers))
        assert connected[0] is client, connected
        return client, self.servers.pop()

    def _keep(self, build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def keep(addr: Any) -> Any:
            p = build(addr)
            self.servers.append(p)
            return p

        return keep

    def run_until(self, done: Callable[[], bool], turns: int = 2000) -> None:
        """Turn the reactor until ``done()``: each turn waits at most 10 ms for
        I/O, so this gives up after about 20 s."""
        for _ in range(turns):
            if done():
                return
            self.reactor.iterate(0.01)
        assert done(), "the reactor never got there"

    def close(self) -> None:
        for port in self._ports:
            port.stopListening()
        self.reactor.runUntilCurrent()  # the ports close their sockets
        _close(self.reactor)


@pytest.fixture
def net() -> Iterator[_Net]:
    n = _Net()
    yield n
    n.close()


def _pattern(size: int, seed: int) -> bytes:
    """Bytes whose every 4-byte word says where it is: a reordering shows."""
    return b"".join(struct.pack(">HH", seed, i & 0xFFFF) for i in range(size // 4))


def _queued(transport: Any) -> bool:
    return transport in transport.reactor.getWriters()  # type: ignore[no-any-return]


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 5)[0])


def test_the_direct_write_sends_at_once(eager: None, net: _Net) -> None:
    client, server = net.connect()
    assert client.transport is not None and server.transport is not None
    _speedups.write(client.transport, b"hello")
    # Sent before the reactor's next turn: on the server's socket already.
    assert not _queued(client.transport)
    sock = server.transport.getHandle()
    assert _readable(sock) and sock.recv(100, socket.MSG_PEEK) == b"hello"
    net.run_until(lambda: bool(server.received))
    assert server.received == b"hello"


def test_off_it_is_twisted_s_own_write(pristine: None, net: _Net) -> None:
    client, server = net.connect()
    assert client.transport is not None
    _speedups.write(client.transport, b"hello")
    assert _queued(client.transport)  # sent on the reactor's next turn
    net.run_until(lambda: bool(server.received))
    assert server.received == b"hello"


def test_a_partial_send_queues_the_rest_in_order(eager: None, net: _Net) -> None:
    """A peer that does not read: ``send`` takes part, the rest and everything
    after it is queued behind it, and all arrives in order."""
    client, server = net.connect(rcvbuf=4096)
    transport: Any = client.transport
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.transport.pauseProducing()  # type: ignore[union-attr]
    first = _pattern(_speedups._SEND_LIMIT, 1)  # the largest the direct write takes
    _speedups.write(transport, first)
    sock = server.transport.getHandle()  # type: ignore[union-attr]
    # Part went out at once, the rest waits in the transport.
    assert _readable(sock)
    assert 0 < len(sock.recv(len(first), socket.MSG_PEEK)) < len(first)
    assert _queued(transport)
    later = [_pattern(1000, 2), _pattern(60_000, 3), _pattern(40, 4)]
    for data in later:
        _speedups.write(transport, data)
    server.transport.resumeProducing()  # type: ignore[union-attr]
    everything = first + b"".join(later)
    net.run_until(lambda: len(server.received) >= len(everything))
    assert server.received == everything
    # Drained: the next write goes out at once again.
    net.run_until(lambda: not _queued(transport))
    _speedups.write(transport, b"last")
    assert not _queued(transport)
    net.run_until(lambda: server.received.endswith(b"last"))
    assert server.received == everything + b"last"


def test_ordering_with_data_twisted_already_holds(eager: None, net: _Net) -> None:
    """Data in either of the transport's buffers (the list ``write`` appends to,
    the bytes ``doWrite`` is part way through) goes out before new data."""
    client, server = net.connect(rcvbuf=4096)
    transport: Any = client.transport
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # 1. Queued by Twisted's own write, not yet handed to doWrite.
    transport.write(_pattern(200_000, 1))
    _speedups.write(transport, _pattern(100, 2))
    # 2. doWrite part way through its buffer (Twisted's private state, read
    # only to set the scene).
    net.run_until(lambda: 0 < transport.offset < len(transport.dataBuffer))
    server.transport.pauseProducing()  # type: ignore[union-attr]
    assert not transport._tempDataBuffer and transport.offset < len(transport.dataBuffer)
    _speedups.write(transport, _pattern(100, 3))
    server.transport.resumeProducing()  # type: ignore[union-attr]
    everything = _pattern(200_000, 1) + _pattern(100, 2) + _pattern(100, 3)
    net.run_until(lambda: len(server.received) >= len(everything))
    assert server.received == everything


def _reset_arrived(sock: socket.socket) -> bool:
    """Whether the peer's RST has arrived (POLLHUP: both directions are shut)."""
    poller = select.poll()
    poller.register(sock, 0)  # POLLERR and POLLHUP are always reported
    return bool(poller.poll(5000))


@pytest.mark.parametrize("writer", ["speedups", "twisted"])
@pytest.mark.parametrize("peer_end", ["reset", "close"])
def test_a_dead_peer_ends_the_connection_as_twisted_s_write_does(
    eager: None, net: _Net, writer: str, peer_end: str
) -> None:
    """A peer that reset the connection (so ``send`` fails with ECONNRESET,
    then EPIPE), or closed it (one write goes out, the next meets the RST it
    caused): the writes raise nothing, and the connection ends on the
    reactor's next turn with ConnectionLost, as with Twisted's own write."""
    client, server = net.connect()
    transport: Any = client.transport
    transport.pauseProducing()  # so only the writes can meet the peer's end
    write = _speedups.write if writer == "speedups" else type(transport).write
    if peer_end == "reset":
        server.transport.abortConnection()  # type: ignore[union-attr]
        net.run_until(lambda: server.lost is not None)
        assert _reset_arrived(transport.getHandle())
        write(transport, b"first")
        write(transport, b"second")
    else:
        server.transport.loseConnection()  # type: ignore[union-attr]
        net.run_until(lambda: server.lost is not None)
        write(transport, b"first")
        net.run_until(lambda: not _queued(transport))
        assert _reset_arrived(transport.getHandle())
        write(transport, b"second")
    net.run_until(lambda: client.lost is not None)
    assert client.lost is not None and client.lost.check(error.ConnectionLost), client.lost
    assert not transport.connected
    write(transport, b"after")  # dropped, as Twisted drops it


@pytest.mark.parametrize("tls_path", [False, True])
def test_tls_never_takes_the_direct_write(
    pristine: None,
    eager: None,
    net: _Net,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    tls_path: bool,
) -> None:
    """A TCP transport that started TLS, and a TLS wrapper: what is written
    arrives through TLS (a byte in clear would break the peer's TLS), with
    and without the TLS path (``_tlspath``: the wrapper's ciphertext leaves
    by the direct write)."""
    if tls_path:
        assert _tlspath.install(_speedups.write)
        monkeypatch.setattr(_speedups, "_eager_tls", True)
    # startTLS gives its TLS layer the global reactor as the clock it flushes
    # writes with (callLater(0)), and has no argument for another one.
    monkeypatch.setattr(tls, "_get_default_clock", lambda: net.reactor)
    server_tls = ssl.PrivateCertificate.loadPEM(tls_files.combined.read_text()).options()
    ca = ssl.Certificate.loadPEM(tls_files.ca_cert.read_text())
    client, server = net.connect(peer=_TlsPeer, server_tls=server_tls)
    transport: Any = client.transport
    transport.startTLS(ssl.optionsForClientTLS("localhost", trustRoot=ca))
    assert transport.TLS and type(transport) in _speedups._TCP
    assert isinstance(client, _TlsPeer) and isinstance(server, _TlsPeer)
    net.run_until(lambda: client.handshaken and server.handshaken and not _queued(transport))
    _speedups.write(transport, b"from the client")
    _speedups.write(server.transport, b"from the server")
    net.run_until(
        lambda: bool(client.received and server.received) or bool(client.lost or server.lost)
    )
    assert client.lost is None and server.lost is None, (client.lost, server.lost)
    assert server.received == b"from the client" and client.received == b"from the server"


def test_wrappers_and_doubles_keep_their_own_write() -> None:
    inner = StringTransport()
    wrapper = HAProxyWrappingFactory(protocol.Factory.forProtocol(_Peer)).buildProtocol(None)
    wrapper.makeConnection(inner)
    for transport, seen in ((StringTransport(), None), (wrapper, inner)):
        _speedups.write(transport, b"frame")
        assert (seen or transport).value() == b"frame"  # type: ignore[attr-defined]


# -- the epoll loop ---------------------------------------------------------------


class _Reader:
    """A selectable for the poll tests: records reads, or fails on them."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        data = self.sock.recv(100)
        if self.fail:
            raise RuntimeError("boom")
        self.read.append(data)

    def logPrefix(self) -> str:
        return "reader"

    def connectionLost(self, reason: object) -> None:
        pass


def test_fast_poll_only_for_the_epoll_reactor() -> None:
    assert not _speedups._fast_poll(MemoryReactorClock())


def test_fast_poll_runs_events_and_survives_a_failing_one() -> None:
    reactor = EPollReactor()  # not installed: a private poller of its own
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        assert _speedups._fast_poll(reactor)
        bad, good = _Reader(pairs[0][0], fail=True), _Reader(pairs[1][0])
        reactor.addReader(bad)
        reactor.addReader(good)
        pairs[0][1].send(b"x")
        pairs[1][1].send(b"hello")
        errors: list[dict[str, object]] = []
        globalLogPublisher.addObserver(errors.append)
        try:
            reactor.doIteration(0)
        finally:
            globalLogPublisher.removeObserver(errors.append)
        assert good.read == [b"hello"]
        # The failing reader's error was logged (as Twisted does) and it was
        # disconnected; the loop went on to the other one.
        (failed,) = [e for e in errors if "boom" in str(e.get("failure"))]
        # No log context was built around the event: the system is Twisted's
        # default, not the selectable's prefix ("reader").
        assert failed["system"] == "-"
        assert bad not in reactor.getReaders()
        reactor.doIteration(0)  # nothing pending: returns at once
    finally:
        _close(reactor)
        for a, b in pairs:
            a.close()
            b.close()
