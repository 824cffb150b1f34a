"""``/metrics`` of a ``--workers N`` tree: every worker's page, summed.

Each worker keeps its own plain counters (``_tally``); at scrape time the
supervisor asks each for its page over the control socket and adds the
samples of equal name and labels. A few gauges are not sums: draining and
backend health are the most of any worker, the start time the earliest.
A worker that ended leaves its counters as last scraped (``retire``), so a
restart does not make the sums fall (which Prometheus reads as a reset).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsgate import _limits, _metrics

_MOST = frozenset({"wsgate_draining", "wsgate_backend_up", "process_max_fds"})
_LEAST = frozenset({"process_start_time_seconds"})

_COUNTING = frozenset({"counter", "histogram", "summary"})

#: Asks every worker for its page; fires with the pages that came back and
#: the counters of workers that ended (``retire``).
Gather = Callable[[], defer.Deferred[tuple[list[str], str]]]


def retire(retired: str, page: str) -> str:
    """``retired`` (a page of counters) with the counters of ``page`` added."""
    found = CollectorRegistry(auto_describe=False)
    found.register(_Merged(merge([], [retired, page]), None))  # type: ignore[arg-type]
    return generate_latest(found).decode()


def merge(pages: Sequence[str], retired: Sequence[str] = ()) -> list[Metric]:
    """The metric families of ``pages`` with equal samples combined, and the
    counters (only) of ``retired`` pages added."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for page, counting in [*((p, False) for p in pages), *((p, True) for p in retired)]:
        for family in text_string_to_metric_families(page):
            if counting and family.type not in _COUNTING:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
            table = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = table.get(key)
                if old is None:
                    table[key] = sample.value
                elif family.name in _MOST:
                    table[key] = max(old, sample.value)
                elif family.name in _LEAST:
                    table[key] = min(old, sample.value)
                else:
                    table[key] = old + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Merged:
    def __init__(self, families: list[Metric], workers: int | None) -> None:
        self._families = families
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._families
        if self._workers is None:
            return
        workers = Metric(
            "wsgate_workers", "Worker processes whose figures are in this page.", "gauge"
        )
        workers.add_sample("wsgate_workers", {}, self._workers)
        yield workers


def page(pages: list[str], retired: str = "") -> bytes:
    """The exposition text of the sum of ``pages`` (and ``retired``'s counters)."""
    found = CollectorRegistry(auto_describe=False)
    merged = merge(pages, [retired] if retired else [])
    found.register(_Merged(merged, len(pages)))  # type: ignore[arg-type]
    return generate_latest(found)


class _Page(Resource):
    isLeaf = True

    def __init__(self, gather: Gather) -> None:
        super().__init__()
        self._gather = gather

    def render_GET(self, request: Request) -> Any:
        def answer(gathered: tuple[list[str], str]) -> None:
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(page(*gathered))
            request.finish()

        self._gather().addCallback(answer)
        return NOT_DONE_YET


def service(endpoint: str, reactor: Any, gather: Gather) -> _limits.Listening:
    """``GET /metrics`` on ``endpoint``, summed over the workers."""
    return _metrics.serve(endpoint, reactor, _Page(gather))


__all__ = ["merge", "page", "service"]
