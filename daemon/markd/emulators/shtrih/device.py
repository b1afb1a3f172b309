"""The device model of the virtual Shtrih-M ККТ: protocol 1 commands in, answers out, its whole
state on disk; the shift and receipt commands (the status and marking ones are in
:mod:`.status` and :mod:`.marking`). The bytes on the wire (ENQ/ACK/NAK, frames, LRC) are
:mod:`.link`'s job; this module takes a command's bytes (``CMD DATA``) and gives the
answer's (``CMD ERR DATA``).

Where each layout comes from is listed in the package docstring (:mod:`markd.emulators.shtrih`);
each handler below names its source again, in our words.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from markd.emulators.shtrih.marking import MarkingCommands
from markd.emulators.shtrih.protocol import (
    DEFAULT_PASSWORD,
    DEFAULT_TAXATION,
    FN_VALIDITY_DAYS,
    FN_WARNING_BITS,
    MSK,
    OPERATOR_NUMBER,
    PAYMENT_NAMES,
    RECEIPT_KINDS,
    SHIFT_HOURS,
    TAXATION_BITS,
    Error,
    GoneNow,
    Reader,
    Refused,
    cp866,
    hm,
    tlvs,
    u,
    ymd,
)
from markd.emulators.shtrih.status import StatusCommands
from markd.emulators.statefile import DOCUMENTS_FILE as DOCUMENTS_FILE
from markd.emulators.statefile import DOCUMENTS_MODE as DOCUMENTS_MODE
from markd.emulators.statefile import LOCK_FILE as LOCK_FILE
from markd.emulators.statefile import STATE_FILE as STATE_FILE
from markd.emulators.statefile import DeviceFiles

FORMAT_VERSION = 1


ISM_MODES = ("online", "offline", "timeout")
GONE_MODES = ("open", "after")
FAULT_KEYS = frozenset(
    {
        # shared with VirtualKkt, same meaning
        "paper_out",
        "gone",
        "gone_in_receipt",
        "begin_busy",
        "ism",
        "fn_error",
        "shift_expired",
        "taxation_types",
        "fn_days_left",
        "unsent_age_days",
        "shift_age_hours",
        "fn_warnings",
        "codes",
        # Shtrih's own
        "bad_lrc",
        "lost_answer",
        "receipt_left_open",
        "cancel_keeps_codes",
        "no_bind_check",
        "taxation_error",
    }
)

#: Test hook shared with the virtual ККТ and markd's kill points (docs/fiscal.md).
_KILL_ENV = "MARKD_FISCAL_KILL_AT"


@dataclass
class Answer:
    """What the device gives back for one command: the answer's bytes (``CMD ERR DATA``),
    whether to send them (``lost``: executed, answer kept for a later ENQ; ``silent``: the
    device has gone and says nothing)."""

    body: bytes
    lost: bool = False
    silent: bool = False


class Faults(dict[str, Any]):
    """The faults set on the device: a dict, also callable (``kkt.faults()``) so the tests
    written for :class:`~markd.emulators.virtual_kkt.VirtualKkt` (a property) and those that
    call it both read it."""

    def __call__(self) -> dict[str, Any]:
        return dict(self)


def _power_cut_at(step: str) -> None:
    if os.environ.get(_KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _default_state() -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "device": {
            "model_name": "ШТРИХ-М markd virtual",
            "serial": "0012345678",
            "fn_number": "9999078900054321",
            "inn": "7700000000",
            "password": DEFAULT_PASSWORD,
        },
        # Document 1 is the registration report every fiscalised ККТ starts with.
        "document_number": 1,
        "shift": {"state": "closed", "number": 0, "opened_at": None, "receipts": 0},
        "receipt": None,
        "check": None,
        "accepted": [],
        "rejected": [],
        "pending_tags": {},
        "unsent": 0,
        "first_unsent": None,
        "first_unsent_at": None,
        "next_id": 1,
        "faults": {"ism": "online"},
    }


class ShtrihKkt(StatusCommands, MarkingCommands):
    """The virtual Shtrih-M ККТ in ``state_dir`` (created if missing). Thread-safe, and safe
    to share between processes (a file lock serialises every command). ``clock`` gives Unix
    seconds; ``password`` is the operator's and system administrator's password."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        password: int = DEFAULT_PASSWORD,
    ) -> None:
        self.path = Path(state_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._files = DeviceFiles(
            self.path,
            name="virtual Shtrih ККТ",
            default=_default_state,
            count=self._count_document,
        )
        with self._files.locked() as state:
            device = state["device"]
            changed = False
            if not device.get("fn_valid_until"):
                device["fn_valid_until"] = self._clock() + FN_VALIDITY_DAYS * 86400
                changed = True
            if device.get("password") != password:
                device["password"] = password
                changed = True
            if changed:
                self._files.save(state)

    # -- the test-facing API -----------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        """Merge faults (see the package docstring); a value of None (or False) removes one."""
        unknown = set(faults) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        if faults.get("ism") not in (None, *ISM_MODES):
            raise ValueError(f"ism is one of {', '.join(ISM_MODES)}")
        if faults.get("gone_in_receipt") not in (None, False, *GONE_MODES):
            raise ValueError(f"gone_in_receipt is one of {', '.join(GONE_MODES)}")
        for key in ("fn_days_left", "unsent_age_days", "shift_age_hours"):
            value = faults.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{key} is a number of at least 0")
        for key in ("bad_lrc", "lost_answer"):
            value = faults.get(key)
            if value is True:
                faults[key] = 1
            elif (
                value is not None
                and value is not False
                and (not isinstance(value, int) or value < 0)
            ):
                raise ValueError(f"{key} is True or a count of answers")
        raised = faults.get("fn_warnings")
        if raised is not None:
            if not isinstance(raised, list | tuple) or any(
                name not in FN_WARNING_BITS for name in raised
            ):
                raise ValueError(f"fn_warnings is a list of {', '.join(FN_WARNING_BITS)}")
            faults["fn_warnings"] = list(raised) or None
        taxation = faults.get("taxation_types")
        if taxation is not None and (
            not isinstance(taxation, list | tuple)
            or not taxation
            or any(name not in TAXATION_BITS for name in taxation)
        ):
            raise ValueError(f"taxation_types is a list of {', '.join(TAXATION_BITS)}")
        left_open = faults.pop("receipt_left_open", None)
        if left_open not in (None, False, True, "sell", "sellReturn"):
            raise ValueError("receipt_left_open is True, 'sell' or 'sellReturn'")
        with self._files.locked() as state:
            current = state["faults"]
            for key, value in faults.items():
                if value is None or value is False:
                    current.pop(key, None)
                else:
                    current[key] = value
            current.setdefault("ism", "online")
            if left_open:
                # A receipt some earlier session opened and never closed or cancelled.
                if state["shift"]["state"] != "opened":
                    raise ValueError("receipt_left_open needs an open shift")
                if state["receipt"] is None:
                    kind = "sellReturn" if left_open == "sellReturn" else "sell"
                    state["receipt"] = self._new_receipt(kind)
            self._files.save(state)

    def set_code(self, ki: str, *, oism: str | None = None, fn: bool | None = None) -> None:
        """How the ФН and the ОИСМ judge one КИ: ``oism`` ``correct`` | ``incorrect`` |
        ``sale-stopped``; ``fn=False`` makes the ФН's crypto check fail."""
        if oism not in (None, "correct", "incorrect", "sale-stopped"):
            raise ValueError("oism is correct, incorrect or sale-stopped")
        with self._files.locked() as state:
            entry = state["faults"].setdefault("codes", {}).setdefault(ki, {})
            if oism is not None:
                entry["oism"] = oism
            if fn is not None:
                entry["fn"] = fn
            self._files.save(state)

    def clear_faults(self) -> None:
        with self._files.locked() as state:
            state["faults"] = {"ism": "online"}
            self._files.save(state)

    @property
    def faults(self) -> Faults:
        with self._files.locked() as state:
            return Faults(copy.deepcopy(state["faults"]))

    def state(self) -> dict[str, Any]:
        """A copy of the device state."""
        with self._files.locked() as state:
            return copy.deepcopy(state)

    def documents(self) -> list[dict[str, Any]]:
        """Every fiscal document, oldest first (a torn last line is skipped)."""
        documents = self._stored_documents()
        for document in documents:
            document.pop("_accepted", None)
        return documents

    def receipts(self) -> list[dict[str, Any]]:
        return [d for d in self.documents() if d["type"] in ("sell", "sellReturn")]

    def _document(self, number: int) -> dict[str, Any] | None:
        """Fiscal document ``number`` as stored, or None."""
        return next((d for d in self._stored_documents() if d["number"] == number), None)

    def _stored_documents(self) -> list[dict[str, Any]]:
        """The documents as stored, less the shift's opening time kept for the roll-forward."""
        documents = [d for d in self._files.documents() if isinstance(d, dict)]
        for document in documents:
            document.pop("_opened_at", None)
        return documents

    def gone(self) -> bool:
        """Whether the device has stopped answering (fault ``gone``)."""
        with self._files.locked() as state:
            return bool(state["faults"].get("gone"))

    def corrupt_next_frame(self) -> bool:
        """Whether the answer frame about to be sent gets a wrong LRC (fault ``bad_lrc``,
        counted down)."""
        with self._files.locked() as state:
            left = int(state["faults"].get("bad_lrc") or 0)
            if left <= 0:
                return False
            if left == 1:
                state["faults"].pop("bad_lrc")
            else:
                state["faults"]["bad_lrc"] = left - 1
            self._files.save(state)
            return True

    # -- commands --------------------------------------------------------------------------

    def execute(self, command: bytes) -> Answer:
        """Run one command (``CMD DATA``, CMD one byte or ``0xFF xx``) and answer it."""
        if not command:
            return Answer(b"", silent=True)
        if command[0] == 0xFF:
            if len(command) < 2:
                return Answer(bytes((0xFF, Error.NOT_SUPPORTED)))
            code = 0xFF00 | command[1]
            head, data = command[:2], command[2:]
        else:
            code = command[0]
            head, data = command[:1], command[1:]
        with self._files.locked() as state:
            faults = state["faults"]
            if faults.get("gone"):
                return Answer(b"", silent=True)
            handler = _HANDLERS.get(code)
            before = json.dumps(state, sort_keys=True)
            lost = False
            silent = False
            try:
                if handler is None:
                    raise Refused(Error.NOT_SUPPORTED)
                reader = Reader(data)
                if code != 0xFC:  # the only command without a password
                    self._check_password(state, reader.uint(4))
                body = handler(self, state, reader)
                error = Error.OK
            except Refused as exc:
                body, error = b"", exc.code
            except GoneNow:
                body, error, silent = b"", Error.OK, True
            changed = json.dumps(state, sort_keys=True) != before
            if changed and not silent and faults.get("lost_answer"):
                left = int(faults.pop("lost_answer")) - 1
                if left > 0:
                    faults["lost_answer"] = left
                lost = True
            if changed or lost:
                self._files.save(state)
            return Answer(head + bytes((error,)) + body, lost=lost, silent=silent)

    def _check_password(self, state: dict[str, Any], password: int) -> None:
        if password != int(state["device"]["password"]):
            raise Refused(Error.BAD_PASSWORD)

    # -- storage (the files' rules: markd.emulators.statefile) ---------------------------------

    def _count_document(self, state: dict[str, Any], document: dict[str, Any]) -> None:
        """What a new document changes in the state (after it is on disk), and the count of
        a document the state missed when loading rolls forward."""
        state["document_number"] = document["number"]
        shift = state["shift"]
        kind = document["type"]
        if kind == "openShift":
            shift.update(
                state="opened",
                number=document["shift"],
                opened_at=document.get("_opened_at", self._clock()),
                receipts=0,
            )
        elif kind == "closeShift":
            shift.update(state="closed", opened_at=None)
            state["faults"].pop("shift_expired", None)
        else:
            state["receipt"] = None
            used = set(document.get("_accepted", []))
            state["accepted"] = [a for a in state["accepted"] if a["id"] not in used]
            state["rejected"] = []
            shift["receipts"] = document.get("receipt_number", shift["receipts"])
        state["pending_tags"] = {}
        state["unsent"] += 1
        if not state.get("first_unsent"):
            state["first_unsent"] = document["number"]
            state["first_unsent_at"] = document.get("datetime")

    def _register(self, state: dict[str, Any], document: dict[str, Any]) -> None:
        """Write a fiscal document: appended and fsync'd first, then the state counting it
        (a kill in between is rolled forward on the next load)."""
        self._files.append_document(document)
        self._count_document(state, document)
        self._files.save(state)

    # -- the device's view of time and mode ---------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), MSK)

    def _opened_at(self, state: dict[str, Any]) -> float:
        age = state["faults"].get("shift_age_hours")
        if age is not None:
            return self._clock() - float(age) * 3600
        return float(state["shift"]["opened_at"] or 0)

    def _shift_state(self, state: dict[str, Any]) -> str:
        if state["shift"]["state"] != "opened":
            return "closed"
        if state["faults"].get("shift_expired"):
            return "expired"
        if self._clock() - self._opened_at(state) > SHIFT_HOURS * 3600:
            return "expired"
        return "opened"

    def _mode(self, state: dict[str, Any]) -> int:
        """The ККТ mode byte (protocol_kkt_2.0.txt, appendix 1): low nibble 2 shift open, 3
        shift over 24 h, 4 shift closed, 8 document open with the document kind in the high
        nibble (0 sale, 2 sale return)."""
        receipt = state["receipt"]
        if receipt is not None:
            return 0x08 | (0x20 if receipt["type"] == "sellReturn" else 0x00)
        return {"opened": 2, "expired": 3, "closed": 4}[self._shift_state(state)]

    def _flags(self, state: dict[str, Any]) -> int:
        """The ККТ flags (two bytes): bit 1 receipt roll present, bit 4 two decimals, bit 7
        receipt paper seen by the optical sensor, bit 9 receipt head lever down. Paper out
        clears bits 1 and 7."""
        flags = 0x0010 | 0x0200
        if not state["faults"].get("paper_out"):
            flags |= 0x0002 | 0x0080
        return flags

    def _printing(self, state: dict[str, Any]) -> None:
        """A command that prints: no paper is 0x6B, a broken ФН 0x03."""
        if state["faults"].get("paper_out"):
            raise Refused(Error.NO_PAPER)
        self._fn_ready(state)

    def _fn_ready(self, state: dict[str, Any]) -> None:
        if state["faults"].get("fn_error"):
            raise Refused(Error.FN_FAILURE)

    def _fiscal_sign(self, state: dict[str, Any], number: int, when: datetime) -> int:
        seed = f"{state['device']['fn_number']}/{number}/{when.isoformat()}".encode()
        return int.from_bytes(hashlib.sha256(seed).digest()[:4], "big")

    def _new_receipt(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "opened_at": self._clock(),
            "positions": [],
            "cashier": {},
            "used": [],
        }

    # -- shifts ------------------------------------------------------------------------------

    def _start_open_shift(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF41`` (commands.xml's comment): begin opening a shift; the tags sent next
        (``FF0C``: 1021, 1203) go to the shift report ``0xE0`` makes."""
        if state["receipt"] is not None:
            raise Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] == "opened":
            raise Refused(Error.NOT_IN_THIS_MODE)
        self._fn_ready(state)
        state["pending_tags"] = {}
        return b""

    def _start_close_shift(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF42`` (commands.xml's comment): begin closing the shift (tags may follow)."""
        if state["receipt"] is not None:
            raise Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] != "opened":
            raise Refused(Error.ZERO_TOTAL_SHIFT_CLOSED)
        self._fn_ready(state)
        state["pending_tags"] = {}
        return b""

    def _open_shift(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0xE0`` open the shift (commands.xml "Open day"): answers the operator number. A
        shift already open is refused with 0x73 (not in this mode: unconfirmed)."""
        if state["receipt"] is not None:
            raise Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] == "opened":
            raise Refused(Error.NOT_IN_THIS_MODE)
        self._printing(state)
        self._register(
            state, self._shift_document(state, "openShift", state["shift"]["number"] + 1)
        )
        return bytes((OPERATOR_NUMBER,))

    def _close_shift(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0x41`` Z-report (commands.xml "Print Z report"): closes the shift. With no shift
        open the answer is 0x2C (the cash register is already zeroed)."""
        if state["receipt"] is not None:
            raise Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] != "opened":
            raise Refused(Error.ZERO_TOTAL_SHIFT_CLOSED)
        self._printing(state)
        self._register(state, self._shift_document(state, "closeShift", state["shift"]["number"]))
        return bytes((OPERATOR_NUMBER,))

    def _shift_document(self, state: dict[str, Any], kind: str, shift: int) -> dict[str, Any]:
        number = int(state["document_number"]) + 1
        now = self._now()
        document: dict[str, Any] = {
            "number": number,
            "type": kind,
            "datetime": now.isoformat(timespec="seconds"),
            "shift": shift,
            "fiscal_sign": self._fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
        }
        if kind == "openShift":
            document["_opened_at"] = self._clock()
        cashier = dict(state.get("pending_tags") or {})
        if cashier:
            document["cashier"] = cashier
        return document

    # -- receipt-level and operation tags ----------------------------------------------------

    def _write_tags(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF0C`` (commands.xml "FS write TLV data"): document-level tags. 1021 (cashier)
        and 1203 (cashier ИНН) are kept — on the open receipt, or else for the next document
        (a shift report after ``FF41``/``FF42``, as the vendor's flow sends them); other tags
        are taken and not recorded."""
        tags = tlvs(data.rest())
        target = state["receipt"]["cashier"] if state["receipt"] is not None else None
        if target is None:
            target = state.setdefault("pending_tags", {})
        for tag, value in tags:
            if tag in (1021, 1203):
                target[str(tag)] = cp866(value).rstrip("\x00").strip()
        return b""

    def _write_operation_tags(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF4D`` (commands.xml "FS write operation TLV data", FSWriteOperationTLV.java):
        tags of the last registered position; 1260 is an STLV of 1262, 1263, 1264, 1265
        (CP866 strings). 2108 (measure) is kept as a number; other tags are taken. No
        position, or one whose code is already bound (``FF67`` comes after the tags), is
        0x5E."""
        receipt = self._open_receipt(state)
        if not receipt["positions"]:
            raise Refused(Error.BAD_OPERATION)
        position = receipt["positions"][-1]
        if position.get("ki"):
            # The vendor binds a code after its position's tags; tags for a position whose
            # code is already bound are refused (which error a device gives is unconfirmed).
            raise Refused(Error.BAD_OPERATION)
        for tag, value in tlvs(data.rest()):
            if tag == 1260:
                block = {str(t): cp866(v) for t, v in tlvs(value) if t in (1262, 1263, 1264, 1265)}
                position["tags"]["1260"] = block
            elif tag == 2108 and len(value) <= 4:
                position["tags"]["2108"] = int.from_bytes(value, "little")
        return b""

    # -- receipts ----------------------------------------------------------------------------

    def _open_receipt(self, state: dict[str, Any]) -> dict[str, Any]:
        receipt = state["receipt"]
        if receipt is None:
            raise Refused(Error.RECEIPT_CLOSED)
        return receipt

    def _shift_usable(self, state: dict[str, Any]) -> None:
        shift = self._shift_state(state)
        if shift == "closed":
            raise Refused(Error.SHIFT_CLOSED)
        if shift == "expired":
            raise Refused(Error.SHIFT_OVER_24H)

    def _begin_receipt(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0x8D`` open a receipt (commands.xml "Open receipt"): document type 0 sale, 2 sale
        return (1 and 3, purchases, are not modelled: 0x33)."""
        kind_code = data.uint(1)
        if kind_code not in RECEIPT_KINDS:
            raise Refused(Error.BAD_PARAMETERS)
        if state["receipt"] is not None:
            raise Refused(Error.RECEIPT_OPEN)
        self._shift_usable(state)
        self._printing(state)
        state["receipt"] = self._new_receipt(RECEIPT_KINDS[kind_code][0])
        state["receipt"]["cashier"] = dict(state.get("pending_tags") or {})
        state["pending_tags"] = {}
        faults = state["faults"]
        if faults.get("gone_in_receipt") == "open":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            self._files.save(state)
            raise GoneNow
        self._files.save(state)
        _power_cut_at("kkt-receipt-open")
        return bytes((OPERATOR_NUMBER,))

    def _cancel_receipt(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0x88`` cancel the receipt (commands.xml "Cancel receipt"). The sources do not say
        whether the ФН forgets the codes accepted for it: here it does (the conservative
        reading: the client checks them again); fault ``cancel_keeps_codes`` keeps them."""
        self._open_receipt(state)
        state["receipt"] = None
        state["check"] = None
        state["rejected"] = []
        if not state["faults"].get("cancel_keeps_codes"):
            state["accepted"] = []
        return bytes((OPERATOR_NUMBER,))

    def _operation(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF46`` operation V2 (commands.xml "FS operation V2", FSPrintRecItem.java):
        operation type (1 sale, 2 sale return), quantity (6 bytes, ×10⁶), price (5), sum (5;
        all 0xFF: the device computes it), tax sum (5), tax rate, department, payment method
        (1214), payment object (1212), name (CP1251, up to 128 bytes)."""
        operation = data.uint(1)
        quantity = data.uint(6)
        price = data.uint(5)
        amount = data.uint(5)
        data.uint(5)  # the tax sum: the device's own to compute
        tax, _department, method, subject = data.take(4)
        name = data.rest()[:128].rstrip(b"\x00").decode("cp1251", errors="replace")
        receipt = self._open_receipt(state)
        if operation != RECEIPT_KINDS[0 if receipt["type"] == "sell" else 2][1]:
            raise Refused(Error.WRONG_RECEIPT_TYPE)
        if quantity == 0:
            raise Refused(Error.BAD_PARAMETERS)
        self._shift_usable(state)
        self._printing(state)
        if state["check"] is not None:
            raise Refused(Error.FN_MARKING_SEQUENCE)
        if amount == 0xFFFFFFFFFF:
            amount = (price * quantity + 500_000) // 1_000_000
        whole = quantity % 1_000_000 == 0
        receipt["positions"].append(
            {
                "name": name,
                "price": price,
                "quantity": quantity // 1_000_000 if whole else quantity / 1_000_000,
                "amount": amount,
                "tax": tax,
                "payment_method": method,
                "payment_object": subject,
                "tags": {},
            }
        )
        return b""

    def _close_receipt(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF45`` close receipt V2 (commands.xml "Close receipt 2", FSCloseReceipt.java):
        sixteen payment sums (5 bytes each), rounding (1, kopecks off the total), six tax sums
        (5), the taxation system (one bit of tag 1055), text. Answer: change (5), document
        number (4), fiscal sign (4), date (YMD), time (HM).

        A taxation system the device is not registered with — or none given to a device
        registered with several — is refused; the sources do not say with which error, so it
        is 0x33 (wrong parameters) unless fault ``taxation_error`` names another code
        (unconfirmed). A refused close leaves the receipt open (the client cancels it)."""
        payments_raw = [data.uint(5) for _ in range(16)]
        rounding = data.uint(1)
        for _ in range(6):
            data.uint(5)
        taxation_bits = data.uint(1)
        data.rest()  # text to print
        receipt = self._open_receipt(state)
        faults = state["faults"]
        if state["check"] is not None:
            raise Refused(Error.FN_MARKING_SEQUENCE)
        self._shift_usable(state)
        self._printing(state)
        taxation = self._taxation(state, taxation_bits)
        positions = receipt["positions"]
        total = sum(p["amount"] for p in positions) - rounding
        if not positions or total <= 0:
            raise Refused(Error.ZERO_TOTAL)
        paid = sum(payments_raw)
        non_cash = paid - payments_raw[0]
        if paid < total:
            raise Refused(Error.PAYMENT_SHORT)
        if non_cash > total:
            raise Refused(Error.CASHLESS_TOO_MUCH)
        payments = [
            {"type": PAYMENT_NAMES.get(i + 1, f"type{i + 1}"), "amount": amount}
            for i, amount in enumerate(payments_raw)
            if amount
        ]
        number = int(state["document_number"]) + 1
        now = self._now()
        document: dict[str, Any] = {
            "number": number,
            "type": receipt["type"],
            "datetime": now.isoformat(timespec="seconds"),
            "shift": state["shift"]["number"],
            "receipt_number": state["shift"]["receipts"] + 1,
            "fiscal_sign": self._fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
            "total": total,
            "change": paid - total,
            "rounding": rounding,
            "payments": payments,
            "positions": positions,
            "taxation_type": taxation,
            "tags": {"1055": TAXATION_BITS[taxation]},
            "_accepted": list(receipt["used"]),
        }
        if receipt.get("cashier"):
            document["cashier"] = dict(receipt["cashier"])
        self._register(state, document)
        if faults.get("gone_in_receipt") == "after":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            self._files.save(state)
            raise GoneNow
        return (
            u(paid - total, 5) + u(number, 4) + u(document["fiscal_sign"], 4) + ymd(now) + hm(now)
        )

    def _taxation(self, state: dict[str, Any], bits: int) -> str:
        registered = list(state["faults"].get("taxation_types") or DEFAULT_TAXATION)
        refusal = int(state["faults"].get("taxation_error") or Error.BAD_PARAMETERS)
        if bits == 0:
            if len(registered) == 1:
                return str(registered[0])
            raise Refused(refusal)
        names = [name for name, bit in TAXATION_BITS.items() if bit == bits]
        if not names or names[0] not in registered:
            raise Refused(refusal)
        return names[0]


_HANDLERS: dict[int, Callable[[ShtrihKkt, dict[str, Any], Reader], bytes]] = {
    0xFC: ShtrihKkt._device_type,
    0x10: ShtrihKkt._short_status,
    0x11: ShtrihKkt._long_status,
    0xE0: ShtrihKkt._open_shift,
    0x41: ShtrihKkt._close_shift,
    0x8D: ShtrihKkt._begin_receipt,
    0x88: ShtrihKkt._cancel_receipt,
    0xFF01: ShtrihKkt._fn_status,
    0xFF03: ShtrihKkt._fn_expiry,
    0xFF09: ShtrihKkt._registration,
    0xFF0A: ShtrihKkt._find_document,
    0xFF0C: ShtrihKkt._write_tags,
    0xFF39: ShtrihKkt._ofd_status,
    0xFF40: ShtrihKkt._shift_parameters,
    0xFF41: ShtrihKkt._start_open_shift,
    0xFF42: ShtrihKkt._start_close_shift,
    0xFF45: ShtrihKkt._close_receipt,
    0xFF46: ShtrihKkt._operation,
    0xFF4D: ShtrihKkt._write_operation_tags,
    0xFF61: ShtrihKkt._check_code,
    0xFF67: ShtrihKkt._bind_code,
    0xFF69: ShtrihKkt._accept_code,
    0xFF70: ShtrihKkt._marking_status,
}
