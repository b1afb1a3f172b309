"""USB scanners in the running service: several at once, each named in its verdicts; unplug in
the middle of a code; replug; selection by serial number and by udev symlink; the udev
permission race; the kernel driver given back at shutdown. The USB bus is simulated
(markd.scanners.simulated) under pyusb's real code; serial scanners are ptys."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
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
    wait_until,
)
from markd.checks.verdict import Verdict
from markd.scanners import get_virtual
from markd.scanners.capture import read_hid_capture
from markd.scanners.simulated import SimulatedDevice, SimulatedUsb, pos_reports
from markd.scanners.usb_common import use_backend
from markd.service import Service
from metrics_helpers import samples

DATA = Path(__file__).resolve().parents[1] / "data" / "scanners"


class Running:
    def __init__(self, config: object, event_log: RecordingEventLog) -> None:
        self.verdicts: list[Verdict] = []
        self.event_log = event_log
        self.service = Service(config, event_log=event_log, verdict_sink=self.verdicts.append)  # type: ignore[arg-type]
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))

    async def started(self) -> None:
        await wait_until(lambda: self.service.ready.is_set() or self.task.done(), what="ready")
        if self.task.done():
            self.task.result()

    def count(self, kind: str, scanner: str | None = None) -> int:
        return sum(
            1
            for k, _, fields in self.event_log.events
            if k == kind and (scanner is None or fields.get("scanner") == scanner)
        )

    async def event(self, kind: str, scanner: str, count: int = 1, timeout: float = 5) -> None:
        await wait_until(
            lambda: self.count(kind, scanner) >= count,
            timeout=timeout,
            what=f"{count}× {kind} from {scanner}",
        )

    async def verdicts_count(self, count: int) -> None:
        await wait_until(lambda: len(self.verdicts) >= count, what=f"{count} verdicts")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
def bus() -> Iterator[SimulatedUsb]:
    sim = SimulatedUsb()
    with use_backend(sim):
        yield sim


async def test_several_scanners_at_once_each_named_in_its_verdicts(
    bus: SimulatedUsb, pty_pair: PtyPair, store_path: str, event_log: RecordingEventLog
) -> None:
    kbd = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    pos = bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    config = make_config(
        store_path,
        {
            "kbd": "hid-kbd://0c2e:0b61",
            "pos": "hid-pos://1eab:0010",
            "com": f"serial://{pty_pair.path}",
            "kiosk": "virtual://kiosk",
        },
    )
    run = Running(config, event_log)
    await run.started()
    for name in ("kbd", "pos", "com", "kiosk"):
        await run.event("scanner-present", name)

    kbd.play(read_hid_capture((DATA / "kbd-gs-alt0029.hid").read_text()))
    pos.queue(*pos_reports(WATER.encode(), chunk=16))
    os.write(pty_pair.master, DAIRY.encode() + b"\r")
    get_virtual("kiosk").scan(TOBACCO_PACK)
    await run.verdicts_count(4)
    await run.finish()

    by_scanner = {v.scanner: (v.decision, v.ki) for v in run.verdicts}
    assert by_scanner == {
        "kbd": ("allow", SHOES_KI),
        "pos": ("allow", WATER_KI),
        "com": ("allow", DAIRY_KI),
        "kiosk": ("allow", TOBACCO_PACK_KI),
    }
    # Stopping the service gave the keyboard back to the kernel.
    assert kbd.log[-3:] == ["release 0", "attach 0", "close"]
    assert pos.kernel_driver == {0: True}
    for tail in ("938p9E", "93dGVz", "7Cev"):
        assert tail not in event_log.text


async def test_unplug_in_the_middle_of_a_code_then_replug(
    bus: SimulatedUsb,
    store_path: str,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    kbd = bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="K1"))
    run = Running(make_config(store_path, {"kbd": "hid-kbd://0c2e:0b61"}), event_log)
    await run.started()
    await run.event("scanner-present", "kbd")

    # Half of one code, then ENODEV from the read (libusb's unplug), as the recording says.
    kbd.play(read_hid_capture((DATA / "kbd-unplug.hid").read_text()))
    started = time.monotonic()
    await run.event("scanner-absent", "kbd")
    noticed = time.monotonic() - started
    assert noticed < 1.0

    # The status line names the absent scanner (whatever the wording of the rest of it).
    loop = asyncio.get_running_loop()
    sock.settimeout(0.2)
    statuses = []
    while True:
        try:
            statuses.append((await loop.run_in_executor(None, sock.recv, 4096)).decode())
        except TimeoutError:
            break
    last = [line for s in statuses for line in s.splitlines() if line.startswith("STATUS=")][-1]
    assert "kbd" in last and "absent" in last, statuses

    # No CPU spin while it is away, and exactly one absent record.
    cpu = time.process_time()
    await asyncio.sleep(0.6)
    assert time.process_time() - cpu < 0.3
    assert run.count("scanner-absent", "kbd") == 1
    away = samples(run.service.metrics().decode())

    replugged = time.monotonic()
    bus.plug(kbd)
    await run.event("scanner-present", "kbd", 2, timeout=3)
    assert time.monotonic() - replugged < 2.0
    back = samples(run.service.metrics().decode())
    # What a fleet sees of it (docs/metrics.md): absent, then present again, one reconnect.
    kbd_label = (("scanner", "kbd"),)
    assert away[("markd_scanner_present", kbd_label)] == 0
    assert away[("markd_scanner_reconnects_total", kbd_label)] == 0
    assert back[("markd_scanner_present", kbd_label)] == 1
    assert back[("markd_scanner_reconnects_total", kbd_label)] == 1
    # The rest of the recording (a whole code) plays after the replug.
    await run.verdicts_count(1)
    await run.finish()
    assert [(v.scanner, v.ki) for v in run.verdicts] == [("kbd", DAIRY_KI)]
    assert "unplug" in kbd.log and kbd.log.count("detach 0") == 2


async def test_identical_scanners_told_apart_by_serial(
    bus: SimulatedUsb, store_path: str, event_log: RecordingEventLog
) -> None:
    left = bus.add(SimulatedDevice(0x05E0, 0x1200, serial="LEFT-1"))
    right = bus.add(SimulatedDevice(0x05E0, 0x1200, serial="RIGHT-2"))
    config = make_config(
        store_path,
        {
            "left": "hid-kbd://05e0:1200?serial=LEFT-1",
            "right": "hid-kbd://05e0:1200?serial=RIGHT-2",
            "either": "hid-kbd://05e0:1200",
        },
    )
    run = Running(config, event_log)
    await run.started()
    await run.event("scanner-present", "left")
    await run.event("scanner-present", "right")
    await run.event("scanner-absent", "either")
    right.type_text(WATER, gs="f8")
    left.type_text(DAIRY, gs="ctrl+]")
    await run.verdicts_count(2)
    await run.finish()
    assert sorted((v.scanner, v.ki) for v in run.verdicts) == [
        ("left", DAIRY_KI),
        ("right", WATER_KI),
    ]
    (absent,) = [m for k, m, f in event_log.events if k == "scanner-absent"]
    assert "2 USB devices match 05e0:1200" in absent and "?serial=" in absent


async def test_udev_symlink_followed_across_replug_and_permission_race(
    bus: SimulatedUsb, tmp_path: Path, store_path: str, event_log: RecordingEventLog
) -> None:
    pos = bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    link = tmp_path / "scanner-1eab-0010-sn-NLS0001"
    link.symlink_to(f"/dev/bus/usb/001/{pos.address:03d}")
    run = Running(make_config(store_path, {"pos": f"hid-pos://{link}"}), event_log)
    await run.started()
    await run.event("scanner-present", "pos")
    pos.queue(*pos_reports(SHOES.encode()))
    await run.verdicts_count(1)

    # Unplug: udev removes the link. Replug: a new address, the link comes back, but the
    # first open is refused (udev has not applied group and mode yet).
    bus.unplug(pos)
    link.unlink()
    await run.event("scanner-absent", "pos")
    bus.deny_access(pos, times=1)
    replugged = time.monotonic()
    bus.plug(pos)
    link.symlink_to(f"/dev/bus/usb/001/{pos.address:03d}")
    await run.event("scanner-present", "pos", 2, timeout=3)
    assert time.monotonic() - replugged < 2.0
    assert "open denied" in pos.log
    pos.queue(*pos_reports(WATER.encode()))
    await run.verdicts_count(2)
    await run.finish()
    assert [v.ki for v in run.verdicts] == [SHOES_KI, WATER_KI]
    assert run.count("scanner-absent", "pos") == 1  # the refused open did not add a record


async def test_garbage_reports_become_one_journal_record(
    bus: SimulatedUsb, store_path: str, event_log: RecordingEventLog
) -> None:
    kbd = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    run = Running(make_config(store_path, {"kbd": "hid-kbd://0c2e:0b61?max_length=200"}), event_log)
    await run.started()
    await run.event("scanner-present", "kbd")
    kbd.play(read_hid_capture((DATA / "garbage.hid").read_text()))
    await run.verdicts_count(1)
    await run.finish()
    assert [(v.scanner, v.ki) for v in run.verdicts] == [("kbd", DAIRY_KI)]
    overflows = [f for k, _, f in event_log.events if k == "scan-overflow"]
    # One record for the unreadable report; for the flood one when it crossed max_length and
    # one when its Enter came: never one per report or byte.
    assert all(f["scanner"] == "kbd" for f in overflows)
    # Each record says which: a report the decoder could not read, or a flood too long.
    assert [(f["reason"], f["ended"]) for f in overflows] == [
        ("bad-report", "yes"),
        ("too-long", "no"),
        ("too-long", "yes"),
    ]
    # The last one counts the flood's 700 characters (garbage.hid's header), all of them.
    assert overflows[1]["dropped"] == 201 and overflows[2]["dropped"] == 700
    assert run.count("scanner-absent") == 0
