"""TLS with one certificate per host name (SNI), over any Twisted server endpoint.

``ssl:`` takes one certificate and only listens on TCP, and Twisted's own
``tls:`` (recent releases) reads a directory, listens on TCP only and picks its
default certificate arbitrarily. Wrapping the listening factory instead puts TLS
over ``tcp:``, ``unix:``, ``systemd:`` or ``haproxy:`` alike, with a default
the user chose and file errors found before anything binds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from wsgate._config import DEFAULT_TLS_CIPHERS, ConfigError

__all__ = [
    "CertificateSource",
    "ServerCreator",
    "SniCreator",
    "TlsSetupError",
    "load_sni_creator",
    "tls_factory",
]

#: Offered on every certificate's context: Chromium fails the handshake with
#: ERR_SSL_PROTOCOL_ERROR when a listener offers no ALPN (seen with the
#: OpenSSL that cryptography bundles), and SNI switches context before ALPN
#: runs.
_ALPN = [b"http/1.1"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class CertificateSource(Protocol):
    """Where one certificate lives (``_config.CertificateFile``): ``cert`` holds the
    leaf then its chain; ``key`` is None when the key is in ``cert``."""

    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str | None: ...


class ServerCreator(Protocol):
    """``IOpenSSLServerConnectionCreator`` as mypy sees it (no zope plugin here)."""

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection: ...


class TlsSetupError(ConfigError):
    """A certificate or key file is unusable; the message names the file."""


class _Site(NamedTuple):
    path: str
    context: SSL.Context


@implementer(IOpenSSLServerConnectionCreator)
class SniCreator:
    """Start every connection on the default certificate, switch on the SNI name.

    Build with ``load_sni_creator``. OpenSSL calls the servername callback
    before it selects ALPN, so the switched-to context's ALPN applies.
    """

    def __init__(self, default: _Site, exact: dict[str, _Site], wildcard: dict[str, _Site]):
        self._default = default
        self._exact = exact
        self._wildcard = wildcard
        # Before any Connection: pyOpenSSL freezes a Context once it is used.
        default.context.set_tlsext_servername_callback(self._switch)

    @property
    def default(self) -> str:
        """The file served without SNI, or for a name no certificate has."""
        return self._default.path

    @property
    def names(self) -> Mapping[str, str]:
        """Host name (or ``*.suffix``) -> certificate file, for logs."""
        names = {name: site.path for name, site in self._exact.items()}
        names.update({f"*.{suffix}": site.path for suffix, site in self._wildcard.items()})
        return MappingProxyType(names)

    def file_for(self, server_name: str | None) -> str:
        """The certificate file a client sending ``server_name`` (A-label form) gets."""
        return self._site_for(server_name).path

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._default.context, None)
        # Twisted's ALPN callback finds the protocol (and its factory) here.
        connection.set_app_data(tlsProtocol)
        return connection

    def _switch(self, connection: SSL.Connection) -> None:
        # Must not raise: pyOpenSSL turns an exception here into a fatal alert.
        server_name = connection.get_servername()
        site = self._site_for(
            None if server_name is None else server_name.decode("ascii", "replace")
        )
        if site is not self._default:
            connection.set_context(site.context)

    def _site_for(self, server_name: str | None) -> _Site:
        if not server_name:
            return self._default
        name = server_name.lower().rstrip(".")
        site = self._exact.get(name)
        if site is None and "." in name:
            site = self._wildcard.get(name.split(".", 1)[1])
        return site or self._default


def load_sni_creator(
    certificates: Sequence[CertificateSource],
    ciphers: str = DEFAULT_TLS_CIPHERS,
    client_ca: str | None = None,
) -> SniCreator:
    """Read and check every file now, so mistakes surface before listening.

    The first certificate is the default. Exact names beat wildcards; for the
    same name, the certificate listed first wins.
    """
    if not certificates:
        raise TlsSetupError("no certificate given: TLS needs at least one certificate file")
    sites: list[tuple[_Site, list[str]]] = []
    for index, files in enumerate(certificates):
        chain, key = _load_pair(files)
        names = _host_names(chain[0])
        if index and not names:
            raise TlsSetupError(
                f"{files.cert}: the certificate names no host (no subjectAltName DNS entry "
                "or subject CN), so no client could reach it; only the first certificate "
                "(the default) may be nameless"
            )
        context = _context(files, chain, key, ciphers)
        if client_ca is not None:
            _ask_for_client_certificates(context, client_ca)
        sites.append((_Site(files.cert, context), names))
    exact: dict[str, _Site] = {}
    wildcard: dict[str, _Site] = {}
    for site, names in sites:
        for name in names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], site)
            else:
                exact.setdefault(name, site)
    return SniCreator(sites[0][0], exact, wildcard)


def tls_factory(
    creator: ServerCreator, factory: IProtocolFactory, clock: IReactorTime
) -> TLSMemoryBIOFactory:
    """TLS around ``factory``, for listening on any endpoint.

    ``creator`` is usually a ``SniCreator``, or something delegating to one
    (so a reload can swap certificates). ``clock`` (the reactor) schedules the
    TLS layer's write coalescing; without it Twisted imports the global reactor.
    """
    return TLSMemoryBIOFactory(
        IOpenSSLServerConnectionCreator(creator), False, factory, clock=clock
    )


_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_Key = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _context(
    files: CertificateSource, chain: list[x509.Certificate], key: _Key, ciphers: str
) -> SSL.Context:
    """Twisted's choice of versions and sessions, plus ALPN, the listener's
    TLS 1.2 ciphers (Twisted's would allow CBC-SHA1) and this certificate.

    The certificate goes in as cryptography objects: pyOpenSSL (24.3+) deprecates
    its own X509 and PKey, which ``CertificateOptions(certificate=...)`` needs.
    """
    context = ssl.CertificateOptions(acceptableProtocols=_ALPN).getContext()
    context.set_cipher_list(ciphers.encode("ascii"))
    try:
        context.use_certificate(chain[0])
        context.use_privatekey(key)
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.check_privatekey()
    except SSL.Error as e:
        raise TlsSetupError(f"{files.cert}: OpenSSL refuses the certificate: {e}") from None
    return context


def _ask_for_client_certificates(context: SSL.Context, ca_file: str) -> None:
    """Mutual TLS: ask every client for a certificate that ``ca_file``'s CAs
    signed. One that sends none still connects: the route's ``client-cert``
    authenticator answers it with a readable 403 rather than a TLS alert;
    one that sends a certificate the CAs did not sign fails the handshake."""
    try:
        context.load_verify_locations(ca_file.encode())
    except SSL.Error as e:
        raise TlsSetupError(
            f"client_ca: {ca_file}: no CA certificate OpenSSL can read ({e})"
        ) from None
    except OSError as e:
        raise TlsSetupError(f"client_ca: cannot read {ca_file}: {e.strerror}") from None
    context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    context.load_client_ca(ca_file.encode())  # the CAs named to clients picking a certificate


def _load_pair(files: CertificateSource) -> tuple[list[x509.Certificate], _Key]:
    cert_blocks = _blocks(files.cert)
    chain = []
    for label, block in cert_blocks:
        if label != b"CERTIFICATE":
            continue
        try:
            chain.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise TlsSetupError(f"{files.cert}: a certificate cannot be read: {e}") from None
    if not chain:
        raise TlsSetupError(f"{files.cert}: no certificate found (expected PEM CERTIFICATE)")
    key_path = files.key or files.cert
    key_blocks = cert_blocks if files.key is None else _blocks(files.key)
    key_label, key_block = next(
        ((label, b) for label, b in key_blocks if label.endswith(b"PRIVATE KEY")), (b"", None)
    )
    if key_block is None:
        if files.key is None:
            raise TlsSetupError(
                f"{files.cert}: no private key found; give the key file, or append the "
                "key to this file"
            )
        raise TlsSetupError(f"{files.key}: not a PEM private key")
    if key_label.startswith(b"ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in key_block:
        raise TlsSetupError(f"{key_path}: the private key is encrypted; give an unencrypted key")
    try:
        key = serialization.load_pem_private_key(key_block, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TlsSetupError(f"{key_path}: the private key cannot be read: {e}") from None
    if not isinstance(key, _KEY_TYPES):
        raise TlsSetupError(
            f"{key_path}: a {type(key).__name__} cannot sign a TLS handshake; "
            "use an RSA, EC, Ed25519 or Ed448 key"
        )
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise TlsSetupError(f"{files.cert}: the key in {key_path} does not match the certificate")
    return chain, key


def _blocks(path: str) -> list[tuple[bytes, bytes]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TlsSetupError(f"{path}: {e.strerror}") from None
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _host_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName DNS entries; the subject CN only when it has none (RFC 6125)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [
            a.value if isinstance(a.value, str) else a.value.decode("ascii", "replace")
            for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return [name.lower().rstrip(".") for name in names]
