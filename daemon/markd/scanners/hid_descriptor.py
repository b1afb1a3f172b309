"""HID report descriptors: just enough of a parser to find where a field sits in a report.

A HID device describes its reports in a byte-coded "report descriptor" (HID 1.11 §6.2.2):
items that set a usage page, report size/count and report ID, name usages, and then declare
Input, Output or Feature fields. :func:`parse_report_descriptor` walks the items and returns
one :class:`Field` per main item with its report ID, bit offset, size, count and usages, so
the HID-POS decoder can find "Decoded Data" (page 0x8C usage 0xFE) wherever a vendor put it,
and :func:`keyboard_layout` can tell the keyboard decoder whether keyboard reports carry a
report ID and where the Num Lock and Caps Lock LEDs sit in the output report.

>>> fields = parse_report_descriptor(bytes.fromhex(
...     "05 8c 09 02 a1 01 85 02 75 08 95 01 05 01 09 3b 81 02"
...     " 05 8c 95 38 09 fe 82 02 01 c0"))
>>> [(f.report_id, f.bit_offset, f.bit_size, f.count, hex(f.usage(0))) for f in fields]
[(2, 0, 8, 1, '0x1003b'), (2, 8, 8, 56, '0x8c00fe')]

Usages are "extended": page << 16 | id. Long items, physical and unit items are skipped;
Push/Pop are honoured. A descriptor that does not parse raises
:class:`~markd.scanners.base.BadReport`, never anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from markd.errors import ScannerError
from markd.scanners.base import BadReport

#: Input item flag bits (HID 1.11 §6.2.2.5).
CONSTANT = 0x001
VARIABLE = 0x002
BUFFERED_BYTES = 0x100

#: Stop expanding a Usage Minimum..Maximum range beyond this many usages (a garbage descriptor
#: must not make us build a list of 4 billion integers).
_MAX_RANGE = 4096


@dataclass(frozen=True)
class Field:
    """One main item (Input, Output or Feature) of a report."""

    kind: str  # "input", "output" or "feature"
    report_id: int | None
    #: Offset in bits from the start of the report data (after the report ID byte, if any).
    bit_offset: int
    bit_size: int
    count: int
    usages: tuple[int, ...]
    flags: int

    @property
    def constant(self) -> bool:
        return bool(self.flags & CONSTANT)

    def usage(self, index: int) -> int:
        """The usage of element ``index`` (the last usage repeats, as HID 1.11 §6.2.2.8 says);
        0 when the field has no usage (padding)."""
        if not self.usages:
            return 0
        return self.usages[min(index, len(self.usages) - 1)]

    def value(self, data: bytes, index: int = 0) -> int:
        """Element ``index`` of this field in ``data`` (the report without its ID byte),
        little-endian, unsigned; 0 if the report is too short to hold it."""
        start = self.bit_offset + index * self.bit_size
        end = start + self.bit_size
        if end > len(data) * 8:
            return 0
        first, last = start // 8, (end + 7) // 8
        chunk = int.from_bytes(data[first:last], "little")
        return (chunk >> (start - first * 8)) & ((1 << self.bit_size) - 1)

    def bytes_in(self, data: bytes) -> bytes:
        """The field's bytes when it is byte-aligned with 8-bit elements (buffered data)."""
        if self.bit_size != 8 or self.bit_offset % 8:
            return bytes(self.value(data, i) for i in range(self.count))
        start = self.bit_offset // 8
        return bytes(data[start : start + self.count])

    @property
    def byte_length(self) -> int:
        """Bytes of report data needed to hold this field (from the report's start)."""
        return (self.bit_offset + self.bit_size * self.count + 7) // 8


def _unsigned(data: bytes) -> int:
    return int.from_bytes(data, "little") if data else 0


