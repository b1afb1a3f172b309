"""USB scanners read as the devices behave, through the daemon's reader threads and pyusb's
real code above the simulated bus (markd.scanners.simulated):

* a keyboard interface that is not a boot interface sends its keyboard report behind a report
  ID, beside consumer-control reports; a layout markd cannot decode is refused by name;
* the scanner is told Num Lock on, Caps Lock off (the decoder's initial state), so one that
  compensates for Caps Lock does not invert case because the console had Caps Lock on;
* with ``terminator=none`` the gap is timed from the last report, so an Alt-code scanner
  (ten reports per character) gives one code, as ``markctl decode`` does;
* an unreadable report in the middle of a code takes the rest of that code with it;
* a device in the wrong mode for its URL is refused once and left alone until it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from conftest import DAIRY, WATER
from markd.scanners import Scan, Scanner, ScannerEvent, ScannerState, ScanOverflow, open_scanner
from markd.scanners.capture import Capture, CaptureEntry
from markd.scanners.replay import decode_hid_keyboard
from markd.scanners.simulated import (
    SimulatedDevice,
    SimulatedInterface,
    SimulatedUsb,
    keyboard_reports,
    pos_reports,
)
from markd.scanners.usb_common import use_backend

#: A composite keyboard + consumer-control descriptor (report 1: modifiers, reserved byte, six
#: key slots, five LEDs as output; report 2: a 16-bit consumer usage), as scanners whose
#: keyboard interface is not a boot interface declare.
KEYBOARD_WITH_REPORT_IDS = bytes.fromhex(
    "05 01 09 06 a1 01 85 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01"
    " 05 08 19 01 29 05 95 05 75 01 91 02 95 01 75 03 91 01"
    " 95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
    " 05 0c 09 01 a1 01 85 02 15 00 26 ff 03 19 00 2a ff 03 75 10 95 01 81 00 c0"
)

#: An N-key-rollover keyboard (one bit per key after the modifier and reserved bytes).
KEYBOARD_NKRO_BITMAP = bytes.fromhex(
    "05 01 09 06 a1 01 85 04 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01 19 00 29 67 75 01 95 68 81 02 c0"
)


@pytest.fixture
def bus() -> Iterator[SimulatedUsb]:
    sim = SimulatedUsb()
    with use_backend(sim):
        yield sim


class Reader:
    """A started scanner and the events it delivered."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
        self.events: list[ScannerEvent] = []

    async def until(self, predicate: type | None = None, timeout: float = 5.0) -> ScannerEvent:
        """The next event (of class ``predicate``, skipping others); all are kept."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {predicate.__name__ if predicate else 'event'} in {timeout} s")
            try:
                event = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                pytest.fail(f"no {predicate.__name__ if predicate else 'event'} in {timeout} s")
            self.events.append(event)
            if predicate is None or isinstance(event, predicate):
                return event

    async def settle(self, quiet: float = 0.4) -> list[ScannerEvent]:
        """Collect events until none arrived for ``quiet`` seconds; return all so far."""
        while True:
            try:
                self.events.append(await asyncio.wait_for(self.queue.get(), quiet))
            except TimeoutError:
                return self.events

    def delivered(self) -> list[tuple[str, object]]:
        """Scans and overflows so far, as (kind, data or reason)."""
        return [
            ("scan", e.data) if isinstance(e, Scan) else ("overflow", e.reason)
            for e in self.events
            if isinstance(e, Scan | ScanOverflow)
        ]


@contextlib.asynccontextmanager
async def reading(url: str) -> AsyncIterator[Reader]:
    scanner = open_scanner("front", url)
    reader = Reader(scanner)
    scanner.start(asyncio.get_running_loop(), reader.queue)
    try:
        yield reader
    finally:
        await asyncio.to_thread(scanner.close)


async def present(reader: Reader) -> ScannerState:
    state = await reader.until(ScannerState, 10)
    assert isinstance(state, ScannerState) and state.present, state
    return state


# --------------------------------------------------------------------------------------------
# Report IDs and layouts


async def test_keyboard_reports_behind_a_report_id_decode_and_consumer_reports_are_skipped(
    bus: SimulatedUsb,
) -> None:
    device = bus.add(
        SimulatedDevice(
            0x0C2E,
            0x0B61,
            interfaces=[SimulatedInterface("keyboard", KEYBOARD_WITH_REPORT_IDS, boot=False)],
        )
    )
    async with reading("hid-kbd://0c2e:0b61") as reader:
        await present(reader)
        reports = [b"\x01" + r for r in keyboard_reports(WATER, gs="ctrl+]")]
        consumer = [b"\x02\xe9\x00", b"\x02\x00\x00"]  # Volume Up, pressed and released
        device.queue(*reports[:10], *consumer, *reports[10:], *consumer)
        scan = await reader.until(Scan)
        await reader.settle()
        assert isinstance(scan, Scan) and scan.data == WATER.encode()
        assert reader.delivered() == [("scan", WATER.encode())]
    # Not a boot interface: no SET_PROTOCOL; the LED report carries the report ID (1) and
    # sets Num Lock (bit 0) only.
    assert not any(entry.startswith("set_protocol") for entry in device.log)
    assert "set_report 0 0x0201 0101" in device.log
    assert device.kernel_driver == {0: True}


async def test_a_keyboard_layout_markd_cannot_read_is_refused_by_name(
    bus: SimulatedUsb,
) -> None:
    device = bus.add(
        SimulatedDevice(
            0x0C2E,
            0x0B61,
            interfaces=[SimulatedInterface("keyboard", KEYBOARD_NKRO_BITMAP, boot=False)],
        )
    )
    async with reading("hid-kbd://0c2e:0b61") as reader:
        state = await reader.until(ScannerState)
        assert isinstance(state, ScannerState) and not state.present
        assert "keyboard report 4 has a layout markd cannot read" in state.detail
        assert "bitmap 104x1 bits at bit 16" in state.detail
        await asyncio.sleep(1.2)  # two reopen intervals and more
    assert device.log.count("detach 0") == 1  # refused once, then left alone
    assert device.kernel_driver == {0: True}  # and the console still has its keyboard


# --------------------------------------------------------------------------------------------
# LEDs


async def test_the_scanner_is_told_caps_lock_off_so_compensation_does_not_invert_case(
    bus: SimulatedUsb,
) -> None:
    # The console had Caps Lock on when the kernel bound the scanner (LEDs 0x03); a scanner
    # with automatic Caps Lock compensation then types 'a' as Shift+A. markd tells it Num
    # Lock on, Caps Lock off, the state its decoder starts from.
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, leds=0x03, auto_caps_lock=True))
    async with reading("hid-kbd://0c2e:0b61") as reader:
        await present(reader)
        assert device.leds == 0x01
        device.type_text(WATER, gs="ctrl+]")
        scan = await reader.until(Scan)
        assert isinstance(scan, Scan) and scan.data == WATER.encode()
    # Boot protocol first, then the boot LED report (no report ID).
    assert device.log.index("set_protocol 0 boot") < device.log.index("set_report 0 0x0200 01")


async def test_a_scanner_without_leds_stalls_the_led_report_and_still_reads(
    bus: SimulatedUsb,
) -> None:
    device = bus.add(
        SimulatedDevice(0x0C2E, 0x0B61, interfaces=[SimulatedInterface("keyboard", leds=False)])
    )
    async with reading("hid-kbd://0c2e:0b61") as reader:
        await present(reader)
        assert not reader.scanner.leds_set  # type: ignore[attr-defined]
        device.type_text(DAIRY, gs="f8")
        scan = await reader.until(Scan)
        assert isinstance(scan, Scan) and scan.data == DAIRY.encode()
    assert "set_report 0 0x0200 stalled" in device.log


# --------------------------------------------------------------------------------------------
# Gap framing


async def test_an_alt_code_scanner_without_terminator_gives_one_code_as_decode_does(
    bus: SimulatedUsb,
) -> None:
    # Every character is ten reports (Alt, four keypad digits down and up, Alt up), 8 ms
    # apart: one character every 80 ms, longer than the 50 ms gap. The gap is silence
    # between reports, so the code stays whole, in the daemon as in markctl decode.
    text = "0104670540176099"
    reports = keyboard_reports(text, alt_codes=True, terminator="")
    expected = decode_hid_keyboard(
        Capture([CaptureEntry(r, 0.008) for r in reports]), terminator="none", gap_ms=50
    )
    assert [(d.kind, d.data) for d in expected] == [("code", text.encode())]
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    async with reading("hid-kbd://0c2e:0b61?terminator=none&gap_ms=50") as reader:
        await present(reader)
        for report in reports:
            device.queue(report, delay=0.008)
        await asyncio.to_thread(device.wait_drained, 10)
        await reader.settle()
        assert reader.delivered() == [("scan", text.encode())]


# --------------------------------------------------------------------------------------------
# Unreadable reports in the middle of a code


@pytest.mark.parametrize("terminator", ["cr", "none"])
async def test_an_unreadable_keyboard_report_mid_code_drops_the_whole_code(
    bus: SimulatedUsb, terminator: str
) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    end = "\r" if terminator == "cr" else ""
    async with reading(f"hid-kbd://0c2e:0b61?terminator={terminator}") as reader:
        await present(reader)
        head = keyboard_reports(WATER[:20], terminator="")
        tail = keyboard_reports(WATER[20:], gs="ctrl+]", terminator=end)
        device.queue(*head, b"\x00\x00", *tail)  # a 2-byte report in the middle
        await reader.settle()
        device.queue(*keyboard_reports(DAIRY, gs="ctrl+]", terminator=end))
        await reader.until(Scan)
        await reader.settle()
        # One record for the bad report; the rest of WATER is not a scan of its own.
        assert reader.delivered() == [("overflow", "bad-report"), ("scan", DAIRY.encode())]


async def test_an_unreadable_hid_pos_report_mid_scan_drops_the_whole_scan(
    bus: SimulatedUsb,
) -> None:
    device = bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    async with reading("hid-pos://1eab:0010") as reader:
        await present(reader)
        first, second, third = pos_reports(WATER.encode(), chunk=16)
        broken = bytearray(second)
        broken[1] = 200  # a byte count beyond the 56-byte data field
        device.queue(first, bytes(broken), third, *pos_reports(DAIRY.encode(), chunk=16))
        scan = await reader.until(Scan)
        await reader.settle()
        assert isinstance(scan, Scan) and scan.symbology == "]d2"
        assert reader.delivered() == [("overflow", "bad-report"), ("scan", DAIRY.encode())]


# --------------------------------------------------------------------------------------------
# The wrong mode for the URL


@pytest.mark.parametrize(
    ("url", "kind", "other", "says"),
    [
        ("hid-pos://0c2e:0b61", "keyboard", "hid-pos", "in keyboard mode (no usage page 0x8C)"),
        ("hid-kbd://0c2e:0b61", "hid-pos", "keyboard", "in HID-POS mode, the URL says hid-kbd"),
    ],
    ids=["hid-pos-url-keyboard-device", "hid-kbd-url-hid-pos-device"],
)
async def test_a_device_in_the_wrong_mode_is_refused_once_and_left_alone(
    bus: SimulatedUsb, url: str, kind: str, other: str, says: str
) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, kind=kind))
    async with reading(url) as reader:
        state = await reader.until(ScannerState)
        assert isinstance(state, ScannerState) and not state.present
        # Before, every reopen (twice a second) detached and re-attached the kernel driver:
        # the scanner dropped in and out of the console for as long as markd ran.
        await asyncio.sleep(1.6)
        assert device.log.count("detach 0") == 1
        assert device.kernel_driver == {0: True}
        assert [e for e in await reader.settle(0.1) if isinstance(e, ScannerState)] == [state]
        assert says in state.detail and "left alone until it is replugged" in state.detail

        # The technician scans the mode's setup barcode: the scanner re-enumerates (a new
        # address) in the mode the URL names, and is taken at once.
        bus.unplug(device)
        device.interfaces = [SimulatedInterface(other)]
        device.packet_size = 8 if other == "keyboard" else 64
        bus.plug(device)
        await present(reader)
        if other == "keyboard":
            device.type_text(DAIRY, gs="ctrl+]")
        else:
            device.queue(*pos_reports(DAIRY.encode()))
        scan = await reader.until(Scan)
        assert isinstance(scan, Scan) and scan.data == DAIRY.encode()
