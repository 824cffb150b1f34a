"""The twistd service: listeners, their routes, and reloading both.

A reload builds the new routes next to the old ones and swaps them in one
assignment per listener, so a connection sees either the old configuration
or the new one; open connections keep the legs they have. New listeners open
first, and if one cannot, the reload is refused whole; otherwise listeners
whose endpoint is gone stop listening (their connections go on).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolNegotiationFactory,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgate import _daemon, _limits, _liveroutes
from wsgate._config import Config, ConfigError, Listener
from wsgate._frontend import FrontendFactory
from wsgate._liveroutes import ListenerRoutes, Pools
from wsgate._tls import restrict_ciphers

_log = Logger(namespace="wsgate")


def make_service(
    config: Config, reactor: Any, connections: Any = None, endpoint: Any = None
) -> Gateway:
    """Build, but do not start, the listeners for ``config``; their client
    connections are tracked in ``connections`` (a ``_drain.Connections``).
    ``endpoint`` turns a listener's endpoint string into a server endpoint
    (a worker's adopts the socket its supervisor bound); default: Twisted's."""
    return Gateway(config, reactor, connections, endpoint)


@dataclass(slots=True)
class _Open:
    """A listener that is serving: the twistd service that holds its socket,
    the factory its socket hands connections to, and its frontend."""

    listener: Listener
    service: service.Service
    door: _Door
    factory: FrontendFactory
    sni: _SwappableCreator | None


class Gateway(service.MultiService):
    """Every listener of one configuration, and SIGHUP reloads of it."""

    def __init__(
        self, config: Config, reactor: Any, connections: Any = None, endpoint: Any = None
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._endpoint = endpoint or (
            lambda description: endpoints.serverFromString(reactor, description)
        )
        self._connections = connections
        self.config = config
        self._pools: Pools = {}
        self._open: dict[str, _Open] = {}
        self._previous_hup: Any = None
        self._reloading = defer.DeferredLock()
        built, self._pools = self._build(config)
        for listener, routes in built.items():
            self._add(listener, routes)

    # -- building ---------------------------------------------------------------

    def _build(self, config: Config) -> tuple[dict[Listener, ListenerRoutes], Pools]:
        """Each listener's live routes, and the routes' pools (taking over the
        running ones' load and health)."""
        return _liveroutes.build(config, self._reactor, self._pools)

    def _front(
        self, listener: Listener, routes: ListenerRoutes, certificates: Any
    ) -> tuple[FrontendFactory, _SwappableCreator | None, Any]:
        """The frontend of a listener, and the factory its socket should use."""
        factory = FrontendFactory(routes, self._reactor)
        if self._connections is not None:
            factory.connections = self._connections
        if not listener.certificates:
            return factory, None, factory
        from wsgate._sni import tls_factory

        sni = _SwappableCreator(certificates)
        return factory, sni, tls_factory(sni, factory, self._reactor)  # type: ignore[arg-type]

    def _add(self, listener: Listener, routes: ListenerRoutes) -> _Open:
        """A listener of the starting configuration: twistd opens it (or exits)."""
        certificates = None
        if listener.certificates:
            from wsgate._sni import load_sni_creator

            certificates = load_sni_creator(
                listener.certificates, listener.tls_ciphers, listener.client_ca
            )
        factory, sni, wrapped = self._front(listener, routes, certificates)
        door = _Door(wrapped)
        endpoint = self._endpoint(listener.endpoint)
        restrict_ciphers(endpoint, listener.tls_ciphers)
        listening = _Listener(endpoint, door)
        listening.setName(listener.endpoint)
        opened = _Open(listener, listening, door, factory, sni)
        self._open[listener.endpoint] = opened
        listening.setServiceParent(self)
        return opened

    def backend_states(self) -> dict[str, bool]:
        """Each backend of every route and whether it is up (not resting), for metrics."""
        states: dict[str, bool] = {}
        for pool in self._pools.values():
            for record in pool.status():
                name = str(record["backend"])
                states[name] = states.get(name, False) or record["state"] == "up"
        return states

    # -- reloading --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Before binding: a client that can connect sees the raised limit, and
        # the line precedes any connection's in the log.
        _limits.raise_nofile_limit()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)
        _daemon.done()

    def stopService(self) -> defer.Deferred[None]:
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        return super().stopService()  # type: ignore[no-any-return]

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> defer.Deferred[bool]:
        """Re-read the configuration file; on any mistake keep the running one.

        One reload at a time: a SIGHUP during a reload waits for it.
        """
        return self._reloading.run(self._reload)

    def _reload(self) -> defer.Deferred[bool]:
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
        pools: Pools,
        certificates: dict[str, Any],
    ) -> bool:
        """Open every new listener first; only if all open, swap everything in.

        A listener that cannot open refuses the reload as a whole (as nginx and
        HAProxy do): the ones just opened close again and nothing else changes,
        so the next SIGHUP starts from the same state.
        """
        fresh = [listener for listener in built if listener.endpoint not in self._open]
        attempts: list[defer.Deferred[_Open]] = [
            defer.ensureDeferred(
                self._listen(listener, built[listener], certificates[listener.endpoint])
            )
            for listener in fresh
        ]
        results: list[tuple[bool, Any]] = await defer.DeferredList(attempts, consumeErrors=True)
        failed = [
            f"cannot listen on {listener.endpoint!r}: {_why(result)}"
            for listener, (ok, result) in zip(fresh, results, strict=True)
            if not ok
        ]
        if failed:
            await defer.gatherResults(
                [defer.maybeDeferred(result.service.stopService) for ok, result in results if ok]
            )
            _log.error(
                "reload: {source} refused, the running configuration stays: {why}",
                source=config.source,
                why="; ".join(failed),
            )
            return False
        wanted = {listener.endpoint: listener for listener in config.listeners}
        closing = []
        for endpoint, opened in list(self._open.items()):
            if endpoint not in wanted:
                del self._open[endpoint]
                closing.append(defer.maybeDeferred(opened.service.disownServiceParent))
        self._pools = pools
        self.config = config
        if self._connections is not None:
            self._connections.limit(config)
        for listener, routes in built.items():
            running = self._open.get(listener.endpoint)
            if running is None:
                continue
            if bool(listener.certificates) != bool(running.listener.certificates):
                # TLS on or off: a new frontend behind the same socket.
                running.factory, running.sni, wrapped = self._front(
                    listener, routes, certificates[listener.endpoint]
                )
                running.door.swap(wrapped)
            else:
                running.factory.routes = routes
                if running.sni is not None:
                    running.sni.current = certificates[listener.endpoint]
            running.listener = listener
        for ok, opened in results:
            assert ok
            opened.service.setName(opened.listener.endpoint)
            opened.service.setServiceParent(self)
            self._open[opened.listener.endpoint] = opened
        if closing:
            await defer.gatherResults(closing)
        _log.info(
            "reload: {source} applied: {listeners} listener(s), {routes} route(s)",
            source=config.source,
            listeners=len(self._open),
            routes=len(config.routes),
        )
        return True

    async def _listen(self, listener: Listener, routes: ListenerRoutes, certificates: Any) -> _Open:
        """Open a listener of a reload, not yet part of the service."""
        factory, sni, wrapped = self._front(listener, routes, certificates)
        door = _Door(wrapped)
        endpoint = self._endpoint(listener.endpoint)
        restrict_ciphers(endpoint, listener.tls_ciphers)
        port = _limits.throttle_accept_log(await endpoint.listen(door))
        return _Open(listener, _Bound(port), door, factory, sni)


