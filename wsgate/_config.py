"""Frozen configuration values, validated once, with errors a user can act on.

The command line and the TOML file both end up here: ``SETTINGS`` describes
every per-route setting once (its CLI option, TOML key, default, parser and
documentation), so the two front ends and the README's reference cannot
disagree.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from wsgate import _deflate, _plugins, _targets
from wsgate._deflate import DeflatePolicy
from wsgate._plugins import PluginSpec

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Seconds a client has to send its request head, before it is routed.
DEFAULT_REQUEST_TIMEOUT = 30.0
#: TLS 1.2 suites of TLS listeners: Mozilla's "intermediate" profile (ECDHE
#: or DHE with AES-GCM or ChaCha20-Poly1305; no CBC, no SHA-1 MAC, no RSA key
#: exchange). TLS 1.3 suites are all AEAD and stay OpenSSL's.
DEFAULT_TLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
#: Autobahn treats 0 as "no limit" but then inflates compressed frames with
#: no bound at all, and its zlib errors escape unhandled; a huge finite
#: limit keeps both guards in place for "max_message_size = 0".
_UNLIMITED = 2**62


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and what is valid."""


# -- backends ------------------------------------------------------------------


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

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class StreamBackend:
    """A raw stream backend (VNC, websockify style): a Twisted client endpoint string."""

    endpoint: str
    secure = False

    @property
    def url(self) -> str:
        return self.endpoint

    def resource_for(self, request_path: str, request_query: str) -> str:
        return ""  # a stream has no request

    def __str__(self) -> str:
        return self.endpoint


AnyBackend = Backend | StreamBackend

#: Client endpoint types that make a stream backend.
_STREAM_SCHEMES = ("tcp", "unix", "tls")


def parse_backend(url: str, where: str = "--backend") -> AnyBackend:
    """Parse and check a ``ws://`` or ``wss://`` URL, or a stream endpoint string."""
    if not isinstance(url, str):
        raise ConfigError(f"{where}: expected a ws:// or wss:// URL string, not {_kind(url)}")
    if url.split(":", 1)[0].lower() in _STREAM_SCHEMES:
        return _parse_stream_backend(url, where)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{where}: {url!r} is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ConfigError(
            f"{where}: {url!r} must start with ws:// or wss:// (for example "
            "ws://127.0.0.1:9000), or be a stream endpoint such as tcp:127.0.0.1:5901"
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


def _parse_stream_backend(description: str, where: str) -> StreamBackend:
    from twisted.internet.endpoints import clientFromString

    from wsgate._parseonly import PARSE_ONLY_REACTOR

    try:
        clientFromString(PARSE_ONLY_REACTOR, description)
    except Exception as e:  # endpoint parsers raise ValueError, KeyError, TypeError, ...
        raise ConfigError(
            f"{where}: {description!r}: {e or type(e).__name__} (expected a Twisted client "
            "endpoint such as tcp:127.0.0.1:5901, unix:/run/vnc.sock or tls:vnc.internal:5901)"
        ) from None
    return StreamBackend(description)


# -- value parsers: (raw value, where) -> value; raise ConfigError ----------------

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return names.get(type(value), type(value).__name__)


def parse_size(text: Any, where: str) -> int:
    """Bytes from ``65536``, ``64K``, ``64MiB``, ``1G``; 0 means no limit."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{where}: {text} must not be negative (0 means no limit)")
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise ConfigError(
            f"{where}: {text!r} is not a size; give bytes or a number with K, M or G "
            '("64M"), or 0 for no limit'
        )
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "")[:1].lower()]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number of seconds, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number of seconds") from None


def parse_seconds(value: Any, where: str) -> float:
    seconds = _number(value, where)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{where}: {value!r} must be a positive number of seconds")
    return seconds


def parse_seconds_or_zero(value: Any, where: str) -> float:
    seconds = _number(value, where)
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{where}: {value!r} must be 0 (off) or a positive number of seconds")
    return seconds


def parse_deflate(value: Any, where: str) -> DeflatePolicy:
    if isinstance(value, bool):
        value = "on" if value else "off"
    if not isinstance(value, str):
        raise ConfigError(f'{where}: expected "on", "off" or "on,KEY=VALUE,..."')
    try:
        return _deflate.parse_policy(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise ConfigError(f"{where}: expected true or false, not {value!r}")


def parse_limit(value: Any, where: str) -> int:
    """A connection limit: a whole number, 0 for none."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: expected a whole number (0 = no limit)")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a whole number (0 = no limit)") from None
    if number < 0:
        raise ConfigError(f"{where}: {value!r} must be 0 (no limit) or more")
    return number


