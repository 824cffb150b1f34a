"""The TOML configuration: what a file means, and the mistakes it is refused for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsgate._config import ConfigError
from wsgate._configfile import load_file, reference_rst
from wsgate.testing import TlsFiles

ROOT = Path(__file__).resolve().parent.parent


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "wsgate.toml"
    path.write_text(text)
    return load_file(str(path))


def _errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


MINIMAL = """
[[listener]]
endpoint = "tcp:8080"

[[route]]
backend = "ws://127.0.0.1:9000"
"""


def test_the_shipped_example_loads() -> None:
    config = load_file(str(ROOT / "etc" / "wsgate.toml"))
    assert [x.endpoint for x in config.listeners] == ["tcp:8080:interface=127.0.0.1"]
    assert config.listeners[0].health == "/healthz"
    assert [r.prefix for r in config.routes] == ["/", "/echo-b"]
    assert [b.port for b in config.routes[0].backends] == [9000, 9001]
    assert config.routes[1].rewrite == "/"
    assert config.routes[1].settings.origins == config.routes[0].settings.origins


def test_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    (route,) = config.routes  # type: ignore[attr-defined]
    assert route.prefix == "/" and route.hosts == () and route.listeners is None
    assert route.settings.max_message_size == 64 * 1024 * 1024
    assert route.settings.origins == ("*",)
    assert route.settings.balance == "round-robin"


def test_defaults_apply_and_routes_override(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
[defaults]
max_message_size = "1M"
client_deflate = false
idle_timeout = 30

[[listener]]
endpoint = "tcp:8080"
name = "plain"

[[listener]]
endpoint = "tcp:8081"

[[route]]
prefix = "/a"
backend = "ws://a"
listeners = ["plain"]

[[route]]
prefix = "/b"
hosts = ["b.example.com", "*.b.example.com"]
backends = ["ws://b1", "wss://b2"]
max_message_size = 0
client_deflate = "on,window_bits=10"
balance = "least-connections"
origins = ["https://*.example.com"]
subprotocols = ["chat"]
add_headers = { X-Env = "test" }
remove_headers = ["Cookie"]
rewrite = "/v2"
""",
    )
    a, b = config.routes  # type: ignore[attr-defined]
    assert a.settings.max_message_size == 1024 * 1024 and not a.settings.client_deflate.enabled
    assert a.settings.idle_timeout == 30 and b.settings.idle_timeout == 30
    assert b.settings.max_message_size == 0
    assert b.settings.client_deflate.window_bits == 10
    assert b.settings.balance == "least-connections"
    assert b.settings.origins == ("https://*.example.com",)
    assert b.settings.subprotocols == ("chat",)
    assert b.settings.add_headers == (("x-env", "test"),)
    assert b.settings.remove_headers == frozenset({"cookie"})
    assert b.rewrite == "/v2" and b.hosts == ("b.example.com", "*.b.example.com")
    assert [x.url for x in b.backends] == ["ws://b1", "wss://b2"]
    plain, other = config.listeners  # type: ignore[attr-defined]
    assert config.routes_for(plain) == (a, b)  # type: ignore[attr-defined]
    assert config.routes_for(other) == (b,)  # type: ignore[attr-defined]
    assert other.name == "tcp:8081"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "backnd = 1\n", r"\[\[route\]\] #1 \(/\): backnd: unknown key \(did you mean 'backend'\?\)"),
        (MINIMAL.replace("endpoint", "endpont"), r"\[\[listener\]\] #1: endpont: unknown key \(did you mean 'endpoint'\?\)"),
        ("[defaults]\nmax_mesage_size = 1\n" + MINIMAL, r"\[defaults\]: max_mesage_size: unknown key \(did you mean 'max_message_size'\?\)"),
        ("listeners = []\n" + MINIMAL, r"top level: listeners: unknown key \(did you mean 'listener'\?\)"),
        (MINIMAL + "max_message_size = true\n", r"max_message_size: True is not a size"),
        (MINIMAL + "connect_timeout = \"soon\"\n", r"connect_timeout: 'soon' is not a number of seconds"),
        (MINIMAL + "idle_timeout = -1\n", r"idle_timeout: -1 must be 0 \(off\)"),
        (MINIMAL + "client_deflate = \"maybe\"\n", r"client_deflate: 'maybe': expected 'on', 'off'"),
        (MINIMAL + "balance = \"random\"\n", r"balance: 'random' is not a balance method; valid: \"round-robin\""),
        (MINIMAL + "origins = [\"example.com\"]\n", r"origins: 'example.com' is not an origin pattern"),
        (MINIMAL + "add_headers = { Host = \"x\" }\n", r"add_headers: 'Host' belongs to the WebSocket handshake"),
        (MINIMAL + "max_fails = 0\n", r"max_fails: 0 must be at least 1"),
        (MINIMAL + "hosts = [\"a.com:80\"]\n", r"hosts: 'a.com:80': has a port"),
        (MINIMAL + "hosts = []\n", r"hosts: an empty list can never match"),
        (MINIMAL + "prefix = \"app\"\n", r"prefix 'app': does not start with '/'"),
        (MINIMAL.replace("ws://127.0.0.1:9000", "http://x"), r"\[\[route\]\] #1 \(/\): backend: 'http://x' must start with ws:// or wss://"),
        (MINIMAL.replace("backend = ", "backends = ").replace('"ws://127.0.0.1:9000"', '["ws://a", "ws://a"]'), r"backends: a URL is listed twice"),
        (MINIMAL.replace("tcp:8080", "tcp:notaport"), r"\[\[listener\]\] #1: endpoint 'tcp:notaport': .*expected a Twisted server endpoint"),
        (MINIMAL + MINIMAL.split("[[route]]")[1].join(["[[route]]", ""]), r"\[\[route\]\] #2 \(/\): duplicate of #1 \(/\): same host and prefix '/', so it can never match"),
        (MINIMAL + "listeners = [\"tls\"]\n", r"listeners: no listener is named 'tls'; listeners: 'tcp:8080'"),
        (MINIMAL.replace('endpoint = "tcp:8080"', 'endpoint = "tcp:8080"\nredirect = "https://{host}"'), r"can never match: every listener it names only redirects"),
        (MINIMAL.replace('endpoint = "tcp:8080"', 'endpoint = "tcp:8080"\nredirect = "ftp://x"'), r"redirect: 'ftp://x' must be an http:// or https:// URL"),
        (MINIMAL + "[[listener]]\nendpoint = \"tcp:8080\"\n", r"endpoint 'tcp:8080' is given twice"),
        (MINIMAL.replace('[[route]]\nbackend = "ws://127.0.0.1:9000"', ""), r"listener 'tcp:8080' serves nothing"),
        ('[[route]]\nbackend = "ws://x"\n', r"no \[\[listener\]\]"),
        (MINIMAL + "[[route]]\nprefix = \"/x\"\n", r"\[\[route\]\] #2 \(/x\): no backend"),
        (MINIMAL + "strip_prefix = true\nrewrite = \"/a\"\n", r"give strip_prefix or rewrite, not both"),
        (MINIMAL + "backend_ca = \"missing.pem\"\n", r"backend_ca: cannot read '.*missing.pem'"),
        ("[[listener]\n", r"not valid TOML: .*line 1"),
        (MINIMAL.replace('endpoint = "tcp:8080"', 'endpoint = "tcp:8080"\ncertificates = [{ cert = "nope.pem" }]'), r"certificates: .*nope.pem"),
    ],
)  # fmt: skip
def test_mistakes_name_file_table_key_and_what_is_valid(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = _errors(tmp_path, text)
    assert message.startswith(str(tmp_path / "wsgate.toml") + ": "), message
    assert re.search(expected, message), message


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    message = _errors(
        tmp_path,
        MINIMAL + 'balance = "random"\nmax_fails = 0\nbackend_insecure = "perhaps"\n',
    )
    lines = message.splitlines()
    assert len(lines) == 3, message
    assert all(
        line.startswith(str(tmp_path / "wsgate.toml") + ": [[route]] #1 (/)") for line in lines
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the configuration"):
        load_file(str(tmp_path / "nope.toml"))


def test_paths_are_relative_to_the_file(tmp_path: Path, tls_files: TlsFiles) -> None:
    (tmp_path / "ca.pem").write_bytes(Path(tls_files.ca_cert).read_bytes())
    config = _load(tmp_path, MINIMAL + 'backend_ca = "ca.pem"\n')
    assert config.routes[0].settings.backend_ca == str(tmp_path / "ca.pem")  # type: ignore[attr-defined]


def test_readme_reference_is_the_code_s() -> None:
    readme = (ROOT / "README.rst").read_text()
    begin, end = ".. begin config reference", ".. end config reference"
    assert begin in readme and end in readme, "README.rst lacks the reference markers"
    documented = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert documented == reference_rst().strip(), (
        "README.rst's configuration reference is out of date: run "
        "`python -m wsgate._configfile` and paste its output between the markers"
    )


@pytest.mark.parametrize("name", ["README.rst", "CONTRIBUTING.rst"])
def test_readme_is_valid_restructuredtext(name: str) -> None:
    import docutils.core
    import docutils.nodes

    doctree = docutils.core.publish_doctree(
        (ROOT / name).read_text(),
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": False},
    )
    problems = [node.astext() for node in doctree.findall(docutils.nodes.system_message)]
    assert not problems


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "backnd = 1\n")
    run = [sys.executable, "-m", "wsgate._cli", "check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK (1 listener(s), 1 route(s))" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "did you mean 'backend'?" in failed.stderr and "Traceback" not in failed.stderr


def test_twistd_check_flag(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("tcp:8080", "tcp:nope"))
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    result = subprocess.run(
        [*twistd, "-n", "--pidfile=", "wsgate", "--config", str(bad), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "endpoint 'tcp:nope'" in result.stdout + result.stderr
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    result = subprocess.run(
        [*twistd, "-n", "--pidfile=", "wsgate", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "OK" in result.stdout
