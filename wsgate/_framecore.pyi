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