def parse_log_format(value: Any, where: str) -> str:
    if value not in ("text", "json"):
        raise ConfigError(f'{where}: {value!r} is not a log format; valid: "text", "json"')
    return str(value)


def parse_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: expected a whole number of at least 1")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a whole number") from None
    if number < 1:
        raise ConfigError(f"{where}: {value!r} must be at least 1")
    return number


def parse_workers(value: Any, where: str) -> int:
    """Worker processes: a whole number of at least 1, or "auto" (one per CPU
    this process may run on)."""
    valid = 'valid: a whole number of at least 1, or "auto" (the CPUs this process may use)'
    if value == "auto":
        return len(os.sched_getaffinity(0))
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: {value!r} is not a number of workers; {valid}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a number of workers; {valid}") from None
    if number < 1:
        raise ConfigError(f"{where}: {value!r} is not a number of workers; {valid}")
    return number


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected an array of strings, not {_kind(value)}")
    return value


_ORIGIN = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.\-]*)://(?P<host>[^/?#\s:]+)(:(?P<port>\d+|\*))?$")


def parse_origins(value: Any, where: str) -> tuple[str, ...]:
    """Origin patterns: ``*``, ``null``, or ``scheme://host[:port]`` where the
    host may start with ``*.`` and the port may be ``*``."""
    out = []
    for item in _string_list(value, where):
        pattern = item.strip().lower().rstrip("/")
        if pattern in ("*", "null"):
            out.append(pattern)
            continue
        match = _ORIGIN.match(pattern)
        host = match.group("host") if match else ""
        if not match or ("*" in host and not (host.startswith("*.") and "*" not in host[2:])):
            raise ConfigError(
                f'{where}: {item!r} is not an origin pattern; give "*", "null" or '
                'scheme://host[:port] such as "https://app.example.com", '
                '"https://*.example.com" or "http://localhost:*"'
            )
        out.append(pattern)
    return tuple(dict.fromkeys(out))


def parse_subprotocols(value: Any, where: str) -> tuple[str, ...]:
    names = _string_list(value, where)
    for name in names:
        if not _TOKEN.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid subprotocol name (an HTTP token)")
    return tuple(dict.fromkeys(names))


#: Headers a route may not add or remove: the handshake's own, and the
#: forwarding headers wsgate writes itself.
_PROTECTED_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "host",
        "content-length",
        "transfer-encoding",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


def _header_name(name: str, where: str) -> str:
    if not _TOKEN.match(name):
        raise ConfigError(f"{where}: {name!r} is not a valid header name")
    if name.lower() in _PROTECTED_HEADERS:
        raise ConfigError(
            f"{where}: {name!r} belongs to the WebSocket handshake and cannot be changed"
        )
    return name.lower()


def parse_add_headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: expected a table of header names to values, not {_kind(value)}"
        )
    out = []
    for name, header_value in value.items():
        key = _header_name(name, where)
        if not isinstance(header_value, str) or any(c in header_value for c in "\r\n\0"):
            raise ConfigError(f"{where}: {name}: expected a one-line string value")
        out.append((key, header_value))
    return tuple(out)


