"""HID-POS decoding: report descriptors (markd.scanners.hid_descriptor) and scanned-data reports
(markd.scanners.hid_pos): data assembled across reports, symbology kept, GS passed through."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markd.scanners import hid_descriptor, hid_pos
from markd.scanners.base import BadReport
from markd.scanners.hid_descriptor import has_usage_page, parse_report_descriptor
from markd.scanners.hid_pos import (
    STANDARD_LAYOUT,
    STANDARD_REPORT_DESCRIPTOR,
    STANDARD_REPORT_LENGTH,
    HidPosDecoder,
    PosLayout,
)
from markd.scanners.simulated import KEYBOARD_REPORT_DESCRIPTOR, pos_reports

WATER = b"0104680029460908215jcmHzLmkdPML\x1d938p9E"


@pytest.mark.parametrize("module", [hid_descriptor, hid_pos], ids=lambda m: m.__name__)
def test_module_examples_run(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


def test_standard_layout_offsets() -> None:
    layout = STANDARD_LAYOUT
    assert layout.report_id == 2
    assert (layout.data.bit_offset, layout.data.count) == (4 * 8, 56)
    assert layout.byte_count is not None and layout.byte_count[0].bit_offset == 0
    assert [f.bit_offset + i * 8 for f, i in layout.symbology] == [8, 16, 24]
    assert layout.continued is not None and layout.continued[0].bit_offset == 60 * 8
    assert layout.length == STANDARD_REPORT_LENGTH


def test_keyboard_descriptor_parses_to_modifiers_reserved_and_keys() -> None:
    fields = parse_report_descriptor(KEYBOARD_REPORT_DESCRIPTOR)
    assert [(f.bit_offset, f.bit_size, f.count) for f in fields] == [
        (0, 1, 8),
        (8, 8, 1),
        (16, 8, 6),
    ]
    assert fields[0].usage(0) == 0x000700E0 and fields[0].usage(7) == 0x000700E7
    assert fields[1].constant
    assert has_usage_page(KEYBOARD_REPORT_DESCRIPTOR, 0x07)
    assert not has_usage_page(KEYBOARD_REPORT_DESCRIPTOR, 0x8C)
    assert has_usage_page(STANDARD_REPORT_DESCRIPTOR, 0x8C)


def test_push_pop_and_four_byte_usages() -> None:
    descriptor = bytes.fromhex(
        "05 01 a4 05 8c 75 08 95 02 0b fe 00 8c 00 81 02 b4 09 3b 75 10 95 01 81 02"
    )
    first, second = parse_report_descriptor(descriptor)
    assert first.usage(0) == 0x008C00FE and (first.bit_size, first.count) == (8, 2)
    # After Pop the page is Generic Desktop again; Report Size 16 was set after the Pop.
    assert second.usage(0) == 0x0001003B and (second.bit_offset, second.bit_size) == (16, 16)


@pytest.mark.parametrize(
    "descriptor",
    [
        "05",  # item runs past the end
        "b4",  # Pop without Push
        "85 00",  # report ID 0
        "75 00 95 01 81 02",  # report size 0
        "19 05 29 01",  # usage maximum below minimum
        "0c",  # reserved item type
        "fe 05",  # truncated long item
    ],
)
def test_broken_descriptors_are_typed_errors(descriptor: str) -> None:
    with pytest.raises(BadReport):
        parse_report_descriptor(bytes.fromhex(descriptor))


def test_a_descriptor_without_decoded_data_has_no_layout() -> None:
    with pytest.raises(BadReport):
        PosLayout.from_descriptor(KEYBOARD_REPORT_DESCRIPTOR)


def test_one_report_scan_with_symbology_and_gs() -> None:
    (report,) = pos_reports(WATER, symbology="]d2")
    chunk = HidPosDecoder().feed(report)
    assert chunk is not None
    assert (chunk.data, chunk.symbology, chunk.continued) == (WATER, "]d2", False)
    assert b"\x1d" in chunk.data


def test_scan_split_across_reports() -> None:
    reports = pos_reports(WATER * 3, chunk=20)
    decoder = HidPosDecoder()
    chunks = [decoder.feed(r) for r in reports]
    assert [c.continued for c in chunks if c] == [True] * (len(reports) - 1) + [False]
    assert b"".join(c.data for c in chunks if c) == WATER * 3


def test_two_letter_symbology_gets_its_bracket_and_zeros_mean_none() -> None:
    decoder = HidPosDecoder()
    assert decoder.feed(pos_reports(WATER, symbology="d2")[0]).symbology == "]d2"  # type: ignore[union-attr]
    assert decoder.feed(pos_reports(WATER, symbology="")[0]).symbology is None  # type: ignore[union-attr]


def test_other_report_ids_are_skipped() -> None:
    decoder = HidPosDecoder()
    assert decoder.feed(bytes([0x04, 1, 2, 3])) is None
    assert decoder.feed(b"") is None
    assert decoder.ignored == 2


def test_short_report_and_impossible_byte_count_are_typed_errors() -> None:
    decoder = HidPosDecoder()
    with pytest.raises(BadReport):
        decoder.feed(bytes([0x02, 3]) + b"]d2abc")
    report = bytearray(pos_reports(WATER)[0])
    report[1] = 57
    with pytest.raises(BadReport):
        decoder.feed(bytes(report))


def test_vendor_layout_from_its_descriptor() -> None:
    # Report ID 2, Byte Count, 56 data bytes, 4 reserved, a vendor symbology byte, no
    # continued flag: the offsets come from the descriptor, not from assumptions.
    descriptor = bytes.fromhex(
        "05 8c 09 02 a1 01 85 02 15 00 26 ff 00 75 08 95 01 05 01 09 3b 81 02"
        " 05 8c 09 fe 95 38 82 02 01 95 04 81 03 06 00 ff 09 01 95 01 81 02 c0"
    )
    layout = PosLayout.from_descriptor(descriptor)
    assert (layout.data.bit_offset, layout.symbology, layout.continued) == (8, (), None)
    report = bytes([2, len(WATER)]) + WATER.ljust(56, b"\0") + bytes(4) + b"d"
    chunk = HidPosDecoder(layout).feed(report)
    assert chunk is not None and (chunk.data, chunk.continued) == (WATER, False)


def test_layout_without_byte_count_ends_data_at_trailing_zeros() -> None:
    descriptor = bytes.fromhex("05 8c 75 08 95 10 09 fe 81 02")
    layout = PosLayout.from_descriptor(descriptor)
    assert layout.report_id is None and layout.byte_count is None
    chunk = HidPosDecoder(layout).feed(b"abc\x1d93".ljust(16, b"\0"))
    assert chunk is not None and chunk.data == b"abc\x1d93"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_descriptors_raise_only_bad_report(data: bytes) -> None:
    try:
        layout = PosLayout.from_descriptor(data)
    except BadReport:
        return
    assert layout.data.bit_size == 8


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_reports_raise_only_bad_report(data: bytes) -> None:
    try:
        chunk = HidPosDecoder().feed(data)
    except BadReport:
        return
    assert chunk is None or len(chunk.data) <= 56
