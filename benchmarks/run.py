#!/usr/bin/env python3
"""wsgate's benchmarks against nginx, HAProxy and a direct connection.

One command (see benchmarks/README.md)::

    .venv/bin/python benchmarks/run.py [--quick] [--rounds N] [--out benchmarks/results]

The load generator and the echo backend are Node ``ws`` processes
(``benchmarks/node/bench.js``) pinned to CPU 0; the proxy under test is
pinned to CPU 1, and its CPU time (utime + stime) and memory (VmRSS, VmHWM)
are read from /proc around each measured window. Every target is measured in
the same run, scenario by scenario, in rounds; the report gives each
figure's best round and the spread, and ratios to nginx and to a direct
connection. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
BENCH_JS = NODE_DIR / "bench.js"
LOADGEN_CPU = 0
PROXY_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# -- /proc ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # Fields after "(comm)": state is field 3, so index i here is field i + 3.
    return data[data.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (nginx: master and worker)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    return sum(cpu_user_system(pid))


def cpu_user_system(pid: int) -> tuple[float, float]:
    try:
        f = _stat_fields(pid)
    except OSError:
        return 0.0, 0.0
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy_seconds(cpu: int) -> float:
    """Busy time of one CPU (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return (sum(v[:8]) - idle) / CLK_TCK
    return 0.0


@dataclass
class Snapshot:
    t: float
    proxy_cpu: float
    proxy_sys: float
    proxy_rss_kib: int
    proxy_hwm_kib: dict[int, int]
    backend_cpu: float
    cpu0_busy: float
    cpu1_busy: float


def snapshot(proxy_pid: int | None, backend_pid: int) -> Snapshot:
    pids = process_tree(proxy_pid) if proxy_pid else []
    cpu = [cpu_user_system(p) for p in pids]
    return Snapshot(
        t=time.monotonic(),
        proxy_cpu=sum(u + s for u, s in cpu),
        proxy_sys=sum(s for _, s in cpu),
        proxy_rss_kib=sum(status_kib(p, "VmRSS") for p in pids),
        proxy_hwm_kib={p: status_kib(p, "VmHWM") for p in pids},
        backend_cpu=cpu_seconds(backend_pid),
        cpu0_busy=cpu_busy_seconds(LOADGEN_CPU),
        cpu1_busy=cpu_busy_seconds(PROXY_CPU),
    )


def window(a: Snapshot, b: Snapshot, proxied: bool) -> dict[str, Any]:
    """CPU figures for the window between two snapshots."""
    dt = b.t - a.t
    proxy = b.proxy_cpu - a.proxy_cpu
    out: dict[str, Any] = {
        "window_s": dt,
        "backend_cpu_pct": 100 * (b.backend_cpu - a.backend_cpu) / dt,
        "cpu0_busy_pct": 100 * (b.cpu0_busy - a.cpu0_busy) / dt,
        "cpu1_busy_pct": 100 * (b.cpu1_busy - a.cpu1_busy) / dt,
    }
    if proxied:
        out["proxy_cpu_s"] = proxy
        out["proxy_cpu_pct"] = 100 * proxy / dt
        # Kernel time (syscalls, loopback TCP) as a share of the proxy's CPU.
        out["proxy_sys_share_pct"] = 100 * (b.proxy_sys - a.proxy_sys) / proxy if proxy else None
        # What else ran on the proxy's CPU: other work sharing the machine.
        out["cpu1_other_pct"] = max(0.0, out["cpu1_busy_pct"] - out["proxy_cpu_pct"])
    return out


# -- processes ----------------------------------------------------------------------


#: Niceness for every process the run starts (``--nice``; 0 leaves it alone).
NICE = 0


def _pinned(cpu: int | None, nofile: int) -> Callable[[], None]:
    """A child's set-up: on ``cpu`` (None: wherever the kernel puts it)."""
    nice = NICE

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        os.setpgid(0, 0)

    return setup


class Procs:
    """Every process this run started, so each is stopped by its own pid."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], cpu: int | None, nofile: int, **kw: Any
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, preexec_fn=_pinned(cpu, nofile), **kw)
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                # Its own process group (nginx's worker too), by its id.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            self.stop(proc)


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    from wsgate.testing import wait_for_port as wait

    wait(port, timeout=timeout, proc=proc)


def free_port() -> int:
    from wsgate.testing import free_port as free

    return free()


class Client:
    """One run of ``node bench.js MODE``: JSON lines out, commands in."""

    def __init__(self, procs: Procs, args: list[str], nofile: int, log: Path) -> None:
        self._procs = procs
        self._err = open(log, "ab")  # noqa: SIM115
        self.proc = procs.start(
            ["node", str(BENCH_JS), *args],
            LOADGEN_CPU,
            nofile,
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def event(self, name: str, deadline: float) -> dict[str, Any]:
        """The next JSON event called ``name`` (others are skipped)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name!r} event from the load generator in time")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                raise RuntimeError(
                    f"load generator exited ({self.proc.returncode}) before {name!r}; "
                    f"see {self._err.name}"
                )
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("event") == name:
                    return dict(record)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._procs.stop(self.proc)
        self._err.close()


# -- targets ---------------------------------------------------------------------------


@dataclass
class Env:
    """What every target needs: the backend's ports, TLS files, a work dir."""

    procs: Procs
    work: Path
    backend_ports: dict[str, int]
    backend_pid: int
    tls: Any
    nofile: int
    nginx: str | None
    haproxy: str | None


@dataclass
class Running:
    url: str  # ws://127.0.0.1:PORT or wss://...
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM


@dataclass
class Target:
    name: str
    description: str
    secure: bool
    start: Callable[[Env, str, bool], Running]
    #: Which target its ratios are taken against besides nginx and direct.
    peer: str | None = None
    memory: bool = True
    #: The scenario modes it runs in (None: all); a tuned row that changes
    #: nothing in the other modes skips them.
    modes: frozenset[str] | None = None

    def runs(self, mode: str) -> bool:
        return self.modes is None or mode in self.modes


def _start_direct(env: Env, mode: str, big: bool) -> Running:
    return Running(url=f"ws://127.0.0.1:{env.backend_ports[mode]}", pid=None)


