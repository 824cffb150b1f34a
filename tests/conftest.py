"""Shared fixtures: real processes on 127.0.0.1, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wsgate.testing import TlsFiles, Wsgate, make_tls_files


@pytest.fixture
def wsgate(tmp_path: Path) -> Iterator[Callable[..., Wsgate]]:
    """Start ``twistd -n wsgate ARGS`` (on a free port unless --listen is given)."""
    started: list[Wsgate] = []

    def start(*args: str, wait_port: int | None = None) -> Wsgate:
        gate = Wsgate(*args, log_path=tmp_path / f"wsgate-{len(started)}.log")
        started.append(gate)
        return gate.start(wait_port=wait_port)

    yield start
    for gate in started:
        gate.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))
