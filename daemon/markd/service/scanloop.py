"""The scan loop: one consumer of the service's queue, turning each scan into one verdict.

Scanners read in threads of their own and put :data:`~markd.scanners.ScannerEvent` items on an
asyncio queue; the service puts work that must run between two scans (a reload) on the same
queue as a :class:`LoopJob`. :class:`ScanLoop` takes them one at a time::

    scanner thread ─Scan─▶ queue ─▶ codes.parse ─▶ chain.decide ─▶ Verdict ─▶ Notifier ─▶ listeners
                                    └─ CodeError ─▶ parser verdict ──┘

Every scan ends in exactly one verdict. A scan that is not a code becomes a ``deny`` (or
``rescan``) verdict from the parser; even a bug while handling one scan becomes a ``deny``
with reason ``internal-error`` (and a ``service-error`` record); scans still queued when the
service stops get ``rescan`` (reason ``service-stopping``). A flood becomes a
``scan-overflow`` record (two when it outlasts the read that crossed the limit: one at once,
one with the whole count, ``ended=yes``, when it ends), an unplugged device a
``scanner-absent`` record. Nothing a scanner
sends stops the service.

A check asked through the control API (``POST /v1/check``, ``POST /v1/receipt/items``) is put
on the same queue as a :class:`QueuedCheck` and taken in its turn like a scan: a reload, which
swaps the store and the chain, runs between two checks and never under one, so it cannot turn
a check into an ``internal-error``.

Each scan's stages (queue, parse, store, each source, each listener) are timed; a scan slower
than ``[check] slow_scan_ms`` leaves a ``slow-scan`` record saying where its time went
(:mod:`markd.service.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from markd import codes
from markd.checks.chain import CheckChain, elapsed_ms
from markd.checks.record import CURRENT_SCAN
from markd.checks.stages import CURRENT_STAGES, stage
from markd.checks.verdict import CheckedCode, Verdict, parser_verdict
from markd.errors import CodeError
from markd.scanners import Scan, ScannerEvent, ScannerState, ScanOverflow
from markd.service.listeners import CheckedScan, Notifier, log_internal_error
from markd.service.tracing import SlowScanTracer

if TYPE_CHECKING:
    from markd.events import EventHub
    from markd.sale import SaleDesk
    from markd.service.health import Health
    from markd.systemd import EventLog

#: Deny text when handling a scan failed inside markd itself (a bug, not the customer's fault).
INTERNAL_ERROR_RU = "Ошибка проверки, продажа невозможна"
#: Rescan text for a scan still queued when the service was told to stop.
STOPPING_RU = "Проверка перезапускается, отсканируйте код ещё раз"

#: The sale price of a unit, for the chain's price rules (None: not known).
PriceOf = Callable[[codes.MarkingCode], int | None]


class LoopJob(Protocol):
    """Work the loop runs between two scans, never in the middle of one (a reload)."""

    async def run(self) -> None:
        """Do the work; a failure is the job's own to report."""
        ...

    def abandon(self) -> None:
        """The service stops before the job ran: answer whoever waits for it."""
        ...


class _StopSentinel:
    """Queued once the stop event fires, so the consumer needs to await only one thing."""


_STOP = _StopSentinel()
_SCANNER_EVENTS = (Scan, ScanOverflow, ScannerState)

QueueItem = ScannerEvent | LoopJob | _StopSentinel


class CheckParts(Protocol):
    """What the loop reads of the service at each scan: a reload changes them between two."""

    @property
    def chain(self) -> CheckChain | None: ...

    @property
    def codes_options(self) -> codes.CodesOptions: ...

    @property
    def sale_desk(self) -> SaleDesk | None: ...

    @property
    def slow_scan_ms(self) -> int:
        """``[check] slow_scan_ms``: a scan slower than this leaves a ``slow-scan`` record
        (0: none)."""
        ...


class QueuedCheck:
    """A check asked through the control API, waiting in the queue (a :class:`LoopJob`): the
    loop checks it like a scan when its turn comes and answers ``future`` with the verdict and
    the parsed code. Still queued when the service stops, it gets ``rescan`` as a queued scan
    does."""

    def __init__(
        self,
        scan_loop: ScanLoop,
        scan: Scan,
        price_kopecks: int | None,
        future: asyncio.Future[CheckedCode],
    ) -> None:
        self.scan_loop = scan_loop
        self.scan = scan
        self.price_kopecks = price_kopecks
        self.future = future

    async def run(self) -> None:
        checked = await self.scan_loop.on_scan_checked(
            self.scan, for_sale=False, price_kopecks=self.price_kopecks
        )
        if not self.future.done():  # the client may have gone meanwhile
            self.future.set_result(checked)

    def abandon(self) -> None:
        verdict = stopping_verdict(self.scan)
        self.scan_loop.notifier.notify(CheckedScan(verdict, for_sale=False))
        if not self.future.done():
            self.future.set_result(CheckedCode(verdict))


