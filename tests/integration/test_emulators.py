"""The loopback emulators of the check services (:mod:`markd.emulators`), over real sockets.

Each documented behaviour gets a request through ``http.client`` and an assertion on the exact
answer and on the request log: the clients of the check chain are tested against these
emulators, so an emulator that drifts from domain.md would make those tests lie.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest

from conftest import DAIRY, DAIRY_KI, GS, TOBACCO_PACK, TOBACCO_PACK_KI, WATER, WATER_KI
from markd.emulators import testing
from markd.emulators.crpt_cdn import CrptCdn, CrptCdnHost
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.scenario import Behaviour, Scenario, ScenarioError
from markd.emulators.server import HTTPEmulator, Reply, Request, Route
from markd.emulators.testing import HttpAnswer, basic_auth, encode_code, http_request
from markd.emulators.tspiot import TspiotEmulator

TOKEN = "0f5b2c7e-1111-4222-8333-944445555666"
FN = "7380440700000001"
CHECK = "/api/v4/true-api/codes/check"
INFO = "/api/v4/true-api/cdn/info"
HEALTH = "/api/v4/true-api/cdn/health/check"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "emulators.md"

#: The per-code object the CDN gives for WATER when the scenario says nothing about it.
WATER_ONLINE = {
    "cis": WATER,
    "valid": True,
    "printView": WATER_KI,
    "gtin": "04680029460908",
    "groupIds": [13],
    "verified": True,
    "found": True,
    "realizable": True,
    "utilised": True,
    "isBlocked": False,
    "sold": False,
    "mrp": 0,
    "smp": 0,
    "grayZone": False,
    "packageType": "UNIT",
    "errorCode": 0,
}
WATER_OFFLINE = {
    "cis": WATER_KI,
    "isBlocked": False,
    "sold": False,
    "gtin": "04680029460908",
    "mrp": 0,
    "smp": 0,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def check(
    cdn: CrptCdn | CrptCdnHost, codes: list[str], token: str | None = TOKEN, **kwargs: Any
) -> HttpAnswer:
    """``codes/check`` on a host (the first host of a whole CDN)."""
    host = cdn.host if isinstance(cdn, CrptCdn) else cdn
    headers = {"X-API-KEY": token} if token else {}
    body = {"codes": codes, "fiscalDriveNumber": FN}
    return http_request(host.url, "POST", CHECK, json_body=body, headers=headers, **kwargs)


def out_check(lm: LocalModuleEmulator, kis: list[str], version: int = 2, **kw: Any) -> HttpAnswer:
    cis_list: list[Any] = kis if version == 1 else [{"cis": ki, "pg": 13} for ki in kis]
    return http_request(
        lm.url,
        "POST",
        f"/api/v{version}/cis/outCheck",
        json_body={"cis_list": cis_list},
        headers={**basic_auth(), "X-ClientId": FN},
        **kw,
    )


def ts_check(ts: TspiotEmulator, codes: list[str], version: int = 3, **kw: Any) -> HttpAnswer:
    encoded: list[Any] = [encode_code(c) for c in codes]
    if version == 3:
        encoded = [{"cis": c, "pg": 13} for c in encoded]
    body = {"codes": encoded, "client_info": {"name": "markd", "version": "0", "id": "k1"}}
    return http_request(ts.url, "POST", f"/api/v{version}/codes/check", json_body=body, **kw)


@pytest.fixture
def cdn() -> Iterator[CrptCdn]:
    with testing.crpt_cdn({"cdn": {"token": TOKEN}}) as server:
        yield server


@pytest.fixture
def lm() -> Iterator[LocalModuleEmulator]:
    with testing.local_module() as server:
        yield server


@pytest.fixture
def ts() -> Iterator[TspiotEmulator]:
    with testing.tspiot() as server:
        yield server


# --------------------------------------------------------------------------------------------
# Scenarios


def test_json_and_toml_scenarios_read_the_same(tmp_path: Path) -> None:
    data = {
        "description": "blocked water",
        "codes": {"*": {"expireDate": "2030-01-01T00:00:00.000Z"}, WATER_KI: {"isBlocked": True}},
        "cdn": {"token": TOKEN, "endpoints": {"codes/check": [{"status": 429}, {}]}},
        "local_module": {"state": "sync_error", "api_versions": [2]},
        "tspiot": {"versions": [1], "offline_first_checks": 1, "string_timestamps": True},
    }
    (tmp_path / "s.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "s.toml").write_text(
        f"""
