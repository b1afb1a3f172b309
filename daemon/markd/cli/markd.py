"""``markd``: the daemon (``markd [--config FILE]``), the demo (``markd demo``) and the reload
helper (``markd reload PID``, the unit's ``ExecReload=``).

Exit status: 0 after a clean stop (SIGTERM, SIGINT) or a finished demo; 2 when the
configuration is invalid (every problem is printed to stderr, one per line; systemd should not
restart into the same error); 1 when start-up fails for another reason (the store cannot be
opened, a scanner URL cannot be used).

``markd reload PID`` sends SIGHUP to the daemon and waits until it reports the outcome in
``$RUNTIME_DIRECTORY/reload.json``: 0 when the new configuration was applied, 1 when it was
refused (the reason on stderr) or no outcome came within ``--timeout`` seconds. It exists so
that ``systemctl reload markd`` returns only once the reload is done, and fails when the new
configuration was refused: systemd 252 (Debian 12) ends a reload when ``ExecReload=`` exits,
and a bare ``kill -HUP`` exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from markd import __version__
from markd.cli.errors import report
from markd.errors import MarkdError


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
    demo = sub.add_parser(
        "demo",
        help="run the service on a temporary store with a scripted virtual scanner",
        description="Run the real service with a temporary store and a built-in virtual "
        "scanner fed with sample scans; print one line per verdict.",
    )
    demo.add_argument(
        "--printer",
        choices=("emulator", "shtrih"),
        default="emulator",
        help="the ККТ the sale goes through: the virtual ККТ in process (default), or the "
        "Shtrih emulator spoken to over protocol 1 on a pty",
    )
    configured = sub.add_parser(
        "configured",
        help="exit 0 when the configuration sets anything, 1 when it is all defaults",
        description="Exit 0 when the configuration file or one of its drop-ins sets a key "
        "(or cannot be read: the start then says why), 1 when nothing is configured yet. "
        "The packaged unit runs it as ExecCondition=, so an installed but unconfigured markd "
        "stays stopped instead of running on development defaults.",
    )
    reload = sub.add_parser(
        "reload",
        help="make the running daemon reload its configuration and wait for the outcome",
        description="Send SIGHUP to the markd process PID and wait until it has applied or "
        "refused its configuration (used by the unit's ExecReload=; run 'systemctl reload "
        "markd' instead).",
    )
    reload.add_argument("pid", type=int, help="process id of the daemon ($MAINPID)")
    reload.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the outcome (30)"
    )
    return parser


def _read_reload_status(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _reload(pid: int, timeout: float, environ: dict[str, str] | None = None) -> int:
    """Signal the daemon and wait for its reload outcome (see the module docstring)."""
    from markd.systemd import RELOAD_STATUS_FILE, runtime_file

    status_path = runtime_file(RELOAD_STATUS_FILE, environ)
    before = _read_reload_status(status_path) if status_path is not None else {}
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"markd reload: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    if status_path is None:
        print("markd reload: SIGHUP sent (no $RUNTIME_DIRECTORY: outcome unknown)", file=sys.stderr)
        return 0
    # The outcome to wait for is the first one newer than what the file said before the signal
    # (a file left by an earlier daemon process does not count).
    seen = before.get("generation")
    last = seen if before.get("pid") == pid and isinstance(seen, int) else -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = _read_reload_status(status_path)
        generation = now.get("generation")
        if now.get("pid") == pid and isinstance(generation, int) and generation > last:
            message = str(now.get("message", ""))
            if now.get("ok"):
                print(f"markd reload: {message}")
                return 0
            print(f"markd reload: {message}", file=sys.stderr)
            return 1
    print(f"markd reload: no outcome from process {pid} within {timeout:g} s", file=sys.stderr)
    return 1


def _configured(config_path: str | None) -> int:
    from markd.config import DEFAULT_PATH, configured_files

    files = configured_files(config_path)
    if files:
        print(f"markd: configured by {', '.join(files)}")
        return 0
    main = config_path or DEFAULT_PATH
    # On stdout, so that the journal shows it beside systemd's "condition failed" line.
    print(
        f"markd: not configured yet: {main} and {main}.d/*.toml set nothing; "
        "set at least [check] mode and [scanners.NAME] (docs: /usr/share/doc/markd/"
        "operations.md), then: systemctl start markd"
    )
    return 1


def _run_service(config_path: str | None) -> int:
    # Imported here so that `markd --version` and `markd --help` stay fast on a small board.
    from markd import config as config_module
    from markd.service import Service
    from markd.service.gcpolicy import freeze_imports

    config = config_module.load(config_path)
    # A reload reads the same file(s) again: the one named here, or the default location.
    service = Service(config, config_loader=lambda: config_module.load(config_path))
    # What the imports made never becomes garbage: full collections stop walking it (the
    # pauses were most of markd's own slow scans, docs/performance.md "The tail").
    freeze_imports()
    # A ConfigError found while starting (a configured secret missing, a bad printer URL …)
    # is reported like a bad file, with status 2: restarting cannot fix it.
    asyncio.run(service.run(handle_signals=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "reload":
        return _reload(args.pid, args.timeout)
    if args.command == "configured":
        return _configured(args.config)
    program = "markd demo" if args.command == "demo" else "markd"
    try:
        if args.command == "demo":
            from markd.demo import run_demo

            return run_demo(printer=args.printer)
        return _run_service(args.config)
    except MarkdError as exc:
        # No input reasons: for the daemon only a bad configuration is 2, the status its unit
        # does not restart on.
        return report(exc, program)
    except KeyboardInterrupt:
        # Ctrl+C before the signal handlers were installed (during start-up).
        return 130


if __name__ == "__main__":
    sys.exit(main())
