#!/usr/bin/env python3
"""``make demo``: run wsgate on the shipped example, as a user would.

Starts the example backend on 127.0.0.1:9000, then
``twistd -n wsgate --listen tcp:8080:interface=127.0.0.1 --backend ws://127.0.0.1:9000``,
and serves demo.html on http://127.0.0.1:8000/ . Ctrl-C stops all three.
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
WSGATE_ARGS = [
    "-n", "--pidfile=", "wsgate",
    "--listen", "tcp:8080:interface=127.0.0.1",
    "--backend", "ws://127.0.0.1:9000",
]  # fmt: skip


def main() -> int:
    children = [
        subprocess.Popen([sys.executable, str(HERE / "example_backend.py"), "--port", "9000"])
    ]
    try:
        wait_for_port(9000, proc=children[0])
        children.append(subprocess.Popen([*TWISTD, *WSGATE_ARGS]))
        wait_for_port(8080, proc=children[1])
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HERE))
        page = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), handler)
        threading.Thread(target=page.serve_forever, daemon=True).start()
        print(
            "\nwsgate is relaying ws://127.0.0.1:8080/ -> ws://127.0.0.1:9000/"
            " (the example echo backend)\n"
            "  browser:  http://127.0.0.1:8000/demo.html\n"
            "  terminal: .venv/bin/python -m websockets ws://127.0.0.1:8080/\n"
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
