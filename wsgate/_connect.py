"""How wsgate reaches a backend: the endpoint, the connect, and what a failure means.

Both backend legs (the WebSocket leg in ``_backend``, the stream leg in
``_tcpleg``) open through ``Connector``: they differ only in the protocol
they make for a ``BackendRequest``. The connect is bounded by the route's
``connect_timeout``, cancelled with the client, and its failure is mapped
once to the client's answer (502, 503, 504).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure


class BackendError(Exception):
    """The backend leg could not be opened; ``status`` is for the client's answer."""

    def __init__(
        self, status: int, reason: str, *, retryable: bool = False, local: bool = False
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        #: The backend did not get to answer (refused, timed out, TLS, dropped):
        #: another backend of the route may be tried, and this one's health suffers.
        self.retryable = retryable
        #: wsgate itself ran short (descriptors, buffers, ports): no backend is
        #: to blame, and the client may try again soon (503 with Retry-After).
        self.local = local
        self.backend = "?"


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What a client's request asks of a backend leg: the WebSocket leg sends
    all of it in its opening handshake; a stream leg uses only the
    subprotocols (and has no request to send)."""

    #: The client's path (after the route's rewrite) and query: the backend
    #: makes its request target from them (``Backend.resource_for``).
    path: str = "/"
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()
    origin: str | None = None
    useragent: str | None = None


# -- endpoints -------------------------------------------------------------------


def endpoint(
    reactor: Any,
    host: str,
    port: int,
    timeout: float,
    *,
    bind: str | None = None,
    tls: Any = None,
) -> IStreamClientEndpoint:
    """An IP literal needs no name resolution: HostnameEndpoint would still
    hop to a thread for getaddrinfo (a third of a handshake's CPU). A name
    gets HostnameEndpoint (IPv4 and IPv6, happy eyeballs). ``tls``: client
    TLS options (``optionsForClientTLS``) to wrap the connection in."""
    address = None if bind is None else (bind, 0)
    found: Any
    if isIPAddress(host):
        found = TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=address)
    elif isIPv6Address(host):
        found = TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=address)
    else:
        found = HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=address)
    if tls is not None:
        found = wrapClientTLS(tls, found)
    return found  # type: ignore[no-any-return]


def ip_address(
    host: str, port: int, *, bind: str | None = None
) -> tuple[str, int, tuple[str, int] | None] | None:
    """``Connector``'s ``address`` for an IP literal (dialled directly), else None."""
    if isIPAddress(host) or isIPv6Address(host):
        return host, port, None if bind is None else (bind, 0)
    return None


#: Twisted's own default for a ``tcp:`` client string without ``timeout=``.
_TCP_STRING_TIMEOUT = 30.0


def stream_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """A stream backend's endpoint string. ``tcp:`` goes through ``endpoint``:
    Twisted's own ``tcp:`` client resolves IPv4 only and cannot reach an IPv6
    literal. Anything else (``unix:``, ``tls:``) is Twisted's."""
    tcp = _tcp_string(description)
    if tcp is not None:
        host, port, timeout, bind = tcp
        return endpoint(reactor, host, port, timeout, bind=bind)
    return clientFromString(reactor, description)  # type: ignore[no-any-return]


def stream_address(
    description: str,
) -> tuple[tuple[str, int, tuple[str, int] | None], float] | None:
    """``Connector``'s ``address`` for a ``tcp:`` string to an IP literal, and
    the string's own connect timeout (``timeout=``, else Twisted's 30 s);
    None for anything else."""
    tcp = _tcp_string(description)
    if tcp is None:
        return None
    host, port, timeout, bind = tcp
    address = ip_address(host, port, bind=bind)
    return None if address is None else (address, timeout)


def _tcp_string(description: str) -> tuple[str, int, float, str | None] | None:
    """Host, port, timeout and bind address of a plain ``tcp:`` string."""
    args, options = split_endpoint(description)
    if (
        args
        and args[0].lower() == "tcp"
        and set(options) <= {"host", "port", "timeout", "bindAddress"}
    ):
        positional = args[1:]
        if "host" not in options and positional:
            options["host"] = positional.pop(0)
        if "port" not in options and positional:
            options["port"] = positional.pop(0)
        if not positional and "host" in options and "port" in options:
            return (
                options["host"],
                int(options["port"]),
                float(options.get("timeout", _TCP_STRING_TIMEOUT)),
                options.get("bindAddress"),
            )
    return None


def split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """An endpoint string's positional and ``key=value`` parts, as Twisted
    splits them: ``:`` separates, the first ``=`` of a part names it, and a
    backslash takes the next character as it is (``tcp:\\:\\:1:5900``)."""
    args: list[str] = []
    options: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []
    characters = iter(description)
    for c in characters:
        if c == "\\":
            current.append(next(characters, ""))
        elif c == ":":
            _add(args, options, key, "".join(current))
            key, current = None, []
        elif c == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(c)
    _add(args, options, key, "".join(current))
    return args, options


def _add(args: list[str], options: dict[str, str], key: str | None, value: str) -> None:
    if key is None:
        args.append(value)
    else:
        options[key] = value


# -- the connect -----------------------------------------------------------------

_L = TypeVar("_L", bound=Protocol)


class _Given(Factory):
    """Hands out one protocol already made. Twisted's ``connectProtocol``
    defines a new factory *class* on every call, and the connection keeps it:
    2.7 KiB per connection, more than a tenth of what an idle one costs."""

    noisy = False  # no "Starting factory" / "Stopping factory" per backend connection

    def __init__(self, made: Protocol) -> None:
        self._made = made

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._made


class Connector(Generic[_L]):
    """Opens legs to one backend: ``make_leg`` builds the protocol for a
    request, and the leg is open when its ``opened`` Deferred fires (the
    WebSocket leg's after the backend's 101, the stream leg's at once).

    ``address`` (an IP literal's host, port and bind address, no TLS) is
    dialled with ``connectTCP`` itself: an endpoint would add a Deferred
    chain, a wrapping factory and a protocol wrapper that every read of the
    leg passes through (``_Dial``). Anything else goes through ``to``."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        to: Any,  # IStreamClientEndpoint; zope interfaces confuse mypy
        timeout: float,
        make_leg: Callable[[BackendRequest], _L],
        address: tuple[str, int, tuple[str, int] | None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._url = url
        self._endpoint = to
        self._timeout = timeout
        self._make_leg = make_leg
        self._address = address

    def connect(self, request: BackendRequest) -> defer.Deferred[_L]:
        """The open leg, or a ``BackendError``; cancelling drops the leg."""
        leg: Any = self._make_leg(request)  # has ``opened`` and ``dropConnection``
        if self._address is not None:
            return _Dial(self._reactor, self._url, leg, self._timeout, self._address).opened
        connecting: defer.Deferred[Any] = self._endpoint.connect(_Given(leg))
        connecting.addTimeout(self._timeout, self._reactor, _timed_out)
        connecting.addErrback(connect_failure, self._url)
        connecting.addCallback(lambda _: leg.opened)
        connecting.addErrback(_name_backend, self._url)

        def cancel(d: defer.Deferred[_L]) -> None:
            connecting.cancel()
            if leg.transport is not None:
                leg.dropConnection(abort=True)

        result: defer.Deferred[_L] = defer.Deferred(cancel)
        connecting.chainDeferred(result)
        return result


class _Dial(ClientFactory):
    """One connect to an IP literal, ``connectTCP`` with the leg as its
    protocol: its ``opened`` Deferred becomes the leg's (the leg fires it,
    or fails it with a ``BackendError``), failed here when the connect
    fails or times out, and cancelled with the client."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        url: str,
        leg: Any,
        timeout: float,
        address: tuple[str, int, tuple[str, int] | None],
    ) -> None:
        self._url = url
        self._leg = leg
        self.opened: defer.Deferred[Any] = defer.Deferred(self._cancel)
        leg.opened = self.opened
        self.opened.addErrback(_name_backend, url)
        # Twisted's own timeout would fail the connect with ``TimeoutError``
        # too, but on the reactor's clock only (not on a test's).
        self._timer: Any = reactor.callLater(timeout, self._timed_out, timeout)
        host, port, bind = address
        self._connector: Any = reactor.connectTCP(host, port, self, None, bind)

    def buildProtocol(self, addr: Any) -> Any:
        self._stop_timer()
        return self._leg

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._stop_timer()
        self._fail(reason)

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._fail(Failure(defer.TimeoutError(timeout, "connect")))
        self._stop_connecting()

    def _fail(self, reason: Failure) -> None:
        if self.opened.called:
            return
        try:
            connect_failure(reason, self._url)
        except BaseException:
            self.opened.errback()

    def _cancel(self, opened: defer.Deferred[Any]) -> None:
        self._stop_timer()
        if self._leg.transport is not None:
            self._leg.dropConnection(abort=True)
        else:
            self._stop_connecting()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _stop_connecting(self) -> None:
        with contextlib.suppress(error.NotConnectingError):
            self._connector.stopConnecting()


