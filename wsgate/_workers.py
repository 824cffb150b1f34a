"""``--workers N``: a supervisor that binds every listener once and runs N
worker processes on those sockets.

Why the sockets are bound here and passed down, not bound by each worker
with SO_REUSEPORT: it holds for every endpoint kind (a ``unix:`` path cannot
be bound twice, ``systemd:`` sockets exist once, ``tcp:0`` would give each
worker a different port); a worker that dies or restarts loses nothing
queued on the socket (a SO_REUSEPORT socket's accept queue is reset when it
closes); and a listener that cannot be bound fails here, before any worker
starts. The workers share each socket's accept queue; the kernel wakes them
and whichever is free accepts.

One process tree: the pid file names this process; SIGHUP is validated here
and then applied by every worker; SIGTERM asks every worker to drain and
waits for them; a worker that dies is started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from wsgate import _control, _daemon, _limits
from wsgate._config import Config, ConfigError

_log = Logger(namespace="wsgate")

#: Seconds every worker together has to report that it started.
START_TIMEOUT = 60.0
#: A worker that lived less than this is started again only after RESTART_DELAY.
QUICK_DEATH = 10.0
RESTART_DELAY = 1.0
#: Seconds a worker has to answer a metrics scrape.
ASK_TIMEOUT = 5.0


def build(config: Config, argv: list[str], reactor: Any) -> service.IService:
    supervisor: Any = Supervisor(config, argv, reactor)
    if config.metrics is not None:
        from wsgate import _gathered

        _gathered.service(config.metrics, reactor, supervisor.gather).setServiceParent(supervisor)
    return supervisor  # type: ignore[no-any-return]


class _Inherited(Exception):
    """A ``systemd:`` socket: the workers inherit it from systemd as we did."""


class _Shared(protocol.Factory):
    """What the supervisor's own copy of a listening socket would serve: nothing
    (it never reads from it; the workers accept)."""

    noisy = False


class _Binding:
    """A reactor whose ``listen*`` methods bind a socket that never accepts here."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._reactor.listenTCP(port, _Shared(), backlog, interface)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        return self.listenTCP(port, factory, backlog, interface)

    def listenUNIX(
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> Any:
        return self._reactor.listenUNIX(address, _Shared(), backlog, mode, wantPID)

    def adoptStreamPort(self, fd: int, family: int, factory: Any) -> Any:
        raise _Inherited()


def _bind(reactor: Any, description: str) -> Any:
    """Bind ``description``'s socket; its port (not accepting), or None for
    a socket systemd holds. Raises CannotListenError."""
    endpoint = endpoints.serverFromString(_Binding(reactor), description)
    outcome: list[Any] = []
    endpoint.listen(protocol.Factory()).addBoth(outcome.append)
    (result,) = outcome  # every kind listens at once
    if isinstance(result, Failure):
        if result.check(_Inherited):
            return None
        result.raiseException()
    result.stopReading()
    return result


def _systemd_fds() -> tuple[list[int], list[str]]:
    """The descriptors systemd passed this process, and their names.

    Twisted reads LISTEN_PID and LISTEN_FDS when its endpoints module loads,
    and deletes them from the environment; what it found is kept by its
    ``systemd:`` parser (LISTEN_FDNAMES stays in the environment).
    """
    found = endpoints._SystemdParser._sddaemon
    fds = found.inheritedDescriptors()
    by_fd = {fd: name for name, fd in found.inheritedNamedDescriptors().items()}
    return fds, [by_fd.get(fd, "unknown") for fd in fds]


class _Worker(protocol.ProcessProtocol):
    """One worker process: its log lines, its control socket, its end."""

    def __init__(self, supervisor: Supervisor, number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.channel: _control.Channel | None = None
        self.ready = False
        self.pid: int | None = None
        self._buffer = b""
        #: Its metrics page as last scraped: its counters outlive it.
        self.last_page = ""
        self._asked = 0
        self._waiting: dict[int, defer.Deferred[Any]] = {}

    # -- the log ----------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            line = line.strip(b"\x1e")
            if line:
                self._relay(line)

    def _relay(self, line: bytes) -> None:
        text = line.decode(errors="replace")
        try:
            event = eventFromJSON(text)
        except ValueError:
            event = {
                "log_format": "{line}",
                "line": text,
                "log_level": LogLevel.info,
                "log_namespace": "wsgate",
                "log_time": time.time(),
            }
        event["worker"] = self.number
        system = event.get("log_system")
        if system is None:
            level = getattr(event.get("log_level"), "name", "-")
            system = f"{event.get('log_namespace', '-')}#{level}"
        event["log_system"] = f"{system} worker {self.number}"
        globalLogPublisher(event)

    # -- the control socket -----------------------------------------------------

    def attach(self, reactor: Any, sock: socket.socket) -> None:
        self.channel = _control.Channel(self._handle, self._lost)
        _control.adopt(reactor, sock, self.channel)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if "ready" in message:
            self.ready = True
            _log.info("worker {number} (pid {pid}) started", number=self.number, pid=self.pid)
        elif "failed" in message:
            _log.error(
                "worker {number} (pid {pid}) could not start: {why}",
                number=self.number,
                pid=self.pid,
                why=message["failed"],
            )
        elif "answer" in message:
            d = self._waiting.pop(message["answer"], None)
            if d is not None:
                d.callback(message)

    def _lost(self) -> None:
        self.ready = False
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.callback(None)

    def ask(self, message: dict[str, Any], fds: Sequence[int] = ()) -> defer.Deferred[Any]:
        """Send a request; fires with the worker's answer, or None if it went away."""
        if self.channel is None or not self.ready:
            return defer.succeed(None)
        self._asked += 1
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting[self._asked] = d
        self.channel.send({**message, "ask": self._asked}, fds)
        return d

    def tell(self, message: dict[str, Any]) -> None:
        if self.channel is not None and self.ready:
            self.channel.send(message)
        elif self.transport is not None:
            transport: Any = self.transport
            # Not started yet (or its socket is gone): a signal does the same.
            with contextlib.suppress(error.ProcessExitedAlready):
                transport.signalProcess("TERM" if "stop" in message else "KILL")

    def processEnded(self, reason: Failure) -> None:
        self._lost()
        self.supervisor._ended(self, reason)


class Supervisor(service.MultiService):
    """The ``--workers N`` process: sockets, workers, reloads, drain."""

    def __init__(self, config: Config, argv: list[str], reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._argv = argv
        self._reactor = reactor
        self._ports: dict[str, Any] = {}  # endpoint -> our port (None: systemd's)
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._all_ended: defer.Deferred[None] | None = None
        self._reloading = defer.DeferredLock()
        self._previous: dict[int, Any] = {}
        self._devnull = -1
        #: Counters of workers that ended, as last scraped (``_gathered.retire``).
        self._retired = ""

    # -- starting ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        _limits.raise_nofile_limit()  # before binding, as one process does
        for listener in self.config.listeners:
            try:
                self._ports[listener.endpoint] = _bind(self._reactor, listener.endpoint)
            except error.CannotListenError as e:
                self._close_ports()
                _daemon.fail(f"wsgate: cannot listen on {listener.endpoint!r}: {e.socketError}")
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._devnull = os.open(os.devnull, os.O_RDONLY)
        starting = [self._spawn(number) for number in range(1, self.config.workers + 1)]
        deadline = time.monotonic() + START_TIMEOUT
        for worker, sock in starting:
            first = _control.first_line(sock, max(0.0, deadline - time.monotonic()))
            if first is None or "ready" not in first:
                why = "exited" if first is None else first.get("failed", first)
                for other, other_sock in starting:
                    # Never half the workers running: the others go too.
                    transport: Any = other.transport
                    with contextlib.suppress(error.ProcessExitedAlready):
                        transport.signalProcess("KILL")
                    other_sock.close()
                self._close_ports()
                _daemon.fail(
                    f"wsgate: worker {worker.number} of {self.config.workers} "
                    f"could not start: {why}"
                )
            worker.ready = True
            worker.attach(self._reactor, sock)
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        _log.info(
            "workers: {count} started (pids {pids}), sharing {listeners} listener(s)",
            count=len(starting),
            pids=" ".join(str(w.pid) for w, _ in starting),
            listeners=len(self._ports),
        )
        _daemon.done()

    def _spawn(self, number: int) -> tuple[_Worker, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inherited, names = _systemd_fds()
        env = dict(os.environ)
        if inherited:
            # The worker sets LISTEN_PID to its own pid before Twisted reads them.
            env.update(LISTEN_FDS=str(len(inherited)), LISTEN_FDNAMES=":".join(names))
        child_fds: dict[int, int | str] = {0: self._devnull, 1: "r", 2: 2}
        child_fds.update({fd: fd for fd in inherited})
        at = 3 + len(inherited)
        child_fds[at] = theirs.fileno()
        spec: dict[str, Any] = {
            "worker": number,
            "args": self._argv,
            "control": at,
            "systemd": bool(inherited),
            "fds": {},
        }
        for description, port in self._ports.items():
            if port is not None:
                at += 1
                child_fds[at] = port.fileno()
                spec["fds"][description] = at
        worker = _Worker(self, number, self._reactor.seconds())
        # -P: the installed wsgate, not a wsgate/ directory in the working directory.
        command = [sys.executable, "-P", "-m", "wsgate._worker", json.dumps(spec)]
        try:
            transport = self._reactor.spawnProcess(
                worker, sys.executable, command, env=env, childFDs=child_fds
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.pid = transport.pid
        self._workers[number] = worker
        return worker, ours

    def _restart(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._stopping:
            return
        try:
            worker, sock = self._spawn(number)
        except OSError as e:  # out of processes or descriptors: try again later
            _log.error(
                "worker {number}: cannot start it ({why}); trying again in {delay} s",
                number=number,
                why=str(e),
                delay=RESTART_DELAY,
            )
            self._restarts[number] = self._reactor.callLater(RESTART_DELAY, self._restart, number)
            return
        worker.attach(self._reactor, sock)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.number) is worker:
            del self._workers[worker.number]
        if worker.last_page:
            from wsgate._gathered import retire

            self._retired = retire(self._retired, worker.last_page)
        if self._stopping:
            _log.info(
                "worker {number} (pid {pid}) exited: {why}",
                number=worker.number,
                pid=worker.pid,
                why=reason.getErrorMessage(),
            )
            if not self._workers and self._all_ended is not None:
                self._all_ended.callback(None)
            return
        if not self.running:
            return
        lived = self._reactor.seconds() - worker.started
        delay = RESTART_DELAY if lived < QUICK_DEATH else 0.0
        _log.error(
            "worker {number} (pid {pid}) ended unexpectedly ({why}); starting it again "
            "in {delay} s",
            number=worker.number,
            pid=worker.pid,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[worker.number] = self._reactor.callLater(delay, self._restart, worker.number)

    # -- metrics ----------------------------------------------------------------

    def gather(self) -> defer.Deferred[tuple[list[str], str]]:
        """Every started worker's metrics page (those that answer in time),
        and the counters that workers which ended had when last asked."""
        workers = list(self._workers.values())
        asks = []
        for worker in workers:
            d = worker.ask({"metrics": True})
            d.addTimeout(ASK_TIMEOUT, self._reactor)
            d.addErrback(lambda failure: None)
            asks.append(d)

        def pages(answers: list[Any]) -> tuple[list[str], str]:
            found = []
            for worker, answer in zip(workers, answers, strict=True):
                if answer is not None:
                    worker.last_page = answer["page"]
                    found.append(answer["page"])
            return found, self._retired

        gathered: defer.Deferred[list[Any]] = defer.gatherResults(asks)
        return gathered.addCallback(pages)

    # -- reloading --------------------------------------------------------------

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> defer.Deferred[bool]:
        """Check the file here; only if it is good, every worker applies it."""
        return self._reloading.run(lambda: defer.ensureDeferred(self._reload()))

    async def _reload(self) -> bool:
        source = self.config.source
        if source is None:
            _log.warn("reload: nothing to re-read (started without --config)")
            return False
        from wsgate._configfile import load_file
        from wsgate._service import _load_certificates

        try:
            config = load_file(source)
            for listener in config.listeners:
                _load_certificates(listener)
        except ConfigError as e:
            _log.error(
                "reload: {source} refused, the running configuration stays:\n{errors}",
                source=source,
                errors=str(e),
            )
            return False
        bound: dict[str, Any] = {}
        for listener in config.listeners:
            if listener.endpoint in self._ports or listener.endpoint in bound:
                continue
            try:
                bound[listener.endpoint] = _bind(self._reactor, listener.endpoint)
            except error.CannotListenError as e:
                for port in bound.values():
                    if port is not None:
                        port.stopListening()
                _log.error(
                    "reload: {source} refused, the running configuration stays: "
                    "cannot listen on {endpoint!r}: {why}",
                    source=source,
                    endpoint=listener.endpoint,
                    why=str(e.socketError),
                )
                return False
        self._ports.update(bound)
        if config.workers != self.config.workers:
            _log.warn(
                "reload: workers = {wanted} takes effect at the next start; {running} run now",
                wanted=config.workers,
                running=self.config.workers,
            )
            config = replace(config, workers=self.config.workers)
        self.config = config
        passed = [(d, port.fileno()) for d, port in bound.items() if port is not None]
        workers = list(self._workers.values())
        answers = await defer.gatherResults(
            [
                w.ask({"reload": True, "fds": [d for d, _ in passed]}, [fd for _, fd in passed])
                for w in workers
            ]
        )
        wanted = {listener.endpoint for listener in config.listeners}
        closing = [
            defer.maybeDeferred(port.stopListening)
            for d, port in list(self._ports.items())
            if d not in wanted and port is not None
        ]
        self._ports = {d: port for d, port in self._ports.items() if d in wanted}
        await defer.gatherResults(closing)
        # None: the worker was (re)starting; it reads the new file as it starts.
        refused = [
            w.number
            for w, a in zip(workers, answers, strict=True)
            if a is not None and not a.get("ok")
        ]
        if refused:
            _log.error(
                "reload: {source} checked, but worker(s) {refused} did not apply it (see their "
                "lines above)",
                source=source,
                refused=", ".join(map(str, refused)),
            )
            return False
        _log.info(
            "reload: {source} applied by {count} worker(s)", source=source, count=len(workers)
        )
        return True

    # -- stopping ---------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts = {}
        hup = self._previous.pop(signal.SIGHUP, None)
        if hup is not None:
            signal.signal(signal.SIGHUP, hup)
        self._previous = {
            number: signal.signal(number, self._on_second_signal)
            for number in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            stopped = super().stopService()
            self._all_ended = defer.Deferred()
            if not self._workers:
                self._all_ended.callback(None)
            _log.info("draining: {count} worker(s) asked to drain", count=len(self._workers))
            for worker in list(self._workers.values()):
                worker.tell({"stop": True})
            await self._close_ports()
            await self._all_ended
            self._reactor._exitSignal = None  # a drained stop is a clean exit (see _drain)
            await stopped
        finally:
            for number, previous in self._previous.items():
                signal.signal(number, previous)
            self._previous = {}
            if self._devnull >= 0:
                os.close(self._devnull)
                self._devnull = -1

    def _on_second_signal(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._now)

    def _now(self) -> None:
        _log.warn("draining: second signal, every worker drops its connections")
        for worker in list(self._workers.values()):
            worker.tell({"now": True})

    def _close_ports(self) -> defer.Deferred[Any]:
        ports, self._ports = self._ports, {}
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports.values() if port]
        )


__all__ = ["Supervisor", "build"]
