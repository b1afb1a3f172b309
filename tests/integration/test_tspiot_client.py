"""markd.checks.tspiot against the ТС ПИоТ emulator over real sockets (domain.md §5).

Each test is named after what a cashier or a technician would notice if it broke: a version
the client cannot find, a code sent without its GS, an offline answer read as "not found", a
service in emergency mode that is taken for an answer, a token in the journal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import markd
from conftest import DAIRY, GS, SHOES, WATER, WATER_KI
from markd.checks.record import Exchange
from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.tspiot import TspiotClient, TspiotInfo, TspiotOptions
from markd.codes import MarkingCode, parse
from markd.emulators import testing
from markd.emulators.tspiot import TspiotEmulator
from markd.secrets import Secret

TOKEN = "5e3c1a9b-7777-4aaa-8bbb-0123456789ab"
CLIENT_ID = "kiosk-7"
#: Generous budget for answers that should come at once; the black-hole test uses its own.
BUDGET_S = 3.0


def deadline(seconds: float = BUDGET_S) -> float:
    return time.monotonic() + seconds


def client_for(
    server: TspiotEmulator,
    *,
    allow_self_signed: bool = True,
    token: str | None = TOKEN,
    recorder: Any = None,
    options: TspiotOptions | None = None,
    url: str | None = None,
) -> TspiotClient:
    return TspiotClient(
        url or server.url,
        client_id=CLIENT_ID,
        token=Secret(token, "test") if token is not None else None,
        allow_self_signed=allow_self_signed,
        recorder=recorder,
        options=options,
    )


@pytest.fixture
def emulators() -> Iterator[testing.EmulatorPool]:
    with testing.EmulatorPool() as pool:
        yield pool


def answer_of(result: SourceAnswer | SourceFailure) -> SourceAnswer:
    assert isinstance(result, SourceAnswer), result
    return result


def failure_of(result: SourceAnswer | SourceFailure) -> SourceFailure:
    assert isinstance(result, SourceFailure), result
    return result


# --------------------------------------------------------------------------------------------
# Detection and request shapes


@pytest.mark.parametrize("version", [3, 2, 1])
async def test_detects_the_one_version_served_and_checks_with_it(
    emulators: testing.EmulatorPool, version: int
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [version], "token": TOKEN}})
    client = client_for(server)
    try:
        info = await client.detect(deadline())
        assert isinstance(info, TspiotInfo)
        assert client.version == info.version == version
        probes = [r.path for r in server.requests_for("info")]
        assert probes == [f"/api/v{v}/info" for v in (3, 2, 1) if v >= version]
        assert info.tspiot_id == "c0ffee00-0000-4000-8000-000000000001"
        assert info.kkt_serial == "00106700000001"
        assert info.fn_serial == "7380440700000001"
        assert info.lm["version"] == "2.6.0" and info.lm["status"] == "ready"
        assert "pass" not in info.lm and "token" not in info.lm  # never shown by status()

        answer = answer_of(await client.check(parse(WATER), deadline()))
        assert server.last("codes/check").path == f"/api/v{version}/codes/check"
        # v1 double wrapping, v2/v3 single: the entry is found either way.
        assert answer.online is True and answer.code == 0
        assert answer.facts.print_view == WATER_KI and answer.facts.found is True
        assert answer.req_id and answer.req_timestamp and answer.req_timestamp.isdigit()
        assert answer.http_status == 200
        sent = server.last("codes/check").json
        assert sent["client_info"] == {
            "name": "markd",
            "version": markd.__version__,
            "id": CLIENT_ID,
            "token": TOKEN,
        }
    finally:
        client.close()


async def test_v1_answer_is_double_wrapped_and_still_read(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [1]}})
    client = client_for(server)
    try:
        answer = answer_of(await client.check(parse(WATER), deadline()))
        body = json.loads(answer.raw)
        assert isinstance(body["codesResponse"], dict)  # the protobuf double wrapping
        assert answer.req_id == body["codesResponse"]["codesResponse"][0]["reqId"]
    finally:
        client.close()


async def test_check_detects_first_within_the_same_deadline(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [2]}})
    client = client_for(server)
    try:
        assert client.version is None
        answer_of(await client.check(parse(WATER), deadline()))
        assert client.version == 2
        assert [r.endpoint for r in server.requests] == ["info", "info", "codes/check"]
        answer_of(await client.check(parse(WATER), deadline()))
        assert server.count("info") == 2  # remembered: no second detection
    finally:
        client.close()


async def test_concurrent_first_checks_detect_once(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [1]}})
    client = client_for(server)
    try:
        results = await asyncio.gather(
            *(client.check(parse(code), deadline()) for code in (WATER, DAIRY, SHOES))
        )
        assert all(isinstance(r, SourceAnswer) for r in results)
        assert server.count("info") == 3  # v3, v2, v1 probed once, not once per scan
        status = client.status()
        assert status["version"] == 1 and status["last_error"] is None
        assert "admin" not in json.dumps(status)  # the LM login and password /info carries
    finally:
        client.close()


async def test_v3_sends_objects_with_the_product_group_when_known(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [3]}})
    client = client_for(server)
    try:
        for text, group_id in ((WATER, 13), (DAIRY, 8), (SHOES, None)):
            code = parse(text)
            assert code.group_id == group_id
            answer_of(await client.check(code, deadline()))
            (item,) = server.last("codes/check").json["codes"]
            expected = {"cis": testing.encode_code(code.km)}
            if group_id is not None:
                expected["pg"] = group_id
            assert item == expected
    finally:
        client.close()


@pytest.mark.parametrize("version", [1, 3])
async def test_code_goes_as_base64_of_the_full_code_with_raw_gs(
    emulators: testing.EmulatorPool, version: int
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [version]}})
    client = client_for(server)
    try:
        code = parse(SHOES)  # two GS separators and a 44-character signature
        answer_of(await client.check(code, deadline()))
        codes = server.last("codes/check").json["codes"]
        encoded = codes[0]["cis"] if version == 3 else codes[0]
        decoded = base64.b64decode(encoded, validate=True)
        assert decoded == code.km.encode("utf-8")
        assert decoded.count(GS.encode()) == 2 and b"<GS>" not in decoded
        assert testing.decode_codes(codes) == [code.km]
    finally:
        client.close()


async def test_forced_api_version_skips_detection(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [1, 2, 3]}})
    client = client_for(server, options=TspiotOptions(api_version=1))
    try:
        answer_of(await client.check(parse(WATER), deadline()))
        assert server.count("info") == 0
        assert server.last("codes/check").path == "/api/v1/codes/check"
    finally:
        client.close()


async def test_redetects_when_the_service_changed_version(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [3]}})
    client = client_for(server)
    try:
        answer_of(await client.check(parse(WATER), deadline()))
        server.configure(versions=[1])  # an older ESM installed in its place
        answer = answer_of(await client.check(parse(WATER), deadline()))
        assert client.version == 1 and answer.online
        assert server.last("codes/check").path == "/api/v1/codes/check"
    finally:
        client.close()


async def test_no_version_served_is_a_clear_failure(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot()
    server.set_fault("info", status=404)
    client = client_for(server)
    try:
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert failure.kind == "http-error" and "none of the API versions" in failure.detail
        assert server.count("info") == 3 and server.count("codes/check") == 0
        assert client.status()["last_error"]["kind"] == "http-error"
    finally:
        client.close()


async def test_codes_check_timeout_comes_from_info(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot({"tspiot": {"codes_check_timeout": 1700}})
    client = client_for(server)
    try:
        assert client.codes_check_timeout_ms() is None  # not known before /info
        await client.detect(deadline())
        assert client.codes_check_timeout_ms() == 1700
        assert client.status()["info"]["codes_check_timeout_ms"] == 1700
        # The protobuf mapping renders int64 as a string: read that too.
        server.set_fault("info", body={"TsPiotId": "x-1", "codesCheckTimeout": "2500"})
        info = await client.detect(deadline())
        assert isinstance(info, TspiotInfo)
        assert info.codes_check_timeout_ms == 2500 and info.tspiot_id == "x-1"
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Answers


async def test_string_req_timestamp_is_kept_exactly(emulators: testing.EmulatorPool) -> None:
    entry = {
        "code": 0,
        "codes": [{"printView": WATER_KI, "found": True}],
        "reqId": "3f2c9a2e-0000-4000-8000-00000000abcd",
        "reqTimestamp": "1735000000123",
    }
    server = emulators.tspiot({"tspiot": {"versions": [2]}})
    server.set_fault("codes/check", body={"codesResponse": [entry]})
    client = client_for(server)
    try:
        answer = answer_of(await client.check(parse(WATER), deadline()))
        assert answer.req_timestamp == "1735000000123"
        assert answer.req_id == entry["reqId"]
        # And as the emulator's quirk renders it, on the v1 double wrapping.
        server.clear_faults()
        server.configure(versions=[1], string_timestamps=True)
        answer = answer_of(await client.check(parse(WATER), deadline()))
        raw_entry = json.loads(answer.raw)["codesResponse"]["codesResponse"][0]
        assert isinstance(raw_entry["reqTimestamp"], str)
        assert answer.req_timestamp == raw_entry["reqTimestamp"]
    finally:
        client.close()


async def test_protobuf_quirks_omitted_defaults_and_desctiption(
    emulators: testing.EmulatorPool,
) -> None:
    scenario = {"tspiot": {"omit_defaults": True, "desctiption": True}}
    server = emulators.tspiot(scenario)
    client = client_for(server)
    try:
        answer = answer_of(await client.check(parse(WATER), deadline()))
        assert answer.code == 0 and answer.online is True  # both omitted from the body
        assert answer.description == "ok"
        assert answer.facts.is_blocked is None  # omitted false stays "not said"
    finally:
        client.close()


async def test_offline_answer_is_marked_offline_with_inst_and_version(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot(
        {"codes": {WATER_KI: {"isBlocked": True}}, "tspiot": {"offline_codes": [WATER_KI]}}
    )
    client = client_for(server)
    try:
        answer = answer_of(await client.check(parse(WATER), deadline()))
        assert answer.online is False
        assert answer.inst == "6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10"
        assert answer.version == "2.6.0"
        assert answer.facts.is_blocked is True
        assert answer.facts.found is False  # passed on as said; the policy knows it is offline
        assert client.status()["last_offline"] is True
        # Offline answers come at any time (§5.6): the next code is online again.
        answer = answer_of(await client.check(parse(DAIRY), deadline()))
        assert answer.online is True and answer.inst is None
        assert client.status()["last_offline"] is False
    finally:
        client.close()


async def test_first_check_after_start_may_be_offline(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot({"tspiot": {"offline_first_checks": 1}}, tls=True)
    client = client_for(server)
    try:
        first = answer_of(await client.check(parse(WATER), deadline()))
        second = answer_of(await client.check(parse(WATER), deadline()))
        assert (first.online, second.online) == (False, True)
        assert first.inst and first.version
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Failures


async def test_emergency_203_is_a_failure(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot()
    client = client_for(server)
    try:
        server.set_fault("codes/check", emergency=True, description="Аварийный режим")
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert (failure.kind, failure.http_status) == ("emergency", 203)
        assert "Аварийный режим" in failure.detail
        # Body code 203 under HTTP 200 (as Spoleto reads it) is emergency all the same.
        server.set_fault("codes/check", body={"code": 203, "message": "нет ответа", "details": []})
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert (failure.kind, failure.http_status) == ("emergency", 200)
        assert client.status()["last_error"]["kind"] == "emergency"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("fault", "kind", "status", "quoted"),
    [
        ({"status": 500, "code": 514, "description": "ЧЗ недоступен"}, "server-error", 500, "514"),
        ({"status": 400, "description": "неверный запрос"}, "http-error", 400, "неверный"),
        ({"status": 429}, "throttled", 429, "429"),
        ({"code": 514, "description": "ЧЗ недоступен"}, "server-error", 200, "514"),
        # The ТС ПИоТ passes on its Local Module's refusals (not ready; 72 h without sync).
        ({"code": 4045, "description": "not ready"}, "lm-not-ready", 200, "4045"),
        ({"code": 4050, "description": "sync_error"}, "lm-sync-error", 200, "4050"),
    ],
)
async def test_error_body_is_a_failure_with_its_code(
    emulators: testing.EmulatorPool,
    fault: dict[str, Any],
    kind: str,
    status: int,
    quoted: str,
) -> None:
    server = emulators.tspiot()
    client = client_for(server)
    try:
        await client.detect(deadline())
        server.set_fault("codes/check", **fault)
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert (failure.kind, failure.http_status) == (kind, status)
        assert quoted in failure.detail
    finally:
        client.close()


#: Integers no ТС ПИоТ sends but a broken one, or a proxy in its place, could: "²" passes
#: str.isdigit() and fails int(); 5,000 digits exceed int()'s limit.
HOSTILE_INTEGERS = ["²", "٣", "9" * 5000, "1_000", 2.5, True, [203]]


@pytest.mark.parametrize("value", HOSTILE_INTEGERS, ids=lambda v: repr(v)[:12])
async def test_a_hostile_code_is_read_as_a_refusal_not_an_exception(
    emulators: testing.EmulatorPool, value: Any
) -> None:
    entry = {
        "code": value,
        "codes": [{"printView": WATER_KI, "found": True, "mrp": value, "groupIds": [value]}],
        "reqId": "3f2c9a2e-0000-4000-8000-00000000abcd",
        "reqTimestamp": value,
    }
    server = emulators.tspiot({"tspiot": {"versions": [2]}})
    server.set_fault("codes/check", body={"codesResponse": [entry]})
    client = client_for(server)
    try:
        answer = answer_of(await client.check(parse(WATER), deadline()))
    finally:
        client.close()
    assert answer.code == -1  # unreadable: the policy refuses on it
    assert answer.facts.mrp is None and answer.facts.group_ids is None


@pytest.mark.parametrize("value", HOSTILE_INTEGERS, ids=lambda v: repr(v)[:12])
async def test_a_hostile_error_code_is_a_typed_failure(
    emulators: testing.EmulatorPool, value: Any
) -> None:
    server = emulators.tspiot()
    client = client_for(server)
    try:
        await client.detect(deadline())
        error = {"errorCode": value, "errorDescription": "?"}
        server.set_fault("codes/check", status=500, body={"error": error})
        failure = failure_of(await client.check(parse(WATER), deadline()))
        server.set_fault("info", body={"TsPiotId": "x-1", "codesCheckTimeout": value})
        info = await client.detect(deadline())
    finally:
        client.close()
    assert (failure.kind, failure.http_status) == ("server-error", 500)
    assert isinstance(info, TspiotInfo) and info.codes_check_timeout_ms is None


async def test_a_5000_digit_number_in_the_answer_is_a_bad_answer(
    emulators: testing.EmulatorPool,
) -> None:
    body = '{"codesResponse": [{"code": 0, "reqTimestamp": ' + "9" * 5000 + "}]}"
    server = emulators.tspiot()
    client = client_for(server)
    try:
        await client.detect(deadline())
        server.set_fault("codes/check", malformed=body)  # Python's json refuses it
        failure = failure_of(await client.check(parse(WATER), deadline()))
    finally:
        client.close()
    assert (failure.kind, failure.http_status) == ("bad-answer", 200)


async def test_wrong_token_is_unauthorized(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot({"tspiot": {"token": TOKEN}})
    client = client_for(server, token="not-the-token")
    try:
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert (failure.kind, failure.http_status) == ("unauthorized", 401)
        assert "not-the-token" not in failure.detail
    finally:
        client.close()


async def test_malformed_answer_is_bad_answer_and_the_next_check_works(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot()
    client = client_for(server)
    try:
        server.set_fault("codes/check", [{"malformed": True}, {"body": {"codesResponse": []}}, {}])
        first = failure_of(await client.check(parse(WATER), deadline()))
        assert first.kind == "bad-answer" and "not JSON" in first.detail
        second = failure_of(await client.check(parse(WATER), deadline()))
        assert second.kind == "bad-answer" and "codesResponse" in second.detail
        answer_of(await client.check(parse(WATER), deadline()))
    finally:
        client.close()


async def test_black_hole_times_out_within_the_deadline(emulators: testing.EmulatorPool) -> None:
    server = emulators.tspiot()
    client = client_for(server)
    try:
        await client.detect(deadline())
        server.set_fault("codes/check", black_hole=True)
        budget = 0.3
        started = time.monotonic()
        failure = failure_of(await client.check(parse(WATER), started + budget))
        took = time.monotonic() - started
        assert failure.kind == "timeout"
        assert budget - 0.01 <= took <= budget + 0.05, took
        # Detection against a black hole is bounded by the same deadline.
        server.set_fault("info", black_hole=True)
        fresh = client_for(server)
        try:
            started = time.monotonic()
            failure = failure_of(await fresh.check(parse(WATER), started + budget))
            assert failure.kind == "timeout"
            assert time.monotonic() - started <= budget + 0.05
        finally:
            fresh.close()
    finally:
        client.close()


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = TspiotClient(
        f"http://127.0.0.1:{port}", client_id=CLIENT_ID, token=None, allow_self_signed=False
    )
    try:
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert failure.kind == "unreachable"
        assert client.status()["version"] is None
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# TLS


async def test_self_signed_certificate_accepted_on_loopback_when_allowed(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot({"tspiot": {"versions": [2]}}, tls=True)
    assert server.url.startswith("https://127.0.0.1:")
    for url in (server.url, f"https://localhost:{server.port}"):
        client = client_for(server, url=url)
        try:
            answer = answer_of(await client.check(parse(WATER), deadline()))
            assert answer.online and answer.facts.print_view == WATER_KI
        finally:
            client.close()


async def test_self_signed_certificate_refused_when_not_allowed(
    emulators: testing.EmulatorPool,
) -> None:
    server = emulators.tspiot(tls=True)
    client = client_for(server, allow_self_signed=False)
    try:
        failure = failure_of(await client.check(parse(WATER), deadline()))
        assert failure.kind == "unreachable"
        assert "certificate" in failure.detail and "allow_self_signed" in failure.detail
        assert server.count() == 0  # nothing was sent over the untrusted channel
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# The exchange record


async def test_record_has_every_exchange_without_token_or_crypto_tail(
    emulators: testing.EmulatorPool,
) -> None:
    exchanges: list[Exchange] = []
    server = emulators.tspiot({"tspiot": {"versions": [1], "token": TOKEN}}, tls=True)
    client = client_for(server, recorder=exchanges.append)
    code: MarkingCode = parse(WATER)
    try:
        answer_of(await client.check(code, deadline()))
        server.set_fault("codes/check", black_hole=True)
        failure_of(await client.check(code, time.monotonic() + 0.2))
    finally:
        client.close()
    assert [(e.method, e.url.rsplit("/", 2)[-2:], e.status) for e in exchanges] == [
        ("GET", ["v3", "info"], 404),
        ("GET", ["v2", "info"], 404),
        ("GET", ["v1", "info"], 200),
        ("POST", ["codes", "check"], 200),
        ("POST", ["codes", "check"], None),
    ]
    assert all(e.source == "tspiot" for e in exchanges)
    assert exchanges[-1].error and exchanges[-1].latency_ms > 0
    text = json.dumps([e.__dict__ for e in exchanges], ensure_ascii=False)
    crypto = code.crypto["93"]
    assert TOKEN not in text
    assert crypto not in text and testing.encode_code(code.km) not in text
    assert '"pass":"admin"' not in exchanges[2].response  # the LM password /info carries
    request = json.loads(exchanges[3].request)
    assert request["client_info"]["token"] == "<secret>"
    assert request["codes"] == [f"base64({WATER_KI}<crypto>)"]
    assert WATER_KI in exchanges[3].response


async def test_a_failing_recorder_does_not_fail_the_check(
    emulators: testing.EmulatorPool,
) -> None:
    def broken(exchange: Exchange) -> None:
        raise OSError("journal gone")

    server = emulators.tspiot()
    client = client_for(server, recorder=broken)
    try:
        answer_of(await client.check(parse(WATER), deadline()))
    finally:
        client.close()
