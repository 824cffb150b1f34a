"""TLS for both legs: verified wss:// backends, and ALPN on TLS listeners."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from wsgate._config import load_ca_file

if TYPE_CHECKING:
    from wsgate._config import Backend, RouteSettings


def backend_tls_options(backend: Backend, settings: RouteSettings) -> Any:
    """Client TLS for a wss:// backend: the name is checked with service_identity."""
    if settings.backend_insecure:
        return _Unverified(backend.host)
    trust = load_ca_file(settings.backend_ca) if settings.backend_ca else ssl.platformTrust()
    return ssl.optionsForClientTLS(backend.host, trustRoot=trust, acceptableProtocols=[b"http/1.1"])


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """``--backend-insecure``: TLS without checking the certificate or name."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname.encode("idna")
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection


def restrict_ciphers(endpoint: Any, ciphers: str) -> None:
    """Give an ``ssl:`` (or ``haproxy:ssl:``) listening endpoint our TLS 1.2 ciphers.

    Twisted's ``ssl:`` parser takes no cipher option and its defaults allow
    CBC-SHA1 suites; its ``CertificateOptions`` makes one context for every
    connection, so setting the list on that context before listening covers
    them all. Other endpoints are left as they are.
    """
    while endpoint is not None:
        options = getattr(endpoint, "_sslContextFactory", None)
        if options is not None and hasattr(options, "getContext"):
            options.getContext().set_cipher_list(ciphers.encode("ascii"))
            return
        endpoint = getattr(endpoint, "_wrappedEndpoint", None)


def is_tls_error(exc: BaseException) -> bool:
    return isinstance(exc, SSL.Error) or type(exc).__name__ == "VerificationError"


def describe_tls_error(exc: BaseException) -> str:
    """Say which check failed, from OpenSSL's error queue or service_identity."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = []
        for item in exc.args[0]:
            if isinstance(item, tuple) and len(item) == 3:
                parts.append(item[2] or item[0])
            else:
                parts.append(str(item))
        return "; ".join(p for p in parts if p) or "handshake failed"
    if type(exc).__name__ == "VerificationError":
        return f"certificate does not match the backend's name: {exc}"
    return str(exc) or type(exc).__name__
