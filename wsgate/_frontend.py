"""The client leg: an Autobahn server that opens the backend before it answers.

The client's 101 is sent only once the backend accepted, so it carries the
backend's subprotocol and cookies; a backend refusal becomes the client's
HTTP error. The client's socket stays paused meanwhile, so nothing it sends
early is lost, reordered, or buffered without bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qs, urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgate import _deflate, _headers, _httphead, _web
from wsgate._backend import BackendError
from wsgate._closecodes import Side
from wsgate._config import AnyBackend, Listener, Route, RouteSettings, StreamBackend
from wsgate._pool import BackendPool
from wsgate._relay import Relay
from wsgate._routing import Router, normalize_host, normalize_path, rewrite_path
from wsgate._tcpleg import StreamLeg
from wsgate._tokens import TokenFile
from wsgate._wsleg import RelayedLeg, leg_options

_log = Logger(namespace="wsgate")

_REASONS = {
    200: "OK",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

#: Longest request head read before it is refused with 431.
_MAX_REQUEST_HEAD = 64 * 1024
#: Retry-After of a 503 for a local shortage (out of file descriptors): soon
#: enough for a browser's reconnect, long enough for connections to close.
_RETRY_AFTER = 2


class Connector(Protocol):
    """Opens one backend's legs (``BackendConnector``, ``StreamConnector``)."""

    def connect(
        self,
        resource: str,
        headers: Mapping[str, str],
        protocols: Sequence[str],
        origin: str | None,
        useragent: str | None,
    ) -> defer.Deferred[Any]: ...


class LiveRoute:
    """A configured route with what serves it: its backends' pool and connectors,
    or the token file that names its targets."""

    __slots__ = (
        "_make_connector",
        "_tokens_seen",
        "accept",
        "connectors",
        "hosts",
        "pool",
        "prefix",
        "route",
        "tokens",
    )

    def __init__(
        self,
        route: Route,
        pool: BackendPool[AnyBackend] | None,
        make_connector: Callable[[AnyBackend], Connector],
        tokens: TokenFile | None = None,
    ) -> None:
        self.route = route
        self.hosts = route.hosts
        self.prefix = route.prefix
        self.pool = pool
        self.tokens = tokens
        self._tokens_seen = -1
        self._make_connector = make_connector
        self.connectors = {b: make_connector(b) for b in route.backends}
        self.accept = _deflate.server_accept(route.settings.client_deflate)

    def candidates(self, path: str, query: str) -> list[AnyBackend]:
        """The backends to try in order; empty for an unknown token."""
        if self.tokens is None:
            assert self.pool is not None
            return self.pool.candidates()
        token = _token(self.prefix, path, query)
        target = self.tokens.lookup(token) if token else None
        if self.tokens.generation != self._tokens_seen:
            self._tokens_seen = self.tokens.generation
            for problem in self.tokens.problems:
                _log.warn("token file: {problem}", problem=problem)
        return [] if target is None else [StreamBackend(target.endpoint())]

    def connector(self, backend: AnyBackend) -> Connector:
        found = self.connectors.get(backend)
        return found if found is not None else self._make_connector(backend)

    def usable(self) -> bool:
        """Whether a client of this route would be tried on a backend that is
        not resting. A token route always is: its targets are not pooled."""
        return self.pool is None or self.pool.usable()

    def status(self) -> dict[str, object]:
        name = route_label(self.hosts, self.prefix)
        if self.tokens is not None:
            return {
                "route": name,
                "token_file": self.route.token_file,
                "tokens": self.tokens.tokens_count(),
            }
        assert self.pool is not None
        return {"route": name, "usable": self.pool.usable(), "backends": self.pool.status()}


def route_label(hosts: Sequence[str], prefix: str) -> str:
    """A route as people write it: ``app.example.com/app``, ``a.com,b.com/``,
    ``*/`` for any host. Unique on a listener, unlike the config's ``#1 (/)``."""
    return (",".join(hosts) or "*") + prefix


def _token(prefix: str, path: str, query: str) -> str | None:
    """websockify's ``?token=``, else the path segment after the route's prefix."""
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0]
    rest = path[len(prefix) :].strip("/") if path.startswith(prefix) else ""
    return rest.rsplit("/", 1)[-1] or None


@dataclass(frozen=True, slots=True)
class ListenerRoutes:
    """What one listener serves; a reload replaces it whole."""

    listener: Listener
    router: Router[LiveRoute]
    routes: tuple[LiveRoute, ...]

    def health(self) -> tuple[int, bytes]:
        """The health path's answer: ``degraded`` while some route has no usable
        backend (every one resting after failures), with 503 rather than 200
        if the listener asks for it."""
        degraded = not all(live.usable() for live in self.routes)
        status = {
            "status": "degraded" if degraded else "ok",
            "listener": self.listener.name,
            "routes": [live.status() for live in self.routes],
        }
        code = 503 if degraded and self.listener.health_fail_when_degraded else 200
        return code, json.dumps(status, indent=1).encode("utf-8") + b"\n"