def _nginx_conf(env: Env, port: int, backend: int, secure: bool, d: Path) -> str:
    ssl = " ssl" if secure else ""
    tls = (
        f"        ssl_certificate {env.tls.cert};\n        ssl_certificate_key {env.tls.key};\n"
        if secure
        else ""
    )
    return f"""# Generated by benchmarks/run.py: Debian's nginx, one worker, a WebSocket proxy.
worker_processes 1;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {env.nofile};
events {{
    # Past 15/16 of worker_connections in use, nginx starts closing
    # connections it may reuse: leave headroom above the fd limit.
    worker_connections {2 * env.nofile};
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
{tls}        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def _start_nginx(secure: bool) -> Callable[[Env, str, bool], Running]:
    def start(env: Env, mode: str, big: bool) -> Running:
        assert env.nginx is not None
        port = free_port()
        d = Path(tempfile.mkdtemp(prefix="nginx-", dir=env.work))
        conf = d / "nginx.conf"
        conf.write_text(_nginx_conf(env, port, env.backend_ports[mode], secure, d))
        proc = env.procs.start(
            [env.nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
            PROXY_CPU,
            env.nofile,
            stdout=subprocess.DEVNULL,
            stderr=open(d / "stderr.log", "wb"),  # noqa: SIM115
        )
        wait_for_port(port, proc)
        scheme = "wss" if secure else "ws"
        return Running(f"{scheme}://127.0.0.1:{port}", proc.pid, proc, signal.SIGTERM)

    return start


def _start_haproxy(env: Env, mode: str, big: bool) -> Running:
    assert env.haproxy is not None
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="haproxy-", dir=env.work))
    conf = d / "haproxy.cfg"
    # Each proxied connection holds two sockets; leave room for the listener.
    maxconn = (env.nofile - 100) // 2
    conf.write_text(
        f"""# Generated by benchmarks/run.py: one thread, HTTP mode (WebSocket upgrade).
global
    nbthread 1
    maxconn {maxconn}
defaults
    mode http
    timeout connect 10s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server backend 127.0.0.1:{env.backend_ports[mode]}
