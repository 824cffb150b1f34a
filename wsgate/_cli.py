"""The ``wsgate`` command: what is not ``twistd wsgate`` (checking a file)."""

from __future__ import annotations

import argparse
import sys

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
    args = parser.parse_args(argv)
    from wsgate._configfile import load_file

    try:
        config = load_file(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({len(config.listeners)} listener(s), {len(config.routes)} route(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
