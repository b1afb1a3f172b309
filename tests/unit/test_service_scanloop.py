"""The scan loop (markd.service.scanloop) at stop: every queued scan still gets its one
verdict, and work queued for between two scans (a reload) is answered, never run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from conftest import RecordingEventLog
from markd.checks.verdict import CheckedCode, Verdict
from markd.events import EventHub
from markd.scanners import Scan, ScannerState
from markd.service.listeners import Notifier, SinkListener
from markd.service.scanloop import QueuedCheck, ScanLoop


class Parts:
    chain = None
    codes_options = None
    sale_desk = None


class Health:
    def __init__(self) -> None:
        self.watched = 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.watched += 1
        yield

    def refresh_status(self) -> None:
        pass


class Job:
    def __init__(self) -> None:
        self.ran = self.abandoned = False

    async def run(self) -> None:
        self.ran = True

    def abandon(self) -> None:
        self.abandoned = True


async def test_queued_scans_get_rescan_and_queued_jobs_are_abandoned_at_stop() -> None:
    verdicts: list[Verdict] = []
    failures: list[str] = []
    notifier = Notifier([SinkListener(verdicts.append)], lambda what, exc: failures.append(what))
    health = Health()
    parts, log = Parts(), RecordingEventLog()
    loop = ScanLoop(parts, notifier, log, EventHub(), health)  # type: ignore[arg-type]
    queue: asyncio.Queue = asyncio.Queue()
    job = Job()
    queue.put_nowait(Scan("front", b"0104680029460908215jcmHzLmkdPML", time.monotonic()))
    queue.put_nowait(ScannerState("front", True, "plugged in"))
    queue.put_nowait(job)
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(loop.run(queue, stop), 1.0)

    assert [(v.decision, v.reason, v.scanner) for v in verdicts] == [
        ("rescan", "service-stopping", "front")
    ]
    assert job.abandoned and not job.ran
    assert health.watched == 0 and queue.empty() and failures == []


async def test_an_api_check_still_queued_at_stop_is_answered_rescan() -> None:
    """``POST /v1/check`` waits in the same queue as the scans: at the stop its client gets
    ``rescan`` (the service is stopping), not a check run on a chain that is closing."""
    notifier = Notifier([], lambda what, exc: None)
    loop = ScanLoop(Parts(), notifier, RecordingEventLog(), EventHub(), Health())  # type: ignore[arg-type]
    queue: asyncio.Queue = asyncio.Queue()
    future: asyncio.Future[CheckedCode] = asyncio.get_running_loop().create_future()
    scan = Scan("api", b"0104680029460908215jcmHzLmkdPML", time.monotonic())
    queue.put_nowait(QueuedCheck(loop, scan, None, future))
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(loop.run(queue, stop), 1.0)

    verdict = (await asyncio.wait_for(future, 1.0)).verdict
    assert (verdict.decision, verdict.reason, verdict.scanner) == (
        "rescan",
        "service-stopping",
        "api",
    )
    assert loop.stopped
