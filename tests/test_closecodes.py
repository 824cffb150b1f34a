"""Close-code mapping: pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate._closecodes import (
    MAX_REASON_BYTES,
    Cause,
    Close,
    Side,
    for_other_leg,
    is_wire_code,
    truncate_reason,
)

WIRE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]


@pytest.mark.parametrize("code", WIRE)
@pytest.mark.parametrize("side", list(Side))
def test_peer_codes_cross_unchanged(code: int, side: Side) -> None:
    assert for_other_leg(side, Cause.PEER_CLOSED, code, "why") == Close(code, "why")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_never_on_the_wire(code: int) -> None:
    assert not is_wire_code(code)


def test_no_status_crosses_as_no_status() -> None:
    assert for_other_leg(Side.CLIENT, Cause.PEER_CLOSED, None, "") == Close(None)
    assert for_other_leg(Side.BACKEND, Cause.PEER_CLOSED, 1005, "") == Close(None)
    assert Close(None).reason_bytes() is None


def test_dropped_legs() -> None:
    assert for_other_leg(Side.BACKEND, Cause.DROPPED, 1006, "").code == 1011
    assert for_other_leg(Side.CLIENT, Cause.DROPPED, 1006, "").code == 1001


def test_failed_legs_do_not_blame_the_other_peer() -> None:
    backend_failed = for_other_leg(Side.BACKEND, Cause.FAILED, 1007, "bad utf-8")
    assert backend_failed.code == 1014
    assert "1007" in backend_failed.reason and "bad utf-8" in backend_failed.reason
    client_failed = for_other_leg(Side.CLIENT, Cause.FAILED, 1009, "too big")
    assert client_failed.code == 1001


@given(st.sampled_from(list(Side)), st.sampled_from(list(Cause)), st.integers(0, 6000), st.text())
def test_answer_is_always_sendable(side: Side, cause: Cause, code: int, reason: str) -> None:
    close = for_other_leg(side, cause, code, reason)
    assert close.code is None or is_wire_code(close.code)
    raw = close.reason_bytes()
    assert raw is None or len(raw) <= MAX_REASON_BYTES


@given(st.text())
def test_truncated_reason_is_valid_utf8_prefix(reason: str) -> None:
    raw = truncate_reason(reason)
    assert len(raw) <= MAX_REASON_BYTES
    assert reason.encode("utf-8").startswith(raw)
    raw.decode("utf-8")
