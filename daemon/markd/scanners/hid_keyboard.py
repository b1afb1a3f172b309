"""Keyboard-mode ("wedge") USB scanners, read directly with pyusb.

URL forms
---------

``hid-kbd://VID:PID?OPTIONS``
    The scanner's USB vendor and product id as ``lsusb`` prints them: ``hid-kbd://0c2e:0b61``.

``hid-kbd:///dev/PATH?OPTIONS``
    A udev symlink to the scanner's USB device node, as markd's rules create them:
    ``hid-kbd:///dev/markd/scanner-0c2e-10d3-sn-SERIAL``. The link is resolved at every open, so a
    replug (new device address) is followed.

Options: ``serial`` (the USB serial number; required when several identical scanners are
attached), ``interface`` (the interface number; default: the first boot-keyboard interface,
else the first HID one), ``gs_key`` (``f1`` … ``f12`` or ``none``, default ``f8``: the key the
scanner presses for GS), and the framing options ``terminator`` (default ``cr``: the Enter
key), ``max_length`` and ``gap_ms``.

How it reads
------------

The kernel's keyboard driver is detached from the scanner's interface, the interface is
claimed and, when it is a boot interface, switched to the boot protocol (8-byte reports: a
modifier byte, a reserved byte, six key slots), and the interrupt IN endpoint is read. An
interface that is not a boot interface (or refuses the boot protocol) sends its reports as
its report descriptor declares: usually the same 8 bytes, often behind a report ID, with
other reports (consumer keys) beside them. The descriptor is read
(:func:`~markd.scanners.hid_descriptor.keyboard_layout`): the report ID is checked and
stripped, reports with other IDs are skipped, and an arrangement markd cannot decode refuses
the interface with reason ``unsupported-keyboard``.

Then the LEDs are set to Num Lock on, Caps Lock off (a SET_REPORT output report), because a
scanner keeps the LED state the host last sent it, the kernel's console state from before
markd took it, and scanners that compensate for Caps Lock invert the case of letters while
they believe it on. The decoder starts from the same state. A device without LEDs STALLs the
request, which is fine.

Scans therefore no longer reach a console or X, and :mod:`markd.scanners.keymap` turns key
usages into characters through the US layout, whatever layout the OS has (domain.md §8.2).
On release the interface goes back to the report protocol and the kernel driver is
re-attached.

:class:`KeyboardDecoder` is the whole decoding state machine, without I/O (``markctl decode
--hid-kbd`` and the benchmark use the same class):

* a key counts when it appears in a report and was not in the previous one, so key rollover
  (the next key pressed before the last is released) and repeated identical reports work;
* Shift, and Caps Lock, whose state is tracked from the Caps Lock presses in the stream,
  starting off, as markd tells the scanner when it takes it (Num Lock starts on);
* GS (0x1D), which no key types, arrives by one of the scanners' conventions: Ctrl+],
  Alt+0029 on the keypad (Alt+NNN gives character NNN; every character of a scanner in
  "Alt code" mode arrives this way), or a function key, F8 by default (``gs_key``);
* reports flagging a rollover error (usage 0x01 in every slot) are ignored, reports of
  another report ID are skipped, reports too short to hold the modifier byte, the reserved
  byte and a key slot raise :class:`~markd.scanners.base.BadReport`.

A scanner that drops GS entirely cannot be repaired here; ``markctl scan-test`` says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from markd.errors import ScannerError
from markd.scanners import keymap
from markd.scanners.base import BadReport, Option, ScannerURL
from markd.scanners.framing import Framer
from markd.scanners.hid_descriptor import (
    BOOT_KEYBOARD_LAYOUT,
    KeyboardLayout,
    has_usage_page,
    keyboard_layout,
)
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


def keyboard_breaks_unit(framer: Framer) -> bool:
    """Whether an unreadable keyboard report breaks a unit under way, whose rest is then
    discarded (the daemon and ``markctl decode`` both ask this). It does when part of a unit
    has arrived or is being discarded, and always with ``terminator=none``: a code's reports
    follow each other within milliseconds, so until the gap the report belongs to whatever
    code is being typed. With a terminator and nothing pending the report falls between codes
    (or begins one, which cannot be told) and the next code is kept."""
    return framer.in_unit or framer.terminator is None


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

    def __init__(
        self,
        gs_key: str | None = DEFAULT_GS_KEY,
        *,
        num_lock: bool = True,
        layout: KeyboardLayout = BOOT_KEYBOARD_LAYOUT,
    ) -> None:
        if gs_key is not None and gs_key != "none" and gs_key not in keymap.FUNCTION_KEYS:
            raise ValueError(f"gs_key must be one of {', '.join(GS_KEY_NAMES)}")
        self.gs_key = None if gs_key in (None, "none") else gs_key
        self._gs_usage = keymap.FUNCTION_KEYS[self.gs_key] if self.gs_key else None
        self._initial_num_lock = num_lock
        #: Where the keys sit (the boot layout unless the report descriptor says otherwise).
        self.layout = layout
        #: Reports with another report ID (consumer keys, vendor status) that were skipped.
        self.other_reports = 0
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
        layout = self.layout
        if layout.report_id is not None and report:
            if report[0] != layout.report_id:
                self.other_reports += 1
                return b""
            report = report[1:]
        start = layout.keys_start
        if len(report) <= start:
            raise BadReport(
                f"keyboard report of {len(report)} bytes (at least {start + 1} expected"
                + (f" after report ID {layout.report_id})" if layout.report_id else ")")
            )
        modifiers = report[0]
        keys = tuple(k for k in report[start : layout.keys_end] if k)
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
    """Boot keyboards first, then any other HID interface (some scanners declare protocol 0);
    :meth:`settle` picks the report layout for the scanner once the protocol is known."""

    def __init__(self, scanner: HidKeyboardScanner) -> None:
        self.scanner = scanner

    def rank(self, interface: Any) -> int | None:
        if interface.bInterfaceClass != HID_CLASS:
            return None
        return 0 if interface.bInterfaceProtocol == HID_PROTOCOL_KEYBOARD else 1

    def accept(self, interface: Any, descriptor: bytes | None) -> None:
        if has_usage_page(descriptor, BARCODE_SCANNER_PAGE) and not has_usage_page(
            descriptor, KEYBOARD_PAGE
        ):
            raise ScannerError(
                "the device is in HID-POS mode, the URL says hid-kbd: use hid-pos:// for "
                "this scanner (or switch it to keyboard mode with its setup barcode)",
                "wrong-mode",
            )

    def settle(self, session: UsbSession) -> None:
        # In boot protocol a keyboard sends the 8-byte boot report without an ID (HID 1.11
        # appendix B: a BIOS reads it without parsing any descriptor), whatever its
        # descriptor says. Otherwise the descriptor rules: a composite keyboard+consumer
        # descriptor puts a report ID first.
        layout = BOOT_KEYBOARD_LAYOUT
        if not session.boot_protocol and session.report_descriptor:
            try:
                layout = keyboard_layout(session.report_descriptor)
            except BadReport:
                # A descriptor that does not parse says nothing; the boot layout is what
                # keyboard-mode scanners send (as before descriptors were read at all).
                layout = BOOT_KEYBOARD_LAYOUT
        self.scanner._chosen_layout = layout

    def none_found(self, where: str) -> ScannerError:
        return ScannerError(
            f"{where} has no HID interface: is the scanner in serial (CDC-ACM) mode? "
            "use serial:///dev/markd/scanner-… (ls -l /dev/markd/)",
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
        self._chosen_layout: KeyboardLayout | None = None
        #: Whether the scanner accepted the LED report of the last session.
        self.leds_set = False

    @property
    def layout(self) -> KeyboardLayout:
        """The report layout of the interface last opened."""
        return self.decoder.layout

    def _interface_choice(self) -> InterfaceChoice:
        return _KeyboardInterface(self)

    def _start_decoding(self, session: UsbSession) -> None:
        layout = self._chosen_layout or BOOT_KEYBOARD_LAYOUT
        self.decoder.layout = layout
        packet = session.read_size
        # A report longer than one packet (a report ID ahead of 8 bytes on an 8-byte
        # endpoint) arrives as several: read it whole.
        session.read_size = max(packet, -(-layout.input_length // packet) * packet)
        # The scanner keeps the LED state the kernel last sent it (the console's Caps Lock
        # and Num Lock); a scanner that compensates for Caps Lock types 'a' as Shift+A while
        # it believes Caps Lock on. Tell it what the decoder assumes: Num Lock on (keypad
        # digits, Alt codes), Caps Lock off. A device without LEDs STALLs this; no matter.
        self.leds_set = False
        data = layout.led_report(num_lock=self.decoder.num_lock, caps_lock=self.decoder.caps_lock)
        if data is not None:
            self.leds_set = session.set_output_report(layout.led_report_id, data)

    def _on_report(self, report: bytes) -> None:
        if self.monitor is None:
            data = self.decoder.feed(report)
        else:
            before = dict(self.decoder.gs_methods)
            skipped = self.decoder.other_reports
            data = self.decoder.feed(report)
            notes = tuple(
                f"gs:{method}"
                for method, count in self.decoder.gs_methods.items()
                if count > before.get(method, 0)
            )
            if self.decoder.other_reports > skipped:
                notes += ("other-report",)
            self._raw(report, data, notes)
        if data:
            self._received(data)

    def _reset_decoder(self) -> None:
        self.decoder.reset()

    def _breaks_unit(self) -> bool:
        return keyboard_breaks_unit(self._framer)
