"""Graceful drain: the bookkeeping on a Clock, then SIGTERM to a real twistd."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from rawws import raw_handshake
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed

from wsgate._drain import Connections, DrainingService
from wsgate.testing import GateFactory, Wsgate, free_port


class Conn:
    def __init__(self, connections: Connections, grace: float | None) -> None:
        self.connections = connections
        self.grace = grace
        self.asked = False
        self.dropped = False
        connections.add(self)

    def go_away(self) -> float | None:
        self.asked = True
        return self.grace

    def drop(self) -> None:
        self.dropped = True

    def closed(self) -> None:
        self.connections.discard(self)


def test_drain_asks_every_connection_and_ends_when_they_are_gone() -> None:
    clock, connections = Clock(), Connections()
    a, b = Conn(connections, 30), Conn(connections, 30)
    result = []
    draining = asyncio_free(connections.drain(clock), result)
    assert connections.draining and a.asked and b.asked
    a.closed()
    assert not result
    b.closed()
    assert result == [(2, 0)]
    assert clock.getDelayedCalls() == []  # the deadline timer is cancelled
    assert not a.dropped and not b.dropped
    del draining


def test_a_connection_still_open_at_its_deadline_is_dropped_and_counted() -> None:
    clock, connections = Clock(), Connections()
    quick, slow, early = Conn(connections, 1), Conn(connections, 30), Conn(connections, None)
    result: list[tuple[int, int]] = []
    asyncio_free(connections.drain(clock), result)
    assert early.dropped  # nothing to close gracefully: dropped at once
    clock.advance(1)
    assert quick.dropped and not slow.dropped
    clock.advance(28)
    assert not result
    slow.closed()
    assert result == [(3, 2)]


def test_the_last_connection_dropped_at_its_deadline_is_counted() -> None:
    """The last discard resumes the drain synchronously: count before it."""
    clock, connections = Clock(), Connections()
    conn = Conn(connections, 1)
    result: list[tuple[int, int]] = []
    asyncio_free(connections.drain(clock), result)
    clock.advance(1)
    assert conn.dropped and result == [(1, 1)]


def test_drop_all_ends_a_drain_at_once() -> None:
    clock, connections = Clock(), Connections()
    a = Conn(connections, 30)
    result: list[tuple[int, int]] = []
    asyncio_free(connections.drain(clock), result)
    assert connections.drop_all() == 1
    assert a.dropped and result == [(1, 0)]


@pytest.mark.parametrize("second_signal", [True, False])
def test_only_a_process_that_owns_its_signals_takes_one_during_the_drain(
    second_signal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process installs its second-signal handler for the drain (and puts
    the old one back); a worker, whose own handler already tells the
    supervisor's request from a signal, installs nothing: a handler of the
    drain's would take the first SIGTERM after the request for a second."""
    installed: list[int] = []
    monkeypatch.setattr(signal, "signal", lambda number, handler: installed.append(number))
    process = DrainingService(Connections(), Clock())
    process.second_signal = second_signal
    process.startService()
    process.stopService()
    expected = [signal.SIGTERM, signal.SIGINT] * 2 if second_signal else []
    assert installed == expected


def test_nothing_open_drains_at_once() -> None:
    result: list[tuple[int, int]] = []
    asyncio_free(Connections().drain(Clock()), result)
    assert result == [(0, 0)]


def asyncio_free(coroutine: object, into: list[tuple[int, int]]) -> object:
    """Run a Twisted coroutine (it awaits only Deferreds) without a loop."""
    from twisted.internet import defer

    d = defer.ensureDeferred(coroutine)  # type: ignore[call-overload]
    d.addCallback(into.append)
    return d


# -- end to end ----------------------------------------------------------------


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def summed(log: str, pattern: str) -> tuple[int, ...]:
    """``pattern``'s figures, each summed over the lines that say it: one
    process logs one line, each worker of a ``--workers`` tree its own."""
    found = re.findall(pattern, log)
    assert found, f"no line matches {pattern!r}:\n{log}"
    rows = [row if isinstance(row, tuple) else (row,) for row in found]
    return tuple(sum(int(figure) for figure in column) for column in zip(*rows, strict=True))


def exit_code(gate: Wsgate, within: float = TIMEOUT) -> int:
    assert gate.proc is not None
    return gate.proc.wait(within)


