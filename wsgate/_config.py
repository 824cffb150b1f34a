"""Frozen configuration values, validated once, with errors a user can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wsgate._deflate import DeflatePolicy

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Autobahn treats 0 as "no limit" but then inflates compressed frames with
#: no bound at all, and its zlib errors escape unhandled; a huge finite
#: limit keeps both guards in place for "--max-message-size 0".
_UNLIMITED = 2**62


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and what is valid."""


@dataclass(frozen=True, slots=True)
class Backend:
    """A WebSocket backend: where to connect and the path prefix to put first."""

    url: str
    secure: bool
    host: str
    port: int
    path: str
    query: str

    def resource_for(self, request_path: str, request_query: str) -> str:
        """The backend's request target: its path, then the client's path and query."""
        path = self.path.rstrip("/") + (
            request_path if request_path.startswith("/") else "/" + request_path
        )
        query = "&".join(q for q in (self.query, request_query) if q)
        return f"{path}?{query}" if query else path

    @property
    def display(self) -> str:
        return self.url


def parse_backend(url: str, where: str = "--backend") -> Backend:
    """Parse and check a ``ws://`` or ``wss://`` backend URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{where}: {url!r} is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ConfigError(
            f"{where}: {url!r} must start with ws:// or wss:// (for example ws://127.0.0.1:9000)"
        )
    host = parts.hostname
    if not host:
        raise ConfigError(f"{where}: {url!r} has no host (for example ws://127.0.0.1:9000)")
    if parts.fragment:
        raise ConfigError(f"{where}: {url!r}: a WebSocket URL cannot have a #fragment")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: {url!r}: credentials in the URL are not supported")
    secure = scheme == "wss"
    return Backend(
        url=url,
        secure=secure,
        host=host,
        port=port if port is not None else (443 if secure else 80),
        path=parts.path or "/",
        query=parts.query,
    )


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str, where: str) -> int:
    """Bytes from ``65536``, ``64K``, ``64MiB``, ``1G``; 0 means no limit."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(
            f"{where}: {text!r} is not a size; give bytes or a number with K, M or G "
            "(64M), or 0 for no limit"
        )
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "")[:1].lower()]


def parse_seconds(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{where}: {text!r} must be a positive number of seconds")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``twistd wsgate`` was told."""

    listen: tuple[str, ...]
    backend: Backend
    client_deflate: DeflatePolicy = field(default_factory=DeflatePolicy)
    backend_deflate: DeflatePolicy = field(default_factory=DeflatePolicy)
    backend_ca: str | None = None
    backend_insecure: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0

    @property
    def autobahn_message_limit(self) -> int:
        return self.max_message_size or _UNLIMITED
