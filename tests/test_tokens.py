"""websockify token files: the line format, and following edits of the file(s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from wsgate import _tokens
from wsgate._config import ConfigError
from wsgate._tokens import Target, TokenFile


def parse_tokens(text: str, source: str) -> tuple[dict[str, Target], list[str]]:
    """The tokens in one file's text and its problems, as a TokenFile reads each file."""
    found: dict[str, tuple[Target, str]] = {}
    problems: list[str] = []
    _tokens._parse_into(found, problems, text, source)
    return {token: target for token, (target, _) in found.items()}, problems


def one(line: str) -> Target | str:
    """The target a one-line file gives, or its one problem."""
    tokens, problems = parse_tokens(line, "f")
    assert len(tokens) + len(problems) == 1, (tokens, problems)
    return problems[0] if problems else next(iter(tokens.values()))


# -- parse_tokens: good lines --------------------------------------------------


@pytest.mark.parametrize(
    ("line", "token", "target"),
    [
        ("vnc1: 127.0.0.1:5901", "vnc1", Target("127.0.0.1", 5901)),
        ("vnc1:\t127.0.0.1:5901", "vnc1", Target("127.0.0.1", 5901)),
        ("  vnc1 :   127.0.0.1:5901  ", "vnc1", Target("127.0.0.1", 5901)),
        ("vnc1: 127.0.0.1:5901\r", "vnc1", Target("127.0.0.1", 5901)),
        ("U6F7msdQ: localhost:5900", "U6F7msdQ", Target("localhost", 5900)),
        ("t: vnc-host.example.com:1", "t", Target("vnc-host.example.com", 1)),
        ("t: vnc.example.com.:65535", "t", Target("vnc.example.com.", 65535)),
        ("t: remote_host:5900", "t", Target("remote_host", 5900)),
        ("t: xn--bcher-kva.de:5900", "t", Target("xn--bcher-kva.de", 5900)),
        ("t: [::1]:5900", "t", Target("::1", 5900)),
        ("t: [2001:db8::7]:5901", "t", Target("2001:db8::7", 5901)),
        ("t: [fe80::1%eth0]:5901", "t", Target("fe80::1%eth0", 5901)),
        # websockify splits the target at its last colon: unbracketed IPv6 works there.
        ("t: ::1:5900", "t", Target("::1", 5900)),
        ("t: 2001:db8::7:5901", "t", Target("2001:db8::7", 5901)),
        # The token ends at the first colon followed by whitespace.
        ("a:b: host:1", "a:b", Target("host", 1)),
        ("my token: host:1", "my token", Target("host", 1)),
        ("t: host:05900", "t", Target("host", 5900)),
    ],
)
def test_good_line(line: str, token: str, target: Target) -> None:
    assert parse_tokens(line, "f") == ({token: target}, [])


def test_comments_blank_lines_and_line_endings() -> None:
    text = (
        "# VNC servers\r\n"
        "\r\n"
        "   # indented comment\n"
        "vnc1: 10.0.0.1:5901\r\n"
        "   \t  \n"
        "vnc2: 10.0.0.2:5902\r"
        "bad line\n"
        "vnc3: 10.0.0.3:5903"
    )
    tokens, problems = parse_tokens(text, "tokens.cfg")
    assert tokens == {
        "vnc1": Target("10.0.0.1", 5901),
        "vnc2": Target("10.0.0.2", 5902),
        "vnc3": Target("10.0.0.3", 5903),
    }
    assert len(problems) == 1
    assert problems[0].startswith("tokens.cfg:7: expected 'token: host:port'")


def test_form_feed_does_not_split_lines() -> None:
    # Line numbers follow text-mode readlines(), like an editor; \f is whitespace.
    tokens, problems = parse_tokens("\f\nvnc1: h:1\x0c\nbad", "f")
    assert tokens == {"vnc1": Target("h", 1)}
    assert [p.split(" ")[0] for p in problems] == ["f:3:"]


