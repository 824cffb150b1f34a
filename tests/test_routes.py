"""End to end over 127.0.0.1: routes, several backends, plain HTTP answers, reloads.

wsgate runs as ``twistd -n wsgate --config FILE`` (or ``--route``) in front of
real ``websockets`` backends; clients are ``websockets`` and ``http.client``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgate.testing import GateFactory, Wsgate, free_port, make_tls_files


async def _hello(ws: ServerConnection) -> None:
    """Echo, after saying which backend this is and what path it was asked for."""
    assert ws.request is not None
    await ws.send(f"{ws.local_address[1]} {ws.request.path}")
    async for message in ws:
        await ws.send(message)


async def _where(url: str, **kwargs: object) -> tuple[int, str]:
    """Which backend port answered ``url``, and the path it was asked for."""
    async with client(url, **kwargs) as ws:  # type: ignore[arg-type]
        port, path = str(await ws.recv()).split(" ", 1)
        await ws.send("ping")
        assert await ws.recv() == "ping"
        return int(port), path


async def _log_has(gate: Wsgate, text: str, count: int = 1) -> None:
    async with asyncio.timeout(TIMEOUT):
        while gate.log().count(text) < count:
            await asyncio.sleep(0.05)  # the log is a file: poll it


def _start(wsgate: GateFactory, tmp_path: Path, text: str, port: int) -> tuple[Wsgate, Path]:
    path = tmp_path / "wsgate.toml"
    path.write_text(text)
    return wsgate("--config", str(path), wait_port=port), path


def _http(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_path_and_host_routes_from_a_file(wsgate: GateFactory, tmp_path: Path) -> None:
    a, b, listen = free_port(), free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"

[[route]]
backend = "ws://127.0.0.1:{a}/base"

[[route]]
prefix = "/b"
backend = "ws://127.0.0.1:{b}"
strip_prefix = true

[[route]]
prefix = "/b/deeper"
backend = "ws://127.0.0.1:{a}"

[[route]]
hosts = ["b.test", "*.b.test"]
backend = "ws://127.0.0.1:{b}"
""",
        listen,
    )
    url = f"ws://127.0.0.1:{listen}"

    async def main() -> None:
        async with backend(a, _hello), backend(b, _hello):
            assert await _where(url + "/x?q=1") == (a, "/base/x?q=1")
            assert await _where(url + "/b/chat?room=2") == (b, "/chat?room=2")
            assert await _where(url + "/b") == (b, "/")
            assert await _where(url + "/bee") == (a, "/base/bee")  # whole segments only
            assert await _where(url + "/b/deeper/x") == (a, "/b/deeper/x")  # longest wins
            # By Host: same address, another name.
            for host in ("b.test", "x.b.test"):
                where = await _where(f"ws://{host}:{listen}/x", host="127.0.0.1", port=listen)
                assert where == (b, "/x")
            where = await _where(f"ws://b.test.example:{listen}/x", host="127.0.0.1", port=listen)
            assert where == (a, "/base/x")

    asyncio.run(main())
    assert "route=#2 (/b)" in gate.log()


def test_command_line_routes(wsgate: GateFactory) -> None:
    app, vnc, default = free_port(), free_port(), free_port()
    gate = wsgate(
        "--route",
        f"/app=ws://127.0.0.1:{app}",
        "--route",
        f"/vnc2=ws://127.0.0.1:{vnc}",
        "--backend",
        f"ws://127.0.0.1:{default}",
    )

    async def main() -> None:
        async with backend(app, _hello), backend(vnc, _hello), backend(default, _hello):
            assert await _where(gate.url + "/app/x") == (app, "/app/x")
            assert await _where(gate.url + "/vnc2/websockify") == (vnc, "/vnc2/websockify")
            assert await _where(gate.url + "/vnc1/websockify") == (default, "/vnc1/websockify")

    asyncio.run(main())


def test_failover_and_round_robin(wsgate: GateFactory, tmp_path: Path) -> None:
    a, b, down, listen = free_port(), free_port(), free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"
health = "/healthz"

