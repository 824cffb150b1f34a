"""The raw stream backend leg: a TCP (or unix, or TLS) connection, websockify style.

Bytes from the stream go to the client as binary messages (what one read
returned, cut at ``_MAX_MESSAGE``), or as base64 text for clients that chose
websockify's old ``base64`` subprotocol; the client's messages are written
to the stream as they arrive. Backpressure is the relay's, portforward
style. A clean EOF from the server closes the client with 1000; a reset
with 1011; a client's close half-closes the stream, and the server's EOF
(or ``close_timeout``) finishes it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error, interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgate import _sockets, _speedups
from wsgate._closecodes import Cause, Close, Side
from wsgate._config import RouteSettings, StreamBackend
from wsgate._connect import BackendRequest, Connector, stream_address, stream_endpoint
from wsgate._relay import TransportLeg

_log = Logger(namespace="wsgate")

#: Largest message made from one read of the stream.
_MAX_MESSAGE = 64 * 1024
#: Most bytes held from the stream before the relay runs. The transport is
#: paused then, so only what it had already read (or a TLS layer had already
#: decrypted) arrives: one read's worth. More means pausing did not hold.
_MAX_EARLY = 1024 * 1024

#: Subprotocols a stream backend answers, as websockify does: raw binary, or
#: base64 text for old noVNC clients.
BINARY, BASE64 = "binary", "base64"


def choose_subprotocol(offered: Sequence[str]) -> str | None:
    """``binary`` if offered, else ``base64`` if offered, else none (noVNC 1.7
    offers none and sends binary)."""
    if BINARY in offered:
        return BINARY
    if BASE64 in offered:
        return BASE64
    return None


@implementer(interfaces.IHalfCloseableProtocol)
class StreamLeg(TransportLeg, protocol.Protocol):
    """One client's connection to a stream backend: a relay ``Leg``."""

    side = Side.BACKEND
    #: What the frontend's open log line and 101 answer ask of a backend leg.
    websocket_extensions_in_use: tuple[()] = ()
    http_response_data = b""

    def __init__(self, subprotocol: str | None, clock: Any, close_timeout: float) -> None:
        self.websocket_protocol_in_use = subprotocol
        self._base64 = self.base64 = subprotocol == BASE64
        self._clock = clock
        self._close_timeout = close_timeout
        self._pending = b""  # base64 text not yet a multiple of 4 characters
        self._closing_call: Any = None
        #: What the stream said before the relay existed, in order, and how it
        #: ended if it did: delivered once the relay starts reading.
        self._early: list[bytes] = []
        self._early_size = 0
        self._early_eof = False
        self._early_loss: Failure | None = None
        self.opened: defer.Deferred[StreamLeg] = defer.Deferred()

    # -- the stream ---------------------------------------------------------------

    def connectionMade(self) -> None:
        _sockets.no_delay(self.transport)
        _sockets.keep_alive(self.transport)
        # Servers (VNC) speak first: hold it until the client's leg is open.
        self.transport.pauseProducing()
        self.opened.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if len(data) >= _sockets.BIG_READ:
            _sockets.quick_ack(self.transport)
        relay = self.relay
        if relay is None:
            self._early_size += len(data)
            if self._early_size > _MAX_EARLY:
                _log.warn(
                    "stream backend sent over {limit} bytes before the client's leg "
                    "opened: dropping it",
                    limit=_MAX_EARLY,
                )
                self._early.clear()
                self.transport.abortConnection()
                return
            self._early.append(data)
            return
        if self._early:
            self._deliver_early()
        binary = not self._base64
        for start in range(0, len(data), _MAX_MESSAGE):
            chunk = data[start : start + _MAX_MESSAGE]
            relay.message_begin(Side.BACKEND, binary)
            relay.message_data(
                Side.BACKEND, base64.b64encode(chunk) if self._base64 else chunk, True
            )

    def _deliver_early(self) -> None:
        """The relay runs: pass on what the stream said (and did) before."""
        early, self._early = self._early, []
        for data in early:
            self.dataReceived(data)
        if self._early_eof:
            self._early_eof = False
            self.readConnectionLost()
        loss, self._early_loss = self._early_loss, None
        if loss is not None:
            self.connectionLost(loss)

    def readConnectionLost(self) -> None:
        """The server sent EOF: it has said all it will."""
        if self.relay is None:
            self._early_eof = True
            return
        if self._closing_call is not None:  # and we had closed our side: done
            self.transport.loseConnection()
            return
        self._tell_ending(Cause.PEER_CLOSED, 1000, "")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.relay is None:
            self._early_loss = reason
            return
        if self._closing_call is not None and self._closing_call.active():
            self._closing_call.cancel()
        if reason.check(error.ConnectionDone):
            self._tell_ending(Cause.PEER_CLOSED, 1000, "")
            code, why = 1000, ""
        else:
            why = reason.getErrorMessage()
            self._tell_ending(Cause.DROPPED, 1006, why)
            code = 1006
        if self.relay is not None:
            self.relay.leg_closed(Side.BACKEND, code, why)

    # -- from the relay (the client's messages) ----------------------------------

    def send_begin(self, binary: bool) -> None:
        pass  # a stream has no message boundaries

    def send_data(self, data: bytes, final: bool) -> None:
        if self._base64:
            text = self._pending + data
            usable = len(text) - len(text) % 4 if not final else len(text)
            self._pending = text[usable:]
            try:
                data = base64.b64decode(text[:usable], validate=True)
            except (binascii.Error, ValueError):
                self._fail_client("a base64 message was not valid base64")
                return
        if data and self.transport is not None:
            _speedups.write(self.transport, data)

    def _fail_client(self, reason: str) -> None:
        if self.relay is not None:
            self.relay.leg(Side.CLIENT).fail(1007, reason)

    def send_close(self, close: Close) -> None:
        """The client closed: end our writing, let the server finish."""
        self._ending_told = True
        transport = self.transport
        if transport is None:
            return
        if interfaces.IHalfCloseableDescriptor.providedBy(transport) or hasattr(
            transport, "loseWriteConnection"
        ):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()
        self.resume_reading()
        self._closing_call = self._clock.callLater(self._close_timeout, self._abort)

    def _abort(self) -> None:
        self._closing_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def finish_ending(self) -> None:
        """The server ended first and the client has closed: close our side."""
        if self.transport is not None:
            self.transport.loseConnection()

    # -- flow control ---------------------------------------------------------------

    def resume_reading(self) -> None:
        if self.relay is not None and (self._early or self._early_eof or self._early_loss):
            self._deliver_early()
        super().resume_reading()

    def dropConnection(self, abort: bool = True) -> None:
        """What the frontend calls on a backend leg the client never used."""
        if self.transport is not None:
            self.transport.abortConnection()


class StreamConnector(Connector[StreamLeg]):
    """Opens stream legs to one backend (a Twisted client endpoint string)."""

    def __init__(self, reactor: Any, settings: RouteSettings, backend: StreamBackend) -> None:
        self._reactor = reactor
        self._close_timeout = settings.close_timeout
        to = stream_endpoint(reactor, backend.endpoint)
        direct = stream_address(backend.endpoint)
        if direct is None:
            super().__init__(reactor, backend.url, to, settings.connect_timeout, self._leg)
            return
        # The endpoint string's timeout= bounds the connect too, as the
        # endpoint's own timer did.
        address, own_timeout = direct
        timeout = min(settings.connect_timeout, own_timeout)
        super().__init__(reactor, backend.url, to, timeout, self._leg, address)

    def _leg(self, request: BackendRequest) -> StreamLeg:
        return StreamLeg(
            choose_subprotocol(request.subprotocols), self._reactor, self._close_timeout
        )


__all__ = ["BASE64", "BINARY", "StreamConnector", "StreamLeg", "choose_subprotocol"]
