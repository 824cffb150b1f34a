"""Local resources: running out of file descriptors is wsgate's problem, not
the backend's; and thousands of connections leave no descriptor behind.

The pure tests check the failure mapping with the exceptions Twisted raises;
the end-to-end ones run wsgate under a small descriptor limit, and through
20,000 connection cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from rawws import upgrade_request
from twisted.internet import defer, error
from twisted.python.failure import Failure
from websockets.exceptions import InvalidMessage, InvalidStatus

from wsgate._connect import BackendError, connect_failure
from wsgate._limits import ThrottledObserver
from wsgate.testing import GateFactory, Wsgate, free_port

URL = "ws://127.0.0.1:9000"


def _mapped(exc: BaseException) -> BackendError:
    with pytest.raises(BackendError) as raised:
        connect_failure(Failure(exc), URL)
    return raised.value


@pytest.mark.parametrize(
    "exc",
    [
        # tcp.BaseClient when socket() fails: ConnectBindError(errno, text)
        error.ConnectBindError(errno.EMFILE, "Too many open files"),
        error.ConnectBindError(errno.ENFILE, "Too many open files in system"),
        error.ConnectBindError(errno.ENOBUFS, "No buffer space available"),
        # a failed connect(): getConnectError((errno, text))
        error.getConnectError((errno.EADDRNOTAVAIL, "Cannot assign requested address")),
        error.getConnectError((errno.EMFILE, "Too many open files")),
        OSError(errno.EMFILE, "Too many open files"),
    ],
)
def test_local_shortage_is_503_and_not_the_backends_fault(exc: BaseException) -> None:
    mapped = _mapped(exc)
    assert mapped.status == 503
    assert mapped.local
    # Not retryable: the failover loop neither tries the next backend nor
    # marks this one failed.
    assert not mapped.retryable
    assert mapped.backend == URL
    assert "out of local resources" in mapped.reason


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (error.ConnectionRefusedError(), 502),
        (error.getConnectError((errno.EHOSTUNREACH, "No route to host")), 502),
        (error.TCPTimedOutError(), 502),
        (error.TimeoutError(), 504),
    ],
)
def test_backend_failures_still_count(exc: BaseException, status: int) -> None:
    mapped = _mapped(exc)
    assert mapped.status == status and mapped.retryable and not mapped.local


def test_cancel_passes_through() -> None:
    failure = Failure(defer.CancelledError())
    assert connect_failure(failure, URL) is failure


def test_throttled_observer_passes_one_event_a_second() -> None:
    seen: list[dict[str, object]] = []
    throttled = ThrottledObserver(seen.append, interval=1.0)
    for n in range(100):  # 100 events over 5 s
        throttled({"log_format": "accept failed {n}", "n": n, "log_time": 1000.0 + n * 0.05})
    assert len(seen) == 5
    assert [e["n"] for e in seen] == [0, 20, 40, 60, 80]
    assert seen[1]["wsgate_suppressed"] == 19
    assert "held back" in str(seen[1]["log_format"])


def test_raise_nofile_limit_in_a_child() -> None:
    # In a child process: the test run's own limit stays as it is.
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256))\n"
        "from wsgate._limits import raise_nofile_limit\n"
        "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "(256, 256) (256, 256)"


class _LimitedWsgate(Wsgate):
    """wsgate started with RLIMIT_NOFILE (soft, hard) set before twistd runs."""

    limits = (128, 256)

    def command(self) -> list[str]:
        command = super().command()
        assert command[1] == "-c"
        soft, hard = self.limits
        command[2] = (
            f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
            + command[2]
        )
        return command


def _http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("hard", [256, 257])  # either parity of descriptors left over
def test_out_of_descriptors_is_503_and_the_backend_stays_healthy(tmp_path: Path, hard: int) -> None:
    be, listen = free_port(), free_port()
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"
health = "/healthz"

[[route]]
prefix = "/"
backend = "ws://127.0.0.1:{be}"
max_fails = 1
fail_timeout = 30
"""
    )
    gate = _LimitedWsgate("--config", str(config), log_path=tmp_path / "wsgate.log")
    gate.limits = (128, hard)
    gate.port = listen
    url = f"ws://127.0.0.1:{listen}/"
    held: list[object] = []
    raw: list[socket.socket] = []

    async def main() -> None:
        async with backend(be, compression=None):
            gate.start(wait_port=listen)
            try:
                await exhaust()
            finally:
                for ws in held:
                    await ws.close()  # type: ignore[attr-defined]
                for s in raw:
                    s.close()
            # Recovery: with the connections gone, a fresh client is served.
            async with client(url, compression=None) as ws:
                await ws.send("back")
                assert await ws.recv() == "back"

    async def exhaust() -> None:
        for _ in range(300):  # the hard limit is 256: two descriptors per connection
            try:
                held.append(await client(url, compression=None))
            except InvalidStatus as e:
                # One descriptor was left: the client's; its backend connect ran out.
                assert e.response.status_code == 503, e.response
                break
            except InvalidMessage:
                # None was left: accept() failed and Twisted closed the connection.
                # Each relayed connection takes two descriptors: leave one free,
                # so the next client is accepted and its backend connect runs out.
                await held.pop().close()  # type: ignore[attr-defined]
                await asyncio.sleep(0.3)
                raw.append(socket.create_connection(("127.0.0.1", listen), timeout=TIMEOUT))
                break
        else:
            raise AssertionError("never ran out of descriptors")
        await asyncio.sleep(0.3)
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                await client(url, compression=None)
            response = refused.value.response
            assert response.status_code == 503, response
            assert 1 <= int(response.headers["Retry-After"]) <= 5
            await asyncio.sleep(0.3)  # wsgate closes its side of the refused one
        # Now take the last descriptor too, so that accept() itself fails for
        # a while: its errors must not flood the log.
        raw.append(socket.create_connection(("127.0.0.1", listen), timeout=TIMEOUT))
        started = time.monotonic()
        for _ in range(100):
            with contextlib.suppress(OSError):
                raw.append(socket.create_connection(("127.0.0.1", listen), timeout=TIMEOUT))
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)
        accept_lines = [line for line in gate.log().splitlines() if "internet.tcp.Port" in line]
        assert 1 <= len(accept_lines) <= elapsed + 2, accept_lines
        for s in raw:
            s.close()
        raw.clear()
        await asyncio.sleep(0.3)
        status, _, body = await asyncio.to_thread(_http_get, listen, "/healthz")
        assert status == 200
        health = json.loads(body)
        (be_status,) = health["routes"][0]["backends"]
        assert be_status["fails"] == 0 and be_status["state"] == "up", health
        assert health["status"] == "ok"

    try:
        asyncio.run(main())
    finally:
        gate.stop()
    log = gate.log()
    assert f"file descriptors: soft limit raised from 128 to {hard} (the hard limit)" in log
    assert "out of local resources (EMFILE)" in log
    assert "Traceback" not in log


