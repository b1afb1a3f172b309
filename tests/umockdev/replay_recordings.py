"""Every HID recording, replayed by umockdev's own usbmon player through pyusb's libusb1 backend.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): it needs a
process under umockdev's preload, which tests/integration/test_scanner_libusb.py starts with
this file named on its command line.

For each recording in ``tests/data/scanners`` (and each one a bench dropped into
``tests/data/scanners/bench/``, tests/hil/README.md), ``tools/hid_umockdev.py`` makes a
umockdev device description and a usbmon capture; umockdev's player
(``umockdev_testbed_load_pcap``) answers libusb's URBs from the capture. markd's scanner
backend, unchanged, must decode the codes the recording promises (its ``# expect:`` lines),
or, for a capture without them, the codes markd's offline replay of the file decodes
(``markd.scanners.replay``): the real transport delivers the reports as they were recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from markd.scanners import Scan, ScannerEvent, ScannerState, open_scanner
from markd.scanners.capture import read_hid_capture
from markd.scanners.replay import decode_hid_keyboard, decode_hid_pos
from markd.scanners.simulated import pos_reports
from umockdev_usb import Profile, available, hid_umockdev, shared_bus

DATA = Path(__file__).resolve().parents[1] / "data" / "scanners"
RECORDINGS = sorted(
    [*DATA.glob("*.hid"), *DATA.glob("*.usbhid-dump"), *(DATA / "bench").glob("*.hid")]
)

#: Recordings this replay cannot express, and why.
NOT_REPLAYABLE = {
    "kbd-unplug.hid": "umockdev's player cannot unplug a device; the contract suite's "
    "libusb backends unplug and replug (test_scanner_contract.py)",
}

_addresses = itertools.count(40)


def expected(path: Path) -> list[bytes]:
    return [
        line.split("expect:", 1)[1].strip().replace("\\u001d", "\x1d").encode()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


@pytest.fixture(autouse=True)
def _needs_umockdev() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
async def test_recording_replays_through_libusb(path: Path, tmp_path: Path) -> None:
    if path.name in NOT_REPLAYABLE:
        pytest.skip(NOT_REPLAYABLE[path.name])
    await replay(path, tmp_path)


async def test_a_bench_capture_goes_through_extract_and_replays(tmp_path: Path) -> None:
    """What a bench does (tests/hil/README.md): a usbmon capture begun before the scanner was
    plugged in (so it holds the enumeration), ``extract`` with the code scanned, then the
    replay, with the scanner's own identity and report descriptor."""
    code = "0104680029460908215jcmHzLmkdPML\x1d938p9E"
    scanner = Profile(kind="hid-pos", vid=0x05E0, pid=0x1200, serial="BENCH1", address=7)
    writer = hid_umockdev._Writer(scanner)
    get = hid_umockdev._setup
    config = hid_umockdev.configuration_descriptor(scanner)
    writer.control(get(0x80, 6, 0x0100, 0, 18), hid_umockdev.device_descriptor(scanner))
    writer.control(get(0x80, 6, 0x0200, 0, len(config)), config)
    writer.control(get(0x80, 6, 0x0303, 0x0409, 255), hid_umockdev.string_descriptor(scanner, 3))
    writer.control(get(0x81, 6, 0x2200, 0, 255), scanner.report_descriptor)
    for report in pos_reports(code.encode(), chunk=30):
        writer.report(report)
    capture = tmp_path / "bench.pcap"
    hid_umockdev.write_pcap(capture, writer.urbs)
    recording = tmp_path / "bench-pos.hid"
    assert hid_umockdev.main(["extract", str(capture), str(recording), "--expect", code]) == 0
    assert hid_umockdev.usb_line(recording)["vid"] == "05e0"
    await replay(recording, tmp_path / "replay")


async def replay(path: Path, tmp_path: Path) -> None:
    profile = hid_umockdev.profile_for(path)
    kind = profile.kind
    address = next(_addresses)
    profile.address, profile.port = address, str(address)
    if not hid_umockdev.usb_line(path):
        # A made-up identity: one of its own, so no earlier replay's device can answer.
        profile.pid, profile.serial = 0x7000 + address, f"R{address}"
    description, traffic = hid_umockdev.convert(path, tmp_path, profile=profile)
    testbed = shared_bus().testbed
    syspath = profile.syspath
    assert testbed.add_from_string(description.read_text())
    testbed.load_pcap(syspath, str(traffic))

    # The codes the file promises; a capture without "# expect:" lines (a usbhid-dump)
    # promises what markd's offline replay of it decodes.
    want = expected(path)
    if not want:
        capture = read_hid_capture(path.read_text())
        offline = (decode_hid_keyboard if kind == "keyboard" else decode_hid_pos)(capture)
        want = [r.data for r in offline if r.kind == "code"]
    assert want, f"{path.name} holds no code to replay"

    scheme = "hid-kbd" if kind == "keyboard" else "hid-pos"
    scanner = open_scanner("replay", f"{scheme}://{profile.vid:04x}:{profile.pid:04x}")
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    scanner.start(asyncio.get_running_loop(), queue)
    got: list[bytes] = []
    states: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < len(want) and time.monotonic() < deadline:
            try:
                event = await asyncio.wait_for(queue.get(), deadline - time.monotonic())
            except TimeoutError:
                break
            if isinstance(event, Scan):
                got.append(event.data)
            elif isinstance(event, ScannerState):
                states.append(event.detail)
        assert got == want, states
        assert "opened USB" in states[0]
    finally:
        await asyncio.to_thread(scanner.close)
        testbed.uevent(syspath, "remove")
        testbed.remove_device(syspath)
