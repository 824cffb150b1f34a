#!/usr/bin/env python3
"""wsgate's instructions per handshake, counted by valgrind: a before/after
figure that a busy machine does not move.

    apt-get install valgrind
    .venv/bin/python benchmarks/instructions.py [--short 8] [--long 24]

CPU time per connection (``run.py``) swings by 15% and more between runs
when other work shares the machine; the number of instructions wsgate
executes does not. This runs wsgate (from the current directory's source
tree, as ``run.py`` does) under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, with the ``handshake`` scenario's load (Node ``ws``,
8 connections at a time, opened and closed) for a short and a long window,
counts the connections it opened (its log's ``open`` lines) and prints

    instructions per connection = (I_long - I_short) / (conns_long - conns_short)

which leaves out start-up and shutdown. User space only: the kernel's
work (system calls, loopback TCP) is not counted; ``strace -c -p PID``
counts the system calls. Valgrind runs wsgate about 50 times slower, so
each window sees about 100 handshakes a second.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (benchmarks/run.py, next to this file)

_SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


def _instructions(
    procs: bench.Procs, work: Path, backend_port: int, seconds: float, nofile: int
) -> tuple[int, int]:
    """(instructions, connections opened) of one wsgate run under valgrind."""
    from wsgate.testing import Wsgate, wait_for_port

    gate = Wsgate("--backend", f"ws://127.0.0.1:{backend_port}")
    out = work / f"cachegrind-{seconds:g}.out"
    log = work / f"wsgate-{seconds:g}.log"
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]
    proc = procs.start(
        [*argv, *gate.command()],
        bench.PROXY_CPU,
        nofile,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    wait_for_port(gate.port, timeout=300, proc=proc)
    load = ["handshake", "--concurrency", "8", "--url", gate.url + "/echo"]
    load += ["--warmup", "0", "--duration", str(seconds)]
    client = bench.Client(procs, load, nofile, work / "client.log")
    client.event("end", time.monotonic() + seconds + 120)
    client.finish()
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    procs.stop(proc)
    opened = len(re.findall(rb"\] open ", log.read_bytes()))
    found = _SUMMARY.search(out.read_bytes())
    if found is None:
        raise RuntimeError(f"no cachegrind summary in {out}")
    return int(found.group(1)), opened


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--short", type=float, default=8, help="short window, s")
    p.add_argument("--long", type=float, default=24, help="long window, s")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        p.error("valgrind not found: apt-get install valgrind")
    nofile = bench._raise_nofile()
    bench._ensure_node_modules()
    procs = bench.Procs()
    work = Path(tempfile.mkdtemp(prefix="wsgate-instructions-"))
    try:
        with bench._backend(procs, work, nofile) as (ports, _):
            short = _instructions(procs, work, ports["plain"], args.short, nofile)
            long = _instructions(procs, work, ports["plain"], args.long, nofile)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    (i_short, n_short), (i_long, n_long) = short, long
    if n_long <= n_short:
        print(f"the long window opened no more connections ({n_long} <= {n_short})")
        return 1
    per = (i_long - i_short) / (n_long - n_short)
    print(
        f"{per / 1e6:.3f} M instructions per connection "
        f"({i_short / 1e6:.0f} M for {n_short} connections, {i_long / 1e6:.0f} M for {n_long}; "
        f"start-up and shutdown about {(i_short - per * n_short) / 1e6:.0f} M)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
