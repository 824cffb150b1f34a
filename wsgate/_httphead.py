"""Strict checks of a client's request head, on its raw bytes (RFC 9110, 9112).

Autobahn splits a head with ``str.splitlines()``, so ``\\x0b``, ``\\x0c``,
``\\x1c``-``\\x1e``, ``\\x85``, a lone CR and folded lines all start new
headers: a front proxy that strips ``X-User`` would let one through inside
another header's value. So wsgate checks the bytes before anything is routed
or forwarded, and what it forwards comes from this parse, not Autobahn's.

Pure: bytes in, a ``Head`` or a ``HeadError`` out. Lines end only at CRLF: a
bare LF is refused everywhere (never a line end), and found as soon as it
arrives, so such a head is answered at once instead of waiting for a CRLF
CRLF that never comes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Head", "HeadError", "autobahn_safe", "check_partial", "parse_head"]

#: RFC 9110 5.6.2 tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: RFC 9112 3: method SP request-target SP HTTP-version; the target is
#: visible ASCII (RFC 3986 characters and then some; never a space or control).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
#: field-vchar, SP and HTAB: anything but controls (0x00-0x1f except HTAB, 0x7f).
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: C1 controls (U+0080-U+009F, NEL among them) as UTF-8 or as lone bytes
#: outside a UTF-8 sequence (surrogate-escaped): splitlines() ends a line at
#: NEL, and no legitimate header value carries one. Other obs-text passes.
_C1 = re.compile("[\x80-\x9f\udc80-\udc9f]")
#: A line end that is not CRLF: LF without CR, or CR followed by anything but LF.
_BARE = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")
#: Bytes latin-1 decoding turns into characters splitlines() ends a line at,
#: which a checked head can still hold inside obs-text (``\xd1\x85`` is UTF-8 Cyrillic ha).
_SPLITS = re.compile(rb"[\x1c-\x1e\x85]")


class HeadError(ValueError):
    """The head breaks the rules; the message is the one-line reason for the 400."""


@dataclass(frozen=True, slots=True)
class Head:
    """A checked request head. Text is the bytes decoded as latin-1, so
    encoding it back as latin-1 gives the client's bytes exactly."""

    method: str
    target: str
    version: str
    #: (lower-case name, value without surrounding whitespace), in order.
    fields: tuple[tuple[str, str], ...]

    def headers(self) -> dict[str, str]:
        """Fields by name; a repeated name's values joined with ", " (as Autobahn does)."""
        out: dict[str, str] = {}
        for name, value in self.fields:
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out


def check_partial(data: bytes) -> None:
    """Raise ``HeadError`` if a head still arriving already has a bad line end."""
    if _BARE.search(data):
        raise HeadError("request head lines must end with CRLF")


def parse_head(head: bytes) -> Head:
    """Check and parse a request head: the bytes up to and including CRLF CRLF."""
    if not head.endswith(b"\r\n\r\n"):
        raise HeadError("request head does not end with CRLF CRLF")
    check_partial(head)
    lines = head[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HeadError("malformed request line")
    method, target, version = (part.decode("ascii") for part in match.groups())
    fields = tuple(_field(line) for line in lines[1:])
    if sum(name == "host" for name, _ in fields) > 1:  # RFC 9112 3.2: routed on which?
        raise HeadError("more than one Host header")
    return Head(method, target, version, fields)


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HeadError("folded header line (obs-fold)")
    name, colon, value = line.partition(b":")
    if not colon:
        raise HeadError("header line without a colon")
    if not _TOKEN.fullmatch(name):
        raise HeadError("header name is not a token")
    if _BAD_VALUE_BYTE.search(value):
        raise HeadError(f"control character in header {name.decode()}")
    if _C1.search(value.decode("utf-8", "surrogateescape")):
        raise HeadError(f"control character in header {name.decode()}")
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def autobahn_safe(head: bytes) -> bytes:
    """A checked head as Autobahn may parse it: the bytes its ``splitlines()``
    would break a line at, inside obs-text, become ``?``. Only Autobahn sees
    this copy (for the handshake's own headers, all ASCII); what is forwarded
    comes from ``parse_head``."""
    return _SPLITS.sub(b"?", head)
