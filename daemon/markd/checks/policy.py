"""The decision table: a parsed code, what the check services answered, the time and the price
in; a :class:`~markd.checks.verdict.Verdict` out (domain.md §6).

:func:`decide` is a pure function. It does no I/O, reads no clock and no configuration: the
chain (:mod:`markd.checks.chain`) gathers the store lookup and the answers within its deadline,
then asks the table. Tests call it with any combination of facts.

**The table** is :data:`RULES`, one :class:`Rule` per row, evaluated top to bottom; the first
row that applies to the situation and whose condition holds gives the verdict. Each row names
its reason code, its Russian screen text, the kind of answer it reads (``online``, ``offline``
or ``none``) and who decided (the verdict's ``source``). ``docs/decisions.md`` holds the table
as :func:`decision_table_markdown` renders it (a test keeps the two equal).

The order, and why:

1. **What markd knows itself** (store blocklist, sold here, a bare КИ) — a veto no remote
   answer lifts, and the only rows :func:`precheck` runs before any service is asked.
2. **The last online verdict kept in the store** (blocked, sold, expiry) and the expiry printed
   in the code (AI 17 / 7003) — facts that may deny but never vouch. A live online answer is
   newer information from the same authority and supersedes the cached one.
3. **No answer**: in mode ``tspiot`` a ТС ПИоТ failure always denies, one reason per failure
   kind (emergency 203 among them), as RETAIL-POS does (domain.md §5.6). In mode ``direct``
   the configured ``unanswered`` policy decides (domain.md §6.6): the verdict says
   ``unchecked``, its source is ``none`` and its tag 1265 is empty; when denying, a Local
   Module that is not ready (4045) or out of sync (4050) shows as its own reason.
4. **The answer** (online: CDN or ТС ПИоТ online; offline: Local Module or ТС ПИоТ offline):
   the envelope's ``code``, the per-code ``errorCode`` (1–11 each with its own reason), then
   the facts of domain.md §6.2 (online) or §6.3 (offline), prices, ownership; and last the
   allow rows.

**Which answer decides.** Mode ``direct``: the online answer when there is one, else the Local
Module's (both may arrive when the chain races them). A Local Module ``sold=true`` still denies
an online allow (LM 2.x keeps this till's recent sales, which ГИС МТ may not know yet). Mode
``tspiot``: the ТС ПИоТ's answer; answers and failures of other sources are ignored.

**Missing fields.** Online, a missing boolean is ``false`` (the protobuf JSON mapping the
ТС ПИоТ uses omits ``false``; for the CDN that reading fails closed). Offline, a missing
``found``/``verified``/``utilised``/``realizable``/``expireDate`` is *unknown* and not judged;
``isBlocked``/``sold`` missing are ``false``; price thresholds apply only when present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, tzinfo
from typing import Any, Literal

from markd.checks.results import (
    FAILURE_KINDS,
    NO_FACTS,
    CodeFacts,
    FailureKind,
    SourceAnswer,
    SourceFailure,
)
from markd.checks.verdict import Decision, Source, Verdict
from markd.codes import GROUP_IDS, REASONS, MarkingCode
from markd.store import Lookup

Mode = Literal["direct", "tspiot"]
MODES: tuple[Mode, ...] = ("direct", "tspiot")
#: The kind of answer a row reads: the deciding answer is online, offline, or there is none.
AnswerKind = Literal["online", "offline", "none"]
ONLINE: frozenset[AnswerKind] = frozenset({"online"})
OFFLINE: frozenset[AnswerKind] = frozenset({"offline"})
ANSWERED: frozenset[AnswerKind] = frozenset({"online", "offline"})
NOT_ONLINE: frozenset[AnswerKind] = frozenset({"offline", "none"})
NONE: frozenset[AnswerKind] = frozenset({"none"})
ALWAYS: frozenset[AnswerKind] = frozenset({"online", "offline", "none"})

#: Who a row names as the verdict's source: a fixed :data:`Source`, or ``answer`` (the deciding
#: answer: ``cdn``, ``lm``, ``tspiot`` or ``tspiot-offline``), or ``lm`` read from the Local
#: Module's answer while an online answer is the deciding one.
RuleSource = Literal["store", "parser", "none", "tspiot", "answer", "lm-answer"]

#: How a group's ``mrp`` bounds the price: equal to it, at most, at least, or not at all.
MrpRule = Literal["exact", "max", "min", "ignore"]

TOBACCO = GROUP_IDS["tobacco"]
#: Longest tag 1265 value a ККТ accepts (ФФД 1.2, domain.md §9).
TAG1265_MAX = 256


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class PriceRule:
    """How ``mrp`` and ``smp`` bound the sale price of one product group (domain.md §6.2,
    unconfirmed, hence configurable). Thresholds of 0 or absent are not applied."""

    mrp: MrpRule = "min"
    #: The price must be at least ``smp`` (the single minimum price, ЕМЦ).
    smp: bool = False


#: Per-group price rules: tobacco (3) must be sold at exactly its MRP and not below the ЕМЦ
#: (a spec table, unconfirmed); group 16 checks the ЕМЦ as FMU-API does by default.
DEFAULT_PRICE_RULES: Mapping[int, PriceRule] = {
    TOBACCO: PriceRule(mrp="exact", smp=True),
    16: PriceRule(mrp="min", smp=True),
}


@dataclass(frozen=True)
class PolicyOptions:
    """The decision table's settings: the open questions of domain.md §10 that a shop decides.

    Defaults and why:

    * ``unanswered = "allow"`` — the issue's ``[check] unanswered`` key, whose example is
      ``allow``: the law does not block a sale when no service answers in time (the 1.5 s
      notices, domain.md §6.6). domain.md advises ``deny`` for an unattended kiosk; a kiosk
      sets it. The verdict says ``unchecked`` either way and carries no tag 1265.
    * ``gray_zone_tobacco = True`` — tobacco with ``realizable=false`` and ``grayZone=true``
      may be sold (domain.md §6.2, unconfirmed); ГИС МТ itself flags such units.
    * ``require_owner = False`` — ``isOwner=false`` is a warning in most POS software and
      optional in FMU-API (domain.md §6.2 advice: off by default).
    * ``lm_sold_priority = True`` — a Local Module ``sold=true`` denies even when the online
      answer allows: LM 2.x records this shop's sales before ГИС МТ learns of them (§4.5).
      Denying never sells a unit twice; the cost is a false refusal while the LM lags a return.
    * ``expiry_last_day_sellable = False`` — a date-only expiry D (``…T00:00:00Z``, AI 17) is
      expired from the start of day D in the shop's time zone: the literal ``expireDate ≤ now``
      with the date read as a local day. True sells through day D («годен до» inclusive).
    * ``expiry_from_code = True`` — the expiry printed in the code (AI 17, AI 7003) denies when
      the deciding answer gave no ``expireDate`` (offline answers never do).
    * ``mrp_from_code = True`` — the MRP printed in a tobacco code (AI 8005 or the pack's
      base-80 field) stands in for an answer that gave no ``mrp``.
    * ``price_rules`` / ``default_price_rule`` — see :data:`DEFAULT_PRICE_RULES`; groups not
      listed treat ``mrp`` as a minimum price (domain.md §3.5) and ignore ``smp``.
    """

    unanswered: Literal["allow", "deny"] = "allow"
    gray_zone_tobacco: bool = True
    require_owner: bool = False
    lm_sold_priority: bool = True
    expiry_last_day_sellable: bool = False
    expiry_from_code: bool = True
    mrp_from_code: bool = True
    price_rules: Mapping[int, PriceRule] = field(default_factory=lambda: dict(DEFAULT_PRICE_RULES))
    default_price_rule: PriceRule = PriceRule()

    def price_rule(self, group_ids: Sequence[int]) -> PriceRule:
        """The rule of the first listed group the code belongs to, else the default."""
        for group in group_ids:
            rule = self.price_rules.get(group)
            if rule is not None:
                return rule
        return self.default_price_rule


DEFAULT_POLICY = PolicyOptions()


# --------------------------------------------------------------------------------------------
# Expiry


def _century_year(yy: int, now: datetime) -> int:
    """GS1 General Specifications §7.12: a two-digit year is read within -49…+50 years."""
    current = now.year
    year = current - current % 100 + yy
    if year - current >= 51:
        year -= 100
    elif current - year >= 50:
        year += 100
    return year


def _last_day(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - datetime(year, month, 1)).days


@dataclass(frozen=True, slots=True)
class Expiry:
    """When a unit expires: an instant, or a calendar day (``date_only``) judged in shop time."""

    at: datetime
    date_only: bool
    #: ``answer``, ``cache`` or ``code`` (AI 17 / 7003).
    origin: str

    @classmethod
    def of_answer(cls, at: datetime | None, origin: str = "answer") -> Expiry | None:
        """ГИС МТ sends a date-only expiry as midnight (``2025-06-02T00:00:00.000Z``): a value
        at exactly midnight in its own offset is read as that calendar day."""
        if at is None:
            return None
        return cls(at, at.timetz().replace(tzinfo=None) == time(0), origin)

    @classmethod
    def of_code(cls, code: MarkingCode, now: datetime, shop_tz: tzinfo) -> Expiry | None:
        """The expiry printed in the code: AI 7003 (YYMMDDHHMM, a wall-clock time, read in the
        shop's zone) or AI 17 (YYMMDD; day 00 is the month's last day, GS1 §3.4.7)."""
        try:
            text = code.extra.get("7003", "")
            if len(text) == 10 and text.isascii() and text.isdigit():
                year = _century_year(int(text[:2]), now)
                at = datetime(year, int(text[2:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]))
                return cls(at.replace(tzinfo=shop_tz), False, "code")
            text = code.extra.get("17", "")
            if len(text) == 6 and text.isascii() and text.isdigit():
                year, month, day = _century_year(int(text[:2]), now), int(text[2:4]), int(text[4:])
                if day == 0 and 1 <= month <= 12:
                    day = _last_day(year, month)
                return cls(datetime(year, month, day, tzinfo=UTC), True, "code")
        except ValueError:  # month 13, 31 February …: not a date; nothing known
            return None
        return None

    def passed(self, now: datetime, shop_tz: tzinfo, last_day_sellable: bool) -> bool:
        """True when the unit is expired at ``now`` in the shop at ``shop_tz``.

        A calendar day D is compared with today's date *in the shop's zone*: at 01:30 on D in
        Vladivostok the unit is already on day D, while a Moscow shop is still on D-1. Read as
        a UTC instant instead, Vladivostok would sell it until 10:00 local on day D.
        """
        if self.date_only:
            today = now.astimezone(shop_tz).date()
            day = self.at.date()
            return today > day if last_day_sellable else today >= day
        return self.at <= now

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.date().isoformat() if self.date_only else self.at.isoformat(),
            "date_only": self.date_only,
            "origin": self.origin,
        }


# --------------------------------------------------------------------------------------------
# The situation a row reads


@dataclass(frozen=True)
class Situation:
    """Everything the rows read, prepared once per :func:`decide` call."""

    code: MarkingCode
    store: Lookup | None
    mode: Mode
    now: datetime
    shop_tz: tzinfo
    price_kopecks: int | None
    options: PolicyOptions
    #: The answer the verdict rests on, and its kind (``none`` without one).
    answer: SourceAnswer | None
    kind: AnswerKind
    #: The Local Module's answer when it is not the deciding one (direct mode).
    lm: SourceAnswer | None
    #: Failures of the sources the mode consults.
    failures: tuple[SourceFailure, ...]
    #: The store's cached online facts, when it holds any.
    cached: CodeFacts | None
    group_ids: tuple[int, ...]
    expiry: Expiry | None
    code_expiry: Expiry | None
    cached_expiry: Expiry | None
    mrp: int | None
    smp: int | None

    @property
    def facts(self) -> CodeFacts:
        return self.answer.facts if self.answer is not None else NO_FACTS

    @property
    def tobacco(self) -> bool:
        return TOBACCO in self.group_ids

    @property
    def price_rule(self) -> PriceRule:
        return self.options.price_rule(self.group_ids)

    def failure_kinds(self, source: str) -> set[str]:
        return {f.kind for f in self.failures if f.source == source}

    def tspiot_failure(self) -> FailureKind | None:
        """The kind of the last ТС ПИоТ failure (mode tspiot), None when it reported none."""
        kinds = [f.kind for f in self.failures if f.source == "tspiot"]
        return kinds[-1] if kinds else None


def _first(answers: Sequence[SourceAnswer], source: str, online: bool) -> SourceAnswer | None:
    for answer in answers:
        if answer.source == source and answer.online == online:
            return answer
    return None


def _situation(
    code: MarkingCode,
    store: Lookup | None,
    results: Sequence[SourceAnswer | SourceFailure],
    mode: Mode,
    now: datetime,
    shop_tz: tzinfo,
    price_kopecks: int | None,
    options: PolicyOptions,
) -> Situation:
    consulted = ("tspiot",) if mode == "tspiot" else ("cdn", "lm")
    answers = [r for r in results if isinstance(r, SourceAnswer) and r.source in consulted]
    failures = tuple(r for r in results if isinstance(r, SourceFailure) and r.source in consulted)
    # Online first (domain.md §3.6: online decides whenever it answered), then offline.
    ordered = [(s, o) for o in (True, False) for s in consulted]
    answer = next((a for s, o in ordered if (a := _first(answers, s, o)) is not None), None)
    lm = next((a for a in answers if a.source == "lm" and a is not answer), None)
    kind: AnswerKind = "none" if answer is None else ("online" if answer.online else "offline")
    facts = answer.facts if answer is not None else NO_FACTS
    cached = None
    if store is not None and store.cached is not None:
        cached = CodeFacts.from_json(store.cached.facts)
    if facts.group_ids:
        group_ids = facts.group_ids
    else:
        group_ids = (code.group_id,) if code.group_id is not None else ()
    mrp = facts.mrp if facts.mrp else None
    if mrp is None and options.mrp_from_code and code.mrp_kopecks:
        mrp = code.mrp_kopecks
    return Situation(
        code=code,
        store=store,
        mode=mode,
        now=now,
        shop_tz=shop_tz,
        price_kopecks=price_kopecks,
        options=options,
        answer=answer,
        kind=kind,
        lm=lm,
        failures=failures,
        cached=cached,
        group_ids=group_ids,
        expiry=Expiry.of_answer(facts.expire_date),
        code_expiry=Expiry.of_code(code, now, shop_tz),
        cached_expiry=Expiry.of_answer(cached.expire_date, "cache") if cached else None,
        mrp=mrp if mrp and mrp > 0 else None,
        smp=facts.smp if facts.smp and facts.smp > 0 else None,
    )


# --------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Rule:
    """One row of the decision table."""

    id: str
    #: Kebab-case reason code the verdict carries (``MARKD_REASON``).
    reason: str
    #: Short Russian text for the customer screen.
    message_ru: str
    decision: Literal["allow", "deny"]
    #: The answer kinds the row reads; it is skipped for the others.
    applies_to: frozenset[AnswerKind]
    #: The condition in words, for ``docs/decisions.md``.
    condition: str
    when: Callable[[Situation], bool] = field(repr=False)
    source: RuleSource = "answer"
    #: Facts to record in the verdict's ``details`` when the row fires.
    details: Callable[[Situation], dict[str, Any]] | None = field(default=None, repr=False)
    #: Decidable before any service is asked (the row reads only the code and the store).
    precheck: bool = False

    def applies(self, situation: Situation) -> bool:
        return situation.kind in self.applies_to and self.when(situation)


def _price_breaks(s: Situation, rule: MrpRule, broken: Callable[[int, int], bool]) -> bool:
    """The price is given, the group's rule is ``rule`` and ``broken(price, mrp)`` holds."""
    return (
        s.price_kopecks is not None
        and s.mrp is not None
        and s.price_rule.mrp == rule
        and broken(s.price_kopecks, s.mrp)
    )


