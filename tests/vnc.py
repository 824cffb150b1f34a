"""VNC desktops and the noVNC client as test peers.

``start_xvnc`` runs Debian's TigerVNC ``Xvnc`` (an X server that is also a
VNC server) on a display number it picks itself (``-displayfd``), fills the
root window with one colour (``xsetroot``) and answers where the X pointer
is (``xdotool``) and whether Caps Lock is on (``xset q``): what a VNC client
shows and sends, seen from the X side.

``novnc_web_root`` lays out what the proxy's ``--web`` directory serves:
noVNC's ``core/`` and ``vendor/`` from the pinned npm package
(``tests/node``) and ``tests/novnc_page.html``, the page that drives it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from wsgate.testing import free_port

#: Every wait on an X or VNC process is bounded by this, in seconds.
TIMEOUT = 30.0
#: Programs from Debian packages: tigervnc-standalone-server,
#: x11-xserver-utils (xsetroot, xset), xdotool.
X_PROGRAMS = {
    "Xvnc": "tigervnc-standalone-server",
    "xsetroot": "x11-xserver-utils",
    "xset": "x11-xserver-utils",
    "xdotool": "xdotool",
}
NOVNC_DIR = Path(__file__).parent / "node" / "node_modules" / "@novnc" / "novnc"
NOVNC_PAGE = Path(__file__).parent / "novnc_page.html"

Colour = tuple[int, int, int]


def xvnc_missing() -> str | None:
    """Why an Xvnc desktop cannot run here, or None."""
    absent = sorted({pkg for prog, pkg in X_PROGRAMS.items() if shutil.which(prog) is None})
    if absent:
        return f"VNC desktop tools missing (apt-get install {' '.join(absent)})"
    return None


def novnc_missing() -> str | None:
    """Why the pinned noVNC client is not here, or None."""
    if not (NOVNC_DIR / "core" / "rfb.js").exists():
        return f"noVNC (npm @novnc/novnc) is not installed: run `npm ci` in {NOVNC_DIR.parents[2]}"
    return None


def novnc_web_root(directory: Path) -> Path:
    """``directory`` with noVNC's library and the test page in it, ready for --web."""
    directory.mkdir(parents=True, exist_ok=True)
    # Copies, not symlinks: a static file server may rightly refuse links
    # that lead out of its root.
    for part in ("core", "vendor"):
        shutil.copytree(NOVNC_DIR / part, directory / part)
    shutil.copyfile(NOVNC_PAGE, directory / NOVNC_PAGE.name)
    return directory


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


@dataclass
class Xvnc:
    """One ``Xvnc`` process: X display ``display``, RFB on 127.0.0.1:``port``."""

    proc: subprocess.Popen[bytes]
    display: str
    port: int
    colour: Colour
    name: str
    log_path: Path
    _log: IO[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def x(self, *argv: str) -> str:
        """Run an X client against this display; its stdout."""
        done = subprocess.run(
            argv,
            env={**os.environ, "DISPLAY": self.display, "XAUTHORITY": os.devnull},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} on {self.display} exited with {done.returncode}: "
                f"{done.stderr.strip()}\nXvnc log:\n{self.log()}"
            )
        return done.stdout

    def pointer(self) -> tuple[int, int]:
        """Where the X server has its pointer."""
        shell = dict(
            line.split("=", 1) for line in self.x("xdotool", "getmouselocation", "--shell").split()
        )
        return int(shell["X"]), int(shell["Y"])

    def caps_lock(self) -> bool:
        """The X server's Caps Lock indicator."""
        match = re.search(r"Caps Lock:\s+(on|off)", self.x("xset", "q"))
        assert match, "no Caps Lock in `xset q`"
        return match[1] == "on"

    def viewers(self) -> set[str]:
        """The RFB connections Xvnc has accepted and not yet closed (by its log)."""
        events = re.findall(r"Connections: (accepted|closed): (\S+)", self.log())
        accepted = {peer for event, peer in events if event == "accepted"}
        return accepted - {peer for event, peer in events if event == "closed"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def _read_display(fd: int, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The display number Xvnc writes to its -displayfd, as ``:N``."""
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"Xvnc named no display in {TIMEOUT} s:\n{log_path.read_text()}")
        chunk = os.read(fd, 64)
        if not chunk:  # Xvnc exited without naming one
            proc.wait(TIMEOUT)
            raise RuntimeError(
                f"Xvnc exited with {proc.returncode} before it had a display:\n"
                f"{log_path.read_text()}"
            )
        data += chunk
    return f":{int(data)}"


def start_xvnc(colour: Colour, name: str, log_path: Path, geometry: str = "320x240") -> Xvnc:
    """An Xvnc desktop of ``geometry`` filled with ``colour``, RFB without auth.

    The caller stops it (``Xvnc.stop``).
    """
    port = free_port()
    read_fd, write_fd = os.pipe()
    log = open(log_path, "wb")  # noqa: SIM115 (closed by Xvnc.stop)
    try:
        proc = subprocess.Popen(
            [
                "Xvnc",
                "-displayfd", str(write_fd),
                "-rfbport", str(port),
                "-localhost",  # RFB on loopback only
                "-nolisten", "tcp",  # X on its unix socket only
                "-SecurityTypes", "None",
                "-geometry", geometry,
                "-depth", "24",
                "-desktop", name,
                "-noreset",  # keep the colour when the last X client leaves
                "-AlwaysShared",
            ],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    except BaseException:
        log.close()
        raise
    finally:
        os.close(write_fd)
    xvnc = None
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            display = _read_display(pipe.fileno(), proc, log_path)
        # Xvnc names its display once it is ready, its RFB port included: no
        # probe, so that every connection in its log is a viewer's.
        xvnc = Xvnc(proc, display, port, colour, name, log_path, log)
        xvnc.x("xsetroot", "-solid", hex_colour(colour))
        return xvnc
    except BaseException:
        if xvnc is not None:
            xvnc.stop()
        else:
            proc.kill()
            proc.wait(TIMEOUT)
            log.close()
        raise