description = "blocked water"
[codes."*"]
expireDate = "2030-01-01T00:00:00.000Z"
[codes."{WATER_KI}"]
isBlocked = true
[cdn]
token = "{TOKEN}"
[cdn.endpoints]
"codes/check" = [{{status = 429}}, {{}}]
[local_module]
state = "sync_error"
api_versions = [2]
[tspiot]
versions = [1]
offline_first_checks = 1
string_timestamps = true
""",
        encoding="utf-8",
    )
    from_json = Scenario.load(tmp_path / "s.json")
    assert from_json == Scenario.load(tmp_path / "s.toml") == Scenario.from_dict(data)
    assert from_json.cdn.endpoints["codes/check"] == (Behaviour(status=429), Behaviour())
    assert Scenario.from_dict(from_json.to_dict()) == from_json


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cnd": {}}, "scenario: unknown key 'cnd'"),
        ({"codes": {WATER_KI: {"blocked": True}}}, "unknown key 'blocked'"),
        ({"codes": {WATER_KI: {"isBlocked": "yes"}}}, "isBlocked: expected true or false"),
        ({"cdn": {"endpoints": {"codes/check": {"stauts": 500}}}}, "unknown key 'stauts'"),
        ({"cdn": {"endpoints": {"codes/check": {"drop": True, "status": 500}}}}, "status"),
        ({"cdn": {"endpoints": {"x": {"drop": True, "black_hole": True}}}}, "exclude"),
        ({"cdn": {"endpoints": {"x": {"latency_ms": -1}}}}, "latency_ms"),
        ({"cdn": {"endpoints": {"x": []}}}, "empty list"),
        ({"local_module": {"state": "redy"}}, "state: expected one of ready"),
        ({"tspiot": {"versions": "1"}}, "versions: expected a list of integers"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(message)):
        Scenario.from_dict(data)


def test_a_scenario_file_must_be_json_or_toml(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("{}")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ScenarioError, match=r"\.json or \.toml"):
        Scenario.load(tmp_path / "s.yaml")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        Scenario.load(tmp_path / "bad.json")


def test_a_patch_merges_codes_replaces_endpoints_and_none_removes() -> None:
    base = Scenario.from_dict(
        {
            "codes": {WATER_KI: {"isBlocked": True, "mrp": 100}},
            "cdn": {"token": TOKEN, "endpoints": {"codes/check": {"black_hole": True}}},
        }
    )
    patched = base.merged(
        {
            "codes": {WATER_KI: {"mrp": None, "sold": True}},
            "cdn": {"token": None, "endpoints": {"codes/check": {"status": 500}}},
        }
    )
    assert patched.codes[WATER_KI] == {"isBlocked": True, "sold": True}
    assert patched.cdn.token is None
    assert patched.cdn.endpoints["codes/check"] == (Behaviour(status=500),)
    # A None inside a new entry is dropped, not stored.
    assert base.merged({"codes": {DAIRY_KI: {"mrp": None, "sold": True}}}).codes[DAIRY_KI] == {
        "sold": True
    }


# --------------------------------------------------------------------------------------------
# True API CDN


def test_cdn_info_lists_the_hosts_and_logs_the_api_key(cdn: CrptCdn) -> None:
    answer = http_request(cdn.url, "GET", INFO, headers={"X-API-KEY": TOKEN})
    assert answer.status == 200
    assert answer.header("Content-Type") == "application/json; charset=utf-8"
    assert answer.json == {"code": 0, "description": "ok", "hosts": [{"host": cdn.host.url}]}
    assert cdn.host.url != cdn.url  # separate servers, separate ports
    record = cdn.last("cdn/info")
    assert (record.method, record.path, record.api_key, record.status) == (
        "GET",
        INFO,
        TOKEN,
        200,
    )


def test_the_list_service_lists_every_host_or_what_the_scenario_says() -> None:
    with testing.crpt_cdn({"cdn": {"token": TOKEN}}, hosts=3) as cdn:
        urls = [h.url for h in cdn.hosts]
        assert len({cdn.url, *urls}) == 4
        answer = http_request(cdn.url, "GET", INFO, headers={"X-API-KEY": TOKEN})
        assert answer.json["hosts"] == [{"host": url} for url in urls]
        cdn.set_hosts(["https://cdn01.example", "https://cdn02.example"])
        answer = http_request(cdn.url, "GET", INFO, headers={"X-API-KEY": TOKEN})
        assert [h["host"] for h in answer.json["hosts"]] == [
            "https://cdn01.example",
            "https://cdn02.example",
        ]
        cdn.set_hosts([])
        answer = http_request(cdn.url, "GET", INFO, headers={"X-API-KEY": TOKEN})
        assert answer.json == {"code": 0, "description": "ok", "hosts": []}
        dead = CrptCdn.dead_url()
        with pytest.raises(ConnectionRefusedError):
            http_request(dead, "GET", HEALTH, headers={"X-API-KEY": TOKEN})


def test_the_list_service_answers_no_check_and_the_hosts_no_list(cdn: CrptCdn) -> None:
    """The real CDN is split (domain.md §3.2): each kind refuses the other's endpoints."""
    headers = {"X-API-KEY": TOKEN}
    body = {"codes": [WATER], "fiscalDriveNumber": FN}
    refused = http_request(cdn.url, "POST", CHECK, json_body=body, headers=headers)
    assert refused.status == 404 and "codes" not in refused.json
    assert http_request(cdn.url, "GET", HEALTH, headers=headers).status == 404
    assert http_request(cdn.host.url, "GET", INFO, headers=headers).status == 404
    # Logged under their endpoint names, so a test can say "never asked for a check".
    assert [(r.endpoint, r.status) for r in cdn.list_service.requests] == [
        ("codes/check", 404),
        ("cdn/health/check", 404),
    ]
    assert cdn.host.last("cdn/info").status == 404
    assert cdn.count("codes/check") == 0  # the hosts' log: no check was asked of them
    cdn.configure(refusal_status=405)
    assert http_request(cdn.url, "POST", CHECK, json_body=body, headers=headers).status == 405
    with pytest.raises(ScenarioError, match="refusal_status"):
        cdn.configure(refusal_status=200)


def test_cdn_health_check_reports_avg_time(cdn: CrptCdn) -> None:
    answer = http_request(cdn.host.url, "GET", HEALTH, headers={"X-API-KEY": TOKEN})
    assert answer.json == {"code": 0, "description": "ok", "avgTimeMs": 25}
    cdn.configure(avg_time_ms=7)
    answer = http_request(cdn.host.url, "GET", HEALTH, headers={"X-API-KEY": TOKEN})
    assert answer.json["avgTimeMs"] == 7


def test_codes_check_answers_each_code_in_order_with_the_documented_fields(
    cdn: CrptCdn,
) -> None:
    before = now_ms()
    answer = check(cdn, [WATER, DAIRY])
    assert answer.status == 200
    body = answer.json
    assert set(body) == {"code", "description", "codes", "reqId", "reqTimestamp"}
    assert (body["code"], body["description"]) == (0, "ok")
    assert body["codes"][0] == WATER_ONLINE
    assert body["codes"][1]["printView"] == DAIRY_KI
    assert body["codes"][1]["groupIds"] == [8]
    assert uuid.UUID(body["reqId"]).version == 4
    assert isinstance(body["reqTimestamp"], int) and before <= body["reqTimestamp"] <= now_ms()
    # GS travels JSON-escaped and arrives as the raw byte; the log has the parsed body.
    assert b"\\u001d" in answer.body
    record = cdn.last("codes/check")
    assert record.json == {"codes": [WATER, DAIRY], "fiscalDriveNumber": FN}
    assert record.api_key == TOKEN
    assert record.header("content-type") == "application/json"


