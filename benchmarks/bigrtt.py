#!/usr/bin/env python3
"""Big messages, one round trip at a time, in front of an Autobahn echo server.

    .venv/bin/python benchmarks/bigrtt.py [--rounds 3] [--count 300] [--warmup 30]

issue 13's latency target: 64 KiB and 128 KiB round trips through wsgate as
shipped, p90 <= 5 x direct p90 + 2 ms. Large messages are where Nagle's
algorithm against a delayed ACK, or a write that waits for a reactor turn,
shows up as tens of milliseconds; small-message benchmarks (run.py) never
see it.

The backend is an Autobahn (Twisted) echo server in its own process (this
file's ``echo`` mode), written as a user writes one: ``onMessage`` sends the
message back, options left at Autobahn's defaults, and it accepts
permessage-deflate when offered (as Autobahn's own compressed echo example
does). The client (``client`` mode, Python ``websockets``) sends one message,
waits for its echo, and sends the next; it reports its own CPU per round
trip, so its share of each figure is known. The client and the echo server
run on CPU 0, the proxy on CPU 1 (as in run.py). Targets: ``direct``,
``nginx`` (run.py's config) and ``wsgate`` as shipped (no flags but
``--listen`` and ``--backend``); ``wsgate-python`` (``WSGATE_NO_EXTENSIONS=1``,
Autobahn's frame parser) on request.

Scenarios: 64 KiB and 128 KiB random binary without compression, and 128
KiB JSON-like text with the client offering permessage-deflate as a browser
does. In that one, direct and nginx compress end to end (client and echo
server); wsgate as shipped compresses only the client's leg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (benchmarks/run.py, next to this file)

KIB = 1024


@dataclass(frozen=True)
class Scenario:
    key: str
    what: str
    size: int
    text: bool
    deflate: bool


SCENARIOS = [
    Scenario("bin64k", "64 KiB random binary", 64 * KIB, False, False),
    Scenario("bin128k", "128 KiB random binary", 128 * KIB, False, False),
    Scenario(
        "json128k_deflate",
        "128 KiB JSON-like text, client offers permessage-deflate",
        128 * KIB,
        True,
        True,
    ),
]
BY_KEY = {s.key: s for s in SCENARIOS}

# -- payloads -------------------------------------------------------------------

WORDS = [  # bench.js's vocabulary
    "alpha", "beta", "gamma", "delta", "status", "update", "price", "quantity", "order",
    "user", "account", "session", "message", "channel", "room", "token", "value", "event",
    "stream", "market", "open", "close", "high", "low", "volume", "timestamp", "sequence",
    "symbol", "bid", "ask", "level", "trade", "fill", "cancel", "accepted", "rejected",
    "pending", "ok", "error", "retry", "latency", "region", "primary", "replica",
]  # fmt: skip


def payloads(s: Scenario, count: int = 16, seed: int = 42) -> list[bytes]:
    """Distinct messages of exactly ``s.size`` bytes: random bytes, or
    JSON-like records from a small vocabulary (deflate shrinks them about 4x;
    the same shape as run.py's "compressible" payloads)."""
    rand = random.Random(seed)
    out = []
    for _ in range(count):
        if not s.text:
            out.append(rand.randbytes(s.size))
            continue
        parts, length, i = [], 0, 0
        while length < s.size:
            item = f'{{"k":"{rand.choice(WORDS)}","v":{rand.randrange(100000)},"i":{i}}},'
            parts.append(item)
            length += len(item)
            i += 1
        out.append(("[" + "".join(parts))[: s.size - 1].encode() + b"]")
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile (as bench.js computes it)."""
    i = min(len(sorted_values) - 1, max(0, -(-p * len(sorted_values) // 100) - 1))
    return sorted_values[int(i)]


# -- the echo server (its own process) ------------------------------------------------


def echo_server(port: int, nodelay: bool) -> None:
    """An Autobahn (Twisted) echo server as a user writes one."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    class Echo(WebSocketServerProtocol):
        def connectionMade(self) -> None:
            super().connectionMade()
            if nodelay:  # --echo-nodelay: what Autobahn's tcpNoDelay means to do
                transport: Any = self.transport
                transport.setTcpNoDelay(True)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    def accept(offers: list[Any]) -> Any:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer)
        return None

    factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = Echo
    factory.setProtocolOptions(perMessageCompressionAccept=accept)
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


# -- the client (its own process) -------------------------------------------------------


