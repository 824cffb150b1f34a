"""The health path tells the truth: each route's backends and their state, and
``degraded`` (optionally 503) while a route has no backend that is not resting.

Pure tests on the pool's injected clock; one end to end with a backend that
is down, then comes up.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
from pathlib import Path

from peers import TIMEOUT, backend, client
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from websockets.exceptions import InvalidStatus

from wsgate._backend import connector_for
from wsgate._config import AnyBackend, Listener, Route, RouteSettings, parse_backend
from wsgate._liveroutes import ListenerRoutes, LiveRoute, route_label
from wsgate._pool import BackendPool
from wsgate._routing import Router
from wsgate.testing import GateFactory, free_port


def test_route_label() -> None:
    assert route_label((), "/") == "*/"
    assert route_label(("app.example.com",), "/app") == "app.example.com/app"
    assert route_label(("a.com", "*.b.com"), "/x") == "a.com,*.b.com/x"


def _live(route: Route, clock: Clock) -> LiveRoute:
    settings = route.settings
    pool: BackendPool[AnyBackend] = BackendPool(
        route.backends, clock, max_fails=settings.max_fails, fail_timeout=settings.fail_timeout
    )
    make = functools.partial(connector_for, MemoryReactorClock(), settings)
    return LiveRoute(route, pool, make)


def _routes(clock: Clock, *, fail_when_degraded: bool = False) -> ListenerRoutes:
    settings = RouteSettings(max_fails=1, fail_timeout=10.0)
    a, b = parse_backend("ws://127.0.0.1:9001"), parse_backend("ws://127.0.0.1:9002")
    routes = (
        _live(Route(name="#1 (/)", prefix="/", backends=(a,), settings=settings), clock),
        _live(
            Route(
                name="#2 (/)",
                prefix="/",
                hosts=("app.example.com",),
                backends=(a, b),
                settings=settings,
            ),
            clock,
        ),
    )
    listener = Listener(
        endpoint="tcp:8080",
        name="main",
        health="/healthz",
        health_fail_when_degraded=fail_when_degraded,
    )
    return ListenerRoutes(listener, Router(routes), routes)


def _answer(routes: ListenerRoutes) -> tuple[int, dict[str, object]]:
    code, body = routes.health()
    return code, json.loads(body)


def test_ok_while_every_route_has_a_usable_backend() -> None:
    clock = Clock()
    routes = _routes(clock)
    pool = routes.routes[1].pool
    assert pool is not None
    pool.failed(pool.candidates()[0])  # one of two resting: still usable
    code, status = _answer(routes)
    assert code == 200 and status["status"] == "ok"
    assert [r["route"] for r in status["routes"]] == ["*/", "app.example.com/"]  # type: ignore[attr-defined]


def test_degraded_when_a_route_has_none_and_ok_after_the_rest() -> None:
    for fail_when_degraded, degraded_code in ((False, 200), (True, 503)):
        clock = Clock()
        routes = _routes(clock, fail_when_degraded=fail_when_degraded)
        pool = routes.routes[1].pool
        assert pool is not None
        for backend_ in pool.candidates():
            pool.failed(backend_)
        clock.advance(4)
        code, status = _answer(routes)
        assert code == degraded_code and status["status"] == "degraded"
        first, second = status["routes"]  # type: ignore[misc]
        assert first["usable"] and not second["usable"]
        assert [(b["state"], b["fails"], b["resting_for"]) for b in second["backends"]] == [
            ("resting", 1, 6.0),
            ("resting", 1, 6.0),
        ]
        clock.advance(6)  # the rest is over: they will be tried first again
        code, status = _answer(routes)
        assert code == 200 and status["status"] == "ok"


def test_token_route_reports_its_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("vnc1: 127.0.0.1:5901\nvnc2: 127.0.0.1:5902\n")
    route = Route(name="--token-file", prefix="/websockify", token_file=str(tokens))
    live = LiveRoute(route, None, lambda b: None)  # type: ignore[arg-type,return-value]
    listener = Listener(endpoint="tcp:8080", name="main", health="/healthz")
    routes = ListenerRoutes(listener, Router((live,)), (live,))
    code, status = _answer(routes)
    assert code == 200 and status["status"] == "ok"
    assert status["routes"] == [{"route": "*/websockify", "token_file": str(tokens), "tokens": 2}]


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_health_end_to_end_down_then_up(wsgate: GateFactory, tmp_path: Path) -> None:
    be, plain, strict = free_port(), free_port(), free_port()
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f"""
[[listener]]
endpoint = "tcp:{plain}:interface=127.0.0.1"
health = "/healthz"

[[listener]]
endpoint = "tcp:{strict}:interface=127.0.0.1"
health = "/healthz"
health_fail_when_degraded = true

[[route]]
prefix = "/app"
hosts = ["app.example.com"]
backend = "ws://127.0.0.1:{be}"

[[route]]
prefix = "/"
backend = "ws://127.0.0.1:{be}"
max_fails = 1
fail_timeout = 1
"""
    )
    gate = wsgate("--config", str(config), wait_port=plain)
    url = f"ws://127.0.0.1:{plain}/"

    async def main() -> None:
        code, status = await asyncio.to_thread(_get, plain, "/healthz")
        assert code == 200 and status["status"] == "ok"  # not tried yet
        # The backend is down: a client gets 502, the backend rests.
        try:
            async with client(url):
                raise AssertionError("connected to a backend that is down")
        except InvalidStatus as e:
            assert e.response.status_code == 502
        code, status = await asyncio.to_thread(_get, plain, "/healthz")
        assert code == 200 and status["status"] == "degraded", status
        by_name = {r["route"]: r for r in status["routes"]}  # type: ignore[attr-defined]
        assert set(by_name) == {"app.example.com/app", "*/"}
        (down,) = by_name["*/"]["backends"]
        assert down["state"] == "resting" and down["fails"] == 1
        code, status = await asyncio.to_thread(_get, strict, "/healthz")
        assert code == 503 and status["status"] == "degraded"
        # It comes up and the rest ends: ok again, and clients are served.
        async with backend(be):
            async with asyncio.timeout(TIMEOUT):
                while (await asyncio.to_thread(_get, strict, "/healthz"))[0] != 200:
                    await asyncio.sleep(0.1)
            code, status = await asyncio.to_thread(_get, plain, "/healthz")
            assert code == 200 and status["status"] == "ok"
            async with client(url) as ws:
                await ws.send("up")
                assert await ws.recv() == "up"

    asyncio.run(main())
    assert "Traceback" not in gate.log()
