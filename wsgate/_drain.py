"""Graceful drain: stop accepting, tell every connection to go away, exit
when the last one is gone or at its deadline.

A plain reactor stop on SIGTERM cuts every relayed connection at once, so a
restart or a rolling deploy looks like a crash to every client (1006, no
reason). Here the listeners close first (a load balancer's health check
fails over), every open connection gets 1001 "going away" on both legs, and
twistd exits once they are gone; a connection still open at its route's
``drain_timeout`` is dropped and counted. A second SIGTERM or SIGINT drops
them all at once.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from wsgate._tally import Tally

_log = Logger(namespace="wsgate")


class Drainable(Protocol):
    """One client connection, as the drain sees it."""

    def go_away(self) -> float | None:
        """Start closing it with 1001; return the seconds it may take
        (its route's ``drain_timeout``), or None to have it dropped now."""

    def drop(self) -> None:
        """End it now (both legs' TCP connections)."""


class Connections:
    """The open client connections of one process, all listeners together."""

    def __init__(self) -> None:
        self._open: set[Drainable] = set()
        self._waiting: list[defer.Deferred[None]] = []
        #: Set when the drain starts: health paths answer 503 "draining".
        self.draining = False
        #: Admitted WebSocket connections, all and by client address.
        self._admitted: dict[Drainable, str] = {}
        self._per_address: Counter[str] = Counter()
        self._max_total = 0
        self._max_per_address = 0
        #: Totals of ended connections, for metrics.
        self.tally = Tally()

    def open_connections(self) -> list[Drainable]:
        return list(self._open)

    def limit(self, config: Any) -> None:
        """Take the limits of ``config`` (a ``Config``; at start and on reload)."""
        self._max_total = config.max_connections
        self._max_per_address = config.max_connections_per_ip

    def admit(self, connection: Drainable, address: str) -> str | None:
        """Count a WebSocket upgrade in, or say why it is over a limit."""
        if self._max_total and len(self._admitted) >= self._max_total:
            return f"too many connections (max_connections = {self._max_total})"
        if self._max_per_address and self._per_address[address] >= self._max_per_address:
            return (
                f"too many connections from {address} "
                f"(max_connections_per_ip = {self._max_per_address})"
            )
        self._admitted[connection] = address
        self._per_address[address] += 1
        return None

    @property
    def admitted(self) -> int:
        return len(self._admitted)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: Drainable) -> None:
        self._open.add(connection)

    def discard(self, connection: Drainable) -> None:
        if connection not in self._open:
            return
        self._open.discard(connection)
        address = self._admitted.pop(connection, None)
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
        if not self._open:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def empty(self) -> defer.Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        if not self._open:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def drop_all(self) -> int:
        """Drop every connection still open; how many there were."""
        left = list(self._open)
        for connection in left:
            connection.drop()
            self.discard(connection)
        return len(left)

    async def drain(self, clock: Any) -> tuple[int, int]:
        """Ask every connection to go away and wait until all are gone.

        Returns (connections that were open, connections dropped at their
        deadline or at once). Connections of one deadline share one timer.
        """
        self.draining = True
        total = len(self._open)
        by_deadline: dict[float, list[Drainable]] = {}
        dropped = 0
        for connection in list(self._open):
            seconds = connection.go_away()
            if seconds is None:
                dropped += 1
                connection.drop()
                self.discard(connection)
            else:
                by_deadline.setdefault(seconds, []).append(connection)

        def deadline(connections: list[Drainable]) -> None:
            nonlocal dropped
            for connection in connections:
                if connection in self._open:
                    dropped += 1  # first: the last discard resumes the drain at once
                    connection.drop()
                    self.discard(connection)

        calls = [clock.callLater(s, deadline, group) for s, group in by_deadline.items()]
        try:
            await self.empty()
        finally:
            for call in calls:
                if call.active():
                    call.cancel()
        return total, dropped


class DrainingService(service.MultiService):
    """The process's services; stopping it (twistd does on SIGTERM, and on
    SIGINT under ``-n``) drains the connections before the reactor stops."""

    #: Whether a SIGTERM or SIGINT during the drain drops every connection.
    #: A worker of a ``--workers`` tree turns it off: its own handler decides
    #: (the supervisor's request and systemd's signal are one drain), and a
    #: handler of ours between the drain's start and its own would take
    #: that signal for a second one.
    second_signal = True

    def __init__(self, connections: Connections, reactor: Any) -> None:
        super().__init__()
        self.connections = connections
        self._reactor = reactor
        self._previous: dict[int, Any] = {}

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.second_signal:
            self._previous = {
                number: signal.signal(number, self._on_second_signal)
                for number in (signal.SIGTERM, signal.SIGINT)
            }
        self.connections.draining = True
        stopped = super().stopService()  # the listeners close now
        open_now = len(self.connections)
        _log.info(
            "draining: listeners closed, {count} connection(s) asked to go away (1001)",
            count=open_now,
        )
        try:
            total, dropped = await self.connections.drain(self._reactor)
            # twistd re-raises the signal that stopped the reactor once it is
            # done (exit status -15); a completed drain is a clean exit: 0.
            self._reactor._exitSignal = None
            _log.info(
                "drained: {closed} connection(s) closed, {dropped} dropped",
                closed=total - dropped,
                dropped=dropped,
            )
            await stopped
        finally:
            for number, previous in self._previous.items():
                signal.signal(number, previous)
            self._previous = {}

    def _on_second_signal(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._now)

    def _now(self) -> None:
        left = self.connections.drop_all()
        _log.warn("draining: second signal, {count} connection(s) dropped", count=left)


__all__ = ["Connections", "Drainable", "DrainingService"]
