"""A live route opening a leg: its backends in the pool's order, or its token's target.

Pure: fake connectors on a test clock (the failover rules themselves are in
test_failover.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsgate._admission import Refused
from wsgate._config import AnyBackend, Route, RouteSettings, StreamBackend, parse_backend
from wsgate._connect import BackendError, BackendRequest
from wsgate._liveroutes import LiveRoute
from wsgate._pool import BackendPool
from wsgate.interfaces import Request

_SYNC = SynchronousTestCase()


class _Connector:
    """Records what it was asked for; fails if told to."""

    def __init__(self, backend: AnyBackend, calls: list[tuple[str, str]], down: set[str]) -> None:
        self._backend, self._calls, self._down = backend, calls, down

    def connect(self, request: BackendRequest) -> defer.Deferred[Any]:
        # What the real connectors send as the request target.
        self._calls.append(
            (str(self._backend), self._backend.resource_for(request.path, request.query))
        )
        if str(self._backend) in self._down:
            return defer.fail(BackendError(502, f"{self._backend} down", retryable=True))
        return defer.succeed(f"leg to {self._backend}")


def _client(path: str, query: str) -> Request:
    return Request("GET", path, query, {}, "127.0.0.1", "test")


def test_the_backends_are_tried_with_the_rewritten_path_and_the_query() -> None:
    a, b = parse_backend("ws://127.0.0.1:9001/base"), parse_backend("ws://127.0.0.1:9002")
    settings = RouteSettings(max_fails=1, fail_timeout=10.0)
    route = Route(name="#1", prefix="/app", rewrite="/", backends=(a, b), settings=settings)
    pool: BackendPool[AnyBackend] = BackendPool(route.backends, Clock())
    calls: list[tuple[str, str]] = []
    live = LiveRoute(route, pool, lambda backend: _Connector(backend, calls, {str(a)}))
    heard: list[AnyBackend] = []
    path = live.backend_path("/app/x")
    assert path == "/x"
    opening = live.open(
        BackendRequest(path, "q=1"),
        _client("/app/x", "q=1"),
        lambda backend, e: heard.append(backend),
    )
    assert _SYNC.successResultOf(opening) == (f"leg to {b}", b)
    assert calls == [(str(a), "/base/x?q=1"), (str(b), "/x?q=1")]
    assert heard == [a]
    assert pool.status()[0]["state"] == "resting"


def test_an_unknown_token_is_404_and_a_known_one_opens_its_target(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("vnc1: 127.0.0.1:5901\n")
    route = Route(name="--token-file", prefix="/websockify", token_file=str(tokens))
    calls: list[tuple[str, str]] = []
    live = LiveRoute(route, None, lambda backend: _Connector(backend, calls, set()))
    client = _client("/websockify", "token=nope")
    unknown = live.open(BackendRequest("/websockify", "token=nope"), client, lambda b, e: None)
    refused = _SYNC.failureResultOf(unknown, Refused).value
    assert (refused.status, refused.reason, refused.plugin) == (404, "unknown token", "file")
    assert calls == []
    client = _client("/websockify/vnc1", "")
    known = live.open(BackendRequest("/websockify/vnc1"), client, lambda b, e: None)
    leg, backend = _SYNC.successResultOf(known)
    assert isinstance(backend, StreamBackend) and leg == f"leg to {backend}"
    assert calls == [(str(backend), "")]
