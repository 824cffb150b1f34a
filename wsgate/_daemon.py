"""Why a daemonized start failed, told on the terminal that ran ``twistd``.

Without ``-n``, twistd forks twice and the first process waits on a status
pipe for the daemon to start. That pipe reports only exceptions that are not
``SystemExit``, cut to 100 bytes and shown as a bytes repr; and when the
daemon exits without writing to it the waiting process hangs (it keeps its
own copy of the pipe's write end), leaving a stale pid file behind. So
wsgate keeps its own pipe, from before the forks: the waiting process reads
the daemon's one-line reason from it, prints it and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType, TracebackType
from typing import Any, NoReturn

_pipe: tuple[int, int] | None = None
_origin = 0
_hooked = False


def watch() -> None:
    """Call before twistd daemonizes (``makeService``); harmless with ``-n``."""
    global _pipe, _origin, _hooked
    done()
    _pipe = os.pipe()
    _origin = os.getpid()
    if not _hooked:
        os.register_at_fork(after_in_parent=_after_fork_in_parent)
        _hooked = True


def stop_on_early_sigterm(reactor: Any) -> None:
    """Until the reactor runs, a SIGTERM stops it as soon as it starts.

    twistd reports a daemon started (and its waiting process exits) before
    the reactor runs and installs its own signal handlers; a SIGTERM in
    between would kill the daemon outright and leave its pid file behind.
    With this handler the stop waits for the reactor, then goes as any
    other: the drain, the pid file removed. The reactor's own handler
    replaces it once running.
    """

    def stop(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)


def _after_fork_in_parent() -> None:
    """In the process twistd's daemonize leaves waiting: wait for our report first."""
    if _pipe is None or os.getpid() != _origin:
        return
    read, write = _pipe
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    reason = b"".join(chunks)
    if reason != b"started":
        # No report at all: the daemon died some other way; twistd's pipe may say.
        if reason:
            os.write(2, reason)
            os._exit(1)
        return
    # Started: twistd's own status pipe says so next.


def _daemonized() -> bool:
    return _pipe is not None and os.getpid() != _origin


def done() -> None:
    """The gateway started: the waiting process may go (and in ``-n``, drop the pipe)."""
    global _pipe
    if _pipe is None:
        return
    read, write = _pipe
    if _daemonized():
        os.write(write, b"started")
    os.close(read)
    os.close(write)
    _pipe = None


class StartError(Exception):
    """A start that failed in the daemon: twistd removes the pid file and exits."""


def fail(message: str) -> NoReturn:
    """Stop a start that cannot go on, with one line on the terminal and nothing else.

    In the foreground, ``SystemExit`` prints the line. In a daemon, the line
    goes to the waiting process, and an exception that is not ``SystemExit``
    makes twistd remove its pid file before the daemon exits (without a
    traceback in the log: the reason is logged already).
    """
    global _pipe
    if not _daemonized():
        raise SystemExit(message)
    assert _pipe is not None
    from twisted.logger import Logger

    Logger(namespace="wsgate").error("{message}", message=message)
    os.write(_pipe[1], message.encode(errors="replace") + b"\n")
    _pipe = None  # its write end closes as the daemon exits, after the pid file goes
    previous = sys.excepthook

    def quiet(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(value, StartError):
            previous(kind, value, tb)

    sys.excepthook = quiet
    raise StartError(message)
