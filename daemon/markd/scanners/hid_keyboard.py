"""Keyboard-mode ("wedge") USB scanners, read directly with pyusb.

URL forms
---------

``hid-kbd://VID:PID?OPTIONS``
    The scanner's USB vendor and product id as ``lsusb`` prints them: ``hid-kbd://0c2e:0b61``.

``hid-kbd:///dev/PATH?OPTIONS``
    A udev symlink to the scanner's USB device node, as markd's rules create them:
    ``hid-kbd:///dev/markd/scanner-usb-0c2e-0b61``. The link is resolved at every open, so a
    replug (new device address) is followed.

Options: ``serial`` (the USB serial number; required when several identical scanners are
attached), ``interface`` (the interface number; default: the first boot-keyboard interface,
else the first HID one), ``gs_key`` (``f1`` … ``f12`` or ``none``, default ``f8``: the key the
scanner presses for GS), and the framing options ``terminator`` (default ``cr``: the Enter
key), ``max_length`` and ``gap_ms``.

How it reads
------------

The kernel's keyboard driver is detached from the scanner's interface, the interface is
claimed and switched to the boot protocol (8-byte reports: a modifier byte, a reserved byte,
six key slots), and the interrupt IN endpoint is read. Scans therefore no longer reach a
console or X, and :mod:`markd.scanners.keymap` turns key usages into characters through the
US layout, whatever layout the OS has (domain.md §8.2). On release the interface goes back to
the report protocol and the kernel driver is re-attached.

:class:`KeyboardDecoder` is the whole decoding state machine, without I/O (``markctl decode
--hid-kbd`` and the benchmark use the same class):

* a key counts when it appears in a report and was not in the previous one, so key rollover
  (the next key pressed before the last is released) and repeated identical reports work;
* Shift, and Caps Lock, whose state is tracked from the Caps Lock presses in the stream
  (markd never sends the LED report, so the scanner believes it off unless it toggles it);
* GS (0x1D), which no key types, arrives by one of the scanners' conventions: Ctrl+],
  Alt+0029 on the keypad (Alt+NNN gives character NNN; every character of a scanner in
  "Alt code" mode arrives this way), or a function key, F8 by default (``gs_key``);
* reports flagging a rollover error (usage 0x01 in every slot) are ignored, reports shorter
  than 3 bytes raise :class:`~markd.scanners.base.BadReport`.

A scanner that drops GS entirely cannot be repaired here; ``markctl scan-test`` says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from markd.errors import ScannerError
from markd.scanners import keymap
from markd.scanners.base import BadReport, Option, ScannerURL
from markd.scanners.hid_descriptor import has_usage_page
from markd.scanners.usb_common import (
    HID_CLASS,
    HID_PROTOCOL_KEYBOARD,
    InterfaceChoice,
    UsbScanner,
    UsbSession,
)

KEYBOARD_PAGE = 0x07
BARCODE_SCANNER_PAGE = 0x8C

GS = "\x1d"

#: Names of the GS conventions, as counted in :attr:`KeyboardDecoder.gs_methods`.
GS_BY_CTRL = "ctrl+]"
GS_BY_ALT_CODE = "alt+0029"

#: Accepted values of the ``gs_key`` option.
GS_KEY_NAMES = ("none", *keymap.FUNCTION_KEYS)

DEFAULT_GS_KEY = "f8"


def _convert_gs_key(text: str) -> str:
    name = text.lower()
    if name not in GS_KEY_NAMES:
        raise ValueError("unknown key")
    return name


class KeyboardDecoder:
    """Boot keyboard reports in, the bytes they type out (see the module docstring).

    >>> d = KeyboardDecoder()
    >>> d.feed(bytes([0x02, 0, 0x0B, 0, 0, 0, 0, 0])) + d.feed(bytes(8))      # Shift+h
    b'H'
    >>> d.feed(bytes([0x01, 0, 0x30, 0, 0, 0, 0, 0])), d.gs_methods["ctrl+]"]  # Ctrl+]
    (b'\\x1d', 1)
    """

    def __init__(self, gs_key: str | None = DEFAULT_GS_KEY, *, num_lock: bool = True) -> None:
        if gs_key is not None and gs_key != "none" and gs_key not in keymap.FUNCTION_KEYS:
            raise ValueError(f"gs_key must be one of {', '.join(GS_KEY_NAMES)}")
        self.gs_key = None if gs_key in (None, "none") else gs_key
        self._gs_usage = keymap.FUNCTION_KEYS[self.gs_key] if self.gs_key else None
        self._initial_num_lock = num_lock
        #: How many GS characters arrived by each convention (``"ctrl+]"``, ``"alt+0029"``,
        #: ``"f8"``); scan-test reads and clears it.
        self.gs_methods: Counter[str] = Counter()
        #: Key presses that typed nothing (arrows, Escape, unassigned function keys, ...).
        self.ignored = 0
        self.reset()

    def reset(self) -> None:
        """Forget all key state (the device went away or a report was unreadable)."""
        self.caps_lock = False
        self.num_lock = self._initial_num_lock
        self._keys: tuple[int, ...] = ()
        self._alt_held = False
        self._alt_digits = ""

    def feed(self, report: bytes) -> bytes:
        """Decode one report; return the bytes it typed (often none: key releases)."""
        if len(report) < 3:
            raise BadReport(f"keyboard report of {len(report)} bytes (at least 3 expected)")
        modifiers = report[0]
        keys = tuple(k for k in report[2:] if k)
        if any(k in keymap.ERROR_USAGES for k in keys):
            # Phantom state: the keyboard could not tell which keys are down. Keep the last
            # known state; the keys will be reported properly once the jam clears.
            return b""
        out = bytearray()
        alt_now = bool(modifiers & keymap.ALT)
        if self._alt_held and not alt_now:
            out += self._finish_alt_code()
        self._alt_held = alt_now
        for usage in keys:
            if usage not in self._keys:
                out += self._press(usage, modifiers)
        self._keys = keys
        return bytes(out)

    def _press(self, usage: int, modifiers: int) -> bytes:
        shift = bool(modifiers & keymap.SHIFT)
        if usage == keymap.CAPS_LOCK:
            self.caps_lock = not self.caps_lock
            return b""
        if usage == keymap.NUM_LOCK:
            self.num_lock = not self.num_lock
            return b""
        if modifiers & keymap.GUI:
            self.ignored += 1
            return b""
        ctrl = bool(modifiers & keymap.CTRL)
        if modifiers & keymap.ALT:
            # Alt+keypad digits build a character code; Ctrl+Alt is AltGr on some layouts
            # and types nothing a scanner would mean.
            if not ctrl and usage in keymap.KEYPAD_DIGITS:
                if len(self._alt_digits) < 8:
                    self._alt_digits += str(keymap.KEYPAD_DIGITS[usage])
                return b""
            self.ignored += 1
            return b""
        if ctrl:
            char = keymap.control_character(usage, shift=shift)
            if char is None:
                self.ignored += 1
                return b""
            if char == GS:
                self.gs_methods[GS_BY_CTRL] += 1
            return char.encode("ascii")
        if usage == self._gs_usage:
            assert self.gs_key is not None
            self.gs_methods[self.gs_key] += 1
            return GS.encode("ascii")
        char = keymap.character(
            usage, shift=shift, caps_lock=self.caps_lock, num_lock=self.num_lock
        )
        if char is None:
            self.ignored += 1
            return b""
        return char.encode("ascii")

    def _finish_alt_code(self) -> bytes:
        digits, self._alt_digits = self._alt_digits, ""
        if not digits:
            return b""
        value = int(digits) % 256  # Windows keeps the low byte of larger numbers
        if value == 0:
            self.ignored += 1
            return b""
        if value < 0x80:
            char = chr(value)
        else:
            # Windows: a leading zero selects the ANSI code page, none the OEM one. Neither
            # occurs in a marking code; the parser will refuse the character either way.
            codec = "cp1252" if digits.startswith("0") else "cp437"
            char = bytes([value]).decode(codec, errors="replace")
        if char == GS:
            self.gs_methods[GS_BY_ALT_CODE] += 1
        return char.encode("utf-8")


class _KeyboardInterface(InterfaceChoice):
    """Boot keyboards first, then any other HID interface (some scanners declare protocol 0)."""

    def rank(self, interface: Any) -> int | None:
        if interface.bInterfaceClass != HID_CLASS:
            return None
        return 0 if interface.bInterfaceProtocol == HID_PROTOCOL_KEYBOARD else 1

    def accept(self, interface: Any, descriptor: bytes | None) -> None:
        if has_usage_page(descriptor, BARCODE_SCANNER_PAGE) and not has_usage_page(
            descriptor, KEYBOARD_PAGE
        ):
            raise ScannerError(
                "a HID-POS interface, not a keyboard: use hid-pos:// for this scanner",
                "wrong-mode",
            )

    def none_found(self, where: str) -> ScannerError:
        return ScannerError(
            f"{where} has no HID interface: is the scanner in serial (CDC-ACM) mode? "
            "use serial:///dev/markd/scanner0",
            "no-interface",
        )


class HidKeyboardScanner(UsbScanner):
    """A keyboard-mode scanner on USB (see the module docstring for URL forms)."""

    OPTIONS = {
        **UsbScanner.OPTIONS,
        "gs_key": Option(_convert_gs_key, DEFAULT_GS_KEY, "|".join(GS_KEY_NAMES)),
    }
    boot_protocol = True

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self.decoder = KeyboardDecoder(url.options["gs_key"])

    def _interface_choice(self) -> InterfaceChoice:
        return _KeyboardInterface()

    def _start_decoding(self, session: UsbSession) -> None:
        # Nothing to learn from the session: an interface that refused the boot protocol
        # still sends the modifier byte, a reserved byte and key slots first on every scanner
        # we know of (unconfirmed for all models), which is all the decoder reads.
        del session

    def _on_report(self, report: bytes) -> None:
        if self.monitor is None:
            data = self.decoder.feed(report)
        else:
            before = dict(self.decoder.gs_methods)
            data = self.decoder.feed(report)
            notes = tuple(
                f"gs:{method}"
                for method, count in self.decoder.gs_methods.items()
                if count > before.get(method, 0)
            )
            self._raw(report, data, notes)
        if data:
            self._received(data)

    def _reset_decoder(self) -> None:
        self.decoder.reset()
