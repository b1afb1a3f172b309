"""The daemon's health as systemd sees it: the watchdog's ``WATCHDOG=1`` and the one-line
``STATUS=`` of ``systemctl status markd``.

:class:`Health` decides whether the daemon is well (:meth:`Health.problem`): the loop is not
stuck on one event beyond every check budget, the store can be read, every scanner's reader
thread runs. Its task (:meth:`Health.run`) pings the watchdog every half ``WatchdogSec=``, but
only after that check passed, so a hung loop or a broken store stops the pings and systemd
restarts the daemon; the same task keeps ``STATUS=`` current (the blocklist's age moves on
even when nothing happens). A change of the verdict counts asks for a ``STATUS=`` too, at
most one a second (:meth:`Health.refresh_status_soon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from markd.errors import MarkdError
from markd.systemd import EventLog, notify

if TYPE_CHECKING:
    from markd.config import Config
    from markd.sale import SaleDesk
    from markd.scanners import Scanner
    from markd.store import Store

#: A scan (or reload) still being handled this long after the longest check budget means the
#: loop is stuck on it: the chain answers within its budget plus 50 ms.
STUCK_GRACE_S = 30.0
#: Without a watchdog, the status line is refreshed this often (the blocklist's age moves on).
STATUS_REFRESH_S = 30.0
#: Shortest interval between two STATUS= updates caused by verdict counts alone.
STATUS_MIN_INTERVAL_S = 1.0


class Watched(Protocol):
    """What the health check and the status line read of the running service."""

    config: Config
    store: Store | None
    scanners: dict[str, Scanner]
    sale_desk: SaleDesk | None
    ready: asyncio.Event
    #: Verdicts given since start, by decision.
    verdict_counts: Counter[str]


def reader_alive(scanner: Scanner) -> bool:
    """Whether a started scanner's reader thread still runs. The base class restarts a reader
    that failed, so a dead thread on an open scanner is a bug or a wedged driver, never the
    normal "device absent" state (that is ``scanner.present is False``, with the thread alive
    and retrying)."""
    return scanner.reader_alive


class Health:
    """The health check, the watchdog pings and the status line of one service."""

    def __init__(self, service: Watched, event_log: EventLog) -> None:
        self.service = service
        self.event_log = event_log
        #: The monotonic time the loop started on the event it is handling, if any.
        self.handling_since: float | None = None
        self.healthy = True
        self._last_status = ""
        self._status_sent_at = 0.0
        self._status_timer: asyncio.TimerHandle | None = None

    # -- the health check and the watchdog ------------------------------------------------------

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around the handling of one event of the loop: the stuck rule times it."""
        self.handling_since = time.monotonic()
        try:
            yield
        finally:
            self.handling_since = None

    def problem(self) -> str | None:
        """None when the daemon is healthy, else what is wrong, for the journal.

        Checked before each watchdog ping: the loop (this runs in it, and no event has been in
        handling for longer than the longest check budget plus :data:`STUCK_GRACE_S`), the store
        (a read transaction works) and the scanners (every reader thread alive; an *absent*
        device is a state the reader handles, not a failure).
        """
        since = self.handling_since
        if since is not None:
            busy = time.monotonic() - since
            if busy > self._stuck_after_s():
                return f"one event has been in handling for {busy:.0f} s; the loop is stuck"
        store = self.service.store
        if store is None:
            return "the store is not open"
        try:
            store.info()
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            return f"the store cannot be read: {type(exc).__name__}: {exc}"
        for name, scanner in self.service.scanners.items():
            if not reader_alive(scanner):
                return f"the reader thread of scanner {name} has stopped"
        return None

    def _stuck_after_s(self) -> float:
        check = self.service.config.check
        budget_ms = max(
            check.online_timeout_ms + check.local_module_timeout_ms, check.tspiot_timeout_ms
        )
        return budget_ms / 1000 + STUCK_GRACE_S

    async def run(self, watchdog_interval_s: float | None) -> None:
        """Ping the watchdog after each passed health check and keep ``STATUS=`` current;
        every ``watchdog_interval_s`` (None: no watchdog, only the status, every
        :data:`STATUS_REFRESH_S`)."""
        while True:
            await asyncio.sleep(watchdog_interval_s or STATUS_REFRESH_S)
            problem = self.problem()
            if problem is None:
                if watchdog_interval_s:
                    notify("WATCHDOG=1")
                if not self.healthy:
                    self.healthy = True
                    self.event_log.event(
                        "watchdog-recovered", "health check passes again; watchdog pings resume"
                    )
            elif self.healthy:
                self.healthy = False
                self.event_log.event(
                    "watchdog-unhealthy",
                    f"health check failed, watchdog pings withheld: {problem}",
                    priority="error",
                    problem=problem,
                )
            self.refresh_status()

    # -- STATUS= ---------------------------------------------------------------------------------

    def status_line(self) -> str:
        """One line for ``systemctl status``: health, mode, scanners, blocklist age, verdicts.

        e.g. ``ready; mode direct; scanners front ok, side absent; blocklist v12 synced 3 h ago;
        verdicts 41 allow, 2 deny, 1 rescan``.
        """
        service = self.service
        state = "ready" if self.healthy else "UNHEALTHY (see journalctl -u markd)"
        parts = [state, f"mode {service.config.check.mode}"]
        if service.scanners:
            states = {True: "ok", False: "absent", None: "opening"}
            parts.append(
                "scanners "
                + ", ".join(f"{n} {states[s.present]}" for n, s in sorted(service.scanners.items()))
            )
        else:
            parts.append("no scanners")
        if service.store is not None:
            try:
                info = service.store.info()
            except Exception:  # noqa: BLE001 - the health check reports the cause
                parts.append("store unreadable")
            else:
                if info.synced_at is None:
                    parts.append(f"blocklist v{info.version} never synced")
                else:
                    age = max(0.0, time.time() - info.synced_at)
                    parts.append(f"blocklist v{info.version} synced {age_text(age)} ago")
        sync = getattr(service, "store_sync", None)
        if sync is not None and sync.refused is not None:
            # Loud on purpose: someone may be tampering with the list (docs/store.md).
            parts.append(f"blocklist sync REFUSED ({sync.refused['reason']})")
        reloader = getattr(service, "reloader", None)
        if reloader is not None and reloader.refused is not None:
            # The file on disk is not what runs: say so where a technician looks first.
            why = reloader.refused.removeprefix(
                "new configuration refused, the running one stays in force: "
            )
            why = why if len(why) <= 160 else why[:159] + "…"
            parts.append(f"RELOAD REFUSED, previous configuration in force: {why}")
        if service.sale_desk is not None:
            parts.append(service.sale_desk.status_text())
        counts = service.verdict_counts
        parts.append(
            f"verdicts {counts['allow']} allow, {counts['deny']} deny, {counts['rescan']} rescan"
        )
        return "; ".join(parts)

    def status_for_ready(self) -> str:
        """The line to send with ``READY=1`` (at start and after a reload); the next
        :meth:`refresh_status` sends nothing until it changes."""
        self._last_status = self.status_line()
        return self._last_status

    def refresh_status(self) -> None:
        """Send ``STATUS=`` when the one-line summary changed (``systemctl status`` shows it)."""
        if not self.service.ready.is_set():
            return
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self._status_sent_at = time.monotonic()
            notify(f"STATUS={line}")

    def refresh_status_soon(self) -> None:
        """:meth:`refresh_status` for a change of the verdict counts: they change with every
        scan, so at most one ``STATUS=`` a second for them (a busy till would otherwise send
        the service manager a datagram per scan), the last one sent when the second is up."""
        wait = self._status_sent_at + STATUS_MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self.refresh_status()
        elif self._status_timer is None:
            loop = asyncio.get_running_loop()
            self._status_timer = loop.call_later(wait, self._deferred_status)

    def _deferred_status(self) -> None:
        self._status_timer = None
        self.refresh_status()

    def close(self) -> None:
        """Drop a ``STATUS=`` update still waiting for its second (the service stops)."""
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} d"


def store_status(store: Store | None, path: str) -> dict[str, Any] | None:
    """The store's version and freshness from its metadata (no scan of the journal), for
    ``GET /v1/status``."""
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
