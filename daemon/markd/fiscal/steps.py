"""What the sale session and its crash recovery share: the session's options, the receipt in
flight, and the steps both take on it — a device call on the session's worker thread, a close
attempt, finishing a fiscalised receipt (the store, the Local Module), dropping a receipt,
leaving one pending for the next recovery.

:class:`SessionSteps` is used by :class:`~markd.fiscal.session.SaleSession` (which builds
receipts) and :class:`~markd.fiscal.recovery.Recovery` (which settles them after a crash or a
lost answer); nothing outside the fiscal package uses it directly.

The session writes to collaborators it is handed, never ones it knows by name: a
:class:`SoldRecorder` (markd's store) for the КИ of each closed receipt, and a
:class:`SoldReporter` (the Local Module client, API v2) told about sales and returns.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from markd.errors import (
    FiscalError,
    FiscalTimeout,
    OutcomeUnknown,
    PrinterUnavailable,
    StoreError,
)
from markd.fiscal.base import (
    FiscalPrinter,
    NoReceiptOpen,
    NoValidationRunning,
    derive_op_id,
    new_op_id,
)
from markd.fiscal.journal import SessionJournal
from markd.fiscal.model import (
    PLANNED_STATUS_PIECE_SOLD,
    IndustryTags,
    Position,
    ReceiptKind,
    ReceiptResult,
)
from markd.fiscal.outcomes import ReceiptOutcome, UnitOutcome
from markd.fiscal.receipt_index import NEEDS_TECHNICIAN, IndexUnavailable
from markd.receipts import Payment
from markd.systemd import passes_events_on

if TYPE_CHECKING:
    from markd.systemd import EventLog

_T = TypeVar("_T")

#: Failed Local Module reports of one receipt after which recovery stops retrying it.
MAX_LM_RETRIES = 10
#: Why a receipt may wait that recovery cannot settle by itself: a person must look at the ККТ
#: (journaled ``needs-technician``; the receipt index shows ``unknown-needs-technician``).
TECHNICIAN_REASONS = frozenset({"too-many-attempts", "queue-blocked"})


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


# --------------------------------------------------------------------------------------------
# Collaborators handed to the session


class SoldRecorder(Protocol):
    """Where the КИ of a closed receipt are recorded as sold here, or as returned: markd's
    store (:class:`markd.store.Store`). Raises :class:`~markd.errors.StoreError` when it
    cannot record."""

    def mark_sold(self, code: str, receipt: str) -> None: ...

    def mark_returned(self, code: str) -> None: ...


class ReportFailure(Protocol):
    """Why a :class:`SoldReporter` could not report (a kind and a technician's text)."""

    @property
    def kind(self) -> str: ...

    @property
    def detail(self) -> str: ...


class SoldReport(Protocol):
    """A :class:`SoldReporter`'s answer: the КИ it took and refused, or why it failed;
    ``skipped`` when it keeps no record of sales (Local Module API v1)."""

    @property
    def accepted(self) -> Sequence[str]: ...

    @property
    def rejected(self) -> Sequence[str]: ...

    @property
    def failure(self) -> ReportFailure | None: ...

    @property
    def skipped(self) -> bool: ...

    @property
    def ok(self) -> bool: ...


class SoldReporter(Protocol):
    """Told about the КИ of each closed receipt: the Local Module client
    (:class:`markd.checks.local_module.LocalModuleClient`, ``/cis/sell`` and ``/cis/return``),
    the same one the check chain asks, when the daemon shares it. The session never closes
    it: whoever built it does."""

    async def sell(self, kis: list[str], deadline: float) -> SoldReport: ...

    async def return_(self, kis: list[str], deadline: float) -> SoldReport: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# The receipt in flight


@dataclass
class UnitInFlight:
    """One unit of the receipt in flight. ``km`` is its full code (the ККТ needs it again if
    the receipt is registered anew), kept out of ``repr``; None when the codes file lost it."""

    unit_id: str
    ki: str
    km: str | None = field(repr=False)
    position: Position


@dataclass
class ReceiptInFlight:
    """The receipt being built, or paid and waiting to be registered, as the session holds it
    and as recovery rebuilds it from the journal."""

    receipt_id: str
    kind: ReceiptKind
    units: list[UnitInFlight] = field(default_factory=list)
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
    #: The ККТ refused the last ``sell``: its driver cancelled the receipt and cleared the
    #: ФН's accepted codes, so they are validated again before the next one.
    codes_stale: bool = False

    @property
    def kis(self) -> list[str]:
        return [u.ki for u in self.units]

    def positions(self) -> list[Position]:
        return [u.position for u in self.units]

    @property
    def total_kopecks(self) -> int:
        return sum(u.position.amount_kopecks for u in self.units)


def adjustment(receipt: ReceiptInFlight) -> dict[str, Any] | None:
    """What the customer is owed after units were dropped from the paid receipt (None when
    none was): see :func:`owed`."""
    return owed(receipt) if receipt.dropped else None


def owed(receipt: ReceiptInFlight, total: int | None = None) -> dict[str, Any]:
    """The КИ dropped from the paid receipt, the total paid for, the total registered
    (``total``, default: of the units left) and the difference, owed to the customer."""
    if total is None:
        total = receipt.total_kopecks
    return {
        "dropped": [u.ki for u in receipt.dropped if u.ki],
        "total_before_kopecks": receipt.paid_total,
        "total_kopecks": total,
        "refund_kopecks": max(receipt.paid_total - total, 0),
    }


#: Journal events that only keep what the API answered (the idempotency keys of a close and
#: its answer): they say nothing of how far a receipt got with the ККТ.
ANSWER_EVENTS = frozenset({"close-requested", "close-answered"})


def fragment(events: Collection[str]) -> bool:
    """A receipt's ``events`` in this journal are a fragment, not a receipt to recover: all of
    them only keep an answer (a repeated close's answer for a receipt settled long ago, its
    ``open`` rotated away into ``<journal>.1``). A receipt with anything more is recovered,
    ``open`` record or not: a torn ``open`` line must not hide a paid receipt."""
    return all(event in ANSWER_EVENTS for event in events)


def group(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Journal records by receipt id, receipts in the order they were opened; each record gets
    its place in the journal as ``_index``."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for index, record in enumerate(records):
        receipt = record.get("receipt")
        if isinstance(receipt, str):
            grouped.setdefault(receipt, []).append({**record, "_index": index})
    return grouped


# --------------------------------------------------------------------------------------------
# The steps


class SessionSteps:
    """The printer, the journal, the worker thread, the collaborators and the receipt in
    flight of one sale session, with the steps the session and its recovery both take."""

    def __init__(
        self,
        printer: FiscalPrinter,
        journal: SessionJournal,
        store: SoldRecorder | None,
        lm_client: SoldReporter | None,
        event_log: EventLog | None,
        options: SaleOptions,
    ) -> None:
        self.printer = printer
        self.journal = journal
        self.store = store
        self.lm_client = lm_client
        self.event_log = event_log
        self.options = options
        #: The receipt being built or waiting to be finished.
        self.receipt: ReceiptInFlight | None = None
        #: The ФН's number, as the last closed receipt named it.
        self.fn_number: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="markd-fiscal")

    # -- the device -----------------------------------------------------------------------------

    async def device(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run a printer call on the session's worker thread (device calls stay in order while
        the event loop keeps serving scans)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args))

    async def quietly(self, call: Callable[..., Any], *args: Any) -> str | None:
        """A clean-up call whose failure is noted, not raised; returns the problem. A device
        that holds nothing to clean up (no receipt open, no validation under way) is no
        problem."""
        try:
            await self.device(call, *args)
        except (NoReceiptOpen, NoValidationRunning):
            return None  # nothing to cancel
        except FiscalError as exc:
            return f"{exc.reason}: {exc.message}"
        return None

    def shutdown(self) -> None:
        """Stop the worker thread (the printer belongs to the caller)."""
        self._executor.shutdown(wait=True)

    @passes_events_on
    def event(self, kind: str, message: str, *, priority: str = "info", **fields: Any) -> None:
        if self.event_log is not None:
            self.event_log.event(kind, message, priority=priority, **fields)

    # -- closing --------------------------------------------------------------------------------

    async def attempt_close(
        self, receipt: ReceiptInFlight, *, recovering: bool = False
    ) -> ReceiptOutcome | None:
        """Close the receipt once. None when the ККТ's answer was lost (journaled
        ``close-unknown``): the caller reconciles before anything else. ``recovering``: called
        by recovery, where a ККТ that cannot be reached before the close leaves the receipt
        ``pending`` (retried by the next recovery), not ``failed`` (which nobody retries)."""
        rid = receipt.receipt_id
        attempt = receipt.attempts + 1
        try:
            # Fresh ids: these steps are not journaled, so ``attempt`` does not advance when
            # they fail, and an id derived from it would be answered from the ККТ's request
            # table next time (e.g. a shift opening refused for paper, refused again forever).
            # Opening the shift is safe to repeat: ensure_shift reads the shift state first.
            if self.options.auto_shift:
                await self.device(self.printer.ensure_shift, new_op_id())
            status = await self.device(self.printer.status, new_op_id())
        except FiscalError as exc:
            if recovering and isinstance(exc, PrinterUnavailable | OutcomeUnknown | FiscalTimeout):
                return self.pending(receipt, exc)
            return self.close_failed(receipt, exc, attempt=None)
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
            total_kopecks=receipt.total_kopecks,
        )
        try:
            result = await self.device(self.printer.close_receipt, op, receipt.payments)
        except (OutcomeUnknown, FiscalTimeout) as exc:
            self.journal.append("close-unknown", rid, attempt=attempt, error=exc.message)
            return None
        except FiscalError as exc:
            return self.close_failed(receipt, exc, attempt=attempt)
        return await self.finish(receipt, result)

    def close_failed(
        self, receipt: ReceiptInFlight, exc: FiscalError, attempt: int | None
    ) -> ReceiptOutcome:
        """The ККТ refused (or was not reached): no receipt. It stays open to retry or cancel."""
        if attempt is not None:
            receipt.last_op = None  # that attempt is settled: it made no receipt
            # The driver cancels a failed receipt and clears the accepted codes (all but
            # error 423, which keeps them; validating again is harmless then too).
            receipt.codes_stale = True
            self.journal.append(
                "close-failed",
                receipt.receipt_id,
                attempt=attempt,
                reason=exc.reason,
                error=exc.message,
                device_code=exc.device_code,
            )
        self.event(
            "fiscal-error",
            f"receipt {receipt.receipt_id} not closed: {exc.reason}: {exc.message}",
            priority="warning",
            receipt=receipt.receipt_id,
            reason=exc.reason,
        )
        return ReceiptOutcome("failed", exc.reason, receipt.receipt_id)

    async def finish(self, receipt: ReceiptInFlight, result: ReceiptResult) -> ReceiptOutcome:
        """The receipt is fiscalised: journal it closed, then record its КИ in the store and
        tell the Local Module."""
        rid = receipt.receipt_id
        result = replace(
            result,
            kind=receipt.kind,
            positions=tuple(receipt.positions()),
            payments=receipt.payments or result.payments,
            total_kopecks=receipt.total_kopecks,
            fn_number=result.fn_number or receipt.fn_number or self.fn_number,
        )
        owed_now = adjustment(receipt)
        self.fn_number = result.fn_number or self.fn_number
        self.journal.append("closed", rid, **_closed_facts(result))
        self.receipt = None
        await self.device(self.printer.forget_receipt)
        self.journal.drop_codes()
        store_ok = self.record_in_store(rid, receipt.kind, receipt.kis, result.reference)
        lm = await self.report_to_lm(rid, receipt.kind, receipt.kis)
        self.event(
            "fiscal-receipt",
            f"{receipt.kind} receipt {result.document_number} closed with "
            f"{len(receipt.units)} units, {result.total_kopecks / 100:.2f} RUB"
            + (" (found during recovery)" if result.recovered else ""),
            receipt=rid,
            document=result.document_number,
            fiscal_sign=result.fiscal_sign,
            units=len(receipt.units),
            total_kopecks=result.total_kopecks,
            refund_kopecks=None if owed_now is None else owed_now["refund_kopecks"],
        )
        # Receipts whose store / Local Module update is still to be done go on into the new
        # journal: recovery reads only that one. So does this receipt: the answer to its close
        # (``close-answered``) is journaled after this returns, and must land beside its
        # ``open`` and ``closed``, never alone in a new journal (where it would read as a
        # receipt that never got paid).
        self.journal.rotate_if_large(keep=lambda records: {*self.to_carry(records), rid})
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
            adjustment=owed_now,
        )

    # -- after a receipt: the store and the Local Module ----------------------------------------

    def record_in_store(
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
            self.event(
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

    async def report_to_lm(
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
            self.event(
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

    def lm_follow_up_due(self, events: Sequence[str]) -> bool:
        """A closed receipt (its journal ``events``) still owes the Local Module a report."""
        wants_lm = self.lm_client is not None and self.options.lm_sell
        return (
            wants_lm and "lm-reported" not in events and events.count("lm-failed") < MAX_LM_RETRIES
        )

    def to_carry(self, records: list[dict[str, Any]]) -> set[str]:
        """The receipts a rotated journal must carry on into the new one: those recovery still
        has work for (a store or Local Module update due, or not finished at all — none is in
        flight when the journal rotates), and the later receipts holding any of their КИ (they
        tell recovery that the КИ was superseded; see :meth:`Recovery.follow_up`)."""
        carry: set[str] = set()
        for rid, receipt_records in group(records).items():
            events = [r["event"] for r in receipt_records]
            if "cancelled" in events or fragment(events):
                continue
            if "closed" not in events:
                carry.add(rid)
            elif ("stored" not in events and self.store is not None) or self.lm_follow_up_due(
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

    # -- dropping or parking a receipt ----------------------------------------------------------

    async def drop(self, receipt: ReceiptInFlight, reason: str) -> ReceiptOutcome:
        """Cancel the receipt everywhere: the validation in progress, the ФН's kept results,
        a receipt open on the device. Device errors are journaled, not raised."""
        rid = receipt.receipt_id
        problems = []
        for step, call in (
            ("cancel-validation", self.printer.cancel_validation),
            ("clear", self.printer.clear_validations),
            ("cancel-receipt", self.printer.cancel_receipt),
        ):
            problem = await self.quietly(call, derive_op_id(rid, f"drop/{step}"))
            if problem:
                problems.append(f"{step}: {problem}")
        self.journal.append("cancelled", rid, reason=reason, problems=problems or None)
        self.journal.drop_codes()
        self.receipt = None
        self.event(
            "fiscal-receipt", f"receipt {rid} cancelled: {reason}", receipt=rid, reason=reason
        )
        return ReceiptOutcome("cancelled", reason, rid)

    def pending(self, receipt: ReceiptInFlight, exc: Exception) -> ReceiptOutcome:
        """The receipt waits for the ККТ: it stays in flight for the next recovery."""
        reason = exc.reason if isinstance(exc, FiscalError) else "printer-unavailable"
        self.receipt = receipt
        if reason in TECHNICIAN_REASONS:
            self._needs_technician(receipt.receipt_id, reason, str(exc))
        self.event(
            "fiscal-error",
            f"receipt {receipt.receipt_id} waits for the ККТ: {exc}",
            priority="warning",
            receipt=receipt.receipt_id,
            reason=reason,
        )
        return ReceiptOutcome("pending", reason, receipt.receipt_id)

    def _needs_technician(self, rid: str, reason: str, error: str) -> None:
        """Journal once (until a new attempt moves the receipt on) that its outcome waits for
        a person."""
        try:
            entry = self.journal.index.get(rid)
        except IndexUnavailable:
            entry = None
        if entry is not None and entry.get("state") == NEEDS_TECHNICIAN:
            return
        self.journal.append("needs-technician", rid, reason=reason, error=error)


def _closed_facts(result: ReceiptResult) -> dict[str, Any]:
    record = result.record()
    record["reference"] = result.reference
    return record
