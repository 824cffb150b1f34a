"""permessage-deflate that compresses only what pays and idles cheaply: the
decisions and the idle rebuild, against plain zlib standing in for the peer,
on a ``Clock``."""

from __future__ import annotations

import itertools
import os
import random
import zlib

import pytest
from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import PerMessageDeflate
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from wsgate._leandeflate import IDLE_SECONDS, SAMPLE, LeanDeflate, pays

TAIL = b"\x00\x00\xff\xff"


def _json(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < n:
        parts.append(b'{"id": %d, "user": "u%d", "ok": true}, ' % (rng.randrange(1000), seed))
    return b"".join(parts)[:n]


def _message(kind: str, size: int, seed: int) -> bytes:
    """A message of one kind: compressible JSON, random bytes, JSON shorter
    than the default threshold, or nothing."""
    if kind == "json":
        return _json(size, seed)
    if kind == "random":
        return os.urandom(size)
    if kind == "short":
        return _json(size % 128, seed)
    return b""


def _lean(
    threshold: int = 128, nct: bool = False, clock: Clock | None = None, level: int = 1
) -> LeanDeflate:
    pmc = PerMessageDeflate(True, nct, nct, 12, 12, 5)
    return LeanDeflate.adopt(pmc, threshold, clock or Clock(), level)


class Peer:
    """The other end's zlib streams: inflates what we send, deflates what it sends."""

    def __init__(self, nct: bool = False) -> None:
        self.nct = nct
        self.inflater = zlib.decompressobj(-12)
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -12, 5)

    def receive(self, pieces: list[bytes | None]) -> bytes:
        """One message as ``deflate`` returned it piece by piece."""
        if pieces[0] is None:
            raise AssertionError("sent raw; use the data")
        if self.nct:
            self.inflater = zlib.decompressobj(-12)
        return self.inflater.decompress(b"".join(p for p in pieces if p) + TAIL)

    def send(self, data: bytes) -> bytes:
        if self.nct:
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
        out = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]


def _send(lean: LeanDeflate, data: bytes, cuts: list[int] | None = None) -> list[bytes | None]:
    lean.begin()
    bounds = [0, *(cuts or []), len(data)]
    return [
        lean.deflate(data[a:b], final=(i == len(bounds) - 2))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def _receive(lean: LeanDeflate, compressed: bytes) -> bytes:
    lean.start_decompress_message()
    out = lean.decompress_message_data(compressed)
    lean.end_decompress_message()
    return out


@pytest.mark.parametrize("level", [1, 6, 9])
def test_messages_are_compressed_at_the_policy_s_level(level: int) -> None:
    # Each level's bytes differ on this data; the peer inflates them all.
    data = _json(900)
    reference = zlib.compressobj(level, zlib.DEFLATED, -12, 5)
    expected = reference.compress(data) + reference.flush(zlib.Z_SYNC_FLUSH)
    lean, peer = _lean(level=level), Peer()
    pieces = _send(lean, data)
    assert pieces == [expected[:-4]]
    assert peer.receive(pieces) == data


def test_levels_differ_on_this_data() -> None:
    # What makes the test above able to fail: level 1 (fast matching) and
    # zlib's default 6 give different bytes here.
    data = _json(900)
    out = set()
    for level in (1, 6):
        c = zlib.compressobj(level, zlib.DEFLATED, -12, 5)
        out.add(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))
    assert len(out) == 2


def test_a_short_final_message_goes_raw() -> None:
    lean = _lean()
    assert _send(lean, _json(127)) == [None]
    assert not lean.holds_zlib  # nothing was even made
    assert _send(lean, b"") == [None]


def test_a_message_at_the_threshold_is_compressed() -> None:
    lean, peer = _lean(), Peer()
    pieces = _send(lean, _json(128))
    assert pieces[0] is not None and len(pieces[0]) < 128
    assert peer.receive(pieces) == _json(128)


def test_threshold_zero_tries_even_empty_messages() -> None:
    lean, peer = _lean(threshold=0), Peer()
    data = b"a" * 50
    assert peer.receive(_send(lean, data)) == data
    assert _send(lean, b"") == [None]  # an empty sample never shrinks


def test_random_bytes_go_raw_and_the_peer_s_window_never_sees_them() -> None:
    lean, peer = _lean(), Peer()
    first = _json(3000, 1)
    assert peer.receive(_send(lean, first)) == first
    assert _send(lean, os.urandom(65536), cuts=[5000, 20000]) == [None, None, None]
    # The stream goes on where the peer's window is: the compressor never
    # consumed the raw message.
    again = _json(3000, 2)
    assert peer.receive(_send(lean, again)) == again