def _timed_out(result: object, timeout: float) -> object:
    """The timeout cancelled the connect. An endpoint's cancel fails with
    ``ConnectingCancelledError``, which ``addTimeout``'s own conversion (of
    ``CancelledError`` only) passes on as is: it would read as 502 unreachable."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(timeout, "connect")
    return result


def _name_backend(failure: Failure, url: str) -> Failure:
    if isinstance(failure.value, BackendError):
        failure.value.backend = url
    return failure


# -- what a failure means ----------------------------------------------------------

#: Errors that say this host ran out of something, not that the backend failed.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EADDRNOTAVAIL})


def local_resource_error(exc: BaseException | None) -> int | None:
    """The errno of ``exc`` when it is a local shortage (out of descriptors,
    buffers or ports), else None. Twisted reports a socket() that failed as
    ``ConnectBindError(errno, text)`` and a failed connect() as ``ConnectError``
    with ``osError`` set; a plain ``OSError`` has ``errno``."""
    for number in (getattr(exc, "osError", None), getattr(exc, "errno", None)):
        if isinstance(number, int) and number in _LOCAL_ERRNOS:
            return number
    return None


def connect_failure(failure: Failure, url: str) -> Failure:
    """A failed TCP (or TLS) connect as the client's answer: 504 for a timeout,
    502 otherwise, both worth trying the next backend. A local shortage
    (EMFILE, ENFILE, ENOBUFS, EADDRNOTAVAIL) is 503 and not the backend's
    fault: no other backend is tried and none is marked failed. A cancel (the
    client went away) is a ``CancelledError``."""
    if failure.check(defer.CancelledError):
        return failure
    if failure.check(error.ConnectingCancelledError):
        # How an endpoint fails a cancelled connect (a timeout is converted
        # before this): the client went away. Not the backend's failure, so
        # no other backend is tried for a client that is gone.
        raise defer.CancelledError()
    number = local_resource_error(failure.value)
    if number is not None:
        exc = BackendError(
            503,
            f"wsgate is out of local resources ({errno.errorcode[number]}) "
            f"connecting to backend {url}",
            local=True,
        )
    elif failure.check(defer.TimeoutError, error.TimeoutError):
        exc = BackendError(504, f"connecting to backend {url} timed out", retryable=True)
    else:
        exc = BackendError(
            502, f"backend {url} unreachable: {_short(failure.value)}", retryable=True
        )
    exc.backend = url
    raise exc


def _short(exc: BaseException | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = [
    "BackendError",
    "BackendRequest",
    "Connector",
    "connect_failure",
    "endpoint",
    "ip_address",
    "local_resource_error",
    "split_endpoint",
    "stream_address",
    "stream_endpoint",
]
