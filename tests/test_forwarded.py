"""``trust_forwarded_from``: X-Forwarded-* and Forwarded are kept only from
trusted proxies; from anyone else wsgate drops them before adding its own."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from rawws import RecordingBackend, upgrade_request
from twisted.python import usage

from wsgate._config import ConfigError
from wsgate._configfile import load_file
from wsgate._headers import ClientRequest, backend_headers, peer_trusted
from wsgate.tap import Options
from wsgate.testing import GateFactory, free_port

_SPOOFED = {
    "host": "h",
    "x-forwarded-for": "6.6.6.6",
    "forwarded": "for=6.6.6.6",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "evil.example",
}


def test_untrusted_peer_s_forwarding_headers_are_replaced() -> None:
    out = backend_headers(ClientRequest(headers=_SPOOFED, peer_host="192.0.2.7", secure=False))
    assert out["x-forwarded-for"] == "192.0.2.7"
    assert out["forwarded"] == "for=192.0.2.7;host=h;proto=http"
    assert out["x-forwarded-proto"] == "http" and out["x-forwarded-host"] == "h"


def test_trusted_peer_s_are_appended_to() -> None:
    request = ClientRequest(headers=_SPOOFED, peer_host="192.0.2.7", secure=False, trusted=True)
    out = backend_headers(request)
    assert out["x-forwarded-for"] == "6.6.6.6, 192.0.2.7"
    assert out["forwarded"] == "for=6.6.6.6, for=192.0.2.7;host=h;proto=http"


@pytest.mark.parametrize(
    ("networks", "peer", "trusted"),
    [
        ((), "127.0.0.1", False),
        (("127.0.0.1",), "127.0.0.1", True),
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("10.0.0.0/8",), "::ffff:10.0.0.1", True),
        (("2001:db8::/32",), "2001:db8::5", True),
        (("2001:db8::/32",), "2001:db9::5", False),
        (("0.0.0.0/0",), None, False),  # a unix socket has no address
        (("0.0.0.0/0",), "not an address", False),
    ],
)
def test_peer_trusted(networks: tuple[str, ...], peer: str | None, trusted: bool) -> None:
    nets = [ipaddress.ip_network(n) for n in networks]
    assert peer_trusted(nets, peer) is trusted


def test_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.toml"
    path.write_text(
        '[[listener]]\nendpoint = "tcp:8080"\ntrust_forwarded_from = ["10.0.0.0/8", "::1"]\n'
        '[[route]]\nbackend = "ws://127.0.0.1:9000"\n'
    )
    (listener,) = load_file(str(path)).listeners
    assert [str(n) for n in listener.trust_forwarded_from] == ["10.0.0.0/8", "::1/128"]
    path.write_text(path.read_text().replace('"::1"', '"10.0.0.300"'))
    expected = r"\[\[listener\]\] #1: trust_forwarded_from: '10.0.0.300' is not an IP address"
    with pytest.raises(ConfigError, match=expected):
        load_file(str(path))
    options = Options()
    options.parseOptions(["--backend", "ws://h", "--trust-forwarded-from", "192.0.2.1,10.0.0.0/8"])
    (listener,) = options["config"].listeners
    assert [str(n) for n in listener.trust_forwarded_from] == ["192.0.2.1/32", "10.0.0.0/8"]
    with pytest.raises(usage.UsageError, match="--trust-forwarded-from: 'x' is not an IP"):
        Options().parseOptions(["--backend", "ws://h", "--trust-forwarded-from", "x"])


_REQUEST = upgrade_request(
    b"/",
    b"h",
    b"X-Forwarded-For: 6.6.6.6",
    b"Forwarded: for=6.6.6.6",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: evil.example",
)


def _forwarding(head: bytes) -> dict[str, str]:
    found = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() in (
            "x-forwarded-for",
            "forwarded",
            "x-forwarded-proto",
            "x-forwarded-host",
        ):
            assert name.lower() not in found, head  # each once
            found[name.lower()] = value.strip()
    return found


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


_OWN = {
    "x-forwarded-for": "127.0.0.1",
    "forwarded": "for=127.0.0.1;host=h;proto=http",
    "x-forwarded-proto": "http",
    "x-forwarded-host": "h",
}
_APPENDED = _OWN | {
    "x-forwarded-for": "6.6.6.6, 127.0.0.1",
    "forwarded": "for=6.6.6.6, for=127.0.0.1;host=h;proto=http",
}


@pytest.mark.parametrize(
    ("trust", "expected"),
    [
        ((), _OWN),
        (("--trust-forwarded-from", "10.0.0.0/8,::1"), _OWN),
        (("--trust-forwarded-from", "127.0.0.0/8"), _APPENDED),
    ],
)
def test_end_to_end(wsgate: GateFactory, trust: tuple[str, ...], expected: dict[str, str]) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", *trust)
    with RecordingBackend(port) as recorder:
        assert _send(gate.port, _REQUEST).startswith(b"HTTP/1.1 101 ")
    assert _forwarding(recorder.heads[0]) == expected


@pytest.mark.parametrize(
    ("trust", "expected_for"),
    [
        ("203.0.113.0/24", "6.6.6.6, 203.0.113.9"),
        ("127.0.0.1", "203.0.113.9"),  # the socket's peer is trusted, the PROXY one is not
    ],
)
def test_proxy_protocol_address_is_the_peer(
    wsgate: GateFactory, trust: str, expected_for: str
) -> None:
    port, listen = free_port(), free_port()
    gate = wsgate(
        "--listen",
        f"haproxy:tcp:{listen}:interface=127.0.0.1",
        "--backend",
        f"ws://127.0.0.1:{port}",
        "--trust-forwarded-from",
        trust,
        wait_port=listen,
    )
    proxy = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n"
    with RecordingBackend(port) as recorder:
        assert _send(listen, proxy + _REQUEST).startswith(b"HTTP/1.1 101 ")
    seen = _forwarding(recorder.heads[0])
    assert seen["x-forwarded-for"] == expected_for
    assert seen["forwarded"].endswith("for=203.0.113.9;host=h;proto=http")
    assert "Traceback" not in gate.log()
