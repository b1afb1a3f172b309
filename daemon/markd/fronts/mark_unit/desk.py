"""What the Mark Unit front does with a till's document: ``check``, ``begin``, ``commit``,
``cancel`` (the behaviour FMU-API implements in ``src/Core/FmuApiApplication/Documents/``,
read for facts; the decisions are markd's own).

``check``
    every code of every position goes through markd's check chain as a scan does (the same
    deadline, decision table and journal record, with the till, shift, receipt and
    organisation as fields); allow and deny are both answered with HTTP 200, ``code`` 0 or 1
    and the verdict's Russian text in ``error``; the services' answers are passed through
    (``truemark_response`` with ``reqId``/``reqTimestamp``, the Local Module's in
    ``offline_truemark_response``, the ТС ПИоТ's body in ``esm_response`` and its result in
    ``truemark_response`` as well); an offline answer's code is passed on read as valid in
    every respect the till checks (:func:`_entry`).
``begin``
    the price rules of ``BeginDocument.cs``: below the ЕМЦ (``smp``, groups 3 and 16), above
    a tobacco pack's MRP, below a stick pack's (group 16) minimum: ``code`` 3, one line per
    position in ``error``, the offending codes in ``marking_codes``. The receipt is kept
    pending under its ``uid``.
``commit``
    the receipt's codes (the commit's own positions, else its ``begin``'s), parsed there and
    then, recorded as sold here (the store's sold journal; a refund takes them back), and
    reported to the Local Module's ``/cis/sell`` (``/cis/return``) when ``[fiscal] lm_sell``
    is set; a ``uid`` the till committed lately is not recorded again.
``cancel``
    the pending receipt dropped.

The tills' habits (``docs/mark_unit.md``): a till may send the same check twice in a row
(FMU-API's commit notes); the second is answered from :class:`RepeatCache` without asking the
services, and one that arrives while the first is still being checked waits for its answer.
Frontol may send the second with the code cut short (FMU-API commit 94bcda4: GTIN and serial,
no crypto tail); that one gets the full code's answer too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from markd.checks.after_answer import AFTER_ANSWER, AfterAnswer, after_answer
from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.tspiot import unwrap_entry
from markd.checks.verdict import CheckedCode
from markd.errors import CodeError
from markd.fronts.mark_unit.protocol import (
    OPENING_TARE,
    Document,
    Position,
    TillCode,
    empty_answer,
)

if TYPE_CHECKING:
    from markd.codes import MarkingCode
    from markd.config import MarkUnitConfig

log = logging.getLogger("markd.fronts.mark_unit")

#: Verdict reasons that say the unit was sold already: a refund of such a unit is not refused
#: (``CheckReturnDocument.cs``: "Frontol shows an error when the code is sold, even on a
#: refund").
SOLD_REASONS = frozenset({"sold", "sold-here", "sold-lm", "sold-cached"})
#: Answer ``code`` values: 0 allowed, 1 refused, 3 a price rule broken at ``begin``.
ALLOWED, REFUSED, PRICE_FLAGGED = 0, 1, 3
#: Product groups of the price rules (``BeginDocument.cs``; ``TrueApiGroup``): tobacco and
#: nicotine-containing products (sticks).
TOBACCO, NICOTINE = 3, 16
#: Receipts kept pending between ``begin`` and ``commit`` at most, in all (the till holding
#: the most gives up its oldest) and per till (its own oldest go first): one till cannot push
#: another's receipts out.
MAX_PENDING = 2048
MAX_PENDING_PER_TILL = 64
#: Pending codes one till may hold, and the bytes of pending receipts (a receipt's estimate:
#: its codes' bytes and the objects around them) one till and all tills may hold: 500-code
#: receipts must not let one till, or many, fill the kiosk's memory.
MAX_PENDING_CODES_PER_TILL = 2000
MAX_PENDING_BYTES_PER_TILL = 2 * 1024 * 1024
MAX_PENDING_BYTES = 16 * 1024 * 1024
#: Receipt ``uid`` values remembered as committed, per till: a till that sends the same
#: commit again (its answer was lost) is answered as before and nothing is recorded twice.
MAX_COMMITTED_PER_TILL = 64
#: Tills whose receipts are remembered at most (the least recently heard is forgotten).
MAX_TILLS = 1024
#: Answers kept for repeated checks at most: in all, per till, and their bytes (the answer's
#: JSON and the request's; one answer to 500 codes is megabytes).
MAX_REPEATS = 1024
MAX_REPEATS_PER_TILL = 32
MAX_REPEAT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TillCheck:
    """One code's check for a till: markd's verdict (and the parsed code) and the check
    services' answers it rests on, for the pass-through."""

    checked: CheckedCode
    answers: tuple[SourceAnswer | SourceFailure, ...] = ()


