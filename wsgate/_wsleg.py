"""What both WebSocket legs share: streaming in, framing out, closing.

Autobahn buffers whole messages unless every ``onMessage*`` hook is
overridden; here they pass each decoded piece to the relay as it arrives.
Outgoing pieces are written as complete frames with ``sendFrame``, so a
ping, pong or close can always go between them; Autobahn's own streaming
send API is not used because its ``endMessage`` sends a continuation frame
even when no frame was sent yet (wrong for an empty message).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, TypeVar

from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket import protocol as _autobahn
from autobahn.websocket.protocol import FrameHeader, WebSocketProtocol
from autobahn.websocket.xormasker import XorMaskerNull

from wsgate import _framepath, _sockets, _speedups
from wsgate._cdeflate import CompiledDeflate, DeflatePolicy, LeanDeflate
from wsgate._cdeflate import adopt as adopt_deflate
from wsgate._closecodes import (
    ABNORMAL,
    BAD_GATEWAY,
    NO_STATUS,
    Cause,
    Close,
    truncate_reason,
)
from wsgate._keepalive import Keepalive
from wsgate._relay import TransportLeg

if TYPE_CHECKING:
    from wsgate._config import RouteSettings
    from wsgate._relay import Clock

#: The payload of wsgate's own keepalive pings.
_PING_PAYLOAD = b"wsgate"

#: What only the opening handshake reads: the request and response heads,
#: their parsed headers, the offers, the key. About 2 KiB per open connection.
_HANDSHAKE_ONLY = (
    "_request",
    "_transport_details",  # read at connect and open (then transport_details is None)
    "_wskey",
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_request_host",
    "http_request_params",
    "http_request_path",
    "websocket_extensions",
    "websocket_key",
    "websocket_origin",
    "websocket_protocols",
)

#: An open leg's send queue until it queues something: empty, as Autobahn
#: reads it (``len``), and shared.
_NO_QUEUE: tuple[()] = ()

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED


class RelayedLeg(TransportLeg):
    """Mixin for an Autobahn (Twisted) protocol that is one leg of a relay.

    Must come before the Autobahn class in the bases.
    """

    _tail: bytes = b""
    _out_opcode: int = 1
    _out_first: bool = True
    #: A failure found on this leg, held back until the other leg has closed.
    _held: tuple[int, str] | None = None
    _in_close_frame: bool = False
    #: The close codes this leg sent and received, for the closing log line
    #: (1005: a close frame without a code; None: no close frame).
    _sent_code: int | None = None
    _received_code: int | None = None
    #: Aborts a connection whose FIN waits on a peer that reads nothing more.
    _fin_deadline: Any = None
    #: Autobahn sets this in onMessageBegin; a leg that failed skips that for
    #: the frames its peer still sent in the same read, and Autobahn's size
    #: accounting must not crash on them (wstest 5.x, fragmentation errors).
    message_data_total_length: int = 0
    #: Pings this leg's peer when it is quiet (``keep_alive``); None: off.
    _keepalive: Keepalive | None = None
    #: Why wsgate dropped this leg's TCP connection itself, for the log line.
    _dropped_why: str | None = None
    #: Bytes read from and written to this leg's socket (metrics).
    wire_in: int = 0
    wire_out: int = 0
    #: The compiled frame path (``wsgate._framecore``), or None for Autobahn's
    #: parser and ``sendFrame`` (tests set it per leg).
    _core: Any = _framepath.CORE
    #: This leg's compiled reader, made when the leg first reads while open.
    _reader: Any = None
    #: Whether the compiled reader holds the stream (else Autobahn's parser:
    #: before the leg opens, after a hand-off until the next message, closing).
    _compiled_reads: bool = False
    #: The compiled reader's message is compressed: this leg inflates it.
    _inflating: bool = False
    #: ... and checks its inflated text (with ``_utf8``, the compiled check,
    #: made for the leg's first compressed text message).
    _inflating_text: bool = False
    _utf8: Any = None
    #: Autobahn's validator's last verdict once it took over the inflated
    #: text (at its first bad byte, to name the octet index as it does; it
    #: then holds the message's state); None: the compiled check holds it.
    _utf8_last: tuple[bool, bool, int, int] | None = None
    #: ``CompiledDeflate.inflate_whole`` of this leg's deflate, on the
    #: compiled path: a whole compressed message in one call.
    _inflate_whole: Any = None

    #: Text messages are refused (a stream backend without base64: the
    #: client leg's ``onMessageBegin`` fails them).
    _binary_only: bool = False

    #: This leg's permessage-deflate policy (its threshold counts once open).
    deflate_policy: DeflatePolicy = DeflatePolicy()

    # Provided by the Autobahn protocol class this is mixed into.
    websocket_extensions_in_use: list[Any]
    state: int
    current_frame: Any
    current_frame_masker: Any
    inside_message: bool
    data: bytes
    _perMessageCompress: Any
    failedByMe: bool
    wasClean: bool
    closeHandshakeTimeout: float
    factory: Any
    remoteCloseCode: int | None
    remoteCloseReason: str | None
    send_queue: Any  # a deque, or _NO_QUEUE

    def connectionMade(self) -> None:
        _sockets.no_delay(self.transport)
        super().connectionMade()  # type: ignore[misc]

    def _onOpen(self) -> None:
        # Before any frame of the open connection: permessage-deflate that
        # compresses only what pays and drops its zlib states when idle.
        pmc = self._perMessageCompress
        if pmc is not None:
            lean = adopt_deflate(pmc, self.deflate_policy, self.factory.reactor, self._core)
            if isinstance(lean, CompiledDeflate):
                self._inflate_whole = lean.inflate_whole
            self._perMessageCompress = lean
            in_use = self.websocket_extensions_in_use
            in_use[:] = [lean if ext is pmc else ext for ext in in_use]
        super()._onOpen()  # type: ignore[misc]

    #: Autobahn's, dropped once open (``transport_details`` then says None).
    _transport_details: Any = None
    #: A leg class's own attributes that only its opening handshake reads.
    _handshake_only: tuple[str, ...] = ()

    def shed_handshake(self) -> None:
        """Drop what only the opening handshake needed, once the relay runs.

        A dict never shrinks on its own: the leg gets a copy sized for what
        is left (Autobahn's state and ours, some 80 attributes: the next
        size down, about 1.5 KiB less per leg).
        """
        attributes = self.__dict__
        for name in _HANDSHAKE_ONLY + self._handshake_only:
            attributes.pop(name, None)
        if not attributes.get("send_queue"):
            # Autobahn queues only chopped or synced writes, which the relay
            # never asks for: no empty deque (some 700 B) until one comes.
            attributes["send_queue"] = _NO_QUEUE
        self.__dict__ = dict(attributes)

    # -- keepalive -------------------------------------------------------------

    def keep_alive(self, clock: Clock, interval: float, timeout: float) -> None:
        """Ping this leg's peer after ``interval`` quiet seconds; drop it when
        no frame comes back within ``timeout`` (0 interval: never ping)."""
        if (
            interval > 0
            and self.state == _OPEN
            and self._keepalive is None
            and self.relay is not None
        ):
            self._keepalive = Keepalive(clock, interval, timeout, self)

    def keepalive_heard_at(self) -> float:
        assert self.relay is not None
        return self.relay.heard_at(self.side)

    def keepalive_ping(self) -> bool:
        if self.state != _OPEN or self._held is not None:
            return False  # closing: the close timeout watches the peer now
        self.sendPing(_PING_PAYLOAD)  # type: ignore[attr-defined]
        return True

    def keepalive_dead(self) -> None:
        """A ping went unanswered: the peer is gone. The other leg is told
        first (1011 to the client for a dead backend, 1001 to the backend for
        a dead client), then this TCP connection is dropped."""
        if self.state != _OPEN or self._keepalive is None:
            return
        self._dropped_why = f"no pong within {self._keepalive.timeout:g} s"
        self._tell_ending(Cause.DROPPED, None, self._dropped_why)
        self.transport.abortConnection()

    # -- incoming: stream every piece to the relay ---------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        if self._held is not None:
            return
        super().onMessageBegin(isBinary)  # type: ignore[misc]  # size accounting
        self._tail = b""
        if self.relay is not None:
            self.relay.message_begin(self.side, isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        if self._held is not None:
            return
        super().onMessageFrameBegin(length)  # type: ignore[misc]  # size limit check

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._held is not None:
            return
        frame = self.current_frame
        if frame.fin and self.current_frame_masker.pointer() == frame.length:
            # The message's last piece: hold it until Autobahn has checked the
            # message's end (UTF-8 complete, deflate trailer), then send it as
            # the final frame, so one small message stays one frame.
            self._tail = payload
        elif payload and self.relay is not None:
            self.relay.message_data(self.side, payload, False)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        tail, self._tail = self._tail, b""
        if self.relay is not None and self._held is None:
            self.relay.message_data(self.side, tail, True)

    # -- outgoing: complete frames only ---------------------------------------

    def send_begin(self, binary: bool) -> None:
        self._out_opcode = 2 if binary else 1
        self._out_first = True
        if self.state == _OPEN and self._perMessageCompress is not None:
            self._perMessageCompress.begin()

    def send_data(self, data: bytes, final: bool) -> None:
        if self.state != _OPEN:
            return
        pmc = self._perMessageCompress
        # None: this message goes out uncompressed (too short, or it did not
        # shrink: see _leandeflate).
        compressed = pmc.deflate(data, final) if pmc is not None else None
        payload = compressed if compressed is not None else data
        if not payload and not final:
            return
        if self._out_first:
            self._out_first = False
            opcode, rsv = self._out_opcode, (4 if compressed is not None else 0)
        else:
            opcode, rsv = 0, 0
        self._send_frame(opcode, payload, final, rsv)

    def send_message(self, binary: bool, data: bytes) -> None:
        # send_begin and send_data(data, True), in fewer calls.
        if self.state != _OPEN:
            return
        pmc = self._perMessageCompress
        if pmc is not None:
            compressed = pmc.deflate_whole(data)
            if compressed is not None:
                self._send_frame(2 if binary else 1, compressed, True, 4)
                return
        self._send_frame(2 if binary else 1, data, True, 0)

    def _send_frame(self, opcode: int, payload: bytes, fin: bool, rsv: int) -> None:
        core = self._core
        if core is None:
            self.sendFrame(opcode=opcode, payload=payload, fin=fin, rsv=rsv)  # type: ignore[attr-defined]
            return
        masked = self.maskServerFrames if self.factory.isServer else self.maskClientFrames  # type: ignore[attr-defined]
        self.sendData(core.frame(opcode, payload, fin, rsv, masked))

    def send_close(self, close: Close) -> None:
        if self.state == _OPEN:
            self.sendCloseFrame(  # type: ignore[attr-defined]
                code=close.code, reasonUtf8=close.reason_bytes(), isReply=False
            )
        elif self.state != _CLOSED and self.state != _CLOSING:
            self.dropConnection(abort=True)  # type: ignore[attr-defined]

    # -- flow control ----------------------------------------------------------

    def _may_read(self) -> bool:
        return self.state != _CLOSED

    def pause_reading(self) -> None:
        super().pause_reading()
        if self._keepalive is not None:
            self._keepalive.pause()

    def resume_reading(self) -> None:
        super().resume_reading()
        if self._keepalive is not None:
            self._keepalive.resume()

    # -- endings ---------------------------------------------------------------

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        # Autobahn's hook for every failure it detects (protocol error, bad
        # UTF-8, too big). The other leg is closed first, so what its peer
        # sent before our close (say, the echo of this peer's last good
        # message) still reaches this peer; then this leg fails with its code.
        if self._held is not None:
            return
        relay = self.relay
        if (
            self.state == _OPEN
            and relay is not None
            and not self._in_close_frame
            and relay.may_hold_failure(self.side)
        ):
            self._held = (code, reason)
            self.failedByMe = True  # Autobahn's own checks stand down
            self.pause_reading()  # whatever this peer sends now is moot
            self._tell_ending(Cause.FAILED, code, reason)
            return
        was_open = self.state == _OPEN
        super()._fail_connection(code, reason)  # type: ignore[misc]
        if was_open:
            self._tell_ending(Cause.FAILED, code, reason)

    def fail(self, code: int, reason: str) -> None:
        self._fail_connection(code, reason)

    def finish_ending(self) -> None:
        """The other leg has closed: now fail this one, if a failure was held."""
        held, self._held = self._held, None
        if held is not None and self.state == _OPEN:
            super()._fail_connection(*held)  # type: ignore[misc]
            self.resume_reading()  # to read the peer's answer to our close

    def onPing(self, payload: bytes) -> None:
        if self._held is None:
            if self.relay is not None:
                self.relay.touch(self.side)
            super().onPing(payload)  # type: ignore[misc]

    def onPong(self, payload: bytes) -> None:
        if self.relay is not None:
            self.relay.touch(self.side)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        if self.state == _OPEN:
            self._sent_code = NO_STATUS if code is None else code
        super().sendCloseFrame(code, reasonUtf8, isReply)  # type: ignore[misc]

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        if self._received_code is None:
            self._received_code = NO_STATUS if code is None else code
        held, self._held = self._held, None
        if held is not None and self.state == _OPEN:
            # The peer closes while its failure is held: fail now, and take its
            # close as the answer to ours.
            super()._fail_connection(*held)  # type: ignore[misc]
        was_open = self.state == _OPEN
        allowed = WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED
        # 1014 (Bad Gateway, RFC 6455 registry) is missing from Autobahn's list
        # of receivable codes; a gateway must accept and relay it.
        patch = code == BAD_GATEWAY and code not in allowed
        if patch:
            allowed.append(BAD_GATEWAY)
        self._in_close_frame = True  # a bad close frame fails the leg at once
        try:
            result: bool | None = super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
        finally:
            self._in_close_frame = False
            if patch:
                allowed.remove(BAD_GATEWAY)
        if was_open and not self.failedByMe:
            self._tell_ending(Cause.PEER_CLOSED, self.remoteCloseCode, self.remoteCloseReason or "")
        return result

    def _closeConnection(self, abort: bool = False) -> None:
        # Autobahn's server aborts the TCP connection when the client answers
        # its close, and Twisted's abortConnection is a reset (SO_LINGER 0):
        # after a complete closing handshake, end it with a FIN. A peer whose
        # close crossed ours may not have read ours yet; if it never does,
        # the write buffer would hold the connection open: abort it after
        # close_timeout.
        if not (abort and self.wasClean):
            super()._closeConnection(abort)  # type: ignore[misc]
            return
        super()._closeConnection(False)  # type: ignore[misc]
        if self.closeHandshakeTimeout > 0:
            self._fin_deadline = self.factory.reactor.callLater(
                self.closeHandshakeTimeout, self.transport.abortConnection
            )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
        if isinstance(self._perMessageCompress, LeanDeflate):
            self._perMessageCompress.stop()
        deadline, self._fin_deadline = self._fin_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        if self.relay is not None:
            self._ending_told = True
            received = self._received_code
            if received is None:
                received, why = ABNORMAL, self._dropped_why or reason or ""
            else:
                why = self.remoteCloseReason or ""
            self.relay.leg_closed(self.side, received, why, sent=self._sent_code)

    # -- lean hot path ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's version formats debug arguments eagerly on every read.
        self.wire_in += len(data)
        if len(data) >= _sockets.BIG_READ:
            _sockets.quick_ack(self.transport)
        if self._compiled_reads:
            self._reader.feed(data)
            self._read_compiled()
        else:
            self._dataReceived(data)  # type: ignore[attr-defined]

    # -- the compiled frame path -------------------------------------------------

    def consumeData(self) -> None:
        # Autobahn's parser: the handshake, and the stream while the compiled
        # reader has handed it over; back to the reader at a message boundary.
        super().consumeData()  # type: ignore[misc]
        if self._core is not None and self._may_read_compiled():
            self._read_compiled()

    def _may_read_compiled(self) -> bool:
        """Take the stream from Autobahn's parser if it is between messages
        on an open leg that has not failed; say whether it was taken."""
        if not (
            self.state == _OPEN
            and self.relay is not None
            and self._held is None
            and not self.failedByMe
            and self.current_frame is None
            and not self.inside_message
        ):
            return False
        reader = self._reader
        if reader is None:
            reader = self._reader = self._core.Reader(
                self.factory.isServer,
                self.maxMessagePayloadSize,  # type: ignore[attr-defined]
                self.utf8validateIncoming,  # type: ignore[attr-defined]
                self._perMessageCompress is not None,
                # A leg that refuses text refuses it at its begin, before its
                # payload is read (see onMessageBegin).
                not self._binary_only,
            )
        self._compiled_reads = True
        data, self.data = self.data, b""
        if data:
            reader.feed(data)
        return True

    def _read_compiled(self) -> None:
        """Dispatch what the compiled reader found (a compressed message is
        inflated here); when it meets anything else (a close frame, a
        protocol error), or this leg stops being open, Autobahn's parser
        takes the stream from that very byte, with the message's state."""
        reader = self._reader
        relay = self.relay
        side = self.side
        while True:
            event = reader.next()
            if event is None:
                return
            kind = event[0]
            if kind == 1:
                if self._inflating:
                    if not self._inflate(event[1], event[2]):
                        # Failed where Autobahn's parser fails: it has the
                        # frame, not ended, and the rest of this read waits
                        # for the next read, as there.
                        self._hand_off(reader, reopen=True)
                        return
                else:
                    relay.message_data(side, event[1], event[2])  # type: ignore[union-attr]
            elif kind == 0:
                self.onMessageBegin(event[1])
                if event[2]:
                    self._begin_inflating(event[1])
            elif kind == 5:
                if event[2]:
                    inflate_whole = self._inflate_whole
                    if inflate_whole is None:
                        self._begin_inflating(event[1])
                        done = self._inflate(event[3], True, event[1])
                    else:
                        me: Any = self
                        binary = event[1]
                        data = inflate_whole(
                            event[3],
                            me.maxMessagePayloadSize,
                            not binary and me.utf8validateIncoming,
                        )
                        if data.__class__ is bytes:
                            relay.message(side, binary, data)  # type: ignore[union-attr]
                            done = True
                        else:
                            self._begin_checks(binary)
                            done = self._inflate(event[3], True, binary, data)
                    if not done:
                        self._hand_off(reader, reopen=True)
                        return
                else:
                    relay.message(side, event[1], event[3])  # type: ignore[union-attr]
            elif kind == 2:
                self._onPing(event[1])  # type: ignore[attr-defined]
            elif kind == 3:
                self._onPong(event[1])  # type: ignore[attr-defined]
            if kind == 4 or self.state != _OPEN or self._held is not None or self.failedByMe:
                self._hand_off(reader)
                super().consumeData()  # type: ignore[misc]
                if not (self._core is not None and self._may_read_compiled()):
                    return

    def _begin_inflating(self, binary: bool) -> None:
        """A compressed message begins on the compiled path (Autobahn's
        ``onFrameBegin`` for RSV1)."""
        self._perMessageCompress.start_decompress_message()
        self._begin_checks(binary)

    def _begin_checks(self, binary: bool) -> None:
        """The leg's side of a compressed message's begin: its checks."""
        self._inflating = True
        me: Any = self
        self._utf8_last = None
        if not binary and me.utf8validateIncoming:
            self._inflating_text = True
            utf8 = self._utf8
            if utf8 is None:
                utf8 = self._utf8 = self._core.Utf8()
            utf8.reset()
        else:
            self._inflating_text = False

    def _inflate(
        self,
        payload: bytes,
        final: bool,
        whole: bool | None = None,
        inflated: tuple[Any, Exception | None, Exception | None] | None = None,
    ) -> bool:
        """Inflate a piece of a compressed message and relay it, step by step
        as Autobahn's ``onFrameData`` and ``onFrameEnd`` do (the same checks,
        verdicts and close reasons, and, as there, a UTF-8 failure that does
        not drop the connection goes on); False: stop reading, as there.

        ``whole``: the piece is a whole message (binary or not) whose begin
        the relay has not heard: it then crosses in one call, or, when a
        check fails, its begin goes first, as it would have.

        ``inflated``: what ``CompiledDeflate.inflate_whole`` made of a whole
        message that failed a check: this goes on from the check that failed
        (the data, or the error inflating it or its tail raised)."""
        me: Any = self
        reader = self._reader
        pmc = self._perMessageCompress
        limit = me.maxMessagePayloadSize
        size = len(payload)
        # The reader's total counts this piece's frame already, compressed.
        budget = limit - (reader.total - size) if limit > 0 else None
        try:
            if inflated is None:
                data = pmc.decompress_message_data(payload, max_output_len=budget)
            else:
                data, error, _ = inflated
                if error is not None:
                    raise error
        except PayloadExceededError:
            self._late_begin(whole)
            if not self.failedByMe:
                me.wasMaxMessagePayloadSizeExceeded = True
                me._max_message_size_exceeded(
                    limit,
                    limit,
                    "received WebSocket message exceeds payload limit of "
                    f"{limit} octets after decompression",
                )
            return False
        except PayloadCorruptError as e:
            self._late_begin(whole)
            if not self.failedByMe:
                me._invalid_payload(f"received WebSocket message cannot be decompressed: {e}")
            return False
        if not self.failedByMe:
            reader.total += len(data) - size
            if 0 < limit < reader.total:
                self._late_begin(whole)
                me.wasMaxMessagePayloadSizeExceeded = True
                me._max_message_size_exceeded(
                    reader.total,
                    limit,
                    f"received WebSocket message size {reader.total} exceeds payload limit "
                    f"of {limit} octets",
                )
                return False
        if self._inflating_text:
            last = self._utf8_last
            if last is not None or not self._utf8.feed(data):
                validator = me.utf8validator
                if last is None:
                    utf8 = self._utf8
                    _resume_validator(validator, utf8.received, utf8.pending)
                last = self._utf8_last = validator.validate(data)
            if last is not None and not last[0]:
                self._late_begin(whole)
                whole = None
                if me._invalid_payload(
                    "encountered invalid UTF-8 while processing text message at payload "
                    f"octet index {last[3]}"
                ):
                    return False
        if final:
            try:
                if inflated is not None and inflated[2] is not None:
                    raise inflated[2]  # the tail, fed already
                pmc.end_decompress_message()
            except PayloadCorruptError as e:
                self._late_begin(whole)
                if not self.failedByMe:
                    me._invalid_payload(f"received WebSocket message cannot be decompressed: {e}")
                return False
            if self._inflating_text:
                last = self._utf8_last
                utf8 = self._utf8
                complete, index = (
                    (utf8.complete, utf8.received) if last is None else (last[1], last[3])
                )
                if not complete:
                    self._late_begin(whole)
                    whole = None
                    if me._invalid_payload(
                        "UTF-8 text message payload ended within Unicode code point at "
                        f"payload octet index {index}"
                    ):
                        return False
            self._inflating = False
        relay = self.relay
        if whole is not None:
            if relay is not None:
                relay.message(self.side, whole, data)
        elif (data or final) and self._held is None and relay is not None:
            relay.message_data(self.side, data, final)
        return True

    def _late_begin(self, whole: bool | None) -> None:
        """The begin of a whole message, when a check of it fails (None: its
        begin was heard)."""
        if whole is not None:
            self.onMessageBegin(whole)

    def _hand_off(self, reader: Any, reopen: bool = False) -> None:
        """Give Autobahn's parser the unread bytes and the state it would have
        reached itself (``reopen``: see the reader's ``handoff``)."""
        rest, inside, binary, total, pending, frame, received = reader.handoff(reopen)
        self._compiled_reads = False
        self.data = rest
        self.inside_message = inside
        me: Any = self
        inflating, self._inflating = self._inflating, False
        if inside:
            me.message_is_binary = binary
            me.message_data_total_length = total
            me._isMessageCompressed = inflating
            if inflating:
                text = self._inflating_text
                me.utf8validateIncomingCurrentMessage = text
                if text:
                    last = self._utf8_last
                    if last is None:
                        utf8 = self._utf8
                        last = _resume_validator(me.utf8validator, utf8.received, utf8.pending)
                    me.utf8validateLast = last
            else:
                me.utf8validateIncomingCurrentMessage = pending is not None
            if pending is not None:
                me.utf8validateLast = _resume_validator(me.utf8validator, received, pending)
        if frame is None:
            self.current_frame = None
            return
        opcode, fin, length, mask, pointer = frame
        self.current_frame = FrameHeader(opcode, fin, 0, length, mask)
        ab: Any = _autobahn  # its module globals (the speed-ups may have replaced the masker)
        masker = ab.create_xor_masker(mask, length) if mask is not None else XorMaskerNull()
        while pointer > 0:  # to where the reader stopped (a failure path only)
            step = min(pointer, 65536)
            masker.process(bytes(step))
            pointer -= step
        self.current_frame_masker = masker
        me.frame_data = []
        me.frame_length = length

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        self.wire_out += len(data)
        if sync or chopsize or self.send_queue:
            if self.send_queue is _NO_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
        else:
            _speedups.write(self.transport, data)


