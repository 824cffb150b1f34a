"""JSON Web Tokens, checked the same way for the ``jwt`` token source (the
claims name the target) and the ``jwt-bearer`` authenticator (the claims
name the user).

The signature is checked with a public key (ES256, RS256, EdDSA, ...) or a
shared secret (HS256); ``exp`` is required unless told otherwise, ``nbf``
and ``aud`` (when ``audience`` is set) are enforced, with ``leeway``
seconds of clock skew. ``none`` is never an algorithm, whatever the
configuration says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import jwt
from twisted.internet import defer
from zope.interface import implementer

from wsgate._targets import target_from
from wsgate.interfaces import IAuthenticator, Identity, ITokenSource, Refusal, Request, Target

_SYMMETRIC = ("HS256", "HS384", "HS512")
#: Why a token was refused, for the body and the log line: short, no claims.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token for another audience"),
    (jwt.InvalidIssuerError, "token from another issuer"),
    (jwt.InvalidSignatureError, "bad token signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
)


class JwtChecker:
    """Decodes and checks one kind of token; ``Refusal`` with ``status`` if bad."""

    def __init__(
        self,
        *,
        key_file: str | None,
        secret: str | None,
        algorithms: Sequence[str] | str | None,
        audience: str | None,
        issuer: str | None,
        leeway: float,
        require_exp: bool,
        config_dir: str,
        status: int,
    ) -> None:
        if (key_file is None) == (secret is None):
            raise ValueError("key_file: give key_file (a PEM public key) or secret, not both")
        if isinstance(algorithms, str):
            algorithms = [algorithms]
        if algorithms is None:
            algorithms = ["HS256"] if secret is not None else ["ES256"]
        if not algorithms or not all(isinstance(a, str) for a in algorithms):
            raise ValueError('algorithms: expected an array such as ["ES256"]')
        unknown = [a for a in algorithms if a not in jwt.algorithms.get_default_algorithms()]
        if unknown or any(a.lower() == "none" for a in algorithms):
            raise ValueError(f"algorithms: {unknown or ['none']} not allowed; e.g. ES256, HS256")
        symmetric = [a in _SYMMETRIC for a in algorithms]
        if secret is not None and not all(symmetric):
            raise ValueError("algorithms: a secret goes with HS256/HS384/HS512 only")
        if key_file is not None and any(symmetric):
            raise ValueError("algorithms: a public key_file cannot check HS* (use secret)")
        self._key: Any = secret
        if key_file is not None:
            path = os.path.join(config_dir, key_file)
            try:
                with open(path, "rb") as f:
                    pem = f.read()
            except OSError as e:
                raise ValueError(f"key_file: cannot read {path!r}: {e.strerror}") from None
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self._key = load_pem_public_key(pem)
            except ValueError:
                raise ValueError(f"key_file: {path!r} holds no PEM public key") from None
        elif not secret or not isinstance(secret, str):
            raise ValueError("secret: expected a non-empty string")
        if not isinstance(leeway, int | float) or isinstance(leeway, bool) or leeway < 0:
            raise ValueError("leeway: expected seconds of clock skew (0 or more)")
        self._algorithms = list(algorithms)
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._require = ["exp"] if require_exp else []
        self._status = status

    def claims(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._require, "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as e:
            reason = next((r for cls, r in _REASONS if isinstance(e, cls)), "malformed token")
            raise self.refusal(reason) from None
        return claims

    def refusal(self, reason: str) -> Refusal:
        headers = {}
        if self._status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return Refusal(self._status, reason, headers)


@implementer(ITokenSource)
class JwtSource:
    """The token is a JWT whose claims carry ``host`` and ``port``
    (websockify's ``JWTTokenApi``) or a ``target``; a bad one is a 403."""

    def __init__(
        self,
        key_file: str | None = None,
        secret: str | None = None,
        algorithms: Sequence[str] | str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0,
        require_exp: bool = True,
        config_dir: str = ".",
    ) -> None:
        self._checker = JwtChecker(
            key_file=key_file,
            secret=secret,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            require_exp=require_exp,
            config_dir=config_dir,
            status=403,
        )

    def lookup(self, token: str, request: Request) -> defer.Deferred[Target | None]:
        claims = self._checker.claims(token)
        try:
            return defer.succeed(target_from(claims))
        except ValueError:
            raise self._checker.refusal("token names no host and port") from None


@implementer(IAuthenticator)
class JwtBearer:
    """A JWT from ``Authorization: Bearer``, or from a cookie or query
    parameter (browsers cannot set headers on a WebSocket); the user is its
    ``sub`` claim (``name_claim``)."""

    def __init__(
        self,
        key_file: str | None = None,
        secret: str | None = None,
        algorithms: Sequence[str] | str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0,
        require_exp: bool = True,
        cookie: str | None = None,
        query: str | None = None,
        name_claim: str = "sub",
        config_dir: str = ".",
    ) -> None:
        self._checker = JwtChecker(
            key_file=key_file,
            secret=secret,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            require_exp=require_exp,
            config_dir=config_dir,
            status=401,
        )
        self._cookie = cookie
        self._query = query
        self._name_claim = name_claim

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        token = self._find(request)
        if token is None:
            raise Refusal(401, "token required", {"WWW-Authenticate": "Bearer"})
        claims = self._checker.claims(token)
        name = claims.get(self._name_claim)
        if not isinstance(name, str) or not name:
            raise self._checker.refusal(f"token lacks the {self._name_claim} claim")
        attributes = {k: str(v) for k, v in claims.items() if isinstance(v, str | int)}
        return defer.succeed(Identity(name, attributes))

    def _find(self, request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if self._cookie is not None and "cookie" in request.headers:
            try:
                morsel = SimpleCookie(request.headers["cookie"]).get(self._cookie)
            except CookieError:
                morsel = None
            if morsel is not None and morsel.value:
                return morsel.value
        if self._query is not None:
            values = parse_qs(request.query).get(self._query)
            if values and values[0]:
                return values[0]
        return None
