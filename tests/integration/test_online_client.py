"""markd.checks.online against crpt_cdn emulators over real sockets (domain.md §3).

Each test names the behaviour a till would notice: which host was asked, what came back, how
long it took, what a technician finds in the record and in ``markctl status``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import pytest

from conftest import WATER, WATER_KI
from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions
from markd.checks.record import Exchange
from markd.checks.results import SourceAnswer, SourceFailure
from markd.codes import parse
from markd.emulators.crpt_cdn import CrptCdnEmulator
from markd.emulators.testing import EmulatorPool
from markd.secrets import Secret

TOKEN = "0f5b2c7e-1111-4222-8333-944445555666"
FN = "7380440700000001"
CODE = parse(WATER)
CRYPTO_TAIL = WATER.split("\x1d", 1)[1]  # "938p9E"
#: Fast tests: no background rounds unless a test asks for them.
QUIET = OnlineOptions(background_maintenance=False)


@pytest.fixture
def pool() -> Iterator[EmulatorPool]:
    with EmulatorPool() as emulators:
        yield emulators


class FakeClock:
    """Monotonic seconds for the schedules (quarantine, refresh) that a test can move ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def client_for(
    base: CrptCdnEmulator | str,
    *,
    token: str = TOKEN,
    fn_serial: str = FN,
    options: OnlineOptions = QUIET,
    recorder: list[Exchange] | None = None,
    clock: FakeClock | None = None,
) -> OnlineClient:
    return OnlineClient(
        base if isinstance(base, str) else base.url,
        auth=ApiKeyAuth(Secret(token, "test")),
        fn_serial=fn_serial,
        recorder=None if recorder is None else recorder.append,
        clock=clock or time.monotonic,
        options=options,
        rng=random.Random(4),
    )


def budget(ms: float) -> float:
    return time.monotonic() + ms / 1000


def host_row(client: OnlineClient, url: str) -> dict:
    return next(h for h in client.status()["hosts"] if h["url"] == url)


async def listed(client: OnlineClient) -> None:
    assert await client.refresh_hosts(budget(2000))


# -- the happy path ------------------------------------------------------------------------------


