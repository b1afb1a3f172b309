"""The sale desk: the running daemon's fiscal printer and sale session, and its sale modes.

``[sale] mode`` says how a verdict becomes a sale:

``off``
    No printer is opened; markd gives verdicts and nothing else (the receipt endpoints of the
    control API answer ``no-printer``).
``attendant``
    markd reports verdicts; the POS (or an attendant's screen) drives receipts through the
    control API (``POST /v1/receipt/items`` …). A scan never touches the ККТ by itself.
``kiosk``
    A scan that is allowed goes straight onto the open receipt (a sale receipt is opened when
    none is), priced from the price list (``[sale] catalog``) by its GTIN, or — for a tobacco
    code that carries it — at its maximum retail price (``[sale] use_mrp``). The kiosk's
    screen closes or cancels the receipt through the control API.

::

    scan loop ─ verdict ─▶ SaleDeskListener ─▶ SaleDesk.take ─(kiosk, allow)─▶ SaleSession.add
    control API ─ ReceiptOperations ─▶ SaleDesk.open / add / close / cancel / current / status
                                                                      │
                              sale-unit / sale-refused events (with the scanner's name)

:class:`SaleDesk` owns the printer and the :class:`~markd.fiscal.session.SaleSession` for the
service and is the service's ``receipts`` (:class:`markd.receipts.ReceiptOperations`). Every
operation holds the session's one receipt lock (:attr:`SaleSession.lock
<markd.fiscal.session.SaleSession.lock>`) across its whole sequence, so a kiosk scan, an API
call, a reload and the stop never interleave on the ККТ. Device calls run on the session's
worker thread; the event loop keeps checking scans meanwhile.

A refusal is one of the receipt domain's errors (:mod:`markd.receipts`): the receipt's state
(:class:`~markd.receipts.ReceiptError`), what was given (:class:`~markd.receipts.ReceiptInputError`)
or a ККТ not reached (:class:`~markd.receipts.ReceiptUnavailable`); the control API chooses the
HTTP status. The code of a unit sold through the API arrives parsed (by the check that gave its
verdict): the desk never parses it again.

When a receipt waits for the ККТ (a close whose answer was lost, a start whose recovery did not
finish), the next operation first runs the session's recovery — an explicit step at the top of
each operation, journaled as ``sale-recovery`` with the operation it precedes.

What becomes of a receipt in flight when markd stops (:meth:`SaleDesk.park`): the operation
under way is given a bounded time to finish, then the receipt is left as the session journal
has it — *parked*. The next start's :meth:`~markd.fiscal.session.SaleSession.recover` settles
it: a receipt nobody paid is cancelled on the device (the customer scans again); a paid one
is registered (or found, if the ККТ registered it already). Nothing is cancelled or printed in
the stop path itself, where time is short and the customer may be gone.

The price list and the kiosk's pricing rule are :mod:`markd.catalog`'s; the desk takes the
list the loaded configuration carries (:meth:`markd.config.SaleConfig.price_list`), so the
file is read once per configuration load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from markd import codes
from markd.catalog import Catalog, Quote, quote
from markd.errors import FiscalError, MarkdError
from markd.fiscal.receipt_index import MAX_KEYS_PER_RECEIPT
from markd.fiscal.receipt_index import view as index_view
from markd.money import money_problem
from markd.receipts import (
    OpenReceipt,
    Payment,
    ReceiptError,
    ReceiptInputError,
    ReceiptItem,
    ReceiptUnavailable,
)
from markd.systemd import passes_events_on

if TYPE_CHECKING:
    from markd.checks.local_module import LocalModuleClient
    from markd.checks.verdict import Verdict
    from markd.config import Config
    from markd.fiscal.model import PrinterStatus
    from markd.fiscal.session import ReceiptOutcome, RecoveryReport, SaleSession, UnitOutcome
    from markd.store import Store
    from markd.systemd import EventLog

#: Customer-screen texts for units the desk itself refuses.
NO_PRICE_RU = "Цена товара не найдена, обратитесь к продавцу"
RETURN_OPEN_RU = "Открыт чек возврата, продажа невозможна"
STOPPING_RU = "Касса перезапускается, отсканируйте код ещё раз"
#: Failure reasons that mean the ККТ was not reached (or did not answer): the refusal is a
#: :class:`~markd.receipts.ReceiptUnavailable` (try again later).
UNREACHABLE_REASONS = frozenset(
    {"printer-unavailable", "outcome-unknown", "fiscal-timeout", "driver-missing"}
)
#: :class:`~markd.fiscal.base.QueueBlocked`'s reason: ATOL's Web Requests queue is stopped
#: until a technician resolves the request at its head (fiscal.md, "queue-blocked").
QUEUE_BLOCKED = "queue-blocked"


# --------------------------------------------------------------------------------------------
# The desk


def fiscal_settings(config: Config) -> tuple[Any, ...]:
    """What the desk's printer and session are built from: a change needs a new desk."""
    return (config.fiscal, config.sale.mode)


