"""Finding, checking and building token-source and authenticator plugins.

A plugin is named by a built-in short name (``jwt``, ``basic``) or by an
import path, ``package.module:Class``. An explicit import path, rather than
Twisted's plugin discovery or entry points: the configuration says exactly
which code runs at the gate, nothing is picked up because it happens to be
installed, a plugin needs no packaging metadata (a module on ``PYTHONPATH``
will do), and a typo is an error that names the module.

The table's other keys become the class's keyword arguments. The class is
built once when the configuration is checked (start, reload,
``check-config``), with a reactor that can do nothing, so missing files and
bad values are reported with the file, table and key; the running gateway
builds it again with the real reactor.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from wsgate.interfaces import IAuthenticator, ITokenSource

#: Built-in token sources: the ``source`` of a route's ``tokens`` table.
TOKEN_SOURCES = {
    "file": "wsgate._tokensources:FileSource",
    "unix-dir": "wsgate._tokensources:UnixDirSource",
    "jwt": "wsgate._jwtcheck:JwtSource",
    "http": "wsgate._tokenhttp:HttpSource",
    "redis": "wsgate._tokenredis:RedisSource",
}
#: Built-in authenticators: the ``plugin`` of an entry in a route's ``auth``.
AUTHENTICATORS = {
    "basic": "wsgate._authplugins:BasicAuth",
    "origin": "wsgate._authplugins:OriginAuth",
    "client-cert": "wsgate._authplugins:ClientCertAuth",
    "jwt-bearer": "wsgate._jwtcheck:JwtBearer",
}
#: What each kind is called in a table, its built-ins and its interface.
_KINDS: dict[str, tuple[str, dict[str, str], Any]] = {
    "tokens": ("source", TOKEN_SOURCES, ITokenSource),
    "auth": ("plugin", AUTHENTICATORS, IAuthenticator),
}
#: Keyword arguments wsgate supplies itself, when the class asks for them.
_INJECTED = ("reactor", "config_dir")


class PluginError(ValueError):
    """A plugin cannot be loaded or built; the message starts where (key)."""


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A checked plugin table: what to build, hashable like every setting."""

    kind: str  # "tokens" or "auth"
    name: str  # as written: "jwt" or "package.module:Class"
    options_json: str  # the table's other keys, JSON (hashable, immutable)
    config_dir: str  # relative paths in the options are relative to this

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = json.loads(self.options_json)
        return options

    def build(self, reactor: Any) -> Any:
        """A new instance, providing the kind's interface (``PluginError``)."""
        key, builtins, interface = _KINDS[self.kind]
        cls = load_class(builtins.get(self.name, self.name), key)
        return construct(cls, interface, self.options, reactor, self.config_dir)

    def __str__(self) -> str:
        return self.name


def load_class(path: str, key: str = "plugin") -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"{key}: {path!r} is neither a built-in nor a module:Class import path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{key}: cannot import {module_name!r}: {e}") from None
    except Exception as e:  # a plugin module that fails while it loads
        raise PluginError(f"{key}: importing {module_name!r} failed: {e!r}") from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise PluginError(f"{key}: module {module_name!r} has no {attribute!r}")
    if not callable(found):
        raise PluginError(f"{key}: {path!r} is not a class")
    return found


def construct(
    cls: Any, interface: Any, options: Mapping[str, Any], reactor: Any, config_dir: str
) -> Any:
    """``cls(**options)``, with ``reactor``/``config_dir`` when it takes them;
    its mistakes as ``PluginError``s that name the key."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    valid = [n for n in parameters if n not in _INJECTED and not n.startswith("_")]
    for key in options:
        if key in _INJECTED or (key not in parameters and not accepts_any):
            raise PluginError(f"{key}: unknown key; valid keys here: {', '.join(valid) or 'none'}")
    missing = [
        name
        for name, p in parameters.items()
        if name not in _INJECTED
        and p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and name not in options
    ]
    if missing:
        raise PluginError(f"{missing[0]}: required")
    kwargs = dict(options)
    if "reactor" in parameters:
        kwargs["reactor"] = reactor
    if "config_dir" in parameters:
        kwargs["config_dir"] = config_dir
    try:
        plugin = cls(**kwargs)
    except PluginError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise PluginError(str(e)) from None
    try:
        verifyObject(interface, plugin)
    except Invalid as e:
        raise PluginError(
            f"{cls.__module__}.{cls.__qualname__} does not provide {interface.__name__}: "
            f"{str(e).strip()}"
        ) from None
    return plugin


def parse(kind: str, value: Any, where: str, config_dir: str | None = None) -> PluginSpec:
    """A checked plugin from a TOML table (``{ source = "jwt", key_file = ... }``)
    or a command-line ``NAME:key=value,key=value``; ``PluginError`` naming ``where``."""
    if isinstance(value, PluginSpec):
        return value
    key, builtins, _ = _KINDS[kind]
    config_dir = config_dir or os.getcwd()
    if isinstance(value, str):
        value = _from_cli(value, key, builtins)
    if not isinstance(value, dict):
        raise PluginError(
            f'{where}: expected a table such as {{ {key} = "{next(iter(builtins))}", ... }}'
        )
    options = dict(value)
    name = options.pop(key, None)
    if not isinstance(name, str) or not name:
        raise PluginError(
            f"{where}: {key}: required: one of {', '.join(builtins)}, or module:Class"
        )
    try:
        options_json = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):
        raise PluginError(
            f"{where}: options must be strings, numbers, booleans or arrays"
        ) from None
    spec = PluginSpec(kind, name, options_json, config_dir)
    from wsgate._parseonly import PARSE_ONLY_REACTOR

    try:
        spec.build(PARSE_ONLY_REACTOR)
    except PluginError as e:
        raise PluginError(f"{where}: {e if str(e).startswith(key) else f'{name}: {e}'}") from None
    return spec


def _from_cli(text: str, key: str, builtins: Mapping[str, str]) -> dict[str, Any]:
    """``jwt:key_file=pub.pem,audience=wsgate`` or ``pkg.mod:Class:cookie=sid``;
    an option given twice makes an array (``allow=alice,allow=bob``)."""
    head, sep, rest = text.partition(":")
    if head not in builtins and sep:
        attribute, sep, rest = rest.partition(":")
        head = f"{head}:{attribute}"
    table: dict[str, Any] = {key: head}
    for item in filter(None, rest.split(",")):
        name, eq, val = item.partition("=")
        if not eq:
            raise PluginError(f"{text!r}: expected NAME:key=value,key=value; {item!r} has no '='")
        key_name, value = name.strip(), _cli_value(val)
        if key_name in table and key_name != key:
            before = table[key_name]
            table[key_name] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            table[key_name] = value
    return table


def _cli_value(text: str) -> Any:
    """What TOML would have said: true/false, a number, else the string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


__all__ = ["AUTHENTICATORS", "TOKEN_SOURCES", "PluginError", "PluginSpec", "load_class", "parse"]
