"""Static files on a listener (``web``): every answer is one plain line like
wsgate's own, no banner, no traceback, nothing through a symlink out of the
directory, and a request-head deadline for every request of a connection.

End to end with raw sockets against ``twistd wsgate --web DIR``; the
deadline also in memory, on a ``MemoryReactorClock``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from peers import TIMEOUT
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from wsgate import _web
from wsgate.testing import GateFactory, free_port

PLAIN = "text/plain; charset=utf-8"


def _site_dir(tmp_path: Path) -> Path:
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>index</title>")
    (web / "sub" / "index.html").write_text("<!doctype html><title>sub</title>")
    (tmp_path / "secret.txt").write_text("secret outside the directory")
    (web / "out.txt").symlink_to(tmp_path / "secret.txt")
    (web / "outdir").symlink_to(tmp_path, target_is_directory=True)
    (web / "in.html").symlink_to(web / "index.html")
    return web


def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the one answer (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if raw.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk
            body += chunk
        return int(lines[0].split()[1]), headers, body


def _get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return _request(
        port, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )


def _one_plain_line(headers: dict[str, str], body: bytes) -> None:
    assert headers["content-type"] == PLAIN, headers
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    assert b"<" not in body, body


def test_nul_in_the_path_is_400_or_404_without_a_traceback(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    gate = wsgate("--web", str(_site_dir(tmp_path)))
    # A NUL is refused with the other malformed paths, before routing; bytes
    # that are not UTF-8 name no file.
    expected = {"/index.html%00.txt": 400, "/%00": 400, "/sub/%00/x": 400, "/%ff%fe.html": 404}
    for target, code in expected.items():
        status, headers, body = _get(gate.port, target)
        assert status == code, (target, status, body)
        _one_plain_line(headers, body)
    assert _get(gate.port, "/index.html")[0] == 200  # still serving
    log = gate.log()
    assert "Traceback" not in log and "Unhandled Error" not in log


def test_every_answer_is_one_plain_line_without_a_banner(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    gate = wsgate("--web", str(_site_dir(tmp_path)))
    status, headers, body = _get(gate.port, "/sub")  # a directory: redirect
    assert status in (301, 302) and headers["location"].endswith("/sub/")
    _one_plain_line(headers, body)
    assert b"/sub/" in body
    status, headers, body = _get(gate.port, "/index.html", method="POST")
    assert status == 405
    _one_plain_line(headers, body)
    status, headers, body = _get(gate.port, "/index.html", method="FROB")
    assert status in (405, 501)
    _one_plain_line(headers, body)
    status, headers, body = _get(gate.port, "/nothing")
    assert status == 404
    _one_plain_line(headers, body)
    status, headers, body = _request(
        gate.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"
    )
    assert status == 400
    _one_plain_line(headers, body)
    for target in ("/", "/index.html", "/sub/", "/sub", "/nothing"):
        status, headers, _ = _get(gate.port, target)
        assert "server" not in headers, (target, headers)
    status, headers, _ = _get(gate.port, "/index.html", method="HEAD")
    assert status == 200 and "server" not in headers
    assert "Traceback" not in gate.log()


def test_symlinks_out_of_the_directory_are_not_served(wsgate: GateFactory, tmp_path: Path) -> None:
    web = _site_dir(tmp_path)
    gate = wsgate("--web", str(web))
    for target in ("/out.txt", "/outdir/secret.txt"):
        status, headers, body = _get(gate.port, target)
        assert status == 404 and b"secret" not in body, target
        _one_plain_line(headers, body)
    status, _, body = _get(gate.port, "/in.html")  # a link inside is fine
    assert status == 200 and b"<title>index" in body

    follows = wsgate("--web", str(web), "--web-follow-symlinks")
    status, _, body = _get(follows.port, "/out.txt")
    assert status == 200 and body == b"secret outside the directory"
    status, _, body = _get(follows.port, "/outdir/secret.txt")
    assert status == 200


def test_web_follow_symlinks_in_the_config_file(wsgate: GateFactory, tmp_path: Path) -> None:
    web = _site_dir(tmp_path)
    plain, follows = free_port(), free_port()
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f"""
[[listener]]
endpoint = "tcp:{plain}:interface=127.0.0.1"
web = "{web}"

[[listener]]
endpoint = "tcp:{follows}:interface=127.0.0.1"
web = "{web}"
web_follow_symlinks = true
"""
    )
    wsgate("--config", str(config), wait_port=follows)
    assert _get(plain, "/out.txt")[0] == 404
    assert _get(follows, "/out.txt")[0] == 200


def _memory_channel(timeout: float) -> tuple[MemoryReactorClock, StringTransport, object]:
    clock = MemoryReactorClock()
    site = _web.make_site(
        str(Path(__file__).parent), None, None, request_timeout=timeout, reactor=clock
    )
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return clock, transport, channel


def test_request_head_deadline_holds_for_every_request_in_memory() -> None:
    clock, transport, channel = _memory_channel(30.0)
    channel.dataReceived(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert not transport.disconnecting  # keep-alive
    # The second request trickles in, a byte every 5 s: it gets 30 s in all.
    for byte in b"GET /missing HT":
        clock.advance(5)
        if transport.disconnecting:
            break
        channel.dataReceived(bytes([byte]))  # type: ignore[attr-defined]
    assert transport.disconnecting
    assert clock.seconds() == 30


def test_request_head_deadline_resets_per_request_in_memory() -> None:
    clock, transport, channel = _memory_channel(30.0)
    for _ in range(5):  # 5 prompt requests over 100 s: each has its own deadline
        clock.advance(20)
        channel.dataReceived(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
    assert not transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 404 ") == 5
    clock.advance(30)  # idle keep-alive: closed at the deadline too
    assert transport.disconnecting


def test_trickled_second_request_is_closed_at_the_deadline(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    # The default deadline (30 s) and its arithmetic are the in-memory tests'
    # (on a Clock); this one checks a real twistd applies the listener's.
    gate = wsgate("--web", str(_site_dir(tmp_path)), "--request-timeout", "2")

    async def main() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
        writer.write(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        started = time.monotonic()
        try:
            async with asyncio.timeout(60):
                for byte in b"GET /index.html HTTP/1.1\r\nHost: x\r\n" * 2:
                    try:
                        writer.write(bytes([byte]))
                        await writer.drain()
                    except ConnectionError:
                        break
                    try:
                        async with asyncio.timeout(0.25):
                            if await reader.read(1) == b"":
                                break
                    except TimeoutError:
                        pass
                else:
                    raise AssertionError("still open after a minute")
        finally:
            writer.close()
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert 1.5 <= elapsed <= 6, elapsed  # the 2 s request-head deadline
    assert "Traceback" not in gate.log()


def test_a_bad_request_reads_the_same_from_the_site_and_the_door(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    gate = wsgate("--web", str(_site_dir(tmp_path)))
    # The door refuses a malformed path before routing; twisted.web's channel
    # (which got the connection) refuses a malformed Content-Length.
    door = _request(gate.port, b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n")
    site = _request(gate.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
    assert door[0] == site[0] == 400
    assert door[1].keys() == site[1].keys()
    for _, headers, body in (door, site):
        _one_plain_line(headers, body)
        assert headers["cache-control"] == "no-store"  # a refusal is not for keeping
        assert headers["connection"] == "close"
