"""``markctl receipt show|open|add|close|cancel``: the running daemon's receipt, through its
control API (``/v1/receipt…`` on ``[api] socket`` or ``--socket``), so that a technician never
needs curl on the socket.

* ``show``: the open receipt, or ``no receipt open``; ``show ID``: what became of receipt ID
  (``GET /v1/receipts/{id}``: open, closing, registered with its document number and fiscal
  sign, cancelled, unknown-needs-technician), after a restart too;
* ``open [--return]``: open a sale (or a return) receipt (``POST /v1/receipt``);
* ``add CODE --price RUB [--name NAME] [--tax TAX]``: one marked unit — one code is one unit,
  so there is no quantity (``POST /v1/receipt/items``; with no receipt open the daemon opens a
  sale). The daemon checks the code at that price, as a scan; a sale takes only allowed codes;
* ``close [--payment TYPE[:RUB]]…``: print the receipt (``POST /v1/receipt/close``); without
  ``--payment`` the daemon pays the whole total with ``[fiscal] payment_type``;
* ``cancel``: drop the open receipt (``POST /v1/receipt/cancel``).

Human output: one line per position with its КИ (never the code's crypto tail) and the totals
in roubles. ``--json`` prints the API's answer as is; a refusal then also prints
``{"error": {"reason", "message"}}`` on stdout.

Exit status: 0 done; 1 the daemon refused (its reason and message on stderr, as
``markctl: REASON: MESSAGE``: ``receipt-not-open``, ``code-not-allowed``, ``underpaid`` …) or is
not running (``daemon-not-running``, naming the socket, as ``markctl events``); 2 bad
arguments or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from markd import config as config_module
from markd.api.client import ControlClient
from markd.cli.cmd_sell import describe_receipt
from markd.money import roubles_to_kopecks
from markd.receipts import PAYMENT_TYPES
from markd.text import printable_json

EXIT_BAD_ARGUMENTS = 2
DEFAULT_NAME = "Товар"

HELP = """\
Drive the running daemon's receipt through its control socket ([api] socket, or --socket).

  markctl receipt show                       the open receipt: positions, total in roubles
  markctl receipt show ID                    what became of receipt ID (registered with its
                                             document number and fiscal sign, cancelled …)
  markctl receipt open [--return]            open a sale (or a return) receipt
  markctl receipt add CODE --price RUB [--name NAME] [--tax TAX]
                                             one marked unit (one code = one unit); checked
                                             at that price like a scan; opens a sale if none
  markctl receipt close [--payment TYPE[:RUB]]...
                                             print it (TYPE: electronically or cash; default:
                                             the whole total, [fiscal] payment_type)
  markctl receipt cancel                     drop the open receipt

--json prints the API's answer as is. Exit status: 0 done; 1 the daemon refused (its reason
and message on stderr) or is not running; 2 bad arguments or configuration."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "receipt",
        help="the running daemon's receipt: show, open, add a unit, close, cancel",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="receipt_command", metavar="ACTION")
    actions.required = True

    show = actions.add_parser(
        "show", help="the open receipt (positions and total), or what became of receipt ID"
    )
    show.add_argument(
        "receipt_id", nargs="?", metavar="ID", help="a receipt's id, as its open answered"
    )
    _common(show)
    show.set_defaults(func=_show)

    opened = actions.add_parser("open", help="open a receipt (a sale, or --return)")
    opened.add_argument(
        "--return", dest="is_return", action="store_true", help="a return receipt instead"
    )
    _common(opened)
    opened.set_defaults(func=_open)

    add = actions.add_parser(
        "add",
        help="add one marked unit (one code, one unit); opens a sale when none is open",
    )
    add.add_argument("code", metavar="CODE", help="the scanned code (<GS> or \\u001d for GS)")
    add.add_argument("--price", required=True, help="the unit's price in roubles, e.g. 89.90")
    add.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"position name on the receipt (default {DEFAULT_NAME})",
    )
    add.add_argument("--tax", help="tax type as the printer names it (vat20 …; default: [fiscal])")
    _common(add)
    add.set_defaults(func=_add)

    close = actions.add_parser("close", help="close (print) the open receipt")
    close.add_argument(
        "--payment",
        action="append",
        metavar="TYPE[:RUB]",
        help=(
            f"a payment ({' or '.join(PAYMENT_TYPES)}), with its amount in roubles; repeat for "
            "a split payment; one TYPE without an amount pays the total. Default: the whole "
            "total with [fiscal] payment_type"
        ),
    )
    _common(close)
    close.set_defaults(func=_close)

    cancel = actions.add_parser("cancel", help="cancel the open receipt")
    _common(cancel)
    cancel.set_defaults(func=_cancel)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="configuration file (for [api] socket)")
    p.add_argument(
        "--socket", metavar="PATH", help="the daemon's control socket (default: [api] socket)"
    )
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(json_errors=True)