def parse_remove_headers(value: Any, where: str) -> frozenset[str]:
    return frozenset(_header_name(name, where) for name in _string_list(value, where))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: Any, where: str) -> tuple[Network, ...]:
    """Addresses and CIDR networks: an array, or one string of them separated by commas."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    networks = []
    for text in _string_list(value, where):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{where}: {text!r} is not an IP address or network "
                '(e.g. "10.0.0.0/8", "192.0.2.1" or "::1")'
            ) from None
    return tuple(networks)


def parse_tls_ciphers(value: Any, where: str) -> str:
    """An OpenSSL cipher string that names at least one TLS 1.2 suite."""
    from OpenSSL import SSL

    if isinstance(value, str) and value.isascii() and value.strip():
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(value.encode("ascii"))
        except SSL.Error:
            pass
        else:
            return value
    raise ConfigError(
        f"{where}: {value!r} names no TLS 1.2 cipher suite OpenSSL knows; expected an "
        'OpenSSL cipher string, e.g. "ECDHE+AESGCM:ECDHE+CHACHA20"'
    )


def parse_balance(value: Any, where: str) -> str:
    if value not in ("round-robin", "least-connections"):
        raise ConfigError(
            f'{where}: {value!r} is not a balance method; valid: "round-robin", "least-connections"'
        )
    return str(value)


def parse_ca_file(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected the path of a PEM file")
    load_ca_file(value, where)
    return value


def load_ca_file(path: str, where: str = "--backend-ca") -> Any:
    """A trust root made of every certificate in a PEM file (checked here, at
    load time, and used by the wss:// legs' TLS)."""
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path!r}: {e.strerror}") from None
    blocks = [
        b"-----BEGIN CERTIFICATE-----"
        + chunk.split(b"-----END CERTIFICATE-----")[0]
        + b"-----END CERTIFICATE-----\n"
        for chunk in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    if not blocks:
        raise ConfigError(f"{where}: {path!r} holds no PEM certificate")
    try:
        certs = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ConfigError(f"{where}: {path!r} has a certificate that cannot be read: {e}") from None
    return ssl.trustRootFromCertificates(certs)


def parse_auth(value: Any, where: str, config_dir: str | None = None) -> tuple[PluginSpec, ...]:
    """Authenticator tables (``[{ plugin = "basic", htpasswd = "users" }]``),
    each loaded and checked; on the command line, ``NAME:key=value,...``."""
    if isinstance(value, dict | str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ConfigError(f'{where}: expected an array of tables such as [{{ plugin = "basic" }}]')
    specs = []
    for n, item in enumerate(value):
        try:
            specs.append(_plugins.parse("auth", item, f"{where}[{n}]", config_dir))
        except _plugins.PluginError as e:
            raise ConfigError(str(e)) from None
    return tuple(specs)


def parse_tokens(value: Any, where: str, config_dir: str | None = None) -> PluginSpec:
    """A token source table (``{ source = "jwt", key_file = "pub.pem" }``)."""
    try:
        return _plugins.parse("tokens", value, where, config_dir)
    except _plugins.PluginError as e:
        raise ConfigError(str(e)) from None


def parse_token_targets(value: Any, where: str) -> tuple[_targets.TargetPattern, ...] | None:
    if isinstance(value, tuple):
        return value
    if value == ["*"] or value == "*":
        return None
    try:
        return _targets.parse_patterns(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_header_or_empty(value: Any, where: str) -> str:
    if value == "":
        return ""
    if not isinstance(value, str):
        raise ConfigError(f'{where}: expected a header name such as "X-Forwarded-User", or ""')
    return _header_name(value, where)


# -- per-route settings ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What a route may tune; ``[defaults]`` and the command line set them for all."""

    client_deflate: DeflatePolicy = field(default_factory=DeflatePolicy)
    #: Off: wsgate compresses for clients, where bandwidth matters, and
    #: spares the application servers (compression offload, like TLS offload).
    backend_deflate: DeflatePolicy = _deflate.OFF
    max_message_size: int = DEFAULT_MAX_MESSAGE
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    idle_timeout: float = 0.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    drain_timeout: float = 30.0
    origins: tuple[str, ...] = ("*",)
    subprotocols: tuple[str, ...] | None = None
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: frozenset[str] = frozenset()
    backend_ca: str | None = None
    backend_insecure: bool = False
    balance: str = "round-robin"
    max_fails: int = 1
    fail_timeout: float = 10.0
    auth: tuple[PluginSpec, ...] = ()
    auth_timeout: float = 10.0
    token_timeout: float = 10.0
    token_targets: tuple[_targets.TargetPattern, ...] | None = None  # None: any
    forward_user_header: str = "x-forwarded-user"

    @property
    def autobahn_message_limit(self) -> int:
        return self.max_message_size or _UNLIMITED


@dataclass(frozen=True, slots=True)
class Setting:
    """One per-route setting: its names, its parser and its documentation."""

    key: str
    parse: Callable[[Any, str], Any]
    default: str  # as written in TOML, for the reference
    doc: str
    cli: bool = False  # also a --option on the command line
    example: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "client_deflate",
        parse_deflate,
        '"on"',
        'permessage-deflate on the client leg: "on", "off" or '
        '"on,window_bits=9..15,mem_level=1..9,level=1..9,threshold=BYTES,no_context_takeover" '
        "(window_bits 12, mem_level 5, level 1 and threshold 128 unless given). Messages "
        "shorter than the threshold, and those whose start does not compress, "
        "go out uncompressed.",
        cli=True,
        example='"on,window_bits=15,mem_level=8"',
    ),
    Setting(
        "backend_deflate",
        parse_deflate,
        '"off"',
        "permessage-deflate on the backend leg (same values); off by default: wsgate "
        "compresses for clients and spares the backends (compression offload).",
        cli=True,
        example='"on"',
    ),
    Setting(
        "max_message_size",
        parse_size,
        '"64M"',
        "Largest message, counted after decompression; a bigger one closes its leg "
        "with 1009. Bytes, or a number with K, M or G; 0 = no limit.",
        cli=True,
        example='"1M"',
    ),
    Setting(
        "connect_timeout",
        parse_seconds,
        "10",
        "Seconds to open the TCP (and TLS) connection to a backend.",
        cli=True,
    ),
    Setting(
        "handshake_timeout",
        parse_seconds,
        "10",
        "Seconds for a backend's WebSocket handshake.",
        cli=True,
    ),
    Setting(
        "idle_timeout",
        parse_seconds_or_zero,
        "0",
        "Close both legs with 1001 after this many seconds without a message or "
        "ping in either direction; 0 = never.",
        cli=True,
        example="3600",
    ),
    Setting(
        "ping_interval",
        parse_seconds_or_zero,
        "20",
        "Seconds without a frame from a peer after which wsgate pings it, on each "
        "WebSocket leg on its own (keeps quiet connections alive through proxies' "
        "idle timeouts); 0 = never ping.",
        cli=True,
        example="30",
    ),
    Setting(
        "ping_timeout",
        parse_seconds_or_zero,
        "20",
        "Seconds a peer has to answer wsgate's ping; a silent peer's connection is "
        "dropped and the other leg gets 1011 (backend gone) or 1001 (client gone). "
        "0 = ping but never give up.",
        cli=True,
    ),
    Setting(
        "close_timeout",
        parse_seconds,
        "5",
        "Seconds a closing handshake may take before the TCP connection is dropped.",
        cli=True,
    ),
    Setting(
        "drain_timeout",
        parse_seconds_or_zero,
        "30",
        "On SIGTERM (SIGINT under twistd -n), seconds an open connection has to close "
        "after its 1001 before it is dropped; wsgate exits when none is left.",
        cli=True,
    ),
    Setting(
        "origins",
        parse_origins,
        '["*"]',
        "Origins allowed to connect (browsers send one; clients that send none are "
        'allowed): "*", "null", or scheme://host[:port] with an optional "*." '
        'host prefix and "*" port. Others get 403.',
        example='["https://app.example.com", "https://*.example.com"]',
    ),
    Setting(
        "subprotocols",
        parse_subprotocols,
        "(any)",
        "Subprotocols the client may offer to the backend; others are not passed on, "
        "and a client that offers only others gets 400.",
        example='["graphql-transport-ws"]',
    ),
    Setting(
        "add_headers",
        parse_add_headers,
        "{}",
        "Headers set on the backend's handshake request (replacing the client's).",
        example='{ X-Route = "app" }',
    ),
    Setting(
        "remove_headers",
        parse_remove_headers,
        "[]",
        "Client request headers not passed to the backend.",
        example='["Cookie"]',
    ),
    Setting(
        "backend_ca",
        parse_ca_file,
        "(the system's CAs)",
        "PEM file of CAs trusted for wss:// backends; the name is always checked.",
        cli=True,
        example='"/etc/wsgate/internal-ca.pem"',
    ),
    Setting(
        "backend_insecure",
        parse_bool,
        "false",
        "Do not verify wss:// backends' certificates (testing only).",
        cli=True,
    ),
    Setting(
        "balance",
        parse_balance,
        '"round-robin"',
        'How a route with several backends picks one: "round-robin" or "least-connections".',
        example='"least-connections"',
    ),
    Setting(
        "max_fails",
        parse_count,
        "1",
        "Failed connects in a row (refused, timed out, TLS, no handshake) after which "
        "a backend rests.",
    ),
    Setting(
        "fail_timeout",
        parse_seconds_or_zero,
        "10",
        "Seconds a failed backend rests before it is tried again; 0 = never rests.",
    ),
    Setting(
        "auth",
        parse_auth,
        "[]",
        "Authenticators, all of which must pass before a backend is contacted: "
        "``basic`` (``htpasswd``, bcrypt), ``jwt-bearer``, ``client-cert``, ``origin``, or "
        'a plugin of your own by ``"module:Class"``; the table\'s other keys are its '
        "options. See Tokens and authentication. CLI (repeatable): ``--auth "
        "basic:htpasswd=users.htpasswd``.",
        example='[{ plugin = "basic", htpasswd = "users.htpasswd" }]',
    ),
    Setting(
        "auth_timeout",
        parse_seconds,
        "10",
        "Seconds an authenticator may take; then the client gets 503.",
        cli=True,
    ),
    Setting(
        "token_timeout",
        parse_seconds,
        "10",
        "Seconds a token source may take; then the client gets 503.",
        cli=True,
    ),
    Setting(
        "token_targets",
        parse_token_targets,
        '["*"]',
        "Targets a token source may name (others get 403): ``HOST:PORTS`` with HOST an "
        "address, a network, a name with ``*`` for one label's characters, or ``*``; "
        "PORTS a port, ``5900-5999`` or ``*``; ``unix:/path/glob``. Networks match IP "
        "addresses only, not names.",
        cli=True,
        example='["10.0.0.0/8:5900-5999", "vnc-*.internal:5901"]',
    ),
    Setting(
        "forward_user_header",
        parse_header_or_empty,
        '"X-Forwarded-User"',
        "Header that carries the authenticated user's name to the backend (a client's "
        'own header of that name is always dropped); "" = not sent.',
        cli=True,
    ),
)
SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}
assert set(SETTINGS_BY_KEY) == {f.name for f in fields(RouteSettings)}


