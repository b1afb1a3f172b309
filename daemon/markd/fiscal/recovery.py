"""Crash recovery of the sale session: the journal and the ККТ brought back in step.

Every step of a receipt is written to the :class:`~markd.fiscal.journal.SessionJournal`
(fsync'd) before it is taken, and every device operation carries an idempotency id derived
from the receipt's id and the step, so :meth:`Recovery.recover` can tell how far a receipt got:

* not yet ``closing`` (no payment was committed): the receipt is dropped — the validation in
  progress is cancelled, the results the ФН holds are cleared, a receipt left open on the device
  is cancelled — and journaled ``cancelled``;
* ``closing`` but not ``closed``: the ККТ is asked what became of the last attempt — by its
  request id where the device keeps one (ATOL's web server, the emulator), else by its document
  counter (a new fiscal document since the attempt was journaled is that receipt: markd is the
  ККТ's only client; a device that reads documents back — Shtrih's ``FF0A`` — must show a
  receipt of that kind and total among them). Found: the receipt is finished as it is. Not
  found: a receipt left open on the device is cancelled, every unit is validated again and the
  receipt registered anew — exactly once. Each such recovery attempt is journaled
  (``recovery-attempt N``) before the device is touched and names its operations after N, so a
  later attempt never reuses an id the ККТ already answered (it would answer from its request
  table instead of running it). A fault of the device while the units are checked again leaves
  the receipt ``pending``; a unit the ФН or the ОИСМ now refuses is dropped and the payments
  are fitted to the smaller total (``payments-adjusted``, with the amount to refund);
* ``closed``: whatever of the store and the Local Module is still missing is done, for the КИ
  no later receipt has superseded (a sale's follow-up is not replayed over a later return).

:meth:`Recovery.reconcile` is the middle case for one receipt, and the session calls it too:
when the answer to a close was lost, and before closing or cancelling a paid receipt whose
last attempt's outcome is unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from markd.errors import FiscalError, FiscalTimeout, PrinterUnavailable
from markd.fiscal.base import DocumentSummary, derive_op_id
from markd.fiscal.model import (
    PLANNED_STATUS_PIECE_SOLD,
    IndustryTags,
    MarkedItem,
    Position,
    PrinterStatus,
    ReceiptKind,
    ReceiptResult,
)
from markd.fiscal.outcomes import ReceiptOutcome, RecoveryReport, UnitOutcome, message
from markd.fiscal.receipt_index import IndexUnavailable
from markd.fiscal.steps import (
    ReceiptInFlight,
    SessionSteps,
    UnitInFlight,
    adjustment,
    fragment,
    group,
    owed,
)
from markd.receipts import Payment

#: How many documents made since a close attempt are read back to find the receipt.
DOCUMENTS_READ_BACK = 8
#: Attempts to register one receipt before it is left pending for a technician.
MAX_ATTEMPTS = 5
#: The ККТ's answers on a code checked again during recovery that are no verdict on the code:
#: the device did not finish in time. The receipt waits (``pending``); the unit is not dropped.
TRANSIENT_CHECK_REASONS = frozenset({"fn-validation-timeout"})


class Recovery:
    """Settles what a sale session left unfinished, through the session's ``steps``."""

    def __init__(self, steps: SessionSteps) -> None:
        self.steps = steps
        #: The receipt index was brought up to date with the journal (once per process).
        self.index_synced = False

    async def recover(self) -> RecoveryReport:
        """Settle every receipt the journal shows unfinished (see the module docstring).
        Does nothing when nothing is unfinished."""
        steps, journal = self.steps, self.steps.journal
        actions: list[dict[str, Any]] = []
        outcomes: list[ReceiptOutcome] = []
        # A copy of the codes file left half-written by a kill never became the file: it is
        # no one's working memory, only full codes on disk.
        journal.discard_partial_codes()
        records = journal.records()
        if not self.index_synced:
            # The receipt index is derived from the journal: what a power cut kept from it
            # (or all of it, when it was missing or damaged) comes back from here, once per
            # process (later updates reach it as they are journaled).
            try:
                journal.sync_index(records)
            except IndexUnavailable as exc:
                steps.event(
                    "fiscal-error",
                    f"the receipt index was not brought up to date: {exc.message}",
                    priority="warning",
                    reason=exc.reason,
                )
            else:
                self.index_synced = True
        for record in records:
            if record["event"] == "closed" and record.get("fn_number"):
                steps.fn_number = record["fn_number"]
        last_closed = _last_closed(records)
        for rid, receipt_records in group(records).items():
            events = {r["event"] for r in receipt_records}
            if "cancelled" in events:
                continue
            if fragment(events):
                # Its start is in an older journal: this is no receipt left unfinished but
                # what was journaled of it since (a close's answer). Dropping it would record
                # a registered receipt as cancelled.
                continue
            if "closed" in events:
                done = await self._follow_up(rid, receipt_records, last_closed)
                if done:
                    actions.append({"receipt": rid, "action": "follow-up", "done": done})
                continue
            in_flight = steps.receipt
            if in_flight is not None and in_flight.receipt_id == rid:
                receipt = in_flight
                if not receipt.paid and receipt.last_op is None:
                    continue  # being built right now in this process: not an interruption
            else:
                receipt = self._rebuild(rid, receipt_records)
            if "paid" not in events and "closing" not in events:
                await steps.device(steps.printer.restore_receipt, receipt.kind, [])
                outcome = await steps.drop(receipt, "interrupted-before-payment")
                actions.append({"receipt": rid, "action": "cancelled", "units": receipt.kis})
            else:
                journal.append("recovery", rid, action="resume", attempts=receipt.attempts)
                outcome = await self.reconcile(receipt)
                actions.append(
                    {"receipt": rid, "action": f"resumed-{outcome.status}", "units": receipt.kis}
                )
            outcomes.append(outcome)
            steps.event(
                "fiscal-recovery",
                f"receipt {rid}: {actions[-1]['action']}",
                receipt=rid,
                status=outcome.status,
            )
        if steps.receipt is None:
            # No receipt is in flight: the full codes kept for one are needed by no one (a kill
            # between journaling "closed" / "cancelled" and deleting them leaves them behind).
            journal.drop_codes()
        return RecoveryReport(tuple(actions), tuple(outcomes))

    async def _receipt_document(
        self, receipt: ReceiptInFlight, before: int, status: PrinterStatus
    ) -> DocumentSummary | None | Literal[False]:
        """Which document made since the close attempt is this receipt, read back from the
        ФН: the first receipt of its kind and total among the documents after ``before`` (at
        most :data:`DOCUMENTS_READ_BACK`). None when the device reads none of them back (the
        counter alone decides, as markd is taken to be the ККТ's only client); False when
        every one of them was read and none is this receipt. When some could not be read, or
        there are more than were read, and none read is this receipt, nobody can tell yet:
        :class:`~markd.errors.PrinterUnavailable`, and the receipt stays pending."""
        device = self.steps.device
        printer = self.steps.printer
        last = status.last_document_number
        end = min(last, before + DOCUMENTS_READ_BACK)
        unread: list[int] = []
        for number in range(before + 1, end + 1):
            try:
                summary = await device(printer.describe_document, number)
            except PrinterUnavailable:
                raise
            except FiscalError:
                summary = None
            if summary is None:
                unread.append(number)
                continue
            total = summary.total_kopecks
            if summary.kind == receipt.kind and total in (None, receipt.total_kopecks):
                return summary
        if len(unread) == end - before:
            return None  # nothing read back: the device cannot say
        if unread or end < last:
            raise PrinterUnavailable(
                f"documents {before + 1}–{last} were made since the receipt's close attempt; "
                f"none read back is this receipt, but {len(unread)} could not be read"
                + (f" and {last - end} were not read" if end < last else "")
                + ": whether it was made is not known yet"
            )
        return False

    async def reconcile(self, receipt: ReceiptInFlight, *, redo: bool = True) -> ReceiptOutcome:
        """Find out whether the last close attempt made a receipt; finish it if so, else
        (``redo``) register the receipt anew."""
        steps, printer = self.steps, self.steps.printer
        rid = receipt.receipt_id
        steps.receipt = receipt
        await steps.device(printer.restore_receipt, receipt.kind, receipt.positions())
        op = receipt.last_op
        try:
            finding, found = (
                await steps.device(printer.find_receipt, op) if op else ("failed", None)
            )
            if finding == "done" and found is not None:
                steps.journal.append("recovery", rid, action="found-by-request-id", op=op)
                return await steps.finish(receipt, dataclasses.replace(found, recovered=True))
            status = await steps.device(printer.status, derive_op_id(rid, "reconcile"))
        except PrinterUnavailable as exc:
            return steps.pending(receipt, exc)
        except FiscalError as exc:
            return steps.pending(receipt, exc)
        advanced = (
            receipt.doc_before is not None and status.last_document_number > receipt.doc_before
        )
        if finding == "unknown" and advanced and op is not None:
            before = receipt.doc_before or 0
            try:
                found_doc = await self._receipt_document(receipt, before, status)
            except PrinterUnavailable as exc:
                return steps.pending(receipt, exc)
            if found_doc is not False:
                number = before + 1 if found_doc is None else found_doc.number
                steps.journal.append(
                    "recovery",
                    rid,
                    action="found-by-document-number",
                    op=op,
                    document=number,
                    confirmed=found_doc is not None,
                )
                result = ReceiptResult(
                    kind=receipt.kind,
                    document_number=number,
                    shift_number=status.shift_number,
                    fiscal_sign=None if found_doc is None else found_doc.fiscal_sign,
                    datetime=None if found_doc is None else found_doc.datetime,
                    total_kopecks=0 if found_doc is None else receipt.total_kopecks,
                    recovered=True,
                )
                return await steps.finish(receipt, result)
            # The documents made since are not this receipt (another client's, a report).
            steps.journal.append(
                "recovery",
                rid,
                action="documents-not-this-receipt",
                op=op,
                documents=[before + 1, status.last_document_number],
            )
            finding = "failed"
        # No receipt came of it. From here the device is changed (an open receipt cancelled,
        # codes checked again): journal a new recovery attempt first and name every operation
        # after it. An id used by an earlier attempt — in this process or one that was killed
        # or lost the ККТ half-way — would be answered from the ККТ's request table (ATOL's
        # web server: 409) instead of being run, and the unit would be lost.
        redo_id = self._new_attempt(receipt, op=op)
        if status.receipt_open is not False:
            problem = await steps.quietly(
                printer.cancel_receipt, derive_op_id(rid, f"{redo_id}/cancel-receipt")
            )
            if problem is None and status.receipt_open:
                steps.journal.append("recovery", rid, action="cancelled-open-receipt", op=op)
            await steps.device(printer.restore_receipt, receipt.kind, receipt.positions())
        steps.journal.append("recovery", rid, action="no-receipt", op=op, finding=finding)
        receipt.last_op = None
        if not redo:
            return ReceiptOutcome("failed", "no-receipt-made", rid)
        return await self._register_anew(receipt, redo_id)

    # -- registering anew -----------------------------------------------------------------------

    def _new_attempt(self, receipt: ReceiptInFlight, **facts: Any) -> str:
        """Journal a new recovery attempt and return the name its device operations take."""
        receipt.recoveries += 1
        self.steps.journal.append(
            "recovery-attempt", receipt.receipt_id, attempt=receipt.recoveries, **facts
        )
        return f"redo-{receipt.recoveries}"

    async def register_again(self, receipt: ReceiptInFlight) -> ReceiptOutcome:
        """Close a paid receipt whose last ``sell`` the ККТ refused, the way the driver left
        it: the receipt cancelled on the device and the ФН's table of accepted codes cleared
        (ATOL's receipt script, ``exitWithCancelation``; domain.md §7.4a). Sending the same
        positions again would be refused (420 / 422), so every code is validated again
        (begin → status → accept) and the receipt registered once more — or, for a code the
        ФН or the ОИСМ now declines, the unit is dropped with the payments fitted and the
        refund named, exactly as recovery after a crash does. Journaled as a recovery
        attempt (``cause: close-failed``), so its operations get ids of their own."""
        redo_id = self._new_attempt(receipt, cause="close-failed")
        return await self._register_anew(receipt, redo_id, capped=False)

    async def _register_anew(
        self, receipt: ReceiptInFlight, redo_id: str, *, capped: bool = True
    ) -> ReceiptOutcome:
        """Validate every unit again and close the receipt: after a crash the ФН's results
        may be gone or stale, and the receipt must not be lost. ``redo_id`` names this
        recovery attempt's device operations (see :meth:`reconcile`).

        A unit is dropped only for a verdict on it — the ФН or the ОИСМ refuses it now, or its
        code is lost — and then the payments are fitted to the smaller total. A fault of the
        device (unreachable, no answer in time, an error of the ФН) says nothing about the
        unit: the receipt stays ``pending`` with every unit, and the next recovery tries again.
        """
        steps, printer = self.steps, self.steps.printer
        rid = receipt.receipt_id
        if capped and receipt.attempts >= MAX_ATTEMPTS:
            return steps.pending(
                receipt, FiscalError(f"{receipt.attempts} attempts made", "too-many-attempts")
            )
        await steps.quietly(printer.cancel_validation, derive_op_id(rid, f"{redo_id}/cancel"))
        await steps.quietly(printer.clear_validations, derive_op_id(rid, f"{redo_id}/clear"))
        checked: dict[str, UnitInFlight] = {}
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
                check = await steps.device(
                    printer.check_code,
                    op,
                    unit.km,
                    unit.ki,
                    mark.planned_status,
                    steps.options.on_no_answer,
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
                return steps.pending(receipt, problem)
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
            owed_now = self._adjust_payments(receipt)
            outcome = await steps.drop(receipt, "nothing-left-to-register")
            return dataclasses.replace(
                outcome,
                dropped=tuple(receipt.dropped),
                payments=receipt.payments,
                adjustment=owed_now,
            )
        self._adjust_payments(receipt)
        await steps.device(printer.restore_receipt, receipt.kind, receipt.positions())
        receipt.codes_stale = False
        outcome = await steps.attempt_close(receipt, recovering=capped)
        if outcome is None:
            # The answer to this close was lost as well: find out what became of it.
            return await self.reconcile(receipt)
        if outcome.status == "closed":
            return outcome  # finish() reports the dropped units and the refund
        return dataclasses.replace(
            outcome,
            dropped=tuple(receipt.dropped),
            payments=receipt.payments,
            adjustment=adjustment(receipt),
        )

    def _adjust_payments(self, receipt: ReceiptInFlight) -> dict[str, Any] | None:
        """After units were dropped from a paid receipt: fit the payments to the new total —
        an electronic payment may not exceed it (the ККТ refuses that, error 52, for good),
        cash stays as tendered when it covers the total (the ККТ gives the change) — journal
        the new payments (``payments-adjusted``) and tell the operator what to refund."""
        steps = self.steps
        rid = receipt.receipt_id
        total = receipt.total_kopecks
        if total == receipt.settled_total:
            return adjustment(receipt)  # fitted already (by an earlier attempt)
        before = receipt.payments
        fitted = fit_payments(before, total) if receipt.units else ()
        owed_now = owed(receipt, total)
        steps.journal.append(
            "payments-adjusted",
            rid,
            total_before_kopecks=receipt.settled_total,
            total_kopecks=total,
            payments_before=[p.record() for p in before],
            payments=[p.record() for p in fitted],
            refund_kopecks=owed_now["refund_kopecks"],
            dropped=owed_now["dropped"],
        )
        if fitted:
            receipt.payments = fitted
        receipt.settled_total = total
        refund = owed_now["refund_kopecks"]
        steps.event(
            "fiscal-recovery",
            f"receipt {rid}: {len(owed_now['dropped'])} unit(s) could not be registered "
            f"({', '.join(owed_now['dropped'])}); total {receipt.paid_total / 100:.2f} → "
            f"{total / 100:.2f} RUB: refund {refund / 100:.2f} RUB to the customer"
            + ("" if receipt.units else " (the receipt is cancelled)"),
            priority="warning",
            receipt=rid,
            status="adjusted",
            action="payments-adjusted",
            dropped=",".join(owed_now["dropped"]),
            total_before_kopecks=receipt.paid_total,
            total_kopecks=total,
            refund_kopecks=refund,
            payments=",".join(f"{p.type}:{p.amount_kopecks}" for p in receipt.payments),
        )
        return owed_now

    def _dropped(self, receipt: ReceiptInFlight, unit: UnitInFlight, reason: str) -> UnitOutcome:
        self.steps.journal.append(
            "unit-dropped", receipt.receipt_id, unit=unit.unit_id, ki=unit.ki, reason=reason
        )
        return UnitOutcome(
            "refused",
            reason,
            message(reason),
            unit.ki,
            unit.unit_id,
            receipt.receipt_id,
            source="session",
        )

    # -- reading the journal --------------------------------------------------------------------

    def _rebuild(self, rid: str, records: list[dict[str, Any]]) -> ReceiptInFlight:
        """The receipt as the journal knows it (codes from the side file)."""
        kind: ReceiptKind = "sell"
        codes = self.steps.journal.codes(rid)
        receipt = ReceiptInFlight(rid, kind)
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
                        UnitInFlight(
                            record["unit"], record["ki"], codes.get(record["unit"]), position
                        )
                    )
            elif event == "unit-dropped":
                receipt.units = [u for u in receipt.units if u.unit_id != record.get("unit")]
                reason = str(record.get("reason") or "dropped")
                receipt.dropped.append(
                    UnitOutcome(
                        "refused",
                        reason,
                        message(reason),
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
                receipt.codes_stale = False
            elif event == "closing":
                receipt.attempts = int(record.get("attempt", receipt.attempts + 1))
                receipt.last_op = record.get("op")
                receipt.doc_before = record.get("doc_before")
            elif event == "close-failed":
                receipt.last_op = None
                receipt.codes_stale = True
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
        steps = self.steps
        events = [r["event"] for r in records]
        closed_at, closed = next((r["_index"], r) for r in records if r["event"] == "closed")
        kind: ReceiptKind = "return" if closed.get("kind") == "return" else "sell"
        kis = [p["ki"] for p in closed.get("positions", []) if p.get("ki")]
        superseded = [ki for ki in kis if last_closed.get(ki, closed_at) > closed_at]
        live = [ki for ki in kis if ki not in superseded]
        reference = closed.get("reference") or f"kkt/{closed.get('document_number')}"
        done = []
        if "stored" not in events and steps.store is not None:
            if steps.record_in_store(rid, kind, live, reference, superseded):
                done.append("store")
        if steps.lm_follow_up_due(events):
            if not live:
                # Every КИ was on a later receipt, which told the module itself.
                steps.journal.append(
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
                lm = await steps.report_to_lm(rid, kind, live)
                if lm is not None and lm.get("ok") is not False:
                    done.append("local-module")
        if "closed" in events and steps.journal.codes(rid):
            steps.journal.drop_codes()
        return done


def fit_payments(payments: Sequence[Payment], total: int) -> tuple[Payment, ...]:
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


def _last_closed(records: list[dict[str, Any]]) -> dict[str, int]:
    """Each КИ's latest ``closed`` record (its place in the journal)."""
    latest: dict[str, int] = {}
    for index, record in enumerate(records):
        if record["event"] == "closed":
            for position in record.get("positions", []):
                if position.get("ki"):
                    latest[position["ki"]] = index
    return latest


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
