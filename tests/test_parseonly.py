"""Endpoint strings are checked with a stand-in reactor, not a test helper."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from twisted.internet import endpoints

from wsgate._config import ConfigError, StreamBackend, parse_backend
from wsgate._configfile import check_endpoint
from wsgate._parseonly import PARSE_ONLY_REACTOR
from wsgate.testing import TlsFiles


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080",
        "tcp:8080:interface=127.0.0.1",
        "tcp6:8080:interface=\\:\\:1",
        "unix:/run/wsgate.sock:mode=660",
        "haproxy:tcp:8080",
    ],
)
def test_good_server_endpoints_pass_without_warnings(description: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_endpoint(description) is None


def test_ssl_server_endpoint_reads_its_files(tls_files: TlsFiles) -> None:
    good = f"ssl:8443:privateKey={tls_files.key}:certKey={tls_files.cert}"
    assert check_endpoint(good) is None
    missing = check_endpoint("ssl:8443:privateKey=/nonexistent.pem")
    assert missing is not None and "/nonexistent.pem" in missing


@pytest.mark.parametrize(
    ("description", "problem"),
    [
        ("tcp:notaport", "invalid literal for int()"),
        ("bogus:1", "bogus"),
        ("tcp:8080:backlog=many", "invalid literal for int()"),
    ],
)
def test_bad_server_endpoints_say_what_is_valid(description: str, problem: str) -> None:
    reason = check_endpoint(description)
    assert reason is not None and problem in reason
    assert "(expected a Twisted server endpoint such as tcp:8080" in reason


@pytest.mark.parametrize(
    "description",
    [
        "tcp:127.0.0.1:5901",
        "tcp:host=vnc.internal:port=5901",
        "unix:/run/vnc.sock",
        # tls: builds a HostnameEndpoint, which reads the reactor's nameResolver.
        "tls:vnc.internal:5901",
        "tls:host=vnc.internal:port=5901",
    ],
)
def test_good_stream_backends_parse_without_warnings(description: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_backend(description) == StreamBackend(description)


@pytest.mark.parametrize(
    ("description", "problem"),
    [
        ("tcp:127.0.0.1", "missing 1 required positional argument: 'port'"),
        ("tcp:127.0.0.1:vnc", "invalid literal for int()"),
        ("unix:/run/vnc.sock:timeout=soon", "invalid literal for int()"),
    ],
)
def test_bad_stream_backends_say_what_is_valid(description: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_backend(description, "[[route]] #1: backend")
    message = str(error.value)
    assert message.startswith(f"[[route]] #1: backend: {description!r}: "), message
    assert problem in message
    assert "(expected a Twisted client endpoint such as tcp:127.0.0.1:5901" in message


def test_the_stand_in_cannot_listen_or_connect() -> None:
    endpoint = endpoints.serverFromString(PARSE_ONLY_REACTOR, "tcp:8080")
    with pytest.raises(AttributeError, match="listenTCP"):
        endpoint.listen(None)  # type: ignore[arg-type]


def test_checking_a_config_loads_no_test_helper(tmp_path: Path) -> None:
    """twisted.internet.testing stays out of the run-time path (check-config
    used to import it for MemoryReactor)."""
    path = tmp_path / "wsgate.toml"
    path.write_text(
        '[[listener]]\nendpoint = "tcp:8080"\n'
        '[[route]]\nbackend = "tcp:127.0.0.1:5901"\n'
        '[[route]]\nprefix = "/x"\nbackend = "tls:vnc.internal:5901"\n'
    )
    script = (
        "import sys\n"
        "from wsgate._cli import main\n"
        f"assert main(['check-config', {str(path)!r}]) == 0\n"
        "assert 'twisted.internet.testing' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "OK (1 listener(s), 2 route(s))" in result.stdout
