"""JSON log lines and the connection id (X-Request-Id)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from typing import Any

from peers import TIMEOUT, backend, client
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from wsgate._jsonlog import event_as_json, observer
from wsgate.testing import GateFactory, free_port


def test_an_event_is_one_json_line_with_its_fields() -> None:
    out = io.StringIO()
    log = Logger(namespace="wsgate", observer=observer(out))
    log.info("close {peer}: {count} msgs", peer="tcp4:127.0.0.1:1", count=3, obj=object())
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["message"] == "close tcp4:127.0.0.1:1: 3 msgs"
    assert event["level"] == "info" and event["namespace"] == "wsgate"
    assert event["peer"] == "tcp4:127.0.0.1:1" and event["count"] == 3
    assert event["obj"].startswith("<object object")  # not JSON: its text
    assert event["time"].endswith("+00:00")


def test_a_failure_keeps_its_traceback_in_the_object() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    line = event_as_json(
        {
            "log_format": "boom",
            "log_level": LogLevel.critical,
            "log_namespace": "x",
            "log_time": 0.0,
            "log_failure": failure,
        }
    )
    assert line.count("\n") == 1
    event = json.loads(line)
    assert event["level"] == "critical" and "ZeroDivisionError" in event["traceback"]


def test_bad_log_format_names_the_option() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"),
            *("wsgate", "--backend", "ws://127.0.0.1:9", "--log-format", "xml"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert """--log-format: 'xml' is not a log format; valid: "text", "json\"""" in result.stderr


def test_json_logs_parse_and_carry_the_connection(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}", "--log-format", "json")

    async def main() -> tuple[str, str]:
        async with backend(port) as state:
            async with client(gate.url + "/app") as ws:
                await ws.send("hello")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "hello"
            async with client(gate.url + "/own", additional_headers={"X-Request-Id": "abc-123"}):
                pass
            async with asyncio.timeout(TIMEOUT):
                while sum('"event": "close"' in x for x in gate.log().splitlines()) < 2:
                    await asyncio.sleep(0.05)
            return state.seen[0].headers["X-Request-Id"], state.seen[1].headers["X-Request-Id"]

    generated, kept = asyncio.run(main())
    events = [json.loads(line) for line in gate.log().splitlines() if line.strip()]
    assert all({"time", "level", "namespace", "message"} <= set(e) for e in events)
    opens = [e for e in events if e.get("event") == "open"]
    closes = [e for e in events if e.get("event") == "close"]
    assert (
        [e["request_id"] for e in opens]
        == [generated, "abc-123"]
        == [e["request_id"] for e in closes]
    )
    assert kept == "abc-123" and len(generated) == 16
    first: dict[str, Any] = closes[0]
    assert first["route"] == "--backend" and first["backend"] == f"ws://127.0.0.1:{port}"
    assert first["client_close_received"] == 1000 and first["backend_close_sent"] == 1000
    assert (first["up_msgs"], first["up_bytes"], first["down_msgs"]) == (1, 5, 1)
    assert first["duration"] >= 0 and first["path"] == "/app"
    assert first["client_ext"].startswith("permessage-deflate")
    assert first["peer"].startswith("tcp4:127.0.0.1:")


def test_text_logs_show_the_id(wsgate: GateFactory) -> None:
    port = free_port()
    gate = wsgate("--backend", f"ws://127.0.0.1:{port}")

    async def main() -> str:
        async with backend(port) as state:
            async with client(gate.url):
                pass
            return state.seen[0].headers["X-Request-Id"]

    request_id = asyncio.run(main())
    gate.stop()
    assert f"id={request_id}" in next(x for x in gate.log().splitlines() if "] open " in x)
    assert f"id={request_id}" in next(x for x in gate.log().splitlines() if "] close " in x)