[[route]]
prefix = "/rr"
backends = ["ws://127.0.0.1:{a}", "ws://127.0.0.1:{b}"]

[[route]]
prefix = "/failover"
backends = ["ws://127.0.0.1:{down}", "ws://127.0.0.1:{a}"]
max_fails = 1
fail_timeout = 600
""",
        listen,
    )
    url = f"ws://127.0.0.1:{listen}"

    async def main() -> None:
        async with backend(a, _hello), backend(b, _hello):
            ports = [(await _where(url + "/rr"))[0] for _ in range(6)]
            assert sorted(ports) == sorted([a, b] * 3)
            assert ports[0] != ports[1]
            # The first backend refuses: the client is answered by the next one.
            for _ in range(3):
                assert (await _where(url + "/failover"))[0] == a

    asyncio.run(main())
    log = gate.log()
    # Tried once, then resting: later clients do not pay for it.
    assert log.count(f"backend ws://127.0.0.1:{down} failed, trying the next") == 1
    status, _, body = _http(listen, "/healthz")
    assert status == 200
    health = json.loads(body)
    failover = next(r for r in health["routes"] if r["route"] == "*/failover")
    down_status = failover["backends"][0]
    assert down_status["backend"] == f"ws://127.0.0.1:{down}"
    assert down_status["fails"] == 1 and down_status["resting_for"] > 500


def test_all_backends_down_is_502(wsgate: GateFactory) -> None:
    one, two = free_port(), free_port()
    gate = wsgate("--route", f"/x=ws://127.0.0.1:{one}", "--backend", f"ws://127.0.0.1:{two}")

    async def main() -> None:
        for path in ("/x", "/"):
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url + path):
                    pass
            assert refused.value.response.status_code == 502

    asyncio.run(main())


def test_plain_http_answers(wsgate: GateFactory, tmp_path: Path) -> None:
    be, listen, redirect = free_port(), free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"
health = "/healthz"

[[listener]]
endpoint = "tcp:{redirect}:interface=127.0.0.1"
redirect = "https://{{host}}:8443"
health = "/healthz"

[[route]]
prefix = "/app"
backend = "ws://127.0.0.1:{be}"
""",
        listen,
    )
    status, headers, body = _http(listen, "/app/x")
    assert status == 426 and headers["Upgrade"] == "websocket"
    assert b"Upgrade" in body
    status, _, body = _http(listen, "/nothing/here")
    assert status == 404 and b"no route for 127.0.0.1/nothing/here" in body
    status, headers, body = _http(listen, "/healthz")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["routes"][0]["route"] == "*/app"
    status, headers, _ = _http(redirect, "/app/x?q=1", {"Host": "example.com:80"})
    assert status == 308 and headers["Location"] == "https://example.com:8443/app/x?q=1"
    assert _http(redirect, "/healthz")[0] == 200
    # A request head that never ends is refused, not buffered without bound.
    status, _, _ = _http(listen, "/app", {"X-Big": "x" * 70_000})
    assert status == 431
    assert "Traceback" not in gate.log()


def test_origins_subprotocols_and_headers(wsgate: GateFactory, tmp_path: Path) -> None:
    be, listen = free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"