def parse_report_descriptor(descriptor: bytes) -> list[Field]:
    """Every Input, Output and Feature field of ``descriptor``, in order."""
    fields: list[Field] = []
    # Global state (HID 1.11 §6.2.2.7) and its Push/Pop stack.
    usage_page = 0
    report_size = 0
    report_count = 0
    report_id: int | None = None
    stack: list[tuple[int, int, int, int | None]] = []
    # Local state, cleared after each main item.
    usages: list[int] = []
    usage_minimum: int | None = None
    # Running bit offset per (kind, report id).
    offsets: dict[tuple[str, int | None], int] = {}

    def extend(usage: int, size: int) -> int:
        # A 1- or 2-byte usage is an id on the current page; a 4-byte one carries its page.
        return usage if size == 4 else (usage_page << 16) | usage

    i = 0
    length = len(descriptor)
    while i < length:
        prefix = descriptor[i]
        if prefix == 0xFE:  # long item: size byte, tag byte, data; none are defined
            if i + 2 >= length:
                raise BadReport("report descriptor: truncated long item")
            i += 3 + descriptor[i + 1]
            continue
        size = (0, 1, 2, 4)[prefix & 0x03]
        kind = (prefix >> 2) & 0x03
        tag = prefix >> 4
        if i + 1 + size > length:
            raise BadReport(f"report descriptor: item at byte {i} runs past the end")
        data = bytes(descriptor[i + 1 : i + 1 + size])
        value = _unsigned(data)
        i += 1 + size

        if kind == 0:  # main
            if tag in (0x8, 0x9, 0xB):
                main = {0x8: "input", 0x9: "output", 0xB: "feature"}[tag]
                if report_size <= 0 or report_count < 0 or report_size * report_count > 1 << 16:
                    raise BadReport("report descriptor: impossible report size or count")
                key = (main, report_id)
                offset = offsets.get(key, 0)
                if report_size and report_count:
                    fields.append(
                        Field(
                            main,
                            report_id,
                            offset,
                            report_size,
                            report_count,
                            tuple(usages),
                            value,
                        )
                    )
                offsets[key] = offset + report_size * report_count
            usages = []
            usage_minimum = None
        elif kind == 1:  # global
            if tag == 0x0:
                usage_page = value
            elif tag == 0x7:
                report_size = value
            elif tag == 0x8:
                if not 1 <= value <= 255:
                    raise BadReport("report descriptor: report ID out of range")
                report_id = value
            elif tag == 0x9:
                report_count = value
            elif tag == 0xA:
                stack.append((usage_page, report_size, report_count, report_id))
            elif tag == 0xB:
                if not stack:
                    raise BadReport("report descriptor: Pop without Push")
                usage_page, report_size, report_count, report_id = stack.pop()
        elif kind == 2:  # local
            if tag == 0x0:
                usages.append(extend(value, size))
            elif tag == 0x1:
                usage_minimum = extend(value, size)
            elif tag == 0x2 and usage_minimum is not None:
                maximum = extend(value, size)
                if maximum < usage_minimum or maximum - usage_minimum >= _MAX_RANGE:
                    raise BadReport("report descriptor: bad usage range")
                usages.extend(range(usage_minimum, maximum + 1))
                usage_minimum = None
        else:
            raise BadReport(f"report descriptor: reserved item type at byte {i - 1 - size}")
    return fields


def usage_pages(fields: list[Field]) -> set[int]:
    """The usage pages a descriptor's fields use (0x07 keyboard, 0x8C bar code scanner)."""
    return {usage >> 16 for f in fields for usage in f.usages}


def has_usage_page(descriptor: bytes | None, page: int) -> bool:
    """True when ``descriptor`` parses and one of its fields uses a usage on ``page``."""
    if not descriptor:
        return False
    try:
        fields = parse_report_descriptor(descriptor)
    except BadReport:
        return False
    return page in usage_pages(fields)


# --------------------------------------------------------------------------------------------
# Keyboards

KEYBOARD_PAGE = 0x07
LED_PAGE = 0x08
_LEFT_CONTROL = 0x000700E0
_NUM_LOCK_LED = 0x00080001
_CAPS_LOCK_LED = 0x00080002


@dataclass(frozen=True)
class KeyboardLayout:
    """Where the keys sit in a keyboard's input report and the LEDs in its output report.

    The default is the boot layout (HID 1.11 appendix B.1), which every keyboard sends in boot
    protocol: no report ID; a modifier byte, a reserved byte, six key slots; a one-byte LED
    report with Num Lock in bit 0 and Caps Lock in bit 1.

    >>> KeyboardLayout().led_report()
    b'\\x01'
    """

    #: The report ID keyboard input reports start with; None when the interface uses none.
    report_id: int | None = None
    #: Byte offset (after the report ID) and end of the key slots; ``keys_end`` None: to the
    #: end of the report. The modifier byte is always byte 0.
    keys_start: int = 2
    keys_end: int | None = None
    #: The LED output report: its ID (0 when the interface uses none), its length without
    #: the ID, and the bits of Num Lock and Caps Lock in it; ``led_length`` 0: no LEDs.
    led_report_id: int = 0
    led_length: int = 1
    num_lock_bit: int | None = 0
    caps_lock_bit: int | None = 1
    #: The longest input report of the interface in bytes, report ID included.
    input_length: int = 8

    def led_report(self, *, num_lock: bool = True, caps_lock: bool = False) -> bytes | None:
        """The SET_REPORT data that sets the LEDs (report ID first when there is one), or
        None when the interface declares no LED output."""
        if self.led_length <= 0:
            return None
        value = 0
        if num_lock and self.num_lock_bit is not None:
            value |= 1 << self.num_lock_bit
        if caps_lock and self.caps_lock_bit is not None:
            value |= 1 << self.caps_lock_bit
        data = value.to_bytes(self.led_length, "little")
        return bytes([self.led_report_id]) + data if self.led_report_id else data


BOOT_KEYBOARD_LAYOUT = KeyboardLayout()


