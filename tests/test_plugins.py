"""Token sources and authenticators: the public interfaces, loading plugins
from the configuration, the target allow-list, and the gate's statuses.

No network here: the gate runs on a test clock with real JWTs (throw-away
keys), real bcrypt hashes and real files; end-to-end runs are in
test_auth_e2e.py.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import wsgate.interfaces
from wsgate import _targets
from wsgate._admission import Gate, Refused
from wsgate._config import ConfigError, Route, RouteSettings, parse_auth, parse_tokens
from wsgate._configfile import load_file
from wsgate.interfaces import Identity, Request, Target

_SYNC = SynchronousTestCase()


def _now() -> datetime.datetime:
    """Now, when a token is made: a module-level constant goes stale in a long run."""
    return datetime.datetime.now(datetime.UTC)


def test_the_public_interface_is_pinned() -> None:
    assert wsgate.interfaces.__all__ == [
        "IAuthenticator",
        "ITokenSource",
        "Identity",
        "Refusal",
        "Request",
        "Target",
    ]
    assert sorted(wsgate.interfaces.IAuthenticator.names()) == ["authenticate"]
    assert sorted(wsgate.interfaces.ITokenSource.names()) == ["lookup"]


# -- the target allow-list -----------------------------------------------------


def test_allow_list_examples() -> None:
    patterns = _targets.parse_patterns(
        ["10.0.0.0/8:5900-5999", "vnc-*.internal:5901", "[::1]:5900", "unix:/run/vnc/*"]
    )
    yes = [
        Target("10.1.2.3", 5900),
        Target("10.255.0.1", 5999),
        Target("vnc-7.internal", 5901),
        Target("VNC-a.internal.", 5901),
        Target("::1", 5900),
        Target(url="ws://10.0.0.1:5950/x"),
        Target(unix="/run/vnc/desk1"),
    ]
    no = [
        Target("10.1.2.3", 6000),
        Target("11.0.0.1", 5900),
        Target("vnc-7.internal", 5902),
        Target("vnc-7.evil.internal", 5901),
        Target("vnc-7.internal.evil.com", 5901),
        Target("::2", 5900),
        Target(url="ws://10.0.0.1/x"),  # port 80
        Target(unix="/run/other/desk1"),
        Target("10.1.2.3.nip.io", 5900),  # a name is never matched as a network
    ]
    assert [t for t in yes if not _targets.allowed(patterns, t)] == []
    assert [t for t in no if _targets.allowed(patterns, t)] == []
    assert _targets.allowed(None, Target("anything", 1))


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("10.0.0.0/8", "no port"),
        ("10.0.0.0/33:1", "not an IP address or network"),
        ("host:0", "ports must be 1 to 65535"),
        ("host:6000-5900", "low to high"),
        ("host:vnc", "is not a port"),
        ("ho st:1", "not a host name pattern"),
        ("unix:relative", "absolute path"),
    ],
)
def test_allow_list_mistakes_say_what_is_valid(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        _targets.parse_pattern(pattern)


@given(
    address=st.ip_addresses(v=4),
    prefix=st.integers(0, 32),
    port=st.integers(1, 65535),
    low=st.integers(1, 65535),
    span=st.integers(0, 200),
)
def test_network_patterns_match_exactly_their_addresses_and_ports(
    address: ipaddress.IPv4Address, prefix: int, port: int, low: int, span: int
) -> None:
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    high = min(65535, low + span)
    pattern = _targets.parse_pattern(f"{network}:{low}-{high}")
    for candidate in (address, network.network_address, network.broadcast_address):
        expected = candidate in network and low <= port <= high
        assert pattern.matches(Target(str(candidate), port)) == expected
    outside = int(network.broadcast_address) + 1
    if outside < 2**32:
        assert not pattern.matches(Target(str(ipaddress.IPv4Address(outside)), low))


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)


@given(
    labels=st.lists(_LABEL, min_size=1, max_size=4),
    star=st.integers(0, 3),
    host_labels=st.lists(_LABEL, min_size=1, max_size=4),
)
def test_name_patterns_star_stays_within_one_label(
    labels: list[str], star: int, host_labels: list[str]
) -> None:
    if star < len(labels):
        labels = [*labels[:star], "*" + labels[star][1:], *labels[star + 1 :]]
    pattern = _targets.parse_pattern(".".join(labels) + ":5901")
    host = ".".join(host_labels)
    # The oracle: a lone "*" is any host; else the same number of labels,
    # each equal or matching its glob.
    oracle = labels == ["*"] or (
        len(labels) == len(host_labels)
        and all(
            re.fullmatch(re.escape(p).replace(r"\*", "[^.]*"), h)
            for p, h in zip(labels, host_labels, strict=True)
        )
    )
    assert pattern.matches(Target(host, 5901)) == oracle
    assert not pattern.matches(Target(host, 5902))


# -- loading plugins from the file -----------------------------------------------


def _config(tmp_path: Path, route: str) -> Path:
    path = tmp_path / "wsgate.toml"
    path.write_text(f'[[listener]]\nendpoint = "tcp:0"\n\n[[route]]\nprefix = "/vnc"\n{route}\n')
    return path


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            'tokens = { source = "nosuch.module:Thing" }',
            "[[route]] #1 (/vnc): tokens: source: cannot import 'nosuch.module'",
        ),
        (
            'tokens = { source = "wsgate._config:Route" }',
            "[[route]] #1 (/vnc): tokens: wsgate._config:Route: ",
        ),
        (
            'tokens = { source = "collections:OrderedDict" }',
            "does not provide ITokenSource",
        ),
        ('tokens = { source = "jwt" }', "tokens: jwt: key_file: give key_file"),
        (
            'tokens = { source = "jwt", secret = "s", colour = "red" }',
            "tokens: jwt: colour: unknown key; valid keys here: key_file, secret",
        ),
        (
            'tokens = { source = "jwt", secret = "s", algorithms = ["none"] }',
            "tokens: jwt: algorithms: ['none'] not allowed",
        ),
        (
            'tokens = { source = "jwt", key_file = "missing.pem" }',
            "tokens: jwt: key_file: cannot read",
        ),
        ('tokens = { key_file = "x" }', "tokens: source: required"),
        (
            'backend = "ws://127.0.0.1:1"\nauth = [{ plugin = "basic" }]',
            "[[route]] #1 (/vnc): auth[0]: basic: htpasswd: required",
        ),
        (
            'backend = "ws://127.0.0.1:1"\nauth = [{ plugin = "nosuch" }]',
            "auth[0]: plugin: 'nosuch' is neither a built-in nor a module:Class",
        ),
        (
            'backend = "ws://127.0.0.1:1"\ntoken_targets = ["10.0.0.0/8"]',
            "[[route]] #1 (/vnc): token_targets: '10.0.0.0/8': no port",
        ),
        ('tokens = { source = "redis", url = "http://x" }', "tokens: redis: url:"),
        ('tokens = { source = "http", url = "http://x/" }', "tokens: http: url: expected"),
        ('tokens = { source = "unix-dir", path = "nowhere" }', "is not a directory"),
    ],
)
def test_plugin_mistakes_name_file_table_and_key(tmp_path: Path, route: str, message: str) -> None:
    path = _config(tmp_path, route)
    with pytest.raises(ConfigError) as refused:
        load_file(str(path))
    assert f"{path}: " in str(refused.value)
    assert message in str(refused.value)


def test_a_good_file_builds_its_plugins(tmp_path: Path) -> None:
    key = tmp_path / "pub.pem"
    key.write_bytes(_EC_PUBLIC)
    users = tmp_path / "users"
    users.write_bytes(b"alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n")
    path = _config(
        tmp_path,
        'tokens = { source = "jwt", key_file = "pub.pem", audience = "wsgate" }\n'
        'auth = [{ plugin = "basic", htpasswd = "users" }, { plugin = "origin", allow = ["*"] }]\n'
        'token_targets = ["127.0.0.1:5900-5999"]',
    )
    route = load_file(str(path)).routes[0]
    gate = Gate(route, Clock())
    assert gate.source_name == "jwt"
    assert [name for name, _ in gate.authenticators] == ["basic", "origin"]


# -- the gate: statuses on a test clock -------------------------------------------

_EC_KEY = ec.generate_private_key(ec.SECP256R1())
_EC_PUBLIC = _EC_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _request(query: str = "", **headers: str) -> Request:
    return Request("GET", "/vnc", query, headers, "127.0.0.1", "*/vnc")


def _token(claims: dict[str, Any], key: Any = _EC_KEY, algorithm: str = "ES256") -> str:
    base = {"exp": _now() + datetime.timedelta(minutes=5)}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


def _jwt_gate(tmp_path: Path, **options: Any) -> Gate:
    (tmp_path / "pub.pem").write_bytes(_EC_PUBLIC)
    spec = parse_tokens(
        {"source": "jwt", "key_file": "pub.pem", "audience": "wsgate", **options},
        "tokens",
        str(tmp_path),
    )
    patterns = _targets.parse_patterns(["127.0.0.1:5900-5999"])
    return Gate(
        Route("#1", "/vnc", tokens=spec, settings=RouteSettings(token_targets=patterns)), Clock()
    )


def _refused(d: defer.Deferred[Any]) -> tuple[int, str]:
    error = _SYNC.failureResultOf(d, Refused).value
    return error.status, error.reason


def _backend(gate: Gate, token: str) -> defer.Deferred[Any]:
    return defer.Deferred.fromCoroutine(gate.backend("/vnc", "/vnc", _request(f"token={token}")))


def test_jwt_source_statuses(tmp_path: Path) -> None:
    gate = _jwt_gate(tmp_path)
    good = {"host": "127.0.0.1", "port": 5901, "aud": "wsgate"}
    backend = _SYNC.successResultOf(_backend(gate, _token(good)))
    assert str(backend) == "tcp:host=127.0.0.1:port=5901"
    other_key = ec.generate_private_key(ec.SECP256R1())
    past = _now() - datetime.timedelta(minutes=1)
    future = _now() + datetime.timedelta(minutes=1)
    unsigned = jwt.encode(good, None, algorithm="none")
    cases = {
        _token(good, other_key): (403, "bad token signature"),
        _token({**good, "exp": past}): (403, "token expired"),
        _token({**good, "nbf": future}): (403, "token not yet valid"),
        _token({**good, "aud": "other"}): (403, "token for another audience"),
        unsigned: (403, "token algorithm not allowed"),
        _token(good, "s" * 32, "HS256"): (403, "token algorithm not allowed"),
        "not.a.jwt": (403, "malformed token"),
        _token({"aud": "wsgate", "host": "127.0.0.1"}): (403, "token names no host and port"),
        _token({**good, "port": 6000}): (403, "target not allowed"),
        _token({**good, "host": "10.0.0.1"}): (403, "target not allowed"),
        jwt.encode({**good}, _EC_KEY, algorithm="ES256"): (403, "token lacks a required claim"),
    }
    assert {t: _refused(_backend(gate, t)) for t in cases} == cases
    assert _refused(defer.Deferred.fromCoroutine(gate.backend("/vnc", "/vnc", _request()))) == (
        404,
        "unknown token",
    )


def test_jwt_leeway_allows_clock_skew(tmp_path: Path) -> None:
    gate = _jwt_gate(tmp_path, leeway=120)
    claims = {"host": "127.0.0.1", "port": 5901, "aud": "wsgate"}
    token = _token({**claims, "exp": _now() - datetime.timedelta(minutes=1)})
    assert _SYNC.successResultOf(_backend(gate, token))


class _Slow:
    """A plugin that never answers, or raises, as told."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        if self.fail:
            raise RuntimeError("database on fire")
        return defer.Deferred()


