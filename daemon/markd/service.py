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

Stopping: SIGTERM and SIGINT only set the stop event (when :meth:`Service.run` is asked to handle
signals, i.e. when it is the main program); the loop then sends ``STOPPING=1``, closes the
scanners and the store, and returns.
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markd import codes
from markd.checks.chain import CheckChain, StoreOnlyChain, elapsed_ms
from markd.checks.factory import build_chain
from markd.checks.record import CURRENT_SCAN, Exchange
from markd.checks.verdict import Verdict, parser_verdict
from markd.errors import CodeError
from markd.scanners import Scan, Scanner, ScannerEvent, ScannerState, ScanOverflow, open_scanner
from markd.store import Store
from markd.systemd import EventLog, LogBridge, notify

if TYPE_CHECKING:
    from markd.config import Config

VerdictSink = Callable[[Verdict], None]

#: Deny text when handling a scan failed inside markd itself (a bug, not the customer's fault).
INTERNAL_ERROR_RU = "Ошибка проверки, продажа невозможна"


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
    ) -> None:
        self.config = config
        self.event_log = event_log or EventLog(target=config.log.target, level=config.log.level)
        self.verdict_sink = verdict_sink
        self.scanners: dict[str, Scanner] = {}
        self.store: Store | None = None
        #: Set once start-up is complete (store open, scanners started, READY=1 sent).
        self.ready = asyncio.Event()
        self._codes_options = config.codes_options()
        self._chain: StoreOnlyChain | CheckChain | None = None
        #: The periodic fleet sync, when ``[store] sync_url`` is set (created at start).
        self.store_sync: StoreSync | None = None
        #: Background tasks of the chain's clients (the Local Module status poller).
        self._background: list[asyncio.Future[None]] = []
        #: Delay range of the first fleet sync; tests set ``(0, 0)``.
        self.sync_start_delay_s = SYNC_START_DELAY_S

    async def run(
        self, stop_event: asyncio.Event | None = None, *, handle_signals: bool = False
    ) -> None:
        """Run until ``stop_event`` is set (or SIGTERM/SIGINT with ``handle_signals``).

        Raises :class:`~markd.errors.StoreError` or :class:`~markd.errors.ScannerError` when
        start-up fails; once ready, it only returns by being stopped.
        """
        loop = asyncio.get_running_loop()
        stop = stop_event or asyncio.Event()
        queue: asyncio.Queue[ScannerEvent | _StopSentinel] = asyncio.Queue()
        installed: list[signal.Signals] = []
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                # The handler only sets the event; all stopping work runs in the loop below.
                loop.add_signal_handler(signum, stop.set)
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
        try:
            self._start(loop, queue)  # type: ignore[arg-type]
            while True:
                event = await queue.get()
                if isinstance(event, _StopSentinel):
                    break
                await self._handle(event)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self.ready.is_set():
                notify("STOPPING=1", "STATUS=stopping")
                self.event_log.event("service-stopping", "markd stopping")
            if self.store_sync is not None:
                await self.store_sync.stop()
            for background in self._background:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await background
            self._background.clear()
            self._shutdown()
            for signum in installed:
                loop.remove_signal_handler(signum)
            markd_logger.removeHandler(bridge)
            markd_logger.propagate = True

    # -- start-up and shut-down -----------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ScannerEvent]) -> None:
        store_config = self.config.store
        self.store = Store.from_config(store_config)
        self._chain = build_chain(self.config, self.store, recorder=self._record_exchange)
        for name, scanner_config in self.config.scanners.items():
            scanner = open_scanner(name, scanner_config.url)
            self.scanners[name] = scanner
            scanner.start(loop, queue)
        info = self.store.info()
        blocked = sum(info.counts.values())
        status = (
            f"ready: {len(self.scanners)} scanner(s), mode {self.config.check.mode}, "
            f"blocklist v{info.version} with {blocked} entries in {store_config.path}"
        )
        notify("READY=1", f"STATUS={status}")
        self.event_log.event(
            "service-started",
            f"markd {status}",
            mode=self.config.check.mode,
            scanners=",".join(self.scanners),
            store=store_config.path,
        )
        poller = getattr(getattr(self._chain, "local_module", None), "run_status_poller", None)
        if poller is not None:
            # The Local Module's state is polled in the background, so a check never waits on
            # a module known to be down (domain.md §4.6).
            self._background.append(asyncio.ensure_future(poller()))
        if store_config.sync_url:
            self.store_sync = StoreSync(
                self.config, self.event_log, start_delay_s=self.sync_start_delay_s
            )
            self.store_sync.start()
        self.ready.set()

    def _shutdown(self) -> None:
        # Release devices first: a port left open blocks the next start (and the till).
        for scanner in self.scanners.values():
            try:
                scanner.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                self._internal_error(f"closing scanner {scanner.name}", exc)
        self.scanners.clear()
        if isinstance(self._chain, CheckChain):
            self._chain.close()  # pending verdict-cache writes land before the store closes
        if self.store is not None:
            self.store.close()

    # -- events ---------------------------------------------------------------------------------

    async def _handle(self, event: ScannerEvent) -> None:
        if isinstance(event, Scan):
            await self._on_scan(event)
        elif isinstance(event, ScanOverflow):
            self.event_log.event(
                "scan-overflow",
                f"scanner {event.scanner}: {event.dropped} bytes without a terminator dropped "
                "(wrong terminator setting, baud rate or a stuck scanner?)",
                priority="warning",
                scanner=event.scanner,
                dropped=event.dropped,
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

    async def _on_scan(self, scan: Scan) -> None:
        try:
            verdict = await self.check_async(scan.data, scan.scanner, started=scan.received)
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
        if self.verdict_sink is not None:
            try:
                self.verdict_sink(verdict)
            except Exception as exc:  # noqa: BLE001 - a sink bug is logged, checks go on
                self._internal_error("verdict sink", exc)

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
        self, data: bytes, scanner: str, *, started: float | None = None
    ) -> Verdict:
        """Decide on one framed unit: decode, parse, run the chain. Never raises CodeError."""
        chain = self._chain
        if chain is None:
            raise RuntimeError("the service is not started")
        try:
            code = codes.parse(data, self._codes_options)
        except CodeError as err:
            return parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started))
        if isinstance(chain, StoreOnlyChain):
            return chain.decide(code, scanner, started=started)
        token = CURRENT_SCAN.set(f"{scanner}:{code.ki}")
        try:
            return await chain.decide(code, scanner, started=started)
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
        absent = sorted(name for name, s in self.scanners.items() if s.present is False)
        if absent:
            notify(f"STATUS=ready; scanner(s) absent: {', '.join(absent)}")
        else:
            notify(f"STATUS=ready: {len(self.scanners)} scanner(s) present")

    def _internal_error(self, what: str, exc: BaseException) -> None:
        # Type and message only: a traceback could hold a local with the full code.
        self.event_log.event(
            "service-error",
            f"{what} failed: {type(exc).__name__}: {exc}",
            priority="error",
            error=type(exc).__name__,
        )
