"""Reloading the configuration without a restart (SIGHUP, ``markd reload``, ``POST /v1/reload``).

A reload request is a job of the scan loop (:class:`ReloadRequest`), so it runs between two
scans, never in the middle of one. :class:`Reloader` re-reads the same configuration file(s)
as at start and applies them to the running service: ``RELOADING=1``, then ``READY=1``.
Unchanged scanners keep running, the check chain is rebuilt (the store reopened when a
``[store]`` key that needs it changed), the sale desk and its open receipt stay (a new
``[fiscal]`` or ``[sale] mode`` waits until no receipt is open), the fleet sync restarts
when ``[store]`` changed. A configuration that does not load, or a store or chain that cannot
be built from it, is refused with a ``reload-refused`` record and the old configuration stays
in force; otherwise a ``service-reloaded`` record says what changed and what takes effect at
the next start only (:data:`RELOADABLE_SECTIONS`).

The outcome also goes to ``$RUNTIME_DIRECTORY/reload.json`` for ``markd reload`` (the unit's
``ExecReload=``), so that ``systemctl reload`` waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from markd.errors import ConfigError, MarkdError
from markd.sale import fiscal_settings
from markd.service.listeners import log_internal_error
from markd.service.wiring import main_config_file
from markd.systemd import notify, priority_value, reloading_states

if TYPE_CHECKING:
    from markd.codes import CodesOptions
    from markd.config import Config
    from markd.sale import SaleDesk
    from markd.service.health import Health
    from markd.store import Store
    from markd.systemd import EventLog

#: Top-level sections a reload applies; a change anywhere else takes effect at the next start
#: (the reload record says so). ``[log] level`` applies too, ``[log] target`` does not.
RELOADABLE_SECTIONS = frozenset(
    {"store", "codes", "terminal", "check", "scanners", "fiscal", "sale"}
)


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload: applied (``ok``) or refused, and a line saying what happened.
    ``generation`` counts reloads since start (0 is the start itself)."""

    ok: bool
    message: str
    generation: int


class ScannerChanges(NamedTuple):
    """What a reload did to the scanners, by name; ``problems`` for the reload record."""

    kept: list[str]
    started: list[str]
    closed: list[str]
    problems: list[str]


class ReloadTarget(Protocol):
    """The running service as a reload changes it (:class:`markd.service.Service`)."""

    config: Config
    codes_options: CodesOptions
    store: Store | None
    sale_desk: SaleDesk | None

    async def replace_chain(self, new: Config) -> None:
        """A new chain on the same store, with a new Local Module client that the sale desk
        takes too; raises :class:`~markd.errors.MarkdError` (a missing secret …) with the old
        chain still in place."""
        ...

    async def reopen_store(self, new: Config) -> None:
        """The store reopened with ``new``'s ``[store]`` and a new chain on it; raises with
        the old store and chain back in place."""
        ...

    def apply_scanners(self, new: Config) -> ScannerChanges:
        """Keep unchanged scanners, close removed and changed ones, open new ones."""
        ...

    async def open_sale_desk(self, config: Config) -> SaleDesk:
        """Open, recover and serve a sale desk built from ``config``."""
        ...

    def drop_sale_desk(self) -> None:
        """Forget the (retired) sale desk: no printer from now on."""
        ...

    def sale_stop_wait_s(self) -> float:
        """How long to wait for a sale operation under way."""
        ...

    async def stop_store_sync(self) -> None: ...

    def start_store_sync(self) -> None:
        """Start the fleet sync when configured and not running."""
        ...


