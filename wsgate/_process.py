"""The whole ``twistd wsgate`` process: listeners, drain, metrics.

The gateway (``_service``) is the listeners and their reloads; around it,
the process tracks every client connection (limits, drain, metrics) and
serves ``/metrics`` on a listener of its own.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from wsgate import _framepath
from wsgate._config import Config
from wsgate._drain import Connections, DrainingService
from wsgate._service import make_service


def build(
    config: Config, reactor: Any, endpoint: Any = None, serve_metrics: bool = True
) -> IService:
    """The process's services; a worker passes its socket-adopting ``endpoint``
    maker and leaves metrics to its supervisor (``serve_metrics=False``).
    Each such process names the frame path it runs in its log."""
    _framepath.log_choice()
    connections = Connections()
    connections.limit(config)
    process: Any = DrainingService(connections, reactor)
    gateway = make_service(config, reactor, connections, endpoint)
    gateway.setServiceParent(process)
    process.gateway = gateway
    if serve_metrics and config.metrics is not None:
        from wsgate._metrics import service as metrics_service

        metrics = metrics_service(config.metrics, reactor, connections, gateway.backend_states)
        metrics.setServiceParent(process)
    return process  # type: ignore[no-any-return]


__all__ = ["build"]
