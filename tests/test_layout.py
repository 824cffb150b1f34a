"""The package's shape: each module leans on few others, and none on itself.

Imports are read from the source with ``ast``, function-local and
``TYPE_CHECKING`` ones included: a cycle hidden in a function is still a
cycle, and a module that needs many others is doing more than one job.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: The most other wsgate modules one module may import.
MOST_IMPORTS = 8

_PACKAGE = Path(__file__).resolve().parent.parent / "wsgate"


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(_PACKAGE.glob("*.py"))}


def package_imports(source: str, names: set[str]) -> set[str]:
    """The wsgate modules (of ``names``) that ``source`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("wsgate.")
            )
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if (node.level == 0 and module == "wsgate") or (node.level == 1 and not module):
                found.update(alias.name for alias in node.names if alias.name in names)
            elif node.level == 0 and module.startswith("wsgate."):
                found.add(module.split(".")[1])
            elif node.level == 1:
                found.add(module.split(".")[0])
    return found & names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    names = set(modules)
    return {
        name: package_imports(path.read_text(encoding="utf-8"), names) - {name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, a]``), or None: a depth-first search."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in stack:
            return [*stack[stack.index(name) :], name]
        if name in done:
            return None
        stack.append(name)
        for other in sorted(graph[name]):
            found = visit(other)
            if found is not None:
                return found
        stack.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name)
        if found is not None:
            return found
    return None


def test_the_counter_sees_every_form_of_import() -> None:
    source = """
import wsgate._a
from wsgate import _b, __version__
from wsgate._c import thing
from . import _d
from ._e import other
import os
from twisted.internet import defer
def f():
    from wsgate._f import late
if TYPE_CHECKING:
    from wsgate._g import Type
"""
    names = {"_a", "_b", "_c", "_d", "_e", "_f", "_g", "_h"}
    assert package_imports(source, names) == names - {"_h"}


def test_the_search_finds_a_cycle_and_only_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": set(), "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_module_imports_more_than_eight_others() -> None:
    graph = _graph()
    assert {"_frontend", "_service", "_config", "_tls"} <= set(graph)
    heavy = {name: sorted(deps) for name, deps in graph.items() if len(deps) > MOST_IMPORTS}
    assert heavy == {}


def test_no_import_cycle() -> None:
    assert _cycle(_graph()) is None
