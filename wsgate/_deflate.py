"""Per-leg permessage-deflate policy, and the Autobahn hooks made from it.

Pure: parsing a policy, filtering a client's offers, building offers and
accept functions. Each leg negotiates on its own, so any mix of compressing
and non-compressing peers works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)

EXTENSION = "permessage-deflate"
#: zlib rejects 8 for raw deflate streams, so 8 does not interoperate.
WINDOW_BITS = range(9, 16)
MEM_LEVELS = range(1, 10)

_POLICY_KEYS = ("window_bits", "mem_level", "level", "threshold", "no_context_takeover")
LEVELS = range(1, 10)

#: The defaults of the ``websockets`` library: 4 KiB windows and zlib's
#: memory level 5 instead of zlib's 32 KiB and 8. A compressor then needs
#: 32 KiB instead of 256 KiB, which also keeps it in the CPU's cache: with
#: a hundred connections busy, compressing 1 KiB of JSON was about four
#: times faster at 12/5 than at 15/8, for 10% more bytes on the wire.
DEFAULT_WINDOW_BITS = 12
DEFAULT_MEM_LEVEL = 5
#: Messages shorter than this many bytes go out uncompressed: below it the
#: frame header, the deflate block's own overhead and two zlib calls (ours
#: and the peer's) cost more than the few bytes they save.
DEFAULT_THRESHOLD = 128
#: The compression level of what wsgate compresses: 1, the fastest, as
#: nginx's ``gzip_comp_level`` defaults to. On 1 KiB JSON messages zlib's
#: level 1 costs about 10 us instead of level 6's 19 us, for 30% of the
#: plaintext instead of 25.5%; the compiled path's own level-1 encoder
#: (wsgate/_framequick.c, whole messages up to 1 KiB) about 2.5 us, for 37%.
#: The level is wsgate's alone: the peer inflates any level the same way.
DEFAULT_LEVEL = 1


@dataclass(frozen=True, slots=True)
class DeflatePolicy:
    """What wsgate negotiates on one leg.

    ``window_bits`` caps the window of the stream wsgate compresses *and*
    asks the peer to cap its own (less memory per connection, less
    compression). ``no_context_takeover`` asks for a fresh compressor per
    message in both directions: cheap idle connections, worse ratios.
    ``threshold``: messages wsgate sends that are shorter go out
    uncompressed (0: try every message). ``level``: the compression level
    (1 fastest, 9 smallest) of what wsgate sends.
    """

    enabled: bool = True
    window_bits: int = DEFAULT_WINDOW_BITS
    mem_level: int = DEFAULT_MEM_LEVEL
    no_context_takeover: bool = False
    threshold: int = DEFAULT_THRESHOLD
    level: int = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if self.window_bits not in WINDOW_BITS:
            raise ValueError(f"window_bits must be 9 to 15, not {self.window_bits}")
        if self.mem_level not in MEM_LEVELS:
            raise ValueError(f"mem_level must be 1 to 9, not {self.mem_level}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be 1 to 9, not {self.level}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be 0 or more bytes, not {self.threshold}")

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        parts = ["on"]
        if self.window_bits != DEFAULT_WINDOW_BITS:
            parts.append(f"window_bits={self.window_bits}")
        if self.mem_level != DEFAULT_MEM_LEVEL:
            parts.append(f"mem_level={self.mem_level}")
        if self.level != DEFAULT_LEVEL:
            parts.append(f"level={self.level}")
        if self.threshold != DEFAULT_THRESHOLD:
            parts.append(f"threshold={self.threshold}")
        if self.no_context_takeover:
            parts.append("no_context_takeover")
        return ",".join(parts)


OFF = DeflatePolicy(enabled=False)


def parse_policy(text: str) -> DeflatePolicy:
    """Parse ``on``, ``off`` or ``on,KEY=VALUE,...,no_context_takeover``
    (keys: window_bits, mem_level, level, threshold).

    Raises ValueError with a message that says what is valid.
    """
    parts = [p.strip() for p in text.split(",")]
    head = parts[0].lower()
    if head == "off" and len(parts) == 1:
        return OFF
    if head != "on":
        raise ValueError(
            f"{text!r}: expected 'on', 'off' or 'on,KEY=VALUE,...' "
            f"with keys {', '.join(_POLICY_KEYS)}"
        )
    values: dict[str, Any] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if key not in _POLICY_KEYS:
            raise ValueError(f"{part!r}: unknown deflate setting; valid: {', '.join(_POLICY_KEYS)}")
        if key in values:
            raise ValueError(f"{key!r} given twice")
        if key == "no_context_takeover":
            if sep:
                raise ValueError("no_context_takeover takes no value")
            values[key] = True
            continue
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"{part!r}: {key} needs a whole number") from None
    return DeflatePolicy(**values)


def usable_extensions(
    extensions: Iterable[tuple[str, dict[str, list[Any]]]],
) -> list[tuple[str, dict[str, list[Any]]]]:
    """Drop permessage-deflate offers Autobahn could not parse.

    Autobahn answers a malformed offer with HTTP 400 for the whole
    handshake; RFC 7692 says to decline the offer instead. Other extensions
    pass through untouched (Autobahn ignores the ones it does not know).
    """
    kept = []
    for name, params in extensions:
        if name == EXTENSION:
            try:
                PerMessageDeflateOffer.parse(params)
            except Exception:  # Autobahn raises bare Exception for bad offers
                continue
        kept.append((name, params))
    return kept


def client_window_hint(extensions: Iterable[tuple[str, dict[str, list[Any]]]]) -> int | None:
    """The value of ``client_max_window_bits`` in the first deflate offer, if any.

    A client that names one (Node ``ws`` with ``clientMaxWindowBits: 10``)
    refuses a response asking for more; Autobahn parses the value and drops it.
    """
    for name, params in extensions:
        if name == EXTENSION:
            values = params.get("client_max_window_bits") or [True]
            value = values[0]
            return None if value is True else int(value)
    return None


def server_accept(
    policy: DeflatePolicy, client_window: int | None = None
) -> Callable[[Sequence[Any]], Any]:
    """The ``perMessageCompressionAccept`` function for the client leg;
    ``client_window`` is the client's own hint (``client_window_hint``)."""

    def accept(offers: Sequence[Any]) -> PerMessageDeflateOfferAccept | None:
        if not policy.enabled:
            return None
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return _accept_offer(policy, offer, client_window)
        return None

    return accept


