# The compiled frame path (wsgate/_framecore.c); optional, see wsgate/_framepath.py.

class Reader:
    def __init__(
        self, masked: bool, max_message: int = 0, validate_utf8: bool = True, rsv1_ok: bool = False
    ) -> None: ...
    #: The message's size so far as Autobahn counts it (a compressed
    #: message's caller adds what inflating grew).
    total: int
    def feed(self, data: bytes, /) -> None: ...
    def next(
        self,
    ) -> (
        tuple[int, bool, bool] | tuple[int, bytes, bool] | tuple[int, bytes] | tuple[int] | None
    ): ...
    def handoff(
        self, reopen: bool = False, /
    ) -> tuple[
        bytes, bool, bool, int, bytes | None, tuple[int, bool, int, bytes | None, int] | None, int
    ]: ...

def frame(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool, /) -> bytes: ...
def utf8_valid(data: bytes, /) -> tuple[bool, bool]: ...