def test_sigterm_closes_the_listener_at_once_and_both_legs_get_1001(wsgate: GateFactory) -> None:
    port = free_port()
    # A client that never answers the close keeps the drain going for
    # close_timeout, long enough to see the listener closed meanwhile.
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--close-timeout", "3")
    assert gate.proc is not None

    async def main() -> tuple[list[int | None], list[int | None], bool, float]:
        async with backend(port) as state:
            clients = [await client(gate.url).__aenter__() for _ in range(2)]
            _reader, writer = await raw_handshake(gate.port)
            await state.wait_seen(3)
            for ws in clients:
                await ws.send("hello")
                assert await ws.recv() == "hello"
            asked = time.monotonic()
            gate.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            codes = []
            for ws in clients:
                async with asyncio.timeout(TIMEOUT):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.recv()
                codes.append(ws.close_code)
            closed_listener = await asyncio.to_thread(refused, gate.port)
            async with asyncio.timeout(TIMEOUT):
                for seen in state.seen:
                    await seen.closed.wait()
            returncode = await asyncio.to_thread(exit_code, gate)
            took = time.monotonic() - asked
            writer.close()
            assert returncode == 0
            return codes, [s.close_code for s in state.seen], closed_listener, took

    client_codes, backend_codes, closed_listener, took = asyncio.run(main())
    assert client_codes == [1001, 1001]
    assert backend_codes == [1001, 1001, 1001]
    assert closed_listener
    log = gate.log()
    assert summed(log, r"listeners closed, (\d+) connection\(s\) asked to go away") == (3,)
    assert summed(log, r"drained: (\d+) connection\(s\) closed, (\d+) dropped") == (3, 0)
    assert took < 3 + 5, took


def test_drain_timeout_drops_what_is_left_and_exits_0(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate(
        "--backend", f"ws://127.0.0.1:{port}", "--close-timeout", "60", "--drain-timeout", "1"
    )
    assert gate.proc is not None

    async def main() -> float:
        async with backend(port) as state:
            _reader, writer = await raw_handshake(gate.port)
            await state.wait_seen()
            asked = time.monotonic()
            gate.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert await asyncio.to_thread(exit_code, gate) == 0
            writer.close()
            return time.monotonic() - asked

    took = asyncio.run(main())
    assert 1 <= took < 1 + 5, took
    assert "drained: 0 connection(s) closed, 1 dropped" in gate.log()


def test_a_second_sigterm_exits_at_once(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate(
        "--backend", f"ws://127.0.0.1:{port}", "--close-timeout", "60", "--drain-timeout", "60"
    )
    assert gate.proc is not None

    async def main() -> float:
        async with backend(port) as state:
            _reader, writer = await raw_handshake(gate.port)
            await state.wait_seen()
            gate.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await wait_for_line(gate, "draining: listeners closed")
            asked = time.monotonic()
            gate.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
            assert await asyncio.to_thread(exit_code, gate) == 0
            writer.close()
            return time.monotonic() - asked

    took = asyncio.run(main())
    assert took < 5, took
    assert summed(gate.log(), r"draining: second signal, (\d+) connection\(s\) dropped") == (1,)


def test_a_request_already_accepted_while_draining_gets_503(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    """A health check (or upgrade) connected before the drain still gets an
    answer: 503, "draining"."""
    port = free_port()
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f'[[listener]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\nhealth = "/health"\n'
        '[[route]]\nbackend = "ws://127.0.0.1:9"\n'
    )
    gate = wsgate("--config", str(config), wait_port=port)
    assert gate.proc is not None
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        time.sleep(0.2)  # accepted by wsgate (no way to observe that from here)
        gate.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while "draining: listeners closed" not in gate.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b'{"status": "draining"}' in answer
    assert exit_code(gate) == 0


async def wait_for_line(gate: Wsgate, text: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while text not in gate.log():
            await asyncio.sleep(0.02)


def test_stop_without_connections_is_quick(wsgate: GateFactory) -> None:
    gate = wsgate("--backend", "ws://127.0.0.1:9")
    started = time.monotonic()
    assert gate.stop() == 0
    assert time.monotonic() - started < 5
    # (wait_for_port's own probe connection may still be counted as open)
    assert re.search(r"drained: [01] connection\(s\) closed, 0 dropped", gate.log())
