"""How wsgate reaches a backend (``_connect``): the endpoint, the connect, its failures.

In memory: a ``MemoryReactorClock`` records where each connect goes, and
its clock runs the connect timeout. The failure mapping itself is tested
with Twisted's own exceptions in test_resources.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    _parse,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase

from wsgate._backend import BackendConnector, BackendProtocol
from wsgate._config import RouteSettings, parse_backend
from wsgate._connect import BackendError, BackendRequest, split_endpoint, stream_endpoint
from wsgate._tcpleg import BINARY, StreamConnector, StreamLeg

_SYNC = SynchronousTestCase()


@pytest.mark.parametrize(
    "description",
    [
        "tcp:127.0.0.1:5900",
        "tcp:host=vnc.lan:port=5900:timeout=3",
        r"tcp:host=\:\:1:port=5901",
        r"tcp:\:\:1:5901",
        "unix:/run/vnc.sock",
        "tls:host=a=b:port=1",
        "tcp:",
        "",
    ],
)
def test_split_like_twisted(description: str) -> None:
    args, options = _parse(description)
    assert split_endpoint(description) == (args, options)


@given(st.text(alphabet=":=\\ab1", max_size=12))
def test_split_like_twisted_for_any_text(description: str) -> None:
    try:
        expected = _parse(description)
    except RuntimeError:  # a trailing backslash; the config check refuses it
        return
    assert split_endpoint(description) == expected


@pytest.mark.parametrize(
    ("description", "kind", "where"),
    [
        ("tcp:127.0.0.1:5900", TCP4ClientEndpoint, ("127.0.0.1", 5900)),
        (r"tcp:host=\:\:1:port=5901", TCP6ClientEndpoint, ("::1", 5901)),
        (r"tcp:\:\:1:5901", TCP6ClientEndpoint, ("::1", 5901)),
        ("tcp:host=vnc.lan:port=5900", HostnameEndpoint, None),
        ("TCP:vnc.lan:5900", HostnameEndpoint, None),
    ],
)
def test_stream_endpoint_picks_by_address(description: str, kind: type, where: Any) -> None:
    reactor = MemoryReactorClock()
    found = stream_endpoint(reactor, description)
    assert type(found) is kind
    if where is not None:
        found.connect(_factory())
        [(host, port, _, timeout, bind)] = reactor.tcpClients
        assert (host, port, timeout, bind) == (*where, 30, None)


def test_stream_endpoint_keeps_timeout_and_bind_address() -> None:
    reactor = MemoryReactorClock()
    found = stream_endpoint(reactor, "tcp:host=\\:\\:1:port=1:timeout=3:bindAddress=\\:\\:2")
    found.connect(_factory())
    [(host, port, _, timeout, bind)] = reactor.tcpClients
    assert (host, port, timeout, bind) == ("::1", 1, 3, ("::2", 0))


def test_other_endpoint_strings_are_twisteds() -> None:
    reactor = MemoryReactorClock()
    assert isinstance(stream_endpoint(reactor, "unix:/run/vnc.sock"), UNIXClientEndpoint)


def _factory() -> Any:
    from twisted.internet.protocol import Factory, Protocol

    return Factory.forProtocol(Protocol)


def _stream(timeout: float = 3.0) -> tuple[MemoryReactorClock, StreamConnector]:
    reactor = MemoryReactorClock()
    settings = RouteSettings(connect_timeout=timeout)
    return reactor, StreamConnector(reactor, settings, parse_backend("tcp:127.0.0.1:5900"))  # type: ignore[arg-type]


def test_connect_times_out_with_504_on_the_clock() -> None:
    reactor, connector = _stream(timeout=3.0)
    opening = connector.connect(BackendRequest())
    reactor.advance(2.9)
    _SYNC.assertNoResult(opening)
    reactor.advance(0.1)
    error = _SYNC.failureResultOf(opening, BackendError).value
    assert (error.status, error.retryable, error.backend) == (504, True, "tcp:127.0.0.1:5900")
    assert reactor.getDelayedCalls() == []


def test_a_refused_connect_is_502_and_its_timeout_goes() -> None:
    reactor, connector = _stream()
    opening = connector.connect(BackendRequest())
    [(_, _, factory, _, _)] = reactor.tcpClients
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    error = _SYNC.failureResultOf(opening, BackendError).value
    assert (error.status, error.retryable) == (502, True)
    assert reactor.getDelayedCalls() == []


def test_the_stream_leg_opens_with_the_chosen_subprotocol() -> None:
    reactor, connector = _stream()
    opening = connector.connect(BackendRequest(subprotocols=("base64", BINARY)))
    [(_, _, factory, _, _)] = reactor.tcpClients
    factory.buildProtocol(None).makeConnection(StringTransport())
    leg = _SYNC.successResultOf(opening)
    assert isinstance(leg, StreamLeg) and leg.websocket_protocol_in_use == BINARY


def test_cancel_while_connecting_stops_the_connect() -> None:
    reactor, connector = _stream()
    opening = connector.connect(BackendRequest())
    opening.cancel()
    _SYNC.failureResultOf(opening, defer.CancelledError)
    [connector_] = reactor.connectors
    assert connector_.stoppedConnecting  # type: ignore[attr-defined]


def test_cancel_during_the_websocket_handshake_drops_the_leg() -> None:
    reactor = MemoryReactorClock()
    backend = parse_backend("ws://127.0.0.1:9000/base")
    connector = BackendConnector(reactor, RouteSettings(), backend)  # type: ignore[arg-type]
    request = BackendRequest("/x", "q=1", {"x-a": "1"}, ("chat",), "https://o.example", "agent/1")
    opening = connector.connect(request)
    [(_, _, factory, _, _)] = reactor.tcpClients
    wrapper = factory.buildProtocol(None)
    transport = FakeTransport(wrapper, isServer=False)
    wrapper.makeConnection(transport)
    head = transport.getOutBuffer().decode("latin-1")
    assert head.startswith("GET /base/x?q=1 HTTP/1.1\r\n")
    for line in ("x-a: 1", "Sec-WebSocket-Protocol: chat", "Origin: https://o.example"):
        assert line in head.split("\r\n"), head
    assert "User-Agent: agent/1" in head
    _SYNC.assertNoResult(opening)
    opening.cancel()
    _SYNC.failureResultOf(opening, defer.CancelledError)
    assert transport.disconnecting


def test_an_ip_backend_is_dialled_with_the_leg_as_its_protocol() -> None:
    """No endpoint between the socket and the leg: no wrapping protocol that
    each of the leg's reads would pass through, no Deferred chain per connect;
    wsgate's own timer bounds the connect (Twisted's gets no timeout)."""
    reactor = MemoryReactorClock()
    backend = parse_backend("ws://127.0.0.1:9000/")
    connector = BackendConnector(reactor, RouteSettings(connect_timeout=2.0), backend)  # type: ignore[arg-type]
    opening = connector.connect(BackendRequest())
    [(host, port, factory, timeout, bind)] = reactor.tcpClients
    assert (host, port, timeout, bind) == ("127.0.0.1", 9000, None, None)
    leg = factory.buildProtocol(None)
    assert isinstance(leg, BackendProtocol)
    assert reactor.getDelayedCalls() == []  # connected: the connect timer went
    leg.makeConnection(FakeTransport(leg, isServer=False))
    leg.onOpen()
    assert _SYNC.successResultOf(opening) is leg


def test_a_stream_backend_on_an_ip_is_dialled_directly_with_its_bind_address() -> None:
    reactor = MemoryReactorClock()
    backend = parse_backend("tcp:host=\\:\\:1:port=5900:bindAddress=\\:\\:2")
    StreamConnector(reactor, RouteSettings(), backend).connect(BackendRequest())  # type: ignore[arg-type]
    [(host, port, factory, timeout, bind)] = reactor.tcpClients
    assert (host, port, timeout, bind) == ("::1", 5900, None, ("::2", 0))
    assert isinstance(factory.buildProtocol(None), StreamLeg)


def test_a_backend_refusal_after_a_direct_dial_names_the_backend() -> None:
    reactor = MemoryReactorClock()
    backend = parse_backend("ws://127.0.0.1:9000/")
    opening = BackendConnector(reactor, RouteSettings(), backend).connect(BackendRequest())  # type: ignore[arg-type]
    [(_, _, factory, _, _)] = reactor.tcpClients
    leg = factory.buildProtocol(None)
    transport = FakeTransport(leg, isServer=False)
    leg.makeConnection(transport)
    leg.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    leg.connectionLost(Failure(ConnectionRefusedError()))
    error = _SYNC.failureResultOf(opening, BackendError).value
    assert (error.status, error.backend) == (403, "ws://127.0.0.1:9000/")


def test_a_direct_stream_dial_keeps_the_strings_own_timeout() -> None:
    """``tcp:...:timeout=2`` still bounds the connect at 2 s when the route's
    connect_timeout is longer (the endpoint's own timer did before)."""
    reactor = MemoryReactorClock()
    backend = parse_backend("tcp:127.0.0.1:5900:timeout=2")
    settings = RouteSettings(connect_timeout=10.0)
    opening = StreamConnector(reactor, settings, backend).connect(BackendRequest())  # type: ignore[arg-type]
    reactor.advance(1.9)
    _SYNC.assertNoResult(opening)
    reactor.advance(0.1)
    assert _SYNC.failureResultOf(opening, BackendError).value.status == 504
