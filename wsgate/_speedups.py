"""The hot path's shortcuts, measured in ``benchmarks/`` (see the README there).

- ``write``: send at once when a TCP transport's buffer is empty, instead of
  buffering until the reactor's next turn; this saves two ``epoll_ctl`` calls
  and a ``doWrite`` per message and leg. Anything not sent is buffered as
  usual, so backpressure is unchanged.
- ``install``: Autobahn's native (NVX, CFFI) masker costs ~9 us to set up per
  frame and its UTF-8 validator ~2 us per call; wsaccel's (Cython) cost
  ~1.3 us and ~0.5 us. NVX masks big frames faster, so frames up to
  ``_SMALL_FRAME`` use wsaccel and bigger ones NVX.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

#: Where wsaccel's per-byte cost overtakes NVX's set-up cost (measured ~6 KiB).
_SMALL_FRAME = 4096


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once when nothing is queued."""
    if (
        type(transport) in _TCP
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent < len(data):
                transport.write(data[sent:])
            return
    transport.write(data)


#: Exactly these classes: a subclass (TLS, a test double) keeps its own write.
_TCP = (tcp.Server, tcp.Client)

_installed = False


def install() -> None:
    """Point Autobahn's protocol module at the faster masker and validator."""
    global _installed
    if _installed:
        return
    try:
        from wsaccel.utf8validator import Utf8Validator
        from wsaccel.xormask import createXorMasker
    except ImportError:  # pragma: no cover - wsaccel is a dependency
        return
    from autobahn.websocket import protocol as module

    protocol: Any = module  # its globals, which mypy sees as private
    native = protocol.create_xor_masker

    def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
        if length is not None and length <= _SMALL_FRAME:
            return createXorMasker(mask, length)
        return native(mask, length)

    protocol.create_xor_masker = create_xor_masker
    protocol.Utf8Validator = Utf8Validator
    _installed = True


__all__ = ["install", "write"]
