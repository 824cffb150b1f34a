"""The C functions of the compiled frame path (wsgate/_framecore.c) against
RFC 6455's examples, known UTF-8 vectors and Autobahn's own UTF-8 validator."""

from __future__ import annotations

import sys

import pytest
from autobahn.websocket.utf8validator import Utf8Validator
from hypothesis import given
from hypothesis import strategies as st

framecore = pytest.importorskip("wsgate._framecore", reason="wsgate._framecore not built")


def test_frame_builds_rfc6455_examples() -> None:
    """RFC 6455 5.7: an unmasked "Hello", a fragmented one, a ping, and the
    length encodings of 256 bytes and 64 KiB."""
    assert framecore.frame(1, b"Hello", True, 0, False) == bytes.fromhex("810548656c6c6f")
    assert framecore.frame(1, b"Hel", False, 0, False) == bytes.fromhex("010348656c")
    assert framecore.frame(0, b"lo", True, 0, False) == bytes.fromhex("80026c6f")
    assert framecore.frame(9, b"Hello", True, 0, False) == bytes.fromhex("890548656c6c6f")
    assert framecore.frame(2, bytes(256), True, 0, False)[:4] == bytes.fromhex("827e0100")
    big = framecore.frame(2, bytes(65536), True, 0, False)
    assert big[:10] == bytes.fromhex("827f0000000000010000") and len(big) == 65546
    assert framecore.frame(1, b"x", True, 4, False)[:1] == b"\xc1"  # RSV1: compressed


def test_frame_masks_with_a_fresh_mask() -> None:
    frames = [framecore.frame(1, b"Hello", True, 0, True) for _ in range(4)]
    for data in frames:
        assert data[:2] == b"\x81\x85"
        mask = data[2:6]
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(data[6:])) == b"Hello"
    assert len({data[2:6] for data in frames}) > 1


def test_reader_reads_rfc6455_examples() -> None:
    """A masked "Hello" (the RFC's own bytes) and a fragmented unmasked one."""
    hello = bytes.fromhex("818537fa213d7f9f4d5158")
    reader = framecore.Reader(True)
    reader.feed(hello)
    assert reader.next() == (5, False, False, b"Hello")  # a whole message in one event
    assert reader.next() is None
    reader = framecore.Reader(True, whole_text=False)
    reader.feed(hello)
    assert reader.next() == (0, False, False)
    assert reader.next() == (1, b"Hello", True)
    assert reader.next() is None
    reader = framecore.Reader(True)  # not all read yet: piece by piece
    reader.feed(hello[:9])
    assert reader.next() == (0, False, False)
    assert reader.next() == (1, b"Hel", False)
    reader.feed(hello[9:])
    assert reader.next() == (1, b"lo", True)
    assert reader.next() is None
    reader = framecore.Reader(False)
    reader.feed(bytes.fromhex("010348656c") + bytes.fromhex("89") + b"\x00" + b"\x80\x02lo")
    assert reader.next() == (0, False, False)
    assert reader.next() == (1, b"Hel", False)
    assert reader.next() == (2, b"")  # a ping between the fragments
    assert reader.next() == (1, b"lo", True)
    assert reader.next() is None


def test_reader_hands_off_what_is_not_plain() -> None:
    """A close frame, a compressed frame without permessage-deflate, an
    unmasked client frame, a bad opcode, a message over the limit: the
    reader stops before them."""
    for data in (b"\x88\x02\x03\xe8", b"\xc1\x01x", b"\x83\x00", b"\x82\x7e\x00\x10" + bytes(16)):
        reader = framecore.Reader(False, 10)
        reader.feed(data)
        assert reader.next() == (4,), data
        rest, inside, *_ = reader.handoff()
        assert (rest, inside) == (data, False)
    reader = framecore.Reader(True)
    reader.feed(b"\x81\x01x")
    assert reader.next() == (4,)


def test_reader_frames_a_compressed_message_and_leaves_its_bytes_alone() -> None:
    """With permessage-deflate on, RSV1 starts a compressed message: the
    reader unmasks it, does not validate its (deflated) bytes as UTF-8, and
    counts its size as Autobahn does, the caller adding what inflating grew."""
    reader = framecore.Reader(True, 100, True, True)
    deflated = b"\xff\xfe\x00"  # not UTF-8, and need not be
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(deflated))
    reader.feed(b"\x41\x83" + mask + masked)  # text, RSV1, not final
    assert reader.next() == (0, False, True)
    assert reader.next() == (1, deflated, False)
    assert reader.total == 3
    reader.total += 90  # it inflated to 93 bytes
    reader.feed(b"\x80\x88" + mask + bytes(8))  # 93 + 8 > 100: Autobahn's verdict
    assert reader.next() == (4,)
    rest, inside, binary, total, pending, frame, _ = reader.handoff()
    assert (len(rest), inside, binary, total, pending, frame) == (14, True, False, 93, None, None)
    # The next message after the hand-off is plain again.
    reader.feed(b"\x81\x81" + mask + bytes([ord("x") ^ 1]))
    assert reader.next() == (5, False, False, b"x")


def test_a_failed_frame_is_handed_back_not_ended() -> None:
    """``handoff(True)`` right after a frame's last piece: the caller failed
    on it, so Autobahn gets the frame as read but not ended."""
    for whole in (True, False):
        reader = framecore.Reader(False, 0, True, True)
        if whole:
            reader.feed(b"\xc2\x02ab\x89\x00")
            assert reader.next() == (5, True, True, b"ab")
        else:
            reader.feed(b"\xc2\x02a")
            assert reader.next() == (0, True, True)
            assert reader.next() == (1, b"a", False)
            reader.feed(b"b\x89\x00")
            assert reader.next() == (1, b"b", True)
        rest, inside, binary, total, _, frame, received = reader.handoff(True)
        assert (rest, inside, binary, total, received) == (b"\x89\x00", True, True, 2, 2)
        assert frame == (2, True, 2, None, 2)
    # Without reopen, or after another event, the frame is over.
    reader.feed(b"\xc2\x02ab\x89\x00")
    reader.next(), reader.next()
    assert reader.handoff(True)[1] is False
    reader.feed(b"\xc2\x02ab")
    reader.next()
    assert reader.handoff()[1] is False