def test_trying_costs_no_copy_and_a_miss_rebuilds_from_the_window() -> None:
    """The sample is tried on the compressor itself (no ``copy()`` of its
    state); one that does not pay drops it, and the next message
    that compresses gets one rebuilt from the peer's window."""
    lean, peer = _lean(), Peer()
    first = _json(900, 1)
    assert peer.receive(_send(lean, first)) == first
    compressor = lean._compressor
    assert peer.receive(_send(lean, _json(900, 2))) == _json(900, 2)
    assert lean._compressor is compressor
    assert _send(lean, os.urandom(600)) == [None]
    assert lean._compressor is None
    pieces = _send(lean, first)  # refers back to the window: a few bytes
    assert pieces[0] is not None and len(pieces[0]) < 40
    assert peer.receive(pieces) == first


def test_a_message_follows_its_first_piece() -> None:
    lean, peer = _lean(), Peer()
    # Compressible start, random rest: compressed throughout.
    data = _json(2000) + os.urandom(5000)
    pieces = _send(lean, data, cuts=[2000])
    assert all(p is not None for p in pieces)
    assert peer.receive(pieces) == data
    # Random start, compressible rest: raw throughout.
    data = os.urandom(2000) + _json(5000)
    assert _send(lean, data, cuts=[2000]) == [None, None]


def test_a_short_first_piece_of_a_longer_message_is_compressed() -> None:
    lean, peer = _lean(), Peer()
    data = _json(10) + _json(4000, 3)
    pieces = _send(lean, data, cuts=[10])
    assert pieces[0] is not None
    assert peer.receive(pieces) == data


def test_only_the_sample_is_tried() -> None:
    lean = _lean()
    data = os.urandom(SAMPLE) + _json(100_000)
    assert _send(lean, data) == [None]


def test_after_a_run_of_misses_most_messages_go_untried() -> None:
    lean, peer = _lean(), Peer()
    noise = os.urandom(4096)
    tried = []
    for _ in range(200):
        misses = lean._misses
        assert _send(lean, noise) == [None]
        tried.append(lean._misses != misses)
    # Tried: the 1st, 2nd, 4th, 8th, 16th, 32nd, then one in 32.
    assert [i for i, t in enumerate(tried) if t][:8] == [0, 1, 3, 7, 15, 31, 63, 95]
    assert sum(tried) == 2 + 4 + 200 // 32 - 1
    # Then a message that shrinks resets it (once tried).
    data = _json(3000)
    for _ in range(32):
        pieces = _send(lean, data)
        if pieces[0] is not None:
            break
    assert lean._misses == 0
    assert peer.receive(pieces) == data
    assert peer.receive(_send(lean, data)) == data


def test_a_single_miss_skips_nothing() -> None:
    lean, peer = _lean(), Peer()
    for i in range(5):
        assert _send(lean, os.urandom(2000)) == [None]
        data = _json(2000, i)
        assert peer.receive(_send(lean, data)) == data


def test_pays_means_a_tenth_saved() -> None:
    assert pays(1000, 900 + 4)
    assert not pays(1000, 901 + 4)


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(["json", "random", "short", "empty"]),
            st.integers(1, 9000),
            st.lists(st.integers(0, 9000), max_size=3),
            st.booleans(),  # an idle gap before it
        ),
        max_size=12,
    ),
    nct=st.booleans(),
)
def test_any_mix_survives_under_either_policy(
    messages: list[tuple[str, int, list[int], bool]], nct: bool
) -> None:
    clock = Clock()
    lean, peer = _lean(nct=nct, clock=clock), Peer(nct=nct)
    for i, (kind, size, cuts, gap) in enumerate(messages):
        data = _message(kind, size, i)
        if gap:  # one period to notice the quiet, one more to drop
            clock.advance(IDLE_SECONDS)
            clock.advance(IDLE_SECONDS)
            assert not lean.holds_zlib
        pieces = _send(lean, data, sorted(c for c in set(cuts) if 0 < c < len(data)))
        if pieces[0] is None:
            assert all(p is None for p in pieces)
        else:
            assert peer.receive(pieces) == data
        # And the other way.
        assert _receive(lean, peer.send(data)) == data


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(["json", "random", "empty"]),
            st.sampled_from([0, 1, 100, 127, 128, 129, 500, 1023, 1024, 1025, 3000]),
            st.booleans(),  # an idle gap before it
        ),
        max_size=12,
    ),
    nct=st.booleans(),
    threshold=st.sampled_from([0, 128]),
)
def test_deflate_whole_is_begin_and_a_final_deflate(
    messages: list[tuple[str, int, bool]], nct: bool, threshold: int
) -> None:
    """The same bytes, the same choices (raw, skipped), the same windows, as
    ``begin()`` and ``deflate(data, True)``, message after message."""
    clocks = Clock(), Clock()
    whole, pieces = (_lean(threshold, nct, clock) for clock in clocks)
    for i, (kind, size, gap) in enumerate(messages):
        data = _message(kind, size, i)
        if gap:
            for clock in clocks:
                clock.advance(IDLE_SECONDS)
                clock.advance(IDLE_SECONDS)
        whole_out = whole.deflate_whole(data)
        assert [whole_out] == _send(pieces, data)
        for name in ("_out_window", "_misses", "_skip", "_sending", "_busy"):
            assert getattr(whole, name) == getattr(pieces, name), name
        assert (whole._compressor is None) == (pieces._compressor is None)


