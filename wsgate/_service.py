"""The twistd service: one listener per endpoint string, all relaying to the backend."""

from __future__ import annotations

from typing import Any

from twisted.application import internet, service
from twisted.internet import endpoints, error

from wsgate._backend import BackendConnector
from wsgate._config import Config
from wsgate._frontend import FrontendFactory


def make_service(config: Config, reactor: Any) -> service.MultiService:
    """Build, but do not start, the listeners for ``config``."""
    top = service.MultiService()
    connector = BackendConnector(reactor, config, config.backend)
    factory = FrontendFactory(config, connector, reactor)
    for description in config.listen:
        endpoint = endpoints.serverFromString(reactor, description)
        listener = _Listener(endpoint, factory)
        listener.setName(description)
        listener.setServiceParent(top)
    return top


class _Listener(internet.StreamServerEndpointService):
    """A listener that cannot bind stops twistd with one clear line, not a traceback."""

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except error.CannotListenError as e:
            raise SystemExit(f"wsgate: cannot listen on {self.name!r}: {e.socketError}") from None
