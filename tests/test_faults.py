"""The fault suite's data path: a peer killed or frozen mid-message, and
decompression bombs. Peers that die run in their own process
(``faultpeer.py``), so a test can SIGKILL or SIGSTOP them; the surviving peer
is a ``websockets`` client or server in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from rawws import MIB, Peaks
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from wsgate.testing import TlsFiles, Wsgate, free_port

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
        # The send does not yield while nothing pushes back (wsgate relays
        # random bytes raw now, faster than the client compresses them): let
        # the test's other tasks (reading the peer's "busy") run.
        await asyncio.sleep(0)


async def close_lines(gate: Wsgate, count: int) -> list[str]:
    """The connections' closing log lines (of every worker), once ``count`` are written."""
    closing = re.compile(r"\[wsgate#info( worker \d+)?\] close ")
    async with asyncio.timeout(TIMEOUT):
        while True:
            lines = [x for x in gate.log().splitlines() if closing.search(x)]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)


def gate_for(
    wsgate: GateFactory, port: int, deflate: str, *args: str, wait_port: int | None = None
) -> Wsgate:
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
        wait_port=wait_port,
    )


async def kill_backend_mid_message(
    url: str, port: int, direction: str, deflate: str, ssl_context: ssl.SSLContext | None = None
) -> None:
    """One run: the client streams (or reads) a message, the backend is
    SIGKILLed; the client must see 1011, answer it, and then a FIN."""
    role = "sink" if direction == "upload" else "source"
    compression = "deflate" if deflate == "on" else None
    extra = {} if ssl_context is None else {"ssl": ssl_context}
    async with peer("backend", str(port), role, deflate) as proc:
        await said(proc, "ready")
        async with client(url, compression=compression, create_connection=Recording, **extra) as ws:
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

    async def main() -> list[str]:
        for _ in range(RUNS):
            await kill_backend_mid_message(gate.url, port, direction, deflate)
        return await close_lines(gate, RUNS)

    for line in asyncio.run(main()):
        # What wsgate sent and received on each leg (the client's answer is
        # its own: websockets answers 1002 to a close in mid-message).
        assert "first=backend dropped client=sent 1011/recv 10" in line, line
        assert "backend=recv 1006" in line, line
    assert "Traceback" not in gate.log()


@pytest.mark.slow
def test_backend_killed_mid_upload_over_tls_client_gets_1011_cleanly(
    wsgate: GateFactory, tls_files: TlsFiles
) -> None:
    """The same on a TLS listener, whose transport wraps producers its own way."""
    port, listen_port = free_port(), free_port()
    files = tls_files
    listen = f"ssl:{listen_port}:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}"
    gate = gate_for(wsgate, port, "off", "--listen", listen, wait_port=listen_port)
    context = ssl.create_default_context(cafile=str(files.ca_cert))

    async def main() -> None:
        for _ in range(RUNS):
            url = f"wss://127.0.0.1:{listen_port}"
            await kill_backend_mid_message(url, port, "upload", "off", context)

    asyncio.run(main())
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


class Flood:
    """An upload or download that counts what it handed over and stops on request."""

    def __init__(self) -> None:
        self.sent = 0
        self.stop = asyncio.Event()
        self._block = os.urandom(64 * 1024)

    async def blocks(self) -> AsyncIterator[bytes]:
        while not self.stop.is_set() and self.sent < 1024 * MIB:
            yield self._block
            self.sent += len(self._block)
            await asyncio.sleep(0)  # as in flood(): the watchers must run

    async def stalled(self, quiet: float = 2.0) -> int:
        """Wait until nothing more is taken for ``quiet`` seconds: the freeze
        has filled every buffer on the way, and backpressure holds."""
        async with asyncio.timeout(6 * TIMEOUT):
            while True:
                before = self.sent
                await asyncio.sleep(quiet)
                if self.sent == before:
                    return before

    async def moved(self, more: int) -> None:
        target = self.sent + more
        async with asyncio.timeout(6 * TIMEOUT):
            while self.sent < target:
                await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("deflate", ["off", "on"])
