"""Route choice by host and path: pure, checked against a brute-force model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wsgate._routing import (
    Router,
    check_host_pattern,
    check_prefix,
    duplicate_routes,
    normalize_host,
    normalize_host_pattern,
    prefix_matches,
    rewrite_path,
)


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]
    prefix: str
    name: int = 0


# The brute-force model's parts: the rules as written, one pattern at a time
# (the Router gets the same answers with dict lookups).


def host_matches(pattern: str, host: str | None) -> bool:
    """Whether ``pattern`` matches a host as :func:`normalize_host` gives it."""
    if host is None:
        return False
    pattern = normalize_host_pattern(pattern)
    if pattern.startswith("*."):
        return len(host) > len(pattern) - 1 and host.endswith(pattern[1:])
    return host == pattern


def host_specificity(pattern: str | None) -> tuple[int, int]:
    """Sort key for patterns that match one host: higher is more specific.

    An exact name beats any wildcard, a wildcard with more labels beats one
    with fewer, and every pattern beats ``None`` (a route for any host).
    """
    if pattern is None:
        return (0, 0)
    pattern = normalize_host_pattern(pattern)
    if pattern.startswith("*."):
        return (1, pattern.count("."))
    return (2, 0)


def routes_of(*specs: tuple[tuple[str, ...], str]) -> list[Route]:
    return [Route(hosts, prefix, i) for i, (hosts, prefix) in enumerate(specs)]


# -- normalize_host ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("app.example.com", "app.example.com"),
        ("App.Example.COM", "app.example.com"),
        ("app.example.com:8080", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("app.example.com.:443", "app.example.com"),
        ("localhost", "localhost"),
        ("localhost:", "localhost"),
        (" localhost ", "localhost"),
        ("my_host.lan", "my_host.lan"),
        ("127.0.0.1:9000", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("[0:0:0:0:0:0:0:1]:80", "::1"),
        ("[2001:DB8::A]", "2001:db8::a"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ],
)
def test_normalize_host(header: str, host: str) -> None:
    assert normalize_host(header) == host


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        " ",
        ".",
        "..",
        "a..com",
        ".a.com",
        "::1",  # IPv6 needs brackets in a Host header
        "::1:8080",
        "[::1",
        "[::1]x",
        "[::1]:x",
        "[::1]:123456",
        "[fe80::1%25eth0]",
        "[1.2.3.4]",
        "a.com:80:90",
        "a.com:http",
        "a.com:\u00b2",
        "a com",
        "a.com/x",
        "user@a.com",
        "\u212a.com",  # Kelvin sign: lowercases to "k", must not sneak in
        "b\u00fccher.de",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4) + ".com",
    ],
)
def test_normalize_host_rejects_garbage(header: str | None) -> None:
    assert normalize_host(header) is None


# -- host patterns ----------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "app.example.com",
        "APP.Example.com",
        "app.example.com.",
        "localhost",
        "*.example.com",
        "*.com",
        "*.Example.com.",
        "127.0.0.1",
        "::1",
        "2001:db8::a",
        "::ffff:1.2.3.4",
    ],
)
def test_check_host_pattern_accepts(pattern: str) -> None:
    assert check_host_pattern(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("", "is empty"),
        ("a.com:80", "has a port"),
        ("localhost:8080", "has a port"),
        ("[::1]", "brackets"),
        ("1:2:3:4:5:6:7:8:9", "not a valid IPv6"),
        ("fe80::1%eth0", "not a valid IPv6"),
        ("*", "'\\*' alone"),
        ("*.", "'\\*' alone"),
        ("a.*.com", "other than as the whole first label"),
        ("foo*.com", "other than as the whole first label"),
        ("*foo.com", "other than as the whole first label"),
        ("*.*.com", "other than as the whole first label"),
        ("*..com", "not a host name"),
        ("a..com", "not a host name"),
        (".a.com", "not a host name"),
        ("a" * 64 + ".com", "not a host name"),
        ("a com", "whitespace"),
        (" a.com", "whitespace"),
        ("a.com/app", "contains '/'"),
        ("ws://a.com", "contains '/'"),
        ("a!.com", "not a host name"),
        ("b\u00fccher.de", "xn--"),
    ],
)
def test_check_host_pattern_says_what_is_valid(pattern: str, complaint: str) -> None:
    reason = check_host_pattern(pattern)
    assert reason is not None
    assert complaint.replace("\\", "") in reason
    assert "app.example.com" in reason
    assert "*.example.com" in reason


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [
        ("App.Example.COM.", "app.example.com"),
        ("*.Example.com.", "*.example.com"),
        ("localhost", "localhost"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8::A", "2001:db8::a"),
    ],
)
def test_normalize_host_pattern(pattern: str, normal: str) -> None:
    assert normalize_host_pattern(pattern) == normal


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("app.example.com", "app.example.com", True),
        ("App.Example.com.", "app.example.com", True),
        ("app.example.com", "example.com", False),
        ("app.example.com", "xapp.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.Example.com.", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "example.com.evil", False),
        ("*.com", "example.com", True),
        ("::1", "::1", True),
        ("0::1", "::1", True),
        ("::1", "::2", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("app.example.com", None, False),
        ("*.example.com", None, False),
    ],
)
def test_host_matches(pattern: str, host: str | None, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_host_specificity_orders_exact_wildcards_any() -> None:
    ranked = ["a.b.example.com", "*.b.example.com", "*.example.com", "*.com", None]
    keys = [host_specificity(p) for p in ranked]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys)
    assert host_specificity("*.Example.COM.") == host_specificity("*.example.com")


# -- prefixes and rewriting -------------------------------------------------


@pytest.mark.parametrize("prefix", ["/", "/app", "/app/", "/a/b", "/a/b/", "/a%20b", "/v1.0"])
def test_check_prefix_accepts(prefix: str) -> None:
    assert check_prefix(prefix) is None


@pytest.mark.parametrize(
    ("prefix", "complaint"),
    [
        ("", "is empty"),
        ("app", "does not start with '/'"),
        ("/app?x=1", "'?' or '#'"),
        ("/app#x", "'?' or '#'"),
        ("/a b", "whitespace"),
        ("/app\t", "whitespace"),
        ("/app\x00", "control"),
        ("/app\x7f", "control"),
        ("//app", "'//'"),
        ("/a//b", "'//'"),
        ("/caf\u00e9", "non-ASCII"),
        ("/a/../b", "'..'"),
        ("/a/./b", "'.'"),
        ("/..", "'..'"),
    ],
)
def test_check_prefix_says_what_is_valid(prefix: str, complaint: str) -> None:
    reason = check_prefix(prefix)
    assert reason is not None
    assert complaint in reason
    assert "/app" in reason


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/app", "/app", True),
        ("/app", "/app/", True),
        ("/app", "/app/x", True),
        ("/app", "/apple", False),
        ("/app", "/ap", False),
        ("/app", "/", False),
        ("/app/", "/app/", True),
        ("/app/", "/app/x", True),
        ("/app/", "/app", False),
        ("/app/", "/apple", False),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
        ("/", "", False),
        ("/", "*", False),
    ],
)
def test_prefix_matches(prefix: str, path: str, matches: bool) -> None:
    assert prefix_matches(prefix, path) is matches


@pytest.mark.parametrize(
    ("prefix", "replacement", "path", "rewritten"),
    [
        ("/vnc1", None, "/vnc1/websockify", "/vnc1/websockify"),
        ("/vnc1", "/", "/vnc1/websockify", "/websockify"),
        ("/vnc1", "/", "/vnc1", "/"),
        ("/vnc1", "/", "/vnc1/", "/"),
        ("/vnc1", "", "/vnc1/websockify", "/websockify"),
        ("/vnc1", "", "/vnc1", "/"),
        ("/app", "/v2", "/app/x", "/v2/x"),
        ("/app", "/v2", "/app", "/v2"),
        ("/app", "/v2", "/app/", "/v2/"),
        ("/app", "/v2/", "/app/x", "/v2/x"),
        ("/app", "/v2/", "/app", "/v2/"),
        ("/app/", "/v2", "/app/x", "/v2/x"),
        ("/app/", "/v2", "/app/", "/v2/"),
        ("/app/", "/", "/app/x/y", "/x/y"),
        ("/", "/v2", "/x", "/v2/x"),
        ("/", "/", "/x", "/x"),
        ("/app", "v2", "/app/x", "/v2/x"),
        ("/app", "/v2", "/app//x", "/v2//x"),  # the client's own '//' is kept
    ],
)
def test_rewrite_path(prefix: str, replacement: str | None, path: str, rewritten: str) -> None:
    assert rewrite_path(prefix, replacement, path) == rewritten


def test_rewrite_path_refuses_a_path_its_prefix_does_not_match() -> None:
    with pytest.raises(ValueError, match="does not match"):
        rewrite_path("/app", "/v2", "/apple")


# -- Router -------------------------------------------------------------------


def test_longest_prefix_wins_over_order_and_host() -> None:
    routes = routes_of(((), "/"), (("a.com",), "/app"), ((), "/app/ws"))
    router = Router(routes)
    assert router.match("a.com", "/app/ws/x") is routes[2]
    assert router.match("a.com", "/app/wsx") is routes[1]
    assert router.match("a.com", "/apple") is routes[0]
    assert router.match("b.com", "/app/x") is routes[0]
    assert router.match(None, "/app/ws") is routes[2]


def test_on_equal_prefix_the_more_specific_host_wins() -> None:
    routes = routes_of(
        ((), "/app"),
        (("*.com",), "/app"),
        (("*.example.com",), "/app"),
        (("a.example.com",), "/app"),
    )
    for order in (routes, routes[::-1]):
        router = Router(order)
        assert router.match("a.example.com", "/app") is routes[3]
        assert router.match("b.example.com", "/app") is routes[2]
        assert router.match("example.com", "/app") is routes[1]
        assert router.match("example.org", "/app") is routes[0]
        assert router.match(None, "/app") is routes[0]


def test_remaining_ties_go_to_the_earlier_route() -> None:
    routes = routes_of((("A.com.",), "/"), (("a.com",), "/"), ((), "/x"), ((), "/x"))
    router = Router(routes)
    assert router.match("a.com", "/") is routes[0]
    assert router.match("b.com", "/x") is routes[2]


def test_a_route_with_many_hosts_ranks_by_the_host_that_matched() -> None:
    routes = routes_of((("*.example.com",), "/"), (("*.com", "a.example.com"), "/"))
    router = Router(routes)
    assert router.match("a.example.com", "/") is routes[1]
    assert router.match("b.example.com", "/") is routes[0]
    assert router.match("b.com", "/") is routes[1]


def test_no_route_matches() -> None:
    routes = routes_of((("a.com",), "/"), ((), "/app"))
    router = Router(routes)
    assert router.match("b.com", "/") is None
    assert router.match(None, "/") is None
    assert router.match("a.com", "") is None
    assert Router[Route]([]).match("a.com", "/") is None


def test_ipv6_hosts() -> None:
    routes = routes_of((("0:0::1",), "/"), (("127.0.0.1",), "/"), ((), "/"))
    router = Router(routes)
    assert router.match(normalize_host("[::1]:8080"), "/") is routes[0]
    assert router.match(normalize_host("127.0.0.1:8080"), "/") is routes[1]
    assert router.match(normalize_host("[::2]"), "/") is routes[2]


@pytest.mark.parametrize(
    ("route", "complaint"),
    [
        (Route((), "app"), "route 0: prefix 'app' does not start"),
        (Route(("a.com:80",), "/"), "route 0: host 'a.com:80' has a port"),
        (Route(("*",), "/"), "route 0: host '\\*' is '\\*' alone"),
    ],
)
def test_router_refuses_invalid_routes(route: Route, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Router([route])


@pytest.mark.parametrize(
    ("specs", "pairs"),
    [
        ([(("a.com", "b.com"), "/x"), (("b.com",), "/x")], [(0, 1)]),
        ([((), "/x"), ((), "/x")], [(0, 1)]),
        ([(("A.com.",), "/x"), (("a.com",), "/x")], [(0, 1)]),
        ([(("*.a.com",), "/x"), (("*.A.com",), "/x")], [(0, 1)]),
        ([((), "/app"), ((), "/app/")], []),
        ([(("a.com",), "/x"), ((), "/x")], []),
        ([(("a.com",), "/x"), (("*.a.com",), "/x")], []),
        ([(("a.com",), "/x"), (("a.com",), "/y")], []),
        ([(("a.com", "a.com."), "/x")], []),
        ([((), "/"), ((), "/"), ((), "/")], [(0, 1), (0, 2), (1, 2)]),
        ([(("a.com", "b.com"), "/"), (("a.com", "b.com"), "/")], [(0, 1)]),
    ],
)
def test_duplicate_routes(
    specs: list[tuple[tuple[str, ...], str]], pairs: list[tuple[int, int]]
) -> None:
    assert duplicate_routes(routes_of(*specs)) == pairs


# -- properties ---------------------------------------------------------------

# A small alphabet, so that hosts and paths often hit the generated routes.
labels = st.sampled_from(["a", "b", "com"])
names = st.lists(labels, min_size=1, max_size=3).map(".".join)
host_patterns = (
    names
    | names.map(lambda n: "*." + n)
    | names.map(lambda n: n.upper() + ".")
    | st.sampled_from(["::1", "0:0::1", "127.0.0.1"])
)
segments = st.sampled_from(["a", "app", "apple", "x"])
# Empty segments give "//" paths: legal, and never matched by a route's "//".
path_segments = st.sampled_from(["a", "app", "apple", "x", ""])
prefixes = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(segments, max_size=2),
    st.booleans(),
)
paths = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash else ""),
    st.lists(path_segments, max_size=4),
    st.booleans(),
)
request_hosts = st.none() | names | st.sampled_from(["::1", "127.0.0.1"])
route_tables = st.lists(
    st.tuples(st.lists(host_patterns, max_size=2).map(tuple), prefixes), max_size=6
).map(lambda specs: routes_of(*specs))


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[Route], str | None, str]:
    """A route table and a request, whose host is often one a pattern in the table matches."""
    routes = draw(route_tables)
    patterns = [p for r in routes for p in r.hosts]
    host = draw(request_hosts)
    derive = draw(st.booleans())
    if patterns and derive:
        pattern = normalize_host_pattern(draw(st.sampled_from(patterns)))
        host = pattern.replace("*", draw(names))
    return routes, host, draw(paths)


def rank(route: Route, host: str | None) -> tuple[int, tuple[int, int], int] | None:
    """The brute-force model: a sort key for a matching route, None if it does not match."""
    if route.hosts:
        specificity = max(
            (host_specificity(p) for p in route.hosts if host_matches(p, host)), default=None
        )
        if specificity is None:
            return None
    else:
        specificity = host_specificity(None)
    return (len(route.prefix), specificity, -route.name)


@given(requests())
@example((routes_of((("a.com",), "/app"), ((), "/")), "a.com", "/apple"))
def test_router_picks_the_best_matching_route(
    case: tuple[list[Route], str | None, str],
) -> None:
    routes, host, path = case
    chosen = Router(routes).match(host, path)
    ranks = {r.name: k for r in routes if prefix_matches(r.prefix, path) and (k := rank(r, host))}
    if chosen is None:
        assert ranks == {}
    else:
        assert chosen.name in ranks
        assert ranks[chosen.name] == max(ranks.values())


@given(requests())
def test_nothing_matches_outside_its_hosts_or_prefix(
    case: tuple[list[Route], str | None, str],
) -> None:
    routes, host, path = case
    chosen = Router(routes).match(host, path)
    if chosen is not None:
        assert prefix_matches(chosen.prefix, path)
        assert chosen.hosts == () or any(host_matches(p, host) for p in chosen.hosts)


@given(prefixes, paths, st.none() | st.just("") | prefixes)
def test_rewrite_path_gives_a_path(prefix: str, path: str, replacement: str | None) -> None:
    path = prefix + path[1:] if prefix.endswith("/") else prefix + path
    if not prefix_matches(prefix, path):
        path = prefix
    rewritten = rewrite_path(prefix, replacement, path)
    assert rewritten.startswith("/")
    if replacement is None:
        assert rewritten == path
    elif replacement:
        assert prefix_matches(replacement, rewritten)
    if "//" not in path:
        assert "//" not in rewritten


@given(names, st.integers(0, 2**20), st.booleans(), st.none() | st.integers(0, 65535))
def test_normalize_host_is_idempotent_on_names(
    name: str, upper: int, dot: bool, port: int | None
) -> None:
    header = "".join(c.upper() if upper >> i & 1 else c for i, c in enumerate(name))
    header += "." if dot else ""
    header += f":{port}" if port is not None else ""
    host = normalize_host(header)
    assert host == name
    assert normalize_host(host) == host
    assert host_matches(header.partition(":")[0], host)


@given(
    st.text(max_size=30) | st.from_regex(r"\[[0-9a-fA-F:.]{0,20}\](:[0-9]{0,6})?", fullmatch=True)
)
def test_normalize_host_gives_none_or_a_valid_exact_pattern(header: str) -> None:
    host = normalize_host(header)
    if host is not None:
        assert check_host_pattern(host) is None
        assert normalize_host_pattern(host) == host
        assert host_matches(host, host)
        if ":" not in host:
            assert normalize_host(host) == host
        else:
            assert normalize_host(f"[{host}]:1") == host


@given(st.text(max_size=20))
def test_checks_never_raise(text: str) -> None:
    for reason in (check_host_pattern(text), check_prefix(text)):
        assert reason is None or reason.startswith(("is ", "has ", "contains ", "does "))
