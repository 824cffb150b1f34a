"""Failover: try a route's backends in the pool's order until one opens.

Kept apart from the legs so the rules can be tested with fake connects and a
test clock: a backend that did not get to answer is marked failed in the pool
and the next one is tried; a refusal it did answer (or wsgate's own shortage,
which is no backend's fault) ends the attempt at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from wsgate._connect import BackendError
from wsgate._pool import BackendPool

B = TypeVar("B")
L = TypeVar("L")


def _quiet(backend: object, error: BackendError) -> None:
    pass


async def open_first(
    candidates: Sequence[B],
    connect: Callable[[B], Awaitable[L]],
    pool: BackendPool[B] | None,
    retrying: Callable[[B, BackendError], None] = _quiet,
) -> tuple[L, B]:
    """The first leg that opens, and its backend; else the last ``BackendError``.

    ``retrying`` hears of each failed backend that is followed by another.
    """
    if not candidates:
        raise ValueError("no backend to try")
    for n, backend in enumerate(candidates, 1):
        try:
            leg = await connect(backend)
        except BackendError as e:
            if not e.retryable:
                raise
            if pool is not None:
                pool.failed(backend)
            if n == len(candidates):
                raise
            retrying(backend, e)
            continue
        if pool is not None:
            pool.succeeded(backend)
        return leg, backend
    raise AssertionError("not reached: the last failure is raised")


__all__ = ["open_first"]
