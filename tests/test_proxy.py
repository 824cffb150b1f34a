"""End to end over 127.0.0.1: ``websockets`` client -> wsgate (twistd) -> ``websockets`` backend."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random

import pytest
from peers import TIMEOUT, backend, client, negotiated
from rawws import upgrade_request
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgate.testing import GateFactory, free_port

MIXES = [("on", "on"), ("on", "off"), ("off", "on"), ("off", "off")]


def _messages() -> list[str | bytes]:
    rng = random.Random(7)
    out: list[str | bytes] = ["", b"", "a", b"\x00", "é" * 60, bytes(125), bytes(126)]
    out += [os.urandom(65535), os.urandom(65536), "x" * 65537]
    out += [rng.randbytes(3 * 1024 * 1024), "ünïcødé ✓ " * 300_000]
    return out


@pytest.mark.parametrize(("client_deflate", "backend_deflate"), MIXES)
def test_echo_every_mix(wsgate: GateFactory, client_deflate: str, backend_deflate: str) -> None:
    port = free_port()
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--client-deflate",
        client_deflate,
        "--backend-deflate",
        backend_deflate,
    )

    async def main() -> None:
        async with backend(port) as be, client(gate.url + "/chat?room=1") as ws:
            for message in _messages():
                await ws.send(message)
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == message
            # Fragmented messages are reassembled: fragmentation may differ.
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"\x01" * 70000, b"", b"\x02"])
            assert await ws.recv() == b"\x01" * 70000 + b"\x02"

            seen = await be.wait_seen()
            assert seen.path == "/chat?room=1"
            client_ext = negotiated(ws) or ""
            assert ("permessage-deflate" in client_ext) == (client_deflate == "on")
            assert ("permessage-deflate" in (seen.extensions or "")) == (backend_deflate == "on")

    asyncio.run(main())
    if client_deflate == "on":
        gate.wait_for_log("client_ext=[permessage-deflate")


def test_defaults_compress_for_the_client_only(wsgate: GateFactory) -> None:
    """As shipped: deflate with a client that offers it, none with the backend
    even though it offers it too (compression offload)."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port) as be, client(gate.url + "/x") as ws:
            message = "compressible " * 1000
            await ws.send(message)
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == message
            assert "permessage-deflate" in (negotiated(ws) or "")
            seen = await be.wait_seen()
            assert seen.extensions is None

    asyncio.run(main())
    gate.wait_for_log("backend_ext=[none]")


def test_text_stays_text_binary_stays_binary(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port), client(gate.url) as ws:
            await ws.send("text")
            assert isinstance(await ws.recv(), str)
            await ws.send(b"bin")
            assert isinstance(await ws.recv(), bytes)

    asyncio.run(main())


def test_backend_speaks_first(wsgate: GateFactory) -> None:
    """A message the backend sends with its 101 reaches the client."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def greet(ws: ServerConnection) -> None:
        await ws.send("welcome")
        await ws.send(b"\x00" * 200_000)
        await echo_rest(ws)

    async def main() -> None:
        async with backend(port, greet), client(gate.url) as ws:
            assert await ws.recv() == "welcome"
            assert await ws.recv() == b"\x00" * 200_000
            await ws.send("after")
            assert await ws.recv() == "after"

    asyncio.run(main())


async def echo_rest(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def test_subprotocol_chosen_by_backend(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with (
            backend(port, subprotocols=["v2.chat", "v3.chat"]) as be,
            client(gate.url, subprotocols=["v1.chat", "v3.chat"]) as ws,
        ):
            assert ws.subprotocol == "v3.chat"
            seen = await be.wait_seen()
            assert seen.subprotocol == "v3.chat"
            offered = seen.headers.get_all("Sec-WebSocket-Protocol")
            assert ", ".join(offered).replace(" ", "") == "v1.chat,v3.chat"

    asyncio.run(main())
    gate.wait_for_log("subprotocol=v3.chat")


def test_subprotocol_refused_by_backend(wsgate: GateFactory) -> None:
    """A backend that supports none of the offered subprotocols answers with none."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port, subprotocols=["other"]):
            with pytest.raises(Exception) as failed:
                async with client(gate.url, subprotocols=["v1.chat"]) as ws:
                    await ws.recv()
            # websockets' server refuses a handshake with no common subprotocol (400).
            assert isinstance(failed.value, InvalidStatus)
            assert failed.value.response.status_code == 400

    asyncio.run(main())


@pytest.mark.parametrize("status", [401, 403, 404])
def test_backend_refusal_status_reaches_client(wsgate: GateFactory, status: int) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port, refuse=status):
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url):
                    pass
            assert refused.value.response.status_code == status

    asyncio.run(main())


def test_backend_down_is_502(wsgate: GateFactory) -> None:
    port = free_port()  # nothing listens there
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with client(gate.url):
                pass
        response = refused.value.response
        assert response.status_code == 502
        assert b"unreachable" in response.body

    asyncio.run(main())


