"""A listener's front door: what it answers before, or instead of, a WebSocket.

Every request head is checked strictly and routed here. Health, redirects,
static files and refusals (a bad head, no route, a backend that could not be
opened) are plain HTTP answers; an upgrade for a route goes on, with the
route's limits set, to the client leg (``_frontend``) built on this class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgate import _answers, _httphead, _web
from wsgate._admission import Refused, Request, forward_user
from wsgate._connect import BackendError
from wsgate._drain import Connections
from wsgate._liveroutes import AnyBackend, ListenerRoutes, LiveRoute
from wsgate._routing import normalize_host, normalize_path

_log = Logger(namespace="wsgate")

#: Longest request head read before it is refused with 431.
_MAX_REQUEST_HEAD = 64 * 1024
#: Retry-After of a 503 for a local shortage (out of file descriptors): soon
#: enough for a browser's reconnect, long enough for connections to close.
_RETRY_AFTER = 2
#: Seconds a connection accepted before a drain has to send its request head:
#: it gets an answer (a health check: 503 "draining") rather than a reset.
_DRAIN_GRACE = 1.0


class FrontDoor(WebSocketServerProtocol):  # type: ignore[misc]
    """Checks and routes a request head; answers all but a routed upgrade.

    The client leg subclasses it: a routed upgrade finds ``_live`` set and the
    route's limits applied, and a backend that did not open is ``_refuse``d.
    """

    factory: DoorFactory

    _head: _httphead.Head | None = None  # checked: what is routed on and forwarded
    _route_path = "/"  # normalised: what the route is chosen on and the backend gets
    _live: LiveRoute | None = None
    _routed: bool = False
    _retry_after: int | None = None  # seconds, on a 503 for a local shortage
    _refusal_headers: tuple[tuple[str, str], ...] = ()  # a plugin's, e.g. WWW-Authenticate
    _identity: Any = None  # interfaces.Identity, once the route's authenticators passed

    # -- routing, before Autobahn looks at the request --------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)
        # The listener's request-head deadline, on our clock: Autobahn's own
        # timer (off in the factory) rounds down to whole seconds (0.5 s
        # fires at once, 2 s after 1), and goes through txaio's batches.
        timeout = self.factory.routes.listener.request_timeout
        if timeout > 0:
            self.openHandshakeTimeoutCall = self.factory.clock.callLater(
                timeout, self.onOpenHandshakeTimeout
            )

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
        # Behind a haproxy: listener the PROXY header has been read by now;
        # Autobahn took the peer's address at connect, before it was.
        if self.transport is not None:
            self.peer = peer2str(self.transport)
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
            if self.factory.connections.draining:
                return self._respond(503, b'{"status": "draining"}\n', "application/json")
            return self._respond(*routes.health(), "application/json")
        if self.factory.connections.draining:
            self._retry_after = _RETRY_AFTER
            return self.failHandshake("draining: this instance is shutting down", 503)
        if listener.redirect is not None:
            return self._redirect(listener.redirect, host, parts)
        if listener.web is not None and not _web.is_upgrade(headers):
            return self._serve_web()
        live = routes.router.match(host, self._route_path)
        if live is None:
            where = (host or "") + parts.path
            return self.failHandshake(f"no route for {where}", 404)
        transport: Any = self.transport
        peer = transport.getPeer()  # behind haproxy:, the address PROXY sent
        over = self.factory.connections.admit(self, str(getattr(peer, "host", peer)))
        if over is not None:
            self._retry_after = _RETRY_AFTER
            return self.failHandshake(over, 503)
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
        self.factory.connections.discard(self)  # twisted.web's now
        data, self.data = self.data, b""
        _web.hand_over(self.transport, self.factory.web_site(), data)

    def _restart_handshake_timer(self, seconds: float) -> None:
        call = getattr(self, "openHandshakeTimeoutCall", None)
        if call is not None and call.active():
            call.reset(seconds)  # later: the reactor only notes the new time

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
        self.sendData(_answers.plain(code, body, content_type, headers or ()))
        self.wasClean = True  # see failHandshake
        self.dropConnection(abort=False)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """An HTTP answer ends the connection as meant: one log line (Autobahn's
        "failing WebSocket opening handshake"), not also the "dropping connection
        ... with abort=False" warning, which stays for connections that end
        without a closing handshake by accident (a handshake timeout, say)."""
        self.wasClean = True
        self.factory.connections.tally.handshake_failures[code] += 1
        super().failHandshake(reason, code, responseHeaders)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        # Autobahn puts the detail in the status line and sends no body; send
        # a standard status line with the detail as a small text body.
        if code == 499:  # client already gone
            return
        headers = responseHeaders or self._refusal_headers
        self.sendData(_answers.refusal(code, reason, headers, self._retry_after))

    # -- plugins: authenticators and token sources (``_admission``) --------------

    def _plugin_request(self) -> Request:
        """The request as plugins see it: no Autobahn, no transport."""
        assert self._head is not None and self._live is not None
        from wsgate._liveroutes import route_label

        cert = None
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport):
            peer_cert = transport.getPeerCertificate()
            cert = peer_cert.to_cryptography() if peer_cert is not None else None
        return Request(
            method=self._head.method,
            path=self._route_path,
            query=self._head.target.partition("?")[2],
            headers=self._head.headers(),
            client=getattr(transport.getPeer(), "host", None),
            route=route_label(self._live.hosts, self._live.prefix),
            peer_certificate=cert,
        )

    def _admit_then(
        self,
        headers: dict[str, str],
        open_leg: Callable[[Request | None], defer.Deferred[Any]],
    ) -> defer.Deferred[Any]:
        """Run the route's authenticators, then ``open_leg`` (which asks the
        token source, if any): no backend is contacted for a refused client."""
        live = self._live
        assert live is not None
        gate = live.gate
        if not gate.authenticators and gate.source is None:
            # No plugin to ask (most routes): no request made for one, no coroutine.
            forward_user(headers, live.route.settings.forward_user_header, None)
            return open_leg(None)
        request = self._plugin_request()

        async def admit() -> Any:
            self._identity = await live.gate.admit(request)
            identity = self._identity if self._identity and self._identity.name else None
            forward_user(headers, live.route.settings.forward_user_header, identity)
            return await open_leg(request)

        return defer.Deferred.fromCoroutine(admit())

    def _retrying(self, backend: AnyBackend, e: BackendError) -> None:
        _log.warn(
            "{peer} {path}: backend {backend} failed, trying the next: {status} {reason}",
            peer=self.peer,
            path=self._path(),
            backend=backend.url,
            status=e.status,
            reason=e.reason,
        )

    def _refuse(self, failure: Failure) -> NoReturn:
        """The client's answer for a backend leg that did not open."""
        if failure.check(defer.CancelledError):
            raise ConnectionDeny(499, "client went away")
        exc = failure.value
        if isinstance(exc, Refused):
            self._refusal_headers = tuple(exc.headers.items())
            live = self._live
            route = live.route.name if live is not None else "-"
            self.factory.connections.tally.auth_failures[(route, exc.plugin, exc.status)] += 1
            _log.warn(
                "{peer} {path}: refused by {plugin}: {status} {reason}{detail}",
                peer=self.peer,
                path=self._path(),
                plugin=exc.plugin,
                status=exc.status,
                reason=exc.reason,
                detail=f" ({exc.detail})" if exc.detail else "",
            )
            raise ConnectionDeny(exc.status, exc.reason)
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

    def _path(self) -> str:
        return getattr(self, "http_request_uri", "?")

    # -- drain ---------------------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if self._ended():
            self.factory.connections.discard(self)

    def _ended(self) -> bool:
        """Whether the connection is over once its client's TCP connection is."""
        return True

    def go_away(self) -> float | None:
        """The process is draining: a request head still to come gets a
        moment to arrive and be answered; an upgrade whose backend is being
        opened is dropped."""
        return None if self._routed else _DRAIN_GRACE

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


@implementer(IProtocolNegotiationFactory)
class DoorFactory(WebSocketServerFactory):  # type: ignore[misc]
    """One per listener. Offers ALPN http/1.1, which Chromium needs on TLS listeners."""

    def __init__(self, routes: ListenerRoutes, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        #: Replaced whole by a reload; each connection reads it once, when routed.
        self.routes = routes
        self.clock = reactor
        #: Every client connection of the process (the service shares one).
        self.connections = Connections()
        self._site: tuple[tuple[Any, ...], Any] | None = None

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
