"""The hot path's shortcuts give the same answers as what they replace."""

from __future__ import annotations

import os

from autobahn.nvx._utf8validator import Utf8Validator as NativeValidator
from autobahn.nvx._xormasker import create_xor_masker as native_masker
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from wsgate import _speedups


def _installed() -> tuple[object, object]:
    _speedups.install()
    from autobahn.websocket import protocol as module

    protocol: object = module
    return protocol.create_xor_masker, protocol.Utf8Validator  # type: ignore[attr-defined]


@given(
    st.binary(min_size=4, max_size=4),
    st.integers(min_value=0, max_value=3 * _speedups._SMALL_FRAME),
    st.integers(min_value=1, max_value=5000),
)
def test_masker_matches_autobahn_s_native_one(mask: bytes, length: int, piece: int) -> None:
    create, _ = _installed()
    payload = os.urandom(length)
    ours, theirs = create(mask, length), native_masker(mask, length)  # type: ignore[operator]
    # Frames arrive in pieces: the mask must carry on across calls.
    for start in range(0, length, piece):
        chunk = payload[start : start + piece]
        assert ours.process(chunk) == theirs.process(chunk)
        assert ours.pointer() == theirs.pointer()


def test_masker_choice_by_size() -> None:
    create, _ = _installed()
    small = create(b"abcd", _speedups._SMALL_FRAME)  # type: ignore[operator]
    big = create(b"abcd", _speedups._SMALL_FRAME + 1)  # type: ignore[operator]
    assert type(small).__module__.startswith("wsaccel")
    assert not type(big).__module__.startswith("wsaccel")


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_validator_matches_autobahn_s_native_one(pieces: list[bytes]) -> None:
    _, validator = _installed()
    ours, theirs = validator(), NativeValidator()  # type: ignore[operator]
    for piece in pieces:
        result = ours.validate(piece)
        assert result == theirs.validate(piece)
        if not result[0]:
            break  # Autobahn fails the connection at the first invalid byte


@given(st.text(max_size=50))
def test_validator_accepts_utf8(text: str) -> None:
    _, validator = _installed()
    valid, ends_on_code_point, _, _ = validator().validate(text.encode())  # type: ignore[operator]
    assert valid and ends_on_code_point


def test_write_to_anything_but_plain_tcp_is_the_transport_s_own() -> None:
    transport = StringTransport()
    _speedups.write(transport, b"frame")
    assert transport.value() == b"frame"
