"""The sale session: from allowed units to a fiscalised receipt, and back to a consistent state
after a crash.

::

    add(permit, code, price, name)             one scanned unit
      permit not "allow"  → refused; the ККТ never sees it
      ККТ: begin → poll → judge → accept        (FiscalPrinter.check_code)
        declined by the ФН / ОИСМ → refused with the reason, declined on the ККТ
        accepted → a position with tags 2003, 2102, 2106, 1260 {1262 … 1265}
    close(payments)                             payment taken: the receipt must now exist
      journal "closing" → ККТ sell / sellReturn → journal "closed"
      → the sold recorder (markd's store): every КИ sold (or, after a return, no longer sold)
      → the sold reporter (Local Module v2): /cis/sell (or /cis/return), when configured
    cancel()                                    drop the receipt (nothing was paid)
    recover()                                   after a restart, before anything else

Every step is written to the :class:`~markd.fiscal.journal.SessionJournal` (fsync'd) before it
is taken, and every device operation carries an idempotency id derived from the receipt's id
and the step, so :meth:`SaleSession.recover` can tell how far a receipt got and settle it;
:mod:`markd.fiscal.recovery` says how. The steps the session and its recovery share (a close
attempt, finishing a receipt, dropping one) are :mod:`markd.fiscal.steps`'.

A fault of the ККТ refuses the unit at hand (or fails the close, which can be retried) with a
reason; it never raises out of :meth:`~SaleSession.add` or :meth:`~SaleSession.close`. The
session decides on kinds of fault (:class:`~markd.fiscal.base.ReceiptAlreadyOpen` …), never on
a device's error numbers.

What the session is handed, it uses through protocols, so it imports neither the checks nor
the store: the permit check's decision on a unit (a :class:`Permit`, in practice the unit's
:class:`~markd.checks.verdict.Verdict`), a :class:`~markd.fiscal.steps.SoldRecorder` (the
store) and a :class:`~markd.fiscal.steps.SoldReporter` (the Local Module client).

The session is asyncio-friendly: device calls run on one worker thread of the session's own,
in order, while the event loop keeps serving scans. Every receipt operation holds one lock,
:attr:`SaleSession.lock`; the sale desk holds the same lock across its own sequences (a check
of the receipt, then an operation), so there is one lock for receipt operations, not two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from markd.errors import FiscalError
from markd.fiscal.base import FiscalPrinter, ReceiptAlreadyOpen, derive_op_id
from markd.fiscal.journal import DEFAULT_PATH as DEFAULT_JOURNAL
from markd.fiscal.journal import SessionJournal
from markd.fiscal.model import (
    PLANNED_STATUS_PIECE_RETURNED,
    MarkedItem,
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptKind,
)
from markd.fiscal.outcomes import (
    MESSAGES_RU,
    PRINTER_DOWN_RU,
    ReceiptOutcome,
    RecoveryReport,
    UnitOutcome,
    message,
)
from markd.fiscal.recovery import Recovery
from markd.fiscal.steps import (
    ReceiptInFlight,
    SaleOptions,
    SessionSteps,
    SoldRecorder,
    SoldReporter,
    UnitInFlight,
)
from markd.receipts import Payment

if TYPE_CHECKING:
    from markd.codes import MarkingCode
    from markd.systemd import EventLog


class Permit(Protocol):
    """The permit check's decision on one unit, as the session needs it: markd's
    :class:`~markd.checks.verdict.Verdict` is one."""

    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def message_ru(self) -> str: ...

    @property
    def ki(self) -> str | None:
        """The КИ the decision is on (None: not known)."""
        ...

    @property
    def tag1265(self) -> str:
        """Tag 1265 for the unit's position (the check's ids; empty without an answer)."""
        ...


class ReceiptLock:
    """The one lock of a till's receipt operations.

    An :class:`asyncio.Lock` that the task holding it may take again: the sale desk holds it
    across a sequence (look at the receipt, then add a unit) and the session's own methods,
    called inside, take it too. Any other task waits. Acquire and release it in the same task
    (``async with``; for a bounded wait, ``asyncio.timeout`` around :meth:`acquire`, which runs
    in the caller's task, unlike ``asyncio.wait_for`` on Python 3.11).
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self) -> None:
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            self._depth += 1
            return
        await self._lock.acquire()
        self._owner, self._depth = task, 1

    def release(self) -> None:
        if self._depth <= 0:
            raise RuntimeError("the receipt lock is not held")
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class SaleSession:
    """One till's sales through ``printer``.

    ``store``: a :class:`~markd.fiscal.steps.SoldRecorder` (markd's LMDB store) whose sold
    journal gets every КИ of a closed receipt (None: not recorded). ``lm_client``: a
    :class:`~markd.fiscal.steps.SoldReporter` (the Local Module client) told about
    ``/cis/sell`` and ``/cis/return`` (None: not reported). ``journal_path``: the session
    journal (fsync'd JSON lines; keep it in the state directory). ``event_log``: where
    ``fiscal-*`` events go (None: nowhere).

    The public methods are coroutines and serialise on :attr:`lock`: call them from one event
    loop. Call :meth:`recover` once at start, before the first :meth:`add`.
    """

    def __init__(
        self,
        printer: FiscalPrinter,
        store: SoldRecorder | None = None,
        lm_client: SoldReporter | None = None,
        journal_path: str | Path = DEFAULT_JOURNAL,
        event_log: EventLog | None = None,
        options: SaleOptions | None = None,
    ) -> None:
        self.steps = SessionSteps(
            printer,
            SessionJournal(journal_path),
            store,
            lm_client,
            event_log,
            options or SaleOptions(),
        )
        self.recovery = Recovery(self.steps)
        #: The one lock of receipt operations (see :class:`ReceiptLock`).
        self.lock = ReceiptLock()

    # -- what the session works with ------------------------------------------------------------

    @property
    def printer(self) -> FiscalPrinter:
        return self.steps.printer

    @property
    def journal(self) -> SessionJournal:
        return self.steps.journal

    @property
    def options(self) -> SaleOptions:
        return self.steps.options

    @property
    def event_log(self) -> EventLog | None:
        return self.steps.event_log

    @property
    def store(self) -> SoldRecorder | None:
        """Where sold КИ are recorded; a reload that reopens the store sets it (no operation
        runs meanwhile: hold :attr:`lock`)."""
        return self.steps.store

    @store.setter
    def store(self, store: SoldRecorder | None) -> None:
        self.steps.store = store

    @property
    def lm_client(self) -> SoldReporter | None:
        """Who is told about sold and returned КИ; settable like :attr:`store`."""
        return self.steps.lm_client

    @lm_client.setter
    def lm_client(self, client: SoldReporter | None) -> None:
        self.steps.lm_client = client

    # -- the receipt in flight ------------------------------------------------------------------

    @property
    def receipt_id(self) -> str | None:
        """The receipt being built (or waiting to be finished), None when there is none."""
        receipt = self.steps.receipt
        return None if receipt is None else receipt.receipt_id

    @property
    def units(self) -> tuple[str, ...]:
        """The КИ of the units in the receipt being built."""
        receipt = self.steps.receipt
        return () if receipt is None else tuple(receipt.kis)

    @property
    def receipt_kind(self) -> ReceiptKind | None:
        """``sell`` or ``return`` for the receipt in flight, None when there is none."""
        receipt = self.steps.receipt
        return None if receipt is None else receipt.kind

    @property
    def positions(self) -> tuple[Position, ...]:
        """The lines of the receipt in flight, in the order they were added."""
        receipt = self.steps.receipt
        return () if receipt is None else tuple(receipt.positions())

    @property
    def receipt_paid(self) -> bool:
        """The receipt in flight has its payment journaled: it can only be registered now
        (closed, or finished by :meth:`recover`), never dropped unasked."""
        receipt = self.steps.receipt
        return receipt is not None and receipt.paid

    @property
    def payments_locked(self) -> bool:
        """The receipt in flight is paid and the outcome of its last close attempt is unknown
        (the ККТ may hold it): :meth:`close` keeps the journaled payments until that is settled.
        Otherwise a paid receipt's payments may be replaced by the next :meth:`close`."""
        receipt = self.steps.receipt
        return receipt is not None and receipt.paid and receipt.last_op is not None

    # -- operations -----------------------------------------------------------------------------

    async def open(self, kind: ReceiptKind = "sell") -> str:
        """Start a receipt explicitly (``add`` opens a sale by itself); returns its id.
        Raises :class:`~markd.errors.FiscalError` when the ККТ cannot take one."""
        async with self.lock:
            receipt = await self._ensure_open(kind)
            return receipt.receipt_id

    async def add(
        self,
        permit: Permit | None,
        code: MarkingCode,
        price_kopecks: int,
        name: str,
        *,
        tax: str | None = None,
    ) -> UnitOutcome:
        """Validate ``code`` in the ФН and add it to the receipt, or refuse it.

        ``permit`` is the permit check's decision on this code (its verdict); only ``allow``
        reaches the ККТ, and its tag 1265 goes onto the position. On a return receipt
        (:meth:`open` with ``"return"``) it may be None. Never raises for the ККТ's faults:
        they refuse this unit with the reason.
        """
        async with self.lock:
            return await self._add(permit, code, price_kopecks, name, tax)

    async def close(self, payments: Sequence[Payment] | None = None) -> ReceiptOutcome:
        """Fiscalise the receipt (``payments``: default one payment of the total, type
        ``[fiscal] payment_type``), then record its КИ in the store and the Local Module.

        A receipt already paid (an earlier close failed) is closed with new ``payments`` when
        they are given and the earlier attempt is settled as "no receipt" (the ККТ refused it,
        or it never reached the device); they replace the journaled ones (``payments-replaced``).
        While an earlier attempt's outcome is unknown (:attr:`payments_locked`) the journaled
        payments stay, and the outcome says ``payments_ignored``."""
        async with self.lock:
            steps = self.steps
            receipt = steps.receipt
            if receipt is None or not receipt.units:
                if receipt is not None:
                    await steps.drop(receipt, "empty")
                return ReceiptOutcome("empty", "no-units")
            given = tuple(payments) if payments else ()
            if receipt.last_op is not None:
                # An earlier attempt's outcome is unknown: the ККТ may have registered the
                # receipt with the journaled payments, so they cannot change now. Find out
                # before trying again, and say so when other payments were given.
                ignored = bool(given) and given != receipt.payments
                outcome = await self.recovery.reconcile(receipt)
                return dataclasses.replace(outcome, payments_ignored=ignored)
            total = receipt.total_kopecks
            if not receipt.paid:
                chosen = given or (Payment(total, self.options.payment_type),)
                # From here the receipt must come to exist: recovery registers it, never drops.
                steps.journal.append(
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
                steps.journal.append(
                    "payments-replaced",
                    receipt.receipt_id,
                    total_kopecks=total,
                    payments=[p.record() for p in given],
                    replaced=[p.record() for p in receipt.payments],
                )
                receipt.payments = given
                receipt.paid_total = receipt.settled_total = total
            if receipt.codes_stale:
                # The ККТ refused the last sell and its driver cleared the accepted codes:
                # validate every code again before the one new sell (never the same
                # positions blindly: a device answers 420 / 422).
                return await self.recovery.register_again(receipt)
            outcome = await steps.attempt_close(receipt)
            if outcome is None:
                # The ККТ's answer was lost: find out what became of the attempt.
                outcome = await self.recovery.reconcile(receipt)
            return outcome

    async def cancel(self, reason: str = "cancelled") -> ReceiptOutcome:
        """Drop the receipt. If an earlier close attempt's outcome is unknown, the ККТ is asked
        first: a receipt that does exist is finished and returned as ``closed`` instead."""
        async with self.lock:
            receipt = self.steps.receipt
            if receipt is None:
                return ReceiptOutcome("empty", "no-receipt")
            if receipt.last_op is not None:
                outcome = await self.recovery.reconcile(receipt, redo=False)
                if outcome.status in ("closed", "pending"):
                    return outcome
            return await self.steps.drop(receipt, reason)

    async def recover(self) -> RecoveryReport:
        """Bring the journal and the ККТ back in step after a restart
        (:meth:`markd.fiscal.recovery.Recovery.recover`). Safe to call at any time; does
        nothing when nothing is unfinished."""
        async with self.lock:
            return await self.recovery.recover()

    async def printer_status(self) -> PrinterStatus:
        """The ККТ's status (raises :class:`~markd.errors.FiscalError` when unreachable)."""
        return await self.steps.device(self.printer.status)

    def close_session(self) -> None:
        """Stop the worker thread (the printer itself belongs to the caller)."""
        self.steps.shutdown()

    # -- adding units ---------------------------------------------------------------------------

    async def _add(
        self,
        permit: Permit | None,
        code: MarkingCode,
        price_kopecks: int,
        name: str,
        tax: str | None,
    ) -> UnitOutcome:
        steps = self.steps
        receipt = steps.receipt
        kind: ReceiptKind = receipt.kind if receipt is not None else "sell"
        if permit is not None and not permit.allowed:
            return self._refuse(code.ki, permit.reason, permit.message_ru, source="verdict")
        if permit is None and kind == "sell":
            return self._refuse(code.ki, "no-verdict", MESSAGES_RU["no-verdict"], source="verdict")
        if permit is not None and permit.ki not in (None, code.ki):
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
            return self._refuse(code.ki, exc.reason, message(exc.reason), "printer", error=exc)

        # Every unit offered gets its own id, refused ones included: the id keys the device
        # operations (idempotency), so two units must never share one.
        receipt.offered += 1
        unit_id = f"u{receipt.offered}"
        planned = (
            self.options.sale_status if receipt.kind == "sell" else PLANNED_STATUS_PIECE_RETURNED
        )
        op = derive_op_id(receipt.receipt_id, f"{unit_id}/check")
        steps.journal.append("unit-validating", receipt.receipt_id, unit=unit_id, ki=code.ki)
        try:
            check = await steps.device(
                self.printer.check_code, op, code.km, code.ki, planned, self.options.on_no_answer
            )
        except FiscalError as exc:
            await steps.quietly(self.printer.cancel_validation, derive_op_id(op, "abandon"))
            return self._refuse(
                code.ki, exc.reason, message(exc.reason), "printer", receipt, unit_id, error=exc
            )
        if not check.accepted:
            return self._refuse(
                code.ki,
                check.reason,
                message(check.reason),
                "fn",
                receipt,
                unit_id,
                validation=check.validation,
            )
        tag1265 = permit.tag1265 if permit is not None else ""
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
        steps.journal.put_code(receipt.receipt_id, unit_id, code.km)
        steps.journal.append(
            "unit-added",
            receipt.receipt_id,
            unit=unit_id,
            ki=code.ki,
            check=check.reason,
            fn=check.validation.record(),
            position=position.record(),
        )
        receipt.units.append(UnitInFlight(unit_id, code.ki, code.km, position))
        steps.event(
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

    async def _ensure_open(self, kind: ReceiptKind) -> ReceiptInFlight:
        steps = self.steps
        if steps.receipt is not None:
            if steps.receipt.kind != kind:
                raise FiscalError(
                    f"a {steps.receipt.kind} receipt is open, not a {kind} one", "receipt-open"
                )
            return steps.receipt
        receipt = ReceiptInFlight(str(uuid.uuid4()), kind)
        if self.options.auto_shift:
            shift = await steps.device(
                self.printer.ensure_shift, derive_op_id(receipt.receipt_id, "shift")
            )
            if shift is not None:
                steps.journal.append(
                    "shift-opened", None, shift=shift.number, document=shift.document_number
                )
        rid = receipt.receipt_id
        # Results the ФН still holds from an earlier, abandoned receipt must not pile up (the
        # ФН takes a limited number) nor be mistaken for this receipt's.
        await steps.quietly(self.printer.clear_validations, derive_op_id(rid, "clear"))
        try:
            await steps.device(self.printer.open_receipt, derive_op_id(rid, "open"), kind)
        except ReceiptAlreadyOpen:
            # markd is the ККТ's only client and has no receipt in flight: the open one is a
            # leftover of a crash whose clean-up did not reach the device. Cancel it.
            await steps.device(self.printer.cancel_receipt, derive_op_id(rid, "stale"))
            steps.journal.append("recovery", None, action="cancelled-stale-open-receipt")
            await steps.device(self.printer.open_receipt, derive_op_id(rid, "open-2"), kind)
        steps.journal.append("open", rid, kind=kind)
        steps.receipt = receipt
        return receipt

    def _refuse(
        self,
        ki: str | None,
        reason: str,
        message_ru: str,
        source: str,
        receipt: ReceiptInFlight | None = None,
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
        if source != "verdict" or self.steps.receipt is not None:
            self.journal.append("unit-refused", receipt.receipt_id if receipt else None, **facts)
        priority = "warning" if source == "printer" else "notice"
        self.steps.event(
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
            message_ru,
            ki,
            unit_id,
            None if receipt is None else receipt.receipt_id,
            validation,
            source=source,
        )


__all__ = [
    "MESSAGES_RU",
    "PRINTER_DOWN_RU",
    "Permit",
    "ReceiptLock",
    "ReceiptOutcome",
    "RecoveryReport",
    "SaleOptions",
    "SaleSession",
    "SoldRecorder",
    "SoldReporter",
    "UnitOutcome",
]
