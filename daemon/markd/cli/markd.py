"""``markd``: the daemon (``markd [--config FILE]``), the demo (``markd demo``) and the reload
helper (``markd reload PID``, the unit's ``ExecReload=``).

Exit status: 0 after a clean stop (SIGTERM, SIGINT) or a finished demo; 2 when the failure is
permanent (:attr:`markd.errors.MarkdError.permanent`: an invalid configuration — every problem
printed to stderr, one per line —, a missing secret, a store the service may not open), which
its unit does not restart on; 1 for a failure that may pass (a port in use, a device or
service not there yet) and for an unexpected error, which systemd retries. Under journald a
failed start also leaves a ``start-failed`` record at priority ``err`` naming the reason and
every problem (``journalctl -u markd -p err``).

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
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from markd import __version__
from markd.cli.errors import EXIT_BAD_INPUT, EXIT_FAILED, report
from markd.errors import ConfigError, MarkdError, raised_at

if TYPE_CHECKING:
    from markd.service import Service


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
    sub.add_parser(
        "configured",
        help="exit 0 when the configuration sets anything, 1 when it is all defaults",
        description="Exit 0 when the configuration file or one of its drop-ins sets a key "
        "(or cannot be read: the start then says why), 1 when nothing is configured yet. "
        "The packaged unit runs it as ExecCondition=, so an installed but unconfigured markd "
        "stays stopped instead of running on development defaults. Exit 255 when the "
        "question itself failed, so that systemd fails the unit instead of skipping it.",
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


#: ``markd configured``'s status for a failure of its own. ExecCondition= reads 1 to 254 as
#: "condition not met" (the start is skipped without a word at err), 255 and signals as a
#: failure of the unit: a bug here must not look like an unconfigured machine.
EXIT_CONDITION_BROKEN = 255


def _configured(config_path: str | None) -> int:
    """``markd configured``: 0 configured, 1 not yet, 255 when the answer could not be had."""
    try:
        return _configured_answer(config_path)
    except Exception as exc:  # noqa: BLE001 - any failure must fail the unit, not skip it
        traceback.print_exc()
        print(
            f"markd configured: internal-error: {type(exc).__name__}: {exc}; "
            f"the start is refused (exit status {EXIT_CONDITION_BROKEN})",
            file=sys.stderr,
        )
        return EXIT_CONDITION_BROKEN


def _configured_answer(config_path: str | None) -> int:
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
    """Load the configuration, run the service until it is stopped; on a failure, say why
    (stderr, and an ``err`` record in the journal) and return the exit status."""
    # Imported here so that `markd --version` and `markd --help` stay fast on a small board.
    from markd import config as config_module
    from markd.service import Service
    from markd.service.gcpolicy import freeze_imports

    def load() -> config_module.Config:
        # The same load as `markctl config check`: the files and every secret they call for.
        return config_module.load(config_path, for_service=True)

    service: Service | None = None
    try:
        config = load()
        # A reload reads the same file(s) again: the one named here, or the default location.
        service = Service(config, config_loader=load)
        # What the imports made never becomes garbage: full collections stop walking it (the
        # pauses were most of markd's own slow scans, docs/performance.md "The tail").
        freeze_imports()
        asyncio.run(service.run(handle_signals=True))
    except MarkdError as exc:
        # A permanent error (a bad configuration, a missing secret …) is status 2: systemd
        # does not restart into the same error (RestartPreventExitStatus=2).
        status = report(exc, "markd")
        _journal_failure(service, exc, status)
        return status
    except Exception as exc:  # noqa: BLE001 - a bug at start is still explained, then exit 1
        traceback.print_exc()
        print(f"markd: internal-error: {type(exc).__name__}: {exc}", file=sys.stderr)
        _journal_failure(service, exc, EXIT_FAILED)
        return EXIT_FAILED
    return 0


def _journal_failure(service: Service | None, exc: BaseException, status: int) -> None:
    """The ``start-failed`` record (``service-error`` once the daemon was ready) at priority
    ``err``, so that ``journalctl -u markd -p err`` says why markd is not running: the reason
    code, every problem (file, line and key; the path or port) and the exit status. Written
    only when the log goes to the journal: on a terminal, the lines :func:`report` printed say
    the same. Messages name files and credentials, never a secret's value: only a
    :class:`~markd.errors.MarkdError`'s text is written, any other exception is named by its
    type and where it was raised."""
    from markd.systemd import EventLog

    event_log = service.event_log if service is not None else EventLog(target="auto")
    if event_log.target != "journal":
        return
    if isinstance(exc, MarkdError):
        reason = exc.reason
        problems = exc.problems if isinstance(exc, ConfigError) else [exc.message]
    else:
        # Nobody vetted this message: it may quote a secret or a whole code (a bug formatting
        # a request, a library's error with its input). The type and the place it was raised
        # say which bug it is; the traceback on stderr says the rest.
        reason = "internal-error"
        problems = [f"{type(exc).__name__} at {raised_at(exc)}"]
    started = service is not None and service.ready.is_set()
    kind = "service-error" if started else "start-failed"
    what = "markd stopped" if started else "markd did not start"
    retry = "not restarted" if status == EXIT_BAD_INPUT else "systemd may restart it"
    message = f"{what} ({reason}, exit status {status}: {retry}): " + "; ".join(problems)
    event_log.event(
        kind,
        message,
        priority="error",
        reason=reason,
        exit_status=status,
        problems=" | ".join(problems),
        error=type(exc).__name__,
    )


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
        # The demo's errors (the daemon reports its own): no input reasons, so only a
        # permanent error is 2.
        return report(exc, program)
    except KeyboardInterrupt:
        # Ctrl+C before the signal handlers were installed (during start-up).
        return 130


if __name__ == "__main__":
    sys.exit(main())
