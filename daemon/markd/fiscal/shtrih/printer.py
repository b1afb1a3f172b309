"""``shtrih://``: a Shtrih-M ККТ over its protocol 1, with the ФФД 1.2 marking commands.

URL forms::

    shtrih:///dev/ttyACM0?baudrate=115200&password=30&timeout_ms=500   serial / USB-CDC
    shtrih://192.0.2.30[:7778]?password=30                              TCP (port 7778)

Options: ``baudrate`` (serial only; 2400 … 921600, 115200 by default), ``password`` (the
operator password sent with every command, 30 by default: the system administrator's as the
ККТ ships), ``timeout_ms`` (the link's byte time limit: between bytes and for the answer to an
``ENQ`` or a frame; 500 by default). The commands' own time limits are those of the vendor's
``commands.xml``, 40 s for the code check and the binding (see
:mod:`markd.fiscal.shtrih.commands`).

A marked sale follows the vendor's order (``fsOperationReceipt_FFD_1_2`` in
``shtrih-m/fr_drv_ng_examples``; ``SMFiscalPrinterImpl.checkItemCode``): each code is checked
with ``FF61`` — the answer carries the ФН's own result and the ОИСМ's, so the validation is
ready at once — then accepted or rejected with ``FF69``. The receipt is registered in one go
when it is closed: a receipt left open on the device is cancelled (``0x88``), ``0x8D`` opens
the new one, ``FF0C`` names the cashier (1021 / 1203), then per position ``FF46`` (operation
V2), ``FF4D`` (its tag 1260) and ``FF67`` (bind its code, after its tags), and ``FF45`` closes
it. ``FF67`` checks a code nobody checked before and accepts it by itself; markd never lets it:
a position whose code markd did not accept since the last clear is refused before the receipt
is opened, and an ``FF67`` answer that shows such a check cancels the receipt
(:class:`~markd.fiscal.base.MarkNotValidated`).

A receipt the device refuses after it was opened is cancelled and the accepted codes are
forgotten (the ФН's table goes with the receipt, as ATOL's driver clears it), so the session
validates them again. A taxation system the ККТ is not registered with (``FF09``) is refused
with ``bad-taxation-type`` before anything is printed.

The device keeps no table of requests: :meth:`find_receipt` knows only the receipts this
process closed, and after a crash the session reconciles by the document counter;
:meth:`ShtrihPrinter.document` reads a fiscal document by number (``FF0A``) so recovery can
confirm what the last document is.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import ClassVar, TypeVar

from markd.errors import FiscalError, OutcomeUnknown, PrinterFault
from markd.fiscal.base import (
    DocumentSummary,
    Finding,
    FiscalPrinter,
    MarkNotValidated,
    NoValidationRunning,
    Option,
    PrinterSettings,
    PrinterURL,
    ValidationAlreadyRunning,
    derive_op_id,
)
from markd.fiscal.model import (
    TAX_TYPES,
    FiscalHealth,
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptKind,
    ReceiptResult,
    ShiftInfo,
)
from markd.fiscal.shtrih import commands as cmd
from markd.fiscal.shtrih.errors import VALIDATION_STATE_CODES, MalformedAnswer, device_fault
from markd.fiscal.shtrih.link import Link, LinkLimits, Port, SerialPort, TcpPort
from markd.receipts import Payment

DEFAULT_TCP_PORT = 7778
DEFAULT_PASSWORD = 30
BAUDRATES = (2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

#: Taxation systems (ATOL's names, tag 1055) as the bits of ``FF45`` and ``FF09``.
TAXATION_BITS = {
    "osn": 1,
    "usnIncome": 2,
    "usnIncomeOutcome": 4,
    "envd": 8,
    "esn": 16,
    "patent": 32,
}
#: ``FF46`` tax rate numbers: the ККТ's tax table in the order the vendor's driver lists its
#: rates (``VatRate.java``: 20 %, 10 %, 0 %, none, 20/120, 10/110, 5 %, 7 %, 5/105, 7/107,
#: 22 %, 22/122), numbered from 1; keyed by (rate, included in the price), None for no VAT.
SHTRIH_TAX_NUMBERS: dict[tuple[int, bool] | None, int] = {
    (20, False): 1,
    (10, False): 2,
    (0, False): 3,
    None: 4,
    (20, True): 5,
    (10, True): 6,
    (5, False): 7,
    (7, False): 8,
    (5, True): 9,
    (7, True): 10,
    (22, False): 11,
    (22, True): 12,
}


def _tax_key(name: str) -> tuple[int, bool] | None:
    """``vat20`` → (20, False); ``vat120`` (20/120, in the price) → (20, True); ``none``."""
    digits = name.removeprefix("vat")
    if name == "none" or not digits.isdigit():
        return None
    if len(digits) == 3:
        return int(digits[1:]), True
    return int(digits), False


#: markd's tax types (:data:`markd.fiscal.model.TAX_TYPES`) as ``FF46`` tax numbers.
TAX_RATES = {name: SHTRIH_TAX_NUMBERS[_tax_key(name)] for name in TAX_TYPES}
#: Tag 1212 of a marked unit (33: a marked commodity other than an excise one, as the vendor's
#: example sends) and of a plain one (1: commodity); tag 1214 4: full payment.
PAYMENT_OBJECT_MARKED = 33
PAYMENT_OBJECT_PLAIN = 1
PAYMENT_METHOD_FULL = 4
#: ``FF45`` payment slots: 1 cash, 2 the ККТ's second type (electronic / card).
PAYMENT_SLOTS = {"cash": 0, "electronically": 1}
#: A shift's longest life; a receipt after it is refused.
SHIFT_HOURS = 24
#: How far back the shift's opening document is looked for.
SHIFT_SEARCH_LIMIT = 64
#: Closed receipts remembered by their operation id.
REMEMBERED_RECEIPTS = 32
#: ``FF0A`` document types.
DOC_OPEN_SHIFT = 2
DOC_RECEIPT = 3
#: A receipt's operation in ``FF0A`` (the ФН's tag 1054): markd's receipt kinds.
RECEIPT_OPERATIONS = {1: "sell", 2: "return", 3: "buy", 4: "buyReturn"}
DOC_CLOSE_SHIFT = 5
#: tag 2109 / 2105 values in ATOL's words.
ITEM_STATUS = {
    1: "itemEstimatedStatusCorrect",
    2: "itemEstimatedStatusIncorrect",
    3: "itemSaleStopped",
}
RESPONSE_RESULT = {0: "correct", 1: "incorrect", 2: "unrecognized"}

T = TypeVar("T")


def _baudrate(text: str) -> int:
    value = int(text)
    if value not in BAUDRATES:
        raise ValueError(text)
    return value


def _password(text: str) -> int:
    if not text.isdigit() or len(text) > 8:
        raise ValueError(text)
    return int(text)


def _timeout_ms(text: str) -> int:
    value = int(text)
    if not 10 <= value <= 60000:
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(text)
    return text == "1"


class ShtrihPrinter(FiscalPrinter):
    """A Shtrih-M ККТ (protocol 1) on a serial port or TCP."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "baudrate": Option(_baudrate, 115200, "|".join(str(b) for b in BAUDRATES)),
        "password": Option(_password, DEFAULT_PASSWORD, "the operator password, 0 to 99999999"),
        "timeout_ms": Option(_timeout_ms, 500, "milliseconds, 10 to 60000"),
        "open_first": Option(_flag, True, "1|0"),
    }

    @classmethod
    def check_options(cls, target: str, given: Mapping[str, str]) -> None:
        if "baudrate" in given and not target.startswith("/"):
            raise ValueError("baudrate is for a serial port, not a TCP connection")

    def __init__(
        self, url: PrinterURL, settings: PrinterSettings, port: Port | None = None
    ) -> None:
        super().__init__(url, settings)
        options = url.options
        self.password: int = options.get("password", DEFAULT_PASSWORD)
        limits = LinkLimits(byte_timeout_s=options.get("timeout_ms", 500) / 1000)
        if port is None:
            if url.target.startswith("/"):
                port = SerialPort(url.target, options.get("baudrate", 115200))
            else:
                host, _, number = url.target.rpartition(":")
                port = TcpPort(host.strip("[]"), int(number))
        self.link = Link(port, limits)
        #: The vendor's order (the default): the receipt is opened on the device when markd
        #: starts it, and its codes are checked inside it. ``?open_first=0``: the codes are
        #: checked as the units come and the receipt is opened at close.
        self.open_first: bool = bool(options.get("open_first", True))
        #: The kind of the receipt markd opened on the device ahead of its close, if any.
        self._device_receipt: ReceiptKind | None = None
        #: Codes (by КИ) accepted with FF69 since the last clear or failed receipt.
        self._accepted: set[str] = set()
        #: The check results kept for :meth:`validation_status`.
        self._results: dict[str, MarkValidation] = {}
        #: The КИ whose check result waits for FF69.
        self._pending: str | None = None
        #: A waiting check was just rejected (the next FF61 refusal is no waiting check).
        self._after_cancel = False
        #: The opening report's document number, per shift.
        self._shift_open_document: dict[int, int] = {}
        #: Shifts whose opening report was looked for in vain (not looked for again).
        self._shift_not_found: set[int] = set()
        self._device_type: cmd.DeviceType | None = None
        self._registration: cmd.Registration | None = None
        self._done: OrderedDict[str, ReceiptResult] = OrderedDict()

    # -- URL ------------------------------------------------------------------------------------

    @classmethod
    def target_from_url(cls, host: str, port: int | None, path: str) -> str:
        if not host and port is None and path.startswith("/") and len(path) > 1:
            return path
        if host and path in ("", "/"):
            shown = f"[{host}]" if ":" in host else host
            return f"{shown}:{port or DEFAULT_TCP_PORT}"
        raise ValueError("expected an absolute device path (shtrih:///dev/…) or HOST[:PORT]")

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, request: cmd.Request) -> bytes:
        """Run one command; a non-zero error byte becomes its typed fault."""
        spec = cmd.COMMANDS[request.command]
        answer = self.link.exchange(request, spec.timeout_s, spec.changes_state)
        if answer.error:
            raise device_fault(answer.error, request.command)
        return answer.data

    def _read(self, request: cmd.Request, decode: Callable[[bytes], T]) -> T:
        return decode(self._call(request))

    def _optional(self, request: cmd.Request, decode: Callable[[bytes], T]) -> T | None:
        """A reading the status can do without: a refusal or an unreadable answer is None
        (a link failure is still raised)."""
        try:
            return decode(self._call(request))
        except PrinterFault:
            return None

    # -- status ---------------------------------------------------------------------------------

    def _status(self, op_id: str) -> PrinterStatus:
        pw = self.password
        full = self._read(cmd.encode_full_status(pw), cmd.decode_full_status)
        fn = self._optional(cmd.encode_fn_status(pw), cmd.decode_fn_status)
        expiry = self._optional(cmd.encode_fn_expiry(pw), cmd.decode_fn_expiry)
        exchange = self._optional(cmd.encode_exchange_status(pw), cmd.decode_exchange_status)
        shift = self._optional(cmd.encode_shift_parameters(pw), cmd.decode_shift_parameters)
        if self._device_type is None:
            self._device_type = self._optional(cmd.encode_device_type(), cmd.decode_device_type)
        now = full.clock or (fn.clock if fn else None) or datetime.now()
        mode = full.mode
        if mode == cmd.MODE_SHIFT_OPEN or mode == cmd.MODE_DOCUMENT_OPEN:
            shift_state = "opened"
        elif mode == cmd.MODE_SHIFT_EXPIRED:
            shift_state = "expired"
        elif mode == cmd.MODE_SHIFT_CLOSED:
            shift_state = "closed"
        else:
            shift_state = "opened" if fn is not None and fn.shift_open else "closed"
        shift_number = shift.number if shift is not None else full.last_closed_shift
        last_document = fn.last_document if fn is not None else 0
        opened_at = None
        if shift_state != "closed" and fn is not None and shift is not None:
            opened_at = self._shift_opened_at(shift.number, last_document)
        if (
            mode == cmd.MODE_DOCUMENT_OPEN
            and opened_at is not None
            and now - opened_at > timedelta(hours=SHIFT_HOURS)
        ):
            # A receipt open on the device hides the shift's mode: the shift's own age tells
            # that it is over (the receipt would be refused at its close).
            shift_state = "expired"
        warnings = fn.warning_names if fn is not None else ()
        return PrinterStatus(
            shift_state=shift_state,
            shift_number=shift_number,
            paper_present=full.paper_present,
            fn_present=fn is not None,
            fn_fiscal=fn.fiscal if fn is not None else False,
            fn_state="ok" if fn is not None and "criticalError" not in warnings else "error",
            last_document_number=last_document,
            last_receipt_number=shift.receipt_number if shift is not None else None,
            unsent_documents=exchange.unsent if exchange is not None else None,
            receipt_open=mode == cmd.MODE_DOCUMENT_OPEN,
            receipt_is_ours=mode == cmd.MODE_DOCUMENT_OPEN
            and self._device_receipt is not None
            and self._device_receipt == self._kind,
            cover_opened=full.cover_open,
            fn_warnings=warnings,
            model=self._device_type.name if self._device_type is not None else None,
            firmware=_firmware(full),
            health=_health(now, expiry, exchange, opened_at),
            raw={
                "mode": full.mode_byte,
                "submode": full.submode,
                "flags": full.flags,
                "firmware_version": full.firmware_version,
                "firmware_build": full.firmware_build,
                "firmware_date": _iso(full.firmware_date),
                "serial_number": full.serial,
                "clock": _iso(full.clock),
                "fn_number": fn.fn_number if fn is not None else None,
                "fn_state_byte": fn.state if fn is not None else None,
                "fn_warning_byte": fn.warnings if fn is not None else None,
                "device_type": (
                    {
                        "type": self._device_type.type,
                        "subtype": self._device_type.subtype,
                        "protocol": f"{self._device_type.protocol}."
                        f"{self._device_type.protocol_subversion}",
                        "model": self._device_type.model,
                    }
                    if self._device_type is not None
                    else None
                ),
            },
        )

    def _shift_opened_at(self, shift_number: int, last_document: int) -> datetime | None:
        """When the shift was opened: the date of its opening report. The report is found once
        per shift by walking the documents back from the last one (at most
        :data:`SHIFT_SEARCH_LIMIT`); afterwards only that document is read again."""
        known = self._shift_open_document.get(shift_number)
        if known is not None:
            try:
                found = self._document(known)
            except PrinterFault:
                found = None
            if found is not None and found.type == DOC_OPEN_SHIFT:
                return found.datetime
            self._shift_open_document.pop(shift_number, None)
        if shift_number in self._shift_not_found:
            return None
        lowest = max(last_document - SHIFT_SEARCH_LIMIT, 0)
        for number in range(last_document, lowest, -1):
            try:
                found = self._document(number)
            except PrinterFault:
                continue
            if found.type == DOC_CLOSE_SHIFT:
                break  # the documents before it belong to an earlier shift
            if found.type == DOC_OPEN_SHIFT and found.shift in (None, shift_number):
                self._shift_open_document = {shift_number: number}
                return found.datetime
        self._shift_not_found = {shift_number}
        return None

    def document(self, number: int) -> cmd.Document:
        """The fiscal document ``number`` as the ФН keeps it (``FF0A``): its type
        (``type_name``: ``receipt``, ``openShift`` …), date and time, fiscal sign, and for a
        receipt its operation (1 sale, 2 sale return) and total in kopecks. Recovery uses it to
        confirm that the last document is the receipt it was closing."""
        with self._lock:
            return self._document(number)

    def _describe_document(self, number: int) -> DocumentSummary | None:
        try:
            found = self._document(number)
        except PrinterFault:
            return None  # not kept, or the ФН cannot say: the counter alone decides
        kind = found.type_name
        if found.type == DOC_RECEIPT:
            kind = RECEIPT_OPERATIONS.get(found.operation or 0, f"receipt{found.operation}")
        return DocumentSummary(
            number=found.number,
            kind=kind,
            total_kopecks=found.total,
            fiscal_sign=str(found.fiscal_sign),
            datetime=_iso(found.datetime),
        )

    def _document(self, number: int) -> cmd.Document:
        return self._read(cmd.encode_find_document(self.password, number), cmd.decode_find_document)

    # -- shifts ---------------------------------------------------------------------------------

    def _open_shift(self, op_id: str) -> ShiftInfo:
        self._send_cashier()
        self._call(cmd.encode_open_shift(self.password))
        number, document = self._shift_and_document()
        try:
            found = self._document(document)
        except PrinterFault:
            found = None
        if found is not None and found.type == DOC_OPEN_SHIFT:
            self._shift_open_document = {number: document}
        return ShiftInfo(number=number, state="opened", document_number=document)

    def _close_shift(self, op_id: str) -> ShiftInfo:
        # A receipt open on the device (left over, or markd's own opened ahead over a shift
        # that ran out) would make the ККТ refuse the report: it is cancelled first, as
        # ATOL's shift scripts do (its codes, when the ФН drops them, are checked again).
        self._device_receipt = None
        self._cancel_leftover(0)
        before = self._optional(
            cmd.encode_shift_parameters(self.password), cmd.decode_shift_parameters
        )
        self._send_cashier()
        self._call(cmd.encode_z_report(self.password))
        number, document = self._shift_and_document()
        if before is not None:
            number = before.number
        self._shift_open_document.pop(number, None)
        return ShiftInfo(number=number, state="closed", document_number=document)

    def _shift_and_document(self) -> tuple[int, int]:
        try:
            shift = self._read(
                cmd.encode_shift_parameters(self.password), cmd.decode_shift_parameters
            )
            fn = self._read(cmd.encode_fn_status(self.password), cmd.decode_fn_status)
        except PrinterFault as exc:
            raise OutcomeUnknown(
                f"the shift report was made but its numbers could not be read: {exc.message}"
            ) from exc
        return shift.number, fn.last_document

    def _send_cashier(self) -> None:
        """Tags 1021 / 1203 for the next document (``FF0C``), when a cashier is configured."""
        attributes = self.settings.receipt
        if not attributes.cashier_name:
            return
        self._call(cmd.encode_write_tlv(self.password, cmd.tlv_text(1021, attributes.cashier_name)))
        if attributes.cashier_inn:
            self._call(
                cmd.encode_write_tlv(self.password, cmd.tlv_text(1203, attributes.cashier_inn))
            )

    # -- receipts opened ahead (``open_first``) --------------------------------------------------

    def open_receipt(self, op_id: str, kind: ReceiptKind = "sell") -> None:
        """Start a receipt; with ``open_first`` it is opened on the device now (a leftover
        cancelled first, the cashier sent), so the codes are checked inside it, as the
        vendor's example does."""
        with self._lock:
            super().open_receipt(op_id, kind)
            if not self.open_first:
                return
            try:
                self._cancel_leftover(0)
                self._open_on_device(kind)
            except BaseException:
                opened = self._device_receipt
                self.forget_receipt()
                if opened is not None:
                    # Opened, then a later step (the cashier's tags) failed: not a receipt
                    # to put positions on. Cancelled now; else the next opening does it.
                    try:
                        self._call(cmd.encode_cancel_receipt(self.password))
                    except FiscalError:
                        pass
                raise

    def _begin_afresh(self, op_id: str, km: str, ki: str, planned_status: int) -> MarkValidation:
        """As the base class: a check left waiting is rejected and the code begun once more;
        that second begin knows a refusal is then the device's own fault."""
        try:
            return self._begin_validation(op_id, km, ki, planned_status)
        except ValidationAlreadyRunning:
            self._cancel_validation(derive_op_id(op_id, "cancel-running"))
            self._after_cancel = True
            try:
                return self._begin_validation(derive_op_id(op_id, "again"), km, ki, planned_status)
            finally:
                self._after_cancel = False

    def forget_receipt(self) -> None:
        with self._lock:
            super().forget_receipt()
            self._device_receipt = None

    def _open_on_device(self, kind: ReceiptKind) -> None:
        receipt_type = cmd.RECEIPT_TYPE_SALE if kind == "sell" else cmd.RECEIPT_TYPE_SALE_RETURN
        self._device_receipt = None
        self._call(cmd.encode_open_receipt(self.password, receipt_type))
        self._device_receipt = kind
        self._send_cashier()

    def _opened_ahead(self, kind: ReceiptKind) -> bool:
        """Whether the receipt markd opened ahead is still the one open on the device."""
        if self._device_receipt != kind:
            return False
        full = self._read(cmd.encode_full_status(self.password), cmd.decode_full_status)
        if full.mode == cmd.MODE_DOCUMENT_OPEN:
            return True
        self._device_receipt = None
        return False

    # -- marking codes --------------------------------------------------------------------------

    def _begin_validation(
        self, op_id: str, km: str, ki: str, planned_status: int
    ) -> MarkValidation:
        code = _code_bytes(km)
        waiting = self._pending is not None
        # Right after a waiting check was rejected, a refusal cannot mean one still waits:
        # the device's own fault (e.g. the ФН's wrong state) is raised as it is.
        after_cancel = self._after_cancel
        try:
            request = cmd.encode_check_marking_code(self.password, code, planned_status)
        except ValueError as exc:
            raise PrinterFault(f"the marking code cannot be sent: {exc}", "bad-request") from None
        try:
            result = self._read(request, cmd.decode_check_marking_code)
        except MalformedAnswer:
            raise
        except PrinterFault as exc:
            if not after_cancel and (
                exc.device_code in VALIDATION_STATE_CODES
                or (waiting and exc.reason not in ("fn-error", "shift-expired", "paper-out"))
            ):
                raise ValidationAlreadyRunning(
                    f"a code check already waits for its decision ({exc.message})",
                    "validation-running",
                    exc.device_code,
                ) from exc
            raise
        validation = validation_from_check(ki, result)
        self._results[ki] = validation
        self._pending = ki
        return validation

    def _validation_status(self, op_id: str, ki: str) -> MarkValidation:
        # FF61 answers with the ФН's and the ОИСМ's result at once: the kept answer is final.
        kept = self._results.get(ki)
        if kept is None:
            raise NoValidationRunning(f"no code check of {ki} is kept", "invalid-state")
        return kept

    def _mark_action(self, action: int) -> int:
        try:
            return self._read(
                cmd.encode_accept_marking_code(self.password, action),
                cmd.decode_accept_marking_code,
            )
        except MalformedAnswer:
            raise
        except PrinterFault as exc:
            if exc.device_code in VALIDATION_STATE_CODES:
                raise NoValidationRunning(
                    f"no code check waits for a decision ({exc.message})",
                    "invalid-state",
                    exc.device_code,
                ) from exc
            raise

    def _accept(self, op_id: str, ki: str) -> MarkValidation | None:
        tag2106 = self._mark_action(cmd.MARK_ACCEPT)
        self._pending = None
        self._accepted.add(ki)
        kept = self._results.get(ki)
        final = _from_bits(ki, tag2106)
        if kept is not None:
            final = replace(final, fn_error_reason=kept.fn_error_reason)
        return final

    def _decline(self, op_id: str) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._accepted.discard(pending)
        self._mark_action(cmd.MARK_REJECT)

    def _cancel_validation(self, op_id: str) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._accepted.discard(pending)
        try:
            self._mark_action(cmd.MARK_REJECT)
        except NoValidationRunning:
            pass  # nothing waited: nothing to cancel

    def _clear_validations(self, op_id: str) -> None:
        self._forget_codes()
        try:
            self._mark_action(cmd.MARK_CLEAR)
        except NoValidationRunning:
            pass

    def _forget_codes(self) -> None:
        self._accepted.clear()
        self._results.clear()
        self._pending = None

    # -- receipts -------------------------------------------------------------------------------

    def _check_can_open(self, op_id: str) -> None:
        full = self._read(cmd.encode_full_status(self.password), cmd.decode_full_status)
        if not full.paper_present:
            raise PrinterFault("the ККТ cannot take a receipt: paper-out", "paper-out")
        if full.cover_open:
            raise PrinterFault("the ККТ cannot take a receipt: cover-open", "cover-open")

    def _fiscalise(
        self,
        op_id: str,
        kind: ReceiptKind,
        positions: tuple[Position, ...],
        payments: tuple[Payment, ...],
    ) -> ReceiptResult:
        done = self._done.get(op_id)
        if done is not None:
            return done  # closed already by this process under the same id
        # Everything markd can refuse by itself, before anything reaches the paper.
        missing = [p.mark.ki for p in positions if p.mark and p.mark.ki not in self._accepted]
        if missing:
            raise MarkNotValidated(
                f"codes not accepted since the last clear: {', '.join(missing)}; validate "
                "them again",
                "mark-not-checked",
            )
        lines = [self._line(kind, p) for p in positions]
        try:
            taxation = self._taxation_bit()
        except PrinterFault:
            if self._device_receipt is not None:
                self._device_receipt = None
                self._cancel_quietly()  # opened ahead (open_first): nothing goes on it now
            self._drop_codes_on_device()
            raise
        slots = [0] * 16
        for payment in payments:
            slots[PAYMENT_SLOTS.get(payment.type, 1)] += payment.amount_kopecks
        pw = self.password

        ahead = self._opened_ahead(kind)
        if not ahead:
            self._cancel_leftover(sum(1 for p in positions if p.mark is not None))
        receipt_type = cmd.RECEIPT_TYPE_SALE if kind == "sell" else cmd.RECEIPT_TYPE_SALE_RETURN
        shift = self._optional(cmd.encode_shift_parameters(pw), cmd.decode_shift_parameters)
        fn = self._optional(cmd.encode_fn_status(pw), cmd.decode_fn_status)
        try:
            if not ahead:
                self._call(cmd.encode_open_receipt(pw, receipt_type))
                self._send_cashier()
            self._device_receipt = None  # from here the receipt is this close's
            for position, (operation, industry) in zip(positions, lines, strict=True):
                self._call(cmd.encode_operation(pw, operation))
                if position.mark is None:
                    continue
                if industry is not None:
                    self._call(cmd.encode_write_operation_tlv(pw, industry))
                bound = self._read(
                    cmd.encode_bind_marking_code(pw, _code_bytes(position.mark.km)),
                    cmd.decode_bind_marking_code,
                )
                if bound.check is not None:
                    raise MarkNotValidated(
                        f"the ККТ checked code {position.mark.ki} by itself while binding it: "
                        "markd had not accepted it; the receipt is cancelled",
                        "mark-not-checked",
                    )
            answer = self._call(cmd.encode_close_receipt(pw, slots, taxation))
        except PrinterFault:
            # Refused after opening (or an answer markd cannot read before the close): cancel
            # the receipt; its codes go with it.
            self._cancel_quietly()
            self._forget_codes()
            raise
        try:
            closed = cmd.decode_close_receipt(answer)
        except MalformedAnswer as exc:
            raise OutcomeUnknown(
                f"the ККТ closed the receipt but its answer could not be read: {exc.message}"
            ) from exc
        result = ReceiptResult(
            kind=kind,
            document_number=closed.document_number,
            shift_number=shift.number if shift is not None else None,
            fiscal_sign=str(closed.fiscal_sign),
            datetime=_iso(closed.datetime),
            fn_number=fn.fn_number if fn is not None and fn.fn_number else None,
            total_kopecks=sum(p.amount_kopecks for p in positions),
            positions=positions,
            payments=payments,
        )
        for position in positions:
            if position.mark is not None:
                self._accepted.discard(position.mark.ki)
                self._results.pop(position.mark.ki, None)
        self._done[op_id] = result
        while len(self._done) > REMEMBERED_RECEIPTS:
            self._done.popitem(last=False)
        return result

    def _line(self, kind: ReceiptKind, position: Position) -> tuple[cmd.Operation, bytes | None]:
        """The ``FF46`` operation and the ``FF4D`` 1260 STLV of a position (checked before
        the receipt is opened)."""
        operation = cmd.Operation(
            operation=cmd.OPERATION_SALE if kind == "sell" else cmd.OPERATION_SALE_RETURN,
            quantity_millionths=position.quantity * 1_000_000,
            price=position.price_kopecks,
            amount=position.amount_kopecks,
            name=position.name,
            tax_rate=TAX_RATES[position.tax],
            payment_method=PAYMENT_METHOD_FULL,
            payment_object=PAYMENT_OBJECT_MARKED if position.mark else PAYMENT_OBJECT_PLAIN,
        )
        industry = None
        mark = position.mark
        if mark is not None and mark.industry.tag1265:
            # Tag 1260 carries the permit check's ids; without a 1265 it says nothing.
            tags = mark.industry
            try:
                industry = cmd.industry_tlv(tags.tag1262, tags.tag1263, tags.tag1264, tags.tag1265)
                cmd.encode_write_operation_tlv(self.password, industry)
                cmd.encode_bind_marking_code(self.password, _code_bytes(mark.km))
            except ValueError as exc:
                raise PrinterFault(f"position {position.name!r}: {exc}", "bad-position") from None
        try:
            cmd.encode_operation(self.password, operation)
        except ValueError as exc:
            raise PrinterFault(f"position {position.name!r}: {exc}", "bad-position") from None
        return operation, industry

    def _taxation_bit(self) -> int:
        """The ``FF45`` taxation bit: the configured system, which the ККТ must be registered
        with (``FF09``); without one, the only system the ККТ is registered with."""
        wanted = self.settings.receipt.taxation_type
        registration = self._registration_systems()
        if wanted is not None:
            bit = TAXATION_BITS.get(wanted)
            if bit is None:
                raise PrinterFault(f"unknown taxation system {wanted!r}", "bad-taxation-type")
            if registration is not None and not registration & bit:
                raise PrinterFault(
                    f"the ККТ is not registered with taxation system {wanted!r} (registered: "
                    f"{', '.join(_taxation_names(registration)) or 'none'}); nothing was printed",
                    "bad-taxation-type",
                )
            return bit
        if registration is None:
            return TAXATION_BITS["osn"]  # as the vendor's example sends, when nothing tells
        names = _taxation_names(registration)
        if len(names) == 1:
            return TAXATION_BITS[names[0]]
        raise PrinterFault(
            f"the ККТ is registered with several taxation systems ({', '.join(names)}): "
            "configure [fiscal] taxation_type",
            "bad-taxation-type",
        )

    def _registration_systems(self) -> int | None:
        if self._registration is None:
            self._registration = self._optional(
                cmd.encode_registration(self.password), cmd.decode_registration
            )
        return self._registration.taxation_systems if self._registration is not None else None

    def _cancel_leftover(self, marked: int) -> None:
        """A receipt left open on the device (a link lost mid-receipt) is cancelled first.

        Whether cancelling a receipt empties the ФН's table of accepted codes is published
        nowhere for Shtrih, so the device is asked (``FF70``: the results it holds): when it
        holds fewer than the receipt's marked units need — or cannot say — the codes are
        forgotten and the receipt refused with :class:`MarkNotValidated` before anything is
        opened, so the session validates them again. Binding a code the ФН no longer holds
        would make the ККТ check and accept it by itself (the vendor's ФФД 1.2 note). With
        ``marked`` 0 (a receipt opened ahead, before its codes) the codes accepted so far are
        forgotten when the ФН no longer holds them all."""
        full = self._read(cmd.encode_full_status(self.password), cmd.decode_full_status)
        if full.mode != cmd.MODE_DOCUMENT_OPEN:
            return
        self._call(cmd.encode_cancel_receipt(self.password))
        needed = marked or len(self._accepted)
        if not needed:
            return
        held = self._optional(cmd.encode_marking_status(self.password), cmd.decode_marking_status)
        if held is None or held.accepted < needed:
            self._forget_codes()
            if not marked:
                return  # a receipt opened ahead (open_first): its codes are checked anew
            raise MarkNotValidated(
                "a receipt left open on the ККТ was cancelled and the ФН "
                + (
                    "could not say which codes it still holds"
                    if held is None
                    else f"holds {held.accepted} accepted code(s) of {marked}"
                )
                + ": validate the codes again",
                "mark-not-checked",
            )

    def _cancel_quietly(self) -> None:
        try:
            self._call(cmd.encode_cancel_receipt(self.password))
        except PrinterFault:
            pass

    def _drop_codes_on_device(self) -> None:
        """A sale refused before opening still ends its codes' life, like one refused after."""
        self._forget_codes()
        try:
            self._mark_action(cmd.MARK_CLEAR)
        except PrinterFault:
            pass

    def _cancel_device_receipt(self, op_id: str) -> None:
        self._device_receipt = None
        # Cancelling the receipt markd is building, or one left open: the same as a leftover
        # (FF70 tells which accepted codes the ФН still holds; the rest are forgotten).
        self._cancel_leftover(0)

    def _find_receipt(self, op_id: str) -> tuple[Finding, ReceiptResult | None]:
        done = self._done.get(op_id)
        if done is not None:
            return "done", replace(done, recovered=True)
        return "unknown", None

    def _release(self) -> None:
        self.link.close()


