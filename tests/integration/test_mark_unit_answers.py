"""The Mark Unit front's answers against the answer fixtures written from FMU-API's public
source (``tests/data/mark_unit/``, each fixture naming the FMU-API files and commit it was
written from): every field a fixture lists is there with its JSON type and fixed value, and no
field it does not list, except where it allows them. The front runs in a markd started with
the loopback emulators, as in ``test_mark_unit.py``.
"""

from __future__ import annotations

import time

import pytest

from integration.test_mark_unit import (
    MILK,
    MILK_KI,
    WATER,
    WATER_KI,
    direct,
    services,  # noqa: F401  (a fixture)
    till_of,
    via_tspiot,
)
from mark_unit_client import document, position
from mark_unit_fixtures import check_answer, problems, shape
from markd.emulators.testing import tspiot


async def test_check_commit_cancel_get_info_and_token(tmp_path, services, event_log) -> None:  # noqa: F811
    cdn, lm = services
    cdn.set_code(MILK_KI, isBlocked=True)
    async with till_of(direct(tmp_path, cdn, lm), event_log) as (till, _):
        allowed = await till.post("/document", document("check", position(WATER)))
        denied = await till.post("/document", document("check", position(MILK)))
        item = position(WATER)
        begun = await till.post("/document", document("begin", item, uid="a-1"))
        committed = await till.post("/document", document("commit", item, uid="a-1"))
        await till.post("/document", document("begin", position(MILK), uid="a-2"))
        cancelled = await till.post("/document", document("cancel", uid="a-2"))
        info = await till.request("POST", "/api4/system/get_info")
        health = await till.request("POST", "/api/fmu/api4/system/health")
        token = await till.request("GET", "/token")
    check_answer("check_allowed", allowed.status, allowed.json())
    check_answer("check_denied", denied.status, denied.json())
    check_answer("begin", begun.status, begun.json())
    check_answer("commit", committed.status, committed.json())
    check_answer("cancel", cancelled.status, cancelled.json())
    check_answer("get_info", info.status, info.json())
    check_answer("get_info", health.status, health.json())
    check_answer("token", token.status, token.json())
    assert token.json()["expired"] > time.time()


async def test_begin_with_a_price_flag(tmp_path, services, event_log) -> None:  # noqa: F811
    cdn, lm = services
    cdn.set_code(WATER_KI, groupIds=[3], mrp=15000)
    item = position(WATER, text="Сигареты", price_rub=160.00)
    async with till_of(direct(tmp_path, cdn, lm), event_log) as (till, _):
        await till.post("/document", document("check", item))
        begun = await till.post("/document", document("begin", item, uid="p-1"))
    check_answer("begin_price_flag", begun.status, begun.json())


async def test_offline_answer_of_the_local_module(tmp_path, services, event_log) -> None:  # noqa: F811
    cdn, lm = services
    cdn.set_fault("codes/check", status=503)
    async with till_of(direct(tmp_path, cdn, lm), event_log) as (till, _):
        answer = await till.post("/document", document("check", position(WATER)))
    check_answer("check_offline_local_module", answer.status, answer.json())


@pytest.mark.parametrize("version", [1, 3])
async def test_tspiot_answer(tmp_path, event_log, version) -> None:
    # v1 wraps codesResponse twice, v2/v3 once: esm_response has one shape either way.
    with tspiot({"tspiot": {"versions": [version]}}) as service:
        cfg = via_tspiot(tmp_path, service.url)
        async with till_of(cfg, event_log) as (till, _):
            answer = await till.post("/document", document("check", position(WATER)))
    check_answer("check_tspiot", answer.status, answer.json())


def test_the_check_finds_a_renamed_a_mistyped_and_an_unlisted_field() -> None:
    good = {"version": "1", "state": "regular", "timestamp": 1}
    assert problems(good, {"type": "SystemHealth"}) == []
    renamed = {"version": "1", "State": "regular", "timestamp": 1}
    assert len(problems(renamed, {"type": "SystemHealth"})) == 2  # missing, and not listed
    assert problems({**good, "timestamp": "1"}, {"type": "SystemHealth"})
    assert problems({**good, "timestamp": True}, {"type": "SystemHealth"})
    assert problems({**good, "state": "busy"}, {"type": "SystemHealth"})
    # Every fixture names the FMU-API files and the commit it was written from.
    for name in ("FmuAnswer", "CodeDataTrueApi", "TsPiotMarkCheckResponse"):
        (first, *_) = shape(name)["source"]
        assert first["repo"] == "shrayky/FMU-API" and len(first["commit"]) == 40