def stopping_verdict(scan: Scan) -> Verdict:
    """``rescan`` for a scan (or an API check) still queued when the service stops."""
    return Verdict(
        decision="rescan",
        reason="service-stopping",
        message_ru=STOPPING_RU,
        source="none",
        scanner=scan.scanner,
        latency_ms=elapsed_ms(scan.received),
    )


def fixed_price(price_kopecks: int) -> PriceOf:
    """A ``price_of`` for one unit whose price is known (the POS gave it)."""
    return lambda _code: price_kopecks


class ScanLoop:
    """The consumer of the service's queue (see the module docstring).

    :param parts: the chain, the parse options and the sale desk of the moment.
    :param notifier: where each verdict goes.
    :param event_log: for the scanner records and ``service-error``.
    :param events: the live event hub (a ``scan`` event precedes each verdict).
    :param health: told which event is in handling (the watchdog's stuck rule) and when a
        scanner came or went (the status line).
    :param clock: seconds, monotonic, the clock of ``Scan.received`` (tests pass their own).
    """

    def __init__(
        self,
        parts: CheckParts,
        notifier: Notifier,
        event_log: EventLog,
        events: EventHub,
        health: Health,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parts = parts
        self.notifier = notifier
        self.event_log = event_log
        self.events = events
        self.health = health
        #: Times the stages of each scan and journals the slow ones (:mod:`.tracing`).
        self.tracer = SlowScanTracer(event_log, clock=clock)
        #: The loop has answered its queue for the stop: nothing put on it now is taken.
        self.stopped = False

    async def run(self, queue: asyncio.Queue[QueueItem], stop: asyncio.Event) -> None:
        """Take items until ``stop`` is set; then answer what is still queued (scans get
        ``rescan``, jobs are abandoned). The item in handling when ``stop`` is set is
        finished first: the scan being checked gets its verdict."""

        async def relay_stop() -> None:
            await stop.wait()
            queue.put_nowait(_STOP)

        self.stopped = False
        watcher = asyncio.create_task(relay_stop(), name="markd-stop-watcher")
        self.tracer.watch_gc(True)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _StopSentinel) or stop.is_set():
                    self._answer_queued_on_stop(item, queue)
                    return
                with self.health.watching():
                    if isinstance(item, _SCANNER_EVENTS):
                        await self.handle(item)
                    else:
                        await item.run()
        finally:
            self.tracer.watch_gc(False)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def handle(self, event: ScannerEvent) -> None:
        """One event of a scanner: a scan is checked, the others are journaled."""
        if isinstance(event, Scan):
            await self.on_scan(event)
        elif isinstance(event, ScanOverflow):
            if event.reason == "bad-report":
                what = (
                    f"{event.dropped} bytes of reports the decoder could not read dropped "
                    "(a scanner in another mode than its URL says, or a faulty device?)"
                )
            elif event.ended:
                what = (
                    f"{event.dropped} bytes without a terminator dropped "
                    "(wrong terminator setting, baud rate or a stuck scanner?)"
                )
            else:
                # The flood goes on: say so now (the cashier scans again, a technician sees
                # it), and the record with ended=yes gives the whole count when it ends.
                what = (
                    f"{event.dropped} bytes without a terminator dropped so far, and the rest "
                    "up to the next terminator will be (wrong terminator setting, baud rate "
                    "or a stuck scanner?)"
                )
            self.event_log.event(
                "scan-overflow",
                f"scanner {event.scanner}: {what}",
                priority="warning",
                scanner=event.scanner,
                dropped=event.dropped,
                reason=event.reason,
                ended="yes" if event.ended else "no",
            )
        elif isinstance(event, ScannerState):
            kind = "scanner-present" if event.present else "scanner-absent"
            self.event_log.event(
                kind,
                f"scanner {event.scanner}: {event.detail}",
                priority="info" if event.present else "warning",
                scanner=event.scanner,
            )
            self.health.refresh_status()

    async def on_scan(
        self, scan: Scan, *, for_sale: bool = True, price_kopecks: int | None = None
    ) -> Verdict:
        """Check one scan and hand its verdict to the listeners; never raises for the scan.

        ``for_sale``: the scan is a unit offered for sale (from a scanner; in kiosk mode it is
        priced from the desk's price list and goes onto the receipt), not a question through
        the control API. ``price_kopecks``: the price the POS sells the unit at, for the price
        rules (a tobacco pack above its MRP …)."""
        checked = await self.on_scan_checked(scan, for_sale=for_sale, price_kopecks=price_kopecks)
        return checked.verdict

    async def on_scan_checked(
        self,
        scan: Scan,
        *,
        for_sale: bool = True,
        price_kopecks: int | None = None,
        context: Mapping[str, str] | None = None,
        chain: CheckChain | None = None,
        until: float | None = None,
    ) -> CheckedCode:
        """:meth:`on_scan`, answering with the code as it was parsed on the way (or the
        parser's error) beside the verdict: a unit sold through the control API is not
        parsed a second time. ``context``: fields for the verdict's journal record (the Mark
        Unit front's till, shift and receipt); ``chain``: a chain other than the service's
        (the ТС ПИоТ a trusted till names); ``until``: the caller's own deadline (monotonic), no
        service is waited for past it. A scan slower than ``[check] slow_scan_ms`` leaves a
        ``slow-scan`` record with the time of each stage."""
        trace = self.tracer.start(scan.received, self.parts.slow_scan_ms)
        taken_up = trace.clock() if trace is not None else 0.0
        token = CURRENT_STAGES.set(trace)
        try:
            checked = await self._check_and_notify(
                scan, for_sale, price_kopecks, context, chain, until
            )
        finally:
            CURRENT_STAGES.reset(token)
        if trace is not None:
            try:
                self.tracer.finish(trace, checked.verdict, scan.scanner, queue_until=taken_up)
            except Exception as exc:  # noqa: BLE001 - the verdict is out; tracing must not stop the loop
                log_internal_error(self.event_log, "tracing a slow scan", exc)
        return checked

    async def _check_and_notify(
        self,
        scan: Scan,
        for_sale: bool,
        price_kopecks: int | None,
        context: Mapping[str, str] | None = None,
        chain: CheckChain | None = None,
        until: float | None = None,
    ) -> CheckedCode:
        self.events.publish("scan", {"scanner": scan.scanner, "length": len(scan.data)})
        desk = self.parts.sale_desk
        # The sale price the chain judges price rules with (price-not-mrp …): the one the
        # caller gives (a unit the POS sells through the API), else the kiosk's price list.
        price_of: PriceOf | None = None
        if price_kopecks is not None:
            price_of = fixed_price(price_kopecks)
        elif for_sale and desk is not None and desk.kiosk:
            price_of = desk.price_of
        try:
            checked = await self.check(
                scan.data,
                scan.scanner,
                started=scan.received,
                price_of=price_of,
                chain=chain,
                until=until,
            )
        except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the till
            log_internal_error(self.event_log, f"checking a scan from {scan.scanner}", exc)
            verdict = Verdict(
                decision="deny",
                reason="internal-error",
                message_ru=INTERNAL_ERROR_RU,
                source="none",
                scanner=scan.scanner,
                latency_ms=elapsed_ms(scan.received),
            )
            checked = CheckedCode(verdict)
        self.notifier.notify(
            CheckedScan(checked.verdict, checked.code, for_sale=for_sale, context=context or {})
        )
        return checked

    async def check(
        self,
        data: bytes,
        scanner: str,
        *,
        started: float | None = None,
        price_of: PriceOf | None = None,
        chain: CheckChain | None = None,
        until: float | None = None,
    ) -> CheckedCode:
        """Decide on one framed unit: parse, run the chain; the verdict with the parsed code
        (or, when it did not parse, the parser's error). Never raises
        :class:`~markd.errors.CodeError`. ``price_of`` gives the sale price the chain judges
        price thresholds with; ``chain`` replaces the service's; ``until`` is the caller's own
        deadline (:meth:`CheckChain.decide`)."""
        chain = chain if chain is not None else self.parts.chain
        if chain is None:
            raise RuntimeError("the service is not started")
        try:
            with stage("parse"):
                code = codes.parse(data, self.parts.codes_options)
        except CodeError as err:
            verdict = parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started))
            return CheckedCode(verdict, error=err)
        price = None if price_of is None else price_of(code)
        token = CURRENT_SCAN.set(f"{scanner}:{code.ki}")
        try:
            with stage("chain"):
                verdict = await chain.decide(
                    code, scanner, started=started, price_kopecks=price, until=until
                )
        finally:
            CURRENT_SCAN.reset(token)
        return CheckedCode(verdict, code)

    def check_store_only(self, data: bytes, scanner: str, *, started: float | None) -> Verdict:
        """:meth:`check` without awaiting, for a service in store-only mode (its chain has no
        clients to wait for)."""
        chain = self.parts.chain
        if chain is None or chain.mode != "store-only":
            raise RuntimeError("the service is not started in store-only mode")
        try:
            # parse() takes the raw bytes and reports non-UTF-8 input itself.
            code = codes.parse(data, self.parts.codes_options)
        except CodeError as err:
            return parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started))
        return chain.decide_now(code, scanner, started=started)

    def _answer_queued_on_stop(self, first: QueueItem, queue: asyncio.Queue[QueueItem]) -> None:
        """On stop: scans still queued get ``rescan`` (every scan ends in one verdict, and the
        customer scans again once markd is back); pending jobs are abandoned."""
        self.stopped = True
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        for item in items:
            if isinstance(item, Scan):
                self.notifier.notify(CheckedScan(stopping_verdict(item)))
            elif not isinstance(item, (_StopSentinel, ScanOverflow, ScannerState)):
                item.abandon()
