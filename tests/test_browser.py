"""The story: a real Chromium talks through wsgate to a Node ``ws`` backend.

The browser loads a page from a local HTTP server; the page opens a
WebSocket through wsgate (ws:// and wss://) to ``tests/node/echo_server.js``
and checks every echo byte for byte. Each leg negotiates permessage-deflate
on its own: the browser says what it got (``WebSocket.extensions``), the
Node server prints what it accepted, and wsgate's ``open`` log line names
both.

Chromium trusts the throw-away certificate by its public key (the
``browser`` fixture in conftest.py).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_echo import NodeEcho, node_echo_server, node_missing

from wsgate.testing import GateFactory, TlsFiles, Wsgate, free_port, make_tls_files

pytestmark = [pytest.mark.browser, pytest.mark.node, pytest.mark.slow]


#: Upper bound for any single wait in this module, in seconds.
TIMEOUT = 30.0
MIB = 1024 * 1024
SUBPROTOCOL = "echo.wsgate.test"
COOKIE = "wsgate_story=chromium"


def _missing() -> str | None:
    if (reason := node_missing()) is not None:
        return reason
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (PyPI) is not installed: pip install '.[test]'"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import Browser, Page  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402

# --------------------------------------------------------------------------
# The page: opens one WebSocket, sends every message, checks every echo.
# --------------------------------------------------------------------------

#: The compressible payload, repeated and cut to size (Python checks the
#: page builds exactly this).
PATTERN = "wsgate relays frame by frame; 0123456789 abcdefghijklmnopqrstuvwxyz\n"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate echo</title></head>
<body><pre id="out">ready</pre>
<script>
"use strict";
const PATTERN = __PATTERN__;

function patterned(size) {
  let s = PATTERN.repeat(Math.ceil(size / PATTERN.length) + 1);
  return s.slice(0, size);
}

function randomBytes(size) {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) {
    crypto.getRandomValues(out.subarray(i, Math.min(size, i + 65536)));
  }
  return out;
}

// Random text of exactly `size` UTF-8 bytes, with 1- to 4-byte characters.
function randomText(size) {
  const ranges = [[0x20, 0x7e, 1], [0xa0, 0x7ff, 2], [0x800, 0xd7ff, 3], [0x1f300, 0x1f64f, 4]];
  const rnd = randomBytes(size * 2 + 8);
  const parts = [];
  let left = size, j = 0;
  while (left > 0) {
    const r = ranges[rnd[j++ % rnd.length] % ranges.length];
    if (r[2] > left) { parts.push("x"); left -= 1; continue; }
    const span = r[1] - r[0] + 1;
    const cp = r[0] + ((rnd[j++ % rnd.length] << 8 | rnd[j++ % rnd.length]) % span);
    parts.push(String.fromCodePoint(cp));
    left -= r[2];
  }
  return parts.join("");
}

function payload(spec) {
  if (spec.type === "text") {
    return spec.fill === "random" ? randomText(spec.size) : patterned(spec.size);
  }
  return spec.fill === "random"
    ? randomBytes(spec.size)
    : new TextEncoder().encode(patterned(spec.size));
}

function bytesOf(data) {
  return typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
}

async function sha256(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytesOf(data)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function same(a, b) {
  if (typeof a === "string" || typeof b === "string") return a === b;
  const x = bytesOf(a), y = bytesOf(b);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

// Send every message at once, then match the echoes in order.
window.runEcho = function ({ url, protocols, specs, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const log = (line) => { document.getElementById("out").textContent += "\\n" + line; };
    const timer = setTimeout(() => reject(new Error(`no result after ${timeoutMs} ms: ` +
      document.getElementById("out").textContent)), timeoutMs);
    const fail = (why) => { clearTimeout(timer); reject(new Error(why)); };
    const sent = specs.map(payload);
    const received = [];
    let ws;
    try {
      ws = new WebSocket(url, protocols);
    } catch (e) {
      fail(`new WebSocket failed: ${e}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    const opened = {};
    ws.onopen = () => {
      opened.extensions = ws.extensions;
      opened.protocol = ws.protocol;
      log(`open extensions=${ws.extensions} protocol=${ws.protocol}`);
      for (const data of sent) ws.send(data);
    };
    ws.onerror = () => log("error event");
    ws.onmessage = (event) => {
      received.push(event.data);
      if (received.length === sent.length) ws.close(1000, "done");
    };
    ws.onclose = async (event) => {
      log(`close ${event.code} clean=${event.wasClean}`);
      if (!("extensions" in opened)) {
        fail(`closed before open: code ${event.code}`);
        return;
      }
      const messages = [];
      for (let i = 0; i < specs.length; i++) {
        const want = sent[i], got = received[i];
        messages.push({
          spec: specs[i],
          sent_type: typeof want === "string" ? "text" : "binary",
          got_type: got === undefined ? null : (typeof got === "string" ? "text" : "binary"),
          sent_bytes: bytesOf(want).length,
          got_bytes: got === undefined ? null : bytesOf(got).length,
          sent_sha256: await sha256(want),
          got_sha256: got === undefined ? null : await sha256(got),
          same: got !== undefined && same(want, got),
        });
      }
      clearTimeout(timer);
      resolve({
        extensions: opened.extensions,
        protocol: opened.protocol,
        received: received.length,
        close_code: event.code,
        close_clean: event.wasClean,
        messages,
      });
    };
  });
};
</script></body></html>
""".replace("__PATTERN__", json.dumps(PATTERN))


