"""wsgate's legs in memory: a real frontend, real backend legs and real peers,
joined by ``twisted.test.iosim`` transports on one ``MemoryReactorClock``.

The frontend opens its backends through endpoints, which call
``reactor.connectTCP``: on a memory reactor that only records the factory
(``reactor.tcpClients``). ``Network`` answers each such connect with a peer
protocol from ``serve`` (or refuses it, or leaves it hanging) by building
the endpoint's protocol and joining it to the peer with a pair of ``Pipe``s.
``flush`` then moves bytes until nothing moves, running what is due on the
clock; nothing sleeps, nothing touches the global reactor (Autobahn's timers,
which go through txaio's loop, are pointed at the memory reactor too).

``Pipe`` is iosim's ``FakeTransport`` with what the relay's backpressure
needs: a reader that pauses stops taking bytes, so the writer's buffer fills
and pauses its registered producer (the other leg), as a socket's does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import error, interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport

from wsgate import _liveroutes
from wsgate._frontend import FrontendFactory
from wsgate.tap import Options

#: The client's address as the frontend sees it.
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class Pipe(FakeTransport):  # type: ignore[misc]
    """One end of an in-memory connection that pauses like a socket.

    ``pauseProducing`` stops this end's reading: the peer's bytes stay in
    the peer's buffer, and once that holds more than ``high_water`` the
    peer's registered streaming producer is paused, until it drains.
    ``max_read`` is the most one read of the peer takes from this end's
    buffer (odd sizes split frames; a small one lets backpressure act
    between reads, as a socket's receive buffer does).
    ``abortConnection`` is a reset: buffered bytes go, and the peer sees it
    even while it is not reading (EPOLLHUP); a clean close waits for it.
    """

    high_water = 64 * 1024

    def __init__(self, protocol: Any, isServer: bool, host: Any = None, peer: Any = None) -> None:
        super().__init__(protocol, isServer, host, peer)
        self.peer_pipe: Pipe | None = None
        self.reading = True
        self.max_read: int | None = None
        self.producer_paused = False  # this end paused its producer: buffer full
        self.write_closed = False
        self.aborted = False

    # -- the protocol's view ---------------------------------------------------

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            not self.producer_paused
            and self.producer is not None
            and self.streamingProducer
            and self.buffered() > self.high_water
        ):
            self.producer_paused = True
            self.producer.pauseProducing()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.producer_paused = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.stream.clear()
        self.aborted = True
        self.disconnectReason = error.ConnectionAborted()
        if self.peer_pipe is not None:
            self.peer_pipe.disconnectReason = error.ConnectionLost("reset by peer")
        self.loseConnection()

    def buffered(self) -> int:
        return sum(len(piece) for piece in self.stream)

    # -- the network's view -----------------------------------------------------

    def move(self) -> bool:
        """Deliver what the peer may read now (one read), or this end's close."""
        peer = self.peer_pipe
        if peer is None or self.disconnected:
            return False
        if self.stream and peer.reading and not peer.disconnected:
            data = b"".join(self.stream)
            cut = len(data) if self.max_read is None else self.max_read
            self.stream = [data[cut:]] if data[cut:] else []
            if self.producer_paused and not self.stream and self.producer is not None:
                self.producer_paused = False
                self.producer.resumeProducing()
            peer.protocol.dataReceived(data[:cut])
            return True
        if self.stream and not self.aborted:
            return False
        if self.disconnecting and (peer.reading or self.aborted):
            self._lost(peer)
            return True
        if self.write_closed and peer.reading and not peer.disconnected:
            self.write_closed = False
            if interfaces.IHalfCloseableProtocol.providedBy(peer.protocol):
                peer.protocol.readConnectionLost()
            else:
                self._lost(peer)
            return True
        return False

    def _lost(self, peer: Pipe) -> None:
        """Both ends are gone: each protocol hears it with its own reason."""
        self.disconnected = peer.disconnected = True
        self.disconnecting = peer.disconnecting = True
        self.protocol.connectionLost(Failure(self.disconnectReason))
        peer.protocol.connectionLost(Failure(peer.disconnectReason))


class Network:
    """Connections on one memory reactor, and the backends' side of them."""

    def __init__(
        self,
        reactor: MemoryReactorClock,
        serve: Callable[[str, int], Protocol | None] | None = None,
    ) -> None:
        self.reactor = reactor
        #: Makes the peer for a backend connect to (host, port); None: leave it
        #: connecting (for timeouts and cancels).
        self.serve = serve
        self.pipes: list[Pipe] = []
        self._seen = 0
        #: Each backend connection: (host, port, backend peer's pipe, leg's pipe).
        self.backends: list[tuple[str, int, Pipe, Pipe]] = []

    def join(
        self, server: Any, client: Any, server_address: Any, client_address: Any
    ) -> tuple[Pipe, Pipe]:
        """Connect two protocols; returns the server's and the client's pipe."""
        near = Pipe(server, True, server_address, client_address)
        far = Pipe(client, False, client_address, server_address)
        near.peer_pipe, far.peer_pipe = far, near
        self.pipes += [near, far]
        server.makeConnection(near)
        client.makeConnection(far)
        return near, far

    def connect_client(self, factory: Any, client: Any) -> tuple[Any, Pipe, Pipe]:
        """A client connection to a listener's factory: (frontend, its pipe, the client's)."""
        frontend = factory.buildProtocol(CLIENT_ADDRESS)
        near, far = self.join(
            frontend, client, IPv4Address("TCP", "127.0.0.1", 8080), CLIENT_ADDRESS
        )
        return frontend, near, far

    def pending(self) -> list[tuple[str, int, Any]]:
        """Backend connects not answered yet: (host, port, the endpoint's factory)."""
        return [(c[0], c[1], c[2]) for c in self.reactor.tcpClients[self._seen :]]

    def answer(self, peer: Protocol) -> tuple[Pipe, Pipe]:
        """Accept the oldest pending backend connect with ``peer``."""
        host, port, factory, *_ = self.reactor.tcpClients[self._seen]
        self._seen += 1
        address = IPv4Address("TCP", host, port)
        leg = factory.buildProtocol(address)
        near, far = self.join(
            peer, leg, address, IPv4Address("TCP", "127.0.0.1", 50000 + self._seen)
        )
        self.backends.append((host, port, near, far))
        return near, far

    def refuse(self) -> None:
        """Refuse the oldest pending backend connect (ECONNREFUSED)."""
        factory = self.reactor.tcpClients[self._seen][2]
        connector = self.reactor.connectors[self._seen]
        self._seen += 1
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))

    def flush(self) -> None:
        """Move bytes, answer connects and run what is due, until nothing moves."""
        for _ in range(100_000):
            self.reactor.advance(0)
            moved = False
            while self.serve is not None and self._seen < len(self.reactor.tcpClients):
                host, port = self.reactor.tcpClients[self._seen][:2]
                peer = self.serve(host, port)
                if peer is None:
                    break
                self.answer(peer)
                moved = True
            for pipe in list(self.pipes):
                moved = pipe.move() or moved
            if not moved:
                return
        raise AssertionError("the network never settles")

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock, then settle."""
        self.reactor.advance(seconds)
        self.flush()


@contextmanager
def autobahn_timers(reactor: MemoryReactorClock) -> Iterator[None]:
    """Autobahn schedules its handshake and close timeouts through txaio's
    loop, which is the global reactor unless set: point it at ``reactor``."""
    before = txaio.config.loop
    txaio.config.loop = reactor
    try:
        yield
    finally:
        txaio.config.loop = before


def frontend_factory(
    reactor: MemoryReactorClock, *args: str, config: Any = None
) -> FrontendFactory:
    """A listener's real ``FrontendFactory`` for command-line ``args``
    (``--backend``, ``--route``, ...) or a loaded ``config`` (its only
    listener), its connectors on ``reactor``."""
    if config is None:
        options = Options()
        options.parseOptions([*args, "--listen", "tcp:8080"])
        config = options["config"]
    routes, _ = _liveroutes.build(config, reactor, {})
    (listener_routes,) = routes.values()
    return FrontendFactory(listener_routes, reactor)


# -- peers ----------------------------------------------------------------------


class Events:
    """What a peer saw, in order."""

    def __init__(self) -> None:
        self.opened = False
        self.messages: list[tuple[bytes, bool]] = []
        self.closed: tuple[bool, int | None, str | None] | None = None


class WsClient(WebSocketClientProtocol):  # type: ignore[misc]
    """A WebSocket client that records what it gets, and the bytes it read
    (Autobahn refuses some codes wsgate sends, such as 1014)."""

    def __init__(self) -> None:
        super().__init__()
        self.events = Events()
        self.wire = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.wire += data
        super().dataReceived(data)

    def onOpen(self) -> None:
        self.events.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.messages.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.closed = (wasClean, code, reason)


def ws_client(
    reactor: MemoryReactorClock,
    url: str = "ws://127.0.0.1:8080/",
    protocols: list[str] | None = None,
    **options: Any,
) -> WsClient:
    """An Autobahn client, its options as in ``setProtocolOptions``."""
    factory = WebSocketClientFactory(url, protocols=protocols, reactor=reactor)
    factory.setProtocolOptions(failByDrop=False, **options)
    client = WsClient()
    client.factory = factory
    return client


class WsServer(WebSocketServerProtocol):  # type: ignore[misc]
    """A WebSocket backend that records what it gets (and echoes, if told)."""

    echo = False

    def __init__(self) -> None:
        super().__init__()
        self.events = Events()
        self.requests: list[Any] = []

    def onConnect(self, request: Any) -> Any:
        self.requests.append(request)
        return request.protocols[0] if request.protocols else None

    def onOpen(self) -> None:
        self.events.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.messages.append((payload, isBinary))
        if self.echo:
            self.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.closed = (wasClean, code, reason)


def ws_server(reactor: MemoryReactorClock, echo: bool = False, **options: Any) -> WsServer:
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(failByDrop=False, **options)
    server = WsServer()
    server.factory = factory
    server.echo = echo
    return server


class RawPeer(Protocol):
    """Bytes in, bytes out: a stream backend, or a client that writes raw frames."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


__all__ = [
    "CLIENT_ADDRESS",
    "Events",
    "Network",
    "Pipe",
    "RawPeer",
    "WsClient",
    "WsServer",
    "autobahn_timers",
    "frontend_factory",
    "ws_client",
    "ws_server",
]
