"""``twistd wsgate``: command-line options and the service they make."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wsgate import _deflate
from wsgate._config import (
    DEFAULT_MAX_MESSAGE,
    Config,
    ConfigError,
    parse_backend,
    parse_seconds,
    parse_size,
)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Terminates WebSocket from clients on each --listen endpoint and relays "
        "every message, frame by frame, to a WebSocket backend. Example:\n"
        "  twistd -n wsgate --listen tcp:8080 --backend ws://127.0.0.1:9000"
    )
    optFlags = [
        ["backend-insecure", None, "Do not verify a wss:// backend's certificate (testing only)."],
    ]
    optParameters = [
        [
            "backend",
            "b",
            None,
            "Backend URL, ws:// or wss://; the request's path and query are appended to its path.",
        ],
        [
            "client-deflate",
            None,
            "on",
            "permessage-deflate on the client leg: on, off, or "
            "on,window_bits=9..15,mem_level=1..9,no_context_takeover.",
        ],
        ["backend-deflate", None, "on", "permessage-deflate on the backend leg (same values)."],
        [
            "backend-ca",
            None,
            None,
            "PEM file of CAs trusted for wss:// backends "
            "(default: the system's). The name is always checked.",
        ],
        [
            "max-message-size",
            None,
            str(DEFAULT_MAX_MESSAGE),
            "Largest message in bytes (K, M, G "
            "suffixes); larger ones close the leg with 1009. 0 = no limit.",
        ],
        ["connect-timeout", None, "10", "Seconds to connect to the backend (then 504)."],
        [
            "handshake-timeout",
            None,
            "10",
            "Seconds for the backend's WebSocket handshake (then 504).",
        ],
        [
            "close-timeout",
            None,
            "5",
            "Seconds a closing handshake may take before the TCP connection is dropped.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Twisted server endpoint to listen on, repeatable (tcp:8080,
        ssl:8443:privateKey=key.pem:certKey=cert.pem, unix:/run/wsgate.sock,
        systemd:domain=INET:index=0, haproxy:tcp:8080). Default: tcp:8080."""
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            self["config"] = self._build()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _build(self) -> Config:
        if not self["backend"]:
            raise ConfigError("--backend is required (for example --backend ws://127.0.0.1:9000)")
        backend = parse_backend(self["backend"])
        listen = tuple(self["listen"]) or ("tcp:8080",)
        for description in listen:
            _check_endpoint(description)
        policies = {}
        for key in ("client-deflate", "backend-deflate"):
            try:
                policies[key] = _deflate.parse_policy(self[key])
            except ValueError as e:
                raise ConfigError(f"--{key}: {e}") from None
        if self["backend-ca"]:
            from wsgate._tls import load_ca_file

            load_ca_file(self["backend-ca"])
        return Config(
            listen=listen,
            backend=backend,
            client_deflate=policies["client-deflate"],
            backend_deflate=policies["backend-deflate"],
            backend_ca=self["backend-ca"],
            backend_insecure=bool(self["backend-insecure"]),
            max_message_size=parse_size(self["max-message-size"], "--max-message-size"),
            connect_timeout=parse_seconds(self["connect-timeout"], "--connect-timeout"),
            handshake_timeout=parse_seconds(self["handshake-timeout"], "--handshake-timeout"),
            close_timeout=parse_seconds(self["close-timeout"], "--close-timeout"),
        )


def _check_endpoint(description: str) -> None:
    """Parse (without binding) so a typo fails before anything listens."""
    from twisted.internet import endpoints
    from twisted.internet.testing import MemoryReactor

    try:
        endpoints.serverFromString(MemoryReactor(), description)
    except Exception as e:  # endpoint parsers raise ValueError, KeyError, OSError, SSL errors
        raise ConfigError(
            f"--listen {description!r}: {e or type(e).__name__} "
            "(expected a Twisted server endpoint such as tcp:8080 or "
            "ssl:8443:privateKey=key.pem:certKey=cert.pem)"
        ) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsgate._service import make_service

    service: Any = make_service(options["config"], reactor)
    return service  # type: ignore[no-any-return]
