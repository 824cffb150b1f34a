"""Socket options on wsgate's own sockets, read from the live process.

The test takes a duplicate of each of wsgate's sockets with pidfd_getfd(2)
and asks the kernel with getsockopt, so it sees what wsgate really set, not
what a library believes it set.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import ssl

import pytest
from peers import TIMEOUT, backend, client
from test_stream import tcp_server

from wsgate.testing import GateFactory, TlsFiles, Wsgate, free_port

_SYS_PIDFD_OPEN, _SYS_PIDFD_GETFD = 434, 438  # the same on x86_64 and aarch64
_libc = ctypes.CDLL(None, use_errno=True)


def connected_tcp_sockets(gate: Wsgate) -> list[socket.socket]:
    """Duplicates of every connected TCP socket of the processes that serve
    ``gate`` (each worker of a ``--workers`` tree)."""
    return [sock for pid in gate.serving_pids() for sock in _connected_tcp_sockets(pid)]


def _connected_tcp_sockets(pid: int) -> list[socket.socket]:
    pidfd = _libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        pytest.skip(f"pidfd_open: {os.strerror(ctypes.get_errno())}")
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            sock = socket.socket(fileno=fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                try:
                    sock.getpeername()
                except OSError:  # a listening socket
                    sock.close()
                    continue
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return found


def assert_no_delay_everywhere(gate: Wsgate, expected: int) -> None:
    sockets = connected_tcp_sockets(gate)
    try:
        assert len(sockets) == expected, [s.getpeername() for s in sockets]
        for sock in sockets:
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert nodelay, f"no TCP_NODELAY on {sock.getsockname()} -> {sock.getpeername()}"
    finally:
        for sock in sockets:
            sock.close()


def test_no_delay_on_both_legs_as_shipped(wsgate: GateFactory) -> None:
    backend_port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{backend_port}")

    async def main() -> None:
        async with backend(backend_port), client(gate.url + "/x") as ws:
            await ws.send("hello")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "hello"
            assert_no_delay_everywhere(gate, expected=2)  # the client's leg, the backend's

    asyncio.run(main())


def test_no_delay_on_tls_listener_and_stream_backend(
    wsgate: GateFactory, tls_files: TlsFiles
) -> None:
    backend_port, port = free_port(), free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}"
    gate = wsgate("--listen", listen, "--backend", f"tcp:127.0.0.1:{backend_port}", wait_port=port)
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))

    async def main() -> None:
        async with (
            tcp_server(backend_port),
            client(f"wss://localhost:{port}/vnc", ssl=context) as ws,
        ):
            await ws.send(b"RFB")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == b"RFB"
            assert_no_delay_everywhere(gate, expected=2)

    asyncio.run(main())


def test_keepalive_on_the_stream_backend_socket(wsgate: GateFactory) -> None:
    """A stream backend has no pings: its socket gets SO_KEEPALIVE."""
    backend_port = free_port()
    gate = wsgate("--backend", f"tcp:127.0.0.1:{backend_port}")

    async def main() -> None:
        async with tcp_server(backend_port), client(gate.url + "/vnc") as ws:
            await ws.send(b"RFB")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == b"RFB"
            sockets = connected_tcp_sockets(gate)
            try:
                to_backend = [s for s in sockets if s.getpeername()[1] == backend_port]
                assert len(to_backend) == 1
                assert to_backend[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            finally:
                for sock in sockets:
                    sock.close()

    asyncio.run(main())


def test_a_big_read_is_acked_at_once(wsgate: GateFactory) -> None:
    """After a big read, the socket leaves delayed-ACK (pingpong) mode.

    A backend with Nagle's algorithm on (an Autobahn server: its tcpNoDelay
    never takes effect) holds a big message's last small segment until the
    proxy ACKs what came before; a delayed ACK holds it 40 ms (a 128 KiB
    round trip in benchmarks/bigrtt.py: p90 0.5 ms or 43 ms).
    """
    backend_port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{backend_port}")

    async def main() -> None:
        async with backend(backend_port), client(gate.url + "/x") as ws:
            await ws.send("hello")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "hello"
            sockets = connected_tcp_sockets(gate)
            try:
                (to_backend,) = [s for s in sockets if s.getpeername()[1] == backend_port]
                # Request-reply traffic puts a socket in pingpong mode (ACKs wait
                # to ride on the reply); the test puts it there at once.
                to_backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                assert to_backend.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
                big = os.urandom(64 * 1024)
                await ws.send(big)
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == big
                assert to_backend.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            finally:
                for sock in sockets:
                    sock.close()

    asyncio.run(main())


def test_a_big_read_is_acked_at_once_over_tls_and_a_stream(
    wsgate: GateFactory, tls_files: TlsFiles
) -> None:
    """The same on a TLS client leg (the socket under the TLS wrapper) and a
    stream backend's leg. Each socket is checked after wsgate read from it and
    before it sends on it: a reply puts a socket back in pingpong mode."""
    backend_port, port = free_port(), free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}"
    gate = wsgate("--listen", listen, "--backend", f"tcp:127.0.0.1:{backend_port}", wait_port=port)
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    big = os.urandom(64 * 1024)
    received, reply = asyncio.Event(), asyncio.Event()

    async def sink_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3 + len(big))
        received.set()
        await reply.wait()
        writer.write(big)
        await writer.drain()
        await reader.read()

    def quick_ack(sock: socket.socket) -> int:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)

    async def main() -> None:
        async with (
            tcp_server(backend_port, sink_then_reply),
            client(f"wss://localhost:{port}/vnc", ssl=context) as ws,
        ):
            await ws.send(b"RFB")
            sockets = connected_tcp_sockets(gate)
            try:
                (to_backend,) = [s for s in sockets if s.getpeername()[1] == backend_port]
                (to_client,) = [s for s in sockets if s is not to_backend]
                for sock in sockets:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                    assert quick_ack(sock) == 0
                await ws.send(big)
                async with asyncio.timeout(TIMEOUT):
                    await received.wait()
                assert quick_ack(to_client) == 1
                reply.set()
                echoed = b""
                async with asyncio.timeout(TIMEOUT):
                    while len(echoed) < len(big):  # a stream: re-framed as it comes
                        echoed += await ws.recv()
                assert echoed == big
                assert quick_ack(to_backend) == 1
            finally:
                for sock in sockets:
                    sock.close()

    asyncio.run(main())