class TillBackend(Protocol):
    """What the front needs of the daemon (:class:`markd.service.tills.ServiceTills`)."""

    async def check_for_till(
        self,
        data: bytes,
        context: Mapping[str, str],
        *,
        received: float | None = None,
        until: float | None = None,
    ) -> TillCheck:
        """Check one code as a scan is checked, journaled with ``context``'s fields; its
        latency counts from ``received`` and no service is waited for past ``until`` (both
        monotonic): past it, the decision table's no-answer row decides."""
        ...

    def budget_s(self) -> float:
        """Seconds a till's check may take from the request's arrival: the chain's budget and
        its margin."""
        ...

    def record_sale(self, codes: Sequence[MarkingCode], receipt: str, *, refund: bool) -> None:
        """The store's sold journal: sold here (``refund``: returned)."""
        ...

    async def report_sale(self, codes: Sequence[MarkingCode], *, refund: bool) -> None:
        """The Local Module's ``/cis/sell`` (``/cis/return``) when configured; never raises."""
        ...

    def parse_code(self, data: bytes) -> MarkingCode:
        """A till's code parsed as a scan is (:class:`markd.codes.CodeError` when it is none)."""
        ...

    def organisation(self) -> tuple[str, str]:
        """``[terminal] inn`` and ``kpp`` (empty: not checked)."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds for the front (the tills' own ТС ПИоТ chains)."""
        ...


@dataclass
class _Pending:
    """A receipt between ``begin`` and ``commit``: its header (no positions) and its codes'
    bytes, parsed again at the commit."""

    document: Document
    codes: tuple[bytes, ...]
    at: float = 0.0

    @property
    def size(self) -> int:
        """Bytes this receipt holds, roughly: its codes and the objects around them."""
        return 512 + sum(len(data) + 64 for data in self.codes)


@dataclass
class _TillReceipts:
    """One till's pending receipts and the ``uid`` values it committed lately."""

    pending: OrderedDict[str, _Pending] = field(default_factory=OrderedDict)
    committed: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @property
    def codes(self) -> int:
        return sum(len(p.codes) for p in self.pending.values())

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pending.values())


@dataclass
class _Kept:
    at: float
    peer: str
    size: int
    answer: dict[str, Any]
    #: Keys (:meth:`RepeatCache.short_key`) of the short forms of the one code checked.
    shorts: tuple[bytes, ...] = ()