def _below_smp(s: Situation) -> bool:
    return (
        s.price_kopecks is not None
        and s.smp is not None
        and s.price_rule.smp
        and s.price_kopecks < s.smp
    )


def _price_details(s: Situation) -> dict[str, Any]:
    return {"price_kopecks": s.price_kopecks, "mrp": s.mrp, "smp": s.smp, "groups": s.group_ids}


def _block_details(s: Situation) -> dict[str, Any]:
    assert s.store is not None and s.store.blocked is not None
    block = s.store.blocked
    return {
        "block_kind": block.kind,
        "block_key": block.key,
        "block_reason": block.reason,
        "block_source": block.source,
        "block_since": block.since,
    }


def _sold_details(s: Situation) -> dict[str, Any]:
    assert s.store is not None and s.store.sold is not None
    return {"receipt": s.store.sold.receipt, "sold_at": s.store.sold.at}


def _cached_details(s: Situation) -> dict[str, Any]:
    assert s.store is not None and s.store.cached is not None
    return {"cached_at": s.store.cached.at, "cached_fresh": s.store.cached.fresh, **_ogvs(s.cached)}


def _ogvs(facts: CodeFacts | None) -> dict[str, Any]:
    return {"ogvs": list(facts.ogvs)} if facts is not None and facts.ogvs is not None else {}


