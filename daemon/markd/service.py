"""The markd daemon: wiring and life cycle.

:class:`Service` opens the store, starts every configured scanner, tells systemd it is ready,
then turns each framed scan into a :class:`~markd.checks.verdict.Verdict`::

    scanner thread ─Scan─▶ queue ─▶ decode ─▶ codes.parse ─▶ chain.decide ─▶ event log
                                              └─ CodeError ─▶ parser verdict ─┘  └▶ verdict_sink

One asyncio loop owns the flow; scanners read in their own threads and hand events over through
the queue. Nothing a scanner sends can stop the service: a scan that is not a code becomes a
``deny`` (or ``rescan``) verdict, a flood becomes a ``scan-overflow`` record, an unplugged device
a ``scanner-absent`` record, and even a bug while handling one scan becomes a ``deny`` with
reason ``internal-error``. Every scan ends in exactly one verdict.

Fleet sync: with ``[store] sync_url`` set, :class:`StoreSync` runs ``markctl store sync`` in a
child process shortly after start and then every ``[store] sync_interval_s`` (see its docstring).

Sales: with ``[sale] mode`` ``attendant`` or ``kiosk``, a :class:`~markd.sale.SaleDesk` owns the
fiscal printer and the sale session from start-up (recovery of an interrupted receipt runs
before ``READY=1``) and serves the control API's receipts; in mode ``kiosk`` every scan's
verdict is also handed to it, and an allowed unit goes onto the open receipt. See
:mod:`markd.sale`.

Signals (when :meth:`Service.run` is asked to handle them, i.e. when it is the main program) only
set an event or queue a request; the work happens in the loop, between two scans:

* SIGTERM, SIGINT: the scan being checked gets its verdict, scans still queued get ``rescan``
  (reason ``service-stopping``), ``STOPPING=1`` goes out, :meth:`Service._before_stop` runs (the
  sale desk finishes the operation under way and parks the receipt in flight for the next
  start's recovery), then the scanners, the chain, the printer and the store are closed.
* SIGHUP: :meth:`Service.reload` re-reads the same configuration file(s) as at start and applies
  them without a restart: ``RELOADING=1``, then ``READY=1``. Unchanged scanners keep running, the
  check chain is rebuilt, the sale desk and its open receipt stay (a new ``[fiscal]`` or
  ``[sale] mode`` waits until no receipt is open); a configuration that does not load is refused
  with a ``reload-refused``
  record and the old one stays in force. The outcome also goes to ``$RUNTIME_DIRECTORY/reload.json``
  for ``markd reload`` (the unit's ``ExecReload=``), so that ``systemctl reload`` waits for it.

Health: with ``WatchdogSec=`` set, a task of the loop pings ``WATCHDOG=1`` every half period, but
only after :meth:`Service.health_problem` found the loop, the store and the scanner readers
working; a hung loop or a broken store stops the pings and systemd restarts the daemon. The
same task keeps the one-line ``STATUS=`` (``systemctl status markd``) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markd import __version__, codes
from markd.checks.chain import CheckChain, StoreOnlyChain, elapsed_ms
from markd.checks.factory import build_chain
from markd.checks.record import CURRENT_SCAN, Exchange
from markd.checks.verdict import Verdict, parser_verdict
from markd.errors import CodeError, ConfigError, MarkdError
from markd.events import EventHub, PublishingEventLog
from markd.scanners import Scan, Scanner, ScannerEvent, ScannerState, ScanOverflow, open_scanner
from markd.store import Store
from markd.systemd import (
    RELOAD_STATUS_FILE,
    EventLog,
    LogBridge,
    notify,
    priority_value,
    reloading_states,
    runtime_file,
    watchdog_interval,
)

if TYPE_CHECKING:
    from markd.api import ControlServer
    from markd.config import Config
    from markd.receipts import ReceiptOperations
    from markd.sale import SaleDesk

VerdictSink = Callable[[Verdict], None]

#: Deny text when handling a scan failed inside markd itself (a bug, not the customer's fault).
INTERNAL_ERROR_RU = "Ошибка проверки, продажа невозможна"
#: Rescan text for a scan still queued when the service was told to stop.
STOPPING_RU = "Проверка перезапускается, отсканируйте код ещё раз"

#: Test-only hook: with ``MARKD_TEST_HOOKS=1`` in the daemon's environment, SIGUSR2 blocks the
#: event loop for :data:`TEST_HANG_S` seconds, as a bug that hangs it would. The system test uses
#: it to prove that the watchdog restarts a hung daemon. Never set it on a till.
TEST_HOOKS_ENV = "MARKD_TEST_HOOKS"
TEST_HANG_S = 3600.0
#: A scan (or reload) still being handled this long after the longest check budget means the
#: loop is stuck on it: the chain answers within its budget plus 50 ms.
STUCK_GRACE_S = 30.0
#: Without a watchdog, the status line is refreshed this often (the blocklist's age moves on).
STATUS_REFRESH_S = 30.0
#: Shortest interval between two STATUS= updates caused by verdict counts alone.
STATUS_MIN_INTERVAL_S = 1.0
#: Top-level sections a reload applies; a change anywhere else takes effect at the next start
#: (the reload record says so). ``[log] level`` applies too, ``[log] target`` does not.
RELOADABLE_SECTIONS = frozenset(
    {"store", "codes", "terminal", "check", "scanners", "fiscal", "sale"}
)
#: Longest wait at stop for a sale operation under way (a receipt being printed); below the
#: unit's ``TimeoutStopSec=30s``, and ``[fiscal] timeout_ms`` when that is shorter.
SALE_STOP_WAIT_S = 20.0


#: The first fleet sync runs this many seconds after start, drawn at random: a fleet that boots
#: together after a power cut does not hit the file server in the same second.
SYNC_START_DELAY_S = (5.0, 60.0)
#: A sync (download and import of a 10-million-entry snapshot on a slow link included) that has
#: not finished after this long is killed; the next one resumes its download.
SYNC_TIMEOUT_S = 1800.0
#: How long a sync child gets to exit after SIGTERM before it is killed.
SYNC_STOP_GRACE_S = 5.0


class StoreSync:
    """The daemon's periodic fleet sync (``[store] sync_url``, ``[store] sync_interval_s``).

    Each run is ``python -m markd.cli.markctl store sync URL --store PATH --json --progress
    none`` in a **child process**: a snapshot import may grow the LMDB map, which must not happen
    under the daemon's own readers, while LMDB lets the daemon keep reading from another
    process and see the new version at its next lookup, without a restart. One run at a time
    (each waits for the previous one), the first after a random delay in ``start_delay_s``,
    then every ``sync_interval_s`` ± 10 %; a run longer than ``timeout_s`` is killed (the
    download resumes next time). Each run logs ``store-sync`` (with the versions) or
    ``store-sync-failed`` (warning, with the reason); the URL in the log never carries the
    user, password or query string.

    :meth:`stop` cancels the schedule and ends a running child (SIGTERM, then SIGKILL): LMDB
    keeps the store at the old or the new version whatever moment it is killed at.
    """

    def __init__(
        self,
        config: Config,
        event_log: EventLog,
        *,
        start_delay_s: tuple[float, float] = SYNC_START_DELAY_S,
        timeout_s: float = SYNC_TIMEOUT_S,
        python: str = sys.executable,
    ) -> None:
        from markd.store.fleet import redact_url

        self.url = config.store.sync_url
        self.safe_url = redact_url(self.url)
        self.store_path = config.store.path
        self.interval_s = float(config.store.sync_interval_s)
        self.config_file = _main_config_file(config)
        self.event_log = event_log
        self.start_delay_s = start_delay_s
        self.timeout_s = timeout_s
        self.python = python
        #: The running child, if any (tests look at it).
        self.process: asyncio.subprocess.Process | None = None
        #: Results of finished runs: the sync's JSON (``SyncResult``) or ``{"error": …}``.
        self.results: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        """The child's command line. The URL is not in it (it may hold credentials, and any
        local user can read a command line); the child gets it from ``MARKD_SYNC_URL``."""
        command = [self.python, "-m", "markd.cli.markctl", "store", "sync"]
        command += ["--store", self.store_path, "--json", "--progress", "none"]
        if self.config_file is not None:
            command += ["--config", self.config_file]
        return command

    def start(self) -> None:
        """Schedule the runs on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._schedule(), name="markd-store-sync")

    async def stop(self) -> None:
        """Cancel the schedule and end a running sync child."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _schedule(self) -> None:
        delay = random.uniform(*self.start_delay_s)
        while True:
            await asyncio.sleep(delay)
            await self.run_once()
            delay = self.interval_s * random.uniform(0.9, 1.1)

    async def run_once(self) -> dict[str, Any]:
        """One sync in a child process; log and return its result."""
        started = time.monotonic()
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                env={**os.environ, "MARKD_SYNC_URL": self.url},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return self._failed("sync-failed", f"cannot start {self.python}: {exc.strerror}")
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), self.timeout_s)
        except TimeoutError:
            await self._end_child()
            return self._failed(
                "sync-timeout", f"not finished after {self.timeout_s:g} s; stopped (resumes next)"
            )
        finally:
            if self.process.returncode is None:  # cancelled: the service is stopping
                await self._end_child()
            returncode = self.process.returncode
            self.process = None
        data = _last_json_line(out)
        if returncode == 0 and data is not None and "error" not in data:
            self.results.append(data)
            self.event_log.event(
                "store-sync",
                f"blocklist v{data.get('after_version')} from {self.safe_url} "
                f"({data.get('action')}; was v{data.get('before_version')})",
                url=self.safe_url,
                action=data.get("action"),
                version=data.get("after_version"),
                previous_version=data.get("before_version"),
                deltas=data.get("deltas_applied"),
                downloaded_bytes=data.get("downloaded_bytes"),
                seconds=round(time.monotonic() - started, 3),
            )
            return data
        error = (data or {}).get("error") or {}
        reason = str(error.get("reason") or "sync-failed")
        message = str(error.get("message") or "")
        if not message:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            message = lines[-1][:300] if lines else f"markctl exited with status {returncode}"
        return self._failed(reason, message, exit_status=returncode)

    def _failed(self, reason: str, message: str, **fields: Any) -> dict[str, Any]:
        from markd.store.fleet import hide_secrets

        message = hide_secrets(message, self.url)
        result = {"error": {"reason": reason, "message": message}}
        self.results.append(result)
        self.event_log.event(
            "store-sync-failed",
            f"blocklist sync from {self.safe_url} failed: {message}",
            priority="warning",
            url=self.safe_url,
            reason=reason,
            **fields,
        )
        return result

    async def _end_child(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), SYNC_STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _main_config_file(config: Config) -> str | None:
    """The main configuration file the daemon read (its drop-ins come along), for the child."""
    from markd.config import DROPIN_SUFFIX

    for source in config.sources:
        if not Path(source).parent.name.endswith(DROPIN_SUFFIX):
            return source
    return None


def _last_json_line(output: bytes) -> dict[str, Any] | None:
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.strip():
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


class _StopSentinel:
    """Queued after the stop event fires, so the consumer needs to await only one thing."""


_STOP = _StopSentinel()


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload: applied (``ok``) or refused, and a line saying what happened.
    ``generation`` counts reloads since start (0 is the start itself)."""

    ok: bool
    message: str
    generation: int