class RepeatCache:
    """Answers to recent checks by (till address, document as read): a till that sends the
    same check again within ``ttl_s`` gets the first answer, and one that sends it while the
    first is still being checked waits for that answer instead of asking the services twice. The
    answer to a one-code check is also found by the short forms of its code (:meth:`short`).

    Bounded three ways, so no till and no number of tills can make it large: answers in all
    (:data:`MAX_REPEATS`), per till (:data:`MAX_REPEATS_PER_TILL`, the till's oldest go) and
    bytes (``max_bytes``); expired answers are dropped as new ones come in."""

    def __init__(
        self, ttl_s: float, clock: Any = time.monotonic, *, max_bytes: int = MAX_REPEAT_BYTES
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._answers: OrderedDict[bytes, _Kept] = OrderedDict()
        self._per_till: dict[str, int] = {}
        self._bytes = 0
        self._running: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        #: Short form keys to the key of the answer they lead to.
        self._shorts: dict[bytes, bytes] = {}
        #: Bumped by :meth:`forget`: an answer computed under an older one is not kept.
        self.generation = 0
        #: Checks answered from the cache (or from a check under way) so far.
        self.hits = 0

    @staticmethod
    def key(peer: str, document: Document) -> bytes:
        """The key of ``document`` from ``peer``: of the document as the front read it (its
        charset decoded, the path's ИНН applied), not of its bytes, so the same bytes sent
        to another ИНН's path or in another charset are another check."""
        parts: list[bytes] = []

        def put(*texts: str | bytes) -> None:
            for text in texts:
                data = text.encode("utf-8") if isinstance(text, str) else text
                parts.append(len(data).to_bytes(4, "big"))
                parts.append(data)

        put(peer, document.action, document.type, document.uid, document.pos)
        put(document.shift, document.number, document.user)
        for position in document.positions:
            price = "" if position.price_kopecks is None else str(position.price_kopecks)
            put(b"\x01", position.text, price, repr(position.quantity), position.inn)
            put(position.kpp, position.esm)
            for code in position.codes:
                put(b"\x02", code.data)
        return hashlib.sha256(b"".join(parts)).digest()

    @staticmethod
    def short_key(peer: str, text: bytes) -> bytes:
        return hashlib.sha256(b"short\0" + peer.encode() + b"\0" + text).digest()

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def size(self) -> int:
        """Bytes of the answers kept (their JSON and their requests)."""
        return self._bytes

    def forget(self) -> None:
        """Drop every kept answer (a receipt was committed: what was allowed may be sold).
        A check under way now is not kept when it ends, nor joined by a later request: its
        answer may predate the sale."""
        self.generation += 1
        self._running.clear()
        self._answers.clear()
        self._per_till.clear()
        self._shorts.clear()
        self._bytes = 0

    def short(self, peer: str, text: bytes) -> dict[str, Any] | None:
        """The kept answer to the check of the full code whose short form ``text`` is (the
        one code of a check the till at ``peer`` sent within ``ttl_s``), or None."""
        if self.ttl_s <= 0:
            return None
        key = self._shorts.get(self.short_key(peer, text))
        kept = None if key is None else self._answers.get(key)
        if kept is None or self._clock() - kept.at > self.ttl_s:
            return None
        self.hits += 1
        return kept.answer

    async def answer(
        self, peer: str, document: Document, compute: Any, *, size: int = 0
    ) -> dict[str, Any]:
        """The answer to the check ``document`` from ``peer`` (``size``: its request's bytes):
        kept, under way, or computed. ``compute()`` returns the answer and the short forms of
        its one code (or none)."""
        if self.ttl_s <= 0:
            return (await compute())[0]
        key = self.key(peer, document)
        now = self._clock()
        kept = self._answers.get(key)
        if kept is not None and now - kept.at <= self.ttl_s:
            self.hits += 1
            return kept.answer
        running = self._running.get(key)
        if running is not None:
            self.hits += 1
            return await asyncio.shield(running)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        generation = self.generation
        try:
            result, shorts = await compute()
        except BaseException as exc:
            if self._running.get(key) is future:
                del self._running[key]
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter may not exist
            raise
        future.set_result(result)
        # Kept once the answer is written, measured as the caller wrote it; until then the
        # finished check under way answers a repeat.
        after_answer(
            self._settle, key, future, peer, size, result, shorts, generation, AFTER_ANSWER.get()
        )
        return result

    def _settle(
        self,
        key: bytes,
        future: asyncio.Future[dict[str, Any]],
        peer: str,
        request_size: int,
        result: dict[str, Any],
        shorts: Sequence[bytes],
        generation: int,
        later: AfterAnswer | None,
    ) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if generation == self.generation:  # no commit since the check began
            answer_size = None if later is None else later.answer_size
            self._keep(key, peer, request_size, result, shorts, answer_size)

    def _keep(
        self,
        key: bytes,
        peer: str,
        request_size: int,
        result: dict[str, Any],
        shorts: Sequence[bytes] = (),
        answer_size: int | None = None,
    ) -> None:
        """Keep ``result``; ``answer_size``: the bytes of its JSON when the caller knows them
        (it wrote them), else it is measured here."""
        now = self._clock()
        self._drop(key)
        # Kept in the order they came: the expired ones are at the front.
        while self._answers and now - next(iter(self._answers.values())).at > self.ttl_s:
            self._drop(next(iter(self._answers)))
        if answer_size is None:
            answer_size = len(json.dumps(result, ensure_ascii=False, separators=(",", ":")))
        size = request_size + answer_size
        size += sum(len(text) + 64 for text in shorts)
        if size > self.max_bytes:
            return  # one answer larger than the whole budget is not kept
        short_keys = tuple(self.short_key(peer, text) for text in shorts)
        self._answers[key] = _Kept(now, peer, size, result, short_keys)
        for short_key in short_keys:
            self._shorts[short_key] = key
        self._per_till[peer] = self._per_till.get(peer, 0) + 1
        self._bytes += size
        if self._per_till[peer] > MAX_REPEATS_PER_TILL:
            self._drop(next(k for k, v in self._answers.items() if v.peer == peer))
        while len(self._answers) > MAX_REPEATS or self._bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: bytes) -> None:
        kept = self._answers.pop(key, None)
        if kept is None:
            return
        for short_key in kept.shorts:
            if self._shorts.get(short_key) == key:
                del self._shorts[short_key]
        self._bytes -= kept.size
        left = self._per_till[kept.peer] - 1
        if left:
            self._per_till[kept.peer] = left
        else:
            del self._per_till[kept.peer]


