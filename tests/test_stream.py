"""Raw stream (TCP) backends, websockify style, end to end over 127.0.0.1.

Real peers: asyncio TCP servers stand in for VNC servers; clients are
``websockets`` and a raw WebSocket client whose pace the test controls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from peers import TIMEOUT, client
from rawws import MIB, Peaks, masked_frame, raw_handshake, upgrade_request
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgate.testing import GateFactory, TlsFiles, free_port

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MAX_GROWTH = 16 * MIB


class TcpServer:
    """An asyncio TCP server on 127.0.0.1 that records what its connections saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.eof_seen = asyncio.Event()
        self.received = bytearray()


@contextlib.asynccontextmanager
async def tcp_server(port: int, handler: StreamHandler | None = None) -> AsyncIterator[TcpServer]:
    state = TcpServer()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            state.received += data
            writer.write(data)
            await writer.drain()
        state.eof_seen.set()
        writer.close()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await (handler or echo)(reader, writer)

    server = await asyncio.start_server(run, "127.0.0.1", port)
    async with server:
        yield state


def test_bytes_both_ways_binary_subprotocol(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")

    async def main() -> None:
        async with tcp_server(port) as server:
            # noVNC 1.7 offers no subprotocol; older ones offer "binary".
            for offered in ([], ["binary"], ["other", "binary"]):
                async with client(gate.url + "/websockify", subprotocols=offered) as ws:  # type: ignore[arg-type]
                    assert ws.subprotocol == ("binary" if offered else None)
                    for payload in (b"RFB 003.008\n", os.urandom(200_000), b"\x00"):
                        await ws.send(payload)
                        got = b""
                        async with asyncio.timeout(TIMEOUT):
                            while len(got) < len(payload):
                                message = await ws.recv()
                                assert isinstance(message, bytes)
                                assert len(message) <= 64 * 1024  # frames are capped
                                got += message
                        assert got == payload
            assert server.connections == 3

    asyncio.run(main())
    assert "Traceback" not in gate.log()


@pytest.mark.parametrize("host", ["localhost", "::1"])
def test_stream_backend_by_name_or_ipv6(wsgate: GateFactory, host: str) -> None:
    port = free_port()
    if host == "::1":
        if not socket.has_ipv6:
            pytest.skip("no IPv6 on this machine")
        target = f"tcp:host=\\:\\:1:port={port}"
    else:
        target = f"tcp:localhost:{port}"
    gate = wsgate("--backend", target)

    async def main() -> None:
        server = await asyncio.start_server(
            _echo_once, "::1" if host == "::1" else "127.0.0.1", port
        )
        async with server, client(gate.url) as ws:
            await ws.send(b"hello")
            assert await ws.recv() == b"hello"

    asyncio.run(main())


async def _echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(5))
    await writer.drain()
    await reader.read()
    writer.close()


