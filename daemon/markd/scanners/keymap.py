"""HID keyboard usages to characters, independent of the operating system's keyboard layout.

A keyboard-mode scanner does not send characters; it sends key positions (HID usages from the
Keyboard/Keypad page 0x07, HID Usage Tables §10) and expects the host's layout to turn them
into text. Under the Russian ЙЦУКЕН layout that turns the serial and crypto tail of a marking
code into Cyrillic (domain.md §8.2). markd reads the reports itself with pyusb and maps usages
through the US layout below, which is what the scanner assumes unless its own "keyboard
country" setting says otherwise; so the OS layout no longer matters.

>>> character(0x04, shift=False), character(0x04, shift=True), character(0x1F, shift=True)
('a', 'A', '@')
>>> character(0x04, shift=False, caps_lock=True), character(0x04, shift=True, caps_lock=True)
('A', 'a')
>>> control_character(0x30, shift=False) == "\\x1d"    # Ctrl+] is GS
True
>>> key_for("@")
(31, True)

The module is pure data and functions; :mod:`markd.scanners.hid_keyboard` keeps the state
(modifiers, Caps Lock, Alt sequences).
"""

from __future__ import annotations

# Modifier bits of byte 0 of a boot keyboard report (HID 1.11, appendix B.1).
LEFT_CTRL = 0x01
LEFT_SHIFT = 0x02
LEFT_ALT = 0x04
LEFT_GUI = 0x08
RIGHT_CTRL = 0x10
RIGHT_SHIFT = 0x20
RIGHT_ALT = 0x40
RIGHT_GUI = 0x80
CTRL = LEFT_CTRL | RIGHT_CTRL
SHIFT = LEFT_SHIFT | RIGHT_SHIFT
ALT = LEFT_ALT | RIGHT_ALT
GUI = LEFT_GUI | RIGHT_GUI

# Usages with a meaning of their own.
ERROR_ROLL_OVER = 0x01  # "too many keys": the report carries no key information
POST_FAIL = 0x02
ERROR_UNDEFINED = 0x03
ENTER = 0x28
ESCAPE = 0x29
BACKSPACE = 0x2A
TAB = 0x2B
SPACE = 0x2C
RIGHT_BRACKET = 0x30
CAPS_LOCK = 0x39
F1 = 0x3A
NUM_LOCK = 0x53
KEYPAD_ENTER = 0x58

#: Usages that flag a broken report rather than a key (HID Usage Tables §10, 01–03).
ERROR_USAGES = frozenset({ERROR_ROLL_OVER, POST_FAIL, ERROR_UNDEFINED})

#: ``"f1"`` … ``"f12"`` → usage (0x3A … 0x45).
FUNCTION_KEYS: dict[str, int] = {f"f{n}": F1 + n - 1 for n in range(1, 13)}

_LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: Main-block keys of the US layout: usage → (character without Shift, with Shift).
US_KEYS: dict[int, tuple[str, str]] = {
    **{0x04 + i: (c, c.upper()) for i, c in enumerate(_LETTERS)},
    **{0x1E + i: (d, s) for i, (d, s) in enumerate(zip("1234567890", "!@#$%^&*()", strict=True))},
    ENTER: ("\r", "\r"),
    TAB: ("\t", "\t"),
    SPACE: (" ", " "),
    0x2D: ("-", "_"),
    0x2E: ("=", "+"),
    0x2F: ("[", "{"),
    RIGHT_BRACKET: ("]", "}"),
    0x31: ("\\", "|"),
    # "Non-US # and ~", the key next to Enter on ISO boards. A US layout has no such key;
    # Linux (hid-input maps 0x32 to KEY_BACKSLASH, like 0x31) and Windows (scan code 0x2B,
    # the backslash key) both type \ and | with it, so a scanner that uses it means those.
    0x32: ("\\", "|"),
    0x33: (";", ":"),
    0x34: ("'", '"'),
    0x35: ("`", "~"),
    0x36: (",", "<"),
    0x37: (".", ">"),
    0x38: ("/", "?"),
    0x64: ("\\", "|"),  # "Non-US \ and |", the extra key left of Z on ISO boards
}

