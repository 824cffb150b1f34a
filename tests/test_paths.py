"""Paths are normalised before routing: the pure function, then end to end
(a bypass of a deeper route's Origin check, a climb out of a backend's base)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rawws import RecordingBackend, exchange, upgrade_request

from wsgate._routing import Router, normalize_path
from wsgate.testing import Wsgate, free_port


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/app/admin", "/app/admin"),
        ("/app/x/../admin", "/app/admin"),
        ("/app/./admin", "/app/admin"),
        ("/app//admin", "/app/admin"),
        ("/app/%61dmin", "/app/admin"),
        ("/app/%2e/admin", "/app/admin"),
        ("/app/%2E%2E/app/admin", "/app/admin"),
        ("/pub/../secret", "/secret"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/a//..", "/"),
        ("/a/b/../../", "/"),
        ("//", "/"),
        ("/.", "/"),
        ("/a/...", "/a/..."),  # not a dot segment
        ("/a/.b/..c", "/a/.b/..c"),
        ("/%7Euser/%41%5a%30-%5F", "/~user/AZ0-_"),
        ("/a%20b/%3F%23%25", "/a%20b/%3F%23%25"),  # reserved and others stay escaped
        ("/a;b=c/d", "/a;b=c/d"),
    ],
)
def test_normalises(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/..", "climbs"),
        ("/../x", "climbs"),
        ("/a/../..", "climbs"),
        ("/%2e%2e/x", "climbs"),
        ("/%2E./x", "climbs"),
        ("/a/%2e%2e/%2e%2e/b", "climbs"),
        ("/a%2Fb", "encoded '/'"),
        ("/a%2fb", "encoded '/'"),
        ("/a%00", "NUL"),
        ("/a\x00", "NUL"),
        ("/a%zz", "malformed"),
        ("/a%4", "malformed"),
        ("/a%", "malformed"),
        ("", "start with '/'"),
        ("a/b", "start with '/'"),
        ("*", "start with '/'"),
    ],
)
def test_refuses(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_path(path)


_segments = st.lists(
    st.one_of(
        st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2E", "a", "%61", "%2F", "%00", "%"]),
        st.text(alphabet="ab.%2eE~-_", max_size=5),
    ),
    max_size=8,
)


@given(_segments)
def test_normal_paths_are_final_and_stay_under_root(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    try:
        normal = normalize_path(path)
    except ValueError:
        return
    assert normal.startswith("/")
    assert normalize_path(normal) == normal
    assert "//" not in normal
    assert "/./" not in normal + "/" and "/../" not in normal + "/"
    assert not normal.endswith(("/.", "/.."))
    # Never above the root: each ".." of the input had a segment to remove.
    depth = 0
    for segment in path.replace("%2e", ".").replace("%2E", ".").split("/")[1:]:
        depth += -1 if segment == ".." else 0 if segment in ("", ".") else 1
        assert depth >= 0


class _Route:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hosts: tuple[str, ...] = ()


@pytest.mark.parametrize("path", ["/app/x/../admin", "/app/./admin", "/app//admin", "/app/%61dmin"])
def test_bypass_variants_route_to_the_deeper_route(path: str) -> None:
    app, admin = _Route("/app"), _Route("/app/admin")
    router = Router([app, admin])
    assert router.match(None, path) is app  # the raw path picks the wrong route
    assert router.match(None, normalize_path(path)) is admin


# -- end to end ---------------------------------------------------------------------


def _get(port: int, target: bytes, origin: bytes = b"") -> bytes:
    origin_line = (b"Origin: " + origin,) if origin else ()
    return exchange(port, upgrade_request(target, b"x", *origin_line))


def _path_seen(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


def test_bypasses_get_403_and_climbs_400(wsgate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, c, target, listen = free_port(), free_port(), free_port(), free_port(), free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"tok: 127.0.0.1:{target}\n")
    config = tmp_path / "wsgate.toml"
    config.write_text(
        f"""
[[listener]]
endpoint = "tcp:{listen}:interface=127.0.0.1"

[[route]]
prefix = "/app"
backend = "ws://127.0.0.1:{a}"

[[route]]
prefix = "/app/admin"
backend = "ws://127.0.0.1:{b}"
origins = ["https://admin.example"]

[[route]]
prefix = "/pub"
backend = "ws://127.0.0.1:{c}/public"
strip_prefix = true

[[route]]
prefix = "/vnc"
token_file = "{tokens}"
"""
    )
    gate: Wsgate = wsgate("--config", str(config), wait_port=listen)
    with (
        RecordingBackend(a) as app,
        RecordingBackend(b) as admin,
        RecordingBackend(c) as pub,
        RecordingBackend(target),
    ):
        evil = b"https://evil.example"
        for path in (
            b"/app/admin",
            b"/app/x/../admin",
            b"/app/./admin",
            b"/app//admin",
            b"/app/%61dmin",
            b"/app/%2e/admin",
            b"/app/admin/.",
            b"/app/admin/x/..",
        ):
            assert _get(listen, path, evil).startswith(b"HTTP/1.1 403 "), path
        assert app.heads == [] and admin.heads == []
        # The right Origin passes, and the backend gets the normal path, query as it was.
        answer = _get(listen, b"/app//x/../admin/%7Eme?a=%2e%2e/&b=//", b"https://admin.example")
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        assert [_path_seen(h) for h in admin.heads] == [b"/app/admin/~me?a=%2e%2e/&b=//"]
        assert app.heads == []
        for path in (b"/..", b"/%2e%2e/x", b"/app/../..", b"/a%2Fb", b"/app%2fadmin", b"/a%00"):
            answer = _get(listen, path, evil)
            assert answer.startswith(b"HTTP/1.1 400 "), (path, answer)
        # strip_prefix cannot climb out of the backend's base.
        assert _get(listen, b"/pub/../secret").startswith(b"HTTP/1.1 404 ")
        assert _get(listen, b"/pub/a/../b").startswith(b"HTTP/1.1 101 ")
        assert [_path_seen(h) for h in pub.heads] == [b"/public/b"]
        assert app.heads == [] and len(admin.heads) == 1
        # A token in the last segment still picks the stream target.
        for path in (b"/vnc/tok", b"/vnc//tok", b"/vnc/x/../tok", b"/vnc/%74ok"):
            assert _get(listen, path).startswith(b"HTTP/1.1 101 "), path
        assert _get(listen, b"/vnc/nope").startswith(b"HTTP/1.1 404 ")
    assert "Traceback" not in gate.log()
