"""The compiled permessage-deflate streams (wsgate/_framezlib.c, used by
wsgate._cdeflate) against the Python path's: zlib's own objects driven by
LeanDeflate. Through zlib (inflating; compressing at levels 2-9, and at
level 1 what is larger than the fast encoder takes) the same zlib on both,
so the same bytes on the wire, choices, windows, verdicts and error texts;
through the fast encoder (wsgate/_framequick.c, level 1, small whole
messages) other bytes, which a zlib peer inflates to the same messages."""

from __future__ import annotations

import itertools
import os
import random
import zlib
from typing import Any

import pytest
from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import PerMessageDeflate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_leandeflate import TAIL, _json, _message
from twisted.internet.task import Clock

from wsgate._cdeflate import CompiledDeflate
from wsgate._leandeflate import IDLE_SECONDS, LeanDeflate

framecore = pytest.importorskip("wsgate._framecore", reason="wsgate._framecore not built")


def _pair(
    threshold: int = 128, nct: bool = False, level: int = 1, cap: int | None = None
) -> tuple[tuple[LeanDeflate, Clock], tuple[LeanDeflate, Clock]]:
    """The Python path's LeanDeflate and a CompiledDeflate, same parameters."""
    made = []
    for cls in (LeanDeflate, CompiledDeflate):
        clock = Clock()
        pmc = PerMessageDeflate(True, nct, nct, 12, 12, 5, cap)
        made.append((cls.adopt(pmc, threshold, clock, level, framecore), clock))
    assert isinstance(made[1][0], CompiledDeflate)
    return made[0], made[1]


