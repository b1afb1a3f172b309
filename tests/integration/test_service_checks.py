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
