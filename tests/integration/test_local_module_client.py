"""markd.checks.local_module against the Local Module emulator over real loopback sockets.

Covers domain.md §4: API v1 and v2 request shapes, version detection, the sold-codes database,
init, the states and their error codes (4045/4050), status polling that spares checks against
a module known to be down, the 72-hour synchronisation alerts, and what reaches the record.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import DAIRY_KI, SHOES, WATER, WATER_KI, wait_until
from markd.checks.local_module import LocalModuleClient, LocalModuleOptions
from markd.checks.record import Exchange
from markd.checks.results import SourceAnswer, SourceFailure
from markd.codes import parse
from markd.emulators import testing
from markd.emulators.local_module import LocalModuleEmulator
from markd.secrets import Secret

FN = "7281440500012345"
USER = "kiosk"
PASSWORD = "pw-Zq81-s3cret"
TOKEN = "3f1e2d4c-aaaa-4bbb-8ccc-123456789abc"
BUDGET_S = 0.5


@pytest.fixture
def lm() -> Iterator[LocalModuleEmulator]:
    with testing.local_module({"local_module": {"user": USER, "password": PASSWORD}}) as server:
        yield server


def make_client(
    server: LocalModuleEmulator | str, *, password: str = PASSWORD, **kwargs: Any
) -> LocalModuleClient:
    url = server if isinstance(server, str) else server.url
    return LocalModuleClient(
        url, user=USER, password=Secret(password, "test"), fn_serial=FN, **kwargs
    )


def deadline(seconds: float = BUDGET_S) -> float:
    return time.monotonic() + seconds


def expected_authorization() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


# -- outCheck ---------------------------------------------------------------------------------


async def test_v2_check_sends_the_ki_with_its_group_and_reads_results(
    lm: LocalModuleEmulator,
) -> None:
    lm.set_code(WATER_KI, isBlocked=True, smp=11900)
    client = make_client(lm, api=2)
    try:
        answer = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert (answer.source, answer.online, answer.code) == ("lm", False, 0)
    assert answer.facts.is_blocked is True and answer.facts.smp == 11900
    assert answer.inst == lm.scenario.local_module.inst
    assert answer.version == "2.6.0" and answer.req_id and answer.req_timestamp
    sent = lm.last("v2/cis/outCheck")
    assert sent.json == {"cis_list": [{"cis": WATER_KI, "pg": 13}]}  # the КИ, not the code
    assert sent.authorization == expected_authorization()
    assert sent.client_id == FN


async def test_v2_check_omits_pg_when_the_group_is_unknown(lm: LocalModuleEmulator) -> None:
    code = parse(SHOES)
    assert code.group_id is None
    client = make_client(lm, api=2)
    try:
        answer = await client.check(code, deadline())
    finally:
        client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert lm.last("v2/cis/outCheck").json == {"cis_list": [{"cis": code.ki}]}


async def test_v1_check_sends_a_list_of_strings_and_reads_the_bare_answer(
    lm: LocalModuleEmulator,
) -> None:
    lm.set_code(WATER_KI, isBlocked=True)
    client = make_client(lm, api=1)
    try:
        answer = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert answer.facts.is_blocked is True and answer.code == 0
    sent = lm.last("v1/cis/outCheck")
    assert sent.json == {"cis_list": [WATER_KI]}
    assert sent.authorization == expected_authorization() and sent.client_id == FN
    assert lm.count("v2/cis/outCheck") == 0


async def test_detection_finds_a_module_speaking_only_v1() -> None:
    scenario = {"local_module": {"user": USER, "password": PASSWORD, "api_versions": [1]}}
    with testing.local_module(scenario) as lm:
        client = make_client(lm, api=0)
        try:
            answer = await client.check(parse(WATER), deadline())
            again = await client.check(parse(WATER), deadline())
        finally:
            client.close()
        assert isinstance(answer, SourceAnswer) and isinstance(again, SourceAnswer)
        assert client.api_version == 1
        assert [(r.version, r.endpoint, r.status) for r in lm.requests] == [
            (2, "status", 404),
            (1, "status", 200),
            (1, "cis/outCheck", 200),
            (1, "cis/outCheck", 200),  # detected once
        ]


async def test_detection_prefers_v2(lm: LocalModuleEmulator) -> None:
    client = make_client(lm, api=0)
    try:
        status = await client.status_poll(deadline())
    finally:
        client.close()
    assert client.api_version == 2 and status.api == 2 and status.state == "ready"


async def test_a_refusing_answer_is_an_answer_with_its_code(lm: LocalModuleEmulator) -> None:
    body = {"results": [{"code": 7, "description": "внутренняя ошибка", "codes": []}]}
    lm.set_fault("cis/outCheck", body=body)
    client = make_client(lm)
    try:
        answer = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert answer.code == 7 and answer.description == "внутренняя ошибка"


# -- sold codes and init ----------------------------------------------------------------------


async def test_sell_then_check_says_sold_and_return_undoes_it(lm: LocalModuleEmulator) -> None:
    client = make_client(lm)
    try:
        sold = await client.sell([WATER_KI, parse(f"{DAIRY_KI}\x1d93dGVz")], deadline())
        after_sale = await client.check(parse(WATER), deadline())
        returned = await client.return_([WATER_KI], deadline())
        after_return = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert sold.ok and sold.accepted == (WATER_KI, DAIRY_KI) and sold.http_status == 201
    assert lm.last("v2/cis/sell").json == {"cis_list": [WATER_KI, DAIRY_KI]}
    assert isinstance(after_sale, SourceAnswer) and after_sale.facts.sold is True
    assert returned.ok and returned.accepted == (WATER_KI,) and returned.http_status == 200
    assert isinstance(after_return, SourceAnswer) and after_return.facts.sold is False
    assert lm.sold_codes() == [DAIRY_KI]


async def test_sell_on_a_v1_module_is_skipped_without_a_request(lm: LocalModuleEmulator) -> None:
    client = make_client(lm, api=1)
    try:
        update = await client.sell([WATER_KI], deadline())
    finally:
        client.close()
    assert update.ok and update.skipped and lm.count() == 0


async def test_sell_failure_is_reported(lm: LocalModuleEmulator) -> None:
    lm.set_fault("cis/sell", status=500)
    client = make_client(lm)
    try:
        update = await client.sell([WATER_KI], deadline())
    finally:
        client.close()
    assert not update.ok and update.failure is not None
    assert update.failure.kind == "server-error" and update.http_status == 500


@pytest.mark.parametrize("api", [1, 2])
async def test_init_sends_the_token_and_readies_the_module(
    lm: LocalModuleEmulator, api: int
) -> None:
    lm.set_state("not_configured")
    client = make_client(lm, api=api)
    try:
        before = await client.check(parse(WATER), deadline())
        failure = await client.init(Secret(TOKEN, "test"), deadline(), clear_sold=True)
        after = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(before, SourceFailure) and before.kind == "lm-not-ready"
    assert failure is None
    assert lm.token == TOKEN
    expected = {"token": TOKEN, "clearSold": True} if api == 2 else {"token": TOKEN}
    assert lm.last("init").json == expected
    # init reads the status again: the 4045 seen before does not hold the next check back.
    assert isinstance(after, SourceAnswer), after


async def test_init_refused_is_a_failure(lm: LocalModuleEmulator) -> None:
    lm.set_fault("init", status=400, description="token: неверный")
    client = make_client(lm)
    try:
        failure = await client.init(Secret("bad", "test"), deadline())
    finally:
        client.close()
    assert failure is not None and failure.kind == "http-error" and failure.http_status == 400


# -- states -----------------------------------------------------------------------------------

STATES = [
    ("initialization", "lm-not-ready"),
    ("not_configured", "lm-not-ready"),
    ("sync_error", "lm-sync-error"),
]


@pytest.mark.parametrize(("state", "kind"), STATES)
@pytest.mark.parametrize("api", [1, 2])
async def test_each_state_gives_its_failure_with_the_state(
    lm: LocalModuleEmulator, state: str, kind: str, api: int
) -> None:
    """No poll before: the 400 from outCheck is read, and the state is found out."""
    lm.set_state(state)
    client = make_client(lm, api=api)
    try:
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(result, SourceFailure), result
    assert (result.kind, result.lm_state, result.http_status) == (kind, state, 400)
    assert lm.count("cis/outCheck") == 1
    assert result.latency_ms < BUDGET_S * 1000


@pytest.mark.parametrize(("state", "kind"), STATES)
async def test_a_polled_state_answers_checks_without_a_request(
    lm: LocalModuleEmulator, state: str, kind: str
) -> None:
    lm.set_state(state)
    client = make_client(lm)
    try:
        polled = await client.status_poll(deadline())
        started = time.monotonic()
        result = await client.check(parse(WATER), deadline())
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert polled.state == state and polled.requires_download is (state != "sync_error")
    assert isinstance(result, SourceFailure), result
    assert (result.kind, result.lm_state) == (kind, state)
    assert lm.count("cis/outCheck") == 0 and elapsed < 0.02


# -- the status poller ------------------------------------------------------------------------


async def test_poller_marks_the_module_down_and_then_up_again(lm: LocalModuleEmulator) -> None:
    client = make_client(lm)
    stop = asyncio.Event()
    poller = asyncio.create_task(client.run_status_poller(0.05, stop))
    try:
        await wait_until(lambda: client.last_status is not None)
        lm.set_fault("*", reset=True)  # the module crashes: every connection is reset
        await wait_until(lambda: client.status()["reachable"] is False)
        lm.clear_requests()
        started = time.monotonic()
        down = await client.check(parse(WATER), deadline())
        elapsed = time.monotonic() - started
        assert isinstance(down, SourceFailure) and down.kind == "unreachable", down
        assert elapsed < 0.02 and down.latency_ms == 0.0
        assert lm.count("cis/outCheck") == 0

        lm.clear_faults()
        await wait_until(lambda: client.status()["state"] == "ready")
        up = await client.check(parse(WATER), deadline())
        assert isinstance(up, SourceAnswer), up
        assert lm.count("cis/outCheck") == 1
    finally:
        stop.set()
        await asyncio.wait_for(poller, 1.0)
        client.close()


async def test_a_module_never_reachable_fails_checks_at_once() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = make_client(url)
    try:
        status = await client.status_poll(deadline())
        started = time.monotonic()
        result = await client.check(parse(WATER), deadline())
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert not status.reachable and status.failure is not None
    assert isinstance(result, SourceFailure) and result.kind == "unreachable"
    assert elapsed < 0.02
    assert client.status()["alerts"]


async def test_a_stale_down_status_is_not_trusted(lm: LocalModuleEmulator) -> None:
    now = [1000.0]
    options = LocalModuleOptions(status_interval_s=10.0)
    client = make_client(lm, clock=lambda: now[0], options=options)
    try:
        lm.set_state("sync_error")
        await client.status_poll(deadline())
        lm.set_state("ready")  # recovered, but no poll has seen it
        now[0] += 29.0  # within 3 intervals: the down status holds
        held = await client.check(parse(WATER), deadline())
        assert isinstance(held, SourceFailure) and held.kind == "lm-sync-error"
        assert lm.count("cis/outCheck") == 0
        now[0] += 2.0  # older than 3 intervals: ask anyway
        asked = await client.check(parse(WATER), deadline())
        assert isinstance(asked, SourceAnswer), asked
        assert lm.count("cis/outCheck") == 1
        # The good answer lifted the down status: the next check asks too.
        assert client.status()["state"] == "ready"
        assert isinstance(await client.check(parse(WATER), deadline()), SourceAnswer)
    finally:
        client.close()


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "http_status"),
    [
        ({"status": 500}, "server-error", 500),
        ({"status": 503}, "server-error", 503),
        ({"status": 429}, "throttled", 429),
        ({"status": 404}, "http-error", 404),
        ({"malformed": True}, "bad-answer", 200),
        ({"malformed": "<html>oops</html>"}, "bad-answer", 200),
        ({"body": {"results": []}}, "bad-answer", 200),
        ({"body": {"code": 0, "codes": []}}, "bad-answer", 200),
        ({"body": {"results": [{"code": 0, "codes": [{"cis": DAIRY_KI}]}]}}, "bad-answer", 200),
        ({"reset": True}, "unreachable", None),
        ({"drop": True}, "bad-answer", None),
    ],
)
async def test_faults_map_to_failure_kinds(
    lm: LocalModuleEmulator, fault: dict[str, Any], kind: str, http_status: int | None
) -> None:
    lm.set_fault("cis/outCheck", **fault)
    client = make_client(lm)
    try:
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(result, SourceFailure), result
    assert (result.kind, result.http_status) == (kind, http_status)


#: Integers no module sends but a broken one, or something answering in its place, could:
#: "²" passes str.isdigit() and then fails int(); 5,000 digits pass it and exceed int()'s limit;
#: a 19-digit lastSync is past the last date datetime can show.
HOSTILE_INTEGERS = ["²", "٣", "9" * 5000, 10**19, "1_000", 1.5, True]


@pytest.mark.parametrize("value", HOSTILE_INTEGERS, ids=lambda v: repr(v)[:12])
async def test_a_hostile_last_sync_is_unknown_not_an_exception(
    lm: LocalModuleEmulator, value: Any
) -> None:
    lm.set_fault("status", body={"status": "ready", "lastSync": value, "version": "2.6.0"})
    client = make_client(lm)
    try:
        status = await client.status_poll(deadline())
    finally:
        client.close()
    assert status.reachable is True and status.failure is None
    assert status.last_sync_ms is None
    health = client.status()
    assert health["last_sync"] is None and health["last_sync_age_hours"] is None


@pytest.mark.parametrize("value", HOSTILE_INTEGERS, ids=lambda v: repr(v)[:12])
async def test_a_hostile_error_code_is_a_typed_failure(lm: LocalModuleEmulator, value: Any) -> None:
    lm.set_fault("cis/outCheck", status=400, body={"errorCode": value, "description": "?"})
    client = make_client(lm)
    try:
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(result, SourceFailure), result
    assert (result.kind, result.http_status) == ("http-error", 400)  # not a 4045/4050 state


async def test_a_5000_digit_number_in_the_answer_is_a_bad_answer(lm: LocalModuleEmulator) -> None:
    body = '{"code": 0, "reqId": "r-1", "reqTimestamp": ' + "9" * 5000 + ', "codes": []}'
    lm.set_fault("cis/outCheck", malformed=body)  # Python's json refuses it (ValueError)
    client = make_client(lm)
    try:
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(result, SourceFailure), result
    assert (result.kind, result.http_status) == ("bad-answer", 200)


async def test_wrong_password_is_unauthorized(lm: LocalModuleEmulator) -> None:
    client = make_client(lm, password="wrong")
    try:
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert isinstance(result, SourceFailure)
    assert (result.kind, result.http_status) == ("unauthorized", 401)
    assert "wrong" not in result.detail


async def test_black_hole_times_out_within_the_deadline(lm: LocalModuleEmulator) -> None:
    lm.set_fault("cis/outCheck", black_hole=True)
    client = make_client(lm)
    try:
        started = time.monotonic()
        result = await client.check(parse(WATER), started + 0.3)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert isinstance(result, SourceFailure) and result.kind == "timeout", result
    assert 0.29 <= elapsed <= 0.35


async def test_a_black_holed_status_poll_marks_the_module_unreachable(
    lm: LocalModuleEmulator,
) -> None:
    lm.set_fault("status", black_hole=True)
    client = make_client(lm)
    try:
        started = time.monotonic()
        status = await client.status_poll(started + 0.2)
        assert time.monotonic() - started <= 0.25
        result = await client.check(parse(WATER), deadline())
    finally:
        client.close()
    assert status.failure is not None and status.failure.kind == "timeout"
    assert isinstance(result, SourceFailure) and result.kind == "unreachable"
    assert lm.count("cis/outCheck") == 0


# -- health -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "alert"),
    [(1, None), (25, "warning"), (49, "critical"), (73, "blocked")],
)
async def test_last_sync_age_alerts(lm: LocalModuleEmulator, hours: float, alert: str) -> None:
    lm.configure(last_sync_age_s=hours * 3600)
    client = make_client(lm)
    try:
        await client.status_poll(deadline())
    finally:
        client.close()
    health = client.status()
    assert health["sync_alert"] == alert
    assert abs(health["last_sync_age_hours"] - hours) < 0.01
    assert health["state"] == "ready" and health["reachable"] is True
    assert health["version"] == "2.6.0" and health["inst"] == lm.scenario.local_module.inst
    assert set(health["counters"]) == {"cis", "blocked_series", "blocked_gtin", "blocked_cis"}
    assert health["last_sync"].endswith("Z")
    assert bool(health["alerts"]) is (alert is not None)


def test_status_before_any_poll() -> None:
    client = make_client("http://127.0.0.1:5995")
    assert client.status()["polled"] is False
    assert PASSWORD not in repr(client)


# -- the record -------------------------------------------------------------------------------


async def test_the_record_holds_no_password_token_or_crypto_tail(
    lm: LocalModuleEmulator,
) -> None:
    exchanges: list[Exchange] = []
    client = make_client(lm, api=0, recorder=exchanges.append)
    try:
        await client.init(Secret(TOKEN, "test"), deadline())
        await client.check(parse(WATER), deadline())
        await client.sell([WATER_KI], deadline())
        lm.set_fault("cis/outCheck", black_hole=True)
        await client.check(parse(WATER), deadline(0.1))
    finally:
        client.close()
    assert [(e.method, e.url.removeprefix(lm.url), e.status) for e in exchanges] == [
        ("GET", "/api/v2/status", 200),
        ("POST", "/api/v2/init", 200),
        ("GET", "/api/v2/status", 200),  # init reads the new state
        ("POST", "/api/v2/cis/outCheck", 200),
        ("POST", "/api/v2/cis/sell", 201),
        ("POST", "/api/v2/cis/outCheck", None),
    ]
    assert all(e.source == "lm" for e in exchanges)
    assert '"token":"<secret>"' in exchanges[1].request
    assert WATER_KI in exchanges[3].request and WATER_KI in exchanges[3].response
    assert exchanges[-1].error and exchanges[-1].latency_ms >= 90
    text = repr(exchanges)
    secrets = [PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), TOKEN]
    for secret in [*secrets, WATER.split("\x1d")[1], "938p9E"]:
        assert secret not in text


async def test_a_recorder_that_raises_breaks_neither_a_check_nor_a_sale_report(
    lm: LocalModuleEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal behind the recorder may fail (a full disk, a bug): the check still gets the
    module's answer and the sale report still goes out; the failure is logged instead."""
    calls: list[str] = []

    def broken(exchange: Exchange) -> None:
        calls.append(exchange.url.removeprefix(lm.url))
        raise OSError("No space left on device")

    lm.set_code(WATER_KI, isBlocked=True)
    client = make_client(lm, api=2, recorder=broken)
    try:
        answer = await client.check(parse(WATER), deadline())
        update = await client.sell([WATER_KI], deadline())
        status = await client.status_poll(deadline())
    finally:
        client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert answer.facts.is_blocked is True
    assert update.ok and update.accepted == (WATER_KI,)
    assert status.reachable and status.state == "ready"
    assert calls == ["/api/v2/cis/outCheck", "/api/v2/cis/sell", "/api/v2/status"]
    assert caplog.text.count("recording a lm exchange failed") == 3