def _why(failure: Failure) -> str:
    """A listen failure in a few words: the socket error, not the traceback."""
    value: Any = failure.value
    if isinstance(value, error.CannotListenError):
        return str(value.socketError)
    return failure.getErrorMessage() or type(value).__name__


def _load_certificates(listener: Listener) -> Any:
    if not listener.certificates:
        return None
    from wsgate._sni import TlsSetupError, load_sni_creator

    try:
        return load_sni_creator(listener.certificates, listener.tls_ciphers, listener.client_ca)
    except TlsSetupError as e:
        raise ConfigError(f"{listener.name}: certificates: {e}") from None


@implementer(IOpenSSLServerConnectionCreator)
class _SwappableCreator:
    """The TLS side of a listener whose certificates a reload may replace."""

    def __init__(self, current: Any) -> None:
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self.current.serverConnectionForTLS(tlsProtocol)


class _Listener(_limits.Listening):
    """A listener that cannot bind stops twistd with one clear line, not a traceback."""


@implementer(IProtocolNegotiationFactory)
class _Door(protocol.Factory):
    """What a listening socket hands its connections to: the listener's current
    frontend, which a reload may replace (TLS turned on or off) without closing
    the socket."""

    noisy = False

    def __init__(self, current: Any) -> None:
        self._current = current

    def swap(self, current: Any) -> None:
        current.doStart()
        self._current, previous = current, self._current
        previous.doStop()

    def startFactory(self) -> None:
        self._current.doStart()

    def stopFactory(self) -> None:
        self._current.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        return self._current.buildProtocol(addr)

    def logPrefix(self) -> str:
        prefix: str = self._current.logPrefix()
        return prefix

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN for ``ssl:`` endpoints, which wrap this factory in their own TLS."""
        if IProtocolNegotiationFactory.providedBy(self._current):
            return list(self._current.acceptableProtocols())
        return [b"http/1.1"]


class _Bound(service.Service):
    """A listener a reload opened: its socket is already listening."""

    def __init__(self, port: Any) -> None:
        self._port = port

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        return defer.maybeDeferred(self._port.stopListening)