def _accept_offer(
    policy: DeflatePolicy, offer: PerMessageDeflateOffer, client_window: int | None
) -> PerMessageDeflateOfferAccept:
    bits = policy.window_bits
    requested = offer.request_max_window_bits
    client_bits = min(bits, client_window) if client_window else bits
    accept = PerMessageDeflateOfferAccept(
        offer,
        request_max_window_bits=client_bits if offer.accept_max_window_bits else 0,
        no_context_takeover=True if policy.no_context_takeover else None,
        window_bits=min(bits, requested) if requested else bits,
        mem_level=policy.mem_level,
    )
    if policy.no_context_takeover:
        # RFC 7692 7.1.1.2: a server MAY answer client_no_context_takeover
        # to any offer. Autobahn only lets it through when the client offered
        # the hint, which browsers do not; then their context would pin a
        # decompressor to every idle connection.
        accept.request_no_context_takeover = True
    return accept


def client_offers(policy: DeflatePolicy) -> list[PerMessageDeflateOffer]:
    """The ``perMessageCompressionOffers`` for the backend leg."""
    if not policy.enabled:
        return []
    return [
        PerMessageDeflateOffer(
            # Autobahn writes this as client_no_context_takeover, a hint the
            # backend may turn into a fresh compressor per message: only
            # when the policy asks for it.
            accept_no_context_takeover=policy.no_context_takeover,
            accept_max_window_bits=True,
            request_no_context_takeover=policy.no_context_takeover,
            request_max_window_bits=policy.window_bits,
        )
    ]


def client_accept(policy: DeflatePolicy) -> Callable[[Any], Any]:
    """The ``perMessageCompressionAccept`` function for the backend leg."""

    def accept(response: Any) -> PerMessageDeflateResponseAccept | None:
        if not policy.enabled or not isinstance(response, PerMessageDeflateResponse):
            return None
        limit = response.client_max_window_bits
        window_bits = min(policy.window_bits, limit) if limit else policy.window_bits
        return PerMessageDeflateResponseAccept(
            response,
            no_context_takeover=True if policy.no_context_takeover else None,
            window_bits=window_bits,
            mem_level=policy.mem_level,
        )

    return accept


def describe_in_use(extensions: Iterable[Any]) -> str:
    """One short text for the log line: what a leg negotiated."""
    names = []
    for ext in extensions:
        state = getattr(ext, "__json__", None)
        if state is None:
            names.append(str(ext))
            continue
        js = state()
        names.append(
            f"{js.get('extension', EXTENSION)}"
            f"(server_bits={js.get('server_max_window_bits')},"
            f"client_bits={js.get('client_max_window_bits')},"
            f"server_nct={js.get('server_no_context_takeover')},"
            f"client_nct={js.get('client_no_context_takeover')})"
        )
    return ", ".join(names) or "none"
