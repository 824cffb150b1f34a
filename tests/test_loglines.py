"""The connection's open and close log lines (``_frontend``): their text is
what twisted.logger would make of the format and the fields, made cheaper."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.logger import formatEvent

from wsgate._frontend import _CLOSE, _OPEN, _TEXT, _Text
from wsgate._jsonlog import event_as_json

_OPENED = {
    "peer": "tcp4:127.0.0.1:5555",
    "path": "/echo?x={y}",
    "backend": "ws://127.0.0.1:9000",
    "user": "-",
    "subprotocol": None,
    "client_ext": "permessage-deflate",
    "backend_ext": "",
    "route": "#1 (/)",
    "request_id": "abc-123",
}
_CLOSED = {
    **_OPENED,
    "first": "client closed",
    "client_close": "sent 1000/recv 1000 'bye {x}'",
    "backend_close": "-",
    "up_msgs": 1,
    "up_bytes": 5,
    "down_msgs": 2,
    "down_bytes": 10,
    "duration": 1.23456,
}


@pytest.mark.parametrize(("line", "fields"), [(_OPEN, _OPENED), (_CLOSE, _CLOSED)])
def test_the_text_is_twisted_loggers(line: str, fields: dict[str, Any]) -> None:
    event = {"log_format": _TEXT, "log_wsgate_text": _Text(line, fields), **fields}
    assert formatEvent(event) == formatEvent({"log_format": line, **fields})
    assert "in 1.235 s" in formatEvent(event) or line is _OPEN


def test_the_json_log_has_the_text_once_and_the_fields() -> None:
    event = {"log_format": _TEXT, "log_wsgate_text": _Text(_CLOSE, _CLOSED), **_CLOSED}
    out = json.loads(event_as_json(event))
    assert out["message"].startswith("close tcp4:127.0.0.1:5555 /echo?x={y}: first=")
    assert "log_wsgate_text" not in out and out["up_bytes"] == 5
