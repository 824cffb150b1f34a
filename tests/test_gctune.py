"""The collector's tuning (``_gctune``): applied once the reactor runs, not before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor

from wsgate import _gctune


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_start_up_is_frozen_and_young_collections_are_rarer_once_running() -> None:
    reactor = MemoryReactor()
    threshold = gc.get_threshold()
    _gctune.install(reactor)
    assert gc.get_threshold() == threshold  # nothing before the reactor runs
    built_at_start = [object()]
    reactor.run()
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(built_at_start)
    assert gc.get_threshold() == (_gctune.YOUNG_THRESHOLD, *threshold[1:])
    assert threshold[0] < _gctune.YOUNG_THRESHOLD
