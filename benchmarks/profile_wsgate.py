#!/usr/bin/env python3
"""Profile wsgate under one benchmark scenario with py-spy, cProfile or perf.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_wsgate.py [--scenario rtt64_50] [--seconds 10]
    .venv/bin/python benchmarks/profile_wsgate.py --scenario handshake --cprofile
    .venv/bin/python benchmarks/profile_wsgate.py --scenario rtt1k_deflate_50 --perf --rate 999

Runs the benchmark's echo backend and load generator (CPU 0) against one
wsgate (CPU 1), samples wsgate with ``py-spy record`` while the load runs,
and writes to OUT (default benchmarks/results/profile-SCENARIO/):

- ``profile.txt``: py-spy's collapsed stacks (speedscope and flamegraph.pl
  read them);
- ``profile.md``: the top functions by self and by inclusive share of the
  samples (idle samples, wsgate waiting in epoll, are left out by py-spy).

With ``--cprofile`` wsgate runs under cProfile instead (from its start to
its stop, warm-up included), and OUT gets ``profile.prof`` (pstats) and
``profile.md``: the top functions by own and by cumulative time, each also
per connection (divided by the connections wsgate opened: its calls of
``FrontendProtocol.onOpen``). cProfile's own cost inflates every figure
(about twice over in the handshake scenario): read them as shares and
counts, and take absolute CPU from ``run.py``.

With ``--perf`` it samples with Linux ``perf`` (Debian's ``linux-perf``)
instead, which sees C code and the kernel without stopping wsgate:
``profile.md`` then gives the CPU's shares by shared object (the Python
interpreter running wsgate's and Autobahn's Python, the kernel's TCP work,
zlib, libc's copies, OpenSSL, the compiled frame path) and the top symbols.
"""

from __future__ import annotations

import argparse
import collections
import io
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (benchmarks/run.py, next to this file)

CLIENTS = {
    "rtt64_50": (
        "plain",
        ["rtt", "--conns", "50", "--size", "64", "--payload", "text"],
        "/echo",
    ),
    "rtt64_1": ("plain", ["rtt", "--conns", "1", "--size", "64", "--payload", "text"], "/echo"),
    "rtt1k_deflate_10": (
        "deflate",
        ["rtt", "--conns", "10", "--size", "1024", "--payload", "compressible", "--deflate"],
        "/echo",
    ),
    "rtt1k_deflate_50": (
        "deflate",
        ["rtt", "--conns", "50", "--size", "1024", "--payload", "compressible", "--deflate"],
        "/echo",
    ),
    "handshake": ("plain", ["handshake", "--concurrency", "8"], "/echo"),
    "stream1m": ("plain", ["stream"], f"/stream?size={bench.MIB}"),
}

_LINE = re.compile(r":\d+\)$")


def _function(frame: str) -> str:
    """'dataReceived (twisted/protocols/tls.py:123)' -> without the line number."""
    frame = _LINE.sub(")", frame.strip())
    # Shorten site-packages paths to the package path.
    return re.sub(r"\(.*?/(site-packages|lib/python3\.\d+)/", "(", frame)


def summarize(collapsed: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";") if f.strip()]
        # py-spy puts the thread name first: 'process 123:"python ..."' and so on.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    out = [f"{total} samples (idle left out)", ""]
    for title, counter in (("Self", own), ("Inclusive", inclusive)):
        out += [f"## {title}", "", "| % | samples | function |", "|---:|---:|---|"]
        for name, n in counter.most_common(top):
            out.append(f"| {100 * n / total:.1f} | {n} | `{name}` |")
        out.append("")
    return "\n".join(out)


