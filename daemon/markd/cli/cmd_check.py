"""``markctl check CODE`` (one check through the configured chain) and ``markctl status``.

``check`` prints the verdict; with ``--json`` the keys are ``decision``, ``reason``,
``message``, ``source``, ``req_id``, ``req_timestamp``, ``inst``, ``version``, ``tag1265``,
``latency_ms`` (plus ``checked``, ``ki``, ``details``). Exit status 0 allow, 3 deny, 2 bad
input or configuration, 1 the store cannot be opened. (Deny is not an error of the command,
but a script must be able to tell it from allow without parsing.)

``status`` shows each configured source's health (CDN hosts and latencies, Local Module state
and last sync, ТС ПИоТ protocol and state) and the store's freshness, one line each with a
state word (:mod:`markd.cli.status_report`); ``--json`` prints the status as it is. Exit
status 0 healthy, 1 degraded (the rule: :mod:`markd.cli.status_report`), 3 markd not running
(the sources and the store are then probed in-process, and the output says so); with
``--in-process`` 0 or 1 by the same rule.

Both ask the running daemon first, through its control socket (``[api] socket`` or
``--socket``): ``check`` then goes the way of a scan (journaled, scanner ``api``) and ``status``
also shows the service, its scanners and the printer. When no daemon listens (no socket), they
do the work in-process, as before; the output says which (``via daemon`` / ``in-process``,
key ``via`` in JSON). ``--in-process`` skips the daemon; so does ``check --price``, which the
daemon's check does not take.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from markd import codes
from markd import config as config_module
from markd.api.client import ControlClient, DaemonNotRunning
from markd.checks.verdict import Verdict, parser_verdict
from markd.cli import status_report
from markd.errors import CodeError, StoreError
from markd.events import verdict_json
from markd.money import roubles_to_kopecks
from markd.service.wiring import build_chain
from markd.store import Store
from markd.text import printable_json

EXIT_DENY = 3
#: ``markctl status``: the daemon runs but something needs a look (:mod:`markd.cli.status_report`).
EXIT_DEGRADED = 1
#: ``markctl status``: no daemon accepts on the control socket.
EXIT_NOT_RUNNING = 3
PROBE_TIMEOUT_S = 3.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check one code through the configured chain")
    p.add_argument("code", help="the scanned code (\\u001d or <GS> for GS)")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--price", help="sale price in roubles (for price rules), e.g. 89.90")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    add_daemon_arguments(p)
    p.set_defaults(func=_check)

    p = sub.add_parser("status", help="health of the daemon, check sources and the store")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--json", action="store_true")
    add_daemon_arguments(p)
    p.set_defaults(func=_status)


def add_daemon_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket", metavar="PATH", help="the daemon's control socket (default: [api] socket)"
    )
    p.add_argument(
        "--in-process", action="store_true", help="do not ask the daemon; do the work here"
    )


def control_socket(args: argparse.Namespace, cfg: Any) -> str:
    """The control socket to try: ``--socket``, else the configuration's ``[api] socket``."""
    return str(args.socket or cfg.api.socket)


def _open_store(cfg: Any) -> Store:
    try:
        return Store.from_config(cfg.store)
    except StoreError:
        return Store.from_config(cfg.store, readonly=True)  # a technician without write access


async def _check_once(cfg: Any, text: str, price: int | None) -> Verdict:
    with _open_store(cfg) as store:
        chain = build_chain(cfg, store, background=False)
        try:
            try:
                code = codes.parse(text, cfg.codes_options())
            except CodeError as err:
                return parser_verdict(err, scanner="markctl", latency_ms=0.0)
            return await chain.decide(code, "markctl", price_kopecks=price)
        finally:
            # The CDN client writes the host list it fetched, so the next ``markctl check``
            # need not fetch it again.
            await chain.aclose()


def _check(args: argparse.Namespace) -> int:
    price: int | None = None
    if args.price is not None:
        price, problem = roubles_to_kopecks(args.price)
        if price is None:
            print(f"markctl: --price: {problem}", file=sys.stderr)
            return 2
    cfg = config_module.load(args.config)
    data: dict[str, Any] | None = None
    via = "in-process"
    if price is not None:
        via = "in-process (--price is not sent to the daemon)"
    elif not args.in_process:
        socket_path = control_socket(args, cfg)
        try:
            data = ControlClient(socket_path).check(args.code)
            via = f"daemon ({socket_path})"
        except DaemonNotRunning:
            via = "in-process (markd is not running)"
    if data is None:
        data = verdict_json(asyncio.run(_check_once(cfg, args.code, price)))
    data["via"] = via.split(" ")[0]
    if args.json:
        print(printable_json(data, ensure_ascii=False))
    else:
        print(f"{data['decision'].upper()} {data['ki'] or '(not a code)'}: {data['reason']}")
        print(f"  {data['message']}")
        print(
            f"  source {data['source']}, {data['latency_ms']:.1f} ms"
            + (f", tag 1265 {data['tag1265']}" if data["tag1265"] else "")
        )
        print(f"  via {via}")
    if data["decision"] == "allow":
        return 0
    return 2 if data["source"] == "parser" else EXIT_DENY


async def _probe(cfg: Any) -> dict[str, Any]:
    from markd.service.wiring import build_clients

    out: dict[str, Any] = {"mode": cfg.check.mode}
    clients = build_clients(cfg)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        for name, client in clients.items():
            try:
                await client.probe(deadline)
            except Exception as exc:  # noqa: BLE001 - status reports, never fails
                out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            out[name] = client.status()
    finally:
        for client in clients.values():
            await client.aclose()
    return out


def _status(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    report: dict[str, Any] | None = None
    via = "in-process"
    not_running = False
    if not args.in_process:
        socket_path = control_socket(args, cfg)
        try:
            report = ControlClient(socket_path).status()
            report["mode"] = report["service"]["mode"]
            via = f"daemon ({socket_path})"
        except DaemonNotRunning:
            not_running = True
            via = "in-process (markd is not running)"
            print(
                f"markctl: markd is not running (nothing accepts on {socket_path}); "
                "the check sources and the store are probed from here",
                file=sys.stderr,
            )
    if report is None:
        report = asyncio.run(_probe(cfg))
        try:
            with Store.from_config(cfg.store, readonly=True) as store:
                report["store"] = store.stats()
        except StoreError as exc:
            report["store"] = {"error": exc.message}
    report["via"] = via.split(" ")[0]
    if args.json:
        print(printable_json(report, ensure_ascii=False, default=str))
    else:
        print("\n".join(status_report.format_report(report, via)))
    if not_running:
        return EXIT_NOT_RUNNING
    return EXIT_DEGRADED if status_report.problems(report) else 0