def _patterned(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 2)).encode()[:size]


#: Every message of the story: text and binary, 0 B to 1 MiB, compressible
#: and random; sizes around the frame length encodings (125/126, 65535/65536)
#: and ws's 1 KiB compression threshold.
FULL: list[dict[str, Any]] = [
    {"type": "text", "fill": "pattern", "size": 0},
    {"type": "text", "fill": "pattern", "size": 1},
    {"type": "text", "fill": "random", "size": 125},
    {"type": "text", "fill": "pattern", "size": 126},
    {"type": "text", "fill": "random", "size": 4096},
    {"type": "text", "fill": "pattern", "size": 65535},
    {"type": "text", "fill": "pattern", "size": MIB},
    {"type": "text", "fill": "random", "size": MIB},
    {"type": "binary", "fill": "pattern", "size": 0},
    {"type": "binary", "fill": "random", "size": 1},
    {"type": "binary", "fill": "random", "size": 1023},
    {"type": "binary", "fill": "random", "size": 1025},
    {"type": "binary", "fill": "random", "size": 65536},
    {"type": "binary", "fill": "pattern", "size": MIB},
    {"type": "binary", "fill": "random", "size": MIB},
]

#: For the deflate mixes: mostly compressible, so compression shows on the wire.
COMPRESSIBLE: list[dict[str, Any]] = [
    {"type": "text", "fill": "pattern", "size": 0},
    {"type": "text", "fill": "pattern", "size": MIB},
    {"type": "binary", "fill": "pattern", "size": 0},
    {"type": "binary", "fill": "random", "size": 1000},
    {"type": "binary", "fill": "pattern", "size": MIB},
]


# --------------------------------------------------------------------------
# Peers: the page server and the Node backend (the browser is conftest.py's).
# --------------------------------------------------------------------------


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/":
            self.send_error(404)
            return
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Set-Cookie", f"{COOKIE}; Path=/; SameSite=Strict")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """http://127.0.0.1:PORT/, the page, from a server in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def node_echo(tmp_path: Path) -> Iterator[NodeEcho]:
    with node_echo_server(tmp_path / "echo_server.stderr") as echo:
        yield echo


