"""Real WebSocket peers for the end-to-end tests: a ``websockets`` backend in the test's loop.

The backend records what each connection negotiated and saw, so a test can
check both legs of wsgate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

Handler = Callable[[ServerConnection], Awaitable[None]]

#: Every test bounds its awaits with this.
TIMEOUT = 20.0


@dataclass
class Seen:
    """What the backend saw of one connection."""

    path: str
    headers: Headers
    subprotocol: str | None
    extensions: str | None  # the Sec-WebSocket-Extensions it answered
    close_code: int | None = None
    close_reason: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Backend:
    """A ``websockets`` server on 127.0.0.1 behind wsgate."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.connected = asyncio.Event()
        self.server: Server | None = None

    async def wait_seen(self, count: int = 1) -> Seen:
        async with asyncio.timeout(TIMEOUT):
            while len(self.seen) < count:
                self.connected.clear()
                await self.connected.wait()
        return self.seen[count - 1]


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@contextlib.asynccontextmanager
async def backend(
    port: int,
    handler: Handler = echo,
    *,
    compression: str | None = "deflate",
    subprotocols: list[str] | None = None,
    refuse: int | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_size: int | None = None,
) -> AsyncIterator[Backend]:
    state = Backend()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if refuse is not None:
            return connection.respond(HTTPStatus(refuse), "refused by backend\n")
        return None

    def process_response(
        connection: ServerConnection, request: Request, response: Response
    ) -> Response:
        for name, value in extra_headers or ():
            response.headers[name] = value
        return response

    async def run(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.response is not None
        seen = Seen(
            path=ws.request.path,
            headers=ws.request.headers,
            subprotocol=ws.subprotocol,
            extensions=ws.response.headers.get("Sec-WebSocket-Extensions"),
        )
        state.seen.append(seen)
        state.connected.set()
        try:
            await handler(ws)
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(Exception):
                await ws.wait_closed()
            if ws.close_code is not None:
                seen.close_code = ws.close_code
                seen.close_reason = ws.close_reason or ""
            else:
                rcvd = ws.protocol.close_rcvd
                seen.close_code = rcvd.code if rcvd else 1006
                seen.close_reason = rcvd.reason if rcvd else ""
            seen.closed.set()

    async with serve(
        run,
        "127.0.0.1",
        port,
        compression=compression,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        process_request=process_request,
        process_response=process_response,
        ssl=ssl_context,
        max_size=max_size,
    ) as server:
        state.server = server
        yield state


def client(url: str, **kwargs: Any) -> connect:
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    kwargs.setdefault("max_size", None)
    return connect(url, **kwargs)


def negotiated(ws: ClientConnection) -> str | None:
    assert ws.response is not None
    return ws.response.headers.get("Sec-WebSocket-Extensions")
