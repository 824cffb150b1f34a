"""Which backend of a route a new client connection tries first, and which next.

Pure: no I/O, no reactor, only an injected clock. The caller asks for
:meth:`BackendPool.candidates` once per client connection, tries them in that
order until one opens, and reports what happened; the pool turns those reports
into load balancing and passive health (a backend that keeps refusing rests for
a while instead of costing every client a failed connect).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar, get_args

Balance = Literal["round-robin", "least-connections"]

T = TypeVar("T", bound=Hashable)


class Clock(Protocol):
    """The part of IReactorTime the pool uses (a reactor, or a test's Clock)."""

    def seconds(self) -> float: ...


@dataclass(slots=True)
class _State:
    """What the pool knows about one backend; shared with a reloaded pool by ``adopt``."""

    active: int = 0
    #: Consecutive failed connects; kept after a rest so one more failure rests it again.
    fails: int = 0
    #: Clock time the rest ends; the backend is resting while the clock is before it.
    rest_until: float = 0.0


class BackendPool(Generic[T]):
    """The backends of one route, with their load and health.

    A backend fails ``max_fails`` connects in a row, then rests for
    ``fail_timeout`` seconds after the last of them (``0`` = never rests).
    When the rest is over it is tried again like any healthy backend; one
    more failure sends it straight back to rest, a success clears its record.

    Reports about a backend the pool does not hold are ignored: after a
    reload, a connection may end on a backend that the new config dropped,
    and its close path must not fail over that.
    """

    def __init__(
        self,
        backends: Sequence[T],
        clock: Clock,
        *,
        balance: Balance = "round-robin",
        max_fails: int = 1,
        fail_timeout: float = 10.0,
    ) -> None:
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        seen: set[T] = set()
        for backend in backends:
            if backend in seen:
                # One state per value: a second listing cannot count separately.
                raise ValueError(f"backend {_name(backend)!r} is listed more than once")
            seen.add(backend)
        if balance not in get_args(Balance):
            valid = ", ".join(get_args(Balance))
            raise ValueError(f"balance must be one of {valid}, not {balance!r}")
        if max_fails < 1:
            raise ValueError(f"max_fails must be 1 or more, not {max_fails!r}")
        if not fail_timeout >= 0:  # also rejects NaN
            raise ValueError(f"fail_timeout must be 0 (never rest) or more, not {fail_timeout!r}")
        self._backends = tuple(backends)
        self._clock = clock
        self._balance = balance
        self._max_fails = max_fails
        self._fail_timeout = float(fail_timeout)
        self._states = {b: _State() for b in self._backends}
        #: Index in ``_backends`` where the next rotation starts.
        self._cursor = 0

    def candidates(self) -> list[T]:
        """Every backend, in the order one new client connection should try them.

        Healthy backends come first in balance order; resting ones follow, the
        soonest to wake first. So when all are resting the client still gets a
        try (a backend that is back will answer) rather than a refusal.

        Each call moves the round-robin start one healthy backend on, which
        with ``least-connections`` breaks ties between equally loaded ones.
        """
        now = self._clock.seconds()
        n = len(self._backends)
        rotated = [self._backends[(self._cursor + i) % n] for i in range(n)]
        healthy = [b for b in rotated if self._states[b].rest_until <= now]
        resting = sorted(
            (b for b in rotated if self._states[b].rest_until > now),
            key=lambda b: self._states[b].rest_until,
        )
        if self._balance == "least-connections":
            healthy.sort(key=lambda b: self._states[b].active)
        if healthy:
            self._cursor = (self._backends.index(healthy[0]) + 1) % n
        return healthy + resting

    def failed(self, backend: T) -> None:
        """A connect to ``backend`` failed (refused, timed out, TLS or handshake error)."""
        state = self._states.get(backend)
        if state is None:
            return
        state.fails += 1
        if state.fails >= self._max_fails:
            state.rest_until = self._clock.seconds() + self._fail_timeout

    def succeeded(self, backend: T) -> None:
        """``backend`` completed a handshake: it is healthy, whatever came before."""
        state = self._states.get(backend)
        if state is not None:
            state.fails = 0
            state.rest_until = 0.0

    def opened(self, backend: T) -> None:
        """A relayed connection to ``backend`` started."""
        state = self._states.get(backend)
        if state is not None:
            state.active += 1

    def closed(self, backend: T) -> None:
        """A relayed connection to ``backend`` ended."""
        state = self._states.get(backend)
        if state is not None:
            state.active = max(0, state.active - 1)

    def usable(self) -> bool:
        """Whether some backend is not resting: a client would be tried on it first.

        When none is, clients still get a try on the soonest to wake, but the
        route is as good as down, and a health check should say so.
        """
        now = self._clock.seconds()
        return any(s.rest_until <= now for s in self._states.values())

    def status(self) -> list[dict[str, object]]:
        """One JSON-ready record per backend, in configured order, for a health endpoint."""
        now = self._clock.seconds()
        return [
            {
                "backend": _name(b),
                "state": "resting" if s.rest_until > now else "up",
                "active": s.active,
                "fails": s.fails,
                "resting_for": max(0.0, s.rest_until - now),
            }
            for b, s in ((b, self._states[b]) for b in self._backends)
        ]

    def adopt(self, previous: BackendPool[T]) -> None:
        """Take over the load and health of backends also in ``previous`` (config reload).

        The records are shared, not copied: connections opened before the
        reload report their close to the old pool, and the new one must see
        it, or least-connections would count them forever.
        """
        for backend in self._backends:
            state = previous._states.get(backend)
            if state is not None:
                self._states[backend] = state


def _name(backend: object) -> str:
    """How a backend is shown to people: its URL when it has one."""
    url = getattr(backend, "url", None)
    return url if isinstance(url, str) else str(backend)
