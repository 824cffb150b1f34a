"""Built-in authenticators that need no network: ``basic`` (an htpasswd file
of bcrypt hashes), ``origin`` (the browser's Origin) and ``client-cert``
(the listener's TLS client certificate)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import os
from collections.abc import Sequence
from typing import Any

import bcrypt
from twisted.internet import defer, threads
from zope.interface import implementer

from wsgate._headers import origin_allowed
from wsgate.interfaces import IAuthenticator, Identity, Refusal, Request


@implementer(IAuthenticator)
class BasicAuth:
    """HTTP Basic against ``user:$2b$...`` lines (``htpasswd -B``); the file is
    re-read when it changes, and a bad re-read keeps the last good users.

    bcrypt is slow on purpose (a quarter second at cost 12): each check runs
    in the reactor's thread pool, so wrong passwords cannot stall every
    other connection."""

    def __init__(
        self, htpasswd: str, realm: str = "wsgate", config_dir: str = ".", reactor: Any = None
    ) -> None:
        self._reactor = reactor
        self._path = os.path.join(config_dir, htpasswd)
        if '"' in realm or "\\" in realm:
            raise ValueError("realm: no quotes or backslashes")
        self._challenge = {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[bytes, bytes] = {}
        try:
            self._reload()
        except OSError as e:
            raise ValueError(f"htpasswd: cannot read {self._path!r}: {e.strerror}") from None
        if not self._users:
            raise ValueError(f"htpasswd: {self._path!r} has no user:bcrypt-hash line")

    def _reload(self) -> None:
        st = os.stat(self._path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self._path, "rb") as f:
            lines = f.read().splitlines()
        users = {}
        for line in lines:
            user, sep, hashed = line.strip().partition(b":")
            if sep and user and not user.startswith(b"#") and hashed.startswith(b"$2"):
                users[user] = hashed
        self._users, self._stamp = users, stamp

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        with contextlib.suppress(OSError):  # keep the last good users
            self._reload()
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise Refusal(401, "credentials required", self._challenge)
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            raise Refusal(401, "malformed credentials", self._challenge) from None
        hashed = self._users.get(user)
        # A hash is checked even for an unknown user, so timing tells nothing.
        check = hashed or _dummy_hash()
        pool = getattr(self._reactor, "getThreadPool", None)
        checking = (
            threads.deferToThreadPool(self._reactor, pool(), _checkpw, password, check)
            if pool is not None
            else defer.succeed(_checkpw(password, check))
        )

        def decide(good: bool) -> Identity:
            if not (good and hashed is not None and sep):
                raise Refusal(401, "wrong user name or password", self._challenge)
            return Identity(user.decode("utf-8", "replace"))

        return checking.addCallback(decide)


@functools.cache
def _dummy_hash() -> bytes:
    """A well-formed bcrypt hash no password matches (cost 12), made on first use."""
    return bcrypt.hashpw(b"no user has this password", bcrypt.gensalt(12))


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash in the file
        return False


@implementer(IAuthenticator)
class OriginAuth:
    """The route's ``origins`` check as an authenticator, for stacking with
    others: a browser's Origin must match one of ``allow`` (403)."""

    def __init__(self, allow: Sequence[str] | str) -> None:
        from wsgate._config import ConfigError, parse_origins

        try:
            self._allow = parse_origins([allow] if isinstance(allow, str) else list(allow), "allow")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        origin = request.headers.get("origin")
        if not origin_allowed(self._allow, origin):
            raise Refusal(403, "origin not allowed")
        return defer.succeed(Identity("", {"origin": origin or ""}))


@implementer(IAuthenticator)
class ClientCertAuth:
    """A TLS client certificate the listener verified (``client_ca``), whose
    subject CN or a DNS/email SAN is one of ``allow`` (any, if not given)."""

    def __init__(self, allow: Sequence[str] | str | None = None) -> None:
        if isinstance(allow, str):
            allow = [allow]
        if allow is not None and not all(isinstance(a, str) for a in allow):
            raise ValueError('allow: expected an array of names, e.g. ["alice", "ops.example"]')
        self._allow = None if allow is None else frozenset(allow)

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        cert = request.peer_certificate
        if cert is None:
            raise Refusal(403, "client certificate required")
        names = _names(cert)
        allowed = names if self._allow is None else [n for n in names if n in self._allow]
        if not allowed:
            raise Refusal(403, "client certificate not allowed")
        return defer.succeed(Identity(allowed[0], {"serial": str(cert.serial_number)}))


def _names(cert: Any) -> list[str]:
    """The subject's CNs, then its DNS names and email addresses."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names += alt.get_values_for_type(x509.DNSName) + alt.get_values_for_type(x509.RFC822Name)
    return names
