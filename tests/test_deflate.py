"""Per-leg permessage-deflate policy: pure."""

from __future__ import annotations

import pytest
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
)
from hypothesis import given
from hypothesis import strategies as st

from wsgate._deflate import (
    OFF,
    DeflatePolicy,
    client_accept,
    client_offers,
    client_window_hint,
    parse_policy,
    server_accept,
    usable_extensions,
)

policies = st.builds(
    DeflatePolicy,
    enabled=st.just(True),
    window_bits=st.integers(9, 15),
    mem_level=st.integers(1, 9),
    no_context_takeover=st.booleans(),
    threshold=st.integers(0, 1 << 20),
    level=st.integers(1, 9),
)


def test_parse_on_off() -> None:
    assert parse_policy("on") == DeflatePolicy(window_bits=12, mem_level=5)
    assert DeflatePolicy().describe() == "on"
    assert parse_policy("OFF") == OFF
    assert parse_policy("on,window_bits=12,mem_level=4,no_context_takeover") == DeflatePolicy(
        window_bits=12, mem_level=4, no_context_takeover=True
    )
    assert DeflatePolicy().threshold == 128
    assert parse_policy("on,threshold=0").threshold == 0
    assert parse_policy("on,threshold=4096").describe() == "on,threshold=4096"
    # zlib's fastest level unless given, as nginx's gzip_comp_level.
    assert DeflatePolicy().level == 1
    assert parse_policy("on,level=6").describe() == "on,level=6"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("yes", "expected 'on', 'off'"),
        ("on,window_bits=8", "window_bits must be 9 to 15"),
        ("on,mem_level=10", "mem_level must be 1 to 9"),
        ("on,window=9", "unknown deflate setting"),
        ("on,window_bits=x", "needs a whole number"),
        ("on,no_context_takeover=1", "takes no value"),
        ("on,mem_level=2,mem_level=3", "given twice"),
        ("on,threshold=-1", "threshold must be 0 or more bytes"),
        ("on,threshold=1k", "threshold needs a whole number"),
        ("on,level=0", "level must be 1 to 9"),
        ("on,level=10", "level must be 1 to 9"),
        ("off,window_bits=9", "expected"),
    ],
)
def test_parse_errors_say_what_is_valid(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_policy(text)


@given(policies)
def test_describe_round_trips(policy: DeflatePolicy) -> None:
    assert parse_policy(policy.describe()) == policy


def _offer(header_params: dict[str, list[object]]) -> PerMessageDeflateOffer:
    return PerMessageDeflateOffer.parse(header_params)


CHROME_OFFER = {"client_max_window_bits": [True]}


def test_malformed_offers_are_dropped_others_kept() -> None:
    offered = [
        ("permessage-deflate", {"client_max_window_bits": ["8"]}),
        ("permessage-deflate", {"bogus": ["1"]}),
        ("x-webkit-deflate-frame", {}),
        ("permessage-deflate", CHROME_OFFER),
    ]
    assert usable_extensions(offered) == [offered[2], offered[3]]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["permessage-deflate", "other"]),
            st.dictionaries(
                st.sampled_from(
                    [
                        "client_max_window_bits",
                        "server_max_window_bits",
                        "client_no_context_takeover",
                        "server_no_context_takeover",
                        "junk",
                    ]
                ),
                st.lists(
                    st.sampled_from([True, "8", "9", "15", "16", "x"]), min_size=1, max_size=2
                ),
            ),
        ),
        max_size=4,
    )
)
def test_kept_offers_always_parse(offered: list[tuple[str, dict[str, list[object]]]]) -> None:
    for name, params in usable_extensions(offered):
        if name == "permessage-deflate":
            PerMessageDeflateOffer.parse(params)


