"""Every recording in tests/data/scanners decodes to the codes its header promises, through the
offline replay (the same decoders and framer as the daemon; the daemon path itself is run over
the simulated USB bus in tests/integration/test_scanner_contract.py)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from markd.scanners import replay
from markd.scanners.capture import read_hid_capture
from markd.scanners.replay import decode_hid_keyboard, decode_hid_pos, decode_serial

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
    from markd.scanners.capture import Capture, CaptureEntry
    from markd.scanners.simulated import keyboard_reports

    first = [CaptureEntry(r) for r in keyboard_reports("AAA", terminator="")]
    second = [
        CaptureEntry(r, 0.2 if i == 0 else 0.0)
        for i, r in enumerate(keyboard_reports("BBB", terminator=""))
    ]
    capture = Capture(first + second)
    assert codes(decode_hid_keyboard(capture, terminator="none", gap_ms=100)) == [b"AAA", b"BBB"]
    assert codes(decode_hid_keyboard(capture, terminator="none", gap_ms=300)) == [b"AAABBB"]