"""
    )
    proc = env.procs.start(
        [env.haproxy, "-db", "-f", str(conf)],
        PROXY_CPU,
        env.nofile,
        stdout=subprocess.DEVNULL,
        stderr=open(d / "stderr.log", "wb"),  # noqa: SIM115
    )
    wait_for_port(port, proc)
    return Running(f"ws://127.0.0.1:{port}", proc.pid, proc, signal.SIGTERM)


#: The deflate policy of the tuned "wsgate-deflate-both" row on both legs
#: (--wsgate-deflate).
WSGATE_DEFLATE = ["on"]


def _deflate_both() -> list[str]:
    return ["--client-deflate", WSGATE_DEFLATE[0], "--backend-deflate", WSGATE_DEFLATE[0]]


def _start_wsgate(
    secure: bool,
    tuning: Callable[[], list[str]] = list,
    workers: int = 1,
    pinned: bool = True,
) -> Callable[[Env, str, bool], Running]:
    """wsgate as shipped (no flags but its listener and backend, one process
    on the proxy's CPU), plus ``tuning()``'s flags for a named tuned row,
    and/or ``--workers`` and unpinned (the kernel spreads its processes over
    both CPUs)."""

    def start(env: Env, mode: str, big: bool) -> Running:
        from wsgate.testing import Wsgate

        port = free_port()
        if secure:
            listen = (
                f"ssl:{port}:interface=127.0.0.1:privateKey={env.tls.key}:certKey={env.tls.cert}"
            )
        else:
            listen = f"tcp:{port}:interface=127.0.0.1"
        if mode == "vnc":
            # A raw stream backend, websockify style.
            backend = f"tcp:127.0.0.1:{env.backend_ports['tcp']}"
        else:
            backend = f"ws://127.0.0.1:{env.backend_ports[mode]}"
        args = ["--listen", listen, "--backend", backend]
        args += tuning()
        if big:  # the one setting a scenario needs: 256 MiB is over the default limit
            args += ["--max-message-size", "0"]
        if workers != 1:
            args += ["--workers", str(workers)]
        log = Path(tempfile.mkstemp(prefix="wsgate-", suffix=".log", dir=env.work)[1])
        env_vars = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = env.procs.start(
            Wsgate(*args).command(),
            PROXY_CPU if pinned else None,
            env.nofile,
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env_vars,
        )
        wait_for_port(port, proc)
        deadline = time.monotonic() + 60
        while workers != 1 and "workers: " not in log.read_text(errors="replace"):
            # The supervisor's socket listens before its workers have started.
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"wsgate --workers {workers} did not start: see {log}")
            time.sleep(0.05)
        scheme = "wss" if secure else "ws"
        return Running(f"{scheme}://127.0.0.1:{port}", proc.pid, proc, signal.SIGTERM)

    return start


TARGETS = [
    Target(
        "direct",
        "no proxy: the load generator talks to the backend",
        False,
        _start_direct,
        memory=False,
    ),
    Target("nginx", "nginx 1 worker, ws", False, _start_nginx(False)),
    Target("nginx-tls", "nginx 1 worker, wss", True, _start_nginx(True)),
    Target("haproxy", "HAProxy 1 thread, ws", False, _start_haproxy),
    Target("wsgate", "wsgate as shipped (no flags), ws", False, _start_wsgate(False),
           peer="nginx"),
    Target("wsgate-tls", "wsgate as shipped (no flags), wss", True, _start_wsgate(True),
           peer="nginx-tls"),
    Target("wsgate-deflate-both",
           "wsgate tuned: --client-deflate/--backend-deflate POLICY (default on), so the "
           "backend leg compresses too, as it does end to end through nginx; deflate "
           "scenarios only",
           False, _start_wsgate(False, _deflate_both), peer="wsgate",
           modes=frozenset({"deflate"})),
    # Scaling (tuned rows: --workers is not the default). Unpinned, so the
    # proxy's processes share both CPUs with the load generator and backend.
    Target(
        "wsgate-1u",
        "wsgate, ws, 1 process, unpinned",
        False,
        _start_wsgate(False, pinned=False),
        peer="nginx",
        memory=False,
    ),
    Target(
        "wsgate-w2",
        "wsgate --workers 2 (tuned), ws, unpinned",
        False,
        _start_wsgate(False, workers=2, pinned=False),
        peer="wsgate-1u",
        memory=False,
    ),
]  # fmt: skip

# -- scenarios -----------------------------------------------------------------------------


@dataclass
class Settings:
    warmup: float
    duration: float
    idle_conns: int
    idle_conns_tls: int
    huge_size: int
    huge_rate: int
    handshake_concurrency: int
    idle_concurrency: int


@dataclass
class Scenario:
    key: str
    title: str
    mode: str  # which backend port: plain or deflate
    #: Needs a fresh proxy process (memory figures), not a shared one.
    fresh: bool
    run: Callable[[Env, Running, Settings, Path], dict[str, Any]]
    #: Runs only in the first N rounds (memory scenarios: little noise, slow).
    memory: bool = False
    big: bool = False


def _client_args(run: Running, env: Env) -> list[str]:
    return ["--ca", str(env.tls.ca_cert)] if run.url.startswith("wss:") else []


def _timed(
    env: Env, run: Running, s: Settings, log: Path, args: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A timed client mode: snapshots at its start and end events."""
    c = Client(env.procs, args + _client_args(run, env), env.nofile, log)
    deadline = time.monotonic() + s.warmup + s.duration + 60
    try:
        c.event("start", deadline)
        a = snapshot(run.pid, env.backend_pid)
        end = c.event("end", deadline)
        b = snapshot(run.pid, env.backend_pid)
        c.event("exit", deadline)
    finally:
        c.finish()
    return end, window(a, b, run.pid is not None)


def _rtt(conns: int, size: int, payload: str, deflate: bool) -> Callable[..., dict[str, Any]]:
    def run_(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
        args = ["rtt", "--url", run.url + "/echo", "--conns", str(conns), "--size", str(size)]
        args += ["--payload", payload, "--warmup", str(s.warmup), "--duration", str(s.duration)]
        if deflate:
            args.append("--deflate")
        end, w = _timed(env, run, s, log, args)
        out = {k: end[k] for k in ("msg_per_s", "p50_us", "p99_us", "messages", "errors")}
        out.update(w, client_cpu_pct=end["client_cpu_pct"], extensions=end["extensions"])
        if end["messages"]:
            # The backend's share too: behind nginx a compressing backend
            # runs zlib for both directions, behind wsgate (compression
            # offload) the proxy does.
            backend_s = w["backend_cpu_pct"] / 100 * w["window_s"]
            out["backend_cpu_us_per_msg"] = 1e6 * backend_s / end["messages"]
            proxy_s = w.get("proxy_cpu_s", 0.0)
            out["system_cpu_us_per_msg"] = 1e6 * (proxy_s + backend_s) / end["messages"]
            if "proxy_cpu_s" in w:
                out["proxy_cpu_us_per_msg"] = 1e6 * proxy_s / end["messages"]
        return out

    return run_


def _stream(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
    args = ["stream", "--url", f"{run.url}/stream?size={MIB}"]
    args += ["--warmup", str(s.warmup), "--duration", str(s.duration)]
    end, w = _timed(env, run, s, log, args)
    out = {k: end[k] for k in ("mb_per_s", "msg_per_s", "payload_bytes")}
    out.update(w, client_cpu_pct=end["client_cpu_pct"])
    if "proxy_cpu_s" in w and end["payload_bytes"]:
        out["proxy_cpu_us_per_mb"] = 1e6 * w["proxy_cpu_s"] / (end["payload_bytes"] / 1e6)
    return out


def _vnc(deflate: bool) -> Callable[..., dict[str, Any]]:
    """Random 64 KiB binary messages to one client, as a VNC server's
    compressed framebuffer updates: wsgate reads them from a raw TCP source,
    the other targets from the WebSocket backend's /stream."""

    def run_(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
        args = ["stream", "--url", f"{run.url}/stream?size={64 * 1024}"]
        args += ["--warmup", str(s.warmup), "--duration", str(s.duration)]
        if deflate:
            args.append("--deflate")
        end, w = _timed(env, run, s, log, args)
        out = {k: end[k] for k in ("mb_per_s", "msg_per_s", "payload_bytes", "extensions")}
        out.update(w, client_cpu_pct=end["client_cpu_pct"])
        if "proxy_cpu_s" in w and end["payload_bytes"]:
            out["proxy_cpu_us_per_mb"] = 1e6 * w["proxy_cpu_s"] / (end["payload_bytes"] / 1e6)
        return out

    return run_


def _handshake(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
    args = ["handshake", "--url", run.url + "/echo"]
    args += ["--concurrency", str(s.handshake_concurrency)]
    args += ["--warmup", str(s.warmup), "--duration", str(s.duration)]
    end, w = _timed(env, run, s, log, args)
    out = {k: end[k] for k in ("per_s", "p50_us", "p99_us", "handshakes", "errors", "first_error")}
    out.update(w, client_cpu_pct=end["client_cpu_pct"])
    if "proxy_cpu_s" in w and end["closed"]:
        # Per connection: its handshake and its close.
        out["proxy_cpu_us_per_conn"] = 1e6 * w["proxy_cpu_s"] / end["closed"]
    return out


def _idle(deflate: bool) -> Callable[..., dict[str, Any]]:
    def run_(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
        # TLS handshakes are slow to make by the thousand; KiB/conn does not
        # need as many.
        n = min(s.idle_conns, s.idle_conns_tls) if run.url.startswith("wss:") else s.idle_conns
        args = ["idle", "--url", run.url + "/echo", "--conns", str(n)]
        args += ["--concurrency", str(s.idle_concurrency), "--deadline", "600"]
        if deflate:
            args.append("--deflate")
        c = Client(env.procs, args + _client_args(run, env), env.nofile, log)
        deadline = time.monotonic() + 540
        try:
            c.event("warm", deadline)
            time.sleep(1.0)
            a = snapshot(run.pid, env.backend_pid)
            c.send("go")
            opened = c.event("open", deadline)
            # Let the proxy settle (deferred frees, timers; wsgate drops an idle
            # leg's zlib states 2-4 s after its last message and hands the
            # memory back within 10 s).
            time.sleep(12.0)
            b = snapshot(run.pid, env.backend_pid)
            c.send("close")
            c.event("closed", deadline)
        finally:
            c.finish()
        n = opened["opened"]
        out: dict[str, Any] = {
            "conns": n,
            "errors": opened["errors"],
            "first_error": opened["first_error"],
            "open_per_s": opened["per_s"],
            "extensions": opened["extensions"],
            "rss_before_kib": a.proxy_rss_kib,
            "rss_after_kib": b.proxy_rss_kib,
        }
        if run.pid is not None and n:
            out["kib_per_conn"] = (b.proxy_rss_kib - a.proxy_rss_kib) / n
            out["proxy_cpu_us_per_open"] = 1e6 * (b.proxy_cpu - a.proxy_cpu) / n
        return out

    return run_


def _huge(env: Env, run: Running, s: Settings, log: Path) -> dict[str, Any]:
    url = f"{run.url}/huge?size={s.huge_size}&frag={MIB}"
    args = ["huge", "--url", url, "--rate", str(s.huge_rate), "--deadline", "300"]
    c = Client(env.procs, args + _client_args(run, env), env.nofile, log)
    deadline = time.monotonic() + 280
    try:
        c.event("connected", deadline)
        time.sleep(0.5)
        a = snapshot(run.pid, env.backend_pid)
        c.send("go")
        end = c.event("end", deadline)
        b = snapshot(run.pid, env.backend_pid)
    finally:
        c.finish()
    growth = sum(max(0, hwm - a.proxy_hwm_kib.get(pid, 0)) for pid, hwm in b.proxy_hwm_kib.items())
    out = {
        "bytes": end["payload_bytes"],
        "seconds": end["seconds"],
        "mb_per_s": end["mb_per_s"],
        "peak_rss_growth_kib": growth,
        "hwm_before_kib": sum(a.proxy_hwm_kib.values()),
        "hwm_after_kib": sum(b.proxy_hwm_kib.values()),
    }
    return out


_RTT1K = "1 KiB compressible text round trips, client and backend offer deflate"
SCENARIOS = [
    Scenario("rtt64_1", "64 B text round trips, 1 connection", "plain", False,
             _rtt(1, 64, "text", False)),
    Scenario("rtt64_50", "64 B text round trips, 50 connections", "plain", False,
             _rtt(50, 64, "text", False)),
    Scenario("stream1m", "1 MiB binary messages, backend to client", "plain", False, _stream),
    Scenario("handshake", "connections opened and closed, 8 at a time", "plain", False,
             _handshake),
    Scenario("vnc64k", "random 64 KiB binary messages from a TCP backend (VNC), no deflate offer",
             "vnc", False, _vnc(False)),
    Scenario("vnc64k_deflate", "the same, the client offering permessage-deflate", "vnc", False,
             _vnc(True)),
    Scenario("rtt1k_deflate_1", _RTT1K + ", 1 connection", "deflate", False,
             _rtt(1, 1024, "compressible", True)),
    Scenario("rtt1k_deflate_10", _RTT1K + ", 10 connections", "deflate", False,
             _rtt(10, 1024, "compressible", True)),
    Scenario("rtt1k_deflate_50", _RTT1K + ", 50 connections", "deflate", False,
             _rtt(50, 1024, "compressible", True)),
    Scenario("idle_plain", "idle connections, no deflate", "plain", True, _idle(False),
             memory=True),
    Scenario("idle_deflate", "idle connections, client and backend offer deflate", "deflate", True,
             _idle(True), memory=True),
    Scenario("huge256", "one 256 MiB message to a slow reader", "plain", True, _huge,
             memory=True, big=True),
]  # fmt: skip

# -- the run -------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _ensure_node_modules() -> None:
    stamp = NODE_DIR / "node_modules" / ".installed"
    lock = NODE_DIR / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    _log("installing the load generator's packages (npm ci in benchmarks/node)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    stamp.touch()


def _raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _short(res: dict[str, Any], key: str) -> str:
    bits = []
    for k in (
        "msg_per_s",
        "mb_per_s",
        "per_s",
        "p50_us",
        "proxy_cpu_us_per_msg",
        "proxy_cpu_us_per_mb",
        "proxy_cpu_us_per_conn",
        "kib_per_conn",
        "peak_rss_growth_kib",
        "proxy_cpu_pct",
        "cpu1_other_pct",
        "client_cpu_pct",
        "backend_cpu_pct",
        "errors",
    ):
        v = res.get(k)
        if isinstance(v, int | float):
            bits.append(f"{k}={v:.4g}")
    return " ".join(bits)


@contextlib.contextmanager
def _backend(procs: Procs, work: Path, nofile: int) -> Iterator[tuple[dict[str, int], int]]:
    c = Client(procs, ["backend"], nofile, work / "backend.log")
    try:
        ready = c.event("listening", time.monotonic() + 30)
        # "vnc": the WebSocket port (/stream) for proxies that cannot reach a
        # raw stream; wsgate reaches the raw "tcp" source itself.
        ports = {"plain": ready["plain"], "deflate": ready["deflate"], "vnc": ready["plain"]}
        yield {**ports, "tcp": ready["tcp"]}, c.proc.pid
    finally:
        procs.stop(c.proc)


def run_all(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from wsgate.testing import make_tls_files

    nofile = _raise_nofile()
    # Each idle connection costs the proxy two descriptors; leave room for
    # connections still closing from the warm-up, logs and listeners.
    idle_cap = (nofile - 1000) // 2
    if settings.idle_conns > idle_cap:
        _log(f"fd limit {nofile}: idle connections capped at {idle_cap}")
        settings.idle_conns = idle_cap
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    wanted = set(args.targets.split(",")) if args.targets else None
    targets = [
        t
        for t in TARGETS
        if (wanted is None or t.name in wanted)
        and (not t.name.startswith("nginx") or nginx)
        and (t.name != "haproxy" or haproxy)
    ]
    if wanted is None and not haproxy:
        _log("haproxy not installed: skipped (apt-get install haproxy to include it)")
    keys = set(args.scenarios.split(",")) if args.scenarios else None
    scenarios = [s for s in SCENARIOS if keys is None or s.key in keys]
    _ensure_node_modules()

    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_before": _loadavg(),
        "uptime_before": _version(["uptime"]),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "nginx": _version([nginx, "-v"]) if nginx else None,
        "haproxy": _version([haproxy, "-v"]) if haproxy else None,
        "wsgate": _version([sys.executable, "-c", "import wsgate; print(wsgate.__version__)"]),
        "twisted": _version([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "autobahn": _version(
            [sys.executable, "-c", "import autobahn; print(autobahn.__version__)"]
        ),
        "git": _version(["git", "-C", str(HERE), "describe", "--always", "--dirty"]),
        "nofile": nofile,
        "pinning": f"load generator and backend on CPU {LOADGEN_CPU}, proxy on CPU {PROXY_CPU}",
        "nice": NICE,
    }
    _log(f"load average before: {meta['loadavg_before']}")
    procs = Procs()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        t.name: {s.key: [] for s in scenarios} for t in targets
    }
    work = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
    try:
        tls = make_tls_files(work / "tls")
        with _backend(procs, work, nofile) as (ports, backend_pid):
            env = Env(procs, work, ports, backend_pid, tls, nofile, nginx, haproxy)
            logs = work / "clients.log"
            shared = [s for s in scenarios if not s.fresh]
            fresh = [s for s in scenarios if s.fresh]
            for rnd in range(args.rounds):
                k = rnd % len(targets)
                order = targets[k:] + targets[:k]
                _log(f"round {rnd + 1}/{args.rounds}: {', '.join(t.name for t in order)}")
                running: dict[tuple[str, str], Running] = {}
                try:
                    for t in order:
                        for mode in sorted({s.mode for s in shared if t.runs(s.mode)}):
                            running[(t.name, mode)] = t.start(env, mode, False)
                    for s in shared:
                        for t in order:
                            if not t.runs(s.mode):
                                continue
                            res = _measure(s, env, running[(t.name, s.mode)], settings, logs)
                            res["round"] = rnd + 1
                            results[t.name][s.key].append(res)
                            _log(f"  {s.key:18} {t.name:11} {_short(res, s.key)}")
                finally:
                    for run in running.values():
                        if run.proc is not None:
                            procs.stop(run.proc, run.stop_signal)
                if rnd >= args.memory_rounds:
                    continue
                for s in fresh:
                    for t in order:
                        if not t.memory or not t.runs(s.mode):
                            continue
                        run = t.start(env, s.mode, s.big)
                        try:
                            res = _measure(s, env, run, settings, logs)
                        finally:
                            if run.proc is not None:
                                procs.stop(run.proc, run.stop_signal)
                        res["round"] = rnd + 1
                        results[t.name][s.key].append(res)
                        _log(f"  {s.key:18} {t.name:11} {_short(res, s.key)}")
    finally:
        procs.stop_all()
        if args.keep:
            _log(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    meta["loadavg_after"] = _loadavg()
    meta["uptime_after"] = _version(["uptime"])
    meta["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _log(f"load average after: {meta['loadavg_after']}")
    return {
        "meta": meta,
        "settings": {
            **vars(settings),
            "rounds": args.rounds,
            "memory_rounds": args.memory_rounds,
            "wsgate_deflate": WSGATE_DEFLATE[0],
        },
        "targets": {t.name: t.description for t in targets},
        "scenarios": {s.key: s.title for s in scenarios},
        "results": results,
    }


def _measure(s: Scenario, env: Env, run: Running, settings: Settings, log: Path) -> dict[str, Any]:
    try:
        return s.run(env, run, settings, log)
    except Exception as exc:  # one failed measurement must not end the run
        _log(f"  {s.key}: failed: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- the report -------------------------------------------------------------------------------

#: metric -> (label, better: "high" | "low" | None, format)
METRICS: dict[str, tuple[str, str | None, str]] = {
    "msg_per_s": ("msg/s", "high", ",.0f"),
    "mb_per_s": ("MB/s", "high", ",.0f"),
    "per_s": ("handshakes/s", "high", ",.0f"),
    "p50_us": ("p50 µs", "low", ",.0f"),
    "p99_us": ("p99 µs", "low", ",.0f"),
    "proxy_cpu_us_per_msg": ("proxy CPU µs/msg", "low", ",.1f"),
    "backend_cpu_us_per_msg": ("backend CPU µs/msg", "low", ",.1f"),
    "system_cpu_us_per_msg": ("proxy + backend CPU µs/msg", "low", ",.1f"),
    "proxy_cpu_us_per_mb": ("proxy CPU µs/MB", "low", ",.0f"),
    "proxy_cpu_us_per_conn": ("proxy CPU µs/conn", "low", ",.0f"),
    "proxy_cpu_pct": ("proxy CPU %", None, ".0f"),
    "proxy_sys_share_pct": ("kernel share of proxy CPU %", None, ".0f"),
    "cpu1_other_pct": ("other load on CPU 1 %", None, ".0f"),
    "cpu0_busy_pct": ("CPU 0 busy %", None, ".0f"),
    "kib_per_conn": ("KiB/conn", "low", ",.1f"),
    "conns": ("connections", None, ",.0f"),
    "open_per_s": ("opened/s", "high", ",.0f"),
    "peak_rss_growth_kib": ("peak RSS growth KiB", "low", ",.0f"),
}

#: The 1 KiB deflate scenarios' columns (and charted ones): the backend's CPU
#: too, as the proxy's and backend's together.
_RTT1K_COLUMNS = (
    [
        "msg_per_s",
        "p50_us",
        "p99_us",
        "proxy_cpu_us_per_msg",
        "backend_cpu_us_per_msg",
        "system_cpu_us_per_msg",
        "proxy_cpu_pct",
        "proxy_sys_share_pct",
    ],
    ["msg_per_s", "proxy_cpu_us_per_msg", "system_cpu_us_per_msg"],
)

#: scenario -> metrics shown, and which of them get ratio columns.
TABLES: dict[str, tuple[list[str], list[str]]] = {
    "rtt64_1": (
        [
            "msg_per_s",
            "p50_us",
            "p99_us",
            "proxy_cpu_us_per_msg",
            "proxy_cpu_pct",
            "proxy_sys_share_pct",
        ],
        ["msg_per_s", "proxy_cpu_us_per_msg"],
    ),
    "rtt64_50": (
        [
            "msg_per_s",
            "p50_us",
            "p99_us",
            "proxy_cpu_us_per_msg",
            "proxy_cpu_pct",
            "proxy_sys_share_pct",
        ],
        ["msg_per_s", "proxy_cpu_us_per_msg"],
    ),
    "rtt1k_deflate_1": _RTT1K_COLUMNS,
    "rtt1k_deflate_10": _RTT1K_COLUMNS,
    "rtt1k_deflate_50": _RTT1K_COLUMNS,
    "stream1m": (
        ["mb_per_s", "proxy_cpu_pct", "proxy_cpu_us_per_mb", "proxy_sys_share_pct"],
        ["mb_per_s"],
    ),
    "vnc64k": (
        ["mb_per_s", "proxy_cpu_pct", "proxy_cpu_us_per_mb", "proxy_sys_share_pct"],
        ["mb_per_s", "proxy_cpu_us_per_mb"],
    ),
    "vnc64k_deflate": (
        ["mb_per_s", "proxy_cpu_pct", "proxy_cpu_us_per_mb", "proxy_sys_share_pct"],
        ["mb_per_s", "proxy_cpu_us_per_mb"],
    ),
    "handshake": (
        ["per_s", "p50_us", "proxy_cpu_us_per_conn", "proxy_cpu_pct", "proxy_sys_share_pct"],
        ["per_s", "proxy_cpu_us_per_conn"],
    ),
    "idle_plain": (["kib_per_conn", "conns", "open_per_s"], ["kib_per_conn"]),
    "idle_deflate": (["kib_per_conn", "conns", "open_per_s"], ["kib_per_conn"]),
    "huge256": (["peak_rss_growth_kib", "mb_per_s"], []),
}


def summarize(values: list[float], better: str | None) -> dict[str, Any]:
    best = max(values) if better == "high" else min(values) if better == "low" else None
    if best is None:
        best = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "best": best,
        "min": lo,
        "max": hi,
        "median": statistics.median(values),
        "n": len(values),
        "spread_pct": 100 * (hi - lo) / best if best else 0.0,
    }


def build_summary(data: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for target, per in data["results"].items():
        for key, rounds in per.items():
            good = [r for r in rounds if "error" not in r]
            for metric, (_, better, _) in METRICS.items():
                vals = [r[metric] for r in good if isinstance(r.get(metric), int | float)]
                if vals:
                    summary.setdefault(target, {}).setdefault(key, {})[metric] = summarize(
                        vals, better
                    )
            errors = [r["error"] for r in rounds if "error" in r]
            if errors:
                summary.setdefault(target, {}).setdefault(key, {})["failed"] = errors
    return summary


def _best(summary: dict[str, Any], target: str, key: str, metric: str) -> float | None:
    v = summary.get(target, {}).get(key, {}).get(metric)
    return None if v is None else float(v["best"])


def reference_of(target: str, data: dict[str, Any]) -> str:
    """nginx for plain targets, nginx-tls for TLS ones (when it ran)."""
    if target.endswith("-tls") and "nginx-tls" in data["results"]:
        return "nginx-tls"
    return "nginx"


def build_ratios(data: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for target in data["results"]:
        for key, (_, ratio_metrics) in TABLES.items():
            for metric in ratio_metrics:
                v = _best(summary, target, key, metric)
                if v is None:
                    continue
                for ref in (reference_of(target, data), "direct"):
                    r = _best(summary, ref, key, metric)
                    if r:
                        ratios.setdefault(target, {}).setdefault(key, {})[f"{metric}/{ref}"] = v / r
    return ratios


#: The issue's targets: (name, scenario, metric, compare, limit, description)
GOALS = [
    ("rtt64_50", "proxy_cpu_us_per_msg", "ref", 2.0,
     "64 B round trips, 50 conns: proxy CPU us/msg <= 2x nginx"),
    ("rtt1k_deflate_10", "proxy_cpu_us_per_msg", "ref", 2.0,
     "1 KiB deflate round trips, 10 conns: proxy CPU us/msg <= 2x nginx"),
    ("rtt1k_deflate_50", "proxy_cpu_us_per_msg", "ref", 2.0,
     "1 KiB deflate round trips, 50 conns: proxy CPU us/msg <= 2x nginx"),
    ("stream1m", "mb_per_s", "ref_min", 1.0, "1 MiB messages: MB/s >= nginx"),
    ("handshake", "proxy_cpu_us_per_conn", "ref", 3.0,
     "handshakes: proxy CPU per connection <= 3x nginx"),
    ("idle_plain", "kib_per_conn", "ref", 1.0, "idle, no deflate: KiB/conn <= nginx"),
    ("idle_deflate", "kib_per_conn", "self_plain", 2.0,
     "idle, deflate: KiB/conn <= 2x its no-deflate figure"),
    ("huge256", "peak_rss_growth_kib", "abs", 16 * 1024,
     "256 MiB to a slow reader: peak RSS growth < 16 MiB"),
]  # fmt: skip


def build_goals(data: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for target in ("wsgate", "wsgate-tls"):
        if target not in data["results"]:
            continue
        ref = reference_of(target, data)
        for key, metric, how, limit, text in GOALS:
            v = _best(summary, target, key, metric)
            if how == "abs":
                base, ratio = None, None
                met = v is not None and v < limit
            else:
                base = (
                    _best(summary, target, "idle_plain", metric)
                    if how == "self_plain"
                    else _best(summary, ref, key, metric)
                )
                ratio = v / base if v is not None and base else None
                if ratio is None:
                    met = None
                elif how == "ref_min":
                    met = ratio >= limit
                else:
                    met = ratio <= limit
            goals.append(
                {
                    "target": target,
                    "goal": text,
                    "scenario": key,
                    "metric": metric,
                    "value": v,
                    "reference": {
                        "ref": ref,
                        "ref_min": ref,
                        "self_plain": f"{target} no deflate",
                    }.get(how),
                    "reference_value": base,
                    "ratio": ratio,
                    "limit": limit,
                    "met": met,
                }
            )
    return goals


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(data: dict[str, Any]) -> str:
    summary, meta, settings = data["summary"], data["meta"], data["settings"]
    out = ["# wsgate benchmarks", ""]
    out.append(
        f"Run {meta['started']} to {meta['finished']} (git {meta['git']}); "
        f"{meta['cpus']} CPUs, kernel {meta['kernel']}; {meta['pinning']}"
        f"{'' if not meta.get('nice') else ', niceness ' + str(meta['nice'])}. "
        f"Load average before {meta['loadavg_before']}, after {meta['loadavg_after']}."
    )
    out.append("")
    out.append(
        f"Versions: wsgate {meta['wsgate']} (Twisted {meta['twisted']}, Autobahn "
        f"{meta['autobahn']}, Python {meta['python']}), {meta['nginx']}, "
        f"{meta['haproxy'] or 'no HAProxy'}, Node {meta['node']}."
    )
    out.append("")
    out.append(
        f"{settings['rounds']} round(s) of {settings['duration']} s windows after "
        f"{settings['warmup']} s warm-up; memory scenarios in {settings['memory_rounds']} "
        f"round(s); {settings['idle_conns']:,} idle connections, {settings['idle_conns_tls']:,}"
        f" for TLS targets (fd limit {meta['nofile']:,})."
        " Each cell: the best round, then ± half the range (max - min) over the rounds,"
        " as a share of the best."
        " Ratios compare best figures; TLS targets are compared with nginx-tls."
        " A round trip is one message to the backend and its echo; µs/msg is proxy"
        " CPU (user + system, all threads) per round trip."
        " `wsgate` runs as shipped (no flags: the client leg compresses when the client"
        " offers, the backend leg does not); `wsgate-deflate-both` is a tuned row:"
        f" `--client-deflate {settings.get('wsgate_deflate', 'on')}"
        f" --backend-deflate {settings.get('wsgate_deflate', 'on')}`."
    )
    out.append("")
    goals = data["goals"]
    if goals:
        out += ["## Targets (issue #6)", ""]
        out.append("| target | goal | value | reference | ratio | met |")
        out.append("|---|---|---:|---:|---:|:--:|")
        for g in goals:
            spec = METRICS[g["metric"]][2]
            ref = (
                f"{_fmt(g['reference_value'], spec)} ({g['reference']})"
                if g["reference"]
                else f"< {g['limit'] / 1024:.0f} MiB"
            )
            ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
            met = {True: "yes", False: "**no**", None: "?"}[g["met"]]
            value = _fmt(g["value"], spec)
            out.append(f"| {g['target']} | {g['goal']} | {value} | {ref} | {ratio} | {met} |")
        out.append("")
    for key, title in data["scenarios"].items():
        metrics, ratio_metrics = TABLES[key]
        out += [f"## {title} (`{key}`)", ""]
        # Ratio columns: to nginx (nginx-tls for TLS targets), and to direct
        # where direct has the figure at all (it has no proxy CPU or memory).
        refs = {
            m: ["nginx"] + (["direct"] if _best(summary, "direct", key, m) is not None else [])
            for m in ratio_metrics
        }
        windowed = any("cpu1_other_pct" in summary.get(t, {}).get(key, {}) for t in summary)
        head = ["target"]
        for m in metrics:
            head.append(METRICS[m][0])
            head += [f"x {name}" for name in refs.get(m, [])]
        if windowed:
            head.append("other load on CPU 1 %")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" + "---:|" * (len(head) - 1))
        for target in data["results"]:
            cell = summary.get(target, {}).get(key)
            if not cell:
                continue
            row = [target]
            for m in metrics:
                s = cell.get(m)
                spec = METRICS[m][2]
                if s is None:
                    row.append("-")
                else:
                    spread = f" ±{s['spread_pct'] / 2:.0f}%" if s["n"] > 1 else ""
                    row.append(f"{format(s['best'], spec)}{spread}")
                r = data["ratios"].get(target, {}).get(key, {})
                for name in refs.get(m, []):
                    ref = reference_of(target, data) if name == "nginx" else name
                    v = r.get(f"{m}/{ref}")
                    row.append("-" if v is None else f"{v:.2f}")
            if windowed:
                other = cell.get("cpu1_other_pct")
                row.append("-" if other is None else f"{other['median']:.0f}")
            if cell.get("failed"):
                row[0] += f" ({len(cell['failed'])} failed)"
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += _scaling(data)
    return "\n".join(out)


def _scaling(data: dict[str, Any]) -> list[str]:
    """wsgate --workers 2 against one wsgate process, both unpinned."""
    summary = data["summary"]
    if "wsgate-w2" not in summary or "wsgate-1u" not in summary:
        return []
    out = [
        "## Scaling: `--workers 2` against 1 process, both unpinned",
        "",
        "The load generator, the backend and the proxy share the 2 CPUs, so this is "
        "what a second worker gains on a machine that is also busy with its clients, "
        "not a per-core figure.",
        "",
        "| scenario | figure | 1 process | 2 workers | x |",
        "|---|---|---:|---:|---:|",
    ]
    for key, (metrics, _) in TABLES.items():
        for metric in metrics:
            if METRICS[metric][1] is None:
                continue
            one = _best(summary, "wsgate-1u", key, metric)
            two = _best(summary, "wsgate-w2", key, metric)
            if one is None or two is None:
                continue
            spec = METRICS[metric][2]
            out.append(
                f"| {key} | {METRICS[metric][0]} | {format(one, spec)} | {format(two, spec)} "
                f"| {two / one:.2f} |"
            )
    out.append("")
    return out


COLORS = {
    "direct": "#999999",
    "nginx": "#2ca02c",
    "nginx-tls": "#98df8a",
    "haproxy": "#9467bd",
    "wsgate": "#1f77b4",
    "wsgate-tls": "#aec7e8",
    "wsgate-1u": "#ff7f0e",
    "wsgate-w2": "#d62728",
}


def render_charts(data: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib missing (pip install -r benchmarks/requirements.txt): no charts")
        return []
    summary = data["summary"]
    charts = {
        "throughput.png": (
            "Throughput (higher is better; whiskers: min-max over rounds)",
            [
                ("rtt64_1", "msg_per_s", "64 B, 1 conn: msg/s"),
                ("rtt64_50", "msg_per_s", "64 B, 50 conns: msg/s"),
                ("rtt1k_deflate_1", "msg_per_s", "1 KiB deflate, 1 conn: msg/s"),
                ("rtt1k_deflate_10", "msg_per_s", "1 KiB deflate, 10 conns: msg/s"),
                ("rtt1k_deflate_50", "msg_per_s", "1 KiB deflate, 50 conns: msg/s"),
                ("stream1m", "mb_per_s", "1 MiB messages: MB/s"),
                ("handshake", "per_s", "handshakes/s"),
            ],
        ),
        "proxy_cpu.png": (
            "Proxy CPU per operation (lower is better)",
            [
                ("rtt64_1", "proxy_cpu_us_per_msg", "64 B, 1 conn: µs/msg"),
                ("rtt64_50", "proxy_cpu_us_per_msg", "64 B, 50 conns: µs/msg"),
                ("rtt1k_deflate_1", "proxy_cpu_us_per_msg", "1 KiB deflate, 1 conn: µs/msg"),
                ("rtt1k_deflate_10", "proxy_cpu_us_per_msg", "1 KiB deflate, 10 conns: µs/msg"),
                ("rtt1k_deflate_50", "proxy_cpu_us_per_msg", "1 KiB deflate, 50 conns: µs/msg"),
                ("stream1m", "proxy_cpu_us_per_mb", "1 MiB messages: µs/MB"),
                ("handshake", "proxy_cpu_us_per_conn", "µs per connection"),
            ],
        ),
        "latency.png": (
            "Round-trip latency (lower is better)",
            [
                ("rtt64_1", "p50_us", "64 B, 1 conn: p50 µs"),
                ("rtt64_50", "p50_us", "64 B, 50 conns: p50 µs"),
                ("rtt1k_deflate_50", "p50_us", "1 KiB deflate, 50 conns: p50 µs"),
                ("rtt64_1", "p99_us", "64 B, 1 conn: p99 µs"),
                ("rtt64_50", "p99_us", "64 B, 50 conns: p99 µs"),
                ("rtt1k_deflate_50", "p99_us", "1 KiB deflate, 50 conns: p99 µs"),
            ],
        ),
        "memory.png": (
            "Proxy memory (lower is better)",
            [
                ("idle_plain", "kib_per_conn", "idle, no deflate: KiB/conn"),
                ("idle_deflate", "kib_per_conn", "idle, deflate: KiB/conn"),
                ("huge256", "peak_rss_growth_kib", "256 MiB, slow reader: peak RSS growth KiB"),
            ],
        ),
    }
    written = []
    for name, (title, panels) in charts.items():
        panels = [p for p in panels if p[0] in data["scenarios"]]
        if not panels:
            continue
        cols = 3
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax, (key, metric, label) in zip(axes.flat, panels, strict=False):
            names, best, lo, hi = [], [], [], []
            for target in data["results"]:
                s = summary.get(target, {}).get(key, {}).get(metric)
                if s is None:
                    continue
                names.append(target)
                best.append(s["best"])
                lo.append(s["best"] - s["min"])
                hi.append(s["max"] - s["best"])
            xs = range(len(names))
            ax.bar(xs, best, color=[COLORS.get(n, "#777777") for n in names])
            ax.errorbar(xs, best, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
            ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(label, fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            for x, v in zip(xs, best, strict=True):
                ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}", (x, v), ha="center",
                            va="bottom", fontsize=7)  # fmt: skip
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(data: dict[str, Any], out: Path) -> None:
    data["summary"] = build_summary(data)
    data["ratios"] = build_ratios(data, data["summary"])
    data["goals"] = build_goals(data, data["summary"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    md = render_markdown(data)
    charts = render_charts(data, out)
    if charts:
        md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in charts) + "\n"
    (out / "results.md").write_text(md)
    _log(f"wrote {out / 'results.md'}, {out / 'results.json'} and {len(charts)} chart(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="one round, short windows, fewer idle conns"
    )
    p.add_argument("--rounds", type=int, help="rounds of the timed scenarios (default 3; quick 1)")
    p.add_argument("--memory-rounds", type=int, default=1, help="rounds of the memory scenarios")
    p.add_argument("--duration", type=float, help="measured window, s (default 2.5; quick 1.5)")
    p.add_argument("--warmup", type=float, help="warm-up before each window, s (default 1)")
    p.add_argument("--idle-conns", type=int, help="idle connections (default 10000; quick 1000)")
    p.add_argument(
        "--idle-conns-tls", type=int, help="idle connections, TLS targets (default 2000; quick 500)"
    )
    p.add_argument(
        "--targets", help="comma-separated subset of: " + ", ".join(t.name for t in TARGETS)
    )
    p.add_argument(
        "--scenarios", help="comma-separated subset of: " + ", ".join(s.key for s in SCENARIOS)
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the proxies, backend and load generator (e.g. -5 on a busy machine)",
    )
    p.add_argument(
        "--wsgate-deflate",
        default="on",
        help="the wsgate-deflate-both row's deflate policy on both legs (default on; e.g. "
        "on,no_context_takeover); the wsgate row runs as shipped",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--report-only", action="store_true", help="re-render OUT/results.json")
    args = p.parse_args(argv)
    WSGATE_DEFLATE[0] = args.wsgate_deflate
    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
        report(data, args.out)
        return 0
    if len(os.sched_getaffinity(0)) < 2 or PROXY_CPU not in os.sched_getaffinity(0):
        p.error("needs two CPUs (0 and 1) to pin the load generator and the proxy apart")
    if shutil.which("node") is None:
        p.error("needs Node (node and npm) for the load generator")
    quick = args.quick
    global NICE
    NICE = args.nice
    args.rounds = args.rounds or (1 if quick else 3)
    args.memory_rounds = min(args.memory_rounds, args.rounds)
    settings = Settings(
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        duration=args.duration or (1.5 if quick else 2.5),
        idle_conns=args.idle_conns or (1000 if quick else 10000),
        idle_conns_tls=args.idle_conns_tls or (500 if quick else 2000),
        huge_size=256 * MIB,
        huge_rate=(128 if quick else 64) * MIB,
        handshake_concurrency=8,
        idle_concurrency=32,
    )
    # This process waits on /proc and pipes: keep it off the proxy's CPU.
    os.sched_setaffinity(0, {LOADGEN_CPU})
    # Stopped by a signal (even from a shell that ignores SIGINT in the
    # background), still stop every process started so far.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.monotonic()
    data = run_all(args, settings)
    data["meta"]["elapsed_s"] = round(time.monotonic() - start, 1)
    report(data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
