"""Every recording in tests/data/scanners decodes to the codes its header promises, through the
offline replay (the same decoders and framer as the daemon; the daemon path itself is run over
the simulated USB bus in tests/integration/test_scanner_contract.py)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from markd.scanners import replay
from markd.scanners.capture import Capture, CaptureEntry, read_hid_capture
from markd.scanners.replay import decode_hid_keyboard, decode_hid_pos, decode_serial
from markd.scanners.simulated import keyboard_reports, pos_reports

DATA = Path(__file__).resolve().parents[1] / "data" / "scanners"
KEYBOARD = sorted(DATA.glob("kbd-*.hid")) + [DATA / "garbage.hid"]
POS = sorted(DATA.glob("pos-*.hid"))


def expected(path: Path) -> list[bytes]:
    return [
        line.split("expect:", 1)[1].strip().replace("\\u001d", "\x1d").encode()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def codes(results: list[replay.Decoded]) -> list[bytes]:
    return [r.data for r in results if r.kind == "code"]


def test_module_examples_run() -> None:
    assert doctest.testmod(replay).failed == 0


def test_the_recordings_are_all_there() -> None:
    names = {p.name for p in DATA.iterdir()}
    for name in (
        "kbd-gs-ctrl.hid",
        "kbd-gs-alt0029.hid",
        "kbd-gs-f8.hid",
        "kbd-gs-lost.hid",
        "kbd-capslock.hid",
        "pos-split.hid",
        "garbage.hid",
    ):
        assert name in names


@pytest.mark.parametrize("path", KEYBOARD, ids=lambda p: p.name)
def test_keyboard_recording_decodes_to_its_codes(path: Path) -> None:
    want = expected(path)
    assert want, f"{path.name} has no '# expect:' line"
    assert codes(decode_hid_keyboard(read_hid_capture(path.read_text()))) == want


@pytest.mark.parametrize("path", POS, ids=lambda p: p.name)
def test_pos_recording_decodes_to_its_codes_with_symbology(path: Path) -> None:
    results = decode_hid_pos(read_hid_capture(path.read_text()))
    assert codes(results) == expected(path)
    assert {r.symbology for r in results} == {"]d2"}


def test_usbhid_dump_capture_with_a_vendor_layout() -> None:
    results = decode_hid_pos(read_hid_capture((DATA / "pos-vendor.usbhid-dump").read_text()))
    assert codes(results) == [
        b"0104680029460908215jcmHzLmkdPML\x1d938p9E",
        b"0104670540176099215LpGKy\x1d93dGVz",
    ]


def test_garbage_is_reported_not_buffered() -> None:
    results = decode_hid_keyboard(read_hid_capture((DATA / "garbage.hid").read_text()))
    kinds = [r.kind for r in results]
    assert kinds == ["bad-report", "dropped", "code"]
    assert results[0].line == 5
    assert results[1].detail == "700 bytes"  # the whole flood (garbage.hid's header says 700)


def test_unplug_drops_the_partial_code() -> None:
    results = decode_hid_keyboard(read_hid_capture((DATA / "kbd-unplug.hid").read_text()))
    assert [r.kind for r in results] == ["unplug", "code"]
    assert results[0].detail.startswith("20 bytes")


def test_lost_gs_recording_with_another_gs_key_still_has_no_gs() -> None:
    text = (DATA / "kbd-gs-f8.hid").read_text()
    (code,) = codes(decode_hid_keyboard(read_hid_capture(text), gs_key="none"))
    assert b"\x1d" not in code


def test_serial_burst() -> None:
    results = decode_serial((DATA / "serial-burst.bin").read_bytes())
    assert codes(results)[:2] == [
        b"0104680029460908215jcmHzLmkdPML\x1d938p9E",
        b"0104670540176099215LpGKy\x1d93dGVz",
    ]
    assert results[-1].kind == "incomplete"
    # Without a terminator the end of the capture is the gap that ends the last unit.
    assert len(codes(decode_serial(b"abc\x1d93", terminator="none"))) == 1


def test_gap_framing_uses_the_capture_pauses() -> None:
    first = [CaptureEntry(r) for r in keyboard_reports("AAA", terminator="")]
    second = [
        CaptureEntry(r, 0.2 if i == 0 else 0.0)
        for i, r in enumerate(keyboard_reports("BBB", terminator=""))
    ]
    capture = Capture(first + second)
    assert codes(decode_hid_keyboard(capture, terminator="none", gap_ms=100)) == [b"AAA", b"BBB"]
    assert codes(decode_hid_keyboard(capture, terminator="none", gap_ms=300)) == [b"AAABBB"]


WATER = b"0104680029460908215jcmHzLmkdPML\x1d938p9E"
DAIRY = b"0104670540176099215LpGKy\x1d93dGVz"


def _entries(reports: list[bytes], delay: float = 0.0) -> list[CaptureEntry]:
    """Capture entries for ``reports``, the first after ``delay`` seconds of silence."""
    return [CaptureEntry(r, delay if i == 0 else 0.0) for i, r in enumerate(reports)]


def test_without_terminator_the_gap_after_a_flood_keeps_the_next_code() -> None:
    # A scan longer than max_length, half a second of silence, a good scan: the good scan
    # is decoded (markctl decode --terminator none --max-length 20), not eaten as the
    # flood's tail. The flood's last character is the one that crosses the limit, so
    # nothing is pending when the pause comes; the pause must end the discarding anyway.
    flood = keyboard_reports("Y" * 21, terminator="")
    good = keyboard_reports(DAIRY[:16].decode(), terminator="")
    capture = Capture(_entries(flood) + _entries(good, 0.5))
    results = decode_hid_keyboard(capture, terminator="none", max_length=20)
    assert [(r.kind, r.data) for r in results] == [("dropped", b""), ("code", DAIRY[:16])]


@pytest.mark.parametrize("terminator", ["cr", "none"])
def test_an_unreadable_keyboard_report_mid_code_drops_the_rest_of_that_code(
    terminator: str,
) -> None:
    end = "\r" if terminator == "cr" else ""
    head = keyboard_reports(WATER[:20].decode(), terminator="")
    tail = keyboard_reports(WATER[20:].decode(), terminator=end)
    entries = _entries(head) + [CaptureEntry(b"\x00\x00")] + _entries(tail)
    entries += _entries(keyboard_reports(DAIRY.decode(), terminator=end), 0.2)
    results = decode_hid_keyboard(Capture(entries), terminator=terminator)
    # One record for the bad report; the code's tail is not a code of its own.
    assert [(r.kind, r.data) for r in results] == [("bad-report", b""), ("code", DAIRY)]


def test_an_unreadable_hid_pos_report_mid_scan_drops_the_rest_of_that_scan() -> None:
    first, second, third = pos_reports(WATER, chunk=16)
    broken = bytearray(second)
    broken[1] = 200  # a byte count beyond the 56-byte data field
    capture = Capture(
        _entries([first, bytes(broken), third]) + _entries(pos_reports(DAIRY, chunk=16))
    )
    results = decode_hid_pos(capture)
    assert [(r.kind, r.data) for r in results] == [("bad-report", b""), ("code", DAIRY)]
    # An unreadable report after a scan has ended breaks nothing: the next scan is kept.
    (single,) = pos_reports(b"abc")
    broken = bytearray(single)
    broken[1] = 200
    capture = Capture(_entries([bytes(broken), *pos_reports(DAIRY, chunk=16)]))
    assert codes(decode_hid_pos(capture)) == [DAIRY]