def summarize_cprofile(prof: Path, top: int) -> str:
    """The top functions by own and by cumulative time, per connection too."""
    stats = pstats.Stats(str(prof), stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    opened = sum(
        nc
        for (path, _, name), (_, nc, _, _, _) in raw.items()
        if name == "onOpen" and path.endswith("wsgate/_frontend.py")
    )
    per = max(opened, 1)
    out = [
        f"{total:.2f} s of profiled CPU; {opened} connections opened "
        f"({1e6 * total / per:.0f} µs each under cProfile)",
        "",
    ]
    for title, index in (("Own time", 2), ("Cumulative", 3)):
        out += [
            f"## {title}",
            "",
            "| % | µs/conn | calls/conn | function |",
            "|---:|---:|---:|---|",
        ]
        ranked = sorted(raw.items(), key=lambda kv: kv[1][index], reverse=True)
        for (path, line, name), row in ranked[:top]:
            where = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", path)
            out.append(
                f"| {100 * row[index] / total:.1f} | {1e6 * row[index] / per:.1f} "
                f"| {row[1] / per:.2f} | `{name} ({where}:{line})` |"
            )
        out.append("")
    return "\n".join(out)


def perf_summary(perf: str, data: Path, top: int) -> str:
    """perf's shares of the samples by shared object, then by symbol."""
    out: list[str] = []
    for title, keys, rows in (("By shared object", "dso", 12), ("By symbol", "dso,sym", top)):
        report = subprocess.run(
            [perf, "report", "-i", str(data), "--no-children", "--sort", keys, "--stdio"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out += [f"## {title}", "", "| % | where |", "|---:|---|"]
        shown = 0
        for line in report.splitlines():
            share, _, where = line.strip().partition(" ")
            if not share.endswith("%") or line.lstrip().startswith("#"):
                continue
            out.append(f"| {share[:-1]} | `{' '.join(where.split())}` |")
            shown += 1
            if shown == rows:
                break
        out.append("")
    return "\n".join(out)


def _under_cprofile(output: Path) -> Callable[[Any], list[str]]:
    """``Wsgate.command`` with twistd run under cProfile, writing ``output``."""
    from wsgate.testing import Wsgate

    plain = Wsgate.command

    def command(self: Any) -> list[str]:
        argv = plain(self)
        run = (
            "import cProfile; from twisted.scripts.twistd import run; "
            f"cProfile.run('run()', {str(output)!r})"
        )
        return [argv[0], "-c", run, *argv[3:]]

    return command


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=sorted(CLIENTS), default="rtt64_50")
    p.add_argument("--tls", action="store_true", help="profile the TLS listener")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path)
    p.add_argument("--cprofile", action="store_true", help="cProfile instead of py-spy")
    p.add_argument(
        "--perf",
        action="store_true",
        help="sample with Linux perf: shares by shared object (interpreter, kernel,\n"
        "zlib, libc, OpenSSL) instead of Python functions",
    )
    args = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    perf = shutil.which("perf") or ""
    if args.perf and not perf:
        p.error("perf not found: apt install linux-perf")
    if not (args.cprofile or args.perf) and not Path(pyspy).exists():
        p.error("py-spy not found: pip install py-spy")
    out = args.out or HERE / "results" / f"profile-{args.scenario}{'-tls' if args.tls else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if args.cprofile:
        from wsgate.testing import Wsgate

        (out / "profile.prof").unlink(missing_ok=True)
        Wsgate.command = _under_cprofile(out / "profile.prof")  # type: ignore[method-assign,assignment]
    mode, client, path = CLIENTS[args.scenario]
    nofile = bench._raise_nofile()
    bench._ensure_node_modules()
    procs = bench.Procs()
    work = Path(tempfile.mkdtemp(prefix="wsgate-profile-"))
    import os

    from wsgate.testing import make_tls_files

    os.sched_setaffinity(0, {bench.LOADGEN_CPU})
    try:
        tls = make_tls_files(work / "tls")
        with bench._backend(procs, work, nofile) as (ports, backend_pid):
            env = bench.Env(procs, work, ports, backend_pid, tls, nofile, None, None)
            gate = bench._start_wsgate(args.tls)(env, mode, False)
            assert gate.pid is not None
            extra = ["--ca", str(tls.ca_cert)] if args.tls else []
            argv = [*client, "--url", gate.url + path, "--warmup", "1", *extra]
            argv += ["--duration", str(args.seconds + 1)]
            c = bench.Client(procs, argv, nofile, work / "client.log")
            deadline = time.monotonic() + args.seconds + 60
            c.event("start", deadline)
            a = bench.snapshot(gate.pid, backend_pid)
            if args.cprofile:
                spy: subprocess.CompletedProcess[str] = subprocess.CompletedProcess([], 0)
            else:
                if args.perf:
                    spy_argv = [perf, "record", "-F", str(args.rate), "-p", str(gate.pid)]
                    spy_argv += ["-o", str(out / "perf.data"), "--"]
                    spy_argv += ["sleep", str(int(args.seconds))]
                else:
                    spy_argv = [pyspy, "record", "--pid", str(gate.pid), "--nonblocking"]
                    spy_argv += ["--format", "raw", "--output", str(out / "profile.txt")]
                    spy_argv += ["--duration", str(int(args.seconds)), "--rate", str(args.rate)]
                spy = subprocess.run(
                    spy_argv,
                    capture_output=True,
                    text=True,
                    timeout=args.seconds + 60,
                )
            end = c.event("end", deadline)
            b = bench.snapshot(gate.pid, backend_pid)
            c.finish()
            procs.stop(gate.proc)  # type: ignore[arg-type]
            if spy.returncode != 0:
                print(spy.stderr, file=sys.stderr)
                return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    w = bench.window(a, b, True)
    head = [
        f"# wsgate profile: {args.scenario}{' (TLS)' if args.tls else ''}",
        "",
        f"py-spy at {args.rate} Hz for {args.seconds:g} s; wsgate at "
        f"{w['proxy_cpu_pct']:.0f}% of CPU {bench.PROXY_CPU} (other load on it "
        f"{w['cpu1_other_pct']:.0f}%); client figures: "
        + ", ".join(
            f"{k}={end[k]:.4g}"
            for k in ("msg_per_s", "mb_per_s", "per_s", "p50_us")
            if isinstance(end.get(k), int | float)
        ),
        "",
    ]
    if args.cprofile:
        head[2] = head[2].replace(f"py-spy at {args.rate} Hz", "cProfile")
        md = "\n".join(head) + summarize_cprofile(out / "profile.prof", args.top)
    elif args.perf:
        head[2] = head[2].replace("py-spy at", "perf at")
        md = "\n".join(head) + perf_summary(perf, out / "perf.data", args.top)
    else:
        md = "\n".join(head) + summarize(out / "profile.txt", args.top)
    (out / "profile.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
