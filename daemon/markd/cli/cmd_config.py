"""``markctl config``: inspect and validate markd's configuration.

``markctl config check [PATH] [--json]``
    Load PATH (default ``/etc/markd/markd.toml``) with its drop-ins from ``PATH.d/``, and print
    the effective configuration: as a TOML file headed by a comment naming the files read, or
    with ``--json`` as ``{"valid": true, "sources": [...], "config": {...}}``.

    The check is the daemon's own (:func:`markd.config.load` with ``for_service=True``): the
    files, and each secret the configuration calls for, read as the service would read it
    (from its file, or from the systemd credential in ``/etc/credstore``). What only the
    live system can tell — a device present, a port free, the store's ownership — is left to
    the daemon's start. Run as root, the check also asks whether the service's user
    (``markd``) may read each file the daemon opens itself (a ``*_file`` secret, the price
    list): the unit does not run as root (:mod:`markd.config.access`).

    Exit 0 when the configuration is valid (what is valid but unsafe, such as a fleet sync
    without ``[store] sync_public_keys``, is printed to stderr as ``markctl: warning: …`` and
    listed under ``"warnings"`` with ``--json``). Otherwise every problem goes to stderr, one per
    line as ``markctl: FILE:LINE: [section] key: what is wrong``, ``--json`` prints
    ``{"valid": false, "problems": [...]}`` on stdout, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from markd import config as markd_config
from markd.config.access import service_account
from markd.errors import ConfigError
from markd.text import printable_json

EXIT_OK = 0


def register(subparsers: Any) -> None:
    """Add ``config`` and its subcommands to markctl's parser."""
    parser = subparsers.add_parser(
        "config",
        help="validate and show the configuration",
        description="Validate and show markd's configuration.",
    )
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True

    check = actions.add_parser(
        "check",
        help="validate a configuration and print the effective settings",
        description=(
            "Read the configuration file and its drop-ins (PATH.d/*.toml, in name order), "
            "report every problem with its file, line and key, or print the effective "
            "configuration when it is valid. Exit status 0: valid; 2: problems found."
        ),
    )
    check.add_argument(
        "path",
        nargs="?",
        default=None,
        metavar="PATH",
        help=f"main configuration file (default: {markd_config.DEFAULT_PATH})",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """``markctl config check``: load, then print the configuration or its problems."""
    try:
        # The daemon's own load: its secrets are read too, so what passes here starts.
        # Run as root, it also judges each file the daemon opens as the service's user would:
        # what root alone may read passes a plain read and fails the start.
        config = markd_config.load(args.path, for_service=True, readable_by=service_account())
    except ConfigError as exc:
        # The verdict on the file is this command's answer, so --json gives it on stdout in
        # the command's own shape; the problems go to stderr (and the status 2) like any
        # command's, from markctl's main.
        if args.json:
            _print_json({"valid": False, "problems": exc.problems})
        raise

    warnings = markd_config.config_warnings(config)
    for warning in warnings:
        print(f"markctl: warning: {warning}", file=sys.stderr)
    if args.json:
        answer = {
            "valid": True,
            "sources": list(config.sources),
            "config": markd_config.to_dict(config),
        }
        if warnings:
            answer["warnings"] = warnings
        _print_json(answer)
    else:
        sys.stdout.write(_describe_sources(config.sources) + "\n" + markd_config.to_toml(config))
    return EXIT_OK


def _describe_sources(sources: tuple[str, ...]) -> str:
    """The comment heading the TOML output: which files made this configuration."""
    lines = ["# markctl config check: configuration is valid"]
    if sources:
        lines.append("# files read, later ones overriding earlier ones:")
        lines.extend(f"#   {source}" for source in sources)
    else:
        lines.append("# no configuration file found: every setting is at its default")
    lines.append("# effective configuration, defaults included:")
    return "\n".join(lines) + "\n"


def _print_json(data: dict[str, Any]) -> None:
    print(printable_json(data, ensure_ascii=False, indent=2))