def _scrub(text: str | None, code: MarkingCode) -> str | None:
    """A service's free text with the scanned code's crypto tail cut out (an error message may
    quote the code as sent), so it can go to the journal. Short and one line."""
    if text is None:
        return None
    text = text.replace(code.km, code.ki)
    for value in code.crypto.values():
        if value:
            text = text.replace(value, "<crypto>")
    return " ".join(text.split())[:200]


def _answer_error_details(s: Situation) -> dict[str, Any]:
    assert s.answer is not None
    return {"answer_code": s.answer.code, "description": _scrub(s.answer.description, s.code)}


def _error_details(s: Situation) -> dict[str, Any]:
    return {"error_code": s.facts.error_code, "error_message": _scrub(s.facts.message, s.code)}


def _expiry_details(expiry: Expiry | None, s: Situation) -> dict[str, Any]:
    out: dict[str, Any] = {"shop_tz": str(s.shop_tz)}
    if expiry is not None:
        out["expiry"] = expiry.as_dict()
    return out


def _expired(expiry: Expiry | None, s: Situation) -> bool:
    return expiry is not None and expiry.passed(
        s.now, s.shop_tz, s.options.expiry_last_day_sellable
    )


def _is_true(value: bool | None) -> bool:
    return value is True


def _tag_too_long_or_missing(s: Situation) -> bool:
    assert s.answer is not None
    answer = s.answer
    return not answer.req_id or not answer.req_timestamp or len(tag1265(answer)) > TAG1265_MAX


