"""The Node ``ws`` echo backend (``tests/node/echo_server.js``) as a test peer.

It prints ``LISTENING <port>`` and then one JSON line per connection event;
``NodeEcho`` reads them in a thread so a test can wait for a record with a
timeout.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).parent / "node"
ECHO_SERVER = NODE_DIR / "echo_server.js"
#: Every wait on the Node process is bounded by this, in seconds.
TIMEOUT = 30.0


def node_missing() -> str | None:
    """Why the Node backend cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH (apt-get install nodejs)"
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return f"the Node ws package is not installed: run `npm ci` in {NODE_DIR} (make test does)"
    return None


@dataclass
class NodeEcho:
    """``node echo_server.js`` and the JSON records it printed."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _line(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("echo_server.js printed nothing in time") from None
        if line is None:
            raise RuntimeError(f"echo_server.js exited with {self.proc.wait(TIMEOUT)}")
        return line

    def _wait_listening(self) -> None:
        line = self._line(time.monotonic() + TIMEOUT)
        match = re.fullmatch(r"LISTENING (\d+)", line)
        assert match, f"unexpected first line from echo_server.js: {line!r}"
        self.port = int(match[1])

    def printed(self) -> list[dict[str, Any]]:
        """Every record printed so far, without waiting for more."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.records
            if line is None:
                self.lines.put(None)  # keep the end for whoever waits next
                return self.records
            self.records.append(json.loads(line))

    def record(self, event: str, index: int = 0) -> dict[str, Any]:
        """The ``index``-th record of ``event`` ("open", "close"), waiting for it."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = [r for r in self.records if r.get("event") == event]
            if len(found) > index:
                return found[index]
            self.records.append(json.loads(self._line(deadline)))


@contextlib.contextmanager
def node_echo_server(stderr_path: Path) -> Iterator[NodeEcho]:
    """Run echo_server.js on a free port; on exit, SIGTERM it and check it exited 0."""
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            ["node", str(ECHO_SERVER), "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=NODE_DIR,
        )
        echo = NodeEcho(proc)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                echo.lines.put(line.rstrip("\n"))
            echo.lines.put(None)

        reader = threading.Thread(target=pump, name="echo-server-stdout", daemon=True)
        reader.start()
        try:
            echo._wait_listening()
            yield echo
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                returncode = proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait(TIMEOUT)
            reader.join(TIMEOUT)
    assert returncode == 0, f"echo_server.js exited with {returncode}: {stderr_path.read_text()}"
