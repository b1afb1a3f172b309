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

Stopping: SIGTERM and SIGINT only set the stop event (when :meth:`Service.run` is asked to handle
signals, i.e. when it is the main program); the loop then sends ``STOPPING=1``, closes the
scanners and the store, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from markd import codes
from markd.checks.chain import StoreOnlyChain, elapsed_ms
from markd.checks.verdict import Verdict, parser_verdict
from markd.errors import CodeError, ConfigError
from markd.scanners import Scan, Scanner, ScannerEvent, ScannerState, ScanOverflow, open_scanner
from markd.store import Store
from markd.systemd import EventLog, notify

if TYPE_CHECKING:
    from markd.config import Config

VerdictSink = Callable[[Verdict], None]

#: Deny text when handling a scan failed inside markd itself (a bug, not the customer's fault).
INTERNAL_ERROR_RU = "Ошибка проверки, продажа невозможна"


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
        if config.checks.mode != "store-only":
            raise ConfigError(f"[checks] mode {config.checks.mode!r} is not implemented yet")
        self.config = config
        self.event_log = event_log or EventLog(target=config.log.target, level=config.log.level)
        self.verdict_sink = verdict_sink
        self.scanners: dict[str, Scanner] = {}
        self.store: Store | None = None
        #: Set once start-up is complete (store open, scanners started, READY=1 sent).
        self.ready = asyncio.Event()
        self._codes_options = config.codes_options()
        self._chain: StoreOnlyChain | None = None

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
        try:
            self._start(loop, queue)  # type: ignore[arg-type]
            while True:
                event = await queue.get()
                if isinstance(event, _StopSentinel):
                    break
                self._handle(event)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self.ready.is_set():
                notify("STOPPING=1", "STATUS=stopping")
                self.event_log.event("service-stopping", "markd stopping")
            self._shutdown()
            for signum in installed:
                loop.remove_signal_handler(signum)

    # -- start-up and shut-down -----------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ScannerEvent]) -> None:
        store_config = self.config.store
        self.store = Store.from_config(store_config)
        self._chain = StoreOnlyChain(self.store)
        for name, scanner_config in self.config.scanners.items():
            scanner = open_scanner(name, scanner_config.url)
            self.scanners[name] = scanner
            scanner.start(loop, queue)
        info = self.store.info()
        blocked = sum(info.counts.values())
        status = (
            f"ready: {len(self.scanners)} scanner(s), mode {self.config.checks.mode}, "
            f"blocklist v{info.version} with {blocked} entries in {store_config.path}"
        )
        notify("READY=1", f"STATUS={status}")
        self.event_log.event(
            "service-started",
            f"markd {status}",
            mode=self.config.checks.mode,
            scanners=",".join(self.scanners),
            store=store_config.path,
        )
        self.ready.set()

    def _shutdown(self) -> None:
        # Release devices first: a port left open blocks the next start (and the till).
        for scanner in self.scanners.values():
            try:
                scanner.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                self._internal_error(f"closing scanner {scanner.name}", exc)
        self.scanners.clear()
        if self.store is not None:
            self.store.close()

    # -- events ---------------------------------------------------------------------------------

    def _handle(self, event: ScannerEvent) -> None:
        if isinstance(event, Scan):
            self._on_scan(event)
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

    def _on_scan(self, scan: Scan) -> None:
        try:
            verdict = self.check(scan.data, scan.scanner, started=scan.received)
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
        """Decide on one framed unit: decode, parse, run the chain. Never raises CodeError."""
        if self._chain is None:
            raise RuntimeError("the service is not started")
        try:
            # parse() takes the raw bytes and reports non-UTF-8 input itself.
            code = codes.parse(data, self._codes_options)
        except CodeError as err:
            return parser_verdict(err, scanner=scanner, latency_ms=elapsed_ms(started))
        return self._chain.decide(code, scanner, started=started)

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
