"""The TOML configuration file, and the checks every configuration gets.

Every mistake in a file is collected and reported at once, each line naming
the file, the table and the key, and saying what is valid; a file with any
mistake is refused as a whole (at start, and on reload).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wsgate import _routing
from wsgate._config import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TLS_CIPHERS,
    SETTINGS,
    SETTINGS_BY_KEY,
    CertificateFile,
    Config,
    ConfigError,
    Listener,
    Route,
    RouteSettings,
    apply_settings,
    parse_auth,
    parse_backend,
    parse_bool,
    parse_limit,
    parse_log_format,
    parse_networks,
    parse_seconds,
    parse_tls_ciphers,
    parse_tokens,
    parse_workers,
)

#: Top-level keys that are not tables: they apply to the whole process.
PROCESS_DOC: tuple[tuple[str, str, str], ...] = (
    (
        "max_connections",
        "0",
        "WebSocket connections open at once in the whole process; one more gets 503 "
        "with Retry-After before any backend is contacted. 0 = no limit. "
        "CLI: ``--max-connections``.",
    ),
    (
        "max_connections_per_ip",
        "0",
        "The same, per client address (the real one behind ``haproxy:`` listeners). "
        "0 = no limit. CLI: ``--max-connections-per-ip``.",
    ),
    (
        "metrics",
        "(none)",
        "Twisted server endpoint of a separate listener for Prometheus: ``GET /metrics``, "
        'e.g. ``"tcp:9100:interface=127.0.0.1"``. Read at start, not on reload. '
        "CLI: ``--metrics``.",
    ),
    (
        "log_format",
        '"text"',
        '``"text"`` (twistd\'s lines) or ``"json"`` (one JSON object per event and line; '
        "the connection open and close events carry their figures as fields). Read at "
        "start, not on reload. CLI: ``--log-format``.",
    ),
    (
        "workers",
        "1",
        "Worker processes, each serving every listener: a whole number, or "
        '``"auto"`` (one per CPU the process may run on). 1 = this process serves, '
        "no supervisor. Read at start, not on reload. CLI: ``--workers``.",
    ),
)
_TOP_KEYS = ("defaults", "listener", "route", *(key for key, _, _ in PROCESS_DOC))
_LISTENER_KEYS = (
    "endpoint",
    "name",
    "certificates",
    "health",
    "health_fail_when_degraded",
    "redirect",
    "web",
    "web_index",
    "web_follow_symlinks",
    "request_timeout",
    "trust_forwarded_from",
    "tls_ciphers",
    "client_ca",
)
_CERTIFICATE_KEYS = ("cert", "key")
_ROUTE_KEYS = (
    "prefix",
    "hosts",
    "backend",
    "backends",
    "token_file",
    "tokens",
    "strip_prefix",
    "rewrite",
    "listeners",
)
_SETTING_KEYS = tuple(s.key for s in SETTINGS)

#: The reference in the README is made from these (see ``reference_rst``).
LISTENER_DOC: tuple[tuple[str, str, str], ...] = (
    (
        "endpoint",
        "(required)",
        "Twisted server endpoint string: tcp:, ssl:, unix:, systemd:, haproxy:, ...",
    ),
    ("name", "the endpoint", "What routes' ``listeners`` call this listener."),
    (
        "certificates",
        "[]",
        "TLS on this listener, with the certificate picked by SNI: an array "
        'of ``{ cert = "a.pem", key = "a.key" }`` (``key`` may be left out when it is in the '
        "cert file). The first is the default. Use with a plain endpoint (tcp:, unix:, "
        "systemd:, haproxy:), not ssl:.",
    ),
    (
        "health",
        "(none)",
        'A path answered with a JSON status, e.g. ``"/healthz"``: each route\'s backends '
        'with their state; ``"status": "degraded"`` when some route has no backend that '
        "is not resting after failures.",
    ),
    (
        "health_fail_when_degraded",
        "false",
        "Answer the health path with 503 instead of 200 while degraded (for load "
        "balancers that take a listener out of rotation on a non-2xx answer).",
    ),
    (
        "redirect",
        "(none)",
        "Answer every other request with 308 to this URL plus the request's "
        "path and query; ``{host}`` is the request's host. Such a listener serves no routes.",
    ),
    (
        "web",
        "(none)",
        "A directory served to plain HTTP requests (not WebSocket upgrades) on this "
        "listener, e.g. noVNC's files; no directory listings, nothing outside it.",
    ),
    ("web_index", '"index.html"', 'The file a directory request serves, e.g. ``"vnc.html"``.'),
    (
        "web_follow_symlinks",
        "false",
        "Serve files through symbolic links that lead outside ``web``; by default "
        "such files are answered with 404.",
    ),
    (
        "request_timeout",
        "30",
        "Seconds a client has to send its whole request head (before it is routed); then "
        "the connection is closed. CLI: ``--request-timeout``.",
    ),
    (
        "trust_forwarded_from",
        "[]",
        "Addresses and networks (``10.0.0.0/8``) of proxies in front of wsgate: only from "
        "these peers are X-Forwarded-For, Forwarded, X-Forwarded-Proto and "
        "X-Forwarded-Host kept (wsgate appends its own); from any other peer they are "
        "dropped. Behind a ``haproxy:`` endpoint the peer is the PROXY header's address. "
        "CLI: ``--trust-forwarded-from``.",
    ),
    (
        "tls_ciphers",
        "(intermediate)",
        "TLS 1.2 cipher suites of a TLS listener (``certificates``, or an ``ssl:`` "
        "endpoint), as an OpenSSL cipher string. The default is Mozilla's "
        '"intermediate" profile: ECDHE/DHE with AES-GCM or ChaCha20-Poly1305, no CBC or '
        "SHA-1 suites. TLS 1.3 suites are OpenSSL's. Twisted's ``tls:`` endpoint keeps "
        "Twisted's own list. A reload applies a change to ``certificates`` listeners; an "
        "``ssl:`` endpoint takes it at restart. CLI: ``--tls-ciphers``.",
    ),
    (
        "client_ca",
        "(none)",
        "Mutual TLS on a ``certificates`` listener: a PEM file of the CAs whose client "
        "certificates are accepted. Clients are asked for one; a route's ``client-cert`` "
        "authenticator decides who may pass (one without a certificate gets 403).",
    ),
)
ROUTE_DOC: tuple[tuple[str, str, str], ...] = (
    (
        "prefix",
        '"/"',
        "Path prefix, matched whole segments (``/app`` matches ``/app`` and "
        "``/app/x``, not ``/apple``); the longest matching prefix wins.",
    ),
    (
        "hosts",
        "(any)",
        "Host names this route serves: exact (``app.example.com``) or "
        "``*.example.com`` (any subdomain). On equal prefixes an exact host beats a wildcard, "
        "which beats a route with no ``hosts``.",
    ),
    (
        "backend",
        "",
        "One backend: a ws:// or wss:// URL (the request's path, after ``rewrite``, and "
        "query are appended to the URL's path), or a raw stream endpoint "
        "(``tcp:127.0.0.1:5901``, ``unix:/path``, ``tls:host:port``) for VNC and the like: "
        "binary messages become bytes and bytes binary messages, websockify style.",
    ),
    (
        "backends",
        "",
        "Several backend URLs (instead of ``backend``); see ``balance``. A "
        "backend that cannot be reached is skipped before the client is answered.",
    ),
    (
        "token_file",
        "(none)",
        "Instead of backends: a websockify token file (``token: host:port`` lines) or a "
        "directory of them; the client names its target with ``?token=`` or the path "
        "segment after the prefix. Re-read when it changes; an unknown token is a 404.",
    ),
    (
        "tokens",
        "(none)",
        "Instead of backends: a token source that names the target of the client's "
        '``?token=`` (or last path segment): ``{ source = "file" | "jwt" | "http" | '
        '"redis" | "unix-dir" | "module:Class", ... }``, its options beside ``source``. '
        "Targets are checked against ``token_targets``. See Tokens and authentication. "
        "CLI: ``--token-source jwt:key_file=pub.pem``.",
    ),
    (
        "strip_prefix",
        "false",
        'Remove the matched prefix from the path passed on (same as ``rewrite = "/"``).',
    ),
    ("rewrite", "(none)", "Replace the matched prefix with this path."),
    ("listeners", "(all)", "Names of the listeners that serve this route."),
)


def load_file(path: str) -> Config:
    """Read and check a configuration file; raise ConfigError listing every mistake."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _FileReader(path).read(data)


