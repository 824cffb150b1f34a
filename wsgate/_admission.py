"""A route's gate: its authenticators, then its token source, before any
backend is contacted.

Every refusal is a :class:`Refused`: the status and short reason the client
gets, the headers it needs (``WWW-Authenticate``), and which plugin said no,
for the one log line the client leg writes. A plugin that raises something
else, or takes longer than the route's ``auth_timeout``/``token_timeout``,
is a 503: its fault is logged, never shown to the client.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from string import ascii_letters, digits
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from twisted.internet import defer

from wsgate._config import AnyBackend, Route, StreamBackend, parse_backend
from wsgate._plugins import PluginSpec
from wsgate._targets import allowed
from wsgate._tokens import Target as _TcpTarget
from wsgate.interfaces import Identity, Refusal, Request, Target

T = TypeVar("T")
#: Printable ASCII but "%" (which quotes the rest) and a few separators.
_SAFE_IN_HEADER = ascii_letters + digits + " !#$&'()*+,-./:;<=>?@[]^_`{|}~"


#: A header a plugin may add to a refusal: a token name, a one-line value.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNSAFE = re.compile(r"[^\x20-\x7e]")
#: Not in a name shown on a log line: control characters (a newline would
#: forge a second line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Refused(Refusal):
    """A refusal on its way to the client: who refused, and the status."""

    def __init__(
        self,
        status: int,
        reason: str,
        plugin: str,
        headers: dict[str, str] | None = None,
        detail: str = "",
    ) -> None:
        if not 400 <= status <= 599:
            detail = f"status {status} is not an error; {detail}"
            status = 503
        safe = {
            k: v
            for k, v in (headers or {}).items()
            if isinstance(k, str) and _HEADER_NAME.fullmatch(k) and isinstance(v, str)
            if not _UNSAFE.search(v)
        }
        super().__init__(status, _UNSAFE.sub(" ", str(reason))[:200], safe)
        self.plugin = plugin
        self.detail = detail  # for the log line only


class Gate:
    """What a route checks before it opens a backend (nothing, by default)."""

    def __init__(self, route: Route, reactor: Any) -> None:
        settings = route.settings
        self._clock = reactor
        self._auth_timeout = settings.auth_timeout
        self._token_timeout = settings.token_timeout
        self._patterns = settings.token_targets
        self.authenticators = [(str(spec), spec.build(reactor)) for spec in settings.auth]
        spec = route_tokens(route)
        self.source_name = str(spec) if spec is not None else None
        self.source = spec.build(reactor) if spec is not None else None

    async def admit(self, request: Request) -> Identity | None:
        """Each authenticator in turn, all of which must pass; the identity is
        the first non-empty name, with every authenticator's attributes (None
        if the route has no authenticators)."""
        if not self.authenticators:
            return None
        names: list[str] = []
        attributes: dict[str, str] = {}
        for name, plugin in self.authenticators:
            found = await self._ask(name, self._auth_timeout, plugin.authenticate, request)
            if not isinstance(found, Identity):
                detail = f"gave {type(found).__name__}, not an Identity"
                raise Refused(503, f"{name} unavailable", name, detail=detail)
            names.append(found.name)
            attributes.update(found.attributes)
        name = _CONTROL.sub("?", next((n for n in names if n), ""))[:200]
        return Identity(name, attributes)

    async def backend(self, prefix: str, path: str, request: Request) -> AnyBackend:
        """The backend the client's token names: 404 unknown, 403 not allowed."""
        source, name = self.source, self.source_name
        assert source is not None and name is not None
        token = token_of(prefix, path, request.query)
        if token is None:
            raise Refused(404, "unknown token", name)
        target = await self._ask(
            name, self._token_timeout, lambda r: source.lookup(token, r), request
        )
        if target is None:
            raise Refused(404, "unknown token", name)
        if not isinstance(target, Target):
            detail = f"gave {type(target).__name__}, not a Target"
            raise Refused(503, f"{name} unavailable", name, detail=detail)
        if not allowed(self._patterns, target):
            raise Refused(403, "target not allowed", name, detail=f"target {target}")
        try:
            return to_backend(target)
        except ValueError as e:
            raise Refused(502, "unusable target", name, detail=str(e)) from None

    async def _ask(
        self, name: str, timeout: float, call: Callable[[Request], Any], request: Request
    ) -> Any:
        timer: Any = None
        timed_out = False

        def expire(waiting: defer.Deferred[Any]) -> None:
            nonlocal timed_out
            timed_out = True
            waiting.cancel()

        try:
            result = call(request)
            if inspect.isawaitable(result):
                waiting = _deferred(result)
                if not waiting.called and self._clock is not None:
                    timer = self._clock.callLater(timeout, expire, waiting)
                result = await waiting
        except Refused:
            raise
        except Refusal as e:
            raise Refused(e.status, e.reason, name, e.headers) from None
        except Exception as e:
            # A plugin's own errors may wrap the cancellation (Agent's
            # ResponseNeverReceived does): the timer says what happened.
            if timed_out:
                raise Refused(503, f"{name} timed out", name, detail=f"after {timeout} s") from None
            if isinstance(e, defer.CancelledError):
                raise  # the client went away
            raise Refused(503, f"{name} unavailable", name, detail=repr(e)[:300]) from None
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        return result

    def status(self) -> dict[str, object]:
        status = getattr(self.source, "status", None)
        return dict(status()) if callable(status) else {"token_source": self.source_name}


def forward_user(headers: dict[str, str], header: str, identity: Identity | None) -> None:
    """Set (or only clear: a client must not claim a user) the backend's user header."""
    if not header:
        return
    for name in [n for n in headers if n.lower() == header]:
        del headers[name]
    if identity is not None:
        headers[header] = quote(identity.name, safe=_SAFE_IN_HEADER)


def route_tokens(route: Route) -> PluginSpec | None:
    """The route's token source; ``token_file`` is short for the ``file`` one."""
    if route.tokens is not None:
        return route.tokens
    if route.token_file is not None:
        return PluginSpec("tokens", "file", _json({"path": route.token_file}), "/")
    return None


def token_of(prefix: str, path: str, query: str) -> str | None:
    """websockify's ``?token=``, else the path segment after the route's prefix."""
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0]
    rest = path[len(prefix) :].strip("/") if path.startswith(prefix) else ""
    return rest.rsplit("/", 1)[-1] or None


def to_backend(target: Target) -> AnyBackend:
    if target.url is not None:
        return parse_backend(target.url, "token target")
    if target.unix is not None:
        escaped = target.unix.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
        return StreamBackend(f"unix:path={escaped}")
    if not target.host or not 1 <= target.port <= 65535:
        raise ValueError("no host and port")
    return StreamBackend(_TcpTarget(target.host, target.port).endpoint())


def _deferred(result: Awaitable[T]) -> defer.Deferred[T]:
    if isinstance(result, defer.Deferred):
        return result
    return defer.ensureDeferred(result)  # type: ignore[arg-type]


def _json(value: object) -> str:
    import json

    return json.dumps(value)


__all__ = ["Gate", "Refused", "Request", "forward_user", "route_tokens", "to_backend", "token_of"]
