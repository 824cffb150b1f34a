"""websockify-style token files: ``token: host:port`` lines naming the only targets.

noVNC clients ask for ``/websockify?token=vnc1``; the target comes from this
file and never from the client, so a client can reach only what an operator
listed. The format is websockify's ``TokenFile`` plugin (``--token-plugin
TokenFile --token-source PATH``, formerly ``--target-config``), as released in
websockify 0.13.0 (``websockify/token_plugins.py``, ``ReadOnlyTokenFile``):

- PATH is one file, or a directory whose regular files (symlinks followed) are
  all read.
- Each line is stripped; blank lines and lines starting with ``#`` are skipped.
- The token ends at the first ``:`` followed by whitespace (space or tab), so
  ``vnc1:127.0.0.1:5901`` is an error and a token may hold a colon (``a:b: h:1``).
  Exactly one such separator is allowed on a line.
- The target is split at its last colon, so an unbracketed IPv6 address works
  (``vnc1: ::1:5901``).
- A repeated token: the later line wins.

Where we differ, it is to refuse a line websockify would accept but then fail
on at connect time, or to make the result deterministic:

- Problems name the file and the line (websockify counts lines across all the
  files of a directory and names the directory); they do not repeat the token,
  which is as good as a password to whoever can reach the gateway.
- The port must be a number from 1 to 65535 (websockify passes any text to
  getaddrinfo, so service names also worked there); the host must be a
  hostname (ASCII: letters, digits, ``-``, ``_``, ``.``), an IPv4 address, or
  an IPv6 address, bracketed or not (websockify cannot connect to the bracketed
  form). Whitespace before the separator colon is not part of the token.
- ``token: unix_socket:/path`` (websockify connects to a Unix socket) is not
  supported: such a line is reported and skipped.
- A directory's files are read in name order, so the later file wins a repeated
  token; names starting with ``.`` or ``#`` or ending with ``~`` (editor swap,
  lock and backup files) are skipped.

A :class:`TokenFile` re-reads when a file changed, like websockify's
``TokenFile`` (which re-reads on every connection), but it only stats the
file(s) per lookup and keeps the last good tokens when a re-read fails.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from typing import Protocol

from wsgate._config import ConfigError

_EXAMPLE = "e.g. 'vnc1: 127.0.0.1:5901'"
#: websockify splits with ``re.split(r':\s', line)`` and needs exactly two parts.
_SEPARATOR = re.compile(r":\s")
#: Text-mode readlines() semantics, so line numbers match what editors show
#: (str.splitlines would also split at form feeds and Unicode separators).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")
_UNIX = "unix_socket"

#: (path, mtime_ns, size, inode, ctime_ns) of one file.
_Stat = tuple[str, int, int, int, int]
#: Every file read, sorted by path: equal signatures mean nothing to re-read.
_Signature = tuple[_Stat, ...]
#: A signature, or why there is none (the path vanished, ...).
_State = _Signature | str


class Clock(Protocol):
    """The part of IReactorTime a :class:`TokenFile` uses (a reactor, or a test's Clock)."""

    def seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where a token leads: a TCP host (name or address, IPv6 without brackets) and port."""

    host: str
    port: int

    def endpoint(self) -> str:
        """A Twisted client endpoint string (``tcp:``), the target's stream
        backend (``_connect.stream_endpoint`` resolves a name to IPv4 and IPv6).
        """
        return f"tcp:host={_escape(self.host)}:port={self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class TokenFile:
    """A token file (or directory of them) that follows its edits.

    Each :meth:`lookup` stats the file (a directory: lists it and stats each
    file) and re-reads only when a name, mtime, size, inode or ctime changed;
    ctime catches a ``chmod`` that makes an unreadable file readable again.
    With a ``clock``, it stats at most once per ``interval`` seconds. That I/O
    blocks the reactor briefly; one stat per new connection is small next to
    the connection itself.

    A failed re-read keeps the last good tokens: a file that is being replaced,
    or lost its permissions, must not lock every client out. :attr:`problems`
    says what is wrong; :attr:`generation` changes with each read so a caller
    can log them once.
    """

    def __init__(self, path: str, clock: Clock | None = None, *, interval: float = 1.0) -> None:
        self._path = path
        self._clock = clock
        self._interval = interval
        self._tokens: dict[str, Target] = {}
        self._problems: list[str] = []
        self._generation = 0
        try:
            self._state: _State = self._signature()
            self._tokens, self._problems = self._read(self._state)
        except OSError as e:
            raise ConfigError(
                f"{path}: cannot read the token file: {_os_error(e, path)} (give a file of "
                f"'token: host:port' lines, {_EXAMPLE}, or a directory of such files)"
            ) from None
        except _NotTokens as e:
            raise ConfigError(str(e)) from None
        self._checked = clock.seconds() if clock is not None else 0.0

    @property
    def problems(self) -> list[str]:
        """What was wrong at the last read: bad lines, or why it failed."""
        return list(self._problems)

    @property
    def generation(self) -> int:
        """Counts reads (good or failed) since the first; :attr:`problems` change only with it."""
        return self._generation

    def tokens_count(self) -> int:
        return len(self._tokens)

    def lookup(self, token: str) -> Target | None:
        """The target for a client's token, from the files as they are now; never raises."""
        self._refresh()
        return self._tokens.get(token)

    def _refresh(self) -> None:
        if self._clock is not None:
            now = self._clock.seconds()
            if self._checked <= now < self._checked + self._interval:
                return
            self._checked = now
        state: _State
        try:
            state = self._signature()
        except OSError as e:
            state = _os_error(e, self._path)
        except _NotTokens as e:
            state = str(e)
        if state == self._state:
            return
        self._state = state
        self._generation += 1
        if isinstance(state, str):
            self._keep(state)
            return
        try:
            self._tokens, self._problems = self._read(state)
        except OSError as e:
            self._keep(_os_error(e, self._path))

    def _keep(self, why: str) -> None:
        """Keep the last good tokens; say why they are not fresh."""
        self._problems = [
            f"{self._path}: cannot re-read the token file: {why}; "
            f"keeping the {len(self._tokens)} tokens from the last good read"
        ]

    def _signature(self) -> _Signature:
        """What identifies the current contents without reading them."""
        st = os.stat(self._path)
        if stat.S_ISREG(st.st_mode):
            return (_stat_of(self._path, st),)
        if not stat.S_ISDIR(st.st_mode):
            raise _NotTokens(f"{self._path}: not a regular file or a directory of them")
        files = []
        with os.scandir(self._path) as entries:
            for entry in entries:
                if not _skipped(entry.name) and entry.is_file():
                    files.append(_stat_of(entry.path, entry.stat()))
        return tuple(sorted(files))

    def _read(self, files: _Signature) -> tuple[dict[str, Target], list[str]]:
        found: dict[str, tuple[Target, str]] = {}
        problems: list[str] = []
        for path, *_ in files:
            with open(path, "rb") as f:
                data = f.read()
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                problems.append(f"{path}: not UTF-8 text (byte {e.start}); its lines are skipped")
                continue
            _parse_into(found, problems, text, path)
        if not found:
            problems.append(f"{self._path}: no tokens; every client will be refused ({_EXAMPLE})")
        return {token: target for token, (target, _) in found.items()}, problems


class _NotTokens(Exception):
    """The path exists but is nothing a token file can be read from."""


def _stat_of(path: str, st: os.stat_result) -> _Stat:
    return (path, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _skipped(name: str) -> bool:
    """Hidden, editor swap/lock/autosave and backup files: half-written copies, not config."""
    return name.startswith((".", "#")) or name.endswith("~")


def _os_error(e: OSError, path: str) -> str:
    """The reason, and the file if it is one inside the directory ``path``."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename and e.filename != path else reason


def _parse_into(
    found: dict[str, tuple[Target, str]], problems: list[str], text: str, source: str
) -> None:
    """Add one file's tokens to ``found`` (token -> target and where) and one
    problem per bad line. Never raises: a token file is edited by hand while
    the gateway runs, and one bad line must not hide the good ones."""
    for lineno, raw in enumerate(_LINE_BREAK.split(text), start=1):
        where = f"{source}:{lineno}"
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _SEPARATOR.split(line)
        if len(parts) != 2:
            problems.append(f"{where}: {_split_problem(len(parts))}")
            continue
        token, spec = parts[0].strip(), parts[1].strip()
        if not token:
            problems.append(f"{where}: the token before ':' is empty ({_EXAMPLE})")
            continue
        target = _parse_target(spec)
        if isinstance(target, str):
            shown = spec if len(spec) <= 80 else spec[:77] + "..."
            problems.append(f"{where}: target {shown!r}: {target}")
            continue
        if token in found:
            problems.append(f"{where}: token repeats the one at {found[token][1]}; this line wins")
        found[token] = (target, where)


def _split_problem(parts: int) -> str:
    if parts == 1:
        return (
            f"expected 'token: host:port' with a space after the token's colon ({_EXAMPLE}); "
            "comment lines start with '#'"
        )
    return (
        "more than one ': ' on the line; write 'token: host:port' "
        f"with no space inside host:port ({_EXAMPLE})"
    )


def _parse_target(spec: str) -> Target | str:
    """The target in ``host:port``, or what is wrong with it."""
    if spec.startswith(_UNIX + ":"):
        return "unix_socket targets are not supported; give host:port"
    if "#" in spec:
        return f"comments go on a line of their own, starting with '#' ({_EXAMPLE})"
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            return "expected [IPv6 address]:port, e.g. [::1]:5901"
        if not _is_ipv6(host):
            return f"{host!r} in brackets is not an IPv6 address (e.g. [::1]:5901)"
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            return f"no port; write host:port ({_EXAMPLE})"
        problem = _host_problem(host)
        if problem:
            return problem
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return Target(host, int(port))


def _host_problem(host: str) -> str | None:
    if not host:
        return f"no host before the port ({_EXAMPLE})"
    if ":" in host:
        if _is_ipv6(host):
            return None
        return f"{host!r} is not an IPv6 address (write IPv6 as [::1]:5901)"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return None
    name = host.removesuffix(".")
    if len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return (
        f"{host!r} is not a hostname (ASCII letters, digits, '-', '_', '.'; "
        "internationalized names in xn-- form) or an IP address"
    )


def _is_ipv6(host: str) -> bool:
    address, pct, scope = host.partition("%")
    if pct and not _SCOPE.fullmatch(scope):
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _escape(value: str) -> str:
    """Quote a value for Twisted's endpoint-string parser, where ``:`` and ``=`` separate."""
    return re.sub(r"([\\:=])", r"\\\1", value)
