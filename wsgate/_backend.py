"""The WebSocket backend leg: an Autobahn client (ws:// or wss://) opened per client.

``BackendConnector.connect`` opens the leg (through ``_connect``) and fires
once the backend has answered its opening handshake, or fails with a
``BackendError`` that says which HTTP status the client should get (the
backend's own refusal status, 502 when it cannot be reached, 504 when it is
too slow). ``connector_for`` picks this leg or the stream leg (``_tcpleg``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.internet import defer, error
from twisted.python.failure import Failure

from wsgate import _deflate
from wsgate._closecodes import Side
from wsgate._config import AnyBackend, Backend, RouteSettings, StreamBackend
from wsgate._connect import BackendError, BackendRequest, Connector, endpoint, ip_address
from wsgate._tcpleg import StreamConnector
from wsgate._tls import backend_tls_options, describe_tls_error, is_tls_error
from wsgate._wsleg import RelayedLeg, leg_options, with_options


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


class BackendConnector(Connector[BackendProtocol]):
    """Opens WebSocket legs to one backend of a route, with the route's settings."""

    def __init__(self, reactor: Any, settings: RouteSettings, backend: Backend) -> None:
        self._backend = backend
        self._factory = WebSocketClientFactory(url=backend.url, reactor=reactor)
        self._deflate = policy = settings.backend_deflate
        self._factory.setProtocolOptions(
            **leg_options(settings),
            openHandshakeTimeout=settings.handshake_timeout,
            serverConnectionDropTimeout=settings.close_timeout,
            perMessageCompressionOffers=_deflate.client_offers(policy),
            perMessageCompressionAccept=_deflate.client_accept(policy),
        )
        self._protocol = with_options(BackendProtocol, self._factory)
        tls = backend_tls_options(backend, settings) if backend.secure else None
        timeout = settings.connect_timeout
        to = endpoint(reactor, backend.host, backend.port, timeout, tls=tls)
        address = ip_address(backend.host, backend.port) if tls is None else None
        super().__init__(reactor, backend.url, to, timeout, self._leg, address)

    def _leg(self, request: BackendRequest) -> BackendProtocol:
        backend = self._backend
        protocol = self._protocol(
            ConnectingRequest(
                host=backend.host,
                port=backend.port,
                resource=backend.resource_for(request.path, request.query),
                headers=dict(request.headers),
                useragent=request.useragent,
                origin=request.origin,
                protocols=list(request.subprotocols),
            )
        )
        protocol.factory = self._factory
        protocol.deflate_policy = self._deflate
        return protocol


def connector_for(
    reactor: Any, settings: RouteSettings, backend: AnyBackend
) -> BackendConnector | StreamConnector:
    """The connector for a backend: a WebSocket leg, or a stream leg."""
    if isinstance(backend, StreamBackend):
        return StreamConnector(reactor, settings, backend)
    return BackendConnector(reactor, settings, backend)


__all__ = ["BackendConnector", "BackendProtocol", "connector_for"]