def test_reader_hands_off_bad_utf8_with_the_message_state() -> None:
    """The first fragment ends inside a code point; the second breaks it: the
    reader hands over before the second, with the pending byte."""
    euro = "€".encode()
    reader = framecore.Reader(False)
    reader.feed(b"\x01\x02a" + euro[:1] + b"\x80\x01\x41")
    assert reader.next() == (0, False, False)
    assert reader.next() == (1, b"a" + euro[:1], False)
    assert reader.next() == (4,)
    assert reader.handoff() == (b"A", True, False, 3, euro[:1], (0, True, 1, None, 0), 2)


def test_text_that_is_not_valid_utf8_is_never_whole() -> None:
    """A whole message is read only when its text is valid; otherwise nothing
    of it is read, and its pieces reach the check that hands it over."""
    reader = framecore.Reader(False)
    reader.feed(b"\x81\x02a\xff")
    assert reader.next() == (0, False, False)
    assert reader.next() == (4,)
    assert reader.handoff()[5] == (1, True, 2, None, 0)
    reader.feed(b"\x81\x02a\xe2")  # ends inside a code point
    assert reader.next() == (0, False, False)
    assert reader.next() == (4,)


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        ("κόσμε".encode(), (True, True)),
        (b"\xce", (True, False)),
        (b"\xed\xa0\x80", (False, False)),  # a surrogate
        (b"\xf4\x90\x80\x80", (False, False)),  # past U+10FFFF
        (b"\xc0\xaf", (False, False)),  # overlong
        (b"\xf0\x9f\x98\x80" * 3 + b"ascii run of more than eight bytes", (True, True)),
        (b"\xff", (False, False)),
    ],
)
def test_utf8_vectors(data: bytes, verdict: tuple[bool, bool]) -> None:
    assert framecore.utf8_valid(data) == verdict


_UTF8_PIECES = st.lists(
    st.one_of(
        st.text(max_size=20).map(str.encode),
        st.binary(max_size=6),
        st.sampled_from([b"\xe2", b"\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"\xed\xa0"]),
    ),
    max_size=8,
)


@given(pieces=_UTF8_PIECES)
def test_utf8_checks_pieces_as_autobahn_s_validator_does(pieces: list[bytes]) -> None:
    """Piece by piece, up to the first bad piece: the same verdict, the same
    count of good bytes, and an open code point exactly where Autobahn has one."""
    ours, autobahn = framecore.Utf8(), Utf8Validator()
    for piece in pieces:
        valid, complete, _, total = autobahn.validate(piece)
        if not valid:
            received, pending = ours.received, ours.pending
            assert not ours.feed(piece)
            assert (ours.received, ours.pending) == (received, pending)  # as before it
            break
        assert ours.feed(piece)
        assert (ours.complete, ours.received) == (complete, total)
        assert bool(ours.pending) == (not complete)
    ours.reset()
    assert (ours.complete, ours.received, ours.pending) == (True, 0, b"")


def test_utf8_pending_is_the_open_code_point() -> None:
    ours = framecore.Utf8()
    assert ours.feed(b"ab\xf0\x9f")
    assert (ours.pending, ours.received, ours.complete) == (b"\xf0\x9f", 4, False)
    assert ours.feed(b"\x98\x80")
    assert (ours.pending, ours.received, ours.complete) == (b"", 6, True)


def test_many_empty_frames_in_one_read() -> None:
    """50,000 empty continuation frames in one read: the reader loops, it does
    not recurse (a masked text message's validation buffer is on the stack)."""
    reader = framecore.Reader(True)
    empty = b"\x00\x80" + bytes(4)
    reader.feed(b"\x01\x80" + bytes(4) + empty * 50_000 + b"\x80\x81" + bytes(4) + b"x")
    assert reader.next() == (0, False, False)
    assert reader.next() == (1, b"x", True)
    assert reader.next() is None


def test_a_drained_reader_lets_go_of_its_read() -> None:
    """An idle leg keeps no buffer: once everything is read, the reader drops
    its reference to the last bytes it was fed."""
    reader = framecore.Reader(False)
    data = b"\x82\x7e\x01\x00" + bytes(256)
    before = sys.getrefcount(data)
    reader.feed(data)
    assert sys.getrefcount(data) == before + 1
    assert reader.next() == (5, True, False, bytes(256))
    assert reader.next() is None
    assert sys.getrefcount(data) == before
    reader.feed(data[:100])  # piece by piece
    assert reader.next() == (0, True, False)
    assert reader.next() == (1, bytes(96), False)
    rest = data[100:]
    before = sys.getrefcount(rest)
    reader.feed(rest)
    assert reader.next() == (1, bytes(160), True)
    assert reader.next() is None
    assert sys.getrefcount(rest) == before
    reader.feed(b"\x82\x00")  # a zero-length frame ending the read still ends its message
    assert reader.next() == (5, True, False, b"")
    assert reader.next() is None
    reader.feed(b"\x02\x00\x80\x00")  # and so does a zero-length final fragment
    assert reader.next() == (0, True, False)
    assert reader.next() == (1, b"", True)
    assert reader.next() is None
