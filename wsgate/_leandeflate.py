"""permessage-deflate that compresses only what pays and idles cheaply.

Autobahn's ``PerMessageDeflate`` compresses every message and keeps both
zlib states for the life of the connection. This subclass, put in its place
once a leg is open (``adopt``), changes two things:

- **What it compresses.** RFC 7692 lets any message go out without RSV1, so
  a message wsgate sends is compressed only when that pays: not when its
  first piece is final and shorter than the policy's ``threshold``, nor when
  a sample of its first piece does not shrink by a tenth (compressed video,
  images, VNC updates, encrypted data). The sample is compressed by the
  compressor itself; when it does not pay, the compressor (which has taken
  in bytes the peer will get raw) is dropped and rebuilt from the peer's
  window, as after an idle period, by the next message that compresses.
  A message that compresses so costs no more than its compression (a
  ``copy()`` of the compressor to try on, 38 KiB at the default window,
  cost 0.6 us more per message, and more out of the cache), and one that
  does not costs the sample instead of the whole message (64 KiB of random
  bytes: about 1.5 ms at zlib's level 1, 3 ms at its usual 6) and a
  rebuild (about 5 us); after a run of such messages most of the next
  ones go out untried (``MAX_SKIP``). Later pieces follow the first
  piece's choice.
- **What an idle connection holds.** Under context takeover the stream's
  only state the peer relies on is its window: the last ``2**window_bits``
  bytes of plaintext. Both windows are kept as bytes (4 KiB each by
  default); once a leg has been quiet for ``IDLE_SECONDS`` the compressor
  and decompressor (about 40 KiB together) are dropped, and rebuilt with
  the window as preset dictionary (``zdict``) when the next message comes,
  which yields the same stream for the peer. A rebuild costs about 10 us.
"""

from __future__ import annotations

import zlib
from typing import Any

from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import PerMessageDeflate

from wsgate import _heap
from wsgate._deflate import DEFAULT_LEVEL, DeflatePolicy  # re-exported (import limit)
from wsgate._relay import Clock

#: How long a leg must be quiet before its zlib states are dropped. Short
#: enough that a crowd of idle connections stays small, long enough that a
#: busy one pays a rebuild rarely (and its timer fires once per period).
IDLE_SECONDS = 2.0

#: How much of a message's first piece is compressed to see whether it pays.
SAMPLE = 1024

#: After n messages in a row that did not shrink, the next 2**(n-1) - 1 go
#: out raw untried (at most this many): a stream of compressed data (VNC,
#: video) then pays for a try once in MAX_SKIP + 1 messages, while a single
#: image between JSON messages costs nothing.
MAX_SKIP = 31

_SYNC_TAIL = b"\x00\x00\xff\xff"

# What a message being sent is: not started, compressed, sent raw.
_UNDECIDED, _DEFLATING, _RAW = 0, 1, 2


def pays(sample_size: int, compressed_size: int) -> bool:
    """Whether compressing saved at least a tenth (``compressed_size`` counts
    the sync flush's 4-byte tail, which the final frame drops)."""
    return (compressed_size - 4) * 10 <= sample_size * 9


