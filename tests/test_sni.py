"""SNI certificate choice, with real TLS handshakes: stdlib ``ssl`` (the system
OpenSSL) as the client, wsgate's TLS factory (pyOpenSSL's OpenSSL) as the
server, bytes pumped between them in memory; plus one real socket per endpoint
type in a child process."""

from __future__ import annotations

import datetime
import json
import selectors
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.wire import Echo

from wsgate._config import CertificateFile
from wsgate._sni import SniCreator, TlsSetupError, load_sni_creator, tls_factory

_PEM = serialization.Encoding.PEM
_NO_PASSWORD = serialization.NoEncryption()
_PKCS8 = serialization.PrivateFormat.PKCS8


class _Pki:
    """A root CA and an intermediate, issuing leaf certificates into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._sign(_name("sni test root"), self.root_key, self.root_key, None, ca=True)
        self.ca_file = directory / "root.pem"
        self.ca_file.write_bytes(self.root.public_bytes(_PEM))
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = self._sign(
            _name("sni test intermediate"), self.mid_key, self.root_key, self.root, ca=True
        )

    def issue(
        self,
        stem: str,
        dns: Sequence[str],
        *,
        cn: str = "leaf",
        via_intermediate: bool = False,
        combined: bool = False,
    ) -> CertificateFile:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer, issuer_key = (
            (self.mid, self.mid_key) if via_intermediate else (self.root, self.root_key)
        )
        leaf = self._sign(_name(cn), key, issuer_key, issuer, ca=False, dns=dns)
        chain = leaf.public_bytes(_PEM) + (self.mid.public_bytes(_PEM) if via_intermediate else b"")
        key_pem = key.private_bytes(_PEM, _PKCS8, _NO_PASSWORD)
        cert_path = self.directory / f"{stem}.pem"
        if combined:
            cert_path.write_bytes(chain + key_pem)
            return CertificateFile(str(cert_path))
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(chain)
        key_path.write_bytes(key_pem)
        return CertificateFile(str(cert_path), str(key_path))

    @staticmethod
    def _sign(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer_key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        *,
        ca: bool,
        dns: Sequence[str] = (),
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if dns:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def _leaf_der(files: CertificateFile) -> bytes:
    leaf = x509.load_pem_x509_certificate(Path(files.cert).read_bytes())
    return leaf.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class _Certs:
    pki: _Pki
    a: CertificateFile  # default: a.test, via an intermediate the client does not have
    b: CertificateFile  # b.test and *.b.test, key in the same file
    c: CertificateFile  # no subjectAltName: its subject CN c.test is its name

    def creator(self) -> SniCreator:
        return load_sni_creator([self.a, self.b, self.c])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> _Certs:
    pki = _Pki(tmp_path_factory.mktemp("sni"))
    return _Certs(
        pki,
        a=pki.issue("a", ["a.test"], via_intermediate=True),
        b=pki.issue("b", ["b.test", "*.b.test"], combined=True),
        c=pki.issue("c", [], cn="c.test"),
    )


@dataclass(frozen=True)
class _Session:
    cert_der: bytes
    tls_version: str | None
    client_alpn: str | None
    server_alpn: bytes | None
    sent: bytes
    echoed: bytes


def _handshake(
    creator: SniCreator,
    ca_file: Path,
    server_name: str | None,
    *,
    check_hostname: bool,
    version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> _Session:
    """A TLS session from stdlib ``ssl`` to an Echo behind ``tls_factory``, in memory."""
    clock = Clock()
    server = tls_factory(creator, Factory.forProtocol(Echo), clock).buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 50000)
    )
    assert server is not None
    transport = StringTransport()
    server.makeConnection(transport)

    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = check_hostname
    context.maximum_version = version
    context.set_alpn_protocols(["h2", "http/1.1"])  # what Chromium offers
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(to_client, to_server, server_hostname=server_name)

    def pump() -> None:
        while True:
            moved = False
            if data := to_server.read():
                server.dataReceived(data)
                moved = True
            clock.advance(0)  # flush the TLS layer's coalesced writes
            if data := transport.value():
                transport.clear()
                to_client.write(data)
                moved = True
            if not moved:
                return

    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
    else:
        pytest.fail("handshake did not finish")
    message = b"hello after SNI " + (server_name or "-").encode()
    client.write(message)
    echoed = b""
    for _ in range(10):
        pump()
        try:
            echoed += client.read(65536)
        except ssl.SSLWantReadError:
            continue
        if len(echoed) >= len(message):
            break
    assert not transport.disconnecting, "server dropped the connection"
    cert_der = client.getpeercert(binary_form=True)
    assert cert_der is not None
    return _Session(
        cert_der,
        client.version(),
        client.selected_alpn_protocol(),
        server.negotiatedProtocol,  # type: ignore[attr-defined]
        message,
        echoed,
    )


@pytest.mark.parametrize(
    ("server_name", "expected", "check_hostname"),
    [
        ("a.test", "a", True),
        ("b.test", "b", True),
        ("x.b.test", "b", True),
        ("C.Test", "c", True),
        ("unknown.test", "a", False),
        (None, "a", False),
    ],
)
def test_certificate_chosen_by_sni_with_alpn_and_data(
    certs: _Certs, server_name: str | None, expected: str, check_hostname: bool
) -> None:
    want: CertificateFile = getattr(certs, expected)
    session = _handshake(
        certs.creator(), certs.pki.ca_file, server_name, check_hostname=check_hostname
    )
    assert session.cert_der == _leaf_der(want)
    assert session.tls_version == "TLSv1.3"
    assert session.client_alpn == "http/1.1"
    assert session.server_alpn == b"http/1.1"
    assert session.echoed == session.sent


def test_tls12_client_also_switches(certs: _Certs) -> None:
    session = _handshake(
        certs.creator(),
        certs.pki.ca_file,
        "x.b.test",
        check_hostname=True,
        version=ssl.TLSVersion.TLSv1_2,
    )
    assert session.cert_der == _leaf_der(certs.b)
    assert session.tls_version == "TLSv1.2"
    assert (session.client_alpn, session.server_alpn) == ("http/1.1", b"http/1.1")
    assert session.echoed == session.sent


def test_names_for_logs(certs: _Certs) -> None:
    creator = certs.creator()
    assert creator.default == certs.a.cert
    assert dict(creator.names) == {
        "a.test": certs.a.cert,
        "b.test": certs.b.cert,
        "*.b.test": certs.b.cert,
        "c.test": certs.c.cert,
    }


def test_exact_beats_wildcard_and_first_listed_wins(tmp_path: Path) -> None:
    pki = _Pki(tmp_path)
    wild = pki.issue("wild", ["*.example.test"])
    exact = pki.issue("exact", ["www.example.test", "example.test"])
    again = pki.issue("again", ["example.test", "*.example.test", "other.test"])
    creator = load_sni_creator([wild, exact, again])
    assert creator.file_for("www.example.test") == exact.cert
    assert creator.file_for("WWW.Example.Test.") == exact.cert
    assert creator.file_for("api.example.test") == wild.cert
    assert creator.file_for("example.test") == exact.cert
    assert creator.file_for("other.test") == again.cert
    # A wildcard covers one label: not the bare domain, not two labels deep.
    assert creator.file_for("a.b.example.test") == wild.cert  # the default
    only_wild = load_sni_creator([exact, pki.issue("w2", ["*.w.test"])])
    assert only_wild.file_for("w.test") == exact.cert
    assert only_wild.file_for("a.b.w.test") == exact.cert
    assert only_wild.file_for("a.w.test") != exact.cert
    assert only_wild.file_for(None) == only_wild.file_for("") == exact.cert


def test_errors_name_the_file(certs: _Certs, tmp_path: Path) -> None:
    def error(*files: CertificateFile) -> str:
        with pytest.raises(TlsSetupError) as caught:
            load_sni_creator(files)
        assert isinstance(caught.value, ValueError)
        return str(caught.value)

    missing = str(tmp_path / "missing.pem")
    assert error(certs.a, CertificateFile(missing)) == f"{missing}: No such file or directory"
    assert error(CertificateFile(certs.a.cert, missing)).startswith(f"{missing}: No such file")

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    assert error(CertificateFile(str(not_pem), certs.a.key)).startswith(
        f"{not_pem}: no certificate found"
    )
    assert error(CertificateFile(certs.a.cert, str(not_pem))) == (
        f"{not_pem}: not a PEM private key"
    )

    assert certs.b.key is None and certs.a.key is not None
    assert error(CertificateFile(certs.b.cert, certs.a.key)) == (
        f"{certs.b.cert}: the key in {certs.a.key} does not match the certificate"
    )
    assert error(CertificateFile(certs.a.cert)).startswith(f"{certs.a.cert}: no private key found")

    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert error(CertificateFile(str(garbled), certs.a.key)).startswith(
        f"{garbled}: a certificate cannot be read"
    )

    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(Path(str(certs.a.key)).read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(_PEM, _PKCS8, serialization.BestAvailableEncryption(b"secret"))
    )
    assert error(CertificateFile(certs.a.cert, str(encrypted))).startswith(
        f"{encrypted}: the private key is encrypted"
    )

    nameless = certs.pki.issue("nameless", [], cn="")
    assert error(certs.a, nameless).startswith(f"{nameless.cert}: the certificate names no host")
    load_sni_creator([nameless, certs.a])  # as the default it needs no name

    assert "at least one certificate" in error()


_LISTEN = """
import json, sys
from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.wire import Echo
from wsgate._config import CertificateFile
from wsgate._sni import load_sni_creator, tls_factory

