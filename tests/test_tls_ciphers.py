"""TLS listeners offer modern TLS 1.2 suites only (Mozilla "intermediate"),
on ``ssl:`` endpoints and on ``certificates`` listeners alike; configurable."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from twisted.python import usage

from wsgate._config import ConfigError
from wsgate._configfile import load_file
from wsgate.tap import Options
from wsgate.testing import GateFactory, TlsFiles, free_port, make_tls_files

_CBC_SHA1 = {"rsa": "ECDHE-RSA-AES128-SHA", "ec": "ECDHE-ECDSA-AES128-SHA"}
_GCM = {"rsa": "ECDHE-RSA-AES128-GCM-SHA256", "ec": "ECDHE-ECDSA-AES128-GCM-SHA256"}


@pytest.fixture(scope="module", params=["rsa", "ec"])
def tls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, TlsFiles]:
    kind: str = request.param
    return kind, make_tls_files(tmp_path_factory.mktemp(kind), key_type=kind)


def _handshake(port: int, files: TlsFiles, cipher: str | None) -> str:
    """The TLS 1.2 suite a client (limited to ``cipher``) agreed on; raises if refused."""
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if cipher is not None:
        context.set_ciphers(cipher)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 426 ")  # a plain GET: upgrade required
        suite = tls.cipher()
        assert suite is not None
        return suite[0]


def _check(port: int, kind: str, files: TlsFiles, configured: bool) -> None:
    """By default GCM is served and CBC-SHA1 refused; configured to CBC-SHA1 only,
    the other way round."""
    allowed, refused = (_CBC_SHA1, _GCM) if configured else (_GCM, _CBC_SHA1)
    assert _handshake(port, files, allowed[kind]) == allowed[kind]
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        _handshake(port, files, refused[kind])
    if not configured:  # and what a default client gets
        assert _handshake(port, files, None).endswith(("GCM-SHA256", "GCM-SHA384", "POLY1305"))


@pytest.mark.parametrize("configured", [False, True])
def test_ssl_endpoint(wsgate: GateFactory, tls: tuple[str, TlsFiles], configured: bool) -> None:
    kind, files = tls
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}"
    extra = ("--tls-ciphers", _CBC_SHA1[kind]) if configured else ()
    wsgate("--listen", listen, "--backend", "ws://127.0.0.1:1", *extra, wait_port=port)
    _check(port, kind, files, configured)


def _file(tmp_path: Path, files: TlsFiles, port: int, extra: str = "") -> Path:
    path = tmp_path / "wsgate.toml"
    path.write_text(
        f'[[listener]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
        f'certificates = [{{ cert = "{files.cert}", key = "{files.key}" }}]\n{extra}'
        '[[route]]\nbackend = "ws://127.0.0.1:1"\n'
    )
    return path


@pytest.mark.parametrize("configured", [False, True])
def test_certificates_listener(
    wsgate: GateFactory, tls: tuple[str, TlsFiles], tmp_path: Path, configured: bool
) -> None:
    kind, files = tls
    port = free_port()
    extra = f'tls_ciphers = "{_CBC_SHA1[kind]}"\n' if configured else ""
    wsgate("--config", str(_file(tmp_path, files, port, extra)), wait_port=port)
    _check(port, kind, files, configured)


def test_a_cipher_string_that_names_nothing_is_refused(tls_files: TlsFiles, tmp_path: Path) -> None:
    path = _file(tmp_path, tls_files, 8443, 'tls_ciphers = "NOTACIPHER"\n')
    expected = r"\[\[listener\]\] #1: tls_ciphers: 'NOTACIPHER' names no TLS 1.2"
    with pytest.raises(ConfigError, match=expected):
        load_file(str(path))
    with pytest.raises(usage.UsageError, match="--tls-ciphers: 'x' names no"):
        Options().parseOptions(["--backend", "ws://h", "--tls-ciphers", "x"])
