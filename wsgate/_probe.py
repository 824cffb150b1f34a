"""``wsgate probe URL``: what a WebSocket URL negotiates, and whether a
compressed echo survives.

The question behind wsgate: two peers agreed on permessage-deflate past a
proxy and nobody could see it. Probing the gateway and then the backend
directly shows each leg's negotiation side by side, without Wireshark.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import defer, endpoints, error, ssl
from twisted.python.failure import Failure

#: Exit statuses: the handshake (and echo) worked; refused, unreachable or
#: the echo differed; a usage error (argparse's own).
OK, FAILED, USAGE = 0, 1, 2

#: The messages sent to an echo service, in order.
_TEXT = ("wsgate probe: a compressible text message. " * 400).encode()
_MIB = 1024 * 1024


@dataclass
class Extension:
    name: str
    params: dict[str, str | None]


@dataclass
class Echo:
    message: str
    bytes: int
    intact: bool | None = None  # None: no answer in time
    rtt_ms: float | None = None


@dataclass
class Report:
    url: str
    ok: bool = False
    error: str | None = None  # why it failed, in one line
    status: int | None = None
    status_line: str | None = None
    body: str | None = None  # a refusal's first body line
    subprotocol: str | None = None
    extensions: list[Extension] = field(default_factory=list)
    echo: list[Echo] = field(default_factory=list)
    received: str | None = None  # --no-echo: the first message, described


@dataclass(frozen=True)
class Options:
    url: str
    ca: str | None = None
    insecure: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    deflate: bool = True
    origin: str | None = None
    echo: bool = True
    wait: float = 5.0
    timeout: float = 10.0


def parse_extensions(header: str | None) -> list[Extension]:
    """``Sec-WebSocket-Extensions`` as negotiated: each extension and its parameters."""
    found = []
    for item in (header or "").split(","):
        parts = [p.strip() for p in item.split(";") if p.strip()]
        if not parts:
            continue
        params: dict[str, str | None] = {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            params[key.strip()] = value.strip().strip('"') if sep else None
        found.append(Extension(parts[0], params))
    return found


class _Probe(WebSocketClientProtocol):  # type: ignore[misc]
    factory: _ProbeFactory
    _refused_at: float | None = None

    def onOpen(self) -> None:
        self.factory.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed(code, reason or getattr(self, "wasNotCleanReason", None))

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", None)
        if status_line and self._refused_at is None and " 101" not in status_line[:13]:
            # A refusal: read the body's first line before hanging up.
            self._refused_at = self.factory.clock.seconds()
            self.factory.refused(status_line, self._body())
            if b"\n" not in self._body_bytes():
                self.factory.clock.callLater(1.0, self._give_up, reason)
                return
        super().failHandshake(reason)

    def _give_up(self, reason: str) -> None:
        self.factory.refused(self.http_status_line, self._body())
        super().failHandshake(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused_at is not None:
            self.data += data
            self.factory.refused(self.http_status_line, self._body())
            if b"\n" in self._body_bytes():
                super().failHandshake("refused")
            return
        super().dataReceived(data)

    def _body_bytes(self) -> bytes:
        head = getattr(self, "http_response_data", b"")
        return bytes(self.data[len(head) :])

    def _body(self) -> str:
        return self._body_bytes().split(b"\n", 1)[0].decode("utf-8", "replace").strip()


class _ProbeFactory(WebSocketClientFactory):  # type: ignore[misc]
    protocol = _Probe  # type: ignore[assignment]

    def __init__(self, options: Options, report: Report, clock: Any) -> None:
        headers = dict(options.headers)
        super().__init__(
            options.url,
            origin=options.origin,
            protocols=list(options.subprotocols) or None,
            headers=headers or None,
        )
        offers = [PerMessageDeflateOffer(accept_max_window_bits=True)] if options.deflate else []
        self.setProtocolOptions(
            perMessageCompressionOffers=offers,
            perMessageCompressionAccept=_accept,
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            openHandshakeTimeout=options.timeout,
            closeHandshakeTimeout=options.timeout,
        )
        self.clock = clock
        self._options = options
        self._report = report
        self._waiting: list[tuple[Echo, bytes, bool, float]] = []
        self.done: defer.Deferred[None] = defer.Deferred()
        self._proto: _Probe | None = None
        self._timer: Any = None
        self._finished = False

    # -- handshake ------------------------------------------------------------

    def refused(self, status_line: str, body: str) -> None:
        report = self._report
        report.status_line = status_line
        parts = status_line.split()
        if len(parts) > 1 and parts[1].isdigit():
            report.status = int(parts[1])
        report.body = body or None
        report.error = f"refused: {status_line}" + (f": {body}" if body else "")

    def opened(self, proto: _Probe) -> None:
        self._proto = proto
        report = self._report
        report.status_line = proto.http_status_line
        report.status = 101
        report.subprotocol = proto.websocket_protocol_in_use
        report.extensions = parse_extensions(proto.http_headers.get("sec-websocket-extensions"))
        if self._options.echo:
            self._send_next()
        else:
            self._timer = self.clock.callLater(self._options.wait, self._finish, True)

    # -- echo ----------------------------------------------------------------------

    def _messages(self) -> list[tuple[Echo, bytes, bool]]:
        noise = os.urandom(64 * 1024)
        big = os.urandom(_MIB)
        return [
            (Echo("compressible text", len(_TEXT)), _TEXT, False),
            (Echo("incompressible binary", len(noise)), noise, True),
            (Echo("1 MiB binary", len(big)), big, True),
        ]

    def _send_next(self) -> None:
        if not hasattr(self, "_queue"):
            self._queue = self._messages()
        if not self._queue:
            self._finish(all(e.intact for e in self._report.echo))
            return
        echo, payload, binary = self._queue.pop(0)
        self._report.echo.append(echo)
        self._waiting = [(echo, payload, binary, self.clock.seconds())]
        assert self._proto is not None
        self._proto.sendMessage(payload, isBinary=binary)
        self._timer = self.clock.callLater(self._options.timeout, self._no_echo, echo)

    def _no_echo(self, echo: Echo) -> None:
        self._timer = None
        self._report.error = (
            f"no echo of the {echo.message} message within {self._options.timeout:g} s"
        )
        self._finish(False)

    def message(self, payload: bytes, binary: bool) -> None:
        if not self._options.echo:
            kind = "binary" if binary else "text"
            preview = payload[:60].decode("utf-8", "replace") if not binary else payload[:16].hex()
            self._report.received = f"{kind}, {len(payload)} B: {preview}"
            self._finish(True)
            return
        if not self._waiting:
            return
        (echo, sent, binary_sent, at), self._waiting = self._waiting[0], []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        echo.rtt_ms = round((self.clock.seconds() - at) * 1000, 3)
        echo.intact = payload == sent and binary == binary_sent
        if not echo.intact:
            self._report.error = f"the {echo.message} message came back different"
        self._send_next()

    # -- the end -------------------------------------------------------------------

    def _finish(self, ok: bool) -> None:
        """The verdict is in: close with 1000 and end once the server
        answered the close (Autobahn's close timeout bounds the wait)."""
        if self.done.called or self._finished:
            return
        self._finished = True
        self._report.ok = ok and self._report.error is None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._proto is not None and self._proto.state == self._proto.STATE_OPEN:
            self._proto.sendClose(1000)
        else:
            self.done.callback(None)

    def closed(self, code: int | None, reason: str | None) -> None:
        if self.done.called:
            return
        if self._finished:
            self.done.callback(None)
            return
        report = self._report
        if report.error is None:
            if report.status == 101:
                report.error = f"closed by the server ({code}{': ' + reason if reason else ''})"
            else:
                report.error = reason or "the connection closed during the handshake"
        self._report.ok = False
        self.done.callback(None)


def _accept(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def _endpoint(reactor: Any, options: Options) -> Any:
    parts = urlsplit(options.url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    endpoint: Any = endpoints.HostnameEndpoint(reactor, host, port, timeout=options.timeout)
    if not secure:
        return endpoint
    if options.insecure:
        creator: Any = ssl.CertificateOptions(verify=False)
    else:
        trust = ssl.platformTrust()
        if options.ca is not None:
            from wsgate._config import load_ca_file

            trust = load_ca_file(options.ca, "--ca")
        creator = ssl.optionsForClientTLS(host, trustRoot=trust)
    return endpoints.wrapClientTLS(creator, endpoint)


async def probe(reactor: Any, options: Options) -> Report:
    report = Report(url=options.url)
    factory = _ProbeFactory(options, report, reactor)
    try:
        await _endpoint(reactor, options).connect(factory)
    except Exception as e:  # every way a connection attempt fails: one line
        report.error = _why(Failure(e), options.url)
        return report
    timeout = reactor.callLater(options.timeout * 5 + options.wait, factory.done.callback, None)
    await factory.done
    if timeout.active():
        timeout.cancel()
    return report


def _why(failure: Failure, url: str) -> str:
    where = urlsplit(url).netloc
    value = failure.value
    if isinstance(value, error.ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused"
    if isinstance(value, error.DNSLookupError):
        return f"cannot connect to {where}: name not found"
    if isinstance(value, error.TimeoutError):
        return f"cannot connect to {where}: timed out"
    text = str(value).strip() or type(value).__name__
    return f"cannot connect to {where}: {' '.join(text.split())}"


# -- output ---------------------------------------------------------------------


def render_text(report: Report) -> str:
    lines = [f"url          {report.url}"]
    if report.status_line:
        lines.append(f"http         {report.status_line}")
    if report.body:
        lines.append(f"body         {report.body}")
    if report.status == 101:
        lines.append(f"subprotocol  {report.subprotocol or '(none)'}")
        if not report.extensions:
            lines.append("extension    (none)")
        for ext in report.extensions:
            params = ", ".join(k if v is None else f"{k}={v}" for k, v in ext.params.items())
            lines.append(f"extension    {ext.name}" + (f": {params}" if params else ""))
    for echo in report.echo:
        verdict = {True: "intact", False: "DIFFERENT", None: "no answer"}[echo.intact]
        rtt = f", {echo.rtt_ms:.1f} ms" if echo.rtt_ms is not None else ""
        lines.append(f"echo         {echo.message} ({echo.bytes} B): {verdict}{rtt}")
    if report.received is not None:
        lines.append(f"received     {report.received}")
    if report.error:
        lines.append(f"error        {report.error}")
    lines.append(f"result       {'OK' if report.ok else 'FAILED'}")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2)


def run(options: Options, as_json: bool) -> int:
    """Probe from the command line: the program's own reactor, one report."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    reports: list[Report] = []

    def stop(_: object) -> None:
        reactor.stop()

    def go() -> None:
        d = defer.ensureDeferred(probe(reactor, options))
        d.addCallback(reports.append)
        d.addErrback(lambda f: reports.append(Report(options.url, error=_why(f, options.url))))
        d.addBoth(stop)

    reactor.callWhenRunning(go)
    reactor.run()
    report = reports[0]
    sys.stdout.write((render_json(report) if as_json else render_text(report)) + "\n")
    return OK if report.ok else FAILED


__all__ = ["Options", "Report", "parse_extensions", "probe", "render_json", "render_text", "run"]
