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

from twisted.internet import defer

from wsgate import _deflate, _failover
from wsgate._admission import Gate, Request
from wsgate._backend import connector_for
from wsgate._config import AnyBackend, Config, Listener, Route
from wsgate._connect import BackendError, BackendRequest
from wsgate._pool import BackendPool
from wsgate._routing import Router, rewrite_path

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
        "accept",
        "connectors",
        "gate",
        "hosts",
        "pool",
        "prefix",
        "route",
    )

    def __init__(
        self,
        route: Route,
        pool: BackendPool[AnyBackend] | None,
        make_connector: Callable[[AnyBackend], Connector],
        gate: Gate | None = None,
    ) -> None:
        self.route = route
        self.hosts = route.hosts
        self.prefix = route.prefix
        self.pool = pool
        #: Authenticators, and the token source of a token route.
        self.gate = gate if gate is not None else Gate(route, None)
        self._make_connector = make_connector
        self.connectors = {b: make_connector(b) for b in route.backends}
        self.accept = _deflate.server_accept(route.settings.client_deflate)

    async def candidates(self, path: str, request: Request | None) -> list[AnyBackend]:
        """The backends to try in order: the pool's, or the one the client's
        token names (``_admission.Refused`` if none). ``request`` is what a
        token source is asked with (None on a route without one)."""
        if self.gate.source is None:
            assert self.pool is not None
            return self.pool.candidates()
        assert request is not None
        return [await self.gate.backend(self.prefix, path, request)]

    def connector(self, backend: AnyBackend) -> Connector:
        found = self.connectors.get(backend)
        return found if found is not None else self._make_connector(backend)

    def backend_path(self, path: str) -> str:
        """The path the backend gets for the client's (normalised) ``path``."""
        return rewrite_path(self.prefix, self.route.rewrite, path)

    def open(
        self,
        request: BackendRequest,
        client: Request | None,
        retrying: Callable[[AnyBackend, BackendError], None],
    ) -> defer.Deferred[tuple[Any, AnyBackend]]:
        """Open a leg to the first backend that accepts ``request`` (its path
        already rewritten for the backends, ``backend_path``); a
        ``BackendError`` if none does, an ``_admission.Refused`` if the
        client's token names none."""
        if self.gate.source is None:
            assert self.pool is not None
            return _failover.open_first(
                self.pool.candidates(), self._connect(request), self.pool, retrying
            )
        return defer.Deferred.fromCoroutine(self._open_token(request, client, retrying))

    async def _open_token(
        self,
        request: BackendRequest,
        client: Request | None,
        retrying: Callable[[AnyBackend, BackendError], None],
    ) -> tuple[Any, AnyBackend]:
        candidates = await self.candidates(request.path, client)
        return await _failover.open_first(candidates, self._connect(request), self.pool, retrying)

    def _connect(self, request: BackendRequest) -> Callable[[AnyBackend], defer.Deferred[Any]]:
        def connect(backend: AnyBackend) -> defer.Deferred[Any]:
            return self.connector(backend).connect(request)

        return connect

    def usable(self) -> bool:
        """Whether a client of this route would be tried on a backend that is
        not resting. A token route always is: its targets are not pooled."""
        return self.pool is None or self.pool.usable()

    def status(self) -> dict[str, object]:
        name = route_label(self.hosts, self.prefix)
        if self.gate.source is not None:
            return {"route": name, **self.gate.status()}
        assert self.pool is not None
        return {"route": name, "usable": self.pool.usable(), "backends": self.pool.status()}


def route_label(hosts: Sequence[str], prefix: str) -> str:
    """A route as people write it: ``app.example.com/app``, ``a.com,b.com/``,
    ``*/`` for any host. Unique on a listener, unlike the config's ``#1 (/)``."""
    return (",".join(hosts) or "*") + prefix


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
        gate = Gate(route, reactor)
        if gate.source is None:
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
            route, pool, functools.partial(connector_for, reactor, settings), gate
        )
    result = {}
    for listener in config.listeners:
        routes = tuple(live[route_key(r)] for r in config.routes_for(listener))
        result[listener] = ListenerRoutes(listener, Router(routes), routes)
    return result, pools


__all__ = [
    "AnyBackend",
    "BackendRequest",
    "Connector",
    "ListenerRoutes",
    "LiveRoute",
    "Pools",
    "Request",
    "build",
    "route_label",
]