# --------------------------------------------------------------------------------------------
# Reading answers


def _firmware(full: cmd.FullStatus) -> str | None:
    """The firmware as 0x11 reports it: version, build and its date (``A4 build 3098 of
    2023-11-20``)."""
    if not full.firmware_version:
        return None
    text = f"{full.firmware_version} build {full.firmware_build}"
    if full.firmware_date is not None:
        text += f" of {full.firmware_date.isoformat()}"
    return text


def validation_from_check(ki: str, result: cmd.CheckResult) -> MarkValidation:
    """A check result (``FF61``) in markd's terms, with ATOL's vocabulary for the reasons."""
    fn_checked = bool(result.tag2004 & 0b1)
    fn_result = bool(result.tag2004 & 0b10)
    base = MarkValidation(
        ki=ki,
        fn_checked=fn_checked,
        fn_result=fn_result,
        fn_error_reason=result.local_reason_name,
        ready=True,
    )
    if not result.online:
        return replace(base, offline=True)
    if result.online_code == cmd.ONLINE_NO_ANSWER:
        return replace(
            base,
            request_sent=True,
            driver_error="0xFF responseTimeout: the ОИСМ did not answer in time",
        )
    if result.online_code == cmd.ONLINE_ANSWER_REFUSED:
        why = cmd.REFUSAL_REASONS.get(result.refusal_reason or 0, "reason unknown")
        return replace(
            base,
            request_sent=True,
            driver_error=f"0x20 responseInvalid: the ФН refused the ОИСМ's answer ({why})",
        )
    if result.online_code != cmd.ONLINE_ANSWERED or result.tag2106 is None:
        return replace(
            base,
            request_sent=True,
            driver_error=f"0x{result.online_code or 0:02X} serverError: the online check failed",
        )
    bits = result.tag2106
    oism_checked = bool(bits & 0b100)
    correct = bool(bits & 0b1000)
    item_status = response = None
    if oism_checked:
        status_tag = result.server_tlv.get(2109)
        item_status = ITEM_STATUS.get(status_tag[0] if status_tag else (1 if correct else 2))
        response_tag = result.server_tlv.get(2105)
        response = RESPONSE_RESULT.get(response_tag[0] if response_tag else 0, "correct")
    return replace(
        base,
        request_sent=True,
        oism_checked=oism_checked,
        oism_status_correct=correct,
        offline=bool(bits & 0b10000),
        item_status=item_status,
        response_result=response,
    )


