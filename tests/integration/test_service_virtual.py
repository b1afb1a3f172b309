"""Service life cycle with a virtual scanner: signals, failing sinks, internal errors."""

from __future__ import annotations

import asyncio
import os
import signal

from conftest import DAIRY, WATER, WATER_KI, RecordingEventLog, make_config, wait_until
from markd.checks.verdict import Verdict
from markd.scanners import get_virtual
from markd.service import Service


async def test_sigterm_only_sets_the_stop_event_and_the_service_stops_cleanly(
    store_path: str, event_log: RecordingEventLog
) -> None:
    service = Service(make_config(store_path, {"v": "virtual://sig"}), event_log=event_log)
    task = asyncio.create_task(service.run(handle_signals=True))
    await asyncio.wait_for(service.ready.wait(), 5)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 5)
    assert event_log.kinds()[-1] == "service-stopping"
    assert service.store is not None and "closed" in repr(service.store)
    # The handlers are removed again: SIGTERM has its default meaning after run() returns.
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


async def test_a_failing_sink_or_chain_never_stops_scanning(
    store_path: str, event_log: RecordingEventLog
) -> None:
    verdicts: list[Verdict] = []

    def fragile_sink(verdict: Verdict) -> None:
        verdicts.append(verdict)
        if len(verdicts) == 1:
            raise RuntimeError("UI went away")

    service = Service(
        make_config(store_path, {"v": "virtual://fragile"}),
        event_log=event_log,
        verdict_sink=fragile_sink,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    scanner = get_virtual("fragile")
    scanner.scan(WATER)
    await wait_until(lambda: len(verdicts) == 1)

    def broken_decide(*args: object, **kwargs: object) -> Verdict:
        raise KeyError("bug")

    assert service._chain is not None
    service._chain.decide = broken_decide  # type: ignore[method-assign]
    scanner.scan(DAIRY)
    await wait_until(lambda: len(verdicts) == 2)
    stop.set()
    await task

    assert verdicts[0].ki == WATER_KI and verdicts[0].decision == "allow"
    assert (verdicts[1].decision, verdicts[1].reason) == ("deny", "internal-error")
    assert event_log.count("service-error") == 2
    assert "dGVz" not in event_log.text  # not even the failing scan's tail
