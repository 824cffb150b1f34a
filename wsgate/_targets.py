"""The allow-list for targets a token source names (``token_targets``).

A token source is trusted to say which backend a token leads to, but a
compromised portal, database or signing key must not turn the gateway into
an open proxy to anything it can reach. Pure: patterns in, yes or no out.

Patterns: ``HOST:PORTS`` where HOST is an IP address, a CIDR network
(``10.0.0.0/8``, ``[fd00::]/8`` or ``fd00::/8`` in brackets when a port
follows: ``[fd00::/8]:5900``), a host name with ``*`` standing for one
label's characters (``vnc-*.internal``), or ``*`` for any host; PORTS is a
port, a range ``5900-5999`` or ``*``. ``unix:GLOB`` allows Unix sockets
whose path matches. A network matches IP literals only: a target named by a
host name is matched by its name, never by what it resolves to.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from wsgate.interfaces import Target

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAME = re.compile(r"[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*\.?")
_EXAMPLES = '"10.0.0.0/8:5900-5999", "vnc-*.internal:5901", "[::1]:5900", "unix:/run/vnc/*"'


@dataclass(frozen=True, slots=True)
class TargetPattern:
    text: str
    network: _Network | None = None
    name: re.Pattern[str] | None = None  # None with no network: any host
    low: int = 1
    high: int = 65535
    unix: str | None = None

    def matches(self, target: Target) -> bool:
        if target.unix is not None:
            return self.unix is not None and fnmatch.fnmatchcase(target.unix, self.unix)
        if self.unix is not None:
            return False
        host, port = _host_port(target)
        if host is None or not self.low <= port <= self.high:
            return False
        if self.network is not None:
            try:
                address = ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                return False
            return address.version == self.network.version and address in self.network
        if self.name is None:
            return True
        return self.name.fullmatch(host.lower().removesuffix(".")) is not None

    def __str__(self) -> str:
        return self.text


def parse_pattern(text: str) -> TargetPattern:
    """One pattern; ``ValueError`` says what is wrong and what is valid."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string such as {_EXAMPLES}")
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise ValueError(f"{text!r}: a unix: pattern needs an absolute path glob")
        return TargetPattern(text, unix=text[5:])
    if text.startswith("["):
        host, sep, ports = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPv6 address or network]:PORTS")
    else:
        host, sep, ports = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: no port; write HOST:PORTS, e.g. {_EXAMPLES}")
    low, high = _ports(text, ports)
    if host == "*":
        return TargetPattern(text, low=low, high=high)
    if "/" in host or _is_ip(host):
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address or network") from None
        return TargetPattern(text, network=network, low=low, high=high)
    if not _NAME.fullmatch(host):
        raise ValueError(
            f"{text!r}: {host!r} is not a host name pattern (letters, digits, '-', '.', '*')"
        )
    labels = host.lower().removesuffix(".").split(".")
    regex = r"\.".join(re.escape(label).replace(r"\*", "[^.]*") for label in labels)
    return TargetPattern(text, name=re.compile(regex), low=low, high=high)


def parse_patterns(value: object) -> tuple[TargetPattern, ...]:
    """An array of patterns (or one string of them separated by commas)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"expected a non-empty array of patterns such as {_EXAMPLES}")
    return tuple(parse_pattern(item) for item in value)


def allowed(patterns: Sequence[TargetPattern] | None, target: Target) -> bool:
    """Whether ``target`` may be reached; None (the default) allows any."""
    return patterns is None or any(p.matches(target) for p in patterns)


def target_from(value: object) -> Target:
    """A target from a source's answer: ``{"host": ..., "port": ...}``,
    ``{"target": ...}``, or the text ``host:port`` or ``ws(s)://...``
    (``ValueError`` if it is none of them)."""
    if isinstance(value, dict):
        if "target" in value:
            return target_from(value["target"])
        host, port = value.get("host"), value.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if not isinstance(host, str) or not host or isinstance(port, bool):
            raise ValueError('expected {"host": "...", "port": N} or {"target": "host:port"}')
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError("port must be a number from 1 to 65535")
        return Target(host.strip("[]"), port)
    if not isinstance(value, str):
        raise ValueError('expected {"host": "...", "port": N}, {"target": ...} or "host:port"')
    text = value.strip()
    if text.lower().startswith(("ws://", "wss://")):
        return Target(url=text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text[:80]!r} is not host:port")
    if any(c.isspace() or c in "/@?#[]" for c in host) or (":" in host and not _is_ip(host)):
        raise ValueError(f"{text[:80]!r}: {host[:60]!r} is not a host name or IP address")
    return Target(host, int(port))


def _ports(text: str, ports: str) -> tuple[int, int]:
    if ports == "*":
        return 1, 65535
    low, dash, high = ports.partition("-")
    try:
        first, last = int(low), int(high if dash else low)
    except ValueError:
        raise ValueError(
            f"{text!r}: {ports!r} is not a port, a range like 5900-5999, or *"
        ) from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{text!r}: ports must be 1 to 65535, low to high")
    return first, last


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(target: Target) -> tuple[str | None, int]:
    if target.url is None:
        return target.host or None, target.port
    try:
        parts = urlsplit(target.url)
        port = parts.port or (443 if parts.scheme.lower() == "wss" else 80)
    except ValueError:
        return None, 0
    return parts.hostname, port


__all__ = ["TargetPattern", "allowed", "parse_pattern", "parse_patterns", "target_from"]