def _describe(f: Field) -> str:
    pages = sorted({u >> 16 for u in f.usages})
    if not f.flags & VARIABLE:
        what = "array"
    else:
        what = "bitmap" if f.bit_size == 1 else "variable"
    usages = ""
    if f.usages:
        usages = f" of usages {pages[0]:#04x}:{f.usages[0] & 0xFFFF:02x}"
        usages += f"-{f.usages[-1] & 0xFFFF:02x}" if len(f.usages) > 1 else ""
    return f"{what} {f.count}x{f.bit_size} bits at bit {f.bit_offset}{usages}"


def keyboard_layout(descriptor: bytes) -> KeyboardLayout:
    """The report-protocol layout a keyboard interface's report descriptor declares.

    markd reads the boot arrangement behind an optional report ID: a modifier byte (eight
    1-bit fields, Left Control to Right GUI) at the start, and one array of 8-bit key slots
    at a byte boundary after it. A descriptor that puts keyboard keys in several reports, or
    in another arrangement (an N-key-rollover bitmap, no modifier byte), raises
    :class:`~markd.errors.ScannerError` ``unsupported-keyboard`` naming what it found;
    one that does not parse raises :class:`~markd.scanners.base.BadReport`.

    >>> layout = keyboard_layout(bytes.fromhex(
    ...     "05 01 09 06 a1 01 85 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    ...     " 95 01 75 08 81 01 95 06 75 08 26 ff 00 19 00 29 ff 81 00"
    ...     " 05 08 19 01 29 05 95 05 75 01 91 02 95 01 75 03 91 01 c0"))
    >>> layout.report_id, layout.keys_start, layout.keys_end, layout.led_report()
    (1, 2, 8, b'\\x01\\x01')
    """
    fields = parse_report_descriptor(descriptor)
    inputs = [f for f in fields if f.kind == "input"]
    keyed = [f for f in inputs if any(u >> 16 == KEYBOARD_PAGE for u in f.usages)]
    if not keyed:
        raise ScannerError(
            "the report descriptor declares no keyboard keys (usage page 0x07)",
            "unsupported-keyboard",
        )
    report_ids = sorted({f.report_id or 0 for f in keyed})
    if len(report_ids) > 1:
        raise ScannerError(
            "keyboard keys in several input reports (IDs "
            + ", ".join(str(i) for i in report_ids)
            + "): markd reads keys from one report only",
            "unsupported-keyboard",
        )
    report_id = keyed[0].report_id
    modifiers = keys = None
    for f in keyed:
        if (
            modifiers is None
            and f.bit_offset == 0
            and (f.bit_size, f.count) == (1, 8)
            and f.flags & VARIABLE
            and f.usage(0) == _LEFT_CONTROL
            and f.usage(7) == _LEFT_CONTROL + 7
        ):
            modifiers = f
        elif (
            keys is None
            and f.bit_size == 8
            and not f.flags & VARIABLE
            and f.bit_offset % 8 == 0
            and f.bit_offset >= 8
        ):
            keys = f
        else:
            modifiers = keys = None
            break
    if modifiers is None or keys is None:
        where = f"keyboard report {report_id}" if report_id is not None else "keyboard report"
        raise ScannerError(
            f"{where} has a layout markd cannot read ("
            + "; ".join(_describe(f) for f in keyed)
            + "): it reads a modifier byte first and an array of 8-bit key slots, the boot "
            "keyboard layout; set the scanner to a plain (boot) keyboard, or use HID-POS or "
            "serial mode",
            "unsupported-keyboard",
        )

    # Input report lengths (ID included), so a report longer than a packet is read whole.
    lengths: dict[int | None, int] = {}
    for f in inputs:
        lengths[f.report_id] = max(lengths.get(f.report_id, 0), f.byte_length)
    input_length = max(n + (1 if rid is not None else 0) for rid, n in lengths.items())

    # The LED output report: the output fields with Num Lock or Caps Lock usages.
    led_id: int | None = None
    led_length = 0
    bits: dict[int, int] = {}
    for f in fields:
        if f.kind != "output" or not f.flags & VARIABLE or f.bit_size != 1:
            continue
        if led_id is not None and (f.report_id or 0) != led_id:
            continue  # LEDs in a second output report: the first one is enough
        for index in range(min(f.count, 64)):
            usage = f.usage(index)
            if usage in (_NUM_LOCK_LED, _CAPS_LOCK_LED):
                led_id = f.report_id or 0
                bits.setdefault(usage, f.bit_offset + index)
    if led_id is not None:
        led_length = max(
            f.byte_length for f in fields if f.kind == "output" and (f.report_id or 0) == led_id
        )
    return KeyboardLayout(
        report_id=report_id,
        keys_start=keys.bit_offset // 8,
        keys_end=keys.bit_offset // 8 + keys.count,
        led_report_id=led_id or 0,
        led_length=led_length,
        num_lock_bit=bits.get(_NUM_LOCK_LED),
        caps_lock_bit=bits.get(_CAPS_LOCK_LED),
        input_length=input_length,
    )
