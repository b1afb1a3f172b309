"""Framing: cutting a scanner's byte stream into one unit per code (markd.scanners.framing)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from markd.scanners import framing
from markd.scanners.framing import TERMINATORS, Framer, Overflow

WATER = b"0104680029460908215jcmHzLmkdPML\x1d938p9E"
DAIRY = b"0104670540176099215LpGKy\x1d93dGVz"


def test_module_examples_run() -> None:
    assert doctest.testmod(framing).failed == 0


def test_one_code_with_cr() -> None:
    assert Framer(b"\r").feed(WATER + b"\r") == [WATER]


@pytest.mark.parametrize("name", ["cr", "lf", "crlf", "tab"])
def test_each_terminator_splits_a_burst_of_codes(name: str) -> None:
    terminator = TERMINATORS[name]
    assert terminator is not None
    framer = Framer(terminator)
    assert framer.feed(WATER + terminator + DAIRY + terminator) == [WATER, DAIRY]
    assert framer.pending == 0


def test_partial_code_is_kept_across_reads() -> None:
    framer = Framer(b"\r")
    assert framer.feed(WATER[:10]) == []
    assert framer.pending == 10
    assert framer.feed(WATER[10:]) == []
    assert framer.feed(b"\r") == [WATER]


def test_cr_also_swallows_a_following_lf_even_in_the_next_read() -> None:
    framer = Framer(b"\r")
    assert framer.feed(WATER + b"\r") == [WATER]
    # The LF of a CR LF scanner arrives in the next read: it must not start the next unit.
    assert framer.feed(b"\n" + DAIRY + b"\r\n") == [DAIRY]
    assert framer.pending == 0


def test_lf_strips_a_preceding_cr() -> None:
    assert Framer(b"\n").feed(WATER + b"\r\n") == [WATER]


def test_crlf_split_across_reads() -> None:
    framer = Framer(b"\r\n")
    assert framer.feed(WATER + b"\r") == []
    assert framer.feed(b"\n") == [WATER]


def test_empty_units_are_skipped() -> None:
    assert Framer(b"\r").feed(b"\r\r" + WATER + b"\r\r") == [WATER]


def test_flood_without_terminator_is_reported_at_once_and_never_buffered() -> None:
    framer = Framer(b"\r", max_length=64)
    events = []
    for _ in range(100):
        events += framer.feed(b"x" * 50)
        assert framer.pending <= 64
    # Reported when the limit was crossed (the second read: 100 bytes held), not per read.
    assert events == [Overflow(100, ended=False)]
    # The rest of the flood up to its terminator is discarded, then framing resumes.
    assert framer.feed(b"tail of the flood\r" + DAIRY + b"\r") == [Overflow(5017), DAIRY]


def test_the_final_overflow_counts_every_byte_of_the_flood() -> None:
    # 100 reads of 50 bytes and a 17-byte tail: 5017 bytes dropped, the CR not among them.
    # Before, the only record said 100: the bytes held when the limit was crossed.
    framer = Framer(b"\r", max_length=64)
    events = []
    for _ in range(100):
        events += framer.feed(b"x" * 50)
    events += framer.feed(b"tail of the flood\r")
    assert [e.dropped for e in events if isinstance(e, Overflow) and e.ended] == [5017]


def test_a_flood_ended_by_a_pause_is_counted_whole() -> None:
    framer = Framer(None, max_length=20)
    assert framer.feed(b"Y" * 25) == [Overflow(25, ended=False)]
    assert framer.feed(b"Y" * 1000) == []
    assert framer.flush() == [Overflow(1025)]
    assert framer.flush() == []


def test_a_flood_cut_by_an_unplug_is_counted_whole() -> None:
    framer = Framer(b"\r", max_length=40)
    assert framer.feed(b"Q" * 50) == [Overflow(50, ended=False)]
    framer.feed(b"Q" * 50)
    assert framer.reset() == [Overflow(100)]
    assert framer.reset() == []
    assert framer.feed(DAIRY + b"\r") == [DAIRY]


def test_a_crlf_terminator_split_by_a_read_still_ends_a_flood() -> None:
    framer = Framer(b"\r\n", max_length=32)
    assert framer.feed(b"Z" * 40 + b"\r") == [Overflow(40, ended=False)]
    assert framer.pending <= 1  # at most the CR, kept until the next read tells
    assert framer.feed(b"\n" + DAIRY + b"\r\n") == [Overflow(40), DAIRY]


def test_a_unit_left_by_discard_ends_without_an_overflow() -> None:
    # discard() (an unreadable HID report mid-unit) reports its own bytes; the framer adds
    # no "too-long" record when that unit ends.
    framer = Framer(b"\r", max_length=40)
    framer.feed(b"0104")
    assert framer.discard() == 4
    assert framer.feed(b"Z" * 50 + b"\r" + DAIRY + b"\r") == [DAIRY]


def test_overlong_unit_inside_one_read_is_an_overflow() -> None:
    framer = Framer(b"\r", max_length=16)
    assert framer.feed(b"y" * 20 + b"\r" + b"short\r") == [Overflow(20), b"short"]


def test_no_terminator_units_end_on_flush() -> None:
    framer = Framer(None)
    assert framer.feed(WATER) == []
    assert framer.flush() == [WATER]
    assert framer.flush() == []


def test_reset_forgets_a_partial_code() -> None:
    framer = Framer(b"\r")
    framer.feed(b"01046800")
    framer.reset()
    assert framer.feed(DAIRY + b"\r") == [DAIRY]


def test_rejects_unknown_terminator_and_bad_length() -> None:
    with pytest.raises(ValueError):
        Framer(b";")
    with pytest.raises(ValueError):
        Framer(b"\r", max_length=0)


#: Code-like units: any bytes except the terminator characters.
_units = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\t", b"") or b"x"
)


@given(
    codes=st.lists(_units, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    name=st.sampled_from(["cr", "lf", "crlf", "tab"]),
)
def test_how_reads_are_cut_never_changes_the_units(
    codes: list[bytes], cuts: list[int], name: str
) -> None:
    terminator = TERMINATORS[name]
    assert terminator is not None
    stream = b"".join(c + terminator for c in codes)
    framer = Framer(terminator)
    units = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        units += framer.feed(stream[start:cut])
        start = max(start, cut)
    assert units == codes


def test_without_terminator_the_gap_ends_a_flood_and_the_next_code_is_kept() -> None:
    # terminator=none: a code longer than max_length is dropped; the pause after it ends the
    # flood (there is no terminator to wait for), so the next code, after its own pause, is
    # kept. A framer still "discarding" would drop it silently.
    framer = Framer(None, max_length=20)
    assert framer.feed(b"Y" * 25) == [Overflow(25, ended=False)]
    assert framer.pending == 0 and framer.in_unit  # the flood is still under way
    assert framer.flush() == [Overflow(25)]  # the gap after it
    assert not framer.in_unit
    assert framer.feed(DAIRY[:16]) == []
    assert framer.flush() == [DAIRY[:16]]


def test_discard_drops_the_rest_of_a_unit_up_to_its_end() -> None:
    framer = Framer(b"\r")
    framer.feed(WATER[:20])
    assert framer.discard() == 20 and framer.in_unit
    # The tail up to the terminator belongs to the broken unit; the next code is whole.
    assert framer.feed(WATER[20:] + b"\r" + DAIRY + b"\r") == [DAIRY]
    gap_framed = Framer(None)
    gap_framed.feed(WATER[:20])
    gap_framed.discard()
    gap_framed.feed(WATER[20:])
    assert gap_framed.flush() == []  # the gap ends the broken unit
    assert gap_framed.feed(DAIRY) == [] and gap_framed.flush() == [DAIRY]
