"""Which request headers reach the backend, and which response headers reach the client.

Pure: dictionaries in, dictionaries out.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wsgate._config import Network

#: Never forwarded: hop-by-hop (RFC 9110 7.6.1), the WebSocket handshake's
#: own headers (each leg makes its own), and those the backend leg sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-extensions",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "origin",
        "user-agent",
        "pragma",
        "cache-control",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)

#: Response headers of the backend's 101 that the client's 101 carries.
_PASSED_BACK = ("set-cookie",)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the client leg knows about the opening handshake."""

    headers: Mapping[str, str]  # lower-case names, as Autobahn parses them
    peer_host: str | None  # the client's IP address, None for a unix socket
    secure: bool  # the client leg is TLS
    #: The peer is a proxy in ``trust_forwarded_from``: its X-Forwarded-* and
    #: Forwarded are kept. From anyone else they are dropped, or a client
    #: could name any address it likes.
    trusted: bool = False


def backend_headers(request: ClientRequest) -> dict[str, str]:
    """Headers for the backend's handshake, beyond what the backend leg writes itself.

    Adds X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239), appending
    to what an earlier proxy sent, as nginx's ``$proxy_add_x_forwarded_for``
    does, when that proxy is trusted.
    """
    named_in_connection = {
        token.strip().lower()
        for token in request.headers.get("connection", "").split(",")
        if token.strip()
    }
    out = {
        name: value
        for name, value in request.headers.items()
        if name not in _NOT_FORWARDED and name not in named_in_connection
    }
    proto = "https" if request.secure else "http"
    host = request.headers.get("host", "")
    earlier = request.headers if request.trusted else {}
    if request.peer_host:
        out["x-forwarded-for"] = _append(earlier.get("x-forwarded-for"), request.peer_host)
    out["x-forwarded-proto"] = proto
    if host:
        out["x-forwarded-host"] = host
    element = ";".join(
        part
        for part in (
            f"for={_forwarded_node(request.peer_host)}" if request.peer_host else "for=unknown",
            f"host={_quote(host)}" if host else "",
            f"proto={proto}",
        )
        if part
    )
    out["forwarded"] = _append(earlier.get("forwarded"), element)
    return out


def as_latin1(value: str) -> str:
    """A configured value as header text: its UTF-8 bytes, one character each.

    Header text here is latin-1 (a client's bytes exactly, see ``_httphead``)
    and the backend leg writes it back as latin-1.
    """
    return value.encode("utf-8").decode("latin-1")


def peer_trusted(networks: Iterable[Network], peer_host: str | None) -> bool:
    """Whether a peer's address is in ``trust_forwarded_from``."""
    if peer_host is None:
        return False
    address = _address(peer_host)
    if address is None:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 on a dual-stack socket
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


def client_response_headers(raw_response: bytes) -> dict[str, list[str]]:
    """Headers of the backend's 101 to repeat in the client's 101.

    Read from the raw response, not Autobahn's parsed dict, which joins
    repeated headers with commas (and Set-Cookie values contain commas).
    """
    found: dict[str, list[str]] = {}
    for line in raw_response.decode("iso-8859-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        key = name.strip().lower()
        if sep and key in _PASSED_BACK:
            found.setdefault(_canonical(key), []).append(value.strip())
    return found


def _append(existing: str | None, value: str) -> str:
    return f"{existing}, {value}" if existing else value


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address, parsed once per peer rather than twice per connection."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _forwarded_node(host: str) -> str:
    address = _address(host)
    if address is None:
        return _quote(host)
    if address.version == 6:
        return f'"[{address}]"'
    return str(address)


def _quote(value: str) -> str:
    """RFC 7239 value: a token as it is, anything else as a quoted string."""
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


#: RFC 9110 token characters (tchar), ASCII only.
_TOKEN = re.compile(r"[0-9A-Za-z!#$%&'*+\-.^_`|~]+")


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def join_subprotocols(protocols: Iterable[str]) -> list[str]:
    """The client's offered subprotocols, in order, without repeats."""
    seen: dict[str, None] = {}
    for protocol in protocols:
        if protocol:
            seen.setdefault(protocol, None)
    return list(seen)


def origin_allowed(patterns: Iterable[str], origin: str | None) -> bool:
    """Whether a request's Origin passes a route's ``origins`` patterns.

    No Origin header (a non-browser client) passes: the check is against
    cross-site WebSocket hijacking, which needs a browser, and browsers
    always send one. Patterns are as ``_config.parse_origins`` checks them.
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    for pattern in patterns:
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern and _origin_pattern(pattern).fullmatch(origin):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _origin_pattern(pattern: str) -> re.Pattern[str]:
    scheme, _, rest = pattern.partition("://")
    host, colon, port = rest.partition(":")
    regex = re.escape(scheme) + "://"
    regex += (
        (r"[^/:.]+(\.[^/:.]+)*" + re.escape(host[1:])) if host.startswith("*.") else re.escape(host)
    )
    if port == "*":
        regex += r"(:\d+)?"
    elif colon:
        regex += ":" + re.escape(port)
    return re.compile(regex)