@settings(max_examples=100, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=3000).map(lambda b: zlib.compress(b * 3)[2:-4]),
    ),
    cap=st.one_of(st.none(), st.integers(0, 5000)),
    budget=st.one_of(st.none(), st.integers(0, 5000)),
)
def test_inflating_bounds_and_errors_are_autobahn_s(
    data: bytes, cap: int | None, budget: int | None
) -> None:
    """LeanDeflate inflates with Autobahn's own limits, exceptions and
    messages (it inlines ``decompress_message_data`` for speed)."""
    results = []
    for cls in (PerMessageDeflate, LeanDeflate):
        pmc = cls(False, False, False, 15, 15, 8, cap)
        pmc.start_decompress_message()
        try:
            out = pmc.decompress_message_data(data, max_output_len=budget)
            pmc.end_decompress_message()
            results.append(("ok", out))
        except (PayloadCorruptError, PayloadExceededError) as e:
            results.append((type(e).__name__, str(e)))
    assert results[0] == results[1]


def test_idle_states_are_dropped_and_rebuilt_from_the_windows() -> None:
    clock = Clock()
    lean, peer = _lean(clock=clock, level=6), Peer()
    first = _json(6000, 1)
    assert peer.receive(_send(lean, first)) == first
    assert _receive(lean, peer.send(first)) == first
    assert lean.holds_zlib
    clock.advance(IDLE_SECONDS)  # used during this period: kept
    assert lean.holds_zlib
    clock.advance(IDLE_SECONDS)
    assert not lean.holds_zlib
    assert not [c for c in clock.getDelayedCalls() if c.func == lean._idle_check]
    # The same message again compresses to a few bytes: the rebuilt
    # compressor has the peer's window as its dictionary.
    pieces = _send(lean, first[-3000:])
    fresh = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    assert len(fresh.compress(first[-3000:]) + fresh.flush()) > 200
    assert pieces[0] is not None and len(pieces[0]) < 60
    assert peer.receive(pieces) == first[-3000:]
    assert _receive(lean, peer.send(first[-3000:])) == first[-3000:]
    lean.stop()
    assert not [c for c in clock.getDelayedCalls() if c.func == lean._idle_check]


def test_never_dropped_in_the_middle_of_a_message() -> None:
    clock = Clock()
    lean, peer = _lean(clock=clock), Peer()
    data = _json(6000)
    lean.begin()
    first = lean.deflate(data[:3000], final=False)
    lean.start_decompress_message()
    incoming = peer.send(data)
    got = lean.decompress_message_data(incoming[:100])
    clock.advance(IDLE_SECONDS * 5)
    assert lean.holds_zlib
    got += lean.decompress_message_data(incoming[100:])
    lean.end_decompress_message()
    assert got == data
    assert peer.receive([first, lean.deflate(data[3000:], final=True)]) == data
    clock.advance(IDLE_SECONDS)
    clock.advance(IDLE_SECONDS)
    assert not lean.holds_zlib


@pytest.mark.parametrize("nct", [False, True])
def test_no_context_takeover_keeps_no_window(nct: bool) -> None:
    lean, peer = _lean(nct=nct), Peer(nct=nct)
    data = _json(5000)
    assert peer.receive(_send(lean, data)) == data
    assert _receive(lean, peer.send(data)) == data
    assert (lean._out_window == b"") == nct
    assert (lean._in_window == b"") == nct
    if nct:
        assert not lean.holds_zlib
