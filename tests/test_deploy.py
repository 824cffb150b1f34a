"""wsgate as deployed: under systemd socket activation, and behind a real
HAProxy sending PROXY v2 (one instance, then two with one drained).

HAProxy runs in the foreground with a generated configuration on free
127.0.0.1 ports; clients connect from other loopback addresses (127.0.0.2,
...), so the real client address differs from HAProxy's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgate.testing import GateFactory, Wsgate, free_port, wait_for_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

needs_haproxy = pytest.mark.skipif(
    not Path(HAPROXY).exists(), reason="haproxy is not installed (apt-get install haproxy)"
)
needs_activate = pytest.mark.skipif(
    not Path(ACTIVATE).exists(),
    reason="systemd-socket-activate is not installed (apt-get install systemd)",
)


# -- socket activation -------------------------------------------------------------


@needs_activate
def test_systemd_socket_activation(tmp_path: Path) -> None:
    """systemd-socket-activate binds the port and starts wsgate on the first
    connection, handing it the socket (as wsgate.socket does). Twisted reads
    the sockets only when LISTEN_FDNAMES names them, which systemd always
    sets and systemd-socket-activate only with --fdname."""
    port, backend_port = free_port(), free_port()
    log = tmp_path / "wsgate.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=wsgate"),
                *TWISTD,
                *("wsgate", "--listen", "systemd:domain=INET:index=0"),
                *("--backend", f"ws://127.0.0.1:{backend_port}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc=proc)

        async def main() -> None:
            async with backend(backend_port), client(f"ws://127.0.0.1:{port}/sd") as ws:
                await ws.send("activated")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "activated"

        asyncio.run(main())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    text = log.read_text()
    assert "open tcp4:127.0.0.1:" in text and "drained: " in text


# -- HAProxy -------------------------------------------------------------------------


@dataclass
class HAProxy:
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    servers: list[int] = field(default_factory=list)


def haproxy_config(port: int, servers: dict[str, int], health: str | None) -> str:
    """TCP mode, PROXY v2 to each server, health checks on wsgate's health
    path (the shape of etc/haproxy.cfg, with test-sized timers)."""
    check = (
        "    option httpchk\n"
        f"    http-check send meth GET uri {health} ver HTTP/1.1 hdr Host wsgate\n"
        "    default-server check check-send-proxy inter 200ms fall 1 rise 1\n"
        if health
        else ""
    )
    lines = "".join(
        f"    server {name} 127.0.0.1:{server_port} send-proxy-v2\n"
        for name, server_port in servers.items()
    )
    return (
        "global\n    maxconn 1000\n\n"
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n"
        "    timeout server 1h\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\n"
        f"frontend ws\n    bind 127.0.0.1:{port}\n    default_backend wsgate\n\n"
        f"backend wsgate\n    balance roundrobin\n{check}{lines}"
    )


@contextlib.contextmanager
def haproxy(
    tmp_path: Path, servers: dict[str, int], health: str | None = None
) -> Iterator[HAProxy]:
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, servers, health))
    checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port(port, proc=proc)  # type: ignore[arg-type]
        yield HAProxy(port, config, proc, list(servers.values()))
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
        log.close()


def from_address(address: str) -> dict[str, object]:
    """websockets.connect() arguments for a client bound to ``address``."""
    return {"local_addr": (address, 0)}


def _behind_haproxy(wsgate: GateFactory, *args: str) -> tuple[Wsgate, int, int]:
    """A gateway on a PROXY v2 listener (for HAProxy) with ``args``; it, the
    listener's port and its backend's."""
    listen, backend_port = free_port(), free_port()
    gate = wsgate(
        "--listen",
        f"haproxy:tcp:{listen}:interface=127.0.0.1",
        "--backend",
        f"ws://127.0.0.1:{backend_port}",
        *args,
        wait_port=listen,
    )
    return gate, listen, backend_port


@needs_haproxy
def test_proxy_v2_gives_the_real_client_address(wsgate: GateFactory, tmp_path: Path) -> None:
    """The address HAProxy's PROXY v2 header carries (127.0.0.2, not HAProxy's
    127.0.0.1) is in the log and in X-Forwarded-For and Forwarded."""
    gate, listen, backend_port = _behind_haproxy(wsgate)

    async def main(port: int) -> None:
        async with backend(backend_port) as state:
            url = f"ws://127.0.0.1:{port}/real"
            async with client(url, **from_address("127.0.0.2")) as ws:
                await ws.send("who")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "who"
                seen = await state.wait_seen()
                assert seen.headers["X-Forwarded-For"] == "127.0.0.2"
                assert seen.headers["Forwarded"].startswith("for=127.0.0.2;")

    with haproxy(tmp_path, {"a": listen}) as proxy:
        asyncio.run(main(proxy.port))
    gate.wait_for_log("open tcp4:127.0.0.2:")


@needs_haproxy
@pytest.mark.single_process("max_connections_per_ip counts per worker (README, Workers)")
def test_max_connections_per_ip_counts_the_address_proxy_v2_carries(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    """Behind HAProxy, every connection comes from 127.0.0.1: the limit counts
    the real address, so 127.0.0.2's second one gets 503 and 127.0.0.3's is let in."""
    gate, listen, backend_port = _behind_haproxy(wsgate, "--max-connections-per-ip", "1")

    async def main(port: int) -> None:
        async with backend(backend_port):
            url = f"ws://127.0.0.1:{port}/real"
            async with client(url, **from_address("127.0.0.2")) as ws:
                await ws.send("who")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "who"
                with pytest.raises(InvalidStatus) as refused:
                    async with client(url, **from_address("127.0.0.2")):
                        pass
                assert refused.value.response.status_code == 503
                assert b"too many connections from 127.0.0.2" in refused.value.response.body
                async with client(url, **from_address("127.0.0.3")) as other:
                    await other.send("other")
                    async with asyncio.timeout(TIMEOUT):
                        assert await other.recv() == "other"

    with haproxy(tmp_path, {"a": listen}) as proxy:
        asyncio.run(main(proxy.port))
    gate.wait_for_log("open tcp4:127.0.0.3:")


@needs_haproxy
def test_the_shipped_haproxy_cfg_is_valid() -> None:
    shipped = Path(__file__).resolve().parent.parent / "etc" / "haproxy.cfg"
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(shipped)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- two instances, one drained --------------------------------------------------------


def instance_config(tmp_path: Path, name: str, port: int, backend_port: int) -> Path:
    config = tmp_path / f"wsgate-{name}.toml"
    config.write_text(
        f'[[listener]]\nendpoint = "haproxy:tcp:{port}:interface=127.0.0.1"\n'
        'health = "/health"\n\n'
        f'[defaults]\nadd_headers = {{ X-Instance = "{name}" }}\n\n'
        f'[[route]]\nbackend = "ws://127.0.0.1:{backend_port}"\n'
    )
    return config


@dataclass
class Talker:
    """A client that sends numbered messages and checks each echo."""

    ws: ClientConnection
    instance: str
    sent: int = 0
    echoed: list[int] = field(default_factory=list)
    close_code: int | None = None

    async def talk(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.sent += 1
                await self.ws.send(str(self.sent))
                answer = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
                self.echoed.append(int(answer))
                await asyncio.sleep(0.01)
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code


CONNECTIONS = 8


@needs_haproxy
def test_draining_one_of_two_instances_behind_haproxy(wsgate: GateFactory, tmp_path: Path) -> None:
    """Connections spread over two instances; SIGTERM to one while messages
    flow: its clients get 1001, it exits 0, new connections all reach the
    other one, and the other one's clients lose nothing."""
    backend_port = free_port()
    ports = {"a": free_port(), "b": free_port()}
    gates: dict[str, Wsgate] = {
        name: wsgate(
            "--config", str(instance_config(tmp_path, name, port, backend_port)), wait_port=port
        )
        for name, port in ports.items()
    }

    async def main(port: int) -> tuple[list[Talker], list[str]]:
        url = f"ws://127.0.0.1:{port}/drain"
        async with backend(backend_port) as state, contextlib.AsyncExitStack() as stack:
            talkers = []
            for i in range(CONNECTIONS):
                ws = await stack.enter_async_context(client(url, ping_interval=None))
                seen = await state.wait_seen(i + 1)
                talkers.append(Talker(ws, seen.headers["X-Instance"]))
            assert {t.instance for t in talkers} == {"a", "b"}
            stop = asyncio.Event()
            talking = [asyncio.ensure_future(t.talk(stop)) for t in talkers]
            await asyncio.sleep(0.3)  # messages flow on every connection
            gates["a"].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            code = await asyncio.to_thread(gates["a"].proc.wait, TIMEOUT)  # type: ignore[union-attr]
            assert code == 0
            later = []
            for _ in range(4):
                async with client(url) as ws:
                    await ws.send("new")
                    async with asyncio.timeout(TIMEOUT):
                        assert await ws.recv() == "new"
                later.append(state.seen[-1].headers["X-Instance"])
            await asyncio.sleep(0.3)  # the survivors keep talking
            stop.set()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*talking)
            return talkers, later

    started = time.monotonic()
    with haproxy(tmp_path, {"a": ports["a"], "b": ports["b"]}, health="/health") as proxy:
        time.sleep(0.5)  # a first round of health checks: both up
        talkers, later = asyncio.run(main(proxy.port))
    print(f"two-instance drain: {time.monotonic() - started:.1f} s")
    assert later == ["b"] * 4
    for talker in talkers:
        assert talker.echoed == list(range(1, len(talker.echoed) + 1)), "out of order or lost"
        if talker.instance == "a":
            assert talker.close_code == 1001
        else:
            assert talker.close_code is None  # still open when the test stopped it
            assert len(talker.echoed) == talker.sent > 10
    assert "drained: " in gates["a"].log()
