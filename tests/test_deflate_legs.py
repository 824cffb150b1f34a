"""What wsgate compresses for a client, seen on the wire, and the zlib states
an idle connection keeps: a real frontend and backend leg with Autobahn peers
in memory (memlegs.py), on a MemoryReactorClock; and end to end over
127.0.0.1 with a ``websockets`` client and backend."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from memlegs import Network, autobahn_timers, frontend_factory, ws_client, ws_server
from peers import TIMEOUT, backend, client
from twisted.internet.testing import MemoryReactorClock
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode

from wsgate._leandeflate import IDLE_SECONDS, LeanDeflate
from wsgate.testing import GateFactory, free_port


def _json(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = b""
    while len(out) < n:
        out += b'{"seq": %d, "name": "user-%d", "online": true}, ' % (rng.randrange(10**6), seed)
    return out[:n]


def server_frames(wire: bytes) -> list[tuple[int, bool, bool, int]]:
    """(opcode, fin, rsv1, payload length) of each unmasked frame after the
    101 response head."""
    data = wire[wire.index(b"\r\n\r\n") + 4 :]
    frames = []
    while data:
        b0, b1 = data[0], data[1]
        assert not b1 & 0x80, "server frames are not masked"
        size, at = b1 & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        frames.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), size))
        data = data[at + size :]
    return frames


@pytest.fixture
def reactor() -> Iterator[MemoryReactorClock]:
    clock = MemoryReactorClock()
    with autobahn_timers(clock):
        yield clock


class _Gate:
    """A deflating Autobahn client through wsgate (as shipped: the backend leg
    uncompressed) to an Autobahn echo backend, all in memory."""

    def __init__(self, reactor: MemoryReactorClock, *args: str) -> None:
        self.backend = ws_server(reactor, echo=True)
        self.net = Network(reactor, serve=lambda host, port: self.backend)
        factory = frontend_factory(reactor, "--backend", "ws://127.0.0.1:9000", *args)
        self.client = ws_client(
            reactor,
            perMessageCompressionOffers=[PerMessageDeflateOffer(accept_max_window_bits=True)],
            perMessageCompressionAccept=self._accept,
        )
        self.frontend, _, _ = self.net.connect_client(factory, self.client)
        self.net.flush()
        assert self.client.events.opened

    @staticmethod
    def _accept(response: Any) -> Any:
        assert isinstance(response, PerMessageDeflateResponse)
        return PerMessageDeflateResponseAccept(response)

    def echo(self, message: bytes) -> tuple[bool, int]:
        """Send ``message``; its echo's (RSV1, payload size on the wire)."""
        before = len(server_frames(self.client.wire))
        self.client.sendMessage(message, isBinary=True)
        self.net.flush()
        assert self.client.events.messages[-1] == (message, True)
        ((opcode, fin, rsv1, size),) = server_frames(self.client.wire)[before:]
        assert (opcode, fin) == (2, True)
        return rsv1, size


def test_small_and_random_messages_go_raw_compressible_ones_deflated(
    reactor: MemoryReactorClock,
) -> None:
    gate = _Gate(reactor)
    pmc = gate.frontend._perMessageCompress
    assert isinstance(pmc, LeanDeflate)
    assert gate.echo(b"") == (False, 0)
    assert gate.echo(b"ok") == (False, 2)
    assert gate.echo(_json(127, 1)) == (False, 127)
    rsv1, size = gate.echo(_json(2000, 2))
    assert rsv1 and size < 600
    assert gate.echo(os.urandom(5000)) == (False, 5000)
    # Context takeover across the raw ones: the next message refers back to
    # the compressed one only, and the client's window agrees.
    rsv1, size = gate.echo(_json(2000, 2))
    assert rsv1 and size < 60
    assert gate.backend.events.messages[-1] == (_json(2000, 2), True)


