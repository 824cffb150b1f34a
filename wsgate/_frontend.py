"""The client leg: an Autobahn server that opens the backend before it answers.

The client's 101 is sent only once the backend accepted, so it carries the
backend's subprotocol and cookies; a backend refusal becomes the client's
HTTP error. The client's socket stays paused meanwhile, so nothing it sends
early is lost, reordered, or buffered without bound.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgate import _deflate, _headers
from wsgate._backend import BackendConnector, BackendError, BackendProtocol
from wsgate._closecodes import Side
from wsgate._config import Config
from wsgate._relay import Relay
from wsgate._wsleg import RelayedLeg, leg_options

_log = Logger(namespace="wsgate")

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    426: "Upgrade Required",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FrontendProtocol(RelayedLeg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT
    factory: FrontendFactory

    _backend: BackendProtocol | None = None
    _connecting: defer.Deferred[BackendProtocol] | None = None
    _request: ConnectionRequest | None = None

    def onConnect(self, request: ConnectionRequest) -> defer.Deferred[Any]:  # type: ignore[override]
        self._request = request
        self.pause_reading()
        self.websocket_extensions = _deflate.usable_extensions(self.websocket_extensions)
        connector = self.factory.connector
        peer = self.transport.getPeer()
        client = _headers.ClientRequest(
            headers=request.headers,
            peer_host=getattr(peer, "host", None),
            secure=ISSLTransport.providedBy(self.transport),
        )
        path, _, query = self.http_request_uri.partition("?")
        self._connecting = connector.connect(
            resource=connector.backend.resource_for(path, query),
            headers=_headers.backend_headers(client),
            protocols=_headers.join_subprotocols(request.protocols),
            origin=request.headers.get("origin"),
            useragent=request.headers.get("user-agent"),
        )
        self._connecting.addCallbacks(self._backend_open, self._backend_failed)
        return self._connecting

    def _backend_open(self, backend: BackendProtocol) -> tuple[str | None, dict[str, list[str]]]:
        self._connecting = None
        self._backend = backend
        self.relay = backend.relay = Relay(self, backend, self.factory.clock, self._finished)
        response_headers = _headers.client_response_headers(
            getattr(backend, "http_response_data", b"")
        )
        return backend.websocket_protocol_in_use, response_headers

    def _backend_failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError):
            raise ConnectionDeny(499, "client went away")
        exc = failure.value
        if isinstance(exc, BackendError):
            _log.warn(
                "{peer} {path}: backend {backend} not opened: {status} {reason}",
                peer=self.peer,
                path=self._path(),
                backend=self.factory.connector.url,
                status=exc.status,
                reason=exc.reason,
            )
            raise ConnectionDeny(exc.status, exc.reason)
        _log.failure("opening the backend failed", failure)
        raise ConnectionDeny(502, "backend could not be opened")

    def onOpen(self) -> None:
        backend = self._backend
        assert backend is not None and self.relay is not None
        _log.info(
            "open {peer} {path} -> {backend} subprotocol={subprotocol} "
            "client_ext=[{client_ext}] backend_ext=[{backend_ext}]",
            peer=self.peer,
            path=self._path(),
            backend=self.factory.connector.url,
            subprotocol=self.websocket_protocol_in_use,
            client_ext=_deflate.describe_in_use(self.websocket_extensions_in_use),
            backend_ext=_deflate.describe_in_use(backend.websocket_extensions_in_use),
        )
        self.relay.start()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.relay is None and self._backend is not None:
            self._backend.dropConnection(abort=True)
        super().onClose(wasClean, code, reason)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        # Autobahn puts the detail in the status line and sends no body; send
        # a standard status line with the detail as a small text body.
        if code == 499:  # client already gone
            return
        body = (reason.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if code == 426:
            lines.append("Upgrade: websocket")
        for name, value in responseHeaders or ():
            lines.append(f"{name}: {value}")
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body)

    def _finished(self, relay: Relay) -> None:
        first = relay.first_close
        client_close = relay.closed_with(Side.CLIENT)
        backend_close = relay.closed_with(Side.BACKEND)
        up, down = relay.stats.upstream, relay.stats.downstream
        _log.info(
            "close {peer} {path}: first={first} client={client} backend={backend} "
            "up={up_msgs} msgs/{up_bytes} B down={down_msgs} msgs/{down_bytes} B "
            "in {duration:.3f} s",
            peer=self.peer,
            path=self._path(),
            first=f"{first[0].value} {first[1].value}" if first else "none",
            client=_fmt_close(client_close),
            backend=_fmt_close(backend_close),
            up_msgs=up.messages,
            up_bytes=up.bytes,
            down_msgs=down.messages,
            down_bytes=down.bytes,
            duration=relay.duration(),
        )

    def _path(self) -> str:
        return getattr(self, "http_request_uri", "?")


def _fmt_close(close: tuple[int | None, str] | None) -> str:
    if close is None:
        return "-"
    code, reason = close
    return f"{code}{' ' + repr(reason) if reason else ''}"


@implementer(IProtocolNegotiationFactory)
class FrontendFactory(WebSocketServerFactory):  # type: ignore[misc]
    """One per listener. Offers ALPN http/1.1, which Chromium needs on TLS listeners."""

    protocol = FrontendProtocol  # type: ignore[assignment]

    def __init__(self, config: Config, connector: BackendConnector, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.connector = connector
        self.clock = reactor
        self.setProtocolOptions(
            versions=[8, 13],
            webStatus=False,
            **leg_options(config),
            openHandshakeTimeout=config.connect_timeout + config.handshake_timeout + 5,
            requireMaskedClientFrames=True,
            maskServerFrames=False,
            allowedOrigins=["*"],
            allowNullOrigin=True,
            trustXForwardedFor=0,
            maxConnections=0,
            perMessageCompressionAccept=_deflate.server_accept(config.client_deflate),
        )
        self.server = None

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]
