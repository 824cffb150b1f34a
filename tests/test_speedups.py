"""The hot path's shortcuts give the same answers as what they replace."""

from __future__ import annotations

import os
import pprint
import socket
from pathlib import Path

from autobahn.nvx._utf8validator import Utf8Validator as NativeValidator
from autobahn.nvx._xormasker import create_xor_masker as native_masker
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from wsgate import _speedups
from wsgate._configfile import load_file
from wsgate._service import Gateway


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


class _Reader:
    """A selectable for the poll tests: records reads, or fails on them."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        data = self.sock.recv(100)
        if self.fail:
            raise RuntimeError("boom")
        self.read.append(data)

    def logPrefix(self) -> str:
        return "reader"

    def connectionLost(self, reason: object) -> None:
        pass


def test_fast_poll_only_for_the_epoll_reactor() -> None:
    assert not _speedups.fast_poll(MemoryReactorClock())


def test_fast_poll_runs_events_and_survives_a_failing_one() -> None:
    reactor = EPollReactor()  # not installed: a private poller of its own
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        assert _speedups.fast_poll(reactor)
        bad, good = _Reader(pairs[0][0], fail=True), _Reader(pairs[1][0])
        reactor.addReader(bad)
        reactor.addReader(good)
        pairs[0][1].send(b"x")
        pairs[1][1].send(b"hello")
        errors: list[dict[str, object]] = []
        globalLogPublisher.addObserver(errors.append)
        try:
            reactor.doIteration(0)
        finally:
            globalLogPublisher.removeObserver(errors.append)
        assert good.read == [b"hello"]
        # The failing reader's error was logged (as Twisted does) and it was
        # disconnected; the loop went on to the other one.
        (failed,) = [e for e in errors if "boom" in str(e.get("failure"))]
        # No log context was built around the event: the system is Twisted's
        # default, not the selectable's prefix ("reader").
        assert failed["system"] == "-"
        assert bad not in reactor.getReaders()
        reactor.doIteration(0)  # nothing pending: returns at once
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        reactor._poller.close()


def test_autobahn_s_debug_formatting_is_lazy_and_the_same() -> None:
    from autobahn.websocket import protocol

    _speedups.install()
    value = [("applyMask", True, "Factory"), ("maxFramePayloadSize", 0, "Factory")] * 5
    lazy = protocol.pformat(value)  # type: ignore[attr-defined]
    assert isinstance(lazy, _speedups.LazyFormat)
    assert str(lazy) == pprint.pformat(value)
    assert f"{lazy}" == pprint.pformat(value)


def test_building_a_gateway_leaves_the_reactor_as_it_is(tmp_path: Path) -> None:
    # The shortcuts are installed where twistd starts the service
    # (tap.makeService), not as a side effect of building one.
    path = tmp_path / "wsgate.toml"
    path.write_text('[[listener]]\nendpoint = "tcp:0"\n[[route]]\nbackend = "ws://127.0.0.1:1"\n')
    reactor = EPollReactor()  # not installed, never run
    try:
        Gateway(load_file(str(path)), reactor)
        assert "doIteration" not in vars(reactor)
        assert _speedups.fast_poll(reactor)  # what the test would see if it were
        assert "doIteration" in vars(reactor)
    finally:
        reactor._poller.close()
