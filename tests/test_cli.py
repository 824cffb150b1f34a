"""``twistd wsgate`` options: bad input is a usage error and a non-zero exit, before any bind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from wsgate.tap import Options
from wsgate.testing import TlsFiles, free_port

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    config = _parse("--backend", "ws://127.0.0.1:9000/app")["config"]
    assert [x.endpoint for x in config.listeners] == ["tcp:8080"]
    (route,) = config.routes
    (backend,) = route.backends
    assert route.prefix == "/" and route.rewrite is None
    assert backend.port == 9000 and backend.path == "/app"
    settings = route.settings
    # Compression offload: deflate with clients, none with backends unless asked.
    assert settings.client_deflate.enabled and not settings.backend_deflate.enabled
    assert settings.max_message_size == 64 * 1024 * 1024
    assert settings.origins == ("*",) and settings.idle_timeout == 0


def test_repeatable_listen_and_sizes() -> None:
    config = _parse(
        "--listen",
        "tcp:1",
        "-l",
        "unix:/tmp/x.sock",
        "--backend",
        "wss://h",
        "--max-message-size",
        "0",
        "--client-deflate",
        "off",
    )["config"]
    assert [x.endpoint for x in config.listeners] == ["tcp:1", "unix:/tmp/x.sock"]
    (route,) = config.routes
    assert route.backends[0].port == 443 and route.backends[0].secure
    assert route.settings.max_message_size == 0 and not route.settings.client_deflate.enabled


def test_routes_and_default_backend() -> None:
    config = _parse(
        "--route",
        "/app=ws://127.0.0.1:9000",
        "--route",
        "/vnc2=ws://127.0.0.1:6082",
        "--backend",
        "ws://127.0.0.1:6081",
        "--idle-timeout",
        "60",
    )["config"]
    assert [(r.prefix, r.backends[0].port) for r in config.routes] == [
        ("/app", 9000),
        ("/vnc2", 6082),
        ("/", 6081),
    ]
    assert all(r.settings.idle_timeout == 60 for r in config.routes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--backend, --route, --token-file, --token-source or --config is required"),
        (("--route", "app=ws://h"), "expected PREFIX=URL"),
        (("--route", "/app"), "expected PREFIX=URL"),
        (("--route", "/a=ws://h", "--route", "/a=ws://g"), "duplicate"),
        (("--route", "/a b=ws://h"), "--route /a b"),
        (("--config", "x.toml", "--backend", "ws://h"), "cannot be combined with --backend"),
        (("--backend", "ws://h", "--check"), "--check needs --config"),
        (("--backend", "ws://h", "--idle-timeout", "-5"), "--idle-timeout"),
        (("--backend", "http://x"), "must start with ws:// or wss://"),
        (("--backend", "ws://"), "has no host"),
        (("--backend", "ws://h:99999"), "not a valid URL"),
        (("--backend", "ws://h", "--listen", "tcp:notaport"), "--listen 'tcp:notaport'"),
        (("--backend", "ws://h", "--listen", "bogus:1"), "--listen 'bogus:1'"),
        (("--backend", "ws://h", "--client-deflate", "maybe"), "--client-deflate"),
        (("--backend", "ws://h", "--backend-deflate", "on,window_bits=8"), "9 to 15"),
        (("--backend", "ws://h", "--max-message-size", "big"), "--max-message-size"),
        (("--backend", "ws://h", "--connect-timeout", "-1"), "--connect-timeout"),
        (("--backend", "wss://h", "--backend-ca", "/nonexistent.pem"), "--backend-ca"),
    ],
)
def test_bad_options_name_the_option(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        _parse(*args)


def test_missing_certificate_for_ssl_listener_is_an_error() -> None:
    with pytest.raises(usage.UsageError, match="--listen"):
        _parse("--backend", "ws://h", "--listen", "ssl:0:privateKey=/nonexistent.pem")


def test_twistd_exits_nonzero_before_binding() -> None:
    # The port is taken: had wsgate tried to listen first, it would say so.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *TWISTD,
                "wsgate",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--backend",
                "ftp://x",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "must start with ws:// or wss://" in output
    assert "cannot listen" not in output and "Address already in use" not in output


def test_twistd_exits_nonzero_when_port_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *TWISTD,
                "wsgate",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--backend",
                "ws://127.0.0.1:1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"wsgate: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "Address already in use" in output
    assert "Traceback" not in output


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [*TWISTD, "wsgate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in (
        "--listen",
        "--backend",
        "--client-deflate",
        "--backend-deflate",
        "--backend-ca",
    ):
        assert option in result.stdout


def test_backend_ca_file_is_read(tls_files: TlsFiles) -> None:
    config = _parse("--backend", "wss://localhost", "--backend-ca", str(tls_files.ca_cert))[
        "config"
    ]
    assert config.routes[0].settings.backend_ca == str(tls_files.ca_cert)


def _daemon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``twistd`` without ``-n``: it forks a daemon and waits for it to start."""
    run = "from twisted.scripts.twistd import run; run()"
    return subprocess.run(
        [
            sys.executable,
            "-c",
            run,
            f"--pidfile={tmp_path / 'twistd.pid'}",
            f"--logfile={tmp_path / 'twistd.log'}",
            "wsgate",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=5,  # it used to wait forever
    )


def test_daemon_on_a_busy_port_exits_at_once_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _daemon(
            tmp_path,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--backend",
            "ws://127.0.0.1:1",
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"wsgate: cannot listen on 'tcp:{port}:interface=127.0.0.1': "
        "[Errno 98] Address already in use\n"
    )
    assert not (tmp_path / "twistd.pid").exists()
    log = (tmp_path / "twistd.log").read_text()
    assert "Address already in use" in log and "Traceback" not in log


def test_daemon_with_a_bad_file_exits_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.toml"
    path.write_text('[[listener]]\nendpoint = "tcp:1"\n[[route]]\nbackend = "ftp://x"\n')
    result = _daemon(tmp_path, "--config", str(path))
    assert result.returncode != 0
    assert "must start with ws:// or wss://" in result.stdout + result.stderr
    assert not (tmp_path / "twistd.pid").exists()


def test_daemon_that_starts_returns_at_once(tmp_path: Path) -> None:
    import os
    import signal
    import time

    port = free_port()
    result = _daemon(
        tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", "--backend", "ws://127.0.0.1:1"
    )
    pid = int((tmp_path / "twistd.pid").read_text())
    try:
        assert result.returncode == 0 and result.stderr == ""
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (tmp_path / "twistd.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)  # the daemon is not our child: poll its pid file


def test_a_sigterm_before_the_reactor_runs_stops_it_once_running() -> None:
    """twistd reports a daemon started before its reactor runs; a SIGTERM in
    between must not kill it (its pid file would stay): the reactor stops,
    and so drains and removes the pid file, once it runs."""
    import signal

    from twisted.internet.testing import MemoryReactorClock

    from wsgate import _daemon

    reactor = MemoryReactorClock()
    calls: list[object] = []
    reactor.callFromThread = lambda f, *a, **kw: calls.append(f)  # type: ignore[method-assign]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        _daemon.stop_on_early_sigterm(reactor)
        signal.raise_signal(signal.SIGTERM)  # the process goes on
        assert calls == [reactor.stop]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--bogus",), "option --bogus not recognized"),
        (("--config", "missing.toml"), "missing.toml: cannot read the configuration"),
        (("--backend", "ftp://x"), "--backend: 'ftp://x' must start with ws:// or wss://"),
    ],
)
def test_twistd_prints_the_error_first_and_alone(args: tuple[str, ...], error: str) -> None:
    result = subprocess.run([*TWISTD, "wsgate", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    first, hint = result.stderr.splitlines()
    assert first.startswith(f"twistd wsgate: {error}")
    assert hint == "see: twistd wsgate --help"


def test_version() -> None:
    from wsgate import __version__

    for command in (
        [*TWISTD, "wsgate", "--version"],
        [sys.executable, "-m", "wsgate._cli", "--version"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, f"wsgate {__version__}\n"), command


def test_check_config_reports_every_mistake_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[listener]]\nendpoint = "tcp:notaport"\nname = "public"\n\n'
        '[[listener]]\nendpoint = "ssl:8443:privateKey=/nonexistent.pem"\nname = "secure"\n\n'
        '[[listener]]\nendpoint = "bogus:1"\n\n'
        '[[route]]\nprefix = "/a"\nbackend = "ws://127.0.0.1:9000"\nbackendd = 1\n\n'
        '[[route]]\nprefix = "b"\nbackend = "ws://127.0.0.1:9000"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "wsgate._cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    hint = "(expected a Twisted server endpoint such as"
    assert sorted(result.stderr.splitlines()) == sorted(
        f"{path}: {line}"
        for line in (
            "[[route]] #1 (/a): backendd: unknown key (did you mean 'backend'?); valid keys "
            "here: " + ", ".join(_route_keys()),
            "[[route]] #2 (b): prefix 'b': does not start with '/'; expected a path such as "
            "/, /app or /app/",
            "[[listener]] #1 (public): endpoint 'tcp:notaport': invalid literal for int() "
            f"with base 10: 'notaport' {hint} tcp:8080, unix:/run/wsgate.sock or "
            "ssl:8443:privateKey=key.pem:certKey=cert.pem)",
            "[[listener]] #2 (secure): endpoint 'ssl:8443:privateKey=/nonexistent.pem': "
            "[Errno 2] No such file or directory: '/nonexistent.pem'",
            f"[[listener]] #3: endpoint 'bogus:1': Unknown endpoint type: 'bogus' {hint} "
            "tcp:8080, unix:/run/wsgate.sock or ssl:8443:privateKey=key.pem:certKey=cert.pem)",
        )
    )


def _route_keys() -> list[str]:
    from wsgate._config import SETTINGS
    from wsgate._configfile import _ROUTE_KEYS

    return [*_ROUTE_KEYS, *(s.key for s in SETTINGS)]
