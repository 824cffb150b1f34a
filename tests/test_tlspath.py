"""The TLS hot path (``_tlspath``) against Twisted's own: same bytes, same
order, same endings, with fewer timers, sends and deliveries.

Two ``TLSMemoryBIOProtocol``s (real OpenSSL, real certificates) joined by
``twisted.test.iosim``'s in-memory transports on a ``Clock``: nothing sleeps.
The end-to-end TLS tests (test_tls.py and others) run the same path through
``twistd wsgate``, which installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import error, protocol, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.protocols import tls
from twisted.python.failure import Failure
from twisted.test import iosim

from wsgate import _tlspath
from wsgate.testing import TlsFiles

ADDRESS = IPv4Address("TCP", "127.0.0.1", 443)


class _App(protocol.Protocol):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.lost: Failure | None = None

    @property
    def received(self) -> bytes:
        return b"".join(self.pieces)

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


class _Pair:
    """A TLS client and server in memory, each wrapping an ``_App``."""

    def __init__(self, tls_files: TlsFiles) -> None:
        self.clock = Clock()
        server_options = ssl.PrivateCertificate.loadPEM(tls_files.combined.read_text()).options()
        ca = ssl.Certificate.loadPEM(tls_files.ca_cert.read_text())
        client_options = ssl.optionsForClientTLS("localhost", trustRoot=ca)
        self.server_app, self.client_app = _App(), _App()
        server_factory = tls.TLSMemoryBIOFactory(
            server_options, False, protocol.Factory.forProtocol(lambda: self.server_app), self.clock
        )
        client_factory = tls.TLSMemoryBIOFactory(
            client_options, True, protocol.Factory.forProtocol(lambda: self.client_app), self.clock
        )
        self.server: Any = server_factory.buildProtocol(ADDRESS)
        self.client: Any = client_factory.buildProtocol(ADDRESS)
        self.pump = iosim.connect(
            self.server,
            iosim.FakeTransport(self.server, isServer=True),
            self.client,
            iosim.FakeTransport(self.client, isServer=False),
            greet=False,
        )
        self.flush()

    def flush(self) -> None:
        for _ in range(100):
            self.clock.advance(0)
            if not self.pump.pump() and not self.clock.getDelayedCalls():
                return
        raise AssertionError("the pair never went quiet")


def _send(transport: Any, data: bytes) -> None:
    transport.write(data)


@pytest.fixture(params=["twisted", "tlspath"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test on Twisted's path and on ``_tlspath``'s (undone after it)."""
    cls = tls.TLSMemoryBIOProtocol
    for name in ("_write", "_flushSendBIO", "_flushReceiveBIO"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(_tlspath, "_send", None)
    if request.param == "tlspath":
        assert _tlspath.install(_send)
    yield request.param


def _write(side: Any, data: bytes, path: str) -> None:
    """How wsgate's legs write: ``_tlspath.write`` first, Twisted's if it declines."""
    if path == "twisted" or not _tlspath.write(side, data):
        side.write(data)


def test_the_handshake_completes(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    pair.client.write(b"hello")
    pair.flush()
    assert pair.server_app.received == b"hello"
    assert pair.client_app.lost is None and pair.server_app.lost is None


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(st.booleans(), st.integers(0, 70_000), st.booleans()), min_size=1, max_size=12
    )
)
def test_same_bytes_in_the_same_order(writes: list[tuple[bool, int, bool]], path: str,
                                      tls_files: TlsFiles) -> None:  # fmt: skip
    """Writes of any size from either side, flushed now and then: each side
    receives exactly what the other wrote, in order."""
    pair = _Pair(tls_files)
    sent = {True: bytearray(), False: bytearray()}
    for n, (from_client, size, flush) in enumerate(writes):
        data = bytes([n % 251]) * size
        _write(pair.client if from_client else pair.server, data, path)
        sent[from_client] += data
        if flush:
            pair.flush()
    pair.flush()
    assert pair.server_app.received == bytes(sent[True])
    assert pair.client_app.received == bytes(sent[False])


def test_a_write_leaves_at_once_without_a_timer(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    out = pair.client.transport
    before = len(b"".join(out.stream))
    _write(pair.client, b"x" * 100, path)
    if path == "tlspath":
        assert pair.clock.getDelayedCalls() == []
        assert len(b"".join(out.stream)) > before + 100  # one record's ciphertext, sent
    else:  # Twisted aggregates until the reactor's next turn
        assert len(pair.clock.getDelayedCalls()) == 1 and len(b"".join(out.stream)) == before
    pair.flush()
    assert pair.server_app.received == b"x" * 100


def test_a_write_behind_aggregated_data_keeps_its_place(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    pair.client.write(b"first ")  # held by Twisted's aggregation
    _write(pair.client, b"second", path)
    pair.flush()
    assert pair.server_app.received == b"first second"


def test_the_records_of_one_read_arrive_in_one_piece(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    message = bytes(range(256)) * 192  # 48 KiB: three records
    _write(pair.server, message, path)
    pair.flush()
    assert pair.client_app.received == message
    assert len(pair.client_app.pieces) == (1 if path == "tlspath" else 3)


def test_data_then_close_notify(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    _write(pair.server, b"last words", path)
    pair.server.loseConnection()
    pair.flush()
    assert pair.client_app.received == b"last words"
    assert pair.client_app.lost is not None
    assert pair.client_app.lost.check(error.ConnectionDone), pair.client_app.lost


def test_garbage_ends_the_connection_with_the_tls_error(path: str, tls_files: TlsFiles) -> None:
    pair = _Pair(tls_files)
    pair.client.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a forged record
    pair.flush()
    assert pair.client_app.lost is not None
    assert pair.client_app.lost.check(SSL.Error), pair.client_app.lost


def test_not_installed_for_another_pyopenssl(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = tls.TLSMemoryBIOProtocol
    for name in ("_write", "_flushSendBIO", "_flushReceiveBIO"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(_tlspath, "_send", None)
    monkeypatch.setattr(_tlspath, "_pyopenssl_version", "99.0.0")
    before = cls._write
    assert not _tlspath.install(_send)
    assert cls._write is before and _tlspath._send is None
    assert not _tlspath.write(object(), b"x")