class FrontendProtocol(RelayedLeg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT
    factory: FrontendFactory

    _backend: Any = None  # BackendProtocol or StreamLeg
    _binary_only: bool = False  # a stream backend without base64: text is refused
    _connecting: defer.Deferred[Any] | None = None
    _request: ConnectionRequest | None = None
    _head: _httphead.Head | None = None  # checked: what is routed on and forwarded
    _route_path = "/"  # normalised: what the route is chosen on and the backend gets
    _live: LiveRoute | None = None
    _chosen: AnyBackend | None = None
    _routed: bool = False
    _counted: bool = False  # in its backend's active count
    _retry_after: int | None = None  # seconds, on a 503 for a local shortage

    # -- routing, before Autobahn looks at the request --------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # The listener's request-head deadline, on our clock: Autobahn's own
        # timer rounds down to whole seconds (0.5 s fires at once, 2 s after 1).
        self._restart_handshake_timer(self.factory.routes.listener.request_timeout)

    def processHandshake(self) -> Any:
        if self._routed:
            return super().processHandshake()
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if len(self.data) > _MAX_REQUEST_HEAD:
                self._routed = True
                return self.failHandshake("request headers too large", 431)
            try:
                _httphead.check_partial(self.data)  # a bare LF is answered at once
            except _httphead.HeadError as e:
                self._routed = True
                return self.failHandshake(str(e), 400)
            return None
        self._routed = True
        if end > _MAX_REQUEST_HEAD:
            return self.failHandshake("request headers too large", 431)
        try:
            parts = self._check_head(end)
        except ValueError as e:
            return self.failHandshake(str(e), 400)
        routes = self.factory.routes
        listener = routes.listener
        assert self._head is not None
        headers = self._head.headers()
        host = normalize_host(headers.get("host"))
        if listener.health is not None and parts.path == listener.health:
            return self._respond(*routes.health(), "application/json")
        if listener.redirect is not None:
            return self._redirect(listener.redirect, host, parts)
        if listener.web is not None and not _web.is_upgrade(headers):
            return self._serve_web()
        live = routes.router.match(host, self._route_path)
        if live is None:
            where = (host or "") + parts.path
            return self.failHandshake(f"no route for {where}", 404)
        self._live = live
        settings = live.route.settings
        self.maxMessagePayloadSize = settings.autobahn_message_limit
        self.closeHandshakeTimeout = settings.close_timeout
        self.perMessageCompressionAccept = live.accept
        tries = max(1, len(live.route.backends))
        budget = tries * (settings.connect_timeout + settings.handshake_timeout)
        self._restart_handshake_timer(budget + 5)
        return super().processHandshake()

    def _check_head(self, end: int) -> SplitResult:
        """Check the head's bytes and normalise its path (``ValueError``: 400).

        Autobahn then parses a copy whose obs-text cannot start a line; what
        wsgate routes on and forwards is this parse.
        """
        head = _httphead.parse_head(self.data[: end + 4])
        parts = urlsplit(head.target)
        self._route_path = normalize_path(parts.path or "/")
        self._head = head
        self.data = _httphead.autobahn_safe(self.data[: end + 4]) + self.data[end + 4 :]
        return parts._replace(path=self._route_path)

    def _serve_web(self) -> None:
        call = getattr(self, "openHandshakeTimeoutCall", None)
        if call is not None:
            call.cancel()
            self.openHandshakeTimeoutCall = None
        self.state = self.STATE_CLOSED  # this protocol is done with the connection
        data, self.data = self.data, b""
        _web.hand_over(self.transport, self.factory.web_site(), data)

    def _restart_handshake_timer(self, seconds: float) -> None:
        call = getattr(self, "openHandshakeTimeoutCall", None)
        if call is not None:
            call.cancel()
            self.openHandshakeTimeoutCall = self.factory.clock.callLater(
                seconds, self.onOpenHandshakeTimeout
            )

    def _redirect(self, base: str, host: str | None, parts: SplitResult) -> None:
        name = host or ""
        if ":" in name:
            name = f"[{name}]"
        location = base.replace("{host}", name).rstrip("/") + (parts.path or "/")
        if parts.query:
            location += "?" + parts.query
        self._respond(308, f"see {location}\n".encode(), "text/plain", [("Location", location)])

    def _respond(
        self,
        code: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}",
            f"Content-Type: {content_type}; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers or ())
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body)
        self.wasClean = True  # see failHandshake
        self.dropConnection(abort=False)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """An HTTP answer ends the connection as meant: one log line (Autobahn's
        "failing WebSocket opening handshake"), not also the "dropping connection
        ... with abort=False" warning, which stays for connections that end
        without a closing handshake by accident (a handshake timeout, say)."""
        self.wasClean = True
        super().failHandshake(reason, code, responseHeaders)

    # -- the WebSocket request: open the backend first ----------------------------

    def onConnect(self, request: ConnectionRequest) -> defer.Deferred[Any]:  # type: ignore[override]
        self._request = request
        live = self._live
        assert live is not None
        settings = live.route.settings
        assert self._head is not None
        request_headers = self._head.headers()
        origin = request_headers.get("origin")
        if not _headers.origin_allowed(settings.origins, origin):
            raise ConnectionDeny(403, f"origin {origin!r} is not allowed")
        protocols = _headers.join_subprotocols(request.protocols)
        if settings.subprotocols is not None and protocols:
            allowed = [p for p in protocols if p in settings.subprotocols]
            if not allowed:
                raise ConnectionDeny(
                    400,
                    f"subprotocol(s) {', '.join(protocols)} not allowed here; allowed: "
                    f"{', '.join(settings.subprotocols) or 'none'}",
                )
            protocols = allowed
        self.pause_reading()
        self.websocket_extensions = _deflate.usable_extensions(self.websocket_extensions)
        hint = _deflate.client_window_hint(self.websocket_extensions)
        if hint is not None:
            self.perMessageCompressionAccept = _deflate.server_accept(settings.client_deflate, hint)
        peer = self.transport.getPeer()
        client = _headers.ClientRequest(
            headers=request_headers,
            peer_host=getattr(peer, "host", None),
            secure=ISSLTransport.providedBy(self.transport),
            trusted=_headers.peer_trusted(
                self.factory.routes.listener.trust_forwarded_from, getattr(peer, "host", None)
            ),
        )
        headers = _headers.backend_headers(client)
        for name in settings.remove_headers:
            headers.pop(name, None)
        headers.update((name, _headers.as_latin1(value)) for name, value in settings.add_headers)
        query = self._head.target.partition("?")[2]
        path = rewrite_path(live.prefix, live.route.rewrite, self._route_path)
        connecting = self._connecting = defer.Deferred.fromCoroutine(
            self._open_backend(
                live,
                path,
                query,
                headers=headers,
                protocols=protocols,
                origin=origin,
                useragent=request_headers.get("user-agent"),
            )
        )
        # It may fire at once (an unknown token): return this Deferred, not
        # the attribute the callbacks reset.
        connecting.addCallbacks(self._backend_open, self._backend_failed)
        return connecting

    async def _open_backend(
        self, live: LiveRoute, path: str, query: str, **request: Any
    ) -> tuple[Any, AnyBackend]:
        """Try the route's backends in the pool's order until one opens."""
        candidates = live.candidates(path, query)
        if not candidates:
            raise BackendError(404, "unknown token")
        for n, backend in enumerate(candidates, 1):
            connector = live.connector(backend)
            try:
                protocol = await connector.connect(
                    resource=backend.resource_for(path, query), **request
                )
            except BackendError as e:
                if not e.retryable:
                    raise
                if live.pool is not None:
                    live.pool.failed(backend)
                if n == len(candidates):
                    raise
                _log.warn(
                    "{peer} {path}: backend {backend} failed, trying the next: {status} {reason}",
                    peer=self.peer,
                    path=self._path(),
                    backend=backend.url,
                    status=e.status,
                    reason=e.reason,
                )
                continue
            if live.pool is not None:
                live.pool.succeeded(backend)
            return protocol, backend
        raise AssertionError("not reached: the last failure is raised")

    def _backend_open(
        self, opened: tuple[Any, AnyBackend]
    ) -> tuple[str | None, dict[str, list[str]]]:
        backend, self._chosen = opened
        self._binary_only = isinstance(backend, StreamLeg) and not backend.base64
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
            if exc.local:
                self._retry_after = _RETRY_AFTER
            _log.warn(
                "{peer} {path}: backend {backend} not opened: {status} {reason}",
                peer=self.peer,
                path=self._path(),
                backend=exc.backend,
                status=exc.status,
                reason=exc.reason,
            )
            raise ConnectionDeny(exc.status, exc.reason)
        _log.failure("opening the backend failed", failure)
        raise ConnectionDeny(502, "backend could not be opened")

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        if self._binary_only and not isBinary:
            self._fail_connection(1003, "this backend takes binary messages only")

    def onOpen(self) -> None:
        backend = self._backend
        assert backend is not None and self.relay is not None
        _log.info(
            "open {peer} {path} -> {backend} subprotocol={subprotocol} "
            "client_ext=[{client_ext}] backend_ext=[{backend_ext}] route={route}",
            peer=self.peer,
            path=self._path(),
            route=self._live.route.name if self._live else "-",
            backend=self._chosen.url if self._chosen else "-",
            subprotocol=self.websocket_protocol_in_use,
            client_ext=_deflate.describe_in_use(self.websocket_extensions_in_use),
            backend_ext=_deflate.describe_in_use(backend.websocket_extensions_in_use),
        )
        if self._live is not None and self._chosen is not None:
            if self._live.pool is not None:
                self._live.pool.opened(self._chosen)
            self._counted = True
            self.relay.idle_timeout(self._live.route.settings.idle_timeout)
        self.relay.start()
        self.shed_handshake()
        if isinstance(backend, RelayedLeg):
            backend.shed_handshake()

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
        if code == 503 and self._retry_after is not None:
            lines.append(f"Retry-After: {self._retry_after}")
        for name, value in responseHeaders or ():
            lines.append(f"{name}: {value}")
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body)

    def _finished(self, relay: Relay) -> None:
        live, chosen = self._live, self._chosen
        if self._counted and live is not None and live.pool is not None and chosen is not None:
            live.pool.closed(chosen)
        first = relay.first_close
        up, down = relay.stats.upstream, relay.stats.downstream
        _log.info(
            "close {peer} {path}: first={first} client={client} backend={backend} "
            "up={up_msgs} msgs/{up_bytes} B down={down_msgs} msgs/{down_bytes} B "
            "in {duration:.3f} s",
            peer=self.peer,
            path=self._path(),
            first=f"{first[0].value} {first[1].value}" if first else "none",
            client=_fmt_close(relay, Side.CLIENT),
            backend=_fmt_close(relay, Side.BACKEND),
            up_msgs=up.messages,
            up_bytes=up.bytes,
            down_msgs=down.messages,
            down_bytes=down.bytes,
            duration=relay.duration(),
        )

    def _path(self) -> str:
        return getattr(self, "http_request_uri", "?")


