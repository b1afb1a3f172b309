"""Run one emulator from a shell until SIGTERM or Ctrl+C.

::

    python -m markd.emulators NAME [--port P] [--host 127.0.0.1] [--scenario FILE] [--tls]
                                   [--no-admin] [--verbose]
    python -m markd.emulators crpt_cdn [--port P] [--hosts N] [--scenario FILE] [--tls]
    python -m markd.emulators static_http --directory DIR [--port P] [--auth USER:PASSWORD] [--tls]
    python -m markd.emulators atol_web [--port P] [--state-dir DIR] [--scenario FILE] [--tls]
        [--auth USER:PASSWORD] [--device NAME …]
    python -m markd.emulators shtrih (--pty | --tcp PORT | both) [--host 127.0.0.1] [--state DIR]
                                     [--baudrate N]

``NAME`` is ``crpt_cdn``, ``local_module``, ``tspiot``, ``static_http`` or ``atol_web`` (an
ATOL Web Requests server in front of the virtual ККТ, its state in ``--state-dir``; see
:mod:`markd.emulators.atol_web`). ``crpt_cdn`` is split like the real CDN: its list service
listens on ``--port`` and each of its ``--hosts`` (default 1) on a free port, named on stderr.
The first line on
stdout is the base URL the emulator listens on (``http://127.0.0.1:PORT``; with ``--port 0``
the kernel picks the port, so read it from there); everything else goes to stderr
(``--verbose``: one JSON line per request). ``--scenario`` takes a ``.json`` or ``.toml``
scenario (:mod:`markd.emulators.scenario`). Exit status 0 after SIGTERM/SIGINT, 1 when the
port cannot be bound or TLS is unavailable, 2 for a bad command line or scenario.

``shtrih`` is the virtual Shtrih-M ККТ speaking protocol 1 (:mod:`markd.emulators.shtrih`),
its state in ``--state`` (a temporary directory without it). It prints on stdout the path of
its pty's slave side (``--pty``: open it as the serial port) and/or ``tcp://HOST:PORT``
(``--tcp PORT``; 0: a free port), one a line, pty first. ``--baudrate N`` paces the device at
a serial line of N baud (10 bits a byte, both ways; see :mod:`markd.emulators.shtrih.serve`);
without it bytes go at once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from markd.errors import MarkdError

#: name → (module, class, default port). Imported only when chosen.
EMULATORS: dict[str, tuple[str, str, int]] = {
    "crpt_cdn": ("markd.emulators.crpt_cdn", "CrptCdn", 8081),
    "local_module": ("markd.emulators.local_module", "LocalModuleEmulator", 5995),
    "tspiot": ("markd.emulators.tspiot", "TspiotEmulator", 51401),
    "static_http": ("markd.emulators.static_http", "StaticHTTPServer", 8080),
    "atol_web": ("markd.emulators.atol_web", "AtolWebEmulator", 16732),
}


def emulator_class(name: str) -> Any:
    """The class of emulator ``name`` (a key of :data:`EMULATORS`)."""
    try:
        module_name, class_name, _ = EMULATORS[name]
    except KeyError:
        raise ValueError(f"unknown emulator {name!r}; known: {', '.join(EMULATORS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def _parser() -> argparse.ArgumentParser:
    ports = ", ".join(f"{name} {port}" for name, (_, _, port) in EMULATORS.items())
    parser = argparse.ArgumentParser(
        prog="python -m markd.emulators",
        description="Run a loopback emulator of a marking check service (or the static file "
        "server). The first stdout line is the URL it listens on.",
    )
    parser.add_argument("name", choices=list(EMULATORS), help="which emulator")
    parser.add_argument("--port", type=int, help=f"TCP port, 0: any free one ({ports})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--scenario", metavar="FILE", help="scenario file (.json or .toml)")
    parser.add_argument("--tls", action="store_true", help="HTTPS, self-signed certificate")
    parser.add_argument(
        "--tls-cert",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="HTTPS with this certificate and key (PEM files) instead of a new one",
    )
    parser.add_argument("--no-admin", action="store_true", help="no /_emulator/ admin endpoint")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="each request as JSON on stderr"
    )
    parser.add_argument(
        "--history",
        type=int,
        metavar="N",
        help="keep only about the latest N requests in the request log (default: all)",
    )
    parser.add_argument(
        "--hosts", type=int, metavar="N", help="crpt_cdn: how many listed hosts (1)"
    )
    parser.add_argument("--directory", metavar="DIR", help="static_http: directory to serve")
    parser.add_argument(
        "--auth", metavar="USER:PASSWORD", help="static_http, atol_web: require Basic auth"
    )
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="atol_web: another device, chosen with ?deviceID=NAME (repeatable)",
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="atol_web: the virtual ККТ's state (kept across runs)"
    )
    return parser


def _build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    port = args.port if args.port is not None else EMULATORS[args.name][2]
    cls = emulator_class(args.name)
    if args.state_dir and args.name != "atol_web":
        parser.error("--state-dir is for atol_web")
    if args.hosts is not None and args.name != "crpt_cdn":
        parser.error("--hosts is for crpt_cdn")
    if args.hosts is not None and not 1 <= args.hosts <= 32:
        parser.error("--hosts takes 1 to 32")
    if args.device and args.name != "atol_web":
        parser.error("--device is for atol_web")
    if args.name == "atol_web":
        if args.directory:
            parser.error("--directory is for static_http")
        web_auth = _basic_auth(parser, args.auth)
        try:
            return cls(
                args.scenario,
                host=args.host,
                port=port,
                tls=args.tls or bool(args.tls_cert),
                admin=not args.no_admin,
                verbose=args.verbose,
                certificate=_certificate(args),
                state_dir=args.state_dir,
                auth=web_auth,
                devices=args.device,
            )
        except ValueError as exc:
            parser.error(str(exc))
    if args.name != "static_http":
        if args.directory or args.auth:
            parser.error("--directory and --auth are for static_http")
        extra: dict[str, Any] = {"hosts": args.hosts or 1} if args.name == "crpt_cdn" else {}
        if args.tls_cert:
            extra["certificate"] = _certificate(args)
        return cls(
            args.scenario,
            host=args.host,
            port=port,
            tls=args.tls or bool(args.tls_cert),
            admin=not args.no_admin,
            verbose=args.verbose,
            **extra,
        )
    if args.scenario:
        parser.error("static_http takes no --scenario")
    if not args.directory:
        parser.error("static_http needs --directory DIR")
    auth = _basic_auth(parser, args.auth)
    return cls(
        args.directory,
        host=args.host,
        port=port,
        auth=auth,
        tls=args.tls or bool(args.tls_cert),
        certificate=_certificate(args),
        verbose=args.verbose,
    )


def _certificate(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """``--tls-cert CERT KEY`` as the ``certificate`` option of every emulator."""
    if not args.tls_cert:
        return None
    return Path(args.tls_cert[0]), Path(args.tls_cert[1])


def _basic_auth(parser: argparse.ArgumentParser, value: str | None) -> tuple[str, str] | None:
    """``--auth USER:PASSWORD`` as the pair the servers take (None without it)."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep:
        parser.error("--auth takes USER:PASSWORD")
    return user, password


