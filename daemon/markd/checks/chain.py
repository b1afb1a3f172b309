"""The check chain: the order in which sources are asked about a parsed code.

:class:`CheckChain` is the one chain. It asks markd's own LMDB store first, then the check
services its mode names, under one deadline, and the decision table (:mod:`markd.checks.policy`)
decides:

* ``direct``: the CDN (:class:`~markd.checks.online.OnlineClient`), then — or at the same time,
  with ``parallel`` — the Local Module (:class:`~markd.checks.local_module.LocalModuleClient`);
* ``tspiot``: the ТС ПИоТ (:class:`~markd.checks.tspiot.TspiotClient`) decides;
* ``store-only``: the chain with no clients, a development and demo mode. A code that is not
  blocked locally is allowed without asking Честный ЗНАК, and the verdict text says so.

Blocklist first (domain.md §6.4): a local block is a veto no remote answer can lift, and a
lookup costs microseconds, so it also spares a network call for a unit we refuse anyway.

The chain owns its clients (:class:`~markd.checks.base.CheckClient`): it starts their
background work (:meth:`CheckChain.start`), reports their state (:meth:`CheckChain.status`)
and closes them (:meth:`CheckChain.aclose`). Its ``local_module`` is also the client the sale
path reports sold units to, in every mode: one Local Module client per daemon.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from markd.checks.after_answer import after_answer
from markd.checks.base import CheckClient
from markd.checks.policy import DEFAULT_POLICY, PolicyOptions, decide, precheck
from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.stages import stage
from markd.checks.verdict import Verdict
from markd.codes import MarkingCode
from markd.errors import StoreError
from markd.store import Lookup, Store

log = logging.getLogger(__name__)

#: When set (a list), :meth:`CheckChain.decide` adds the services' answers it decided on to
#: it: the Mark Unit front passes them on to the till (``truemark_response`` …).
ANSWERS_SEEN: contextvars.ContextVar[list[SourceAnswer | SourceFailure] | None] = (
    contextvars.ContextVar("markd_answers_seen", default=None)
)

DENY_STORE_ERROR_RU = "Проверка недоступна, продажа невозможна"

#: Seconds verdict-cache writes are gathered before they go to the store as one commit. A
#: crash loses at most these (the cache is an aid: a check never waits for it).
CACHE_BATCH_S = 0.2
#: Writes gathered at most: more go at once, so a burst of checks holds little memory.
CACHE_BATCH_MAX = 256

#: The modes of :class:`ChainSettings` (``[check] mode``).
MODES = ("store-only", "direct", "tspiot")


def elapsed_ms(started: float | None) -> float:
    """Milliseconds since ``started`` (a ``time.monotonic()`` value); 0 when unknown."""
    return 0.0 if started is None else max(0.0, (time.monotonic() - started) * 1000.0)


# ---------------------------------------------------------------------------------------------
# The check chain: store first, then the online CDN and the Local Module, or the ТС ПИоТ


@dataclass(frozen=True)
class ChainSettings:
    """Budgets and choices of :class:`CheckChain` (``[check]`` and ``[terminal]``)."""

    mode: str = "direct"  # store-only | direct | tspiot
    online_timeout_s: float = 1.5
    local_module_timeout_s: float = 0.5
    tspiot_timeout_s: float = 2.0
    #: direct mode: ask the Local Module at the same time as the CDN (the online answer is
    #: preferred; the LM's sold=true can still deny, see PolicyOptions.lm_sold_priority).
    parallel: bool = False
    shop_tz: tzinfo = field(default_factory=lambda: ZoneInfo("Europe/Moscow"))
    policy: PolicyOptions = DEFAULT_POLICY
    #: Keep online answers in the store's verdict cache (facts to re-decide offline).
    cache_verdicts: bool = True

    def budget_s(self, *, online: bool, local_module: bool) -> float:
        """The deadline for the sources (without the 50 ms margin): sequential sources add up,
        parallel ones take the longest."""
        if self.mode == "tspiot":
            return self.tspiot_timeout_s
        if self.mode == "store-only":
            return 0.0
        parts = [
            t
            for t, used in (
                (self.online_timeout_s, online),
                (self.local_module_timeout_s, local_module),
            )
            if used
        ]
        if not parts:
            return 0.0
        return max(parts) if self.parallel else sum(parts)


#: How much past the budget a verdict may come: the issue's "budget plus 50 ms".
DEADLINE_MARGIN_S = 0.04


class CheckChain:
    """The store, then the services of the configured mode, then the decision table.

    * The store is asked first: a unit blocked or sold here is denied at once, with no call
      (domain.md §6.4). A store that cannot be read fails closed.
    * ``direct``: the CDN within ``online_timeout``; when it gives no usable answer, the Local
      Module within ``local_module_timeout`` (or both at once with ``parallel``).
    * ``tspiot``: the ТС ПИоТ decides; its failure denies (as cash software does).
    * ``store-only``: no clients; the store alone decides (see :meth:`decide_now`).
    * Whatever the services do, the verdict comes within the budget plus 50 ms: each client
      keeps its own deadline, and the chain cuts off anything still running at the budget.

    ``online``, ``local_module`` and ``tspiot`` are the clients; the chain owns them (see
    :meth:`aclose`). ``local_module`` may be given in any mode: it is asked only in mode
    ``direct``, and is the sale path's client for sold units in every mode.
    """

    def __init__(
        self,
        store: Store,
        settings: ChainSettings,
        *,
        online: CheckClient | None = None,
        local_module: CheckClient | None = None,
        tspiot: CheckClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        if settings.mode not in MODES:
            raise ValueError(f"unknown check mode {settings.mode!r}")
        if settings.mode == "store-only" and (online is not None or tspiot is not None):
            raise ValueError("a store-only chain asks no service: give it no CDN or ТС ПИоТ")
        self.store = store
        self.settings = settings
        self.online = online
        self.local_module = local_module
        self.tspiot = tspiot
        self.mode = settings.mode
        # Verdict-cache writes are durable LMDB commits (~0.5 ms and more): done on one worker
        # thread after the verdict is out (after a till's answer is written), in order, so
        # they never delay a verdict. The writes of CACHE_BATCH_S go as one commit: each
        # hand-over wakes the worker, which then takes turns at the interpreter lock with
        # the loop, and each commit is an fsync. (The thread is made at the first write: a
        # store-only chain never has one.)
        self._cache_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="markd-cache")
        #: Verdicts waiting for the cache writer: a code and its online answer's facts, as
        #: the store keeps them.
        self._cache_batch: list[tuple[MarkingCode, dict[str, Any]]] = []
        self._cache_timer: asyncio.TimerHandle | None = None
        self._clock = clock
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))
        #: Told of every source's answer or failure as it comes (the service's metrics: each
        #: request's time and failure kind). It must be cheap and must not raise; one that
        #: does is dropped, never worth a verdict.
        self.observer: Callable[[SourceAnswer | SourceFailure], None] | None = None

    # -- the clients ----------------------------------------------------------------------------

    @property
    def clients(self) -> dict[str, CheckClient]:
        """The services this chain asks, by role (``online``, ``local_module``, ``tspiot``,
        the names of their ``[check.*]`` sections), in the order it asks them. Empty in mode
        ``store-only``."""
        if self.mode == "tspiot":
            roles: tuple[tuple[str, CheckClient | None], ...] = (("tspiot", self.tspiot),)
        elif self.mode == "direct":
            roles = (("online", self.online), ("local_module", self.local_module))
        else:
            roles = ()
        return {role: client for role, client in roles if client is not None}

    def _owned(self) -> list[CheckClient]:
        """Every client the chain holds, each once (the Local Module too when only the sale
        path uses it)."""
        owned: list[CheckClient] = []
        for client in (self.online, self.local_module, self.tspiot):
            if client is not None and not any(client is o for o in owned):
                owned.append(client)
        return owned

    def status(self) -> dict[str, Any]:
        """What each asked service's client last saw, by role (no I/O)."""
        return {role: client.status() for role, client in self.clients.items()}

    def start(self) -> None:
        """Begin the clients' background work (the CDN host list and health, the Local
        Module's status): the daemon calls it after ``READY=1``, so the network never delays
        the start and the first scan finds a host list (domain.md §3.2, §4.6)."""
        for client in self.clients.values():
            client.start()

    async def aclose(self) -> None:
        """Retire the chain: each client ends its background work, writes what it keeps (the
        CDN host list) and closes its connections; then pending verdict-cache writes land
        (before the store closes). A client that fails to close does not stop the others."""
        for client in self._owned():
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing the others matters more
                log.warning("closing the %s client failed", type(client).__name__, exc_info=True)
        # The last cache writes are LMDB commits: waited for on a worker thread, not the loop.
        self._flush_cache()
        await asyncio.to_thread(self._cache_writer.shutdown, True)

    def close(self, wait: bool = True) -> None:
        """:meth:`aclose` without a loop: pending cache writes land (``wait``), the clients
        close their connections without waiting for their background work."""
        self._flush_cache()
        self._cache_writer.shutdown(wait=wait)
        for client in self._owned():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing the others matters more
                log.warning("closing the %s client failed", type(client).__name__, exc_info=True)

    def budget_s(self) -> float:
        return self.settings.budget_s(
            online=self.online is not None, local_module=self.local_module is not None
        )

    # -- deciding -------------------------------------------------------------------------------

    async def decide(
        self,
        code: MarkingCode,
        scanner: str,
        *,
        started: float | None = None,
        price_kopecks: int | None = None,
        until: float | None = None,
    ) -> Verdict:
        """The verdict for ``code`` scanned on ``scanner`` (``started``: when the scan arrived,
        monotonic, so the latency covers parsing too). ``until`` (monotonic): a caller's own
        deadline, earlier than the budget's (a till whose request waited for a check slot);
        a service still unanswered then counts as no answer, and past it none is asked."""
        started = self._clock() if started is None else started
        now = self._wall_clock()
        found, early = self._before_services(code, scanner, started, now)
        if early is not None:
            return early
        settings = self.settings
        answers = await self._ask(code, until)
        seen = ANSWERS_SEEN.get()
        if seen is not None:  # a caller that passes the answers on (the Mark Unit front)
            seen.extend(answers)
        verdict = decide(
            code,
            store=found,
            answers=answers,
            mode=self.mode,  # type: ignore[arg-type] - direct or tspiot here
            now=now,
            shop_tz=settings.shop_tz,
            price_kopecks=price_kopecks,
            options=settings.policy,
            scanner=scanner,
        )
        finished = self._finish(verdict, code, scanner, started)
        if settings.cache_verdicts and any(
            isinstance(a, SourceAnswer) and a.online and a.code == 0 for a in answers
        ):
            # Handed to the worker once a caller's answer is out (after_answer): while the
            # worker runs it competes for the interpreter lock with the code writing it.
            after_answer(self._submit_cache, code, answers)
        return finished

    def decide_now(
        self, code: MarkingCode, scanner: str, *, started: float | None = None
    ) -> Verdict:
        """:meth:`decide` without awaiting, for a chain with no clients (mode ``store-only``,
        development and demo): the store and the rows decided before any service
        (:func:`~markd.checks.policy.precheck`: blocked, sold here, bare КИ → ``deny``), else
        ``allow`` / ``store-only-not-blocked``. A store that cannot be read fails closed
        (``deny`` / ``store-error``). Raises :class:`RuntimeError` in the other modes, which
        must ask their services."""
        if self.mode != "store-only":
            raise RuntimeError(f"a chain in mode {self.mode} asks its services: await decide()")
        started = self._clock() if started is None else started
        _, verdict = self._before_services(code, scanner, started, self._wall_clock())
        if verdict is None:  # precheck always decides in mode store-only; fail closed if not
            raise RuntimeError("store-only mode left a unit undecided")
        return verdict

    def _before_services(
        self, code: MarkingCode, scanner: str, started: float, now: datetime
    ) -> tuple[Lookup | None, Verdict | None]:
        """The store's lookup and the verdict of the rows decided before any service is
        asked (None: the services must be asked; never None in mode ``store-only``)."""
        try:
            with stage("store"):
                found = self.store.lookup(code)
        except StoreError:
            failed = Verdict(
                decision="deny",
                reason="store-error",
                message_ru=DENY_STORE_ERROR_RU,
                source="store",
                scanner=scanner,
            )
            return None, self._finish(failed, code, scanner, started)
        early = precheck(
            code,
            store=found,
            mode=self.mode,  # type: ignore[arg-type] - a chain's mode is one of MODES
            now=now,
            shop_tz=self.settings.shop_tz,
            options=self.settings.policy,
            scanner=scanner,
        )
        if early is None:
            return found, None
        return found, self._finish(early, code, scanner, started)

    async def _ask(
        self, code: MarkingCode, until: float | None = None
    ) -> list[SourceAnswer | SourceFailure]:
        s = self.settings
        begin = self._clock()
        hard_stop = begin + self.budget_s() + DEADLINE_MARGIN_S
        if until is not None:
            # Each source's deadline is capped by hard_stop in _one; a past one times out at
            # once, which the decision table reads as no answer.
            hard_stop = min(hard_stop, until)
        if self.mode == "tspiot":
            if self.tspiot is None:
                return [
                    SourceFailure("tspiot", "unreachable", detail="no [check.tspiot] configured")
                ]
            return [
                await self._one("tspiot", self.tspiot, code, begin + s.tspiot_timeout_s, hard_stop)
            ]
        results: list[SourceAnswer | SourceFailure] = []
        if s.parallel and self.online is not None and self.local_module is not None:
            online_task = asyncio.ensure_future(
                self._one("cdn", self.online, code, begin + s.online_timeout_s, hard_stop)
            )
            lm_task = asyncio.ensure_future(
                self._one(
                    "lm", self.local_module, code, begin + s.local_module_timeout_s, hard_stop
                )
            )
            results = [await online_task, await lm_task]
            return results
        if self.online is not None:
            online = await self._one(
                "cdn", self.online, code, begin + s.online_timeout_s, hard_stop
            )
            results.append(online)
            if isinstance(online, SourceAnswer):
                return results  # online first; offline only when online did not answer
        if self.local_module is not None:
            lm_start = self._clock()
            results.append(
                await self._one(
                    "lm", self.local_module, code, lm_start + s.local_module_timeout_s, hard_stop
                )
            )
        return results

    async def _one(
        self, source: str, client: CheckClient, code: MarkingCode, deadline: float, hard_stop: float
    ) -> SourceAnswer | SourceFailure:
        """One source, cut off at ``hard_stop`` whatever the client does."""
        deadline = min(deadline, hard_stop)
        started = self._clock()
        result: SourceAnswer | SourceFailure
        try:
            with stage(source):  # the slow-scan tracer's per-source time
                result = await asyncio.wait_for(
                    client.check(code, deadline), max(hard_stop - started, 0.0)
                )
        except TimeoutError:
            result = SourceFailure(
                source,
                "timeout",  # type: ignore[arg-type]
                detail="no answer within the budget",
                latency_ms=(self._clock() - started) * 1000,
            )
        except Exception as exc:  # noqa: BLE001 - a client bug must not cost the verdict
            result = SourceFailure(
                source,
                "bad-answer",  # type: ignore[arg-type]
                detail=f"client error {type(exc).__name__}",
                latency_ms=(self._clock() - started) * 1000,
            )
        observer = self.observer
        if observer is not None:
            try:
                observer(result)
            except Exception:  # noqa: BLE001 - the metrics are an aid, never worth a verdict
                self.observer = None
                log.warning("the check chain's observer failed and was dropped", exc_info=True)
        return result

    def _submit_cache(self, code: MarkingCode, answers: list[SourceAnswer | SourceFailure]) -> None:
        """Queue one verdict's cache write; the queue goes to the worker CACHE_BATCH_S after
        its first write, or when it holds CACHE_BATCH_MAX (at once without a running loop).

        The facts are put in the store's form here, not in the worker: what the worker does
        in Python holds the interpreter lock, and the loop waits for it when a request or a
        scan comes in meanwhile (about 0.3 ms more at the Mark Unit front's p99)."""
        try:
            facts = next(
                a.facts.to_json()
                for a in answers
                if isinstance(a, SourceAnswer) and a.online and a.code == 0
            )
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - the cache is an aid, never worth a verdict
            log.warning("a verdict could not be put in the cache's form", exc_info=True)
            return
        self._cache_batch.append((code, facts))
        if len(self._cache_batch) >= CACHE_BATCH_MAX:
            self._flush_cache()
            return
        if self._cache_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_cache()
            return
        self._cache_timer = loop.call_later(CACHE_BATCH_S, self._flush_cache)

    def _flush_cache(self) -> None:
        """Hand the queued cache writes to the worker, as one commit."""
        if self._cache_timer is not None:
            self._cache_timer.cancel()
            self._cache_timer = None
        batch, self._cache_batch = self._cache_batch, []
        if not batch:
            return
        try:
            self._cache_writer.submit(self._cache, batch)
        except RuntimeError:
            pass  # the chain was retired meanwhile (a reload): the cache is only an aid

    def _cache(self, batch: list[tuple[MarkingCode, dict[str, Any]]]) -> None:
        try:
            # Between two units the loop may take the interpreter lock: a check that came in
            # meanwhile need not wait for the whole batch's Python.
            self.store.cache_verdicts(batch, between=_let_others_run)
        except Exception:  # noqa: BLE001 - the cache is an aid, never worth a verdict
            pass

    def _finish(self, verdict: Verdict, code: MarkingCode, scanner: str, started: float) -> Verdict:
        return dataclasses.replace(
            verdict,
            scanner=scanner,
            ki=code.ki,
            shape=code.shape,
            repairs=tuple(code.repairs),
            latency_ms=max(0.0, (self._clock() - started) * 1000.0),
        )


def _let_others_run() -> None:
    """Release the interpreter lock for a moment (a thread waiting for it takes it)."""
    time.sleep(0)
