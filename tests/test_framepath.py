"""The compiled frame path (wsgate._framecore) against Autobahn's Python one.

Both paths are fed the same random frame sequences (valid and invalid, split
at random byte boundaries) on a real leg over a ``StringTransport``, each
with a recording relay: the messages, pings, pongs and close codes (and the
close reasons, the octet index of bad UTF-8 included) must be the same.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponseAccept,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memlegs import autobahn_timers
from rawws import upgrade_request
from twisted.internet.testing import MemoryReactorClock, StringTransport

from wsgate import _framepath
from wsgate._closecodes import Side
from wsgate._wsleg import RelayedLeg
from wsgate.testing import Wsgate

framecore = pytest.importorskip("wsgate._framecore", reason="wsgate._framecore not built")

# -- both paths on real legs ----------------------------------------------------------

#: A small limit, so that random messages can exceed it.
_LIMIT = 300


class _Relay:
    """What the relay hears from one leg."""

    def __init__(self, hold: bool) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._hold = hold

    def message_begin(self, side: Side, binary: bool) -> None:
        self.events.append(("begin", binary))

    def message_data(self, side: Side, data: bytes, final: bool) -> None:
        self.events.append(("data", data, final))

    def message(self, side: Side, binary: bool, data: bytes) -> None:
        # A whole message is its begin and its final piece.
        self.events.append(("begin", binary))
        self.events.append(("data", data, True))

    def touch(self, side: Side) -> None:
        self.events.append(("touch", side))

    def may_hold_failure(self, side: Side) -> bool:
        return self._hold

    def leg_ending(self, side: Side, cause: Any, code: int | None, reason: str) -> None:
        self.events.append(("ending", cause.name, code))

    def leg_closed(self, side: Side, code: int | None, reason: str, sent: int | None) -> None:
        self.events.append(("closed", code, sent))


class _Transport(StringTransport):  # type: ignore[misc]
    """A StringTransport that, as TCP's, lets a producer go twice."""

    def unregisterProducer(self) -> None:
        self.producer = None