#: Keypad keys that type the same with Num Lock on or off.
KEYPAD_SYMBOLS: dict[int, str] = {
    0x54: "/",
    0x55: "*",
    0x56: "-",
    0x57: "+",
    KEYPAD_ENTER: "\r",
    0x67: "=",
}

#: Keypad digits (Num Lock on) and the keypad dot: usage → character. With Num Lock off they
#: are cursor keys and type nothing. Alt+keypad-digit sequences use :data:`KEYPAD_DIGITS`.
KEYPAD_NUMBERS: dict[int, str] = {
    **{0x59 + i: str(i + 1) for i in range(9)},
    0x62: "0",
    0x63: ".",
}
KEYPAD_DIGITS: dict[int, int] = {u: int(c) for u, c in KEYPAD_NUMBERS.items() if c.isdigit()}

#: Ctrl+key → ASCII control character, as terminals and Windows produce them. Ctrl+] (GS) is
#: one of the ways scanners send the GS1 separator (domain.md §8.2).
_CTRL_UNSHIFTED = {
    0x2F: "\x1b",  # Ctrl+[  ESC
    0x31: "\x1c",  # Ctrl+\  FS
    RIGHT_BRACKET: "\x1d",  # Ctrl+]  GS
}
_CTRL_SHIFTED = {
    0x23: "\x1e",  # Ctrl+^ (Shift+6)  RS
    0x2D: "\x1f",  # Ctrl+_ (Shift+-)  US
    RIGHT_BRACKET: "\x1d",  # Ctrl+} still means Ctrl+] to every terminal
}


def is_letter(usage: int) -> bool:
    """True for the usages of the letters a–z (Caps Lock affects only these)."""
    return 0x04 <= usage <= 0x1D


def character(
    usage: int, *, shift: bool, caps_lock: bool = False, num_lock: bool = True
) -> str | None:
    """The character the key types on a US layout, or None for keys that type nothing
    (function keys, arrows, Escape, Backspace, locks, keypad digits with Num Lock off)."""
    pair = US_KEYS.get(usage)
    if pair is not None:
        if caps_lock and is_letter(usage):
            shift = not shift
        return pair[1] if shift else pair[0]
    if usage in KEYPAD_SYMBOLS:
        return KEYPAD_SYMBOLS[usage]
    if usage in KEYPAD_NUMBERS:
        return KEYPAD_NUMBERS[usage] if num_lock else None
    return None


def control_character(usage: int, *, shift: bool) -> str | None:
    """The control character Ctrl+key produces: Ctrl+A … Ctrl+Z are 0x01 … 0x1A, Ctrl+[ ESC,
    Ctrl+\\ FS, Ctrl+] GS, Ctrl+^ RS, Ctrl+_ US; None for other keys."""
    if is_letter(usage):
        return chr(usage - 0x04 + 1)
    table = _CTRL_SHIFTED if shift else _CTRL_UNSHIFTED
    return table.get(usage)


def _build_reverse() -> dict[str, tuple[int, bool]]:
    reverse: dict[str, tuple[int, bool]] = {}
    # Lowest usage first, so "\\" maps to 0x31 and not to the ISO keys 0x32 or 0x64, and "~"
    # to 0x35 with Shift, the US key.
    for usage in sorted(US_KEYS):
        plain, shifted = US_KEYS[usage]
        reverse.setdefault(plain, (usage, False))
        reverse.setdefault(shifted, (usage, True))
    return reverse


_REVERSE = _build_reverse()


def key_for(char: str) -> tuple[int, bool]:
    """The (usage, Shift needed) that types ``char`` on a US layout; ``KeyError`` if no key does.

    The inverse of :func:`character`, used to encode test streams (:mod:`markd.scanners.simulated`).
    """
    return _REVERSE[char]
