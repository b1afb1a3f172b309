"""The event hub behind ``GET /v1/events``: fan-out, filters, bounded queues, threads, and the
event log that publishes what it journals (never a crypto tail)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conftest import RecordingEventLog
from markd.checks.verdict import Verdict
from markd.events import (
    Event,
    EventHub,
    EventPublisher,
    StreamClosed,
    Subscription,
    verdict_json,
)
from markd.service.listeners import (
    CheckedScan,
    EventStreamListener,
    JournalListener,
    Notifier,
)


async def test_api_events_reach_every_subscriber_that_wants_their_kind() -> None:
    hub = EventHub()
    everything = hub.subscribe()
    verdicts = hub.subscribe(["verdict"])
    scanners = hub.subscribe(["scanner"])  # a family: scanner-present, scanner-absent

    hub.publish("verdict", {"decision": "allow"})
    hub.publish("scanner-absent", {"scanner": "front"})
    hub.publish("scanner", {"not": "a family member"})
    hub.publish("scanners-x", {"not": "a family member either"})

    assert [e.kind for e in [await everything.next(0.1) for _ in range(4)]] == [
        "verdict",
        "scanner-absent",
        "scanner",
        "scanners-x",
    ]
    assert (await verdicts.next(0.1)).data == {"decision": "allow"}
    assert await verdicts.next(0.05) is None  # nothing else: a timeout, not an error
    first = await scanners.next(0.1)
    second = await scanners.next(0.1)
    assert (first.kind, second.kind) == ("scanner-absent", "scanner")
    assert await scanners.next(0.05) is None


async def test_api_events_are_numbered_and_timed_in_utc() -> None:
    hub = EventHub(clock=lambda: 1740819302.1149, run="0a1b2c3d")
    first = hub.publish("scan", {"scanner": "front"})
    second = hub.publish("scan", {"scanner": "front"})

    assert (first.seq, second.seq) == (1, 2)
    assert (first.id, second.id) == ("0a1b2c3d-1", "0a1b2c3d-2")
    assert second.to_json() == {
        "id": "0a1b2c3d-2",
        "seq": 2,
        "kind": "scan",
        "time": "2025-03-01T08:55:02.114Z",
        "data": {"scanner": "front"},
    }


async def test_api_a_subscriber_that_falls_behind_is_dropped_and_told() -> None:
    hub = EventHub()
    dropped: list[Subscription] = []
    slow = hub.subscribe(limit=3, name="slow-client", on_drop=dropped.append)
    fast = hub.subscribe(limit=100)

    for number in range(5):  # no await in between: the slow reader never gets a turn
        hub.publish("scan", {"n": number})

    assert slow.closed == "queue-full" and hub.dropped == 1 and hub.subscribers == 1
    assert dropped == []  # not called inside publish(): it logs, and logging publishes
    await asyncio.sleep(0)
    assert dropped == [slow]
    with pytest.raises(StreamClosed, match="queue-full"):
        await slow.next(0.1)  # cut off, not drained
    assert [(await fast.next(0.1)).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_api_publish_from_another_thread_is_delivered_on_the_loop() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    delivered_on: list[int] = []
    original = hub._deliver

    def recording_deliver(event: Event) -> None:
        delivered_on.append(threading.get_ident())
        original(event)

    hub._deliver = recording_deliver  # type: ignore[method-assign]
    worker = threading.Thread(target=hub.publish, args=("source-notice", {"message": "x"}))
    worker.start()
    worker.join()

    event = await subscription.next(1.0)
    assert event is not None and event.kind == "source-notice"
    assert delivered_on == [threading.get_ident()]


async def test_api_finish_hands_out_what_is_queued_then_ends() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    hub.publish("service-stopping", {"message": "markd stopping"})
    subscription.finish()
    hub.publish("scan", {"late": True})  # after finish: not taken

    assert (await subscription.next(0.1)).kind == "service-stopping"
    with pytest.raises(StreamClosed):
        await subscription.next(0.1)


async def test_api_finish_wakes_a_waiting_reader() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    reader = asyncio.create_task(subscription.next(5.0))
    await asyncio.sleep(0.01)
    subscription.finish()

    with pytest.raises(StreamClosed):
        await asyncio.wait_for(reader, 1.0)


async def test_api_publishing_event_log_journals_and_publishes_without_secrets() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    inner = RecordingEventLog()
    inner.level = 6  # info: debug records are neither journaled nor published
    inner.add_observer(EventPublisher(hub, inner))
    log = inner  # the same log: the hub observes it, nothing wraps it

    log.event(
        "scanner-absent",
        "scanner front: gone",
        priority="warning",
        scanner="front",
        code="0104680029460908215jcmHzLmkdPML\x1d938p9E",
        crypto="938p9E",
    )
    log.event("check-exchange", "cdn POST … → 200", request="{redacted}")
    log.event("source-notice", "chatty", priority="debug", logger="markd.x")

    assert inner.kinds() == ["scanner-absent", "check-exchange", "source-notice"]
    event = await subscription.next(0.1)
    assert event.kind == "scanner-absent"
    assert event.data == {
        "scanner": "front",
        "message": "scanner front: gone",
        "priority": "warning",
    }
    assert await subscription.next(0.05) is None  # check-exchange and debug stay out
    assert log.target == inner.target  # everything else is the wrapped log's


def reraise(listener: str, exc: BaseException) -> None:
    raise exc


async def test_api_a_verdict_is_published_whole_and_journaled_once() -> None:
    hub = EventHub()
    subscription = hub.subscribe(["verdict"])
    inner = RecordingEventLog()
    publisher = EventPublisher(hub, inner)
    inner.add_observer(publisher)
    listeners = Notifier([JournalListener(inner), EventStreamListener(publisher)], reraise)
    verdict = Verdict(
        decision="deny",
        reason="blocked-locally",
        message_ru="Продажа запрещена",
        source="store",
        scanner="front",
        ki="0104680029460908215jcmHzLmkdPML",
        details={"rule": "store-blocked"},
    )

    listeners.notify(CheckedScan(verdict))

    assert inner.kinds() == ["verdict"]
    event = await subscription.next(0.1)
    assert event.data == verdict_json(verdict)
    assert event.data["ki"] == "0104680029460908215jcmHzLmkdPML"
    assert event.data["details"] == {"rule": "store-blocked"}
