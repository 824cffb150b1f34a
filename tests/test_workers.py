"""``--workers N``: a supervisor, its workers and real clients over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.request import urlopen

import pytest
from peers import TIMEOUT, backend, client
from rawws import raw_handshake, upgrade_request
from websockets.exceptions import ConnectionClosed

from wsgate._config import ConfigError, parse_workers
from wsgate._gathered import merge, page, retire
from wsgate.testing import GateFactory, TlsFiles, Wsgate, free_port, wait_for_port

HANDSHAKE = upgrade_request(b"/e", b"gw.example")
PING_TEXT = bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi"  # masked (zero mask) text "hi"


# -- values ---------------------------------------------------------------------


def test_workers_takes_a_whole_number_of_at_least_one_or_auto() -> None:
    assert parse_workers(3, "workers") == 3
    assert parse_workers("2", "--workers") == 2
    assert parse_workers("auto", "--workers") == len(os.sched_getaffinity(0))
    for bad in (0, -1, "0", "-2", "two", "1.5", True, 2.0, None):
        with pytest.raises(ConfigError) as raised:
            parse_workers(bad, "--workers")
        message = str(raised.value)
        assert message.startswith(f"--workers: {bad!r} is not a number of workers"), message
        assert 'valid: a whole number of at least 1, or "auto"' in message


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_workers_option_is_named_with_what_is_valid(value: str) -> None:
    gate = Wsgate("--backend", "ws://127.0.0.1:9", f"--workers={value}")
    done = subprocess.run(gate.command(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert f"--workers: {value!r} is not a number of workers; valid: a whole number" in err, err
    assert "Traceback" not in err


def test_a_bad_workers_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.toml"
    path.write_text(
        'workers = "many"\n[[listener]]\nendpoint = "tcp:0"\n'
        '[[route]]\nbackend = "ws://127.0.0.1:9"\n'
    )
    gate = Wsgate("--config", str(path), "--check")
    done = subprocess.run(gate.command(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 1
    assert f"{path}: top level: workers: 'many' is not a number of workers" in done.stderr.decode()


def test_metrics_of_the_workers_are_summed() -> None:
    one = (
        "# HELP wsgate_connections_total WebSocket connections opened.\n"
        "# TYPE wsgate_connections_total counter\n"
        'wsgate_connections_total{route="a"} 3.0\n'
        "# HELP wsgate_draining 1 once a drain (SIGTERM) started.\n"
        "# TYPE wsgate_draining gauge\n"
        "wsgate_draining 0.0\n"
        "# HELP process_start_time_seconds Start time.\n"
        "# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds 200.0\n"
    )
    two = one.replace(" 3.0\n", ' 4.0\nwsgate_connections_total{route="b"} 1.0\n')
    two = two.replace("draining 0.0", "draining 1.0").replace("200.0", "100.0")
    families = {f.name: f for f in merge([one, two])}
    samples = {
        (s.name, tuple(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    assert samples == {
        ("wsgate_connections_total", (("route", "a"),)): 7.0,
        ("wsgate_connections_total", (("route", "b"),)): 1.0,
        ("wsgate_draining", ()): 1.0,
        ("process_start_time_seconds", ()): 100.0,
    }
    assert b"wsgate_workers 2.0" in page([one, two])
    # A worker that ended leaves its counters (not its gauges) in the sums.
    retired = retire(retire("", one), two)
    assert "wsgate_draining" not in retired and "process_start_time" not in retired
    text = page([one], retired).decode()
    assert 'wsgate_connections_total{route="a"} 10.0' in text
    assert 'wsgate_connections_total{route="b"} 1.0' in text
    assert "wsgate_draining 0.0" in text and "wsgate_workers 1.0" in text


# -- helpers --------------------------------------------------------------------


def worker_pids(gate: Wsgate) -> list[int]:
    """The workers' pids, once the supervisor says they started (its socket
    is bound, so wait_for_port returns, before they start)."""
    found = asyncio.run(wait_for_line(gate, r"workers: \d+ started \(pids ([\d ]+)\)"))
    return [int(p) for p in found.group(1).split()]


def opened_by_worker(gate: Wsgate) -> Counter[str]:
    return Counter(re.findall(r"worker (\d+)\] open ", gate.log()))


async def wait_for_line(gate: Wsgate, pattern: str) -> re.Match[str]:
    async with asyncio.timeout(TIMEOUT):
        while (found := re.search(pattern, gate.log())) is None:
            await asyncio.sleep(0.02)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def scrape(port: int) -> dict[str, float]:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as answer:
        text = answer.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def hold_until_both_workers(gate: Wsgate, most: int = 200) -> list[object]:
    """Open connections (and keep them) until both workers have some."""
    held: list[object] = []
    while len(set(opened_by_worker(gate))) < 2:
        assert len(held) < most, opened_by_worker(gate)
        batch = [await client(gate.url + "/e").__aenter__() for _ in range(5)]
        for ws in batch:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        held += batch
        await asyncio.sleep(0.05)  # the workers' open lines reach the log
    return held


# -- end to end -----------------------------------------------------------------


def test_connections_spread_over_the_workers_and_metrics_sum_them(wsgate: GateFactory) -> None:
    port, metrics = free_port(), free_port()
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--workers",
        "2",
        "--metrics",
        f"tcp:{metrics}:interface=127.0.0.1",
    )

    async def main() -> int:
        async with backend(port):
            held = await hold_until_both_workers(gate)
            for ws in held:
                await ws.close()  # type: ignore[attr-defined]
            return len(held)

    opened = asyncio.run(main())
    assert len(worker_pids(gate)) == 2
    by_worker = opened_by_worker(gate)
    assert set(by_worker) == {"1", "2"} and sum(by_worker.values()) == opened
    figures = scrape(metrics)
    assert figures["wsgate_workers"] == 2
    assert figures['wsgate_connections_total{route="--backend"}'] == opened
    key = 'wsgate_messages_total{direction="in",leg="client",route="--backend"}'
    assert figures[key] == opened


def test_a_worker_that_dies_is_started_again(wsgate: GateFactory) -> None:
    port, metrics = free_port(), free_port()
    gate = wsgate(
        *("--backend", f"ws://127.0.0.1:{port}", "--workers", "2"),
        *("--metrics", f"tcp:{metrics}:interface=127.0.0.1"),
    )
    assert gate.proc is not None
    first, second = worker_pids(gate)
    opened = 'wsgate_connections_total{route="--backend"}'

    async def main() -> tuple[int, int]:
        async with backend(port):
            for ws in await hold_until_both_workers(gate):
                await ws.close()  # type: ignore[attr-defined]
            before = int(scrape(metrics)[opened])
            os.kill(first, signal.SIGKILL)
            found = await wait_for_line(gate, r"worker 1 \(pid (\d+)\) started")
            for _ in range(4):
                async with client(gate.url + "/e") as ws:
                    await ws.send("again")
                    assert await ws.recv() == "again"
        # The dead worker's count stays in the sum: it never falls.
        assert scrape(metrics)[opened] == before + 4
        return int(found.group(1)), before

    replacement, _ = asyncio.run(main())
    assert replacement not in (first, second) and alive(replacement) and alive(second)
    assert gate.proc.poll() is None
    assert re.search(rf"worker 1 \(pid {first}\) ended unexpectedly .*signal 9", gate.log())


def test_sigterm_drains_every_worker_and_exits_0(wsgate: GateFactory) -> None:
    """SIGTERM to every process of the tree (as a terminal's Ctrl-C or
    systemd's default KillMode do) and the supervisor's own request to the
    workers are one drain, without tracebacks."""
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--workers", "2")
    assert gate.proc is not None
    pids = worker_pids(gate)

    async def main() -> tuple[list[int | None], int]:
        async with backend(port):
            held = await hold_until_both_workers(gate)
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            gate.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            codes = []
            for ws in held:
                async with asyncio.timeout(TIMEOUT):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.recv()  # type: ignore[attr-defined]
                codes.append(ws.close_code)  # type: ignore[attr-defined]
            return codes, await asyncio.to_thread(gate.proc.wait, TIMEOUT)  # type: ignore[union-attr]

    codes, returncode = asyncio.run(main())
    assert codes and set(codes) == {1001}
    assert returncode == 0
    log = gate.log()
    assert "draining: 2 worker(s) asked to drain" in log
    assert len(re.findall(r"drained: \d+ connection\(s\) closed, 0 dropped", log)) == 2
    assert "Traceback" not in log
    assert not any(alive(pid) for pid in pids)


@pytest.mark.slow
def test_sighup_under_load_drops_nothing_and_a_broken_file_is_refused_by_all(
    tmp_path: Path, wsgate: GateFactory
) -> None:
    port, listen, added = free_port(), free_port(), free_port()
    path = tmp_path / "wsgate.toml"

    def write(listeners: list[int], extra: str = "") -> None:
        text = "workers = 2\n" + extra
        for p in listeners:
            text += f'[[listener]]\nendpoint = "tcp:{p}:interface=127.0.0.1"\n'
        path.write_text(text + f'[[route]]\nbackend = "ws://127.0.0.1:{port}"\n')

    write([listen])
    gate = wsgate("--config", str(path), wait_port=listen)
    url = f"ws://127.0.0.1:{listen}/e"

    async def talker(ws: object, stop: asyncio.Event) -> int:
        sent = 0
        while not stop.is_set():
            await ws.send(f"m{sent}")  # type: ignore[attr-defined]
            assert await ws.recv() == f"m{sent}"  # type: ignore[attr-defined]
            sent += 1
        return sent

    async def main() -> list[int]:
        async with backend(port):
            gate.url = f"ws://127.0.0.1:{listen}"
            held = await hold_until_both_workers(gate)
            stop = asyncio.Event()
            talking = [asyncio.create_task(talker(ws, stop)) for ws in held]
            await asyncio.sleep(0.3)
            write([listen, added])
            gate.reload()
            await wait_for_line(gate, r"reload: .* applied by 2 worker\(s\)")
            # Each worker serves the new listener.
            async with client(f"ws://127.0.0.1:{added}/e") as ws:
                await ws.send("new")
                assert await ws.recv() == "new"
            write([listen, added], extra="workers_typo = 1\n")
            gate.reload()
            await wait_for_line(gate, r"reload: .* refused, the running configuration stays")
            await asyncio.sleep(0.3)
            stop.set()
            counts = await asyncio.gather(*talking)
            for ws in held:
                assert ws.close_code is None  # type: ignore[attr-defined]
                await ws.close()  # type: ignore[attr-defined]
            async with client(url) as ws:
                await ws.send("still")
                assert await ws.recv() == "still"
            return counts

    counts = asyncio.run(main())
    assert all(count > 0 for count in counts)
    log = gate.log()
    assert len(re.findall(r"reload: .* applied: 2 listener\(s\)", log)) == 2  # each worker's line
    assert log.count("refused, the running configuration stays") == 1  # the supervisor's only


def test_a_port_in_use_stops_the_start_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gate = Wsgate(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--backend",
            "ws://127.0.0.1:9",
            "--workers",
            "2",
        )
        done = subprocess.run(gate.command(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 1
    out = done.stdout.decode() + done.stderr.decode()
    assert f"wsgate: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in out, out
    assert "worker" not in out


async def _talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes) -> bytes:
    writer.write(prefix + HANDSHAKE + PING_TEXT)
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        echo = await reader.readexactly(4)
    writer.close()
    return echo


def test_every_endpoint_kind_is_served_by_the_workers(
    tmp_path: Path, tls_files: TlsFiles, wsgate: GateFactory
) -> None:
    port, plain, secure, proxied = free_port(), free_port(), free_port(), free_port()
    sock = tmp_path / "wsgate.sock"
    gate = wsgate(
        "--listen",
        f"tcp:{plain}:interface=127.0.0.1",
        "--listen",
        f"unix:{sock}",
        "--listen",
        f"ssl:{secure}:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}",
        "--listen",
        f"haproxy:tcp:{proxied}:interface=127.0.0.1",
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--workers",
        "2",
        wait_port=plain,
    )
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    worker_pids(gate)

    async def main() -> None:
        async with backend(port):
            for _ in range(3):
                assert await _talk(*await asyncio.open_connection("127.0.0.1", plain), b"") == (
                    b"\x81\x02hi"
                )
                assert await _talk(*await asyncio.open_unix_connection(str(sock)), b"") == (
                    b"\x81\x02hi"
                )
                opened = await asyncio.open_connection(
                    "127.0.0.1", secure, ssl=context, server_hostname="localhost"
                )
                assert await _talk(*opened, b"") == b"\x81\x02hi"
                proxy = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 8080\r\n"
                opened = await asyncio.open_connection("127.0.0.1", proxied)
                assert await _talk(*opened, proxy) == b"\x81\x02hi"

    asyncio.run(main())
    asyncio.run(wait_for_line(gate, r"worker \d\] open tcp4:198\.51\.100\.7:40000 "))
    assert gate.stop() == 0
    assert not sock.exists()  # the supervisor's socket file goes with it


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-socket-activate"), reason="needs systemd-socket-activate"
)
def test_systemd_sockets_are_served_by_the_workers(tmp_path: Path) -> None:
    port, listen = free_port(), free_port()
    gate = Wsgate(
        "--listen",
        "systemd:domain=INET:index=0",
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--workers",
        "2",
    )
    log_path = tmp_path / "wsgate.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "--fdname=wsgate",
                "-l",
                f"127.0.0.1:{listen}",
                *gate.command(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(listen, proc=proc)
            deadline = time.monotonic() + TIMEOUT
            while "workers: 2 started" not in log_path.read_text():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)

            async def main() -> None:
                async with backend(port):
                    for _ in range(6):
                        opened = await asyncio.open_connection("127.0.0.1", listen)
                        assert await _talk(*opened, b"") == b"\x81\x02hi"

            asyncio.run(main())
        finally:
            proc.terminate()
            proc.wait(TIMEOUT)
    text = log_path.read_text()
    assert "workers: 2 started" in text
    assert re.search(r"worker \d\] open ", text), text
    assert proc.returncode == 0


_ONLY_IN_TWISTD = """
import sys

from zope.interface import implementer

from wsgate.interfaces import IAuthenticator


@implementer(IAuthenticator)
class Auth:
    def __init__(self) -> None:
        # The supervisor (twistd) checks the configuration; its workers fail.
        if "twisted.scripts.twistd" not in sys.modules:
            raise RuntimeError("cannot read /etc/secret")

    def authenticate(self, request):
        return None
"""


def _workers_of(marker: str) -> list[int]:
    """Worker processes still running whose arguments contain ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                if b"wsgate._worker" in cmdline and marker.encode() in cmdline:
                    found.append(int(name))
    return found


def test_a_worker_that_cannot_start_stops_the_whole_service(tmp_path: Path) -> None:
    (tmp_path / "onlyparent.py").write_text(_ONLY_IN_TWISTD)
    backend_url = f"ws://127.0.0.1:{free_port()}"
    gate = Wsgate("--backend", backend_url, "--workers", "2", "--auth", "onlyparent:Auth")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run(gate.command(), capture_output=True, timeout=TIMEOUT * 3, env=env)
    assert done.returncode == 1
    out = done.stdout.decode() + done.stderr.decode()
    assert re.search(r"wsgate: worker [12] of 2 could not start: RuntimeError: cannot read", out)
    assert "workers: 2 started" not in out
    assert _workers_of(backend_url) == []


def test_the_pid_file_names_the_supervisor(tmp_path: Path) -> None:
    pidfile = tmp_path / "twistd.pid"
    gate = Wsgate("--backend", "ws://127.0.0.1:9", "--workers", "2", log_path=tmp_path / "log")
    run = "from twisted.scripts.twistd import run; run()"
    command = [sys.executable, "-c", run, "-n", f"--pidfile={pidfile}", "wsgate", *gate.args]
    with open(tmp_path / "log", "wb") as out:
        gate.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(gate.port, proc=gate.proc)
            workers = worker_pids(gate)
            assert int(pidfile.read_text()) == gate.proc.pid
            assert gate.proc.pid not in workers
        finally:
            assert gate.stop() == 0
    assert not pidfile.exists()


async def _eight_held_through_a_sigterm(
    gate: Wsgate, port: int, then: Callable[[], Awaitable[None]]
) -> int | None:
    """Eight clients relayed to a backend on ``port`` that never answer a
    close, a SIGTERM to the supervisor, ``then()``; the supervisor's exit code."""
    assert gate.proc is not None
    async with backend(port) as state:
        raw = [await raw_handshake(gate.port) for _ in range(8)]
        await state.wait_seen(8)
        gate.proc.send_signal(signal.SIGTERM)
        await then()
        code = await asyncio.to_thread(gate.proc.wait, TIMEOUT)
        for _, writer in raw:
            writer.close()
        return code


def test_the_supervisors_stop_and_a_signal_to_each_worker_are_one_drain(
    wsgate: GateFactory,
) -> None:
    """systemd's default KillMode signals every process of the unit: the
    supervisor's request to drain may reach a worker before the signal does,
    and that signal must not count as a second one (which drops everything)."""
    port = free_port()
    # Clients that never answer the close keep each drain going for 3 s.
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--workers", "2", "--close-timeout", "3")
    assert gate.proc is not None
    pids = worker_pids(gate)

    async def then() -> None:
        await wait_for_line(gate, r"draining: 2 worker\(s\) asked to drain")
        await wait_for_line(gate, r"worker \d\] draining: listeners closed")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    assert asyncio.run(_eight_held_through_a_sigterm(gate, port, then)) == 0
    log = gate.log()
    assert "second signal" not in log
    drained = re.findall(r"drained: (\d+) connection\(s\) closed, (\d+) dropped", log)
    assert len(drained) == 2 and sum(int(closed) for closed, _ in drained) == 8, drained


def test_a_listener_with_sni_certificates_is_served_by_the_workers(
    tmp_path: Path, tls_files: TlsFiles, wsgate: GateFactory
) -> None:
    port, listen = free_port(), free_port()
    path = tmp_path / "wsgate.toml"
    path.write_text(
        f'workers = 2\n[[listener]]\nendpoint = "tcp:{listen}:interface=127.0.0.1"\n'
        f'certificates = [{{ cert = "{tls_files.cert}", key = "{tls_files.key}" }}]\n'
        f'[[route]]\nbackend = "ws://127.0.0.1:{port}"\n'
    )
    gate = wsgate("--config", str(path), wait_port=listen)
    worker_pids(gate)
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))

    async def main() -> None:
        async with backend(port):
            for _ in range(6):
                opened = await asyncio.open_connection(
                    "127.0.0.1", listen, ssl=context, server_hostname="localhost"
                )
                assert await _talk(*opened, b"") == b"\x81\x02hi"

    asyncio.run(main())
    asyncio.run(wait_for_line(gate, r"worker \d\] open "))


