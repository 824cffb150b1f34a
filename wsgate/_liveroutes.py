"""The live route table: each configured route with what serves it.

``_routing`` is pure (which route a request is for); this is the running
side: a route's backend pool and connectors, or its token file, how a
connection opens a leg through them, and what the health path reports. A
reload builds a new table next to the running one (taking over the pools'
load and health) and swaps it in whole.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger

from wsgate import _deflate, _failover
from wsgate._backend import connector_for
from wsgate._config import AnyBackend, Config, Listener, Route, StreamBackend
from wsgate._connect import BackendError, BackendRequest
from wsgate._pool import BackendPool
from wsgate._routing import Router, rewrite_path
from wsgate._tokens import TokenFile

_log = Logger(namespace="wsgate")

#: The running routes' pools, by route (hosts, prefix, listeners).
Pools = dict[tuple[Any, ...], BackendPool[AnyBackend]]


class Connector(Protocol):
    """Opens one backend's legs (``BackendConnector``, ``StreamConnector``)."""

    def connect(self, request: BackendRequest) -> defer.Deferred[Any]: ...


class LiveRoute:
    """A configured route with what serves it: its backends' pool and connectors,
    or the token file that names its targets."""

    __slots__ = (
        "_make_connector",
        "_tokens_seen",
        "accept",
        "connectors",
        "hosts",
        "pool",
        "prefix",
        "route",
        "tokens",
    )

    def __init__(
        self,
        route: Route,
        pool: BackendPool[AnyBackend] | None,
        make_connector: Callable[[AnyBackend], Connector],
        tokens: TokenFile | None = None,
    ) -> None:
        self.route = route
        self.hosts = route.hosts
        self.prefix = route.prefix
        self.pool = pool
        self.tokens = tokens
        self._tokens_seen = -1
        self._make_connector = make_connector
        self.connectors = {b: make_connector(b) for b in route.backends}
        self.accept = _deflate.server_accept(route.settings.client_deflate)

    def candidates(self, path: str, query: str) -> list[AnyBackend]:
        """The backends to try in order; empty for an unknown token."""
        if self.tokens is None:
            assert self.pool is not None
            return self.pool.candidates()
        token = _token(self.prefix, path, query)
        target = self.tokens.lookup(token) if token else None
        if self.tokens.generation != self._tokens_seen:
            self._tokens_seen = self.tokens.generation
            for problem in self.tokens.problems:
                _log.warn("token file: {problem}", problem=problem)
        return [] if target is None else [StreamBackend(target.endpoint())]

    def connector(self, backend: AnyBackend) -> Connector:
        found = self.connectors.get(backend)
        return found if found is not None else self._make_connector(backend)

    def backend_path(self, path: str) -> str:
        """The path the backend gets for the client's (normalised) ``path``."""
        return rewrite_path(self.prefix, self.route.rewrite, path)

    def open(
        self,
        request: BackendRequest,
        retrying: Callable[[AnyBackend, BackendError], None],
    ) -> defer.Deferred[tuple[Any, AnyBackend]]:
        """Open a leg to the first backend that accepts ``request`` (its path
        already rewritten for the backends, ``backend_path``); a
        ``BackendError`` if none does, 404 for an unknown token."""
        return defer.Deferred.fromCoroutine(self._open(request, retrying))

    async def _open(
        self,
        request: BackendRequest,
        retrying: Callable[[AnyBackend, BackendError], None],
    ) -> tuple[Any, AnyBackend]:
        candidates = self.candidates(request.path, request.query)
        if not candidates:
            raise BackendError(404, "unknown token")

        def connect(backend: AnyBackend) -> defer.Deferred[Any]:
            return self.connector(backend).connect(request)

        return await _failover.open_first(candidates, connect, self.pool, retrying)

    def usable(self) -> bool:
        """Whether a client of this route would be tried on a backend that is
        not resting. A token route always is: its targets are not pooled."""
        return self.pool is None or self.pool.usable()

    def status(self) -> dict[str, object]:
        name = route_label(self.hosts, self.prefix)
        if self.tokens is not None:
            return {
                "route": name,
                "token_file": self.route.token_file,
                "tokens": self.tokens.tokens_count(),
            }
        assert self.pool is not None
        return {"route": name, "usable": self.pool.usable(), "backends": self.pool.status()}


def route_label(hosts: Sequence[str], prefix: str) -> str:
    """A route as people write it: ``app.example.com/app``, ``a.com,b.com/``,
    ``*/`` for any host. Unique on a listener, unlike the config's ``#1 (/)``."""
    return (",".join(hosts) or "*") + prefix


def _token(prefix: str, path: str, query: str) -> str | None:
    """websockify's ``?token=``, else the path segment after the route's prefix."""
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0]
    rest = path[len(prefix) :].strip("/") if path.startswith(prefix) else ""
    return rest.rsplit("/", 1)[-1] or None


@dataclass(frozen=True, slots=True)
class ListenerRoutes:
    """What one listener serves; a reload replaces it whole."""

    listener: Listener
    router: Router[LiveRoute]
    routes: tuple[LiveRoute, ...]

    def health(self) -> tuple[int, bytes]:
        """The health path's answer: ``degraded`` while some route has no usable
        backend (every one resting after failures), with 503 rather than 200
        if the listener asks for it."""
        degraded = not all(live.usable() for live in self.routes)
        status = {
            "status": "degraded" if degraded else "ok",
            "listener": self.listener.name,
            "routes": [live.status() for live in self.routes],
        }
        code = 503 if degraded and self.listener.health_fail_when_degraded else 200
        return code, json.dumps(status, indent=1).encode("utf-8") + b"\n"


def route_key(route: Route) -> tuple[Any, ...]:
    return (route.hosts, route.prefix, route.listeners)


def build(
    config: Config, reactor: Any, running: Pools
) -> tuple[dict[Listener, ListenerRoutes], Pools]:
    """Each listener's live routes, and the routes' pools (taking over the
    ``running`` ones' load and health)."""
    live: dict[tuple[Any, ...], LiveRoute] = {}
    pools: Pools = {}
    for route in config.routes:
        settings = route.settings
        pool: BackendPool[AnyBackend] | None = None
        tokens = None
        if route.token_file is not None:
            # No clock: a stat per new connection, so an edit applies at once.
            tokens = TokenFile(route.token_file)
        else:
            pool = BackendPool(
                route.backends,
                reactor,
                balance=settings.balance,  # type: ignore[arg-type]
                max_fails=settings.max_fails,
                fail_timeout=settings.fail_timeout,
            )
            previous = running.get(route_key(route))
            if previous is not None:
                pool.adopt(previous)
            pools[route_key(route)] = pool
        live[route_key(route)] = LiveRoute(
            route, pool, functools.partial(connector_for, reactor, settings), tokens
        )
    result = {}
    for listener in config.listeners:
        routes = tuple(live[route_key(r)] for r in config.routes_for(listener))
        result[listener] = ListenerRoutes(listener, Router(routes), routes)
    return result, pools


__all__ = [
    "BackendRequest",
    "Connector",
    "ListenerRoutes",
    "LiveRoute",
    "Pools",
    "build",
    "route_label",
]
