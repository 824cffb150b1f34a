"""A raw WebSocket client whose reading and writing pace a test controls, and
the proxy's peak RSS: for the memory (backpressure) tests; the upgrade request
head for tests that speak WebSocket byte by byte."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import socket
import socketserver
import threading
from collections.abc import AsyncIterator

from wsgate.testing import Wsgate

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Peaks:
    """From now on, the peak RSS of each process that serves ``gate``: every
    worker of a ``--workers`` tree (the supervisor carries no traffic), or
    the one process."""

    def __init__(self, gate: Wsgate) -> None:
        self._before = {pid: peak_rss(pid) for pid in gate.serving_pids()}

    def growth(self) -> int:
        """The most any of them grew."""
        return max(peak_rss(pid) - before for pid, before in self._before.items())


async def chunks(total: int, size: int = MIB) -> AsyncIterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


#: RFC 6455's sample key, for tests that do not check the accept value.
SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_request(
    target: bytes = b"/", host: bytes = b"127.0.0.1", *fields: bytes, key: bytes = SAMPLE_KEY
) -> bytes:
    """A WebSocket upgrade request head with no permessage-deflate offer;
    ``fields`` are more header lines, e.g. ``b"Origin: https://a.example"``."""
    lines = [
        b"GET " + target + b" HTTP/1.1",
        b"Host: " + host,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: " + key,
        *fields,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with no permessage-deflate whose reading pace the test controls."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MIB)
    writer.write(upgrade_request(key=base64.b64encode(os.urandom(16))))
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


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RecordingBackend:
    """A WebSocket backend on 127.0.0.1 that keeps each request head's raw bytes.

    A thread with plain sockets, so sync tests (and hypothesis) can use it: it
    answers 101 and then reads and discards until the connection closes.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.heads: list[bytes] = []
        self._server: socketserver.ThreadingTCPServer | None = None

    def __enter__(self) -> RecordingBackend:
        heads = self.heads

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data[: data.index(b"\r\n\r\n") + 4]
                heads.append(head)
                key = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head)
                accept = base64.b64encode(hashlib.sha1((key[1] if key else b"") + _GUID).digest())
                sock.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw`` to 127.0.0.1:``port``; the answer's head (or all until EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
