"""``log_format = "json"``: one JSON object per log event, one per line.

Log shippers (Loki, Elasticsearch, CloudWatch) parse JSON lines without a
grok pattern, and the per-connection open and close events carry their
figures (close codes, bytes, messages, duration, negotiation) as fields.
twistd builds its log observer from its ``--logger`` option before the
service exists, so ``tap.Options`` puts :func:`observer_factory` there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

#: Keys of legacy (``twisted.python.log``) events that only repeat the message.
_LEGACY = frozenset({"message", "format", "isError", "system", "time", "why", "failure"})
_PLAIN = (str, int, float, bool, type(None))


def event_as_json(event: LogEvent) -> str:
    """One event as a JSON object: time, level, namespace, the formatted
    message, and the event's own fields (JSON values kept, others as text)."""
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(float(event.get("log_time", 0.0)), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in out:
            continue
        out[key] = value if isinstance(value, _PLAIN) else str(value)
    failure = event.get("log_failure")
    if failure is not None:
        out["traceback"] = failure.getTraceback()
    return json.dumps(out, ensure_ascii=False) + "\n"


def observer(out: IO[str]) -> ILogObserver:
    return cast(ILogObserver, FileLogObserver(out, event_as_json))


def observer_factory(logfile: str | None, nodaemon: bool) -> Callable[[], ILogObserver]:
    """What twistd's ``--logger`` takes: a factory of the observer, which
    writes where twistd would have (``--logfile``, else stdout under ``-n``,
    else ``twistd.log``)."""

    def make() -> ILogObserver:
        if logfile == "-" or (not logfile and nodaemon):
            return observer(sys.stdout)
        from twisted.python import logfile as _logfile

        return observer(_logfile.LogFile.fromFullPath(logfile or "twistd.log"))  # type: ignore[arg-type]

    return make


#: The factory twistd's --logger names (it takes a dotted name, resolved
#: after wsgate's options are parsed): set by :func:`for_twistd`.
twistd_observer: Callable[[], ILogObserver] | None = None


def for_twistd(logfile: str | None, nodaemon: bool) -> str:
    """The value for twistd's ``logger`` option that makes its log JSON."""
    global twistd_observer
    twistd_observer = observer_factory(logfile, nodaemon)
    return f"{__name__}.twistd_observer"


__all__ = ["event_as_json", "for_twistd", "observer", "observer_factory"]
