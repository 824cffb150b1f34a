#!/usr/bin/env python3
"""The example backend for ``make demo``: an Autobahn echo server that also says hello.

Replies to each message with the same message (text stays text); on open it
sends one text line saying what this leg negotiated, so you can see that
wsgate's backend leg and your browser's leg are negotiated separately.
"""

from __future__ import annotations

import argparse
import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import reactor
from twisted.python import log


class Echo(WebSocketServerProtocol):
    def onConnect(self, request):
        self._headers = {k: v for k, v in request.headers.items() if k.startswith("x-forwarded")}
        return request.protocols[0] if request.protocols else None

    def onOpen(self):
        hello = {
            "hello": f"from the example backend {self.factory.name}",
            "backend_leg_extensions": [str(e) for e in self.websocket_extensions_in_use],
            "forwarded": self._headers,
        }
        self.sendMessage(json.dumps(hello).encode())

    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def accept(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--name", default="", help="said in the greeting")
    args = parser.parse_args()
    log.startLogging(sys.stdout)
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.name = args.name or f"on port {args.port}"
    factory.setProtocolOptions(perMessageCompressionAccept=accept)
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