def _send(lean: LeanDeflate, data: bytes, cuts: list[int], whole: bool) -> list[bytes | None]:
    if whole:
        return [lean.deflate_whole(data)]
    lean.begin()
    bounds = [0, *cuts, len(data)]
    return [
        lean.deflate(data[a:b], final=(i == len(bounds) - 2))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def _receive(lean: LeanDeflate, pieces: list[bytes]) -> Any:
    """A message inflated piece by piece, or the exception that stopped it."""
    lean.start_decompress_message()
    try:
        out = b"".join(lean.decompress_message_data(p) for p in pieces)
        lean.end_decompress_message()
    except (PayloadCorruptError, PayloadExceededError) as e:
        return type(e).__name__, str(e)
    return out


def _windows(lean: LeanDeflate) -> tuple[bytes, bytes]:
    if isinstance(lean, CompiledDeflate):
        return lean._compressor.window, lean._decompressor.window
    return lean._out_window, lean._in_window


_MESSAGE = st.tuples(
    st.sampled_from(["json", "json", "random", "short", "empty"]),
    st.sampled_from([1, 100, 127, 128, 500, 1023, 1024, 1025, 3000, 9000]),
    st.lists(st.integers(1, 8999), max_size=3),  # where a streamed one is cut
    st.booleans(),  # sent whole (deflate_whole) or piece by piece
    st.booleans(),  # an idle gap before it
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(_MESSAGE, max_size=14),
    nct=st.booleans(),
    threshold=st.sampled_from([0, 128]),
    level=st.sampled_from([2, 6]),
)
def test_the_same_stream_choices_and_windows_as_the_python_path(
    messages: list[tuple[str, int, list[int], bool, bool]], nct: bool, threshold: int, level: int
) -> None:
    """At levels where both compress with zlib, message after message both
    ways: compressible, random (a trial that misses, then skips), short,
    empty, whole or streamed, with idle drops between them, with and
    without context takeover."""
    (python, py_clock), (compiled, c_clock) = _pair(threshold, nct, level)
    peer = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    for i, (kind, size, cuts, whole, gap) in enumerate(messages):
        data = _message(kind, size, i)
        if gap:
            for clock in (py_clock, c_clock):
                clock.advance(IDLE_SECONDS)
                clock.advance(IDLE_SECONDS)
            assert not python.holds_zlib and not compiled.holds_zlib
        where = sorted(c for c in set(cuts) if c < len(data))
        assert _send(compiled, data, where, whole) == _send(python, data, where, whole)
        for name in ("_misses", "_skip", "_sending"):
            assert getattr(compiled, name) == getattr(python, name), name
        # What the peer sends, as one piece or two.
        if nct:
            peer = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
        incoming = (peer.compress(data) + peer.flush(zlib.Z_SYNC_FLUSH))[:-4]
        pieces = [incoming[: len(incoming) // 2], incoming[len(incoming) // 2 :]]
        assert _receive(compiled, pieces) == _receive(python, pieces) == data
        assert _windows(compiled) == _windows(python)
        assert compiled.holds_zlib == python.holds_zlib


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=4000),
    compressible=st.booleans(),
    mutate=st.sampled_from(["none", "truncate", "flip", "finish", "junk"]),
    limits=st.lists(st.sampled_from([0, 1, 7, 100, 1000, 5000]), min_size=1, max_size=4),
)
def test_the_inflater_is_zlib_s_decompressobj(
    data: bytes, compressible: bool, mutate: str, limits: list[int]
) -> None:
    """Outputs, ``unconsumed_tail``, errors and their texts, piece after piece
    with ``max_length`` (0: none), for good, truncated, corrupt, finished
    (BFINAL, then more) and junk input."""
    if compressible:
        data = data * 5
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    stream = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    if mutate == "truncate":
        stream = stream[: len(stream) // 2]
    elif mutate == "flip" and stream:
        at = len(stream) // 3
        stream = stream[:at] + bytes([stream[at] ^ 0x5A]) + stream[at + 1 :]
    elif mutate == "finish":
        stream = zlib.compress(data, wbits=-12) + b"more after the end"
    elif mutate == "junk":
        stream = os.urandom(len(stream) + 1)
    python = zlib.decompressobj(-12)
    compiled = framecore.Inflater(12, True)
    compiled.start()
    pieces = [stream[: len(stream) // 3], stream[len(stream) // 3 :], TAIL]
    for piece, limit in zip(pieces, limits * 3, strict=False):
        outcomes = []
        for inflater in (python, compiled):
            try:
                outcomes.append((inflater.decompress(piece, limit), inflater.unconsumed_tail))
            except zlib.error as e:
                outcomes.append(("error", str(e)))
        assert outcomes[0] == outcomes[1]
        if outcomes[0][0] == "error":
            return


def _whole_python(lean: LeanDeflate, payload: bytes, limit: int, text: bool) -> Any:
    """The Python path's steps for a whole message, as RelayedLeg._inflate
    takes them: inflate within the limits, the leg's size limit, the UTF-8
    check, the tail. The first failure, or the data."""
    lean.start_decompress_message()
    try:
        data = lean.decompress_message_data(payload, max_output_len=limit if limit > 0 else None)
    except (PayloadCorruptError, PayloadExceededError) as e:
        return "inflate", type(e).__name__, str(e) if isinstance(e, PayloadCorruptError) else ""
    if 0 < limit < len(data):
        return "later", data, _tail(lean)
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "later", data, _tail(lean)
    return "tail", data, _tail(lean)


def _tail(lean: LeanDeflate) -> str:
    try:
        lean.end_decompress_message()
    except PayloadCorruptError as e:
        return str(e)
    return "ok"


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
            st.sampled_from(["good", "bad utf-8", "cut code point", "corrupt", "corrupt tail"]),
            st.booleans(),  # text
        ),
        min_size=1,
        max_size=5,
    ),
    limit=st.sampled_from([0, 1, 50, 400]),
    cap=st.sampled_from([None, 0, 60, 1000]),
)
def test_inflate_whole_gives_the_python_path_s_verdicts(
    messages: list[tuple[bytes, str, bool]], limit: int, cap: int | None
) -> None:
    """``inflate_whole`` in one call: the data when every check passes;
    otherwise what failed (inflating, its limit, the tail) or the data for
    the leg's own checks, with the tail left to feed. The same outcome as
    the Python path's steps, message after message on one stream."""
    (python, _), (compiled, _) = _pair(cap=cap)
    peer = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    for payload, kind, text in messages:
        if kind == "bad utf-8":
            payload += b"\xff"
        elif kind == "cut code point":
            payload += "é".encode()[:1]
        deflated = (peer.compress(payload) + peer.flush(zlib.Z_SYNC_FLUSH))[:-4]
        if kind == "corrupt":
            deflated = b"\xff\xfe" + deflated
        elif kind == "corrupt tail":
            deflated += b"\x01"  # a stored block begins: the tail is then its length
        expected = _whole_python(python, deflated, limit, text)
        got = compiled.inflate_whole(deflated, limit, text)
        if isinstance(got, bytes):
            assert expected == ("tail", got, "ok")
        else:
            data, error, tail_error = got
            if error is not None:
                name = type(error).__name__
                why = str(error) if isinstance(error, PayloadCorruptError) else ""
                assert expected == ("inflate", name, why)
            elif tail_error is not None:
                assert expected == ("tail", data, str(tail_error))
            else:
                assert expected[:2] == ("later", data)
                assert compiled._receiving  # the leg feeds the tail
                assert _tail(compiled) == expected[2]
        if expected[0] == "inflate" or expected[-1] != "ok":
            return  # the connection fails here


def test_a_rebuilt_deflater_is_primed_with_the_peer_s_window() -> None:
    """After an idle drop, and after a trial that missed (its sample is not in
    the peer's window), the compiled deflater starts again from the window."""
    (python, py_clock), (compiled, c_clock) = _pair(level=6)
    first = _json(6000, 1)
    assert compiled.deflate_whole(first[:1000]) == python.deflate_whole(first[:1000])
    noise = os.urandom(900)
    assert compiled.deflate_whole(noise) is None is python.deflate_whole(noise)
    assert compiled._compressor.window == python._out_window == first[:1000]
    for clock in (py_clock, c_clock):
        clock.advance(IDLE_SECONDS)
        clock.advance(IDLE_SECONDS)
    assert not compiled._compressor.live
    again = compiled.deflate_whole(first[:1000])
    assert again == python.deflate_whole(first[:1000])
    assert again is not None and len(again) < 30  # a back-reference to the window


def test_only_unused_states_and_a_built_core_make_a_compiled_deflate() -> None:
    """Autobahn's zlib states in use keep LeanDeflate (RelayedLeg._onOpen
    asks ``usable``); without the compiled module there is none to make."""
    pmc = PerMessageDeflate(True, False, False, 12, 12, 5)
    assert CompiledDeflate.usable(pmc)
    pmc.start_decompress_message()
    assert not CompiledDeflate.usable(pmc)
    with pytest.raises(RuntimeError, match=r"needs wsgate\._framecore"):
        CompiledDeflate.adopt(PerMessageDeflate(True, False, False, 12, 12, 5), 128, Clock())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(_MESSAGE, max_size=16),
    nct=st.booleans(),
    threshold=st.sampled_from([0, 128]),
)
def test_level_1_s_fast_encoder_gives_a_zlib_peer_the_same_messages(
    messages: list[tuple[str, int, list[int], bool, bool]], nct: bool, threshold: int
) -> None:
    """Level 1 on the compiled path: whole messages up to QUICK_MAX through
    the fast encoder, the rest (and streamed ones) through zlib, on one
    stream. A zlib peer inflates every compressed one to its message, with
    and without context takeover, across idle drops; the window is the
    plaintext of what went out compressed; a whole message that compresses
    well always does when tried, random bytes never."""
    (compiled, clock), _ = _pair(threshold, nct, 1)[::-1]
    assert isinstance(compiled, CompiledDeflate)
    peer = zlib.decompressobj(-12)
    sent = b""
    for i, (kind, size, cuts, whole, gap) in enumerate(messages):
        data = _message(kind, size, i)
        if gap:
            clock.advance(IDLE_SECONDS)
            clock.advance(IDLE_SECONDS)
            assert not compiled.holds_zlib
        tried = compiled._skip == 0 and len(data) >= threshold
        pieces = _send(compiled, data, sorted(c for c in set(cuts) if c < len(data)), whole)
        if pieces[0] is None:
            assert all(p is None for p in pieces)
            assert not (whole and kind == "json" and len(data) >= 128 and tried)
            continue
        assert not (whole and kind == "random" and len(data) >= 50)
        if nct:
            peer = zlib.decompressobj(-12)
        assert peer.decompress(b"".join(p for p in pieces if p) + TAIL) == data
        sent = b"" if nct else (sent + data)[-4096:]
        assert compiled._compressor.window == sent


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_the_fast_encoder_at_its_edges(bits: int) -> None:
    """Matches as long as deflate allows (258) and as far back as the window
    (not one byte more), every byte value, empty and QUICK_MAX-sized
    messages, windows smaller than a message, and the switch to zlib and
    back on one stream."""
    window = 1 << bits
    deflater = framecore.Deflater(1, bits, 5, True)
    peer = zlib.decompressobj(-bits)
    history = b""  # the plaintext of what went out compressed
    rng = random.Random(bits)
    messages = [
        b"a" * 1024,  # runs: the longest matches
        bytes(range(256)) * 4,  # every byte value
        b"",
        os.urandom(600) + b"z" * 100,
        _json(1025, 1),  # one past the fast encoder: zlib
        _json(1024, 1),  # back, matching what zlib sent
        bytes(rng.randrange(256) for _ in range(window + 5))[: min(window + 5, 1024)],
    ]
    for data in messages:
        out = deflater.whole(data)
        if out is not None:
            assert peer.decompress(out + TAIL) == data
            history += data
        assert deflater.window == history[-window:]
    sent = 0
    for i in range(60):  # repeats at every distance up to the window and just past it
        start = len(history) - window - 40 + rng.randrange(80)
        data = history[max(0, start) :][: rng.randrange(4, 300)] + _json(40, i)
        out = deflater.whole(data)
        if out is not None:  # (random bytes from past the window do not compress)
            assert peer.decompress(out + TAIL) == data
            history += data
            sent += 1
        assert deflater.window == history[-window:]
    assert sent > 30
