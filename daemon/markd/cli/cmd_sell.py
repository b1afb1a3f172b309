"""``markctl sell CODE...``: a complete test sale, for commissioning a till.

Each code goes through the configured check chain (``[check]``, as ``markctl check``); the
allowed ones go through the ККТ's own validation and onto one receipt on the printer that
``[fiscal] url`` names, closed with one payment of the total (``[fiscal] payment_type``, or
``--payment``). The store's sold journal then holds every КИ, and the Local Module is told when
``[fiscal] lm_sell`` and ``[check.local_module]`` say so — exactly what the daemon does at a
kiosk, through the same :class:`~markd.fiscal.session.SaleSession`. Before anything else the
session recovers whatever an earlier run left unfinished (see ``docs/fiscal.md``).

Output: each code's verdict, the ККТ's answer on it (tags 2004 and 2106, the ОИСМ's verdict),
then the receipt (document number, fiscal sign, positions with their tags). ``--json`` prints
all of it as one object: ``recovery``, ``units`` (per code: ``input``, ``verdict``, ``fiscal``),
``receipt`` (the receipt outcome) and ``exit``.

``--return`` registers a return receipt instead (planned status 3; no permit check): the
store's sold journal then forgets the units, and the Local Module gets ``/cis/return``.

Exit status: 0 every code is on a closed receipt; 3 some codes were refused (the others may be
on a receipt); 1 no receipt could be closed (printer unavailable or refusing, store not
writable); 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from markd import codes
from markd import config as config_module
from markd.checks.chain import CheckChain
from markd.checks.verdict import Verdict, parser_verdict
from markd.errors import CodeError
from markd.fiscal.session import ReceiptOutcome, UnitOutcome
from markd.money import money_problem, roubles_to_kopecks
from markd.receipts import PAYMENT_TYPES, Payment
from markd.service.wiring import (
    build_chain,
    build_session,
    local_module_for_sales,
    open_configured_printer,
    sale_local_module,
)
from markd.store import Store
from markd.systemd import EventLog
from markd.text import printable_json

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
DEFAULT_NAME = "Тестовая продажа markd"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sell", help="a test sale: check the codes, validate them in the ККТ, print a receipt"
    )
    p.add_argument("codes", nargs="+", metavar="CODE", help="scanned codes (\\u001d or <GS>)")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--price", default="1.00", help="price of each unit in roubles (default 1.00)")
    p.add_argument("--name", default=DEFAULT_NAME, help="position name on the receipt")
    p.add_argument(
        "--payment", choices=PAYMENT_TYPES, help="payment type (default [fiscal] payment_type)"
    )
    p.add_argument(
        "--return", dest="is_return", action="store_true", help="a return receipt instead"
    )
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.set_defaults(func=_sell)


def _sell(args: argparse.Namespace) -> int:
    price, problem = roubles_to_kopecks(args.price)
    if problem is None and price is not None:
        problem = money_problem(price * len(args.codes), "the total")
    if problem is not None or price is None:
        print(f"markctl: --price: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.name.strip():
        print("markctl: --name must not be empty", file=sys.stderr)
        return EXIT_CONFIG
    cfg = config_module.load(args.config)
    report = asyncio.run(_run(cfg, args, price))
    if args.json:
        print(printable_json(report, ensure_ascii=False, default=str))
    else:
        _print_report(report)
    return int(report["exit"])


async def _run(cfg: Any, args: argparse.Namespace, price: int) -> dict[str, Any]:
    log = EventLog(target="stderr", level="warning")
    with Store.from_config(cfg.store) as store:
        printer = open_configured_printer(cfg)
        chain = None
        try:
            # One Local Module client: the chain's, which also receives the sold units.
            chain = None if args.is_return else build_chain(cfg, store, sales=True)
            lm_client = (
                local_module_for_sales(cfg)
                if chain is None
                else sale_local_module(cfg, chain.local_module)
            )
            session = build_session(cfg, printer, store, event_log=log, lm_client=lm_client)
        except BaseException:
            if chain is not None:
                chain.close()
            printer.close()
            raise
        try:
            recovery = await session.recover()
            units: list[dict[str, Any]] = []
            outcomes: list[UnitOutcome] = []
            if args.is_return:
                await session.open("return")
            for text in args.codes:
                entry: dict[str, Any] = {"input_ki": None}
                try:
                    code = codes.parse(text, cfg.codes_options())
                except CodeError as err:
                    verdict = parser_verdict(err, scanner="markctl")
                    entry["verdict"] = _verdict_record(verdict)
                    entry["fiscal"] = None
                    units.append(entry)
                    continue
                entry["input_ki"] = code.ki
                verdict = None if chain is None else await _decide(chain, code, price)
                entry["verdict"] = None if verdict is None else _verdict_record(verdict)
                outcome = await session.add(verdict, code, price, args.name)
                outcomes.append(outcome)
                entry["fiscal"] = outcome.record()
                units.append(entry)
            receipt: ReceiptOutcome | None = None
            if any(o.added for o in outcomes):
                payments = None
                if args.payment:
                    total = sum(o.position.amount_kopecks for o in outcomes if o.position)
                    payments = [Payment(total, args.payment)]
                receipt = await session.close(payments)
            elif session.receipt_id is not None:
                receipt = await session.cancel("nothing-to-sell")
        finally:
            if chain is not None:
                await chain.aclose()  # its Local Module client, the session's too, with it
            elif session.lm_client is not None:
                session.lm_client.close()
            session.close_session()
            printer.close()
    sold_all = receipt is not None and receipt.status == "closed"
    refused = any(u["fiscal"] is None or u["fiscal"]["status"] != "added" for u in units)
    printer_failed = any(o.source == "printer" for o in outcomes)
    if printer_failed or (receipt is not None and receipt.status in ("failed", "pending")):
        code_ = EXIT_FAILED  # the printer, not the codes, is the problem
    elif receipt is None or receipt.status != "closed" or refused:
        code_ = EXIT_REFUSED
    else:
        code_ = EXIT_OK
    return {
        "recovery": recovery.record(),
        "units": units,
        "receipt": None if receipt is None else receipt.record(),
        "sold_all": sold_all and not refused,
        "exit": code_,
    }


async def _decide(chain: CheckChain, code: codes.MarkingCode, price: int) -> Verdict:
    return await chain.decide(code, "markctl", price_kopecks=price)


def _verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "decision": verdict.decision,
        "reason": verdict.reason,
        "message": verdict.message_ru,
        "source": verdict.source,
        "ki": verdict.ki,
        "tag1265": verdict.tag1265,
        "checked": verdict.checked,
        "req_id": verdict.req_id,
    }


# --------------------------------------------------------------------------------------------
# Text output


def _print_report(report: dict[str, Any]) -> None:
    for action in report["recovery"]["actions"]:
        units = ", ".join(action.get("units", [])) or "-"
        print(f"recovery: receipt {action['receipt']}: {action['action']} (units: {units})")
    for outcome in report["recovery"]["outcomes"]:
        if outcome["receipt"] is not None:
            print("recovered " + describe_receipt(outcome["receipt"]))
    for index, unit in enumerate(report["units"], start=1):
        verdict = unit["verdict"]
        subject = unit["input_ki"] or "(not a code)"
        if verdict is None:
            print(f"{index}. RETURN {subject}")
        else:
            print(
                f"{index}. {verdict['decision'].upper()} {subject}: {verdict['reason']} "
                f"(by {verdict['source']})"
            )
            if verdict["tag1265"]:
                print(f"   tag 1265: {verdict['tag1265']}")
        fiscal = unit["fiscal"]
        if fiscal is None:
            print("   not sent to the ККТ")
        elif fiscal.get("fn") is None and fiscal["status"] != "added":
            print(f"   not sent to the ККТ: {fiscal['reason']}")
        else:
            print("   " + describe_fn(fiscal))
    receipt = report["receipt"]
    if receipt is None:
        print("no receipt: nothing was sold")
        return
    if receipt["receipt"] is None:
        print(f"receipt {receipt['status']}: {receipt['reason']}")
        return
    print(describe_receipt(receipt["receipt"]))
    for dropped in receipt["dropped"]:
        print(f"  dropped on re-registration: {dropped['ki']}: {dropped['reason']}")
    if receipt["store_ok"] is not None:
        print(f"  store: {'sold journal updated' if receipt['store_ok'] else 'NOT updated'}")
    if receipt["lm"] is not None:
        print(f"  Local Module: {printable_json(receipt['lm'], ensure_ascii=False)}")


def describe_fn(fiscal: dict[str, Any]) -> str:
    """One line on what the ККТ said about a unit."""
    fn = fiscal.get("fn") or {}
    verdict = "accepted" if fiscal["status"] == "added" else "REFUSED"
    parts = [f"ККТ: {verdict} ({fiscal['reason']})"]
    if fn:
        parts.append(f"2004={fn['tag2004']} 2106={fn['tag2106']}")
        if fn.get("offline"):
            parts.append("offline")
        elif fn.get("oism_no_answer"):
            parts.append("ОИСМ: no answer")
        elif fn.get("item_status"):
            parts.append(f"ОИСМ: {fn['item_status']}")
    return ", ".join(parts)


def describe_receipt(receipt: dict[str, Any]) -> str:
    """The receipt as lines: header, then one line per position with its tags."""
    number = receipt["receipt_number"]
    lines = [
        f"receipt: {receipt['kind']} document {receipt['document_number']}"
        f" (shift {receipt['shift_number']}"
        + (f", receipt {number}" if number is not None else "")
        + "),"
        f" fiscal sign {receipt['fiscal_sign']}, {receipt['datetime']},"
        f" total {receipt['total_kopecks'] / 100:.2f} RUB"
        + (" [found during recovery]" if receipt.get("recovered") else "")
    ]
    for number, position in enumerate(receipt["positions"], start=1):
        tags = position.get("tags", {})
        shown = " ".join(f"{k}={v}" for k, v in tags.items() if v not in (None, ""))
        lines.append(
            f"  {number}. {position['name']} {position['price_kopecks'] / 100:.2f} × "
            f"{position['quantity']}, КИ {position.get('ki', '-')}; {shown}"
        )
    return "\n".join(lines)
