"""A raw WebSocket client whose reading and writing pace a test controls, and
the proxy's peak RSS: for the memory (backpressure) tests."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def chunks(total: int, size: int = MIB) -> AsyncIterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


async def raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with no permessage-deflate whose reading pace the test controls."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MIB)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


_PAYLOAD = os.urandom(MIB)


def masked_frame(opcode: int, size: int, fin: bool) -> bytes:
    """A client frame; the mask is all zeros, so the payload goes as it is."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + _PAYLOAD[:size]