def test_a_slow_or_broken_plugin_is_503(tmp_path: Path) -> None:
    clock = Clock()
    gate = Gate(Route("#1", settings=RouteSettings(auth_timeout=2.0)), clock)
    gate.authenticators = [("slow", _Slow())]
    waiting = defer.Deferred.fromCoroutine(gate.admit(_request()))
    clock.advance(1.9)
    _SYNC.assertNoResult(waiting)
    clock.advance(0.2)
    assert _refused(waiting) == (503, "slow timed out")
    gate.authenticators = [("broken", _Slow(fail=True))]
    failed = defer.Deferred.fromCoroutine(gate.admit(_request()))
    error = _SYNC.failureResultOf(failed, Refused).value
    assert (error.status, error.reason) == (503, "broken unavailable")
    assert "database on fire" in error.detail  # for the log, not the client


def test_basic_auth_statuses_and_reread(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_bytes(b"alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)) + b"\n")
    route = Route(
        "#1",
        backends=(),
        settings=RouteSettings(
            auth=parse_auth([{"plugin": "basic", "htpasswd": "users"}], "auth", str(tmp_path))
        ),
    )
    gate = Gate(route, Clock())

    def admit(**headers: str) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(gate.admit(_request(**headers)))

    def basic(user_password: bytes) -> str:
        return "Basic " + base64.b64encode(user_password).decode()

    assert _SYNC.successResultOf(admit(authorization=basic(b"alice:secret"))).name == "alice"
    for headers in ({}, {"authorization": basic(b"alice:wrong")}, {"authorization": "Basic !!"}):
        error = _SYNC.failureResultOf(admit(**headers), Refused).value
        assert error.status == 401
        assert error.headers["WWW-Authenticate"].startswith('Basic realm="wsgate"')
    users.write_bytes(b"bob:" + bcrypt.hashpw(b"pw2", bcrypt.gensalt(4)) + b"\n")
    assert _SYNC.successResultOf(admit(authorization=basic(b"bob:pw2"))).name == "bob"
    assert _SYNC.failureResultOf(admit(authorization=basic(b"alice:secret")), Refused)


def test_jwt_bearer_reads_header_cookie_or_query(tmp_path: Path) -> None:
    secret = "k" * 32
    spec = parse_auth(
        [{"plugin": "jwt-bearer", "secret": secret, "cookie": "sid", "query": "access_token"}],
        "auth",
    )
    gate = Gate(Route("#1", settings=RouteSettings(auth=spec)), Clock())
    token = _token({"sub": "carol"}, secret, "HS256")

    def admit(request: Request) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(gate.admit(request))

    for request in (
        _request(authorization=f"Bearer {token}"),
        _request(cookie=f"a=b; sid={token}"),
        _request(f"access_token={token}"),
    ):
        assert _SYNC.successResultOf(admit(request)).name == "carol"
    error = _SYNC.failureResultOf(admit(_request()), Refused).value
    assert (error.status, error.headers) == (401, {"WWW-Authenticate": "Bearer"})
    expired = _token({"sub": "carol", "exp": _now() - datetime.timedelta(hours=1)}, secret, "HS256")
    error = _SYNC.failureResultOf(admit(_request(f"access_token={expired}")), Refused).value
    assert (error.status, error.reason) == (401, "token expired")
    assert error.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def test_the_readme_shows_exactly_the_example_plugin() -> None:
    """The README's example is etc/example_plugin.py, which test_auth_e2e runs."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.rst").read_text()
    block = readme.split(".. begin example plugin", 1)[1].split(".. end example plugin", 1)[0]
    code = block.split("::\n", 1)[1]
    lines = [line.removeprefix("    ") for line in code.strip("\n").splitlines()]
    example = (root / "etc" / "example_plugin.py").read_text()
    assert "\n".join(lines) + "\n" == example
    assert len(example.splitlines()) < 40


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"$14\r\n127.0.0.1:5901\r\n", [b"127.0.0.1:5901"]),
        (b"$-1\r\n", [None]),
        (b"$3\r\nab", None),  # not all there yet
        (b"$abc\r\n", (502, "token source spoke no Redis protocol")),
        (b"HTTP/1.1 400 Bad Request\r\n", (502, "token source spoke no Redis protocol")),
        (b"$99999999\r\n" + b"x" * 70_000, (502, "token source reply too large")),
    ],
)
def test_the_redis_reply_parser(reply: bytes, expected: Any) -> None:
    from twisted.internet.testing import StringTransport

    from wsgate._tokenredis import _Resp

    resp = _Resp()
    resp.makeConnection(StringTransport())
    done = resp.run([[b"GET", b"k"]])
    resp.dataReceived(reply)
    if expected is None:
        _SYNC.assertNoResult(done)
    elif isinstance(expected, tuple):
        error = _SYNC.failureResultOf(done, wsgate.interfaces.Refusal).value
        assert (error.status, error.reason) == expected
    else:
        assert _SYNC.successResultOf(done) == expected


def test_command_line_plugin_options_read_like_toml(tmp_path: Path) -> None:
    spec = parse_tokens("jwt:secret=k,leeway=30,require_exp=false,algorithms=HS256", "--x")
    assert spec.name == "jwt"
    assert spec.options == {
        "secret": "k",
        "leeway": 30,
        "require_exp": False,
        "algorithms": "HS256",
    }
    (auth,) = parse_auth("client-cert:allow=alice,allow=bob", "--auth")
    assert auth.options == {"allow": ["alice", "bob"]}
    (origin,) = parse_auth("origin:allow=https://a.example", "--auth")
    gate = Gate(Route("#1", settings=RouteSettings(auth=(origin,))), Clock())
    refused = defer.Deferred.fromCoroutine(gate.admit(_request(origin="https://b.example")))
    assert _refused(refused) == (403, "origin not allowed")
    admitted = defer.Deferred.fromCoroutine(gate.admit(_request(origin="https://a.example")))
    assert _SYNC.successResultOf(admitted) == Identity("", {"origin": "https://a.example"})
    with pytest.raises(ConfigError, match=r"--auth\[0\]: .*module:Class"):
        parse_auth("nosuch", "--auth")


def test_an_identity_cannot_forge_log_lines() -> None:
    class Sneaky:
        def authenticate(self, request: Request) -> defer.Deferred[Identity]:
            return defer.succeed(Identity("eve\n2026 [wsgate#info] open root"))

    gate = Gate(Route("#1"), Clock())
    gate.authenticators = [("sneaky", Sneaky())]
    identity = _SYNC.successResultOf(defer.Deferred.fromCoroutine(gate.admit(_request())))
    assert identity.name == "eve?2026 [wsgate#info] open root"
