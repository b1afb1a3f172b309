"""CheckChain's order and deadlines, with scripted checkers (explicit behaviour, no mocks).

The clients themselves are tested over real sockets against the emulators; here the point is
what the chain does with their answers and their silences.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from markd.checks import chain as chain_module
from markd.checks.base import CheckClient
from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.policy import PolicyOptions
from markd.checks.results import CodeFacts, SourceAnswer, SourceFailure
from markd.codes import MarkingCode, parse
from markd.store import Store

WATER = "0104680029460908215jcmHzLmkdPML\x1d938p9E"

GOOD = CodeFacts.from_json(
    {
        "found": True,
        "utilised": True,
        "verified": True,
        "realizable": True,
        "isBlocked": False,
        "sold": False,
        "errorCode": 0,
        "expireDate": "2099-01-01T00:00:00.000Z",
    }
)


def online_ok() -> SourceAnswer:
    return SourceAnswer(
        "cdn",
        True,
        req_id="11111111-2222-3333-4444-555555555555",
        req_timestamp="1735000000000",
        facts=GOOD,
    )


def lm_ok(sold: bool = False) -> SourceAnswer:
    facts = CodeFacts.from_json({"isBlocked": False, "sold": sold})
    return SourceAnswer(
        "lm",
        False,
        req_id="aaaa",
        req_timestamp="1735000000001",
        inst="inst-1",
        version="2.6.0",
        facts=facts,
    )


@dataclass
class Scripted:
    """Answers after ``delay_s``; with ``ignore_deadline`` it sleeps past it (a buggy client)."""

    result: SourceAnswer | SourceFailure
    delay_s: float = 0.0
    ignore_deadline: bool = False
    calls: list[float] = field(default_factory=list)

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        self.calls.append(deadline)
        wait = (
            self.delay_s if self.ignore_deadline else min(self.delay_s, deadline - time.monotonic())
        )
        await asyncio.sleep(max(wait, 0))
        if time.monotonic() >= deadline and not self.ignore_deadline:
            return SourceFailure(self.result.source, "timeout")
        return self.result


def chain(store: Store, mode: str = "direct", **kw) -> CheckChain:
    settings_keys = {
        "parallel",
        "online_timeout_s",
        "local_module_timeout_s",
        "tspiot_timeout_s",
        "policy",
    }
    settings = ChainSettings(mode=mode, **{k: v for k, v in kw.items() if k in settings_keys})
    return CheckChain(store, settings, **{k: v for k, v in kw.items() if k not in settings_keys})


async def test_online_answer_decides_and_lm_is_not_asked(tmp_store: Store) -> None:
    lm = Scripted(lm_ok())
    verdict = await chain(tmp_store, online=Scripted(online_ok()), local_module=lm).decide(
        parse(WATER), "front"
    )
    assert (verdict.decision, verdict.source) == ("allow", "cdn")
    assert verdict.tag1265 == "UUID=11111111-2222-3333-4444-555555555555&Time=1735000000000"
    assert lm.calls == [] and verdict.scanner == "front"


async def test_online_silent_then_lm_answers_offline(tmp_store: Store) -> None:
    c = chain(
        tmp_store,
        online=Scripted(online_ok(), delay_s=5),
        local_module=Scripted(lm_ok()),
        online_timeout_s=0.2,
    )
    started = time.monotonic()
    verdict = await c.decide(parse(WATER), "front")
    assert time.monotonic() - started < 0.2 + 0.5 + 0.05
    assert (verdict.decision, verdict.source) == ("allow", "lm")
    assert verdict.tag1265.endswith("&Inst=inst-1&Ver=2.6.0")


async def test_a_client_that_ignores_its_deadline_is_cut_off(tmp_store: Store) -> None:
    hang = Scripted(online_ok(), delay_s=10, ignore_deadline=True)
    c = chain(
        tmp_store,
        online=hang,
        local_module=Scripted(lm_ok(), delay_s=10, ignore_deadline=True),
        online_timeout_s=0.2,
        local_module_timeout_s=0.1,
        policy=PolicyOptions(unanswered="deny"),
    )
    started = time.monotonic()
    verdict = await c.decide(parse(WATER), "front")
    took = time.monotonic() - started
    assert took <= 0.3 + 0.05, took
    assert (verdict.decision, verdict.reason, verdict.checked) == ("deny", "unchecked", False)


async def test_unanswered_allow_is_unchecked_without_tag(tmp_store: Store) -> None:
    c = chain(
        tmp_store,
        online=Scripted(SourceFailure("cdn", "unreachable")),
        local_module=Scripted(SourceFailure("lm", "unreachable")),
    )
    verdict = await c.decide(parse(WATER), "front")
    assert (verdict.decision, verdict.reason, verdict.tag1265, verdict.checked) == (
        "allow",
        "unchecked",
        "",
        False,
    )


async def test_parallel_mode_prefers_online_but_lm_sold_denies(tmp_store: Store) -> None:
    c = chain(
        tmp_store,
        online=Scripted(online_ok(), delay_s=0.05),
        local_module=Scripted(lm_ok(sold=True)),
        parallel=True,
    )
    verdict = await c.decide(parse(WATER), "front")
    assert verdict.decision == "deny" and "sold" in verdict.reason


async def test_store_blocked_is_denied_without_any_call(tmp_store: Store) -> None:
    online = Scripted(online_ok())
    tmp_store.block("0104680029460908215jcmHzLmkdPML", "recalled")
    verdict = await chain(tmp_store, online=online).decide(parse(WATER), "front")
    assert (verdict.decision, verdict.reason, verdict.source) == (
        "deny",
        "blocked-locally",
        "store",
    )
    assert online.calls == []


async def test_tspiot_failure_denies_even_when_unanswered_is_allow(tmp_store: Store) -> None:
    c = chain(tmp_store, mode="tspiot", tspiot=Scripted(SourceFailure("tspiot", "emergency")))
    verdict = await c.decide(parse(WATER), "front")
    assert verdict.decision == "deny" and "emergency" in verdict.reason


async def test_online_verdicts_are_cached_for_offline_use(tmp_store: Store) -> None:
    c = chain(tmp_store, online=Scripted(online_ok()))
    await c.decide(parse(WATER), "front")
    c.close()  # the cache write runs after the verdict, on a worker thread
    cached = tmp_store.lookup(WATER).cached
    assert cached is not None and cached.facts["isBlocked"] is False


async def test_cache_writes_of_a_moment_go_to_the_store_as_one_commit(
    tmp_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    write = tmp_store.cache_verdicts
    monkeypatch.setattr(
        tmp_store,
        "cache_verdicts",
        lambda verdicts, **options: (commits.append(len(verdicts)), write(verdicts, **options)),
    )
    monkeypatch.setattr(chain_module, "CACHE_BATCH_S", 0.05)
    c = chain(tmp_store, online=Scripted(online_ok()))
    other = "0104670540176099215LpGKy\x1d93dGVz"
    await c.decide(parse(WATER), "front")
    await c.decide(parse(other), "front")
    assert commits == []  # gathered for CACHE_BATCH_S, never in the verdict's way
    await asyncio.sleep(0.2)
    await c.decide(parse(WATER), "front")
    await c.aclose()  # what is still gathered lands before the chain is gone
    assert commits == [2, 1]
    assert tmp_store.lookup(WATER).cached is not None
    assert tmp_store.lookup(other).cached is not None
    # A burst larger than CACHE_BATCH_MAX goes at once, without waiting for the timer.
    monkeypatch.setattr(chain_module, "CACHE_BATCH_S", 60.0)
    monkeypatch.setattr(chain_module, "CACHE_BATCH_MAX", 2)
    c = chain(tmp_store, online=Scripted(online_ok()))
    await c.decide(parse(WATER), "front")
    await c.decide(parse(other), "front")
    c.close()
    assert commits == [2, 1, 2]


async def test_a_verdict_the_cache_cannot_take_is_still_given(
    tmp_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The facts are put in the cache's form where the verdict is decided (a kiosk's scan has
    # no answer to wait for): a failure there costs the cache entry, never the verdict.
    def broken(self: Any) -> dict[str, Any]:
        raise ValueError("unreadable facts")

    monkeypatch.setattr(CodeFacts, "to_json", broken)
    c = chain(tmp_store, online=Scripted(online_ok()))
    verdict = await c.decide(parse(WATER), "front")
    await c.aclose()
    assert verdict.decision == "allow"
    assert tmp_store.lookup(WATER).cached is None


def test_budget_is_the_sum_in_sequence_and_the_max_in_parallel(tmp_store: Store) -> None:
    one = Scripted(online_ok())
    assert chain(tmp_store, online=one, local_module=one).budget_s() == 2.0
    assert chain(tmp_store, online=one, local_module=one, parallel=True).budget_s() == 1.5
    assert chain(tmp_store, mode="tspiot", tspiot=one).budget_s() == 2.0


# --------------------------------------------------------------------------------------------
# One chain: store-only is the chain with no clients, and the chain owns the clients it holds


class Recorded(CheckClient):
    """A client that answers ``result`` and notes what the chain did with it; with
    ``fail_close`` its ``aclose`` raises (a bug in one client's shutdown)."""

    def __init__(self, result: SourceAnswer | SourceFailure, *, fail_close: bool = False) -> None:
        super().__init__()
        self.source = result.source
        self.result = result
        self.fail_close = fail_close
        self.events: list[str] = []

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        self.events.append("check")
        return self.result

    def status(self) -> dict[str, object]:
        return {"source": self.source, "events": list(self.events)}

    def start(self) -> None:
        self.events.append("start")

    async def aclose(self) -> None:
        self.events.append("aclose")
        if self.fail_close:
            raise RuntimeError("a bug while closing")


async def test_store_only_is_the_chain_with_no_clients(tmp_store: Store) -> None:
    lm = Recorded(lm_ok())  # kept for the sale path's reports, never asked
    c = CheckChain(tmp_store, ChainSettings(mode="store-only"), local_module=lm)
    verdict = await c.decide(parse(WATER), "front")
    assert (verdict.decision, verdict.reason, verdict.source) == (
        "allow",
        "store-only-not-blocked",
        "none",
    )
    now = c.decide_now(parse(WATER), "front")
    assert dataclasses.replace(now, latency_ms=verdict.latency_ms) == verdict
    assert c.clients == {} and c.status() == {} and c.budget_s() == 0.0
    c.start()
    await c.aclose()
    assert lm.events == ["aclose"]  # owned and closed, never started nor asked


def test_a_store_only_chain_takes_no_service_and_the_others_do_not_decide_at_once(
    tmp_store: Store,
) -> None:
    with pytest.raises(ValueError, match="store-only"):
        CheckChain(tmp_store, ChainSettings(mode="store-only"), online=Recorded(online_ok()))
    direct = CheckChain(tmp_store, ChainSettings(), online=Recorded(online_ok()))
    with pytest.raises(RuntimeError, match="await decide"):
        direct.decide_now(parse(WATER), "front")
    with pytest.raises(ValueError, match="mode"):
        CheckChain(tmp_store, ChainSettings(mode="online"))


async def test_the_chain_starts_reports_and_closes_its_clients(tmp_store: Store) -> None:
    online = Recorded(online_ok(), fail_close=True)
    lm = Recorded(lm_ok())
    c = CheckChain(tmp_store, ChainSettings(cache_verdicts=False), online=online, local_module=lm)
    assert list(c.clients) == ["online", "local_module"]
    c.start()
    await c.decide(parse(WATER), "front")
    assert c.status() == {
        "online": {"source": "cdn", "events": ["start", "check"]},
        "local_module": {"source": "lm", "events": ["start"]},
    }
    await c.aclose()  # the CDN client's failure to close does not keep the LM client open
    assert online.events[-1] == lm.events[-1] == "aclose"


async def test_in_mode_tspiot_the_local_module_is_held_but_not_asked(tmp_store: Store) -> None:
    tspiot = Recorded(SourceFailure("tspiot", "emergency"))
    lm = Recorded(lm_ok())
    c = chain(tmp_store, mode="tspiot", tspiot=tspiot, local_module=lm)
    verdict = await c.decide(parse(WATER), "front")
    assert verdict.decision == "deny" and list(c.clients) == ["tspiot"]
    c.start()
    await c.aclose()
    assert tspiot.events == ["check", "start", "aclose"] and lm.events == ["aclose"]
