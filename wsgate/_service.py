"""The twistd service: listeners, their routes, and reloading both.

A reload builds the new routes next to the old ones and swaps them in one
assignment per listener, so a connection sees either the old configuration
or the new one; open connections keep the legs they have. Listeners whose
endpoint is gone stop listening (their connections go on); new ones open.
"""

from __future__ import annotations

import functools
import signal
from dataclasses import dataclass
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, endpoints, error
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from wsgate._backend import BackendConnector
from wsgate._config import (
    AnyBackend,
    Config,
    ConfigError,
    Listener,
    Route,
    RouteSettings,
    StreamBackend,
)
from wsgate._frontend import FrontendFactory, ListenerRoutes, LiveRoute
from wsgate._pool import BackendPool
from wsgate._routing import Router
from wsgate._tcpleg import StreamConnector
from wsgate._tls import restrict_ciphers

_log = Logger(namespace="wsgate")


def make_service(config: Config, reactor: Any) -> Gateway:
    """Build, but do not start, the listeners for ``config``."""
    return Gateway(config, reactor)


def _route_key(route: Route) -> tuple[Any, ...]:
    return (route.hosts, route.prefix, route.listeners)


@dataclass(slots=True)
class _Open:
    """A listener that is serving: its twistd service and its factory."""

    listener: Listener
    service: _Listener
    factory: FrontendFactory
    sni: _SwappableCreator | None


class Gateway(service.MultiService):
    """Every listener of one configuration, and SIGHUP reloads of it."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        from wsgate import _speedups

        _speedups.install()
        _speedups.fast_poll(reactor)
        self._reactor = reactor
        self.config = config
        self._pools: dict[tuple[Any, ...], BackendPool[AnyBackend]] = {}
        self._open: dict[str, _Open] = {}
        self._previous_hup: Any = None
        built, self._pools = self._build(config)
        for listener, routes in built.items():
            self._add(listener, routes)

    # -- building ---------------------------------------------------------------

    def _build(
        self, config: Config
    ) -> tuple[dict[Listener, ListenerRoutes], dict[tuple[Any, ...], BackendPool[AnyBackend]]]:
        """Each listener's live routes, and the routes' pools (taking over the
        running ones' load and health)."""
        live: dict[tuple[Any, ...], LiveRoute] = {}
        pools: dict[tuple[Any, ...], BackendPool[AnyBackend]] = {}
        for route in config.routes:
            settings = route.settings
            pool: BackendPool[AnyBackend] | None = None
            tokens = None
            if route.token_file is not None:
                from wsgate._tokens import TokenFile

                # No clock: a stat per new connection, so an edit applies at once.
                tokens = TokenFile(route.token_file)
            else:
                pool = BackendPool(
                    route.backends,
                    self._reactor,
                    balance=settings.balance,  # type: ignore[arg-type]
                    max_fails=settings.max_fails,
                    fail_timeout=settings.fail_timeout,
                )
                previous = self._pools.get(_route_key(route))
                if previous is not None:
                    pool.adopt(previous)
                pools[_route_key(route)] = pool
            live[_route_key(route)] = LiveRoute(
                route, pool, functools.partial(_connector, self._reactor, settings), tokens
            )
        result = {}
        for listener in config.listeners:
            routes = tuple(live[_route_key(r)] for r in config.routes_for(listener))
            result[listener] = ListenerRoutes(listener, Router(routes), routes)
        return result, pools

    def _add(self, listener: Listener, routes: ListenerRoutes) -> _Open:
        factory = FrontendFactory(routes, self._reactor)
        sni = None
        wrapped: Any = factory
        if listener.certificates:
            from wsgate._sni import load_sni_creator, tls_factory

            sni = _SwappableCreator(load_sni_creator(listener.certificates, listener.tls_ciphers))
            wrapped = tls_factory(sni, factory, self._reactor)  # type: ignore[arg-type]
        endpoint = endpoints.serverFromString(self._reactor, listener.endpoint)
        restrict_ciphers(endpoint, listener.tls_ciphers)
        listening = _Listener(endpoint, wrapped)
        listening.setName(listener.endpoint)
        opened = _Open(listener, listening, factory, sni)
        self._open[listener.endpoint] = opened
        listening.setServiceParent(self)
        return opened

    # -- reloading --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)

    def stopService(self) -> defer.Deferred[None]:
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        return super().stopService()  # type: ignore[no-any-return]

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> defer.Deferred[bool]:
        """Re-read the configuration file; on any mistake keep the running one."""
        source = self.config.source
        if source is None:
            _log.warn("reload: nothing to re-read (started without --config)")
            return defer.succeed(False)
        from wsgate._configfile import load_file

        try:
            config = load_file(source)
            built, pools = self._build(config)
            certificates = {
                listener.endpoint: _load_certificates(listener) for listener in config.listeners
            }
        except ConfigError as e:
            _log.error(
                "reload: {source} refused, the running configuration stays:\n{errors}",
                source=source,
                errors=str(e),
            )
            return defer.succeed(False)
        return defer.ensureDeferred(self._apply(config, built, pools, certificates))

    async def _apply(
        self,
        config: Config,
        built: dict[Listener, ListenerRoutes],
        pools: dict[tuple[Any, ...], BackendPool[AnyBackend]],
        certificates: dict[str, Any],
    ) -> bool:
        wanted = {listener.endpoint: listener for listener in config.listeners}
        closing = []
        for endpoint, opened in list(self._open.items()):
            listener = wanted.get(endpoint)
            if listener is None or bool(listener.certificates) != bool(
                opened.listener.certificates
            ):
                del self._open[endpoint]
                closing.append(defer.maybeDeferred(opened.service.disownServiceParent))
        self._pools = pools
        self.config = config
        for listener, routes in built.items():
            opened_now = self._open.get(listener.endpoint)
            if opened_now is not None:
                opened_now.factory.routes = routes
                opened_now.listener = listener
                if opened_now.sni is not None:
                    opened_now.sni.current = certificates[listener.endpoint]
        if closing:
            await defer.gatherResults(closing)
        ok = True
        for listener, routes in built.items():
            if listener.endpoint in self._open:
                continue
            try:
                self._add(listener, routes)
            except SystemExit as e:
                ok = False
                _log.error("reload: {error}", error=str(e))
                self._open.pop(listener.endpoint, None)
        _log.info(
            "reload: {source} applied: {listeners} listener(s), {routes} route(s)",
            source=config.source,
            listeners=len(self._open),
            routes=len(config.routes),
        )
        return ok


def _connector(reactor: Any, settings: RouteSettings, backend: AnyBackend) -> Any:
    if isinstance(backend, StreamBackend):
        return StreamConnector(reactor, settings, backend)
    return BackendConnector(reactor, settings, backend)


def _load_certificates(listener: Listener) -> Any:
    if not listener.certificates:
        return None
    from wsgate._sni import TlsSetupError, load_sni_creator

    try:
        return load_sni_creator(listener.certificates, listener.tls_ciphers)
    except TlsSetupError as e:
        raise ConfigError(f"{listener.name}: certificates: {e}") from None


@implementer(IOpenSSLServerConnectionCreator)
class _SwappableCreator:
    """The TLS side of a listener whose certificates a reload may replace."""

    def __init__(self, current: Any) -> None:
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self.current.serverConnectionForTLS(tlsProtocol)


class _Listener(internet.StreamServerEndpointService):
    """A listener that cannot bind stops twistd with one clear line, not a traceback."""

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except error.CannotListenError as e:
            raise SystemExit(f"wsgate: cannot listen on {self.name!r}: {e.socketError}") from None