[[route]]
backend = "ws://127.0.0.1:{be}"
origins = ["https://app.example.com", "https://*.trusted.example"]
subprotocols = ["chat.v2"]
add_headers = {{ X-Route = "main" }}
remove_headers = ["Cookie"]
""",
        listen,
    )
    url = f"ws://127.0.0.1:{listen}/"

    async def main() -> None:
        async with backend(be, subprotocols=["chat.v2", "chat.v1"]) as state:
            for origin in ("https://evil.example", "https://app.example.com.evil", "null"):
                with pytest.raises(InvalidStatus) as refused:
                    async with client(url, origin=origin):  # type: ignore[arg-type]
                        pass
                assert refused.value.response.status_code == 403
                assert b"not allowed" in refused.value.response.body
            for origin in ("https://app.example.com", "https://a.b.trusted.example", None):
                # (this backend refuses clients that offer no subprotocol)
                async with client(
                    url,
                    origin=origin,  # type: ignore[arg-type]
                    subprotocols=["chat.v2"],  # type: ignore[list-item]
                ) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
            with pytest.raises(InvalidStatus) as refused:
                async with client(url, subprotocols=["chat.v1"]):  # type: ignore[list-item]
                    pass
            assert refused.value.response.status_code == 400
            async with client(
                url,
                subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
                additional_headers={"Cookie": "session=1", "X-Route": "client's", "X-Keep": "1"},
            ) as ws:
                assert ws.subprotocol == "chat.v2"  # chat.v1 was not passed on
                seen = state.seen[-1]
                assert seen.subprotocol == "chat.v2"
                assert "cookie" not in seen.headers
                assert seen.headers["x-route"] == "main" and seen.headers["x-keep"] == "1"

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_idle_timeout_closes_both_legs_with_1001(wsgate: GateFactory) -> None:
    be = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{be}", "--idle-timeout", "0.5")

    async def main() -> None:
        # That traffic keeps it open is test_relay's (on a Clock).
        async with backend(be) as state, client(gate.url, ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert ws.close_code == 1001 and ws.close_reason == "idle for 0.5 s"
            seen = await state.wait_seen()
            async with asyncio.timeout(TIMEOUT):
                await seen.closed.wait()
            assert seen.close_code == 1001

    asyncio.run(main())


def test_sighup_reload_keeps_open_connections(wsgate: GateFactory, tmp_path: Path) -> None:
    a, b, listen, second = free_port(), free_port(), free_port(), free_port()
    first_config = f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"

[[route]]
prefix = "/a"
backend = "ws://127.0.0.1:{a}"
"""
    gate, path = _start(wsgate, tmp_path, first_config, listen)
    url = f"ws://127.0.0.1:{listen}"

    async def main() -> None:
        async with backend(a, _hello), backend(b, _hello), client(url + "/a") as streaming:
            assert str(await streaming.recv()).startswith(str(a))

            async def stream(count: int) -> None:
                for n in range(count):
                    await streaming.send(f"m{n}")
                    assert await streaming.recv() == f"m{n}"

            await stream(5)
            with pytest.raises(InvalidStatus) as refused:
                async with client(url + "/b"):
                    pass
            assert refused.value.response.status_code == 404

            # A new route and a new listener, while the connection streams.
            path.write_text(
                first_config.replace('prefix = "/a"', 'prefix = "/a"\nmax_message_size = "1M"')
                + f"""
[[listener]]
endpoint = "tcp:{second}:interface=127.0.0.1"

[[route]]
prefix = "/b"
backend = "ws://127.0.0.1:{b}"
"""
            )
            gate.reload()
            await _log_has(gate, "reload: " + str(path) + " applied")
            await stream(5)
            assert await _where(url + "/b") == (b, "/b")
            assert await _where(f"ws://127.0.0.1:{second}/b") == (b, "/b")
            assert (await _where(url + "/a"))[0] == a

            # A broken file is refused whole; the running configuration stays.
            path.write_text(first_config + '\n[[route]]\nprefix = "/c"\nbackendd = "ws://x"\n')
            gate.reload()
            await _log_has(gate, "refused, the running configuration stays")
            assert await _where(url + "/b") == (b, "/b")
            await stream(5)

            # Dropping the second listener closes it; this connection goes on.
            path.write_text(first_config)
            gate.reload()
            await _log_has(gate, "reload: " + str(path) + " applied", count=2)
            with pytest.raises(OSError):
                async with client(f"ws://127.0.0.1:{second}/b", open_timeout=2):
                    pass
            await stream(5)
            await streaming.close()
            assert streaming.close_code == 1000

    asyncio.run(main())
    log = gate.log()
    assert "did you mean 'backend'?" in log
    assert "Traceback" not in log


def test_tls_listener_picks_the_certificate_by_sni(wsgate: GateFactory, tmp_path: Path) -> None:
    one = make_tls_files(tmp_path / "one", names=("one.test",), ca_name="CA one")
    two = make_tls_files(tmp_path / "two", names=("two.test",), ca_name="CA two")
    be, listen = free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"