def test_frozen_backend_keeps_memory_bounded_and_recovers(
    wsgate: GateFactory, deflate: str
) -> None:
    """SIGSTOP the backend while the client keeps sending: wsgate stops
    reading the client instead of growing; after SIGCONT the data flows again
    and the connection closes cleanly."""
    port = free_port()
    gate = gate_for(wsgate, port, deflate)
    assert gate.proc is not None
    compression = "deflate" if deflate == "on" else None

    async def main() -> tuple[int, int]:
        async with peer("backend", str(port), "sink", deflate) as proc:
            await said(proc, "ready")
            rss = Peaks(gate)
            async with client(gate.url, compression=compression) as ws:
                flood = Flood()
                sending = asyncio.ensure_future(ws.send(flood.blocks()))
                await said(proc, "busy")
                proc.send_signal(signal.SIGSTOP)
                stuck_at = await flood.stalled()
                growth = rss.growth()
                proc.send_signal(signal.SIGCONT)
                await flood.moved(16 * MIB)
                flood.stop.set()
                async with asyncio.timeout(TIMEOUT):
                    await sending
                await ws.close()
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            return growth, stuck_at

    growth, stuck_at = asyncio.run(main())
    print(f"frozen backend: stalled after {stuck_at / MIB:.0f} MiB, RSS +{growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("deflate", ["off", "on"])
def test_frozen_client_keeps_memory_bounded_and_recovers(wsgate: GateFactory, deflate: str) -> None:
    """SIGSTOP the client while the backend keeps sending: bounded memory,
    and after SIGCONT the rest arrives and both legs close cleanly."""
    port = free_port()
    gate = gate_for(wsgate, port, deflate)
    assert gate.proc is not None
    compression = "deflate" if deflate == "on" else None
    flood = Flood()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(flood.blocks())
        await ws.close()

    async def main() -> tuple[int, int]:
        async with backend(port, handler, compression=compression) as be:
            rss = Peaks(gate)
            async with peer("client", gate.url, "download", deflate) as proc:
                await said(proc, "busy")
                proc.send_signal(signal.SIGSTOP)
                stuck_at = await flood.stalled()
                growth = rss.growth()
                proc.send_signal(signal.SIGCONT)
                await flood.moved(16 * MIB)
                flood.stop.set()
                seen = await be.wait_seen()
                async with asyncio.timeout(TIMEOUT):
                    await seen.closed.wait()
                    assert await proc.wait() == 0  # it read the whole message
                assert seen.close_code == 1000
            return growth, stuck_at

    growth, stuck_at = asyncio.run(main())
    print(f"frozen client: stalled after {stuck_at / MIB:.0f} MiB, RSS +{growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


BOMB = 64 * MIB  # zeros: about 64 KiB once deflated


def test_decompression_bomb_from_the_client(wsgate: GateFactory) -> None:
    """A small deflated message that inflates past max_message_size: the
    client gets 1009, the backend 1001 (the client failed; the backend did
    nothing wrong), and wsgate's memory stays bounded."""
    port = free_port()
    gate = gate_for(wsgate, port, "on", "--max-message-size", "1M")
    assert gate.proc is not None

    async def main() -> int:
        async with backend(port) as be:
            rss = Peaks(gate)
            async with client(gate.url, compression="deflate") as ws:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(bytes(BOMB))
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                assert ws.close_code == 1009
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1001
            return rss.growth()

    growth = asyncio.run(main())
    print(f"bomb from the client: RSS +{growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


def test_decompression_bomb_from_the_backend(wsgate: GateFactory) -> None:
    """The other way: the backend gets 1009, the client 1014 (bad gateway)."""
    port = free_port()
    gate = gate_for(wsgate, port, "on", "--max-message-size", "1M")
    assert gate.proc is not None

    async def bomb(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(bytes(BOMB))
        await ws.wait_closed()

    async def main() -> int:
        async with backend(port, bomb) as be:
            rss = Peaks(gate)
            async with client(gate.url, compression="deflate") as ws:
                await ws.send("go")
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                assert ws.close_code == 1014
            seen = await be.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1009
            return rss.growth()

    growth = asyncio.run(main())
    print(f"bomb from the backend: RSS +{growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"
