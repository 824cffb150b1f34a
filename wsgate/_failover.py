"""Failover: try a route's backends in the pool's order until one opens.

Kept apart from the legs so the rules can be tested with fake connects and a
test clock: a backend that did not get to answer is marked failed in the pool
and the next one is tried; a refusal it did answer (or wsgate's own shortage,
which is no backend's fault) ends the attempt at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from wsgate._connect import BackendError
from wsgate._pool import BackendPool

B = TypeVar("B")
L = TypeVar("L")


def _quiet(backend: object, error: BackendError) -> None:
    pass


def open_first(
    candidates: Sequence[B],
    connect: Callable[[B], defer.Deferred[L]],
    pool: BackendPool[B] | None,
    retrying: Callable[[B, BackendError], None] = _quiet,
) -> defer.Deferred[tuple[L, B]]:
    """The first leg that opens, and its backend; else the last ``BackendError``.

    ``retrying`` hears of each failed backend that is followed by another.
    Cancelling cancels the connect under way and tries no other. Callbacks,
    not a coroutine: this runs once per connection, and a coroutine's
    Deferred costs a context copy and a generator step per resume.
    """
    if not candidates:
        return defer.fail(ValueError("no backend to try"))
    return _Attempts(candidates, connect, pool, retrying).result


class _Attempts(Generic[B, L]):
    """One client's way through its candidates."""

    __slots__ = ("_candidates", "_connect", "_current", "_pool", "_retrying", "result")

    def __init__(
        self,
        candidates: Sequence[B],
        connect: Callable[[B], defer.Deferred[L]],
        pool: BackendPool[B] | None,
        retrying: Callable[[B, BackendError], None],
    ) -> None:
        self._candidates = candidates
        self._connect = connect
        self._pool = pool
        self._retrying = retrying
        self._current: defer.Deferred[Any] | None = None
        self.result: defer.Deferred[tuple[L, B]] = defer.Deferred(self._cancel)
        self._try(0)

    def _try(self, n: int) -> None:
        try:
            connecting = self._connect(self._candidates[n])
        except Exception:
            connecting = defer.fail()  # as a coroutine's await would have it
        self._current = connecting
        connecting.addCallbacks(self._opened, self._failed, callbackArgs=(n,), errbackArgs=(n,))

    def _opened(self, leg: L, n: int) -> None:
        self._current = None
        backend = self._candidates[n]
        if self._pool is not None:
            self._pool.succeeded(backend)
        if not self.result.called:
            self.result.callback((leg, backend))

    def _failed(self, failure: Failure, n: int) -> None:
        self._current = None
        if self.result.called:
            return
        e = failure.value
        if not isinstance(e, BackendError) or not e.retryable:
            self.result.errback(failure)
            return
        backend = self._candidates[n]
        if self._pool is not None:
            self._pool.failed(backend)
        if n + 1 == len(self._candidates):
            self.result.errback(failure)
            return
        self._retrying(backend, e)
        self._try(n + 1)

    def _cancel(self, result: defer.Deferred[tuple[L, B]]) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.cancel()


__all__ = ["open_first"]