def test_start_returns_once_every_worker_started(tmp_path: Path, wsgate: GateFactory) -> None:
    """The supervisor's sockets listen before its workers start: ``Wsgate.start``
    waits for them, whether the count comes from --workers or from the file,
    with a log of the test's or without; ``--workers 1`` is one process."""
    listen = free_port()
    path = tmp_path / "wsgate.toml"
    path.write_text(
        f'workers = 2\n[[listener]]\nendpoint = "tcp:{listen}:interface=127.0.0.1"\n'
        '[[route]]\nbackend = "ws://127.0.0.1:9"\n'
    )
    from_file = wsgate("--config", str(path), wait_port=listen)
    assert "workers: 2 started" in from_file.log()
    assert len(from_file.serving_pids()) == 2

    one = wsgate("--backend", "ws://127.0.0.1:9", "--workers", "1")
    assert one.serving_pids() == [one.proc.pid]  # type: ignore[union-attr]
    assert "workers: " not in one.log()

    with Wsgate("--backend", "ws://127.0.0.1:9", "--workers", "2") as bare:
        assert bare.proc is not None
        assert len(bare.serving_pids()) == 2
        # Started: SIGHUP is the supervisor's (a reload without a file to
        # re-read), no longer the default action that ends a process.
        bare.reload()
        assert bare.stop() == 0


def test_a_second_signal_drops_every_workers_connections_and_each_says_how_many(
    wsgate: GateFactory,
) -> None:
    """As one process does, each worker logs what a second SIGTERM or SIGINT
    to the supervisor dropped."""
    port = free_port()
    gate = wsgate(
        *("--backend", f"ws://127.0.0.1:{port}", "--workers", "2"),
        *("--close-timeout", "60", "--drain-timeout", "60"),
    )
    assert gate.proc is not None

    async def then() -> None:
        await wait_for_line(gate, r"worker \d\] draining: listeners closed")
        gate.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]

    assert asyncio.run(_eight_held_through_a_sigterm(gate, port, then)) == 0
    log = gate.log()
    assert "draining: second signal, every worker drops its connections" in log
    dropped = re.findall(r"worker \d\] draining: second signal, (\d+) connection\(s\) dropped", log)
    assert dropped and sum(int(count) for count in dropped) == 8, log