def test_duplicate_token_later_line_wins() -> None:
    text = "vnc1: old:5901\nvnc2: b:5902\nvnc1: new:5901\n"
    tokens, problems = parse_tokens(text, "f")
    assert tokens == {"vnc1": Target("new", 5901), "vnc2": Target("b", 5902)}
    assert problems == ["f:3: token repeats the one at f:1; this line wins"]


def test_empty_text_has_no_tokens_and_no_problems() -> None:
    assert parse_tokens("", "f") == ({}, [])
    assert parse_tokens("\n\n# only comments\n", "f") == ({}, [])


# -- parse_tokens: bad lines ---------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("vnc1:127.0.0.1:5901", "expected 'token: host:port' with a space after the token's"),
        ("garbage", "expected 'token: host:port'"),
        ("vnc1: host: 5900", "more than one ': ' on the line"),
        (": host:5900", "the token before ':' is empty"),
        ("vnc1: host", "target 'host': no port; write host:port"),
        ("vnc1: host:", "port '' is not a number from 1 to 65535"),
        ("vnc1: host:0", "port '0' is not a number from 1 to 65535"),
        ("vnc1: host:65536", "port '65536' is not a number from 1 to 65535"),
        ("vnc1: host:590o", "port '590o' is not a number"),
        ("vnc1: host:+5900", "port '+5900' is not a number"),
        ("vnc1: host:5_900", "port '5_900' is not a number"),
        ("vnc1: host:" + "9" * 5000, "is not a number from 1 to 65535"),
        ("vnc1: host:vnc", "port 'vnc' is not a number"),
        ("vnc1: :5900", "no host before the port"),
        ("vnc1: [::1]5900", "expected [IPv6 address]:port"),
        ("vnc1: [::1]", "expected [IPv6 address]:port"),
        ("vnc1: [vnc.local]:5900", "'vnc.local' in brackets is not an IPv6 address"),
        ("vnc1: [fe80::1%a b]:5900", "in brackets is not an IPv6 address"),
        ("vnc1: 1::2::3:5900", "'1::2::3' is not an IPv6 address"),
        ("vnc1: ::1", "':' is not an IPv6 address"),
        ("vnc1: 10.0.0.300:5900", "'10.0.0.300' is not an IPv4 address"),
        ("vnc1: bücher.de:5900", "'bücher.de' is not a hostname"),
        ("vnc1: -host:5900", "'-host' is not a hostname"),
        ("vnc1: a..b:5900", "'a..b' is not a hostname"),
        ("vnc1: ho\tst:5900", "is not a hostname"),
        ("vnc1: " + "a" * 64 + ":1", "is not a hostname"),
        ("vnc1: host:5900 # the lab", "comments go on a line of their own"),
        ("vnc1: unix_socket:/run/vnc.sock", "unix_socket targets are not supported"),
    ],
)
def test_bad_line(line: str, problem: str) -> None:
    found = one(line)
    assert isinstance(found, str)
    assert found.startswith("f:1: ")
    assert problem in found


def test_problems_show_the_target_but_not_the_token() -> None:
    # A token is as good as a password to whoever can reach the gateway.
    for line in ("s3cret: host:99999", "s3cret:host:1", "s3cret: a: b", "s3cret: x:1\ns3cret: y:2"):
        _, problems = parse_tokens(line, "f")
        assert problems
        assert not any("s3cret" in p for p in problems), problems


def test_long_target_is_shortened_in_the_problem() -> None:
    found = one("t: " + "x" * 500)
    assert isinstance(found, str)
    assert len(found) < 300


# -- parse_tokens: properties --------------------------------------------------

_WHITESPACE = st.sampled_from([" ", "\t", "  ", " \t", "\u00a0", "\u3000"])
_TOKEN = (
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), min_size=1)
    .map(str.strip)
    .filter(lambda t: t != "" and not t.startswith("#") and len(_tokens._SEPARATOR.split(t)) == 1)
)
_LABELS = st.from_regex(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,10}[A-Za-z0-9_])?", fullmatch=True)
_HOSTNAME = (
    st.lists(_LABELS, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not all(c in "0123456789." for c in h))
)
_IPV4 = st.ip_addresses(v=4).map(str)
_IPV6 = st.ip_addresses(v=6).map(str)
_PORTS = st.integers(1, 65535)


