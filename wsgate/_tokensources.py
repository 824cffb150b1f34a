"""Token sources that read the local file system: websockify's token file
(``file``) and its directory of Unix sockets named by token (``unix-dir``)."""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from wsgate._config import ConfigError
from wsgate._tokens import TokenFile
from wsgate.interfaces import ITokenSource, Request, Target

_log = Logger(namespace="wsgate")
#: A token that names a socket file: no path separators, no dot files.
_SOCKET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,254}")


@implementer(ITokenSource)
class FileSource:
    """``token: host:port`` lines (see ``wsgate._tokens``), re-read on change."""

    def __init__(self, path: str, config_dir: str = ".") -> None:
        try:
            self._file = TokenFile(os.path.join(config_dir, path))
        except ConfigError as e:
            raise ValueError(f"path: {e}") from None
        self.path = os.path.join(config_dir, path)
        self._seen = -1

    def lookup(self, token: str, request: Request) -> defer.Deferred[Target | None]:
        found = self._file.lookup(token)
        if self._file.generation != self._seen:
            self._seen = self._file.generation
            for problem in self._file.problems:
                _log.warn("token file: {problem}", problem=problem)
        return defer.succeed(None if found is None else Target(found.host, found.port))

    def status(self) -> dict[str, Any]:
        return {"token_file": self.path, "tokens": self._file.tokens_count()}


@implementer(ITokenSource)
class UnixDirSource:
    """websockify's ``UnixDomainSocketDirectory``: the token names a socket in
    ``path``; anything else (a path, a dot file, not a socket) is unknown."""

    def __init__(self, path: str, config_dir: str = ".") -> None:
        self.path = os.path.join(config_dir, path)
        if not os.path.isdir(self.path):
            raise ValueError(f"path: {self.path!r} is not a directory")

    def lookup(self, token: str, request: Request) -> defer.Deferred[Target | None]:
        if not _SOCKET_NAME.fullmatch(token):
            return defer.succeed(None)
        where = os.path.join(self.path, token)
        try:
            is_socket = stat.S_ISSOCK(os.stat(where).st_mode)
        except OSError:
            is_socket = False
        return defer.succeed(Target(unix=where) if is_socket else None)

    def status(self) -> dict[str, Any]:
        return {"token_dir": self.path}