listen, files = sys.argv[1], json.loads(sys.argv[2])
creator = load_sni_creator([CertificateFile(*f) for f in files])
factory = tls_factory(creator, Factory.forProtocol(Echo), reactor)

def ready(port):
    host = port.getHost()
    print(host.port if hasattr(host, "port") else host.name.decode(), flush=True)

def failed(failure):
    failure.printTraceback()
    reactor.stop()

endpoints.serverFromString(reactor, listen).listen(factory).addCallbacks(ready, failed)
reactor.run()
"""


@pytest.fixture
def listener(certs: _Certs) -> Iterator[Callable[[str], str]]:
    """Start a child process listening with ``tls_factory`` on an endpoint string."""
    procs: list[subprocess.Popen[str]] = []

    def start(listen: str) -> str:
        files = json.dumps([[f.cert, f.key] for f in (certs.a, certs.b, certs.c)])
        proc = subprocess.Popen(
            [sys.executable, "-c", _LISTEN, listen, files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        procs.append(proc)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=30):
                pytest.fail("listener did not start within 30 s")
        address = proc.stdout.readline().strip()
        if not address:
            pytest.fail(f"listener failed: {proc.communicate(timeout=10)[1]}")
        return address

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_real_socket_over_any_endpoint(
    certs: _Certs, listener: Callable[[str], str], kind: str, tmp_path: Path
) -> None:
    if kind == "tcp":
        port = listener("tcp:0:interface=127.0.0.1")
        sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    else:
        path = listener(f"unix:{tmp_path / 's.sock'}")
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(path)
    context = ssl.create_default_context(cafile=str(certs.pki.ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(sock, server_hostname="x.b.test") as tls:
        assert tls.getpeercert(binary_form=True) == _leaf_der(certs.b)
        assert tls.selected_alpn_protocol() == "http/1.1"
        message = b"ping over " + kind.encode()
        tls.sendall(message)
        echoed = b""
        while len(echoed) < len(message) and (data := tls.recv(100)):
            echoed += data
        assert echoed == message
