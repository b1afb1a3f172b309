"""Capture files (markd.scanners.capture): markd's hex format and usbhid-dump output."""

from __future__ import annotations

import doctest

import pytest

from markd.scanners import capture
from markd.scanners.capture import CaptureError, read_hid_capture, write_hid_capture


def test_module_examples_run() -> None:
    assert doctest.testmod(capture).failed == 0


def test_markd_format_with_comments_directives_and_spacing() -> None:
    text = (
        "# a comment\n"
        "# descriptor: 05 01 09 06\n"
        "\n"
        "00 00 04 00 00 00 00 00\n"
        "# delay 0.25\n"
        "# delay 0.25\n"
        "0000000000000000\n"
        "00:00:05:00:00:00:00:00\n"
        "# unplug\n"
        "  00 00 06 00 00 00 00 00  \n"
    )
    c = read_hid_capture(text)
    assert c.descriptor == bytes.fromhex("05010906")
    assert [(e.data[2:3].hex(), e.delay, e.unplug) for e in c.entries] == [
        ("04", 0.0, False),
        ("00", 0.5, False),
        ("05", 0.0, False),
        ("", 0.0, True),
        ("06", 0.0, False),
    ]
    assert len(c.reports) == 4
    assert c.entries[-1].line == 10


def test_usbhid_dump_output_with_wrapped_reports_and_timestamps() -> None:
    text = (
        "001:007:000:DESCRIPTOR         1714035000.000000\n"
        " 05 8C 09 02 A1 01\n"
        " C0\n"
        "\n"
        "001:007:000:STREAM             1714035000.004000\n"
        " " + " ".join(["41"] * 32) + "\n"
        " 42 43\n"
        "\n"
        "001:007:000:STREAM             1714035000.504000\n"
        " 44\n"
    )
    c = read_hid_capture(text)
    assert c.descriptor == bytes.fromhex("058c0902a101c0")
    assert [len(r) for r in c.reports] == [34, 1]
    assert c.entries[1].delay == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("00 0\n", "line 1: odd number"),
        ("\n\nzz zz\n", "line 3: not hex"),
        ("# delay soon\n", "line 1: '# delay SECONDS'"),
        ("# delay 99999\n", "delay out of range"),
        ("00" * 5000 + "\n", "too long"),
    ],
)
def test_bad_lines_are_named(text: str, problem: str) -> None:
    with pytest.raises(CaptureError) as err:
        read_hid_capture(text)
    assert problem in str(err.value)


def test_write_then_read_round_trip() -> None:
    reports = [(bytes([0, 0, 4, 0, 0, 0, 0, 0]), 0.0), (None, 0.0), (bytes(8), 0.75)]
    text = write_hid_capture(reports, descriptor=b"\x05\x01", comment="two\nlines")
    assert text.startswith("# two\n# lines\n# descriptor: 05 01\n")
    back = read_hid_capture(text)
    assert back.descriptor == b"\x05\x01"
    assert [(e.data, e.delay, e.unplug) for e in back.entries] == [
        (reports[0][0], 0.0, False),
        (b"", 0.0, True),
        (bytes(8), 0.75, False),
    ]
