#!/usr/bin/env python3
"""``make demo``: run wsgate on the shipped example, as a user would.

Starts two example backends on 127.0.0.1:9000 and :9001, then
``twistd -n wsgate --config etc/wsgate.toml`` (listening on 127.0.0.1:8080),
and serves demo.html on http://127.0.0.1:8000/ . Ctrl-C stops them all.
"""

from __future__ import annotations

import functools
import http.server
import signal
import subprocess
import sys
import threading
from pathlib import Path

from wsgate.testing import wait_for_port

HERE = Path(__file__).resolve().parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
WSGATE_ARGS = ["-n", "--pidfile=", "wsgate", "--config", str(HERE / "wsgate.toml")]
BACKEND_PORTS = (9000, 9001)


def main() -> int:
    # Own sessions: Ctrl-C reaches this script alone, which then stops each
    # child once (a second signal made Twisted log ReactorNotRunning).
    children = [
        subprocess.Popen(
            [sys.executable, str(HERE / "example_backend.py"), "--port", str(port)],
            start_new_session=True,
        )
        for port in BACKEND_PORTS
    ]
    try:
        for port, child in zip(BACKEND_PORTS, children, strict=True):
            wait_for_port(port, proc=child)
        children.append(subprocess.Popen([*TWISTD, *WSGATE_ARGS], start_new_session=True))
        wait_for_port(8080, proc=children[-1])
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HERE))
        page = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), handler)
        threading.Thread(target=page.serve_forever, daemon=True).start()
        print(
            "\nwsgate (etc/wsgate.toml) is relaying ws://127.0.0.1:8080/ to the example\n"
            "echo backends on ports 9000 and 9001, in turn; /echo-b to 9001 only.\n"
            "  browser:  http://127.0.0.1:8000/demo.html\n"
            "  terminal: .venv/bin/python -m websockets ws://127.0.0.1:8080/\n"
            "  health:   curl http://127.0.0.1:8080/healthz\n"
            "Ctrl-C to stop.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            child.terminate()
        for child in children:
            child.wait(10)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