certificates = [
  {{ cert = "one/cert.pem", key = "one/key.pem" }},
  {{ cert = "two/server.pem" }},
]

[[route]]
backend = "ws://127.0.0.1:{be}"
""",
        listen,
    )

    async def main() -> None:
        async with backend(be):
            for name, files in (("one.test", one), ("two.test", two)):
                context = ssl.create_default_context(cafile=str(files.ca_cert))
                async with client(
                    f"wss://{name}:{listen}/", ssl=context, host="127.0.0.1", port=listen
                ) as ws:
                    await ws.send(name)
                    assert await ws.recv() == name
                    assert ws.request is not None
                    assert ws.request.headers["Host"] == f"{name}:{listen}"

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_bad_file_stops_twistd_before_binding(tmp_path: Path) -> None:
    # The port is taken: had wsgate tried to listen first, it would say so.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = taken.getsockname()[1]
        path = tmp_path / "wsgate.toml"
        path.write_text(
            f'[[listener]]\nendpoint = "tcp:{listen}:interface=127.0.0.1"\n'
            '[[route]]\nbackend = "ws://x"\nbalance = "random"\n'
        )
        command = Wsgate("--config", str(path)).command()
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"{path}: [[route]] #1 (/): balance: 'random' is not a balance method" in out
    assert "cannot listen" not in out and "Address already in use" not in out
    assert "Traceback" not in out


def test_settings_apply_per_route(wsgate: GateFactory, tmp_path: Path) -> None:
    be, listen = free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[defaults]
max_message_size = "1K"
backend_deflate = "on"

[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"

[[route]]
prefix = "/small"
backend = "ws://127.0.0.1:{be}"
client_deflate = "off"

[[route]]
prefix = "/big"
backend = "ws://127.0.0.1:{be}"
max_message_size = "1M"
backend_deflate = "off"
""",
        listen,
    )
    url = f"ws://127.0.0.1:{listen}"

    async def main() -> None:
        async with backend(be) as state:
            async with client(url + "/big") as ws:
                assert "permessage-deflate" in (
                    ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                )  # type: ignore[union-attr]
                await ws.send("x" * 100_000)
                assert await ws.recv() == "x" * 100_000
                assert not (await state.wait_seen(1)).extensions
            async with client(url + "/small") as ws:
                assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # type: ignore[union-attr]
                assert "permessage-deflate" in ((await state.wait_seen(2)).extensions or "")
                await ws.send("y" * 1000)
                assert await ws.recv() == "y" * 1000
                await ws.send("y" * 2000)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1009

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_log_has_one_open_and_one_close_line_per_connection(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    """No per-connection noise: no "dropping connection" warning on a health probe
    or plain GET, no "Starting factory" for each backend connection."""
    n = 5
    b, listen = free_port(), free_port()
    gate, _ = _start(
        wsgate,
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"
health = "/healthz"

[[route]]
prefix = "/app"
backend = "ws://127.0.0.1:{b}"
""",
        listen,
    )
    before = gate.log().splitlines()

    async def main() -> None:
        async with backend(b, _hello):
            for _ in range(n):
                assert _http(listen, "/healthz")[0] == 200
                assert _http(listen, "/app")[0] == 426
                assert _http(listen, "/nowhere")[0] == 404
                assert (await _where(f"ws://127.0.0.1:{listen}/app"))[0] == b
            await _log_has(gate, "[wsgate#info] close ", count=n)

    asyncio.run(main())
    lines = gate.log().splitlines()[len(before) :]
    assert sum("[wsgate#info] open " in x for x in lines) == n
    assert sum("[wsgate#info] close " in x for x in lines) == n
    # One line per plain HTTP answer at most: none for health, Autobahn's for 426 and 404.
    assert sum("failing WebSocket opening handshake" in x for x in lines) == 2 * n
    assert len(lines) == 4 * n, "\n".join(lines)