@st.composite
def _good_lines(draw: Any) -> tuple[str, str, Target]:
    token = draw(_TOKEN)
    host = draw(st.one_of(_HOSTNAME, _IPV4, _IPV6))
    port = draw(_PORTS)
    # Either websockify's unbracketed IPv6 form or ours.
    unbracketed = ":" in host and draw(st.booleans())
    spec = f"{host}:{port}" if unbracketed else str(Target(host, port))
    sep = ":" + draw(_WHITESPACE)
    line = draw(st.sampled_from(["", " "])) + token + sep + spec + draw(_WHITESPACE)
    return line, token, Target(host, port)


@given(st.text())
@example("\ud800: host:1")
@example("t: [" + "\n")
@example("t:\u2028h:1")
def test_parse_never_raises(text: str) -> None:
    tokens, problems = parse_tokens(text, "f")
    assert all(isinstance(t, Target) for t in tokens.values())
    assert all(p.startswith("f:") for p in problems)


@given(st.text(st.characters(exclude_characters="\r\n")))
def test_each_line_is_skipped_or_a_token_or_a_problem(line: str) -> None:
    tokens, problems = parse_tokens(line, "f")
    skipped = line.strip() == "" or line.strip().startswith("#")
    assert len(tokens) + len(problems) == (0 if skipped else 1)


@given(_good_lines())
def test_valid_lines_round_trip(case: tuple[str, str, Target]) -> None:
    line, token, target = case
    assert parse_tokens(line, "f") == ({token: target}, [])
    # str() writes a target the parser reads back.
    assert parse_tokens(f"t: {target}", "f") == ({"t": target}, [])


_NOT_PORTS = st.one_of(
    st.integers(65536, 10**6).map(str),
    st.just("0"),
    # No line break or colon: those could make a different good line.
    st.text(st.characters(exclude_characters="\r\n:")).filter(
        lambda p: not (p.strip().isascii() and p.strip().isdigit() and 0 < int(p) < 65536)
    ),
)


@given(_good_lines(), _NOT_PORTS)
@example(("t: h:1", "t", Target("h", 1)), "5900x")
@example(("t: [::1]:1", "t", Target("::1", 1)), "")
def test_bad_port_is_a_problem_not_a_token(case: tuple[str, str, Target], port: str) -> None:
    line, _, _ = case
    bad = line.rstrip().rsplit(":", 1)[0] + ":" + port
    tokens, problems = parse_tokens(bad, "f")
    assert len(problems) == 1
    assert tokens == {}


# -- Target --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "text", "endpoint"),
    [
        (Target("127.0.0.1", 5901), "127.0.0.1:5901", "tcp:host=127.0.0.1:port=5901"),
        (Target("vnc.lan", 5900), "vnc.lan:5900", "tcp:host=vnc.lan:port=5900"),
        (Target("::1", 5901), "[::1]:5901", r"tcp:host=\:\:1:port=5901"),
        (Target("fe80::1%eth0", 1), "[fe80::1%eth0]:1", r"tcp:host=fe80\:\:1%eth0:port=1"),
    ],
)
def test_target_text_and_endpoint(target: Target, text: str, endpoint: str) -> None:
    assert str(target) == text
    assert target.endpoint() == endpoint
    assert connects_to(endpoint) == (target.host, target.port)


@given(st.one_of(_HOSTNAME, _IPV4, _IPV6), _PORTS)
def test_endpoint_parses_back(host: str, port: int) -> None:
    assert connects_to(Target(host, port).endpoint()) == (host, port)


def connects_to(endpoint: str) -> tuple[str, int]:
    """Where a client endpoint string connects, on a MemoryReactor."""
    reactor = MemoryReactor()
    clientFromString(reactor, endpoint).connect(Factory.forProtocol(Protocol))
    [(host, port, *_)] = reactor.tcpClients
    return host, port


