"""``wsgate probe``: against the Node ``ws`` echo backend, wsgate in front of
it, a backend that refuses, a closed port, TLS, and bad usage."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from node_echo import node_echo_server, node_missing
from peers import TIMEOUT, backend

from wsgate._probe import parse_extensions
from wsgate.testing import GateFactory, TlsFiles, free_port

PROBE = [sys.executable, "-m", "wsgate._cli", "probe"]

needs_node = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=2 * TIMEOUT)


def probe_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = probe("--json", *args)
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def test_parse_extensions() -> None:
    (ext,) = parse_extensions(
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
    )
    assert ext.name == "permessage-deflate"
    assert ext.params == {"server_no_context_takeover": None, "client_max_window_bits": "12"}
    assert parse_extensions(None) == [] and parse_extensions(" , ") == []


@needs_node
@pytest.mark.parametrize("deflate", ["on", "off"])
def test_probe_the_node_backend(tmp_path: Path, deflate: str) -> None:
    with node_echo_server(tmp_path / "node.err") as echo:
        code, report = probe_json("--deflate", deflate, echo.url + "/probe")
    assert code == 0 and report["ok"] and report["error"] is None
    assert report["status"] == 101
    names = [e["name"] for e in report["extensions"]]
    assert names == (["permessage-deflate"] if deflate == "on" else [])
    assert [e["message"] for e in report["echo"]] == [
        "compressible text",
        "incompressible binary",
        "1 MiB binary",
    ]
    assert all(e["intact"] and e["rtt_ms"] >= 0 for e in report["echo"])
    assert report["echo"][2]["bytes"] == 1024 * 1024


@needs_node
def test_probe_wsgate_and_the_backend_side_by_side(wsgate: GateFactory, tmp_path: Path) -> None:
    """Each leg's negotiation: wsgate's client leg (its own deflate policy)
    next to the Node backend's, which wsgate does not ask to compress."""
    with node_echo_server(tmp_path / "node.err") as echo:
        gate = wsgate("--backend", echo.url)
        code, through = probe_json(gate.url + "/app")
        direct_code, direct = probe_json(echo.url + "/app")
        text = probe(gate.url + "/app")
    assert code == direct_code == 0
    (ext,) = through["extensions"]
    assert ext["name"] == "permessage-deflate"
    assert ext["params"].get("client_max_window_bits") == "12"  # wsgate's default policy
    assert direct["extensions"][0]["params"] != ext["params"]
    assert "extension    permessage-deflate: " in text.stdout
    assert "echo         1 MiB binary (1048576 B): intact, " in text.stdout
    assert text.stdout.rstrip().endswith("result       OK")
    # The probe ends with a complete closing handshake, not a dropped connection.
    deadline = time.monotonic() + TIMEOUT
    while len(closes := [x for x in gate.log().splitlines() if "] close " in x]) < 2:
        assert time.monotonic() < deadline, gate.log()
        time.sleep(0.05)
    assert all("client=sent 1000/recv 1000" in line for line in closes), closes


def test_probe_a_backend_that_refuses() -> None:
    port = free_port()

    async def main() -> subprocess.CompletedProcess[str]:
        async with backend(port, refuse=403):
            return await asyncio.to_thread(probe, f"ws://127.0.0.1:{port}/")

    result = asyncio.run(main())
    assert result.returncode == 1
    assert "http         HTTP/1.1 403 Forbidden" in result.stdout
    assert "body         refused by backend" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_probe_wsgate_when_the_backend_refuses(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> tuple[int, dict[str, Any]]:
        async with backend(port, refuse=403):
            return await asyncio.to_thread(probe_json, gate.url + "/x")

    code, report = asyncio.run(main())
    assert code == 1 and not report["ok"]
    assert report["status"] == 403
    assert report["body"] and "403" in report["body"]


def test_probe_a_closed_port_says_why_in_one_line() -> None:
    result = probe(f"ws://127.0.0.1:{free_port()}/")
    assert result.returncode == 1
    assert result.stderr == ""
    assert "error        cannot connect to 127.0.0.1:" in result.stdout
    assert ": connection refused" in result.stdout


def test_probe_tls_checks_the_certificate(wsgate: GateFactory, tls_files: TlsFiles) -> None:
    port, backend_port = free_port(), free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}"
    wsgate("--listen", listen, "--backend", f"ws://127.0.0.1:{backend_port}", wait_port=port)
    url = f"wss://localhost:{port}/"

    async def main() -> list[subprocess.CompletedProcess[str]]:
        async with backend(backend_port):
            return [
                await asyncio.to_thread(probe, url),
                await asyncio.to_thread(probe, "--ca", str(tls_files.ca_cert), url),
                await asyncio.to_thread(probe, "--insecure", url),
            ]

    untrusted, trusted, insecure = asyncio.run(main())
    assert untrusted.returncode == 1 and "certificate verify failed" in untrusted.stdout
    assert "Traceback" not in untrusted.stdout + untrusted.stderr
    assert trusted.returncode == 0, trusted.stdout
    assert insecure.returncode == 0, insecure.stdout


def test_probe_no_echo_reports_the_first_message() -> None:
    port = free_port()

    async def greet(ws: Any) -> None:
        await ws.send("welcome")
        await ws.wait_closed()

    async def main() -> subprocess.CompletedProcess[str]:
        async with backend(port, greet):
            return await asyncio.to_thread(
                probe,
                "--no-echo",
                "--wait",
                "5",
                "--subprotocol",
                "chat",
                f"ws://127.0.0.1:{port}/",
            )

    result = asyncio.run(main())
    assert result.returncode == 0, result.stdout
    assert "received     text, 7 B: welcome" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["http://example.com/"],
        ["ws://127.0.0.1:99999/"],
        ["--deflate", "maybe", "ws://127.0.0.1/"],
        ["--header", "no colon", "ws://127.0.0.1/"],
        ["--timeout", "0", "ws://127.0.0.1/"],
        ["--ca", "/nonexistent.pem", "wss://127.0.0.1/"],
        [],
    ],
)
def test_probe_usage_errors_exit_2(args: list[str]) -> None:
    result = probe(*args)
    assert result.returncode == 2, result
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "usage:" in result.stderr