def test_server_speaks_first_and_eof_closes_with_1000(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")

    async def greet_and_go(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await writer.drain()
        writer.write_eof()
        await reader.read()  # until the client's side is closed too
        writer.close()

    async def main() -> None:
        async with tcp_server(port, greet_and_go), client(gate.url) as ws:
            assert await ws.recv() == b"RFB 003.008\n"
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1000

    asyncio.run(main())


def test_reset_closes_with_1011(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN

    async def main() -> None:
        async with tcp_server(port, reset), client(gate.url) as ws:
            await ws.send(b"x")
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1011

    asyncio.run(main())


def test_client_close_half_closes_the_stream(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")
    seen_after_eof = asyncio.Event()

    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until EOF: the client closed
        assert data == b"last words"
        seen_after_eof.set()
        writer.close()

    async def main() -> None:
        async with tcp_server(port, answer_after_eof), client(gate.url) as ws:
            await ws.send(b"last words")
            await ws.close(1000, "bye")
            async with asyncio.timeout(TIMEOUT):
                await seen_after_eof.wait()
            assert ws.close_code == 1000

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_text_is_refused_unless_base64(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")

    async def main() -> None:
        async with tcp_server(port) as server:
            async with client(gate.url) as ws:
                await ws.send("text")
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                assert ws.close_code == 1003
                assert "binary" in ws.close_reason
            # websockify's old base64 subprotocol: text both ways, base64 inside.
            async with client(gate.url, subprotocols=["base64"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "base64"
                payload = os.urandom(1000)
                await ws.send(base64.b64encode(payload).decode())
                got = b""
                while len(got) < len(payload):
                    message = await ws.recv()
                    assert isinstance(message, str)
                    got += base64.b64decode(message)
                assert got == payload
                await ws.send("!!not base64!!")
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                assert ws.close_code == 1007
            assert bytes(server.received) == payload

    asyncio.run(main())


def test_unreachable_stream_backend_is_502_before_the_handshake(wsgate: GateFactory) -> None:
    gate = wsgate("--backend", f"tcp:127.0.0.1:{free_port()}")

    async def main() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with client(gate.url):
                pass
        assert refused.value.response.status_code == 502
        assert b"unreachable" in refused.value.response.body

    asyncio.run(main())


def test_routes_and_tokens_pick_the_target(wsgate: GateFactory, tmp_path: Path) -> None:
    one, two = free_port(), free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# VNC desktops\nvnc1: 127.0.0.1:{one}\n")
    gate = wsgate("--route", f"/vnc2=tcp:127.0.0.1:{two}", "--token-file", str(tokens))

    def named(name: bytes) -> StreamHandler:
        async def say(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name)
            await writer.drain()
            await reader.read()
            writer.close()

        return say

    async def first(url: str) -> bytes:
        async with client(url) as ws:
            message = await ws.recv()
            assert isinstance(message, bytes)
            return message

    async def main() -> None:
        async with tcp_server(one, named(b"one")), tcp_server(two, named(b"two")):
            assert await first(gate.url + "/websockify?token=vnc1") == b"one"
            assert await first(gate.url + "/vnc1") == b"one"  # token as a path segment
            assert await first(gate.url + "/vnc2") == b"two"
            for unknown in ("/websockify?token=nope", "/websockify", "/"):
                with pytest.raises(InvalidStatus) as refused:
                    async with client(gate.url + unknown):
                        pass
                assert refused.value.response.status_code == 404
                assert b"vnc1" not in refused.value.response.body
            # The token file is re-read when it changes: no restart.
            tokens.write_text(f"vnc1: 127.0.0.1:{two}\nvnc3: 127.0.0.1:{one}\n")
            os.utime(tokens, ns=(1, 1))
            assert await first(gate.url + "/websockify?token=vnc1") == b"two"
            assert await first(gate.url + "/websockify?token=vnc3") == b"one"

    asyncio.run(main())


def test_static_files_beside_the_websocket(wsgate: GateFactory, tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "app").mkdir(parents=True)
    (web / "vnc.html").write_text("<!doctype html><title>vnc</title>")
    (web / "app" / "rfb.js").write_text("export default 1;\n")
    (tmp_path / "secret.txt").write_text("secret")
    port = free_port()
    gate = wsgate(
        "--backend", f"tcp:127.0.0.1:{port}", "--web", str(web), "--web-index", "vnc.html"
    )

    def get(path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", gate.port, timeout=TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()

    status, kind, body = get("/vnc.html")
    assert status == 200 and kind.startswith("text/html") and b"<title>vnc" in body
    status, kind, body = get("/app/rfb.js")
    assert status == 200 and "javascript" in kind
    assert get("/")[0] == 200 and b"<title>vnc" in get("/")[2]  # the index
    assert get("/app/") == (404, "text/plain; charset=utf-8", b"no such file\n")  # no listings
    assert get("/missing.js") == (404, "text/plain; charset=utf-8", b"no such file\n")
    for sneaky in (
        "/../secret.txt",
        "/app/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/app/%2e%2e%2f..%2fsecret.txt",
    ):
        status, _, body = get(sneaky)
        assert status in (400, 404) and b"secret" not in body, sneaky

    async def main() -> None:
        # The WebSocket still works on the same port, also on a connection
        # that fetched a page first (browsers reuse keep-alive connections).
        async with tcp_server(port):
            async with client(gate.url + "/websockify") as ws:
                await ws.send(b"ping")
                assert await ws.recv() == b"ping"
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
            writer.write(b"GET /vnc.html HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(upgrade_request(b"/websockify", b"x"))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            sent = masked_frame(0x2, 4, fin=True)  # mask 0: the payload is its last 4 bytes
            writer.write(sent)
            frame = await reader.readexactly(2 + 4)
            assert frame[0] == 0x82 and frame[2:] == sent[-4:]
            writer.close()

    asyncio.run(main())
    assert "Traceback" not in gate.log()


@pytest.mark.slow
def test_fast_server_slow_browser_keeps_memory_bounded(wsgate: GateFactory) -> None:
    total = 256 * MIB
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")
    assert gate.proc is not None
    block = os.urandom(MIB)

    async def framebuffer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // MIB):
            writer.write(block)
            await writer.drain()
        await reader.read()

    async def main() -> int:
        async with tcp_server(port, framebuffer):
            reader, writer = await raw_handshake(gate.port)
            rss = Peaks(gate)
            received = 0
            async with asyncio.timeout(240):
                while received < total:
                    chunk = await reader.read(256 * 1024)
                    assert chunk, "connection closed early"
                    received += len(chunk)
                    await asyncio.sleep(0.002)  # the slow browser
            writer.close()
            return rss.growth()

    growth = asyncio.run(main())
    print(f"wsgate peak RSS growth: {growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


@pytest.mark.slow
def test_flooding_browser_to_stalled_server_keeps_memory_bounded(wsgate: GateFactory) -> None:
    total = 128 * MIB
    port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{port}")
    assert gate.proc is not None
    release = asyncio.Event()
    counted = asyncio.Event()
    got = 0

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal got
        await release.wait()
        while got < total and (data := await reader.read(MIB)):
            got += len(data)
        counted.set()
        writer.close()

    async def main() -> int:
        async with tcp_server(port, stalled):
            _reader, writer = await raw_handshake(gate.port)
            rss = Peaks(gate)
            sent = 0
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    while sent < total:
                        writer.write(masked_frame(0x2, MIB, fin=True))
                        sent += MIB
                        await writer.drain()
            stuck_at = rss.growth()
            release.set()
            async with asyncio.timeout(120):
                while sent < total:
                    writer.write(masked_frame(0x2, MIB, fin=True))
                    sent += MIB
                    await writer.drain()
                await counted.wait()
            writer.close()
            assert got == total
            return max(stuck_at, rss.growth())

    growth = asyncio.run(main())
    print(f"wsgate peak RSS growth: {growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


def test_tls_server_speaking_first_loses_no_byte(
    wsgate: GateFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """A ``tls:`` server's greeting and a burst behind it, sent at once on
    connect: what the TLS layer decrypted before the client's leg opened is
    kept, and reaches the client in order."""
    port = free_port()
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(tls_files.ca_cert, roots / "ca.pem")
    gate = wsgate("--backend", f"tls:127.0.0.1:{port}:trustRoots={roots}")
    said = b"RFB 003.008\n" + os.urandom(2 * MIB)

    async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(said)
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_files.cert, tls_files.key)
        server = await asyncio.start_server(speak_first, "127.0.0.1", port, ssl=context)
        async with server:
            for _ in range(3):
                async with client(gate.url) as ws:
                    got = b""
                    async with asyncio.timeout(TIMEOUT):
                        while len(got) < len(said):
                            message = await ws.recv()
                            assert isinstance(message, bytes)
                            got += message
                    assert got == said

    asyncio.run(main())
    assert "Traceback" not in gate.log()
