"""The garbage collector, tuned for a process that makes and drops connections.

Every connection leaves its objects (both legs' protocols and transports,
the relay, their Deferreds and timers: about 70 containers) in reference
cycles, so the cyclic collector, not reference counting, frees them. With
Python's defaults (a young collection every 700 allocations, the oldest
generation holding everything imported at start) that was 10-16% of
wsgate's CPU per handshake; measured under the benchmark's ``handshake``
scenario, a tenth of a second per second of load in collections.

Once the reactor runs, what was built at start (modules, configuration,
listeners) is moved out of the collector's sight (``gc.freeze``): it lives
as long as the process, and scanning it again in each full collection cost
~45 ms a time. Young collections run every ``YOUNG_THRESHOLD`` allocations
instead of 700: each then finds more garbage per object it scans (the live
connections' objects are scanned once per collection, not seven times as
often). The garbage waiting meanwhile is a few hundred KiB at most.
"""

from __future__ import annotations

import gc
from typing import Any

#: Allocations (net) between young collections; Python's default is 700.
YOUNG_THRESHOLD = 5000


def install(reactor: Any) -> None:
    """Tune the collector once ``reactor`` runs (after start-up built everything)."""
    reactor.callWhenRunning(_tune)


def _tune() -> None:
    gc.collect()  # start-up's own garbage goes, rather than being frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


__all__ = ["YOUNG_THRESHOLD", "install"]
