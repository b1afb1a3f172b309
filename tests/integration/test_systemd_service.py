"""What systemd and the technician see of the running service: the one-line ``STATUS=`` and a
clean stop that finishes the scan being checked."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import pytest

from conftest import DAIRY, WATER, RecordingEventLog, make_config, wait_until
from markd.checks.verdict import Verdict
from markd.config import OnlineCheckConfig
from markd.emulators.testing import crpt_cdn
from markd.scanners import get_virtual
from markd.service import Service


def statuses(sock: socket.socket) -> list[str]:
    """The ``STATUS=`` values of every notify datagram waiting on the socket."""
    found: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            for line in sock.recv(4096).decode().split("\n"):
                if line.startswith("STATUS="):
                    found.append(line.removeprefix("STATUS="))
    except BlockingIOError:
        return found
    finally:
        sock.settimeout(10)


async def test_status_line_follows_scanners_verdicts_and_the_blocklist(
    tmp_path: Path,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    config = make_config(
        str(tmp_path / "store"),
        {"front": "virtual://st-front", "side": f"serial://{tmp_path}/no-tty?terminator=cr"},
    )
    verdicts: list[Verdict] = []
    service = Service(config, event_log=event_log, verdict_sink=verdicts.append)
    service.reload_status_path = None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        await wait_until(lambda: service.scanners["side"].present is False, what="side absent")
        get_virtual("st-front").scan(WATER)
        get_virtual("st-front").scan("not a code")
        await wait_until(lambda: len(verdicts) == 2, what="two verdicts")
        # Count changes are sent at most once a second: the last one follows within it.
        seen = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen += statuses(sock)
            if seen and seen[-1].endswith("verdicts 1 allow, 1 deny, 0 rescan"):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task

    assert seen[0].startswith("ready; mode store-only; scanners front ok, side ")
    assert "blocklist v0 never synced" in seen[0]
    assert "verdicts 0 allow, 0 deny, 0 rescan" in seen[0]
    assert any("side absent" in line for line in seen)
    assert seen[-1].endswith("verdicts 1 allow, 1 deny, 0 rescan")
    assert len(seen) == len(set(seen))  # sent on changes only, never the same line twice
    assert all("\n" not in line and len(line) < 300 for line in seen)


async def test_stop_finishes_the_scan_in_flight_and_asks_for_a_rescan_of_the_queued_ones(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    token = "0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9"
    (tmp_path / "token").write_text(token + "\n")
    with crpt_cdn({"cdn": {"token": token}}) as cdn:
        cdn.set_fault("codes/check", latency_ms=400)
        base = make_config(str(tmp_path / "store"), {"v": "virtual://stop-flight"})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            online=OnlineCheckConfig(url=cdn.url, token_file=str(tmp_path / "token")),
        )
        verdicts: list[Verdict] = []
        service = Service(
            dataclasses.replace(base, check=check),
            event_log=event_log,
            verdict_sink=verdicts.append,
        )
        service.reload_status_path = None
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 5)
        scanner = get_virtual("stop-flight")
        scanner.scan(WATER)
        await wait_until(lambda: cdn.count("codes/check") >= 1, what="the first check asked")
        scanner.scan(DAIRY)
        await wait_until(lambda: service._queue is not None and service._queue.qsize() >= 1)
        stop.set()
        await asyncio.wait_for(task, 5)

    assert [(v.decision, v.reason, v.source) for v in verdicts] == [
        ("allow", verdicts[0].reason, "cdn"),
        ("rescan", "service-stopping", "none"),
    ]
    assert verdicts[1].message_ru and verdicts[1].scanner == "v"
    kinds = event_log.kinds()
    assert kinds.index("service-stopping") > max(i for i, k in enumerate(kinds) if k == "verdict")


async def test_a_burst_of_scans_sends_few_status_updates(
    tmp_path: Path,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A datagram per scan would fill the notify socket's queue on a busy till and make
    # sd_notify block the loop when the reader is slow (found by the soak benchmark).
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    config = make_config(str(tmp_path / "store"), {"front": "virtual://st-burst"})
    verdicts: list[Verdict] = []
    service = Service(config, event_log=event_log, verdict_sink=verdicts.append)
    service.reload_status_path = None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        statuses(sock)  # READY=1 with the first line
        for _ in range(40):
            get_virtual("st-burst").scan(WATER)
        await wait_until(lambda: len(verdicts) == 40, what="40 verdicts")
        seen: list[str] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (seen and "verdicts 40 allow" in seen[-1]):
            seen += statuses(sock)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert seen and seen[-1].endswith("verdicts 40 allow, 0 deny, 0 rescan")
    assert len(seen) <= 3, seen


async def test_status_line_drops_the_receipt_as_soon_as_it_is_closed(
    tmp_path: Path,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``systemctl status`` showed a closed receipt as open until the next periodic refresh
    (30 s): the close now sends ``STATUS=`` before its answer; units are counted in words."""
    from api_helpers import Conversation
    from sale_helpers import running as running_sale
    from sale_helpers import write_sale_config

    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://status-close"}, catalog=None
    )
    water = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
    dairy = {"code": DAIRY, "name": "Молоко", "price_kopecks": 9990}
    seen: list[str] = []

    async def until(fragment: str) -> None:
        deadline = time.monotonic() + 3
        while not (seen and fragment in seen[-1]) and time.monotonic() < deadline:
            seen.extend(statuses(sock))
            await asyncio.sleep(0.05)
        assert seen and fragment in seen[-1], seen

    async with running_sale(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        try:
            assert (await conversation.request("POST", "/v1/receipt", {})).status == 201
            assert (await conversation.request("POST", "/v1/receipt/items", water)).status == 200
            await until("receipt open (1 unit)")
            assert (await conversation.request("POST", "/v1/receipt/items", dairy)).status == 200
            await until("receipt open (2 units)")
            closed = await conversation.request("POST", "/v1/receipt/close")
            assert closed.status == 200, closed.json()
            # Already on the socket when the close answered: no waiting for a refresh.
            seen.extend(statuses(sock))
        finally:
            conversation.close()

    assert "sale attendant" in seen[-1] and "receipt open" not in seen[-1], seen