@pytest.mark.parametrize(
    ("params", "hint", "answer"),
    [
        ({"client_max_window_bits": ["10"]}, 10, "client_max_window_bits=10"),
        ({"client_max_window_bits": ["15"]}, 15, "client_max_window_bits=12"),
        (CHROME_OFFER, None, "client_max_window_bits=12"),
        ({}, None, None),
    ],
)
def test_a_client_s_own_window_limit_is_kept(
    params: dict[str, list[object]], hint: int | None, answer: str | None
) -> None:
    """Node ws refuses an answer above the value it offered; Autobahn drops it."""
    offered = [("x-other", {}), ("permessage-deflate", params)]
    assert client_window_hint(offered) == hint
    accept = server_accept(DeflatePolicy(), hint)([_offer(params)])
    header = accept.get_extension_string()
    if answer is None:
        assert "client_max_window_bits" not in header
    else:
        assert answer in header


def test_off_declines() -> None:
    assert server_accept(OFF)([_offer(CHROME_OFFER)]) is None
    assert client_offers(OFF) == []


@given(policies, st.sampled_from([CHROME_OFFER, {}, {"server_max_window_bits": ["10"]}]))
def test_server_accept_builds_a_working_extension(policy: DeflatePolicy, params: dict) -> None:
    offer = _offer(params)
    accept = server_accept(policy)([offer])
    assert accept is not None
    pmce = PerMessageDeflate.create_from_offer_accept(True, accept)
    requested = offer.request_max_window_bits
    if requested:
        assert pmce.server_max_window_bits <= requested
    assert pmce.server_max_window_bits <= policy.window_bits
    assert pmce.mem_level == policy.mem_level
    # Browsers do not offer client_no_context_takeover; it is asked anyway.
    assert pmce.client_no_context_takeover == policy.no_context_takeover
    # The answer is a header the client can parse back.
    header = accept.get_extension_string()
    assert header.startswith("permessage-deflate")


@given(
    policies,
    st.sampled_from(
        [{}, {"client_max_window_bits": ["10"]}, {"server_no_context_takeover": [True]}]
    ),
)
def test_client_side_offer_and_accept(policy: DeflatePolicy, response_params: dict) -> None:
    (offer,) = client_offers(policy)
    text = offer.get_extension_string()
    assert f"server_max_window_bits={policy.window_bits}" in text
    response = PerMessageDeflateResponse.parse(response_params)
    accept = client_accept(policy)(response)
    pmce = PerMessageDeflate.create_from_response_accept(False, accept)
    limit = response.client_max_window_bits
    if limit:
        assert pmce.client_max_window_bits <= limit


@given(policies, st.binary(max_size=5000), st.binary(max_size=5000))
def test_negotiated_pair_round_trips_data(
    policy: DeflatePolicy, first: bytes, second: bytes
) -> None:
    """wsgate's server side and its client side agree with each other and with zlib."""
    offer = client_offers(policy)[0]
    reparsed = PerMessageDeflateOffer.parse(_params(offer.get_extension_string()))
    accept = server_accept(policy)([reparsed])
    server = PerMessageDeflate.create_from_offer_accept(True, accept)
    response = PerMessageDeflateResponse.parse(_params(accept.get_extension_string()))
    client = PerMessageDeflate.create_from_response_accept(False, client_accept(policy)(response))
    for message in (first, second):
        server.start_compress_message()
        wire = server.compress_message_data(message) + server.end_compress_message()
        client.start_decompress_message()
        assert client.decompress_message_data(wire) == message
        client.end_decompress_message()


def _params(header: str) -> dict[str, list[object]]:
    params: dict[str, list[object]] = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        params.setdefault(key, []).append(value if value else True)
    return params


def test_default_offer_keeps_context_takeover() -> None:
    """No client_no_context_takeover hint unless asked: a backend may act on it."""
    (offer,) = client_offers(DeflatePolicy())
    assert "no_context_takeover" not in offer.get_extension_string()
    (offer,) = client_offers(DeflatePolicy(no_context_takeover=True))
    assert "client_no_context_takeover" in offer.get_extension_string()
