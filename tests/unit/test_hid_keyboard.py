"""The keyboard-mode decoder (markd.scanners.hid_keyboard.KeyboardDecoder): boot reports in,
the bytes a scanner meant out, whatever its GS convention and however fast it types."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markd.errors import ScannerError
from markd.scanners import hid_descriptor, hid_keyboard, keymap
from markd.scanners.base import BadReport
from markd.scanners.hid_descriptor import BOOT_KEYBOARD_LAYOUT, keyboard_layout
from markd.scanners.hid_keyboard import KeyboardDecoder
from markd.scanners.simulated import KEYBOARD_REPORT_DESCRIPTOR, keyboard_reports

GS = "\x1d"
WATER = f"0104680029460908215jcmHzLmkdPML{GS}938p9E"
SHOES = (
    f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A="
)


def report(modifiers: int = 0, *keys: int) -> bytes:
    return bytes([modifiers, 0, *keys, *([0] * (6 - len(keys)))])


def decode(reports: list[bytes], **options: object) -> bytes:
    decoder = KeyboardDecoder(**options)  # type: ignore[arg-type]
    return b"".join(decoder.feed(r) for r in reports)


@pytest.mark.parametrize("module", [hid_keyboard, hid_descriptor], ids=lambda m: m.__name__)
def test_module_examples_run(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("gs", ["ctrl+]", "alt+0029", "f8"])
def test_each_gs_convention_gives_the_gs_byte(gs: str) -> None:
    decoder = KeyboardDecoder()
    data = b"".join(decoder.feed(r) for r in keyboard_reports(SHOES, gs=gs))
    assert data == SHOES.encode() + b"\r"
    assert decoder.gs_methods == {gs: 2}


def test_gs_key_is_configurable_and_f8_then_types_nothing() -> None:
    reports = keyboard_reports(WATER, gs="f2")
    assert decode(reports, gs_key="f2") == WATER.encode() + b"\r"
    # With the default F8 the F2 press is an unknown key: ignored, so GS is missing.
    assert decode(reports) == WATER.replace(GS, "").encode() + b"\r"
    assert decode(keyboard_reports(WATER, gs="f8"), gs_key="none") == (
        WATER.replace(GS, "").encode() + b"\r"
    )


def test_unknown_gs_key_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyboardDecoder("f13")


def test_lost_gs_stays_lost() -> None:
    decoder = KeyboardDecoder()
    data = b"".join(decoder.feed(r) for r in keyboard_reports(WATER, gs="lost"))
    assert data == WATER.replace(GS, "").encode() + b"\r"
    assert not decoder.gs_methods


def test_shift_gives_upper_case_and_symbols() -> None:
    assert (
        decode(
            [report(keymap.LEFT_SHIFT, 0x04), report(), report(keymap.RIGHT_SHIFT, 0x1F), report()]
        )
        == b"A@"
    )


def test_caps_lock_state_is_tracked_from_the_stream() -> None:
    decoder = KeyboardDecoder()
    assert decoder.feed(report(0, keymap.CAPS_LOCK)) == b""
    assert decoder.caps_lock
    assert decoder.feed(report()) == b""
    assert decoder.feed(report(0, 0x04)) == b"A"
    assert decoder.feed(report(keymap.LEFT_SHIFT, 0x05)) == b"b"
    assert decoder.feed(report(0, 0x1E)) == b"1"  # digits are not letters
    decoder.feed(report(0, keymap.CAPS_LOCK))
    assert not decoder.caps_lock
    assert decoder.feed(report(0, 0x06)) == b"c"


def test_caps_lock_emulating_scanner_decodes_to_the_code() -> None:
    assert decode(keyboard_reports(WATER, caps_lock=True)) == WATER.encode() + b"\r"


def test_caps_lock_left_on_by_a_scanner_inverts_case_as_it_would_on_screen() -> None:
    # A scanner that toggles Caps Lock but then types as if it were off: the case inverts,
    # exactly as on a screen. markd must not "fix" this silently: the crypto tail is
    # case-sensitive, so only the check services can tell, and scan-test shows the text.
    reports = [report(0, keymap.CAPS_LOCK), report(), *keyboard_reports("abC")]
    assert decode(reports) == b"ABc\r"


def test_key_rollover_and_repeated_reports() -> None:
    reports = keyboard_reports(SHOES, rollover=True, repeat=True)
    assert decode(reports) == SHOES.encode() + b"\r"
    # Pressing a second key while the first is held types only the second.
    assert decode([report(0, 0x04), report(0, 0x04, 0x05), report(0, 0x05), report()]) == b"ab"
    # The same report twice is one key press.
    assert decode([report(0, 0x04), report(0, 0x04), report(), report(0, 0x04)]) == b"aa"


def test_the_same_letter_twice_needs_a_release_between() -> None:
    assert decode(keyboard_reports("aab", rollover=True)) == b"aab\r"


def test_alt_numpad_codes() -> None:
    decoder = KeyboardDecoder()
    assert decode(keyboard_reports("A1;", alt_codes=True)) == b"A1;\r"
    # Alt+29 without the leading zero, the way some scanners send it, is GS too.
    kp2, kp9 = 0x5A, 0x61
    stream = [
        report(keymap.LEFT_ALT),
        report(keymap.LEFT_ALT, kp2),
        report(keymap.LEFT_ALT),
        report(keymap.LEFT_ALT, kp9),
        report(keymap.LEFT_ALT),
        report(),
    ]
    assert b"".join(decoder.feed(r) for r in stream) == b"\x1d"
    assert decoder.gs_methods == {"alt+0029": 1}


def test_alt_code_ends_when_alt_is_released_in_the_same_report_as_the_next_key() -> None:
    kp6, kp5 = 0x5E, 0x5D
    stream = [report(keymap.LEFT_ALT, kp6), report(keymap.LEFT_ALT, kp5), report(0, 0x05)]
    assert decode(stream) == b"Ab"  # Alt+65 is 'A', then b


def test_alt_codes_above_127_follow_the_windows_code_pages() -> None:
    kp = {str(d): u for u, d in keymap.KEYPAD_DIGITS.items()}

    def alt(digits: str) -> list[bytes]:
        keys = [report(keymap.LEFT_ALT, kp[d]) for d in digits]
        return [x for k in keys for x in (k, report(keymap.LEFT_ALT))] + [report()]

    assert decode(alt("0128")) == "€".encode()  # leading zero: ANSI (cp1252)
    assert decode(alt("128")) == "Ç".encode()  # no zero: OEM (cp437)
    assert decode(alt("0")) == b""  # NUL types nothing


def test_alt_with_other_keys_and_gui_combinations_type_nothing() -> None:
    decoder = KeyboardDecoder()
    stream = [report(keymap.LEFT_ALT, 0x04), report(), report(keymap.LEFT_GUI, 0x05), report()]
    assert b"".join(decoder.feed(r) for r in stream) == b""
    assert decoder.ignored == 2


def test_error_rollover_reports_are_ignored_and_keep_the_state() -> None:
    stream = [report(0, 0x04), report(0, *[keymap.ERROR_ROLL_OVER] * 6), report(0, 0x04)]
    assert decode(stream) == b"a"  # 'a' was held throughout: one press


def test_keys_that_type_nothing_are_counted() -> None:
    decoder = KeyboardDecoder()
    for usage in (keymap.ESCAPE, 0x4F, 0x3A):  # Escape, Right arrow, F1
        decoder.feed(report(0, usage))
        decoder.feed(report())
    assert decoder.ignored == 3


def test_num_lock_toggles_keypad_digits() -> None:
    decoder = KeyboardDecoder()
    assert decoder.feed(report(0, 0x59)) == b"1"
    decoder.feed(report(0, keymap.NUM_LOCK))
    decoder.feed(report())
    assert decoder.feed(report(0, 0x59)) == b""


def test_short_report_is_a_typed_error() -> None:
    with pytest.raises(BadReport) as err:
        KeyboardDecoder().feed(b"\x00\x00")
    assert err.value.reason == "bad-report"


def test_reset_forgets_held_keys_and_locks() -> None:
    decoder = KeyboardDecoder()
    decoder.feed(report(0, keymap.CAPS_LOCK))
    decoder.feed(report(0, 0x04))
    decoder.reset()
    assert not decoder.caps_lock
    assert decoder.feed(report(0, 0x04)) == b"a"  # a fresh press after the reset


_code_chars = st.text(
    alphabet=st.sampled_from(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!\"%&'*+-./_,:;=<>?" + GS
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    text=_code_chars,
    gs=st.sampled_from(["ctrl+]", "alt+0029", "f8"]),
    caps_lock=st.booleans(),
    rollover=st.booleans(),
    repeat=st.booleans(),
    alt_codes=st.booleans(),
)
def test_any_code_survives_any_way_of_typing_it(
    text: str, gs: str, caps_lock: bool, rollover: bool, repeat: bool, alt_codes: bool
) -> None:
    reports = keyboard_reports(
        text, gs=gs, caps_lock=caps_lock, rollover=rollover, repeat=repeat, alt_codes=alt_codes
    )
    assert decode(reports) == text.encode() + b"\r"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=12), max_size=40))
def test_garbage_reports_raise_only_bad_report(reports: list[bytes]) -> None:
    decoder = KeyboardDecoder()
    for r in reports:
        try:
            out = decoder.feed(r)
        except BadReport:
            decoder.reset()
            continue
        assert isinstance(out, bytes)


# --------------------------------------------------------------------------------------------
# Report descriptors: report IDs, layouts markd cannot read, the LED report

#: A composite keyboard + consumer-control descriptor, as non-boot keyboard interfaces have:
#: report 1 is the boot arrangement (modifiers, reserved byte, 6 key slots) with the 5 LEDs
#: as its output, report 2 a 16-bit consumer usage (volume, play...).
KEYBOARD_WITH_REPORT_IDS = bytes.fromhex(
    "05 01 09 06 a1 01 85 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01"
    " 05 08 19 01 29 05 95 05 75 01 91 02 95 01 75 03 91 01"
    " 95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
    " 05 0c 09 01 a1 01 85 02 15 00 26 ff 03 19 00 2a ff 03 75 10 95 01 81 00 c0"
)

#: An N-key-rollover keyboard: modifiers, reserved byte, then one bit per key.
KEYBOARD_NKRO_BITMAP = bytes.fromhex(
    "05 01 09 06 a1 01 85 04 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01 19 00 29 67 75 01 95 68 81 02 c0"
)


def test_a_descriptor_with_report_ids_gives_the_keyboard_report_and_its_leds() -> None:
    layout = keyboard_layout(KEYBOARD_WITH_REPORT_IDS)
    assert (layout.report_id, layout.keys_start, layout.keys_end) == (1, 2, 8)
    assert layout.input_length == 9  # report ID + 8 bytes
    # SET_REPORT data: report ID 1, then Num Lock (bit 0) on, Caps Lock (bit 1) off.
    assert (layout.led_report_id, layout.led_report()) == (1, b"\x01\x01")
    assert layout.led_report(num_lock=False, caps_lock=True) == b"\x01\x02"


def test_the_boot_descriptor_has_no_report_id() -> None:
    layout = keyboard_layout(KEYBOARD_REPORT_DESCRIPTOR)
    assert (layout.report_id, layout.keys_start, layout.keys_end) == (None, 2, 8)
    assert layout.led_report() is None  # this descriptor declares no LED output
    assert BOOT_KEYBOARD_LAYOUT.led_report() == b"\x01"  # the boot protocol's LED byte


def test_decoder_strips_the_report_id_and_skips_other_reports() -> None:
    decoder = KeyboardDecoder(layout=keyboard_layout(KEYBOARD_WITH_REPORT_IDS))
    consumer = [b"\x02\xe9\x00", b"\x02\x00\x00"]  # Volume Up pressed and released
    stream = [b"\x01" + r for r in keyboard_reports(WATER, gs="ctrl+]")]
    stream[4:4] = consumer
    stream[30:30] = consumer
    assert b"".join(decoder.feed(r) for r in stream) == WATER.encode() + b"\r"
    assert decoder.other_reports == 4 and decoder.ignored == 0
    # Read as a boot report, byte 0 (the ID) would be Left Control: garbage.
    assert b"".join(KeyboardDecoder().feed(r) for r in stream) != WATER.encode() + b"\r"
    with pytest.raises(BadReport):
        decoder.feed(b"\x01\x00\x00")  # the right ID, too short for a key slot


@pytest.mark.parametrize(
    ("descriptor", "found"),
    [
        (KEYBOARD_NKRO_BITMAP, "bitmap 104x1 bits at bit 16"),
        # Keys in two reports: markd would miss those of the other one.
        (
            KEYBOARD_WITH_REPORT_IDS.replace(bytes.fromhex("05 0c"), bytes.fromhex("05 07")),
            "several input reports (IDs 1, 2)",
        ),
        # A key array without the modifier byte ahead of it.
        (bytes.fromhex("05 01 09 06 a1 01 05 07 19 00 29 65 75 08 95 06 81 00 c0"), "array 6x8"),
        (bytes.fromhex("05 01 09 02 a1 01 05 09 19 01 29 03 75 01 95 03 81 02 c0"), "0x07"),
    ],
    ids=["nkro-bitmap", "keys-in-two-reports", "no-modifier-byte", "a-mouse"],
)
def test_a_layout_markd_cannot_read_is_refused_saying_what_was_found(
    descriptor: bytes, found: str
) -> None:
    with pytest.raises(ScannerError) as err:
        keyboard_layout(descriptor)
    assert err.value.reason == "unsupported-keyboard"
    assert found in err.value.message
