"""The hot path's shortcuts, measured in ``benchmarks/`` (see the README there).

They lean on Twisted's and Autobahn's internals, so :func:`install` turns them
on only for the exact versions they were written and measured against
(``_WRITTEN_FOR``: after an upgrade, re-run tests/test_speedups.py and the
benchmarks, then change it), and only where ``twistd wsgate`` makes its
service. Anything else (a test's ``Gateway`` on a memory reactor, a program
embedding wsgate, other versions) runs the plain path.

- ``write``: send at once when a TCP transport's buffer is empty, instead of
  buffering until the reactor's next turn; this saves two ``epoll_ctl`` calls
  and a ``doWrite`` per message and leg. Anything not sent is buffered as
  usual, so ordering and backpressure are unchanged. Only on exactly
  ``tcp.Server`` / ``tcp.Client`` without TLS: past a TLS layer (started
  with ``startTLS``, or a ``TLSMemoryBIOProtocol``) the bytes would leave in
  clear, and a wrapper (the PROXY protocol's, a test double) keeps its own
  ``write``.
- Autobahn's native (NVX, CFFI) masker costs ~9 us to set up per frame and
  its UTF-8 validator ~2 us per call; wsaccel's (Cython) cost ~1.3 us and
  ~0.5 us. NVX masks big frames faster, so frames up to ``_SMALL_FRAME`` use
  wsaccel and bigger ones NVX.
- ``_do_poll``: the epoll reactor wraps every read and write event in
  ``log.callWithLogger``, which builds a log context (a prefix string and two
  dicts) only legacy ``log.msg`` calls read: 10% of wsgate's CPU per message.
  wsgate logs with ``twisted.logger``; a legacy error logged during an event
  is still logged, with ``-`` as its system.

- TLS (``_tlspath``): Twisted's memory-BIO TLS writes without its
  ``callLater(0)`` aggregation, its ciphertext out by the eager write, and
  without an OpenSSL exception per read, when pyOpenSSL is the version it
  was written for too.

- The garbage collector (``_gctune``): start-up frozen, young collections
  rarer. Not tied to any version, so on whatever the versions are.

- Debug formatting: Autobahn pretty-prints its whole configuration (and a
  client's transport details) for a debug line on every connection, debug
  logged or not: about a tenth of a handshake's CPU. Its module-global
  ``pformat`` becomes lazy (formatted only if an observer reads the line);
  ``Timings.__str__``, which returns that ``pformat``, formats for real.
"""

from __future__ import annotations

import errno
import pprint
import types
from typing import Any

from autobahn.util import hltype as _hltype
from autobahn.util import hlval as _hlval
from autobahn.websocket.xormasker import (  # type: ignore[attr-defined]
    create_xor_masker as _native_masker,
)
from twisted.internet import tcp
from twisted.logger import Logger
from twisted.protocols import tls
from twisted.python import log
from wsaccel.utf8validator import Utf8Validator as _WsaccelValidator
from wsaccel.xormask import createXorMasker as _wsaccel_masker

from wsgate import _gctune, _tlspath

_log = Logger(namespace="wsgate")

#: The versions whose internals this module relies on.
_WRITTEN_FOR = {"Twisted": "26.10.0", "Autobahn": "26.10.2"}

#: Where wsaccel's per-byte cost overtakes NVX's set-up cost (measured ~6 KiB).
_SMALL_FRAME = 4096

_SEND_LIMIT = tcp.Connection.SEND_LIMIT

#: Exactly these classes: a subclass or a wrapper keeps its own write.
_TCP = (tcp.Server, tcp.Client)

#: Whether ``write`` may send at once (over TCP; over TLS); set by ``install``.
_eager = False
_eager_tls = False

