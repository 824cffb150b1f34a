"""An Autobahn (Twisted) client peer: sends messages, checks each echo, prints a JSON verdict.

Run as a child process by tests/test_autobahn_peers.py: ``python autobahn_client.py URL DEFLATE``.
"""

from __future__ import annotations

import json
import os
import sys

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import reactor

MESSAGES: list[tuple[bytes, bool]] = [
    (b"", False),
    (b"hello", False),
    ("ünïcødé".encode() * 5000, False),
    (os.urandom(1 << 20), True),
    (b"\x00" * (3 << 20), True),
]
result: dict[str, object] = {"echoed": 0}


class Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        # etc/example_backend.py greets first, then echoes.
        result["extensions"] = [str(e) for e in self.websocket_extensions_in_use]
        self._next = -1

    def _send(self) -> None:
        payload, binary = MESSAGES[self._next]
        self.sendMessage(payload, binary, fragmentSize=100_000 if len(payload) > 200_000 else None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._next == -1:
            result["greeting"] = json.loads(payload)
            self._next = 0
            self._send()
            return
        expected, binary = MESSAGES[self._next]
        if payload != expected or isBinary != binary:
            result["error"] = f"message {self._next} came back different"
            self.sendClose(1000)
            return
        result["echoed"] = self._next = self._next + 1
        if self._next == len(MESSAGES):
            self.sendClose(4321, "all good")
        else:
            self._send()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        result["close"] = [code, reason]
        reactor.stop()


def main() -> None:
    url, deflate = sys.argv[1], sys.argv[2] == "on"
    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    if deflate:
        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=lambda r: (
                PerMessageDeflateResponseAccept(r)
                if isinstance(r, PerMessageDeflateResponse)
                else None
            ),
        )
    connectWS(factory)
    reactor.callLater(60, reactor.stop)
    reactor.run()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