async def _client(url: str, s: Scenario, count: int, warmup: int, timeout: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    msgs = payloads(s)
    # A browser's offer: "permessage-deflate; client_max_window_bits", zlib's
    # default level and memory.
    extensions = [ClientPerMessageDeflateFactory()] if s.deflate else None
    async with connect(
        url,
        compression=None,
        extensions=extensions,
        max_size=None,
        ping_interval=None,
        open_timeout=timeout,
        close_timeout=timeout,
    ) as ws:
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
        samples: list[float] = []
        cpu = 0.0
        for i in range(warmup + count):
            if i == warmup:
                cpu = time.process_time()
            msg = msgs[i % len(msgs)]
            t0 = time.perf_counter_ns()
            await ws.send(msg, text=s.text)
            async with asyncio.timeout(timeout):
                reply = await ws.recv(decode=False)
            t1 = time.perf_counter_ns()
            if reply != msg:
                raise RuntimeError(f"round trip {i}: the echo differs ({len(reply)} bytes)")
            if i >= warmup:
                samples.append((t1 - t0) / 1e6)
        cpu = time.process_time() - cpu
    return {"samples_ms": samples, "client_cpu_ms": 1000 * cpu / count, "extensions": negotiated}


def client_main(args: argparse.Namespace) -> int:
    result = asyncio.run(
        _client(args.url, BY_KEY[args.scenario], args.count, args.warmup, args.timeout)
    )
    print(json.dumps(result))
    return 0


# -- targets -------------------------------------------------------------------------


@dataclass
class Env:
    procs: bench.Procs
    work: Path
    echo_port: int
    nofile: int
    nginx: str | None


@dataclass
class Running:
    url: str
    pid: int | None
    proc: subprocess.Popen[bytes] | None
    note: str = ""


def _start_direct(env: Env) -> Running:
    return Running(f"ws://127.0.0.1:{env.echo_port}", None, None)


def _start_nginx(env: Env) -> Running:
    assert env.nginx is not None
    port = bench.free_port()
    d = Path(tempfile.mkdtemp(prefix="nginx-", dir=env.work))
    conf = d / "nginx.conf"
    ns = SimpleNamespace(nofile=env.nofile, tls=None)
    conf.write_text(bench._nginx_conf(ns, port, env.echo_port, False, d))  # type: ignore[arg-type]
    proc = env.procs.start(
        [env.nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
        bench.PROXY_CPU,
        env.nofile,
        stdout=subprocess.DEVNULL,
        stderr=open(d / "stderr.log", "wb"),  # noqa: SIM115
    )
    bench.wait_for_port(port, proc)
    return Running(f"ws://127.0.0.1:{port}", proc.pid, proc)


def _start_wsgate(python_path: bool) -> Callable[[Env], Running]:
    def start(env: Env) -> Running:
        from wsgate.testing import Wsgate

        port = bench.free_port()
        args = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        args += ["--backend", f"ws://127.0.0.1:{env.echo_port}"]
        log = Path(tempfile.mkstemp(prefix="wsgate-", suffix=".log", dir=env.work)[1])
        env_vars = dict(os.environ, PYTHONUNBUFFERED="1")
        env_vars.pop("WSGATE_NO_EXTENSIONS", None)
        if python_path:
            env_vars["WSGATE_NO_EXTENSIONS"] = "1"
        proc = env.procs.start(
            Wsgate(*args).command(),
            bench.PROXY_CPU,
            env.nofile,
            # Not the source tree: the installed wsgate is what runs.
            cwd=env.work,
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env_vars,
        )
        bench.wait_for_port(port, proc)
        deadline = time.monotonic() + 10
        note = ""
        while not note and time.monotonic() < deadline:
            found = re.search(r"frame path: [^\n]*", log.read_text(errors="replace"))
            note = found.group(0) if found else ""
            if not note:
                time.sleep(0.05)
        return Running(f"ws://127.0.0.1:{port}", proc.pid, proc, note)

    return start


TARGETS: dict[str, tuple[str, Callable[[Env], Running]]] = {
    "direct": ("no proxy: the client talks to the echo server", _start_direct),
    "nginx": ("nginx 1 worker (run.py's config)", _start_nginx),
    "wsgate": ("wsgate as shipped (no flags)", _start_wsgate(False)),
    "wsgate-python": ("wsgate, WSGATE_NO_EXTENSIONS=1 (Autobahn's parser)", _start_wsgate(True)),
}
DEFAULT_TARGETS = ["direct", "nginx", "wsgate"]

# -- the run ---------------------------------------------------------------------------


def _measure(
    env: Env, run: Running, s: Scenario, args: argparse.Namespace, echo_pid: int
) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "client", "--url", run.url]
    argv += ["--scenario", s.key, "--count", str(args.count), "--warmup", str(args.warmup)]
    argv += ["--timeout", str(args.timeout)]
    pids = bench.process_tree(run.pid) if run.pid else []
    proxy0 = sum(cpu_ns(p) for p in pids)
    echo0 = cpu_ns(echo_pid)
    t0, cpu1 = time.monotonic(), bench.cpu_busy_seconds(bench.PROXY_CPU)
    client = env.procs.start(
        argv, bench.LOADGEN_CPU, env.nofile, cwd=env.work, stdout=subprocess.PIPE
    )
    try:
        out, _ = client.communicate(timeout=args.timeout * (args.count + args.warmup + 10))
    finally:
        env.procs.stop(client)
    if client.returncode != 0:
        raise RuntimeError(f"client failed ({client.returncode}) against {run.url}, {s.key}")
    res: dict[str, Any] = json.loads(out)
    # CPU per round trip, warm-up included (it is 10 % of the run).
    n = args.count + args.warmup
    res["proxy_cpu_ms"] = (sum(cpu_ns(p) for p in pids) - proxy0) / 1e6 / n
    res["echo_cpu_ms"] = (cpu_ns(echo_pid) - echo0) / 1e6 / n
    # What else ran on the proxy's CPU (other work on a shared machine): a
    # proxy that must wait for its CPU shows it in its latency, direct not.
    busy = bench.cpu_busy_seconds(bench.PROXY_CPU) - cpu1
    res["cpu1_other_pct"] = max(0.0, 100 * (busy - res["proxy_cpu_ms"] * n / 1000)) / (
        time.monotonic() - t0
    )
    return res


#: A round trip this long is a stall (a delayed ACK is 40 ms), not a slow path.
STALL_MS = 20.0


def _summary(samples: list[float]) -> dict[str, float]:
    v = sorted(samples)
    return {
        "p50": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "stalls_pct": 100 * sum(x > STALL_MS for x in v) / len(v),
    }


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (/proc schedstat: finer
    than the 10 ms ticks of /proc/PID/stat)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    nofile = bench._raise_nofile()
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    targets = args.targets.split(",") if args.targets else list(DEFAULT_TARGETS)
    if "nginx" in targets and nginx is None:
        bench._log("nginx not found (apt-get install nginx-light): skipped")
        targets.remove("nginx")
    scenarios = [BY_KEY[k] for k in args.scenarios.split(",")] if args.scenarios else SCENARIOS
    procs = bench.Procs()
    work = Path(tempfile.mkdtemp(prefix="wsgate-bigrtt-"))
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    notes: dict[str, str] = {}
    load_before = bench._loadavg()
    try:
        echo_port = bench.free_port()
        echo_argv = [sys.executable, str(Path(__file__).resolve()), "echo", "--port"]
        echo_argv += [str(echo_port)] + (["--nodelay"] if args.echo_nodelay else [])
        echo = procs.start(
            echo_argv,
            bench.LOADGEN_CPU,
            nofile,
            cwd=work,
            stderr=open(work / "echo.log", "wb"),  # noqa: SIM115
        )
        bench.wait_for_port(echo_port, echo)
        env = Env(procs, work, echo_port, nofile, nginx)
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for name in order:
                run = TARGETS[name][1](env)
                if run.note:
                    notes[name] = run.note
                try:
                    for s in scenarios:
                        res = _measure(env, run, s, args, echo.pid)
                        raw.setdefault(name, {}).setdefault(s.key, []).append(res)
                        p = _summary(res["samples_ms"])
                        bench._log(
                            f"round {r + 1} {name:14} {s.key:17} p50 {p['p50']:.2f} "
                            f"p90 {p['p90']:.2f} p99 {p['p99']:.2f} ms"
                        )
                finally:
                    if run.proc is not None:
                        procs.stop(run.proc)
    finally:
        procs.stop_all()
        if args.keep:
            bench._log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git": bench._version(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"]),
            "nginx": bench._version([nginx, "-v"]) if nginx else None,
            "loadavg_before": load_before,
            "loadavg_after": bench._loadavg(),
            "count": args.count,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "echo_nodelay": args.echo_nodelay,
            "nice": args.nice,
            "notes": notes,
        },
        "targets": {t: TARGETS[t][0] for t in targets},
        "scenarios": {s.key: s.what for s in scenarios},
        "raw": raw,
    }


