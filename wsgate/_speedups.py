"""The hot path's shortcuts, measured in ``benchmarks/`` (see the README there).

- ``write``: send at once when a TCP transport's buffer is empty, instead of
  buffering until the reactor's next turn; this saves two ``epoll_ctl`` calls
  and a ``doWrite`` per message and leg. Anything not sent is buffered as
  usual, so backpressure is unchanged. Only on exactly ``tcp.Server`` /
  ``tcp.Client`` without TLS: past a TLS layer (started with ``startTLS``, or
  a ``TLSMemoryBIOProtocol``) the bytes would leave in clear, and a wrapper
  (the PROXY protocol's, a test double) keeps its own ``write``.
- ``install``: Autobahn's native (NVX, CFFI) masker costs ~9 us to set up per
  frame and its UTF-8 validator ~2 us per call; wsaccel's (Cython) cost
  ~1.3 us and ~0.5 us. NVX masks big frames faster, so frames up to
  ``_SMALL_FRAME`` use wsaccel and bigger ones NVX.
- ``fast_poll``: the epoll reactor wraps every read and write event in
  ``log.callWithLogger``, which builds a log context (a prefix string and two
  dicts) only legacy ``log.msg`` calls read: 10% of wsgate's CPU per message.
  wsgate logs with ``twisted.logger``; a legacy error logged during an event
  is still logged, with ``-`` as its system.

Not worked around: Autobahn pretty-prints its whole configuration (and a
client's transport details) for a debug line on every connection, debug
logged or not. The only handle is its module-global ``pformat``, which its
``Timings.__str__`` returns too, so replacing it breaks ``str(timings)``.
"""

from __future__ import annotations

import errno
import types
from typing import Any

from twisted.internet import tcp
from twisted.python import log

#: Where wsaccel's per-byte cost overtakes NVX's set-up cost (measured ~6 KiB).
_SMALL_FRAME = 4096


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once when nothing is queued."""
    if (
        type(transport) in _TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            # What writeSomeData does, without its EINTR loop (Python retries
            # EINTR itself) and the slice it takes for SEND_LIMIT.
            sent = transport.socket.send(data) if len(data) <= _SEND_LIMIT else 0
        except OSError:
            sent = 0  # EAGAIN, ENOBUFS or a dead socket: write finds out
        if sent < len(data):
            transport.write(data[sent:] if sent else data)
        return
    transport.write(data)


_SEND_LIMIT = tcp.Connection.SEND_LIMIT


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


def fast_poll(reactor: Any) -> bool:
    """Run the epoll reactor's events without the legacy log context."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if type(reactor) is not EPollReactor:
        return False
    reactor.doIteration = types.MethodType(_do_poll, reactor)  # type: ignore[method-assign]
    return True


def _do_poll(reactor: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` without ``log.callWithLogger`` around each event."""
    try:
        events = reactor._poller.poll(-1 if timeout is None else timeout, len(reactor._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:  # as callWithLogger: log it, keep the loop going
            log.err()


__all__ = ["fast_poll", "install", "write"]
