"""The ``redis`` token source: a key per token, its value ``host:port`` or
the JSON target the ``http`` source reads (websockify's ``TokenRedis``).

A tiny client of the Redis protocol (RESP) over a Twisted endpoint, one
connection per lookup: AUTH and SELECT when the URL asks, then GET. No new
dependency, non-blocking, and nothing to reconnect: a Redis that restarts
is simply used again by the next client. A lookup is one round trip on
127.0.0.1 or a LAN, small next to the WebSocket connection it admits.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, protocol
from zope.interface import implementer

from wsgate._targets import target_from
from wsgate.interfaces import ITokenSource, Refusal, Request, Target

#: Longest reply read: a target is a few dozen bytes.
_MAX_REPLY = 64 * 1024


@implementer(ITokenSource)
class RedisSource:
    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", key: str = "{token}", reactor: Any = None
    ) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"url: {url!r} is not a URL") from None
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f'url: {url!r}: expected "redis://[:password@]host[:port][/db]"')
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"url: database {db!r} is not a number")
        if not isinstance(key, str) or "{token}" not in key:
            raise ValueError('key: expected a pattern with {token}, e.g. "vnc:{token}"')
        self._host, self._port, self._db = parts.hostname, port, int(db)
        self._password = unquote(parts.password) if parts.password else None
        self._key = key
        self._reactor = reactor

    def lookup(self, token: str, request: Request) -> defer.Deferred[Target | None]:
        return defer.Deferred.fromCoroutine(self._lookup(token))

    async def _lookup(self, token: str) -> Target | None:
        from twisted.internet.endpoints import HostnameEndpoint

        commands: list[list[bytes]] = []
        if self._password is not None:
            commands.append([b"AUTH", self._password.encode()])
        if self._db:
            commands.append([b"SELECT", str(self._db).encode()])
        commands.append([b"GET", self._key.replace("{token}", token).encode("utf-8")])
        endpoint = HostnameEndpoint(self._reactor, self._host, self._port)
        try:
            client = await endpoint.connect(protocol.Factory.forProtocol(_Resp))  # type: ignore[arg-type]
        except Exception:
            raise Refusal(503, "token source unavailable") from None
        try:
            replies = await client.run(commands)
        finally:
            client.transport.loseConnection()
        errors = [r for r in replies if isinstance(r, _Error)]
        if errors:
            raise Refusal(502, "token source refused the lookup")
        value = replies[-1]
        if value is None:
            return None
        try:
            text = value.decode("utf-8").strip()
            return target_from(json.loads(text) if text.startswith("{") else text)
        except ValueError:
            raise Refusal(502, "token source value is not a target") from None


class _Error(str):
    """A ``-ERR ...`` reply."""


class _Resp(protocol.Protocol):
    """Sends commands, reads as many replies (simple, error, integer, bulk)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._want = 0
        self._replies: list[Any] = []
        self._done: defer.Deferred[list[Any]] | None = None

    def run(self, commands: list[list[bytes]]) -> defer.Deferred[list[Any]]:
        self._want = len(commands)
        self._done = defer.Deferred()
        out = b""
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for arg in args:
                out += b"$%d\r\n%s\r\n" % (len(arg), arg)
        transport: Any = self.transport
        transport.write(out)
        return self._done

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _MAX_REPLY:
            self._finish(Refusal(502, "token source reply too large"))
            return
        while self._done is not None and len(self._replies) < self._want:
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            kind, body = line[:1], line[1:]
            if kind == b"$":
                if not body.lstrip(b"-").isdigit():
                    self._finish(Refusal(502, "token source spoke no Redis protocol"))
                    return
                size = int(body)
                if size < 0:
                    self._replies.append(None)
                    self._buffer = rest
                    continue
                if len(rest) < size + 2:
                    return
                self._replies.append(rest[:size])
                self._buffer = rest[size + 2 :]
            elif kind in (b"+", b":"):
                self._replies.append(body)
                self._buffer = rest
            elif kind == b"-":
                self._replies.append(_Error(body.decode("utf-8", "replace")))
                self._buffer = rest
            else:
                self._finish(Refusal(502, "token source spoke no Redis protocol"))
                return
        if len(self._replies) >= self._want:
            self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        if error is None:
            done.callback(self._replies)
        else:
            done.errback(error)

    def connectionLost(self, reason: Any = None) -> None:
        self._finish(Refusal(503, "token source closed the connection"))
