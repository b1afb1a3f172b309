"""``markctl printer status`` and ``markctl printer recover``: the ККТ from a technician's
console.

``status`` asks the printer ``[fiscal] url`` names for the model and firmware it reports, its
shift (state, number), paper, ФН state and warnings, unsent documents and last document
number, lists what stops a receipt now (``paper-out``, ``fn-error``, ``receipt-open`` …) and
says whether the session journal has a receipt in flight. A blocked Web Requests queue
(``queue-blocked``) gets a line of its own with the technician's next step
(``queue_blocked`` in the JSON). ``recover`` runs the sale session's recovery now (the daemon
does it at start) and prints what it did.

Exit status: 0 the printer answered (``status``: even with problems, which are listed; the
JSON has them under ``problems``), or recovery finished; 1 the printer is unreachable, its
driver missing, or recovery left something pending; 2 bad configuration.

Run them while the daemon is stopped: the ККТ serves one client at a time.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from markd import config as config_module
from markd.errors import FiscalError, PrinterURLError
from markd.fiscal.base import QueueBlocked, parse_printer_url
from markd.fiscal.journal import SessionJournal
from markd.fiscal.model import HealthThresholds
from markd.service.wiring import build_session, local_module_for_sales, open_configured_printer
from markd.store import Store
from markd.text import printable_json

EXIT_OK = 0
EXIT_FAILED = 1

#: What a technician does about a blocked Web Requests queue (fiscal.md, "queue-blocked").
QUEUE_BLOCKED_STEPS = (
    "ATOL's Web Requests queue does not move (a request blocked, its result unknown, or one "
    "running longer than [fiscal] timeout_ms); no receipt goes through until it does. Next "
    "step: open the driver's web server ({server}) and see which request holds the queue; "
    "for a blocked one, check on the ККТ what became of it (the last fiscal document, a "
    "receipt left open), resolve or cancel it there, then run `markctl printer recover`."
)


def _web_server(cfg: Any) -> str:
    """The driver's web server as a technician opens it in a browser."""
    try:
        url = parse_printer_url(cfg.fiscal.url)
    except PrinterURLError:
        return "http://HOST:16732"
    return f"http://{url.target}" if url.scheme == "atol-web" else "http://HOST:16732"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("printer", help="the fiscal printer (ККТ): status, recovery")
    printer_sub = p.add_subparsers(dest="printer_command", metavar="ACTION")
    printer_sub.required = True

    status = printer_sub.add_parser("status", help="shift, paper, ФН, unsent documents")
    status.add_argument("--config", metavar="PATH", help="configuration file")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)

    recover = printer_sub.add_parser(
        "recover", help="finish or undo a receipt an interrupted run left behind"
    )
    recover.add_argument("--config", metavar="PATH", help="configuration file")
    recover.add_argument("--json", action="store_true", help="print the report as JSON")
    recover.set_defaults(func=_recover)


def in_flight(journal_path: str) -> str | None:
    """The receipt the journal shows as neither closed nor cancelled, if any."""
    for receipt, records in SessionJournal(journal_path).by_receipt().items():
        events = {r["event"] for r in records}
        if not events & {"closed", "cancelled"}:
            return receipt
    return None


def _status(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    report: dict[str, Any] = {"url": cfg.fiscal.url}
    code = EXIT_OK
    try:
        with open_configured_printer(cfg) as printer:
            status = printer.status()
        report["status"] = status.record()
        report["health_warnings"] = status.health_warnings(
            HealthThresholds(
                fn_days=cfg.fiscal.fn_days_warning,
                unsent_days=cfg.fiscal.unsent_days_warning,
                shift_hours=cfg.fiscal.shift_hours_warning,
            )
        )
    except FiscalError as exc:
        report["error"] = exc.as_dict()
        code = EXIT_FAILED
    report["receipt_in_flight"] = in_flight(cfg.fiscal.journal)
    report["queue_blocked"] = report.get("error", {}).get("reason") == QueueBlocked.reason
    if args.json:
        print(printable_json(report, ensure_ascii=False))
        return code
    print(f"printer      {report['url']}")
    if "error" in report:
        print(f"ERROR        {report['error']['reason']}: {report['error']['message']}")
        if report["queue_blocked"]:
            print(f"QUEUE        BLOCKED: {QUEUE_BLOCKED_STEPS.format(server=_web_server(cfg))}")
    else:
        status = report["status"]
        if status["model"] or status["firmware"]:
            device = status["model"] or "model unknown"
            if status["firmware"]:
                device += f", firmware {status['firmware']}"
            print(f"device       {device}")
        print(f"shift        {status['shift_state']}, number {status['shift_number']}")
        print(f"paper        {'present' if status['paper_present'] else 'OUT'}")
        warnings = ", ".join(status["fn_warnings"]) or "none"
        print(f"ФН           {status['fn_state']}, warnings: {warnings}")
        health = status["health"]
        if health["fn_valid_until"] is not None:
            print(
                f"ФН valid     until {health['fn_valid_until']} "
                f"({health['fn_days_left']} days left)"
            )
        unsent = status["unsent_documents"]
        oldest = ""
        if health["unsent_oldest"] is not None:
            oldest = f", oldest {health['unsent_oldest']} ({health['unsent_oldest_days']} days)"
        print(f"unsent docs  {'unknown' if unsent is None else unsent}{oldest}")
        if health["shift_opened_at"] is not None:
            print(f"shift open   since {health['shift_opened_at']} ({health['shift_hours']} h)")
        print(f"last doc     {status['last_document_number']}")
        opened = status["receipt_open"]
        print(f"receipt open {'unknown' if opened is None else ('YES' if opened else 'no')}")
        print(f"problems     {', '.join(status['problems']) or 'none'}")
        print(f"health       {', '.join(report['health_warnings']) or 'ok'}")
    print(f"in flight    {report['receipt_in_flight'] or 'none'}")
    return code


def _recover(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    report = asyncio.run(_run_recovery(cfg))
    if args.json:
        print(printable_json(report, ensure_ascii=False, default=str))
    else:
        if not report["actions"]:
            print("nothing to recover")
        for action in report["actions"]:
            print(f"receipt {action['receipt']}: {action['action']}")
    return EXIT_FAILED if report["pending"] else EXIT_OK


async def _run_recovery(cfg: Any) -> dict[str, Any]:
    with Store.from_config(cfg.store) as store, open_configured_printer(cfg) as printer:
        session = build_session(cfg, printer, store, lm_client=local_module_for_sales(cfg))
        try:
            return (await session.recover()).record()
        finally:
            if session.lm_client is not None:
                session.lm_client.close()
            session.close_session()