class SaleDesk:
    """The printer and the sale session of one running service, in mode ``attendant`` or
    ``kiosk`` (see the module docstring). Implements :class:`markd.receipts.ReceiptOperations`.

    Build it with :func:`markd.service.wiring.build_sale_desk` (or from a session, in tests)
    and call :meth:`start` before the service reports ready; :meth:`park` and
    :meth:`shutdown` at stop.
    """

    def __init__(
        self,
        config: Config,
        session: SaleSession,
        *,
        event_log: EventLog | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        #: The configuration the desk was built with (its printer and session settings).
        self.config = config
        self.mode = config.sale.mode
        #: The settings the printer and session were built from (see :func:`fiscal_settings`).
        self.settings = fiscal_settings(config)
        self.session = session
        self.event_log = event_log
        self.catalog = catalog
        self.use_mrp = config.sale.use_mrp
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._closed = False
        #: An operation was still running when :meth:`park` gave up waiting for it.
        self._busy_at_stop = False
        self._recovery_pending = False
        self._device: PrinterStatus | None = None
        from markd.fiscal.model import HealthThresholds

        #: When a fiscal health fact becomes a warning (``[fiscal] *_warning``).
        self.thresholds = HealthThresholds(
            fn_days=config.fiscal.fn_days_warning,
            unsent_days=config.fiscal.unsent_days_warning,
            shift_hours=config.fiscal.shift_hours_warning,
        )
        #: The fiscal health warnings of the last status read (journaled as they change).
        self._health: list[str] = []
        self._checked_at: float | None = None
        self._last_error: dict[str, Any] | None = None
        #: The last device call found ATOL's Web Requests queue blocked (``queue-blocked``);
        #: cleared by the next status the device answers (the queue moved).
        self._queue_blocked = False
        #: What the last :meth:`~SaleSession.recover` did (None before the first).
        self.last_recovery: RecoveryReport | None = None
        #: Told after each receipt operation (the service's ``STATUS=`` line shows the receipt
        #: in flight): ``ended`` is True when a receipt was just closed or cancelled, which the
        #: service reports at once; units and opened receipts it may report a little later.
        self.on_receipt_change: Callable[[bool], None] | None = None
        #: Receipt closes and cancels by outcome (``closed``, ``cancelled``, ``failed``,
        #: ``pending``, ``empty``) for ``GET /metrics``. The service hands every desk it opens
        #: the same counter, so the counts run on across reloads.
        self.receipt_outcomes: Counter[str] = Counter()
        #: Recoveries that had something to do, by result: ``finished`` (what an earlier
        #: operation left was settled), ``pending`` (the ККТ still does not answer),
        #: ``failed`` (the recovery stopped on an error). Shared like :attr:`receipt_outcomes`.
        self.recoveries: Counter[str] = Counter()

    @property
    def kiosk(self) -> bool:
        return self.mode == "kiosk"

    @property
    def receipt_open(self) -> bool:
        """A receipt is in flight (being built, or paid and waiting to be registered)."""
        return self.session.receipt_id is not None

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> RecoveryReport | None:
        """Settle what an earlier run left unfinished (the session's recovery), read the
        printer's status, and log how the desk starts. Faults of the ККТ are logged, not
        raised: markd gives verdicts without a printer, and recovery is tried again before
        the next receipt operation."""
        async with self.session.lock:
            report = await self._recover()
            await self._refresh_status()
        where = self.config.fiscal.url
        prices = "-"
        if self.kiosk:
            listed = f"{len(self.catalog)} prices from {self.catalog.path}" if self.catalog else ""
            mrp = "tobacco at its MRP" if self.use_mrp else ""
            prices = ", ".join(p for p in (listed, mrp) if p)
        state = "ready" if self._device is not None else "not reachable"
        self._event(
            "sale-desk",
            f"sale mode {self.mode} on printer {where} ({state}); prices: {prices}",
            priority="info" if self._device is not None else "warning",
            mode=self.mode,
            printer=where,
            action="started",
        )
        return report

    async def park(self, timeout_s: float) -> bool:
        """Stop taking operations; wait up to ``timeout_s`` for the one under way, then leave
        the receipt in flight to the journal (recovery settles it at the next start). Returns
        False when the operation did not finish in time (the desk is then not shut down: the
        device call ends on the session's thread by its own time limit)."""
        self._stopping = True
        if await self._acquire_within(timeout_s):
            acquired = True
        else:
            self._busy_at_stop = True
            self._event(
                "sale-desk",
                f"an operation with the ККТ was still running after {timeout_s:g} s; "
                "its receipt is left to the journal (recovery at the next start)",
                priority="warning",
                mode=self.mode,
                action="stop-timeout",
            )
            acquired = False
        for task in list(self._tasks):
            task.cancel()  # kiosk scans still waiting for the lock: markd answered them already
        rid = self.session.receipt_id
        if rid is not None:
            paid = self.session.receipt_paid
            units = list(self.session.units)
            self.session.journal.append(
                "parked", rid, reason="service-stopping", units=units, paid=paid
            )
            settle = "registered" if paid else "cancelled on the ККТ"
            self._event(
                "sale-desk",
                f"receipt {rid} parked with {len(units)} unit(s), "
                f"{'paid' if paid else 'not paid'}: it is {settle} at the next start",
                priority="notice",
                mode=self.mode,
                action="parked",
                receipt=rid,
                units=len(units),
                paid="true" if paid else "false",
            )
        if acquired:
            self.session.lock.release()
        return acquired

    async def retire(self, timeout_s: float) -> bool:
        """For a reload that replaces the desk: when no receipt is in flight, stop taking
        operations and close; True when retired, False (nothing changed) when a receipt is in
        flight or an operation did not finish in time."""
        if not await self._acquire_within(timeout_s):
            return False
        try:
            if self.receipt_open:
                return False
            self._stopping = True
        finally:
            self.session.lock.release()
        for task in list(self._tasks):
            task.cancel()
        self.shutdown()
        return True

    def shutdown(self) -> None:
        """Stop the session's worker and close the printer (the Local Module client is the
        service's check chain's, which closes it). Does nothing twice, nor while an operation
        :meth:`park` gave up on still runs."""
        if self._closed or self._busy_at_stop:
            return
        self._closed = True
        self._stopping = True
        self.session.close_session()
        self.session.printer.close()

    # -- reload ---------------------------------------------------------------------------------

    async def apply(self, config: Config, store: Store | None, timeout_s: float) -> None:
        """Take what a reload may change under an open receipt: the price list and
        ``use_mrp`` (future units only) and the store (after it was reopened); the Local
        Module client comes with the new chain (:meth:`use_local_module`). ``[fiscal]`` and
        ``[sale] mode`` need a new desk (:func:`fiscal_settings`). Waits up to ``timeout_s``
        for an operation under way. Raises :class:`~markd.errors.ConfigError` when the price
        list does not load, :class:`~markd.errors.MarkdError` (``sale-busy``) when the
        operation did not end in time; nothing is changed then."""
        catalog = config.sale.price_list()
        if not await self._acquire_within(timeout_s):
            raise MarkdError(
                f"an operation with the ККТ was still running after {timeout_s:g} s",
                "sale-busy",
            ) from None
        try:
            self.session.store = store
            self.catalog = catalog
            self.use_mrp = config.sale.use_mrp
        finally:
            self.session.lock.release()

    def use_local_module(self, lm_client: LocalModuleClient | None) -> None:
        """Sale reports go to ``lm_client`` from now on: the Local Module client of the
        service's new check chain, which owns and closes it (None: no reports). A report
        already under way finishes on the client it started with."""
        self.session.lm_client = lm_client

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No sale operation runs inside (the service swaps the store under it)."""
        async with self.session.lock:
            yield

    # -- kiosk ----------------------------------------------------------------------------------

    def quote(self, code: codes.MarkingCode) -> Quote | None:
        """The kiosk's price for ``code`` (see :func:`quote`)."""
        return quote(code, self.catalog, use_mrp=self.use_mrp)

    def price_of(self, code: codes.MarkingCode) -> int | None:
        """The kiosk's price in kopecks (the check chain judges price thresholds with it)."""
        quote = self.quote(code)
        return None if quote is None else quote.price_kopecks

    def take(self, verdict: Verdict, code: codes.MarkingCode) -> None:
        """Hand a scan's verdict to the kiosk without waiting: the scan loop goes on while the
        ККТ validates the code. Units are taken in scan order (the desk's lock is fair)."""
        if not self.kiosk or not verdict.allowed or self._stopping:
            return  # a unit not allowed never reaches the ККТ
        task = asyncio.ensure_future(self.on_verdict(verdict, code))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._event(
                "sale-desk",
                f"a kiosk unit failed inside markd: {type(exc).__name__}: {exc}",
                priority="error",
                mode=self.mode,
                action="internal-error",
                error=type(exc).__name__,
            )

    async def on_verdict(self, verdict: Verdict, code: codes.MarkingCode) -> UnitOutcome | None:
        """Kiosk mode: put an allowed unit on the open receipt (opening a sale receipt when
        none is open), priced by :meth:`quote`. Returns the unit's outcome (also published as
        ``sale-unit`` or ``sale-refused``); None for a verdict other than ``allow``, which
        never reaches the ККТ."""
        if not self.kiosk or not verdict.allowed:
            return None
        scanner = verdict.scanner
        try:
            async with self._operation():
                await self._recover_before("kiosk-unit")
                if self.session.receipt_kind == "return":
                    return self._desk_refusal(code, "return-receipt-open", RETURN_OPEN_RU, scanner)
                quote = self.quote(code)
                if quote is None:
                    return self._desk_refusal(code, "no-price", NO_PRICE_RU, scanner, "price")
                outcome = await self.session.add(verdict, code, quote.price_kopecks, quote.name)
                self._unit_event(outcome, scanner, quote)
                self._receipt_changed(ended=False)
                if outcome.source == "printer":
                    self._note_error(outcome.reason, outcome.message_ru)
                return outcome
        except ReceiptError as exc:  # stopping
            return self._desk_refusal(code, exc.reason, STOPPING_RU, scanner)

    # -- ReceiptOperations (the control API) ----------------------------------------------------

    async def open(self, request: OpenReceipt) -> Mapping[str, Any]:
        async with self._operation():
            await self._recover_before("open")
            rid = self.session.receipt_id
            if rid is not None:
                raise ReceiptError(f"receipt {rid} is already open", "receipt-open")
            try:
                await self.session.open(request.kind)
            except FiscalError as exc:
                self._note_error(exc.reason, exc.message)
                refusal = _refusal_for(exc.reason)
                raise refusal(f"the ККТ cannot open a receipt: {exc.message}", exc.reason) from None
            self._receipt_changed(ended=False)
            view = self._view()
            assert view is not None
            return view

    async def add(self, item: ReceiptItem, verdict: Verdict) -> Mapping[str, Any]:
        # The check that gave ``verdict`` parsed the code: it is taken as it is, not parsed
        # again. None: it was not a usable code (refused before the receipt is touched).
        code = item.parsed
        if code is None:
            error = item.parse_error
            raise ReceiptInputError(
                f"not a usable marking code: {error.message if error else 'not parsed'}",
                error.reason if error else verdict.reason,
            )
        async with self._operation():
            await self._recover_before("add")
            total = sum(p.amount_kopecks for p in self.session.positions) + item.price_kopecks
            if (problem := money_problem(total, "the receipt's total")) is not None:
                # Each price within the cap, their sum not: refused before the ККТ is asked
                # about the unit, so the receipt stays one the ККТ can take.
                raise ReceiptInputError(problem, "money-out-of-range")
            selling = self.session.receipt_kind in (None, "sell")
            # On a return the unit comes back whatever its verdict said (a recalled unit, one
            # sold here); the session takes a return without one.
            given = verdict if selling or verdict.allowed else None
            outcome = await self.session.add(
                given, code, item.price_kopecks, item.name, tax=item.tax
            )
            self._unit_event(outcome, verdict.scanner, Quote(item.name, item.price_kopecks, "api"))
            self._receipt_changed(ended=False)
            if not outcome.added:
                if outcome.source == "printer":
                    self._note_error(outcome.reason, outcome.message_ru)
                refusal = _unit_refusal(outcome)
                raise refusal(outcome.message_ru or outcome.reason, outcome.reason)
            view = self._view()
            assert view is not None
            return view

    async def close(
        self,
        payments: tuple[Payment, ...],
        *,
        receipt_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Mapping[str, Any]:
        async with self._operation():
            if idempotency_key is not None:
                replayed = self._replay(idempotency_key, receipt_id)
                if replayed is not None:
                    return replayed
            await self._recover_before("close")
            if idempotency_key is not None:
                # The recovery that just ran may have settled the key's receipt.
                replayed = self._replay(idempotency_key, receipt_id)
                if replayed is not None:
                    return replayed
            rid = self.session.receipt_id
            if receipt_id is not None and receipt_id != rid:
                raise ReceiptError(
                    f"receipt {receipt_id} is not the open one "
                    f"({'none is open' if rid is None else f'receipt {rid} is'})",
                    "receipt-not-open",
                )
            if rid is None:
                raise ReceiptError("no receipt is open", "receipt-not-open")
            total = sum(p.amount_kopecks for p in self.session.positions)
            if (problem := money_problem(total, "the receipt's total")) is not None:
                raise ReceiptInputError(problem, "money-out-of-range")
            paid = sum(p.amount_kopecks for p in payments)
            # Payments given are used unless an earlier attempt's outcome is unknown (then the
            # journaled ones stay, and the answer says so): judge them whenever they are used.
            if payments and not self.session.payments_locked:
                # More than the ККТ takes (markd.money.MAX_KOPECKS): refused before it is asked.
                sums = [money_problem(p.amount_kopecks, "a payment", minimum=1) for p in payments]
                sums.append(money_problem(paid, "the sum paid"))
                if any(sums):
                    raise ReceiptInputError("; ".join(filter(None, sums)), "money-out-of-range")
            if payments and paid < total and not self.session.payments_locked:
                raise ReceiptInputError(
                    f"the payments ({paid / 100:.2f} RUB) do not cover the total "
                    f"({total / 100:.2f} RUB)",
                    "underpaid",
                )
            keys = self._bind_key(rid, idempotency_key)
            outcome = await self.session.close(payments or None)
            self.receipt_outcomes[outcome.status] += 1
            if outcome.status == "pending":
                # Paid, the ККТ's answer lost or the ККТ gone: the next operation (and the
                # next start) runs recovery first, as the answer promises.
                self._recovery_pending = True
            await self._refresh_status()
            self._receipt_changed(ended=True)
            return self._answer_and_keep(outcome, keys)

    async def cancel(self) -> Mapping[str, Any]:
        async with self._operation():
            await self._recover_before("cancel")
            if self.session.receipt_id is None:
                raise ReceiptError("no receipt is open", "receipt-not-open")
            outcome = await self.session.cancel("cancelled-by-api")
            self.receipt_outcomes[outcome.status] += 1
            if outcome.status == "pending":
                self._recovery_pending = True  # as for close(): recovery before the next one
            await self._refresh_status()
            self._receipt_changed(ended=True)
            return self._receipt_answer(outcome, wanted="cancelled")

    async def current(self) -> Mapping[str, Any] | None:
        return self._view()

    async def lookup(self, receipt_id: str) -> Mapping[str, Any] | None:
        """What became of receipt ``receipt_id``, from the receipt index (None: never seen
        here). Takes no lock and does no device I/O: a screen may poll it during a close."""
        unavailable: FiscalError | None = None
        try:
            entry = self.session.journal.index.get(receipt_id)
        except FiscalError as exc:
            entry, unavailable = None, exc
        if entry is not None:
            return index_view(entry)
        current = self._view()
        if current is not None and current["id"] == receipt_id:
            # The index cannot be read, or missed its records (a write failed): the receipt
            # in flight is known all the same.
            return index_view(
                {
                    "id": receipt_id,
                    "kind": current["kind"],
                    "state": "closing" if current["state"] == "paid" else "open",
                    "total_kopecks": current["total_kopecks"],
                }
            )
        if unavailable is not None:
            raise ReceiptUnavailable(unavailable.message, unavailable.reason)
        return None

    # -- idempotent closes ----------------------------------------------------------------------

    def _replay(self, key: str, receipt_id: str | None) -> Mapping[str, Any] | None:
        """A close asked with ``key`` again: None when it is to run (the key is new, or its
        receipt is the one in flight), else the answer its receipt's close gave (returned,
        or raised as the refusal it was). A key used for another receipt is refused."""
        index = self.session.journal.index
        try:
            bound = index.receipt_of_key(key)
        except FiscalError as exc:
            raise ReceiptUnavailable(exc.message, exc.reason) from None
        if bound is None:
            return None
        current = self.session.receipt_id
        if receipt_id is not None and receipt_id != bound:
            raise ReceiptInputError(
                f"this Idempotency-Key was used to close receipt {bound}, not {receipt_id}: "
                "use a new key for each receipt",
                "idempotency-key-reused",
            )
        if bound == current:
            return None  # the close of the receipt in flight, asked again: it runs again
        try:
            entry = index.get(bound)
        except FiscalError as exc:
            raise ReceiptUnavailable(exc.message, exc.reason) from None
        state = "unknown" if entry is None else entry.get("state")
        if current is not None and receipt_id is None:
            raise ReceiptInputError(
                f"this Idempotency-Key was used to close receipt {bound} ({state}); receipt "
                f"{current} is open now: close it with a new key (GET /v1/receipts/{bound}, or "
                f'a close naming "receipt": "{bound}", tells what became of the other)',
                "idempotency-key-reused",
            )
        answer = None if entry is None else entry.get("answer")
        if answer is None:
            answer = _answer_from_index(bound, entry)
            if answer is None:
                raise ReceiptUnavailable(
                    f"receipt {bound} ({state}): its outcome is not settled yet"
                    + (
                        "; a technician must look at the ККТ"
                        if state == "unknown-needs-technician"
                        else "; markd registers it once the ККТ answers"
                    ),
                    "outcome-unknown",
                )
            self._keep_answer(bound, answer)
        return _replayed(answer)

    def _bind_key(self, rid: str, key: str | None) -> list[str]:
        """Journal that the close of ``rid`` is asked with ``key`` (before anything is done
        for it, so that a restart still knows); the receipt's keys."""
        index = self.session.journal.index
        try:
            entry = index.get(rid)
        except FiscalError:
            entry = None  # the journal still gets the key; the next start indexes it
        keys = list((entry or {}).get("keys") or [])
        if key is None or key in keys:
            return keys
        if len(keys) >= MAX_KEYS_PER_RECEIPT:
            raise ReceiptInputError(
                f"receipt {rid} was asked to close with {len(keys)} different Idempotency-Keys "
                "already; repeat one of them",
                "idempotency-key-limit",
            )
        self.session.journal.append("close-requested", rid, key=key)
        return [*keys, key]

    def _answer_and_keep(self, outcome: ReceiptOutcome, keys: list[str]) -> dict[str, Any]:
        """The close's answer (or refusal); a final one is journaled for the keys the close
        was asked with, so that asking again gives it back, after a restart too."""
        final = outcome.status in ("closed", "cancelled", "empty")
        try:
            answer = self._receipt_answer(outcome, wanted="closed")
        except ReceiptError as refusal:
            if keys and final and outcome.receipt_id is not None:
                self._keep_answer(outcome.receipt_id, _refusal_record(refusal))
            raise
        if keys and final and outcome.receipt_id is not None:
            self._keep_answer(outcome.receipt_id, {"receipt": answer})
        return answer

    def _keep_answer(self, rid: str, answer: dict[str, Any]) -> None:
        self.session.journal.append("close-answered", rid, answer=answer)

    def _keep_recovered_answers(self, report: RecoveryReport) -> None:
        """A receipt whose close was asked with a key and which recovery settled (the daemon
        stopped or died during the close): its answer is the one the close would have given."""
        index = self.session.journal.index
        for outcome in report.outcomes:
            rid = outcome.receipt_id
            if rid is None or outcome.status not in ("closed", "cancelled"):
                continue
            try:
                entry = index.get(rid)
            except FiscalError:
                continue
            if entry is None or not entry.get("keys") or entry.get("answer") is not None:
                continue
            if outcome.status == "cancelled":
                # Nothing was registered (the close never got as far as the payment, or every
                # unit was refused): said as a replayed close says it of any cancelled receipt.
                answer = _answer_from_index(rid, {"state": "cancelled", "reason": outcome.reason})
            else:
                answer = {"receipt": self._receipt_answer(outcome, wanted="closed")}
            if answer is not None:
                self._keep_answer(rid, answer)

    def status(self) -> Mapping[str, Any]:
        """The printer as last seen (no device I/O), the receipt in flight, the prices."""
        if self._closed or self._stopping:
            state = "stopped"
        elif self._device is None:
            state = "unreachable"
        else:
            state = "ready" if not self._device.problems() else "attention"
        view = self._view()
        return {
            "mode": self.mode,
            "url": self.config.fiscal.url,
            "state": state,
            "device": None if self._device is None else self._device.record(),
            "health_warnings": list(self._health),
            "checked_at": _iso(self._checked_at),
            "last_error": self._last_error,
            "queue_blocked": self._queue_blocked,
            "recovery_pending": self._recovery_pending,
            "receipt": None
            if view is None
            else {
                "id": view["id"],
                "kind": view["kind"],
                "state": view["state"],
                "units": len(view["units"]),
                "total_kopecks": view["total_kopecks"],
            },
            "catalog": None
            if self.catalog is None
            else {"path": self.catalog.path, "entries": len(self.catalog)},
            "use_mrp": self.use_mrp,
            "auto_shift": self.config.fiscal.auto_shift,
            "health_interval_s": self.config.fiscal.health_interval_s,
            "receipt_outcomes": dict(self.receipt_outcomes),
            "recoveries": dict(self.recoveries),
        }

    def status_text(self) -> str:
        """A few words for the service's one-line status."""
        words = f"sale {self.mode}"
        if self._queue_blocked:
            words += ", printer queue blocked"
        elif self._device is None:
            words += ", printer unreachable"
        elif self._device.problems():
            words += ", printer " + "/".join(self._device.problems())
        if self.receipt_open:
            count = len(self.session.units)
            words += f", receipt open ({count} unit{'' if count == 1 else 's'})"
        return words

    def _receipt_changed(self, *, ended: bool) -> None:
        if self.on_receipt_change is not None:
            self.on_receipt_change(ended)

    # -- helpers --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """One operation at a time (the session's receipt lock, held throughout); none once
        stopping (:class:`~markd.receipts.ReceiptUnavailable`)."""
        if self._stopping:
            raise _stopping()
        async with self.session.lock:
            if self._stopping:
                raise _stopping()
            yield

    async def _acquire_within(self, timeout_s: float) -> bool:
        """Take the receipt lock, waiting at most ``timeout_s``; False when the operation under
        way did not end in time. (``asyncio.timeout``, not ``wait_for``: the lock is taken in
        this task, which must be the one that releases it.)"""
        try:
            async with asyncio.timeout(timeout_s):
                await self.session.lock.acquire()
        except TimeoutError:
            return False
        return True

    async def _recover_before(self, operation: str) -> None:
        """Before ``operation``: when a receipt waits for the ККТ (a close or cancel left it
        pending, or the recovery at start did not finish), run the session's recovery first
        and journal that it did (``sale-recovery``). Nothing happens otherwise."""
        if not self._recovery_pending:
            return
        rid = self.session.receipt_id
        self._event(
            "sale-recovery",
            f"a receipt waits for the ККТ: its recovery runs before {operation}"
            + (f" (receipt {rid})" if rid else ""),
            priority="notice",
            mode=self.mode,
            operation=operation,
            receipt=rid,
        )
        await self._recover()

    async def _recover(self) -> RecoveryReport | None:
        try:
            report = await self.session.recover()
        except MarkdError as exc:
            self._recovery_pending = True
            self.recoveries["failed"] += 1
            self._note_error(exc.reason, exc.message)
            self._event(
                "sale-desk",
                f"recovery of the sale session did not finish: {exc.reason}: {exc.message}",
                priority="warning",
                mode=self.mode,
                action="recovery-failed",
                reason=exc.reason,
            )
            return None
        self._recovery_pending = report.pending
        self.last_recovery = report
        self._keep_recovered_answers(report)
        if report.actions or report.pending:
            self.recoveries["pending" if report.pending else "finished"] += 1
            done = "; ".join(
                f"receipt {a['receipt']}: {a['action']}"
                + (f" ({len(a['units'])} units)" if isinstance(a.get("units"), list) else "")
                for a in report.actions
            )
            self._event(
                "sale-desk",
                f"recovery: {done or 'nothing finished'}"
                + ("; a receipt waits for the ККТ" if report.pending else ""),
                priority="warning" if report.pending else "notice",
                mode=self.mode,
                action="recovered",
                pending="true" if report.pending else "false",
            )
        return report

    async def refresh_health(self, wait_s: float = 0.05) -> bool:
        """Read the ККТ's status now, unless an operation holds the receipt lock for longer
        than ``wait_s`` (a sale is never delayed for it; the next round tries again). True
        when the status was read (the device answering or not)."""
        if self._stopping or self._closed:
            return False
        if not await self._acquire_within(wait_s):
            return False
        try:
            await self._refresh_status()
        finally:
            self.session.lock.release()
        return True

    async def _refresh_status(self) -> None:
        try:
            self._device = await self.session.printer_status()
        except FiscalError as exc:
            self._device = None
            self._note_error(exc.reason, exc.message)
        self._checked_at = time.time()
        if self._device is not None:
            self._queue_blocked = False  # the device answered: nothing holds the queue
            self._journal_health(self._device.health_warnings(self.thresholds))

    def _journal_health(self, current: list[str]) -> None:
        """Journal each fiscal health warning when it appears and when it clears (domain.md
        §7.8): a warning once, not at every status read."""
        device = self._device
        assert device is not None
        health = device.health
        details = {
            "fn-expiring": f"the ФН's validity ends {health.fn_valid_until} "
            f"({health.fn_days_left} days left; warned below {self.thresholds.fn_days})",
            "unsent-old": f"the oldest document not sent to the ОФД is from "
            f"{health.unsent_oldest} ({health.unsent_oldest_days} days; the ККТ blocks at 30)",
            "shift-long": f"the shift has been open {health.shift_hours} h (since "
            f"{health.shift_opened_at}; receipts are refused after 24 h)",
        }
        for warning in current:
            if warning not in self._health:
                self._event(
                    "sale-desk",
                    f"fiscal health: {warning}: {details.get(warning, 'reported by the ККТ')}",
                    priority="warning",
                    mode=self.mode,
                    action="fiscal-health",
                    warning=warning,
                    state="raised",
                )
        for warning in self._health:
            if warning not in current:
                self._event(
                    "sale-desk",
                    f"fiscal health: {warning} cleared",
                    priority="notice",
                    mode=self.mode,
                    action="fiscal-health",
                    warning=warning,
                    state="cleared",
                )
        self._health = list(current)

    def _note_error(self, reason: str, message: str) -> None:
        self._last_error = {"reason": reason, "message": message, "at": _iso(time.time())}
        if reason == QUEUE_BLOCKED:
            self._queue_blocked = True

    def _view(self) -> dict[str, Any] | None:
        session = self.session
        rid = session.receipt_id
        if rid is None:
            return None
        positions = session.positions
        return {
            "id": rid,
            "kind": session.receipt_kind or "sell",
            "state": "paid" if session.receipt_paid else "open",
            "units": [p.record() for p in positions],
            "total_kopecks": sum(p.amount_kopecks for p in positions),
        }

    def _receipt_answer(self, outcome: ReceiptOutcome, *, wanted: str) -> dict[str, Any]:
        """A closed (or, for a cancel, cancelled) receipt as the API's answer; anything else
        is a refusal with the outcome's reason."""
        # Payments given to this close that were not used: say so, and which ones stand.
        ignored = ""
        if outcome.payments_ignored:
            used = ", ".join(f"{p.type} {p.amount_kopecks / 100:.2f}" for p in outcome.payments)
            ignored = (
                "; the payments given were NOT used: an earlier attempt's outcome is unknown, "
                f"so the receipt keeps its journaled payments ({used})"
            )
        if outcome.status == "closed" or outcome.status == wanted:
            record = outcome.record()
            return {
                "id": outcome.receipt_id,
                "status": outcome.status,
                "reason": outcome.reason,
                "document": record["receipt"],
                "store_ok": outcome.store_ok,
                "local_module": outcome.lm,
                "dropped": record["dropped"],
                "payments": record["payments"],
                "payments_ignored": outcome.payments_ignored,
                "adjustment": outcome.adjustment,
            }
        if outcome.status == "pending":
            raise ReceiptUnavailable(
                f"receipt {outcome.receipt_id}: the ККТ did not answer ({outcome.reason}); it is "
                "paid and will be registered once the ККТ answers (retried at the next operation "
                "and at start)" + ignored,
                outcome.reason,
            )
        if outcome.status == "failed":
            refusal = _refusal_for(outcome.reason)
            raise refusal(
                f"receipt {outcome.receipt_id} not registered: the ККТ refused ({outcome.reason}); "
                "it stays open: close it again (with corrected payments if they were refused) "
                "or cancel it" + ignored,
                outcome.reason,
            )
        if outcome.status == "empty":
            raise ReceiptError("the receipt had no units; it was dropped", "receipt-empty")
        raise ReceiptError(
            f"receipt {outcome.receipt_id} was {outcome.status}: {outcome.reason}", outcome.reason
        )

    def _desk_refusal(
        self,
        code: codes.MarkingCode,
        reason: str,
        message_ru: str,
        scanner: str,
        source: str = "session",
    ) -> UnitOutcome:
        from markd.fiscal.session import UnitOutcome

        outcome = UnitOutcome(
            "refused",
            reason,
            message_ru,
            code.ki,
            receipt_id=self.session.receipt_id,
            source=source,
        )
        self._unit_event(outcome, scanner, None)
        return outcome

    def _unit_event(self, outcome: UnitOutcome, scanner: str, quote: Quote | None) -> None:
        """``sale-unit`` (on the receipt) or ``sale-refused``, with the scanner's name; the КИ
        only, never the code."""
        price = None if quote is None else quote.price_kopecks
        if outcome.added:
            mark = outcome.position.mark if outcome.position is not None else None
            tag1265 = mark.industry.tag1265 if mark is not None else ""
            rub = f"{price / 100:.2f} RUB" if price is not None else "?"
            self._event(
                "sale-unit",
                f"{outcome.ki} from {scanner} added to receipt {outcome.receipt_id}: {rub} "
                f"({quote.source if quote else '-'}); ККТ: {outcome.reason}",
                ki=outcome.ki,
                scanner=scanner,
                receipt=outcome.receipt_id,
                unit=outcome.unit_id,
                price_kopecks=price,
                price_source=None if quote is None else quote.source,
                reason=outcome.reason,
                tag2106=None if outcome.validation is None else outcome.validation.tag2106,
                tag1265=tag1265 or None,
                mode=self.mode,
            )
            return
        self._event(
            "sale-refused",
            f"{outcome.ki} from {scanner} not sold: {outcome.reason} ({outcome.message_ru})",
            priority="warning" if outcome.source == "printer" else "notice",
            ki=outcome.ki,
            scanner=scanner,
            receipt=outcome.receipt_id,
            reason=outcome.reason,
            source=outcome.source,
            message_ru=outcome.message_ru,
            price_kopecks=price,
            mode=self.mode,
        )

    @passes_events_on
    def _event(self, kind: str, message: str, *, priority: str = "info", **fields: Any) -> None:
        if self.event_log is not None:
            self.event_log.event(kind, message, priority=priority, **fields)


def _stopping() -> ReceiptError:
    return ReceiptUnavailable("markd is stopping; try again once it is back", "service-stopping")


def _refusal_for(reason: str) -> type[ReceiptError]:
    """The ККТ's failure ``reason`` as a kind of refusal: not reached (try again later), or
    the ККТ refused (the receipt's state)."""
    return ReceiptUnavailable if reason in UNREACHABLE_REASONS else ReceiptError


def _unit_refusal(outcome: UnitOutcome) -> type[ReceiptError]:
    """A refused unit as a kind of refusal: the ККТ not reached, a position it cannot take
    (what was given), or anything else about the receipt or the code."""
    if outcome.source == "printer":
        return _refusal_for(outcome.reason)
    if outcome.reason == "bad-position":
        return ReceiptInputError
    return ReceiptError


#: The kinds of refusal a kept answer names, and back.
_REFUSAL_KINDS: dict[str, type[ReceiptError]] = {
    "input": ReceiptInputError,
    "unavailable": ReceiptUnavailable,
    "state": ReceiptError,
}


def _refusal_record(refusal: ReceiptError) -> dict[str, Any]:
    kind = next(k for k, cls in _REFUSAL_KINDS.items() if isinstance(refusal, cls))
    return {"refused": {"kind": kind, "reason": refusal.reason, "message": refusal.message}}


def _replayed(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """A kept answer given again: the receipt, or the refusal raised as it was."""
    refused = answer.get("refused")
    if isinstance(refused, Mapping):
        refusal = _REFUSAL_KINDS.get(str(refused.get("kind")), ReceiptError)
        raise refusal(str(refused.get("message", "")), str(refused.get("reason", "")))
    receipt = answer.get("receipt")
    return dict(receipt) if isinstance(receipt, Mapping) else {}


def _answer_from_index(rid: str, entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The answer of a close asked with a key whose receipt was settled without one being
    kept (the daemon died between journaling the outcome and keeping the answer): rebuilt from
    the receipt index. None while the receipt is not settled."""
    if entry is None:
        return None
    state = entry.get("state")
    if state == "registered":
        document = dict(entry.get("document") or {})
        return {
            "receipt": {
                "id": rid,
                "status": "closed",
                "reason": entry.get("reason") or "fiscalised",
                "document": document,
                "store_ok": entry.get("store_ok"),
                "local_module": None,
                "dropped": [],
                "payments": document.get("payments") or entry.get("payments") or [],
                "payments_ignored": False,
                "adjustment": None,
            }
        }
    if state == "cancelled":
        refusal = ReceiptError(
            f"receipt {rid} was cancelled: {entry.get('reason') or 'cancelled'}",
            "receipt-cancelled",
        )
        return _refusal_record(refusal)
    return None


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    text = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


__all__ = [
    "SaleDesk",
    "fiscal_settings",
]
