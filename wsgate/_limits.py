"""Living with the file descriptor limit: raise it at start, and do not let
running into it flood the log.

Every relayed connection holds two descriptors (client and backend), so the
usual soft limit of 1024 caps a gateway at about 500 connections while the
hard limit often allows far more. When the limit is reached anyway, Twisted's
listening port logs each failed ``accept()`` (and each client it closes to
recover): thousands of lines a second, which fill the disk and hide the one
line that matters.
"""

from __future__ import annotations

import resource
from typing import Any, cast

from twisted.application import internet
from twisted.internet import defer, error
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import implementer

from wsgate import _daemon

_log = Logger(namespace="wsgate")

#: Seconds between two accept-error lines of one listening port.
ACCEPT_LOG_INTERVAL = 1.0


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit and log the figure.

    Returns (soft, hard) as they are afterwards. An unlimited hard limit is
    left alone (Linux refuses to set one above ``fs.nr_open``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            _log.warn(
                "file descriptors: cannot raise the limit from {soft} to {hard}: {error}",
                soft=soft,
                hard=hard,
                error=str(e),
            )
            return soft, hard
        _log.info(
            "file descriptors: soft limit raised from {old} to {soft} (the hard limit)",
            old=soft,
            soft=hard,
        )
        return hard, hard
    _log.info("file descriptors: limit {soft} (hard {hard})", soft=soft, hard=_fmt(hard))
    return soft, hard


def _fmt(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


@implementer(ILogObserver)
class ThrottledObserver:
    """Passes on at most one event per ``interval`` seconds (by the events'
    own ``log_time``); the next one passed says how many were held back."""

    def __init__(self, observer: Any, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self._observer = observer
        self._interval = interval
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, event: LogEvent) -> None:
        now = float(event.get("log_time", 0.0))
        if self._last is not None and now - self._last < self._interval:
            self.suppressed += 1
            return
        self._last = now
        if self.suppressed:
            event = dict(event)
            event["log_format"] = (
                str(event.get("log_format", "")) + " ({wsgate_suppressed} similar lines held back)"
            )
            event["wsgate_suppressed"] = self.suppressed
            self.suppressed = 0
        self._observer(event)


def throttle_accept_log(port: Any) -> Any:
    """Make ``port`` (a listening Twisted port) log accept errors at most once
    a second. Returns ``port``, to sit in a Deferred's callback chain."""
    logger = getattr(port, "_logger", None)
    if isinstance(logger, Logger):
        port._logger = Logger(
            namespace=logger.namespace,
            source=port,
            observer=cast(ILogObserver, ThrottledObserver(globalLogPublisher)),
        )
    return port


def throttle_when_listening(listening: defer.Deferred[Any] | None) -> None:
    """:func:`throttle_accept_log` on the port ``listening`` fires with (a
    ``StreamServerEndpointService``'s ``_waitingForPort``)."""
    if listening is not None:
        listening.addCallback(throttle_accept_log)


class Listening(internet.StreamServerEndpointService):
    """A listener of the starting configuration (the gateway's, the metrics
    port): one that cannot bind stops the start with one line, in daemon mode
    too, and its accept errors are throttled. ``what`` prefixes the line."""

    _raiseSynchronously = True
    what = ""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except error.CannotListenError as e:
            _daemon.fail(f"wsgate: {self.what}cannot listen on {self.name!r}: {e.socketError}")
        throttle_when_listening(self._waitingForPort)


__all__ = [
    "Listening",
    "ThrottledObserver",
    "raise_nofile_limit",
    "throttle_accept_log",
    "throttle_when_listening",
]
