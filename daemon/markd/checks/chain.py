"""Check chains: the order in which sources are asked about a parsed code.

The walking skeleton has one chain, :class:`StoreOnlyChain` (``[check] mode = "store-only"``):
it consults only markd's own LMDB blocklist. It is a development and demo mode: a code that is
not blocked locally is allowed without asking Честный ЗНАК, and the verdict text says so. The
online / Local Module / ТС ПИоТ chains replace it with the same ``decide`` signature.

Blocklist first (domain.md §6.4): a local block is a veto no remote answer can lift, and a
lookup costs microseconds, so it also spares a network call for a unit we refuse anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

from markd.checks.policy import DEFAULT_POLICY, PolicyOptions, decide, precheck
from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.stages import stage
from markd.checks.verdict import Decision, Source, Verdict
from markd.codes import REASONS, MarkingCode
from markd.errors import StoreError
from markd.store import Store

ALLOW_STORE_ONLY_RU = "Разрешено (режим разработки: проверен только локальный стоп-лист)"
DENY_BLOCKED_RU = "Продажа запрещена: код в локальном стоп-листе"
DENY_SOLD_HERE_RU = "Продажа запрещена: этот экземпляр уже продан"
#: The parser's own text, so a bare КИ reads the same whether the parser or the chain refuses it.
DENY_MISSING_CRYPTO_RU = REASONS["missing-crypto"][1]
DENY_STORE_ERROR_RU = "Проверка недоступна, продажа невозможна"


def elapsed_ms(started: float | None) -> float:
    """Milliseconds since ``started`` (a ``time.monotonic()`` value); 0 when unknown."""
    return 0.0 if started is None else max(0.0, (time.monotonic() - started) * 1000.0)


class StoreOnlyChain:
    """Decide from the local blocklist alone (development mode, no Честный ЗНАК check).

    * КИ, its series or its GTIN in the blocklist → ``deny`` / ``blocked-locally``;
    * sold at this terminal and not returned → ``deny`` / ``sold-here``;
    * a bare КИ without crypto tail (shape ``ki``) → ``deny`` / ``missing-crypto``: the law
      requires the full code to be checked and printed on the receipt;
    * otherwise → ``allow`` / ``store-only-not-blocked``.

    A store that cannot be read fails closed (``deny`` / ``store-error``).
    """

    mode = "store-only"

    def __init__(self, store: Store) -> None:
        self.store = store

    def decide(self, code: MarkingCode, scanner: str, *, started: float | None = None) -> Verdict:
        """The verdict for ``code`` scanned on ``scanner``. ``started`` is the monotonic time the
        scan arrived, so ``latency_ms`` covers parsing as well as the lookup."""

        def verdict(decision: Decision, reason: str, message: str, source: Source) -> Verdict:
            return Verdict(
                decision=decision,
                reason=reason,
                message_ru=message,
                source=source,
                scanner=scanner,
                ki=code.ki,
                shape=code.shape,
                repairs=tuple(code.repairs),
                latency_ms=elapsed_ms(started),
            )

        try:
            with stage("store"):
                found = self.store.lookup(code)
        except StoreError:
            return verdict("deny", "store-error", DENY_STORE_ERROR_RU, "store")
        # A stale store still denies what it knows; it never vouches (nothing here allows
        # because of the store: the allow below is the development mode's, and says so).
        if found.blocked is not None:
            return verdict("deny", "blocked-locally", DENY_BLOCKED_RU, "store")
        if found.sold is not None:
            return verdict("deny", "sold-here", DENY_SOLD_HERE_RU, "store")
        if code.shape == "ki" or not code.crypto:
            return verdict("deny", "missing-crypto", DENY_MISSING_CRYPTO_RU, "parser")
        return verdict("allow", "store-only-not-blocked", ALLOW_STORE_ONLY_RU, "none")


# ---------------------------------------------------------------------------------------------
# The check chain: store first, then the online CDN and the Local Module, or the ТС ПИоТ


class Checker(Protocol):
    """What the chain needs of a check service client (online, Local Module, ТС ПИоТ)."""

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        """Answer within ``deadline`` (``time.monotonic()`` based); never raise for the
        service's own problems."""
        ...


