"""The sale session: from allowed units to a fiscalised receipt, and back to a consistent state
after a crash.

::

    add(verdict, code, price, name)            one scanned unit
      verdict not "allow"  → refused; the ККТ never sees it
      ККТ: begin → poll → judge → accept        (FiscalPrinter.check_code)
        declined by the ФН / ОИСМ → refused with the reason, declined on the ККТ
        accepted → a position with tags 2003, 2102, 2106, 1260 {1262 … 1265}
    close(payments)                             payment taken: the receipt must now exist
      journal "closing" → ККТ sell / sellReturn → journal "closed"
      → store: every КИ sold (or, after a return, no longer sold)
      → Local Module v2: /cis/sell (or /cis/return), when configured
    cancel()                                    drop the receipt (nothing was paid)
    recover()                                   after a restart, before anything else

Every step is written to the :class:`~markd.fiscal.journal.SessionJournal` (fsync'd) before it
is taken, and every device operation carries an idempotency id derived from the receipt's id
and the step, so :meth:`SaleSession.recover` can tell how far a receipt got:

* not yet ``closing`` (no payment was committed): the receipt is dropped — the validation in
  progress is cancelled, the results the ФН holds are cleared, a receipt left open on the device
  is cancelled — and journaled ``cancelled``;
* ``closing`` but not ``closed``: the ККТ is asked what became of the last attempt — by its
  request id where the device keeps one (ATOL's web server, the emulator), else by its document
  counter (a new fiscal document since the attempt was journaled is that receipt: markd is the
  ККТ's only client). Found: the receipt is finished as it is. Not found: a receipt left open
  on the device is cancelled, every unit is validated again and the receipt registered anew —
  exactly once;
* ``closed``: whatever of the store and the Local Module is still missing is done.

A fault of the ККТ refuses the unit at hand (or fails the close, which can be retried) with a
reason; it never raises out of :meth:`~SaleSession.add` or :meth:`~SaleSession.close`.

The session is asyncio-friendly: device calls run on one worker thread of the session's own,
in order, while the event loop keeps serving scans; one lock serialises the public methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from markd.errors import FiscalError, FiscalTimeout, OutcomeUnknown, PrinterUnavailable, StoreError
from markd.fiscal import atol_protocol as proto
from markd.fiscal.base import FiscalPrinter, derive_op_id
from markd.fiscal.journal import DEFAULT_PATH as DEFAULT_JOURNAL
from markd.fiscal.journal import SessionJournal
from markd.fiscal.killpoint import kill_point
from markd.fiscal.model import (
    PLANNED_STATUS_PIECE_RETURNED,
    PLANNED_STATUS_PIECE_SOLD,
    IndustryTags,
    MarkedItem,
    MarkValidation,
    Payment,
    Position,
    PrinterStatus,
    ReceiptKind,
    ReceiptResult,
)

if TYPE_CHECKING:
    from markd.checks.local_module import LocalModuleClient
    from markd.checks.verdict import Verdict
    from markd.codes import MarkingCode
    from markd.store import Store
    from markd.systemd import EventLog

_T = TypeVar("_T")

#: Customer-screen texts for units the ККТ refused, by reason.
MESSAGES_RU: dict[str, str] = {
    "fn-crypto-invalid": "Код маркировки не прошёл проверку в ФН, продажа невозможна",
    "oism-status-incorrect": "Оператор маркировки не подтвердил статус товара, продажа невозможна",
    "oism-sale-stopped": "Продажа товара приостановлена оператором маркировки",
    "oism-no-answer": "Нет ответа оператора маркировки, продажа невозможна",
    "fn-validation-timeout": "Касса не успела проверить код, отсканируйте ещё раз",
    "duplicate-in-receipt": "Этот экземпляр уже в чеке",
    "no-verdict": "Код не проверен, продажа невозможна",
    "paper-out": "В кассе закончилась бумага, продажа невозможна",
    "fn-error": "Ошибка фискального накопителя, продажа невозможна",
}
PRINTER_DOWN_RU = "Касса недоступна, продажа невозможна"
#: Attempts to register one receipt before it is left pending for a technician.
MAX_ATTEMPTS = 5

UnitStatus = Literal["added", "refused"]
ReceiptStatus = Literal["closed", "failed", "pending", "cancelled", "empty"]


@dataclass(frozen=True)
class SaleOptions:
    """What ``[fiscal]`` says about sales (see :func:`markd.fiscal.factory.sale_options`)."""

    #: 1262 / 1263 / 1264 of every marked position; 1265 comes from the unit's verdict.
    industry: IndustryTags = field(default_factory=IndustryTags)
    #: Tag 2003 for a sale: 1 (``itemPieceSold``) or 2 (``itemDryForSale``), domain.md §10.11.
    sale_status: int = PLANNED_STATUS_PIECE_SOLD
    tax: str = "none"
    #: When the ОИСМ does not answer (0xFF): ``accept`` or ``decline`` the unit.
    on_no_answer: str = "accept"
    #: Open a closed shift, close and reopen an expired one, before a receipt.
    auto_shift: bool = True
    #: Report sold / returned КИ to the Local Module (API v2) after a receipt.
    lm_sell: bool = True
    lm_timeout_s: float = 5.0
    #: Payment type when :meth:`SaleSession.close` is given none.
    payment_type: str = "electronically"


@dataclass(frozen=True)
class UnitOutcome:
    """What became of one unit: ``added`` to the receipt or ``refused`` (with the reason)."""

    status: UnitStatus
    reason: str
    message_ru: str
    ki: str | None
    unit_id: str | None = None
    receipt_id: str | None = None
    validation: MarkValidation | None = None
    position: Position | None = None
    #: Who decided: ``verdict`` (the permit check), ``fn`` (the ККТ's check of the code),
    #: ``printer`` (the ККТ could not do it: offline, no paper, ФН error…), ``session``.
    source: str = "fn"

    @property
    def added(self) -> bool:
        return self.status == "added"

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "message": self.message_ru,
            "ki": self.ki,
            "unit": self.unit_id,
            "receipt": self.receipt_id,
            "source": self.source,
        }
        if self.validation is not None:
            data["fn"] = self.validation.record()
        if self.position is not None:
            data["position"] = self.position.record()
        return data


@dataclass(frozen=True)
class ReceiptOutcome:
    """What became of a receipt: ``closed`` (fiscalised), ``failed`` (the ККТ refused; the
    receipt stays open, close again or cancel), ``pending`` (the ККТ is unreachable or its
    answer was lost: :meth:`SaleSession.recover` finishes it later), ``cancelled``, ``empty``."""

    status: ReceiptStatus
    reason: str
    receipt_id: str | None = None
    receipt: ReceiptResult | None = None
    #: The store's sold journal got every КИ (None: no store).
    store_ok: bool | None = None
    #: The Local Module's answer (None: not configured or not asked).
    lm: dict[str, Any] | None = None
    #: Units dropped when the receipt had to be registered anew after a crash.
    dropped: tuple[UnitOutcome, ...] = ()

    def record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "receipt_id": self.receipt_id,
            "receipt": None if self.receipt is None else self.receipt.record(),
            "store_ok": self.store_ok,
            "lm": self.lm,
            "dropped": [u.record() for u in self.dropped],
        }


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`SaleSession.recover` did, receipt by receipt."""

    actions: tuple[dict[str, Any], ...] = ()
    outcomes: tuple[ReceiptOutcome, ...] = ()

    @property
    def pending(self) -> bool:
        """Something could not be finished (the ККТ unreachable): call recover() again."""
        return any(o.status == "pending" for o in self.outcomes)

    def record(self) -> dict[str, Any]:
        return {
            "actions": list(self.actions),
            "outcomes": [o.record() for o in self.outcomes],
            "pending": self.pending,
        }


