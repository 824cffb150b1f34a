"""A WebSocket peer in its own process, so a fault test can SIGKILL or SIGSTOP it.

    python faultpeer.py backend PORT sink|source on|off
    python faultpeer.py client URL upload|download on|off

``source``/``upload`` send one endless (bounded: 1 GiB) fragmented binary
message of random bytes; ``sink``/``download`` read one. ``on`` offers
permessage-deflate. The peer prints ``ready`` once listening (backend) and
``busy`` once 2 MiB of the message have moved, so the test kills it
mid-message.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

CHUNK = 64 * 1024
BUSY_AFTER = 2 * 1024 * 1024
LIMIT = 1024 * 1024 * 1024


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def stream() -> AsyncIterator[bytes]:
    block = os.urandom(CHUNK)  # incompressible: deflate does not shrink the flood
    sent = 0
    while sent < LIMIT:
        yield block
        sent += CHUNK
        if sent == BUSY_AFTER:
            say("busy")


async def move(ws: Any, role: str) -> None:
    if role in ("source", "upload"):
        await ws.send(stream())
        return
    got = 0
    told = False
    async for piece in ws.recv_streaming():
        got += len(piece)
        if not told and got >= BUSY_AFTER:
            told = True
            say("busy")


async def main(kind: str, where: str, role: str, deflate: str) -> None:
    compression = "deflate" if deflate == "on" else None
    if kind == "backend":

        async def handler(ws: ServerConnection) -> None:
            await move(ws, role)

        async with serve(handler, "127.0.0.1", int(where), compression=compression, max_size=None):
            say("ready")
            await asyncio.sleep(120)
    else:
        async with connect(where, compression=compression, max_size=None) as ws:
            await move(ws, role)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
