"""A kiosk screen that reconnects to ``GET /v1/events`` gets what it missed (``Last-Event-ID``,
``?since=``), or a ``gap`` event: against a running service, over its control socket."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api_helpers import Conversation, EventStream, api_config, running
from conftest import WATER, WATER_KI, RecordingEventLog, wait_until
from markd.scanners import get_virtual


async def open_stream(
    socket_path: str, target: str = "/v1/events", headers: dict[str, str] | None = None
) -> EventStream:
    stream = await EventStream.open(await Conversation.unix(socket_path), target, headers)
    assert stream.head.status == 200
    return stream


async def blocks_until(stream: EventStream, message: str) -> list[dict[str, str]]:
    """The event blocks (``id``, ``event``, ``data`` as sent) up to and with the one whose data
    holds ``message``."""
    blocks = []
    while True:
        block = await stream.block()
        assert block is not None, "the stream ended"
        if "data" not in block:
            continue  # retry:, heartbeats
        blocks.append(block)
        if message in block["data"]:
            return blocks


def decoded(block: dict[str, str]) -> dict[str, Any]:
    return json.loads(block["data"])


def after(blocks: list[dict[str, str]], event_id: str) -> list[dict[str, str]]:
    ids = [block["id"] for block in blocks]
    return blocks[ids.index(event_id) + 1 :]


def mark(service: Any, message: str, kind: str = "source-notice") -> None:
    """Publish an event the test can wait for (on the service's loop, like any event)."""
    service.events.publish(kind, {"message": message})


async def test_replay_a_screen_that_reconnects_gets_exactly_what_it_missed(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-missed"})

    async with running(config, event_log) as service:
        # A second client that never disconnects sees every event, live.
        witness = await open_stream(config.api.socket)
        screen = await open_stream(config.api.socket)
        await wait_until(lambda: service.events.subscribers == 2)
        mark(service, "before")
        last_read = (await blocks_until(screen, "before"))[-1]["id"]
        screen.conversation.close()
        await wait_until(lambda: service.events.subscribers == 1)

        get_virtual("replay-missed").scan(WATER)  # while the screen is away
        get_virtual("replay-missed").scan("hello, world")
        await wait_until(lambda: service.verdict_counts.total() == 2)
        mark(service, "missed")
        again = await open_stream(config.api.socket, headers={"Last-Event-ID": last_read})
        await wait_until(lambda: service.events.subscribers == 2)
        mark(service, "live")

        replayed = await blocks_until(again, "live")
        seen_live = await blocks_until(witness, "live")
        again.conversation.close()
        witness.conversation.close()

    assert replayed == after(seen_live, last_read)  # same ids, kinds and data bytes
    kinds = [block["event"] for block in replayed]
    assert kinds.count("scan") == 2 and kinds.count("verdict") == 2 and "gap" not in kinds
    assert WATER_KI in "".join(block["data"] for block in replayed)
    assert replayed[-1]["data"].count('"live"') == 1  # the live event once, after the replay


async def test_replay_takes_since_and_the_kinds_filter(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-kinds"})

    async with running(config, event_log) as service:
        witness = await open_stream(config.api.socket)
        await wait_until(lambda: service.events.subscribers == 1)
        mark(service, "start")
        since = (await blocks_until(witness, "start"))[-1]["id"]
        get_virtual("replay-kinds").scan(WATER)
        get_virtual("replay-kinds").scan(WATER)
        await wait_until(lambda: service.verdict_counts.total() == 2)

        verdicts = await open_stream(
            config.api.socket, f"/v1/events?kinds=verdict,scanner&since={since}"
        )
        await wait_until(lambda: service.events.subscribers == 2)
        mark(service, "live verdict", kind="verdict")

        replayed = await blocks_until(verdicts, "live verdict")
        seen_live = await blocks_until(witness, "live verdict")  # all after `since`
        verdicts.conversation.close()
        witness.conversation.close()

    expected = [block for block in seen_live if block["event"] == "verdict"]
    assert replayed == expected and len(replayed) == 3


async def test_replay_last_event_id_wins_over_since(
    store_path: str, event_log: RecordingEventLog
) -> None:
    # A browser's EventSource reconnects to the URL of its first connection, since= and all,
    # and sends the id of the last event it read as Last-Event-ID: that one is the newer.
    config = api_config(store_path, {"front": "virtual://replay-header"})

    async with running(config, event_log) as service:
        first = service.events.publish("source-notice", {"message": "one"})
        second = service.events.publish("source-notice", {"message": "two"})
        mark(service, "three")
        stream = await open_stream(
            config.api.socket, f"/v1/events?since={first.id}", {"Last-Event-ID": second.id}
        )
        blocks = await blocks_until(stream, "three")
        stream.conversation.close()

    assert [decoded(block)["data"]["message"] for block in blocks] == ["three"]


async def test_replay_too_old_gets_a_gap_then_live_events(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-old"}, replay_events=3)

    async with running(config, event_log) as service:
        gone = service.events.publish("source-notice", {"message": "gone"})
        for number in range(5):
            mark(service, f"filler {number}")
        latest, oldest = service.events.latest_id, service.events.history.oldest
        stream = await open_stream(config.api.socket, headers={"Last-Event-ID": gone.id})
        await wait_until(lambda: service.events.subscribers == 1)
        mark(service, "live")
        blocks = await blocks_until(stream, "live")
        stream.conversation.close()

    gap, live = [decoded(block) for block in blocks]
    assert gap["kind"] == "gap" and gap["id"] == latest and "seq" not in gap
    assert gap["data"]["reason"] == "too-old" and gap["data"]["oldest"] == oldest.id
    assert live["kind"] == "source-notice" and live["data"]["message"] == "live"


async def test_replay_after_a_restart_gets_a_gap_not_the_new_runs_events(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-restart"})

    async with running(config, event_log) as before:
        stream = await open_stream(config.api.socket)
        await wait_until(lambda: before.events.subscribers == 1)
        for number in range(3):
            mark(before, f"before {number}")
        last_read = (await blocks_until(stream, "before 2"))[-1]["id"]
        stream.conversation.close()

    async with running(config, event_log) as after_restart:
        for number in range(5):  # the new run's numbers pass the old id's
            mark(after_restart, f"after {number}")
        stream = await open_stream(config.api.socket, headers={"Last-Event-ID": last_read})
        await wait_until(lambda: after_restart.events.subscribers == 1)
        mark(after_restart, "live")
        blocks = await blocks_until(stream, "live")
        stream.conversation.close()

    gap, live = [decoded(block) for block in blocks]
    assert after_restart.events.run != before.events.run
    assert gap["kind"] == "gap" and gap["data"]["reason"] == "restarted"
    assert gap["id"].startswith(after_restart.events.run + "-")
    assert live["data"]["message"] == "live"


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v1/events", {"Last-Event-ID": "57"}),
        ("/v1/events", {"Last-Event-ID": "not an id"}),
        ("/v1/events", {"Last-Event-ID": "ffffffff-1, ffffffff-2"}),
        ("/v1/events", {"Last-Event-ID": "x" * 8000}),
        ("/v1/events", {"Last-Event-ID": "абв-1"}),
        ("/v1/events?since=%FF%FE%00", {}),
        ("/v1/events?since=-1", {}),
        ("/v1/events?since=" + "9" * 5000, {}),
        ("/v1/events?kinds=verdict&since=0a1b2c3d-99999999999999999999", {}),
    ],
)
async def test_replay_a_garbage_id_gets_a_gap_never_an_error(
    store_path: str, event_log: RecordingEventLog, target: str, headers: dict[str, str]
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-garbage"})

    async with running(config, event_log) as service:
        stream = await open_stream(config.api.socket, target, headers)
        await wait_until(lambda: service.events.subscribers == 1)
        mark(service, "live", kind="verdict")
        blocks = await blocks_until(stream, "live")
        stream.conversation.close()
        status = await (await Conversation.unix(config.api.socket)).request("GET", "/v1/status")

    gap, live = [decoded(block) for block in blocks]
    assert gap["kind"] == "gap" and gap["data"]["reason"] == "unknown-id"
    assert live["data"]["message"] == "live"
    assert status.status == 200
    assert "internal-error" not in event_log.text and "Traceback" not in event_log.text


async def test_replay_an_empty_id_is_a_first_connection(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://replay-empty"})

    async with running(config, event_log) as service:
        mark(service, "earlier")
        stream = await open_stream(config.api.socket, "/v1/events?since=", {"Last-Event-ID": ""})
        await wait_until(lambda: service.events.subscribers == 1)
        mark(service, "live")
        blocks = await blocks_until(stream, "live")
        stream.conversation.close()

    assert [decoded(block)["data"]["message"] for block in blocks] == ["live"]
