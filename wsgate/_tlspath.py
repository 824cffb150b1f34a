"""TLS connections' hot path: Twisted's memory-BIO TLS, with fewer turns.

Measured in ``benchmarks/`` (64 B round trips over a TLS listener). Twisted's
``BufferingTLSTransport`` holds every write for a ``callLater(0)`` (a timer
per message), its memory BIO's ciphertext is then buffered by the TCP
transport until the reactor's next turn (two ``epoll_ctl`` calls per
message), and every read and every flush ends in an OpenSSL "want read"
exception. Here, once installed:

- a write with nothing aggregated before it goes to OpenSSL at once, and
  the ciphertext out of the BIO is sent by the eager TCP write;
- a message's records are encrypted in one pass (no 16 KiB slices copied)
  and their ciphertext leaves in one ``send``;
- reads stop when neither the BIO nor OpenSSL holds more, and the records
  of one socket read reach the protocol in one ``dataReceived``;
- the send BIO is read only when it holds something.

Same bytes, same order, same errors as Twisted's; they lean on Twisted's and
pyOpenSSL's internals, so they are installed only for the versions they were
written for (``WRITTEN_FOR``), by ``_speedups.install``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL import __version__ as _pyopenssl_version
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.protocols import tls
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

#: The pyOpenSSL version whose internals this module relies on (Twisted's is
#: checked by ``_speedups``).
WRITTEN_FOR = "26.4.0"

#: The most plaintext one TLS record carries, so the most one SSL_read returns.
_RECORD = 16384

_TRANSPORT = tls.BufferingTLSTransport
_AGGREGATOR = tls._AggregateSmallWrites
_tls_protocol_write = tls.TLSMemoryBIOProtocol.write

#: The eager TCP write; set by ``install``.
_send: Callable[[Any, bytes], None] | None = None


def _waiting(bio: Any) -> int:
    """How many bytes a memory BIO holds (``BIO_get_mem_data`` with no pointer)."""
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


def write(transport: Any, data: bytes) -> bool:
    """Write ``data`` to a TLS transport at once, if nothing waits before it
    in Twisted's aggregation buffer; False: the caller writes as usual."""
    if _send is None:
        return False
    aggregator = transport._aggregator
    if type(aggregator) is not _AGGREGATOR or aggregator._buffer:
        return False
    _tls_protocol_write(transport, data)
    return True


def _write(self: Any, data: bytes) -> None:
    """``TLSMemoryBIOProtocol._write``: every record in one pass, one flush."""
    if self._lostTLSConnection:
        return
    connection = self._tlsConnection
    size = len(data)
    done = 0
    view = memoryview(data)
    try:
        while done < size:
            done += connection.send(view[done:] if done else data)
    except SSL.WantReadError:
        self._bufferedWrite(data[done:])
    except SSL.Error:
        self._tlsShutdownFinished(Failure())
        return
    self._flushSendBIO()


def _flush_send_bio(self: Any) -> None:
    """``TLSMemoryBIOProtocol._flushSendBIO``: read the BIO only when it
    holds something, all of it, and send it at once."""
    connection = self._tlsConnection
    bio = connection._from_ssl
    waiting = _waiting(bio)
    while waiting > 0:
        assert _send is not None
        _send(self.transport, connection.bio_read(waiting))
        waiting = _waiting(bio)


def _flush_receive_bio(self: Any) -> None:
    """``TLSMemoryBIOProtocol._flushReceiveBIO``: no read that can only fail,
    and what one socket read decrypts to is delivered in one piece."""
    connection = self._tlsConnection
    into = connection._into_ssl
    pieces: list[bytes] = []
    while not self._lostTLSConnection:
        try:
            pieces.append(connection.recv(_RECORD))
        except SSL.WantReadError:
            break
        except SSL.ZeroReturnError:
            # TLS has shut down: deliver what came before the close_notify.
            _deliver(self, pieces)
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        except SSL.Error:
            failure = Failure()
            _deliver(self, pieces)
            self._tlsShutdownFinished(failure)
        else:
            if not connection.pending() and not _waiting(into):
                break
    _deliver(self, pieces)
    self._flushSendBIO()


def _deliver(self: Any, pieces: list[bytes]) -> None:
    if not pieces:
        return
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    if not self._aborted:
        ProtocolWrapper.dataReceived(self, data)


def install(send: Callable[[Any, bytes], None]) -> bool:
    """Install for pyOpenSSL ``WRITTEN_FOR`` only; ``send`` is the eager TCP
    write the ciphertext goes out with. False (nothing changed) otherwise."""
    global _send
    if _pyopenssl_version != WRITTEN_FOR:
        return False
    _send = send
    tls.TLSMemoryBIOProtocol._write = _write  # type: ignore[method-assign]
    tls.TLSMemoryBIOProtocol._flushSendBIO = _flush_send_bio  # type: ignore[method-assign]
    tls.TLSMemoryBIOProtocol._flushReceiveBIO = _flush_receive_bio  # type: ignore[method-assign]
    return True


__all__ = ["install", "write"]
