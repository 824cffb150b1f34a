"""A stand-in reactor for parsing endpoint strings without opening anything.

Configuration checks run Twisted's ``serverFromString``/``clientFromString``
so that a bad endpoint string (a port that is not a number, a key file that
is missing, an unknown type) is reported before anything listens. Those
parsers only build endpoint objects, which keep the reactor for later; the
objects built here are thrown away. A stand-in, rather than the running
reactor (importing it would install one) or ``twisted.internet.testing``'s
``MemoryReactor`` (a test helper in the run-time path).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorPluggableNameResolver
from zope.interface import implementer


@implementer(IReactorPluggableNameResolver)
class _ParseOnlyReactor:
    """What endpoint parsers may touch: nothing but ``nameResolver``, which
    ``HostnameEndpoint`` (``tls:`` clients) reads when it is built. Without
    the interface it would warn that such a reactor is deprecated. Any other
    use is an AttributeError: nothing built here may listen or connect."""

    nameResolver = None


#: Pass as the reactor to ``serverFromString``/``clientFromString`` to check a string.
PARSE_ONLY_REACTOR = _ParseOnlyReactor()
