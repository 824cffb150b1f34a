"""Static files on a WebSocket listener: noVNC's pages on the port of its WebSocket.

A plain HTTP request on a listener with ``web`` is handed, connection and
all, to a twisted.web ``Site`` serving the directory with ``static.File``
(content types, ranges, no path traversal, no directory listings). Browsers
may reuse such a keep-alive connection for a WebSocket upgrade; the site
hands those back to a new frontend protocol, which routes them as usual.
"""

from __future__ import annotations

import os
from typing import Any, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, resource, server, static

from wsgate import _answers

_log = Logger(namespace="wsgate")


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
    """``static.File`` that refuses what it would choke on (NUL, bytes that are
    not UTF-8: a 500 and a traceback) and, unless told to follow them, files
    whose real path is outside the directory (a symlink out of it)."""

    childNotFound = _NotFound()  # type: ignore[assignment]
    #: The served directory's real path, and whether to follow links out of it.
    root: str = "/"
    follow_symlinks: bool = False

    def getChild(self, path: bytes, request: server.Request) -> Any:
        if b"\x00" in path:
            return self.childNotFound
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not self.follow_symlinks:
            real = os.path.realpath(child.path)
            if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
                return self.childNotFound
        return child

    def createSimilarFile(self, path: str) -> static.File:
        similar = cast(_Files, super().createSimilarFile(path))
        similar.root = self.root
        similar.follow_symlinks = self.follow_symlinks
        return similar

    def directoryListing(self) -> resource.Resource:
        return _NotFound()


class _Request(server.Request):
    """twisted.web's request, answering like wsgate's own: an error or redirect
    body is one plain-text line (not an HTML page), no ``Server`` banner, and a
    failure is one log line, not a traceback."""

    _replaced = False

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.responseHeaders.removeHeader(b"server")
            if self.code >= 300 and self.code != http.NOT_MODIFIED and not _plain(self):
                self._replaced = True
                body = _one_line(self)
                self.setHeader(b"content-type", b"text/plain; charset=utf-8")
                self.setHeader(b"content-length", b"%d" % len(body))
                super().write(body)
                return
        elif self._replaced:
            return
        super().write(data)

    def processingFailed(self, reason: Failure) -> None:  # type: ignore[override]
        _log.error(
            "web: {method} {uri} failed: {error}",
            method=self.method.decode("latin-1"),
            uri=self.uri.decode("latin-1"),
            error=reason.getErrorMessage(),
        )
        body = b"500 Internal Server Error\n"
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


def _plain(request: server.Request) -> bool:
    values = request.responseHeaders.getRawHeaders(b"content-type") or []
    return any(value.startswith(b"text/plain") for value in values)


def _one_line(request: server.Request) -> bytes:
    """``404 Not Found``, ``302 Found: see /dir/``: what an HTML page said."""
    line = f"{request.code} {request.code_message.decode('latin-1')}"
    location = request.responseHeaders.getRawHeaders(b"location")
    if location:
        line += f": see {location[0].decode('latin-1')}"
    return (line + "\n").encode("utf-8")


class _Channel(http.HTTPChannel):
    """An HTTP/1.1 connection whose every request head must arrive within the
    site's ``request_timeout`` (counted from the connection's start or the end
    of the previous response), as the WebSocket request head must: else a
    client trickling one byte at a time holds the connection for ever."""

    site: _Site
    transport: Any  # ITCPTransport, TLS, or PROXY protocol's wrapper
    _head_call: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            self._arm()  # before super(): it replays pipelined data
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.transport.write(_answers.plain(400, b"400 Bad Request\n"))
        self.loseConnection()

    def _arm(self) -> None:
        self._disarm()
        self._head_call = self.callLater(self.site.request_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()

    def _head_timed_out(self) -> None:
        self._head_call = None
        _log.info(
            "web: {peer}: no complete request head in {timeout} s, closed",
            peer=str(self.transport.getPeer()),
            timeout=self.site.request_timeout,
        )
        self.transport.loseConnection()


class _Site(server.Site):
    """The static site of one listener; ``request_timeout`` is the listener's
    request-head deadline, the same as for WebSocket upgrades."""

    protocol = _Channel  # type: ignore[assignment]
    requestFactory = _Request
    displayTracebacks = False
    request_timeout = 30.0


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


def make_site(
    directory: str,
    index: str | None,
    websocket_factory: Any,
    *,
    follow_symlinks: bool = False,
    request_timeout: float = 30.0,
    reactor: Any = None,
) -> server.Site:
    files = _Files(directory)
    files.indexNames = [index or "index.html"]
    files.root = os.path.realpath(directory)
    files.follow_symlinks = follow_symlinks
    site = _Site(_Root(files, WebSocketResource(websocket_factory)), reactor=reactor)
    site.request_timeout = request_timeout
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
