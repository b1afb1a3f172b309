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
  exactly once. Each such recovery attempt is journaled (``recovery-attempt N``) before the
  device is touched and names its operations after N, so a later attempt never reuses an id
  the ККТ already answered (it would answer from its request table instead of running it). A
  fault of the device while the units are checked again leaves the receipt ``pending``; a unit
  the ФН or the ОИСМ now refuses is dropped and the payments are fitted to the smaller total
  (``payments-adjusted``, with the amount to refund);
* ``closed``: whatever of the store and the Local Module is still missing is done, for the КИ
  no later receipt has superseded (a sale's follow-up is not replayed over a later return).

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
from markd.fiscal.base import FiscalPrinter, derive_op_id, new_op_id
from markd.fiscal.journal import DEFAULT_PATH as DEFAULT_JOURNAL
from markd.fiscal.journal import SessionJournal
from markd.fiscal.model import (
    PLANNED_STATUS_PIECE_RETURNED,
    PLANNED_STATUS_PIECE_SOLD,
    IndustryTags,
    MarkedItem,
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptKind,
    ReceiptResult,
)
from markd.receipts import Payment

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
#: Failed Local Module reports of one receipt after which recovery stops retrying it.
MAX_LM_RETRIES = 10
#: The ККТ's answers on a code checked again during recovery that are no verdict on the code:
#: the device did not finish in time. The receipt waits (``pending``); the unit is not dropped.
TRANSIENT_CHECK_REASONS = frozenset({"fn-validation-timeout"})

UnitStatus = Literal["added", "refused"]
ReceiptStatus = Literal["closed", "failed", "pending", "cancelled", "empty"]


@dataclass(frozen=True)
class SaleOptions:
    """What ``[fiscal]`` says about sales (see :func:`markd.service.wiring.sale_options`)."""

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
    #: The payments the receipt carries (closed with, or journaled for the next attempt).
    payments: tuple[Payment, ...] = ()
    #: :meth:`SaleSession.close` was given other payments and did not use them: an earlier
    #: attempt's outcome is unknown, so the journaled payments stay until it is settled.
    payments_ignored: bool = False
    #: Units were dropped after the payment: ``total_before_kopecks`` (what was paid for),
    #: ``total_kopecks`` (what is registered), ``refund_kopecks`` (owed to the customer),
    #: ``dropped`` (their КИ). None when nothing was dropped.
    adjustment: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "receipt_id": self.receipt_id,
            "receipt": None if self.receipt is None else self.receipt.record(),
            "store_ok": self.store_ok,
            "lm": self.lm,
            "dropped": [u.record() for u in self.dropped],
            "payments": [p.record() for p in self.payments],
            "payments_ignored": self.payments_ignored,
            "adjustment": self.adjustment,
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
    #: Recovery attempts journaled (``recovery-attempt``): each names its device operations.
    recoveries: int = 0
    #: The total the customer paid for (``paid``, ``payments-replaced``).
    paid_total: int = 0
    #: The total the journaled payments were last fitted to (also ``payments-adjusted``).
    settled_total: int = 0
    #: Units dropped after the payment (registered anew without them).
    dropped: list[UnitOutcome] = field(default_factory=list)

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

    @property
    def payments_locked(self) -> bool:
        """The receipt in flight is paid and the outcome of its last close attempt is unknown
        (the ККТ may hold it): :meth:`close` keeps the journaled payments until that is settled.
        Otherwise a paid receipt's payments may be replaced by the next :meth:`close`."""
        return self.receipt_paid and self._receipt is not None and self._receipt.last_op is not None

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
        ``[fiscal] payment_type``), then record its КИ in the store and the Local Module.

        A receipt already paid (an earlier close failed) is closed with new ``payments`` when
        they are given and the earlier attempt is settled as "no receipt" (the ККТ refused it,
        or it never reached the device); they replace the journaled ones (``payments-replaced``).
        While an earlier attempt's outcome is unknown (:attr:`payments_locked`) the journaled
        payments stay, and the outcome says ``payments_ignored``."""
        async with self._locked():
            receipt = self._receipt
            if receipt is None or not receipt.units:
                if receipt is not None:
                    await self._drop(receipt, "empty")
                return ReceiptOutcome("empty", "no-units")
            given = tuple(payments) if payments else ()
            if receipt.last_op is not None:
                # An earlier attempt's outcome is unknown: the ККТ may have registered the
                # receipt with the journaled payments, so they cannot change now. Find out
                # before trying again, and say so when other payments were given.
                ignored = bool(given) and given != receipt.payments
                outcome = await self._reconcile(receipt)
                return dataclasses.replace(outcome, payments_ignored=ignored)
            total = sum(u.position.amount_kopecks for u in receipt.units)
            if not receipt.paid:
                chosen = given or (Payment(total, self.options.payment_type),)
                # From here the receipt must come to exist: recovery registers it, never drops.
                self.journal.append(
                    "paid",
                    receipt.receipt_id,
                    total_kopecks=total,
                    payments=[p.record() for p in chosen],
                )
                receipt.payments = chosen
                receipt.paid = True
                receipt.paid_total = receipt.settled_total = total
            elif given and given != receipt.payments:
                # The last attempt is settled and made no receipt (the ККТ refused it, e.g.
                # a card payment above the total, error 52; or it never reached the device):
                # these payments are on no fiscal document, so the corrected ones replace them.
                self.journal.append(
                    "payments-replaced",
                    receipt.receipt_id,
                    total_kopecks=total,
                    payments=[p.record() for p in given],
                    replaced=[p.record() for p in receipt.payments],
                )
                receipt.payments = given
                receipt.paid_total = receipt.settled_total = total
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

    async def _attempt_close(
        self, receipt: _Receipt, *, recovering: bool = False
    ) -> ReceiptOutcome:
        """Close the receipt once. ``recovering``: called by recovery, where a ККТ that cannot
        be reached before the close leaves the receipt ``pending`` (retried by the next
        recovery), not ``failed`` (which nobody retries)."""
        rid = receipt.receipt_id
        attempt = receipt.attempts + 1
        try:
            # Fresh ids: these steps are not journaled, so ``attempt`` does not advance when
            # they fail, and an id derived from it would be answered from the ККТ's request
            # table next time (e.g. a shift opening refused for paper, refused again forever).
            # Opening the shift is safe to repeat: ensure_shift reads the shift state first.
            if self.options.auto_shift:
                await self._device(self.printer.ensure_shift, new_op_id())
            status = await self._device(self.printer.status, new_op_id())
        except FiscalError as exc:
            if recovering and isinstance(exc, PrinterUnavailable | OutcomeUnknown | FiscalTimeout):
                return self._pending(receipt, exc)
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
        adjustment = _adjustment(receipt)
        self._fn_number = result.fn_number or self._fn_number
        self.journal.append("closed", rid, **_closed_facts(result))
        self._receipt = None
        await self._device(self.printer.forget_receipt)
        self.journal.drop_codes()
        store_ok = self._record_in_store(rid, receipt.kind, receipt.kis, result.reference)
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
            refund_kopecks=None if adjustment is None else adjustment["refund_kopecks"],
        )
        # Receipts whose store / Local Module update is still to be done go on into the new
        # journal: recovery reads only that one.
        self.journal.rotate_if_large(keep=self._to_carry)
        reason = "recovered" if result.recovered else "fiscalised"
        return ReceiptOutcome(
            "closed",
            reason,
            rid,
            result,
            store_ok,
            lm,
            dropped=tuple(receipt.dropped),
            payments=result.payments,
            adjustment=adjustment,
        )

    def _record_in_store(
        self,
        rid: str,
        kind: ReceiptKind,
        kis: list[str],
        reference: str,
        superseded: list[str] | None = None,
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
        facts: dict[str, Any] = {"kis": kis, "reference": reference}
        if superseded:
            facts["superseded"] = superseded
        self.journal.append("stored", rid, **facts)
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
        # No receipt came of it. From here the device is changed (an open receipt cancelled,
        # codes checked again): journal a new recovery attempt first and name every operation
        # after it. An id used by an earlier attempt — in this process or one that was killed
        # or lost the ККТ half-way — would be answered from the ККТ's request table (ATOL's
        # web server: 409) instead of being run, and the unit would be lost.
        receipt.recoveries += 1
        redo_id = f"redo-{receipt.recoveries}"
        self.journal.append("recovery-attempt", rid, attempt=receipt.recoveries, op=op)
        if status.receipt_open is not False:
            problem = await self._quietly(
                self.printer.cancel_receipt, derive_op_id(rid, f"{redo_id}/cancel-receipt")
            )
            if problem is None and status.receipt_open:
                self.journal.append("recovery", rid, action="cancelled-open-receipt", op=op)
            await self._device(self.printer.restore_receipt, receipt.kind, receipt.positions())
        self.journal.append("recovery", rid, action="no-receipt", op=op, finding=finding)
        receipt.last_op = None
        if not redo:
            return ReceiptOutcome("failed", "no-receipt-made", rid)
        return await self._register_anew(receipt, redo_id)

    async def _register_anew(self, receipt: _Receipt, redo_id: str) -> ReceiptOutcome:
        """Validate every unit again and close the receipt: after a crash the ФН's results
        may be gone or stale, and the receipt must not be lost. ``redo_id`` names this
        recovery attempt's device operations (see :meth:`_reconcile`).

        A unit is dropped only for a verdict on it — the ФН or the ОИСМ refuses it now, or its
        code is lost — and then the payments are fitted to the smaller total. A fault of the
        device (unreachable, no answer in time, an error of the ФН) says nothing about the
        unit: the receipt stays ``pending`` with every unit, and the next recovery tries again.
        """
        rid = receipt.receipt_id
        if receipt.attempts >= MAX_ATTEMPTS:
            return self._pending(
                receipt, FiscalError(f"{receipt.attempts} attempts made", "too-many-attempts")
            )
        await self._quietly(self.printer.cancel_validation, derive_op_id(rid, f"{redo_id}/cancel"))
        await self._quietly(self.printer.clear_validations, derive_op_id(rid, f"{redo_id}/clear"))
        checked: dict[str, _Unit] = {}
        dropped: set[str] = set()
        for unit in receipt.units:
            mark = unit.position.mark
            if unit.km is None or mark is None:
                receipt.dropped.append(self._dropped(receipt, unit, "code-lost"))
                dropped.add(unit.unit_id)
                continue
            op = derive_op_id(rid, f"{unit.unit_id}/{redo_id}/check")
            problem: FiscalError | None = None
            try:
                check = await self._device(
                    self.printer.check_code,
                    op,
                    unit.km,
                    unit.ki,
                    mark.planned_status,
                    self.options.on_no_answer,
                )
            except FiscalError as exc:
                problem = exc
            else:
                if not check.accepted and check.reason in TRANSIENT_CHECK_REASONS:
                    problem = FiscalTimeout(
                        f"the ККТ did not finish checking {unit.ki} in time", check.reason
                    )
            if problem is not None:
                # Keep the units dropped so far out (their refusal is journaled), every other
                # one in: nothing is known against them.
                receipt.units = [u for u in receipt.units if u.unit_id not in dropped]
                return self._pending(receipt, problem)
            if not check.accepted:
                receipt.dropped.append(self._dropped(receipt, unit, check.reason))
                dropped.add(unit.unit_id)
                continue
            position = dataclasses.replace(
                unit.position, mark=dataclasses.replace(mark, validation=check.validation)
            )
            checked[unit.unit_id] = dataclasses.replace(unit, position=position)
        receipt.units = [checked[u.unit_id] for u in receipt.units if u.unit_id in checked]
        if not receipt.units:
            # Every unit was refused: nothing can be registered; the whole payment is owed
            # back (the event and the outcome say how much).
            adjustment = self._adjust_payments(receipt)
            outcome = await self._drop(receipt, "nothing-left-to-register")
            return dataclasses.replace(
                outcome,
                dropped=tuple(receipt.dropped),
                payments=receipt.payments,
                adjustment=adjustment,
            )
        self._adjust_payments(receipt)
        await self._device(self.printer.restore_receipt, receipt.kind, receipt.positions())
        outcome = await self._attempt_close(receipt, recovering=True)
        if outcome.status == "closed":
            return outcome  # _finish reports the dropped units and the refund
        return dataclasses.replace(
            outcome,
            dropped=tuple(receipt.dropped),
            payments=receipt.payments,
            adjustment=_adjustment(receipt),
        )

    def _adjust_payments(self, receipt: _Receipt) -> dict[str, Any] | None:
        """After units were dropped from a paid receipt: fit the payments to the new total —
        an electronic payment may not exceed it (the ККТ refuses that, error 52, for good),
        cash stays as tendered when it covers the total (the ККТ gives the change) — journal
        the new payments (``payments-adjusted``) and tell the operator what to refund."""
        rid = receipt.receipt_id
        total = sum(u.position.amount_kopecks for u in receipt.units)
        if total == receipt.settled_total:
            return _adjustment(receipt)  # fitted already (by an earlier attempt)
        before = receipt.payments
        fitted = _fit_payments(before, total) if receipt.units else ()
        adjustment = _owed(receipt, total)
        self.journal.append(
            "payments-adjusted",
            rid,
            total_before_kopecks=receipt.settled_total,
            total_kopecks=total,
            payments_before=[p.record() for p in before],
            payments=[p.record() for p in fitted],
            refund_kopecks=adjustment["refund_kopecks"],
            dropped=adjustment["dropped"],
        )
        if fitted:
            receipt.payments = fitted
        receipt.settled_total = total
        refund = adjustment["refund_kopecks"]
        self._event(
            "fiscal-recovery",
            f"receipt {rid}: {len(adjustment['dropped'])} unit(s) could not be registered "
            f"({', '.join(adjustment['dropped'])}); total {receipt.paid_total / 100:.2f} → "
            f"{total / 100:.2f} RUB: refund {refund / 100:.2f} RUB to the customer"
            + ("" if receipt.units else " (the receipt is cancelled)"),
            priority="warning",
            receipt=rid,
            status="adjusted",
            action="payments-adjusted",
            dropped=",".join(adjustment["dropped"]),
            total_before_kopecks=receipt.paid_total,
            total_kopecks=total,
            refund_kopecks=refund,
            payments=",".join(f"{p.type}:{p.amount_kopecks}" for p in receipt.payments),
        )
        return adjustment

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
        # A copy of the codes file left half-written by a kill never became the file: it is
        # no one's working memory, only full codes on disk.
        self.journal.discard_partial_codes()
        records = self.journal.records()
        grouped = _group(records)
        for record in records:
            if record["event"] == "closed" and record.get("fn_number"):
                self._fn_number = record["fn_number"]
        last_closed = _last_closed(records)
        for rid, receipt_records in grouped.items():
            events = {r["event"] for r in receipt_records}
            if "cancelled" in events:
                continue
            if "closed" in events:
                done = await self._follow_up(rid, receipt_records, last_closed)
                if done:
                    actions.append({"receipt": rid, "action": "follow-up", "done": done})
                continue
            if self._receipt is not None and self._receipt.receipt_id == rid:
                receipt = self._receipt
                if not receipt.paid and receipt.last_op is None:
                    continue  # being built right now in this process: not an interruption
            else:
                receipt = self._rebuild(rid, receipt_records)
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
        if self._receipt is None:
            # No receipt is in flight: the full codes kept for one are needed by no one (a kill
            # between journaling "closed" / "cancelled" and deleting them leaves them behind).
            self.journal.drop_codes()
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
                reason = str(record.get("reason") or "dropped")
                receipt.dropped.append(
                    UnitOutcome(
                        "refused",
                        reason,
                        _message(reason),
                        record.get("ki"),
                        record.get("unit"),
                        rid,
                        source="session",
                    )
                )
            elif event in ("paid", "payments-replaced", "payments-adjusted"):
                receipt.paid = True
                receipt.payments = (
                    tuple(
                        Payment(int(p["amount_kopecks"]), str(p["type"]))
                        for p in record.get("payments", [])
                    )
                    or receipt.payments
                )
                total = int(record.get("total_kopecks") or 0)
                receipt.settled_total = total
                if event != "payments-adjusted":
                    receipt.paid_total = total
            elif event == "recovery-attempt":
                receipt.recoveries = max(receipt.recoveries, int(record.get("attempt", 0)))
            elif event == "closing":
                receipt.attempts = int(record.get("attempt", receipt.attempts + 1))
                receipt.last_op = record.get("op")
                receipt.doc_before = record.get("doc_before")
            elif event == "close-failed":
                receipt.last_op = None
            elif event == "closed":
                receipt.fn_number = record.get("fn_number")
        return receipt

    async def _follow_up(
        self, rid: str, records: list[dict[str, Any]], last_closed: dict[str, int]
    ) -> list[str]:
        """Finish what a closed receipt still lacks: the store, the Local Module — for its КИ
        that no later receipt superseded. The journal's order is the truth: a unit sold, then
        returned, is not sold again because the sale's store or Local Module update failed
        and the return's did not (``last_closed``: each КИ's latest closing record)."""
        events = [r["event"] for r in records]
        closed_at, closed = next((r["_index"], r) for r in records if r["event"] == "closed")
        kind: ReceiptKind = "return" if closed.get("kind") == "return" else "sell"
        kis = [p["ki"] for p in closed.get("positions", []) if p.get("ki")]
        superseded = [ki for ki in kis if last_closed.get(ki, closed_at) > closed_at]
        live = [ki for ki in kis if ki not in superseded]
        reference = closed.get("reference") or f"kkt/{closed.get('document_number')}"
        done = []
        if "stored" not in events and self.store is not None:
            if self._record_in_store(rid, kind, live, reference, superseded):
                done.append("store")
        if self._lm_follow_up_due(events):
            if not live:
                # Every КИ was on a later receipt, which told the module itself.
                self.journal.append(
                    "lm-reported",
                    rid,
                    action=kind,
                    accepted=[],
                    rejected=[],
                    skipped=True,
                    superseded=superseded,
                )
                done.append("local-module")
            else:
                lm = await self._report_to_lm(rid, kind, live)
                if lm is not None and lm.get("ok") is not False:
                    done.append("local-module")
        if "closed" in events and self.journal.codes(rid):
            self.journal.drop_codes()
        return done

    def _lm_follow_up_due(self, events: Sequence[str]) -> bool:
        wants_lm = self.lm_client is not None and self.options.lm_sell
        return (
            wants_lm and "lm-reported" not in events and events.count("lm-failed") < MAX_LM_RETRIES
        )

    def _to_carry(self, records: list[dict[str, Any]]) -> set[str]:
        """The receipts a rotated journal must carry on into the new one: those recovery still
        has work for (a store or Local Module update due, or not finished at all — none is in
        flight when the journal rotates), and the later receipts holding any of their КИ (they
        tell recovery that the КИ was superseded; see :meth:`_follow_up`)."""
        carry: set[str] = set()
        for rid, receipt_records in _group(records).items():
            events = [r["event"] for r in receipt_records]
            if "cancelled" in events:
                continue
            if "closed" not in events:
                carry.add(rid)
            elif ("stored" not in events and self.store is not None) or self._lm_follow_up_due(
                events
            ):
                carry.add(rid)
        if not carry:
            return carry
        kis: set[str] = set()
        for record in records:
            if record["event"] != "closed":
                continue
            receipt_kis = {p.get("ki") for p in record.get("positions", []) if p.get("ki")}
            if record.get("receipt") in carry:
                kis |= receipt_kis
            elif kis & receipt_kis:
                carry.add(record["receipt"])
        return carry

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


def _fit_payments(payments: Sequence[Payment], total: int) -> tuple[Payment, ...]:
    """``payments`` fitted to a smaller ``total``: electronic payments are cut (the last ones
    first) until they do not exceed it — the ККТ refuses a non-cash sum above the total — and
    cash is kept as tendered, the ККТ giving the change. They still cover ``total``: they did
    cover the larger one, and a cut only brings the electronic sum down to ``total``."""
    excess = max(sum(p.amount_kopecks for p in payments if p.type != "cash") - total, 0)
    fitted: list[Payment] = []
    for payment in reversed(payments):
        if excess and payment.type != "cash":
            cut = min(excess, payment.amount_kopecks)
            excess -= cut
            payment = Payment(payment.amount_kopecks - cut, payment.type)
            if payment.amount_kopecks == 0:
                continue
        fitted.append(payment)
    fitted.reverse()
    if not fitted and payments:
        fitted = [Payment(0, payments[0].type)]  # a total of 0: one empty payment
    return tuple(fitted)


def _adjustment(receipt: _Receipt) -> dict[str, Any] | None:
    """What the customer is owed after units were dropped from the paid receipt (None when
    none was): see :func:`_owed`."""
    return _owed(receipt) if receipt.dropped else None


def _owed(receipt: _Receipt, total: int | None = None) -> dict[str, Any]:
    """The КИ dropped from the paid receipt, the total paid for, the total registered
    (``total``, default: of the units left) and the difference, owed to the customer."""
    if total is None:
        total = sum(u.position.amount_kopecks for u in receipt.units)
    return {
        "dropped": [u.ki for u in receipt.dropped if u.ki],
        "total_before_kopecks": receipt.paid_total,
        "total_kopecks": total,
        "refund_kopecks": max(receipt.paid_total - total, 0),
    }


def _group(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by receipt id, receipts in the order they were opened; each record gets its
    place in the journal as ``_index``."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for index, record in enumerate(records):
        receipt = record.get("receipt")
        if isinstance(receipt, str):
            grouped.setdefault(receipt, []).append({**record, "_index": index})
    return grouped


def _last_closed(records: list[dict[str, Any]]) -> dict[str, int]:
    """Each КИ's latest ``closed`` record (its place in the journal)."""
    latest: dict[str, int] = {}
    for index, record in enumerate(records):
        if record["event"] == "closed":
            for position in record.get("positions", []):
                if position.get("ki"):
                    latest[position["ki"]] = index
    return latest


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
