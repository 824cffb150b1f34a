"""The backend leg: an Autobahn client (ws:// or wss://) opened per client.

``BackendConnector.connect`` opens the leg and fires once the backend has
answered its opening handshake, or fails with a ``BackendError`` that says
which HTTP status the client should get (the backend's own refusal status,
502 when it cannot be reached, 504 when it is too slow).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from wsgate import _deflate
from wsgate._closecodes import Side
from wsgate._config import Backend, RouteSettings
from wsgate._tls import backend_tls_options, describe_tls_error, is_tls_error
from wsgate._wsleg import RelayedLeg, leg_options

_P = TypeVar("_P", bound=Protocol)


class BackendError(Exception):
    """The backend leg could not be opened; ``status`` is for the client's answer."""

    def __init__(
        self, status: int, reason: str, *, retryable: bool = False, local: bool = False
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        #: The backend did not get to answer (refused, timed out, TLS, dropped):
        #: another backend of the route may be tried, and this one's health suffers.
        self.retryable = retryable
        #: wsgate itself ran short (descriptors, buffers, ports): no backend is
        #: to blame, and the client may try again soon (503 with Retry-After).
        self.local = local
        self.backend = "?"


class BackendProtocol(RelayedLeg, WebSocketClientProtocol):  # type: ignore[misc]
    side = Side.BACKEND

    def __init__(self, request: ConnectingRequest) -> None:
        super().__init__()
        self._request = request
        self.opened: defer.Deferred[BackendProtocol] = defer.Deferred()
        self._refusal: BackendError | None = None

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        return self._request

    def processHandshake(self) -> Any:
        # Autobahn checks the backend's chosen subprotocol against the
        # factory's list, not this connection's: lend it ours for the check.
        factory = self.factory
        shared, factory.protocols = factory.protocols, self._request.protocols
        try:
            return super().processHandshake()
        finally:
            factory.protocols = shared

    def _actuallyStartHandshake(self, request_options: ConnectingRequest) -> None:
        # Autobahn writes the request head as UTF-8; header text here is the
        # client's bytes as latin-1 (see _httphead), so obs-text such as
        # "café" must go back as latin-1 or it arrives double-encoded.
        self.sendData = self._send_head  # type: ignore[method-assign]
        try:
            super()._actuallyStartHandshake(request_options)
        finally:
            del self.sendData

    def _send_head(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Text from the config beyond latin-1 stays UTF-8.
        with contextlib.suppress(UnicodeEncodeError):
            self.http_request_data = data = data.decode("utf-8").encode("latin-1")
        super().sendData(data, sync, chopsize)

    def onOpen(self) -> None:
        if not self.opened.called:
            self.opened.callback(self)

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", "") or ""
        parts = status_line.split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            status = int(parts[1])
            # The backend's own refusal crosses as it is (403 stays 403); a
            # backend error (5xx) or redirect is the gateway's failure: 502.
            code = status if 400 <= status < 500 else 502
            self._refusal = BackendError(code, f"backend refused the upgrade: {status_line}")
        else:
            self._refusal = BackendError(502, f"bad handshake from backend: {reason}")
        super().failHandshake(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            if self._refusal is not None:
                failure = self._refusal
            elif getattr(self, "wasOpenHandshakeTimeout", False):
                failure = BackendError(
                    504, "backend did not answer the WebSocket handshake in time", retryable=True
                )
            else:
                failure = BackendError(
                    502,
                    f"backend closed the connection during the handshake{_why(reason)}",
                    retryable=True,
                )
            self.opened.errback(failure)
        super().onClose(wasClean, code, reason)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        exc = reason.value
        if not self.opened.called and exc is not None and is_tls_error(exc):
            self._refusal = BackendError(
                502, f"backend TLS failed: {describe_tls_error(exc)}", retryable=True
            )
        super().connectionLost(reason)


def _why(reason: str | None) -> str:
    return f" ({reason})" if reason else ""


class BackendConnector:
    """Opens backend legs to one backend of a route, with the route's settings."""

    def __init__(self, reactor: Any, settings: RouteSettings, backend: Backend) -> None:
        self._backend = backend
        self._factory = WebSocketClientFactory(url=backend.url, reactor=reactor)
        policy = settings.backend_deflate
        self._factory.setProtocolOptions(
            **leg_options(settings),
            openHandshakeTimeout=settings.handshake_timeout,
            serverConnectionDropTimeout=settings.close_timeout,
            perMessageCompressionOffers=_deflate.client_offers(policy),
            perMessageCompressionAccept=_deflate.client_accept(policy),
        )
        self._tls = backend_tls_options(backend, settings) if backend.secure else None
        self._endpoint = _tcp_endpoint(
            reactor, backend.host, backend.port, settings.connect_timeout
        )

    def connect(
        self,
        resource: str,
        headers: Mapping[str, str],
        protocols: Sequence[str],
        origin: str | None,
        useragent: str | None,
    ) -> defer.Deferred[BackendProtocol]:
        backend = self._backend
        request = ConnectingRequest(
            host=backend.host,
            port=backend.port,
            resource=resource,
            headers=dict(headers),
            useragent=useragent,
            origin=origin,
            protocols=list(protocols),
        )
        protocol = BackendProtocol(request)
        protocol.factory = self._factory
        endpoint = self._endpoint
        if self._tls is not None:
            endpoint = wrapClientTLS(self._tls, endpoint)

        connecting = connect_protocol(endpoint, protocol)

        def connect_failed(failure: Failure) -> Failure:
            return connect_failure(failure, backend.url)

        def name_backend(failure: Failure) -> Failure:
            if isinstance(failure.value, BackendError):
                failure.value.backend = backend.url
            return failure

        connecting.addErrback(connect_failed)

        def cancel(d: defer.Deferred[BackendProtocol]) -> None:
            connecting.cancel()
            if protocol.transport is not None:
                protocol.dropConnection(abort=True)

        result: defer.Deferred[BackendProtocol] = defer.Deferred(cancel)
        connecting.addCallbacks(lambda _: protocol.opened, lambda f: f)
        connecting.addErrback(name_backend)
        connecting.chainDeferred(result)
        return result


def _tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An IP literal needs no name resolution: HostnameEndpoint would still
    hop to a thread for getaddrinfo (a third of a handshake's CPU)."""
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)  # type: ignore[return-value]
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)  # type: ignore[return-value]
    return HostnameEndpoint(reactor, host, port, timeout=timeout)  # type: ignore[return-value]


class _Given(Factory):
    """Hands out one protocol already made. Twisted's ``connectProtocol``
    defines a new factory *class* on every call, and the connection keeps it:
    2.7 KiB per connection, more than a tenth of what an idle one costs."""

    noisy = False  # no "Starting factory" / "Stopping factory" per backend connection

    def __init__(self, made: Protocol) -> None:
        self._made = made

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._made


def connect_protocol(endpoint: Any, made: _P) -> defer.Deferred[_P]:
    """``endpoint.connect`` for a protocol made beforehand."""
    return endpoint.connect(_Given(made))  # type: ignore[no-any-return]


#: Errors that say this host ran out of something, not that the backend failed.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EADDRNOTAVAIL})


def local_resource_error(exc: BaseException | None) -> int | None:
    """The errno of ``exc`` when it is a local shortage (out of descriptors,
    buffers or ports), else None. Twisted reports a socket() that failed as
    ``ConnectBindError(errno, text)`` and a failed connect() as ``ConnectError``
    with ``osError`` set; a plain ``OSError`` has ``errno``."""
    for number in (getattr(exc, "osError", None), getattr(exc, "errno", None)):
        if isinstance(number, int) and number in _LOCAL_ERRNOS:
            return number
    return None


def connect_failure(failure: Failure, url: str) -> Failure:
    """A failed TCP (or TLS) connect as the client's answer: 504 for a timeout,
    502 otherwise, both worth trying the next backend. A local shortage
    (EMFILE, ENFILE, ENOBUFS, EADDRNOTAVAIL) is 503 and not the backend's
    fault: no other backend is tried and none is marked failed. A cancel (the
    client went away) passes through."""
    if failure.check(defer.CancelledError):
        return failure
    number = local_resource_error(failure.value)
    if number is not None:
        exc = BackendError(
            503,
            f"wsgate is out of local resources ({errno.errorcode[number]}) "
            f"connecting to backend {url}",
            local=True,
        )
    elif failure.check(defer.TimeoutError, error.TimeoutError):
        exc = BackendError(504, f"connecting to backend {url} timed out", retryable=True)
    else:
        exc = BackendError(
            502, f"backend {url} unreachable: {_short(failure.value)}", retryable=True
        )
    exc.backend = url
    raise exc


def _short(exc: BaseException | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = [
    "BackendConnector",
    "BackendError",
    "BackendProtocol",
    "connect_failure",
    "connect_protocol",
    "local_resource_error",
]
