"""Socket options wsgate sets itself on every connection it accepts or opens.

Autobahn's ``tcpNoDelay`` option never takes effect on Twisted: its
``connectionMade`` reads the attribute before the factory's options are
copied onto the protocol, and a bare ``except`` hides the AttributeError.
Without TCP_NODELAY, Nagle's algorithm against the peer's delayed ACK holds
the tail of a large message back by ~40 ms.
"""

from __future__ import annotations

import contextlib
from typing import Any


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP transport (TLS and PROXY wrappers
    pass the call through to the socket); other transports are left alone."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    with contextlib.suppress(OSError):  # a unix socket: no Nagle to turn off
        set_no_delay(True)


def keep_alive(transport: Any) -> None:
    """Turn TCP keepalive on: a stream backend has no WebSocket pings, so a
    peer that vanished without a FIN is noticed by the kernel's probes (and
    the route's idle_timeout)."""
    set_keep_alive = getattr(transport, "setTcpKeepAlive", None)
    if set_keep_alive is None:
        return
    with contextlib.suppress(OSError):
        set_keep_alive(True)


__all__ = ["keep_alive", "no_delay"]