def test_codes_check_answers_come_from_the_scenario_per_code(cdn: CrptCdn) -> None:
    cdn.set_code("*", expireDate="2030-01-01T00:00:00.000Z")
    cdn.set_code(WATER_KI, isBlocked=True, ogvs=["FNS"])
    cdn.set_code(DAIRY_KI, found=False, errorCode=10)
    codes = check(cdn, [WATER, DAIRY, TOBACCO_PACK, "not-a-code"]).json["codes"]
    water, dairy, tobacco, junk = codes
    assert water == {
        **WATER_ONLINE,
        "isBlocked": True,
        "ogvs": ["FNS"],
        "expireDate": "2030-01-01T00:00:00.000Z",
    }
    assert (dairy["found"], dairy["errorCode"], dairy["message"]) == (
        False,
        10,
        "КМ не найден в ГИС МТ",
    )
    # The tobacco pack's MRP comes from its base-80 field (domain.md §2.3).
    assert (tobacco["printView"], tobacco["mrp"], tobacco["groupIds"]) == (
        TOBACCO_PACK_KI,
        22500,
        [3],
    )
    assert (junk["valid"], junk["errorCode"], junk["message"]) == (
        False,
        1,
        "Ошибка валидации КМ",
    )
    # A section's own answer beats the shared one, for that emulator only.
    cdn.patch_scenario({"cdn": {"codes": {WATER_KI: {"isBlocked": False}}}})
    assert check(cdn, [WATER]).json["codes"][0]["isBlocked"] is False


@pytest.mark.parametrize("endpoint", [CHECK, INFO, HEALTH])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_missing_or_wrong_token_gets_401(cdn: CrptCdn, endpoint: str, token: str | None) -> None:
    headers = {"X-API-KEY": token} if token else {}
    method = "POST" if endpoint == CHECK else "GET"
    url = cdn.url if endpoint == INFO else cdn.host.url
    answer = http_request(url, method, endpoint, json_body={"codes": [WATER]}, headers=headers)
    assert answer.status == 401
    assert answer.json["code"] == 401
    assert cdn.last().api_key == token


def test_any_token_is_accepted_when_none_is_configured() -> None:
    with testing.crpt_cdn() as cdn:
        assert check(cdn, [WATER], token="anything").status == 200
        assert check(cdn, [WATER], token=None).status == 401


@pytest.mark.parametrize(
    ("body", "settings"),
    [
        (b"{not json", {}),
        (json.dumps({"codes": []}).encode(), {}),
        (json.dumps({"codes": [WATER, WATER, WATER]}).encode(), {"max_codes": 2}),
        (json.dumps({"codes": [WATER]}).encode(), {"require_fiscal_drive_number": True}),
    ],
)
def test_a_bad_check_request_gets_400(cdn: CrptCdn, body: bytes, settings: dict[str, Any]) -> None:
    cdn.configure(**settings)
    answer = http_request(cdn.host.url, "POST", CHECK, body=body, headers={"X-API-KEY": TOKEN})
    assert answer.status == 400
    assert answer.json["code"] == 400


def test_unknown_paths_and_methods(cdn: CrptCdn) -> None:
    assert http_request(cdn.host.url, "GET", "/api/v3/true-api/nothing").status == 404
    answer = http_request(cdn.host.url, "GET", CHECK, headers={"X-API-KEY": TOKEN})
    assert (answer.status, answer.header("Allow")) == (405, "POST")
    assert [r.endpoint for r in cdn.requests] == [None, "codes/check"]


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        ({"status": 429}, 429, {"code": 429, "description": "Too Many Requests"}),
        (
            {"status": 500, "code": 5000},
            500,
            {"code": 5000, "description": "Internal Server Error"},
        ),
        ({"status": 503}, 503, {"code": 503, "description": "Service Unavailable"}),
        ({"status": 401}, 401, {"code": 401, "description": "Unauthorized"}),
        (
            {"emergency": True, "description": "Аварийная ситуация"},
            203,
            {"code": 203, "message": "Аварийная ситуация", "details": []},
        ),
        ({"body": {"code": 1, "description": "x"}}, 200, {"code": 1, "description": "x"}),
    ],
)
def test_status_faults_answer_with_their_body(
    cdn: CrptCdn, fault: dict[str, Any], status: int, body: dict[str, Any]
) -> None:
    cdn.set_fault("codes/check", **fault)
    answer = check(cdn, [WATER])
    assert (answer.status, answer.json) == (status, body)
    assert cdn.last("codes/check").status == status
    # Other endpoints are untouched.
    assert http_request(cdn.host.url, "GET", HEALTH, headers={"X-API-KEY": TOKEN}).status == 200


