"""The story: noVNC in a real Chromium reaches VNC desktops through wsgate alone.

No websockify in between: wsgate terminates the browser's WebSocket (ws://
or wss://), relays the bytes to each desktop's raw RFB port (``tcp:``
backends), and serves the page and noVNC's files from the same port
(``--web``). The desktops are TigerVNC's ``Xvnc``, each with its own
background colour and desktop name; noVNC is the pinned npm package
``@novnc/novnc`` (``tests/node``), driven by ``tests/novnc_page.html``.

For each desktop the test checks both directions through the gateway: what
the server sends (the desktop name, the size, and the colour noVNC painted
on its canvas, read back with ``getImageData``) and what the browser sends
(a pointer move and Caps Lock typed in Chromium, seen by the X server through
``xdotool getmouselocation`` and ``xset q``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vnc import TIMEOUT, Colour, Xvnc, novnc_missing, novnc_web_root, start_xvnc, xvnc_missing

from wsgate.testing import GateFactory, TlsFiles, Wsgate, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XvncFactory = Callable[[Colour, str], Xvnc]

#: What Xvnc's geometry gives noVNC's canvas.
WIDTH, HEIGHT = 320, 240
#: Where the colour is read: the corners and the middle of the desktop.
SAMPLES = [
    (2, 2),
    (WIDTH - 3, 2),
    (WIDTH // 2, HEIGHT // 2),
    (2, HEIGHT - 3),
    (WIDTH - 3, HEIGHT - 3),
]
#: Per channel: a solid area is sent exactly (Tight's fill), but allow for a
#: lossy encoding should the server pick one.
TOLERANCE = 8
RED: Colour = (0xD0, 0x20, 0x30)
BLUE: Colour = (0x20, 0x40, 0xC0)


def _missing() -> str | None:
    for reason in (xvnc_missing(), novnc_missing()):
        if reason is not None:
            return reason
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (PyPI) is not installed: pip install '.[test]'"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

# --------------------------------------------------------------------------
# Peers: the desktops and the gateway (the browser is conftest.py's).
# --------------------------------------------------------------------------


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[XvncFactory]:
    """Start an Xvnc desktop of a colour and a name; all are stopped after the test."""
    started: list[Xvnc] = []

    def start(colour: Colour, name: str) -> Xvnc:
        desktop = start_xvnc(colour, name, tmp_path / f"xvnc-{name}.log", f"{WIDTH}x{HEIGHT}")
        started.append(desktop)
        return desktop

    yield start
    for desktop in started:
        desktop.stop()


@pytest.fixture(scope="module")
def web_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return novnc_web_root(tmp_path_factory.mktemp("web"))


def start_gate(
    wsgate: GateFactory, web_root: Path, *backend: str, tls: TlsFiles | None = None
) -> tuple[Wsgate, str]:
    """wsgate on a free port with ``backend`` options and ``--web``; its base URL."""
    port = free_port()
    if tls is None:
        listen, scheme = f"tcp:{port}:interface=127.0.0.1", "http"
    else:
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}"
        scheme = "https"
    gate = wsgate("--listen", listen, *backend, "--web", str(web_root), wait_port=port)
    return gate, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 800, "height": 600})
    context.set_default_timeout(TIMEOUT * 1000)
    try:
        yield context
    finally:
        context.close()


# --------------------------------------------------------------------------
# One noVNC page on one desktop.
# --------------------------------------------------------------------------


class Viewer:
    """A noVNC page in Chromium, connected through ``gate`` to ``desktop``."""

    def __init__(self, page: Page, desktop: Xvnc, gate: Wsgate, console: list[str]) -> None:
        self.page = page
        self.console = console
        self.desktop = desktop
        self.gate = gate

    @classmethod
    def open(
        cls,
        context: BrowserContext,
        base_url: str,
        path: str,
        desktop: Xvnc,
        gate: Wsgate,
        protocols: list[str] | None = None,
    ) -> Viewer:
        """Load the page from wsgate; wait until noVNC is connected to ``path``."""
        query = {"path": path}
        if protocols:
            query["protocols"] = ",".join(protocols)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.goto(f"{base_url}/novnc_page.html?{urllib.parse.urlencode(query)}")
        viewer = cls(page, desktop, gate, console)
        try:
            page.wait_for_function("() => window.vnc && window.vnc.state !== 'connecting'")
        except PlaywrightTimeout:
            raise AssertionError(f"noVNC still connecting: {viewer.diagnosis()}") from None
        assert viewer.state()["state"] == "connected", viewer.diagnosis()
        assert len(desktop.viewers()) == 1, viewer.diagnosis()
        return viewer

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.page.evaluate("() => window.vnc")
        return state

    def diagnosis(self) -> str:
        try:
            state: Any = self.state()
        except Exception as e:  # the page itself may be what broke
            state = f"(page unreadable: {e})"
        return (
            f"\npage: {self.page.url}\nwindow.vnc: {state}\n"
            f"console:\n{chr(10).join(self.console)}\n"
            f"wsgate log:\n{self.gate.log()}\nXvnc log:\n{self.desktop.log()}"
        )

    def pixels(self) -> dict[str, Any]:
        pixels: dict[str, Any] = self.page.evaluate("p => window.vncPixels(p)", SAMPLES)
        return pixels

    def wait_for_colour(self, colour: Colour) -> None:
        """Until every sample of noVNC's canvas is ``colour``."""
        try:
            self.page.wait_for_function(
                "([points, colour, tolerance]) => window.vncShows(points, colour, tolerance)",
                arg=[SAMPLES, list(colour), TOLERANCE],
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"canvas is not {colour} at {SAMPLES}: {self.pixels()}{self.diagnosis()}"
            ) from None

    def move_pointer(self, x: int, y: int) -> None:
        """Move Chromium's mouse to desktop pixel (x, y); wait until X has it there."""
        box = self.page.locator("#screen canvas").bounding_box()
        assert box is not None and (box["width"], box["height"]) == (WIDTH, HEIGHT), box
        self.page.mouse.move(box["x"] + x + 0.5, box["y"] + y + 0.5)
        wait_until(lambda: self.desktop.pointer() == (x, y), f"X pointer at {(x, y)}", self)

    def press_caps_lock(self) -> None:
        """Type Caps Lock into noVNC; wait until the X server's indicator is on."""
        assert not self.desktop.caps_lock()
        self.page.evaluate("() => window.vncFocus()")
        self.page.keyboard.press("CapsLock")
        wait_until(self.desktop.caps_lock, "Caps Lock on in X", self)

    def disconnect(self) -> None:
        """noVNC's own disconnect ends cleanly, and the desktop sees the viewer go."""
        self.page.evaluate("() => window.vncDisconnect()")
        self.page.wait_for_function("() => window.vnc.state === 'disconnected'")
        state = self.state()
        assert state["events"][-1] == {"type": "disconnect", "detail": {"clean": True}}, state
        # wsgate closed its TCP connection to the desktop in turn.
        wait_until(lambda: not self.desktop.viewers(), "viewer gone in Xvnc's log", self)

    def check_desktop(self) -> None:
        """What the desktop sends arrived: its name, size and colour."""
        self.wait_for_colour(self.desktop.colour)
        assert self.state()["desktopName"] == self.desktop.name, self.diagnosis()
        size = self.pixels()
        assert (size["width"], size["height"]) == (WIDTH, HEIGHT)


