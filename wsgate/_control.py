"""The socket between a supervisor and one of its workers.

Messages are JSON objects, one per line, both ways; listening sockets for a
reload travel alongside as file descriptors (``SCM_RIGHTS``), each message
naming the endpoints of the descriptors sent with it, in order. The first
line a worker writes says whether it started (``{"ready": true}`` or
``{"failed": "why"}``): the supervisor reads it before its reactor runs.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

#: What a message handler gets: the message and the descriptors that came with it.
Handler = Callable[[dict[str, Any], list[int]], None]


@implementer(IFileDescriptorReceiver)
class Channel(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 256 * 1024 * 1024  # a metrics page with many routes

    def __init__(self, handle: Handler, lost: Callable[[], None]) -> None:
        self._handle = handle
        self._lost = lost
        self._fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        count = len(message.get("fds", ()))
        fds, self._fds = self._fds[:count], self._fds[count:]
        self._handle(message, fds)

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send ``message``; with ``fds``, list their endpoints in ``message["fds"]``."""
        for fd in fds:
            self.transport.sendFileDescriptor(fd)  # type: ignore[union-attr]
        self.sendLine(json.dumps(message).encode())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._lost()


def adopt(reactor: Any, sock: socket.socket, channel: Channel) -> None:
    """Hand ``sock`` (one end of a socketpair) to the reactor, speaking ``channel``;
    ``sock`` is closed (the reactor keeps its own copy)."""
    reactor.adoptStreamConnection(
        sock.fileno(), socket.AF_UNIX, protocol.Factory.forProtocol(lambda: channel)
    )
    sock.close()


def first_line(sock: socket.socket, timeout: float) -> dict[str, Any] | None:
    """Read the worker's first message (blocking, before any reactor runs);
    None if the socket closed or nothing came within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except TimeoutError:
        return None
    finally:
        sock.settimeout(None)
    line, _, rest = data.partition(b"\n")
    assert not rest, "a worker writes nothing after its first line until asked"
    message: dict[str, Any] = json.loads(line)
    return message


def say(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one message on a socket no reactor owns yet (blocking)."""
    sock.sendall(json.dumps(message).encode() + b"\n")


__all__ = ["Channel", "Handler", "adopt", "first_line", "say"]
