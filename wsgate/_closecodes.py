"""Which close code one leg gets when the other leg ends.

Pure: no I/O, no Autobahn. The relay asks this module once per connection,
when the first leg ends, and sends the answer on the other leg.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

NORMAL = 1000
GOING_AWAY = 1001
NO_STATUS = 1005
ABNORMAL = 1006
INTERNAL_ERROR = 1011
BAD_GATEWAY = 1014

#: Codes a peer may put in a close frame (RFC 6455 7.4, IANA registry).
#: 1004, 1005, 1006 and 1015 never go on the wire.
_WIRE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})

#: Longest close reason that fits a control frame (125 - 2 bytes of code).
MAX_REASON_BYTES = 123


def is_wire_code(code: int) -> bool:
    """True for codes that may be sent (and so relayed) in a close frame."""
    return code in _WIRE_CODES or 3000 <= code <= 4999


class Cause(enum.Enum):
    """How a leg ended, as seen by wsgate."""

    #: Its peer sent a close frame: relay code and reason as they are.
    PEER_CLOSED = "peer closed"
    #: wsgate failed the leg because its peer broke the protocol or a limit.
    FAILED = "failed"
    #: The TCP connection went away without a close frame (1006), or a
    #: closing handshake timed out.
    DROPPED = "dropped"
    #: wsgate closed both legs: nothing crossed for the route's idle_timeout.
    IDLE = "idle"
    #: wsgate closed both legs: the process is draining (SIGTERM).
    DRAINING = "draining"


class Side(enum.Enum):
    CLIENT = "client"
    BACKEND = "backend"


@dataclass(frozen=True, slots=True)
class Close:
    """A close to send: ``code`` None means a close frame with no status."""

    code: int | None
    reason: str = ""

    def reason_bytes(self) -> bytes | None:
        if self.code is None:
            return None
        return truncate_reason(self.reason)


def truncate_reason(reason: str) -> bytes:
    """UTF-8 encode ``reason``, cut to fit a close frame on a code point boundary."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_REASON_BYTES:
        return raw
    return raw[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")


def for_other_leg(side: Side, cause: Cause, code: int | None, reason: str) -> Close:
    """The close for the other leg when the ``side`` leg ended by ``cause``.

    A peer's own close crosses unchanged, so an application's code and reason
    reach the other end. When wsgate itself ends a leg, the other end did
    nothing wrong, so it is not handed the failing leg's code (a 1007 sent to
    a backend would blame the backend): it gets 1001 (client gone) or, from
    the backend side, 1014 (bad gateway) for a misbehaving backend and 1011
    for one that vanished.
    """
    if cause is Cause.PEER_CLOSED:
        if code is None or code == NO_STATUS:
            return Close(None)
        if is_wire_code(code):
            return Close(code, reason)
        # Autobahn fails the leg for codes that are not on the wire, so this
        # is only reached by a caller that did not validate: stay safe.
        return Close(NORMAL if side is Side.CLIENT else INTERNAL_ERROR, reason)
    if side is Side.CLIENT:
        what = "client failed" if cause is Cause.FAILED else "client went away"
        return Close(GOING_AWAY, _describe(what, code, reason))
    if cause is Cause.FAILED:
        return Close(BAD_GATEWAY, _describe("backend failed", code, reason))
    return Close(INTERNAL_ERROR, _describe("backend went away", code, reason))


def _describe(what: str, code: int | None, reason: str) -> str:
    if code is None or code == ABNORMAL:
        return what
    return f"{what} ({code}{': ' + reason if reason else ''})"
