"""Helpers for tests that run wsgate for real: ours, and our users'.

``Wsgate`` starts ``twistd -n wsgate`` in a child process on a free
loopback port and stops it; ``make_tls_files`` writes a throw-away CA and a
server certificate for 127.0.0.1 / localhost.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

__all__ = [
    "GateFactory",
    "TlsFiles",
    "Wsgate",
    "free_port",
    "make_client_cert",
    "make_tls_files",
    "wait_for_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once 127.0.0.1:``port`` accepts connections (or raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Wsgate:
    """``twistd -n wsgate ARGS`` in a child process, as a context manager.

    With neither ``--listen`` nor ``--config`` in ``args``, listens on a free
    127.0.0.1 port (``self.port``; ``self.url`` is ``ws://127.0.0.1:PORT``).
    ``start`` returns once it serves: its port accepts and, for a
    ``--workers`` tree, the supervisor has logged that every worker started.
    """

    def __init__(self, *args: str, log_path: Path | None = None, env: dict[str, str] | None = None):
        self.args: list[str] = list(args)
        self.port = free_port()
        own_listeners = any(
            a in ("--listen", "--config") or a.startswith(("--listen=", "--config="))
            for a in self.args
        )
        if not own_listeners:
            self.args = ["--listen", f"tcp:{self.port}:interface=127.0.0.1", *self.args]
        # WSGATE_TEST_WORKERS=N: run a test suite through --workers N (not
        # with --config, whose file says how many).
        workers = os.environ.get("WSGATE_TEST_WORKERS")
        given = any(a.startswith(("--config", "--workers", "--check")) for a in self.args)
        if workers and not given:
            self.args += ["--workers", workers]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object = None
        #: The log of a --workers tree started without log_path, read to
        #: know when its workers are up, removed when it stops.
        self._own_log: Path | None = None

    def command(self) -> list[str]:
        # twistd as a user runs it, in the foreground, logging to stdout.
        run = "from twisted.scripts.twistd import run; run()"
        return [sys.executable, "-c", run, "-n", "--pidfile=", "wsgate", *self.args]

    def start(self, wait_port: int | None = None) -> Wsgate:
        workers = self.workers()
        log_path = self.log_path
        if log_path is None and workers > 1:
            fd, name = tempfile.mkstemp(prefix="wsgate-", suffix=".log")
            os.close(fd)
            log_path = self._own_log = Path(name)
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for_port(wait_port or self.port, proc=self.proc)
        if log_path is not None and workers > 1:
            # The supervisor's sockets listen before its workers have started;
            # its log says when they have (and a worker's log lines reach it
            # only once they have).
            self._wait_for_log(log_path, f"workers: {workers} started", self.proc)
        return self

    def workers(self) -> int:
        """How many processes serve connections: ``--workers`` N, or the
        ``workers`` key of the ``--config`` file (1: one process, no supervisor)."""
        from wsgate._config import ConfigError, parse_workers

        value: object = 1
        for arg, after in zip(self.args, [*self.args[1:], ""], strict=True):
            if arg.startswith("--workers="):
                value = arg.partition("=")[2]
            elif arg == "--workers":
                value = after
            elif arg.startswith("--config=") or arg == "--config":
                path = arg.partition("=")[2] or after
                # A file wsgate cannot read: it says why, and exits.
                with contextlib.suppress(OSError, ValueError):
                    value = tomllib.loads(Path(path).read_text()).get("workers", 1)
        try:
            return parse_workers(value, "--workers")
        except ConfigError:
            return 1  # wsgate refuses it, and exits

    def serving_pids(self) -> list[int]:
        """The processes that serve connections: every worker of a
        ``--workers`` tree (the supervisor's children), else the one process."""
        assert self.proc is not None
        pid = self.proc.pid
        if self.workers() == 1:
            return [pid]
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in children.split()]

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """The log once it says ``text``. A worker's lines reach it through
        the supervisor, a moment after the worker acted: what one process
        has logged by the time its client sees an answer, a worker may not."""
        assert self.log_path is not None and self.proc is not None, "started with a log_path"
        self._wait_for_log(self.log_path, text, self.proc, timeout)
        return self.log()

    def _wait_for_log(
        self, path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ended = proc.poll() is not None  # before the read: then the read has it all
            log = path.read_text(errors="replace")
            if text in log:
                return
            if ended or time.monotonic() > deadline:
                raise RuntimeError(f"wsgate did not log {text!r}; its log:\n{log}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if hasattr(self._log_file, "close"):
            self._log_file.close()  # type: ignore[attr-defined]
        if self._own_log is not None:
            self._own_log.unlink(missing_ok=True)
            self._own_log = None
        return proc.returncode

    def reload(self) -> None:
        """Ask wsgate to re-read its --config file, as ``kill -HUP`` does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        """The log's complete lines: a line being written can be read half
        written (a write that crosses a page boundary shows its first page
        first), and a test would match its start."""
        text = self.log_path.read_text(errors="replace") if self.log_path else ""
        return text[: text.rfind("\n") + 1]

    def __enter__(self) -> Wsgate:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class GateFactory(Protocol):
    """What a test fixture that starts gateways hands a test (our tests'
    ``wsgate`` fixture): start ``twistd -n wsgate ARGS``, wait until it
    listens (on ``wait_port`` when the args name their own listeners), and
    stop it after the test."""

    def __call__(self, *args: str, wait_port: int | None = None) -> Wsgate: ...


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    #: cert and key in one PEM, for Twisted's ``ssl:`` endpoint.
    combined: Path
    #: base64 SHA-256 of the server key's SubjectPublicKeyInfo (Chromium's
    #: ``--ignore-certificate-errors-spki-list``).
    spki_sha256: str


def make_tls_files(
    directory: Path,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    ca_name: str = "wsgate test CA",
    key_type: str = "ec",
) -> TlsFiles:
    """A throw-away CA and a server certificate it signed for ``names``.

    The server key is P-256 (``key_type="ec"``) or RSA 2048 (``"rsa"``): TLS
    1.2 suites are per key type (ECDHE-ECDSA-* or ECDHE-RSA-*).
    """
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        combined=directory / "server.pem",
        spki_sha256=base64.b64encode(
            hashlib.sha256(
                key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).digest()
        ).decode(),
    )
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.ca_key.write_bytes(
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.cert.write_bytes(cert.public_bytes(pem))
    files.key.write_bytes(key_pem)
    files.combined.write_bytes(key_pem + cert.public_bytes(pem))
    return files


def make_client_cert(files: TlsFiles, directory: Path, name: str) -> tuple[Path, Path]:
    """A client certificate for mutual TLS, ``CN=name`` (and an email SAN
    ``name@example.test``), signed by ``files``' throw-away CA: (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(f"{name}@example.test")]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
