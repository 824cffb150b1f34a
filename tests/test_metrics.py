"""``/metrics``: parsed with prometheus_client's own parser, before and after traffic."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import sys

import pytest
from peers import TIMEOUT, backend, client
from prometheus_client.parser import text_string_to_metric_families

from wsgate.testing import GateFactory, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        text = response.read().decode()
    finally:
        conn.close()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


TEXT = "wsgate metrics " * 200  # 3000 B, compressible


def test_metrics_before_and_after_traffic(wsgate: GateFactory) -> None:
    port, metrics = free_port(), free_port()
    url = f"ws://127.0.0.1:{port}"
    gate = wsgate("--backend", url, "--metrics", f"tcp:{metrics}:interface=127.0.0.1")
    route = "--backend"

    before = scrape(metrics)
    assert value(before, "wsgate_connections_total", route=route) == 0
    assert value(before, "wsgate_backend_up", backend=url) == 1
    assert ("process_cpu_seconds_total", frozenset()) in before

    async def main() -> tuple[Samples, Samples]:
        async with backend(port, compression=None):
            async with client(gate.url + "/m", compression="deflate") as ws:
                for _ in range(3):
                    await ws.send(TEXT)
                    async with asyncio.timeout(TIMEOUT):
                        assert await ws.recv() == TEXT
                during = await asyncio.to_thread(scrape, metrics)
            async with asyncio.timeout(TIMEOUT):
                while True:
                    after = await asyncio.to_thread(scrape, metrics)
                    if value(after, "wsgate_connections_active", route=route) == 0:
                        return during, after
                    await asyncio.sleep(0.05)

    during, after = asyncio.run(main())
    assert value(during, "wsgate_connections_active", route=route) == 1
    assert value(during, "wsgate_connections_total", route=route) == 1
    for samples in (during, after):
        for leg, direction in (("client", "in"), ("client", "out"), ("backend", "in")):
            labels = {"route": route, "leg": leg, "direction": direction}
            assert value(samples, "wsgate_messages_total", **labels) == 3
            assert value(samples, "wsgate_message_bytes_total", **labels) == 3 * len(TEXT)
        client_wire = value(
            samples, "wsgate_bytes_total", route=route, leg="client", direction="in"
        )
        backend_wire = value(
            samples, "wsgate_bytes_total", route=route, leg="backend", direction="out"
        )
        # Compressed on the client leg, plain on the backend leg: it shows.
        assert 0 < client_wire < len(TEXT) < 3 * len(TEXT) < backend_wire
    assert value(after, "wsgate_connections_total", route=route) == 1
    assert value(after, "wsgate_closes_total", route=route, leg="client", code="1000") == 1
    assert value(after, "wsgate_closes_total", route=route, leg="backend", code="1000") == 1
    assert value(after, "wsgate_deflate_negotiated_total", route=route, leg="client") == 1
    assert value(after, "wsgate_deflate_negotiated_total", route=route, leg="backend") == 0
    assert value(after, "wsgate_backend_connect_seconds_count", route=route) == 1
    assert value(after, "wsgate_backend_connect_seconds_bucket", route=route, le="+Inf") == 1
    assert 0 < value(after, "wsgate_backend_connect_seconds_sum", route=route) < TIMEOUT


def _two_502s(wsgate: GateFactory) -> tuple[int, int]:
    """A gateway whose backend is down, asked twice; its backend and metrics ports."""
    port, metrics = free_port(), free_port()
    gate = wsgate(
        "--backend", f"ws://127.0.0.1:{port}", "--metrics", f"tcp:{metrics}:interface=127.0.0.1"
    )
    for _ in range(2):  # the backend is down: 502
        with socket.create_connection(("127.0.0.1", gate.port), timeout=TIMEOUT) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 502 ")
    return port, metrics


def test_handshake_failures_by_status(wsgate: GateFactory) -> None:
    _, metrics = _two_502s(wsgate)
    samples = scrape(metrics)
    assert value(samples, "wsgate_handshake_failures_total", status="502") == 2


@pytest.mark.single_process(
    "passive health is per worker; the tree's wsgate_backend_up is the most of any "
    "worker's, 1 while one has not failed on it (README, Workers)"
)
def test_a_backend_that_refused_is_not_up(wsgate: GateFactory) -> None:
    port, metrics = _two_502s(wsgate)
    samples = scrape(metrics)
    assert value(samples, "wsgate_backend_up", backend=f"ws://127.0.0.1:{port}") == 0


def test_a_bad_metrics_endpoint_names_the_option() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"),
            *("wsgate", "--backend", "ws://127.0.0.1:9", "--metrics", "tcp:notaport"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert "--metrics: 'tcp:notaport': " in result.stderr


def test_auth_failures_by_route_plugin_and_status(wsgate: GateFactory) -> None:
    port, metrics = free_port(), free_port()
    gate = wsgate(
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--auth",
        "origin:allow=https://a.example",
        "--metrics",
        f"tcp:{metrics}:interface=127.0.0.1",
    )
    for _ in range(3):  # refused at the gate: no backend is needed
        with socket.create_connection(("127.0.0.1", gate.port), timeout=TIMEOUT) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Origin: https://evil.example\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 403 ")
    samples = scrape(metrics)
    assert (
        value(
            samples, "wsgate_auth_failures_total", route="--backend", plugin="origin", status="403"
        )
        == 3
    )
    assert value(samples, "wsgate_handshake_failures_total", status="403") == 3