#: errorCode → (reason, Russian text), domain.md §3.5.
ERROR_CODES: dict[int, tuple[str, str]] = {
    1: ("code-validation-error", "Продажа запрещена: ошибка валидации кода маркировки"),
    2: ("code-without-gtin", "Продажа запрещена: в коде маркировки нет GTIN"),
    3: ("code-without-serial", "Продажа запрещена: в коде маркировки нет серийного номера"),
    4: ("code-bad-characters", "Продажа запрещена: код содержит недопустимые символы"),
    5: ("crypto-format-mismatch", "Продажа запрещена: криптохвост не соответствует типу кода"),
    6: ("crypto-signature-invalid", "Продажа запрещена: подпись кода недействительна"),
    7: ("crypto-key-invalid", "Продажа запрещена: ключ проверки кода недействителен"),
    8: ("not-verified-by-issuer", "Продажа запрещена: код не прошёл проверку в стране эмитента"),
    9: ("unsupported-ai", "Продажа запрещена: код содержит неподдерживаемые элементы"),
    10: ("not-found-gis-mt", "Продажа запрещена: код не найден в Честном ЗНАКе"),
    11: ("not-found-crossborder", "Продажа запрещена: код не найден в трансграничной системе"),
}

#: Failure kind → (reason, Russian text) for mode ``tspiot``, where every failure denies.
TSPIOT_FAILURES: dict[FailureKind, tuple[str, str]] = {
    "timeout": ("tspiot-timeout", "Продажа невозможна: ТС ПИоТ не ответил вовремя"),
    "unreachable": ("tspiot-unreachable", "Продажа невозможна: ТС ПИоТ недоступен"),
    "http-error": ("tspiot-http-error", "Продажа невозможна: ТС ПИоТ отклонил запрос"),
    "bad-answer": ("tspiot-bad-answer", "Продажа невозможна: непонятный ответ ТС ПИоТ"),
    "unauthorized": ("tspiot-unauthorized", "Продажа невозможна: ТС ПИоТ не принял ключ доступа"),
    "emergency": ("tspiot-emergency", "Продажа невозможна: ТС ПИоТ в аварийном режиме"),
    "lm-not-ready": ("tspiot-lm-not-ready", "Продажа невозможна: локальный модуль не готов"),
    "lm-sync-error": (
        "tspiot-lm-sync-error",
        "Продажа невозможна: локальный модуль не синхронизирован",
    ),
    "throttled": ("tspiot-throttled", "Продажа невозможна: ТС ПИоТ перегружен, повторите"),
    "server-error": ("tspiot-server-error", "Продажа невозможна: сбой ТС ПИоТ"),
    "proxy-unreachable": (
        "tspiot-proxy-unreachable",
        "Продажа невозможна: прокси-сервер недоступен",
    ),
    "proxy-timeout": ("tspiot-proxy-timeout", "Продажа невозможна: прокси-сервер не ответил"),
    "proxy-auth": (
        "tspiot-proxy-auth",
        "Продажа невозможна: прокси-сервер не принял логин и пароль",
    ),
    "proxy-error": ("tspiot-proxy-error", "Продажа невозможна: сбой прокси-сервера"),
}
assert set(TSPIOT_FAILURES) == set(FAILURE_KINDS)

