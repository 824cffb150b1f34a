"""Backpressure: a huge message to a slow reader must not grow wsgate's memory.

The reader is slow on purpose (it paces its reads); what is asserted is
wsgate's peak RSS (VmHWM from /proc), not any timing.
"""

from __future__ import annotations

import asyncio

import pytest
from peers import backend
from rawws import MIB, Peaks, chunks, masked_frame, raw_handshake
from websockets.asyncio.server import ServerConnection

from wsgate.testing import GateFactory, free_port

pytestmark = pytest.mark.slow

#: "a few MiB": the bound the core issue sets for a 256 MiB message.
MAX_GROWTH = 16 * MIB


@pytest.mark.parametrize("backend_deflate", ["off", "on"])
def test_slow_reader_256_mib_message_keeps_memory_bounded(
    wsgate: GateFactory, backend_deflate: str
) -> None:
    total = 256 * MIB
    port = free_port()
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--max-message-size",
        "0",
        "--backend-deflate",
        backend_deflate,
    )
    assert gate.proc is not None

    async def send_huge(ws: ServerConnection) -> None:
        await ws.send(chunks(total))  # a fragmented message, streamed
        await ws.wait_closed()

    async def main() -> int:
        async with backend(port, send_huge):
            reader, writer = await raw_handshake(gate.port)
            rss = Peaks(gate)
            received = 0
            async with asyncio.timeout(240):
                while received < total:
                    chunk = await reader.read(256 * 1024)
                    assert chunk, "connection closed early"
                    received += len(chunk)
                    await asyncio.sleep(0.002)  # the slow reader
            writer.close()
            growth = rss.growth()
            # Frame headers add a few bytes per fragment.
            assert received >= total
            return growth

    growth = asyncio.run(main())
    print(f"wsgate peak RSS growth: {growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"


def test_flooding_client_to_stalled_backend_keeps_memory_bounded(wsgate: GateFactory) -> None:
    """The other direction: the backend stops reading, the client keeps sending."""
    total = 128 * MIB
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--max-message-size", "0")
    assert gate.proc is not None
    release = asyncio.Event()

    async def stalled(ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        await release.wait()
        ws.transport.resume_reading()
        got = 0
        async for fragment in ws.recv_streaming():
            got += len(fragment)
        await ws.send(str(got))

    async def main() -> int:
        async with backend(port, stalled, compression=None):
            reader, writer = await raw_handshake(gate.port)
            rss = Peaks(gate)
            frame = masked_frame(0x2, MIB, fin=False)
            sent = 0
            # Write until the kernel and wsgate stop taking data: wsgate must
            # stop reading the client when the backend leg's buffer is full.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    while sent < total:
                        writer.write(frame if sent == 0 else masked_frame(0x0, MIB, fin=False))
                        sent += MIB
                        await writer.drain()
            stuck_at = rss.growth()
            release.set()
            async with asyncio.timeout(120):
                while sent < total:
                    writer.write(masked_frame(0x0, MIB, fin=False))
                    sent += MIB
                    await writer.drain()
                writer.write(masked_frame(0x0, 0, fin=True))
                await writer.drain()
                reply = await reader.read(64)
            writer.close()
            assert reply[2:] == str(sent).encode()
            return max(stuck_at, rss.growth())

    growth = asyncio.run(main())
    print(f"wsgate peak RSS growth: {growth / MIB:.1f} MiB")
    assert growth < MAX_GROWTH, f"wsgate grew by {growth / MIB:.1f} MiB"
