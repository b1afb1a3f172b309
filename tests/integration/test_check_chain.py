"""Parsed codes and parser errors become verdicts: the chain with no clients (mode
store-only) on a real LMDB store and the real parser (markd.checks)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from conftest import (
    AMBIGUOUS_LOST_GS,
    DAIRY,
    DAIRY_KI,
    SHOES,
    TOBACCO_PACK,
    WATER,
    WATER_KI,
    RecordingEventLog,
    make_config,
)
from markd.checks.base import CheckClient
from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.verdict import parser_verdict
from markd.codes import REASONS, CodesOptions, MarkingCode, parse
from markd.errors import CodeError
from markd.service import Service
from markd.store import Store


def store_only_chain(store: Store) -> CheckChain:
    """The store-only chain: the one chain, with no clients."""
    return CheckChain(store, ChainSettings(mode="store-only"))


async def test_not_blocked_is_allowed_and_says_it_is_the_development_mode(tmp_store: Store) -> None:
    chain = store_only_chain(tmp_store)
    for text in (WATER, DAIRY, SHOES, TOBACCO_PACK):
        verdict = await chain.decide(parse(text), "front")
        assert (verdict.decision, verdict.reason, verdict.source) == (
            "allow",
            "store-only-not-blocked",
            "none",
        )
        assert "режим разработки" in verdict.message_ru and "стоп-лист" in verdict.message_ru


async def test_blocked_ki_is_denied_by_the_store(tmp_store: Store) -> None:
    tmp_store.block(DAIRY_KI, "recalled")
    verdict = await store_only_chain(tmp_store).decide(
        parse(DAIRY), "front", started=time.monotonic()
    )
    assert (verdict.decision, verdict.reason, verdict.source) == (
        "deny",
        "blocked-locally",
        "store",
    )
    assert (verdict.ki, verdict.shape, verdict.scanner) == (DAIRY_KI, "gs1-93", "front")
    assert 0 <= verdict.latency_ms < 1000


async def test_bare_ki_is_denied_for_missing_crypto(tmp_store: Store) -> None:
    bare_ki = parse(WATER_KI, CodesOptions(ki_serial_lengths=(13,)))
    verdict = await store_only_chain(tmp_store).decide(bare_ki, "front")
    assert (verdict.decision, verdict.reason, verdict.shape) == ("deny", "missing-crypto", "ki")


async def test_repairs_are_carried_into_the_verdict(tmp_store: Store) -> None:
    verdict = await store_only_chain(tmp_store).decide(parse("]d2" + WATER), "front")
    assert verdict.allowed and verdict.repairs == ("symbology-prefix",)


async def test_unreadable_store_fails_closed(tmp_store: Store) -> None:
    chain = store_only_chain(tmp_store)
    tmp_store.close()
    verdict = await chain.decide(parse(WATER), "front")
    assert (verdict.decision, verdict.reason) == ("deny", "store-error")


@pytest.mark.parametrize("mode", ["direct", "tspiot"])
async def test_unreadable_store_fails_closed_before_any_service(
    tmp_store: Store, mode: str
) -> None:
    """In every mode the store comes first: unreadable, the unit is refused with the store's
    reason, no service is asked."""
    chain = CheckChain(tmp_store, ChainSettings(mode=mode))
    tmp_store.close()
    verdict = await chain.decide(parse(WATER), "front")
    assert (verdict.decision, verdict.reason, verdict.source) == ("deny", "store-error", "store")
    assert verdict.scanner == "front" and verdict.ki == parse(WATER).ki


@pytest.mark.parametrize(
    ("text", "decision", "reason"),
    [
        (AMBIGUOUS_LOST_GS, "rescan", "ambiguous-lost-gs"),
        ("4607809596237", "deny", "not-a-marking-code"),
        ("hello, world", "deny", "invalid-characters"),
    ],
)
def test_parser_errors_become_verdicts(text: str, decision: str, reason: str) -> None:
    with pytest.raises(CodeError) as err:
        parse(text)
    verdict = parser_verdict(err.value, scanner="front", latency_ms=0.5)
    assert (verdict.decision, verdict.reason, verdict.source) == (decision, reason, "parser")
    assert verdict.ki is None and verdict.message_ru == REASONS[reason][1]


def test_unknown_parser_reason_gets_a_generic_text() -> None:
    verdict = parser_verdict(CodeError("odd", "from-the-future"), scanner="front")
    assert verdict.decision == "deny" and verdict.message_ru


def test_verdicts_are_immutable() -> None:
    verdict = parser_verdict(CodeError("odd", "malformed"), scanner="front")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.decision = "allow"  # type: ignore[misc]


async def test_service_check_never_raises_on_bad_bytes(store_path: str) -> None:
    config = make_config(store_path, {"v": "virtual://chain-check"})
    service = Service(config, event_log=RecordingEventLog())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    try:
        for data in (b"\xff\xfe", b"", b"\x1d" * 3, b"\r\n", WATER.encode()):
            assert service.check(data, "v").decision in ("allow", "deny", "rescan")
        assert service.check(b"\xff\xfe", "v").reason == "invalid-characters"
        assert service.check(WATER.encode(), "v").ki == WATER_KI
    finally:
        stop.set()
        await task


async def test_sold_here_and_gtin_blocks_are_denied(tmp_store: Store) -> None:
    chain = store_only_chain(tmp_store)
    code = parse(WATER)
    tmp_store.mark_sold(code, "receipt-1")
    assert (
        (await chain.decide(code, "front")).reason,
        (await chain.decide(code, "front")).decision,
    ) == (
        "sold-here",
        "deny",
    )
    tmp_store.mark_returned(code)
    assert (await chain.decide(code, "front")).allowed
    tmp_store.block(code.gtin, "the whole product is banned")
    assert (await chain.decide(code, "front")).reason == "blocked-locally"


class _RefusingCdn(CheckClient):
    """A CDN client whose every check fails as a refused token does (no network)."""

    source = "cdn"

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        return SourceFailure("cdn", "unauthorized", 401, "token refused", latency_ms=7.0)

    def status(self) -> dict[str, Any]:
        return {}


async def test_the_observer_hears_each_source_result_and_a_failing_one_is_dropped(
    tmp_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    chain = CheckChain(tmp_store, ChainSettings(mode="direct"), online=_RefusingCdn())
    heard: list[SourceAnswer | SourceFailure] = []
    chain.observer = heard.append

    first = await chain.decide(parse(WATER), "front")

    assert [(r.source, getattr(r, "kind", None), r.latency_ms) for r in heard] == [
        ("cdn", "unauthorized", 7.0)
    ]

    def broken(result: SourceAnswer | SourceFailure) -> None:
        raise RuntimeError("a metrics bug")

    chain.observer = broken
    second = await chain.decide(parse(WATER), "front")

    # The verdict does not depend on the observer: the same both times, and the broken
    # observer is dropped once, with a warning.
    assert (first.decision, first.reason) == (second.decision, second.reason)
    assert chain.observer is None
    assert "observer failed" in caplog.text
    chain.close()