def wait_until(condition: Callable[[], bool], what: str, viewer: Viewer) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {TIMEOUT} s{viewer.diagnosis()}")
        time.sleep(0.05)  # X is another process: poll it


def check_viewer(viewer: Viewer) -> None:
    """Both directions through the gateway, then a clean disconnect."""
    viewer.check_desktop()
    start = viewer.desktop.pointer()
    for target in [(37, 201), (WIDTH - 20, 11)]:
        assert target != start
        viewer.move_pointer(*target)
    viewer.press_caps_lock()
    viewer.disconnect()
    assert "Traceback" not in viewer.gate.log()


# --------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocols",
    [[], ["binary"]],
    ids=["no-subprotocol", "binary"],
)
def test_novnc_over_ws(
    wsgate: GateFactory,
    xvnc: XvncFactory,
    web_root: Path,
    context: BrowserContext,
    protocols: list[str],
) -> None:
    """noVNC >= 1.2 offers no subprotocol; 1.0-1.1 (and websockify's clients) offer "binary"."""
    desktop = xvnc(RED, "wsgate-red")
    gate, base = start_gate(wsgate, web_root, "--backend", f"tcp:{desktop.address}")

    viewer = Viewer.open(context, base, "/websockify", desktop, gate, protocols)

    state = viewer.state()
    assert state["url"] == base.replace("http://", "ws://") + "/websockify"
    assert state["offered"] == protocols
    # Chromium fails a handshake that drops an offered subprotocol.
    assert state["protocol"] == (protocols[0] if protocols else "")
    check_viewer(viewer)


