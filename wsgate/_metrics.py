"""Prometheus metrics on their own listener (``metrics = "tcp:9100"``).

Nothing is counted for metrics on the hot path: each connection keeps the
relay's message and byte counts and its legs' wire byte counts as plain
integers, the process keeps totals of ended connections (``_tally``), and
this collector sums both when Prometheus scrapes. The page is rendered in
the reactor thread (prometheus_client's own Twisted resource renders in a
thread, which would read the connection set while the reactor changes it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from twisted.application import internet
from twisted.internet import endpoints
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wsgate import _limits
from wsgate._drain import Connections
from wsgate._tally import CONNECT_BUCKETS

#: (backend, up) for every configured backend: the pools' passive health.
BackendStates = Callable[[], dict[str, bool]]


class Collector:
    """Reads wsgate's integers at scrape time."""

    def __init__(self, connections: Connections, backends: BackendStates) -> None:
        self._connections = connections
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        tally = self._connections.tally
        messages = Counter(tally.messages)
        message_bytes = Counter(tally.message_bytes)
        wire = Counter(tally.wire_bytes)
        active: Counter[str] = Counter()
        for connection in self._connections.open_connections():
            sample = getattr(connection, "sample", None)
            taken = sample() if sample is not None else None
            if taken is None:
                continue
            route, figures = taken
            active[route] += 1
            for (leg, direction), (count, payload, on_wire) in figures.items():
                key = (route, leg, direction)
                messages[key] += count
                message_bytes[key] += payload
                wire[key] += on_wire

        gauge = GaugeMetricFamily(
            "wsgate_connections_active", "WebSocket connections open now.", labels=["route"]
        )
        for route in sorted(set(active) | set(tally.opened)):
            gauge.add_metric([route], active[route])
        yield gauge
        yield _counter(
            "wsgate_connections", "WebSocket connections opened.", ["route"], tally.opened
        )
        yield _counter(
            "wsgate_handshake_failures",
            "Requests answered with an HTTP error instead of a WebSocket, by status.",
            ["status"],
            {(str(status),): n for status, n in tally.handshake_failures.items()},
        )
        yield _counter(
            "wsgate_auth_failures",
            "Requests refused by a route's authenticators or token source, by plugin and status.",
            ["route", "plugin", "status"],
            {(r, plugin, str(status)): n for (r, plugin, status), n in tally.auth_failures.items()},
        )
        labels = ["route", "leg", "direction"]
        yield _counter(
            "wsgate_messages",
            'Messages relayed, per leg; direction "in" is what the leg\'s peer sent.',
            labels,
            messages,
        )
        yield _counter(
            "wsgate_message_bytes",
            "Message payload bytes (decompressed), per leg and direction.",
            labels,
            message_bytes,
        )
        yield _counter(
            "wsgate_bytes",
            "Bytes on the wire (after compression, with framing), per leg and direction.",
            labels,
            wire,
        )
        yield _counter(
            "wsgate_closes",
            "Legs closed, by the close code received on them (1006: none).",
            ["route", "leg", "code"],
            {(route, leg, str(code)): n for (route, leg, code), n in tally.closes.items()},
        )
        yield _counter(
            "wsgate_deflate_negotiated",
            "Connections whose leg negotiated permessage-deflate.",
            ["route", "leg"],
            tally.deflate,
        )
        histogram = HistogramMetricFamily(
            "wsgate_backend_connect_seconds",
            "Time to open a backend leg (TCP, TLS and WebSocket handshake).",
            labels=["route"],
        )
        for route, (buckets, total) in sorted(tally.connect.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(str, CONNECT_BUCKETS), "+Inf"), buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            histogram.add_metric([route], cumulative, sum_value=total[0])
        yield histogram
        up = GaugeMetricFamily(
            "wsgate_backend_up",
            "1 while a backend is not resting after failed connects (passive health).",
            labels=["backend"],
        )
        for backend, is_up in sorted(self._backends().items()):
            up.add_metric([backend], 1 if is_up else 0)
        yield up
        yield GaugeMetricFamily(
            "wsgate_draining",
            "1 once a drain (SIGTERM) started.",
            1 if self._connections.draining else 0,
        )


def _counter(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class _Page(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def registry(connections: Connections, backends: BackendStates) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=False)
    found.register(Collector(connections, backends))  # type: ignore[arg-type]
    ProcessCollector(registry=found)
    return found


class _Listener(_limits.Listening):
    """A metrics port that cannot bind stops the start with one line."""

    what = "metrics: "


def service(
    endpoint: str, reactor: Any, connections: Connections, backends: BackendStates
) -> internet.StreamServerEndpointService:
    """``GET /metrics`` on ``endpoint`` (any Twisted server endpoint string)."""
    return serve(endpoint, reactor, _Page(registry(connections, backends)))


def serve(endpoint: str, reactor: Any, page: Resource) -> _limits.Listening:
    """``page`` as ``GET /metrics`` on ``endpoint``: one process's registry,
    or the sum over a ``--workers`` tree (``_gathered``)."""
    root = Resource()
    root.putChild(b"metrics", page)  # type: ignore[arg-type]
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # scrapes are not news
    listening = _Listener(endpoints.serverFromString(reactor, endpoint), site)
    listening.setName(endpoint)
    return listening


__all__ = ["Collector", "registry", "serve", "service"]
