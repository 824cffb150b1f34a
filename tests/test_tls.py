"""TLS on both legs, with throw-away certificates: wss client -> wsgate -> wss backend."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from peers import TIMEOUT, backend, client
from websockets.exceptions import InvalidStatus

from wsgate.testing import GateFactory, TlsFiles, Wsgate, free_port, make_tls_files


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    return context


def _client_context(files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.ca_cert))


def _ssl_listen(port: int, files: TlsFiles) -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}"


def test_wss_client_to_wss_backend(wsgate: GateFactory, tls_files: TlsFiles) -> None:
    backend_port, port = free_port(), free_port()
    gate = wsgate(
        "--listen",
        _ssl_listen(port, tls_files),
        "--backend",
        f"wss://localhost:{backend_port}",
        "--backend-ca",
        str(tls_files.ca_cert),
        wait_port=port,
    )

    async def main() -> None:
        async with (
            backend(backend_port, ssl_context=_server_context(tls_files)) as be,
            client(f"wss://localhost:{port}/secure", ssl=_client_context(tls_files)) as ws,
        ):
            for message in ("hello", b"\x00" * 300_000):
                await ws.send(message)
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == message
            seen = await be.wait_seen()
            assert seen.headers["X-Forwarded-Proto"] == "https"

    asyncio.run(main())
    assert "Traceback" not in gate.log()


def test_tls_listener_offers_alpn_http11(wsgate: GateFactory, tls_files: TlsFiles) -> None:
    """Chromium fails the handshake with a listener that offers no ALPN; check it is offered."""
    port = free_port()
    wsgate(
        "--listen", _ssl_listen(port, tls_files), "--backend", "ws://127.0.0.1:1", wait_port=port
    )
    context = _client_context(tls_files)
    context.set_alpn_protocols(["h2", "http/1.1"])

    async def main() -> str | None:
        _, writer = await asyncio.open_connection("localhost", port, ssl=context)
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        return chosen

    assert asyncio.run(main()) == "http/1.1"


def _with_backend(port: int, files: TlsFiles, gate: Wsgate) -> InvalidStatus:
    async def main() -> InvalidStatus:
        async with backend(port, ssl_context=_server_context(files)):
            with pytest.raises(InvalidStatus) as refused:
                async with client(gate.url):
                    pass
            return refused.value

    return asyncio.run(main())


def test_untrusted_backend_certificate_is_502(wsgate: GateFactory, tls_files: TlsFiles) -> None:
    port = free_port()
    gate = wsgate("--backend", f"wss://localhost:{port}")  # system CAs: ours is unknown
    refused = _with_backend(port, tls_files, gate)
    assert refused.response.status_code == 502
    assert b"certificate verify failed" in refused.response.body
    gate.wait_for_log("certificate verify failed")


def test_backend_name_mismatch_is_502(
    wsgate: GateFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other", names=("other.example",))
    port = free_port()
    gate = wsgate("--backend", f"wss://localhost:{port}", "--backend-ca", str(other.ca_cert))
    refused = _with_backend(port, other, gate)
    assert refused.response.status_code == 502
    body = refused.response.body.decode()
    assert "certificate does not match the backend's name" in body
    assert "localhost" in body


def test_backend_insecure_skips_verification(wsgate: GateFactory, tls_files: TlsFiles) -> None:
    port = free_port()
    gate = wsgate("--backend", f"wss://localhost:{port}", "--backend-insecure")

    async def main() -> None:
        async with backend(port, ssl_context=_server_context(tls_files)), client(gate.url) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"

    asyncio.run(main())
