"""One worker of ``--workers N``: a whole wsgate on sockets its supervisor bound.

Started by the supervisor as ``python -m wsgate._worker SPEC`` (SPEC: JSON
with the worker's number, the wsgate arguments, the descriptor of its
control socket and of each listening socket by endpoint string). Each
listener's endpoint string is parsed as usual, so ``ssl:`` wraps TLS and
``haproxy:`` the PROXY protocol exactly as in one process; only the
reactor's ``listenTCP``/``listenSSL``/``listenUNIX`` are replaced by
adopting the socket the supervisor passed. ``systemd:`` sockets are
inherited from systemd as they are by a single process. Log events go to
the supervisor as JSON on stdout; it logs them with the worker's number.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sys
from typing import Any, cast

# Not twisted.internet.endpoints: it reads systemd's LISTEN_PID when it loads,
# and main() sets that first.
from twisted.logger import Logger


class _OneAtATime:
    """Accept one connection per wake-up (nginx's default, ``multi_accept
    off``). Every worker waits on the same socket; Twisted's port accepts up
    to 100 at once, so the first worker to wake would take a whole burst
    while the others find the queue empty. (Not EPOLLEXCLUSIVE, which saves
    the other workers' wake-ups: it wakes the same idle worker each time,
    and a WebSocket connection stays with the worker that accepted it, so
    one worker ended up with 60 connections of 60 and all their traffic.)"""

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


@functools.cache
def _ports() -> tuple[Any, Any]:
    from twisted.internet import tcp, unix

    class TCPPort(_OneAtATime, tcp.Port):  # type: ignore[misc]
        pass

    class UNIXPort(_OneAtATime, unix.Port):  # type: ignore[misc]
        def connectionLost(self, reason: Any) -> None:
            # The socket file is the supervisor's, which removes it when the
            # tree stops (Twisted's own would unlink it under the others).
            tcp.Port.connectionLost(self, reason)

    return TCPPort, UNIXPort


class _Adopting:
    """A reactor whose ``listen*`` methods adopt one already-listening socket."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        probe = socket.socket(fileno=self._fd)
        family = probe.family
        probe.detach()
        tcp_port, unix_port = _ports()
        if family == socket.AF_UNIX:
            port = unix_port._fromListeningDescriptor(self._reactor, self._fd, factory)
        else:
            port = tcp_port._fromListeningDescriptor(self._reactor, self._fd, family, factory)
        port.startListening()
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        listening = self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))
        listening._type = "TLS"  # as the reactor's own listenSSL names it
        return listening

    def listenUNIX(
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> Any:
        return self._adopt(factory)


_log = Logger(namespace="wsgate")


class Worker:
    """The worker's side of the control socket."""

    def __init__(self, reactor: Any, fds: dict[str, int]) -> None:
        self._reactor = reactor
        self.fds = fds
        self.process: Any = None
        self.channel: Any = None
        self._stopping = False
        #: A signal asked for the drain (or came after the supervisor's request).
        self._signalled = False

    def endpoint(self, description: str) -> Any:
        from twisted.internet import endpoints

        fd = self.fds.get(description)
        reactor = self._reactor if fd is None else _Adopting(self._reactor, fd)
        return endpoints.serverFromString(reactor, description)

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        channel = self.channel
        for description, fd in zip(message.get("fds", ()), fds, strict=True):
            old = self.fds.pop(description, None)
            if old is not None:
                os.close(old)
            self.fds[description] = fd
        if "reload" in message:
            gateway = self.process.gateway
            d = gateway.reload()

            def done(ok: bool) -> None:
                wanted = {listener.endpoint for listener in gateway.config.listeners}
                for description in [d for d in self.fds if d not in wanted]:
                    os.close(self.fds.pop(description))
                channel.send({"answer": message["ask"], "ok": ok})

            d.addCallback(done)
        elif "metrics" in message:
            from prometheus_client import generate_latest

            from wsgate._metrics import registry

            page = generate_latest(
                registry(self.process.connections, self.process.gateway.backend_states)
            )
            channel.send({"answer": message["ask"], "page": page.decode()})
        elif "stop" in message:
            self.stop()
        elif "now" in message:
            left = self.process.connections.drop_all()
            _log.warn("draining: second signal, {count} connection(s) dropped", count=left)

    def stop(self) -> None:
        """Drain and exit, once (a SIGTERM from systemd to every process of
        the unit may have started it already: that is not a second signal)."""
        from twisted.internet.error import ReactorNotRunning

        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(ReactorNotRunning):
            self._reactor.stop()

    def on_signal(self) -> None:
        """SIGTERM or SIGINT, from systemd or a terminal to every process of
        the tree: the supervisor's request and this signal are one drain,
        whichever came first; only a signal after that drops everything."""
        if not self._stopping or not self._signalled:
            self._signalled = True
            self.stop()
            return
        left = self.process.connections.drop_all()
        _log.warn("draining: second signal, {count} connection(s) dropped", count=left)

    def own_signals(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda n, f: self._reactor.callFromThread(self.on_signal))

    def lost(self) -> None:
        """The supervisor is gone: drain and go too."""
        self.stop()


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec.get("systemd"):
        # systemd's descriptors were passed at the same numbers; Twisted
        # reads them only for the process LISTEN_PID names.
        os.environ["LISTEN_PID"] = str(os.getpid())
    control = socket.socket(fileno=spec["control"])

    from twisted.logger import ILogObserver, globalLogBeginner, jsonFileLogObserver

    globalLogBeginner.beginLoggingTo(
        [cast(ILogObserver, jsonFileLogObserver(sys.stdout))],
        redirectStandardIO=False,
        discardBuffer=True,
    )
    from twisted.internet import reactor as installed

    reactor: Any = installed

    from wsgate import _control, _process, _speedups
    from wsgate.tap import Options

    worker = Worker(reactor, {name: int(fd) for name, fd in spec["fds"].items()})
    try:
        options = Options()
        options.parseOptions(spec["args"])
        _speedups.install(reactor)
        process: Any = _process.build(
            options["config"], reactor, endpoint=worker.endpoint, serve_metrics=False
        )
        process.second_signal = False  # our on_signal decides (see its docstring)
        process.privilegedStartService()
        process.startService()
    except SystemExit as e:
        _control.say(control, {"failed": str(e.code)})
        return 1
    except Exception as e:
        _control.say(control, {"failed": f"{type(e).__name__}: {e}"})
        return 1
    worker.process = process
    # The supervisor validates a reload first and then asks every worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _control.say(control, {"ready": True})
    worker.channel = _control.Channel(worker.handle, worker.lost)
    _control.adopt(reactor, control, worker.channel)

    reactor.addSystemEventTrigger("before", "shutdown", process.stopService)
    reactor.callWhenRunning(worker.own_signals)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
