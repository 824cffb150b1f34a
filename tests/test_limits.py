"""Connection limits: the count, then real clients over the limit."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from wsgate._config import Config, ConfigError
from wsgate._configfile import load_file
from wsgate._drain import Connections
from wsgate.testing import GateFactory, free_port


class Conn:
    def go_away(self) -> float | None:
        return None

    def drop(self) -> None:
        pass


def limited(total: int, per_address: int) -> Connections:
    connections = Connections()
    connections.limit(
        Config(listeners=(), routes=(), max_connections=total, max_connections_per_ip=per_address)
    )
    return connections


def test_per_address_limit_counts_each_address_and_frees_on_close() -> None:
    connections = limited(0, 2)
    a1, a2, a3, b1 = Conn(), Conn(), Conn(), Conn()
    for conn in (a1, a2, a3, b1):
        connections.add(conn)
    assert connections.admit(a1, "192.0.2.1") is None
    assert connections.admit(a2, "192.0.2.1") is None
    refusal = connections.admit(a3, "192.0.2.1")
    assert refusal == "too many connections from 192.0.2.1 (max_connections_per_ip = 2)"
    assert connections.admit(b1, "192.0.2.2") is None
    connections.discard(a1)
    assert connections.admit(a3, "192.0.2.1") is None
    assert connections.admitted == 3


def test_total_limit() -> None:
    connections = limited(2, 0)
    conns = [Conn() for _ in range(3)]
    for i, conn in enumerate(conns):
        connections.add(conn)
        answer = connections.admit(conn, f"192.0.2.{i}")
        assert (answer is None) == (i < 2)
    assert answer == "too many connections (max_connections = 2)"
    connections.discard(conns[0])
    assert connections.admit(conns[2], "192.0.2.9") is None


def test_no_limit_by_default() -> None:
    connections = Connections()
    for _ in range(1000):
        conn = Conn()
        connections.add(conn)
        assert connections.admit(conn, "192.0.2.1") is None


def test_bad_limits_name_the_option_and_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"),
            *("wsgate", "--backend", "ws://127.0.0.1:9", "--max-connections-per-ip", "-1"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert "--max-connections-per-ip: '-1' must be 0 (no limit) or more" in result.stderr
    config = tmp_path / "wsgate.toml"
    config.write_text(
        'max_connections = "lots"\n[[listener]]\nendpoint = "tcp:8080"\n'
        '[[route]]\nbackend = "ws://127.0.0.1:9"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_file(str(config))
    assert f"{config}: top level: max_connections: 'lots' is not a whole number" in str(e.value)


def test_limits_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "wsgate.toml"
    config.write_text(
        "max_connections = 10000\nmax_connections_per_ip = 200\n"
        '[[listener]]\nendpoint = "tcp:8080"\n[[route]]\nbackend = "ws://127.0.0.1:9"\n'
    )
    loaded = load_file(str(config))
    assert (loaded.max_connections, loaded.max_connections_per_ip) == (10000, 200)


PER_IP = 200


@pytest.mark.single_process("max_connections_per_ip counts per worker (README, Workers)")
def test_the_201st_connection_from_one_address_gets_503(wsgate: GateFactory) -> None:
    """200 connections from 127.0.0.1 are relayed; the 201st gets 503 with
    Retry-After and the reason, the backend never hears of it, the others go
    on; once one closes, a new one is let in."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--max-connections-per-ip", str(PER_IP))

    async def main() -> None:
        async with backend(port) as state, contextlib.AsyncExitStack() as stack:
            open_: list[ClientConnection] = []
            for _ in range(PER_IP):
                open_.append(await stack.enter_async_context(client(gate.url)))
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "2"
            assert (
                b"too many connections from 127.0.0.1 (max_connections_per_ip = 200)"
                in response.body
            )
            assert len(state.seen) == PER_IP  # the refused one never reached it
            for ws in (open_[0], open_[-1]):
                await ws.send("still here")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "still here"
            await open_[0].close()
            async with asyncio.timeout(TIMEOUT):
                while True:  # wsgate counts it out once both legs are closed
                    try:
                        async with client(gate.url) as ws:
                            await ws.send("in")
                            assert await ws.recv() == "in"
                            break
                    except InvalidStatus:
                        await asyncio.sleep(0.05)

    asyncio.run(main())


@pytest.mark.single_process("max_connections counts per worker (README, Workers)")
def test_max_connections_for_the_whole_process(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--max-connections", "2")

    async def main() -> None:
        async with backend(port) as state, client(gate.url), client(gate.url):
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url):
                    pass
            assert refused.value.response.status_code == 503
            assert b"too many connections (max_connections = 2)" in refused.value.response.body
            assert len(state.seen) == 2

    asyncio.run(main())


def test_a_reload_applies_new_limits(wsgate: GateFactory, tmp_path: Path) -> None:
    port, backend_port = free_port(), free_port()
    config = tmp_path / "wsgate.toml"

    def write(limit: int) -> None:
        config.write_text(
            f"max_connections = {limit}\n"
            f'[[listener]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
            f'[[route]]\nbackend = "ws://127.0.0.1:{backend_port}"\n'
        )

    write(1)
    gate = wsgate("--config", str(config), wait_port=port)
    url = f"ws://127.0.0.1:{port}/"

    async def main() -> None:
        async with backend(backend_port), client(url):
            with pytest.raises(InvalidStatus):
                async with client(url):
                    pass
            write(2)
            gate.reload()
            async with asyncio.timeout(TIMEOUT):
                while "applied" not in gate.log():
                    await asyncio.sleep(0.05)
            async with client(url) as second:
                await second.send("two")
                assert await second.recv() == "two"

    asyncio.run(main())
