"""Strict request heads: the pure checks, then end to end against a backend
that records the raw bytes of each request head it gets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rawws import RecordingBackend, exchange

from wsgate._httphead import Head, HeadError, autobahn_safe, check_partial, parse_head
from wsgate.testing import Wsgate, free_port

_UPGRADE = (
    b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Every control character but HTAB, as a byte.
_CONTROLS = [bytes([c]) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)]


def _head(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


# -- the pure parser -------------------------------------------------------------


def test_parses_a_valid_head() -> None:
    head = parse_head(_head(b"Host: h", b"X-A:  one \t", b"x-a: two", b"Empty:"))
    assert (head.method, head.target, head.version) == ("GET", "/", "HTTP/1.1")
    assert head.fields == (("host", "h"), ("x-a", "one"), ("x-a", "two"), ("empty", ""))
    assert head.headers() == {"host": "h", "x-a": "one, two", "empty": ""}


def test_obs_text_is_kept_byte_for_byte() -> None:
    raw = "café \u043f\u0440\u0438\u0432\u0435\u0442 \u0445".encode()
    head = parse_head(_head(b"X-Name: " + raw, b"X-Latin1: caf\xe9"))
    assert head.headers()["x-name"].encode("latin-1") == raw
    assert head.headers()["x-latin1"].encode("latin-1") == b"caf\xe9"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_head(b"X-A: a\rX-B: b"), "CRLF"),
        (b"GET / HTTP/1.1\r\nX-A: a\nX-B: b\r\n\r\n", "CRLF"),
        (b"GET / HTTP/1.1\nHost: h\n\n\r\n\r\n", "CRLF"),
        (_head(b"X-A: a", b" X-B: b"), "obs-fold"),
        (_head(b"X-A: a", b"\tX-B: b"), "obs-fold"),
        (_head(b" Host: h"), "obs-fold"),
        (_head(b"X-A: a\x00b"), "control character"),
        (_head(b"X-A: a\x0bX-B: b"), "control character"),
        (_head(b"X-A: a\x0cX-B: b"), "control character"),
        (_head(b"X-A: a\x1cX-B: b"), "control character"),
        (_head(b"X-A: a\x1dX-B: b"), "control character"),
        (_head(b"X-A: a\x1eX-B: b"), "control character"),
        (_head(b"X-A: a\x7f"), "control character"),
        (_head(b"X-A: a\x85X-B: b"), "control character"),  # NEL, a lone byte
        (_head(b"X-A: a\xc2\x85X-B: b"), "control character"),  # NEL in UTF-8
        (_head(b"X-A : a"), "token"),
        (_head(b"X A: a"), "token"),
        (_head(b"X\x00A: a"), "token"),
        (_head(b"X(A): a"), "token"),
        (_head(b"X\xe9: a"), "token"),
        (_head(b": a"), "token"),
        (_head(b"NoColon"), "colon"),
        (_head(line=b"GET  / HTTP/1.1"), "request line"),
        (_head(line=b"GET / HTTP/1.1 "), "request line"),
        (_head(line=b"GET /a b HTTP/1.1"), "request line"),
        (_head(line=b"GET /caf\xc3\xa9 HTTP/1.1"), "request line"),
        (_head(line=b"GET /\x00 HTTP/1.1"), "request line"),
        (_head(line=b"GET / HTTP/1"), "request line"),
        (_head(line=b"GE(T / HTTP/1.1"), "request line"),
        (_head(line=b"/ HTTP/1.1"), "request line"),
        (b"GET / HTTP/1.1\r\n\r", "CRLF CRLF"),
        (_head(b"Host: a", b"host: b"), "more than one Host"),
    ],
)
def test_refuses(raw: bytes, reason: str) -> None:
    with pytest.raises(HeadError, match=reason):
        parse_head(raw)


def test_bare_line_ends_are_found_before_the_head_ends() -> None:
    check_partial(b"GET / HTTP/1.1\r\nHost: h\r")  # a CR may be followed by LF yet
    for partial in (b"GET / HTTP/1.1\n", b"GET / HTTP/1.1\r\nHost: h\rX"):
        with pytest.raises(HeadError):
            check_partial(partial)


def test_autobahn_copy_has_no_extra_line_breaks() -> None:
    raw = _head(b"X-Name: \xd1\x85Origin: https://evil", b"Host: h")
    assert parse_head(raw).fields[0] == ("x-name", "\xd1\x85Origin: https://evil")
    safe = autobahn_safe(raw).decode("latin-1").splitlines()
    assert safe == ["GET / HTTP/1.1", "X-Name: \xd1?Origin: https://evil", "Host: h", ""]


_names = st.text(alphabet=_TCHARS, min_size=1, max_size=12).map(str.encode)
_values = st.binary(max_size=30).filter(
    lambda v: (
        not any((c < 0x20 and c != 9) or c == 0x7F for c in v)
        and "\x85" not in v.decode("utf-8", "surrogateescape")
        and not any(0xDC80 <= ord(c) <= 0xDC9F for c in v.decode("utf-8", "surrogateescape"))
        and not any(0x80 <= ord(c) <= 0x9F for c in v.decode("utf-8", "surrogateescape"))
    )
)


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_valid_fields_round_trip(fields: list[tuple[bytes, bytes]]) -> None:
    head = parse_head(_head(*(name + b":" + value for name, value in fields)))
    assert [(n.encode(), v.encode("latin-1")) for n, v in head.fields] == [
        (name.lower(), value.strip(b" \t")) for name, value in fields
    ]


@given(_names, _values, st.sampled_from(_CONTROLS), _values, st.booleans())
def test_any_control_character_is_refused(
    name: bytes, before: bytes, control: bytes, after: bytes, in_name: bool
) -> None:
    field = name + control + b":" + before if in_name else name + b":" + before + control + after
    if control == b"\r" or control == b"\n":
        field += b"X"  # not a CRLF by chance
    with pytest.raises(HeadError):
        parse_head(_head(field))


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_head_error(data: bytes) -> None:
    for raw in (data, data + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + data + b"\r\n\r\n"):
        try:
            head = parse_head(raw)
        except HeadError:
            continue
        for name, value in head.fields:
            assert name and "\r" not in value and "\n" not in value


# -- end to end -------------------------------------------------------------------

_SMUGGLED = [
    b"X-A: a\rX-User: admin",
    b"X-A: a\nX-User: admin",
    b"X-A: a\x0bX-User: admin",
    b"X-A: a\x0cX-User: admin",
    b"X-A: a\x1cX-User: admin",
    b"X-A: a\x1dX-User: admin",
    b"X-A: a\x1eX-User: admin",
    b"X-A: a\x85X-User: admin",
    b"X-A: a\xc2\x85X-User: admin",
    b"X-A: a\r\n X-User: admin",
    b"X-A: a\r\n\tX-User: admin",
    b"X-A: a\x00X-User: admin",
    b"X-User : admin",
    b"X(User): admin",
    b"X-User\x00: admin",
]


@pytest.fixture(scope="module")
def gate_and_backend(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    port = free_port()
    log = tmp_path_factory.mktemp("gate") / "wsgate.log"
    with (
        RecordingBackend(port) as recorder,
        Wsgate("--backend", f"ws://127.0.0.1:{port}", log_path=log) as gate,
    ):
        yield gate, recorder


@pytest.mark.parametrize("field", _SMUGGLED)
def test_smuggling_variants_get_400_and_reach_no_backend(gate_and_backend, field: bytes) -> None:  # type: ignore[no-untyped-def]
    gate, recorder = gate_and_backend
    before = len(recorder.heads)
    answer = exchange(gate.port, b"GET / HTTP/1.1\r\n" + field + b"\r\n" + _UPGRADE + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert body.count(b"\n") == 1  # a one-line reason
    assert len(recorder.heads) == before
    assert "Traceback" not in gate.log()


@pytest.mark.parametrize("control", [*_CONTROLS, b"\x85"], ids=lambda c: f"{c[0]:#04x}")
@pytest.mark.parametrize("where", ["name", "value"])
def test_every_control_character_gets_400(gate_and_backend, control: bytes, where: str) -> None:  # type: ignore[no-untyped-def]
    gate, recorder = gate_and_backend
    before = len(recorder.heads)
    field = b"X-A" + control + b"B: v" if where == "name" else b"X-A: a" + control + b"b"
    raw = b"GET / HTTP/1.1\r\n" + field + b"\r\n" + _UPGRADE + b"\r\n"
    answer = exchange(gate.port, raw, timeout=5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert len(recorder.heads) == before


def test_bare_lf_head_is_answered_at_once(gate_and_backend) -> None:  # type: ignore[no-untyped-def]
    gate, recorder = gate_and_backend
    before = len(recorder.heads)
    raw = b"GET / HTTP/1.1\n" + _UPGRADE.replace(b"\r\n", b"\n") + b"\n"
    answer = exchange(gate.port, raw, timeout=3)  # the request deadline is 30 s
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert len(recorder.heads) == before


def test_obs_text_reaches_the_backend_byte_for_byte(gate_and_backend) -> None:  # type: ignore[no-untyped-def]
    gate, recorder = gate_and_backend
    before = len(recorder.heads)
    raw = (
        b"GET /x HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\nX-Latin1: caf\xe9\r\n"
        b"X-Cyrillic: \xd1\x85\r\nUser-Agent: caf\xc3\xa9-agent\r\n" + _UPGRADE + b"\r\n"
    )
    answer = exchange(gate.port, raw)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    head = recorder.heads[before]
    assert b"\r\nX-Name: caf\xc3\xa9\r\n" in head.replace(b"x-name", b"X-Name")
    assert b": caf\xe9\r\n" in head
    assert b": \xd1\x85\r\n" in head
    assert b"User-Agent: caf\xc3\xa9-agent\r\n" in head


_head_bytes = st.lists(
    st.one_of(
        st.sampled_from([*_CONTROLS, b"\x85", b"\xc2\x85", b" ", b"\t", b":", b"\xe9"]),
        st.binary(max_size=6),
        st.sampled_from([b"X-A: a", b"Host: h", b"\r\n", b"\r\n "]),
    ),
    max_size=10,
).map(b"".join)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name_or_value=_head_bytes, in_line=st.booleans())
@example(name_or_value=b"\r\nHost: h\r\n", in_line=False)  # the head ends before Upgrade
def test_fuzzed_heads_get_101_or_4xx_at_once(  # type: ignore[no-untyped-def]
    gate_and_backend, name_or_value: bytes, in_line: bool
) -> None:
    gate, _ = gate_and_backend
    line = b"GET /" + name_or_value + b" HTTP/1.1" if in_line else b"GET / HTTP/1.1"
    fields = b"" if in_line else b"X-Fuzz: " + name_or_value + b"\r\n"
    raw = line + b"\r\n" + fields + _UPGRADE + b"\r\n"
    end = raw.find(b"\r\n\r\n") + 4  # what wsgate takes as the head
    try:
        head: Head | None = parse_head(raw[:end])
    except HeadError:
        head = None
    answer = exchange(gate.port, raw, timeout=5)
    status = answer[9:12]
    if head is not None and "upgrade" not in head.headers():
        # The fuzzed bytes ended the head early, before the Upgrade field: a
        # plain GET, which a WebSocket route answers 426 Upgrade Required.
        assert status in (b"426", b"400", b"404"), (raw, answer)
    elif head is not None:
        assert status in (b"101", b"400", b"404"), answer  # 400: a bad path
    else:
        assert status == b"400", (raw, answer)
    assert "Traceback" not in gate.log()