_TLS_TRANSPORT = tls.BufferingTLSTransport


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once when that is safe and nothing
    is queued."""
    if (
        _eager
        and type(transport) in _TCP
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
            # EAGAIN, ENOBUFS, or a dead socket (EPIPE, ECONNRESET): write
            # queues the data and doWrite meets the error, as Twisted's own.
            sent = 0
        if sent < len(data):
            transport.write(data[sent:] if sent else data)
        return
    if _eager_tls and type(transport) is _TLS_TRANSPORT and _tlspath.write(transport, data):
        return
    transport.write(data)


def install(reactor: Any) -> bool:
    """Turn the shortcuts on for ``reactor`` if Twisted and Autobahn are the
    versions they were written for; log one line either way."""
    global _eager, _eager_tls
    _gctune.install(reactor)
    found = _versions()
    if found != _WRITTEN_FOR:
        _log.info(
            "speedups: off (written for Twisted {want_twisted} and Autobahn {want_autobahn}, "
            "found Twisted {twisted} and Autobahn {autobahn})",
            want_twisted=_WRITTEN_FOR["Twisted"],
            want_autobahn=_WRITTEN_FOR["Autobahn"],
            twisted=found["Twisted"],
            autobahn=found["Autobahn"],
        )
        return False
    _fast_masking()
    _lazy_debug_formatting()
    on = [
        "eager TCP writes",
        "wsaccel masker and UTF-8 validator",
        "debug formatting only when read",
    ]
    if _fast_poll(reactor):
        on.append("epoll events without a log context")
    _eager = True
    if _tlspath.install(write):
        _eager_tls = True
        on.append("TLS records written at once")
    else:
        on.append(f"not the TLS path (written for pyOpenSSL {_tlspath.WRITTEN_FOR})")
    _log.info(
        "speedups: on (Twisted {twisted}, Autobahn {autobahn}): {on}",
        twisted=found["Twisted"],
        autobahn=found["Autobahn"],
        on=", ".join(on),
    )
    return True


def _versions() -> dict[str, str]:
    """The versions actually imported (not what the package metadata says)."""
    from autobahn import __version__ as autobahn  # type: ignore[attr-defined]

    from twisted import __version__ as twisted

    return {"Twisted": twisted, "Autobahn": autobahn}


def _fast_masking() -> None:
    """Point Autobahn's protocol module at the faster masker and validator."""
    from autobahn.websocket import protocol as module

    protocol: Any = module  # its globals, which mypy sees as private
    protocol.create_xor_masker = _create_xor_masker
    protocol.Utf8Validator = _WsaccelValidator


class _LazyFormat:
    """``pprint.pformat(value)``, computed only if a log observer reads it."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __str__(self) -> str:
        return pprint.pformat(self._value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy_debug_formatting() -> None:
    """Autobahn pretty-prints its whole configuration (and a client's
    transport details) for a debug line on every connection, before the
    logger looks at the level: a tenth of a handshake's CPU. Its module's
    ``pformat`` becomes lazy; ``Timings.__str__``, the one caller that must
    return a str, formats for real. So do ``hltype`` and ``hlval`` (a
    method's qualified name, coloured), which only its debug lines take:
    about 20 calls per connection (~1 us each for ``hltype``)."""
    from autobahn.twisted import websocket as twisted_module
    from autobahn.websocket import protocol as module

    protocol: Any = module  # its globals, which mypy sees as private
    protocol.pformat = _LazyFormat
    protocol.Timings.__str__ = _timings_str
    modules: tuple[Any, ...] = (protocol, twisted_module)
    for where in modules:
        where.hltype = _LazyCall.of(_hltype)
        where.hlval = _LazyCall.of(_hlval)


class _LazyCall:
    """``call(*args)`` made into text only if a log observer reads it."""

    __slots__ = ("_args", "_call", "_kwargs")

    def __init__(self, call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._call = call
        self._args = args
        self._kwargs = kwargs

    @classmethod
    def of(cls, call: Any) -> Any:
        def lazy(*args: Any, **kwargs: Any) -> _LazyCall:
            return cls(call, args, kwargs)

        lazy.__wrapped__ = call  # type: ignore[attr-defined]
        return lazy

    def __str__(self) -> str:
        return str(self._call(*self._args, **self._kwargs))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _timings_str(timings: Any) -> str:
    return pprint.pformat(timings._timings)


def _create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's ``create_xor_masker``, with wsaccel's masker for small frames."""
    if length is not None and length <= _SMALL_FRAME:
        return _wsaccel_masker(mask, length)
    return _native_masker(mask, length)


def _fast_poll(reactor: Any) -> bool:
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


__all__ = ["install", "write"]