class LeanDeflate(PerMessageDeflate):  # type: ignore[misc]
    """One leg's permessage-deflate state; see the module's docstring."""

    # zlib objects or None (set by Autobahn's __init__).
    _compressor: Any
    _decompressor: Any
    _threshold: int = 0
    _level: int = DEFAULT_LEVEL
    _clock: Clock | None = None
    _timer: Any = None
    _sending: int = _UNDECIDED
    #: Messages in a row whose sample did not shrink, and how many more are
    #: to go out raw without a try.
    _misses: int = 0
    _skip: int = 0
    _receiving: bool = False
    _busy: bool = False
    #: The last plaintext of each direction's compressed messages (the
    #: peers' windows); b"" under no_context_takeover, where none is kept.
    _out_window: bytes = b""
    _in_window: bytes = b""

    @classmethod
    def adopt(
        cls,
        pmc: Any,
        threshold: int,
        clock: Clock,
        level: int = DEFAULT_LEVEL,
        core: Any = None,
    ) -> LeanDeflate:
        """A LeanDeflate with the parameters Autobahn negotiated into ``pmc``,
        compressing at zlib's ``level`` (``core``: the compiled module, for
        a subclass that uses it)."""
        lean = cls(
            pmc._is_server,
            pmc.server_no_context_takeover,
            pmc.client_no_context_takeover,
            pmc.server_max_window_bits,
            pmc.client_max_window_bits,
            pmc.mem_level,
            pmc.max_message_size,
        )
        lean._threshold = threshold
        lean._level = level
        lean._take_zlib(pmc, core)
        if not lean.holds_zlib:
            # Windows unknown for states already used: then never drop them.
            lean._clock = clock
        return lean

    def _take_zlib(self, pmc: Any, core: Any) -> None:
        """Take over the zlib states Autobahn made (None until a message)."""
        self._compressor = pmc._compressor
        self._decompressor = pmc._decompressor

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Which side's parameters are ours, worked out once (the hot path
        # reads them per message).
        server = bool(self._is_server)
        self._out_bits: int = self.server_max_window_bits if server else self.client_max_window_bits
        self._in_bits: int = self.client_max_window_bits if server else self.server_max_window_bits
        self._out_resets = bool(
            self.server_no_context_takeover if server else self.client_no_context_takeover
        )
        self._in_resets = bool(
            self.client_no_context_takeover if server else self.server_no_context_takeover
        )

    # -- sending: the leg's interface --------------------------------------------

    def begin(self) -> None:
        """A message starts: its first piece decides whether it is compressed."""
        self._sending = _UNDECIDED

    def deflate(self, data: bytes, final: bool) -> bytes | None:
        """The compressed payload for the next piece of the message being sent,
        or None when the message goes out uncompressed (no RSV1)."""
        sending = self._sending
        if sending == _RAW:
            return None
        if sending == _UNDECIDED:
            out = self._first_piece(data, final)
            if out is None:
                self._sending = _RAW
                return None
            self._sending = _DEFLATING
        else:
            out = self.compress_message_data(data) if data else b""
        if final:
            out += self._compressor.flush(zlib.Z_SYNC_FLUSH)
            if out.endswith(_SYNC_TAIL):
                out = out[:-4]
            # Nothing left to flush after a sync flush: an empty stored block
            # (b"\x00") is something the peer can end with 00 00 ff ff.
            out = out or b"\x00"
            self._sending = _UNDECIDED
            self._message_sent()
        return out

    def deflate_whole(self, data: bytes) -> bytes | None:
        """``begin()`` and ``deflate(data, True)`` at once: a whole message's
        compressed payload, or None. The common case (a message no longer
        than the sample) in one call; the same bytes and decisions."""
        size = len(data)
        if size > SAMPLE or size < self._threshold or self._skip:
            self._sending = _UNDECIDED
            return self.deflate(data, True)
        self.start_compress_message()
        compressor = self._compressor
        out: bytes = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if not pays(size, len(out)):
            self._missed()
            self._sending = _RAW
            return None
        self._misses = 0
        self._sending = _UNDECIDED
        self._remember_out(data)
        self._message_sent()
        if out.endswith(_SYNC_TAIL):
            out = out[:-4]
        return out or b"\x00"

    def _first_piece(self, data: bytes, final: bool) -> bytes | None:
        size = len(data)
        if size < self._threshold:
            if final:
                return None
            # The message's size is unknown and the piece too short to judge:
            # compress, as a message that streams is likely a large one.
            self.start_compress_message()
            return self.compress_message_data(data) if data else b""
        if self._skip:
            self._skip -= 1  # the last ones did not shrink: nor will this one
            return None
        out = self._trial(data if size <= SAMPLE else memoryview(data)[:SAMPLE])
        if out is None:
            self._missed()
            return None
        self._misses = 0
        if size > SAMPLE:
            out += self.compress_message_data(memoryview(data)[SAMPLE:])
        return out

    def _trial(self, sample: bytes | memoryview) -> bytes | None:
        """A message's first piece (or its first SAMPLE bytes) compressed and
        sync-flushed, tail kept; None when that does not pay."""
        self.start_compress_message()
        compressor = self._compressor
        out: bytes = compressor.compress(sample)
        out += compressor.flush(zlib.Z_SYNC_FLUSH)
        if not pays(len(sample), len(out)):
            return None
        self._remember_out(sample)
        return out

    def _missed(self) -> None:
        """A trial did not pay. The compressor is spoilt (it took in what the
        peer gets raw): the next message that compresses rebuilds it from the
        peer's window; and the next few go out untried."""
        self._spoil()
        self._misses += 1
        self._skip = min((1 << self._misses) // 2 - 1, MAX_SKIP)

    def _spoil(self) -> None:
        self._compressor = None

    def _message_sent(self) -> None:
        if self._out_resets:
            self._compressor = None  # a fresh one per message: nothing to keep

    # -- Autobahn's interface, with the windows kept ----------------------------

    def start_compress_message(self) -> None:
        self._touch()
        if self._compressor is None or self._out_resets:
            window = self._out_window
            self._compressor = zlib.compressobj(
                self._level,
                zlib.DEFLATED,
                -self._out_bits,
                self.mem_level,
                zlib.Z_DEFAULT_STRATEGY,
                *((window,) if window else ()),
            )

    def compress_message_data(self, data: bytes | memoryview) -> bytes:
        self._remember_out(data)
        out: bytes = self._compressor.compress(data)
        return out

    def end_compress_message(self) -> bytes:
        out: bytes = super().end_compress_message()
        self._message_sent()
        return out

    def start_decompress_message(self) -> None:
        self._touch()
        self._receiving = True
        self._start_inflater()
        self._decompress_message_size = 0

    def _start_inflater(self) -> None:
        if self._decompressor is None or self._in_resets:
            window = self._in_window
            if window:
                self._decompressor = zlib.decompressobj(-self._in_bits, zdict=window)
            else:
                self._decompressor = zlib.decompressobj(-self._in_bits)

    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        # Autobahn's, inlined (the same bounds, errors and messages; a test
        # holds them to it), and the window kept.
        self._busy = True
        limit = max_output_len
        cap = self.max_message_size
        if cap is not None:
            room = cap - self._decompress_message_size
            if limit is None or room < limit:
                limit = room
        decompressor = self._decompressor
        try:
            if limit is None:
                out: bytes = decompressor.decompress(data)
            else:
                out = decompressor.decompress(data, limit if limit > 0 else 1)
        except zlib.error as e:
            raise PayloadCorruptError(f"invalid permessage-deflate data: {e}") from e
        if limit is not None:
            self._decompress_message_size += len(out)
            if decompressor.unconsumed_tail or len(out) > limit:
                raise PayloadExceededError(
                    "WebSocket message exceeds decompression limit "
                    f"(max_message_size={cap}, max_output_len={max_output_len})"
                )
        self._remember_in(out)
        return out

    def _remember_in(self, data: bytes) -> None:
        if data and not self._in_resets:
            self._in_window = _last(self._in_window, data, 1 << self._in_bits)

    def end_decompress_message(self) -> None:
        self._receiving = False
        try:
            self._decompressor.decompress(_SYNC_TAIL)  # the tail the sender dropped
        except zlib.error as e:
            raise PayloadCorruptError(f"invalid permessage-deflate data: {e}") from e
        self._message_received()

    def _message_received(self) -> None:
        if self._in_resets:
            self._decompressor = None  # a fresh one per message: nothing to keep

    def _remember_out(self, data: bytes | memoryview) -> None:
        self._busy = True
        if data and not self._out_resets:
            self._out_window = _last(self._out_window, data, 1 << self._out_bits)

    # -- idle --------------------------------------------------------------------

    def _touch(self) -> None:
        self._busy = True
        if self._timer is None and self._clock is not None:
            self._timer = self._clock.callLater(IDLE_SECONDS, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        assert self._clock is not None
        mid_message = self._receiving or self._sending == _DEFLATING
        if self._was_busy() or mid_message:
            self._timer = self._clock.callLater(IDLE_SECONDS, self._idle_check)
            return
        # Quiet for a whole period: keep only the windows.
        dropped_out, dropped_in = self._drop_zlib()
        size = 0
        if dropped_out:
            size += (4 << self._out_bits) + (512 << self.mem_level) + 6 * 1024
        if dropped_in:
            size += (1 << self._in_bits) + 7 * 1024
        if size:
            _heap.TRIM.freed(self._clock, size)

    def _was_busy(self) -> bool:
        """Whether a message went through since the last check (cleared)."""
        busy, self._busy = self._busy, False
        return busy

    def _drop_zlib(self) -> tuple[bool, bool]:
        """Drop both zlib states; whether each was held."""
        held = (self._compressor is not None, self._decompressor is not None)
        self._compressor = self._decompressor = None
        return held

    def stop(self) -> None:
        """The leg closed: no more timer."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._clock = None

    @property
    def holds_zlib(self) -> bool:
        """Whether a compressor or decompressor is alive (for tests, metrics)."""
        return self._compressor is not None or self._decompressor is not None


def _last(window: bytes, data: bytes | memoryview, size: int) -> bytes:
    """The last ``size`` bytes of ``window + data``, copying little."""
    if len(data) >= size:
        return bytes(data[-size:])
    return (window + data)[-size:]


__all__ = ["IDLE_SECONDS", "MAX_SKIP", "SAMPLE", "DeflatePolicy", "LeanDeflate", "pays"]
