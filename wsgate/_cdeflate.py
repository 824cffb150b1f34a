"""LeanDeflate on the compiled path: the same policy, compiled streams.

``CompiledDeflate`` keeps ``LeanDeflate``'s decisions (what pays, what
idles, the windows the peers rely on) and swaps its zlib objects for
``_framecore.Deflater`` and ``Inflater`` (wsgate/_framezlib.c), which use
the same zlib and give the same bytes and verdicts. What changes is the
cost of a message: a whole one is one call each way (``deflate_whole``,
``inflate_whole``) instead of about ten, no window is copied per message
(the deflater keeps a linear history, the inflater asks zlib for its
window only when it is dropped), and at level 1 a whole message of up to
1 KiB is compressed by the extension's own fast encoder (about 2.5 us
instead of zlib's 10 for 1 KiB of JSON, for a fifth more bytes).
tests/test_cdeflate.py holds the two classes to the same messages, and to
the same bytes wherever both use zlib.
"""

from __future__ import annotations

from typing import Any

from autobahn.exception import PayloadCorruptError, PayloadExceededError

from wsgate._leandeflate import _RAW, _UNDECIDED, SAMPLE, DeflatePolicy, LeanDeflate
from wsgate._relay import Clock

#: Inflater.whole's codes: a check after inflating failed (the caller goes
#: on from there, the tail not fed yet); inflating failed; the limit was hit;
#: feeding the tail failed.
WHOLE_LATER, WHOLE_CORRUPT, WHOLE_EXCEEDED, WHOLE_TAIL_CORRUPT = 0, 1, 2, 3


class CompiledDeflate(LeanDeflate):
    """One leg's permessage-deflate state on compiled streams. ``adopt`` it
    only where Autobahn has not used its own zlib states (``usable``)."""

    _compressor: Any  # a Deflater
    _decompressor: Any  # an Inflater

    @staticmethod
    def usable(pmc: Any) -> bool:
        """Whether ``pmc``'s zlib states are unused (their windows cannot
        move to a compiled stream)."""
        return pmc._compressor is None and pmc._decompressor is None

    def _take_zlib(self, pmc: Any, core: Any) -> None:
        if core is None:
            raise RuntimeError("CompiledDeflate needs wsgate._framecore")
        self._compressor = core.Deflater(
            self._level, self._out_bits, self.mem_level, not self._out_resets
        )
        self._decompressor = core.Inflater(self._in_bits, not self._in_resets)

    # -- sending -------------------------------------------------------------------

    def deflate_whole(self, data: bytes) -> bytes | None:
        size = len(data)
        if size > SAMPLE or size < self._threshold or self._skip:
            self._sending = _UNDECIDED
            return self.deflate(data, True)
        if self._timer is None and self._clock is not None:
            self._touch()
        out: bytes | None = self._compressor.whole(data)
        self._sending = _UNDECIDED
        if out is None:
            self._missed()
            self._sending = _RAW
            return None
        self._misses = 0
        return out

    def _trial(self, sample: bytes | memoryview) -> bytes | None:
        self._touch()
        out: bytes | None = self._compressor.trial(sample)
        return out

    def _spoil(self) -> None:
        pass  # the deflater dropped its spoilt state: rebuilt from the window next time

    def _message_sent(self) -> None:
        if self._out_resets:
            self._compressor.drop()  # a fresh one per message, as the Python path

    def _remember_out(self, data: bytes | memoryview) -> None:
        self._busy = True  # the deflater keeps its window itself

    def start_compress_message(self) -> None:
        self._touch()
        self._compressor.start()

    def compress_message_data(self, data: bytes | memoryview) -> bytes:
        out: bytes = self._compressor.compress(data)
        return out

    # -- receiving -----------------------------------------------------------------

    def inflate_whole(self, payload: bytes, limit: int, text: bool) -> Any:
        """A whole compressed message, as ``start_decompress_message``,
        ``decompress_message_data(payload, limit or None)`` and
        ``end_decompress_message`` with the leg's size limit (``limit``, 0:
        none) and UTF-8 check (``text``) in between: its inflated payload
        when all pass; else ``(data, error, tail error)`` for the leg's slow
        path (``RelayedLeg._inflate``), which goes on from the failed check
        and feeds the tail when neither error is set."""
        if self._timer is None and self._clock is not None:
            self._touch()
        cap = self.max_message_size
        budget = limit if limit > 0 else None
        if cap is not None and (budget is None or cap < budget):
            budget = cap
        out = self._decompressor.whole(payload, budget, limit, text)
        if out.__class__ is bytes:
            return out
        data, code, why = out
        if code == WHOLE_LATER:
            self._receiving = True  # until the slow path feeds the tail
            return data, None, None
        if code == WHOLE_EXCEEDED:
            return (
                data,
                PayloadExceededError(
                    "WebSocket message exceeds decompression limit "
                    f"(max_message_size={cap}, max_output_len={limit if limit > 0 else None})"
                ),
                None,
            )
        error = PayloadCorruptError(f"invalid permessage-deflate data: {why}")
        return (None, error, None) if code == WHOLE_CORRUPT else (data, None, error)

    def _start_inflater(self) -> None:
        self._decompressor.start()

    def _remember_in(self, data: bytes) -> None:
        pass  # the inflater's window is zlib's own

    def _message_received(self) -> None:
        if self._in_resets:
            self._decompressor.drop()

    # -- idle ------------------------------------------------------------------------

    def _was_busy(self) -> bool:
        deflater, inflater = self._compressor, self._decompressor
        busy = self._busy or deflater.busy or inflater.busy
        self._busy = False
        deflater.busy = inflater.busy = 0
        return bool(busy)

    def _drop_zlib(self) -> tuple[bool, bool]:
        return self._compressor.drop(), self._decompressor.drop()

    @property
    def holds_zlib(self) -> bool:
        return bool(self._compressor.live or self._decompressor.live)


def adopt(pmc: Any, policy: DeflatePolicy, clock: Clock, core: Any) -> LeanDeflate:
    """A leg's permessage-deflate once it is open: on compiled streams where
    the compiled module runs (``core``) and Autobahn has not used its own
    zlib states, else on zlib's Python objects."""
    kind = CompiledDeflate if core is not None and CompiledDeflate.usable(pmc) else LeanDeflate
    return kind.adopt(pmc, policy.threshold, clock, policy.level, core)


# DeflatePolicy and LeanDeflate re-exported: the legs import deflate from here.
__all__ = ["CompiledDeflate", "DeflatePolicy", "LeanDeflate", "adopt"]
