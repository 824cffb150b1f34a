"""Choosing a route for a request by its Host header and path.

Pure: no I/O, no Twisted. The rules are nginx's, so they hold no surprises:
the longest path prefix wins, prefixes match whole path segments, and
``*.example.com`` matches names under example.com but not example.com itself.
Checks return a reason instead of raising, so the config loader can say where
the bad value came from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

__all__ = [
    "RouteLike",
    "Router",
    "check_host_pattern",
    "check_prefix",
    "duplicate_routes",
    "normalize_host",
    "normalize_host_pattern",
    "normalize_path",
    "prefix_matches",
    "rewrite_path",
]


class RouteLike(Protocol):
    """What the router needs from a route; read-only, so frozen dataclasses fit."""

    @property
    def hosts(self) -> tuple[str, ...]:
        """Host patterns; ``()`` matches any host, even a request without one."""
        ...

    @property
    def prefix(self) -> str:
        """Path prefix, starting with ``/``."""
        ...


R = TypeVar("R", bound=RouteLike)

# Underscores are not legal in host names, but they are common on internal
# networks, and rejecting them would only lock those users out.
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_MAX_NAME = 253
_VALID_HOST = (
    "expected a host name such as app.example.com, an IP address such as 127.0.0.1 or ::1, "
    "or *.example.com"
)
_VALID_PREFIX = "expected a path such as /, /app or /app/"


def _ipv6(text: str) -> str | None:
    """The canonical form of an IPv6 literal, so ``0:0::1`` and ``::1`` compare equal."""
    if "%" in text:  # zone ids name an interface of the client, not a host
        return None
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return None


def _name(text: str) -> str | None:
    """``text`` as a lowercase name without its trailing dot, or None if it is not one."""
    if not text.isascii():  # before lower(): the Kelvin sign lowercases to "k"
        return None
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        return None
    return name


def _port_ok(port: str) -> bool:
    # RFC 3986 allows an empty port ("host:"); isdigit() alone would take "²".
    return port == "" or (len(port) <= 5 and port.isascii() and port.isdigit())


def normalize_host(host_header: str | None) -> str | None:
    """The host named by a Host header, comparable with normalised host patterns.

    The port is dropped: a route is chosen by name, whatever port the listener
    has. Anything that is not a host name or IP literal gives None, which only
    any-host routes match.
    """
    if not host_header:
        return None
    text = host_header.strip(" \t")
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _port_ok(port[1:]))):
            return None
        return _ipv6(address)
    name, colon, port = text.partition(":")
    if colon and not _port_ok(port):  # also rejects unbracketed IPv6
        return None
    return _name(name)


def check_host_pattern(pattern: str) -> str | None:
    """None if ``pattern`` is a valid host pattern, else why not and what is valid."""
    reason = _host_pattern_problem(pattern)
    return None if reason is None else f"{reason}; {_VALID_HOST}"


def _host_pattern_problem(pattern: str) -> str | None:
    if not pattern:
        return "is empty"
    if not pattern.isascii():
        return "has non-ASCII characters (write an international name in its xn-- form)"
    if any(c.isspace() for c in pattern):
        return "contains whitespace"
    if "/" in pattern:
        return "contains '/' (a host pattern has no scheme or path)"
    if pattern.startswith("["):
        return "has brackets (write an IPv6 address without them, such as ::1)"
    if ":" in pattern:
        if _ipv6(pattern) is not None:
            return None
        if pattern.count(":") == 1:
            return "has a port (the port is not part of a host pattern)"
        return "is not a valid IPv6 address"
    if pattern in ("*", "*."):
        return "is '*' alone (leave the host list empty to match any host)"
    rest = pattern[2:] if pattern.startswith("*.") else pattern
    if "*" in rest:
        return "has '*' other than as the whole first label"
    if _name(rest) is None:
        return "is not a host name (letters, digits, '-' and '_' in dot-separated labels)"
    return None


def normalize_host_pattern(pattern: str) -> str:
    """A valid pattern in the form :func:`normalize_host` gives hosts."""
    if ":" in pattern:
        address = _ipv6(pattern)
        if address is not None:
            return address
    pattern = pattern.lower()
    return pattern[:-1] if pattern.endswith(".") else pattern


def check_prefix(prefix: str) -> str | None:
    """None if ``prefix`` is a valid path prefix, else why not and what is valid."""
    reason = _prefix_problem(prefix)
    return None if reason is None else f"{reason}; {_VALID_PREFIX}"


def _prefix_problem(prefix: str) -> str | None:
    if not prefix:
        return "is empty"
    if not prefix.startswith("/"):
        return "does not start with '/'"
    if "?" in prefix or "#" in prefix:
        return "contains '?' or '#' (a prefix matches the path, not the query)"
    if any(c.isspace() or c < " " or c == "\x7f" for c in prefix):
        return "contains whitespace or a control character"
    if not prefix.isascii():
        return "has non-ASCII characters (write them percent-encoded, as clients send them)"
    if "//" in prefix:
        return "contains '//'"
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return "has a '.' or '..' segment (clients resolve those before sending a path)"
    return None


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether ``prefix`` matches ``path`` (without its query) at a segment boundary."""
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


