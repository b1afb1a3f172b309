"""markd.checks.online against crpt_cdn emulators over real sockets (domain.md §3).

Each test names the behaviour a till would notice: which host was asked, what came back, how
long it took, what a technician finds in the record and in ``markctl status``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WATER, WATER_KI
from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions
from markd.checks.record import Exchange
from markd.checks.results import SourceAnswer, SourceFailure
from markd.codes import parse
from markd.emulators.crpt_cdn import CrptCdn
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
    base: CrptCdn | str,
    *,
    token: str = TOKEN,
    fn_serial: str = FN,
    options: OnlineOptions = QUIET,
    recorder: list[Exchange] | None = None,
    clock: FakeClock | None = None,
    now: Callable[[], float] = time.time,
    hosts_file: Path | None = None,
) -> OnlineClient:
    return OnlineClient(
        base if isinstance(base, str) else base.url,
        auth=ApiKeyAuth(Secret(token, "test")),
        fn_serial=fn_serial,
        recorder=None if recorder is None else recorder.append,
        clock=clock or time.monotonic,
        now=now,
        options=options,
        rng=random.Random(4),
        hosts_file=hosts_file,
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
    checks = [e for e in exchanges if e.url.endswith("/codes/check")]
    assert [e.extra["reused"] for e in checks] == [False, True, True]


# -- host list, ranking --------------------------------------------------------------------------


async def test_host_list_comes_from_cdn_info_and_is_used(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, hosts=2)
    first, second = cdn.hosts
    cdn.set_hosts([first.url, second.url + "/"])
    client = client_for(cdn)
    before = client.status()
    assert before["hosts_from"] == "none" and before["hosts"] == []

    await listed(client)
    answer = await client.check(CODE, budget(1500))
    client.close()

    assert isinstance(answer, SourceAnswer)
    assert cdn.list_service.last("cdn/info").api_key == TOKEN
    status = client.status()
    assert status["hosts_from"] == "fetched"
    assert [h["url"] for h in status["hosts"]] == [first.url, second.url]
    assert cdn.list_service.count("codes/check") == 0 and first.count("codes/check") == 1


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
    assert status["hosts_from"] == "fetched"  # the old list stays
    client.close()


async def test_hosts_are_ranked_by_measured_latency(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    slow, fast = cdn.hosts
    slow.set_fault("cdn/health/check", latency_ms=120)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    first.configure(avg_time_ms=90)
    second.configure(avg_time_ms=10)
    second.set_fault("cdn/health/check", latency_ms=60)  # slower to us, faster by its word
    client = client_for(
        cdn, options=OnlineOptions(background_maintenance=False, rank_by="avg_time")
    )
    await listed(client)
    await client.health_check(budget(2000))
    client.close()
    assert [h["url"] for h in client.status()["hosts"]] == [second.url, first.url]


@pytest.mark.parametrize(
    "average",
    [10**400, float("nan"), float("inf"), -5, "²", "9" * 5000, True],
    ids=lambda v: repr(v)[:12],
)
async def test_a_hostile_avg_time_is_not_measured_not_an_exception(
    pool: EmulatorPool, average: Any
) -> None:
    # float(10**400) raises OverflowError; NaN would break the ranking's comparisons.
    cdn = pool.crpt_cdn()
    cdn.host.set_fault("cdn/health/check", body={"code": 0, "avgTimeMs": average})
    client = client_for(
        cdn, options=OnlineOptions(background_maintenance=False, rank_by="avg_time")
    )
    await listed(client)
    await client.health_check(budget(2000))
    client.close()
    row = host_row(client, cdn.host.url)
    assert row["avg_time_ms"] is None and not row["quarantined"]


@pytest.mark.parametrize("code", ["²", "9" * 5000, 10**30, 0.5, False], ids=lambda v: repr(v)[:12])
async def test_a_hostile_health_code_quarantines_the_host(pool: EmulatorPool, code: Any) -> None:
    cdn = pool.crpt_cdn()
    cdn.host.set_fault("cdn/health/check", body={"code": code})
    client = client_for(cdn)
    await listed(client)
    await client.health_check(budget(2000))
    client.close()
    assert host_row(client, cdn.host.url)["quarantined"]


async def test_first_check_fetches_the_list_and_asks_a_listed_host_never_the_base(
    pool: EmulatorPool,
) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_code(WATER_KI, sold=True)
    client = client_for(cdn, options=OnlineOptions())
    answer = await client.check(CODE, budget(1500))
    assert isinstance(answer, SourceAnswer), answer
    assert answer.facts.sold is True  # the online facts, from the first check on
    assert cdn.list_service.count("cdn/info") == 1
    assert cdn.list_service.count("codes/check") == 0
    assert cdn.host.count("codes/check") == 1
    # The background round shares the fetch the check made, then measures the hosts.
    for _ in range(100):
        if client.status()["last_health_check"] is not None:  # the round's last step
            break
        await asyncio.sleep(0.01)
    assert client.status()["last_health_check"] is not None
    assert cdn.list_service.count("cdn/info") == 1
    assert [h["url"] for h in client.status()["hosts"]] == [cdn.host.url]
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    assert cdn.host.count("codes/check") == 2 and cdn.list_service.count() == 1
    await client.aclose()


# -- failover and quarantine ---------------------------------------------------------------------


async def test_black_hole_fails_over_within_the_deadline_and_is_quarantined(
    pool: EmulatorPool,
) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    dead, good = cdn.hosts
    dead.set_fault("codes/check", black_hole=True)
    clock = FakeClock()
    client = client_for(cdn, clock=clock)
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
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    for host in (first, second):
        host.set_fault("codes/check", black_hole=True)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    hosts = cdn.hosts
    for host in hosts:
        host.set_fault("codes/check", reset=True)  # fails at once: time is not the limit
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    hosts = cdn.hosts
    for host in hosts:
        host.set_fault("codes/check", reset=True)
    clock = FakeClock()
    client = client_for(cdn, clock=clock)
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
    cdn = pool.crpt_cdn(hosts=3)
    hosts = cdn.hosts
    for host in hosts:
        host.set_fault("codes/check", black_hole=True)
    client = client_for(cdn)
    await listed(client)
    started = time.monotonic()
    failure = await client.check(CODE, started + 0.5)
    elapsed = time.monotonic() - started
    client.close()
    assert isinstance(failure, SourceFailure) and failure.kind == "timeout"
    assert elapsed <= 0.5 + 0.05
    assert sum(h.count("codes/check") for h in hosts) == 3  # every host had its share


async def test_dropped_connection_fails_over(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    dropping, good = cdn.hosts
    dropping.set_fault("codes/check", drop=True)
    client = client_for(cdn)
    await listed(client)
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    client.close()
    assert host_row(client, dropping.url)["quarantined"]
    assert good.count("codes/check") == 1


# -- statuses ------------------------------------------------------------------------------------


async def test_401_no_failover_and_an_alert(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, hosts=2)
    first, second = cdn.hosts
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn({"cdn": {"require_fiscal_drive_number": True}}, hosts=2)
    first, second = cdn.hosts
    client = client_for(cdn, fn_serial="")
    await listed(client)
    failure = await client.check(CODE, budget(1000))
    client.close()
    assert isinstance(failure, SourceFailure)
    assert (failure.kind, failure.http_status) == ("http-error", 400)
    assert second.count("codes/check") == 0


async def test_429_retries_on_the_next_host_and_quarantines(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    busy, good = cdn.hosts
    busy.set_fault("codes/check", status=429)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    failing, good = cdn.hosts
    failing.set_fault("codes/check", status=502)
    client = client_for(cdn)
    await listed(client)
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert not host_row(client, failing.url)["quarantined"]  # one 5xx: a strike only
    assert isinstance(await client.check(CODE, budget(1000)), SourceAnswer)
    assert host_row(client, failing.url)["quarantined"]  # repeated: blocked
    assert (failing.count("codes/check"), good.count("codes/check")) == (2, 2)
    client.close()


async def test_5xx_with_code_5000_retries_without_quarantine(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    first.set_fault("codes/check", status=500, code=5000)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    first.set_fault("codes/check", emergency=True)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    first.set_fault("codes/check", malformed=True)
    client = client_for(cdn)
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
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, hosts=2)
    dead, good = cdn.hosts
    dead.set_fault("codes/check", reset=True)
    exchanges: list[Exchange] = []
    client = client_for(cdn, recorder=exchanges)
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
    cdn = pool.crpt_cdn(hosts=2)
    first, second = cdn.hosts
    client = client_for(cdn)
    await listed(client)
    await client.health_check(budget(2000))
    status = client.status()
    client.close()
    assert set(status) >= {"hosts", "last_refresh", "last_error", "alert"}
    assert {h["url"] for h in status["hosts"]} == {first.url, second.url}
    assert all(h["latency_ms"] is not None and not h["quarantined"] for h in status["hosts"])
    assert TOKEN not in json.dumps(status) and TOKEN not in repr(client.auth)


# -- the list service: no list, a slow list, a broken list ---------------------------------------


async def test_concurrent_first_checks_share_one_list_fetch(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", latency_ms=100)
    client = client_for(cdn)
    answers = await asyncio.gather(*(client.check(CODE, budget(1500)) for _ in range(4)))
    await client.aclose()
    assert all(isinstance(a, SourceAnswer) for a in answers), answers
    assert cdn.list_service.count("cdn/info") == 1
    assert cdn.host.count("codes/check") == 4


async def test_a_slow_list_takes_only_its_share_then_the_fetch_goes_on(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", latency_ms=900)
    client = client_for(cdn)
    started = time.monotonic()
    failure = await client.check(CODE, started + 1.5)
    elapsed = time.monotonic() - started
    assert isinstance(failure, SourceFailure), failure
    assert failure.kind == "unreachable" and "host list" in failure.detail
    assert 0.55 <= elapsed <= 0.6 + 0.05  # 40 % of 1.5 s, and not a moment more
    assert cdn.host.count("codes/check") == 0
    # The fetch went on in the background: once it lands, checks go online at once.
    cdn.list_service.wait_for_requests(1, "cdn/info")
    for _ in range(100):
        if client.status()["hosts"]:
            break
        await asyncio.sleep(0.02)
    started = time.monotonic()
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    assert time.monotonic() - started < 0.2
    assert cdn.list_service.count("cdn/info") == 1
    await client.aclose()


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ({"status": 401}, "unauthorized"),
        ({"status": 503}, "unreachable"),
        ({"malformed": True}, "unreachable"),
        ({"body": {"code": 0, "hosts": []}}, "unreachable"),
        ({"body": {"code": 0, "hosts": [{"host": "ftp://cdn01.example"}]}}, "unreachable"),
        ({"drop": True}, "unreachable"),
    ],
)
async def test_a_broken_list_service_fails_the_check_fast_and_typed(
    pool: EmulatorPool, fault: dict, kind: str
) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", **fault)
    client = client_for(cdn)
    started = time.monotonic()
    failure = await client.check(CODE, started + 1.5)
    elapsed = time.monotonic() - started
    await client.aclose()
    assert isinstance(failure, SourceFailure), failure
    assert failure.kind == kind and "host list" in failure.detail
    assert elapsed < 0.3
    assert cdn.host.count() == 0 and cdn.list_service.count("codes/check") == 0
    status = client.status()
    assert status["hosts_from"] == "none" and "cdn/info" in status["last_error"]
    if kind == "unauthorized":
        assert status["alert"] and "401" in status["alert"]


async def test_after_a_failed_list_fetch_checks_fail_at_once_for_a_while(
    pool: EmulatorPool,
) -> None:
    """A list service that just failed is not asked again by every scan: for
    ``list_check_retry_s`` checks fail at once with that fetch's error (so the Local Module is
    asked without delay), then one tries again; a fetched list ends the pause."""
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", status=503)
    clock = FakeClock()
    client = client_for(
        cdn, options=dataclasses.replace(QUIET, list_check_retry_s=10.0), clock=clock
    )
    first = await client.check(CODE, budget(1500))
    assert isinstance(first, SourceFailure) and "503" in first.detail
    assert cdn.list_service.count("cdn/info") == 1
    for _ in range(5):
        again = await client.check(CODE, budget(1500))
        assert isinstance(again, SourceFailure)
        assert (again.kind, again.http_status) == (first.kind, first.http_status)
        assert "moments ago" in again.detail and again.latency_ms < 50
    assert cdn.list_service.count("cdn/info") == 1  # no fetch while the pause lasts

    cdn.clear_faults()
    clock.offset += 10.5
    answer = await client.check(CODE, budget(1500))
    assert isinstance(answer, SourceAnswer), answer
    assert cdn.list_service.count("cdn/info") == 2
    await client.aclose()


async def test_the_pause_holds_with_background_maintenance_as_the_daemon_runs(
    pool: EmulatorPool,
) -> None:
    """As the daemon runs the client (background rounds on): a failed list fetch is not
    repeated by every scan's background round either, and once the pause is over the list
    service that came back answers the very scan that retries."""
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", status=503)
    clock = FakeClock()
    client = client_for(cdn, options=OnlineOptions(), clock=clock)
    first = await client.check(CODE, budget(1500))
    assert isinstance(first, SourceFailure) and "503" in first.detail
    for _ in range(5):
        again = await client.check(CODE, budget(1500))
        assert isinstance(again, SourceFailure) and "moments ago" in again.detail
        await asyncio.sleep(0.02)  # let any background round run
    assert cdn.list_service.count("cdn/info") == 1

    cdn.clear_faults()
    clock.offset += 10.5
    answer = await client.check(CODE, budget(1500))
    assert isinstance(answer, SourceAnswer), answer
    assert cdn.list_service.count("cdn/info") == 2
    await client.aclose()


async def test_after_a_failure_a_retry_against_a_black_hole_costs_a_scan_little(
    pool: EmulatorPool,
) -> None:
    """A list service that takes the connection and never answers: the first check waits its
    share, the fetch fails at its own time limit; from then on checks fail at once, and the
    one that retries after the pause waits at most ``list_retry_wait_s``."""
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", black_hole=True)
    clock = FakeClock()
    options = OnlineOptions(maintenance_timeout_s=0.3)
    client = client_for(cdn, options=options, clock=clock)
    started = time.monotonic()
    first = await client.check(CODE, started + 1.5)
    assert isinstance(first, SourceFailure)
    assert time.monotonic() - started <= 0.6 + 0.05
    while client.status()["last_error"] is None:  # the fetch ends at its 0.3 s limit
        await asyncio.sleep(0.02)
    for _ in range(5):
        started = time.monotonic()
        assert isinstance(await client.check(CODE, started + 1.5), SourceFailure)
        assert time.monotonic() - started < 0.05
    assert cdn.list_service.count("cdn/info") == 1

    clock.offset += 10.5
    started = time.monotonic()
    retry = await client.check(CODE, started + 1.5)
    assert isinstance(retry, SourceFailure)
    assert time.monotonic() - started <= options.list_retry_wait_s + 0.05
    await client.aclose()


async def test_with_no_pause_every_check_asks_the_list_service_again(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", status=503)
    client = client_for(cdn, options=dataclasses.replace(QUIET, list_check_retry_s=0.0))
    for _ in range(3):
        assert isinstance(await client.check(CODE, budget(1500)), SourceFailure)
    assert cdn.list_service.count("cdn/info") == 3
    await client.aclose()


async def test_an_empty_scenario_list_and_a_dead_listed_host(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_hosts([])
    client = client_for(cdn)
    failure = await client.check(CODE, budget(1500))
    assert isinstance(failure, SourceFailure) and failure.kind == "unreachable"
    assert "no usable host" in failure.detail

    dead = CrptCdn.dead_url()
    cdn.set_hosts([dead, cdn.host.url])
    assert await client.refresh_hosts(budget(1000))
    answer = await client.check(CODE, budget(1500))
    await client.aclose()
    assert isinstance(answer, SourceAnswer), answer
    assert host_row(client, dead)["quarantined"]  # asked first, failed over
    assert not host_row(client, cdn.host.url)["quarantined"]


async def test_the_list_deadline_holds_against_a_black_hole(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    cdn.set_fault("cdn/info", black_hole=True)
    client = client_for(cdn)
    for budget_ms in (100, 400, 1500):
        started = time.monotonic()
        failure = await client.check(CODE, started + budget_ms / 1000)
        elapsed = time.monotonic() - started
        assert isinstance(failure, SourceFailure) and failure.kind == "unreachable"
        assert elapsed <= budget_ms / 1000 * 0.4 + 0.05
    # One fetch, shared by the three checks (it waits out maintenance_timeout_s).
    assert cdn.list_service.count("cdn/info") == 1
    await client.aclose()


async def test_the_emulator_list_service_refuses_checks_and_hosts_refuse_the_list(
    pool: EmulatorPool,
) -> None:
    """The client is pointed at the wrong kind of server: nothing is answered as a check."""
    cdn = pool.crpt_cdn()
    wrong_base = client_for(cdn.host.url)  # a host as the base URL: it has no list
    failure = await wrong_base.check(CODE, budget(1500))
    await wrong_base.aclose()
    assert isinstance(failure, SourceFailure) and "HTTP 404" in failure.detail
    assert cdn.host.count("codes/check") == 0 and cdn.host.count("cdn/info") == 1
    assert cdn.host.last("cdn/info").status == 404


# -- the persisted list --------------------------------------------------------------------------


async def test_the_list_is_persisted_and_a_restart_checks_without_fetching(
    pool: EmulatorPool, tmp_path: Path
) -> None:
    cdn = pool.crpt_cdn(hosts=2)
    file = tmp_path / "state" / "cdn-hosts.json"
    first = client_for(cdn, hosts_file=file)
    await listed(first)
    await first.health_check(budget(2000))
    await first.aclose()
    saved = json.loads(file.read_text())
    assert saved["base_url"] == cdn.url
    assert sorted(h["host"] for h in saved["hosts"]) == sorted(h.url for h in cdn.hosts)
    assert all(h["latency_ms"] is not None for h in saved["hosts"])
    # Kept in rank order (fastest first), so a restart asks the best host first.
    latencies = [h["latency_ms"] for h in saved["hosts"]]
    assert latencies == sorted(latencies)
    assert sorted(p.name for p in file.parent.iterdir()) == ["cdn-hosts.json"]  # no leftovers
    assert TOKEN not in file.read_text()

    # A restart: the list comes from the file, the first check goes straight to a host.
    cdn.clear_requests()
    second = client_for(cdn, hosts_file=file)
    status = second.status()
    assert status["hosts_from"] == "persisted" and len(status["hosts"]) == 2
    assert status["list_age_s"] < 60
    started = time.monotonic()
    assert isinstance(await second.check(CODE, started + 1.5), SourceAnswer)
    assert cdn.list_service.count("cdn/info") == 0 and cdn.count("codes/check") == 1

    # The list service down makes no difference while the list is fresh.
    cdn.set_fault("cdn/info", status=503)
    assert isinstance(await second.check(CODE, budget(1500)), SourceAnswer)
    await second.aclose()


async def test_an_old_persisted_list_is_used_while_a_fresh_one_is_fetched(
    pool: EmulatorPool, tmp_path: Path
) -> None:
    cdn = pool.crpt_cdn()
    file = tmp_path / "cdn-hosts.json"
    hours = 3600.0
    writer = client_for(cdn, hosts_file=file, now=lambda: time.time() - 8 * hours)
    await listed(writer)
    await writer.aclose()
    cdn.clear_requests()
    cdn.set_fault("cdn/info", latency_ms=300)  # the background fetch takes a while

    client = client_for(cdn, hosts_file=file, options=OnlineOptions())
    assert client.status()["hosts_from"] == "persisted"
    assert client.status()["list_age_s"] >= 8 * hours - 60
    started = time.monotonic()
    assert isinstance(await client.check(CODE, started + 1.5), SourceAnswer)
    assert time.monotonic() - started < 0.25  # no wait for the fetch now under way
    assert cdn.host.count("codes/check") == 1
    cdn.list_service.wait_for_requests(1, "cdn/info")
    for _ in range(100):
        if client.status()["hosts_from"] == "fetched":
            break
        await asyncio.sleep(0.02)
    assert client.status()["hosts_from"] == "fetched"
    assert client.status()["list_age_s"] < 60
    await client.aclose()
    assert json.loads(file.read_text())["fetched_at"] > time.time() - 60  # saved anew


async def test_a_too_old_another_cdns_or_broken_file_is_not_used(
    pool: EmulatorPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cdn = pool.crpt_cdn()
    file = tmp_path / "cdn-hosts.json"
    writer = client_for(cdn, hosts_file=file, now=lambda: time.time() - 8 * 24 * 3600)
    await listed(writer)
    await writer.aclose()
    assert client_for(cdn, hosts_file=file).status()["hosts_from"] == "none"  # a week+ old

    other = pool.crpt_cdn()
    writer = client_for(other, hosts_file=file)
    await listed(writer)
    await writer.aclose()
    assert client_for(cdn, hosts_file=file).status()["hosts_from"] == "none"  # another base

    for broken in (
        b"\x00\xff not json",
        b"[]",
        json.dumps({"format": 1, "base_url": cdn.url, "fetched_at": time.time(), "hosts": []}),
        json.dumps(
            {
                "format": 1,
                "base_url": cdn.url,
                "fetched_at": time.time(),
                "hosts": [{"host": "file:///etc/passwd"}],
            }
        ),
        json.dumps({"format": 99, "base_url": cdn.url, "fetched_at": 0, "hosts": []}),
        b"{" * 100_000,
    ):
        file.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
        caplog.clear()
        client = client_for(cdn, hosts_file=file)
        assert client.status()["hosts_from"] == "none"
        assert any("ignored" in r.getMessage() for r in caplog.records), broken[:20]
        answer = await client.check(CODE, budget(1500))  # and it works: fetch, then check
        assert isinstance(answer, SourceAnswer)
        await client.aclose()
        assert json.loads(file.read_text())["base_url"] == cdn.url  # repaired by the fetch


async def test_an_unwritable_state_directory_costs_no_check(
    pool: EmulatorPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cdn = pool.crpt_cdn()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    client = client_for(cdn, hosts_file=blocker / "cdn-hosts.json")
    assert isinstance(await client.check(CODE, budget(1500)), SourceAnswer)
    await client.aclose()
    assert any("not saved" in r.getMessage() for r in caplog.records)


async def test_json_nested_too_deep_is_a_bad_answer_not_a_crash(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn()
    client = client_for(cdn)
    assert await client.refresh_hosts(budget(1000))
    cdn.set_fault("codes/check", malformed="[" * 100_000)
    failure = await client.check(CODE, budget(1500))
    cdn.set_fault("cdn/info", malformed="{" * 100_000)
    assert not await client.refresh_hosts(budget(1000))
    await client.aclose()
    assert isinstance(failure, SourceFailure) and failure.kind == "bad-answer", failure
