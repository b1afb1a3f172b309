"""``markd``: the daemon (``markd [--config FILE]``) and the demo (``markd demo``).

Exit status: 0 after a clean stop (SIGTERM, SIGINT) or a finished demo; 2 when the
configuration is invalid (every problem is printed to stderr, one per line; systemd should not
restart into the same error); 1 when start-up fails for another reason (the store cannot be
opened, a scanner URL cannot be used).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from markd import __version__
from markd.errors import ConfigError, MarkdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="markd",
        description="Check Честный ЗНАК marking codes from barcode scanners before a sale.",
    )
    parser.add_argument("--version", action="version", version=f"markd {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/markd/markd.toml if it exists; "
        "drop-ins are read from FILE.d/)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo",
        help="run the service on a temporary store with a scripted virtual scanner",
        description="Run the real service with a temporary store and a built-in virtual "
        "scanner fed with sample scans; print one line per verdict.",
    )
    return parser


def _run_service(config_path: str | None) -> int:
    # Imported here so that `markd --version` and `markd --help` stay fast on a small board.
    from markd import config as config_module
    from markd.service import Service

    try:
        config = config_module.load(config_path)
        service = Service(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"markd: {problem}", file=sys.stderr)
        return 2
    try:
        asyncio.run(service.run(handle_signals=True))
    except MarkdError as exc:
        print(f"markd: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from markd.demo import run_demo

        try:
            return run_demo()
        except MarkdError as exc:
            print(f"markd demo: {exc}", file=sys.stderr)
            return 1
    try:
        return _run_service(args.config)
    except KeyboardInterrupt:
        # Ctrl+C before the signal handlers were installed (during start-up).
        return 130


if __name__ == "__main__":
    sys.exit(main())
