"""The process's running totals, for metrics: plain integers, counted where
a connection opens, fails its handshake or ends, never per message.

Per-message figures stay in each connection (the relay's ``Stats``, each
leg's wire byte counts) while it is open; when it ends they are added here,
so a scrape sums these totals and the open connections' own figures.
"""

from __future__ import annotations

import bisect
from collections import Counter

#: Upper bounds (seconds) of the backend connect histogram's buckets.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: (leg, direction) -> (messages, message bytes, wire bytes).
Figures = dict[tuple[str, str], tuple[int, int, int]]


class Tally:
    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()  # route
        self.handshake_failures: Counter[int] = Counter()  # HTTP status
        #: Refusals by a route's authenticators or token source.
        self.auth_failures: Counter[tuple[str, str, int]] = Counter()  # (route, plugin, status)
        self.deflate: Counter[tuple[str, str]] = Counter()  # (route, leg)
        self.closes: Counter[tuple[str, str, int]] = Counter()  # (route, leg, code)
        self.messages: Counter[tuple[str, str, str]] = Counter()  # (route, leg, direction)
        self.message_bytes: Counter[tuple[str, str, str]] = Counter()
        self.wire_bytes: Counter[tuple[str, str, str]] = Counter()
        #: Per route: bucket counts (one per bound, then +Inf), sum, count.
        self.connect: dict[str, tuple[list[int], list[float]]] = {}

    def backend_connected(self, route: str, seconds: float) -> None:
        buckets, total = self.connect.setdefault(route, ([0] * (len(CONNECT_BUCKETS) + 1), [0.0]))
        buckets[bisect.bisect_left(CONNECT_BUCKETS, seconds)] += 1
        total[0] += seconds

    @staticmethod
    def figures(
        up: tuple[int, int], down: tuple[int, int], wire: dict[tuple[str, str], int]
    ) -> Figures:
        return figures(up, down, wire)

    def add(self, route: str, figures: Figures) -> None:
        """A connection ended: its figures join the totals."""
        for (leg, direction), (messages, message_bytes, wire) in figures.items():
            key = (route, leg, direction)
            self.messages[key] += messages
            self.message_bytes[key] += message_bytes
            self.wire_bytes[key] += wire


def figures(
    up: tuple[int, int], down: tuple[int, int], wire: dict[tuple[str, str], int]
) -> Figures:
    """A connection's figures per leg and direction (as wsgate sees them: "in"
    is what the leg's peer sent). Messages cross 1:1; wire bytes differ by
    compression and framing."""
    return {
        ("client", "in"): (*up, wire[("client", "in")]),
        ("client", "out"): (*down, wire[("client", "out")]),
        ("backend", "in"): (*down, wire[("backend", "in")]),
        ("backend", "out"): (*up, wire[("backend", "out")]),
    }


__all__ = ["CONNECT_BUCKETS", "Figures", "Tally", "figures"]