class _FileReader:
    def __init__(self, path: str) -> None:
        self._path = path
        self._dir = os.path.dirname(os.path.abspath(path))
        self.errors: list[str] = []

    def _at(self, table: str, key: str | None = None) -> str:
        return f"{self._path}: {table}" + (f": {key}" if key else "")

    def _relative(self, value: str) -> str:
        """Paths in the file are relative to the file's own directory."""
        return value if os.path.isabs(value) else os.path.join(self._dir, value)

    def _check_keys(self, table: str, raw: Mapping[str, Any], valid: Sequence[str]) -> None:
        for key in raw:
            if key not in valid:
                self.errors.append(f"{self._at(table, key)}: {_unknown(key, valid)}")

    def _table_array(self, data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.errors.append(
                f"{self._path}: {key}: expected [[{key}]] tables, not {_kind(value)}"
            )
            return []
        return value

    def read(self, data: Mapping[str, Any]) -> Config:
        self._check_keys("top level", data, _TOP_KEYS)
        defaults = RouteSettings()
        raw_defaults = data.get("defaults", {})
        if not isinstance(raw_defaults, dict):
            self.errors.append(f"{self._path}: defaults: expected a [defaults] table")
        else:
            self._check_keys("[defaults]", raw_defaults, _SETTING_KEYS)
            defaults = self._settings(defaults, raw_defaults, "[defaults]")
        listeners = [
            self._listener(i, raw) for i, raw in enumerate(self._table_array(data, "listener"))
        ]
        routes = [
            self._route(i, raw, defaults) for i, raw in enumerate(self._table_array(data, "route"))
        ]
        if not listeners and not self.errors:
            self.errors.append(
                f'{self._path}: no [[listener]]: add one, e.g. [[listener]] endpoint = "tcp:8080"'
            )
        limits: dict[str, Any] = {}
        for key, parse in (
            ("max_connections", parse_limit),
            ("max_connections_per_ip", parse_limit),
            ("log_format", parse_log_format),
            ("metrics", parse_metrics),
            ("workers", parse_workers),
        ):
            if key in data:
                value = self._parsed("top level", data, key, parse, None)
                if value is not None:
                    limits[key] = value
        config = Config(
            listeners=tuple(x for x in listeners if x is not None),
            routes=tuple(r for r in routes if r is not None),
            source=self._path,
            **limits,
        )
        if not self.errors:
            self.errors.extend(check(config, self._path))
        else:
            # Each listener's and route's own checks too (an endpoint that does
            # not parse, a missing certificate), so one run shows every mistake;
            # those between them wait for a file whose parts are all valid.
            for i, listener in enumerate(listeners):
                if listener is not None:
                    self.errors.extend(
                        _check_listener(listener, _listener_where(self._path, i, listener))
                    )
            for route in config.routes:
                self.errors.extend(_check_route(route, f"{self._path}: [[route]] {route.name}"))
        if self.errors:
            raise ConfigError("\n".join(self.errors))
        return config

    def _settings(self, base: RouteSettings, raw: Mapping[str, Any], table: str) -> RouteSettings:
        values = {k: v for k, v in raw.items() if k in SETTINGS_BY_KEY}
        if isinstance(values.get("backend_ca"), str):
            values["backend_ca"] = self._relative(values["backend_ca"])
        if "auth" in values:
            try:
                values["auth"] = parse_auth(values["auth"], self._at(table, "auth"), self._dir)
            except ConfigError as e:
                self.errors.append(str(e))
                del values["auth"]
        settings, errors = apply_settings(base, values, lambda key: self._at(table, key))
        self.errors.extend(errors)
        return settings

    def _string(self, table: str, raw: Mapping[str, Any], key: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.errors.append(f"{self._at(table, key)}: expected a string, not {_kind(value)}")
            return None
        return value

    def _parsed(
        self,
        table: str,
        raw: Mapping[str, Any],
        key: str,
        parse: Callable[[Any, str], Any],
        default: Any,
    ) -> Any:
        """``raw[key]`` through ``parse``; ``default`` when it is absent, or
        wrong (the mistake is collected with the others)."""
        if key not in raw:
            return default
        try:
            return parse(raw[key], self._at(table, key))
        except ConfigError as e:
            self.errors.append(str(e))
            return default

    def _flag(self, table: str, raw: Mapping[str, Any], key: str) -> bool:
        return bool(self._parsed(table, raw, key, parse_bool, False))

    def _listener(self, index: int, raw: Mapping[str, Any]) -> Listener | None:
        name = raw.get("name")
        table = f"[[listener]] #{index + 1}" + (f" ({name})" if isinstance(name, str) else "")
        before = len(self.errors)
        self._check_keys(table, raw, _LISTENER_KEYS)
        endpoint = self._string(table, raw, "endpoint")
        if endpoint is None and "endpoint" not in raw:
            self.errors.append(f'{self._at(table, "endpoint")}: required (e.g. "tcp:8080")')
        name = self._string(table, raw, "name") or endpoint or ""
        certificates = []
        raw_certs = raw.get("certificates", [])
        if not isinstance(raw_certs, list) or not all(isinstance(c, dict) for c in raw_certs):
            self.errors.append(
                f"{self._at(table, 'certificates')}: expected an array of "
                '{ cert = "file.pem", key = "file.key" } tables'
            )
            raw_certs = []
        for n, cert in enumerate(raw_certs):
            where = f"{table}: certificates[{n}]"
            self._check_keys(where, cert, _CERTIFICATE_KEYS)
            cert_file = self._string(where, cert, "cert")
            key_file = self._string(where, cert, "key")
            if cert_file is None:
                self.errors.append(f"{self._at(where, 'cert')}: required (a PEM file)")
                continue
            certificates.append(
                CertificateFile(
                    self._relative(cert_file), self._relative(key_file) if key_file else None
                )
            )
        health = self._string(table, raw, "health")
        redirect = self._string(table, raw, "redirect")
        web = self._string(table, raw, "web")
        if web is not None:
            web = self._relative(web)
        web_index = self._string(table, raw, "web_index")
        fail_when_degraded = self._flag(table, raw, "health_fail_when_degraded")
        follow_symlinks = self._flag(table, raw, "web_follow_symlinks")
        request_timeout = self._parsed(
            table, raw, "request_timeout", parse_seconds, DEFAULT_REQUEST_TIMEOUT
        )
        trust = self._parsed(table, raw, "trust_forwarded_from", parse_networks, ())
        tls_ciphers = self._parsed(
            table, raw, "tls_ciphers", parse_tls_ciphers, DEFAULT_TLS_CIPHERS
        )
        client_ca = self._string(table, raw, "client_ca")
        if client_ca is not None:
            client_ca = self._relative(client_ca)
            if not raw.get("certificates"):
                self.errors.append(
                    f"{self._at(table, 'client_ca')}: needs certificates = [...] (TLS by wsgate)"
                )
        if len(self.errors) > before or endpoint is None:
            return None
        return Listener(
            endpoint=endpoint,
            name=name,
            certificates=tuple(certificates),
            health=health,
            health_fail_when_degraded=fail_when_degraded,
            redirect=redirect,
            web=web,
            web_index=web_index,
            web_follow_symlinks=follow_symlinks,
            request_timeout=request_timeout,
            trust_forwarded_from=trust,
            tls_ciphers=tls_ciphers,
            client_ca=client_ca,
        )

    def _route(self, index: int, raw: Mapping[str, Any], defaults: RouteSettings) -> Route | None:
        prefix = raw.get("prefix", "/")
        table = f"[[route]] #{index + 1}" + (f" ({prefix})" if isinstance(prefix, str) else "")
        before = len(self.errors)
        self._check_keys(table, raw, _ROUTE_KEYS + _SETTING_KEYS)
        settings = self._settings(defaults, raw, table)
        if not isinstance(prefix, str):
            self.errors.append(f'{self._at(table, "prefix")}: expected a string such as "/app"')
            prefix = "/"
        hosts: tuple[str, ...] = ()
        if "hosts" in raw:
            value = raw["hosts"]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
                self.errors.append(f"{self._at(table, 'hosts')}: expected an array of host names")
            else:
                hosts = tuple(value)
                if not hosts:
                    self.errors.append(
                        f"{self._at(table, 'hosts')}: an empty list can never match; leave "
                        "the key out to serve any host"
                    )
        backends = []
        urls: list[Any] = []
        token_file = self._string(table, raw, "token_file")
        if token_file is not None:
            token_file = self._relative(token_file)
        tokens = None
        if sum(key in raw for key in ("backend", "backends", "token_file", "tokens")) > 1:
            self.errors.append(
                f"{self._at(table)}: give one of backend, backends, token_file or tokens, "
                "not several"
            )
        elif "tokens" in raw:
            try:
                tokens = parse_tokens(raw["tokens"], self._at(table, "tokens"), self._dir)
            except ConfigError as e:
                self.errors.append(str(e))
        elif "token_file" in raw:
            if token_file is not None:
                from wsgate._tokens import TokenFile

                try:
                    TokenFile(token_file)
                except ConfigError as e:
                    self.errors.append(f"{self._at(table, 'token_file')}: {e}")
        elif "backend" in raw:
            urls = [raw["backend"]]
        elif "backends" in raw:
            urls = raw["backends"] if isinstance(raw["backends"], list) else [None]
            if not urls:
                self.errors.append(f"{self._at(table, 'backends')}: needs at least one URL")
        else:
            self.errors.append(
                f'{self._at(table)}: no backend: add backend = "ws://127.0.0.1:9000" '
                '(or backends = [...], token_file = "..." or tokens = {...})'
            )
        for url in urls:
            try:
                backends.append(parse_backend(url, self._at(table, "backend")))
            except ConfigError as e:
                self.errors.append(str(e))
        if len(set(backends)) != len(backends):
            self.errors.append(f"{self._at(table, 'backends')}: a URL is listed twice")
        rewrite = self._string(table, raw, "rewrite")
        if "strip_prefix" in raw:
            try:
                strip = parse_bool(raw["strip_prefix"], self._at(table, "strip_prefix"))
            except ConfigError as e:
                self.errors.append(str(e))
                strip = False
            if strip and rewrite is not None:
                self.errors.append(f"{self._at(table)}: give strip_prefix or rewrite, not both")
            elif strip:
                rewrite = "/"
        listeners = None
        if "listeners" in raw:
            value = raw["listeners"]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.errors.append(
                    f"{self._at(table, 'listeners')}: expected an array of listener names"
                )
            else:
                listeners = tuple(value)
        if len(self.errors) > before:
            return None
        return Route(
            name=table.removeprefix("[[route]] "),
            prefix=prefix,
            hosts=hosts,
            backends=tuple(backends),
            token_file=token_file,
            tokens=tokens,
            rewrite=rewrite,
            listeners=listeners,
            settings=settings,
        )


def check(config: Config, source: str) -> list[str]:
    """Checks of the whole, for a file or the command line: each string one mistake."""
    errors: list[str] = []
    names: dict[str, int] = {}
    endpoints: set[str] = set()
    for i, listener in enumerate(config.listeners):
        where = (
            _listener_where(source, i, listener)
            if config.source
            else f"--listen {listener.endpoint!r}"
        )
        if listener.endpoint in endpoints:
            errors.append(f"{where}: endpoint {listener.endpoint!r} is given twice")
        endpoints.add(listener.endpoint)
        if listener.name in names:
            errors.append(
                f"{where}: name {listener.name!r} is already used by listener "
                f"#{names[listener.name] + 1}"
            )
        names[listener.name] = i
        errors.extend(_check_listener(listener, where))
    for route in config.routes:
        where = f"{source}: [[route]] {route.name}" if config.source else _cli_route(route)
        errors.extend(_check_route(route, where))
        for name in route.listeners or ():
            if name not in names:
                errors.append(
                    f"{where}: listeners: no listener is named {name!r}; "
                    f"listeners: {', '.join(repr(n) for n in names) or 'none'}"
                )
        serving = [x for x in config.listeners if route in config.routes_for(x)]
        named_exist = all(name in names for name in route.listeners or ())
        if not serving and config.listeners and named_exist:
            errors.append(f"{where}: can never match: every listener it names only redirects")
        for listener in serving:
            if listener.health is not None and route.prefix == listener.health:
                errors.append(
                    f"{where}: prefix {route.prefix!r} is the health path of listener "
                    f"{listener.name!r}"
                )
    if not errors:
        for listener in config.listeners:
            routes = config.routes_for(listener)
            for i, j in _routing.duplicate_routes(routes):
                first, second = routes[i], routes[j]
                where = (
                    f"{source}: [[route]] {second.name}" if config.source else _cli_route(second)
                )
                errors.append(
                    f"{where}: duplicate of {first.name}: same host and prefix "
                    f"{second.prefix!r}, so it can never match (on listener {listener.name!r})"
                )
            if not routes and not (listener.redirect or listener.health or listener.web):
                errors.append(
                    f"{source}: listener {listener.name!r} serves nothing: no route, "
                    "health path, web directory or redirect"
                )
    return list(dict.fromkeys(errors))


def _cli_route(route: Route) -> str:
    return route.name


def _listener_where(source: str, index: int, listener: Listener) -> str:
    """A listener as the file shows it: its number, and its name if it has one."""
    named = f" ({listener.name})" if listener.name != listener.endpoint else ""
    return f"{source}: [[listener]] #{index + 1}{named}"


def _check_route(route: Route, where: str) -> list[str]:
    errors = []
    problem = _routing.check_prefix(route.prefix)
    if problem:
        errors.append(f"{where}: prefix {route.prefix!r}: {problem}")
    if route.rewrite is not None and _routing.check_prefix(route.rewrite or "/"):
        errors.append(
            f"{where}: rewrite {route.rewrite!r}: {_routing.check_prefix(route.rewrite or '/')}"
        )
    for host in route.hosts:
        problem = _routing.check_host_pattern(host)
        if problem:
            errors.append(f"{where}: hosts: {host!r}: {problem}")
    return errors


def _check_listener(listener: Listener, where: str) -> list[str]:
    errors = []
    problem = check_endpoint(listener.endpoint)
    if problem:
        what = "" if where.startswith("--") else f" endpoint {listener.endpoint!r}:"
        errors.append(f"{where}:{what} {problem}")
    if listener.certificates:
        if listener.endpoint.split(":", 1)[0].lower() in ("ssl", "tls"):
            errors.append(
                f"{where}: certificates: the endpoint already does TLS; use tcp:PORT "
                "with certificates, or ssl: without them"
            )
        from wsgate._sni import TlsSetupError, load_sni_creator

        try:
            load_sni_creator(listener.certificates, listener.tls_ciphers, listener.client_ca)
        except TlsSetupError as e:
            errors.append(f"{where}: certificates: {e}")
    if listener.health is not None and _routing.check_prefix(listener.health):
        errors.append(
            f"{where}: health: {listener.health!r}: {_routing.check_prefix(listener.health)}"
        )
    if listener.web is not None and not os.path.isdir(listener.web):
        errors.append(f"{where}: web: {listener.web!r} is not a directory")
    if listener.web_follow_symlinks and listener.web is None:
        errors.append(f"{where}: web_follow_symlinks needs web = DIRECTORY")
    if listener.health_fail_when_degraded and listener.health is None:
        errors.append(f'{where}: health_fail_when_degraded needs health = PATH, e.g. "/healthz"')
    if listener.web_index is not None:
        if listener.web is None:
            errors.append(f"{where}: web_index needs web = DIRECTORY")
        elif "/" in listener.web_index or listener.web_index in ("", ".", ".."):
            errors.append(
                f'{where}: web_index: {listener.web_index!r} must be a file name, e.g. "vnc.html"'
            )
        elif os.path.isdir(listener.web) and not os.path.isfile(
            os.path.join(listener.web, listener.web_index)
        ):
            errors.append(f"{where}: web_index: no file {listener.web_index!r} in {listener.web!r}")
    if listener.redirect is not None and not listener.redirect.startswith(("http://", "https://")):
        errors.append(
            f"{where}: redirect: {listener.redirect!r} must be an http:// or https:// URL, "
            'e.g. "https://{host}:8443"'
        )
    return errors


def parse_metrics(value: Any, where: str) -> str:
    """The metrics listener's endpoint string, parsed (not bound)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f'{where}: expected an endpoint string, e.g. "tcp:9100:interface=127.0.0.1"'
        )
    problem = check_endpoint(value)
    if problem is not None:
        raise ConfigError(f"{where}: {value!r}: {problem}")
    return value


def check_endpoint(description: str) -> str | None:
    """Parse an endpoint string without binding it: None, or what is wrong."""
    from twisted.internet import endpoints

    from wsgate._parseonly import PARSE_ONLY_REACTOR

    try:
        endpoints.serverFromString(PARSE_ONLY_REACTOR, description)
    except OSError as e:  # a file the endpoint names (a key, a certificate)
        return str(e)
    except Exception as e:  # endpoint parsers raise ValueError, KeyError, SSL errors
        return (
            f"{e or type(e).__name__} (expected a Twisted server endpoint such as tcp:8080, "
            "unix:/run/wsgate.sock or ssl:8443:privateKey=key.pem:certKey=cert.pem)"
        )
    return None


def _unknown(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; valid keys here: {', '.join(valid)}"


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def reference_rst() -> str:
    """The configuration reference for README.rst, made from the code."""
    lines = []

    def table(title: str, rows: Sequence[tuple[str, str, str]]) -> None:
        lines.extend(
            [title, "", ".. list-table::", "   :header-rows: 1", "   :widths: 18 14 68", ""]
        )
        lines.extend(["   * - key", "     - default", "     - meaning"])
        for key, default, doc in rows:
            lines.extend([f"   * - ``{key}``", f"     - {_literal(default)}", f"     - {doc}"])
        lines.append("")

    table("Top level (the whole process)", PROCESS_DOC)
    table("``[[listener]]`` (one or more)", LISTENER_DOC)
    table("``[[route]]`` (any number)", ROUTE_DOC)
    settings: list[tuple[str, str, str]] = []
    for s in SETTINGS:
        doc = s.doc + (f" CLI: ``{s.option}``." if s.cli else "")
        if s.example:
            doc += f" Example: ``{s.key} = {s.example}``."
        settings.append((s.key, s.default, doc))
    table(
        "Route settings: in ``[defaults]`` for every route, or in a ``[[route]]`` for that one",
        settings,
    )
    return "\n".join(lines)


def _literal(default: str) -> str:
    if not default:
        return ""
    if default.startswith("("):
        return default
    return f"``{default}``"


__all__ = ["check", "check_endpoint", "load_file", "reference_rst"]


if __name__ == "__main__":
    print(reference_rst())