def _from_bits(ki: str, tag2106: int) -> MarkValidation:
    return MarkValidation(
        ki=ki,
        fn_checked=bool(tag2106 & 0b1),
        fn_result=bool(tag2106 & 0b10),
        ready=True,
        oism_checked=bool(tag2106 & 0b100),
        oism_status_correct=bool(tag2106 & 0b1000),
        offline=bool(tag2106 & 0b10000),
    )


def _code_bytes(km: str) -> bytes:
    """The code as scanned (GS as 0x1D); codes are ASCII, anything else is refused."""
    try:
        return km.encode("ascii")
    except UnicodeEncodeError:
        raise PrinterFault("a marking code is ASCII text", "bad-request") from None


def _taxation_names(bits: int) -> list[str]:
    return [name for name, bit in TAXATION_BITS.items() if bits & bit]


def _health(
    now: datetime,
    expiry: date | None,
    exchange: cmd.ExchangeStatus | None,
    opened_at: datetime | None,
) -> FiscalHealth:
    """Fiscal health (domain.md §7.8), ages counted from the ККТ's own clock."""
    days_left = None if expiry is None else (expiry - now.date()).days
    oldest = exchange.first_unsent_at if exchange is not None and exchange.unsent else None
    oldest_days = None
    if oldest is not None:
        oldest_days = round((now - oldest).total_seconds() / 86400, 2)
    shift_hours = None
    if opened_at is not None:
        shift_hours = round(max((now - opened_at).total_seconds(), 0) / 3600, 2)
    return FiscalHealth(
        fn_valid_until=_iso(expiry),
        fn_days_left=days_left,
        unsent_oldest=_iso(oldest),
        unsent_oldest_days=oldest_days,
        shift_opened_at=_iso(opened_at),
        shift_hours=shift_hours if shift_hours is None or math.isfinite(shift_hours) else None,
    )


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value.isoformat()


__all__ = ["ShtrihPrinter", "validation_from_check"]