def _fmt_close(relay: Relay, side: Side) -> str:
    """``sent 1011/recv 1011 'reason'``: what wsgate sent on the leg (left
    out when it sent no close frame) and what it received (1006: none)."""
    close = relay.closed_with(side)
    if close is None:
        return "-"
    code, reason = close
    sent = relay.sent_on(side)
    received = f"recv {code}{' ' + repr(reason) if reason else ''}"
    return received if sent is None else f"sent {sent}/{received}"


@implementer(IProtocolNegotiationFactory)
class FrontendFactory(WebSocketServerFactory):  # type: ignore[misc]
    """One per listener. Offers ALPN http/1.1, which Chromium needs on TLS listeners."""

    protocol = FrontendProtocol  # type: ignore[assignment]

    def __init__(self, routes: ListenerRoutes, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        #: Replaced whole by a reload; each connection reads it once, when routed.
        self.routes = routes
        self.clock = reactor
        self._site: tuple[tuple[Any, ...], Any] | None = None
        defaults = RouteSettings()
        # Per-route values (size limit, close timeout, deflate) are set on
        # each connection once it is routed.
        self.setProtocolOptions(
            versions=[8, 13],
            webStatus=False,
            **leg_options(defaults),
            openHandshakeTimeout=routes.listener.request_timeout,
            requireMaskedClientFrames=True,
            maskServerFrames=False,
            allowedOrigins=["*"],
            allowNullOrigin=True,
            trustXForwardedFor=0,
            maxConnections=0,
            perMessageCompressionAccept=_deflate.server_accept(defaults.client_deflate),
        )
        self.server = None

    @property
    def request_timeout(self) -> float:
        """Seconds a client has to send a request head: the WebSocket upgrade's
        and each plain HTTP request's on a ``web`` listener."""
        return self.routes.listener.request_timeout

    def web_site(self) -> Any:
        """The static site of the listener's ``web`` directory (rebuilt on reloads)."""
        listener = self.routes.listener
        key = (listener.web, listener.web_index, listener.web_follow_symlinks, self.request_timeout)
        if self._site is None or self._site[0] != key:
            assert listener.web is not None
            site = _web.make_site(
                listener.web,
                listener.web_index,
                self,
                follow_symlinks=listener.web_follow_symlinks,
                request_timeout=self.request_timeout,
                reactor=self.clock,
            )
            self._site = (key, site)
        return self._site[1]

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]
