"""Autobahn on both ends: an Autobahn client -> wsgate -> the example Autobahn echo backend."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsgate.testing import GateFactory, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def autobahn_backend() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "etc" / "example_backend.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("peer_deflate", "client_deflate", "backend_deflate"),
    [("on", "on", "on"), ("on", "off", "on"), ("off", "on", "off"), ("on", "on", "off")],
)
def test_autobahn_client_through_wsgate_to_autobahn_server(
    wsgate: GateFactory,
    autobahn_backend: int,
    peer_deflate: str,
    client_deflate: str,
    backend_deflate: str,
) -> None:
    gate = wsgate(
        "--backend", f"ws://127.0.0.1:{autobahn_backend}",
        "--client-deflate", client_deflate,
        "--backend-deflate", backend_deflate,
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "autobahn_client.py"), gate.url, peer_deflate],
        capture_output=True,
        text=True,
        timeout=120,
    )
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in verdict, verdict
    assert verdict["close"] == [4321, "all good"]
    negotiated = peer_deflate == "on" and client_deflate == "on"
    assert bool(verdict["extensions"]) == negotiated
    # The backend says what its leg negotiated; so does wsgate's log.
    assert bool(verdict["greeting"]["backend_leg_extensions"]) == (backend_deflate == "on")
    assert verdict["greeting"]["forwarded"]["x-forwarded-for"] == "127.0.0.1"
    opened = next(line for line in gate.wait_for_log(" open ").splitlines() if " open " in line)
    assert ("backend_ext=[permessage-deflate" in opened) == (backend_deflate == "on")
