"""Socket options wsgate sets itself on every connection it accepts or opens.

Autobahn's ``tcpNoDelay`` option never takes effect on Twisted: its
``connectionMade`` reads the attribute before the factory's options are
copied onto the protocol, and a bare ``except`` hides the AttributeError.
Without TCP_NODELAY, Nagle's algorithm against the peer's delayed ACK holds
the tail of a large message back by ~40 ms.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

#: A read this large is part of a big message (TLS hands over up to 16 KiB).
BIG_READ = 8192

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP transport (TLS and PROXY wrappers
    pass the call through to the socket); other transports are left alone."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    with contextlib.suppress(OSError):  # a unix socket: no Nagle to turn off
        set_no_delay(True)


def quick_ack(transport: Any) -> None:
    """ACK what was read now, and leave delayed-ACK mode, after a big read.

    A peer with Nagle's algorithm on (an Autobahn server: the module
    docstring) holds a big message's last small segment until what it sent
    before is ACKed; request-reply traffic puts this side in delayed-ACK
    (pingpong) mode, so on a busy machine the tail waited 40 ms in up to one
    128 KiB round trip in ten (benchmarks/bigrtt.py). The kernel re-enters
    that mode by itself: hence once per big read, not once per connection."""
    if _TCP_QUICKACK is None:
        return
    for _ in range(3):  # TLS and PROXY wrappers: the TCP transport below them
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            with contextlib.suppress(OSError):  # a unix socket
                handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            return
        transport = getattr(transport, "transport", None)


def keep_alive(transport: Any) -> None:
    """Turn TCP keepalive on: a stream backend has no WebSocket pings, so a
    peer that vanished without a FIN is noticed by the kernel's probes (and
    the route's idle_timeout)."""
    set_keep_alive = getattr(transport, "setTcpKeepAlive", None)
    if set_keep_alive is None:
        return
    with contextlib.suppress(OSError):
        set_keep_alive(True)


__all__ = ["BIG_READ", "keep_alive", "no_delay", "quick_ack"]
