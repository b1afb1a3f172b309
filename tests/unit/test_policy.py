"""The decision table (markd.checks.policy) row by row, its order, expiry in the shop's time
zone, tag 1265, and the typed answers it reads (markd.checks.results)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DAIRY_KI, GS, SHOES, TOBACCO_PACK, WATER, WATER_KI
from markd.checks.policy import (
    DEFAULT_POLICY,
    ERROR_CODES,
    POLICY_GAP,
    RULES,
    RULES_BY_ID,
    TSPIOT_FAILURES,
    PolicyOptions,
    PriceRule,
    decide,
    decision_table_markdown,
    precheck,
    tag1265,
)
from markd.checks.results import (
    FAILURE_KINDS,
    SOURCE_KINDS,
    CodeFacts,
    SourceAnswer,
    SourceFailure,
    parse_timestamp,
    timestamp_text,
)
from markd.checks.verdict import Verdict
from markd.codes import CodesOptions, MarkingCode, parse
from markd.store import Lookup, Store
from markd.store.core import BlockEntry, CachedVerdict, SoldEntry
from markd.store.keys import gtin_key, ki_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "decisions.md"

MSK = ZoneInfo("Europe/Moscow")  # UTC+3
VVO = ZoneInfo("Asia/Vladivostok")  # UTC+10
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
REQ_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
INST = "b0a1c2d3-0000-4000-8000-000000000001"
TIME = "1735000000000"
PAST = datetime(2024, 1, 1, tzinfo=UTC)
FUTURE = datetime(2027, 1, 1, tzinfo=UTC)

#: A dairy code carrying its expiry date (AI 17) of 31 May 2025 (before NOW).
DAIRY_EXPIRED = f"{DAIRY_KI}{GS}17250531{GS}93dGVz"
#: The same with a date in the future.
DAIRY_FRESH = f"{DAIRY_KI}{GS}17270101{GS}93dGVz"


# --------------------------------------------------------------------------------------------
# Builders


def code(text: str = WATER) -> MarkingCode:
    return parse(text)


def online(
    *, source: str = "cdn", code_: int = 0, req_id: str | None = REQ_ID, **facts: Any
) -> SourceAnswer:
    """An online answer that allows unless ``facts`` say otherwise."""
    base: dict[str, Any] = {
        "found": True,
        "utilised": True,
        "verified": True,
        "realizable": True,
        "sold": False,
        "is_blocked": False,
        "error_code": 0,
    }
    base.update(facts)
    return SourceAnswer(
        source=source,  # type: ignore[arg-type]
        online=True,
        code=code_,
        req_id=req_id,
        req_timestamp=TIME,
        facts=CodeFacts(**base),
    )


def offline(*, source: str = "lm", code_: int = 0, **facts: Any) -> SourceAnswer:
    """An offline answer (Local Module, or ТС ПИоТ isCheckedOffline) that allows."""
    base: dict[str, Any] = {"is_blocked": False, "sold": False}
    base.update(facts)
    return SourceAnswer(
        source=source,  # type: ignore[arg-type]
        online=False,
        code=code_,
        req_id=REQ_ID,
        req_timestamp=TIME,
        inst=INST,
        version="2.6.0",
        facts=CodeFacts(**base),
    )


def failed(source: str, kind: str, **extra: Any) -> SourceFailure:
    return SourceFailure(source=source, kind=kind, **extra)  # type: ignore[arg-type]


def run(
    answers: Sequence[SourceAnswer | SourceFailure] = (),
    *,
    scanned: MarkingCode | None = None,
    store: Lookup | None = None,
    mode: str = "direct",
    now: datetime = NOW,
    tz: ZoneInfo = MSK,
    price: int | None = None,
    **options: Any,
) -> Verdict:
    return decide(
        scanned or code(),
        store=store,
        answers=answers,
        mode=mode,  # type: ignore[arg-type]
        now=now,
        shop_tz=tz,
        price_kopecks=price,
        options=PolicyOptions(**options),
        scanner="front",
    )


def lookup(
    *,
    blocked: BlockEntry | None = None,
    sold: SoldEntry | None = None,
    cached: dict[str, Any] | None = None,
    stale: bool = False,
) -> Lookup:
    verdict = CachedVerdict(1_700_000_000, cached, True) if cached is not None else None
    return Lookup(blocked, sold, verdict, 1, 10.0, stale)


# --------------------------------------------------------------------------------------------
# Row by row: one scenario per rule, triggering exactly that rule

Scenario = dict[str, Any]


def _scenarios() -> dict[str, Scenario]:
    s: dict[str, Scenario] = {
        "store-blocked": {
            "answers": [online()],
            "store": lookup(blocked=BlockEntry("ki", ki_key(WATER_KI), "recall", "manual", 1)),
        },
        "store-sold": {"answers": [online()], "store": lookup(sold=SoldEntry("r-7", 1))},
        "missing-crypto": {
            "answers": [offline()],
            "scanned": parse(WATER_KI, CodesOptions(ki_serial_lengths=(13,))),
        },
        "cache-blocked": {"answers": [offline()], "store": lookup(cached={"isBlocked": True})},
        "cache-sold": {"answers": [], "store": lookup(cached={"sold": True})},
        "cache-expired": {
            "answers": [offline()],
            "store": lookup(cached={"expireDate": "2025-01-31T00:00:00.000Z"}),
        },
        "code-expired": {"answers": [offline()], "scanned": code(DAIRY_EXPIRED)},
        "tspiot-no-answer": {"answers": [], "mode": "tspiot"},
        "unanswered-lm-sync-error": {
            "answers": [failed("cdn", "timeout"), failed("lm", "lm-sync-error")],
            "unanswered": "deny",
        },
        "unanswered-lm-not-ready": {
            "answers": [failed("cdn", "unreachable"), failed("lm", "lm-not-ready")],
            "unanswered": "deny",
        },
        "unanswered-deny": {"answers": [failed("cdn", "timeout")], "unanswered": "deny"},
        "unanswered-allow": {"answers": [failed("cdn", "timeout")], "unanswered": "allow"},
        "answer-error": {"answers": [online(code_=5000)]},
        "error-code-other": {"answers": [online(error_code=4045)]},
        "not-found": {"answers": [online(found=False)]},
        "not-utilised": {"answers": [online(utilised=False)]},
        "not-verified": {"answers": [online(verified=False)]},
        "sold": {"answers": [online(sold=True)]},
        "blocked-grey-gtin": {"answers": [offline(is_blocked=True, is_grey_gtin=True)]},
        "blocked": {"answers": [online(is_blocked=True, ogvs=("FNS", "RPN"))]},
        "not-realizable": {"answers": [online(realizable=False)]},
        "expired": {"answers": [online(expire_date=PAST)]},
        "lm-sold": {"answers": [online(), offline(sold=True)]},
        "price-not-mrp": {
            "answers": [online(group_ids=(3,), mrp=15000, smp=12000)],
            "scanned": code(TOBACCO_PACK),
            "price": 14900,
        },
        "price-above-mrp": {
            "answers": [online(mrp=5000)],
            "price": 5001,
            "price_rules": {13: PriceRule(mrp="max")},
        },
        "price-below-mrp": {"answers": [online(mrp=5000)], "price": 4999},
        "price-below-smp": {
            "answers": [online(group_ids=(3,), mrp=11000, smp=12000)],
            "scanned": code(TOBACCO_PACK),
            "price": 11000,
        },
        "not-owner": {
            "answers": [online(is_owner=False, is_tracking=True)],
            "require_owner": True,
        },
        "answer-incomplete": {"answers": [online(req_id=None)]},
        "allow-online": {"answers": [online()]},
        "allow-offline": {"answers": [failed("cdn", "timeout"), offline()]},
    }
    for kind in FAILURE_KINDS:
        s[f"tspiot-{kind}"] = {"answers": [failed("tspiot", kind)], "mode": "tspiot"}
    for number in ERROR_CODES:
        s[f"error-code-{number}"] = {"answers": [online(error_code=number)]}
    return s


SCENARIOS = _scenarios()


def test_every_rule_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(RULES_BY_ID)


@pytest.mark.parametrize("rule_id", [rule.id for rule in RULES])
def test_rule_fires_with_its_reason_and_text(rule_id: str) -> None:
    rule = RULES_BY_ID[rule_id]
    verdict = run(**SCENARIOS[rule_id])

    assert verdict.details["rule"] == rule_id
    assert (verdict.decision, verdict.reason) == (rule.decision, rule.reason)
    assert verdict.message_ru == rule.message_ru and verdict.message_ru.strip()
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", verdict.reason)
    assert re.search("[а-яё]", verdict.message_ru)  # Russian, for the customer screen
    assert verdict.scanner == "front"


def test_reasons_and_texts_are_set_and_allow_rows_are_few() -> None:
    assert all(rule.reason and rule.message_ru and rule.condition for rule in RULES)
    allows = [rule.id for rule in RULES if rule.decision == "allow"]
    assert allows == ["unanswered-allow", "allow-online", "allow-offline"]
    assert set(TSPIOT_FAILURES) == set(FAILURE_KINDS)


def test_error_codes_1_to_11_have_distinct_reasons_and_texts() -> None:
    assert sorted(ERROR_CODES) == list(range(1, 12))
    reasons = [reason for reason, _ in ERROR_CODES.values()]
    texts = [text for _, text in ERROR_CODES.values()]
    assert len(set(reasons)) == 11 and len(set(texts)) == 11


def test_blocked_lists_the_blocking_bodies() -> None:
    verdict = run(**SCENARIOS["blocked"])
    assert verdict.details["ogvs"] == ["FNS", "RPN"]
    assert verdict.source == "cdn" and verdict.checked


def test_store_block_details_name_kind_and_key() -> None:
    block = BlockEntry("gtin", gtin_key("04680029460908"), "recall", "fleet", 5)
    verdict = run([online()], store=lookup(blocked=block))
    assert verdict.details["block_kind"] == "gtin"
    assert verdict.details["block_key"] == "04680029460908"
    assert (verdict.source, verdict.checked) == ("store", False)


# --------------------------------------------------------------------------------------------
# Order between rules


def test_store_block_beats_an_online_allow_on_a_real_store(tmp_store: Store) -> None:
    tmp_store.block(WATER_KI, "recalled")
    verdict = run([online()], store=tmp_store.lookup(code()))
    assert (verdict.decision, verdict.reason, verdict.source) == (
        "deny",
        "blocked-locally",
        "store",
    )


def test_stale_store_still_denies_and_says_so() -> None:
    block = BlockEntry("ki", ki_key(WATER_KI), "recall", "manual", 1)
    verdict = run([online()], store=lookup(blocked=block, stale=True))
    assert verdict.reason == "blocked-locally" and verdict.details["store_stale"] is True


def test_a_stale_store_never_vouches() -> None:
    verdict = run([failed("cdn", "timeout")], store=lookup(stale=True), unanswered="deny")
    assert (verdict.decision, verdict.reason) == ("deny", "unchecked")


def test_online_answer_beats_the_local_module_whatever_the_order() -> None:
    for answers in ([offline(is_blocked=True), online()], [online(), offline(is_blocked=True)]):
        verdict = run(answers)
        assert (verdict.decision, verdict.reason, verdict.source) == ("allow", "allowed", "cdn")
        assert verdict.tag1265 == f"UUID={REQ_ID}&Time={TIME}"


def test_online_refusal_is_not_lifted_by_the_local_module() -> None:
    verdict = run([offline(), online(is_blocked=True)])
    assert (verdict.decision, verdict.reason, verdict.source) == ("deny", "blocked", "cdn")


def test_the_local_module_decides_when_online_failed() -> None:
    verdict = run([failed("cdn", "timeout"), offline()])
    assert (verdict.decision, verdict.reason, verdict.source) == (
        "allow",
        "allowed-offline",
        "lm",
    )
    assert verdict.checked and verdict.details["failures"] == [{"source": "cdn", "kind": "timeout"}]


def test_lm_sold_priority_can_be_switched_off() -> None:
    verdict = run([online(), offline(sold=True)], lm_sold_priority=False)
    assert verdict.reason == "allowed"


def test_lm_sold_ignored_when_the_lm_answer_is_an_error() -> None:
    verdict = run([online(), offline(sold=True, code_=1)])
    assert verdict.reason == "allowed"


def test_lm_sold_verdict_carries_the_lm_answer_and_offline_tag() -> None:
    verdict = run(**SCENARIOS["lm-sold"])
    assert (verdict.source, verdict.inst, verdict.version) == ("lm", INST, "2.6.0")
    assert verdict.tag1265 == f"UUID={REQ_ID}&Time={TIME}&Inst={INST}&Ver=2.6.0"


def test_offline_missing_fields_are_unknown_not_false() -> None:
    # An LM answer never carries found/verified/utilised/realizable: nothing to refuse.
    assert run([offline()]).reason == "allowed-offline"
    assert run([SourceAnswer("lm", False, req_id=REQ_ID, req_timestamp=TIME)]).decision == "allow"
    # A real ТС ПИоТ offline answer said found=false: not "not found" (domain.md §5.4).
    ts_offline = offline(source="tspiot", found=False, verified=False, realizable=False)
    verdict = run([ts_offline], mode="tspiot")
    assert (verdict.decision, verdict.source) == ("allow", "tspiot-offline")


def test_online_missing_booleans_are_false() -> None:
    # The protobuf JSON mapping omits false: a ТС ПИоТ online answer without "found".
    answer = SourceAnswer.from_json(
        "tspiot",
        {"code": 0, "reqId": REQ_ID, "reqTimestamp": TIME, "codes": [{"utilised": True}]},
    )
    assert run([answer], mode="tspiot").reason == "not-found"


def test_cached_facts_yield_to_a_live_online_answer() -> None:
    store = lookup(cached={"isBlocked": True, "sold": True, "expireDate": "2020-01-01"})
    assert run([online()], store=store).reason == "allowed"
    assert run([offline()], store=store).reason == "blocked-cached"
    assert run([], store=store).reason == "blocked-cached"


def test_code_expiry_does_not_override_an_answer_expiry() -> None:
    # The answer's own expireDate (future) is authoritative over the code's AI 17.
    verdict = run([online(expire_date=FUTURE)], scanned=code(DAIRY_EXPIRED))
    assert verdict.reason == "allowed"
    assert run([online()], scanned=code(DAIRY_EXPIRED)).reason == "expired-by-code"
    assert run([online()], scanned=code(DAIRY_EXPIRED), expiry_from_code=False).reason == (
        "allowed"
    )
    assert run([offline()], scanned=code(DAIRY_FRESH)).reason == "allowed-offline"


def test_tspiot_failure_denies_whatever_unanswered_says() -> None:
    for kind in FAILURE_KINDS:
        verdict = run([failed("tspiot", kind)], mode="tspiot", unanswered="allow")
        assert verdict.decision == "deny"
        assert verdict.reason == TSPIOT_FAILURES[kind][0]
        assert (verdict.source, verdict.tag1265, verdict.checked) == ("tspiot", "", False)
    emergency = run([failed("tspiot", "emergency", http_status=203)], mode="tspiot")
    assert emergency.reason == "tspiot-emergency"
    assert emergency.details["failures"] == [
        {"source": "tspiot", "kind": "emergency", "http_status": 203}
    ]


def test_tspiot_mode_ignores_cdn_and_lm_answers() -> None:
    verdict = run([online(), offline()], mode="tspiot")
    assert verdict.reason == "tspiot-no-answer"
    verdict = run([online(source="tspiot"), failed("cdn", "timeout")], mode="tspiot")
    assert (verdict.reason, verdict.source) == ("allowed", "tspiot")
    assert "failures" not in verdict.details


def test_direct_mode_ignores_tspiot_answers() -> None:
    verdict = run([online(source="tspiot")], unanswered="deny")
    assert verdict.reason == "unchecked"


def test_unanswered_says_unchecked_either_way() -> None:
    for policy, decision in (("allow", "allow"), ("deny", "deny")):
        verdict = run([failed("cdn", "timeout"), failed("lm", "unreachable")], unanswered=policy)
        assert (verdict.decision, verdict.reason, verdict.source) == (decision, "unchecked", "none")
        assert (verdict.tag1265, verdict.checked, verdict.req_id) == ("", False, None)
        assert [f["kind"] for f in verdict.details["failures"]] == ["timeout", "unreachable"]
    assert run([]).reason == "unchecked"  # no source configured at all


def test_lm_states_show_only_when_denying() -> None:
    answers = [failed("cdn", "timeout"), failed("lm", "lm-not-ready", lm_state="initialization")]
    allowed = run(answers, unanswered="allow")
    assert (allowed.decision, allowed.reason) == ("allow", "unchecked")
    assert allowed.details["failures"][1] == {
        "source": "lm",
        "kind": "lm-not-ready",
        "lm_state": "initialization",
    }
    assert run(answers, unanswered="deny").reason == "lm-not-ready"


def test_store_rows_beat_code_expiry_and_tspiot_failures() -> None:
    store = lookup(sold=SoldEntry("r1", 1))
    verdict = run([failed("tspiot", "timeout")], mode="tspiot", store=store)
    assert verdict.reason == "sold-here"
    verdict = run([failed("tspiot", "timeout")], mode="tspiot", scanned=code(DAIRY_EXPIRED))
    assert verdict.reason == "expired-by-code"


def test_error_code_comes_before_facts() -> None:
    verdict = run([online(error_code=10, found=False)])
    assert verdict.reason == "not-found-gis-mt"


# --------------------------------------------------------------------------------------------
# Grey zone, owner, prices


def test_tobacco_grey_zone_is_allowed_by_default_and_configurable() -> None:
    grey = online(realizable=False, gray_zone=True, group_ids=(3,))
    verdict = run([grey], scanned=code(TOBACCO_PACK))
    assert verdict.reason == "allowed" and verdict.details["gray_zone"] is True
    assert run([grey], scanned=code(TOBACCO_PACK), gray_zone_tobacco=False).reason == (
        "not-realizable"
    )
    # Not tobacco: the exception does not apply.
    assert run([online(realizable=False, gray_zone=True)]).reason == "not-realizable"


def test_owner_check_is_off_by_default_and_skipped_without_tracking() -> None:
    assert run([online(is_owner=False, is_tracking=True)]).reason == "allowed"
    verdict = run([online(is_owner=False, is_tracking=False)], require_owner=True)
    assert verdict.reason == "allowed"


def test_price_rules_apply_only_with_a_price() -> None:
    answer = online(group_ids=(3,), mrp=15000, smp=12000)
    assert run([answer], scanned=code(TOBACCO_PACK)).reason == "allowed"
    assert run([answer], scanned=code(TOBACCO_PACK), price=15000).reason == "allowed"
    assert run([online(mrp=5000)], price=5000).reason == "allowed"
    assert run([online(mrp=0, smp=0)], price=1).reason == "allowed"  # 0: no threshold


def test_price_rule_details_name_the_thresholds() -> None:
    verdict = run(**SCENARIOS["price-below-mrp"])
    assert verdict.details["price_kopecks"] == 4999 and verdict.details["mrp"] == 5000


def test_offline_prices_only_when_present() -> None:
    assert run([offline(mrp=5000)], price=4000).reason == "price-below-mrp"
    assert run([offline()], price=1).reason == "allowed-offline"


def test_tobacco_mrp_from_the_code_when_the_answer_has_none() -> None:
    tobacco = code(TOBACCO_PACK)
    assert tobacco.mrp_kopecks is not None
    price = tobacco.mrp_kopecks + 100
    assert run([offline()], scanned=tobacco, price=price).reason == "price-not-mrp"
    assert run([offline()], scanned=tobacco, price=tobacco.mrp_kopecks).reason == (
        "allowed-offline"
    )
    assert run([offline()], scanned=tobacco, price=price, mrp_from_code=False).reason == (
        "allowed-offline"
    )


def test_price_rule_is_per_group() -> None:
    options = PolicyOptions()
    assert options.price_rule((3,)) == PriceRule(mrp="exact", smp=True)
    assert options.price_rule((13,)) == PriceRule(mrp="min", smp=False)
    assert options.price_rule((99, 16)).smp is True
    relaxed = {3: PriceRule(mrp="max", smp=True)}
    answer = online(group_ids=(3,), mrp=15000, smp=12000)
    verdict = run([answer], scanned=code(TOBACCO_PACK), price=14000, price_rules=relaxed)
    assert verdict.reason == "allowed"


# --------------------------------------------------------------------------------------------
# Expiry in the shop's time zone

MIDNIGHT_2_JUNE = datetime(2025, 6, 2, tzinfo=UTC)  # "2025-06-02T00:00:00.000Z"


@pytest.mark.parametrize(
    ("now", "tz", "expired"),
    [
        # 15:30 UTC on 1 June: 18:30 in Moscow (still 1 June), 01:30 on 2 June in Vladivostok.
        (datetime(2025, 6, 1, 15, 30, tzinfo=UTC), MSK, False),
        (datetime(2025, 6, 1, 15, 30, tzinfo=UTC), VVO, True),
        # Moscow midnight is 21:00 UTC.
        (datetime(2025, 6, 1, 20, 59, 59, tzinfo=UTC), MSK, False),
        (datetime(2025, 6, 1, 21, 0, tzinfo=UTC), MSK, True),
        # Vladivostok midnight is 14:00 UTC the day before.
        (datetime(2025, 6, 1, 13, 59, 59, tzinfo=UTC), VVO, False),
        (datetime(2025, 6, 1, 14, 0, tzinfo=UTC), VVO, True),
    ],
)
def test_date_only_expiry_is_judged_in_shop_time(
    now: datetime, tz: ZoneInfo, expired: bool
) -> None:
    verdict = run([online(expire_date=MIDNIGHT_2_JUNE)], now=now, tz=tz)
    assert verdict.reason == ("expired" if expired else "allowed")


def test_expiry_details_record_the_day_and_zone() -> None:
    now = datetime(2025, 6, 1, 15, 30, tzinfo=UTC)
    verdict = run([online(expire_date=MIDNIGHT_2_JUNE)], now=now, tz=VVO)
    assert verdict.details["expiry"] == {"at": "2025-06-02", "date_only": True, "origin": "answer"}
    assert verdict.details["shop_tz"] == "Asia/Vladivostok"


def test_last_day_sellable_moves_expiry_to_the_end_of_the_day() -> None:
    early_2_june_vvo = datetime(2025, 6, 1, 15, 30, tzinfo=UTC)
    start_3_june_vvo = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)
    answer = online(expire_date=MIDNIGHT_2_JUNE)
    assert run([answer], now=early_2_june_vvo, tz=VVO, expiry_last_day_sellable=True).decision == (
        "allow"
    )
    late = run([answer], now=start_3_june_vvo, tz=VVO, expiry_last_day_sellable=True)
    assert late.reason == "expired"


def test_date_only_with_an_explicit_offset_is_that_calendar_day() -> None:
    expire = parse_timestamp("2025-06-02T00:00:00+03:00")
    moscow_1_june_evening = datetime(2025, 6, 1, 20, 0, tzinfo=UTC)  # 23:00 MSK, 1 June
    assert run([online(expire_date=expire)], now=moscow_1_june_evening).reason == "allowed"
    assert run([online(expire_date=expire)], now=moscow_1_june_evening, tz=VVO).reason == (
        "expired"
    )


def test_expiry_with_a_time_of_day_is_an_instant_in_any_zone() -> None:
    expire = parse_timestamp("2025-06-01T12:00:00.000Z")
    for tz in (MSK, VVO):
        before = run([online(expire_date=expire)], now=NOW - timedelta(seconds=1), tz=tz)
        assert before.reason == "allowed"
        assert run([online(expire_date=expire)], now=NOW, tz=tz).reason == "expired"


def test_code_ai17_day_00_is_the_last_day_of_the_month() -> None:
    end_of_june = code(f"{DAIRY_KI}{GS}17250600{GS}93dGVz")
    on_30_june = datetime(2025, 6, 29, 12, tzinfo=UTC)
    on_1_july = datetime(2025, 6, 30, 21, 0, tzinfo=UTC)  # 00:00 MSK, 1 July
    assert run([offline()], scanned=end_of_june, now=on_30_june).reason == "allowed-offline"
    assert run([offline()], scanned=end_of_june, now=on_1_july).reason == "expired-by-code"


def test_code_ai7003_is_a_wall_clock_time_in_the_shop() -> None:
    scanned = code(f"{DAIRY_KI}{GS}70032506021530{GS}93dGVz")  # 2 June 2025 15:30 local
    msk_1529 = datetime(2025, 6, 2, 12, 29, tzinfo=UTC)
    msk_1530 = datetime(2025, 6, 2, 12, 30, tzinfo=UTC)
    assert run([offline()], scanned=scanned, now=msk_1529).reason == "allowed-offline"
    assert run([offline()], scanned=scanned, now=msk_1530).reason == "expired-by-code"
    vvo_1530 = datetime(2025, 6, 2, 5, 30, tzinfo=UTC)
    assert run([offline()], scanned=scanned, now=vvo_1530, tz=VVO).reason == "expired-by-code"


def test_impossible_code_dates_are_ignored() -> None:
    scanned = code(f"{DAIRY_KI}{GS}17251399{GS}93dGVz")
    assert run([offline()], scanned=scanned).reason == "allowed-offline"


def test_naive_now_and_unknown_mode_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        run([online()], now=datetime(2025, 6, 1))
    with pytest.raises(ValueError, match="mode"):
        run([online()], mode="store-only")


# --------------------------------------------------------------------------------------------
# Tag 1265 and the verdict's identifiers


def test_tag1265_online_and_offline_formats() -> None:
    verdict = run([online()])
    assert verdict.tag1265 == f"UUID={REQ_ID}&Time={TIME}"
    assert (verdict.req_id, verdict.req_timestamp, verdict.inst, verdict.version) == (
        REQ_ID,
        TIME,
        None,
        None,
    )
    verdict = run([failed("cdn", "timeout"), offline()])
    assert verdict.tag1265 == f"UUID={REQ_ID}&Time={TIME}&Inst={INST}&Ver=2.6.0"
    assert (verdict.inst, verdict.version) == (INST, "2.6.0")


def test_tag1265_from_a_tspiot_offline_answer_keeps_time_as_received() -> None:
    body = {
        "code": 0,
        "reqId": REQ_ID,
        "reqTimestamp": "1735000000000",
        "isCheckedOffline": True,
        "inst": INST,
        "version": "1.4.1",
        "codes": [{"isBlocked": False, "found": False, "ogvs": []}],
    }
    verdict = run([SourceAnswer.from_json("tspiot", body)], mode="tspiot")
    assert (verdict.decision, verdict.source) == ("allow", "tspiot-offline")
    assert verdict.tag1265 == f"UUID={REQ_ID}&Time=1735000000000&Inst={INST}&Ver=1.4.1"
    online_body = dict(body, isCheckedOffline=False, reqTimestamp=1735000000123)
    online_body["codes"] = [{"found": True, "utilised": True, "verified": True, "realizable": True}]
    verdict = run([SourceAnswer.from_json("tspiot", online_body)], mode="tspiot")
    assert (verdict.source, verdict.tag1265) == ("tspiot", f"UUID={REQ_ID}&Time=1735000000123")


def test_tag1265_longer_than_256_characters_refuses() -> None:
    long_version = replace(offline(), version="v" * 200)
    verdict = run([failed("cdn", "timeout"), long_version])
    assert verdict.reason == "answer-incomplete"
    assert len(tag1265(offline())) <= 256


def test_tag1265_is_empty_without_an_answer() -> None:
    assert tag1265(replace(online(), req_timestamp=None)) == ""
    assert run([], store=lookup(sold=SoldEntry("r", 1))).tag1265 == ""


def test_every_answered_allow_has_a_tag_and_is_checked() -> None:
    for rule_id in ("allow-online", "allow-offline"):
        verdict = run(**SCENARIOS[rule_id])
        assert verdict.checked and verdict.tag1265.startswith(f"UUID={REQ_ID}&Time={TIME}")


def test_precheck_decides_only_store_rows() -> None:
    sold = lookup(sold=SoldEntry("r", 1))
    verdict = precheck(code(), store=sold, mode="direct", now=NOW, shop_tz=MSK)
    assert verdict is not None and verdict.reason == "sold-here"
    cached = lookup(cached={"isBlocked": True})
    assert precheck(code(), store=cached, mode="direct", now=NOW, shop_tz=MSK) is None
    assert precheck(code(), store=None, mode="tspiot", now=NOW, shop_tz=MSK) is None
    assert {rule.id for rule in RULES if rule.precheck} == {
        "store-blocked",
        "store-sold",
        "missing-crypto",
    }


# --------------------------------------------------------------------------------------------
# The journal never sees a secret


def test_journal_fields_carry_ids_and_no_crypto() -> None:
    shoes = parse(SHOES)
    raw = json.dumps({"codes": [{"cis": shoes.km}]})
    answer = replace(online(is_blocked=True, ogvs=("FNS",)), raw=raw)
    verdict = run([answer], scanned=shoes)
    journal = verdict.journal_fields()

    assert journal["req_id"] == REQ_ID and journal["req_timestamp"] == TIME
    assert journal["tag1265"] == f"UUID={REQ_ID}&Time={TIME}"
    assert journal["checked"] == "true"
    assert json.loads(str(journal["details"]))["ogvs"] == ["FNS"]
    text = " ".join(str(v) for v in journal.values())
    for secret in shoes.crypto.values():
        assert secret not in text
    assert "raw" not in journal and "km" not in journal


def test_service_text_quoting_the_code_is_scrubbed() -> None:
    shoes = parse(SHOES)
    signature = shoes.crypto["92"]
    for message in (f"КМ {shoes.km} не прошёл проверку", f"подпись {signature} неверна"):
        verdict = run([online(error_code=6, message=message)], scanned=shoes)
        logged = str(verdict.journal_fields()["details"])
        assert all(secret not in logged for secret in shoes.crypto.values())
        assert shoes.ki in logged or "<crypto>" in logged
    answer = replace(online(code_=1), description=f"bad code {shoes.km}")
    described = run([answer], scanned=shoes).details["description"]
    assert described == f"bad code {shoes.ki}"


def test_old_style_verdicts_still_log() -> None:
    verdict = Verdict(decision="deny", reason="x", message_ru="y", source="store", scanner="s")
    assert verdict.journal_fields() == {
        "decision": "deny",
        "reason": "x",
        "source": "store",
        "scanner": "s",
        "latency_ms": 0.0,
        "checked": "false",
    }
    assert hash(verdict) == hash(replace(verdict, details={"rule": "r"}))


# --------------------------------------------------------------------------------------------
# from_json: the protobuf JSON quirks


def test_code_facts_keep_absence_as_none() -> None:
    facts = CodeFacts.from_json({"isBlocked": True})
    assert facts.is_blocked is True
    assert (facts.found, facts.sold, facts.mrp, facts.error_code) == (None, None, None, None)
    assert facts.unreadable == ()


def test_code_facts_accept_numbers_as_strings_and_string_booleans() -> None:
    facts = CodeFacts.from_json(
        {"mrp": "15000", "smp": 12000, "errorCode": "0", "groupIds": ["3"], "sold": "false"}
    )
    assert (facts.mrp, facts.smp, facts.error_code, facts.group_ids) == (15000, 12000, 0, (3,))
    assert facts.sold is False


def test_code_facts_record_unreadable_fields() -> None:
    facts = CodeFacts.from_json({"found": "maybe", "mrp": 1.5, "sold": 1, "ogvs": "FNS"})
    assert (facts.found, facts.mrp, facts.sold, facts.ogvs) == (None, None, None, None)
    assert set(facts.unreadable) == {"found", "mrp", "sold", "ogvs"}
    assert CodeFacts.from_json(["not", "an", "object"]).unreadable == ("<not an object>",)


def test_code_facts_read_description_spellings() -> None:
    assert CodeFacts.from_json({"desctiption": "ошибка"}).message == "ошибка"
    assert CodeFacts.from_json({"description": "d", "message": "m"}).message == "m"


def test_code_facts_parse_iso_dates() -> None:
    facts = CodeFacts.from_json(
        {"expireDate": "2025-06-02T00:00:00.000Z", "productionDate": "2025-01-15"}
    )
    assert facts.expire_date == datetime(2025, 6, 2, tzinfo=UTC)
    assert facts.production_date == datetime(2025, 1, 15, tzinfo=UTC)
    assert CodeFacts.from_json({"expireDate": "soon"}).unreadable == ("expireDate",)
    assert parse_timestamp("2025-06-02T00:00:00") == datetime(2025, 6, 2, tzinfo=UTC)


def test_code_facts_round_trip_through_json() -> None:
    facts = CodeFacts.from_json(
        {
            "found": True,
            "groupIds": [3],
            "ogvs": ["FNS"],
            "expireDate": "2025-06-02T00:00:00Z",
            "mrp": 15000,
        }
    )
    again = CodeFacts.from_json(json.loads(json.dumps(facts.to_json())))
    assert again == facts
    assert facts.to_json()["expireDate"] == "2025-06-02T00:00:00Z"


def test_source_answer_envelope_quirks() -> None:
    answer = SourceAnswer.from_json(
        "tspiot",
        {"desctiption": "ok", "reqId": REQ_ID, "reqTimestamp": "01735000000000", "codes": []},
        http_status=200,
    )
    assert answer.online is True  # isCheckedOffline missing = false
    assert answer.code == 0  # code missing = 0 (protobuf default)
    assert answer.description == "ok"
    assert answer.req_timestamp == "01735000000000"  # exactly as received
    assert answer.facts == CodeFacts()
    assert SourceAnswer.from_json("lm", {"code": "1"}).code == 1
    assert SourceAnswer.from_json("lm", {"code": "x"}).code == -1
    assert SourceAnswer.from_json("lm", {}).online is False
    assert SourceAnswer.from_json("cdn", {}).online is True
    offline_ts = SourceAnswer.from_json("tspiot", {"isCheckedOffline": "true"})
    assert offline_ts.online is False


def test_timestamp_text() -> None:
    assert timestamp_text(1735000000000) == "1735000000000"
    assert timestamp_text("1735000000000") == "1735000000000"
    assert timestamp_text(1.735e12) == "1735000000000"
    assert timestamp_text(True) is None and timestamp_text(None) is None
    assert timestamp_text("") is None


def test_raw_body_stays_out_of_repr() -> None:
    answer = replace(online(), raw='{"cis": "secret-tail"}')
    assert "secret-tail" not in repr(answer)


# --------------------------------------------------------------------------------------------
# Properties

_bools = st.none() | st.booleans()
_ints = st.none() | st.integers(min_value=-(2**40), max_value=2**40)
_texts = st.none() | st.text(max_size=40)
_dates = st.none() | st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)

facts_strategy = st.builds(
    CodeFacts,
    valid=_bools,
    found=_bools,
    utilised=_bools,
    verified=_bools,
    realizable=_bools,
    is_blocked=_bools,
    ogvs=st.none() | st.lists(st.sampled_from(["FNS", "RPN", "MVD"]), max_size=3).map(tuple),
    sold=_bools,
    expire_date=_dates,
    is_owner=_bools,
    is_tracking=_bools,
    mrp=_ints,
    smp=_ints,
    gray_zone=_bools,
    is_grey_gtin=_bools,
    group_ids=st.none() | st.lists(st.sampled_from([3, 8, 13, 16, 99]), max_size=3).map(tuple),
    error_code=_ints,
    message=_texts,
)

answer_strategy = st.builds(
    SourceAnswer,
    source=st.sampled_from(SOURCE_KINDS),
    online=st.booleans(),
    code=st.integers(min_value=-2, max_value=5000),
    req_id=st.none() | st.just(REQ_ID) | st.text(max_size=300),
    req_timestamp=st.none() | st.just(TIME) | st.text(max_size=30),
    inst=_texts,
    version=_texts,
    facts=facts_strategy,
)

failure_strategy = st.builds(
    SourceFailure,
    source=st.sampled_from(SOURCE_KINDS),
    kind=st.sampled_from(list(FAILURE_KINDS)),
    http_status=st.none() | st.integers(100, 599),
    lm_state=st.none() | st.sampled_from(["initialization", "sync_error"]),
)

lookup_strategy = st.none() | st.builds(
    Lookup,
    blocked=st.none() | st.just(BlockEntry("ki", ki_key(WATER_KI), "r", "s", 1)),
    sold=st.none() | st.just(SoldEntry("r", 1)),
    cached=st.none()
    | st.builds(
        CachedVerdict,
        at=st.integers(0, 2**31),
        facts=facts_strategy.map(CodeFacts.to_json),
        fresh=st.booleans(),
    ),
    blocklist_version=st.just(1),
    blocklist_age_s=st.none() | st.floats(0, 1e6),
    stale=st.booleans(),
)

options_strategy = st.builds(
    PolicyOptions,
    unanswered=st.sampled_from(["allow", "deny"]),
    gray_zone_tobacco=st.booleans(),
    require_owner=st.booleans(),
    lm_sold_priority=st.booleans(),
    expiry_last_day_sellable=st.booleans(),
    expiry_from_code=st.booleans(),
    mrp_from_code=st.booleans(),
)

CODES = [code(WATER), code(TOBACCO_PACK), code(DAIRY_EXPIRED), code(DAIRY_FRESH), parse(SHOES)]


@settings(max_examples=400, deadline=None)
@given(
    scanned=st.sampled_from(CODES),
    store=lookup_strategy,
    answers=st.lists(answer_strategy | failure_strategy, max_size=4),
    mode=st.sampled_from(["direct", "tspiot"]),
    now=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2090, 1, 1),
        timezones=st.sampled_from([UTC, MSK, VVO]),
    ),
    tz=st.sampled_from([MSK, VVO, ZoneInfo("Europe/Kaliningrad"), UTC]),
    price=st.none() | st.integers(min_value=-10, max_value=10**7),
    options=options_strategy,
)
def test_decide_never_raises_and_always_explains(
    scanned: MarkingCode,
    store: Lookup | None,
    answers: list[SourceAnswer | SourceFailure],
    mode: str,
    now: datetime,
    tz: ZoneInfo,
    price: int | None,
    options: PolicyOptions,
) -> None:
    verdict = decide(
        scanned,
        store=store,
        answers=answers,
        mode=mode,  # type: ignore[arg-type]
        now=now,
        shop_tz=tz,
        price_kopecks=price,
        options=options,
    )
    assert verdict.decision in ("allow", "deny")
    assert verdict.reason and verdict.reason != POLICY_GAP
    assert verdict.message_ru.strip()
    assert verdict.details["rule"] in RULES_BY_ID
    if verdict.decision == "allow" and verdict.checked:
        assert verdict.tag1265.startswith("UUID=") and len(verdict.tag1265) <= 256
    if verdict.reason == "unchecked":
        assert (verdict.tag1265, verdict.checked, verdict.source) == ("", False, "none")
    if store is not None and store.blocked is not None:
        assert verdict.reason == "blocked-locally"
    if mode == "tspiot" and not any(
        isinstance(a, SourceAnswer) and a.source == "tspiot" for a in answers
    ):
        assert verdict.decision == "deny"
    json.dumps(dict(verdict.details))  # JSON-ready for the journal


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["found", "isBlocked", "mrp", "groupIds", "expireDate", "ogvs", "errorCode", "x"]
        ),
        _json_values,
    )
)
def test_from_json_never_raises(obj: dict[str, Any]) -> None:
    facts = CodeFacts.from_json(obj)
    CodeFacts.from_json(facts.to_json())
    SourceAnswer.from_json("tspiot", {"codes": [obj], "reqTimestamp": obj.get("mrp")})


# --------------------------------------------------------------------------------------------
# docs/decisions.md stays true


def _doc() -> str:
    return DOCS.read_text(encoding="utf-8")


def test_docs_table_is_the_code_table() -> None:
    found = re.search(
        r"<!-- BEGIN decision_table_markdown\(\) -->\n(.*?)"
        r"<!-- END decision_table_markdown\(\) -->",
        _doc(),
        re.S,
    )
    assert found is not None
    assert found.group(1) == decision_table_markdown()


def test_docs_name_every_option_with_its_default() -> None:
    doc = _doc()
    for option in fields(PolicyOptions):
        assert f"`{option.name}`" in doc, option.name
    assert DEFAULT_POLICY.unanswered == "allow"


def test_docs_name_every_failure_kind() -> None:
    doc = _doc()
    assert [kind for kind in FAILURE_KINDS if f"`{kind}`" not in doc] == []


def test_docs_example_runs() -> None:
    found = re.search(r"<!-- example: decide -->\n```python\n(.*?)```", _doc(), re.S)
    assert found is not None
    exec(compile(found.group(1), str(DOCS), "exec"), {})


def test_docs_row_ranges_match_the_table() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == 56
    assert [rule.id for rule in RULES if rule.precheck] == ids[0:3]
    assert all(rule.source in ("store", "parser") for rule in RULES[3:7])
    assert ids[7:21] == [f"tspiot-{kind}" for kind in FAILURE_KINDS]
    assert ids[25] == "unanswered-allow" and ids[26] == "answer-error"
    doc = _doc()
    for text in ("rows 1–3", "rows 4–7", "rows 8–26", "rows 27–56", "rows 8–21"):
        assert text in doc, text
