"""What the package imports, setup.cfg must declare: pip installs nothing else."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_top_level_modules() -> set[str]:
    """Every top-level module imported anywhere in wsgate/, lazily or not."""
    found: set[str] = set()
    for path in (ROOT / "wsgate").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"wsgate", "__future__"}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised as PEP 503 does."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name[0]).lower()


def test_every_third_party_import_is_a_runtime_requirement() -> None:
    """Declared directly, not in an extra, and not left to some dependency's
    own requirements: cryptography (wsgate._sni) used to be a test extra."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    declared = {
        _name(line) for line in setup["options"]["install_requires"].splitlines() if line.strip()
    }
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {_name(d) for d in providers.get(module, [module])} - {"wsgate"}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported by wsgate/ but not in install_requires: {undeclared}"
