"""Which frame path this process runs, decided once at import.

The compiled one (``wsgate._framecore``, built by ``pip install`` where a C
compiler exists) parses, unmasks and validates the frames of an open leg and
builds the outgoing ones; without it, or with ``WSGATE_NO_EXTENSIONS=1``,
Autobahn's own Python parser and ``sendFrame`` do it all, as they always did.
Both give the same verdicts: the compiled reader hands anything but the plain
case to Autobahn's parser (tests/test_framepath.py checks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType

from twisted.logger import Logger

_log = Logger(namespace="wsgate")


def choose(environ: Mapping[str, str]) -> tuple[ModuleType | None, str]:
    """The compiled module (None: the Python path) and why."""
    if environ.get("WSGATE_NO_EXTENSIONS", "") not in ("", "0"):
        return None, "WSGATE_NO_EXTENSIONS={}".format(environ["WSGATE_NO_EXTENSIONS"])
    try:
        from wsgate import _framecore  # type: ignore[attr-defined]  # a stub when not built
    except ImportError as e:
        return None, f"wsgate._framecore not built: {e}"
    return _framecore, "wsgate._framecore"


#: The compiled module every leg uses, or None.
CORE, REASON = choose(os.environ)


def log_choice() -> None:
    """The startup line naming the path; a warning when the compiled one is
    missing without being turned off."""
    if CORE is not None:
        _log.info("frame path: compiled ({reason})", reason=REASON)
    elif REASON.startswith("WSGATE_NO_EXTENSIONS"):
        _log.info("frame path: python ({reason})", reason=REASON)
    else:
        _log.warn(
            "frame path: python ({reason}); reinstall wsgate where a C compiler and the "
            "Python headers exist for about half the CPU per message",
            reason=REASON,
        )


__all__ = ["CORE", "REASON", "choose", "log_choice"]