def test_novnc_over_wss(
    wsgate: GateFactory,
    xvnc: XvncFactory,
    web_root: Path,
    context: BrowserContext,
    tls_files: TlsFiles,
) -> None:
    """wsgate terminates TLS: the page and the WebSocket both come over https / wss."""
    desktop = xvnc(BLUE, "wsgate-tls")
    gate, base = start_gate(wsgate, web_root, "--backend", f"tcp:{desktop.address}", tls=tls_files)
    assert base.startswith("https://")

    viewer = Viewer.open(context, base, "/websockify", desktop, gate)

    assert viewer.state()["url"] == base.replace("https://", "wss://") + "/websockify"
    check_viewer(viewer)


def two_desktops(xvnc: XvncFactory) -> tuple[Xvnc, Xvnc]:
    return xvnc(RED, "wsgate-vnc1"), xvnc(BLUE, "wsgate-vnc2")


def check_both(viewers: list[Viewer]) -> None:
    """Each page shows its own desktop; input on one reaches only that one."""
    for viewer in viewers:
        viewer.check_desktop()
    first, second = viewers
    untouched = second.desktop.pointer()
    first.move_pointer(41, 42)
    assert second.desktop.pointer() == untouched
    second.move_pointer(WIDTH - 41, HEIGHT - 42)
    assert first.desktop.pointer() == (41, 42)
    for viewer in viewers:
        viewer.disconnect()
    assert "Traceback" not in first.gate.log()


def test_two_desktops_by_path(
    wsgate: GateFactory, xvnc: XvncFactory, web_root: Path, context: BrowserContext
) -> None:
    """One port, two routes: /vnc1 and /vnc2 reach different desktops, at the same time."""
    vnc1, vnc2 = two_desktops(xvnc)
    gate, base = start_gate(
        wsgate,
        web_root,
        "--route", f"/vnc1=tcp:{vnc1.address}",
        "--route", f"/vnc2=tcp:{vnc2.address}",
    )  # fmt: skip

    viewers = [
        Viewer.open(context, base, "/vnc1", vnc1, gate),
        Viewer.open(context, base, "/vnc2", vnc2, gate),
    ]

    check_both(viewers)


def test_two_desktops_by_token(
    wsgate: GateFactory,
    xvnc: XvncFactory,
    web_root: Path,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    """websockify's token file: /websockify?token=NAME picks the desktop."""
    vnc1, vnc2 = two_desktops(xvnc)
    tokens = tmp_path / "tokens.cfg"
    tokens.write_text(
        f"# websockify TokenFile format\nvnc1: {vnc1.address}\nvnc2: {vnc2.address}\n"
    )
    gate, base = start_gate(wsgate, web_root, "--token-file", str(tokens))

    viewers = [
        Viewer.open(context, base, "/websockify?token=vnc1", vnc1, gate),
        Viewer.open(context, base, "/websockify?token=vnc2", vnc2, gate),
    ]

    check_both(viewers)


def test_jwt_token_from_a_portal(
    wsgate: GateFactory,
    xvnc: XvncFactory,
    web_root: Path,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    """The README's recipe: a portal signs a short-lived JWT naming the
    desktop; noVNC carries it in the URL; an expired one is refused before
    any desktop is contacted."""
    import datetime

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    desktop = xvnc(RED, "wsgate-jwt")
    portal_key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "portal-public.pem"
    public.write_bytes(
        portal_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    host, port = desktop.address.rsplit(":", 1)
    gate, base = start_gate(
        wsgate,
        web_root,
        "--token-source", f"jwt:key_file={public},audience=wsgate",
        "--token-targets", f"{host}:{port}",
    )  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)

    def token(expires: datetime.datetime) -> str:
        claims = {"host": host, "port": int(port), "aud": "wsgate", "sub": "alice", "exp": expires}
        return jwt.encode(claims, portal_key, algorithm="ES256")

    viewer = Viewer.open(
        context, base, f"/vnc?token={token(now + datetime.timedelta(minutes=2))}", desktop, gate
    )
    check_viewer(viewer)

    expired = token(now - datetime.timedelta(minutes=1))
    page = context.new_page()
    page.goto(f"{base}/novnc_page.html?{urllib.parse.urlencode({'path': f'/vnc?token={expired}'})}")
    page.wait_for_function("() => window.vnc && window.vnc.state !== 'connecting'")
    assert page.evaluate("() => window.vnc.state") == "disconnected"
    assert not desktop.viewers()
    log = gate.wait_for_log("refused by jwt")
    refused = [line for line in log.splitlines() if "refused by jwt" in line]
    assert len(refused) == 1 and "403 token expired" in refused[0], gate.log()
