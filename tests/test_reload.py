"""Reloads that cannot open a listener are refused whole, and the next one starts clean.

In memory: a ``MemoryReactorClock`` whose TCP ports bind like real ones
(a port that is busy, or already bound, raises ``CannotListenError``); the
gateway reads a real file on SIGHUP's code path (``reload``). Then once end
to end: ``twistd -n wsgate --config``, a port held by a socket, ``kill -HUP``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import memlegs
import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from wsgate._configfile import load_file
from wsgate._service import Gateway
from wsgate.testing import Wsgate, free_port, make_tls_files, wait_for_port


class _Port:
    def __init__(self, reactor: _Reactor, number: int) -> None:
        self._reactor = reactor
        self.number = number

    def stopListening(self) -> None:
        del self._reactor.bound[self.number]

    def getHost(self) -> Any:
        return None


class _Reactor(MemoryReactorClock):
    """TCP ports that bind as a kernel would: one socket per port."""

    def __init__(self) -> None:
        super().__init__()
        self.busy: set[int] = set()
        self.bound: dict[int, Any] = {}

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.busy or port in self.bound:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "Address already in use")
            )
        self.bound[port] = factory
        return _Port(self, port)


@implementer(ILogObserver)
class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "wsgate":
            self.lines.append(formatEvent(event))


@pytest.fixture
def log() -> Iterator[_Lines]:
    lines = _Lines()
    globalLogPublisher.addObserver(lines)
    yield lines
    globalLogPublisher.removeObserver(lines)


def _config(*ports: int, prefix: str = "/a", tls: str = "") -> str:
    text = "".join(f'[[listener]]\nendpoint = "tcp:{p}"\n{tls}\n' for p in ports)
    return text + f'[[route]]\nprefix = "{prefix}"\nbackend = "ws://127.0.0.1:1"\n'


def _result(d: defer.Deferred[bool]) -> bool:
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results  # the memory reactor binds at once: no waiting
    assert isinstance(result, bool), result
    return result


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Gateway, _Reactor, Path]]:
    path = tmp_path / "wsgate.toml"
    path.write_text(_config(1001))
    reactor = _Reactor()
    gateway = Gateway(load_file(str(path)), reactor)
    gateway.privilegedStartService()
    gateway.startService()
    yield gateway, reactor, path
    gateway.stopService()
    assert reactor.bound == {}


def test_the_descriptor_limit_is_raised_before_anything_binds(tmp_path: Path) -> None:
    """A client that can connect meets the raised limit, and the limit's line
    precedes every connection's in the log (a test reading the log once the
    port answers found it missing, then late)."""
    path = tmp_path / "wsgate.toml"
    path.write_text(_config(1001))
    reactor = _Reactor()
    gateway = Gateway(load_file(str(path)), reactor)
    bound_when_logged: list[dict[int, Any]] = []

    def seen(event: LogEvent) -> None:
        if "file descriptors" in str(event.get("log_format")):
            bound_when_logged.append(dict(reactor.bound))

    globalLogPublisher.addObserver(seen)
    try:
        gateway.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(seen)
    assert bound_when_logged == [{}]
    assert list(reactor.bound) == [1001]
    gateway.startService()
    gateway.stopService()


def _prefixes(gateway: Gateway) -> list[str]:
    return [r.prefix for r in gateway.config.routes]


def test_busy_port_refuses_the_reload_whole(
    started: tuple[Gateway, _Reactor, Path], log: _Lines
) -> None:
    gateway, reactor, path = started
    front = reactor.bound[1001]
    (running,) = gateway._open.values()
    routes, pools = running.factory.routes, dict(gateway._pools)
    reactor.busy.add(1003)
    path.write_text(_config(1001, 1002, 1003, prefix="/b"))
    assert _result(gateway.reload()) is False
    # 1002 opened, then closed again when 1003 could not: nothing changed.
    assert set(reactor.bound) == {1001} and reactor.bound[1001] is front
    assert _prefixes(gateway) == ["/a"]
    assert running.factory.routes is routes and gateway._pools == pools
    assert [s.name for s in gateway] == ["tcp:1001"]
    (line,) = [x for x in log.lines if "reload" in x]
    assert line == (
        f"reload: {path} refused, the running configuration stays: "
        "cannot listen on 'tcp:1003': [Errno 98] Address already in use"
    )


def test_freed_port_opens_on_the_next_reload(
    started: tuple[Gateway, _Reactor, Path], log: _Lines
) -> None:
    gateway, reactor, path = started
    reactor.busy.add(1002)
    path.write_text(_config(1001, 1002, prefix="/b"))
    assert _result(gateway.reload()) is False
    reactor.busy.clear()
    assert _result(gateway.reload()) is True
    assert set(reactor.bound) == {1001, 1002}
    assert _prefixes(gateway) == ["/b"]
    assert sorted(s.name for s in gateway) == ["tcp:1001", "tcp:1002"]
    assert log.lines[-1] == f"reload: {path} applied: 2 listener(s), 1 route(s)"


def test_removed_listener_closes_and_can_come_back(
    started: tuple[Gateway, _Reactor, Path], log: _Lines
) -> None:
    gateway, reactor, path = started
    for ports in [(1001, 1002), (1001,), (1002,), (1001, 1002)]:
        path.write_text(_config(*ports))
        assert _result(gateway.reload()) is True
        assert set(reactor.bound) == set(ports)
        assert sorted(s.name for s in gateway) == [f"tcp:{p}" for p in ports]
    assert not any("refused" in x for x in log.lines)


def test_broken_file_is_refused(started: tuple[Gateway, _Reactor, Path], log: _Lines) -> None:
    gateway, reactor, path = started
    path.write_text(_config(1001, 1002) + "backendd = 1\n")
    assert _result(gateway.reload()) is False
    assert set(reactor.bound) == {1001} and _prefixes(gateway) == ["/a"]
    assert "did you mean 'backend'?" in log.lines[-1]


def test_tls_turned_on_keeps_the_socket(
    started: tuple[Gateway, _Reactor, Path], tmp_path: Path
) -> None:
    gateway, reactor, path = started
    door = reactor.bound[1001]
    files = make_tls_files(tmp_path / "tls")
    path.write_text(_config(1001, tls=f'certificates = [{{ cert = "{files.combined}" }}]'))
    assert _result(gateway.reload()) is True
    assert reactor.bound[1001] is door
    assert isinstance(door._current, TLSMemoryBIOFactory)


def test_reload_adds_and_removes_listeners_under_live_connections(
    started: tuple[Gateway, _Reactor, Path],
) -> None:
    """A connection keeps relaying after its listener is removed; the added
    listener serves the new routes; then the old port can be bound again."""
    gateway, reactor, path = started
    backends: dict[int, Any] = {}

    def serve(host: str, port: int) -> Any:
        backends[port] = memlegs.ws_server(reactor, echo=True)
        return backends[port]

    net = memlegs.Network(reactor, serve=serve)
    with memlegs.autobahn_timers(reactor):
        old = memlegs.ws_client(reactor, "ws://127.0.0.1:1001/a/x")
        net.connect_client(reactor.bound[1001], old)
        net.flush()
        assert old.events.opened
        path.write_text(
            '[[listener]]\nendpoint = "tcp:1002"\n'
            '[[route]]\nprefix = "/b"\nbackend = "ws://127.0.0.1:2"\n'
        )
        assert _result(gateway.reload()) is True
        assert set(reactor.bound) == {1002}
        old.sendMessage(b"still here", False)
        net.flush()
        assert old.events.messages == [(b"still here", False)]
        assert old.events.closed is None
        new = memlegs.ws_client(reactor, "ws://127.0.0.1:1002/b/y")
        net.connect_client(reactor.bound[1002], new)
        net.flush()
        new.sendMessage(b"hello", False)
        net.flush()
        assert new.events.messages == [(b"hello", False)]
        assert [(c[0], c[1]) for c in reactor.tcpClients] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
        assert backends[1].requests[0].path == "/a/x"
        assert backends[2].requests[0].path == "/b/y"
        old.sendClose(1000)
        new.sendClose(1000)
        net.flush()
        assert old.events.closed == (True, 1000, None) and new.events.closed == (True, 1000, None)
        path.write_text(_config(1001, 1002))
        assert _result(gateway.reload()) is True
        assert set(reactor.bound) == {1001, 1002}


def test_sighup_with_a_busy_port_end_to_end(wsgate: Any, tmp_path: Path) -> None:
    listen = free_port()
    path = tmp_path / "wsgate.toml"
    first = f'[[listener]]\nendpoint = "tcp:{listen}:interface=127.0.0.1"\n'
    route = '[[route]]\nbackend = "ws://127.0.0.1:1"\n'
    path.write_text(first + route)
    gate: Wsgate = wsgate("--config", str(path), wait_port=listen)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        path.write_text(
            first + f'[[listener]]\nendpoint = "tcp:{busy}:interface=127.0.0.1"\n' + route
        )
        gate.reload()
        _wait_log(gate, "refused, the running configuration stays: cannot listen on")
    wait_for_port(listen)
    gate.reload()
    _wait_log(gate, "applied: 2 listener(s)")
    wait_for_port(busy)
    path.write_text(first + route)
    gate.reload()
    _wait_log(gate, "applied: 1 listener(s)")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", busy), timeout=5).close()
    wait_for_port(listen)
    log = gate.log()
    assert "Address already in use" in log
    assert "Traceback" not in log and "Unhandled" not in log


def _wait_log(gate: Wsgate, text: str) -> None:
    import time

    deadline = time.monotonic() + 15
    while text not in gate.log():
        assert time.monotonic() < deadline, gate.log()
        time.sleep(0.05)  # the log is a file: poll it