def _shtrih_main(argv: Sequence[str]) -> int:
    """``python -m markd.emulators shtrih …``: serve the virtual Shtrih-M ККТ until a signal."""
    import tempfile

    from markd.emulators.shtrih import ShtrihKkt, ShtrihServer

    parser = argparse.ArgumentParser(
        prog="python -m markd.emulators shtrih",
        description="Serve the virtual Shtrih-M ККТ (protocol 1) on a pty and/or TCP. Stdout: "
        "the pty's path and/or tcp://HOST:PORT, one a line.",
    )
    parser.add_argument("--pty", action="store_true", help="serve on a new pty")
    parser.add_argument("--tcp", type=int, metavar="PORT", help="serve on TCP (0: a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address to bind (127.0.0.1)")
    parser.add_argument(
        "--state", "--state-dir", dest="state", metavar="DIR", help="the device's state directory"
    )
    parser.add_argument(
        "--baudrate",
        type=int,
        metavar="N",
        help="pace the device at a serial line of N baud, 10 bits a byte (default: no pacing)",
    )
    args = parser.parse_args(argv)
    if not args.pty and args.tcp is None:
        parser.error("give --pty, --tcp PORT or both")
    if args.baudrate is not None and args.baudrate <= 0:
        parser.error("--baudrate takes a positive number")
    with contextlib.ExitStack() as stack:
        state = args.state or stack.enter_context(tempfile.TemporaryDirectory())
        server = stack.enter_context(ShtrihServer(ShtrihKkt(state), baudrate=args.baudrate))
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if args.pty:
                print(server.start_pty(), flush=True)
            if args.tcp is not None:
                try:
                    port = server.start_tcp(args.host, args.tcp)
                except OSError as exc:
                    print(f"shtrih: cannot listen: {exc.strerror or exc}", file=sys.stderr)
                    return 1
                print(f"tcp://{args.host}:{port}", flush=True)
            print(f"shtrih serving, state in {state} (SIGTERM or Ctrl+C stops)", file=sys.stderr)
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["shtrih"]:
        return _shtrih_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        server = _build(args, parser)
    except OSError as exc:
        print(f"{args.name}: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except MarkdError as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if args.history is not None:
        # The CDN is several servers (its list service and hosts), each with its own log.
        for part in getattr(server, "servers", [server]):
            part.history = max(1, args.history)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    # What start-up made stays for the process's life: full collections need not walk it,
    # so a long run (the soak benchmark) sees answers without the collector's pauses.
    gc.collect()
    gc.freeze()
    try:
        print(server.url, flush=True)
        print(f"{args.name} listening on {server.url} (SIGTERM or Ctrl+C stops)", file=sys.stderr)
        describe = getattr(server, "describe", None)
        if describe is not None:
            print(describe(), file=sys.stderr)
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