def test_backend_silent_is_504(wsgate: GateFactory) -> None:
    """A backend that accepts TCP but never answers the handshake: 504 after the timeout."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--handshake-timeout", "0.5")

    async def main() -> None:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        async with silent:
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url):
                    pass
            assert refused.value.response.status_code == 504

    asyncio.run(main())


def test_plain_get_is_426_and_bad_handshake_400(wsgate: GateFactory) -> None:
    gate = wsgate("--backend", f"ws://127.0.0.1:{free_port()}")

    async def request(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
        writer.write(raw)
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read()
        writer.close()
        return data

    async def main() -> None:
        plain = await request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 426 ")
        bad_key = await request(upgrade_request(host=b"x", key=b"short"))
        assert bad_key.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"Sec-WebSocket-Key" in bad_key  # the reason is in the body

    asyncio.run(main())


def test_malformed_deflate_offer_is_declined_not_refused(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port):
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
            writer.write(
                upgrade_request(
                    b"/",
                    b"x",
                    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8; "
                    b"bogus=1, permessage-deflate",
                )
            )
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            assert head.startswith(b"HTTP/1.1 101 ")
            # The malformed first offer is declined; the plain second one accepted.
            assert b"Sec-WebSocket-Extensions: permessage-deflate" in head

    asyncio.run(main())


def test_request_headers_forwarded(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}/base")

    async def main() -> None:
        cookies = [
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
        ]
        async with backend(port, extra_headers=cookies[:1]) as be:
            headers = {
                "Cookie": "session=abc",
                "Authorization": "Bearer t0k3n",
                "X-Custom": "yes",
                "Keep-Alive": "timeout=5",
            }
            async with client(
                gate.url + "/app?x=1",
                origin="https://app.example",  # type: ignore[arg-type]
                additional_headers=headers,
                user_agent_header="test-agent/1.0",
            ) as ws:
                seen = await be.wait_seen()
                assert ws.response is not None
                assert ws.response.headers.get("Set-Cookie") == "a=1; Path=/"
        h = seen.headers
        assert seen.path == "/base/app?x=1"
        assert h["Origin"] == "https://app.example"
        assert h["Cookie"] == "session=abc"
        assert h["Authorization"] == "Bearer t0k3n"
        assert h["X-Custom"] == "yes"
        assert h["User-Agent"] == "test-agent/1.0"
        assert "Keep-Alive" not in h
        assert h["X-Forwarded-For"] == "127.0.0.1"
        assert h["X-Forwarded-Proto"] == "http"
        assert h["X-Forwarded-Host"] == f"127.0.0.1:{gate.port}"
        assert h["Forwarded"] == f'for=127.0.0.1;host="127.0.0.1:{gate.port}";proto=http'

    asyncio.run(main())


CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]


@pytest.mark.parametrize("code", CLOSE_CODES)
def test_close_code_from_client_reaches_backend(wsgate: GateFactory, code: int) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port) as be:
            async with client(gate.url) as ws:
                await ws.send("hi")
                await ws.recv()
                await ws.close(code, f"bye {code}")
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert (seen.close_code, seen.close_reason) == (code, f"bye {code}")

    asyncio.run(main())


@pytest.mark.parametrize("code", CLOSE_CODES)
def test_close_code_from_backend_reaches_client(wsgate: GateFactory, code: int) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def closer(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(code, f"backend bye {code}")

    async def main() -> None:
        async with backend(port, closer), client(gate.url) as ws:
            await ws.send("close please")
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == code
            assert ws.close_reason == f"backend bye {code}"

    asyncio.run(main())


def test_backend_vanishing_closes_client_with_1011(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def vanish(ws: ServerConnection) -> None:
        await ws.recv()
        ws.transport.abort()  # TCP reset, no close frame

    async def main() -> None:
        async with backend(port, vanish), client(gate.url) as ws:
            await ws.send("x")
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1011

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_client_vanishing_closes_backend_with_1001(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port) as be:
            ws = await client(gate.url)
            await ws.send("x")
            await ws.recv()
            ws.transport.abort()
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1001

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_oversized_message_from_client(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--max-message-size", "64K")

    async def main() -> None:
        async with backend(port) as be, client(gate.url) as ws:
            await ws.send(b"x" * 65536)  # at the limit: fine
            assert len(await ws.recv()) == 65536
            await ws.send(b"x" * 65537)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1009
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1001

    asyncio.run(main())


@pytest.mark.parametrize("backend_deflate", ["on", "off"])
def test_oversized_message_from_backend(wsgate: GateFactory, backend_deflate: str) -> None:
    """Also a decompression bomb: 16 MiB of zeros is a few KiB on the wire."""
    port = free_port()
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--max-message-size",
        "1M",
        "--backend-deflate",
        backend_deflate,
    )

    async def bomb(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(bytes(16 * 1024 * 1024))
        await ws.wait_closed()

    async def main() -> None:
        async with backend(port, bomb) as be, client(gate.url) as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1014
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1009

    asyncio.run(main())


def test_client_pings_answered_by_wsgate(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> None:
        async with backend(port), client(gate.url) as ws:
            pong = await ws.ping(b"are you there")
            async with asyncio.timeout(TIMEOUT):
                await pong

    asyncio.run(main())


def test_log_lines_open_and_close(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--backend-deflate", "on")

    async def main() -> None:
        async with backend(port) as be:
            async with client(gate.url + "/logme") as ws:
                await ws.send("12345")
                await ws.recv()
                await ws.close(4000, "done")
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()

    asyncio.run(main())
    log = gate.wait_for_log("/logme -> ")
    opened = [line for line in log.splitlines() if " open " in line and "/logme" in line]
    assert len(opened) == 1
    assert f"-> ws://127.0.0.1:{port}" in opened[0]
    assert "client_ext=[permessage-deflate" in opened[0]
    assert "backend_ext=[permessage-deflate" in opened[0]

    async def closed_line() -> str:
        async with asyncio.timeout(TIMEOUT):
            while True:
                lines = [x for x in gate.log().splitlines() if " close " in x and "/logme" in x]
                if lines:
                    return lines[0]
                await asyncio.sleep(0.05)

    line = asyncio.run(closed_line())
    assert "client=sent 4000/recv 4000 'done'" in line
    assert "backend=sent 4000/recv 4000 'done'" in line
    assert "up=1 msgs/5 B" in line and "down=1 msgs/5 B" in line


def test_frames_sent_before_the_101_are_kept_in_order(wsgate: GateFactory) -> None:
    """A client that pipelines frames behind its handshake loses none of them."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--client-deflate", "off")

    def frame(text: bytes) -> bytes:
        return bytes([0x81, 0x80 | len(text)]) + b"\x00\x00\x00\x00" + text

    async def main() -> None:
        async with backend(port):
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
            writer.write(
                upgrade_request(host=b"x") + frame(b"one") + frame(b"two") + frame(b"three")
            )
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 ")
                bodies = []
                for _ in range(3):
                    header = await reader.readexactly(2)
                    bodies.append(await reader.readexactly(header[1]))
            writer.close()
            assert bodies == [b"one", b"two", b"three"]

    asyncio.run(main())


