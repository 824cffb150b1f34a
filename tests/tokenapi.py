"""A small token API for the ``http`` token source's tests: ``python
tokenapi.py PORT`` serves ``/target?token=T`` on 127.0.0.1.

``good`` and ``json-target`` answer a target, ``boom`` 500, ``garbage`` a
body that is not JSON, ``slow`` never answers; anything else is 404.
``/hits`` counts the lookups, so a test can see the cache work.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.web import resource, server


class _Target(resource.Resource):
    isLeaf = True

    def __init__(self, stream_port: int) -> None:
        super().__init__()
        self.hits = 0
        self.stream_port = stream_port

    def render_GET(self, request: server.Request) -> bytes | int:
        if request.path == b"/hits":
            return str(self.hits).encode()
        self.hits += 1
        token = (request.args.get(b"token") or [b""])[0].decode()
        request.setHeader(b"content-type", b"application/json")
        if token == "good":
            return json.dumps({"host": "127.0.0.1", "port": self.stream_port}).encode()
        if token == "json-target":
            return json.dumps({"target": f"127.0.0.1:{self.stream_port}"}).encode()
        if token == "outside":
            return json.dumps({"host": "192.0.2.1", "port": 5900}).encode()
        if token == "boom":
            request.setResponseCode(500)
            return b'{"error": "internal"}'
        if token == "garbage":
            return b"<html>not json</html>"
        if token == "chunked":  # no Content-Length: HTTP/1.1 chunked encoding
            request.write(json.dumps({"host": "127.0.0.1", "port": self.stream_port}).encode())
            request.finish()
            return server.NOT_DONE_YET
        if token == "huge":
            request.write(b'{"host": "' + b"a" * 1024 * 1024 + b'"}')
            request.finish()
            return server.NOT_DONE_YET
        if token == "slow":
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"{}"


if __name__ == "__main__":
    port, stream_port = int(sys.argv[1]), int(sys.argv[2])
    reactor.listenTCP(port, server.Site(_Target(stream_port)), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
