"""The markd daemon's life cycle: :class:`Service` starts its parts, runs, reloads and stops.

The service owns the parts of a running daemon and their order; each job is a module of its
own in this package::

    wiring.py     the chain, the printer, the sale session and desk, from the configuration
    scanloop.py   the queue consumer: scan → parse → chain → one verdict
    listeners.py  where a verdict goes: journal, event stream, counts, verdict sink, sale desk
    metrics.py    the counts behind GET /metrics and the collector that reads them at scrape time
    reload.py     SIGHUP: the configuration read again and applied between two scans
    health.py     the health check, WATCHDOG=1 and the STATUS= line
    storesync.py  the periodic fleet sync in a child process

Start (:meth:`Service.run`): the store opens, the chain is built on it, the sale desk (with
``[sale] mode`` ``attendant`` or ``kiosk``) opens its printer and recovers a receipt an
earlier run left in flight, the scanners start, the control API listens, then ``READY=1``
goes out; after it, the chain's clients start their background work (the CDN host list, the
Local Module's status) and the fleet sync is scheduled. Start-up failures raise
(:class:`~markd.errors.StoreError`, :class:`~markd.errors.ScannerError` …); once ready,
:meth:`Service.run` only returns by being stopped.

Signals (when :meth:`Service.run` is asked to handle them, i.e. when it is the main program) only
set an event or queue a request; the work happens in the loop, between two scans:

* SIGTERM, SIGINT: the scan being checked gets its verdict, scans still queued get ``rescan``
  (reason ``service-stopping``), ``STOPPING=1`` goes out, the sale desk finishes the
  operation under way and parks the receipt in flight for the next start's recovery
  (:meth:`Service._before_stop`); then the fleet sync stops, the API closes, the chain
  closes (its clients end their background work and write what they keep, its pending cache
  writes land), and the scanners, the sale desk and the store close, in that order.
* SIGHUP: a reload (:mod:`markd.service.reload`): ``RELOADING=1``, then ``READY=1``.

Other signals keep their default action (a test can add a handler of its own: see
:mod:`markd.testing.hang`).

Health: with ``WatchdogSec=`` set, ``WATCHDOG=1`` goes out every half period after a passed
health check (:mod:`markd.service.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markd import __version__
from markd.checks.chain import CheckChain
from markd.checks.verdict import CheckedCode, Verdict
from markd.errors import MarkdError
from markd.events import EventHub, EventPublisher
from markd.scanners import Scan, Scanner, open_scanner
from markd.service.health import Health, store_status
from markd.service.listeners import (
    CountingListener,
    EventStreamListener,
    ExchangeJournal,
    JournalListener,
    Notifier,
    SaleDeskListener,
    SinkListener,
    VerdictListener,
    VerdictSink,
    log_internal_error,
)
from markd.service.metrics import (
    MetricsListener,
    StatusCollector,
    VerdictMetrics,
    exposition,
    exposition_in_turns,
    metrics_registry,
)
from markd.service.reload import Reloader, ReloadResult, ScannerChanges
from markd.service.scanloop import QueuedCheck, QueueItem, ScanLoop
from markd.service.storesync import SYNC_START_DELAY_S, StoreSync
from markd.service.wiring import build_chain, build_sale_desk, sale_local_module
from markd.store import Store
from markd.systemd import (
    RELOAD_STATUS_FILE,
    EventLog,
    LogBridge,
    notify,
    runtime_file,
    watchdog_interval,
)

if TYPE_CHECKING:
    from markd.api import ControlServer
    from markd.codes import CodesOptions
    from markd.config import Config
    from markd.fronts.mark_unit import MarkUnitServer
    from markd.receipts import ReceiptOperations
    from markd.sale import SaleDesk
    from markd.service.tills import ServiceTills

#: Longest wait at stop for a sale operation under way (a receipt being printed); below the
#: unit's ``TimeoutStopSec=30s``, and ``[fiscal] timeout_ms`` when that is shorter.
SALE_STOP_WAIT_S = 20.0


class Service:
    """The daemon. Build it from a :class:`~markd.config.Config` and ``await run()``.

    :param config: the validated configuration.
    :param event_log: where events go; default an :class:`EventLog` from ``[log]``.
    :param verdict_sink: called with the :class:`Verdict` of every scan (the demo and tests
        collect them). An exception in it is logged, not fatal.
    :param config_loader: reads the configuration again for a reload; default the files in
        ``config.sources``.
    """

    def __init__(
        self,
        config: Config,
        *,
        event_log: EventLog | None = None,
        verdict_sink: VerdictSink | None = None,
        config_loader: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.event_log = event_log or EventLog(target=config.log.target, level=config.log.level)
        #: Live events for the control API's streams: while the service runs, every event
        #: the log writes is also published, and the latest kept for clients that reconnect
        #: (see :mod:`markd.events`).
        self.events = EventHub(
            replay_events=config.api.replay_events, replay_bytes=config.api.replay_kib * 1024
        )
        self._publisher = EventPublisher(self.events, self.event_log)
        self.scanners: dict[str, Scanner] = {}
        self.store: Store | None = None
        #: Set once start-up is complete (store open, scanners started, READY=1 sent).
        self.ready = asyncio.Event()
        #: Wall-clock time start-up began (``uptime_s`` in the status).
        self.started_at = time.time()
        #: How scans are parsed (``[codes]``).
        self.codes_options: CodesOptions = config.codes_options()
        self._chain: CheckChain | None = None
        #: The periodic fleet sync, when ``[store] sync_url`` is set (created at start).
        self.store_sync: StoreSync | None = None
        #: Fleet syncs refused as untrusted by the syncs stopped so far (``GET /metrics``).
        self._sync_refusals = 0
        #: Fleet sync runs by result since start, across the syncs a reload restarts.
        self._sync_runs: Counter[str] = Counter()
        #: Delay range of the first fleet sync; tests set ``(0, 0)``.
        self.sync_start_delay_s = SYNC_START_DELAY_S
        #: The sale session behind the control API's receipt endpoints (None: no printer).
        self.receipts: ReceiptOperations | None = None
        #: The printer and sale session while ``[sale] mode`` is not ``off`` (also ``receipts``).
        self.sale_desk: SaleDesk | None = None
        self._desk_listener: SaleDeskListener | None = None
        #: The control API while the service runs with ``[api] enabled``.
        self.api: ControlServer | None = None
        #: The Mark Unit front for tills while it runs with ``[mark_unit] enabled``.
        self.mark_unit: MarkUnitServer | None = None
        #: The daemon as that front sees it: a reload waits for its checks under way.
        self._tills: ServiceTills | None = None
        #: Seconds between watchdog pings (half of ``WatchdogSec=``), None without a watchdog.
        self.watchdog_interval_s = watchdog_interval()
        #: Verdicts given since start, by decision (``allow``, ``deny``, ``rescan``).
        self.verdict_counts: Counter[str] = Counter()
        self.health = Health(self, self.event_log)
        #: markd's own counts for ``GET /metrics``, updated by a listener on the event loop.
        self.verdict_metrics = VerdictMetrics(scanner_names=lambda: self.config.scanners)
        #: Receipts closed or cancelled since start, by outcome; every sale desk counts here.
        self.receipt_outcomes: Counter[str] = Counter()
        #: Sale recoveries that had something to do, by result (every sale desk counts here).
        self.recoveries: Counter[str] = Counter()
        self._metrics_collector = StatusCollector(self.status_snapshot, self.verdict_metrics)
        self._metrics = metrics_registry(self._metrics_collector)
        listeners: list[VerdictListener] = [
            JournalListener(self.event_log),
            EventStreamListener(self._publisher),
            CountingListener(self.verdict_counts, self.health.refresh_status_soon),
            MetricsListener(self.verdict_metrics),
        ]
        if verdict_sink is not None:
            listeners.append(SinkListener(verdict_sink))
        #: Every verdict goes to these listeners; the sale desk joins while it is open.
        self.notifier = Notifier(listeners, on_error=self._internal_error)
        self.scan_loop = ScanLoop(self, self.notifier, self.event_log, self.events, self.health)
        self.reloader = Reloader(self, self.event_log, self.health, config_loader)
        self.reloader.status_path = runtime_file(RELOAD_STATUS_FILE)
        self._record_exchange = ExchangeJournal(self.event_log)
        #: The recorder of check exchanges, for chains built outside the service (the tills').
        self.record_exchange = self._record_exchange
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Scanner events and jobs for the scan loop, while the service runs.
        self._queue: asyncio.Queue[QueueItem] | None = None

    @property
    def chain(self) -> CheckChain | None:
        """The check chain while running; it owns the check services' clients and the
        daemon's one Local Module client (the sale desk's too)."""
        return self._chain

    @property
    def slow_scan_ms(self) -> int:
        """``[check] slow_scan_ms`` of the configuration in force (the scan loop reads it at
        each scan, so a reload applies it)."""
        return self.config.check.slow_scan_ms

    @property
    def reload_status_path(self) -> Path | None:
        """Where reload outcomes go for ``markd reload`` (None: nowhere; tests set a path)."""
        return self.reloader.status_path

    @reload_status_path.setter
    def reload_status_path(self, path: Path | None) -> None:
        self.reloader.status_path = path

    @property
    def reloads(self) -> int:
        """Reloads tried since start; the generation of the last :class:`ReloadResult`."""
        return self.reloader.generation

    # -- running ----------------------------------------------------------------------------------

    async def run(
        self, stop_event: asyncio.Event | None = None, *, handle_signals: bool = False
    ) -> None:
        """Run until ``stop_event`` is set (or SIGTERM/SIGINT with ``handle_signals``).

        With ``handle_signals``, SIGHUP reloads the configuration (:meth:`reload`).

        Raises :class:`~markd.errors.StoreError` or :class:`~markd.errors.ScannerError` when
        start-up fails; once ready, it only returns by being stopped.
        """
        loop = asyncio.get_running_loop()
        stop = stop_event or asyncio.Event()
        queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self._loop, self._queue = loop, queue
        installed: list[signal.Signals] = []
        if handle_signals:
            # The handlers only set the event or queue a request; the work runs in the loop.
            handlers: dict[signal.Signals, Callable[[], object]] = {
                signal.SIGTERM: stop.set,
                signal.SIGINT: stop.set,
                signal.SIGHUP: self.request_reload,
            }
            for signum, handler in handlers.items():
                loop.add_signal_handler(signum, handler)
                installed.append(signum)

        self.event_log.add_observer(self._publisher)
        bridge = LogBridge(self.event_log)
        markd_logger = logging.getLogger("markd")
        markd_logger.addHandler(bridge)
        markd_logger.propagate = False  # no second, bare copy on stderr
        if markd_logger.level == logging.NOTSET:
            markd_logger.setLevel(logging.INFO)
        housekeeping: asyncio.Task[None] | None = None
        fiscal_health: asyncio.Task[None] | None = None
        try:
            await self._start(loop, queue)
            housekeeping = asyncio.create_task(
                self.health.run(self.watchdog_interval_s), name="markd-housekeeping"
            )
            fiscal_health = asyncio.create_task(self._read_fiscal_health(), name="markd-fn")
            await self.scan_loop.run(queue, stop)
        finally:
            if fiscal_health is not None:  # no device I/O of its own during the stop
                fiscal_health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fiscal_health
            await self._stop()
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
            self.health.handling_since = None
            self._loop = self._queue = None
            for signum in installed:
                loop.remove_signal_handler(signum)
            markd_logger.removeHandler(bridge)
            markd_logger.propagate = True
            self.event_log.remove_observer(self._publisher)

    async def _start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.started_at = time.time()
        store_config = self.config.store
        self.store = Store.from_config(store_config)
        self._chain = self._build_chain(self.config, self.store)
        if self.config.sale.mode != "off":
            # Before READY=1 and before the first scan: a receipt an earlier run left in
            # flight is settled (cancelled or registered) before anything new is sold.
            await self.open_sale_desk(self.config)
        for name, scanner_config in self.config.scanners.items():
            scanner = open_scanner(name, scanner_config.url)
            self.scanners[name] = scanner
            scanner.start(loop, queue)
        if self.config.api.enabled:
            # Before READY=1: once systemd says the daemon is up, markctl can reach it.
            from markd.api import ControlServer

            # self: a ControlledService; [metrics] listen is one of its listeners.
            api = ControlServer(self, self.config.api, metrics=self.config.metrics)
            api.start()
            self.api = api
        if self.config.mark_unit.enabled:
            self.mark_unit = self._open_mark_unit()
        info = self.store.info()
        blocked = sum(info.counts.values())
        status = (
            f"ready: {len(self.scanners)} scanner(s), mode {self.config.check.mode}, "
            f"blocklist v{info.version} with {blocked} entries in {store_config.path}"
        )
        ready = ["READY=1", f"STATUS={self.health.status_for_ready()}"]
        notify(*ready, *(["WATCHDOG=1"] if self.watchdog_interval_s else []))
        self.reloader.write_status(ReloadResult(True, "started", 0))
        self.event_log.event(
            "service-started",
            f"markd {status}",
            mode=self.config.check.mode,
            scanners=",".join(self.scanners),
            store=store_config.path,
        )
        # The CDN host list (unless a fresh one was kept on disk) and the hosts' health, and
        # the Local Module's status, are fetched from now on: after READY=1, so the network
        # never delays the start, and the first scan finds a list (domain.md §3.2, §4.6).
        self._chain.start()
        self.start_store_sync()
        self.ready.set()

    def _open_mark_unit(self) -> MarkUnitServer:
        """Bind the Mark Unit front (``[mark_unit]``) before READY=1, as the control API is.
        Its settings are read at start: a reload that changes them needs a restart."""
        from markd.fronts.mark_unit import MarkUnitDesk, MarkUnitServer
        from markd.service.tills import ServiceTills

        self._tills = ServiceTills(self)
        desk = MarkUnitDesk(self._tills, self.config.mark_unit)
        server = MarkUnitServer(desk, self.config.mark_unit)
        server.start()
        return server

    async def _read_fiscal_health(self) -> None:
        """Every ``[fiscal] health_interval_s`` (read anew each round, so a reload applies),
        the sale desk reads the ККТ's status while no operation runs: the fiscal health
        warnings stay current on an idle kiosk. Never ends on an error of its own."""
        while True:
            interval = self.config.fiscal.health_interval_s
            await asyncio.sleep(interval if interval > 0 else 60.0)
            desk = self.sale_desk
            if interval <= 0 or desk is None:
                continue
            try:
                await desk.refresh_health()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                self._internal_error("reading the fiscal health", exc)

    async def _stop(self) -> None:
        """Everything the service started, stopped in order (see the module docstring)."""
        if self.ready.is_set():
            notify("STOPPING=1", "STATUS=stopping")
            self.event_log.event("service-stopping", "markd stopping")
            # Watched like a scan: a stop that hangs here stops the watchdog pings.
            self.health.handling_since = time.monotonic()
            try:
                await self._before_stop()
            except Exception as exc:  # noqa: BLE001 - stopping must go on
                self._internal_error("before-stop hook", exc)
        if self.store_sync is not None:
            await self.store_sync.stop()  # kept: what it did stays readable after the stop
        if self.mark_unit is not None:
            await self.mark_unit.close()
            self.mark_unit = None
        if self.api is not None:
            await self.api.close()
            self.api = None
        if self._chain is not None:
            # The clients end their background work (the CDN host list reaches its file) and
            # pending verdict-cache writes land, before the store closes.
            await self._chain.aclose()
        self.health.close()
        # Release devices first: a port left open blocks the next start (and the till).
        for scanner in self.scanners.values():
            try:
                scanner.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                self._internal_error(f"closing scanner {scanner.name}", exc)
        self.scanners.clear()
        if self.sale_desk is not None:
            try:
                self.sale_desk.shutdown()  # before the store: the session writes to it
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                self._internal_error("closing the printer", exc)
        if self.store is not None:
            self.store.close()

    async def _before_stop(self) -> None:
        """Runs once when the service stops (SIGTERM), after the last verdict and before the
        scanners, the chain and the store close: the sale desk lets the operation under way
        finish (bounded by :meth:`sale_stop_wait_s`, well within ``TimeoutStopSec=``) and
        parks the receipt in flight; the next start's recovery settles it."""
        desk = self.sale_desk
        if desk is not None and await desk.park(self.sale_stop_wait_s()):
            desk.shutdown()

    def _internal_error(self, what: str, exc: BaseException) -> None:
        log_internal_error(self.event_log, what, exc)

    # -- the chain and its clients --------------------------------------------------------------

    def _build_chain(self, config: Config, store: Store) -> CheckChain:
        """The chain ``config`` describes on ``store``, with the daemon's one Local Module
        client (asked by the chain in mode direct, given to the sale desk in every mode)."""
        chain = build_chain(config, store, recorder=self._record_exchange, sales=True)
        chain.observer = self.verdict_metrics.record_source
        return chain

    async def _swap_chain(self, chain: CheckChain | None) -> None:
        """``chain`` takes over: the sale desk reports to its Local Module client from now
        on, the old chain's clients end their work and close. Tills' checks under way on the
        old chain finish first (within its budget), and the chains kept for tills' own ТС
        ПИоТ addresses are retired, to be built again from the new settings."""
        old, self._chain = self._chain, chain
        desk = self.sale_desk
        if desk is not None:
            local_module = None if chain is None else chain.local_module
            desk.use_local_module(sale_local_module(desk.config, local_module))
        if self._tills is not None:
            await self._tills.retire(old)
        if old is not None:
            await old.aclose()

    async def replace_chain(self, new: Config) -> None:
        """A reload: a chain built from ``new`` on the same store takes over (with a new
        Local Module client, for the checks and the sale desk alike); the old one's clients
        finish and close. Raises (a secret missing …) before anything changes."""
        if self.store is None:  # a failed reopen left none: this reload opens one
            await self.reopen_store(new)
            return
        chain = self._build_chain(new, self.store)
        await self._swap_chain(chain)
        chain.start()

    async def reopen_store(self, new: Config) -> None:
        """A reload that changes ``[store]``: the store reopened and a chain built on it, with
        no sale operation running (the session writes sold units to the store, and gets the
        reopened one)."""
        desk = self.sale_desk
        if desk is None:
            await self._replace_store_and_chain(new)
            return
        async with desk.paused():
            try:
                await self._replace_store_and_chain(new)
            finally:
                desk.session.store = self.store

    async def _replace_store_and_chain(self, new: Config) -> None:
        """Reopen the store with the new ``[store]`` settings and build the chain on it; on
        failure, put the old store and chain back and raise."""
        old_config = self.config
        await self._swap_chain(None)
        if self.store is not None:
            self.store.close()  # LMDB forbids opening one environment twice in a process
        store: Store | None = None
        chain: CheckChain | None = None
        try:
            store = Store.from_config(new.store)
            chain = self._build_chain(new, store)
            self.store = store
        except BaseException:
            if store is not None:
                store.close()
            reopened: Store | None = None
            try:
                reopened = Store.from_config(old_config.store)
                chain = self._build_chain(old_config, reopened)
                self.store = reopened
            except Exception as back:  # noqa: BLE001 - the first failure is the one raised
                if reopened is not None:
                    reopened.close()
                # No store and no chain: every scan is refused (fail closed), the health check
                # reports "the store is not open" (the watchdog restarts markd), and the next
                # reload opens a store; the reload's own error goes on up.
                self.store = None
                chain = None
                log_internal_error(self.event_log, "reopening the previous store", back)
            raise
        finally:
            if chain is not None:
                await self._swap_chain(chain)
                chain.start()

    # -- scanners -------------------------------------------------------------------------------

    def apply_scanners(self, new: Config) -> ScannerChanges:
        """A reload: keep the scanners whose URL did not change, close the removed and changed
        ones, open the new ones."""
        assert self._loop is not None and self._queue is not None
        wanted = {name: scanner.url for name, scanner in new.scanners.items()}
        running = {name: scanner.url.text for name, scanner in self.scanners.items()}
        kept = [name for name in wanted if running.get(name) == wanted[name]]
        closed = [name for name in running if wanted.get(name) != running[name]]
        for name in closed:
            scanner = self.scanners.pop(name)
            try:
                scanner.close()
            except Exception as exc:  # noqa: BLE001 - keep going with the others
                self._internal_error(f"closing scanner {name}", exc)
        started: list[str] = []
        problems: list[str] = []
        for name, url in wanted.items():
            if name in kept:
                continue
            try:
                scanner = open_scanner(name, url)
                scanner.start(self._loop, self._queue)  # type: ignore[arg-type]
            except MarkdError as exc:
                problems.append(f"scanner {name} not started: {exc}")
                self._internal_error(f"starting scanner {name}", exc)
                continue
            self.scanners[name] = scanner
            started.append(name)
        return ScannerChanges(kept, started, [n for n in closed if n not in wanted], problems)

    # -- the sale desk --------------------------------------------------------------------------

    async def open_sale_desk(self, config: Config) -> SaleDesk:
        """Open the printer and session ``config`` names, recover, and serve receipts with it;
        from now on the desk hears every verdict (kiosk mode sells the allowed units)."""
        local_module = None if self._chain is None else self._chain.local_module
        desk = build_sale_desk(config, self.store, self.event_log, local_module)
        # The service's counters, before the start: its recovery counts too.
        desk.receipt_outcomes = self.receipt_outcomes
        desk.recoveries = self.recoveries
        try:
            await desk.start()
        except BaseException:
            desk.shutdown()
            raise
        desk.on_receipt_change = self._receipt_changed
        self.sale_desk = desk
        self.receipts = desk
        self._desk_listener = SaleDeskListener(desk)
        self.notifier.add_listener(self._desk_listener)
        return desk

    def _receipt_changed(self, ended: bool) -> None:
        """``STATUS=`` follows the receipt in flight: at once when one ended (closed or
        cancelled: ``systemctl status`` must not show it open for another half minute), within
        the second for a unit or an opened receipt (one datagram per scan at most)."""
        if ended:
            self.health.refresh_status()
        else:
            self.health.refresh_status_soon()

    def drop_sale_desk(self) -> None:
        """Forget the sale desk (a reload retired it): no printer, no receipts."""
        if self._desk_listener is not None:
            self.notifier.remove_listener(self._desk_listener)
            self._desk_listener = None
        self.sale_desk = None
        self.receipts = None

    def sale_stop_wait_s(self) -> float:
        return min(self.config.fiscal.timeout_ms / 1000, SALE_STOP_WAIT_S)

    # -- the fleet sync -------------------------------------------------------------------------

    def start_store_sync(self) -> None:
        """Schedule the fleet sync when ``[store] sync_url`` is set and none runs."""
        if self.store_sync is None and self.config.store.sync_url:
            self.store_sync = StoreSync(
                self.config, self.event_log, start_delay_s=self.sync_start_delay_s
            )
            # A reload that changed the sync starts a new one: the count runs on.
            self.store_sync.refusals = self._sync_refusals
            self.store_sync.runs = self._sync_runs  # shared: the counts run on too
            self.store_sync.start()

    async def stop_store_sync(self) -> None:
        """End the fleet sync for good (a reload that changes it starts a new one)."""
        if self.store_sync is not None:
            await self.store_sync.stop()
            self._sync_refusals = self.store_sync.refusals
            self.store_sync = None

    # -- control API and tools ------------------------------------------------------------------

    async def submit(
        self, data: bytes, scanner: str, *, price_kopecks: int | None = None
    ) -> Verdict:
        """Decide on a code that came another way than a scanner (``POST /v1/check``) exactly
        like a scan: ``scan`` event, check, journaled verdict, ``verdict`` event. It is not
        given to the verdict sink: a check through the API is a question, not a unit for sale.
        ``price_kopecks``: the price the unit is sold at (``POST /v1/receipt/items``), so the
        price rules (a tobacco pack above its MRP …) judge it as they do a kiosk's scan.

        The check waits its turn in the scan loop's queue, as a scan does (a
        :class:`~markd.service.scanloop.QueuedCheck`): a reload runs between two checks, never
        under one."""
        checked = await self._queued_check(data, scanner, price_kopecks)
        return checked.verdict

    async def check_unit(self, data: bytes, scanner: str, *, price_kopecks: int) -> CheckedCode:
        """:meth:`submit` for a unit the POS sells (``POST /v1/receipt/items``): the verdict
        with the code parsed on the way (or the parser's error), so the sale never parses it
        again. Queued like :meth:`submit`."""
        return await self._queued_check(data, scanner, price_kopecks)

    async def _queued_check(
        self, data: bytes, scanner: str, price_kopecks: int | None
    ) -> CheckedCode:
        scan = Scan(scanner, data, time.monotonic())
        if self._queue is None or self._loop is None:
            # Not running (a test driving the parts by hand): nothing to wait behind.
            return await self.scan_loop.on_scan_checked(
                scan, for_sale=False, price_kopecks=price_kopecks
            )
        future: asyncio.Future[CheckedCode] = self._loop.create_future()
        job = QueuedCheck(self.scan_loop, scan, price_kopecks, future)
        if self.scan_loop.stopped:
            job.abandon()  # the loop answered its queue for the stop: rescan, as a late scan
        else:
            self._queue.put_nowait(job)
        return await future

    def check(self, data: bytes, scanner: str, *, started: float | None = None) -> Verdict:
        """Decide on one framed unit with the store-only chain, without awaiting (tests); the
        verdict goes to no listener."""
        return self.scan_loop.check_store_only(data, scanner, started=started)

    def status_snapshot(self) -> dict[str, Any]:
        """The daemon's state for ``GET /v1/status`` (the API adds its own ``api`` part):
        service, scanners, check sources, store freshness, printer. Cheap: no device or
        network I/O (the sources report what they last saw; the store its metadata)."""
        scanners = {
            name: {
                "url": str(scanner.url),
                "present": scanner.present,
                "reconnects": scanner.reconnects,
            }
            for name, scanner in self.scanners.items()
        }
        sources = {} if self._chain is None else self._chain.status()
        receipts = self.receipts
        store = store_status(self.store, self.config.store.path)
        sync = self.store_sync
        if sync is not None and store is not None:
            store = {
                **store,
                "sync_refusals": sync.refusals,
                "sync_runs": dict(sync.runs),
                "sync_finished_at": sync.finished_at,
                "sync_last_result": sync.last_result,
            }
        if sync is not None and sync.refused is not None:
            store = {**(store or {}), "sync_refused": dict(sync.refused)}
        snapshot = {
            "service": {
                "state": "ready" if self.ready.is_set() else "starting",
                "version": __version__,
                "pid": os.getpid(),
                "mode": self.config.check.mode,
                "uptime_s": round(time.time() - self.started_at, 1),
            },
            "scanners": scanners,
            "sources": sources,
            "store": store,
            "printer": None if receipts is None else dict(receipts.status()),
        }
        if self.mark_unit is not None:  # only while the front runs
            snapshot["mark_unit"] = self.mark_unit.status()
        return snapshot

    def metrics(self, api: Mapping[str, Any] | None = None) -> bytes:
        """``GET /metrics``: the Prometheus text format, read from :meth:`status_snapshot`,
        the verdict counts and ``api`` (the control API's connections and refusals) at this
        moment (:mod:`markd.service.metrics`); no device or network I/O."""
        # The scrape runs on the event loop from start to end: nothing else sees this.
        self._metrics_collector.api = api
        try:
            return exposition(self._metrics)
        finally:
            self._metrics_collector.api = None

    async def metrics_in_turns(self, api: Mapping[str, Any] | None = None) -> bytes:
        """:meth:`metrics` as the control API serves it: the values read in one go, the text
        written a few families per turn of the event loop, so that a scan arriving during a
        scrape is not held up by all of it (:func:`~markd.service.metrics.exposition_in_turns`)."""
        # Every value is read before the first turn is given away (exposition_in_turns
        # collects first), so ``api`` is the collector's only while this scrape reads it.
        self._metrics_collector.api = api
        try:
            return await exposition_in_turns(self._metrics, lambda: asyncio.sleep(0))
        finally:
            self._metrics_collector.api = None

    def request_reload(self) -> bool:
        """Queue a reload, as SIGHUP does; False when the service is not running. Several
        requests before the reload starts make one reload."""
        if self._queue is None:
            return False
        if not self.reloader.queued:
            self._queue.put_nowait(self.reloader.request())
        return True

    async def reload(self) -> ReloadResult:
        """Re-read the configuration and apply it between two scans; return the outcome."""
        if self._queue is None or self._loop is None:
            raise RuntimeError("the service is not running")
        future: asyncio.Future[ReloadResult] = self._loop.create_future()
        self._queue.put_nowait(self.reloader.request(future))
        return await future

    def health_problem(self) -> str | None:
        """None when the daemon is healthy, else what is wrong (:meth:`Health.problem`)."""
        return self.health.problem()

    def status_line(self) -> str:
        """The one line of ``STATUS=`` (:meth:`Health.status_line`)."""
        return self.health.status_line()
