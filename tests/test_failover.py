"""Failover between a route's backends: pure, with fake connects and a test clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsgate._connect import BackendError
from wsgate._failover import open_first
from wsgate._pool import BackendPool

_SYNC = SynchronousTestCase()


class _Connects:
    """A connect function whose outcome per backend is set by the test: a leg
    name, a ``BackendError``, or a Deferred the test fires later."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.tried: list[str] = []

    def __call__(self, backend: str) -> defer.Deferred[str]:
        self.tried.append(backend)
        outcome = self.outcomes[backend]
        if isinstance(outcome, defer.Deferred):
            return outcome
        if isinstance(outcome, BaseException):
            return defer.fail(outcome)
        return defer.succeed(outcome)


def _pool(*backends: str, max_fails: int = 1) -> tuple[BackendPool[str], Clock]:
    clock = Clock()
    return BackendPool(backends, clock, max_fails=max_fails, fail_timeout=10.0), clock


def _fails(pool: BackendPool[str]) -> dict[str, tuple[object, object]]:
    return {str(s["backend"]): (s["state"], s["fails"]) for s in pool.status()}


def _open(
    candidates: list[str], connects: _Connects, pool: BackendPool[str] | None
) -> tuple[defer.Deferred[tuple[str, str]], list[tuple[str, BackendError]]]:
    heard: list[tuple[str, BackendError]] = []
    opening = open_first(candidates, connects, pool, lambda b, e: heard.append((b, e)))
    return opening, heard


def test_a_backend_that_did_not_answer_is_marked_and_the_next_tried() -> None:
    pool, _ = _pool("a", "b")
    refused = BackendError(502, "backend a unreachable", retryable=True)
    connects = _Connects({"a": refused, "b": "leg-b"})
    opening, heard = _open(pool.candidates(), connects, pool)
    assert _SYNC.successResultOf(opening) == ("leg-b", "b")
    assert connects.tried == ["a", "b"]
    assert heard == [("a", refused)]
    assert _fails(pool) == {"a": ("resting", 1), "b": ("up", 0)}
    assert pool.candidates() == ["b", "a"]  # the failed one waits its rest


def test_a_success_clears_the_backends_record() -> None:
    pool, _ = _pool("a", max_fails=3)
    pool.failed("a")
    opening, _ = _open(["a"], _Connects({"a": "leg-a"}), pool)
    assert _SYNC.successResultOf(opening) == ("leg-a", "a")
    assert _fails(pool) == {"a": ("up", 0)}


@pytest.mark.parametrize(
    "error",
    [
        BackendError(403, "backend refused the handshake"),  # the backend answered
        BackendError(503, "out of file descriptors", local=True),  # wsgate's shortage
    ],
)
def test_a_refusal_or_a_local_shortage_ends_the_attempt_at_once(error: BackendError) -> None:
    pool, _ = _pool("a", "b")
    connects = _Connects({"a": error, "b": "leg-b"})
    opening, heard = _open(pool.candidates(), connects, pool)
    assert _SYNC.failureResultOf(opening, BackendError).value is error
    assert connects.tried == ["a"]
    assert heard == []
    assert _fails(pool) == {"a": ("up", 0), "b": ("up", 0)}  # nobody's fault counted


def test_when_all_fail_the_last_error_is_raised() -> None:
    pool, _ = _pool("a", "b")
    first = BackendError(502, "a unreachable", retryable=True)
    last = BackendError(504, "b timed out", retryable=True)
    connects = _Connects({"a": first, "b": last})
    opening, heard = _open(pool.candidates(), connects, pool)
    assert _SYNC.failureResultOf(opening, BackendError).value is last
    assert heard == [("a", first)]  # the last failure is the answer, not a retry
    assert _fails(pool) == {"a": ("resting", 1), "b": ("resting", 1)}


def test_a_slow_failure_moves_on_when_it_comes_and_rests_on_the_clock() -> None:
    pool, clock = _pool("a", "b")
    timing_out: defer.Deferred[str] = defer.Deferred()
    clock.callLater(5, timing_out.errback, BackendError(504, "a timed out", retryable=True))
    connects = _Connects({"a": timing_out, "b": "leg-b"})
    opening, _ = _open(pool.candidates(), connects, pool)
    _SYNC.assertNoResult(opening)
    assert connects.tried == ["a"]
    clock.advance(5)
    assert _SYNC.successResultOf(opening) == ("leg-b", "b")
    assert _fails(pool)["a"] == ("resting", 1)
    clock.advance(10)
    assert _fails(pool)["a"] == ("up", 1)  # rested: tried again like any other
    assert pool.usable()


def test_without_a_pool_backends_are_still_tried_in_order() -> None:
    connects = _Connects({"x": BackendError(502, "x down", retryable=True), "y": "leg-y"})
    opening, _ = _open(["x", "y"], connects, None)
    assert _SYNC.successResultOf(opening) == ("leg-y", "y")


def test_no_candidates_is_a_mistake_of_the_caller() -> None:
    opening, _ = _open([], _Connects({}), None)
    _SYNC.failureResultOf(opening, ValueError)


def test_cancelling_cancels_the_connect_under_way_and_tries_no_other() -> None:
    pool, _ = _pool("a", "b")
    waiting: defer.Deferred[str] = defer.Deferred()
    connects = _Connects({"a": waiting, "b": "leg-b"})
    opening, heard = _open(pool.candidates(), connects, pool)
    opening.cancel()
    _SYNC.failureResultOf(opening, defer.CancelledError)
    assert waiting.called  # cancelled
    assert (connects.tried, heard) == (["a"], [])
    assert _fails(pool) == {"a": ("up", 0), "b": ("up", 0)}


def test_a_connect_that_raises_fails_the_attempt_not_the_caller() -> None:
    def connect(backend: str) -> defer.Deferred[str]:
        raise RuntimeError("no leg for " + backend)

    opening = open_first(["a", "b"], connect, None)
    assert "no leg for a" in str(_SYNC.failureResultOf(opening, RuntimeError).value)
