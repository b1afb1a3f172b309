"""``markctl events`` against a running service: one line (or JSON object) per event."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from api_helpers import api_config, running
from conftest import GS, WATER, WATER_KI, RecordingEventLog, wait_until
from markd.cli import markctl
from markd.scanners import get_virtual


async def follow(
    service_socket: str, service: object, scanner: str, codes: list[str], *args: str
) -> int:
    """Run ``markctl events`` in a thread; scan ``codes`` once it is subscribed."""
    command = asyncio.create_task(
        asyncio.to_thread(markctl.main, ["events", "--socket", service_socket, *args])
    )
    await wait_until(lambda: service.events.subscribers == 1)  # type: ignore[attr-defined]
    for code in codes:
        get_virtual(scanner).scan(code)
    return await asyncio.wait_for(command, 10)


async def test_cli_events_prints_a_line_per_event(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-events"})

    async with running(config, event_log) as service:
        status = await follow(
            config.api.socket, service, "cli-events", [WATER, "hello, world"], "--count", "4"
        )

    out = capsys.readouterr().out.splitlines()
    assert status == 0 and len(out) == 4
    assert " scan " in out[0] and "scan from front (38 bytes)" in out[0]
    assert f"ALLOW {WATER_KI} from front: store-only-not-blocked" in out[1]
    assert "DENY (not a code) from front: invalid-characters" in out[3]
    assert WATER.split(GS)[1] not in "\n".join(out)


async def test_cli_events_json_and_kind_filter(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-json"})

    async with running(config, event_log) as service:
        status = await follow(
            config.api.socket,
            service,
            "cli-json",
            [WATER, WATER],
            "--json",
            "--kinds",
            "verdict",
            "--count",
            "2",
        )

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [e["kind"] for e in events] == ["verdict", "verdict"]
    assert events[0]["seq"] < events[1]["seq"] and events[0]["data"]["ki"] == WATER_KI


async def test_cli_events_reports_the_end_of_the_stream(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-end"})

    async with running(config, event_log) as service:
        command = asyncio.create_task(
            asyncio.to_thread(markctl.main, ["events", "--socket", config.api.socket])
        )
        await wait_until(lambda: service.events.subscribers == 1)
    status = await asyncio.wait_for(command, 10)

    captured = capsys.readouterr()
    assert status == 1
    assert "service-stopping" in captured.out and "markd stopping" in captured.out
    assert "ended the event stream" in captured.err


def test_cli_events_without_a_daemon_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = markctl.main(["events", "--socket", str(tmp_path / "control.sock")])

    assert status == 1
    assert "markd is not running" in capsys.readouterr().err


async def test_cli_events_unknown_kind_exits_2(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-kind"})

    async with running(config, event_log):
        status = await asyncio.to_thread(
            markctl.main, ["events", "--socket", config.api.socket, "--kinds", "verdicts"]
        )

    assert status == 2
    assert "unknown event kind(s) verdicts" in capsys.readouterr().err


def test_cli_events_takes_the_socket_from_the_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "markd.toml"
    config.write_text(f"[api]\nsocket = '{tmp_path / 'elsewhere.sock'}'\n")

    status = markctl.main(["events", "--config", str(config)])

    assert status == 1
    assert str(tmp_path / "elsewhere.sock") in capsys.readouterr().err


async def test_cli_events_since_shows_the_events_after_that_id(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-since"})

    async with running(config, event_log) as service:
        seen = service.events.publish("source-notice", {"message": "seen before"})
        missed = [
            service.events.publish("source-notice", {"message": f"missed {n}"}) for n in range(2)
        ]
        status = await asyncio.to_thread(
            markctl.main,
            ["events", "--socket", config.api.socket, "--since", seen.id, "--json", "--count", "2"],
        )

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [e["id"] for e in events] == [e.id for e in missed]
    assert [e["data"]["message"] for e in events] == ["missed 0", "missed 1"]


async def test_cli_events_since_prints_a_gap_clearly(
    store_path: str, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api_config(store_path, {"front": "virtual://cli-gap"})

    async with running(config, event_log) as service:
        other_run = "00000000" if service.events.run != "00000000" else "11111111"
        text = await asyncio.to_thread(
            markctl.main,
            ["events", "--socket", config.api.socket, "--since", f"{other_run}-7", "--count", "1"],
        )
        as_json = await asyncio.to_thread(
            markctl.main,
            ["events", "--socket", config.api.socket, "--since", "57", "--json", "--count", "1"],
        )
        run = service.events.run

    line, json_line = capsys.readouterr().out.splitlines()
    assert text == 0 and as_json == 0
    assert re.search(rf"Z {run}-\d+ gap +MISSED", line), line  # the id to go on from, shown
    assert "MISSED EVENTS (restarted): markd restarted since that event" in line
    gap = json.loads(json_line)
    assert gap["kind"] == "gap" and gap["data"]["reason"] == "unknown-id"
