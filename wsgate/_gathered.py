"""``/metrics`` of a ``--workers N`` tree: every worker's page, summed.

Each worker keeps its own plain counters (``_tally``); at scrape time the
supervisor asks each for its page over the control socket and adds the
samples of equal name and labels. A few gauges are not sums: draining and
backend health are the most of any worker, the start time the earliest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wsgate import _limits

_MOST = frozenset({"wsgate_draining", "wsgate_backend_up", "process_max_fds"})
_LEAST = frozenset({"process_start_time_seconds"})

#: Asks every worker for its page; fires with the pages that came back.
Gather = Callable[[], defer.Deferred[list[str]]]


def merge(pages: list[str]) -> list[Metric]:
    """The metric families of ``pages`` with equal samples combined."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
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
    def __init__(self, families: list[Metric], workers: int) -> None:
        self._families = families
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._families
        workers = Metric(
            "wsgate_workers", "Worker processes whose figures are in this page.", "gauge"
        )
        workers.add_sample("wsgate_workers", {}, self._workers)
        yield workers


def page(pages: list[str]) -> bytes:
    """The exposition text of the sum of ``pages``."""
    found = CollectorRegistry(auto_describe=False)
    found.register(_Merged(merge(pages), len(pages)))  # type: ignore[arg-type]
    return generate_latest(found)


class _Page(Resource):
    isLeaf = True

    def __init__(self, gather: Gather) -> None:
        super().__init__()
        self._gather = gather

    def render_GET(self, request: Request) -> Any:
        def answer(pages: list[str]) -> None:
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(page(pages))
            request.finish()

        self._gather().addCallback(answer)
        return NOT_DONE_YET


class _Listener(_limits.Listening):
    what = "metrics: "


def service(endpoint: str, reactor: Any, gather: Gather) -> _limits.Listening:
    """``GET /metrics`` on ``endpoint``, summed over the workers."""
    root = Resource()
    root.putChild(b"metrics", _Page(gather))  # type: ignore[arg-type]
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # scrapes are not news
    listening = _Listener(endpoints.serverFromString(reactor, endpoint), site)
    listening.setName(endpoint)
    return listening


__all__ = ["merge", "page", "service"]
