"""``twistd wsgate``: command-line options and the service they make."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wsgate._config import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TLS_CIPHERS,
    SETTINGS,
    Config,
    ConfigError,
    Listener,
    Route,
    RouteSettings,
    apply_settings,
    parse_backend,
    parse_limit,
    parse_log_format,
    parse_networks,
    parse_seconds,
    parse_tls_ciphers,
    parse_tokens,
    parse_workers,
)


def _setting_options() -> list[list[Any]]:
    return [
        [s.option[2:], None, None, f"{s.doc} Default: {s.default}."]
        for s in SETTINGS
        if s.cli and s.key != "backend_insecure"
    ]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Terminates WebSocket from clients on each --listen endpoint and relays "
        "every message, frame by frame, to a WebSocket backend. Examples:\n"
        "  twistd -n wsgate --listen tcp:8080 --backend ws://127.0.0.1:9000\n"
        "  twistd -n wsgate --config etc/wsgate.toml"
    )
    optFlags = [
        ["backend-insecure", None, "Do not verify a wss:// backend's certificate (testing only)."],
        ["check", None, "With --config: check the file, print what is wrong, and exit."],
        [
            "web-follow-symlinks",
            None,
            "With --web: also serve files through symbolic links that lead outside the "
            "directory (refused with 404 by default).",
        ],
    ]
    optParameters = [
        [
            "config",
            "c",
            None,
            "TOML configuration file (listeners, routes, settings); "
            "cannot be combined with the other options. SIGHUP re-reads it.",
        ],
        [
            "backend",
            "b",
            None,
            "Backend for requests no --route matches: a ws:// or wss:// URL (the request's "
            "path and query are appended to its path), or a raw stream endpoint such as "
            "tcp:127.0.0.1:5901 (VNC, websockify style).",
        ],
        [
            "token-file",
            None,
            None,
            "websockify token file (token: host:port lines) or directory of them: clients "
            "pick a stream target with ?token=NAME or a last path segment /NAME. Re-read "
            "when it changes.",
        ],
        [
            "token-source",
            None,
            None,
            "A token source instead of --token-file: NAME:key=value,... with NAME file, jwt, "
            "http, redis, unix-dir or module:Class (e.g. jwt:key_file=pub.pem,audience=wsgate).",
        ],
        [
            "web",
            None,
            None,
            "Directory served to plain HTTP requests on the same port (e.g. noVNC's files).",
        ],
        ["web-index", None, None, "File a directory request serves (e.g. vnc.html)."],
        [
            "request-timeout",
            None,
            None,
            "Seconds a client has to send its request head, on every --listen. Default: 30.",
        ],
        [
            "trust-forwarded-from",
            None,
            None,
            "Addresses/networks (comma-separated, e.g. 10.0.0.0/8,::1) whose X-Forwarded-* "
            "and Forwarded headers are kept; from other peers they are dropped. Default: none.",
        ],
        [
            "tls-ciphers",
            None,
            None,
            "TLS 1.2 cipher suites of ssl: listeners (an OpenSSL cipher string). "
            "Default: Mozilla's intermediate profile (no CBC or SHA-1 suites).",
        ],
        [
            "max-connections",
            None,
            None,
            "WebSocket connections open at once in the whole process; more get 503 "
            "with Retry-After. Default: 0 (no limit).",
        ],
        [
            "max-connections-per-ip",
            None,
            None,
            "The same per client address (the real one behind haproxy: listeners). "
            "Default: 0 (no limit).",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics (GET /metrics) on this Twisted endpoint, e.g. "
            "tcp:9100:interface=127.0.0.1. Default: none.",
        ],
        [
            "log-format",
            None,
            None,
            'Log lines as "text" (twistd\'s) or "json" (one object per event). Default: text.',
        ],
        [
            "workers",
            None,
            None,
            'Worker processes, each serving every listener: a number, or "auto" (one per '
            "CPU this process may use). Default: 1 (this process serves, no supervisor).",
        ],
        *_setting_options(),
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["route"] = []
        self["auth"] = []
        #: The arguments as given, for worker processes to parse the same way.
        self.argv: list[str] = []

    def opt_auth(self, spec: str) -> None:
        self["auth"].append(spec)

    opt_auth.__doc__ = (
        "An authenticator every route's clients must pass, repeatable (all must pass): "
        "NAME:key=value,... with NAME basic, jwt-bearer, client-cert, origin or "
        "module:Class (e.g. basic:htpasswd=users.htpasswd)."
    )

    def opt_listen(self, description: str) -> None:
        """Twisted server endpoint to listen on, repeatable (tcp:8080,
        ssl:8443:privateKey=key.pem:certKey=cert.pem, unix:/run/wsgate.sock,
        systemd:domain=INET:index=0, haproxy:tcp:8080). Default: tcp:8080."""
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print wsgate's version and exit."""
        from wsgate import __version__

        print(f"wsgate {__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd, a mistake is printed alone with one hint, and twistd exits 1.

        (twistd itself prints its 60 lines of usage first and the error last.)
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise SystemExit(f"twistd wsgate: {e}\nsee: twistd wsgate --help") from None

    def opt_route(self, spec: str) -> None:
        self["route"].append(spec)

    # One line: usage.Options shows a docstring's continuation indents as they are.
    opt_route.__doc__ = (
        "PREFIX=BACKEND: requests whose path starts with PREFIX (whole segments) go to "
        "BACKEND (a ws:// or wss:// URL, path kept, or a stream endpoint such as "
        "tcp:127.0.0.1:5901); repeatable; the longest matching prefix wins."
    )

    def postOptions(self) -> None:
        try:
            if self["config"]:
                self["config"] = self._from_file()
            else:
                if self["check"]:
                    raise ConfigError("--check needs --config FILE")
                self["config"] = self._from_command_line()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["config"].log_format == "json" and self.parent is not None:
            # twistd makes its log observer from its own --logger option,
            # after the options and before the service.
            from wsgate import _jsonlog

            self.parent["logger"] = _jsonlog.for_twistd(
                self.parent.get("logfile"), bool(self.parent.get("nodaemon"))
            )
        if self["check"]:
            config = self["config"]
            print(
                f"{config.source}: OK ({len(config.listeners)} listener(s), "
                f"{len(config.routes)} route(s))"
            )
            sys.exit(0)

    def _from_file(self) -> Config:
        given = [
            "--" + name
            for name in (
                "backend",
                "token-file",
                "token-source",
                "web",
                "web-index",
                "web-follow-symlinks",
                "request-timeout",
                "trust-forwarded-from",
                "tls-ciphers",
                "max-connections",
                "max-connections-per-ip",
                "log-format",
                "metrics",
                "workers",
                *(s.option[2:] for s in SETTINGS if s.cli),
            )
            if self.get(name)
        ]
        given += ["--listen"] * bool(self["listen"]) + ["--route"] * bool(self["route"])
        given += ["--auth"] * bool(self["auth"])
        if given:
            raise ConfigError(
                f"--config cannot be combined with {', '.join(dict.fromkeys(given))}: "
                "put them in the file"
            )
        from wsgate._configfile import load_file

        return load_file(self["config"])

    def _from_command_line(self) -> Config:
        from wsgate._configfile import check, parse_metrics

        sources = self["backend"] or self["route"] or self["token-file"] or self["token-source"]
        if not (sources or self["web"]):
            raise ConfigError(
                "--backend, --route, --token-file, --token-source or --config is required "
                "(for example --backend ws://127.0.0.1:9000)"
            )
        raw = {
            s.key: self[s.option[2:]]
            for s in SETTINGS
            if s.cli and s.key != "backend_insecure" and self[s.option[2:]] is not None
        }
        if self["backend-insecure"]:
            raw["backend_insecure"] = True
        if self["auth"]:
            raw["auth"] = list(self["auth"])
        settings, errors = apply_settings(
            RouteSettings(), raw, lambda key: "--" + key.replace("_", "-")
        )
        if errors:
            raise ConfigError("\n".join(errors))
        routes = []
        for spec in self["route"]:
            prefix, sep, url = spec.partition("=")
            if not sep or not prefix.startswith("/"):
                raise ConfigError(
                    f"--route {spec!r}: expected PREFIX=URL, for example "
                    "--route /app=ws://127.0.0.1:9000"
                )
            routes.append(
                Route(
                    name=f"--route {prefix}",
                    prefix=prefix,
                    backends=(parse_backend(url, f"--route {prefix}"),),
                    settings=settings,
                )
            )
        if self["backend"]:
            routes.append(
                Route(
                    name="--backend", backends=(parse_backend(self["backend"]),), settings=settings
                )
            )
        if self["token-file"]:
            from wsgate._tokens import TokenFile

            path = os.path.abspath(self["token-file"])
            try:
                TokenFile(path)
            except ConfigError as e:
                raise ConfigError(f"--token-file: {e}") from None
            routes.append(Route(name="--token-file", token_file=path, settings=settings))
        if self["token-source"]:
            if self["token-file"]:
                raise ConfigError("give --token-file or --token-source, not both")
            tokens = parse_tokens(self["token-source"], "--token-source")
            routes.append(Route(name="--token-source", tokens=tokens, settings=settings))
        listen = self["listen"] or ["tcp:8080"]
        web = os.path.abspath(self["web"]) if self["web"] else None
        if self["web-follow-symlinks"] and web is None:
            raise ConfigError("--web-follow-symlinks needs --web DIRECTORY")
        request_timeout = DEFAULT_REQUEST_TIMEOUT
        if self["request-timeout"] is not None:
            request_timeout = parse_seconds(self["request-timeout"], "--request-timeout")
        trust = parse_networks(self["trust-forwarded-from"] or [], "--trust-forwarded-from")
        ciphers = DEFAULT_TLS_CIPHERS
        if self["tls-ciphers"] is not None:
            ciphers = parse_tls_ciphers(self["tls-ciphers"], "--tls-ciphers")
        config = Config(
            listeners=tuple(
                Listener(
                    endpoint=e,
                    name=e,
                    web=web,
                    web_index=self["web-index"],
                    web_follow_symlinks=bool(self["web-follow-symlinks"]),
                    request_timeout=request_timeout,
                    trust_forwarded_from=trust,
                    tls_ciphers=ciphers,
                )
                for e in listen
            ),
            routes=tuple(routes),
            max_connections=parse_limit(self["max-connections"] or 0, "--max-connections"),
            max_connections_per_ip=parse_limit(
                self["max-connections-per-ip"] or 0, "--max-connections-per-ip"
            ),
            log_format=parse_log_format(self["log-format"] or "text", "--log-format"),
            metrics=parse_metrics(self["metrics"], "--metrics") if self["metrics"] else None,
            workers=parse_workers(self["workers"], "--workers") if self["workers"] else 1,
        )
        problems = check(config, "command line")
        if problems:
            raise ConfigError("\n".join(problems))
        return config


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsgate import _daemon, _process, _speedups

    _daemon.watch()
    _daemon.stop_on_early_sigterm(reactor)
    config = options["config"]
    if config.workers > 1:
        from wsgate import _workers

        return _workers.build(config, options.argv, reactor)
    # Here, not in Gateway: the shortcuts change process-wide state (Autobahn's
    # module, the reactor's loop), which is the program's to decide; tests and
    # embedders that build a Gateway keep the plain path.
    _speedups.install(reactor)
    return _process.build(config, reactor)