def _resume_validator(validator: Any, received: int, pending: bytes) -> Any:
    """Bring Autobahn's UTF-8 validator to where the compiled reader stopped:
    ``received`` bytes of the message read, ``pending`` the start of a code
    point still open (its error messages count octets from the message's
    start; a failure path only)."""
    validator.reset()
    last = (True, True, 0, 0)
    valid = received - len(pending)
    while valid > 0:
        step = min(valid, 65536)
        last = validator.validate(b"a" * step)
        valid -= step
    if pending:
        last = validator.validate(pending)
    return last


_Leg = TypeVar("_Leg", bound=RelayedLeg)


def with_options(protocol: type[_Leg], factory: Any) -> type[_Leg]:
    """``protocol`` with ``factory``'s Autobahn options as class attributes.

    Autobahn copies every option its protocol class lacks onto each
    connection (about 25 entries, which push a leg's ``__dict__`` into the
    next size: some 1.5 KiB per leg); options its class has are read from
    there. Make it once the factory's options are set (later changes to the
    factory do not reach it); an option a connection sets (a route's size
    limit) still goes on the connection.
    """
    options = {
        # staticmethod: a function (the deflate accept function) read from a
        # class would come back bound to the connection.
        name: staticmethod(getattr(factory, name))
        for name in protocol.CONFIG_ATTRS  # type: ignore[attr-defined]
    }
    return type(protocol.__name__, (protocol,), options)


def leg_options(config: RouteSettings) -> dict[str, Any]:
    """Autobahn options both legs share. Autobahn's setProtocolOptions resets
    what it is not given, so each factory passes all of these at once."""
    return {
        "failByDrop": False,  # a proxy wants the closing handshake
        "echoCloseCodeReason": True,
        "closeHandshakeTimeout": config.close_timeout,
        "maxMessagePayloadSize": config.autobahn_message_limit,
        "maxFramePayloadSize": 0,  # messages stream; only their size counts
        "autoFragmentSize": 0,
        "utf8validateIncoming": True,
        "applyMask": True,
        "tcpNoDelay": True,
    }


__all__ = ["RelayedLeg", "leg_options", "truncate_reason", "with_options"]
