# The compiled frame path (wsgate/_framecore.c); optional, see wsgate/_framepath.py.

class Reader:
    def __init__(
        self,
        masked: bool,
        max_message: int = 0,
        validate_utf8: bool = True,
        rsv1_ok: bool = False,
        whole_text: bool = True,
    ) -> None: ...
    #: The message's size so far as Autobahn counts it (a compressed
    #: message's caller adds what inflating grew).
    total: int
    def feed(self, data: bytes, /) -> None: ...
    def next(
        self,
    ) -> (
        tuple[int, bool, bool]
        | tuple[int, bytes, bool]
        | tuple[int, bytes]
        | tuple[int]
        | tuple[int, bool, bool, bytes]
        | None
    ): ...
    def handoff(
        self, reopen: bool = False, /
    ) -> tuple[
        bytes, bool, bool, int, bytes | None, tuple[int, bool, int, bytes | None, int] | None, int
    ]: ...

class Utf8:
    """UTF-8 checked piece by piece (a compressed text message's inflated pieces)."""

    #: The bytes found valid so far.
    received: int
    #: Whether the text so far ends on a code point.
    complete: bool
    #: The bytes of the code point still open.
    pending: bytes
    def feed(self, data: bytes, /) -> bool: ...
    def reset(self) -> None: ...

def frame(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool, /) -> bytes: ...
def utf8_valid(data: bytes, /) -> tuple[bool, bool]: ...

class Deflater:
    """One direction's permessage-deflate compressor (wsgate/_framezlib.c)."""

    def __init__(self, level: int, bits: int, mem_level: int, keep: bool) -> None: ...
    #: Whether an encoder's state is held (dropped when idle).
    live: bool
    #: Set by every message; the idle check clears it.
    busy: int
    #: The peer's window: the last 2**bits bytes sent compressed.
    window: bytes
    def whole(self, data: bytes | memoryview, /) -> bytes | None: ...
    def trial(self, sample: bytes | memoryview, /) -> bytes | None: ...
    def start(self) -> None: ...
    def compress(self, data: bytes | memoryview, /) -> bytes: ...
    def flush(self, mode: int = ..., /) -> bytes: ...
    def drop(self) -> bool: ...

class Inflater:
    """One direction's permessage-deflate decompressor (wsgate/_framezlib.c)."""

    def __init__(self, bits: int, keep: bool) -> None: ...
    live: bool
    busy: int
    window: bytes
    unconsumed_tail: bytes
    def start(self) -> None: ...
    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...
    def whole(
        self, payload: bytes, limit: int | None, message_limit: int, text: bool, /
    ) -> bytes | tuple[bytes | None, int, str | None]: ...
    def drop(self) -> bool: ...