@dataclass
class _Unit:
    unit_id: str
    ki: str
    km: str | None = field(repr=False)
    position: Position


@dataclass
class _Receipt:
    receipt_id: str
    kind: ReceiptKind
    units: list[_Unit] = field(default_factory=list)
    #: Units offered to this receipt so far (added or refused): numbers the unit ids.
    offered: int = 0
    attempts: int = 0
    #: The last close attempt: its op id and the document number before it.
    last_op: str | None = None
    doc_before: int | None = None
    payments: tuple[Payment, ...] = ()
    paid: bool = False
    fn_number: str | None = None

    @property
    def kis(self) -> list[str]:
        return [u.ki for u in self.units]

    def positions(self) -> list[Position]:
        return [u.position for u in self.units]


class SaleSession:
    """One till's sales through ``printer``.

    ``store``: the LMDB store whose sold journal gets every КИ of a closed receipt (None: not
    recorded). ``lm_client``: a Local Module client for ``/cis/sell`` and ``/cis/return`` (None:
    not reported). ``journal_path``: the session journal (fsync'd JSON lines; keep it in the
    state directory). ``event_log``: where ``fiscal-*`` events go (None: nowhere).

    The public methods are coroutines and serialise on one lock: call them from one event loop.
    Call :meth:`recover` once at start, before the first :meth:`add`.
    """

    def __init__(
        self,
        printer: FiscalPrinter,
        store: Store | None = None,
        lm_client: LocalModuleClient | None = None,
        journal_path: str | Path = DEFAULT_JOURNAL,
        event_log: EventLog | None = None,
        options: SaleOptions | None = None,
    ) -> None:
        self.printer = printer
        self.store = store
        self.lm_client = lm_client
        self.journal = SessionJournal(journal_path)
        self.event_log = event_log
        self.options = options or SaleOptions()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="markd-fiscal")
        self._lock: asyncio.Lock | None = None
        self._receipt: _Receipt | None = None
        self._fn_number: str | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def receipt_id(self) -> str | None:
        """The receipt being built (or waiting to be finished), None when there is none."""
        return None if self._receipt is None else self._receipt.receipt_id

    @property
    def units(self) -> tuple[str, ...]:
        """The КИ of the units in the receipt being built."""
        return () if self._receipt is None else tuple(self._receipt.kis)

    @property
    def receipt_kind(self) -> ReceiptKind | None:
        """``sell`` or ``return`` for the receipt in flight, None when there is none."""
        return None if self._receipt is None else self._receipt.kind

    @property
    def positions(self) -> tuple[Position, ...]:
        """The lines of the receipt in flight, in the order they were added."""
        return () if self._receipt is None else tuple(self._receipt.positions())

    @property
    def receipt_paid(self) -> bool:
        """The receipt in flight has its payment journaled: it can only be registered now
        (closed, or finished by :meth:`recover`), never dropped unasked."""
        return self._receipt is not None and self._receipt.paid

    async def open(self, kind: ReceiptKind = "sell") -> str:
        """Start a receipt explicitly (``add`` opens a sale by itself); returns its id.
        Raises :class:`~markd.errors.FiscalError` when the ККТ cannot take one."""
        async with self._locked():
            receipt = await self._ensure_open(kind)
            return receipt.receipt_id

    async def add(
        self,
        verdict: Verdict | None,
        code: MarkingCode,
        price_kopecks: int,
        name: str,
        *,
        tax: str | None = None,
    ) -> UnitOutcome:
        """Validate ``code`` in the ФН and add it to the receipt, or refuse it.

        ``verdict`` is the permit check's decision for this code; only ``allow`` reaches the
        ККТ. On a return receipt (:meth:`open` with ``"return"``) it may be None. Never raises
        for the ККТ's faults: they refuse this unit with the reason.
        """
        async with self._locked():
            return await self._add(verdict, code, price_kopecks, name, tax)

    async def close(self, payments: Sequence[Payment] | None = None) -> ReceiptOutcome:
        """Fiscalise the receipt (``payments``: default one payment of the total, type
        ``[fiscal] payment_type``), then record its КИ in the store and the Local Module."""
        async with self._locked():
            receipt = self._receipt
            if receipt is None or not receipt.units:
                if receipt is not None:
                    await self._drop(receipt, "empty")
                return ReceiptOutcome("empty", "no-units")
            if receipt.last_op is not None:
                # An earlier attempt's outcome is unknown: find out before trying again.
                return await self._reconcile(receipt)
            if not receipt.paid:
                total = sum(u.position.amount_kopecks for u in receipt.units)
                chosen = (
                    tuple(payments) if payments else (Payment(total, self.options.payment_type),)
                )
                # From here the receipt must come to exist: recovery registers it, never drops.
                self.journal.append(
                    "paid",
                    receipt.receipt_id,
                    total_kopecks=total,
                    payments=[p.record() for p in chosen],
                )
                kill_point("paid")
                receipt.payments = chosen
                receipt.paid = True
            return await self._attempt_close(receipt)

    async def cancel(self, reason: str = "cancelled") -> ReceiptOutcome:
        """Drop the receipt. If an earlier close attempt's outcome is unknown, the ККТ is asked
        first: a receipt that does exist is finished and returned as ``closed`` instead."""
        async with self._locked():
            receipt = self._receipt
            if receipt is None:
                return ReceiptOutcome("empty", "no-receipt")
            if receipt.last_op is not None:
                outcome = await self._reconcile(receipt, redo=False)
                if outcome.status in ("closed", "pending"):
                    return outcome
            return await self._drop(receipt, reason)

    async def recover(self) -> RecoveryReport:
        """Bring the journal and the ККТ back in step after a restart (see the module
        docstring). Safe to call at any time; does nothing when nothing is unfinished."""
        async with self._locked():
            return await self._recover()

    async def printer_status(self) -> PrinterStatus:
        """The ККТ's status (raises :class:`~markd.errors.FiscalError` when unreachable)."""
        return await self._device(self.printer.status)

    def close_session(self) -> None:
        """Stop the worker thread (the printer itself belongs to the caller)."""
        self._executor.shutdown(wait=True)

    # -- adding units ---------------------------------------------------------------------------

    async def _add(
        self,
        verdict: Verdict | None,
        code: MarkingCode,
        price_kopecks: int,
        name: str,
        tax: str | None,
    ) -> UnitOutcome:
        receipt = self._receipt
        kind: ReceiptKind = receipt.kind if receipt is not None else "sell"
        if verdict is not None and not verdict.allowed:
            return self._refuse(code.ki, verdict.reason, verdict.message_ru, source="verdict")
        if verdict is None and kind == "sell":
            return self._refuse(code.ki, "no-verdict", MESSAGES_RU["no-verdict"], source="verdict")
        if verdict is not None and verdict.ki not in (None, code.ki):
            return self._refuse(code.ki, "verdict-mismatch", MESSAGES_RU["no-verdict"], "verdict")
        if receipt is not None and receipt.paid:
            # Paid and waiting to be fiscalised (or recovered): it takes no more units.
            return self._refuse(code.ki, "receipt-closing", PRINTER_DOWN_RU, "session")
        if receipt is not None and code.ki in receipt.kis:
            return self._refuse(
                code.ki, "duplicate-in-receipt", MESSAGES_RU["duplicate-in-receipt"], "session"
            )
        problems = Position(name, price_kopecks, tax=tax or self.options.tax).problems()
        if problems:
            # Checked before the ККТ is asked: a unit it accepted must be one it can register.
            return self._refuse(code.ki, "bad-position", "; ".join(problems), "session")
        try:
            receipt = await self._ensure_open(kind)
        except FiscalError as exc:
            return self._refuse(code.ki, exc.reason, _message(exc.reason), "printer", error=exc)

        # Every unit offered gets its own id, refused ones included: the id keys the device
        # operations (idempotency), so two units must never share one.
        receipt.offered += 1
        unit_id = f"u{receipt.offered}"
        planned = (
            self.options.sale_status if receipt.kind == "sell" else PLANNED_STATUS_PIECE_RETURNED
        )
        op = derive_op_id(receipt.receipt_id, f"{unit_id}/check")
        self.journal.append("unit-validating", receipt.receipt_id, unit=unit_id, ki=code.ki)
        kill_point("validating")
        try:
            check = await self._device(
                self.printer.check_code, op, code.km, code.ki, planned, self.options.on_no_answer
            )
        except FiscalError as exc:
            await self._quietly(self.printer.cancel_validation, derive_op_id(op, "abandon"))
            return self._refuse(
                code.ki, exc.reason, _message(exc.reason), "printer", receipt, unit_id, error=exc
            )
        if not check.accepted:
            return self._refuse(
                code.ki,
                check.reason,
                _message(check.reason),
                "fn",
                receipt,
                unit_id,
                validation=check.validation,
            )
        kill_point("accepted")
        tag1265 = verdict.tag1265 if verdict is not None else ""
        position = Position(
            name=name,
            price_kopecks=price_kopecks,
            tax=tax or self.options.tax,
            mark=MarkedItem(
                km=code.km,
                ki=code.ki,
                planned_status=planned,
                industry=dataclasses.replace(self.options.industry, tag1265=tag1265),
                validation=check.validation,
            ),
        )
        try:
            self.printer.add_position(derive_op_id(op, "add"), position)
        except FiscalError as exc:
            # A bad name or price: the code was accepted on the ККТ, so clear what it holds
            # for this receipt is not needed: the receipt never registers this unit.
            return self._refuse(code.ki, exc.reason, exc.message, "session", receipt, unit_id)
        self.journal.put_code(receipt.receipt_id, unit_id, code.km)
        self.journal.append(
            "unit-added",
            receipt.receipt_id,
            unit=unit_id,
            ki=code.ki,
            check=check.reason,
            fn=check.validation.record(),
            position=position.record(),
        )
        kill_point("added")
        receipt.units.append(_Unit(unit_id, code.ki, code.km, position))
        self._event(
            "fiscal-unit",
            f"added {code.ki} to receipt {receipt.receipt_id}: {check.reason}",
            ki=code.ki,
            reason=check.reason,
            tag2106=check.validation.tag2106,
            receipt=receipt.receipt_id,
        )
        return UnitOutcome(
            "added",
            check.reason,
            "",
            code.ki,
            unit_id,
            receipt.receipt_id,
            check.validation,
            position,
        )

    async def _ensure_open(self, kind: ReceiptKind) -> _Receipt:
        if self._receipt is not None:
            if self._receipt.kind != kind:
                raise FiscalError(
                    f"a {self._receipt.kind} receipt is open, not a {kind} one", "receipt-open"
                )
            return self._receipt
        receipt = _Receipt(str(uuid.uuid4()), kind)
        if self.options.auto_shift:
            shift = await self._device(
                self.printer.ensure_shift, derive_op_id(receipt.receipt_id, "shift")
            )
            if shift is not None:
                self.journal.append(
                    "shift-opened", None, shift=shift.number, document=shift.document_number
                )
        rid = receipt.receipt_id
        # Results the ФН still holds from an earlier, abandoned receipt must not pile up (the
        # ФН takes a limited number) nor be mistaken for this receipt's.
        await self._quietly(self.printer.clear_validations, derive_op_id(rid, "clear"))
        try:
            await self._device(self.printer.open_receipt, derive_op_id(rid, "open"), kind)
        except FiscalError as exc:
            if exc.reason != "receipt-open":
                raise
            # markd is the ККТ's only client and has no receipt in flight: the open one is a
            # leftover of a crash whose clean-up did not reach the device. Cancel it.
            await self._device(self.printer.cancel_receipt, derive_op_id(rid, "stale"))
            self.journal.append("recovery", None, action="cancelled-stale-open-receipt")
            await self._device(self.printer.open_receipt, derive_op_id(rid, "open-2"), kind)
        self.journal.append("open", rid, kind=kind)
        kill_point("opened")
        self._receipt = receipt
        return receipt

    def _refuse(
        self,
        ki: str | None,
        reason: str,
        message: str,
        source: str,
        receipt: _Receipt | None = None,
        unit_id: str | None = None,
        *,
        validation: MarkValidation | None = None,
        error: FiscalError | None = None,
    ) -> UnitOutcome:
        facts: dict[str, Any] = {"ki": ki, "reason": reason, "source": source}
        if unit_id is not None:
            facts["unit"] = unit_id
        if validation is not None:
            facts["fn"] = validation.record()
        if error is not None:
            facts["error"] = error.message
            if error.device_code is not None:
                facts["device_code"] = error.device_code
        # A unit the verdict denied is journaled only when a receipt is open: the verdict
        # itself is already in the event log.
        if source != "verdict" or self._receipt is not None:
            self.journal.append("unit-refused", receipt.receipt_id if receipt else None, **facts)
        priority = "warning" if source == "printer" else "notice"
        self._event(
            "fiscal-error" if source == "printer" else "fiscal-unit",
            f"refused {ki}: {reason}",
            priority=priority,
            ki=ki,
            reason=reason,
            source=source,
        )
        return UnitOutcome(
            "refused",
            reason,
            message,
            ki,
            unit_id,
            None if receipt is None else receipt.receipt_id,
            validation,
            source=source,
        )

    # -- closing --------------------------------------------------------------------------------

    async def _attempt_close(self, receipt: _Receipt) -> ReceiptOutcome:
        rid = receipt.receipt_id
        attempt = receipt.attempts + 1
        try:
            if self.options.auto_shift:
                await self._device(self.printer.ensure_shift, derive_op_id(rid, f"shift-{attempt}"))
            status = await self._device(self.printer.status, derive_op_id(rid, f"st-{attempt}"))
        except FiscalError as exc:
            return self._close_failed(receipt, exc, attempt=None)
        op = derive_op_id(rid, f"close-{attempt}")
        receipt.attempts = attempt
        receipt.last_op = op
        receipt.doc_before = status.last_document_number
        self.journal.append(
            "closing",
            rid,
            attempt=attempt,
            op=op,
            doc_before=status.last_document_number,
            kind=receipt.kind,
            units=[u.unit_id for u in receipt.units],
            total_kopecks=sum(u.position.amount_kopecks for u in receipt.units),
        )
        kill_point("closing")
        try:
            result = await self._device(self.printer.close_receipt, op, receipt.payments)
        except (OutcomeUnknown, FiscalTimeout) as exc:
            self.journal.append("close-unknown", rid, attempt=attempt, error=exc.message)
            return await self._reconcile(receipt)
        except FiscalError as exc:
            return self._close_failed(receipt, exc, attempt=attempt)
        return await self._finish(receipt, result)

    def _close_failed(
        self, receipt: _Receipt, exc: FiscalError, attempt: int | None
    ) -> ReceiptOutcome:
        """The ККТ refused (or was not reached): no receipt. It stays open to retry or cancel."""
        if attempt is not None:
            receipt.last_op = None  # that attempt is settled: it made no receipt
            self.journal.append(
                "close-failed",
                receipt.receipt_id,
                attempt=attempt,
                reason=exc.reason,
                error=exc.message,
                device_code=exc.device_code,
            )
        self._event(
            "fiscal-error",
            f"receipt {receipt.receipt_id} not closed: {exc.reason}: {exc.message}",
            priority="warning",
            receipt=receipt.receipt_id,
            reason=exc.reason,
        )
        return ReceiptOutcome("failed", exc.reason, receipt.receipt_id)

    async def _finish(self, receipt: _Receipt, result: ReceiptResult) -> ReceiptOutcome:
        rid = receipt.receipt_id
        result = dataclasses.replace(
            result,
            kind=receipt.kind,
            positions=tuple(receipt.positions()),
            payments=receipt.payments or result.payments,
            total_kopecks=sum(u.position.amount_kopecks for u in receipt.units),
            fn_number=result.fn_number or receipt.fn_number or self._fn_number,
        )
        self._fn_number = result.fn_number or self._fn_number
        self.journal.append("closed", rid, **_closed_facts(result))
        kill_point("closed")
        self._receipt = None
        await self._device(self.printer.forget_receipt)
        self.journal.drop_codes()
        store_ok = self._record_in_store(rid, receipt.kind, receipt.kis, result.reference)
        kill_point("stored")
        lm = await self._report_to_lm(rid, receipt.kind, receipt.kis)
        self._event(
            "fiscal-receipt",
            f"{receipt.kind} receipt {result.document_number} closed with "
            f"{len(receipt.units)} units, {result.total_kopecks / 100:.2f} RUB"
            + (" (found during recovery)" if result.recovered else ""),
            receipt=rid,
            document=result.document_number,
            fiscal_sign=result.fiscal_sign,
            units=len(receipt.units),
            total_kopecks=result.total_kopecks,
        )
        self.journal.rotate_if_large()
        reason = "recovered" if result.recovered else "fiscalised"
        return ReceiptOutcome("closed", reason, rid, result, store_ok, lm)

    def _record_in_store(
        self, rid: str, kind: ReceiptKind, kis: list[str], reference: str
    ) -> bool | None:
        if self.store is None:
            return None
        try:
            for ki in kis:
                if kind == "sell":
                    self.store.mark_sold(ki, reference)
                else:
                    self.store.mark_returned(ki)
        except StoreError as exc:
            self.journal.append("store-failed", rid, reason=exc.reason, error=exc.message)
            self._event(
                "fiscal-error",
                f"receipt {rid}: the store did not take the units: {exc.message}",
                priority="error",
                receipt=rid,
            )
            return False
        self.journal.append("stored", rid, kis=kis, reference=reference)
        return True

    async def _report_to_lm(
        self, rid: str, kind: ReceiptKind, kis: list[str]
    ) -> dict[str, Any] | None:
        if self.lm_client is None or not self.options.lm_sell:
            return None
        deadline = time.monotonic() + self.options.lm_timeout_s
        try:
            if kind == "sell":
                update = await self.lm_client.sell(kis, deadline)
            else:
                update = await self.lm_client.return_(kis, deadline)
        except Exception as exc:  # noqa: BLE001 - the LM is advisory: never lose the receipt
            facts: dict[str, Any] = {"reason": "lm-error", "error": f"{type(exc).__name__}"}
            self.journal.append("lm-failed", rid, **facts)
            return {"ok": False, **facts}
        if update.failure is not None:
            facts = {"reason": update.failure.kind, "error": update.failure.detail}
            self.journal.append("lm-failed", rid, **facts)
            self._event(
                "fiscal-error",
                f"receipt {rid}: the Local Module was not told: {update.failure.kind}",
                priority="warning",
                receipt=rid,
            )
            return {"ok": False, **facts}
        facts = {
            "accepted": list(update.accepted),
            "rejected": list(update.rejected),
            "skipped": update.skipped,
        }
        self.journal.append("lm-reported", rid, action=kind, **facts)
        return {"ok": update.ok, **facts}

    async def _drop(self, receipt: _Receipt, reason: str) -> ReceiptOutcome:
        """Cancel the receipt everywhere: the validation in progress, the ФН's kept results,
        a receipt open on the device. Device errors are journaled, not raised."""
        rid = receipt.receipt_id
        problems = []
        for step, call in (
            ("cancel-validation", self.printer.cancel_validation),
            ("clear", self.printer.clear_validations),
            ("cancel-receipt", self.printer.cancel_receipt),
        ):
            problem = await self._quietly(call, derive_op_id(rid, f"drop/{step}"))
            if problem:
                problems.append(f"{step}: {problem}")
        self.journal.append("cancelled", rid, reason=reason, problems=problems or None)
        self.journal.drop_codes()
        self._receipt = None
        self._event(
            "fiscal-receipt", f"receipt {rid} cancelled: {reason}", receipt=rid, reason=reason
        )
        return ReceiptOutcome("cancelled", reason, rid)

    # -- reconciling after a lost answer or a crash ---------------------------------------------

    async def _reconcile(self, receipt: _Receipt, *, redo: bool = True) -> ReceiptOutcome:
        """Find out whether the last close attempt made a receipt; finish it if so, else
        (``redo``) register the receipt anew."""
        rid = receipt.receipt_id
        self._receipt = receipt
        await self._device(self.printer.restore_receipt, receipt.kind, receipt.positions())
        op = receipt.last_op
        try:
            finding, found = (
                await self._device(self.printer.find_receipt, op) if op else ("failed", None)
            )
            if finding == "done" and found is not None:
                self.journal.append("recovery", rid, action="found-by-request-id", op=op)
                return await self._finish(receipt, dataclasses.replace(found, recovered=True))
            status = await self._device(self.printer.status, derive_op_id(rid, "reconcile"))
        except PrinterUnavailable as exc:
            return self._pending(receipt, exc)
        except FiscalError as exc:
            return self._pending(receipt, exc)
        advanced = (
            receipt.doc_before is not None and status.last_document_number > receipt.doc_before
        )
        if finding == "unknown" and advanced and op is not None:
            number = (receipt.doc_before or 0) + 1
            self.journal.append(
                "recovery", rid, action="found-by-document-number", op=op, document=number
            )
            result = ReceiptResult(
                kind=receipt.kind,
                document_number=number,
                shift_number=status.shift_number,
                recovered=True,
            )
            return await self._finish(receipt, result)
        # No receipt came of it. Cancel one left open on the device by the cut-off attempt.
        if status.receipt_open is not False:
            problem = await self._quietly(
                self.printer.cancel_receipt, derive_op_id(rid, f"reconcile-cancel-{op}")
            )
            if problem is None and status.receipt_open:
                self.journal.append("recovery", rid, action="cancelled-open-receipt", op=op)
            await self._device(self.printer.restore_receipt, receipt.kind, receipt.positions())
        self.journal.append("recovery", rid, action="no-receipt", op=op, finding=finding)
        receipt.last_op = None
        if not redo:
            return ReceiptOutcome("failed", "no-receipt-made", rid)
        return await self._register_anew(receipt)

    async def _register_anew(self, receipt: _Receipt) -> ReceiptOutcome:
        """Validate every unit again and close the receipt: after a crash the ФН's results
        may be gone or stale, and the receipt must not be lost."""
        rid = receipt.receipt_id
        if receipt.attempts >= MAX_ATTEMPTS:
            return self._pending(
                receipt, FiscalError(f"{receipt.attempts} attempts made", "too-many-attempts")
            )
        await self._quietly(self.printer.cancel_validation, derive_op_id(rid, "redo/cancel"))
        await self._quietly(self.printer.clear_validations, derive_op_id(rid, "redo/clear"))
        attempt = receipt.attempts + 1
        kept: list[_Unit] = []
        dropped: list[UnitOutcome] = []
        for unit in receipt.units:
            mark = unit.position.mark
            if unit.km is None or mark is None:
                dropped.append(self._dropped(receipt, unit, "code-lost"))
                continue
            op = derive_op_id(rid, f"{unit.unit_id}/recheck-{attempt}")
            try:
                check = await self._device(
                    self.printer.check_code,
                    op,
                    unit.km,
                    unit.ki,
                    mark.planned_status,
                    self.options.on_no_answer,
                )
            except PrinterUnavailable as exc:
                return self._pending(receipt, exc)
            except FiscalError as exc:
                dropped.append(self._dropped(receipt, unit, exc.reason))
                continue
            if not check.accepted:
                dropped.append(self._dropped(receipt, unit, check.reason))
                continue
            position = dataclasses.replace(
                unit.position, mark=dataclasses.replace(mark, validation=check.validation)
            )
            kept.append(dataclasses.replace(unit, position=position))
        receipt.units = kept
        if not kept:
            outcome = await self._drop(receipt, "nothing-left-to-register")
            return dataclasses.replace(outcome, dropped=tuple(dropped))
        await self._device(self.printer.restore_receipt, receipt.kind, receipt.positions())
        outcome = await self._attempt_close(receipt)
        return dataclasses.replace(outcome, dropped=tuple(dropped))

    def _dropped(self, receipt: _Receipt, unit: _Unit, reason: str) -> UnitOutcome:
        self.journal.append(
            "unit-dropped", receipt.receipt_id, unit=unit.unit_id, ki=unit.ki, reason=reason
        )
        return UnitOutcome(
            "refused",
            reason,
            _message(reason),
            unit.ki,
            unit.unit_id,
            receipt.receipt_id,
            source="session",
        )

    def _pending(self, receipt: _Receipt, exc: Exception) -> ReceiptOutcome:
        reason = exc.reason if isinstance(exc, FiscalError) else "printer-unavailable"
        self._receipt = receipt
        self._event(
            "fiscal-error",
            f"receipt {receipt.receipt_id} waits for the ККТ: {exc}",
            priority="warning",
            receipt=receipt.receipt_id,
            reason=reason,
        )
        return ReceiptOutcome("pending", reason, receipt.receipt_id)

    # -- recovery -------------------------------------------------------------------------------

    async def _recover(self) -> RecoveryReport:
        actions: list[dict[str, Any]] = []
        outcomes: list[ReceiptOutcome] = []
        grouped = self.journal.by_receipt()
        for records in grouped.values():
            for record in records:
                if record["event"] == "closed" and record.get("fn_number"):
                    self._fn_number = record["fn_number"]
        for rid, records in grouped.items():
            events = {r["event"] for r in records}
            if "cancelled" in events:
                continue
            if "closed" in events:
                done = await self._follow_up(rid, records)
                if done:
                    actions.append({"receipt": rid, "action": "follow-up", "done": done})
                continue
            if self._receipt is not None and self._receipt.receipt_id == rid:
                receipt = self._receipt
                if not receipt.paid and receipt.last_op is None:
                    continue  # being built right now in this process: not an interruption
            else:
                receipt = self._rebuild(rid, records)
            if "paid" not in events and "closing" not in events:
                await self._device(self.printer.restore_receipt, receipt.kind, [])
                outcome = await self._drop(receipt, "interrupted-before-payment")
                actions.append({"receipt": rid, "action": "cancelled", "units": receipt.kis})
            else:
                self.journal.append("recovery", rid, action="resume", attempts=receipt.attempts)
                outcome = await self._reconcile(receipt)
                actions.append(
                    {"receipt": rid, "action": f"resumed-{outcome.status}", "units": receipt.kis}
                )
            outcomes.append(outcome)
            self._event(
                "fiscal-recovery",
                f"receipt {rid}: {actions[-1]['action']}",
                receipt=rid,
                status=outcome.status,
            )
        return RecoveryReport(tuple(actions), tuple(outcomes))

    def _rebuild(self, rid: str, records: list[dict[str, Any]]) -> _Receipt:
        """The receipt as the journal knows it (codes from the side file)."""
        kind: ReceiptKind = "sell"
        codes = self.journal.codes(rid)
        receipt = _Receipt(rid, kind)
        for record in records:
            event = record["event"]
            if event == "open":
                receipt.kind = "return" if record.get("kind") == "return" else "sell"
            elif event == "unit-validating":
                receipt.offered += 1
            elif event == "unit-added":
                position = _position_from_record(record.get("position"), codes.get(record["unit"]))
                if position is not None:
                    receipt.units.append(
                        _Unit(record["unit"], record["ki"], codes.get(record["unit"]), position)
                    )
            elif event == "unit-dropped":
                receipt.units = [u for u in receipt.units if u.unit_id != record.get("unit")]
            elif event == "paid":
                receipt.paid = True
                receipt.payments = tuple(
                    Payment(int(p["amount_kopecks"]), str(p["type"]))
                    for p in record.get("payments", [])
                )
            elif event == "closing":
                receipt.attempts = int(record.get("attempt", receipt.attempts + 1))
                receipt.last_op = record.get("op")
                receipt.doc_before = record.get("doc_before")
            elif event == "close-failed":
                receipt.last_op = None
            elif event == "closed":
                receipt.fn_number = record.get("fn_number")
        return receipt

    async def _follow_up(self, rid: str, records: list[dict[str, Any]]) -> list[str]:
        """Finish what a closed receipt still lacks: the store, the Local Module."""
        events = [r["event"] for r in records]
        closed = next(r for r in records if r["event"] == "closed")
        kind: ReceiptKind = "return" if closed.get("kind") == "return" else "sell"
        kis = [p["ki"] for p in closed.get("positions", []) if p.get("ki")]
        reference = closed.get("reference") or f"kkt/{closed.get('document_number')}"
        done = []
        if "stored" not in events and self.store is not None:
            if self._record_in_store(rid, kind, kis, reference):
                done.append("store")
        wants_lm = self.lm_client is not None and self.options.lm_sell
        if wants_lm and "lm-reported" not in events and events.count("lm-failed") < 10:
            lm = await self._report_to_lm(rid, kind, kis)
            if lm is not None and lm.get("ok") is not False:
                done.append("local-module")
        if "closed" in events and self.journal.codes(rid):
            self.journal.drop_codes()
        return done

    # -- helpers --------------------------------------------------------------------------------

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _device(self, call: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args))

    async def _quietly(self, call: Callable[..., Any], *args: Any) -> str | None:
        """A clean-up call whose failure is noted, not raised; returns the problem."""
        try:
            await self._device(call, *args)
        except FiscalError as exc:
            if exc.device_code in (
                proto.ERROR_INVALID_STATE,
                proto.ERROR_DENIED_IN_CLOSED_RECEIPT,
            ):
                return None  # nothing to cancel
            return f"{exc.reason}: {exc.message}"
        return None

    def _event(self, kind: str, message: str, *, priority: str = "info", **fields: Any) -> None:
        if self.event_log is not None:
            self.event_log.event(kind, message, priority=priority, **fields)