class _ReloadRequest:
    """Queued by SIGHUP (no future) or :meth:`Service.reload` (a future for the result), so a
    reload runs between two scans, never in the middle of one."""

    def __init__(self, future: asyncio.Future[ReloadResult] | None = None) -> None:
        self.future = future


_QueueItem = ScannerEvent | _StopSentinel | _ReloadRequest


def _reader_alive(scanner: Scanner) -> bool:
    """Whether a started scanner's reader thread still runs. The base class restarts a reader
    that failed, so a dead thread on an open scanner is a bug or a wedged driver, never the
    normal "device absent" state (that is ``scanner.present is False``, with the thread alive
    and retrying)."""
    thread = getattr(scanner, "_thread", None)
    return thread is None or thread.is_alive()


def _fixed_price(price_kopecks: int) -> Callable[[codes.MarkingCode], int | None]:
    """A ``price_of`` for one unit whose price is known (the POS gave it)."""
    return lambda _code: price_kopecks


def _age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} d"


class Service:
    """The daemon. Build it from a :class:`~markd.config.Config` and ``await run()``.

    :param config: the validated configuration.
    :param event_log: where events go; default an :class:`EventLog` from ``[log]``.
    :param verdict_sink: called with every :class:`Verdict` (the demo and tests collect them;
        later the control API and the sale session). An exception in it is logged, not fatal.
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
        #: Reads the configuration again for a reload; default: the files in ``config.sources``.
        self.config_loader = config_loader
        #: Live events for the control API's streams: every event logged is also published.
        self.events = EventHub()
        self.event_log = PublishingEventLog(
            event_log or EventLog(target=config.log.target, level=config.log.level), self.events
        )
        self.verdict_sink = verdict_sink
        self.scanners: dict[str, Scanner] = {}
        self.store: Store | None = None
        #: Set once start-up is complete (store open, scanners started, READY=1 sent).
        self.ready = asyncio.Event()
        #: Wall-clock time start-up began (``uptime_s`` in the status).
        self.started_at = time.time()
        self._codes_options = config.codes_options()
        self._chain: StoreOnlyChain | CheckChain | None = None
        #: The periodic fleet sync, when ``[store] sync_url`` is set (created at start).
        self.store_sync: StoreSync | None = None
        #: Background tasks of the chain's clients (the Local Module status poller).
        self._background: list[asyncio.Future[None]] = []
        #: Delay range of the first fleet sync; tests set ``(0, 0)``.
        self.sync_start_delay_s = SYNC_START_DELAY_S
        #: The sale session behind the control API's receipt endpoints (None: no printer).
        self.receipts: ReceiptOperations | None = None
        #: The printer and sale session while ``[sale] mode`` is not ``off`` (also ``receipts``).
        self.sale_desk: SaleDesk | None = None
        #: The control API while the service runs with ``[api] enabled``.
        self.api: ControlServer | None = None
        # -- reload, watchdog, status (see the module docstring) --
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_QueueItem] | None = None
        self._reload_queued = False
        #: Reloads tried since start; the generation of the last :class:`ReloadResult`.
        self.reloads = 0
        #: Where reload outcomes go for ``markd reload`` (None: nowhere; tests set a path).
        self.reload_status_path = runtime_file(RELOAD_STATUS_FILE)
        #: Seconds between watchdog pings (half of ``WatchdogSec=``), None without a watchdog.
        self.watchdog_interval_s = watchdog_interval()
        #: The monotonic time the consumer started on the event it is handling, if any.
        self._handling_since: float | None = None
        self._healthy = True
        self._last_status = ""
        self._status_sent_at = 0.0
        self._status_timer: asyncio.TimerHandle | None = None
        #: Verdicts given since start, by decision (``allow``, ``deny``, ``rescan``).
        self.verdict_counts: Counter[str] = Counter()

    async def run(
        self, stop_event: asyncio.Event | None = None, *, handle_signals: bool = False
    ) -> None:
        """Run until ``stop_event`` is set (or SIGTERM/SIGINT with ``handle_signals``).

        With ``handle_signals``, SIGHUP reloads the configuration (:meth:`reload`), and with
        ``MARKD_TEST_HOOKS=1`` in the environment SIGUSR2 hangs the loop (test-only, see
        :data:`TEST_HOOKS_ENV`).

        Raises :class:`~markd.errors.StoreError` or :class:`~markd.errors.ScannerError` when
        start-up fails; once ready, it only returns by being stopped.
        """
        loop = asyncio.get_running_loop()
        stop = stop_event or asyncio.Event()
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._loop, self._queue = loop, queue
        installed: list[signal.Signals] = []
        if handle_signals:
            # The handlers only set the event or queue a request; the work runs in the loop.
            handlers: dict[signal.Signals, Callable[[], object]] = {
                signal.SIGTERM: stop.set,
                signal.SIGINT: stop.set,
                signal.SIGHUP: self.request_reload,
            }
            if os.environ.get(TEST_HOOKS_ENV) == "1":
                handlers[signal.SIGUSR2] = self._test_hang
            for signum, handler in handlers.items():
                loop.add_signal_handler(signum, handler)
                installed.append(signum)

        async def relay_stop() -> None:
            await stop.wait()
            queue.put_nowait(_STOP)

        watcher = asyncio.create_task(relay_stop(), name="markd-stop-watcher")
        bridge = LogBridge(self.event_log)
        markd_logger = logging.getLogger("markd")
        markd_logger.addHandler(bridge)
        markd_logger.propagate = False  # no second, bare copy on stderr
        if markd_logger.level == logging.NOTSET:
            markd_logger.setLevel(logging.INFO)
        housekeeping: asyncio.Task[None] | None = None
        try:
            await self._start(loop, queue)  # type: ignore[arg-type]
            housekeeping = asyncio.create_task(self._housekeeping(), name="markd-housekeeping")
            while True:
                item = await queue.get()
                if isinstance(item, _StopSentinel) or stop.is_set():
                    self._answer_queued_on_stop(item, queue)
                    break
                self._handling_since = time.monotonic()
                try:
                    if isinstance(item, _ReloadRequest):
                        await self._serve_reload(item)
                    else:
                        await self._handle(item)
                finally:
                    self._handling_since = None
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self.ready.is_set():
                notify("STOPPING=1", "STATUS=stopping")
                self.event_log.event("service-stopping", "markd stopping")
                # Watched like a scan: a stop that hangs here stops the watchdog pings.
                self._handling_since = time.monotonic()
                try:
                    await self._before_stop()
                except Exception as exc:  # noqa: BLE001 - stopping must go on
                    self._internal_error("before-stop hook", exc)
            if self.store_sync is not None:
                await self.store_sync.stop()
            if self.api is not None:
                await self.api.close()
                self.api = None
            for background in self._background:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await background
            self._background.clear()
            await _aclose_clients(self._chain)  # the CDN host list reaches its file
            self._shutdown()
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
            self._handling_since = None
            self._loop = self._queue = None
            for signum in installed:
                loop.remove_signal_handler(signum)
            markd_logger.removeHandler(bridge)
            markd_logger.propagate = True

    # -- start-up and shut-down -----------------------------------------------------------------

    async def _start(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ScannerEvent]
    ) -> None:
        self.started_at = time.time()
        store_config = self.config.store
        self.store = Store.from_config(store_config)
        self._chain = build_chain(self.config, self.store, recorder=self._record_exchange)
        if self.config.sale.mode != "off":
            # Before READY=1 and before the first scan: a receipt an earlier run left in
            # flight is settled (cancelled or registered) before anything new is sold.
            await self._open_sale_desk(self.config)
        for name, scanner_config in self.config.scanners.items():
            scanner = open_scanner(name, scanner_config.url)
            self.scanners[name] = scanner
            scanner.start(loop, queue)
        if self.config.api.enabled:
            # Before READY=1: once systemd says the daemon is up, markctl can reach it.
            from markd.api import ControlServer

            api = ControlServer(self, self.config.api)  # self: a ControlledService
            api.start()
            self.api = api
        info = self.store.info()
        blocked = sum(info.counts.values())
        status = (
            f"ready: {len(self.scanners)} scanner(s), mode {self.config.check.mode}, "
            f"blocklist v{info.version} with {blocked} entries in {store_config.path}"
        )
        self._last_status = self.status_line()
        ready = ["READY=1", f"STATUS={self._last_status}"]
        notify(*ready, *(["WATCHDOG=1"] if self.watchdog_interval_s else []))
        self._write_reload_status(ReloadResult(True, "started", 0))
        self.event_log.event(
            "service-started",
            f"markd {status}",
            mode=self.config.check.mode,
            scanners=",".join(self.scanners),
            store=store_config.path,
        )
        self._start_background()
        self._start_store_sync()
        self.ready.set()

    def _start_background(self) -> None:
        online = getattr(self._chain, "online", None)
        if online is not None:
            # The CDN host list (unless a fresh one was kept on disk) and the hosts' health are
            # fetched now, after READY=1: the network never delays the start, and the first
            # scan finds a list (domain.md §3.2).
            online.start()
        poller = getattr(getattr(self._chain, "local_module", None), "run_status_poller", None)
        if poller is not None:
            # The Local Module's state is polled in the background, so a check never waits on
            # a module known to be down (domain.md §4.6).
            self._background.append(asyncio.ensure_future(poller()))

    async def _stop_background(self) -> None:
        for background in self._background:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
        self._background.clear()

    def _start_store_sync(self) -> None:
        if self.config.store.sync_url:
            self.store_sync = StoreSync(
                self.config, self.event_log, start_delay_s=self.sync_start_delay_s
            )
            self.store_sync.start()

    def _shutdown(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
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
        if isinstance(self._chain, CheckChain):
            self._chain.close()  # pending verdict-cache writes land before the store closes
        if self.store is not None:
            self.store.close()

    # -- events ---------------------------------------------------------------------------------

    async def _handle(self, event: ScannerEvent) -> None:
        if isinstance(event, Scan):
            await self._on_scan(event)
        elif isinstance(event, ScanOverflow):
            if event.reason == "bad-report":
                what = (
                    f"{event.dropped} bytes of reports the decoder could not read dropped "
                    "(a scanner in another mode than its URL says, or a faulty device?)"
                )
            else:
                what = (
                    f"{event.dropped} bytes without a terminator dropped "
                    "(wrong terminator setting, baud rate or a stuck scanner?)"
                )
            self.event_log.event(
                "scan-overflow",
                f"scanner {event.scanner}: {what}",
                priority="warning",
                scanner=event.scanner,
                dropped=event.dropped,
                reason=event.reason,
            )
        elif isinstance(event, ScannerState):
            kind = "scanner-present" if event.present else "scanner-absent"
            self.event_log.event(
                kind,
                f"scanner {event.scanner}: {event.detail}",
                priority="info" if event.present else "warning",
                scanner=event.scanner,
            )
            self._update_status()

    async def _on_scan(
        self, scan: Scan, *, to_sink: bool = True, price_kopecks: int | None = None
    ) -> Verdict:
        self.events.publish("scan", {"scanner": scan.scanner, "length": len(scan.data)})
        # Kiosk: the scan is a unit for sale (not so a question through POST /v1/check).
        kiosk = self.sale_desk if to_sink and self.sale_desk and self.sale_desk.kiosk else None
        code: codes.MarkingCode | None = None
        # The sale price the chain judges price rules with (price-not-mrp …): the one the
        # caller gives (a unit the POS sells through the API), else the kiosk's price list.
        price_of: Callable[[codes.MarkingCode], int | None] | None = None
        if price_kopecks is not None:
            price_of = _fixed_price(price_kopecks)
        elif kiosk is not None:
            price_of = kiosk.price_of
        try:
            verdict, code = await self._check_scan(
                scan.data, scan.scanner, started=scan.received, price_of=price_of
            )
        except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the till
            self._internal_error(f"checking a scan from {scan.scanner}", exc)
            verdict = Verdict(
                decision="deny",
                reason="internal-error",
                message_ru=INTERNAL_ERROR_RU,
                source="none",
                scanner=scan.scanner,
                latency_ms=elapsed_ms(scan.received),
            )
        self.event_log.verdict(verdict)
        self._count_verdict(verdict)
        if to_sink and self.verdict_sink is not None:
            try:
                self.verdict_sink(verdict)
            except Exception as exc:  # noqa: BLE001 - a sink bug is logged, checks go on
                self._internal_error("verdict sink", exc)
        if kiosk is not None and code is not None:
            kiosk.take(verdict, code)  # allowed units onto the receipt; the loop does not wait
        return verdict

    # -- control API ----------------------------------------------------------------------------

    async def submit(
        self, data: bytes, scanner: str, *, price_kopecks: int | None = None
    ) -> Verdict:
        """Decide on a code that came another way than a scanner (``POST /v1/check``) exactly
        like a scan: ``scan`` event, check, journaled verdict, ``verdict`` event. It is not
        given to the verdict sink: a check through the API is a question, not a unit for sale.
        ``price_kopecks``: the price the unit is sold at (``POST /v1/receipt/items``), so the
        price rules (a tobacco pack above its MRP …) judge it as they do a kiosk's scan."""
        return await self._on_scan(
            Scan(scanner, data, time.monotonic()), to_sink=False, price_kopecks=price_kopecks
        )

    def status_snapshot(self) -> dict[str, Any]:
        """The daemon's state for ``GET /v1/status`` (the API adds its own ``api`` part):
        service, scanners, check sources, store freshness, printer. Cheap: no device or
        network I/O (the sources report what they last saw; the store its metadata)."""
        scanners = {
            name: {"url": str(scanner.url), "present": scanner.present}
            for name, scanner in self.scanners.items()
        }
        sources: dict[str, Any] = {}
        for name in ("online", "local_module", "tspiot"):
            client = getattr(self._chain, name, None)
            if client is not None and hasattr(client, "status"):
                sources[name] = client.status()
        receipts = self.receipts
        return {
            "service": {
                "state": "ready" if self.ready.is_set() else "starting",
                "version": __version__,
                "pid": os.getpid(),
                "mode": self.config.check.mode,
                "uptime_s": round(time.time() - self.started_at, 1),
            },
            "scanners": scanners,
            "sources": sources,
            "store": _store_status(self.store, self.config.store.path),
            "printer": None if receipts is None else dict(receipts.status()),
        }

    @property
    def chain(self) -> StoreOnlyChain | CheckChain | None:
        """The check chain while running."""
        return self._chain

    def check(self, data: bytes, scanner: str, *, started: float | None = None) -> Verdict:
        """Decide on one framed unit with the store-only chain (synchronous; tests and tools).
        The running service uses :meth:`check_async`, which serves every mode."""
        if not isinstance(self._chain, StoreOnlyChain):
            raise RuntimeError("the service is not started in store-only mode")
        try:
            # parse() takes the raw bytes and reports non-UTF-8 input itself.
            code = codes.parse(data, self._codes_options)
        except CodeError as err:
            return parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started))
        return self._chain.decide(code, scanner, started=started)

    async def check_async(
        self,
        data: bytes,
        scanner: str,
        *,
        started: float | None = None,
        price_kopecks: int | None = None,
    ) -> Verdict:
        """Decide on one framed unit: decode, parse, run the chain. Never raises CodeError.
        ``price_kopecks``: the sale price, when known, for the price rules."""
        price_of = None if price_kopecks is None else _fixed_price(price_kopecks)
        verdict, _ = await self._check_scan(data, scanner, started=started, price_of=price_of)
        return verdict

    async def _check_scan(
        self,
        data: bytes,
        scanner: str,
        *,
        started: float | None = None,
        price_of: Callable[[codes.MarkingCode], int | None] | None = None,
    ) -> tuple[Verdict, codes.MarkingCode | None]:
        """:meth:`check_async`, also returning the parsed code (None when it did not parse).
        ``price_of`` gives the sale price the chain judges price thresholds with (kiosk)."""
        chain = self._chain
        if chain is None:
            raise RuntimeError("the service is not started")
        try:
            code = codes.parse(data, self._codes_options)
        except CodeError as err:
            return parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started)), None
        if isinstance(chain, StoreOnlyChain):
            return chain.decide(code, scanner, started=started), code
        price = None if price_of is None else price_of(code)
        token = CURRENT_SCAN.set(f"{scanner}:{code.ki}")
        try:
            return await chain.decide(code, scanner, started=started, price_kopecks=price), code
        finally:
            CURRENT_SCAN.reset(token)

    def _record_exchange(self, exchange: Exchange) -> None:
        """Every request to a check service and its answer, redacted, in the journal."""
        exchange.scan_id = exchange.scan_id or CURRENT_SCAN.get()
        status = exchange.status if exchange.status is not None else "no answer"
        self.event_log.event(
            "check-exchange",
            f"{exchange.source} {exchange.method} {exchange.url} → {status} in "
            f"{exchange.latency_ms:.1f} ms" + (f" ({exchange.error})" if exchange.error else ""),
            priority="info" if exchange.status == 200 else "notice",
            source=exchange.source,
            url=exchange.url,
            http_status=exchange.status,
            latency_ms=f"{exchange.latency_ms:.1f}",
            request=exchange.request,
            response=exchange.response,
            scan=exchange.scan_id,
        )

    def _update_status(self) -> None:
        """Send ``STATUS=`` when the one-line summary changed (``systemctl status`` shows it)."""
        if not self.ready.is_set():
            return
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self._status_sent_at = time.monotonic()
            notify(f"STATUS={line}")

    def status_line(self) -> str:
        """One line for ``systemctl status``: health, mode, scanners, blocklist age, verdicts.

        e.g. ``ready; mode direct; scanners front ok, side absent; blocklist v12 synced 3 h ago;
        verdicts 41 allow, 2 deny, 1 rescan``.
        """
        state = "ready" if self._healthy else "UNHEALTHY (see journalctl -u markd)"
        parts = [state, f"mode {self.config.check.mode}"]
        if self.scanners:
            states = {True: "ok", False: "absent", None: "opening"}
            parts.append(
                "scanners "
                + ", ".join(f"{n} {states[s.present]}" for n, s in sorted(self.scanners.items()))
            )
        else:
            parts.append("no scanners")
        if self.store is not None:
            try:
                info = self.store.info()
            except Exception:  # noqa: BLE001 - the health check reports the cause
                parts.append("store unreadable")
            else:
                if info.synced_at is None:
                    parts.append(f"blocklist v{info.version} never synced")
                else:
                    age = max(0.0, time.time() - info.synced_at)
                    parts.append(f"blocklist v{info.version} synced {_age_text(age)} ago")
        if self.sale_desk is not None:
            parts.append(self.sale_desk.status_text())
        counts = self.verdict_counts
        parts.append(
            f"verdicts {counts['allow']} allow, {counts['deny']} deny, {counts['rescan']} rescan"
        )
        return "; ".join(parts)

    def _count_verdict(self, verdict: Verdict) -> None:
        self.verdict_counts[verdict.decision] += 1
        # The counts change with every scan: at most one STATUS= a second for them (a busy
        # till would otherwise send the service manager a datagram per scan), the last one
        # sent when the second is up.
        wait = self._status_sent_at + STATUS_MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._update_status()
        elif self._status_timer is None:
            loop = asyncio.get_running_loop()
            self._status_timer = loop.call_later(wait, self._deferred_status)

    def _deferred_status(self) -> None:
        self._status_timer = None
        self._update_status()

    def _internal_error(self, what: str, exc: BaseException) -> None:
        # Type and message only: a traceback could hold a local with the full code.
        self.event_log.event(
            "service-error",
            f"{what} failed: {type(exc).__name__}: {exc}",
            priority="error",
            error=type(exc).__name__,
        )

    # -- the sale side -------------------------------------------------------------------------

    async def _open_sale_desk(self, config: Config) -> SaleDesk:
        """Open the printer and session ``config`` names, recover, and serve receipts with it."""
        from markd.sale import SaleDesk

        desk = SaleDesk.from_config(config, self.store, self.event_log)
        try:
            await desk.start()
        except BaseException:
            desk.shutdown()
            raise
        self.sale_desk = desk
        self.receipts = desk
        return desk

    def _sale_stop_wait_s(self) -> float:
        return min(self.config.fiscal.timeout_ms / 1000, SALE_STOP_WAIT_S)

    async def _before_stop(self) -> None:
        """Runs once when the service stops (SIGTERM), after the last verdict and before the
        scanners, the chain and the store close: the sale desk lets the operation under way
        finish (bounded by :meth:`_sale_stop_wait_s`, well within ``TimeoutStopSec=``) and
        parks the receipt in flight; the next start's recovery settles it."""
        desk = self.sale_desk
        if desk is not None and await desk.park(self._sale_stop_wait_s()):
            desk.shutdown()

    async def _before_reload(self, new_config: Config) -> None:
        """Runs on a reload once ``new_config`` has loaded, before anything is applied. The sale
        desk is handled by :meth:`_reload_sale` once the store and the chain took the new
        configuration, so that a refused reload never touches the printer."""

    async def _reload_sale(self, new: Config) -> tuple[str | None, str | None]:
        """Apply ``[fiscal]`` and ``[sale]`` on a reload; (summary, problem), either may be None.

        The desk and its receipt stay when ``[fiscal]`` and ``[sale] mode`` did not change (the
        price list, ``use_mrp``, the store and the Local Module client are taken at once).
        When they did change, the desk is replaced only while no receipt is in flight;
        otherwise that part is refused and applies at a reload once the receipt is closed or
        cancelled. An open receipt is never dropped by a reload.
        """
        from markd.sale import fiscal_settings

        desk = self.sale_desk
        if desk is None and new.sale.mode == "off":
            return None, None
        previous = None if desk is None else desk.config
        if desk is not None:
            try:
                await desk.apply(new, self.store, self._sale_stop_wait_s())
            except MarkdError as exc:
                return None, f"sale settings not applied: {exc}"
            if desk.settings == fiscal_settings(new):
                return None, None
            if not await desk.retire(self._sale_stop_wait_s()):
                return None, (
                    f"[fiscal] / [sale] mode not applied: receipt {desk.session.receipt_id} is "
                    "in flight and stays on the running printer; reload again once it is "
                    "closed or cancelled"
                )
            self.sale_desk = None
            self.receipts = None
        if new.sale.mode == "off":
            return "sale mode off: printer closed", None
        try:
            desk = await self._open_sale_desk(new)
        except MarkdError as exc:
            problem = f"sale desk not opened with the new settings: {exc}"
            if previous is not None:
                try:
                    await self._open_sale_desk(previous)
                except MarkdError as again:
                    problem += f"; the previous printer did not reopen either: {again}"
                else:
                    problem += "; the previous printer settings stay in force"
            return None, problem
        return f"sale mode {desk.mode} on printer {new.fiscal.url}", None

    # -- reload (SIGHUP) ------------------------------------------------------------------------

    def request_reload(self) -> bool:
        """Queue a reload, as SIGHUP does; False when the service is not running. Several
        requests before the reload starts make one reload."""
        if self._queue is None:
            return False
        if not self._reload_queued:
            self._reload_queued = True
            self._queue.put_nowait(_ReloadRequest())
        return True

    async def reload(self) -> ReloadResult:
        """Re-read the configuration and apply it between two scans; return the outcome."""
        if self._queue is None or self._loop is None:
            raise RuntimeError("the service is not running")
        future: asyncio.Future[ReloadResult] = self._loop.create_future()
        self._queue.put_nowait(_ReloadRequest(future))
        return await future

    async def _serve_reload(self, request: _ReloadRequest) -> None:
        if request.future is None:
            self._reload_queued = False  # a SIGHUP from now on asks for another reload
        self.reloads += 1
        notify(*reloading_states(), "STATUS=reloading the configuration")
        try:
            ok, message = await self._apply_reload()
        except Exception as exc:  # noqa: BLE001 - a bug while reloading must not stop the till
            self._internal_error("reloading the configuration", exc)
            ok, message = False, f"reload failed: {type(exc).__name__}: {exc}"
        result = ReloadResult(ok, message, self.reloads)
        self._write_reload_status(result)
        self._last_status = self.status_line()
        notify("READY=1", f"STATUS={self._last_status}")
        if request.future is not None and not request.future.done():
            request.future.set_result(result)

    def _load_new_config(self) -> Config:
        if self.config_loader is not None:
            return self.config_loader()
        from markd import config as config_module

        main = _main_config_file(self.config)
        if main is None:
            raise ConfigError("no configuration file to re-read: markd started on defaults")
        return config_module.load(main)

    def _refuse_reload(self, problems: list[str]) -> tuple[bool, str]:
        first = problems[0] if problems else "unknown problem"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"new configuration refused, the running one stays in force: {first}{more}"
        self.event_log.event(
            "reload-refused",
            message,
            priority="error",
            problems=" | ".join(problems),
            generation=self.reloads,
        )
        return False, message

    async def _apply_reload(self) -> tuple[bool, str]:
        """Load the configuration again and apply it; (applied, what happened)."""
        try:
            new = self._load_new_config()
        except ConfigError as exc:
            return self._refuse_reload(exc.problems)
        await self._before_reload(new)
        old = self.config
        assert self.store is not None and self._loop is not None and self._queue is not None

        # The store and the chain first: a missing secret or a store that does not open refuses
        # the whole reload before any scanner is touched.
        store_changed = _store_settings(new) != _store_settings(old)
        try:
            if store_changed:
                await self._replace_store_and_chain_paused(new)
            else:
                chain = build_chain(new, self.store, recorder=self._record_exchange)
                await self._replace_chain(chain)
        except MarkdError as exc:
            return self._refuse_reload(getattr(exc, "problems", None) or [str(exc)])

        kept, started, closed, problems = self._apply_scanners(new)
        sale_summary, sale_problem = await self._reload_sale(new)
        if sale_problem is not None:
            problems.append(sale_problem)
        sync_changed = (new.store.sync_url, new.store.sync_interval_s) != (
            old.store.sync_url,
            old.store.sync_interval_s,
        )
        if store_changed or sync_changed:
            if self.store_sync is not None:
                await self.store_sync.stop()
                self.store_sync = None
        self._codes_options = new.codes_options()
        inner_log = getattr(self.event_log, "inner", self.event_log)
        inner_log.level = priority_value(new.log.level)
        self.config = new
        if self.store_sync is None:
            self._start_store_sync()

        later = [
            f"[{name}]"
            for name in _section_names(new)
            if name not in RELOADABLE_SECTIONS
            and name != "log"
            and getattr(new, name) != getattr(old, name)
        ]
        if new.log.target != old.log.target:
            later.append("[log] target")
        summary = (
            f"configuration reloaded from {', '.join(new.sources) or 'defaults'}: mode "
            f"{new.check.mode}; scanners kept {', '.join(kept) or '-'}, started "
            f"{', '.join(started) or '-'}, closed {', '.join(closed) or '-'}"
        )
        if store_changed:
            summary += f"; store reopened at {new.store.path}"
        if sale_summary:
            summary += f"; {sale_summary}"
        elif self.sale_desk is not None and self.sale_desk.receipt_open:
            summary += f"; receipt {self.sale_desk.session.receipt_id} kept open"
        if later:
            summary += f"; takes effect at the next start: {', '.join(later)}"
        if problems:
            summary += "; " + "; ".join(problems)
        self.event_log.event(
            "service-reloaded",
            summary,
            priority="warning" if problems else "notice",
            generation=self.reloads,
            mode=new.check.mode,
            scanners_kept=",".join(kept),
            scanners_started=",".join(started),
            scanners_closed=",".join(closed),
            store_reopened="true" if store_changed else None,
            restart_needed=",".join(later) or None,
        )
        return not problems, summary

    async def _replace_chain(self, chain: StoreOnlyChain | CheckChain) -> None:
        old, self._chain = self._chain, chain
        await self._stop_background()
        _close_chain(old)
        await _aclose_clients(old)
        self._start_background()

    async def _replace_store_and_chain_paused(self, new: Config) -> None:
        """:meth:`_replace_store_and_chain` with no sale operation running: the session
        writes sold units to the store, and gets the reopened one."""
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
        await self._stop_background()
        _close_chain(self._chain)
        await _aclose_clients(self._chain)
        self._chain = None
        assert self.store is not None
        self.store.close()  # LMDB forbids opening one environment twice in a process
        store: Store | None = None
        try:
            store = Store.from_config(new.store)
            self._chain = build_chain(new, store, recorder=self._record_exchange)
            self.store = store
        except BaseException:
            if store is not None:
                store.close()
            self.store = Store.from_config(old_config.store)
            self._chain = build_chain(old_config, self.store, recorder=self._record_exchange)
            raise
        finally:
            self._start_background()

    def _apply_scanners(self, new: Config) -> tuple[list[str], list[str], list[str], list[str]]:
        """Keep the scanners whose URL did not change, close the removed and changed ones, open
        the new ones. Returns (kept, started, closed, problems)."""
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
        return kept, started, [n for n in closed if n not in wanted], problems

    def _write_reload_status(self, result: ReloadResult) -> None:
        path = self.reload_status_path
        if path is None:
            return
        data = {
            "pid": os.getpid(),
            "generation": result.generation,
            "ok": result.ok,
            "message": result.message,
        }
        try:
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(temporary, path)  # a reader sees the old outcome or the new, never half
        except OSError:
            pass  # markd reload then times out and says so; the reload itself stands

    def _answer_queued_on_stop(self, first: _QueueItem, queue: asyncio.Queue[_QueueItem]) -> None:
        """On stop: scans still queued get ``rescan`` (every scan ends in one verdict, and the
        customer scans again once markd is back); pending reload requests get a refusal."""
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        for item in items:
            if isinstance(item, Scan):
                verdict = Verdict(
                    decision="rescan",
                    reason="service-stopping",
                    message_ru=STOPPING_RU,
                    source="none",
                    scanner=item.scanner,
                    latency_ms=elapsed_ms(item.received),
                )
                self.event_log.verdict(verdict)
                self._count_verdict(verdict)
                if self.verdict_sink is not None:
                    try:
                        self.verdict_sink(verdict)
                    except Exception as exc:  # noqa: BLE001 - logged, stopping goes on
                        self._internal_error("verdict sink", exc)
            elif isinstance(item, _ReloadRequest) and item.future is not None:
                if not item.future.done():
                    item.future.set_result(ReloadResult(False, "markd is stopping", self.reloads))

    # -- health and watchdog --------------------------------------------------------------------

    def health_problem(self) -> str | None:
        """None when the daemon is healthy, else what is wrong, for the journal.

        Checked before each watchdog ping: the loop (this runs in it, and no event has been in
        handling for longer than the longest check budget plus :data:`STUCK_GRACE_S`), the store
        (a read transaction works) and the scanners (every reader thread alive; an *absent*
        device is a state the reader handles, not a failure).
        """
        since = self._handling_since
        if since is not None:
            busy = time.monotonic() - since
            if busy > self._stuck_after_s():
                return f"one event has been in handling for {busy:.0f} s; the loop is stuck"
        if self.store is None:
            return "the store is not open"
        try:
            self.store.info()
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            return f"the store cannot be read: {type(exc).__name__}: {exc}"
        for name, scanner in self.scanners.items():
            if not _reader_alive(scanner):
                return f"the reader thread of scanner {name} has stopped"
        return None

    def _stuck_after_s(self) -> float:
        check = self.config.check
        budget_ms = max(
            check.online_timeout_ms + check.local_module_timeout_ms, check.tspiot_timeout_ms
        )
        return budget_ms / 1000 + STUCK_GRACE_S

    async def _housekeeping(self) -> None:
        """Ping the watchdog after each passed health check and keep ``STATUS=`` current."""
        interval = self.watchdog_interval_s
        while True:
            await asyncio.sleep(interval or STATUS_REFRESH_S)
            problem = self.health_problem()
            if problem is None:
                if interval:
                    notify("WATCHDOG=1")
                if not self._healthy:
                    self._healthy = True
                    self.event_log.event(
                        "watchdog-recovered", "health check passes again; watchdog pings resume"
                    )
            elif self._healthy:
                self._healthy = False
                self.event_log.event(
                    "watchdog-unhealthy",
                    f"health check failed, watchdog pings withheld: {problem}",
                    priority="error",
                    problem=problem,
                )
            self._update_status()

    def _test_hang(self) -> None:
        """The SIGUSR2 test hook: block the loop as a hang would (``MARKD_TEST_HOOKS=1`` only)."""
        self.event_log.event(
            "test-hook",
            f"test hook: SIGUSR2 blocks the event loop for {TEST_HANG_S:g} s",
            priority="warning",
            hook="hang",
        )
        time.sleep(TEST_HANG_S)


