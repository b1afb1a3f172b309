"""tools/hid_umockdev.py: recordings → umockdev descriptions and usbmon captures, and the
checks it makes of a bench's capture. (The captures are replayed by umockdev's own player in
tests/integration/test_scanner_libusb.py.)"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import hid_umockdev  # noqa: E402
from hid_umockdev import URB_INTERRUPT, Profile, Urb  # noqa: E402
from markd.scanners.capture import read_hid_capture  # noqa: E402

DATA = ROOT / "tests" / "data" / "scanners"


def reports_of(path: Path) -> list[bytes]:
    return [r for r, _ in hid_umockdev.recording_reports(path)[1]]


@pytest.mark.parametrize("name", ["kbd-gs-ctrl.hid", "pos-split.hid", "garbage.hid"])
def test_a_converted_recording_carries_its_reports_and_checks_clean(
    name: str, tmp_path: Path
) -> None:
    description, traffic = hid_umockdev.convert(DATA / name, tmp_path)
    report = hid_umockdev.check(traffic)
    assert report.problems == []
    assert report.reports == reports_of(DATA / name)
    text = description.read_text()
    assert "E: DEVTYPE=usb_device" in text and "H: descriptors=12010002" in text
    # The HID device under the interface carries the report descriptor, as in sysfs.
    kind, _reports, descriptor = hid_umockdev.recording_reports(DATA / name)
    wanted = descriptor or hid_umockdev.Profile(kind=kind).report_descriptor
    assert f"H: report_descriptor={wanted.hex()}" in text
    # Every completion follows its submission, in the 64-byte usbmon layout.
    urbs = hid_umockdev.read_urbs(traffic)
    seen: set[int] = set()
    for urb in urbs:
        if urb.event == "S":
            seen.add(urb.urb_id)
        else:
            assert urb.urb_id in seen
    assert traffic.read_bytes()[20:24] == struct.pack("<I", 220)


def test_the_descriptors_are_what_a_usb_host_parses(tmp_path: Path) -> None:
    keyboard = Profile(kind="keyboard")
    config = hid_umockdev.configuration_descriptor(keyboard)
    assert struct.unpack_from("<H", config, 2)[0] == len(config)
    interface = config[9:18]
    assert interface[5:8] == bytes([3, 1, 1])  # HID, boot, keyboard
    assert config[-7:][2] == 0x81 and struct.unpack_from("<H", config, len(config) - 3)[0] == 8
    pos = hid_umockdev.configuration_descriptor(Profile(kind="hid-pos"))
    assert pos[9 + 5 : 9 + 8] == bytes([3, 0, 0])
    assert hid_umockdev.string_descriptor(keyboard, 3) == bytes([6, 3]) + "K7".encode("utf-16-le")
    assert hid_umockdev.string_descriptor(keyboard, 9) is None


def _write(path: Path, urbs: list[Urb], linktype: int = 220, cut: int = 0) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
    for urb in urbs:
        packet = urb.pack()
        kept = packet[: len(packet) - cut] if cut and urb.data else packet
        out += struct.pack("<IIII", 0, 0, len(kept), len(packet)) + kept
    path.write_bytes(bytes(out))


def _report(bus: int, address: int, urb_id: int, data: bytes, *, submit: bool = True) -> list[Urb]:
    common = dict(transfer=URB_INTERRUPT, endpoint=0x81, bus=bus, address=address, urb_id=urb_id)
    events = [Urb(event="S", length=8, status=-115, **common)] if submit else []
    return events + [Urb(event="C", length=len(data), data=data, **common)]


def test_check_names_what_is_wrong_with_a_capture(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    capture.write_text("hello, not a capture at all")
    assert "not a pcap, pcapng or umockdev ioctl file" in hid_umockdev.check(capture).problems[0]

    _write(capture, _report(1, 7, 1, bytes(8)), linktype=1)
    assert "link type 1, not usbmon (220)" in hid_umockdev.check(capture).problems[0]

    _write(capture, _report(1, 7, 1, bytes(8)) + _report(1, 9, 2, bytes(8)))
    (problem,) = hid_umockdev.check(capture).problems
    assert "2 devices (1:7, 1:9)" in problem and "--device BUS:ADDR" in problem
    assert hid_umockdev.check(capture, (1, 9)).problems == []

    _write(capture, _report(1, 7, 1, bytes([0, 0, 4, 0, 0, 0, 0, 0]), submit=False))
    assert any("no submission" in p for p in hid_umockdev.check(capture).problems)

    _write(capture, _report(1, 7, 1, bytes([0, 0, 4, 0, 0, 0, 0, 0])), cut=4)
    assert any("snapshot length" in p for p in hid_umockdev.check(capture).problems)


def test_a_pcapng_capture_is_read_like_a_pcap(tmp_path: Path) -> None:
    urbs = _report(2, 5, 1, bytes([0, 0, 0x27, 0, 0, 0, 0, 0])) + _report(2, 5, 2, bytes(8))

    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += block(1, struct.pack("<HHI", 220, 0, 65535))
    for urb in urbs:
        packet = urb.pack()
        data += block(6, struct.pack("<IIIII", 0, 0, 0, len(packet), len(packet)) + packet)
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(data)
    report = hid_umockdev.check(capture)
    assert report.problems == []
    assert report.reports == [bytes([0, 0, 0x27, 0, 0, 0, 0, 0]), bytes(8)]


def test_extract_writes_a_recording_markd_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _desc, traffic = hid_umockdev.convert(DATA / "kbd-gs-f8.hid", tmp_path)
    out = tmp_path / "bench.hid"
    code = "0104670540176099215LpGKy\x1d93dGVz"
    assert hid_umockdev.main(["extract", str(traffic), str(out), "--expect", code]) == 0
    capture = read_hid_capture(out.read_text())
    assert capture.reports == reports_of(DATA / "kbd-gs-f8.hid")
    assert "# expect: 0104670540176099215LpGKy\\u001d93dGVz" in out.read_text()
    assert hid_umockdev.main(["check", str(tmp_path / "missing.pcap")]) == 1
    assert "problem:" in capsys.readouterr().err


def test_extract_reads_the_device_out_of_a_captured_enumeration(tmp_path: Path) -> None:
    """A capture that began before the scanner was plugged in holds its enumeration: the
    device, configuration, string and report descriptors. usbmon's ids are URB addresses the
    kernel reuses, so every transfer below has the same id."""
    profile = Profile(kind="hid-pos", vid=0x1EAB, pid=0x0010, serial="SN-42", address=9)
    urbs: list[Urb] = []

    def control(setup: bytes, answer: bytes) -> None:
        common = dict(transfer=hid_umockdev.URB_CONTROL, endpoint=0x80, bus=1, address=9, urb_id=7)
        length = struct.unpack_from("<H", setup, 6)[0]
        urbs.append(Urb(event="S", status=-115, length=length, setup=setup, **common))
        urbs.append(Urb(event="C", length=len(answer[:length]), data=answer[:length], **common))

    get = hid_umockdev._setup
    control(get(0x80, 6, 0x0100, 0, 18), hid_umockdev.device_descriptor(profile))
    config = hid_umockdev.configuration_descriptor(profile)
    control(get(0x80, 6, 0x0200, 0, 9), config)
    control(get(0x80, 6, 0x0200, 0, len(config)), config)
    control(get(0x80, 6, 0x0300, 0, 255), hid_umockdev.string_descriptor(profile, 0) or b"")
    control(get(0x80, 6, 0x0303, 0x0409, 255), hid_umockdev.string_descriptor(profile, 3) or b"")
    control(get(0x81, 6, 0x2200, 0, 255), profile.report_descriptor)
    report = bytes([2, 3]) + b"]d2" + b"abc".ljust(56, b"\0") + b"\0"
    urbs += _report(1, 9, 7, report)
    for urb in urbs:
        if urb.transfer == URB_INTERRUPT:
            urb.length = 64 if urb.event == "S" else urb.length
    capture = tmp_path / "bench.pcap"
    _write(capture, urbs)

    checked = hid_umockdev.check(capture)
    assert checked.problems == []
    assert checked.usb == {
        "vid": "1eab", "pid": "0010", "serial": "SN-42", "endpoint": "0x81", "packet": "64",
        "interface": "0", "kind": "hid-pos",
    }  # fmt: skip
    assert checked.descriptor == profile.report_descriptor

    out = tmp_path / "bench.hid"
    assert hid_umockdev.main(["extract", str(capture), str(out)]) == 0
    assert read_hid_capture(out.read_text()).descriptor == profile.report_descriptor
    description, _traffic = hid_umockdev.convert(out, tmp_path / "replay")
    text = description.read_text()
    assert "A: idVendor=1eab" in text and "A: serial=SN-42" in text


def test_a_capture_without_the_enumeration_says_so(tmp_path: Path) -> None:
    capture = tmp_path / "late.pcap"
    _write(capture, _report(1, 7, 1, bytes(8)))
    checked = hid_umockdev.check(capture)
    assert checked.usb is None and checked.descriptor is None
    assert any("enumeration is not in the capture" in n for n in checked.notes)


def test_a_umockdev_ioctl_recording_with_its_description(tmp_path: Path) -> None:
    """``umockdev-record --ioctl`` writes reaped URBs as ``USBDEVFS_REAPURB RET TYPE ENDPOINT
    STATUS FLAGS BUFFER_LENGTH ACTUAL_LENGTH ERROR_COUNT HEX`` (umockdev's ioctl_tree.c,
    usbdevfs_reapurb_write): the buffer is ACTUAL_LENGTH bytes for an IN endpoint, else
    BUFFER_LENGTH (a control URB: its setup, then the data). The device and configuration
    descriptors are not in it but in ``umockdev-record``'s description of the device."""
    profile = Profile(kind="keyboard", vid=0x0C2E, pid=0x0B61, serial="K9", address=5)
    descriptor = profile.report_descriptor
    setup = struct.pack("<BBHHH", 0x81, 6, 0x2200, 0, 4096)
    control = (setup + descriptor).ljust(8 + 4096, b"\0")
    key, release = bytes([0, 0, 0x27, 0, 0, 0, 0, 0]), bytes(8)
    recording = tmp_path / "scan-test.ioctl"
    recording.write_text(
        "@DEV /dev/bus/usb/063/005 (usbdevfs)\n"
        "USBDEVFS_GET_CAPABILITIES 0 1F000000\n"
        f"USBDEVFS_REAPURBNDELAY 0 2 0 0 0 4104 {len(descriptor)} 0 {control.hex().upper()}\n"
        f"USBDEVFS_REAPURBNDELAY 0 1 129 0 0 8 8 0 {key.hex().upper()}\n"
        f" USBDEVFS_REAPURBNDELAY 0 1 129 0 0 8 8 0 {release.hex().upper()}\n"
    )
    description = tmp_path / "scanner.umockdev"
    description.write_text(hid_umockdev.umockdev_description(profile))

    alone = hid_umockdev.check(recording)
    assert alone.problems == [] and alone.reports == [key, release]
    assert alone.usb is None  # no enumeration in an ioctl recording
    described = hid_umockdev.check(recording, description=description)
    assert described.usb is not None and described.usb["vid"] == "0c2e"
    assert described.usb["serial"] == "K9" and described.usb["kind"] == "keyboard"
    assert described.descriptor == descriptor

    bad = tmp_path / "bad.ioctl"
    bad.write_text("@DEV /dev/bus/usb/063/005 (usbdevfs)\nUSBDEVFS_REAPURB 0 1 129 0 0 8 8 0 ABC\n")
    assert "odd number of hex digits" in hid_umockdev.check(bad).problems[0]
    assert "no USB device" in hid_umockdev.check(recording, description=bad).problems[0]