@dataclass(frozen=True)
class ChainSettings:
    """Budgets and choices of :class:`CheckChain` (``[check]`` and ``[terminal]``)."""

    mode: str = "direct"  # direct | tspiot
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
    * Whatever the services do, the verdict comes within the budget plus 50 ms: each client
      keeps its own deadline, and the chain cuts off anything still running at the budget.
    """

    def __init__(
        self,
        store: Store,
        settings: ChainSettings,
        *,
        online: Checker | None = None,
        local_module: Checker | None = None,
        tspiot: Checker | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        if settings.mode not in ("direct", "tspiot"):
            raise ValueError(f"unknown check mode {settings.mode!r}")
        self.store = store
        self.settings = settings
        self.online = online
        self.local_module = local_module
        self.tspiot = tspiot
        self.mode = settings.mode
        # Verdict-cache writes are durable LMDB commits (~0.5 ms): done on one worker thread
        # after the verdict is out, in order, so they never delay a verdict.
        self._cache_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="markd-cache")
        self._clock = clock
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))

    def budget_s(self) -> float:
        return self.settings.budget_s(
            online=self.online is not None, local_module=self.local_module is not None
        )

    async def decide(
        self,
        code: MarkingCode,
        scanner: str,
        *,
        started: float | None = None,
        price_kopecks: int | None = None,
    ) -> Verdict:
        """The verdict for ``code`` scanned on ``scanner`` (``started``: when the scan arrived,
        monotonic, so the latency covers parsing too)."""
        started = self._clock() if started is None else started
        settings = self.settings
        try:
            with stage("store"):
                found = self.store.lookup(code)
        except StoreError:
            return self._finish(
                Verdict(
                    decision="deny",
                    reason="store-error",
                    message_ru=DENY_STORE_ERROR_RU,
                    source="store",
                    ki=code.ki,
                    shape=code.shape,
                ),
                code,
                scanner,
                started,
            )
        now = self._wall_clock()
        early = precheck(
            code,
            store=found,
            mode=self.mode,
            now=now,
            shop_tz=settings.shop_tz,
            options=settings.policy,
            scanner=scanner,
        )
        if early is not None:
            return self._finish(early, code, scanner, started)
        answers = await self._ask(code)
        verdict = decide(
            code,
            store=found,
            answers=answers,
            mode=self.mode,
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
            self._cache_writer.submit(self._cache, code, answers)
        return finished

    async def _ask(self, code: MarkingCode) -> list[SourceAnswer | SourceFailure]:
        s = self.settings
        begin = self._clock()
        hard_stop = begin + self.budget_s() + DEADLINE_MARGIN_S
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
        self, source: str, client: Checker, code: MarkingCode, deadline: float, hard_stop: float
    ) -> SourceAnswer | SourceFailure:
        """One source, cut off at ``hard_stop`` whatever the client does."""
        deadline = min(deadline, hard_stop)
        started = self._clock()
        try:
            with stage(source):  # the slow-scan tracer's per-source time
                return await asyncio.wait_for(
                    client.check(code, deadline), max(hard_stop - started, 0.0)
                )
        except TimeoutError:
            return SourceFailure(
                source,
                "timeout",  # type: ignore[arg-type]
                detail="no answer within the budget",
                latency_ms=(self._clock() - started) * 1000,
            )
        except Exception as exc:  # noqa: BLE001 - a client bug must not cost the verdict
            return SourceFailure(
                source,
                "bad-answer",  # type: ignore[arg-type]
                detail=f"client error {type(exc).__name__}",
                latency_ms=(self._clock() - started) * 1000,
            )

    def close(self, wait: bool = True) -> None:
        """Finish pending cache writes (before the store closes)."""
        self._cache_writer.shutdown(wait=wait)

    def _cache(self, code: MarkingCode, answers: list[SourceAnswer | SourceFailure]) -> None:
        for answer in answers:
            if isinstance(answer, SourceAnswer) and answer.online and answer.code == 0:
                try:
                    self.store.cache_verdict(code, answer.facts.to_json())
                except Exception:  # noqa: BLE001 - the cache is an aid, never worth a verdict
                    pass
                return

    def _finish(self, verdict: Verdict, code: MarkingCode, scanner: str, started: float) -> Verdict:
        return dataclasses.replace(
            verdict,
            scanner=scanner,
            ki=code.ki,
            shape=code.shape,
            repairs=tuple(code.repairs),
            latency_ms=max(0.0, (self._clock() - started) * 1000.0),
        )
