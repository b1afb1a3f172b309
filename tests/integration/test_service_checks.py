"""The daemon in mode direct: scans checked by the real clients, every exchange on record."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from conftest import WATER, RecordingEventLog, make_config, wait_until
from markd.checks.verdict import Verdict
from markd.config import LocalModuleConfig, OnlineCheckConfig
from markd.emulators.testing import crpt_cdn, local_module
from markd.scanners import get_virtual
from markd.service import Service

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"


async def test_scans_are_checked_online_and_every_exchange_is_journaled_redacted(
    store_path: str, event_log: RecordingEventLog, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "pw").write_text("admin\n")
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn, local_module() as lm:
        base = make_config(store_path, {"v": "virtual://checks"})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            online=OnlineCheckConfig(url=cdn.url, token_file=str(tmp_path / "token")),
            local_module=LocalModuleConfig(url=lm.url, password_file=str(tmp_path / "pw")),
        )
        verdicts: list[Verdict] = []
        service = Service(
            dataclasses.replace(base, check=check),
            event_log=event_log,
            verdict_sink=verdicts.append,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 5)
        get_virtual("checks").scan(WATER)
        await wait_until(lambda: len(verdicts) == 1, what="the verdict")
        # The Local Module's status is polled in the background from the start.
        await wait_until(lambda: lm.count("status") >= 1, what="a Local Module status poll")
        stop.set()
        await task
    verdict = verdicts[0]
    assert (verdict.decision, verdict.source) == ("allow", "cdn")
    exchanges = [f for k, _, f in event_log.events if k == "check-exchange"]
    checks = [f for f in exchanges if f["url"].endswith("/codes/check")]
    assert checks and checks[0]["http_status"] == 200
    assert checks[0]["scan"] == f"v:{verdict.ki}"
    text = event_log.text + repr(exchanges)
    assert TOKEN not in text and "8p9E" not in text  # neither the key nor the crypto tail
    assert "<crypto>" in checks[0]["request"]


def _direct_service(
    cdn, lm, store_path: str, tmp_path: Path, event_log: RecordingEventLog, verdicts: list
) -> Service:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "pw").write_text("admin\n")
    base = make_config(store_path, {"v": "virtual://first"})
    check = dataclasses.replace(
        base.check,
        mode="direct",
        online=OnlineCheckConfig(url=cdn.url, token_file=str(tmp_path / "token")),
        local_module=LocalModuleConfig(url=lm.url, password_file=str(tmp_path / "pw")),
    )
    return Service(
        dataclasses.replace(base, check=check), event_log=event_log, verdict_sink=verdicts.append
    )


async def test_the_first_scan_after_a_start_is_checked_online_and_a_restart_keeps_the_list(
    store_path: str, event_log: RecordingEventLog, tmp_path: Path
) -> None:
    """domain.md §3.2: the list service answers no check. The first scan after a start goes to
    a listed host (a sold unit is refused, which the Local Module alone would allow); the list
    is kept beside the store, and after a restart the first scan needs no fetch at all, even
    with the list service down."""
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn, local_module() as lm:
        cdn.set_code(WATER.split("\x1d")[0], sold=True)
        cdn.set_fault("cdn/info", latency_ms=150)  # the start's fetch is still under way
        verdicts: list[Verdict] = []
        service = _direct_service(cdn, lm, store_path, tmp_path, event_log, verdicts)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 5)
        get_virtual("first").scan(WATER)  # at once: READY did not wait for the list
        await wait_until(lambda: len(verdicts) == 1, what="the first verdict")
        assert (verdicts[0].decision, verdicts[0].reason, verdicts[0].source) == (
            "deny",
            "sold",
            "cdn",
        )
        assert cdn.list_service.count("cdn/info") == 1  # the start's fetch, shared
        assert cdn.list_service.count("codes/check") == 0
        assert lm.requests_for("cis/outCheck") == []
        # The start also measured the hosts in the background.
        await wait_until(
            lambda: cdn.host.count("cdn/health/check") >= 1, what="a health check at start"
        )
        hosts_file = Path(store_path).parent / "cdn-hosts.json"
        await wait_until(hosts_file.exists, what="the kept host list")
        stop.set()
        await task

        # A restart with the list service down: the kept list answers at once.
        cdn.clear_requests()
        cdn.set_fault("cdn/info", status=503)
        verdicts.clear()
        service = _direct_service(cdn, lm, store_path, tmp_path, event_log, verdicts)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 5)
        status = service.chain.online.status()
        get_virtual("first").scan(WATER)
        await wait_until(lambda: len(verdicts) == 1, what="the verdict after the restart")
        stop.set()
        await task
    assert (verdicts[0].reason, verdicts[0].source) == ("sold", "cdn")
    assert cdn.list_service.count("cdn/info") == 0  # young list: no fetch at start
    assert status["hosts_from"] == "persisted" and status["hosts"][0]["url"] == cdn.host.url


async def test_a_scan_the_local_module_answers_slowly_is_traced_to_the_local_module(
    store_path: str, event_log: RecordingEventLog, tmp_path: Path
) -> None:
    """[check] slow_scan_ms: the real daemon, the Local Module emulator 400 ms late, the
    record names the Local Module (400 ms is far above the threshold and every other stage)."""
    (tmp_path / "pw").write_text("admin\n")
    with local_module() as lm:
        lm.set_fault("cis/outCheck", latency_ms=400)
        base = make_config(store_path, {"v": "virtual://slow"})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            slow_scan_ms=150,
            local_module=LocalModuleConfig(url=lm.url, password_file=str(tmp_path / "pw")),
        )
        verdicts: list[Verdict] = []
        service = Service(
            dataclasses.replace(base, check=check),
            event_log=event_log,
            verdict_sink=verdicts.append,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 5)
        get_virtual("slow").scan(WATER)
        await wait_until(lambda: event_log.count("slow-scan") == 1, what="the slow-scan record")
        stop.set()
        await task
    [record] = [f for k, _, f in event_log.events if k == "slow-scan"]
    assert record["slowest"] == "lm" and float(record["slowest_ms"]) >= 400
    assert record["scan"] == f"v:{verdicts[0].ki}"
    assert float(record["total_ms"]) >= float(record["slowest_ms"])