#: Percent-escapes of RFC 3986 unreserved characters, decoded before routing.
_ESCAPE = re.compile(r"%(..)?")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str) -> str:
    """The path a route is chosen on and the backend gets, as nginx makes it
    before choosing a location: escaped unreserved characters decoded
    (``%61`` is ``a``, ``%2e`` is ``.``), ``//`` merged, ``.`` and ``..``
    segments removed (RFC 3986 5.2.4). Otherwise ``/app/x/../admin`` would
    reach ``/app``'s route and skip ``/app/admin``'s Origin check.

    Raises ``ValueError`` (the reason for a 400) for a path that climbs above
    ``/``, an encoded ``/`` or NUL (the backend may decode them after the
    route was chosen), a malformed escape, or a path not starting with ``/``.
    """
    if not path.startswith("/"):
        raise ValueError("path does not start with '/'")
    if "\0" in path:
        raise ValueError("NUL in path")
    decoded = _ESCAPE.sub(_decode_unreserved, path)
    segments = re.sub("/{2,}", "/", decoded).split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if not out:
                raise ValueError("path climbs above '/'")
            out.pop()
        elif segment != ".":
            out.append(segment)
    # A trailing "." or ".." names the directory: keep its slash.
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def _decode_unreserved(match: re.Match[str]) -> str:
    digits = match.group(1)
    if digits is None or not set(digits) <= _HEX:
        raise ValueError("malformed percent-escape in path")
    char = chr(int(digits, 16))
    if char == "/":
        raise ValueError("encoded '/' (%2F) in path")
    if char == "\0":
        raise ValueError("NUL (%00) in path")
    return char if char in _UNRESERVED else "%" + digits


def rewrite_path(prefix: str, replacement: str | None, path: str) -> str:
    """The backend's path for ``path``, matched by ``prefix``.

    With a replacement, the matched prefix becomes the replacement, joined at
    one slash whichever side has it: ``/app/`` -> ``/v2`` turns ``/app/x``
    into ``/v2/x``, not nginx's surprising ``/v2x``. ``""`` and ``"/"`` strip
    the prefix.
    """
    if not prefix_matches(prefix, path):
        raise ValueError(f"prefix {prefix!r} does not match path {path!r}")
    if replacement is None:
        return path
    rest = path[len(prefix) :]
    if prefix.endswith("/"):
        rest = "/" + rest  # the prefix took the boundary slash; give it back
    result = replacement.rstrip("/") + rest if rest else replacement
    return result if result.startswith("/") else "/" + result


class Router(Generic[R]):
    """Picks the route for a (host, path), cheaply, from routes fixed at config load.

    Longest prefix first; for one prefix, the most specific host pattern (an
    exact name, then the wildcard with the most labels, then a route for any
    host); then the earliest route. A match costs a
    dict lookup per distinct prefix length and per label of the host, however
    many routes there are.
    """

    def __init__(self, routes: Sequence[R]) -> None:
        # prefix -> host key -> route. Keys: an exact host, ".example.com"
        # for "*.example.com", None for any host. setdefault keeps the
        # earliest route for each key.
        self._by_prefix: dict[str, dict[str | None, R]] = {}
        for index, route in enumerate(routes):
            reason = check_prefix(route.prefix)
            if reason is not None:
                raise ValueError(f"route {index}: prefix {route.prefix!r} {reason}")
            keys = self._by_prefix.setdefault(route.prefix, {})
            for pattern in route.hosts or (None,):
                keys.setdefault(_host_key(index, pattern), route)
        self._lengths = tuple(sorted({len(p) for p in self._by_prefix}, reverse=True))

    def match(self, host: str | None, path: str) -> R | None:
        """The route for a request; ``host`` as :func:`normalize_host` gives it."""
        for length in self._lengths:
            if length > len(path):
                continue
            candidate = path[:length]
            routes = self._by_prefix.get(candidate)
            if routes is None:
                continue
            if length < len(path) and path[length] != "/" and not candidate.endswith("/"):
                continue
            route = _route_for_host(routes, host)
            if route is not None:
                return route
        return None


def _host_key(index: int, pattern: str | None) -> str | None:
    if pattern is None:
        return None
    reason = check_host_pattern(pattern)
    if reason is not None:
        raise ValueError(f"route {index}: host {pattern!r} {reason}")
    pattern = normalize_host_pattern(pattern)
    return pattern[1:] if pattern.startswith("*.") else pattern


def _route_for_host(routes: dict[str | None, R], host: str | None) -> R | None:
    if host is not None:
        route = routes.get(host)
        if route is not None:
            return route
        # Each dot after the first character starts a wildcard suffix; the
        # first one found is the longest, so the most specific.
        dot = host.find(".", 1)
        while dot != -1:
            route = routes.get(host[dot:])
            if route is not None:
                return route
            dot = host.find(".", dot + 1)
    return routes.get(None)


def duplicate_routes(routes: Sequence[R]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of routes sharing a (host pattern, prefix).

    For that host and prefix, route ``j`` can never be chosen: almost
    certainly a mistake in the config.
    """
    first_seen: dict[tuple[str | None, str], list[int]] = {}
    pairs: set[tuple[int, int]] = set()
    for j, route in enumerate(routes):
        patterns = {normalize_host_pattern(h) for h in route.hosts} if route.hosts else {None}
        for pattern in patterns:
            earlier = first_seen.setdefault((pattern, route.prefix), [])
            pairs.update((i, j) for i in earlier)
            earlier.append(j)
    return sorted(pairs)