def test_backend_ignoring_close_is_dropped_after_the_close_timeout(wsgate: GateFactory) -> None:
    """No half-closed leg lingers: a backend that never answers our close is cut off."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--close-timeout", "1")

    async def main() -> None:
        gone = asyncio.Event()

        async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            # Read (and ignore) everything, never answer a close; note when wsgate hangs up.
            try:
                while await reader.read(65536):
                    pass
            except ConnectionResetError:
                pass  # wsgate aborts the connection: also gone
            gone.set()

        server = await asyncio.start_server(deaf, "127.0.0.1", port)
        async with server:
            async with client(gate.url) as ws:
                await ws.close(1000, "bye")
            async with asyncio.timeout(10):
                await gone.wait()

    asyncio.run(main())


def test_backend_breaking_framing_twice_in_one_read(wsgate: GateFactory) -> None:
    """A raw backend sends a good message, a stray continuation frame and more, in
    one write (wstest 5.15): the good message arrives, then 1014; no traceback."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--backend-deflate", "off")

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # let the client's leg open first
        # wstest 5.15: a message in two fragments, a continuation frame with
        # nothing to continue, a text message; all in one write.
        writer.write(b"\x01\x09fragment1\x80\x09fragment2\x00\x09fragment3\x81\x09fragment4")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(broken, "127.0.0.1", port)
        async with server, client(gate.url) as ws:
            assert await ws.recv() == "fragment1fragment2"
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1014

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_no_context_takeover_both_legs_round_trips(wsgate: GateFactory) -> None:
    """The lighter policy: wsgate drops and remakes its zlib state per message."""
    port = free_port()
    policy = "on,no_context_takeover"
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--client-deflate",
        policy,
        "--backend-deflate",
        policy,
    )

    async def main() -> None:
        async with backend(port) as be, client(gate.url) as ws:
            for message in ["same text " * 50] * 3 + [b"\x00" * 5000, "", "é" * 3000] * 2:
                await ws.send(message)
                assert await ws.recv() == message
            # The peers agreed to compress each message afresh too: wsgate keeps
            # no zlib state between messages on either leg.
            assert "client_no_context_takeover" in (negotiated(ws) or "")
            assert "server_no_context_takeover" in ((await be.wait_seen()).extensions or "")

    asyncio.run(main())
    assert "Traceback" not in gate.log()
