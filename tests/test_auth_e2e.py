"""Token sources and authenticators end to end: a real ``twistd wsgate`` with
real peers on 127.0.0.1 (a TCP "desktop", a ``websockets`` backend, a Twisted
token API, a Redis server), JWTs signed here with throw-away keys, and a
plugin that lives outside the package (``etc/example_plugin.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from peers import TIMEOUT, backend, client
from websockets.exceptions import InvalidMessage, InvalidStatus

from wsgate.testing import (
    GateFactory,
    TlsFiles,
    free_port,
    make_client_cert,
    make_tls_files,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent


def _now() -> datetime.datetime:
    """Now, when a token is made: a module-level constant goes stale in a long run."""
    return datetime.datetime.now(datetime.UTC)


@contextlib.asynccontextmanager
async def desktop(port: int, name: bytes) -> AsyncIterator[None]:
    """A stream backend that says its name, like a VNC server's greeting."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", port)
    async with server:
        yield


async def greeting(url: str, **kwargs: Any) -> bytes:
    async with client(url, **kwargs) as ws:
        message = await ws.recv()
        assert isinstance(message, bytes)
        return message


async def refusal(url: str, **kwargs: Any) -> tuple[int, bytes, Any]:
    with pytest.raises(InvalidStatus) as refused:
        async with client(url, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, response.body, response.headers


def _keys(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "portal-public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def _config(tmp_path: Path, port: int, routes: str) -> Path:
    path = tmp_path / "wsgate.toml"
    path.write_text(f'[[listener]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n\n{routes}\n')
    return path


def _refused_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused by" in line]


def test_jwt_token_names_the_desktop(wsgate: GateFactory, tmp_path: Path) -> None:
    key, desk, port = _keys(tmp_path), free_port(), free_port()
    config = _config(
        tmp_path,
        port,
        '[[route]]\nprefix = "/vnc"\n'
        'tokens = { source = "jwt", key_file = "portal-public.pem", algorithms = ["ES256"], '
        'audience = "wsgate" }\n'
        f'token_targets = ["127.0.0.1:{desk}"]\n',
    )
    gate = wsgate("--config", str(config), wait_port=port)
    url = f"ws://127.0.0.1:{port}/vnc"

    def token(**claims: Any) -> str:
        base = {"host": "127.0.0.1", "port": desk, "aud": "wsgate"}
        base["exp"] = _now() + datetime.timedelta(minutes=5)  # type: ignore[assignment]
        return jwt.encode({**base, **claims}, key, algorithm="ES256")

    async def main() -> None:
        async with desktop(desk, b"RFB 003.008\n"):
            assert await greeting(f"{url}?token={token()}") == b"RFB 003.008\n"
            assert await greeting(f"{url}/{token()}") == b"RFB 003.008\n"  # as a path segment
            expired = token(exp=_now() - datetime.timedelta(minutes=1))
            other = jwt.encode({"host": "127.0.0.1", "port": desk}, "s" * 32, algorithm="HS256")
            cases = {
                expired: (403, b"token expired\n"),
                token(aud="elsewhere"): (403, b"token for another audience\n"),
                token(port=desk + 1): (403, b"target not allowed\n"),
                other: (403, b"token algorithm not allowed\n"),
            }
            for bad, (status, body) in cases.items():
                got = await refusal(f"{url}?token={bad}")
                assert (got[0], got[1]) == (status, body)
            assert (await refusal(url))[:2] == (404, b"unknown token\n")

    asyncio.run(main())
    lines = _refused_lines(gate.log())
    assert len(lines) == 5, lines  # one line per refusal
    assert "refused by jwt: 403 token expired" in lines[0]
    assert f"(target 127.0.0.1:{desk + 1})" in lines[2]  # the log names it; the body does not


def test_basic_auth_admits_and_forwards_the_user(wsgate: GateFactory, tmp_path: Path) -> None:
    users = tmp_path / "users.htpasswd"
    users.write_bytes(b"alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)) + b"\n")
    port, back = free_port(), free_port()
    config = _config(
        tmp_path,
        port,
        f'[[route]]\nprefix = "/app"\nbackend = "ws://127.0.0.1:{back}"\n'
        'auth = [{ plugin = "basic", htpasswd = "users.htpasswd", realm = "desks" }]\n\n'
        f'[[route]]\nprefix = "/open"\nbackend = "ws://127.0.0.1:{back}"\n',
    )
    gate = wsgate("--config", str(config), wait_port=port)

    def basic(credentials: bytes) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}

    async def main() -> None:
        async with backend(back) as seen:
            status, body, headers = await refusal(f"ws://127.0.0.1:{port}/app")
            assert (status, body) == (401, b"credentials required\n")
            assert headers["WWW-Authenticate"] == 'Basic realm="desks", charset="UTF-8"'
            status, _, _ = await refusal(
                f"ws://127.0.0.1:{port}/app", additional_headers=basic(b"alice:wrong")
            )
            assert status == 401
            assert not seen.seen  # no backend was contacted
            spoofed = {**basic(b"alice:s3cret"), "X-Forwarded-User": "root"}
            async with client(f"ws://127.0.0.1:{port}/app", additional_headers=spoofed) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert seen.seen[0].headers.get_all("X-Forwarded-User") == ["alice"]
            async with client(
                f"ws://127.0.0.1:{port}/open", additional_headers={"X-Forwarded-User": "root"}
            ):
                pass
            assert (await seen.wait_seen(2)).headers.get_all("X-Forwarded-User") == []

    asyncio.run(main())
    log = gate.log()
    assert len(_refused_lines(log)) == 2
    assert "user=alice" in log


def test_a_plugin_from_outside_the_package(wsgate: GateFactory, tmp_path: Path) -> None:
    """etc/example_plugin.py, the README's example, as a third-party module."""
    plugins = tmp_path / "site"
    plugins.mkdir()
    shutil.copy(ROOT / "etc" / "example_plugin.py", plugins / "example_plugin.py")
    port, back = free_port(), free_port()
    config = _config(
        tmp_path,
        port,
        f'[[route]]\nprefix = "/app"\nbackend = "ws://127.0.0.1:{back}"\n'
        'auth = [{ plugin = "example_plugin:ApiKeyAuth", keys = { "k-7f3a" = "alice" } }]\n',
    )
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    check = subprocess.run(
        [sys.executable, "-m", "wsgate._cli", "check-config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    without = subprocess.run(
        [sys.executable, "-m", "wsgate._cli", "check-config", str(config)],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert without.returncode == 1
    assert (
        f"{config}: [[route]] #1 (/app): auth[0]: plugin: cannot import 'example_plugin'"
        in without.stderr
    )
    from wsgate.testing import Wsgate

    refused = subprocess.run(
        Wsgate("--config", str(config)).command(),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1  # refused at start too, naming the route and key
    assert "[[route]] #1 (/app): auth[0]: plugin: cannot import 'example_plugin'" in (
        refused.stdout + refused.stderr
    )
    gate = Wsgate("--config", str(config), log_path=tmp_path / "gate.log", env=env)

    async def main() -> None:
        async with backend(back) as seen:
            url = f"ws://127.0.0.1:{port}/app"
            assert (await refusal(url))[:2] == (403, b"unknown API key\n")
            async with client(url, additional_headers={"X-Api-Key": "k-7f3a"}):
                pass
            assert seen.seen[0].headers["X-Forwarded-User"] == "alice"

    gate.start(wait_port=port)
    try:
        asyncio.run(main())
    finally:
        gate.stop()


@pytest.fixture
def token_api(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """tests/tokenapi.py on a free port; (its port, the desktop port it names)."""
    port, desk = free_port(), free_port()
    log = (tmp_path / "tokenapi.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "tokenapi.py"), str(port), str(desk)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc=proc)
        yield port, desk
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_http_token_source(wsgate: GateFactory, tmp_path: Path, token_api: tuple[int, int]) -> None:
    import urllib.request

    api, desk = token_api
    port = free_port()
    config = _config(
        tmp_path,
        port,
        '[[route]]\nprefix = "/desk"\n'
        f'tokens = {{ source = "http", url = "http://127.0.0.1:{api}/target?token={{token}}", '
        "cache_seconds = 30 }\n"
        f'token_targets = ["127.0.0.1:{desk}"]\ntoken_timeout = 1\n',
    )
    gate = wsgate("--config", str(config), wait_port=port)
    url = f"ws://127.0.0.1:{port}/desk"

    def hits() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/hits", timeout=TIMEOUT) as r:
            return int(r.read())

    async def main() -> None:
        async with desktop(desk, b"desk"):
            assert await greeting(f"{url}?token=good") == b"desk"
            assert await greeting(f"{url}?token=good") == b"desk"
            assert await greeting(f"{url}?token=json-target") == b"desk"
            assert hits() == 2  # the second "good" came from the cache
            assert await greeting(f"{url}?token=chunked") == b"desk"
            huge = await refusal(f"{url}?token=huge")
            assert huge[:2] == (502, b"token source answer too large\n")
            assert (await refusal(f"{url}?token=nope"))[:2] == (404, b"unknown token\n")
            assert (await refusal(f"{url}?token=outside"))[:2] == (403, b"target not allowed\n")
            boom = await refusal(f"{url}?token=boom")
            assert boom[:2] == (502, b"token source answered 500\n")
            garbage = await refusal(f"{url}?token=garbage")
            assert garbage[:2] == (502, b"token source answer is not a target\n")
            assert (await refusal(f"{url}?token=slow"))[:2] == (503, b"http timed out\n")

    asyncio.run(main())
    assert len(_refused_lines(gate.log())) == 6


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A throw-away redis-server on a free 127.0.0.1 port, no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def _redis_set(port: int, key: str, value: str) -> None:
    """SET over a plain socket (RESP), so the test needs no client library either."""
    import socket

    parts = [b"SET", key.encode(), value.encode()]
    command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(command)
        assert sock.recv(64) == b"+OK\r\n"


def test_redis_token_source(
    wsgate: GateFactory, tmp_path: Path, redis_server: tuple[int, subprocess.Popen[bytes]]
) -> None:
    redis_port, redis_proc = redis_server
    desk, port = free_port(), free_port()
    _redis_set(redis_port, "vnc:one", f"127.0.0.1:{desk}")
    _redis_set(redis_port, "vnc:two", f'{{"host": "127.0.0.1", "port": {desk}}}')
    _redis_set(redis_port, "vnc:bad", "no port here")
    config = _config(
        tmp_path,
        port,
        '[[route]]\nprefix = "/lab"\n'
        f'tokens = {{ source = "redis", url = "redis://127.0.0.1:{redis_port}/0", '
        'key = "vnc:{token}" }\n',
    )
    gate = wsgate("--config", str(config), wait_port=port)
    url = f"ws://127.0.0.1:{port}/lab"

    async def main() -> None:
        async with desktop(desk, b"lab"):
            assert await greeting(f"{url}?token=one") == b"lab"
            assert await greeting(f"{url}/two") == b"lab"
            assert (await refusal(f"{url}?token=three"))[:2] == (404, b"unknown token\n")
            bad = await refusal(f"{url}?token=bad")
            assert bad[:2] == (502, b"token source value is not a target\n")
            redis_proc.terminate()
            redis_proc.wait(10)
            down = await refusal(f"{url}?token=one")
            assert down[:2] == (503, b"token source unavailable\n")

    asyncio.run(main())
    assert len(_refused_lines(gate.log())) == 3


def test_client_certificates_on_a_mutual_tls_listener(
    wsgate: GateFactory, tmp_path: Path, tls_files: TlsFiles
) -> None:
    import ssl

    alice = make_client_cert(tls_files, tmp_path / "clients", "alice")
    bob = make_client_cert(tls_files, tmp_path / "clients", "bob")
    stranger_ca = make_tls_files(tmp_path / "other-ca", ca_name="another CA")
    mallory = make_client_cert(stranger_ca, tmp_path / "clients", "mallory-alice")
    port, back = free_port(), free_port()
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f'[[listener]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
        f'certificates = [{{ cert = "{tls_files.cert}", key = "{tls_files.key}" }}]\n'
        f'client_ca = "{tls_files.ca_cert}"\n\n'
        f'[[route]]\nprefix = "/app"\nbackend = "ws://127.0.0.1:{back}"\n'
        'auth = [{ plugin = "client-cert", allow = ["alice@example.test"] }]\n'
    )
    gate = wsgate("--config", str(config), wait_port=port)
    url = f"wss://127.0.0.1:{port}/app"

    def context(pair: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))
        if pair is not None:
            ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        return ctx

    async def main() -> None:
        async with backend(back) as seen:
            async with client(url, ssl=context(alice)):
                pass
            assert seen.seen[0].headers["X-Forwarded-User"] == "alice@example.test"
            assert (await refusal(url, ssl=context(bob)))[:2] == (
                403,
                b"client certificate not allowed\n",
            )
            assert (await refusal(url, ssl=context(None)))[:2] == (
                403,
                b"client certificate required\n",
            )
            # With TLS 1.3 the client learns of the refused certificate only
            # when the server's alert arrives: a failed TLS read or no answer.
            with pytest.raises((ssl.SSLError, ConnectionError, InvalidMessage)):
                async with client(url, ssl=context(mallory)):
                    pass
            assert len(seen.seen) == 1

    asyncio.run(main())
    assert len(_refused_lines(gate.log())) == 2


def test_unix_socket_directory_and_the_command_line(wsgate: GateFactory, tmp_path: Path) -> None:
    """websockify's directory of sockets named by token, from --token-source,
    with --auth and --token-targets on the command line."""
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    (sockets / "not-a-socket").write_text("")
    users = tmp_path / "users.htpasswd"
    users.write_bytes(b"dora:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n")
    gate = wsgate(
        "--token-source",
        f"unix-dir:path={sockets}",
        "--token-targets",
        f"unix:{sockets}/desk-*",
        "--auth",
        f"basic:htpasswd={users}",
    )
    credentials = {"Authorization": "Basic " + base64.b64encode(b"dora:pw").decode()}

    async def main() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"unix desk")
            await writer.drain()
            await reader.read()
            writer.close()

        servers = [
            await asyncio.start_unix_server(greet, str(sockets / name))
            for name in ("desk-1", "other")
        ]
        try:
            url = gate.url + "/websockify?token="
            got = await greeting(url + "desk-1", additional_headers=credentials)
            assert got == b"unix desk"
            assert (await refusal(url + "desk-1"))[0] == 401
            for token, status in (
                ("other", 403),  # a socket, but outside --token-targets
                ("not-a-socket", 404),
                ("..", 404),
                ("missing", 404),
            ):
                got_status = (await refusal(url + token, additional_headers=credentials))[0]
                assert (token, got_status) == (token, status)
        finally:
            for server in servers:
                server.close()

    asyncio.run(main())


def test_a_reload_rebuilds_the_plugins_or_keeps_the_running_ones(
    wsgate: GateFactory, tmp_path: Path
) -> None:
    """SIGHUP: new token_targets apply at once; a plugin that cannot be
    loaded refuses the reload and the running plugins stay."""
    import time

    key, desk, port = _keys(tmp_path), free_port(), free_port()

    def write(targets: str, source: str = "jwt") -> None:
        _config(
            tmp_path,
            port,
            '[[route]]\nprefix = "/vnc"\n'
            f'tokens = {{ source = "{source}", key_file = "portal-public.pem" }}\n'
            f"token_targets = {targets}\n",
        )

    def wait_log(text: str, count: int) -> None:
        deadline = time.monotonic() + 15
        while gate.log().count(text) < count:
            assert time.monotonic() < deadline, gate.log()
            time.sleep(0.05)  # the log is a file: poll it

    write(f'["127.0.0.1:{desk}"]')
    gate = wsgate("--config", str(tmp_path / "wsgate.toml"), wait_port=port)
    claims = {"host": "127.0.0.1", "port": desk, "exp": _now() + datetime.timedelta(minutes=5)}
    url = f"ws://127.0.0.1:{port}/vnc?token={jwt.encode(claims, key, algorithm='ES256')}"

    async def main() -> None:
        async with desktop(desk, b"d"):
            assert await greeting(url) == b"d"
            write('["10.0.0.0/8:5900"]')
            gate.reload()
            await asyncio.to_thread(wait_log, "applied:", 1)
            assert (await refusal(url))[:2] == (403, b"target not allowed\n")
            write(f'["127.0.0.1:{desk}"]', source="nosuch:Source")
            gate.reload()
            await asyncio.to_thread(wait_log, "cannot import 'nosuch'", 1)
            assert (await refusal(url))[:2] == (403, b"target not allowed\n")  # still the old

    asyncio.run(main())
