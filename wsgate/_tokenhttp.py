"""The ``http`` token source: GET a URL with the token, read a JSON target.

``{"host": ..., "port": ...}`` or ``{"target": ...}`` with 200 is the
target; 404 means an unknown token; anything else, or an answer that is not
such JSON, is the source's fault (502). Answers (404s too) are cached for
``cache_seconds``, so a browser's reconnects do not each cost a request.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer, protocol
from zope.interface import implementer

from wsgate._targets import target_from
from wsgate.interfaces import ITokenSource, Refusal, Request, Target

#: Largest answer read; a target is a few dozen bytes.
_MAX_BODY = 64 * 1024
#: Most answers kept: the oldest go first.
_CACHE_SIZE = 10_000


@implementer(ITokenSource)
class HttpSource:
    def __init__(
        self, url: str, cache_seconds: float = 0, timeout: float = 5, reactor: Any = None
    ) -> None:
        if not isinstance(url, str) or "{token}" not in url:
            raise ValueError('url: expected a URL with {token}, e.g. "http://portal/t?t={token}"')
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"url: {url!r} must be http:// or https://")
        for key, value in (("cache_seconds", cache_seconds), ("timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key}: expected a number of seconds")
        self._url = url
        self._ttl = cache_seconds
        self._timeout = timeout
        self._reactor = reactor
        self._cache: OrderedDict[str, tuple[float, Target | None]] = OrderedDict()
        self._agent: Any = None

    def lookup(self, token: str, request: Request) -> defer.Deferred[Target | None]:
        now = self._reactor.seconds() if hasattr(self._reactor, "seconds") else time.time()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            return defer.succeed(cached[1])
        return defer.Deferred.fromCoroutine(self._fetch(token, now))

    async def _fetch(self, token: str, now: float) -> Target | None:
        from twisted.web.client import Agent

        if self._agent is None:
            self._agent = Agent(self._reactor, connectTimeout=self._timeout)
        url = self._url.replace("{token}", quote(token, safe=""))
        asking = self._agent.request(b"GET", url.encode("ascii"))
        asking.addTimeout(self._timeout, self._reactor)
        response = await asking
        if response.code == 404:
            response.deliverBody(_Discard())
            return self._keep(token, now, None)
        if response.code != 200:
            response.deliverBody(_Discard())
            raise Refusal(502, f"token source answered {response.code}")
        reading: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Bounded(reading))
        reading.addTimeout(self._timeout, self._reactor)
        body = await reading
        try:
            target = target_from(json.loads(body))
        except ValueError:
            raise Refusal(502, "token source answer is not a target") from None
        return self._keep(token, now, target)

    def _keep(self, token: str, now: float, target: Target | None) -> Target | None:
        if self._ttl > 0:
            self._cache[token] = (now + self._ttl, target)
            self._cache.move_to_end(token)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return target


class _Bounded(protocol.Protocol):
    """Reads a body of at most ``_MAX_BODY`` bytes, with or without a
    Content-Length (chunked); a longer one is cut off and refused."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self._done: defer.Deferred[bytes] | None = done
        self._data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:
            return
        self._data += data
        if len(self._data) > _MAX_BODY:
            done, self._done = self._done, None
            transport: Any = self.transport
            transport.stopProducing()
            done.errback(Refusal(502, "token source answer too large"))

    def connectionLost(self, reason: Any = None) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            done.callback(bytes(self._data))
        else:
            done.errback(reason)


class _Discard:
    """Drops a body we do not want: the connection is closed at once."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