def _open_fds(gate: Wsgate) -> int:
    """Descriptors open in the processes that serve (each worker of a tree)."""
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in gate.serving_pids())


_CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked close 1000, zero mask


async def _cycle(port: int) -> None:
    """Open a WebSocket through wsgate, one message there and back, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upgrade_request())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        writer.write(b"\x82\x85\x00\x00\x00\x00hello")
        assert await reader.readexactly(7) == b"\x82\x05hello"
        writer.write(_CLOSE)
        assert (await reader.readexactly(2))[0] == 0x88
        await reader.read()  # to the server's EOF
    finally:
        writer.close()


@pytest.mark.slow
def test_20000_connection_cycles_leave_no_descriptor(wsgate: GateFactory) -> None:
    be = free_port()
    cycles, concurrency = 20_000, 8

    async def main() -> None:
        async with backend(be, compression=None):
            gate = wsgate("--backend", f"ws://127.0.0.1:{be}")
            for _ in range(concurrency):  # warm-up: lazily opened files, pools
                await _cycle(gate.port)
            await asyncio.sleep(0.5)
            baseline = _open_fds(gate)
            left = iter(range(cycles))

            async def worker() -> None:
                for _ in left:
                    async with asyncio.timeout(TIMEOUT):
                        await _cycle(gate.port)

            started = time.monotonic()
            async with asyncio.timeout(300):
                await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            print(f"{cycles} cycles in {elapsed:.1f} s; fds before {baseline}", end="")
            async with asyncio.timeout(TIMEOUT):
                while (now := _open_fds(gate)) > baseline:
                    await asyncio.sleep(0.1)
            print(f", after {now}")
            assert now <= baseline
            assert "Traceback" not in gate.log()

    asyncio.run(main())


def test_a_cancelled_connect_is_a_cancel_not_a_502() -> None:
    # What an endpoint fails with when its connect is cancelled (the client
    # went away): not the backend's fault, nothing to try next.
    failure = Failure(error.ConnectingCancelledError(None))
    with pytest.raises(defer.CancelledError):
        connect_failure(failure, URL)