async def test_answer_carries_the_facts_and_the_request_the_full_code(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    cdn.set_code(WATER_KI, isBlocked=True, ogvs=["FNS"])
    client = client_for(cdn)
    try:
        answer = await client.check(CODE, budget(1500))
    finally:
        client.close()

    assert isinstance(answer, SourceAnswer), answer
    assert (answer.source, answer.online, answer.code, answer.http_status) == ("cdn", True, 0, 200)
    assert answer.facts.print_view == WATER_KI
    assert answer.facts.is_blocked is True and answer.facts.ogvs == ("FNS",)
    assert answer.facts.found is True and answer.facts.verified is True
    sent = cdn.last("codes/check")
    assert answer.req_id == json.loads(answer.raw)["reqId"]
    assert answer.req_timestamp is not None and answer.req_timestamp.isdigit()
    assert sent.api_key == TOKEN
    assert sent.json == {"codes": [WATER], "fiscalDriveNumber": FN}
    assert b"\\u001d" in sent.body and b"\x1d" not in sent.body  # GS JSON-escaped


async def test_req_id_and_timestamp_are_kept_as_the_text_received(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    entry = {"cis": WATER, "printView": WATER_KI, "found": True, "realizable": True}
    body = {
        "code": 0,
        "codes": [{"cis": "010000000000000021other", "found": False}, entry],
        "reqId": "8d6f1b2e-0000-4000-8000-00000000abcd",
        "reqTimestamp": 1735000000123,
    }
    cdn.set_fault("codes/check", body=body)
    client = client_for(cdn)
    answer = await client.check(CODE, budget(1500))
    client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert answer.req_id == "8d6f1b2e-0000-4000-8000-00000000abcd"
    assert answer.req_timestamp == "1735000000123"
    assert answer.facts.found is True  # our entry, matched by cis, not the first one


async def test_empty_fn_serial_leaves_fiscal_drive_number_out(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    client = client_for(cdn, fn_serial="")
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    client.close()
    assert cdn.last("codes/check").json == {"codes": [WATER]}


async def test_keep_alive_one_connection_for_consecutive_checks(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    exchanges: list[Exchange] = []
    client = client_for(cdn, recorder=exchanges)
    for _ in range(3):
        assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    client.close()
    assert [e.extra["reused"] for e in exchanges] == [False, True, True]


# -- host list, ranking --------------------------------------------------------------------------


async def test_host_list_comes_from_cdn_info_and_is_used(pool: EmulatorPool) -> None:
    base = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    first, second = pool.cdn_hosts(2, {"cdn": {"token": TOKEN}})
    base.set_hosts([first.url, second.url + "/"])
    client = client_for(base)
    before = client.status()
    assert before["hosts_from"] == "base-url" and [h["url"] for h in before["hosts"]] == [base.url]

    await listed(client)
    answer = await client.check(CODE, budget(1500))
    client.close()

    assert isinstance(answer, SourceAnswer)
    assert base.last("cdn/info").api_key == TOKEN
    status = client.status()
    assert status["hosts_from"] == "cdn/info"
    assert [h["url"] for h in status["hosts"]] == [first.url, second.url]
    assert base.count("codes/check") == 0 and first.count("codes/check") == 1


async def test_refresh_is_due_between_6_and_7_hours_and_soon_after_a_failure(
    pool: EmulatorPool,
) -> None:
    base = pool.crpt_cdn()
    clock = FakeClock()
    client = OnlineClient(
        base.url,
        auth=ApiKeyAuth(Secret(TOKEN, "test")),
        fn_serial=FN,
        clock=clock,
        now=lambda: 1_000_000.0 + clock(),
        options=QUIET,
    )
    waits = set()
    for _ in range(5):
        await listed(client)
        status = client.status()
        wait = status["next_refresh"] - status["last_refresh"]
        assert 6 * 3600 <= wait <= 7 * 3600
        waits.add(round(wait))
    assert len(waits) > 1  # jittered, not a fixed period

    await client.maintain()  # not due: no new fetch
    assert base.count("cdn/info") == 5
    clock.offset += 7 * 3600 + 1
    await client.maintain()
    assert base.count("cdn/info") == 6

    base.set_fault("cdn/info", status=503)
    assert not await client.refresh_hosts(budget(1000))
    status = client.status()
    assert status["next_refresh"] - clock() - 1_000_000.0 == pytest.approx(300, abs=1)
    assert "cdn/info" in status["last_error"]
    assert status["hosts_from"] == "cdn/info"  # the old list stays
    client.close()


async def test_hosts_are_ranked_by_measured_latency(pool: EmulatorPool) -> None:
    slow, fast = pool.cdn_hosts(2)
    slow.set_fault("cdn/health/check", latency_ms=120)
    client = client_for(slow)
    await listed(client)
    await client.health_check(budget(2000))
    answer = await client.check(CODE, budget(1500))
    client.close()

    assert isinstance(answer, SourceAnswer)
    rows = client.status()["hosts"]
    assert [h["url"] for h in rows] == [fast.url, slow.url]
    assert rows[1]["latency_ms"] >= 120 > rows[0]["latency_ms"]
    assert fast.count("codes/check") == 1 and slow.count("codes/check") == 0


async def test_ranking_by_reported_avg_time_is_an_option(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    first.configure(avg_time_ms=90)
    second.configure(avg_time_ms=10)
    second.set_fault("cdn/health/check", latency_ms=60)  # slower to us, faster by its word
    client = client_for(
        first, options=OnlineOptions(background_maintenance=False, rank_by="avg_time")
    )
    await listed(client)
    await client.health_check(budget(2000))
    client.close()
    assert [h["url"] for h in client.status()["hosts"]] == [second.url, first.url]


async def test_background_round_fetches_the_list_while_the_first_check_uses_the_base(
    pool: EmulatorPool,
) -> None:
    base = pool.crpt_cdn()
    (other,) = pool.cdn_hosts(1)
    base.set_hosts([other.url])
    client = client_for(base, options=OnlineOptions())
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    assert base.count("codes/check") == 1
    for _ in range(100):
        if client.status()["last_health_check"] is not None:  # the round's last step
            break
        await asyncio.sleep(0.01)
    assert [h["url"] for h in client.status()["hosts"]] == [other.url]
    assert client.status()["last_health_check"] is not None
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    assert other.count("codes/check") == 1
    await client.aclose()


# -- failover and quarantine ---------------------------------------------------------------------


async def test_black_hole_fails_over_within_the_deadline_and_is_quarantined(
    pool: EmulatorPool,
) -> None:
    dead, good = pool.cdn_hosts(2)
    dead.set_fault("codes/check", black_hole=True)
    clock = FakeClock()
    client = client_for(dead, clock=clock)
    await listed(client)

    started = time.monotonic()
    answer = await client.check(CODE, started + 0.8)
    elapsed = time.monotonic() - started
    assert isinstance(answer, SourceAnswer), answer
    assert elapsed < 0.8
    assert (dead.count("codes/check"), good.count("codes/check")) == (1, 1)
    row = host_row(client, dead.url)
    assert row["quarantined"] and row["quarantined_until"] is not None
    assert "timeout" in row["last_error"] or "budget" in row["last_error"]

    # The next check goes straight to the good host: no time lost on the dead one.
    started = time.monotonic()
    assert isinstance(await client.check(CODE, started + 0.8), SourceAnswer)
    assert time.monotonic() - started < 0.2
    assert (dead.count("codes/check"), good.count("codes/check")) == (1, 2)

    # 15 minutes later the host is back in the rotation.
    dead.set_fault("codes/check")
    clock.offset += 15 * 60 + 1
    assert not host_row(client, dead.url)["quarantined"]
    assert isinstance(await client.check(CODE, budget(800)), SourceAnswer)
    assert dead.count("codes/check") == 2
    client.close()


async def test_every_host_quarantined_marks_cleared_and_one_retry(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    for host in (first, second):
        host.set_fault("codes/check", black_hole=True)
    client = client_for(first)
    await listed(client)
    failure = await client.check(CODE, budget(400))
    assert isinstance(failure, SourceFailure) and failure.kind == "timeout"
    assert all(h["quarantined"] for h in client.status()["hosts"])

    first.set_fault("codes/check")
    second.set_fault("codes/check")
    answer = await client.check(CODE, budget(800))
    client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert first.count("codes/check") + second.count("codes/check") == 3  # 2 lost + 1 retry
    assert not any(h["quarantined"] for h in client.status()["hosts"])  # every mark cleared


async def test_after_clearing_the_marks_only_one_more_attempt(pool: EmulatorPool) -> None:
    hosts = pool.cdn_hosts(2)
    for host in hosts:
        host.set_fault("codes/check", reset=True)  # fails at once: time is not the limit
    client = client_for(hosts[0])
    await listed(client)
    failure = await client.check(CODE, budget(1500))
    client.close()
    assert isinstance(failure, SourceFailure) and failure.kind in ("unreachable", "bad-answer")
    assert sum(h.count("codes/check") for h in hosts) == 3  # two hosts, then one retry
    status = client.status()
    assert sorted(h["quarantined"] for h in status["hosts"]) == [False, True]  # the retried one
    assert status["next_refresh"] <= time.time()  # and the host list is fetched again soon


async def test_an_offline_kiosk_does_not_retry_a_dead_cdn_on_every_scan(
    pool: EmulatorPool,
) -> None:
    hosts = pool.cdn_hosts(2)
    for host in hosts:
        host.set_fault("codes/check", reset=True)
    clock = FakeClock()
    client = client_for(hosts[0], clock=clock)
    await listed(client)
    assert isinstance(await client.check(CODE, budget(1500)), SourceFailure)
    assert sum(h.count("codes/check") for h in hosts) == 3  # two hosts, then one retry
    # The clearing left one host unmarked: the next scan tries it, and then every host is
    # marked again.
    assert isinstance(await client.check(CODE, budget(1500)), SourceFailure)
    assert sum(h.count("codes/check") for h in hosts) == 4
    assert all(h["quarantined"] for h in client.status()["hosts"])
    # The scans after it, within the minute: no attempt at all, and the failure comes at
    # once, so the Local Module is asked without delay.
    for _ in range(5):
        started = time.monotonic()
        failure = await client.check(CODE, budget(1500))
        assert isinstance(failure, SourceFailure), failure
        assert time.monotonic() - started < 0.2
    assert sum(h.count("codes/check") for h in hosts) == 4
    # A minute later the marks are cleared and attempts are made again.
    clock.offset += 61
    await client.check(CODE, budget(1500))
    client.close()
    assert sum(h.count("codes/check") for h in hosts) > 4


async def test_deadline_holds_against_a_black_hole_on_every_host(pool: EmulatorPool) -> None:
    hosts = pool.cdn_hosts(3)
    for host in hosts:
        host.set_fault("codes/check", black_hole=True)
    client = client_for(hosts[0])
    await listed(client)
    started = time.monotonic()
    failure = await client.check(CODE, started + 0.5)
    elapsed = time.monotonic() - started
    client.close()
    assert isinstance(failure, SourceFailure) and failure.kind == "timeout"
    assert elapsed <= 0.5 + 0.05
    assert sum(h.count("codes/check") for h in hosts) == 3  # every host had its share


async def test_dropped_connection_fails_over(pool: EmulatorPool) -> None:
    dropping, good = pool.cdn_hosts(2)
    dropping.set_fault("codes/check", drop=True)
    client = client_for(dropping)
    await listed(client)
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    client.close()
    assert host_row(client, dropping.url)["quarantined"]
    assert good.count("codes/check") == 1


# -- statuses ------------------------------------------------------------------------------------


async def test_401_no_failover_and_an_alert(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2, {"cdn": {"token": TOKEN}})
    client = client_for(first)
    await listed(client)
    first.set_fault("codes/check", status=401)
    failure = await client.check(CODE, budget(1000))
    assert isinstance(failure, SourceFailure), failure
    assert (failure.kind, failure.http_status) == ("unauthorized", 401)
    assert second.count("codes/check") == 0
    status = client.status()
    assert status["alert"] and "401" in status["alert"]
    assert not host_row(client, first.url)["quarantined"]

    first.set_fault("codes/check")
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert client.status()["alert"] is None  # cleared by the next success
    client.close()


async def test_a_refused_key_is_unauthorized(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    client = client_for(cdn, token="11111111-2222-4333-8444-555555555555")
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure) and failure.kind == "unauthorized"
    assert client.status()["alert"]


async def test_other_4xx_is_an_http_error_without_failover(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2, {"cdn": {"require_fiscal_drive_number": True}})
    client = client_for(first, fn_serial="")
    await listed(client)
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure)
    assert (failure.kind, failure.http_status) == ("http-error", 400)
    assert second.count("codes/check") == 0


async def test_429_retries_on_the_next_host_and_quarantines(pool: EmulatorPool) -> None:
    busy, good = pool.cdn_hosts(2)
    busy.set_fault("codes/check", status=429)
    client = client_for(busy)
    await listed(client)
    answer = await client.check(CODE, budget(1000))
    assert isinstance(answer, SourceAnswer), answer
    assert (busy.count("codes/check"), good.count("codes/check")) == (1, 1)
    assert host_row(client, busy.url)["quarantined"]

    # Both busy: one retry, then the failure.
    good.set_fault("codes/check", status=429)
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure)
    assert (failure.kind, failure.http_status) == ("throttled", 429)


async def test_5xx_retries_once_and_quarantines_when_repeated(pool: EmulatorPool) -> None:
    failing, good = pool.cdn_hosts(2)
    failing.set_fault("codes/check", status=502)
    client = client_for(failing)
    await listed(client)
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert not host_row(client, failing.url)["quarantined"]  # one 5xx: a strike only
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert host_row(client, failing.url)["quarantined"]  # repeated: blocked
    assert (failing.count("codes/check"), good.count("codes/check")) == (2, 2)
    client.close()


async def test_5xx_with_code_5000_retries_without_quarantine(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    first.set_fault("codes/check", status=500, code=5000)
    client = client_for(first)
    await listed(client)
    for _ in range(2):
        assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert not host_row(client, first.url)["quarantined"]
    assert (first.count("codes/check"), second.count("codes/check")) == (2, 2)
    client.close()


async def test_code_5000_on_the_only_host_is_retried_there(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("codes/check", [{"status": 500, "code": 5000}, {}])
    client = client_for(cdn)
    answer = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(answer, SourceAnswer), answer
    assert cdn.count("codes/check") == 2
    assert not client.status()["hosts"][0]["quarantined"]


async def test_203_is_emergency_without_failover(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    first.set_fault("codes/check", emergency=True)
    client = client_for(first)
    await listed(client)
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure)
    assert (failure.kind, failure.http_status) == ("emergency", 203)
    assert second.count("codes/check") == 0
    assert client.status()["emergency_at"] is not None


async def test_203_as_an_answer_is_an_option(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("codes/check", emergency=True)
    options = OnlineOptions(background_maintenance=False, emergency_203="answer")
    client = client_for(cdn, options=options)
    answer = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(answer, SourceAnswer) and answer.code == 203


async def test_malformed_body_is_a_bad_answer(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    first.set_fault("codes/check", malformed=True)
    client = client_for(first)
    await listed(client)
    failure = await client.check(CODE, budget(1000))
    assert isinstance(failure, SourceFailure) and failure.kind == "bad-answer"
    assert second.count("codes/check") == 0

    first.set_fault("codes/check", body={"code": 0, "codes": [{"cis": "someone else's"}]})
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure) and failure.kind == "bad-answer"
    assert "no entry" in failure.detail


# -- the record ----------------------------------------------------------------------------------


async def test_every_exchange_is_recorded_without_key_or_crypto_tail(pool: EmulatorPool) -> None:
    dead, good = pool.cdn_hosts(2, {"cdn": {"token": TOKEN}})
    dead.set_fault("codes/check", reset=True)
    exchanges: list[Exchange] = []
    client = client_for(dead, recorder=exchanges)
    good.set_fault("cdn/health/check", latency_ms=50)  # the dead one ranks first
    await listed(client)
    await client.health_check(budget(2000))
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    client.close()

    paths = [(e.method, e.url.split("/api/v4/true-api/")[1], e.status) for e in exchanges]
    assert paths[0] == ("GET", "cdn/info", 200)
    assert (
        sorted(p for p in paths if p[1] == "cdn/health/check")
        == [("GET", "cdn/health/check", 200)] * 2
    )
    checks = [e for e in exchanges if e.url.endswith("/codes/check")]
    assert [(e.url.split("/api")[0], e.status) for e in checks] == [
        (dead.url, None),
        (good.url, 200),
    ]
    assert checks[0].error and checks[0].response == ""
    assert all(e.source == "cdn" and e.latency_ms >= 0 for e in exchanges)
    for exchange in exchanges:
        text = repr(exchange)
        assert TOKEN not in text
        assert CRYPTO_TAIL not in text
    assert json.loads(checks[1].request) == {
        "codes": [f"{WATER_KI}<crypto>"],
        "fiscalDriveNumber": FN,
    }
    assert f"{WATER_KI}<crypto>" in checks[1].response


async def test_status_reports_hosts_and_never_the_key(pool: EmulatorPool) -> None:
    first, second = pool.cdn_hosts(2)
    client = client_for(first)
    await listed(client)
    await client.health_check(budget(2000))
    status = client.status()
    client.close()
    assert set(status) >= {"hosts", "last_refresh", "last_error", "alert"}
    assert {h["url"] for h in status["hosts"]} == {first.url, second.url}
    assert all(h["latency_ms"] is not None and not h["quarantined"] for h in status["hosts"])
    assert TOKEN not in json.dumps(status) and TOKEN not in repr(client.auth)