class _ServerLeg(RelayedLeg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT


class _ClientLeg(RelayedLeg, WebSocketClientProtocol):  # type: ignore[misc]
    side = Side.BACKEND


_OPTIONS: dict[str, Any] = {
    "failByDrop": False,
    "echoCloseCodeReason": True,
    "maxMessagePayloadSize": _LIMIT,
    "maxFramePayloadSize": 0,
    "autoFragmentSize": 0,
    "utf8validateIncoming": True,
    "applyMask": True,
}


_DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate"


def _open_leg(
    server: bool, compiled: bool, hold: bool, deflate: bool = False
) -> tuple[Any, StringTransport, _Relay]:
    """A leg past its opening handshake (permessage-deflate negotiated with
    its defaults, context takeover, if ``deflate``), its relay recording."""
    relay = _Relay(hold)
    transport = _Transport()
    leg: Any
    if server:
        factory: Any = WebSocketServerFactory("ws://127.0.0.1:9000")
        factory.protocol = _ServerLeg
        factory.setProtocolOptions(
            **_OPTIONS, perMessageCompressionAccept=lambda offers: _accept_offer(offers)
        )
        leg = factory.buildProtocol(None)
        leg._core = framecore if compiled else None
        leg.relay = relay
        leg.makeConnection(transport)
        leg.dataReceived(upgrade_request(b"/", b"127.0.0.1", *([_DEFLATE] if deflate else [])))
    else:
        factory = WebSocketClientFactory("ws://127.0.0.1:9000")
        factory.protocol = _ClientLeg
        factory.setProtocolOptions(
            **_OPTIONS,
            perMessageCompressionOffers=[PerMessageDeflateOffer()] if deflate else [],
            perMessageCompressionAccept=PerMessageDeflateResponseAccept,
        )
        leg = factory.buildProtocol(None)
        leg._core = framecore if compiled else None
        leg.relay = relay
        leg.makeConnection(transport)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value())
        assert key is not None
        accept = base64.b64encode(
            hashlib.sha1(key[1] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        leg.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n"
            + (_DEFLATE + b"\r\n" if deflate else b"")
            + b"\r\n"
        )
    assert leg.state == leg.STATE_OPEN, transport.value()
    assert (leg._perMessageCompress is not None) == deflate
    transport.clear()
    return leg, transport, relay


def _accept_offer(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _frames_written(data: bytes) -> list[tuple[int, bool, bytes]]:
    """The frames a leg wrote (opcode, fin, unmasked payload)."""
    frames = []
    while data:
        b0, b1 = data[0], data[1]
        length, i = b1 & 0x7F, 2
        if length == 126:
            length, i = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, i = struct.unpack("!Q", data[2:10])[0], 10
        mask = b"\x00" * 4
        if b1 & 0x80:
            mask, i = data[i : i + 4], i + 4
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate(data[i : i + length]))
        frames.append((b0 & 0x0F, bool(b0 & 0x80), payload))
        data = data[i + length :]
    return frames


def _encode(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool, wide: int = 0) -> bytes:
    """One frame as a peer sends it; ``wide`` forces a longer length form."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126 and wide == 0:
        head += bytes([bit | n])
    elif n < 65536 and wide != 2:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    return head + payload


@st.composite
def _message(draw: st.DrawFn, masked: bool, deflate: bool = False, shared: Any = None) -> bytes:
    """A message, fragmented at random byte positions (UTF-8 split too),
    sometimes with bad UTF-8, sometimes too big, with pings between fragments;
    with ``deflate``, sometimes compressed (and then sometimes corrupt, or
    small on the wire and too big inflated), by the ``shared`` compressor
    when given (context takeover: it refers back to earlier messages)."""
    binary = draw(st.booleans())
    if binary:
        payload = draw(st.binary(max_size=400))
    else:
        payload = draw(st.text(max_size=120)).encode()
        if draw(st.integers(0, 9)) == 0:
            at = draw(st.integers(0, len(payload)))
            payload = payload[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xe2\x82"]))
            payload += draw(st.binary(max_size=5))
    rsv = 0
    if deflate and draw(st.booleans()):
        rsv = 4
        if draw(st.integers(0, 5)) == 0:
            payload = b"a" * draw(st.integers(_LIMIT - 50, 5 * _LIMIT))
        compressor = shared or zlib.compressobj(wbits=-15)
        payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4] if draw(st.integers(0, 9)) else payload[:-4] + b"\xff\xfe"
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        opcode = (2 if binary else 1) if i == 0 else 0
        out += _encode(opcode, piece, i == len(pieces) - 1, rsv if i == 0 else 0, masked)
        if draw(st.integers(0, 4)) == 0:
            out += _encode(
                draw(st.sampled_from([9, 10])), draw(st.binary(max_size=8)), True, 0, masked
            )
    return out


@st.composite
def _whole_compressed(draw: st.DrawFn, masked: bool, shared: Any) -> bytes:
    """A compressed message of one frame: good, or bad UTF-8 (also ending
    inside a code point), corrupt, or too big inflated."""
    binary = draw(st.booleans())
    kind = draw(st.integers(0, 5))
    payload = draw(st.binary(max_size=300)) if binary else draw(st.text(max_size=100)).encode()
    if kind == 1 and not binary:
        at = draw(st.integers(0, len(payload)))
        payload = payload[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xe2\x82"]))
    if kind == 2:
        payload = b"a" * draw(st.integers(_LIMIT - 50, 3 * _LIMIT))
    compressor = shared or zlib.compressobj(wbits=-15)
    deflated = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    deflated = deflated[:-4] if kind != 3 else deflated[:-4] + b"\xff\xfe"
    return _encode(2 if binary else 1, deflated, True, 4, masked)


@st.composite
def _odd_frame(draw: st.DrawFn, masked: bool) -> bytes:
    """A frame that breaks a rule (or a close frame)."""
    kind = draw(st.integers(0, 8))
    payload = draw(st.binary(max_size=20))
    if kind == 0:  # reserved opcode
        return _encode(draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 15])), payload, True, 0, masked)
    if kind == 1:  # RSV bits without an extension
        return _encode(1, b"ok", True, draw(st.integers(1, 7)), masked)
    if kind == 2:  # masking the wrong way
        return _encode(2, payload, True, 0, not masked)
    if kind == 3:  # a fragmented or too long control frame
        return _encode(9, payload if draw(st.booleans()) else bytes(126), False, 0, masked)
    if kind == 4:  # a continuation outside a message
        return _encode(0, payload, True, 0, masked)
    if kind == 5:  # a length not in its shortest form
        return _encode(2, payload, True, 0, masked, draw(st.integers(1, 2)))
    if kind == 6:  # a message start inside a message
        return _encode(1, b"a", False, 0, masked) + _encode(2, payload, True, 0, masked)
    if kind == 7:  # oversize in one frame
        return _encode(2, bytes(_LIMIT + 1), True, 0, masked)
    code = draw(st.sampled_from([1000, 1001, 1002, 1005, 1007, 1014, 999, 3000, 4999, 5000]))
    reason = draw(st.sampled_from([b"", b"bye", b"\xff"]))
    body = draw(st.sampled_from([b"", b"\x03", struct.pack("!H", code) + reason]))
    return _encode(8, body, True, 0, masked)


@st.composite
def _stream(draw: st.DrawFn, masked: bool, deflate: bool = False) -> tuple[bytes, list[int]]:
    shared = zlib.compressobj(wbits=-15) if deflate and draw(st.booleans()) else None
    message = _message(masked, deflate, shared)
    parts = draw(
        st.lists(
            st.one_of(
                message, message, message, _odd_frame(masked), st.binary(min_size=1, max_size=30)
            ),
            min_size=1,
            max_size=6,
        )
    )
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    return data, cuts


def _run(
    server: bool, compiled: bool, hold: bool, data: bytes, cuts: list[int], deflate: bool = False
) -> tuple[list[tuple[Any, ...]], list[tuple[int, bool, bytes]]]:
    leg, transport, relay = _open_leg(server, compiled, hold, deflate)
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        if not transport.disconnecting:
            leg.dataReceived(data[a:b])
    return relay.events, _frames_written(transport.value())


@pytest.fixture(autouse=True)
def _memory_timers() -> Iterator[None]:
    with autobahn_timers(MemoryReactorClock()):
        yield


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), hold=st.booleans())
def test_both_paths_give_the_same_verdicts(server: bool, data: Any, hold: bool) -> None:
    """Client legs read masked frames, backend legs unmasked ones."""
    stream, cuts = data.draw(_stream(masked=server))
    python = _run(server, False, hold, stream, cuts)
    compiled = _run(server, True, hold, stream, cuts)
    assert compiled == python


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), hold=st.booleans())
def test_both_paths_agree_with_deflate_negotiated(server: bool, data: Any, hold: bool) -> None:
    """Compressed messages (corrupt ones, bombs too) between plain ones: the
    compiled reader frames them and the leg inflates, checks and relays them
    as Autobahn's parser does."""
    stream, cuts = data.draw(_stream(masked=server, deflate=True))
    python = _run(server, False, hold, stream, cuts, deflate=True)
    compiled = _run(server, True, hold, stream, cuts, deflate=True)
    assert compiled == python


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), hold=st.booleans(), takeover=st.booleans())
def test_both_paths_agree_on_whole_compressed_messages(
    server: bool, data: Any, hold: bool, takeover: bool
) -> None:
    """Compressed messages of one frame, all in one read, come whole to the
    compiled path: good ones cross in one call, and one that fails a check
    (corrupt, too big, bad UTF-8) is heard begun first, then failed, as
    Autobahn's parser does it."""
    shared = zlib.compressobj(wbits=-15) if takeover else None
    messages = data.draw(st.lists(_whole_compressed(server, shared), min_size=1, max_size=4))
    stream = b"".join(messages)
    python = _run(server, False, hold, stream, [], deflate=True)
    compiled = _run(server, True, hold, stream, [], deflate=True)
    assert compiled == python


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@settings(max_examples=50, deadline=None)
@given(
    messages=st.lists(
        st.tuples(st.booleans(), st.lists(st.binary(max_size=70000), max_size=3)), max_size=4
    )
)
def test_both_paths_write_the_same_frames(
    server: bool, deflate: bool, messages: list[tuple[bool, list[bytes]]]
) -> None:
    """What the relay sends, piece by piece: the same frames on both paths,
    masked only by the backend leg (a client of its backend)."""
    written = []
    for compiled in (False, True):
        leg, transport, _ = _open_leg(server, compiled, False, deflate)
        for binary, pieces in messages:
            leg.send_begin(binary)
            for piece in pieces:
                leg.send_data(piece, False)
            leg.send_data(b"", True)
        data = transport.value()
        written.append(_frames_written(data))
        if data:
            assert bool(data[1] & 0x80) == (not server)
    assert written[0] == written[1]


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@settings(max_examples=50, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(
                st.binary(max_size=3000),
                st.text(max_size=300).map(str.encode),
                st.integers(0, 1500).map(lambda n: (b'{"id": 1, "ok": true} ' * 70)[:n]),
            ),
        ),
        max_size=5,
    )
)
def test_a_whole_message_goes_out_as_begin_and_final_data_do(
    server: bool, deflate: bool, messages: list[tuple[bool, bytes]]
) -> None:
    """``send_message`` (the compiled reader's whole messages) writes what
    ``send_begin`` and ``send_data(data, True)`` write, on both paths: the
    same frames, except that with deflate the compiled path compresses a
    whole message of up to 1 KiB with level 1's own encoder (its bytes are
    not zlib's); then the same messages for a zlib peer."""
    written, received = [], []
    for whole in (False, True):
        for compiled in (False, True):
            leg, transport, _ = _open_leg(server, compiled, False, deflate)
            for binary, data in messages:
                if whole:
                    leg.send_message(binary, data)
                else:
                    leg.send_begin(binary)
                    leg.send_data(data, True)
            written.append(_frames_written(transport.value()))
            received.append(_messages_received(transport.value()))
    assert received[0] == received[1] == received[2] == received[3]
    assert [(op, len(m)) for op, m in received[0]] == [(2 if b else 1, len(d)) for b, d in messages]
    assert written[0] == written[1] == written[2]  # zlib's bytes
    if not deflate:
        assert written[3] == written[0]