def _message(reason: str) -> str:
    return MESSAGES_RU.get(reason, PRINTER_DOWN_RU)


def _closed_facts(result: ReceiptResult) -> dict[str, Any]:
    record = result.record()
    record["reference"] = result.reference
    return record


def _position_from_record(data: Any, km: str | None) -> Position | None:
    """A journaled position back as a :class:`Position` (``km`` from the codes file; an
    empty placeholder when it is lost, so the unit is still known)."""
    if not isinstance(data, dict) or not isinstance(data.get("ki"), str):
        return None
    tags = data.get("tags") or {}
    industry = IndustryTags(
        tag1262=str(tags.get("1262", "030")),
        tag1263=str(tags.get("1263", "26.03.2022")),
        tag1264=str(tags.get("1264", "477")),
        tag1265=str(tags.get("1265", "")),
    )
    return Position(
        name=str(data.get("name", "")),
        price_kopecks=int(data.get("price_kopecks", 0)),
        quantity=int(data.get("quantity", 1)),
        tax=str(data.get("tax", "none")),
        mark=MarkedItem(
            km=km or "",
            ki=data["ki"],
            planned_status=int(tags.get("2003", PLANNED_STATUS_PIECE_SOLD)),
            processing_mode=int(tags.get("2102", 0)),
            industry=industry,
        ),
    )
