"""wsgate's backend leg against the Node ``ws`` server: what it negotiates and what crosses.

The Node echo server reports the bytes its socket read and wrote, so these
tests see the compression on the backend leg's wire, per direction.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_echo import NODE_DIR, TIMEOUT, NodeEcho, node_echo_server, node_missing
from websockets.asyncio.client import connect

from wsgate.testing import GateFactory, Wsgate

pytestmark = pytest.mark.node

if (_reason := node_missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


#: Many small, similar messages: a chat or a price feed. Deflate with context
#: takeover shrinks these several times; without it each one is compressed
#: alone and barely shrinks.
FEED = [
    json.dumps(
        {
            "type": "quote",
            "symbol": "WSGT",
            "seq": i,
            "bid": 100.25,
            "ask": 100.5,
            "venue": "example-exchange",
            "flags": ["firm", "lit", "regular"],
        }
    )
    for i in range(300)
]


@pytest.fixture
def node_echo(tmp_path: Path) -> Iterator[NodeEcho]:
    with node_echo_server(tmp_path / "echo_server.stderr") as echo:
        yield echo


def _feed_through(gate: Wsgate) -> None:
    async def main() -> None:
        # No compression on the client leg: only the backend leg's counts.
        async with asyncio.timeout(TIMEOUT), connect(gate.url, compression=None) as ws:
            for message in FEED:
                await ws.send(message)
                assert await ws.recv() == message

    asyncio.run(main())


def test_backend_to_gateway_direction_keeps_its_context(
    wsgate: GateFactory, node_echo: NodeEcho
) -> None:
    gate = wsgate("--backend", node_echo.url, "--backend-deflate", "on")
    _feed_through(gate)
    closed = node_echo.record("close")
    payload = sum(len(m) for m in FEED)
    assert closed["bytes"] == payload
    # ws compresses what it sends with context takeover: a fraction of the payload.
    assert closed["wire_written"] < payload / 4


def test_gateway_to_backend_direction_keeps_its_context_when_on(
    wsgate: GateFactory, node_echo: NodeEcho
) -> None:
    gate = wsgate("--backend", node_echo.url, "--backend-deflate", "on")
    _feed_through(gate)
    opened = node_echo.record("open")
    closed = node_echo.record("close")
    payload = sum(len(m) for m in FEED)
    assert closed["bytes"] == payload
    assert "client_no_context_takeover" not in opened["offer"], opened["offer"]
    # As compact as the other direction: a fraction of the payload.
    assert closed["wire_read"] < payload / 4, (closed["wire_read"], payload)


def test_no_context_takeover_policy_is_asked_for_both_directions(
    wsgate: GateFactory, node_echo: NodeEcho
) -> None:
    gate = wsgate("--backend", node_echo.url, "--backend-deflate", "on,no_context_takeover")
    _feed_through(gate)
    accepted = node_echo.record("open")["accepted"]
    assert "server_no_context_takeover" in accepted
    assert "client_no_context_takeover" in accepted
    closed = node_echo.record("close")
    # Each message compressed alone: little saved in either direction.
    payload = sum(len(m) for m in FEED)
    assert closed["wire_written"] > payload / 2
    assert closed["wire_read"] > payload / 2


_NODE_CLIENT = """
const WebSocket = require('ws');
const ws = new WebSocket(process.argv[1], {
  perMessageDeflate: { clientMaxWindowBits: 10, threshold: 0 },
});
const sent = 'hello '.repeat(200);
ws.on('open', () => ws.send(sent));
ws.on('message', (data) => {
  const params = ws._extensions['permessage-deflate'].params;
  console.log(JSON.stringify({ echoed: data.toString() === sent, params }));
  ws.close(1000);
});
ws.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
"""


def test_a_node_ws_client_s_own_window_limit_is_kept(
    wsgate: GateFactory, node_echo: NodeEcho
) -> None:
    """ws refuses an answer asking for a bigger window than it offered (10
    bits, below wsgate's default 12): wsgate answers with the client's 10."""
    gate = wsgate("--backend", node_echo.url)
    done = subprocess.run(
        ["node", "-e", _NODE_CLIENT, gate.url],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    result = json.loads(done.stdout)
    assert result.get("echoed"), result  # else ws refused the handshake
    assert result["params"]["client_max_window_bits"] == 10, result
    assert done.returncode == 0, done.stderr
