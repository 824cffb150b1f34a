"""``request_timeout``: how long a client may take over its request head."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from wsgate._config import ConfigError, Listener
from wsgate._configfile import load_file
from wsgate._frontend import FrontendFactory
from wsgate._liveroutes import ListenerRoutes
from wsgate._routing import Router
from wsgate.tap import Options
from wsgate.testing import GateFactory, free_port

_LISTENER = '[[listener]]\nendpoint = "tcp:8080"\n'
_ROUTE = '[[route]]\nbackend = "ws://127.0.0.1:9000"\n'


def _load(tmp_path: Path, listener_extra: str) -> object:
    path = tmp_path / "wsgate.toml"
    path.write_text(_LISTENER + listener_extra + _ROUTE)
    return load_file(str(path))


def test_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    (listener,) = _load(tmp_path, "").listeners  # type: ignore[attr-defined]
    assert listener.request_timeout == 30
    (listener,) = _load(tmp_path, "request_timeout = 2.5\n").listeners  # type: ignore[attr-defined]
    assert listener.request_timeout == 2.5
    options = Options()
    options.parseOptions(
        ["--backend", "ws://h", "-l", "tcp:1", "-l", "tcp:2", "--request-timeout", "4"]
    )
    assert [x.request_timeout for x in options["config"].listeners] == [4, 4]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "0 must be a positive number of seconds"), ('"soon"', "'soon' is not a number")],
)
def test_mistakes_name_the_listener_and_key(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, f"request_timeout = {value}\n")
    assert re.search(r"\[\[listener\]\] #1: request_timeout: " + expected, str(error.value))
    with pytest.raises(usage.UsageError, match="--request-timeout: "):
        Options().parseOptions(["--backend", "ws://h", "--request-timeout", value.strip('"')])
    with pytest.raises(usage.UsageError, match="cannot be combined with --request-timeout"):
        Options().parseOptions(["--config", "x.toml", "--request-timeout", "3"])


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None  # as TCP transports do: no error when none is registered


def _connection(clock: MemoryReactorClock, seconds: float) -> StringTransport:
    listener = Listener(endpoint="tcp:0", name="test", request_timeout=seconds)
    factory = FrontendFactory(ListenerRoutes(listener, Router([]), ()), clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    return transport


@pytest.mark.parametrize("seconds", [0.5, 2.0, 30.0])
def test_the_deadline_is_the_listener_s(seconds: float) -> None:
    clock = MemoryReactorClock()
    transport = _connection(clock, seconds)
    clock.advance(seconds - 0.01)
    assert not transport.disconnecting and not transport.disconnected
    clock.advance(0.02)
    assert transport.disconnected or transport.disconnecting
    assert transport.value() == b""  # dropped, no answer to a head that never ended


async def _closed_after(port: int, send: bytes) -> float:
    """Seconds until wsgate closes a connection that sent only ``send``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(send)
    # Dropped with a RST: closed all the same.
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(TIMEOUT):
            await reader.read()
    writer.close()
    return time.monotonic() - start


def test_an_unfinished_head_is_dropped_at_the_deadline(wsgate: GateFactory) -> None:
    be = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{be}", "--request-timeout", "0.5")

    async def main() -> None:
        async with backend(be):
            took = await _closed_after(gate.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
            assert 0.4 < took < 3, took  # the default was 30 s
            # A client that finishes in time is served.
            async with client(gate.url) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"

    asyncio.run(main())


@pytest.mark.slow
def test_slowloris_is_dropped_and_fresh_clients_served(wsgate: GateFactory) -> None:
    """500 clients trickle their heads a byte at a time; each is dropped at
    request_timeout, and a client that comes meanwhile gets through."""
    be, attackers, timeout = free_port(), 500, 2.0
    gate = wsgate("--backend", f"ws://127.0.0.1:{be}", "--request-timeout", str(timeout))
    head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: " + b"a" * 1000

    async def trickle() -> tuple[float, float]:
        """Seconds until the drop, counted from before the connect (wsgate's
        deadline cannot start earlier) and from the connect's end (a busy
        machine may take a while to hand the client its connection)."""
        connecting = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
        start = time.monotonic()
        try:
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(0.2):
                        if await reader.read(1) == b"":
                            break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("the whole head trickled in without a drop")
        except ConnectionError:
            pass
        finally:
            writer.close()
        end = time.monotonic()
        return end - connecting, end - start

    async def main() -> None:
        async with backend(be):
            attack = [asyncio.create_task(trickle()) for _ in range(attackers)]
            await asyncio.sleep(timeout / 2)
            fresh = time.monotonic()
            async with client(gate.url, open_timeout=timeout) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert time.monotonic() - fresh < timeout
            async with asyncio.timeout(TIMEOUT):
                drops = await asyncio.gather(*attack)
            at_least = [since_connecting for since_connecting, _ in drops]
            at_most = [since_connected for _, since_connected in drops]
            assert min(at_least) > timeout - 0.5, min(at_least)
            assert max(at_most) < timeout + 3, max(at_most)
            dropped_after = at_most
            print(
                f"{attackers} slowloris clients dropped after "
                f"{min(dropped_after):.2f}-{max(dropped_after):.2f} s"
            )

    asyncio.run(main())
    assert "Traceback" not in gate.log()