EXPIRED_RU = "Продажа запрещена: истёк срок годности"


def _error_code_rule(number: int, reason: str, text: str) -> Rule:
    return Rule(
        id=f"error-code-{number}",
        reason=reason,
        message_ru=text,
        decision="deny",
        applies_to=ANSWERED,
        condition=f"errorCode = {number}",
        when=lambda s: s.facts.error_code == number,
        details=_error_details,
    )


def _tspiot_failure_rule(kind: FailureKind, reason: str, text: str) -> Rule:
    return Rule(
        id=f"tspiot-{kind}",
        reason=reason,
        message_ru=text,
        decision="deny",
        applies_to=NONE,
        condition=f"mode tspiot; the ТС ПИоТ failed with `{kind}`",
        when=lambda s: s.mode == "tspiot" and s.tspiot_failure() == kind,
        source="tspiot",
    )


RULES: tuple[Rule, ...] = (
    # -- 1. What markd knows itself ----------------------------------------------------------
    Rule(
        id="store-blocked",
        reason="blocked-locally",
        message_ru="Продажа запрещена: код в локальном стоп-листе",
        decision="deny",
        applies_to=ALWAYS,
        condition="the store's blocklist holds the КИ, its series or its GTIN (stale or not)",
        when=lambda s: s.store is not None and s.store.blocked is not None,
        source="store",
        details=_block_details,
        precheck=True,
    ),
    Rule(
        id="store-sold",
        reason="sold-here",
        message_ru="Продажа запрещена: этот экземпляр уже продан",
        decision="deny",
        applies_to=ALWAYS,
        condition="the store records a sale of this unit here, not returned",
        when=lambda s: s.store is not None and s.store.sold is not None,
        source="store",
        details=_sold_details,
        precheck=True,
    ),
    Rule(
        id="missing-crypto",
        reason="missing-crypto",
        message_ru=REASONS["missing-crypto"][1],
        decision="deny",
        applies_to=ALWAYS,
        condition="the scan is a bare КИ without crypto tail (the law wants the full code)",
        when=lambda s: s.code.shape == "ki" or not s.code.crypto,
        source="parser",
        precheck=True,
    ),
    # -- 2. Facts that may deny but never vouch ----------------------------------------------
    Rule(
        id="cache-blocked",
        reason="blocked-cached",
        message_ru="Продажа запрещена: код заблокирован (по последней онлайн-проверке)",
        decision="deny",
        applies_to=NOT_ONLINE,
        condition="no online answer; the cached online facts say isBlocked (fresh or not)",
        when=lambda s: s.cached is not None and s.cached.is_blocked is True,
        source="store",
        details=_cached_details,
    ),
    Rule(
        id="cache-sold",
        reason="sold-cached",
        message_ru="Продажа запрещена: товар выведен из оборота (по последней онлайн-проверке)",
        decision="deny",
        applies_to=NOT_ONLINE,
        condition="no online answer; the cached online facts say sold",
        when=lambda s: s.cached is not None and s.cached.sold is True,
        source="store",
        details=_cached_details,
    ),
    Rule(
        id="cache-expired",
        reason="expired-cached",
        message_ru=EXPIRED_RU,
        decision="deny",
        applies_to=NOT_ONLINE,
        condition="no online answer; the cached expireDate has passed in the shop's time zone",
        when=lambda s: _expired(s.cached_expiry, s),
        source="store",
        details=lambda s: _expiry_details(s.cached_expiry, s),
    ),
    Rule(
        id="code-expired",
        reason="expired-by-code",
        message_ru="Продажа запрещена: истёк срок годности (по коду маркировки)",
        decision="deny",
        applies_to=ALWAYS,
        condition="option expiry_from_code; the deciding answer gave no expireDate; the "
        "code's AI 7003 / AI 17 expiry has passed in the shop's time zone",
        when=lambda s: (
            s.options.expiry_from_code and s.expiry is None and _expired(s.code_expiry, s)
        ),
        source="parser",
        details=lambda s: _expiry_details(s.code_expiry, s),
    ),
    # -- 3. No answer ------------------------------------------------------------------------
    *(_tspiot_failure_rule(kind, *TSPIOT_FAILURES[kind]) for kind in FAILURE_KINDS),
    Rule(
        id="tspiot-no-answer",
        reason="tspiot-no-answer",
        message_ru="Продажа невозможна: ТС ПИоТ не дал ответа",
        decision="deny",
        applies_to=NONE,
        condition="mode tspiot, neither an answer nor a failure from the ТС ПИоТ",
        when=lambda s: s.mode == "tspiot",
        source="tspiot",
    ),
    Rule(
        id="unanswered-lm-sync-error",
        reason="lm-sync-error",
        message_ru="Продажа невозможна: локальный модуль не синхронизирован",
        decision="deny",
        applies_to=NONE,
        condition="mode direct, nothing answered, unanswered = deny, the Local Module "
        "reported 4050 (sync_error)",
        when=lambda s: (
            s.mode == "direct"
            and s.options.unanswered == "deny"
            and "lm-sync-error" in s.failure_kinds("lm")
        ),
        source="none",
    ),
    Rule(
        id="unanswered-lm-not-ready",
        reason="lm-not-ready",
        message_ru="Продажа невозможна: локальный модуль не готов",
        decision="deny",
        applies_to=NONE,
        condition="mode direct, nothing answered, unanswered = deny, the Local Module "
        "reported 4045 (not_configured / initialization)",
        when=lambda s: (
            s.mode == "direct"
            and s.options.unanswered == "deny"
            and "lm-not-ready" in s.failure_kinds("lm")
        ),
        source="none",
    ),
    Rule(
        id="unanswered-deny",
        reason="unchecked",
        message_ru="Продажа невозможна: проверка кода недоступна",
        decision="deny",
        applies_to=NONE,
        condition="mode direct, nothing answered, unanswered = deny",
        when=lambda s: s.mode == "direct" and s.options.unanswered == "deny",
        source="none",
    ),
    Rule(
        id="unanswered-allow",
        reason="unchecked",
        message_ru="Продажа разрешена без проверки: Честный ЗНАК недоступен",
        decision="allow",
        applies_to=NONE,
        condition="mode direct, nothing answered, unanswered = allow (tag 1265 empty)",
        when=lambda s: s.mode == "direct" and s.options.unanswered == "allow",
        source="none",
    ),
    # -- 4. The answer -----------------------------------------------------------------------
    Rule(
        id="answer-error",
        reason="answer-error",
        message_ru="Продажа запрещена: сервис проверки вернул ошибку",
        decision="deny",
        applies_to=ANSWERED,
        condition="the answer's top-level code ≠ 0",
        when=lambda s: s.answer is not None and s.answer.code != 0,
        details=_answer_error_details,
    ),
    *(_error_code_rule(n, reason, text) for n, (reason, text) in ERROR_CODES.items()),
    Rule(
        id="error-code-other",
        reason="check-error",
        message_ru="Продажа запрещена: ошибка проверки кода",
        decision="deny",
        applies_to=ANSWERED,
        condition="errorCode not 0, not 1–11 (an unknown error is still an error)",
        when=lambda s: s.facts.error_code not in (None, 0, *ERROR_CODES),
        details=_error_details,
    ),
    Rule(
        id="not-found",
        reason="not-found",
        message_ru="Продажа запрещена: код не найден в Честном ЗНАКе",
        decision="deny",
        applies_to=ONLINE,
        condition="found is not true (missing = false online)",
        when=lambda s: not _is_true(s.facts.found),
    ),
    Rule(
        id="not-utilised",
        reason="not-utilised",
        message_ru="Продажа запрещена: нет сведений о нанесении кода",
        decision="deny",
        applies_to=ONLINE,
        condition="utilised is not true",
        when=lambda s: not _is_true(s.facts.utilised),
    ),
    Rule(
        id="not-verified",
        reason="not-verified",
        message_ru="Продажа запрещена: код не прошёл проверку подлинности",
        decision="deny",
        applies_to=ONLINE,
        condition="verified is not true (crypto tail not verified)",
        when=lambda s: not _is_true(s.facts.verified),
    ),
    Rule(
        id="sold",
        reason="sold",
        message_ru="Продажа запрещена: товар уже выведен из оборота",
        decision="deny",
        applies_to=ANSWERED,
        condition="sold is true (offline: LM 2.x sold-codes database)",
        when=lambda s: s.facts.sold is True,
    ),
    Rule(
        id="blocked-grey-gtin",
        reason="blocked-grey-gtin",
        message_ru="Продажа запрещена: нужна онлайн-проверка (серый список)",
        decision="deny",
        applies_to=OFFLINE,
        condition="offline isBlocked and isGreyGtin: only an online check can settle it",
        when=lambda s: s.facts.is_blocked is True and s.facts.is_grey_gtin is True,
        details=lambda s: _ogvs(s.facts),
    ),
    Rule(
        id="blocked",
        reason="blocked",
        message_ru="Продажа запрещена: продажа заблокирована госорганом",
        decision="deny",
        applies_to=ANSWERED,
        condition="isBlocked is true (details list ogvs)",
        when=lambda s: s.facts.is_blocked is True,
        details=lambda s: _ogvs(s.facts),
    ),
    Rule(
        id="not-realizable",
        reason="not-realizable",
        message_ru="Продажа запрещена: товар не введён в оборот",
        decision="deny",
        applies_to=ONLINE,
        condition="realizable is not true, unless tobacco with grayZone and option "
        "gray_zone_tobacco",
        when=lambda s: (
            not _is_true(s.facts.realizable)
            and not (s.options.gray_zone_tobacco and s.tobacco and s.facts.gray_zone is True)
        ),
    ),
    Rule(
        id="expired",
        reason="expired",
        message_ru=EXPIRED_RU,
        decision="deny",
        applies_to=ANSWERED,
        condition="expireDate has passed, judged in the shop's time zone (a date-only "
        "value is that whole day in shop time)",
        when=lambda s: _expired(s.expiry, s),
        details=lambda s: _expiry_details(s.expiry, s),
    ),
    Rule(
        id="lm-sold",
        reason="sold-lm",
        message_ru="Продажа запрещена: экземпляр уже продан (локальный модуль)",
        decision="deny",
        applies_to=ONLINE,
        condition="option lm_sold_priority; the Local Module's answer (code 0) says sold "
        "while the online answer decides",
        when=lambda s: (
            s.options.lm_sold_priority
            and s.lm is not None
            and s.lm.code == 0
            and s.lm.facts.sold is True
        ),
        source="lm-answer",
    ),
    Rule(
        id="price-not-mrp",
        reason="price-not-mrp",
        message_ru="Продажа запрещена: цена не равна МРЦ",
        decision="deny",
        applies_to=ANSWERED,
        condition="price given; the group's rule is mrp = exact; mrp > 0 and price ≠ mrp",
        when=lambda s: _price_breaks(s, "exact", lambda price, mrp: price != mrp),
        details=_price_details,
    ),
    Rule(
        id="price-above-mrp",
        reason="price-above-mrp",
        message_ru="Продажа запрещена: цена выше МРЦ",
        decision="deny",
        applies_to=ANSWERED,
        condition="price given; the group's rule is mrp = max; price > mrp",
        when=lambda s: _price_breaks(s, "max", lambda price, mrp: price > mrp),
        details=_price_details,
    ),
    Rule(
        id="price-below-mrp",
        reason="price-below-mrp",
        message_ru="Продажа запрещена: цена ниже минимальной",
        decision="deny",
        applies_to=ANSWERED,
        condition="price given; the group's rule is mrp = min; price < mrp",
        when=lambda s: _price_breaks(s, "min", lambda price, mrp: price < mrp),
        details=_price_details,
    ),
    Rule(
        id="price-below-smp",
        reason="price-below-smp",
        message_ru="Продажа запрещена: цена ниже единой минимальной цены",
        decision="deny",
        applies_to=ANSWERED,
        condition="price given; the group's rule checks smp; smp > 0 and price < smp",
        when=_below_smp,
        details=_price_details,
    ),
    Rule(
        id="not-owner",
        reason="not-owner",
        message_ru="Продажа запрещена: товар числится за другим участником",
        decision="deny",
        applies_to=ONLINE,
        condition="option require_owner; isOwner is not true while isTracking is true",
        when=lambda s: (
            s.options.require_owner
            and not _is_true(s.facts.is_owner)
            and s.facts.is_tracking is True
        ),
    ),
    Rule(
        id="answer-incomplete",
        reason="answer-incomplete",
        message_ru="Продажа запрещена: неполный ответ сервиса проверки",
        decision="deny",
        applies_to=ANSWERED,
        condition=f"reqId or reqTimestamp missing, or tag 1265 longer than {TAG1265_MAX} "
        "characters: the receipt could not carry the check",
        when=_tag_too_long_or_missing,
    ),
    Rule(
        id="allow-online",
        reason="allowed",
        message_ru="Продажа разрешена",
        decision="allow",
        applies_to=ONLINE,
        condition="an online answer no row above refused",
        when=lambda s: True,
    ),
    Rule(
        id="allow-offline",
        reason="allowed-offline",
        message_ru="Продажа разрешена (офлайн-проверка)",
        decision="allow",
        applies_to=OFFLINE,
        condition="an offline answer no row above refused (it checked the block, and sold on "
        "LM 2.x)",
        when=lambda s: True,
    ),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
assert len(RULES_BY_ID) == len(RULES), "rule ids must be unique"

#: Reason of a verdict no row produced (a gap in the table; the tests keep it unreachable).
POLICY_GAP = "policy-gap"


# --------------------------------------------------------------------------------------------
# Tag 1265 and the verdict


def tag1265(answer: SourceAnswer) -> str:
    """The tag 1265 value for an answer (domain.md §7.6): ``UUID=<reqId>&Time=<reqTimestamp>``
    online; offline (Local Module, ТС ПИоТ ``isCheckedOffline``) adds ``&Inst=<inst>&Ver=<ver>``.
    ``Time`` is the ``reqTimestamp`` text exactly as received. Empty without reqId or time."""
    if not answer.req_id or not answer.req_timestamp:
        return ""
    tag = f"UUID={answer.req_id}&Time={answer.req_timestamp}"
    if not answer.online:
        tag += f"&Inst={answer.inst or ''}&Ver={answer.version or ''}"
    return tag


def _answer_source(answer: SourceAnswer) -> Source:
    if answer.source == "tspiot":
        return "tspiot" if answer.online else "tspiot-offline"
    return answer.source


def _verdict(rule: Rule | None, s: Situation, scanner: str) -> Verdict:
    if rule is None:  # unreachable while the table is complete; fail closed if it is not
        return Verdict(
            decision="deny",
            reason=POLICY_GAP,
            message_ru="Продажа невозможна: ошибка проверки",
            source="none",
            scanner=scanner,
            ki=s.code.ki,
            shape=s.code.shape,
            repairs=tuple(s.code.repairs),
            details={"kind": s.kind, "mode": s.mode},
        )
    record = s.lm if rule.source == "lm-answer" else s.answer
    source: Source
    if rule.source == "answer" and s.answer is not None:
        source = _answer_source(s.answer)
    elif rule.source == "lm-answer":
        source = "lm"
    elif rule.source == "answer":
        source = "none"
    else:
        source = rule.source
    details: dict[str, Any] = {"rule": rule.id}
    if rule.details is not None:
        details.update(rule.details(s))
    if s.failures:
        details["failures"] = [f.summary() for f in s.failures]
    if s.store is not None and s.store.stale:
        details["store_stale"] = True
    if rule.id == "allow-online" and not _is_true(s.facts.realizable):
        details["gray_zone"] = True  # sold under the tobacco grey-zone exception
    decision: Decision = rule.decision
    return Verdict(
        decision=decision,
        reason=rule.reason,
        message_ru=rule.message_ru,
        source=source,
        scanner=scanner,
        ki=s.code.ki,
        shape=s.code.shape,
        repairs=tuple(s.code.repairs),
        req_id=record.req_id if record is not None else None,
        req_timestamp=record.req_timestamp if record is not None else None,
        inst=record.inst if record is not None else None,
        version=record.version if record is not None else None,
        tag1265=tag1265(record) if record is not None else "",
        checked=rule.source in ("answer", "lm-answer") and record is not None,
        details=details,
    )


def _check_args(mode: str, now: datetime) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (expiry is judged in the shop's zone)")


def decide(
    code: MarkingCode,
    *,
    store: Lookup | None,
    answers: Sequence[SourceAnswer | SourceFailure],
    mode: Mode,
    now: datetime,
    shop_tz: tzinfo,
    price_kopecks: int | None,
    options: PolicyOptions = DEFAULT_POLICY,
    scanner: str = "",
) -> Verdict:
    """The verdict for ``code`` from the store lookup and the sources' answers and failures.

    ``mode``: ``direct`` (CDN and Local Module answers and failures are read) or ``tspiot``
    (only the ТС ПИоТ's). ``now`` must be aware; ``shop_tz`` is the shop's zone
    (``[terminal] timezone``). ``price_kopecks``: the sale price, or None when not known
    (price rows are skipped). ``scanner`` is copied into the verdict; the chain sets
    ``latency_ms``. Always returns ``allow`` or ``deny``; raises only ``ValueError`` for an
    unknown mode or a naive ``now``.
    """
    _check_args(mode, now)
    s = _situation(code, store, answers, mode, now, shop_tz, price_kopecks, options)
    for rule in RULES:
        if rule.applies(s):
            return _verdict(rule, s, scanner)
    return _verdict(None, s, scanner)


def precheck(
    code: MarkingCode,
    *,
    store: Lookup | None,
    mode: Mode | Literal["store-only"],
    now: datetime,
    shop_tz: tzinfo,
    options: PolicyOptions = DEFAULT_POLICY,
    scanner: str = "",
) -> Verdict | None:
    """The verdict of the rows decidable before any service is asked (store blocked, sold
    here, bare КИ), or None when the sources must be asked. The chain calls this first so a
    known-blocked unit is denied at once (domain.md §6.4).

    Mode ``store-only`` (a chain with no services) never gets None: what no row here denies
    is allowed by :data:`STORE_ONLY_ALLOW`, the development mode's row."""
    if mode == "store-only":
        _check_args("direct", now)  # the rows read no mode; only ``now`` is checked
    else:
        _check_args(mode, now)
    s = _situation(code, store, (), mode, now, shop_tz, None, options)  # type: ignore[arg-type]
    for rule in RULES:
        if rule.precheck and rule.applies(s):
            return _verdict(rule, s, scanner)
    if mode == "store-only":
        return _verdict(STORE_ONLY_ALLOW, s, scanner)
    return None


#: Mode ``store-only`` (development and demo): after the rows :func:`precheck` reads, a unit
#: is allowed without asking Честный ЗНАК, and the text says so. A stale store still denies
#: what it knows; it never vouches: this allow is the mode's, not the store's.
STORE_ONLY_ALLOW = Rule(
    id="store-only-allow",
    reason="store-only-not-blocked",
    message_ru="Разрешено (режим разработки: проверен только локальный стоп-лист)",
    decision="allow",
    applies_to=NONE,
    condition="mode store-only, and no row above denies (no service is asked)",
    when=lambda s: True,
    source="none",
)


# --------------------------------------------------------------------------------------------
# The table as documentation

_SOURCE_TEXT: dict[str, str] = {
    "answer": "answer",
    "lm-answer": "lm",
    "store": "store",
    "parser": "parser",
    "none": "none",
    "tspiot": "tspiot",
}


def decision_table_markdown() -> str:
    """:data:`RULES` as the Markdown table in ``docs/decisions.md`` (a test compares them)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| # | Rule | Reads | Condition | Decision | Reason | Source | Screen text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ("online", "offline", "none")
    for number, rule in enumerate(RULES, 1):
        reads = ", ".join(k for k in order if k in rule.applies_to)
        lines.append(
            f"| {number} | `{rule.id}` | {reads} | {cell(rule.condition)} | {rule.decision} "
            f"| `{rule.reason}` | {_SOURCE_TEXT[rule.source]} | {cell(rule.message_ru)} |"
        )
    return "\n".join(lines) + "\n"
