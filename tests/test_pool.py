"""Backend choice for one route: balancing and passive health, pure, on a test clock."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from wsgate._pool import BackendPool, Balance


@dataclass(frozen=True)
class Url:
    url: str


def pool(
    n: int = 3,
    *,
    balance: Balance = "round-robin",
    max_fails: int = 1,
    fail_timeout: float = 10.0,
) -> tuple[BackendPool[str], Clock]:
    clock = Clock()
    names = [chr(ord("a") + i) for i in range(n)]
    return (
        BackendPool(names, clock, balance=balance, max_fails=max_fails, fail_timeout=fail_timeout),
        clock,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_fails": 0}, "max_fails must be 1 or more"),
        ({"fail_timeout": -1.0}, "fail_timeout must be 0"),
        ({"fail_timeout": float("nan")}, "fail_timeout must be 0"),
        ({"balance": "random"}, "balance must be one of round-robin, least-connections"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackendPool(["a"], Clock(), **kwargs)  # type: ignore[arg-type]


def test_no_backends() -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        BackendPool([], Clock())


def test_duplicate_backend() -> None:
    with pytest.raises(ValueError, match="'ws://x' is listed more than once"):
        BackendPool([Url("ws://x"), Url("ws://y"), Url("ws://x")], Clock())


def test_round_robin_starts_at_each_backend_in_turn() -> None:
    p, _ = pool(3)
    assert [p.candidates() for _ in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


@pytest.mark.parametrize("balance", ["round-robin", "least-connections"])
def test_spread_is_even(balance: Balance) -> None:
    p, _ = pool(4, balance=balance)
    firsts = Counter(p.candidates()[0] for _ in range(400))
    assert firsts == {"a": 100, "b": 100, "c": 100, "d": 100}


def test_round_robin_skips_resting_backend() -> None:
    p, _ = pool(3)
    p.failed("b")
    assert [p.candidates()[0] for _ in range(4)] == ["a", "c", "a", "c"]
    assert p.candidates()[-1] == "b"


def test_least_connections_picks_least_loaded() -> None:
    p, _ = pool(3, balance="least-connections")
    for backend, n in [("a", 3), ("b", 1), ("c", 2)]:
        for _ in range(n):
            p.opened(backend)
    assert p.candidates() == ["b", "c", "a"]
    assert p.candidates() == ["b", "c", "a"]
    p.opened("b")
    p.opened("b")
    assert p.candidates()[0] == "c"
    p.closed("a")
    p.closed("a")
    assert p.candidates()[0] == "a"


def test_least_connections_ties_rotate() -> None:
    p, _ = pool(3, balance="least-connections")
    p.opened("b")
    assert [p.candidates()[0] for _ in range(4)] == ["a", "c", "a", "c"]


def test_least_connections_follows_opens() -> None:
    """Each client goes where the load is least, so the load stays level."""
    p, _ = pool(3, balance="least-connections")
    for _ in range(30):
        p.opened(p.candidates()[0])
    assert [s["active"] for s in p.status()] == [10, 10, 10]


def test_closed_never_goes_below_zero() -> None:
    p, _ = pool(1)
    p.closed("a")
    p.opened("a")
    assert p.status()[0]["active"] == 1
    p.closed("a")
    p.closed("a")
    assert p.status()[0]["active"] == 0


def test_rests_after_max_fails_in_a_row() -> None:
    p, clock = pool(2, max_fails=3)
    p.failed("a")
    p.failed("a")
    p.succeeded("a")  # not in a row: counting starts again
    p.failed("a")
    p.failed("a")
    assert [p.candidates() for _ in range(2)] == [["a", "b"], ["b", "a"]]
    clock.advance(4)
    p.failed("a")
    assert [p.candidates() for _ in range(2)] == [["b", "a"], ["b", "a"]]
    clock.advance(9.9)
    assert p.candidates() == ["b", "a"]
    clock.advance(0.1)  # ten seconds from the last failure: tried again, in turn
    assert [p.candidates() for _ in range(2)] == [["a", "b"], ["b", "a"]]


def test_one_failure_after_rest_rests_again() -> None:
    p, clock = pool(2, max_fails=3, fail_timeout=5)
    for _ in range(3):
        p.failed("a")
    clock.advance(5)
    assert p.candidates() == ["a", "b"]
    p.failed("a")
    assert p.status()[0]["resting_for"] == 5.0
    assert [p.candidates() for _ in range(2)] == [["b", "a"], ["b", "a"]]


def test_success_ends_rest() -> None:
    p, _ = pool(2)
    p.failed("a")
    assert p.candidates() == ["b", "a"]
    p.succeeded("a")  # tried anyway (all resting, say) and it answered
    assert p.status()[0] == {
        "backend": "a",
        "state": "up",
        "active": 0,
        "fails": 0,
        "resting_for": 0.0,
    }
    assert p.candidates() == ["a", "b"]


def test_zero_timeout_never_rests() -> None:
    p, _ = pool(2, fail_timeout=0)
    for _ in range(5):
        p.failed("a")
    assert [p.candidates()[0] for _ in range(4)] == ["a", "b", "a", "b"]
    assert p.status()[0]["fails"] == 5


def test_all_resting_still_tried_soonest_awake_first() -> None:
    p, clock = pool(3, fail_timeout=10)
    p.failed("b")
    clock.advance(1)
    p.failed("c")
    clock.advance(1)
    p.failed("a")
    assert p.candidates() == ["b", "c", "a"]
    assert p.candidates() == ["b", "c", "a"]
    clock.advance(8)  # b awake
    assert p.candidates() == ["b", "c", "a"]
    clock.advance(1)  # c awake too
    assert sorted(p.candidates()[:2]) == ["b", "c"]
    assert p.candidates()[2] == "a"


def test_single_backend_always_offered() -> None:
    p, clock = pool(1)
    assert p.candidates() == ["a"]
    p.failed("a")
    assert p.candidates() == ["a"]
    clock.advance(100)
    assert p.candidates() == ["a"]


def test_status() -> None:
    clock = Clock()
    p = BackendPool([Url("ws://x:1"), "plain"], clock, max_fails=2, fail_timeout=30)
    p.opened(Url("ws://x:1"))
    p.opened(Url("ws://x:1"))
    p.failed("plain")
    p.failed("plain")
    clock.advance(12)
    assert p.status() == [
        {"backend": "ws://x:1", "state": "up", "active": 2, "fails": 0, "resting_for": 0.0},
        {"backend": "plain", "state": "resting", "active": 0, "fails": 2, "resting_for": 18.0},
    ]
    assert p.usable()
    clock.advance(20)
    assert p.status()[1]["resting_for"] == 0.0
    assert p.status()[1]["state"] == "up"


def test_usable_while_some_backend_is_not_resting() -> None:
    p, clock = pool(2, max_fails=2, fail_timeout=30)
    p.failed("a")
    p.failed("b")
    assert p.usable()  # one failure each: below max_fails, still up
    p.failed("a")
    assert p.usable()
    clock.advance(1)
    p.failed("b")
    assert not p.usable()  # both resting: clients get a try, but it is down
    assert [s["state"] for s in p.status()] == ["resting", "resting"]
    clock.advance(29)  # a's rest is over
    assert p.usable()
    assert [s["state"] for s in p.status()] == ["up", "resting"]


def test_unknown_backend_is_ignored() -> None:
    p, _ = pool(2)
    for report in (p.failed, p.succeeded, p.opened, p.closed):
        report("gone")
    assert [s["active"] for s in p.status()] == [0, 0]
    assert [s["fails"] for s in p.status()] == [0, 0]


def test_adopt_keeps_load_and_rest_of_common_backends() -> None:
    clock = Clock()
    old = BackendPool(["a", "b", "gone"], clock, balance="least-connections")
    old.opened("a")
    old.opened("a")
    old.opened("gone")
    old.failed("b")
    clock.advance(3)
    new = BackendPool(["new", "b", "a"], clock, balance="least-connections")
    new.adopt(old)
    assert new.status() == [
        {"backend": "new", "state": "up", "active": 0, "fails": 0, "resting_for": 0.0},
        {"backend": "b", "state": "resting", "active": 0, "fails": 1, "resting_for": 7.0},
        {"backend": "a", "state": "up", "active": 2, "fails": 0, "resting_for": 0.0},
    ]
    assert new.candidates() == ["new", "a", "b"]
    # Connections opened before the reload end through the old pool; the new one sees it.
    old.closed("a")
    old.closed("a")
    assert new.status()[2]["active"] == 0


def column(p: BackendPool[str], key: str) -> dict[str, float]:
    """One number from ``status()`` for each backend, by name."""
    return {str(s["backend"]): cast(float, s[key]) for s in p.status()}


ops = st.lists(
    st.tuples(
        st.sampled_from(["failed", "succeeded", "opened", "closed", "advance", "candidates"]),
        st.integers(0, 4),
        st.floats(0, 20),
    ),
    max_size=40,
)


@settings(deadline=None)  # a shared, busy machine must not fail it
@given(
    n=st.integers(1, 5),
    balance=st.sampled_from(["round-robin", "least-connections"]),
    max_fails=st.integers(1, 3),
    fail_timeout=st.sampled_from([0.0, 1.0, 10.0]),
    script=ops,
)
def test_candidates_is_a_permutation_healthy_first(
    n: int,
    balance: Balance,
    max_fails: int,
    fail_timeout: float,
    script: list[tuple[str, int, float]],
) -> None:
    p, clock = pool(n, balance=balance, max_fails=max_fails, fail_timeout=fail_timeout)
    backends = [chr(ord("a") + i) for i in range(n)]
    for op, index, seconds in script:
        backend = backends[index % n]
        if op == "advance":
            clock.advance(seconds)
        elif op == "candidates":
            p.candidates()
        else:
            getattr(p, op)(backend)
        got = p.candidates()
        assert sorted(got) == backends
        rest = column(p, "resting_for")
        waits = [rest[b] for b in got]
        healthy = [w for w in waits if w == 0]
        assert waits[: len(healthy)] == healthy  # healthy first
        assert waits[len(healthy) :] == sorted(waits[len(healthy) :])  # soonest awake next
        if balance == "least-connections":
            active = column(p, "active")
            loads = [active[b] for b in got[: len(healthy)]]
            assert loads == sorted(loads)
