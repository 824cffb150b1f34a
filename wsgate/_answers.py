"""wsgate's own plain HTTP answers: a status, a short body a person can read, close.

What a listener says without a WebSocket (a bad request head, no route,
health, a redirect, a backend that could not be opened) and the static
site's bad request look alike: a standard status line, a one-line text (or
JSON) body, never cached, and the connection closed after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus


def reason(code: int) -> str:
    """The status line's standard reason phrase (``Error`` for a code it lacks)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def plain(
    code: int,
    body: bytes,
    content_type: str = "text/plain",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A whole response, ``Connection: close``: the caller closes after writing it."""
    lines = [
        f"HTTP/1.1 {code} {reason(code)}",
        f"Content-Type: {content_type}; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body


def refusal(
    code: int,
    detail: str,
    headers: Iterable[tuple[str, str]] = (),
    retry_after: int | None = None,
) -> bytes:
    """A refused request, ``detail`` as the one-line body (Autobahn would put it
    in the status line and send no body). A 426 names the upgrade it wants; a
    503 with ``retry_after`` (seconds) tells a client when a local shortage may
    be over."""
    body = (detail.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
    extra: list[tuple[str, str]] = []
    if code == 426:
        extra.append(("Upgrade", "websocket"))
    if code == 503 and retry_after is not None:
        extra.append(("Retry-After", str(retry_after)))
    extra.extend(headers)
    return plain(code, body, headers=extra)


__all__ = ["plain", "reason", "refusal"]
