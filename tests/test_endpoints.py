"""Listening through endpoint strings: unix:, haproxy: (PROXY protocol) and systemd: activation."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from peers import TIMEOUT, backend
from rawws import upgrade_request

from wsgate.testing import GateFactory, Wsgate, free_port, wait_for_port

HANDSHAKE = upgrade_request(b"/e", b"gw.example")
PING_TEXT = bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi"  # masked (zero mask) text "hi"


async def _talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes) -> bytes:
    writer.write(prefix + HANDSHAKE + PING_TEXT)
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        echo = await reader.readexactly(4)
    writer.close()
    return echo


def test_unix_socket_listener(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "wsgate.sock"
    gate = Wsgate("--listen", f"unix:{path}", "--backend", f"ws://127.0.0.1:{port}")
    gate.proc = subprocess.Popen(
        gate.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:

        async def main() -> None:
            async with asyncio.timeout(TIMEOUT):
                while not path.exists():
                    await asyncio.sleep(0.05)
            async with backend(port) as be:
                reader, writer = await asyncio.open_unix_connection(str(path))
                assert await _talk(reader, writer, b"") == b"\x81\x02hi"
                seen = await be.wait_seen()
                assert "X-Forwarded-For" not in seen.headers
                assert seen.headers["Forwarded"].startswith("for=unknown")

        asyncio.run(main())
    finally:
        gate.stop()


def test_haproxy_listener_forwards_the_real_client_address(wsgate: GateFactory) -> None:
    port, listen = free_port(), free_port()
    wsgate(
        "--listen", f"haproxy:tcp:{listen}:interface=127.0.0.1",
        "--backend", f"ws://127.0.0.1:{port}",
        wait_port=listen,
    )  # fmt: skip

    async def main() -> None:
        async with backend(port) as be:
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            proxy = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 8080\r\n"
            assert await _talk(reader, writer, proxy) == b"\x81\x02hi"
            seen = await be.wait_seen()
            assert seen.headers["X-Forwarded-For"] == "198.51.100.7"

    asyncio.run(main())


@pytest.mark.skipif(
    not shutil.which("systemd-socket-activate"), reason="needs systemd-socket-activate"
)
def test_systemd_socket_activation(tmp_path: Path) -> None:
    port, listen = free_port(), free_port()
    gate = Wsgate("--listen", "systemd:domain=INET:index=0", "--backend", f"ws://127.0.0.1:{port}")
    log = open(tmp_path / "wsgate.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        # Twisted wants LISTEN_FDNAMES too, which systemd (>= 227) always sets.
        [
            "systemd-socket-activate",
            "--fdname=wsgate",
            "-l",
            f"127.0.0.1:{listen}",
            *gate.command(),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(listen, proc=proc)

        async def main() -> None:
            async with backend(port):
                reader, writer = await asyncio.open_connection("127.0.0.1", listen)
                assert await _talk(reader, writer, b"") == b"\x81\x02hi"

        asyncio.run(main())
        # A worker's line reaches the log through its supervisor, a moment later.
        deadline = time.monotonic() + TIMEOUT
        while " open " not in (text := (tmp_path / "wsgate.log").read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