def _messages_received(data: bytes) -> list[tuple[int, bytes]]:
    """What a peer makes of a leg's one-frame messages: (opcode, payload),
    inflated (context takeover, any window) where RSV1 is set."""
    inflater = zlib.decompressobj(-15)
    out = []
    for (opcode, _, payload), rsv1 in zip(_frames_written(data), _rsv1_bits(data), strict=True):
        out.append(
            (opcode, inflater.decompress(payload + b"\x00\x00\xff\xff") if rsv1 else payload)
        )
    return out


def _rsv1_bits(data: bytes) -> list[bool]:
    """Each frame's RSV1 bit, in order."""
    bits = []
    while data:
        b1 = data[1]
        length, i = b1 & 0x7F, 2
        if length == 126:
            length, i = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, i = struct.unpack("!Q", data[2:10])[0], 10
        i += 4 if b1 & 0x80 else 0
        bits.append(bool(data[0] & 0x40))
        data = data[i + length :]
    return bits


@pytest.mark.parametrize("server", [True, False], ids=["client-leg", "backend-leg"])
def test_one_frame_messages_reach_the_relay_whole(server: bool) -> None:
    """A message of one frame, all in one read, is one event (binary, or
    valid text); text on a leg that refuses it comes piece by piece."""
    leg, _, relay = _open_leg(server, True, False)
    calls: list[tuple[Any, ...]] = []
    relay.message = lambda side, binary, data: calls.append((binary, data))  # type: ignore[method-assign]
    leg.dataReceived(_encode(1, "héllo".encode(), True, 0, server))
    leg.dataReceived(_encode(2, b"\x00\x01", True, 0, server))
    leg.dataReceived(_encode(1, b"in ", False, 0, server) + _encode(0, b"two", True, 0, server))
    assert calls == [(False, "héllo".encode()), (True, b"\x00\x01")]
    assert relay.events == [("begin", False), ("data", b"in ", False), ("data", b"two", True)]
    refusing, _, relay = _open_leg(server, True, False)
    refusing._binary_only = True
    refusing.dataReceived(_encode(1, b"text", True, 0, server))
    assert relay.events == [("begin", False), ("data", b"text", True)]