def test_the_root_hub_is_not_taken_for_the_scanner(tmp_path: Path) -> None:
    capture = tmp_path / "bus.pcap"
    # Address 1 is the root hub: its interrupt endpoint reports port changes.
    _write(capture, _report(1, 1, 1, bytes([2])) + _report(1, 7, 2, bytes(8)))
    checked = hid_umockdev.check(capture)
    assert checked.problems == [] and checked.notes[0].startswith("device 1:7")


def test_a_pcapng_cut_short_says_so(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcapng"
    _desc, traffic = hid_umockdev.convert(DATA / "kbd-gs-f8.hid", tmp_path)
    hid_umockdev.write_pcap(capture, hid_umockdev.read_urbs(traffic))
    # A pcapng whose last block is cut: built from blocks, then truncated.
    blocks = struct.pack("<II", 0x0A0D0D0A, 28) + struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    blocks += struct.pack("<I", 28)
    blocks += struct.pack("<IIHHII", 1, 20, 220, 0, 65535, 20)
    packet = hid_umockdev.read_urbs(traffic)[0].pack()
    body = struct.pack("<IIIII", 0, 0, 0, len(packet), len(packet)) + packet
    blocks += struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    capture.write_bytes(blocks[:-10])
    assert "ends inside the block" in hid_umockdev.check(capture).problems[0]
