"""The failure matrix: every fault of every source, through the real clients and the chain.

For each source (the CDN, the Local Module, the ТС ПИоТ) and each fault the emulators can
inject, one scan goes through :class:`CheckChain` with the real HTTP clients. Two things must
hold every time: the verdict comes within the budget plus 50 ms, and it is the decision the
rules give for that fault — a CDN fault falls back to the Local Module, a Local Module fault
with the CDN gone leaves the unit unanswered (denied here: ``unanswered = "deny"``), and a ТС
ПИоТ fault always denies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.local_module import LocalModuleClient
from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions
from markd.checks.policy import PolicyOptions
from markd.checks.tspiot import TspiotClient
from markd.codes import parse
from markd.emulators.testing import crpt_cdn, local_module, tspiot
from markd.secrets import Secret
from markd.store import Store

WATER = parse("0104680029460908215jcmHzLmkdPML\x1d938p9E")
TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
ONLINE_S, LM_S, TSPIOT_S = 0.3, 0.25, 0.4
MARGIN_S = 0.05

#: Faults every source's emulator can play on its check endpoint.
COMMON_FAULTS: dict[str, dict[str, Any]] = {
    "slow beyond the budget": {"latency_ms": 2000},
    "black hole": {"black_hole": True},
    "connection dropped": {"drop": True},
    "connection reset": {"reset": True},
    "malformed body": {"malformed": True},
    "401 unauthorized": {"status": 401},
    "429 throttled": {"status": 429},
    "500 server error": {"status": 500},
    "503 unavailable": {"status": 503},
}
CDN_FAULTS = {
    **COMMON_FAULTS,
    "500 with code 5000": {"status": 500, "code": 5000},
    "203 emergency": {"emergency": True},
    "400 bad request": {"status": 400},
}
TSPIOT_FAULTS = {
    **COMMON_FAULTS,
    "203 emergency": {"emergency": True},
    "514 ЧЗ unavailable": {"status": 514},
}
LM_STATES = ("initialization", "not_configured", "sync_error")


@pytest.fixture
def services(tmp_store: Store) -> Iterator[dict[str, Any]]:
    with (
        crpt_cdn({"cdn": {"token": TOKEN}}) as cdn,
        local_module() as lm,
        tspiot(tls=True) as ts,
    ):
        yield {"cdn": cdn, "lm": lm, "tspiot": ts, "store": tmp_store}


def direct_chain(s: dict[str, Any]) -> CheckChain:
    online = OnlineClient(
        s["cdn"].url,
        auth=ApiKeyAuth(Secret(TOKEN, "test")),
        fn_serial="9960440300000001",
        options=OnlineOptions(background_maintenance=False),
    )
    lm = LocalModuleClient(
        s["lm"].url, user="admin", password=Secret("admin", "test"), fn_serial="9960440300000001"
    )
    settings = ChainSettings(
        mode="direct",
        online_timeout_s=ONLINE_S,
        local_module_timeout_s=LM_S,
        cache_verdicts=False,
        policy=PolicyOptions(unanswered="deny"),
    )
    return CheckChain(s["store"], settings, online=online, local_module=lm)


def tspiot_chain(s: dict[str, Any]) -> CheckChain:
    client = TspiotClient(
        s["tspiot"].url, client_id="9960440300000001", token=None, allow_self_signed=True
    )
    settings = ChainSettings(mode="tspiot", tspiot_timeout_s=TSPIOT_S, cache_verdicts=False)
    return CheckChain(s["store"], settings, tspiot=client)


async def timed(chain: CheckChain):
    started = time.monotonic()
    verdict = await chain.decide(WATER, "matrix")
    return verdict, time.monotonic() - started


@pytest.mark.parametrize("fault", list(CDN_FAULTS), ids=list(CDN_FAULTS))
async def test_cdn_fault_falls_back_to_the_local_module(services, fault: str) -> None:
    """The list service answers; the listed host misbehaves."""
    services["cdn"].set_fault("codes/check", **CDN_FAULTS[fault])
    chain = direct_chain(services)
    verdict, took = await timed(chain)
    assert took <= ONLINE_S + LM_S + MARGIN_S, took
    assert (verdict.decision, verdict.source) == ("allow", "lm"), (fault, verdict.reason)
    assert "&Inst=" in verdict.tag1265
    assert services["cdn"].list_service.count("cdn/info") == 1
    assert services["cdn"].host.count("codes/check") >= 1  # the fault was met where it is


#: Faults of the CDN's list service (domain.md §3.2), met by the first check after a start.
LIST_FAULTS: dict[str, dict[str, Any]] = {
    "slow beyond the budget": {"latency_ms": 2000},
    "hang (black hole)": {"black_hole": True},
    "connection dropped": {"drop": True},
    "401 unauthorized": {"status": 401},
    "500 server error": {"status": 500},
    "503 unavailable": {"status": 503},
    "malformed body": {"malformed": True},
    "empty list": {"body": {"code": 0, "description": "ok", "hosts": []}},
    "refusal code": {"body": {"code": 1, "description": "refused"}},
    "a dead host listed": {"body": {"code": 0, "hosts": [{"host": "http://127.0.0.1:1"}]}},
}


@pytest.mark.parametrize("fault", list(LIST_FAULTS), ids=list(LIST_FAULTS))
async def test_list_service_fault_falls_back_to_the_local_module(services, fault: str) -> None:
    """No host list yet and the list service misbehaves: the online source fails within its
    budget (the list fetch takes at most its share), and the Local Module answers."""
    services["cdn"].set_fault("cdn/info", **LIST_FAULTS[fault])
    chain = direct_chain(services)
    verdict, took = await timed(chain)
    assert took <= ONLINE_S + LM_S + MARGIN_S, took
    assert (verdict.decision, verdict.source) == ("allow", "lm"), (fault, verdict.reason)
    assert services["cdn"].list_service.count("codes/check") == 0
    cdn_failures = [f for f in verdict.details["failures"] if f["source"] == "cdn"]
    expected = "unauthorized" if fault == "401 unauthorized" else "unreachable"
    assert [f["kind"] for f in cdn_failures] == [expected], (fault, cdn_failures)
    if fault != "a dead host listed":  # that one has a list: its host was tried, and refused
        assert services["cdn"].host.count("codes/check") == 0


@pytest.mark.parametrize(
    "fault",
    [*COMMON_FAULTS, *(f"state {s}" for s in LM_STATES)],
)
async def test_local_module_fault_with_the_cdn_gone_leaves_the_unit_unanswered(
    services, fault: str
) -> None:
    services["cdn"].set_fault("codes/check", black_hole=True)
    services["cdn"].set_fault("cdn/info", black_hole=True)
    if fault.startswith("state "):
        services["lm"].set_state(fault.removeprefix("state "))
    else:
        services["lm"].set_fault("cis/outCheck", **COMMON_FAULTS[fault])
    verdict, took = await timed(direct_chain(services))
    assert took <= ONLINE_S + LM_S + MARGIN_S, took
    assert verdict.decision == "deny" and not verdict.checked, (fault, verdict.reason)
    if fault == "state sync_error":
        assert verdict.reason == "lm-sync-error"
    elif fault.startswith("state "):
        assert verdict.reason == "lm-not-ready"


@pytest.mark.parametrize("fault", list(TSPIOT_FAULTS), ids=list(TSPIOT_FAULTS))
async def test_tspiot_fault_always_denies(services, fault: str) -> None:
    chain = tspiot_chain(services)
    first, _ = await timed(chain)  # a healthy check first: detection done, connection warm
    assert first.decision == "allow"
    services["tspiot"].set_fault("codes/check", **TSPIOT_FAULTS[fault])
    verdict, took = await timed(chain)
    assert took <= TSPIOT_S + MARGIN_S, took
    assert verdict.decision == "deny" and verdict.reason.startswith("tspiot-"), verdict.reason
    if fault == "203 emergency":
        assert verdict.reason == "tspiot-emergency"


async def test_everything_healthy_is_allowed_online(services) -> None:
    verdict, took = await timed(direct_chain(services))
    assert (verdict.decision, verdict.source, verdict.checked) == ("allow", "cdn", True)
    assert took <= ONLINE_S + MARGIN_S
