"""The fault suite's data path: a peer killed or frozen mid-message, and
decompression bombs. Peers that die run in their own process
(``faultpeer.py``), so a test can SIGKILL or SIGSTOP them; the surviving peer
is a ``websockets`` client or server in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from rawws import MIB
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from wsgate.testing import Wsgate, free_port

GateFactory = Callable[..., Wsgate]
PEER = str(Path(__file__).with_name("faultpeer.py"))
RUNS = 5
#: Bound on wsgate's peak RSS growth while a peer is frozen or a bomb goes off.
MAX_GROWTH = 32 * MIB


class Recording(ClientConnection):
    """A client that remembers how its TCP connection ended (None: a FIN)."""

    lost_with: Exception | str | None = "still open"

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_with = exc
        super().connection_lost(exc)


@contextlib.asynccontextmanager
async def peer(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, PEER, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        await proc.wait()


async def said(proc: asyncio.subprocess.Process, word: str) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(3 * TIMEOUT):  # deflating a flood on a busy machine
        line = await proc.stdout.readline()
    assert line.decode().strip() == word, line


async def flood() -> AsyncIterator[bytes]:
    block = os.urandom(64 * 1024)
    for _ in range(16 * 1024):  # at most 1 GiB
        yield block


async def close_lines(gate: Wsgate, count: int) -> list[str]:
    """The connections' closing log lines, once ``count`` are written."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            lines = [x for x in gate.log().splitlines() if "[wsgate#info] close " in x]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)


def gate_for(wsgate: GateFactory, port: int, deflate: str, *args: str) -> Wsgate:
    return wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--max-message-size",
        "0",
        "--client-deflate",
        deflate,
        "--backend-deflate",
        deflate,
        *args,
    )


@pytest.mark.slow
@pytest.mark.parametrize("deflate", ["off", "on"])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_backend_killed_mid_message_client_gets_1011_cleanly(
    wsgate: GateFactory, direction: str, deflate: str
) -> None:
    """SIGKILL the backend while a message streams either way: the client gets
    a complete closing handshake with 1011 (close frame, its reply read, FIN),
    every run."""
    port = free_port()
    gate = gate_for(wsgate, port, deflate)
    compression = "deflate" if deflate == "on" else None

    async def one_run() -> None:
        role = "sink" if direction == "upload" else "source"
        async with peer("backend", str(port), role, deflate) as proc:
            await said(proc, "ready")
            async with client(gate.url, compression=compression, create_connection=Recording) as ws:
                assert isinstance(ws, Recording)

                async def use() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        if direction == "upload":
                            await ws.send(flood())
                        else:
                            async for _ in ws.recv_streaming():
                                pass

                using = asyncio.ensure_future(use())
                await said(proc, "busy")
                proc.kill()
                async with asyncio.timeout(TIMEOUT):
                    await using
                    await ws.wait_closed()
            received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
            assert received is not None, "no close frame: 1006"
            assert received.code == 1011, received
            assert sent is not None, "the client did not answer the close"
            assert ws.lost_with is None, f"not closed with a FIN: {ws.lost_with!r}"

    async def main() -> list[str]:
        for _ in range(RUNS):
            await one_run()
        return await close_lines(gate, RUNS)

    for line in asyncio.run(main()):
        # What wsgate sent and received on each leg (the client's answer is
        # its own: websockets answers 1002 to a close in mid-message).
        assert "first=backend dropped client=sent 1011/recv 10" in line, line
        assert "backend=recv 1006" in line, line
    assert "Traceback" not in gate.log()


@pytest.mark.slow
@pytest.mark.parametrize("deflate", ["off", "on"])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_client_killed_mid_message_backend_gets_1001_cleanly(
    wsgate: GateFactory, direction: str, deflate: str
) -> None:
    """SIGKILL the client while a message streams either way: the backend gets
    a complete closing handshake with 1001, every run."""
    port = free_port()
    gate = gate_for(wsgate, port, deflate)
    compression = "deflate" if deflate == "on" else None
    conns: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        if direction == "upload":  # the client uploads: the backend reads
            async for _ in ws.recv_streaming():
                pass
        else:
            await ws.send(flood())

    async def main() -> list[str]:
        async with backend(port, handler, compression=compression) as be:
            for run in range(1, RUNS + 1):
                async with peer("client", gate.url, direction, deflate) as proc:
                    await said(proc, "busy")
                    proc.kill()
                    seen = await be.wait_seen(run)
                    async with asyncio.timeout(TIMEOUT):
                        await seen.closed.wait()
                ws = conns[-1]
                received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
                assert received is not None, "no close frame: 1006"
                assert received.code == 1001, received
                assert sent is not None, "the backend did not answer the close"
        return await close_lines(gate, RUNS)

    for line in asyncio.run(main()):
        assert "first=client dropped client=recv 1006" in line, line
        assert "backend=sent 1001/recv 10" in line, line
    assert "Traceback" not in gate.log()