@pytest.fixture
def page(browser: Browser, page_url: str) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    try:
        page = context.new_page()
        page.goto(page_url)
        yield page
    finally:
        context.close()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def run_echo(page: Page, url: str, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the page's echo over ``url``; assert every echo is intact."""
    result: dict[str, Any] = page.evaluate(
        "args => window.runEcho(args)",
        {"url": url, "protocols": [SUBPROTOCOL], "specs": specs, "timeoutMs": TIMEOUT * 1000},
    )
    assert result["received"] == len(specs)
    assert (result["close_code"], result["close_clean"]) == (1000, True)
    for spec, message in zip(specs, result["messages"], strict=True):
        where = f"{spec['type']} {spec['fill']} {spec['size']} B"
        assert message["sent_bytes"] == spec["size"], where
        assert message["got_type"] == message["sent_type"] == spec["type"], where
        assert message["got_bytes"] == spec["size"], where
        assert message["got_sha256"] == message["sent_sha256"], where
        assert message["same"], where
        if spec["fill"] == "pattern":
            # The page sent what we think it sent.
            assert message["sent_sha256"] == hashlib.sha256(_patterned(spec["size"])).hexdigest()
    return result


def wait_log_line(gate: Wsgate, word: str) -> str:
    """The first line of wsgate's log containing ``word`` (waiting for it)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        for line in gate.log().splitlines():
            if word in line:
                return line
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {word!r} in wsgate's log:\n{gate.log()}")
        time.sleep(0.05)  # the log is a file: poll it


_OPEN = re.compile(
    r" open (?P<peer>\S+) (?P<path>\S+) -> .* client_ext=\[(?P<client>[^]]*)\] "
    r"backend_ext=\[(?P<backend>[^]]*)\]"
)


def open_line(gate: Wsgate) -> re.Match[str]:
    line = wait_log_line(gate, " open ")
    match = _OPEN.search(line)
    assert match, line
    return match


def payload_bytes(specs: list[dict[str, Any]]) -> int:
    return sum(spec["size"] for spec in specs)


def _ssl_listen(port: int, files: TlsFiles) -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}"


# --------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------


def test_chromium_through_wsgate_to_node_ws(
    wsgate: GateFactory, node_echo: NodeEcho, page: Page, page_url: str
) -> None:
    # The story's backend keeps its compression: each leg negotiates its own.
    gate = wsgate("--backend", node_echo.url, "--backend-deflate", "on")

    result = run_echo(page, f"{gate.url}/story?leg=ws", FULL)

    # The browser leg: Chromium offered permessage-deflate and got it.
    assert "permessage-deflate" in result["extensions"]
    assert result["protocol"] == SUBPROTOCOL
    # The backend leg: wsgate offered it and ws accepted it.
    opened = node_echo.record("open")
    assert opened["offer"].startswith("permessage-deflate")
    assert opened["extensions"] == ["permessage-deflate"]
    assert opened["accepted"].startswith("permessage-deflate")
    assert opened["path"] == "/story?leg=ws"
    assert opened["protocol"] == SUBPROTOCOL
    # What the browser sent reached the backend, with the gateway's additions.
    headers = opened["headers"]
    assert headers["origin"] == page_url.rstrip("/")
    assert "Chrome/" in headers["user-agent"]
    assert headers["cookie"] == COOKIE
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gate.port}"
    # wsgate's own account of both legs.
    match = open_line(gate)
    assert match["client"].startswith("permessage-deflate(")
    assert match["backend"].startswith("permessage-deflate(")

    closed = node_echo.record("close")
    assert closed["code"] == 1000
    assert (closed["messages"], closed["bytes"]) == (len(FULL), payload_bytes(FULL))
    wait_log_line(gate, " close ")
    assert "Traceback" not in gate.log()


def test_chromium_over_wss_trusts_the_throwaway_certificate(
    wsgate: GateFactory, node_echo: NodeEcho, page: Page, tls_files: TlsFiles
) -> None:
    port = free_port()
    gate = wsgate(
        "--listen", _ssl_listen(port, tls_files), "--backend", node_echo.url, wait_port=port
    )

    result = run_echo(page, f"wss://localhost:{port}/story?leg=wss", FULL)

    # As shipped: compressed for the browser, not for the backend.
    assert "permessage-deflate" in result["extensions"]
    opened = node_echo.record("open")
    assert opened["extensions"] == []
    assert opened["headers"]["x-forwarded-proto"] == "https"
    assert opened["headers"]["x-forwarded-host"] == f"localhost:{port}"
    match = open_line(gate)
    assert match["client"].startswith("permessage-deflate(")
    assert match["backend"] == "none"
    assert node_echo.record("close")["code"] == 1000
    assert "Traceback" not in gate.log()


def test_chromium_rejects_an_untrusted_certificate(
    wsgate: GateFactory, node_echo: NodeEcho, page: Page, tmp_path: Path
) -> None:
    """The SPKI flag trusts that one key, not TLS errors in general."""
    other = make_tls_files(tmp_path / "other-tls")
    port = free_port()
    gate = wsgate("--listen", _ssl_listen(port, other), "--backend", node_echo.url, wait_port=port)

    with pytest.raises(PlaywrightError, match="closed before open: code 1006"):
        page.evaluate(
            "args => window.runEcho(args)",
            {
                "url": f"wss://localhost:{port}/",
                "protocols": [],
                "specs": [],
                "timeoutMs": TIMEOUT * 1000,
            },
        )
    # Refused in the TLS handshake, by the browser: the backend never heard of it.
    wait_log_line(gate, "certificate unknown")
    assert node_echo.printed() == []


def test_client_deflate_off(wsgate: GateFactory, node_echo: NodeEcho, page: Page) -> None:
    gate = wsgate("--backend", node_echo.url, "--client-deflate", "off", "--backend-deflate", "on")

    result = run_echo(page, f"{gate.url}/mix", COMPRESSIBLE)

    assert result["extensions"] == ""  # Chromium offered; wsgate declined
    opened = node_echo.record("open")
    assert opened["extensions"] == ["permessage-deflate"]
    match = open_line(gate)
    assert match["client"] == "none"
    assert match["backend"].startswith("permessage-deflate(")
    # The backend leg really compressed: far fewer bytes on the wire than sent.
    closed = node_echo.record("close")
    assert closed["bytes"] == payload_bytes(COMPRESSIBLE)
    assert closed["wire_read"] < payload_bytes(COMPRESSIBLE) / 10
    assert closed["wire_written"] < payload_bytes(COMPRESSIBLE) / 10


def test_default_windows_and_no_context_takeover_with_chromium(
    wsgate: GateFactory, node_echo: NodeEcho, page: Page
) -> None:
    """Chromium honours what wsgate asks of it: 4 KiB windows by default, and
    client_no_context_takeover although its offer did not carry the hint."""
    gate = wsgate("--backend", node_echo.url, "--backend-deflate", "on")
    result = run_echo(page, f"{gate.url}/default", COMPRESSIBLE)
    assert "client_max_window_bits=12" in result["extensions"]
    assert "client_no_context_takeover" not in result["extensions"]
    # wsgate compresses with a 4 KiB window too (no need to say so on the wire).
    assert "server_bits=12,client_bits=12" in open_line(gate)["client"]
    assert "server_max_window_bits=12" in node_echo.record("open")["accepted"]
    assert node_echo.record("close")["code"] == 1000

    light = wsgate("--backend", node_echo.url, "--client-deflate", "on,no_context_takeover")
    result = run_echo(page, f"{light.url}/light", COMPRESSIBLE)
    assert "client_no_context_takeover" in result["extensions"]
    assert "server_nct=True,client_nct=True" in open_line(light)["client"]
    closed = node_echo.record("close", 1)
    assert closed["code"] == 1000
    assert closed["bytes"] == payload_bytes(COMPRESSIBLE)
    assert "Traceback" not in light.log()


def test_backend_deflate_off_as_shipped(
    wsgate: GateFactory, node_echo: NodeEcho, page: Page
) -> None:
    gate = wsgate("--backend", node_echo.url)

    result = run_echo(page, f"{gate.url}/mix", COMPRESSIBLE)

    assert "permessage-deflate" in result["extensions"]
    opened = node_echo.record("open")
    assert opened["offer"] is None  # wsgate offered nothing on the backend leg
    assert opened["extensions"] == []
    assert opened["accepted"] is None
    match = open_line(gate)
    assert match["client"].startswith("permessage-deflate(")
    assert match["backend"] == "none"
    # Uncompressed on the backend leg: every payload byte crossed the wire.
    closed = node_echo.record("close")
    assert closed["wire_read"] > payload_bytes(COMPRESSIBLE)
    assert closed["wire_written"] > payload_bytes(COMPRESSIBLE)