def apply_settings(
    base: RouteSettings, raw: Mapping[str, Any], where: Callable[[str], str]
) -> tuple[RouteSettings, list[str]]:
    """``base`` with the settings in ``raw`` (TOML values or CLI strings) applied.

    Returns the errors instead of raising, so a file's mistakes are all
    reported at once.
    """
    changes: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        try:
            changes[key] = SETTINGS_BY_KEY[key].parse(value, where(key))
        except ConfigError as e:
            errors.append(str(e))
    return replace(base, **changes), errors


# -- routes, listeners, the whole ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Where connections for some hosts and a path prefix go."""

    name: str  # for logs and errors: "route #2 (/app)"
    prefix: str = "/"
    hosts: tuple[str, ...] = ()  # () = any host
    backends: tuple[AnyBackend, ...] = ()
    token_file: str | None = None  # targets from a websockify token file, by ?token=
    tokens: PluginSpec | None = None  # targets from a token source, by ?token=
    rewrite: str | None = None  # replaces the matched prefix; None = path kept
    listeners: tuple[str, ...] | None = None  # listener names; None = all
    settings: RouteSettings = field(default_factory=RouteSettings)


@dataclass(frozen=True, slots=True)
class CertificateFile:
    cert: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Listener:
    endpoint: str
    name: str
    certificates: tuple[CertificateFile, ...] = ()
    health: str | None = None
    health_fail_when_degraded: bool = False  # 503, not 200, when a route has no usable backend
    redirect: str | None = None
    web: str | None = None  # a directory served to plain HTTP requests
    web_index: str | None = None  # the file "/" (and directories) serve
    web_follow_symlinks: bool = False  # serve files whose real path is outside ``web``
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Peers whose X-Forwarded-*/Forwarded headers are kept (and appended to).
    trust_forwarded_from: tuple[Network, ...] = ()
    tls_ciphers: str = DEFAULT_TLS_CIPHERS  # OpenSSL cipher string, TLS 1.2
    client_ca: str | None = None  # mutual TLS: CAs of accepted client certificates


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``twistd wsgate`` was told, from the command line or a file."""

    listeners: tuple[Listener, ...]
    routes: tuple[Route, ...]
    source: str | None = None  # the TOML file, for reloads
    #: WebSocket connections open at once, whole process / per client
    #: address (after PROXY protocol); 0 = no limit.
    max_connections: int = 0
    max_connections_per_ip: int = 0
    #: "text" (twistd's lines) or "json" (one object per event); read at start.
    log_format: str = "text"
    #: Where GET /metrics is served (a Twisted server endpoint); None: nowhere.
    metrics: str | None = None
    #: Worker processes (1: this process serves, no supervisor); read at start.
    workers: int = 1

    def routes_for(self, listener: Listener) -> tuple[Route, ...]:
        if listener.redirect is not None:
            return ()
        return tuple(r for r in self.routes if r.listeners is None or listener.name in r.listeners)


__all__ = [
    "SETTINGS",
    "AnyBackend",
    "Backend",
    "CertificateFile",
    "Config",
    "ConfigError",
    "Listener",
    "Route",
    "RouteSettings",
    "StreamBackend",
    "parse_backend",
    "parse_workers",
]