def _store_status(store: Store | None, path: str) -> dict[str, Any] | None:
    """The store's version and freshness from its metadata (no scan of the journal)."""
    if store is None:
        return None
    try:
        info = store.info()
    except MarkdError as exc:
        return {"error": exc.message}
    age = None if info.synced_at is None else max(0.0, time.time() - info.synced_at)
    return {
        "path": path,
        "version": info.version,
        "source": info.source,
        "synced_at": info.synced_at,
        "age_s": None if age is None else round(age, 1),
        "max_age_s": store.max_age_s,
        "stale": age is None or age > store.max_age_s,
        "blocked": dict(info.counts),
        "blocked_by_hand": info.manual,
    }


def _store_settings(config: Config) -> tuple[Any, ...]:
    """The ``[store]`` keys that need the store reopened when they change."""
    store = config.store
    return (
        store.path,
        store.map_size_mb,
        store.max_age_hours,
        store.verdict_ttl_s,
        store.delta_history,
    )


def _section_names(config: Config) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(config) if f.metadata.get("toml", True)]


def _close_chain(chain: StoreOnlyChain | CheckChain | None) -> None:
    """Finish a retired chain's pending cache writes and close its clients' connections."""
    if isinstance(chain, CheckChain):
        chain.close()
        for name in ("online", "local_module", "tspiot"):
            close = getattr(getattr(chain, name, None), "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()


async def _aclose_clients(chain: StoreOnlyChain | CheckChain | None) -> None:
    """Let the chain's clients finish their background work and write what they keep (the
    CDN host list) before they go; bounded by each client's own ``aclose``."""
    if not isinstance(chain, CheckChain):
        return
    for name in ("online", "local_module", "tspiot"):
        aclose = getattr(getattr(chain, name, None), "aclose", None)
        if callable(aclose):
            with contextlib.suppress(Exception):
                await aclose()
