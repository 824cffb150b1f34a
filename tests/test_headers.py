"""Header filtering and forwarding: pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate._headers import ClientRequest, backend_headers, client_response_headers, origin_allowed


def _request(
    headers: dict[str, str],
    peer: str | None = "192.0.2.7",
    secure: bool = False,
    trusted: bool = False,
):
    return ClientRequest(headers=headers, peer_host=peer, secure=secure, trusted=trusted)


def test_end_to_end_headers_pass_hop_by_hop_do_not() -> None:
    out = backend_headers(
        _request(
            {
                "host": "chat.example:443",
                "cookie": "s=1",
                "authorization": "Basic eDp5",
                "x-custom": "1",
                "connection": "Upgrade, X-Hop",
                "x-hop": "secret",
                "upgrade": "websocket",
                "keep-alive": "5",
                "te": "trailers",
                "sec-websocket-key": "k",
                "sec-websocket-extensions": "permessage-deflate",
                "sec-websocket-version": "13",
                "sec-websocket-protocol": "a, b",
                "proxy-authorization": "Basic x",
            },
            secure=True,
        )
    )
    assert out == {
        "cookie": "s=1",
        "authorization": "Basic eDp5",
        "x-custom": "1",
        "x-forwarded-for": "192.0.2.7",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "chat.example:443",
        "forwarded": 'for=192.0.2.7;host="chat.example:443";proto=https',
    }


def test_forwarded_appends_to_earlier_trusted_proxies() -> None:
    out = backend_headers(
        _request(
            {"x-forwarded-for": "203.0.113.1", "forwarded": "for=203.0.113.1", "host": "h"},
            peer="2001:db8::1",
            trusted=True,
        )
    )
    assert out["x-forwarded-for"] == "203.0.113.1, 2001:db8::1"
    assert out["forwarded"] == 'for=203.0.113.1, for="[2001:db8::1]";host=h;proto=http'


def test_unix_socket_client_has_no_address() -> None:
    out = backend_headers(_request({"host": "h"}, peer=None))
    assert "x-forwarded-for" not in out
    assert out["forwarded"] == "for=unknown;host=h;proto=http"


def test_set_cookie_lines_kept_apart() -> None:
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Set-Cookie: a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT\r\nset-cookie: b=2\r\n"
        b"X-Other: no\r\n\r\n"
    )
    assert client_response_headers(raw) == {
        "Set-Cookie": ["a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT", "b=2"]
    }


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)


@given(st.dictionaries(names, st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126))))
def test_never_forwards_hop_by_hop_or_handshake_headers(headers: dict[str, str]) -> None:
    out = backend_headers(_request(headers))
    named = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    for name in out:
        assert not name.startswith("sec-websocket-")
        assert name not in {"connection", "upgrade", "keep-alive", "te", "host", "origin"}
        assert name not in named or name.startswith("x-forwarded-") or name == "forwarded"


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        (("*",), "https://anything.example", True),
        (("*",), None, True),
        (("https://app.example.com",), None, True),  # not a browser
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "HTTPS://APP.EXAMPLE.COM/", True),
        (("https://app.example.com",), "http://app.example.com", False),
        (("https://app.example.com",), "https://app.example.com.evil.org", False),
        (("https://app.example.com",), "https://app.example.com:8443", False),
        (("https://*.example.com",), "https://a.example.com", True),
        (("https://*.example.com",), "https://a.b.example.com", True),
        (("https://*.example.com",), "https://example.com", False),
        (("https://*.example.com",), "https://evilexample.com", False),
        (("https://*.example.com",), "https://a.example.com.evil.org", False),
        (("http://localhost:*",), "http://localhost:3000", True),
        (("http://localhost:*",), "http://localhost", True),
        (("http://localhost:*",), "http://localhost.evil:3000", False),
        (("null",), "null", True),
        (("https://app.example.com",), "null", False),
    ],
)
def test_origin_allowed(patterns: tuple[str, ...], origin: str | None, allowed: bool) -> None:
    assert origin_allowed(patterns, origin) is allowed


def test_forwarded_quotes_a_host_beyond_ascii_tokens() -> None:
    """RFC 7239 host values are tokens (ASCII tchar) or quoted strings: a
    latin-1 character that str.isalnum() accepts still needs the quotes."""
    out = backend_headers(ClientRequest({"host": "caf\xe9.example"}, "10.0.0.1", secure=False))
    assert out["forwarded"] == 'for=10.0.0.1;host="caf\xe9.example";proto=http'
    plain = backend_headers(ClientRequest({"host": "cafe.example"}, "::1", secure=False))
    assert plain["forwarded"] == 'for="[::1]";host=cafe.example;proto=http'
