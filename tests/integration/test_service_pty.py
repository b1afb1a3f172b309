"""The walking skeleton end to end: a pty stands in for a serial scanner, the real service
(store, parser, chain, event log) runs in an asyncio loop, verdicts are collected."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from conftest import (
    DAIRY,
    DAIRY_KI,
    SHOES,
    SHOES_KI,
    TOBACCO_PACK,
    TOBACCO_PACK_KI,
    WATER,
    WATER_KI,
    PtyPair,
    RecordingEventLog,
    make_config,
    open_pty,
    wait_until,
)
from markd.checks.verdict import Verdict
from markd.scanners.serial import SerialScanner
from markd.service import Service
from markd.store import Store


class Running:
    """A service running as a task, with its verdicts and events at hand."""

    def __init__(self, service: Service, event_log: RecordingEventLog, verdicts: list[Verdict]):
        self.service = service
        self.event_log = event_log
        self.verdicts = verdicts
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop))

    async def started(self) -> None:
        await wait_until(lambda: self.service.ready.is_set() or self.task.done(), what="ready")
        if self.task.done():
            self.task.result()

    async def verdict_count(self, count: int) -> None:
        await wait_until(lambda: len(self.verdicts) >= count, what=f"{count} verdicts")

    async def event(self, kind: str, count: int = 1) -> None:
        await wait_until(lambda: self.event_log.count(kind) >= count, what=f"{count}× {kind}")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


def start(config: object, event_log: RecordingEventLog) -> Running:
    verdicts: list[Verdict] = []
    service = Service(config, event_log=event_log, verdict_sink=verdicts.append)  # type: ignore[arg-type]
    return Running(service, event_log, verdicts)


@pytest.fixture
def fast_reopen(monkeypatch: pytest.MonkeyPatch) -> None:
    # Production waits 1 s between attempts; the behaviour is the same at 0.1 s.
    monkeypatch.setattr(SerialScanner, "reopen_interval", 0.1)


async def test_codes_written_to_a_pty_become_verdicts(
    pty_pair: PtyPair, store_path: str, event_log: RecordingEventLog
) -> None:
    with Store.open(store_path) as store:
        store.block(TOBACCO_PACK_KI, "recalled batch")
    run = start(make_config(store_path, {"front": f"serial://{pty_pair.path}"}), event_log)
    await run.started()
    await run.event("scanner-present")

    pty_pair.write(WATER.encode() + b"\r" + DAIRY.encode() + b"\r")  # two codes, one write
    await run.verdict_count(2)
    shoes = SHOES.encode()
    pty_pair.write(shoes[:17])  # a code split across two reads
    await asyncio.sleep(0.05)
    pty_pair.write(shoes[17:] + b"\r\n")  # CR LF scanner on a CR port
    pty_pair.write(b"\x00\xffgarbage!\r")
    pty_pair.write(TOBACCO_PACK.encode() + b"\r")  # blocked in the store
    await run.verdict_count(5)
    await run.finish()

    summary = [(v.decision, v.reason, v.ki, v.scanner) for v in run.verdicts]
    assert summary == [
        ("allow", "store-only-not-blocked", WATER_KI, "front"),
        ("allow", "store-only-not-blocked", DAIRY_KI, "front"),
        ("allow", "store-only-not-blocked", SHOES_KI, "front"),
        ("deny", "invalid-characters", None, "front"),
        ("deny", "blocked-locally", TOBACCO_PACK_KI, "front"),
    ]
    assert run.verdicts[4].source == "store" and run.verdicts[3].source == "parser"
    assert all(v.latency_ms >= 0 for v in run.verdicts)
    assert event_log.count("verdict") == 5
    assert event_log.kinds()[-1] == "service-stopping"
    # One line per verdict, and the crypto tails never reach the log.
    assert event_log.text.count("verdict: ") == 5
    for tail in ("938p9E", "93dGVz", "91FFD0", "7Cev"):
        assert tail not in event_log.text


async def test_device_missing_at_start_and_vanishing_does_not_stop_the_service(
    tmp_path: Path, store_path: str, event_log: RecordingEventLog, fast_reopen: None
) -> None:
    """The udev symlink is missing at boot, appears, the pty vanishes (unplug), and a new
    one appears under the same name (replug): the service keeps going throughout."""
    link = tmp_path / "scanner0"
    run = start(make_config(store_path, {"front": f"serial://{link}"}), event_log)
    await run.started()
    await run.event("scanner-absent")

    first = open_pty()
    try:
        link.symlink_to(first.path)
        await run.event("scanner-present")
        first.write(WATER.encode() + b"\r")
        await run.verdict_count(1)

        first.close_master()  # unplug
        await run.event("scanner-absent", 2)
        assert not run.task.done()
        # Absent means sleeping between attempts, not spinning on a dead fd.
        cpu_before = time.process_time()
        await asyncio.sleep(0.5)
        assert time.process_time() - cpu_before < 0.25
    finally:
        first.close_master()
        os.close(first.slave)

    second = open_pty()
    try:
        link.unlink()
        link.symlink_to(second.path)  # replug
        await run.event("scanner-present", 2)
        second.write(DAIRY.encode() + b"\r")
        await run.verdict_count(2)
        await run.finish()
    finally:
        second.close_master()
        os.close(second.slave)

    assert [v.ki for v in run.verdicts] == [WATER_KI, DAIRY_KI]
    assert event_log.count("scanner-absent") == 2  # once per absence, not once per retry


async def test_flood_without_terminator_is_journalled_and_scanning_continues(
    pty_pair: PtyPair, store_path: str, event_log: RecordingEventLog
) -> None:
    url = f"serial://{pty_pair.path}?max_length=64"
    run = start(make_config(store_path, {"front": url}), event_log)
    await run.started()
    await run.event("scanner-present")
    pty_pair.write(b"Z" * 500)
    # Journaled while the flood is still under way: no terminator has been sent yet (a
    # scanner with the wrong suffix never sends one).
    await run.event("scan-overflow")
    (early,) = [e for e in event_log.events if e[0] == "scan-overflow"]
    assert early[2]["ended"] == "no" and 64 < early[2]["dropped"] <= 500
    assert "so far" in early[1]
    pty_pair.write(b"\r" + WATER.encode() + b"\r")
    await run.verdict_count(1)
    await run.finish()
    assert [v.ki for v in run.verdicts] == [WATER_KI]
    # The terminator ended the flood: one more record, with every byte it dropped.
    overflows = [e for e in event_log.events if e[0] == "scan-overflow"]
    assert [e[2]["ended"] for e in overflows] == ["no", "yes"]
    final = overflows[1]
    assert final[2]["scanner"] == "front" and final[2]["dropped"] == 500
    assert final[2]["reason"] == "too-long" and "without a terminator" in final[1]


async def test_store_that_cannot_open_fails_start_up_cleanly(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    from markd.errors import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("")
    run = start(make_config(str(blocker / "store"), {"v": "virtual://v"}), event_log)
    with pytest.raises(StoreError):
        await asyncio.wait_for(run.task, 5)
    assert not run.service.ready.is_set()
    assert "service-stopping" not in event_log.kinds()
