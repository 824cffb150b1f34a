"""The ``wsgate`` command: what is not ``twistd wsgate`` (checking a file,
probing a WebSocket URL)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wsgate import __version__
from wsgate._config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wsgate", description="Tools for wsgate; run the gateway with `twistd wsgate`."
    )
    parser.add_argument("--version", action="version", version=f"wsgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-config", help="check a TOML configuration file: exit 0, or print the mistakes"
    )
    check.add_argument("file")
    _add_probe(commands)
    args = parser.parse_args(argv)
    if args.command == "probe":
        return _probe(parser, args)
    from wsgate._configfile import load_file

    try:
        config = load_file(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({len(config.listeners)} listener(s), {len(config.routes)} route(s))")
    return 0


def _add_probe(commands: Any) -> None:
    probe = commands.add_parser(
        "probe",
        help="open a WebSocket to URL: print what it negotiates and check an echo",
        description="Open a WebSocket to URL and print the HTTP status (and a refusal's "
        "first body line), the subprotocol and each extension with its negotiated "
        "parameters; then send a compressible text, an incompressible binary and a "
        "1 MiB message and check that each echo comes back intact. Exit 0 when all "
        "worked, 1 when the server refused or the echo differed, 2 on a usage error.",
    )
    probe.add_argument("url", help="ws:// or wss:// URL")
    probe.add_argument("--ca", help="PEM file of CAs to trust for wss:// (default: the system's)")
    probe.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    probe.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="an extra request header (repeatable)",
    )
    probe.add_argument(
        "--subprotocol", action="append", default=[], help="offer a subprotocol (repeatable)"
    )
    probe.add_argument(
        "--deflate", choices=("on", "off"), default="on", help="offer permessage-deflate"
    )
    probe.add_argument("--origin", help="the Origin header to send")
    probe.add_argument(
        "--no-echo",
        action="store_true",
        help="not an echo service: report the first message received within --wait seconds",
    )
    probe.add_argument("--wait", type=_seconds, default=5.0, help="seconds, with --no-echo")
    probe.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds for each step (default 10)"
    )
    probe.add_argument("--json", action="store_true", help="print the report as JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _probe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from wsgate import _probe

    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        parser.error(f"probe: {args.url!r} is not a ws:// or wss:// URL")
    try:
        parts.port  # noqa: B018  # a bad port raises here
    except ValueError:
        parser.error(f"probe: {args.url!r} has a bad port")
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or any(c in header for c in "\r\n"):
            parser.error(f"probe: --header {header!r}: expected NAME: VALUE")
        headers.append((name.strip(), value.strip()))
    if args.ca is not None:
        from wsgate._config import load_ca_file

        try:
            load_ca_file(args.ca, "--ca")
        except ConfigError as e:
            parser.error(f"probe: {e}")
    options = _probe.Options(
        url=args.url,
        ca=args.ca,
        insecure=args.insecure,
        headers=tuple(headers),
        subprotocols=tuple(args.subprotocol),
        deflate=args.deflate == "on",
        origin=args.origin,
        echo=not args.no_echo,
        wait=args.wait,
        timeout=args.timeout,
    )
    return _probe.run(options, args.json)


if __name__ == "__main__":
    sys.exit(main())