def test_a_malformed_body_is_not_json_but_has_a_correct_length(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", malformed=True)
    conn = testing.connect(cdn.host.url)
    try:
        first = http_request(cdn.host.url, "POST", CHECK, json_body={}, connection=conn)
        assert first.status == 200
        assert int(first.header("Content-Length") or -1) == len(first.body)
        with pytest.raises(json.JSONDecodeError):
            first.json  # noqa: B018 - the property parses
        # The connection stays usable: the length was right.
        cdn.set_fault("codes/check", malformed="<html>Bad gateway</html>", status=502)
        second = http_request(cdn.host.url, "POST", CHECK, json_body={}, connection=conn)
        assert (second.status, second.body) == (502, b"<html>Bad gateway</html>")
    finally:
        conn.close()
    assert [r.outcome for r in cdn.requests_for("codes/check")] == ["malformed", "malformed"]


def test_latency_is_fixed_or_cycled(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", latency_ms=[0, 200])
    elapsed = []
    for _ in range(3):
        start = time.monotonic()
        assert check(cdn, [WATER]).status == 200
        elapsed.append(time.monotonic() - start)
    assert elapsed[0] < 0.15 and elapsed[1] >= 0.2 and elapsed[2] < 0.15


def test_a_fault_sequence_plays_once_then_the_last_step_repeats(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", [{"status": 500, "code": 5000}, {"status": 429}, {}])
    statuses = [check(cdn, [WATER]).status for _ in range(4)]
    assert statuses == [500, 429, 200, 200]
    cdn.clear_faults()
    cdn.set_fault("*", status=503)
    assert http_request(cdn.url, "GET", INFO, headers={"X-API-KEY": TOKEN}).status == 503


def test_keep_alive_serves_many_requests_on_one_connection_without_nagle_delays(
    cdn: CrptCdn,
) -> None:
    conn = testing.connect(cdn.host.url)
    try:
        http_request(cdn.host.url, "POST", CHECK, json_body={"codes": [WATER]}, connection=conn)
        sock = conn.sock
        times = []
        for i in range(20):
            if i == 10:
                cdn.set_code(WATER_KI, sold=True)  # switched between two requests
            start = time.perf_counter()
            answer = http_request(
                cdn.host.url,
                "POST",
                CHECK,
                json_body={"codes": [WATER]},
                headers={"X-API-KEY": TOKEN},
                connection=conn,
            )
            times.append(time.perf_counter() - start)
            assert answer.json["codes"][0]["sold"] is (i >= 10)
        assert conn.sock is sock  # never reconnected
    finally:
        conn.close()
    # Headers and body leave in one segment with TCP_NODELAY: no 40 ms delayed-ACK stalls.
    assert sorted(times)[len(times) // 2] < 0.02


def test_a_dropped_connection_is_seen_as_remote_disconnected(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", drop=True)
    with pytest.raises(http.client.RemoteDisconnected):
        check(cdn, [WATER])
    record = cdn.last("codes/check")
    assert (record.outcome, record.status, record.json["codes"]) == ("dropped", None, [WATER])


def test_a_reset_connection_is_seen_as_connection_reset(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", reset=True)
    with pytest.raises(ConnectionResetError):
        check(cdn, [WATER])
    assert cdn.last("codes/check").outcome == "reset"


def test_a_black_hole_holds_until_the_client_gives_up(cdn: CrptCdn) -> None:
    cdn.set_fault("codes/check", black_hole=True)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        check(cdn, [WATER], timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 1.0
    assert cdn.last("codes/check").outcome == "black-hole"
    # Other connections are served meanwhile.
    assert http_request(cdn.host.url, "GET", HEALTH, headers={"X-API-KEY": TOKEN}).status == 200


def test_closing_ends_black_holed_and_idle_connections_at_once() -> None:
    server = CrptCdnHost({"cdn": {"endpoints": {"codes/check": {"black_hole": True}}}})
    server.start()
    idle = testing.connect(server.url)
    http_request(server.url, "GET", HEALTH, headers={"X-API-KEY": "k"}, connection=idle)
    errors: list[BaseException] = []

    def waiting_client() -> None:
        try:
            check(server, [WATER], timeout=30)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=waiting_client)
    thread.start()
    server.wait_for_requests(1, "codes/check")
    start = time.monotonic()
    server.close()
    thread.join(5)
    idle.close()
    assert time.monotonic() - start < 1.0
    assert len(errors) == 1 and isinstance(errors[0], http.client.RemoteDisconnected | OSError)


def test_the_admin_endpoint_switches_the_scenario_and_serves_the_log(
    cdn: CrptCdn,
) -> None:
    scenario = {"codes": {WATER_KI: {"isBlocked": True}}, "cdn": {"token": "other"}}
    answer = http_request(cdn.url, "POST", "/_emulator/scenario", json_body=scenario)
    assert answer.json == {"ok": True}
    assert check(cdn, [WATER], token="other").json["codes"][0]["isBlocked"] is True
    patch = {"cdn": {"endpoints": {"codes/check": {"status": 429}}}}
    http_request(cdn.url, "PATCH", "/_emulator/scenario", json_body=patch)
    assert check(cdn, [WATER], token="other").status == 429
    current = http_request(cdn.url, "GET", "/_emulator/scenario").json
    assert current["cdn"]["token"] == "other"
    # A scenario set on the list service reached the host; each keeps its own log.
    assert http_request(cdn.url, "GET", "/_emulator/requests").json == []
    log = http_request(cdn.host.url, "GET", "/_emulator/requests").json
    assert [(r["endpoint"], r["status"]) for r in log] == [
        ("codes/check", 200),
        ("codes/check", 429),
    ]
    assert log[0]["json"]["codes"] == [WATER]
    bad = http_request(cdn.url, "POST", "/_emulator/scenario", json_body={"cdn": {"x": 1}})
    assert bad.status == 400 and "unknown key 'x'" in bad.json["error"]
    http_request(cdn.host.url, "DELETE", "/_emulator/requests")
    assert cdn.requests == []  # admin requests are never logged


def test_wait_for_requests_times_out_with_a_clear_message(cdn: CrptCdn) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 requests to codes/check"):
        cdn.wait_for_requests(1, "codes/check", timeout=0.05)


# --------------------------------------------------------------------------------------------
# Local Module


@pytest.mark.parametrize("version", [1, 2])
def test_lm_status_reports_state_and_last_sync(lm: LocalModuleEmulator, version: int) -> None:
    answer = http_request(
        lm.url, "GET", f"/api/v{version}/status", headers={**basic_auth(), "X-ClientId": FN}
    )
    assert answer.status == 200
    body = answer.json
    assert {k: body[k] for k in ("version", "status", "inst", "requiresDownload")} == {
        "version": "2.6.0",
        "status": "ready",
        "inst": "6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10",
        "requiresDownload": False,
    }
    assert abs(now_ms() - 60_000 - body["lastSync"]) < 5_000
    assert set(body["replicationStatus"]) == {
        "cis",
        "blocked_series",
        "blocked_gtin",
        "blocked_cis",
    }
    record = lm.last("status")
    assert (record.version, record.client_id) == (version, FN)
    assert record.authorization == "Basic YWRtaW46YWRtaW4="  # admin:admin, as in the docs


def test_lm_status_fields_come_from_the_scenario(lm: LocalModuleEmulator) -> None:
    lm.configure(state="initialization", last_sync=1735000000000, version="1.4.1")
    body = http_request(lm.url, "GET", "/api/v1/status", headers=basic_auth()).json
    assert (body["status"], body["lastSync"], body["version"], body["requiresDownload"]) == (
        "initialization",
        1735000000000,
        "1.4.1",
        True,
    )


@pytest.mark.parametrize(
    "headers", [{}, basic_auth("admin", "wrong"), {"Authorization": "Basic !"}]
)
def test_lm_requires_basic_auth(lm: LocalModuleEmulator, headers: dict[str, str]) -> None:
    answer = http_request(lm.url, "GET", "/api/v2/status", headers=headers)
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Basic realm="local module"'


def test_lm_credentials_are_configurable() -> None:
    with testing.local_module({"local_module": {"user": "kiosk", "password": "s3cret"}}) as lm:
        path = "/api/v2/status"
        assert http_request(lm.url, "GET", path, headers=basic_auth()).status == 401
        assert (
            http_request(lm.url, "GET", path, headers=basic_auth("kiosk", "s3cret")).status == 200
        )
    with testing.local_module({"local_module": {"user": None}}) as open_lm:
        assert http_request(open_lm.url, "GET", path).status == 200


def test_lm_v1_out_check_answers_without_a_wrapper(lm: LocalModuleEmulator) -> None:
    before = now_ms()
    body = out_check(lm, [WATER_KI, DAIRY_KI], version=1).json
    assert set(body) == {"code", "description", "reqId", "reqTimestamp", "inst", "version", "codes"}
    assert (body["code"], body["inst"], body["version"]) == (
        0,
        "6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10",
        "2.6.0",
    )
    assert before <= body["reqTimestamp"] <= now_ms()
    assert body["codes"][0] == WATER_OFFLINE  # offline: nothing but these fields
    assert body["codes"][1]["cis"] == DAIRY_KI
    assert lm.last("cis/outCheck").json == {"cis_list": [WATER_KI, DAIRY_KI]}
    # The GET form with ?cis=, and the deprecated cis/check.
    for path in ("/api/v1/cis/outCheck", "/api/v1/cis/check"):
        answer = http_request(lm.url, "GET", f"{path}?cis={WATER_KI}", headers=basic_auth())
        assert answer.json["codes"] == [WATER_OFFLINE]
    assert lm.last("cis/check").query == {"cis": [WATER_KI]}


def test_lm_v2_out_check_wraps_in_results(lm: LocalModuleEmulator) -> None:
    lm.set_code(WATER_KI, isBlocked=True, smp=11900, isGreyGtin=True)
    lm.set_code("*", found=True)  # online-only fields never reach an offline answer
    body = out_check(lm, [WATER_KI]).json
    assert list(body) == ["results"] and len(body["results"]) == 1
    result = body["results"][0]
    assert result["code"] == 0
    assert result["codes"] == [
        {**WATER_OFFLINE, "isBlocked": True, "smp": 11900, "isGreyGtin": True}
    ]
    assert lm.last("v2/cis/outCheck").json == {"cis_list": [{"cis": WATER_KI, "pg": 13}]}


def test_lm_v1_and_v2_take_their_own_list_shapes(lm: LocalModuleEmulator) -> None:
    path = "/api/v2/cis/outCheck"
    answer = http_request(
        lm.url, "POST", path, json_body={"cis_list": [WATER_KI]}, headers=basic_auth()
    )
    assert answer.status == 400
    answer = http_request(
        lm.url,
        "POST",
        "/api/v1/cis/outCheck",
        json_body={"cis_list": [{"cis": WATER_KI}]},
        headers=basic_auth(),
    )
    assert answer.status == 400


@pytest.mark.parametrize(
    ("state", "error_code"),
    [("not_configured", 4045), ("initialization", 4045), ("sync_error", 4050)],
)
@pytest.mark.parametrize("version", [1, 2])
def test_lm_not_ready_refuses_checks_with_4045_or_4050(
    lm: LocalModuleEmulator, state: str, error_code: int, version: int
) -> None:
    lm.set_state(state)
    answer = out_check(lm, [WATER_KI], version=version)
    assert answer.status == 400
    assert answer.json["errorCode"] == error_code
    status = http_request(lm.url, "GET", f"/api/v{version}/status", headers=basic_auth())
    assert (status.status, status.json["status"]) == (200, state)
    lm.set_state("ready")
    assert out_check(lm, [WATER_KI], version=version).status == 200


def test_lm_sell_then_out_check_says_sold_until_returned(lm: LocalModuleEmulator) -> None:
    headers = basic_auth()
    sell = http_request(
        lm.url,
        "POST",
        "/api/v2/cis/sell",
        json_body={"cis_list": [WATER_KI, DAIRY_KI]},
        headers=headers,
    )
    assert sell.status == 201
    assert sell.json == {
        "results": [{"success": True, "cis": WATER_KI}, {"success": True, "cis": DAIRY_KI}]
    }
    assert out_check(lm, [WATER_KI]).json["results"][0]["codes"][0]["sold"] is True
    assert out_check(lm, [WATER_KI], version=1).json["codes"][0]["sold"] is True
    page = http_request(lm.url, "GET", "/api/v2/cis/sold?skip=1&limit=5", headers=headers)
    assert page.json == {"total_count": 2, "cis_list": [DAIRY_KI]}
    back = http_request(
        lm.url, "POST", "/api/v2/cis/return", json_body={"cis_list": [WATER_KI]}, headers=headers
    )
    assert (back.status, back.json) == (200, {"results": [{"success": True, "cis": WATER_KI}]})
    assert out_check(lm, [WATER_KI]).json["results"][0]["codes"][0]["sold"] is False
    assert lm.sold_codes() == [DAIRY_KI]
    too_many = http_request(lm.url, "GET", "/api/v2/cis/sold?limit=1001", headers=headers)
    assert too_many.status == 400


def test_lm_init_takes_the_token_and_makes_the_module_ready() -> None:
    scenario = {"local_module": {"state": "not_configured"}}
    with testing.local_module(scenario) as lm:
        lm.mark_sold(WATER_KI)
        assert (
            http_request(lm.url, "POST", "/api/v2/init", json_body={}, headers=basic_auth()).status
            == 400
        )
        answer = http_request(
            lm.url,
            "POST",
            "/api/v2/init",
            json_body={"token": TOKEN, "clearSold": True},
            headers=basic_auth(),
        )
        assert answer.status == 200
        assert lm.token == TOKEN and lm.sold_codes() == []
        assert lm.scenario.local_module.state == "ready"
        assert out_check(lm, [WATER_KI]).status == 200


def test_lm_serves_only_its_api_versions() -> None:
    with testing.local_module({"local_module": {"api_versions": [1]}}) as lm:
        assert http_request(lm.url, "GET", "/api/v2/status", headers=basic_auth()).status == 404
        assert http_request(lm.url, "GET", "/api/v1/status", headers=basic_auth()).status == 200
        # Endpoints a version does not have are 404 too.
        assert http_request(lm.url, "POST", "/api/v1/cis/sell", headers=basic_auth()).status == 404
        assert [r.endpoint for r in lm.requests] == ["status", "status", "cis/sell"]


def test_a_state_change_does_not_restart_a_fault_sequence(lm: LocalModuleEmulator) -> None:
    lm.set_fault("cis/outCheck", [{"status": 503}, {}])
    assert out_check(lm, [WATER_KI]).status == 503
    lm.set_state("ready")  # not an endpoint change
    assert out_check(lm, [WATER_KI]).status == 200
    lm.set_fault("cis/outCheck", [{"status": 503}, {}])  # an endpoint change restarts it
    assert out_check(lm, [WATER_KI]).status == 503


def test_lm_faults_apply_per_endpoint(lm: LocalModuleEmulator) -> None:
    lm.set_fault("status", black_hole=True)
    with pytest.raises(TimeoutError):
        http_request(lm.url, "GET", "/api/v2/status", headers=basic_auth(), timeout=0.2)
    assert out_check(lm, [WATER_KI]).status == 200
    lm.set_fault("v1/cis/outCheck", status=500)
    assert out_check(lm, [WATER_KI], version=1).status == 500
    assert out_check(lm, [WATER_KI], version=2).status == 200


def test_one_scenario_drives_the_cdn_and_the_lm_alike() -> None:
    scenario = {"codes": {WATER_KI: {"isBlocked": True}}, "cdn": {"token": TOKEN}}
    with testing.EmulatorPool() as pool:
        cdn, lm = pool.crpt_cdn(scenario), pool.local_module(scenario)
        assert check(cdn, [WATER]).json["codes"][0]["isBlocked"] is True
        assert out_check(lm, [WATER_KI]).json["results"][0]["codes"][0]["isBlocked"] is True


# --------------------------------------------------------------------------------------------
# ТС ПИоТ


@pytest.mark.parametrize("version", [1, 2, 3])
def test_tspiot_info_in_every_version(ts: TspiotEmulator, version: int) -> None:
    answer = http_request(ts.url, "GET", f"/api/v{version}/info")
    body = answer.json
    assert {k: body[k] for k in ("tspiotId", "kktSerial", "fnSerial", "kktInn")} == {
        "tspiotId": "c0ffee00-0000-4000-8000-000000000001",
        "kktSerial": "00106700000001",
        "fnSerial": "7380440700000001",
        "kktInn": "7700000000",
    }
    assert body["codesCheckTimeout"] == 2000
    assert set(body["lm"]) == {
        "version", "status", "lastSync", "token", "expDate", "ip", "port", "login", "pass"
    }  # fmt: skip
    # Spoleto's client asks with POST.
    posted = http_request(ts.url, "POST", f"/api/v{version}/info", json_body={})
    assert (posted.status, posted.json["tspiotId"]) == (200, body["tspiotId"])


def test_tspiot_speaks_only_its_versions() -> None:
    with testing.tspiot({"tspiot": {"versions": [1], "lm": {"status": "sync_error"}}}) as ts:
        assert http_request(ts.url, "GET", "/api/v3/info").status == 404
        assert http_request(ts.url, "GET", "/api/v2/info").status == 404
        info = http_request(ts.url, "GET", "/api/v1/info")
        assert (info.status, info.json["lm"]["status"]) == (200, "sync_error")
        assert ts_check(ts, [WATER], version=3).status == 404
        assert [(r.endpoint, r.version, r.status) for r in ts.requests] == [
            ("info", 3, 404),
            ("info", 2, 404),
            ("info", 1, 200),
            ("codes/check", 3, 404),
        ]


def test_tspiot_v3_check_answers_online(ts: TspiotEmulator) -> None:
    answer = ts_check(ts, [WATER, TOBACCO_PACK])
    assert answer.status == 200
    body = answer.json
    assert list(body) == ["codesResponse"] and len(body["codesResponse"]) == 1
    entry = body["codesResponse"][0]
    assert set(entry) == {
        "code",
        "description",
        "codes",
        "reqId",
        "reqTimestamp",
        "isCheckedOffline",
    }
    assert (entry["code"], entry["isCheckedOffline"]) == (0, False)
    assert isinstance(entry["reqTimestamp"], int)
    assert entry["codes"][0] == WATER_ONLINE  # cis: the decoded КМ, raw GS included
    assert entry["codes"][1]["mrp"] == 22500
    record = ts.last("codes/check")
    assert record.version == 3
    assert record.json["client_info"] == {"name": "markd", "version": "0", "id": "k1"}
    assert testing.decode_codes(record.json["codes"]) == [WATER, TOBACCO_PACK]


def test_tspiot_v2_takes_strings_and_v1_wraps_twice(ts: TspiotEmulator) -> None:
    v2 = ts_check(ts, [WATER], version=2).json
    assert v2["codesResponse"][0]["codes"] == [WATER_ONLINE]
    v1 = ts_check(ts, [WATER], version=1).json
    assert list(v1) == ["codesResponse"] and list(v1["codesResponse"]) == ["codesResponse"]
    assert v1["codesResponse"]["codesResponse"][0]["codes"] == [WATER_ONLINE]


@pytest.mark.parametrize(
    ("version", "codes"),
    [
        (3, [encode_code(WATER)]),  # v3 wants objects
        (2, [{"cis": encode_code(WATER)}]),  # v2 wants strings
        (2, ["%%% not base64"]),
        (2, []),
    ],
)
def test_tspiot_bad_requests_get_the_error_shape(
    ts: TspiotEmulator, version: int, codes: list[Any]
) -> None:
    answer = http_request(
        ts.url, "POST", f"/api/v{version}/codes/check", json_body={"codes": codes}
    )
    assert answer.status == 400
    assert set(answer.json) == {"error"}
    assert answer.json["error"]["errorCode"] == 400
    assert answer.json["error"]["errorDescription"]


def test_tspiot_answers_chosen_codes_offline(ts: TspiotEmulator) -> None:
    ts.configure(offline_codes=[WATER_KI])
    ts.set_code(WATER_KI, isBlocked=True)
    entry = ts_check(ts, [WATER]).json["codesResponse"][0]
    assert entry["isCheckedOffline"] is True
    assert (entry["inst"], entry["version"]) == ("6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10", "2.6.0")
    assert entry["codes"] == [
        {**WATER_OFFLINE, "cis": WATER, "isBlocked": True, "found": False, "ogvs": []}
    ]
    online = ts_check(ts, [DAIRY]).json["codesResponse"][0]
    assert online["isCheckedOffline"] is False and "inst" not in online


def test_tspiot_first_check_after_start_comes_back_offline() -> None:
    with testing.tspiot({"tspiot": {"offline_first_checks": 1}}) as ts:
        flags = [ts_check(ts, [WATER]).json["codesResponse"][0]["isCheckedOffline"] for _ in "ab"]
        assert flags == [True, False]
        ts.reset_warmup()
        assert ts_check(ts, [WATER]).json["codesResponse"][0]["isCheckedOffline"] is True


def test_tspiot_protobuf_json_quirks(ts: TspiotEmulator) -> None:
    ts.configure(string_timestamps=True, omit_defaults=True, desctiption=True)
    entry = ts_check(ts, [WATER]).json["codesResponse"][0]
    # code 0 and isCheckedOffline false are defaults, so left out; the timestamp is a string.
    assert set(entry) == {"desctiption", "codes", "reqId", "reqTimestamp"}
    assert entry["desctiption"] == "ok"
    assert isinstance(entry["reqTimestamp"], str) and entry["reqTimestamp"].isdigit()
    assert entry["codes"][0] == {
        "cis": WATER,
        "valid": True,
        "printView": WATER_KI,
        "gtin": "04680029460908",
        "groupIds": [13],
        "verified": True,
        "found": True,
        "realizable": True,
        "utilised": True,
        "packageType": "UNIT",
    }


def test_tspiot_errors_and_emergency(ts: TspiotEmulator) -> None:
    ts.set_fault("codes/check", status=500, code=514, description="ЧЗ недоступен")
    answer = ts_check(ts, [WATER])
    assert (answer.status, answer.json) == (
        500,
        {"error": {"errorCode": 514, "errorDescription": "ЧЗ недоступен"}},
    )
    ts.set_fault("codes/check", emergency=True, description="Аварийный режим")
    answer = ts_check(ts, [WATER])
    assert (answer.status, answer.json) == (
        203,
        {"code": 203, "message": "Аварийный режим", "details": []},
    )


def test_tspiot_checks_the_client_token_when_configured(ts: TspiotEmulator) -> None:
    ts.configure(token="pmsr-key")
    assert ts_check(ts, [WATER]).status == 401
    body = {"codes": [encode_code(WATER)], "client_info": {"token": "pmsr-key"}}
    assert http_request(ts.url, "POST", "/api/v2/codes/check", json_body=body).status == 200


def test_tspiot_over_tls_with_a_self_signed_certificate() -> None:
    with testing.tspiot(tls=True) as ts:
        assert ts.url.startswith("https://127.0.0.1:")
        assert ts.certificate_path is not None and ts.certificate_path.exists()
        # Verification off, as a client configured for a loopback ТС ПИоТ does.
        assert ts_check(ts, [WATER], context=testing.insecure_tls_context()).status == 200
        # Pinned to the emulator's certificate, with the host name (an IP SAN) checked.
        pinned = testing.pinned_tls_context(ts.certificate_path)
        assert http_request(ts.url, "GET", "/api/v3/info", context=pinned).status == 200
        # An ordinary client refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            http_request(ts.url, "GET", "/api/v3/info", context=ssl.create_default_context())
        # A refused handshake does not disturb the next client.
        assert http_request(ts.url, "GET", "/api/v3/info").status == 200
        assert [r.endpoint for r in ts.requests] == ["codes/check", "info", "info"]


def test_tls_faults_still_behave() -> None:
    with testing.tspiot(tls=True) as secure:
        secure.set_fault("codes/check", drop=True)
        with pytest.raises(http.client.RemoteDisconnected):
            ts_check(secure, [WATER])
        secure.set_fault("codes/check", black_hole=True)
        with pytest.raises(TimeoutError):
            ts_check(secure, [WATER], timeout=0.2)


# --------------------------------------------------------------------------------------------
# The command line


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready:
        proc.kill()
        pytest.fail("the emulator printed no URL within 10 s")
    return proc, proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, then the exit status (the pipes are read to the end and closed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert "Traceback" not in stderr, stderr
    return proc.returncode


def test_cli_prints_the_url_serves_the_scenario_and_stops_on_sigterm(tmp_path: Path) -> None:
    scenario = tmp_path / "cdn.toml"
    scenario.write_text(f'[cdn]\ntoken = "{TOKEN}"\n[codes."{WATER_KI}"]\nsold = true\n')
    proc, url = _start(["crpt_cdn", "--port", "0", "--hosts", "2", "--scenario", str(scenario)])
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        assert http_request(url, "GET", INFO, headers={"X-API-KEY": "bad"}).status == 401
        listed = http_request(url, "GET", INFO, headers={"X-API-KEY": TOKEN}).json["hosts"]
        assert len(listed) == 2 and url not in [h["host"] for h in listed]
        for host in listed:
            answer = http_request(
                host["host"],
                "POST",
                CHECK,
                json_body={"codes": [WATER]},
                headers={"X-API-KEY": TOKEN},
            )
            assert answer.json["codes"][0]["sold"] is True
    finally:
        assert _stop(proc) == 0


def test_cli_serves_tls_and_each_emulator(tmp_path: Path) -> None:
    scenario = tmp_path / "ts.json"
    scenario.write_text(json.dumps({"tspiot": {"versions": [2]}}))
    proc, url = _start(["tspiot", "--port", "0", "--tls", "--scenario", str(scenario)])
    try:
        assert url.startswith("https://127.0.0.1:")
        assert http_request(url, "GET", "/api/v2/info").status == 200
        assert http_request(url, "GET", "/api/v3/info").status == 404
    finally:
        assert _stop(proc) == 0
    proc, url = _start(["static_http", "--port", "0", "--directory", str(tmp_path)])
    try:
        assert http_request(url, "GET", "/ts.json").json == {"tspiot": {"versions": [2]}}
    finally:
        assert _stop(proc) == 0


def test_cli_refuses_a_bad_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.json"
    scenario.write_text(json.dumps({"local_module": {"state": "redy"}}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "markd.emulators",
            "local_module",
            "--port",
            "0",
            "--scenario",
            str(scenario),
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert "state: expected one of" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------
# The documentation


def _fenced_blocks(language: str) -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_every_scenario_in_the_docs_is_valid() -> None:
    import tomllib

    blocks = [json.loads(b) for b in _fenced_blocks("json")]
    blocks += [tomllib.loads(b) for b in _fenced_blocks("toml")]
    assert len(blocks) >= 3
    for block in blocks:
        Scenario.from_dict(block)


def test_the_python_examples_in_the_docs_run() -> None:
    blocks = _fenced_blocks("python")
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {"__name__": "docs_example"})  # noqa: S102


def test_a_socket_level_client_sees_one_segment_per_answer(cdn: CrptCdn) -> None:
    """Headers and body arrive together: a raw recv right after the request gets both."""
    with socket.create_connection(("127.0.0.1", cdn.host.port), timeout=2) as sock:
        body = json.dumps({"codes": [WATER]}).encode()
        sock.sendall(
            b"POST " + CHECK.encode() + b" HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + TOKEN.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        data = sock.recv(65536)
    head, _, payload = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert len(payload) == length
    assert json.loads(payload)["codes"][0]["cis"] == WATER
    assert GS in json.loads(payload)["codes"][0]["cis"]


# --------------------------------------------------------------------------------------------
# request bodies, framed by h11 on the emulators' one server


class EchoEmulator(HTTPEmulator):
    """An emulator with one endpoint that answers with the body it received."""

    name = "echo"

    def route(self, method: str, path: str) -> Route:
        def echo(request: Request) -> Reply:
            return Reply(200, request.body, content_type="application/octet-stream")

        return Route("echo", None, ("POST",), echo)


def answers_to(raw: bytes, count: int) -> list[tuple[int, bytes]]:
    """Send ``raw`` (one or more requests) to an echo emulator; its first ``count`` answers
    (fewer when it closes the connection)."""
    with EchoEmulator() as server:
        reader = h11.Connection(h11.CLIENT)
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(raw)
            answers: list[tuple[int, bytes]] = []
            status, body = 0, b""
            while len(answers) < count:
                if reader.our_state is h11.IDLE:  # the request was sent raw: h11 is told
                    reader.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
                    reader.send(h11.EndOfMessage())
                event = reader.next_event()
                if event is h11.NEED_DATA:
                    reader.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status, body = event.status_code, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    answers.append((status, body))
                    if reader.their_state is not h11.DONE or reader.our_state is not h11.DONE:
                        break
                    reader.start_next_cycle()
    return answers


def test_a_chunked_body_is_read_and_the_request_behind_it_on_the_same_connection_too() -> None:
    first = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    second = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nnext"
    assert answers_to(first + second, 2) == [(200, b"hello, world"), (200, b"next")]


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 21 + b"\r\nx\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
        b"Content-Length: " + b"9" * 5000 + b"\r\n\r\nx",
        b"Content-Length: -1\r\n\r\nx",
    ],
    ids=["chunk-size-21-hex-digits", "chunk-size-not-hex", "length-5000-digits", "negative"],
)
def test_a_body_whose_framing_h11_refuses_gets_400(framing: bytes) -> None:
    answers = answers_to(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + framing, 1)
    assert [status for status, _ in answers] == [400]


def test_cli_history_keeps_the_request_log_bounded() -> None:
    """A long run (the soak benchmark's million checks) must not grow the emulator's heap, and
    its garbage collections with it, without end: ``--history N`` keeps the latest requests."""
    proc, url = _start(["local_module", "--port", "0", "--history", "3"])
    try:
        for n in range(10):
            path = f"/api/v2/status?n={n}"
            assert http_request(url, "GET", path, headers=basic_auth()).status == 200
        log = http_request(url, "GET", "/_emulator/requests").json
    finally:
        assert _stop(proc) == 0
    assert 3 <= len(log) <= 6
    assert [r["query"]["n"] for r in log][-3:] == [["7"], ["8"], ["9"]]