class ReloadRequest:
    """A reload waiting in the scan loop's queue (a :class:`~markd.service.scanloop.LoopJob`),
    queued by SIGHUP (no future) or :meth:`Reloader.reload` (a future for the result)."""

    def __init__(
        self, reloader: Reloader, future: asyncio.Future[ReloadResult] | None = None
    ) -> None:
        self.reloader = reloader
        self.future = future

    async def run(self) -> None:
        await self.reloader.serve(self)

    def abandon(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(
                ReloadResult(False, "markd is stopping", self.reloader.generation)
            )


class Reloader:
    """Reloads of one service (see the module docstring).

    :param target: the service.
    :param event_log: for ``reload-refused`` and ``service-reloaded``; its level follows
        ``[log] level``.
    :param health: the status line sent with ``READY=1`` once a reload is done.
    :param loader: reads the configuration again; default the files the running one came from.
    """

    def __init__(
        self,
        target: ReloadTarget,
        event_log: EventLog,
        health: Health,
        loader: Callable[[], Config] | None = None,
    ) -> None:
        self.target = target
        self.event_log = event_log
        self.health = health
        self.loader = loader
        #: Reloads tried since start; the generation of the last :class:`ReloadResult`.
        self.generation = 0
        #: The message of the last reload when it was refused (None once one succeeds).
        self.refused: str | None = None
        #: Where outcomes go for ``markd reload`` (None: nowhere).
        self.status_path: Path | None = None
        #: A SIGHUP reload waits in the queue: more SIGHUPs before it starts make one reload.
        self.queued = False

    def request(self, future: asyncio.Future[ReloadResult] | None = None) -> ReloadRequest:
        """A reload to queue: with ``future`` for whoever waits for its result, without for
        SIGHUP (which sets :attr:`queued` until the reload starts)."""
        if future is None:
            self.queued = True
        return ReloadRequest(self, future)

    async def serve(self, request: ReloadRequest) -> None:
        """Run one reload between two scans; answer its future and ``reload.json``."""
        if request.future is None:
            self.queued = False  # a SIGHUP from now on asks for another reload
        self.generation += 1
        notify(*reloading_states(), "STATUS=reloading the configuration")
        try:
            ok, message = await self.apply()
        except Exception as exc:  # noqa: BLE001 - a bug while reloading must not stop the till
            log_internal_error(self.event_log, "reloading the configuration", exc)
            ok, message = False, f"reload failed: {type(exc).__name__}: {exc}"
        result = ReloadResult(ok, message, self.generation)
        # Kept until a reload succeeds: `systemctl status` says why the new file is not in
        # force (the STATUS= line), not only the journal.
        self.refused = None if ok else message
        self.write_status(result)
        notify("READY=1", f"STATUS={self.health.status_for_ready()}")
        if request.future is not None and not request.future.done():
            request.future.set_result(result)

    def write_status(self, result: ReloadResult) -> None:
        """``reload.json``: the process, the generation and the outcome, replaced atomically."""
        path = self.status_path
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

    def load(self) -> Config:
        if self.loader is not None:
            return self.loader()
        from markd import config as config_module

        main = main_config_file(self.target.config)
        if main is None:
            raise ConfigError("no configuration file to re-read: markd started on defaults")
        return config_module.load(main, for_service=True)

    def refuse(self, problems: list[str]) -> tuple[bool, str]:
        first = problems[0] if problems else "unknown problem"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"new configuration refused, the running one stays in force: {first}{more}"
        self.event_log.event(
            "reload-refused",
            message,
            priority="error",
            problems=" | ".join(problems),
            generation=self.generation,
        )
        return False, message

    async def apply(self) -> tuple[bool, str]:
        """Load the configuration again and apply it; (applied, what happened)."""
        target = self.target
        try:
            new = self.load()
        except ConfigError as exc:
            return self.refuse(exc.problems)
        old = target.config

        # The store and the chain first: a missing secret or a store that does not open refuses
        # the whole reload before any scanner or the printer is touched.
        store_changed = store_settings(new) != store_settings(old)
        try:
            if store_changed:
                await target.reopen_store(new)
            else:
                await target.replace_chain(new)
        except MarkdError as exc:
            return self.refuse(getattr(exc, "problems", None) or [str(exc)])

        scanners = target.apply_scanners(new)
        problems = list(scanners.problems)
        sale_summary, sale_problem = await self.reload_sale(new)
        if sale_problem is not None:
            problems.append(sale_problem)
        sync_changed = (new.store.sync_url, new.store.sync_interval_s) != (
            old.store.sync_url,
            old.store.sync_interval_s,
        )
        if store_changed or sync_changed:
            await target.stop_store_sync()
        target.codes_options = new.codes_options()
        self.event_log.level = priority_value(new.log.level)
        target.config = new
        target.start_store_sync()

        later = [
            f"[{name}]"
            for name in section_names(new)
            if name not in RELOADABLE_SECTIONS
            and name != "log"
            and getattr(new, name) != getattr(old, name)
        ]
        if new.log.target != old.log.target:
            later.append("[log] target")
        kept, started, closed = scanners.kept, scanners.started, scanners.closed
        summary = (
            f"configuration reloaded from {', '.join(new.sources) or 'defaults'}: mode "
            f"{new.check.mode}; scanners kept {', '.join(kept) or '-'}, started "
            f"{', '.join(started) or '-'}, closed {', '.join(closed) or '-'}"
        )
        if store_changed:
            summary += f"; store reopened at {new.store.path}"
        desk = target.sale_desk
        if sale_summary:
            summary += f"; {sale_summary}"
        elif desk is not None and desk.receipt_open:
            summary += f"; receipt {desk.session.receipt_id} kept open"
        if later:
            summary += f"; takes effect at the next start: {', '.join(later)}"
        if problems:
            summary += "; " + "; ".join(problems)
        self.event_log.event(
            "service-reloaded",
            summary,
            priority="warning" if problems else "notice",
            generation=self.generation,
            mode=new.check.mode,
            scanners_kept=",".join(kept),
            scanners_started=",".join(started),
            scanners_closed=",".join(closed),
            store_reopened="true" if store_changed else None,
            restart_needed=",".join(later) or None,
        )
        return not problems, summary

    async def reload_sale(self, new: Config) -> tuple[str | None, str | None]:
        """Apply ``[fiscal]`` and ``[sale]`` on a reload; (summary, problem), either may be None.

        The desk and its receipt stay when ``[fiscal]`` and ``[sale] mode`` did not change (the
        price list, ``use_mrp`` and the store are taken at once; the Local Module client came
        with the new chain).
        When they did change, the desk is replaced only while no receipt is in flight;
        otherwise that part is refused and applies at a reload once the receipt is closed or
        cancelled. An open receipt is never dropped by a reload.
        """
        target = self.target
        desk = target.sale_desk
        if desk is None and new.sale.mode == "off":
            return None, None
        previous = None if desk is None else desk.config
        if desk is not None:
            wait_s = target.sale_stop_wait_s()
            try:
                await desk.apply(new, target.store, wait_s)
            except MarkdError as exc:
                return None, f"sale settings not applied: {exc}"
            if desk.settings == fiscal_settings(new):
                return None, None
            if not await desk.retire(wait_s):
                return None, (
                    f"[fiscal] / [sale] mode not applied: receipt {desk.session.receipt_id} is "
                    "in flight and stays on the running printer; reload again once it is "
                    "closed or cancelled"
                )
            target.drop_sale_desk()
        if new.sale.mode == "off":
            return "sale mode off: printer closed", None
        try:
            desk = await target.open_sale_desk(new)
        except MarkdError as exc:
            problem = f"sale desk not opened with the new settings: {exc}"
            if previous is not None:
                try:
                    await target.open_sale_desk(previous)
                except MarkdError as again:
                    problem += f"; the previous printer did not reopen either: {again}"
                else:
                    problem += "; the previous printer settings stay in force"
            return None, problem
        return f"sale mode {desk.mode} on printer {new.fiscal.url}", None


def store_settings(config: Config) -> tuple[Any, ...]:
    """The ``[store]`` keys that need the store reopened when they change."""
    store = config.store
    return (
        store.path,
        store.map_size_mb,
        store.max_age_hours,
        store.verdict_ttl_s,
        store.delta_history,
    )


def section_names(config: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if f.metadata.get("toml", True)]
