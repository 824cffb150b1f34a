"""What a plugin implements: a token source (which target a token names) or an
authenticator (who the client is, or why it may not pass).

Both run on a route's WebSocket request before any backend is contacted, and
both answer with a Deferred, so a plugin may ask a database or a web service
without blocking the gateway. A route's ``tokens`` table names one source;
its ``auth`` array names authenticators, all of which must pass. A plugin is
a class named by a built-in short name or by ``module:Class``; its
constructor gets the table's other keys as keyword arguments (and
``reactor=`` and ``config_dir=`` when it declares parameters of those names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zope.interface import Interface


@dataclass(frozen=True, slots=True)
class Request:
    """A client's WebSocket request, as the plugins see it."""

    method: str
    path: str  # normalised, before any rewrite
    query: str  # after "?", undecoded
    headers: Mapping[str, str]  # lower-case names
    client: str | None  # the peer's address (the PROXY header's behind haproxy:)
    route: str  # the route's label, for log lines
    #: The TLS client certificate (a ``cryptography`` x509.Certificate) on a
    #: listener that asks for one, else None.
    peer_certificate: Any = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an authenticator let in: shown on the connection's log lines and,
    per the route's ``forward_user_header``, sent to the backend. An empty
    name passes without naming anyone (the ``origin`` check): the route's
    identity is the first non-empty name of its authenticators."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a token leads: a TCP stream (``host``, ``port``), a WebSocket
    backend (``url``, ws:// or wss://), or a Unix socket (``unix``)."""

    host: str = ""
    port: int = 0
    url: str | None = None
    unix: str | None = None

    def __str__(self) -> str:
        if self.url is not None:
            return self.url
        if self.unix is not None:
            return f"unix:{self.unix}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Refusal(Exception):
    """A plugin's "no": the HTTP status (401, 403, 404, ...), a short reason
    (the response body; say nothing a stranger should not learn) and headers
    such as ``WWW-Authenticate``."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


class ITokenSource(Interface):
    """Names the target of a client's token (websockify's ``--token-plugin``)."""

    def lookup(token: str, request: Request) -> Any:
        """A Deferred (or coroutine) of a :class:`Target`, or of None for an
        unknown token (404). A failure other than :class:`Refusal` is a fault
        of the source: 503."""


class IAuthenticator(Interface):
    """Admits a client (websockify's ``--auth-plugin``)."""

    def authenticate(request: Request) -> Any:
        """A Deferred (or coroutine) of an :class:`Identity`; a
        :class:`Refusal` (401 with ``WWW-Authenticate``, 403) to refuse. Any
        other failure is a fault of the authenticator: 503."""


__all__ = ["IAuthenticator", "ITokenSource", "Identity", "Refusal", "Request", "Target"]
