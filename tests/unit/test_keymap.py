"""HID usage → character mapping (markd.scanners.keymap): the US layout, whatever the OS uses."""

from __future__ import annotations

import doctest
import string

import pytest

from markd.scanners import keymap

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


def test_module_examples_run() -> None:
    assert doctest.testmod(keymap).failed == 0


@pytest.mark.parametrize("char", list(PRINTABLE + "\r\t"))
def test_every_ascii_character_has_a_key_that_types_it_back(char: str) -> None:
    usage, shift = keymap.key_for(char)
    assert keymap.character(usage, shift=shift) == char


def test_digits_row_and_its_shifted_symbols() -> None:
    assert [keymap.character(0x1E + i, shift=False) for i in range(10)] == list("1234567890")
    assert [keymap.character(0x1E + i, shift=True) for i in range(10)] == list("!@#$%^&*()")


def test_caps_lock_inverts_letters_only() -> None:
    assert keymap.character(0x04, shift=False, caps_lock=True) == "A"
    assert keymap.character(0x04, shift=True, caps_lock=True) == "a"
    # Caps Lock never turns 1 into !: only Shift does.
    assert keymap.character(0x1E, shift=False, caps_lock=True) == "1"


def test_keypad_digits_follow_num_lock_and_symbols_do_not() -> None:
    assert keymap.character(0x59, shift=False) == "1"
    assert keymap.character(0x62, shift=False) == "0"
    assert keymap.character(0x59, shift=False, num_lock=False) is None
    assert keymap.character(0x55, shift=False, num_lock=False) == "*"
    assert keymap.character(keymap.KEYPAD_ENTER, shift=False) == "\r"


@pytest.mark.parametrize(
    ("usage", "shift", "expected"),
    [
        (0x30, False, "\x1d"),  # Ctrl+]  GS
        (0x30, True, "\x1d"),  # Ctrl+}  still GS
        (0x2F, False, "\x1b"),  # Ctrl+[  ESC
        (0x31, False, "\x1c"),  # Ctrl+\  FS
        (0x23, True, "\x1e"),  # Ctrl+^  RS
        (0x2D, True, "\x1f"),  # Ctrl+_  US
        (0x04, False, "\x01"),  # Ctrl+A
        (0x1D, False, "\x1a"),  # Ctrl+Z
        (0x1E, False, None),  # Ctrl+1 types nothing
    ],
)
def test_control_characters(usage: int, shift: bool, expected: str | None) -> None:
    assert keymap.control_character(usage, shift=shift) == expected


def test_keys_that_type_nothing() -> None:
    for usage in (keymap.ESCAPE, keymap.BACKSPACE, keymap.CAPS_LOCK, 0x4F, *range(0x3A, 0x46)):
        assert keymap.character(usage, shift=False) is None


def test_function_key_names() -> None:
    assert keymap.FUNCTION_KEYS["f1"] == 0x3A
    assert keymap.FUNCTION_KEYS["f8"] == 0x41
    assert keymap.FUNCTION_KEYS["f12"] == 0x45


def test_the_non_us_hash_key_types_backslash_as_linux_and_windows_us_layouts_do() -> None:
    # Usage 0x32 is the ISO key next to Enter. Under a US layout both Linux (KEY_BACKSLASH)
    # and Windows (scan code 0x2B) type \ and | with it, as with 0x31; not the UK # and ~.
    assert keymap.character(0x32, shift=False) == "\\"
    assert keymap.character(0x32, shift=True) == "|"
    assert keymap.key_for("~") == (0x35, True)  # the US key: Shift+`
    assert keymap.key_for("\\") == (0x31, False)
    assert keymap.key_for("#") == (0x20, True)  # Shift+3