def test_the_threshold_is_the_policy_s(reactor: MemoryReactorClock) -> None:
    gate = _Gate(reactor, "--client-deflate", "on,threshold=10")
    assert gate.echo(b"abcabcabcabc")[0]
    assert gate.echo(b"abcabcabc") == (False, 9)
    assert gate.echo(_json(8000, 3))[0]


def test_the_zlib_level_is_the_policy_s(reactor: MemoryReactorClock) -> None:
    # Level 1 by default (fast, as nginx's gzip_comp_level); level 6 finds
    # more of this JSON's repeats, so the same message comes out smaller.
    message = _json(3000, 4)
    fast = _Gate(reactor)
    assert isinstance(fast.frontend._perMessageCompress, LeanDeflate)
    fast_rsv1, fast_size = fast.echo(message)
    thorough = _Gate(MemoryReactorClock(), "--client-deflate", "on,level=6")
    thorough_rsv1, thorough_size = thorough.echo(message)
    assert fast_rsv1 and thorough_rsv1
    assert thorough_size < fast_size


def test_a_large_threshold(reactor: MemoryReactorClock) -> None:
    gate = _Gate(reactor, "--client-deflate", "on,threshold=8192")
    assert gate.echo(_json(8000, 3)) == (False, 8000)
    assert gate.echo(_json(9000, 3))[0]


def test_an_idle_connection_drops_its_zlib_states_and_streams_on(
    reactor: MemoryReactorClock,
) -> None:
    gate = _Gate(reactor)
    pmc = gate.frontend._perMessageCompress
    assert isinstance(pmc, LeanDeflate)
    messages = [_json(1000, seed) for seed in range(3)]  # all in a 4 KiB window
    for message in messages:
        assert gate.echo(message)[0]
    assert pmc.holds_zlib
    gate.net.advance(IDLE_SECONDS)
    gate.net.advance(IDLE_SECONDS)
    assert not pmc.holds_zlib
    # Both directions carry on from the windows: the client's compressor
    # still refers to what it sent before the gap (we decompress it), and
    # the echo compresses against what we sent before it (the client
    # decompresses it), so a repeat costs a few bytes.
    for message in messages:
        rsv1, size = gate.echo(message)
        assert rsv1 and size < 60
    assert [m for m, _ in gate.backend.events.messages] == messages * 2
    assert pmc.holds_zlib
    assert [c for c in reactor.getDelayedCalls() if c.func == pmc._idle_check]
    gate.client.sendClose(1000)
    gate.net.flush()
    assert gate.client.events.closed is not None
    assert not [c for c in reactor.getDelayedCalls() if c.func == pmc._idle_check]


# -- end to end ---------------------------------------------------------------------


class _Recorder(PerMessageDeflate):  # type: ignore[misc]
    """websockets' client extension, noting RSV1 of each data frame it gets."""

    seen: list[bool]

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.seen.append(frame.rsv1)
        return super().decode(frame, max_size=max_size)


class _RecordingFactory(ClientPerMessageDeflateFactory):  # type: ignore[misc]
    def __init__(self, seen: list[bool]) -> None:
        super().__init__(client_max_window_bits=True)
        self._seen = seen

    def process_response_params(self, params: Any, accepted: Any) -> PerMessageDeflate:
        extension = super().process_response_params(params, accepted)
        extension.__class__ = _Recorder
        extension.seen = self._seen
        return extension


def test_a_websockets_client_sees_rsv1_only_where_it_pays(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")
    text = "ünïcødé and some JSON: " + _json(20_000, 4).decode()
    messages: list[str | bytes] = ["hi", b"\x00" * 100, text, os.urandom(65536), text[:5000]]
    messages += [os.urandom(300), text[100:9000], "é" * 63]
    seen: list[bool] = []

    async def main() -> None:
        async with (
            backend(port, compression=None),
            client(gate.url, extensions=[_RecordingFactory(seen)], compression=None) as ws,
        ):
            for message in messages:
                await ws.send(message)
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == message

    asyncio.run(main())
    assert seen == [False, False, True, False, True, False, True, False]