def _client(args: argparse.Namespace) -> ControlClient:
    socket_path = args.socket
    if socket_path is None:
        socket_path = config_module.load(args.config).api.socket
    return ControlClient(str(socket_path))


def _print_json(answer: Any) -> None:
    print(printable_json(answer, ensure_ascii=False))


# --------------------------------------------------------------------------------------------
# Actions


def _show(args: argparse.Namespace) -> int:
    if args.receipt_id is not None:
        outcome = _client(args).request("GET", f"/v1/receipts/{quote(args.receipt_id, safe='')}")
        if args.json:
            _print_json(outcome)
        else:
            print(describe_outcome(outcome.get("receipt") or {}))
        return 0
    answer = _client(args).request("GET", "/v1/receipt")
    if args.json:
        _print_json(answer)
    else:
        print(describe_open(answer.get("receipt")))
    return 0


def _open(args: argparse.Namespace) -> int:
    body = {"kind": "return" if args.is_return else "sell"}
    answer = _client(args).request("POST", "/v1/receipt", body)
    if args.json:
        _print_json(answer)
    else:
        print(describe_open(answer.get("receipt")))
    return 0


def _add(args: argparse.Namespace) -> int:
    price, problem = roubles_to_kopecks(args.price)
    if price is None:
        print(f"markctl: --price: {problem}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    if not args.name.strip():
        print("markctl: --name must not be empty", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    body: dict[str, Any] = {"code": args.code, "name": args.name, "price_kopecks": price}
    if args.tax is not None:
        body["tax"] = args.tax
    answer = _client(args).request("POST", "/v1/receipt/items", body)
    if args.json:
        _print_json(answer)
        return 0
    verdict = answer.get("verdict") or {}
    print(
        f"{str(verdict.get('decision', '?')).upper()} {verdict.get('ki') or '(not a code)'}: "
        f"{verdict.get('reason')}"
        + (f", tag 1265 {verdict['tag1265']}" if verdict.get("tag1265") else "")
    )
    print(describe_open(answer.get("receipt")))
    return 0


def _close(args: argparse.Namespace) -> int:
    payments: list[dict[str, Any]] = []
    if args.payment:
        parsed, problem = parse_payments(args.payment)
        if parsed is None:
            print(f"markctl: --payment: {problem}", file=sys.stderr)
            return EXIT_BAD_ARGUMENTS
        payments = parsed
    client = _client(args)
    if payments and payments[0]["amount_kopecks"] is None:
        # One TYPE without an amount: the whole total, which the close route wants spelled
        # out. With no receipt open nothing is sent, and the daemon says receipt-not-open.
        current = client.request("GET", "/v1/receipt").get("receipt")
        payments = (
            []
            if current is None
            else [{**payments[0], "amount_kopecks": current.get("total_kopecks")}]
        )
    body: dict[str, Any] = {"payments": payments} if payments else {}
    answer = client.request("POST", "/v1/receipt/close", body)
    if args.json:
        _print_json(answer)
    else:
        print(describe_done(answer.get("receipt") or {}))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    answer = _client(args).request("POST", "/v1/receipt/cancel", {})
    if args.json:
        _print_json(answer)
    else:
        print(describe_done(answer.get("receipt") or {}))
    return 0


def parse_payments(texts: list[str]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``--payment`` values as the close route's ``payments``, or None and why.

    ``TYPE:RUB`` is one payment of that amount; a single ``TYPE`` alone is the whole total in
    that type (its ``amount_kopecks`` None here: :func:`_close` asks the daemon for the
    total, the close route takes only amounts)."""
    payments: list[dict[str, Any]] = []
    bare: list[str] = []
    for text in texts:
        kind, sep, amount = text.partition(":")
        kind = kind.strip()
        if kind not in PAYMENT_TYPES:
            return None, f"expected {' or '.join(PAYMENT_TYPES)}[:RUB], got {text!r}"
        if not sep:
            bare.append(kind)
            continue
        kopecks, problem = roubles_to_kopecks(amount)
        if kopecks is None:
            return None, f"{text!r}: {problem}"
        if kopecks < 1:
            return None, f"{text!r}: a payment must be at least 0.01"
        payments.append({"type": kind, "amount_kopecks": kopecks})
    if bare and (len(bare) > 1 or payments):
        return None, "a payment without an amount pays the whole total: give it alone"
    if bare:
        return [{"type": bare[0], "amount_kopecks": None}], None
    return payments, None


# --------------------------------------------------------------------------------------------
# Text output


def _roubles(kopecks: Any) -> str:
    return f"{kopecks / 100:.2f}" if isinstance(kopecks, int) else "?"


def describe_open(receipt: dict[str, Any] | None) -> str:
    """The open receipt as lines: a header with the total, then one line per position (its
    КИ, never the code: the API's receipt holds no crypto tail)."""
    if receipt is None:
        return "no receipt open"
    units = receipt.get("units") or []
    lines = [
        f"receipt {receipt.get('id')}: {receipt.get('kind', 'sell')}, {receipt.get('state')},"
        f" {len(units)} unit{'' if len(units) == 1 else 's'},"
        f" total {_roubles(receipt.get('total_kopecks'))} RUB"
    ]
    for number, unit in enumerate(units, start=1):
        quantity = unit.get("quantity", 1)
        amount = unit.get("amount_kopecks", unit.get("price_kopecks"))
        lines.append(
            f"  {number}. {unit.get('name')} {_roubles(unit.get('price_kopecks'))} × {quantity}"
            f" = {_roubles(amount)} RUB, КИ {unit.get('ki', '-')}, tax {unit.get('tax', '-')}"
        )
    return "\n".join(lines)


def describe_outcome(receipt: dict[str, Any]) -> str:
    """What became of one receipt (``GET /v1/receipts/{id}``), on one line."""
    words = [
        f"receipt {receipt.get('id')}: {receipt.get('kind', 'sell')}, {receipt.get('state')}"
        + (f" ({receipt['reason']})" if receipt.get("reason") else "")
    ]
    if receipt.get("total_kopecks") is not None:
        words.append(f"total {_roubles(receipt.get('total_kopecks'))} RUB")
    if receipt.get("document_number") is not None:
        words.append(f"document {receipt['document_number']}")
        words.append(f"fiscal sign {receipt.get('fiscal_sign') or 'unknown'}")
        if receipt.get("registered_at"):
            words.append(str(receipt["registered_at"]))
    return ", ".join(words)


def describe_done(receipt: dict[str, Any]) -> str:
    """A closed or cancelled receipt (the close and cancel routes' ``receipt``)."""
    lines = [f"receipt {receipt.get('id')} {receipt.get('status')}"]
    document = receipt.get("document")
    if isinstance(document, dict):
        lines.append(describe_receipt(document))
    for payment in receipt.get("payments") or []:
        lines.append(f"  paid {payment.get('type')} {_roubles(payment.get('amount_kopecks'))} RUB")
    if receipt.get("payments_ignored"):
        lines.append("  the payments given were NOT used (an earlier attempt's stand)")
    for dropped in receipt.get("dropped") or []:
        lines.append(f"  dropped: {dropped.get('ki')}: {dropped.get('reason')}")
    if receipt.get("store_ok") is False:
        lines.append("  store: sold journal NOT updated")
    return "\n".join(lines)
