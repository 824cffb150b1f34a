"""Shared fixtures: real processes on 127.0.0.1, stopped after each test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from wsgate.testing import GateFactory, TlsFiles, Wsgate, make_tls_files

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Debian's Chromium, which the browser tests drive through Playwright.
CHROMIUM = Path("/usr/bin/chromium")
_CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Seconds Chromium may take to start.
_LAUNCH_TIMEOUT = 30.0


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.single_process("why")``: a behaviour of each process on
    its own (a limit counted per worker, as nginx's ``worker_connections``),
    skipped when WSGATE_TEST_WORKERS runs the gateways as several workers."""
    marker = item.get_closest_marker("single_process")
    if marker is None:
        return
    (reason,) = marker.args  # a reason is required
    workers = os.environ.get("WSGATE_TEST_WORKERS", "")
    if workers not in ("", "1"):
        pytest.skip(f"per process, and WSGATE_TEST_WORKERS={workers}: {reason}")


@pytest.fixture
def wsgate(tmp_path: Path) -> Iterator[GateFactory]:
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


@pytest.fixture(scope="module")
def browser(tls_files: TlsFiles) -> Iterator[Browser]:
    """A headless Chromium that trusts ``tls_files``' certificate, one per test module.

    It trusts through ``--ignore-certificate-errors-spki-list``: only a
    certificate with that exact public key is let through; every other check
    (name, dates, the handshake itself) still runs.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (PyPI) is not installed: pip install '.[test]'"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                *_CHROMIUM_ARGS,
                f"--ignore-certificate-errors-spki-list={tls_files.spki_sha256}",
            ],
            timeout=_LAUNCH_TIMEOUT * 1000,
        )
        try:
            yield chromium
        finally:
            chromium.close()