def test_the_legs_use_the_chosen_path() -> None:
    """Without WSGATE_NO_EXTENSIONS in this process, legs read compiled."""
    if os.environ.get("WSGATE_NO_EXTENSIONS"):
        assert RelayedLeg._core is None
        return
    assert RelayedLeg._core is framecore
    leg, _, relay = _open_leg(True, True, False)
    leg.dataReceived(_encode(1, b"hi", True, 0, True))
    assert leg._compiled_reads and relay.events == [("begin", False), ("data", b"hi", True)]


def test_choose_names_the_reason() -> None:
    assert _framepath.choose({"WSGATE_NO_EXTENSIONS": "1"}) == (None, "WSGATE_NO_EXTENSIONS=1")
    assert _framepath.choose({}) == (framecore, "wsgate._framecore")
    assert _framepath.choose({"WSGATE_NO_EXTENSIONS": "0"})[0] is framecore


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WSGATE_NO_EXTENSIONS": ""}, "frame path: compiled (wsgate._framecore)"),
        ({"WSGATE_NO_EXTENSIONS": "1"}, "frame path: python (WSGATE_NO_EXTENSIONS=1)"),
        ({"HIDE": "1"}, "frame path: python (wsgate._framecore not built: "),
    ],
    ids=["compiled", "forced-python", "not-built"],
)
def test_twistd_wsgate_names_its_frame_path(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    """One startup line per serving process (each worker of a ``--workers``
    tree); "not built" is an install without the extension, made here by a
    sitecustomize that blocks its import."""
    environ = {k: v for k, v in os.environ.items() if k != "WSGATE_NO_EXTENSIONS"}
    if env.pop("HIDE", None):
        (tmp_path / "sitecustomize.py").write_text(
            'import sys\nsys.modules["wsgate._framecore"] = None\n'
        )
        environ["PYTHONPATH"] = str(tmp_path)
    environ.update(env)
    with Wsgate(
        "--backend", "ws://127.0.0.1:9", log_path=tmp_path / "wsgate.log", env=environ
    ) as gate:
        pass
    lines = [line for line in gate.log().splitlines() if "frame path:" in line]
    assert len(lines) == gate.workers(), gate.log()
    assert all(expected in line for line in lines), gate.log()
