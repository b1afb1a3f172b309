"""Fiscal health in a running daemon (domain.md §7.8): the sale desk reads it from the ККТ with
every status, the status API carries it with the warnings by ``[fiscal] *_warning``, and the
journal records a warning once when it appears and once when it clears."""

from __future__ import annotations

from pathlib import Path

from api_helpers import Conversation
from conftest import RecordingEventLog
from markd.emulators.atol_web import AtolWebEmulator
from markd.receipts import OpenReceipt
from sale_helpers import events, kkt, running, write_sale_config


def health_events(log: RecordingEventLog) -> list[tuple[str, str]]:
    return [
        (f["warning"], f["state"])
        for f in events(log, "sale-desk")
        if f.get("action") == "fiscal-health"
    ]


async def test_health_warnings_are_journaled_when_they_appear_and_clear(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={}, catalog=None, fiscal_extra="fn_days_warning = 40"
    )
    device = kkt(tmp_path)
    device.set_faults(fn_days_left=35, unsent_age_days=4)

    async with running(config, event_log) as service:
        desk = service.receipts
        status = desk.status()  # type: ignore[union-attr]
        assert status["health_warnings"] == ["fn-expiring", "unsent-old"]
        assert status["device"]["health"]["fn_days_left"] in (34, 35)
        assert health_events(event_log) == [("fn-expiring", "raised"), ("unsent-old", "raised")]
        message = [m for k, m, f in event_log.events if f.get("warning") == "fn-expiring"][0]
        assert "days left; warned below 40" in message

        # The next status read (after an operation) journals only what changed.
        device.set_faults(unsent_age_days=None, shift_age_hours=None)
        await desk.open(OpenReceipt())  # type: ignore[union-attr]
        await desk.cancel()  # type: ignore[union-attr]

        assert health_events(event_log)[2:] == [("unsent-old", "cleared")]
        assert desk.status()["health_warnings"] == ["fn-expiring"]  # type: ignore[union-attr]


async def test_an_idle_kiosk_reads_its_fiscal_health_on_a_timer(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """No sale at all: the ФН nears its end on the device, and the daemon notices by itself
    within ``[fiscal] health_interval_s``, journaling the warning once."""
    import asyncio

    config = write_sale_config(
        tmp_path, mode="attendant", scanners={}, catalog=None, fiscal_extra="health_interval_s = 1"
    )
    device = kkt(tmp_path)
    async with running(config, event_log) as service:
        assert service.receipts.status()["health_warnings"] == []  # type: ignore[union-attr]
        device.set_faults(fn_days_left=12)
        for _ in range(60):
            if health_events(event_log):
                break
            await asyncio.sleep(0.05)
        assert health_events(event_log) == [("fn-expiring", "raised")]
        status = service.receipts.status()  # type: ignore[union-attr]
        assert status["health_warnings"] == ["fn-expiring"]


async def test_the_fn_s_own_warnings_reach_the_status_and_the_journal(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="attendant", scanners={}, catalog=None)
    device = kkt(tmp_path)
    device.set_faults(fn_warnings=["memoryOverflow", "resourceExhausted", "needReplacement"])

    async with running(config, event_log) as service:
        status = service.receipts.status()  # type: ignore[union-attr]

    assert status["health_warnings"] == [
        "fn-memory-full",
        "fn-needs-replacement",
        "fn-resource-exhausted",
    ]
    assert status["device"]["fn_warnings"] == [
        "memoryOverflow",
        "needReplacement",
        "resourceExhausted",
    ]
    assert health_events(event_log) == [
        ("fn-memory-full", "raised"),
        ("fn-needs-replacement", "raised"),
        ("fn-resource-exhausted", "raised"),
    ]


async def test_a_blocked_web_requests_queue_shows_as_such_in_the_status_api(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """The status API says the queue is blocked (not merely that the printer is unreachable)
    until the device answers again once a technician resolved it."""
    config = write_sale_config(tmp_path, mode="attendant", scanners={}, catalog=None)
    with AtolWebEmulator(state_dir=tmp_path / "kkt") as server:
        text = config.read_text(encoding="utf-8")
        web = f'url = "atol-web://127.0.0.1:{server.port}"'
        config.write_text(
            text.replace(f'url = "emulator://{tmp_path / "kkt"}"', web), encoding="utf-8"
        )
        async with running(config, event_log) as service:
            desk = service.receipts
            assert desk.status()["queue_blocked"] is False  # type: ignore[union-attr]
            server.block_next = "before"
            assert await desk.refresh_health()  # type: ignore[union-attr]

            conversation = await Conversation.unix(str(tmp_path / "control.sock"))
            try:
                blocked = (await conversation.request("GET", "/v1/status")).json()["printer"]
                server.unblock()
                assert await desk.refresh_health()  # type: ignore[union-attr]
                moving = (await conversation.request("GET", "/v1/status")).json()["printer"]
            finally:
                conversation.close()

    assert blocked["queue_blocked"] is True
    assert blocked["last_error"]["reason"] == "queue-blocked"
    assert moving["queue_blocked"] is False and moving["state"] != "unreachable"
