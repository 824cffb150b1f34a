"""Static files on a WebSocket listener: noVNC's pages on the port of its WebSocket.

A plain HTTP request on a listener with ``web`` is handed, connection and
all, to a twisted.web ``Site`` serving the directory with ``static.File``
(content types, ranges, no path traversal, no directory listings). Browsers
may reuse such a keep-alive connection for a WebSocket upgrade; the site
hands those back to a new frontend protocol, which routes them as usual.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import resource, server, static


def is_upgrade(headers: dict[str, str]) -> bool:
    """Whether a request (Autobahn's lower-cased header dict) asks for WebSocket."""
    return "websocket" in headers.get("upgrade", "").lower()


class _NotFound(resource.Resource):
    """A one-line 404, like wsgate's other answers (not twisted.web's HTML page)."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"no such file\n"


class _Files(static.File):
    childNotFound = _NotFound()  # type: ignore[assignment]

    def directoryListing(self) -> resource.Resource:
        return _NotFound()


class _Root(resource.Resource):
    """The directory, except that upgrade requests go back to WebSocket."""

    def __init__(self, files: static.File, websocket: Any) -> None:
        super().__init__()
        self._files = files
        self._websocket = websocket

    def getChildWithDefault(self, path: bytes, request: server.Request) -> Any:
        if _request_upgrades(request):
            return self._websocket
        return self._files.getChildWithDefault(path, request)

    def render(self, request: server.Request) -> Any:
        if _request_upgrades(request):
            return self._websocket.render(request)
        return self._files.render(request)


def _request_upgrades(request: server.Request) -> bool:
    values = request.requestHeaders.getRawHeaders(b"upgrade") or []
    return any(b"websocket" in value.lower() for value in values)


def make_site(directory: str, index: str | None, websocket_factory: Any) -> server.Site:
    files = _Files(directory)
    files.indexNames = [index or "index.html"]
    site = server.Site(_Root(files, WebSocketResource(websocket_factory)))
    site.displayTracebacks = False
    return site


def hand_over(transport: Any, site: server.Site, data: bytes) -> None:
    """Give a connection, and what it sent so far, to ``site``."""
    channel = site.buildProtocol(transport.getPeer())
    if isinstance(transport, ProtocolWrapper):  # TLS, PROXY protocol
        transport.wrappedProtocol = channel
    else:
        transport.protocol = channel
    channel.makeConnection(transport)
    channel.dataReceived(data)


__all__ = ["hand_over", "is_upgrade", "make_site"]
