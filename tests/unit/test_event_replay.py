"""Replay from the event hub: ids that carry the run, the kept history and its bounds, the
events a reconnecting subscriber missed, and the gap that stands for those it cannot have."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conftest import RecordingEventLog
from markd.events import (
    Event,
    EventHistory,
    EventHub,
    EventPublisher,
    Gap,
    Subscription,
    parse_event_id,
)

RUN = "0a1b2c3d"


def event(seq: int, padding: str = "") -> Event:
    return Event(seq=seq, kind="scan", time=0.0, data={"pad": padding}, run=RUN)


async def drain(subscription: Subscription) -> list[Event]:
    """Every event the subscription holds now (backlog and live)."""
    events = []
    while (item := await subscription.next(0.01)) is not None:
        events.append(item)
    return events


def test_replay_event_ids_parse_strictly() -> None:
    assert parse_event_id("0a1b2c3d-57") == ("0a1b2c3d", 57)
    assert parse_event_id("0a1b2c3d-0") == ("0a1b2c3d", 0)
    for garbage in [
        "",
        "57",
        "0a1b2c3d",
        "0a1b2c3d-",
        "0A1B2C3D-5",  # run tokens are lower case
        "0a1b2c3-5",
        "0a1b2c3d-5 ",
        "0a1b2c3d--5",
        "0a1b2c3d-+5",
        "0a1b2c3d-٥",  # a digit, but not an ASCII one
        "0a1b2c3d-" + "9" * 19,
        "0a1b2c3d-5\n",
        "x" * 10_000,
    ]:
        assert parse_event_id(garbage) is None, garbage


def test_replay_history_keeps_the_latest_events_by_count() -> None:
    history = EventHistory(max_events=3, max_bytes=1 << 20)
    for seq in range(1, 6):
        history.add(event(seq))

    assert len(history) == 3 and history.dropped_through == 2
    assert [e.seq for e in history.after(2)] == [3, 4, 5]
    assert [e.seq for e in history.after(4)] == [5]
    assert history.after(5) == []
    assert history.after(1) is None  # event 2 is gone
    assert history.bytes == sum(event(seq).size for seq in (3, 4, 5))


def test_replay_history_keeps_no_more_bytes_than_its_bound() -> None:
    one = event(1, "x" * 100).size
    bound = 3 * one + 5  # three events fit (event 10's number is one digit longer), four do not
    history = EventHistory(max_events=1000, max_bytes=bound)
    for seq in range(1, 11):
        history.add(event(seq, "x" * 100))
        assert history.bytes <= bound

    assert [e.seq for e in history.after(7)] == [8, 9, 10]
    assert history.after(6) is None


def test_replay_history_does_not_keep_an_event_bigger_than_its_bound_and_keeps_the_others() -> None:
    """Ten events kept, then one too large to keep: the ten stay (dropping them would not make
    room for it); a client that missed it gets a gap, one that read it misses nothing."""
    history = EventHistory(max_events=1000, max_bytes=2000)
    for seq in range(1, 11):
        history.add(event(seq))
    kept = history.bytes
    history.add(event(11, "я" * 1000))  # 2000 bytes in UTF-8: alone above the bound

    assert len(history) == 10 and history.bytes == kept and history.oldest.seq == 1  # type: ignore[union-attr]
    assert history.dropped_through == 0
    assert history.after(10) is None  # event 11 was missed and cannot be given
    assert history.gap_reason(10) == "too-large" and history.gap_reason(0) == "too-large"
    assert history.after(11) == []
    history.add(event(12))
    assert [e.seq for e in history.after(11)] == [12]
    assert history.after(5) is None


async def test_replay_a_reconnect_that_missed_an_event_too_large_to_keep_gets_a_gap() -> None:
    hub = EventHub(run=RUN, replay_events=100, replay_bytes=4000)
    for number in range(10):
        hub.publish("scan", {"n": number})
    hub.publish("scan", {"pad": "x" * 5000})
    hub.publish("scan", {"n": 11})

    [gap] = await drain(hub.subscribe(since=f"{RUN}-10"))
    after = await drain(hub.subscribe(since=f"{RUN}-11"))

    assert gap.kind == "gap" and gap.data["reason"] == "too-large"
    assert gap.data["oldest"] == f"{RUN}-1"  # the ten kept are still there
    assert [e.data for e in after] == [{"n": 11}]


def test_replay_history_of_size_zero_keeps_nothing() -> None:
    history = EventHistory(max_events=0, max_bytes=1 << 20)
    history.add(event(1))

    assert len(history) == 0 and history.after(0) is None and history.after(1) == []


def test_replay_a_hub_keeps_events_with_nobody_subscribed() -> None:
    hub = EventHub(run=RUN, replay_events=2)
    for number in range(3):
        hub.publish("scan", {"n": number})

    assert hub.latest_id == f"{RUN}-3"
    assert [e.data["n"] for e in hub.history.after(1)] == [1, 2]


def test_replay_a_run_token_is_random_per_hub_and_well_formed() -> None:
    runs = {EventHub().run for _ in range(20)}

    assert len(runs) == 20
    assert all(parse_event_id(f"{run}-1") is not None for run in runs)
    with pytest.raises(ValueError):
        EventHub(run="57")


async def test_replay_a_reconnecting_subscriber_gets_exactly_what_it_missed() -> None:
    hub = EventHub(run=RUN)
    first = hub.subscribe()
    hub.publish("scan", {"n": 1})
    last_read = (await first.next(0.1)).id
    first.close()
    hub.publish("verdict", {"n": 2})  # while nobody is connected
    hub.publish("scan", {"n": 3})

    again = hub.subscribe(since=last_read)
    hub.publish("scan", {"n": 4})  # live

    assert [(e.kind, e.data["n"]) for e in await drain(again)] == [
        ("verdict", 2),
        ("scan", 3),
        ("scan", 4),
    ]


async def test_replay_applies_the_subscribers_kinds() -> None:
    hub = EventHub(run=RUN)
    for kind in ["scan", "verdict", "scanner-absent", "scan", "verdict"]:
        hub.publish(kind, {})

    verdicts = hub.subscribe(["verdict", "scanner"], since=f"{RUN}-1")

    assert [(e.seq, e.kind) for e in await drain(verdicts)] == [
        (2, "verdict"),
        (3, "scanner-absent"),
        (5, "verdict"),
    ]


async def test_replay_the_backlog_does_not_count_against_the_queue_limit() -> None:
    hub = EventHub(run=RUN, queue_limit=4)
    for number in range(10):
        hub.publish("scan", {"n": number})

    subscription = hub.subscribe(since=f"{RUN}-0")
    for number in range(10, 13):
        hub.publish("scan", {"n": number})

    assert subscription.closed is None and hub.dropped == 0
    assert [e.data["n"] for e in await drain(subscription)] == list(range(13))


async def test_replay_an_event_published_from_a_thread_around_a_subscribe_comes_once() -> None:
    hub = EventHub(run=RUN)
    watcher = hub.subscribe()  # the hub knows its loop
    hub.publish("scan", {"n": 0})
    since = hub.latest_id

    # Published on another thread just before a client subscribes, delivered on the loop
    # just after: it must reach the client once, live, and not a second time as replayed.
    worker = threading.Thread(target=hub.publish, args=("scan", {"n": 1}))
    worker.start()
    worker.join()
    late = hub.subscribe(since=since)
    await asyncio.sleep(0.01)
    hub.publish("scan", {"n": 2})

    assert [e.data["n"] for e in await drain(late)] == [1, 2]
    assert [(e.seq, e.data["n"]) for e in await drain(watcher)] == [(1, 0), (2, 1), (3, 2)]


async def test_replay_events_are_numbered_in_the_order_they_are_delivered() -> None:
    hub = EventHub(run=RUN)
    subscription = hub.subscribe()
    worker = threading.Thread(target=hub.publish, args=("scan", {"from": "thread"}))
    worker.start()
    worker.join()
    hub.publish("scan", {"from": "loop"})  # numbered first: the thread's event waits its turn
    await asyncio.sleep(0.01)

    delivered = await drain(subscription)
    assert [e.data["from"] for e in delivered] == ["loop", "thread"]
    assert [e.seq for e in delivered] == [1, 2]


async def test_replay_an_id_of_another_run_gets_a_gap_then_live_events() -> None:
    earlier = EventHub()
    old_id = earlier.publish("scan", {}).id
    hub = EventHub(run=RUN, clock=lambda: 1740819302.0)
    hub.publish("scan", {"n": 1})

    subscription = hub.subscribe(since=old_id)
    hub.publish("scan", {"n": 2})

    gap, live = await drain(subscription)
    assert isinstance(gap, Gap)
    assert gap.to_json() == {
        "id": f"{RUN}-1",  # where the stream goes on from
        "kind": "gap",
        "time": "2025-03-01T08:55:02.000Z",
        "data": {
            "reason": "restarted",
            "message": "markd restarted since that event; the events of the run before are "
            "not kept: read GET /v1/status for the present state",
            "oldest": f"{RUN}-1",
        },
    }
    assert live.data == {"n": 2}


async def test_replay_an_id_too_old_gets_a_gap_with_the_oldest_kept() -> None:
    hub = EventHub(run=RUN, replay_events=3)
    for number in range(6):
        hub.publish("verdict", {"n": number})

    subscription = hub.subscribe(["scan"], since=f"{RUN}-2")  # the gap passes any filter
    [gap] = await drain(subscription)

    assert gap.kind == "gap" and gap.id == f"{RUN}-6"
    assert gap.data["reason"] == "too-old" and gap.data["oldest"] == f"{RUN}-4"


async def test_replay_reconnecting_with_a_gaps_id_misses_nothing_after_it() -> None:
    hub = EventHub(run=RUN)
    hub.publish("scan", {"n": 1})
    [gap] = await drain(hub.subscribe(since="not-an-id"))
    hub.publish("scan", {"n": 2})

    again = hub.subscribe(since=gap.id)

    assert [e.data["n"] for e in await drain(again)] == [2]


@pytest.mark.parametrize(
    "since",
    [
        "57",  # a number: from a markd before run tokens
        f"{RUN}-99",  # a number this run has not reached
        f"{RUN}-",
        "'; DROP TABLE events; --",
        "\x00\x01",
        "я" * 5000,
    ],
)
async def test_replay_an_unknown_id_gets_a_gap(since: str) -> None:
    hub = EventHub(run=RUN)
    hub.publish("scan", {})

    [gap] = await drain(hub.subscribe(since=since))

    assert gap.kind == "gap" and gap.data["reason"] == "unknown-id"
    assert "seq" not in gap.to_json()
    assert set(gap.data) == {"reason", "message", "oldest"}  # what the client sent is not echoed


async def test_replay_without_history_gives_nothing_or_a_gap() -> None:
    hub = EventHub(run=RUN, replay_events=0)
    hub.publish("scan", {})
    hub.publish("scan", {})

    assert await drain(hub.subscribe(since=f"{RUN}-2")) == []  # missed nothing
    [gap] = await drain(hub.subscribe(since=f"{RUN}-1"))
    assert gap.data["reason"] == "too-old" and gap.data["oldest"] is None


async def test_replay_before_the_first_event_of_a_run_gives_all_that_is_kept() -> None:
    hub = EventHub(run=RUN)
    threading.Thread(target=hub.publish, args=("service-started", {})).start()
    await asyncio.sleep(0.05)  # no loop known yet: numbered and kept on the thread

    subscription = hub.subscribe(since=f"{RUN}-0")

    assert [e.kind for e in await drain(subscription)] == ["service-started"]


async def test_replay_the_publisher_keeps_events_while_nobody_is_subscribed() -> None:
    log = RecordingEventLog()
    log.level = 6
    kept, unkept = EventHub(run=RUN), EventHub(run=RUN, replay_events=0)
    log.add_observer(EventPublisher(kept, log))
    log.add_observer(EventPublisher(unkept, log))

    log.event("scanner-absent", "scanner front: gone", priority="warning", scanner="front")

    assert [e.kind for e in kept.history.after(0)] == ["scanner-absent"]
    assert unkept.latest_id == f"{RUN}-0"  # no history, nobody listening: no work at all
