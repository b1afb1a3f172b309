"""``markctl``: technician commands.

Each subcommand lives in its own module (``cmd_<name>.py``) exposing
``register(subparsers)`` which adds its parser and sets ``func`` to a callable
``func(args) -> int`` returning the exit status. A command lets a
:class:`~markd.errors.MarkdError` out rather than printing it: :func:`main` reports it through
:mod:`markd.cli.errors`, the same way for every command. A command whose ``--json`` output
promises a JSON error sets the default ``json_errors=True`` on its parser.

Nothing ``markctl`` prints carries a raw control character from data (a blocklist's reason,
an API answer, a journal entry, a device's reply): :func:`main` runs every command with
stdout and stderr wrapped in :class:`~markd.text.PrintableWriter`, which escapes them as
``\\x1b`` / ``\\u{202e}`` (:func:`markd.text.printable`), and ``--json`` output is written
with :func:`markd.text.printable_json`, which escapes them the JSON way.

Exit status: 0 success, 2 bad input (a bad code, a bad configuration, bad arguments),
1 an operational failure (store cannot be opened, device missing, ...).
"""

from __future__ import annotations

import argparse
import sys

from markd import __version__
from markd.cli import (
    cmd_check,
    cmd_config,
    cmd_events,
    cmd_lm,
    cmd_parse,
    cmd_printer,
    cmd_receipt,
    cmd_scan,
    cmd_sell,
    cmd_store,
)
from markd.cli.errors import INPUT_REASONS, report
from markd.errors import MarkdError
from markd.text import PrintableWriter

COMMANDS = (
    cmd_parse,
    cmd_config,
    cmd_store,
    cmd_check,
    cmd_events,
    cmd_lm,
    cmd_scan,
    cmd_sell,
    cmd_receipt,
    cmd_printer,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="markctl", description="markd technician commands (marking codes, config, store)."
    )
    parser.add_argument("--version", action="version", version=f"markctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableWriter(stdout), PrintableWriter(stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The arguments as typed, for advice that repeats the command (markctl store as root).
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except MarkdError as exc:
        json_output = bool(getattr(args, "json_errors", False) and getattr(args, "json", False))
        return report(exc, "markctl", input_reasons=INPUT_REASONS, json_output=json_output)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `markctl parse - | head`: the reader went away; not an error worth a traceback.
        getattr(sys.stderr, "stream", sys.stderr).close()  # the real one, under PrintableWriter
        return 0


if __name__ == "__main__":
    sys.exit(main())