class MarkUnitDesk:
    """The front's behaviour over a :class:`TillBackend` (see the module docstring).

    :param backend: the daemon's checks and sold journal.
    :param config: ``[mark_unit]``.
    """

    def __init__(self, backend: TillBackend, config: MarkUnitConfig) -> None:
        self.backend = backend
        self.config = config
        self.repeats = RepeatCache(config.repeat_cache_ms / 1000.0)
        self._slots = asyncio.Semaphore(config.max_checks)
        self._tills: OrderedDict[str, _TillReceipts] = OrderedDict()
        #: What the price rules read of each code's last check, by the till's base64 text,
        #: for ``begin`` (None: no answer carried facts).
        self._facts: OrderedDict[str, PriceFacts | None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(
        self, document: Document, peer: str, body: bytes, *, received: float | None = None
    ) -> dict[str, Any]:
        """The answer to ``document`` from the till at ``peer`` (``body``: its bytes, counted
        in the repeat cache's budget; ``received``: when it arrived, monotonic, where the
        till's patience budget starts)."""
        received = time.monotonic() if received is None else received
        if document.action == "check":
            short = _one_code(document)
            if short is not None:
                kept = self.repeats.short(peer, _scoped(document, short.data))
                if kept is not None:
                    # Frontol's second check of a code, cut short (FMU-API 94bcda4): the
                    # full code's answer, which nothing sold since (a commit forgets it).
                    log.info("mark unit: a short code from %s answered as its full code", peer)
                    return kept
            return await self.repeats.answer(
                peer, document, lambda: self._check(document, peer, received), size=len(body)
            )
        if document.action == "begin":
            return await self.begin(document, peer, received)
        if document.action == "commit":
            return await self.commit(document, peer)
        return self.cancel(document, peer)

    # -- check ----------------------------------------------------------------------------------

    async def check(
        self, document: Document, peer: str, received: float | None = None
    ) -> dict[str, Any]:
        return (await self._check(document, peer, received))[0]

    async def _check(
        self, document: Document, peer: str, received: float | None = None
    ) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        """The answer to a check, and the short forms of its code when it held one code
        that was read whole (with its crypto tail): the texts a till may send it again as."""
        received = time.monotonic() if received is None else received
        answer = empty_answer()
        if document.refund and not self.config.refund_check and not _any_inn(document):
            # Frontol 20.5 did not check refunds, 22.4 and later do and send an ИНН
            # (CheckReturnDocument.cs): an old till's refund is answered at once.
            return answer, ()
        pairs = document.codes()
        if len(pairs) == 1:
            # The usual check, one code: awaited in this task (a task of its own for one
            # code would cost two more turns of the event loop before the answer).
            ((position, code),) = pairs
            results = [await self._check_one(document, position, code, peer, received)]
        else:
            results = await asyncio.gather(
                *(
                    self._check_one(document, position, code, peer, received)
                    for position, code in pairs
                )
            )
        errors: list[str] = []
        online: list[tuple[Position, SourceAnswer]] = []
        offline: list[tuple[Position, SourceAnswer]] = []
        tspiot: list[SourceAnswer] = []
        for (position, code), (refusal, result) in zip(pairs, results, strict=True):
            if result is not None:
                answers = [item for item in result.answers if isinstance(item, SourceAnswer)]
                tspiot.extend(item for item in answers if item.source == "tspiot")
                # One answer per code goes to the till, the online one first, and its copy
                # goes to exactly one list by its ``inst`` (FillFieldsForFrontol_6_25_5): in
                # parallel mode the Local Module's answer beside the CDN's is not passed on.
                # A ТС ПИоТ's result entry is a True API check result: online, or offline
                # with ``inst`` (FMU-API ``MarkChecker.TsPiotCheck``).
                ranked = sorted(answers, key=_offline)
                if ranked:
                    chosen = ranked[0]
                    (offline if _offline(chosen) else online).append((position, chosen))
            if refusal is not None:
                errors.append(refusal)
                answer["marking_codes"].append(code.base64)
        if errors:
            answer["code"] = REFUSED
            answer["error"] = "\r\n".join(dict.fromkeys(errors))
        _pass_through(
            answer,
            online,
            offline,
            tspiot,
            refund=document.refund,
            lm_in_req_id=self.config.lm_in_req_id,
        )
        shorts: tuple[bytes, ...] = ()
        if len(results) == 1 and results[0][1] is not None:
            forms = short_forms(results[0][1].checked.code)
            shorts = tuple(_scoped(document, form) for form in forms)
        return answer, shorts

    async def _check_one(
        self, document: Document, position: Position, code: TillCode, peer: str, received: float
    ) -> tuple[str | None, TillCheck | None]:
        """The refusal text for one code (None: allowed) and its check. The wait for a check
        slot comes out of the till's budget, which starts at ``received``: a check whose
        budget is spent before a slot frees asks no service, and the decision table's
        no-answer row decides (as it does for a service that never answered)."""
        inn, kpp = self.backend.organisation()
        if (
            inn
            and position.inn
            and (position.inn != inn or (kpp and position.kpp not in ("", kpp)))
        ):
            log.warning(
                "mark unit: till %s sent a position of organisation ИНН %s КПП %s, not ours",
                peer,
                position.inn,
                position.kpp or "-",
            )
            return f"Организация ИНН {position.inn} не обслуживается этим markd", None
        context = {
            "front": "mark-unit",
            "till": peer,
            "till_pos": document.pos,
            "till_shift": document.shift,
            "till_receipt": document.number,
            "till_document": document.type,
            "till_inn": position.inn,
            "till_kpp": position.kpp,
            "till_esm": position.esm,
        }
        until = received + self.backend.budget_s()
        slot = False
        remaining = until - time.monotonic()
        if remaining > 0 and not self._slots.locked():
            await self._slots.acquire()  # a free slot is taken at once, without a task
            slot = True
        elif remaining > 0:
            try:
                await asyncio.wait_for(self._slots.acquire(), remaining)
                slot = True
            except TimeoutError:
                pass
        try:
            result = await self.backend.check_for_till(
                code.data, context, received=received, until=until
            )
        finally:
            if slot:
                self._slots.release()
        verdict = result.checked.verdict
        self._remember(code, result)
        if verdict.allowed:
            return None, result
        if document.refund and result.checked.code is not None:
            # A refund takes a unit back: "sold" is what it should be, and a blocked or
            # expired unit may still be returned (CheckReturnDocument.cs resets the error
            # fields for the till). Only a scan that is no code at all is refused.
            return None, result
        if document.type == OPENING_TARE and verdict.reason in SOLD_REASONS:
            return None, result
        return verdict.message_ru, result

    def _remember(self, code: TillCode, result: TillCheck) -> None:
        self._facts[code.base64] = _facts_of(result)
        self._facts.move_to_end(code.base64)
        while len(self._facts) > MAX_PENDING:
            self._facts.popitem(last=False)

    # -- begin, commit, cancel ------------------------------------------------------------------

    async def begin(
        self, document: Document, peer: str, received: float | None = None
    ) -> dict[str, Any]:
        """Price rules on the facts of each code's check; codes the till never had checked
        are checked now, all at once within ``max_checks``, and one refused is answered
        ``code`` 1 as a check would."""
        received = time.monotonic() if received is None else received
        answer = empty_answer()
        lines: list[str] = []
        unchecked = {
            code.base64: (position, code)
            for position, code in document.codes()
            if code.base64 not in self._facts
        }
        results = await asyncio.gather(
            *(
                self._check_one(document, position, code, peer, received)
                for position, code in unchecked.values()
            )
        )
        facts_now: dict[str, PriceFacts | None] = {}
        refusals: list[str] = []
        for key, (refusal, result) in zip(unchecked, results, strict=True):
            facts_now[key] = None if result is None else _facts_of(result)
            if refusal is not None:
                refusals.append(refusal)
                answer["marking_codes"].append(key)
        pending = _Pending(
            dataclasses.replace(document, positions=()),
            tuple(code.data for _, code in document.codes()),
            at=time.monotonic(),
        )
        for position, code in document.codes():
            if code.base64 in facts_now:
                facts = facts_now[code.base64]
            else:
                facts = self._facts.get(code.base64)
            if document.refund or facts is None or position.price_kopecks is None:
                continue
            problem = price_problem(facts, position.price_kopecks)
            if problem is not None:
                lines.append(f"{position.text} {problem}".strip())
                answer["marking_codes"].append(code.base64)
        if refusals:
            answer["code"] = REFUSED
            answer["error"] = "\r\n".join([*dict.fromkeys(refusals), *lines])
        elif lines:
            answer["code"] = PRICE_FLAGGED
            answer["error"] = "".join(f"\r\n {line}" for line in lines)
        self._keep_pending(peer, document.uid, pending)
        return answer

    def _till(self, peer: str) -> _TillReceipts:
        till = self._tills.get(peer)
        if till is None:
            till = self._tills[peer] = _TillReceipts()
            while len(self._tills) > MAX_TILLS:
                _, gone = self._tills.popitem(last=False)
                if gone.pending:
                    log.warning(
                        "mark unit: forgot %d pending receipt(s) of a till not heard from lately",
                        len(gone.pending),
                    )
        self._tills.move_to_end(peer)
        return till

    def _keep_pending(self, peer: str, uid: str, pending: _Pending) -> None:
        now = time.monotonic()
        limit = self.config.pending_minutes * 60.0
        for receipts in self._tills.values():
            for old in [k for k, p in receipts.pending.items() if now - p.at > limit]:
                del receipts.pending[old]
        receipts = self._till(peer)
        receipts.pending[uid] = pending
        receipts.pending.move_to_end(uid)
        while len(receipts.pending) > 1 and (
            len(receipts.pending) > MAX_PENDING_PER_TILL
            or receipts.codes > MAX_PENDING_CODES_PER_TILL
            or receipts.size > MAX_PENDING_BYTES_PER_TILL
        ):
            receipts.pending.popitem(last=False)
        while self.pending > MAX_PENDING or self.pending_bytes > MAX_PENDING_BYTES:
            fullest = max(self._tills.values(), key=lambda r: r.size)
            fullest.pending.popitem(last=False)

    async def commit(self, document: Document, peer: str) -> dict[str, Any]:
        """Record what the till sold. The commit's own positions say it (FMU-API's tills send
        them); a commit that carries none takes its ``begin``'s. The codes are parsed here, so
        nothing learnt at the check (which a restart forgets) is needed. A ``uid`` this till
        committed lately is answered as before and recorded once."""
        receipts = self._till(peer)
        if document.uid and document.uid in receipts.committed:
            log.info(
                "mark unit: commit of receipt %s from %s repeated; ignored", document.uid, peer
            )
            return empty_answer()
        pending = receipts.pending.pop(document.uid, None)
        if document.positions:
            source = document
            raw = [code.data for _, code in document.codes()]
        elif pending is not None:
            source = pending.document
            raw = list(pending.codes)
        else:
            log.warning(
                "mark unit: commit of receipt %s from %s without a begin or positions",
                document.uid or "-",
                peer,
            )
            return empty_answer()
        if document.uid:
            receipts.committed[document.uid] = None
            while len(receipts.committed) > MAX_COMMITTED_PER_TILL:
                receipts.committed.popitem(last=False)
        codes: list[MarkingCode] = []
        for data in raw:
            try:
                codes.append(self.backend.parse_code(data))
            except CodeError as exc:
                # Not a marking code (a till's typo, a tare's label): nothing to record.
                log.info(
                    "mark unit: commit of receipt %s: a code left out (%s)", source.uid, exc.reason
                )
        # A check answered before this sale must not be repeated to a till after it: the
        # code is sold now (FMU-API 761c44c dropped its check cache to stop repeat sales).
        self.repeats.forget()
        if codes and source.type != OPENING_TARE:
            receipt = f"mark-unit:{source.pos}:{source.shift}:{source.number}:{source.uid}"
            self.backend.record_sale(codes, receipt, refund=source.refund)
            task = asyncio.create_task(self.backend.report_sale(codes, refund=source.refund))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return empty_answer()

    def cancel(self, document: Document, peer: str) -> dict[str, Any]:
        receipts = self._tills.get(peer)
        if receipts is not None:
            receipts.pending.pop(document.uid, None)
        return empty_answer()

    @property
    def pending(self) -> int:
        """Receipts pending, all tills'."""
        return sum(len(receipts.pending) for receipts in self._tills.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending receipts, all tills', roughly."""
        return sum(receipts.size for receipts in self._tills.values())

    async def aclose(self) -> None:
        """Let the Local Module reports under way finish (each has its own deadline), then
        let the backend release what it holds for the front."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await self.backend.aclose()


class PriceFacts(NamedTuple):
    """What the price rules (:func:`price_problem`) read of a code's check. Kept for each
    code checked lately (up to :data:`MAX_PENDING`) instead of the answer's facts and the
    parsed code: one object a code for the cyclic collector to track instead of three, and
    none of what those hold."""

    group_ids: tuple[int, ...] | None
    smp: int | None
    mrp: int | None


def _facts_of(result: TillCheck) -> PriceFacts | None:
    """What the price rules read of a check's answer (the online one first), or None when
    no answer carried facts."""
    facts = None
    for item in result.answers:
        if isinstance(item, SourceAnswer) and item.code == 0:
            facts = item.facts
            if item.online:
                break
    return None if facts is None else PriceFacts(facts.group_ids, facts.smp, facts.mrp)


def _one_code(document: Document) -> TillCode | None:
    """The code of a document that holds exactly one, else None."""
    pairs = document.codes()
    return pairs[0][1] if len(pairs) == 1 else None


def _scoped(document: Document, text: bytes) -> bytes:
    """A one-code document's code ``text`` with what else must match for a short code to
    take a full code's answer: the document's type (a refund's answer is not a sale's) and
    the position's organisation."""
    pairs = document.codes()
    inn, kpp = (pairs[0][0].inn, pairs[0][0].kpp) if len(pairs) == 1 else ("", "")
    return "\0".join((document.type, inn, kpp, "")).encode("utf-8") + text


def short_forms(code: MarkingCode | None) -> tuple[bytes, ...]:
    """The texts Frontol may send a fully read ``code`` again as, without its crypto tail
    (FMU-API commit 94bcda4; 287b37f matches them by ``SGtin()``, the GTIN and serial of the
    code's ``printView`` without their AIs): that, and the КИ itself. None for a code read
    without a tail: its check was no full one."""
    if code is None or not code.has_crypto:
        return ()
    forms = [code.ki]
    if code.ki.startswith("01") and code.gtin and code.serial:
        forms.append(code.gtin + code.serial)
    return tuple(dict.fromkeys(form.encode("utf-8") for form in forms))


def _any_inn(document: Document) -> bool:
    return any(position.inn for position in document.positions)


def price_problem(facts: Any, price: int) -> str | None:
    """The price rule ``price`` (kopecks) breaks for a code with ``facts``, as the Russian
    line FMU-API shows (``BeginDocument.cs``), or None."""
    groups = facts.group_ids or ()
    group = groups[0] if groups else None
    if facts.smp and group in (TOBACCO, NICOTINE) and facts.smp > price:
        return "цена ниже минимальной розничной!"
    if facts.mrp and group == TOBACCO and facts.mrp < price:
        return "цена выше максимальной розничной!"
    if facts.mrp and group == NICOTINE and facts.mrp > price:
        return "цена ниже минимальной розничной!"
    return None


# --------------------------------------------------------------------------------------------
# The services' answers, passed through


def _body(answer: SourceAnswer) -> dict[str, Any]:
    """The service's body as JSON ({} when it is not an object)."""
    try:
        obj = json.loads(answer.raw) if answer.raw else {}
    except ValueError:
        obj = {}
    return obj if isinstance(obj, dict) else {}


def _inner(body: dict[str, Any]) -> dict[str, Any]:
    """The check result object inside a service's body (LM v2 wraps it in ``results``)."""
    results = body.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        return results[0]
    return body


def _pass_through(
    answer: dict[str, Any],
    online: list[tuple[Position, SourceAnswer]],
    offline: list[tuple[Position, SourceAnswer]],
    tspiot: list[SourceAnswer],
    *,
    refund: bool,
    lm_in_req_id: bool = False,
) -> None:
    """Fill the answer's service fields as ``FmuAnswer.cs`` and its
    ``FillFieldsForFrontol_6_25_5`` do: ``truemark_response`` is the check answer (the
    online one, else the Local Module's with its ``inst``/``version``), with every code's
    entry; ``truemark_responses`` and ``offline_truemark_response`` repeat it per
    organisation for Frontol 6.25.5 and later; ``esm_response`` is the ТС ПИоТ's body in
    the v1 shape FMU-API declares for it (:func:`esm_response`).

    ``lm_in_req_id``: Frontol before 6.27 read the Local Module's instance and version from
    ``reqId`` (``UUID&Inst=…&Ver=…``; FMU-API commit bc13423, ``MarkChecker.cs``); the copies
    per organisation always carry the plain ``reqId`` (``FillFieldsForFrontol_6_25_5``)."""
    # Each answer parsed once; on a refund every copy the till may read shows the codes as
    # a refund needs them (FMU-API corrects the code objects all its copies share).
    views = {id(a): _view(_entry(a), refund) for _, a in online + offline}
    main = online or offline
    if main:
        merged = dict(views[id(main[0][1])])
        merged["codes"] = [c for _, a in main for c in views[id(a)].get("codes", [])]
        if lm_in_req_id and not online and merged.get("reqId"):
            merged["reqId"] = (
                f"{merged['reqId']}&Inst={merged.get('inst', '')}&Ver={merged.get('version', '')}"
            )
        answer["truemark_response"] = merged
    # The copies say whether the answer came offline (``isCheckedOffline``, FMU-API's
    # ``CheckInformation.cs``, commit ce1523f: true exactly when it carries an ``inst``).
    for position, item in online:
        answer["truemark_responses"].append(
            {
                "inn": position.inn,
                "kpp": position.kpp,
                "response": {**views[id(item)], "isCheckedOffline": False},
            }
        )
    for position, item in offline:
        answer["offline_truemark_response"].append(
            {
                "inn": position.inn,
                "kpp": position.kpp,
                "response": {"results": [{**views[id(item)], "isCheckedOffline": True}]},
            }
        )
    if tspiot:
        answer["esm_response"] = esm_response(_body(tspiot[0]))


def esm_response(body: dict[str, Any]) -> dict[str, Any]:
    """A ТС ПИоТ's ``codes/check`` body as ``esm_response`` in the one shape FMU-API declares
    for it, whatever version answered: ``FmuAnswer.EsmResponse`` is a
    ``TsPiotMarkCheckResponse``, the v1 answer (``codesResponse`` an object holding the array
    ``codesResponse``; ``TsPiotMarkCheckResponse.cs``, ``TsPiotCodesResponse.cs``). v2 and v3
    answer with the array directly under ``codesResponse``: it is wrapped so."""
    wrapped = body.get("codesResponse")
    if isinstance(wrapped, list):
        return {**body, "codesResponse": {"codesResponse": wrapped}}
    return body


def _offline(answer: SourceAnswer) -> bool:
    """An answer the till reads as offline: the Local Module's, or a ТС ПИоТ's with ``inst``."""
    if answer.source == "tspiot":
        entry = unwrap_entry(_body(answer))
        return entry is not None and bool(entry.get("inst"))
    return not answer.online


#: The code flags an offline answer's first code is read with (FMU-API ``MarkChecker.cs``):
#: the till validates them, and an offline service that answered has vouched for the code.
OFFLINE_FLAGS = ("found", "valid", "utilised", "isOwner", "verified", "realizable")


def _entry(answer: SourceAnswer) -> dict[str, Any]:
    """The check result object of a service's answer, as the till must read it. A ТС ПИоТ
    wraps it in ``codesResponse`` (``TsPiotServiceV1``–``V3``); the Local Module's v2 wraps
    it in ``results``.

    An offline answer (the Local Module's, or a ТС ПИоТ's with ``inst``) has its first code
    read as found, valid, utilised, owned, verified and realizable: the offline service says
    little per code, and Frontol's check of the answer would refuse it otherwise. FMU-API
    does the same (``MarkChecker.OfflineCheckAsync`` and ``TsPiotCheck``, commits 37f397e and
    369eb2c); markd's own verdict, already taken, is not changed by it."""
    body = _body(answer)
    if answer.source != "tspiot":
        entry = dict(_inner(body))
        offline = not answer.online
    else:
        unwrapped = unwrap_entry(body)
        if unwrapped is None:
            return {}
        entry = dict(unwrapped)
        offline = bool(entry.get("inst"))
    codes = entry.get("codes")
    if offline and isinstance(codes, list) and codes and isinstance(codes[0], dict):
        first = {**codes[0], **dict.fromkeys(OFFLINE_FLAGS, True)}
        entry["codes"] = [first, *codes[1:]]
    return entry


def _view(inner: dict[str, Any], refund: bool) -> dict[str, Any]:
    """A check result as the till gets it: its ``codes`` a list of objects, each as a
    refund's till must read it when ``refund``."""
    codes = inner.get("codes")
    entries = [c for c in codes if isinstance(c, dict)] if isinstance(codes, list) else []
    if refund:
        entries = [_refund_view(c) for c in entries]
    return {**inner, "codes": entries}


def _refund_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A code's entry as a refund's till must read it. FMU-API's ``CheckReturnDocument.cs``
    (``CodeDataTrueApi.ResetErrorFields`` with ``ResetSoldStatusForReturn``, then
    ``CorrectExpireDate``) rewrites every field Frontol refuses a refund on: the code reads
    found, verified, utilised and realizable, ``errorCode`` 0, not sold, and an expiry date
    already past moves to tomorrow.

    A date with no zone (``2020-01-01T00:00:00``) is read as the shop's local time, as FMU-API
    compares it with ``DateTime.Now``, and a moved one is written without a zone too."""
    view = dict(entry)
    view.update(found=True, verified=True, utilised=True, realizable=True, sold=False)
    view["errorCode"] = 0
    expiry = view.get("expireDate")
    if isinstance(expiry, str):
        try:
            when = datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            now = datetime.now(UTC)
            if when < now:
                view["expireDate"] = (now + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00.000Z")
        elif when is not None:
            local_now = datetime.now()  # the shop's time zone, the kiosk's clock
            if when < local_now:
                view["expireDate"] = (local_now + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00")
    return view