# -- TokenFile: reading --------------------------------------------------------


def rewrite(path: Path, text: str) -> None:
    """Change a file so its stat surely differs, without sleeping."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_one_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: 127.0.0.1:5901\nvnc2: [::1]:5902\nnonsense\n")
    tokens = TokenFile(str(path))
    assert tokens.lookup("vnc1") == Target("127.0.0.1", 5901)
    assert tokens.lookup("vnc2") == Target("::1", 5902)
    assert tokens.lookup("vnc3") is None
    assert tokens.lookup("") is None
    assert tokens.lookup("VNC1") is None
    assert tokens.tokens_count() == 2
    assert len(tokens.problems) == 1
    assert tokens.problems[0].startswith(f"{path}:3: ")
    assert tokens.generation == 0


def test_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "a.cfg").write_text("vnc1: host-a:5901\nshared: host-a:1\n")
    (tmp_path / "b").write_text("vnc2: host-b:5902\r\nshared: host-b:1\r\n")
    (tmp_path / ".hidden").write_text("hidden: h:1\n")
    (tmp_path / "#b#").write_text("autosave: h:1\n")
    (tmp_path / "b~").write_text("backup: h:1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_text("nested: h:1\n")
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "c")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    tokens = TokenFile(str(tmp_path))
    assert tokens.tokens_count() == 4
    assert tokens.lookup("vnc1") == Target("host-a", 5901)
    assert tokens.lookup("vnc2") == Target("host-b", 5902)
    # Files are read in name order, so the later file wins a repeated token.
    assert tokens.lookup("shared") == Target("host-b", 1)
    assert tokens.problems == [
        f"{tmp_path}/b:2: token repeats the one at {tmp_path}/a.cfg:2; this line wins"
    ]
    # Symlinks to files are read, as websockify does.
    assert tokens.lookup("nested") == Target("h", 1)
    for skipped in ("hidden", "autosave", "backup"):
        assert tokens.lookup(skipped) is None


def test_not_utf8_file_is_a_problem_others_still_load(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(b"\xef\xbb\xbfvnc1: h:1\n")  # with a BOM
    (tmp_path / "binary").write_bytes(b"vnc2: h:2\n\xff\xfe\n")
    tokens = TokenFile(str(tmp_path))
    assert tokens.lookup("vnc1") == Target("h", 1)
    assert tokens.lookup("vnc2") is None
    assert tokens.problems == [
        f"{tmp_path}/binary: not UTF-8 text (byte 10); its lines are skipped"
    ]


def test_empty_says_every_client_is_refused(tmp_path: Path) -> None:
    tokens = TokenFile(str(tmp_path))
    assert tokens.tokens_count() == 0
    assert tokens.problems == [
        f"{tmp_path}: no tokens; every client will be refused (e.g. 'vnc1: 127.0.0.1:5901')"
    ]


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.cfg"
    with pytest.raises(ConfigError) as e:
        TokenFile(str(path))
    assert str(e.value).startswith(f"{path}: cannot read the token file: No such file or directory")
    assert "'token: host:port'" in str(e.value)


def test_fifo_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file or a directory"):
        TokenFile(str(path))


def test_unreadable_at_start_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root here, where chmod 000 does not stop a read.
    (tmp_path / "a").write_text("vnc1: h:1\n")
    monkeypatch.setattr(_tokens, "open", denied, raising=False)
    with pytest.raises(ConfigError) as e:
        TokenFile(str(tmp_path))
    assert str(e.value).startswith(f"{tmp_path}: cannot read the token file: {tmp_path}/a: ")
    assert "Permission denied" in str(e.value)


def denied(path: str, *args: object) -> Any:
    raise PermissionError(13, "Permission denied", path)


# -- TokenFile: following changes ---------------------------------------------


def test_rereads_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: old:5901\n")
    tokens = TokenFile(str(path))
    assert tokens.lookup("vnc1") == Target("old", 5901)
    assert tokens.lookup("vnc1") == Target("old", 5901)
    assert tokens.generation == 0  # nothing changed, nothing re-read
    rewrite(path, "vnc1: new-host:5911\nvnc2: other:5902\nbad\n")
    assert tokens.lookup("vnc1") == Target("new-host", 5911)
    assert tokens.lookup("vnc2") == Target("other", 5902)
    assert tokens.tokens_count() == 2
    assert tokens.generation == 1
    assert tokens.problems == [
        f"{path}:3: expected 'token: host:port' with a space after the token's colon "
        "(e.g. 'vnc1: 127.0.0.1:5901'); comment lines start with '#'"
    ]


def test_rereads_a_file_replaced_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: old:5901\n")
    tokens = TokenFile(str(path))
    new = tmp_path / ".tokens.cfg.tmp"
    new.write_text("vnc1: new:5901\n")  # same size, maybe the same mtime: a new inode
    new.replace(path)
    assert tokens.lookup("vnc1") == Target("new", 5901)


def test_directory_follows_added_and_removed_files(tmp_path: Path) -> None:
    (tmp_path / "vnc1").write_text("vnc1: h:1\n")
    tokens = TokenFile(str(tmp_path))
    (tmp_path / "vnc2").write_text("vnc2: h:2\n")
    assert tokens.lookup("vnc2") == Target("h", 2)
    (tmp_path / "vnc1").unlink()
    assert tokens.lookup("vnc1") is None
    assert tokens.tokens_count() == 1
    assert tokens.problems == []


def test_vanished_file_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: h:5901\n")
    tokens = TokenFile(str(path))
    path.unlink()
    assert tokens.lookup("vnc1") == Target("h", 5901)
    assert tokens.problems == [
        f"{path}: cannot re-read the token file: No such file or directory; "
        "keeping the 1 tokens from the last good read"
    ]
    assert tokens.generation == 1
    assert tokens.lookup("vnc1") == Target("h", 5901)
    assert tokens.generation == 1  # still missing: reported once
    path.write_text("vnc2: h:5902\n")
    assert tokens.lookup("vnc1") is None
    assert tokens.lookup("vnc2") == Target("h", 5902)
    assert tokens.problems == []
    assert tokens.generation == 2


def test_path_turned_fifo_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: h:5901\n")
    tokens = TokenFile(str(path))
    path.unlink()
    os.mkfifo(path)
    assert tokens.lookup("vnc1") == Target("h", 5901)
    assert "not a regular file or a directory" in tokens.problems[0]


def test_unreadable_on_reread_keeps_the_last_good_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: h:5901\n")
    tokens = TokenFile(str(path))
    rewrite(path, "vnc1: other:5901\n")
    monkeypatch.setattr(_tokens, "open", denied, raising=False)
    assert tokens.lookup("vnc1") == Target("h", 5901)
    assert tokens.problems == [
        f"{path}: cannot re-read the token file: Permission denied; "
        "keeping the 1 tokens from the last good read"
    ]
    assert tokens.lookup("vnc1") == Target("h", 5901)
    assert tokens.generation == 1  # not retried until the file changes again
    monkeypatch.undo()
    os.chmod(path, 0o644)  # what fixes permissions in real life: changes the ctime
    rewrite(path, "vnc1: other:5901\n")
    assert tokens.lookup("vnc1") == Target("other", 5901)
    assert tokens.problems == []


def test_clock_limits_stats_to_one_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens.cfg"
    path.write_text("vnc1: old:5901\n")
    clock = Clock()
    tokens = TokenFile(str(path), clock, interval=1.0)
    rewrite(path, "vnc1: new:5901\n")
    clock.advance(0.5)
    assert tokens.lookup("vnc1") == Target("old", 5901)
    clock.advance(0.5)
    assert tokens.lookup("vnc1") == Target("new", 5901)
    rewrite(path, "vnc1: newer:5901\n")
    clock.advance(0.999)
    assert tokens.lookup("vnc1") == Target("new", 5901)
    clock.advance(0.001)
    assert tokens.lookup("vnc1") == Target("newer", 5901)