def render(data: dict[str, Any]) -> str:
    """The tables: every round's samples pooled per target and scenario."""
    m = data["meta"]
    lines = [
        "# Big messages, one round trip at a time, Autobahn (Twisted) echo server",
        "",
        f"{m['date']}, git {m['git']}, {m['nginx']}; {m['rounds']} round(s) of "
        f"{m['count']} round trips (after {m['warmup']} warm-up) per target and scenario; "
        f"load average {m['loadavg_before']} before, {m['loadavg_after']} after; "
        f"echo server TCP_NODELAY: {'set' if m['echo_nodelay'] else 'Autobahn default'}; "
        f"nice {m['nice']}.",
        "",
    ]
    for name, note in m["notes"].items():
        lines.append(f"- {name}: `{note}`")
    lines += [
        "",
        "Latency in ms, all rounds pooled, and each round's p90; stalls: the share of "
        f"round trips over {STALL_MS:.0f} ms (a delayed ACK holding a Nagle-delayed tail "
        "is 40 ms). CPU in ms per round trip: the proxy's, the echo server's, the "
        "client's. Other load on CPU 1: the share of the proxy's CPU that went to other "
        "processes (a shared machine). Target: wsgate p90 <= 5 x direct p90 + 2 ms.",
        "",
    ]
    for key, what in data["scenarios"].items():
        lines += [
            f"## {key}: {what}",
            "",
            "| target | p50 | p90 | p99 | p90 per round | stalls | proxy CPU | echo CPU "
            "| client CPU | other load on CPU 1 | extensions |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        p90: dict[str, float] = {}
        for target in data["targets"]:
            runs = data["raw"].get(target, {}).get(key)
            if not runs:
                continue
            pooled = _summary([x for r in runs for x in r["samples_ms"]])
            p90[target] = pooled["p90"]
            per_round = ", ".join(f"{_summary(r['samples_ms'])['p90']:.2f}" for r in runs)

            def avg(k: str, runs: list[dict[str, Any]] = runs) -> float:
                return float(sum(r[k] for r in runs)) / len(runs)

            cpu = f"{avg('proxy_cpu_ms'):.3f}" if target != "direct" else "-"
            lines.append(
                f"| {target} | {pooled['p50']:.2f} | {pooled['p90']:.2f} | {pooled['p99']:.2f} "
                f"| {per_round} | {pooled['stalls_pct']:.1f} % | {cpu} "
                f"| {avg('echo_cpu_ms'):.3f} | {avg('client_cpu_ms'):.3f} "
                f"| {avg('cpu1_other_pct'):.0f} % "
                f"| {runs[0]['extensions'] or '-'} |"
            )
        lines.append("")
        for target in ("wsgate", "wsgate-python"):
            if target in p90 and "direct" in p90:
                goal = 5 * p90["direct"] + 2
                verdict = "met" if p90[target] <= goal else "NOT met"
                lines.append(
                    f"- {target} p90 / (5 x direct p90 + 2 ms) = {p90[target]:.2f} / {goal:.2f} "
                    f"= **{p90[target] / goal:.2f}** ({verdict})"
                )
            if target in p90 and "nginx" in p90:
                lines.append(f"- {target} p90 / nginx p90 = {p90[target] / p90['nginx']:.2f}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    e = sub.add_parser("echo", help="run the Autobahn echo server (used by the run)")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--nodelay", action="store_true")
    c = sub.add_parser("client", help="run one client (used by the run)")
    c.add_argument("--url", required=True)
    c.add_argument("--scenario", choices=list(BY_KEY), required=True)
    c.add_argument("--count", type=int, default=300)
    c.add_argument("--warmup", type=int, default=30)
    c.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--count", type=int, default=300, help="measured round trips (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up round trips (default 30)")
    p.add_argument("--timeout", type=float, default=10.0, help="per round trip, s (default 10)")
    p.add_argument("--targets", help="comma-separated subset of: " + ", ".join(TARGETS))
    p.add_argument("--scenarios", help="comma-separated subset of: " + ", ".join(BY_KEY))
    p.add_argument(
        "--echo-nodelay",
        action="store_true",
        help="set TCP_NODELAY on the echo server's sockets (Autobahn's own option does not)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of every process the run starts (e.g. -5 on a busy machine)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    if args.mode == "echo":
        echo_server(args.port, args.nodelay)
        return 0
    if args.mode == "client":
        return client_main(args)
    for t in (args.targets or "").split(","):
        if t and t not in TARGETS:
            p.error(f"--targets: unknown target {t!r}; known: {', '.join(TARGETS)}")
    for k in (args.scenarios or "").split(","):
        if k and k not in BY_KEY:
            p.error(f"--scenarios: unknown scenario {k!r}; known: {', '.join(BY_KEY)}")
    if len(os.sched_getaffinity(0)) < 2 or bench.PROXY_CPU not in os.sched_getaffinity(0):
        p.error("needs two CPUs (0 and 1) to pin the clients and the proxy apart")
    os.sched_setaffinity(0, {bench.LOADGEN_CPU})
    bench.NICE = args.nice
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = run_all(args)
    md = render(data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bigrtt.json").write_text(json.dumps(data, indent=1))
    (args.out / "bigrtt.md").write_text(md)
    print(md)
    bench._log(f"wrote {args.out / 'bigrtt.md'} and {args.out / 'bigrtt.json'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
