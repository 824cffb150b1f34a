"""The client leg: an Autobahn server that opens the backend before it answers.

The client's 101 is sent only once the backend accepted, so it carries the
backend's subprotocol and cookies; a backend refusal becomes the client's
HTTP error. The client's socket stays paused meanwhile, so nothing it sends
early is lost, reordered, or buffered without bound.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgate import _deflate, _headers
from wsgate._closecodes import Side
from wsgate._config import AnyBackend, RouteSettings, StreamBackend
from wsgate._frontdoor import DoorFactory, FrontDoor
from wsgate._liveroutes import BackendRequest, ListenerRoutes, Request
from wsgate._relay import Relay
from wsgate._wsleg import RelayedLeg, leg_options, with_options

_log = Logger(namespace="wsgate")


class FrontendProtocol(RelayedLeg, FrontDoor):  # type: ignore[misc]
    side = Side.CLIENT
    factory: FrontendFactory

    _backend: Any = None  # BackendProtocol or StreamLeg
    _connecting: defer.Deferred[Any] | None = None
    _request: ConnectionRequest | None = None
    _chosen: AnyBackend | None = None
    _counted: bool = False  # in its backend's active count
    request_id: str = "-"  # X-Request-Id, set when the backend is opened
    #: What the open log line said, repeated as fields of the close event.
    _opened_fields: dict[str, Any] | None = None
    _connect_started: float = 0.0
    # _connecting is None by then: its class default.
    _handshake_only = ("_head", "_route_path", "_connect_started", "_connecting")

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
        self.deflate_policy = settings.client_deflate
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
        # The connection's id: the client's (or an earlier proxy's) if it sent
        # one, for its log lines and the backend's.
        self.request_id = headers.setdefault("x-request-id", os.urandom(8).hex())
        for name in settings.remove_headers:
            headers.pop(name, None)
        headers.update((name, _headers.as_latin1(value)) for name, value in settings.add_headers)
        path = live.backend_path(self._route_path)
        query = self._head.target.partition("?")[2]

        def open_leg(client: Request | None) -> defer.Deferred[Any]:
            # After the authenticators: they may add a header (the identity).
            backend_request = BackendRequest(
                path=path,
                query=query,
                headers=headers,
                subprotocols=tuple(protocols),
                origin=origin,
                useragent=request_headers.get("user-agent"),
            )
            self._connect_started = self.factory.clock.seconds()
            return live.open(backend_request, client, self._retrying)

        connecting = self._connecting = self._admit_then(headers, open_leg)
        # It may fire at once (an unknown token): return this Deferred, not
        # the attribute the callbacks reset.
        connecting.addCallbacks(self._backend_open, self._backend_failed)
        return connecting

    def _backend_open(
        self, opened: tuple[Any, AnyBackend]
    ) -> tuple[str | None, dict[str, list[str]]]:
        backend, self._chosen = opened
        if self._live is not None:
            self.factory.connections.tally.backend_connected(
                self._live.route.name, self.factory.clock.seconds() - self._connect_started
            )
        self._binary_only = isinstance(self._chosen, StreamBackend) and not backend.base64
        self._connecting = None
        self._backend = backend
        self.relay = backend.relay = Relay(self, backend, self.factory.clock, self._finished)
        response_headers = _headers.client_response_headers(
            getattr(backend, "http_response_data", b"")
        )
        return backend.websocket_protocol_in_use, response_headers

    def _backend_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._refuse(failure)

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        if self._binary_only and not isBinary:
            self._fail_connection(1003, "this backend takes binary messages only")

    def onOpen(self) -> None:
        backend = self._backend
        assert backend is not None and self.relay is not None
        self._opened_fields = {
            "user": (self._identity.name if self._identity is not None else "") or "-",
            "route": self._live.route.name if self._live else "-",
            "backend": self._chosen.url if self._chosen else "-",
            "subprotocol": self.websocket_protocol_in_use,
            "client_ext": _deflate.describe_in_use(self.websocket_extensions_in_use),
            "backend_ext": _deflate.describe_in_use(backend.websocket_extensions_in_use),
        }
        fields = dict(
            self._opened_fields, peer=self.peer, path=self._path(), request_id=self.request_id
        )
        _log.info(_TEXT, event="open", log_wsgate_text=_Text(_OPEN, fields), **fields)
        tally = self.factory.connections.tally
        route = self._opened_fields["route"]
        tally.opened[route] += 1
        if self.websocket_extensions_in_use:
            tally.deflate[(route, "client")] += 1
        if getattr(backend, "websocket_extensions_in_use", None):
            tally.deflate[(route, "backend")] += 1
        if self._live is not None and self._chosen is not None:
            if self._live.pool is not None:
                self._live.pool.opened(self._chosen)
            self._counted = True
            self.relay.idle_timeout(self._live.route.settings.idle_timeout)
        self.relay.start()
        if self._live is not None:
            settings = self._live.route.settings
            for leg in (self, backend):
                if isinstance(leg, RelayedLeg):
                    leg.keep_alive(
                        self.factory.clock, settings.ping_interval, settings.ping_timeout
                    )
        self.shed_handshake()
        if isinstance(backend, RelayedLeg):
            backend.shed_handshake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.relay is None and self._backend is not None:
            self._backend.dropConnection(abort=True)
        super().onClose(wasClean, code, reason)

    def _ended(self) -> bool:
        return self.relay is None or self.relay.finished

    def go_away(self) -> float | None:
        if self.relay is None or self._live is None:
            return super().go_away()  # not a WebSocket yet
        if not self.relay.go_away():
            return None
        return self._live.route.settings.drain_timeout

    def drop(self) -> None:
        backend = self._backend
        if backend is not None and backend.transport is not None:
            backend.transport.abortConnection()
        super().drop()

    def sample(self) -> tuple[str, dict[tuple[str, str], tuple[int, int, int]]] | None:
        """(route, ``_tally.Figures``) of an open connection, read at a metrics scrape."""
        relay, fields = self.relay, self._opened_fields
        if relay is None or fields is None:
            return None
        up, down = relay.stats.upstream, relay.stats.downstream
        backend = self._backend
        wire = {
            ("client", "in"): self.wire_in,
            ("client", "out"): self.wire_out,
            # A stream backend's bytes are its messages' bytes.
            ("backend", "in"): getattr(backend, "wire_in", down.bytes),
            ("backend", "out"): getattr(backend, "wire_out", up.bytes),
        }
        counts = self.factory.connections.tally.figures(
            (up.messages, up.bytes), (down.messages, down.bytes), wire
        )
        return fields["route"], counts

    def _finished(self, relay: Relay) -> None:
        self.factory.connections.discard(self)
        sampled = self.sample()
        if sampled is not None:
            route, counts = sampled
            tally = self.factory.connections.tally
            tally.add(route, counts)
            for side in (Side.CLIENT, Side.BACKEND):
                closed = relay.closed_with(side)
                if closed is not None and closed[0] is not None:
                    tally.closes[(route, side.value, closed[0])] += 1
        live, chosen = self._live, self._chosen
        if self._counted and live is not None and live.pool is not None and chosen is not None:
            live.pool.closed(chosen)
        first = relay.first_close
        up, down = relay.stats.upstream, relay.stats.downstream
        client_close, backend_close = (
            relay.closed_with(Side.CLIENT),
            relay.closed_with(Side.BACKEND),
        )
        fields = dict(
            self._opened_fields or {},
            request_id=self.request_id,
            client_close_sent=relay.sent_on(Side.CLIENT),
            client_close_received=client_close[0] if client_close else None,
            backend_close_sent=relay.sent_on(Side.BACKEND),
            backend_close_received=backend_close[0] if backend_close else None,
            peer=self.peer,
            path=self._path(),
            first=f"{first[0].value} {first[1].value}" if first else "none",
            client_close=_fmt_close(relay, Side.CLIENT),
            backend_close=_fmt_close(relay, Side.BACKEND),
            up_msgs=up.messages,
            up_bytes=up.bytes,
            down_msgs=down.messages,
            down_bytes=down.bytes,
            duration=relay.duration(),
        )
        _log.info(_TEXT, event="close", log_wsgate_text=_Text(_CLOSE, fields), **fields)


#: The connection's two log lines; their fields are the events' own fields.
_OPEN = (
    "open {peer} {path} -> {backend} user={user} subprotocol={subprotocol} "
    "client_ext=[{client_ext}] backend_ext=[{backend_ext}] route={route} id={request_id}"
)
_CLOSE = (
    "close {peer} {path}: first={first} client={client_close} backend={backend_close} "
    "up={up_msgs} msgs/{up_bytes} B down={down_msgs} msgs/{down_bytes} B "
    "in {duration:.3f} s id={request_id}"
)
#: What twisted.logger formats: one field, the line (``log_`` keys are not
#: repeated as fields by the JSON log, ``_jsonlog``).
_TEXT = "{log_wsgate_text}"


class _Text:
    """A log line made with ``str.format`` when an observer formats its event.

    twisted.logger's own formatter (``string.Formatter``, in Python, a few
    calls per field) took ~25 us for a line of 16 fields, twice per
    connection; ``str.format`` gives the same text in a tenth of that.
    Nothing is formatted when nobody reads the event.
    """

    __slots__ = ("_fields", "_format")

    def __init__(self, format: str, fields: dict[str, Any]) -> None:
        self._format = format
        self._fields = fields

    def __format__(self, spec: str) -> str:
        return format(self._format.format_map(self._fields), spec)

    def __str__(self) -> str:
        return self._format.format_map(self._fields)


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


class FrontendFactory(DoorFactory):
    """One per listener: its front door, whose upgrades become client legs."""

    protocol = FrontendProtocol  # type: ignore[assignment]

    def __init__(self, routes: ListenerRoutes, reactor: Any) -> None:
        super().__init__(routes, reactor)
        defaults = RouteSettings()
        # Per-route values (size limit, close timeout, deflate) are set on
        # each connection once it is routed.
        self.setProtocolOptions(
            versions=[8, 13],
            webStatus=False,
            **leg_options(defaults),
            openHandshakeTimeout=0,  # FrontDoor runs the request head's timer itself
            requireMaskedClientFrames=True,
            maskServerFrames=False,
            allowedOrigins=["*"],
            allowNullOrigin=True,
            trustXForwardedFor=0,
            maxConnections=0,
            perMessageCompressionAccept=_deflate.server_accept(defaults.client_deflate),
        )
        self.server = None
        self.protocol = with_options(FrontendProtocol, self)
