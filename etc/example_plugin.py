"""An example wsgate authenticator: a client presents an API key in a header.

Use it from a route (this file's directory on PYTHONPATH):
    auth = [{ plugin = "example_plugin:ApiKeyAuth", keys = { "k-7f3a" = "alice" } }]
"""

import hmac

from twisted.internet import defer
from zope.interface import implementer

from wsgate.interfaces import IAuthenticator, Identity, Refusal, Request


@implementer(IAuthenticator)
class ApiKeyAuth:
    """Admits a client whose ``header`` holds one of ``keys`` (key -> user name)."""

    def __init__(self, keys: dict[str, str], header: str = "x-api-key") -> None:
        if not isinstance(keys, dict) or not keys:
            raise ValueError('keys: give a table of key = "user name" pairs')
        self._keys = keys
        self._header = header.lower()

    def authenticate(self, request: Request) -> defer.Deferred[Identity]:
        presented = request.headers.get(self._header, "").encode()
        for key, user in self._keys.items():
            if hmac.compare_digest(presented, key.encode()):
                return defer.succeed(Identity(user, {"via": "api-key"}))
        raise Refusal(403, "unknown API key")
