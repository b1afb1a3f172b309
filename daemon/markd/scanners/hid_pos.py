"""HID-POS USB scanners (HID usage page 0x8C, "Bar Code Scanner"), read with pyusb.

URL forms
---------

``hid-pos://VID:PID?OPTIONS``
    ``hid-pos://1eab:0010`` (a Newland in HID-POS mode), ``hid-pos://0c2e:0b62``.

``hid-pos:///dev/PATH?OPTIONS``
    A udev symlink to the scanner's USB device node: ``hid-pos:///dev/markd/scanner-1eab-0010-sn-SERIAL``.

Options: ``serial`` (the USB serial number, for several identical scanners), ``interface``
(default: the first HID interface whose report descriptor uses page 0x8C), and the framing
options ``terminator``, ``max_length`` and ``gap_ms``. A HID-POS scanner says when a scan is
complete, so units end there whatever the terminator; a suffix the scanner adds (CR) is still
cut off when ``terminator`` names it.

Why this mode
-------------

Linux gives page 0x8C no input mapping, so these scanners never type into a console, and the
data is binary: GS (0x1D) arrives intact, as does the AIM symbology identifier (``]d2`` for
GS1 DataMatrix), reported beside the data and kept in :attr:`Scan.symbology
<markd.scanners.base.Scan.symbology>`. This is one of the two recommended modes (domain.md §8.1).

Reports
-------

A scan arrives in one or more input reports. Where each field sits is read from the
interface's report descriptor (:mod:`markd.scanners.hid_descriptor`): Decoded Data (0x8C:0xFE),
Byte Count (Generic Desktop 0x3B: how many data bytes this report carries), Symbology
Identifier 1–3 (0x8C:0xFB–0xFD) and Decoded Data Continued (0x8C:0xFF: more of the same scan
follows). Without a descriptor (a capture that lacks one) :data:`STANDARD_REPORT_DESCRIPTOR`
is assumed: report ID 2, count, three identifier bytes, 56 data bytes, a flags byte
(the HID POS Usage Tables layout; whether every vendor follows it is unconfirmed). Without a
Byte Count field the data ends at the first trailing zero byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from markd.errors import ScannerError
from markd.scanners.base import BadReport, ScannerURL
from markd.scanners.framing import Framer
from markd.scanners.hid_descriptor import Field, has_usage_page, parse_report_descriptor
from markd.scanners.usb_common import (
    HID_CLASS,
    HID_PROTOCOL_KEYBOARD,
    InterfaceChoice,
    UsbScanner,
    UsbSession,
)

BARCODE_SCANNER_PAGE = 0x8C
DECODED_DATA = 0x8C00FE
DECODED_DATA_CONTINUED = 0x8C00FF
SYMBOLOGY_IDENTIFIERS = (0x8C00FB, 0x8C00FC, 0x8C00FD)
BYTE_COUNT = 0x0001003B

#: The report descriptor assumed when the device's is not at hand (see the module docstring).
STANDARD_REPORT_DESCRIPTOR = bytes.fromhex(
    "05 8c 09 02 a1 01"  # Usage Page (Bar Code Scanner), Usage (Bar Code Scanner), Application
    " 09 12 a1 02"  # Usage (Scanned Data Report), Collection (Logical)
    " 85 02 15 00 26 ff 00 75 08 95 01"  # Report ID 2, 0..255, 8 bits x 1
    " 05 01 09 3b 81 02"  # Generic Desktop: Byte Count, Input (Data, Var)
    " 05 8c 09 fb 09 fc 09 fd 95 03 81 02"  # Symbology Identifier 1..3
    " 09 fe 95 38 82 02 01"  # Decoded Data, 56 bytes, Input (Data, Var, Buffered Bytes)
    " 25 01 75 01 95 01 09 ff 81 02"  # Decoded Data Continued, 1 bit
    " 75 07 81 03"  # 7 bits of padding
    " c0 c0"
)

#: Length of a report in the standard layout, report ID included.
STANDARD_REPORT_LENGTH = 62
STANDARD_DATA_LENGTH = 56


@dataclass(frozen=True)
class PosLayout:
    """Where the fields of a HID-POS scanned-data report sit."""

    report_id: int | None
    data: Field
    byte_count: tuple[Field, int] | None = None
    symbology: tuple[tuple[Field, int], ...] = ()
    continued: tuple[Field, int] | None = None
    #: Report length in bytes, report ID included.
    length: int = field(default=0)

    @classmethod
    def from_descriptor(cls, descriptor: bytes) -> PosLayout:
        """Find the fields in a report descriptor; :class:`BadReport` if there is no
        Decoded Data input field of 8-bit elements."""
        fields = [f for f in parse_report_descriptor(descriptor) if f.kind == "input"]
        data = next(
            (f for f in fields if f.usage(0) == DECODED_DATA and f.bit_size == 8 and f.count),
            None,
        )
        if data is None:
            raise BadReport("report descriptor has no Decoded Data field (page 0x8C usage 0xFE)")
        elements: dict[int, tuple[Field, int]] = {}
        length = 0
        for f in fields:
            if f.report_id != data.report_id:
                continue
            length = max(length, f.byte_length)
            if f is data:
                continue
            for index in range(min(f.count, 64)):
                elements.setdefault(f.usage(index), (f, index))
        symbology = tuple(elements[u] for u in SYMBOLOGY_IDENTIFIERS if u in elements)
        return cls(
            report_id=data.report_id,
            data=data,
            byte_count=elements.get(BYTE_COUNT),
            symbology=symbology,
            continued=elements.get(DECODED_DATA_CONTINUED),
            length=length + (1 if data.report_id is not None else 0),
        )


STANDARD_LAYOUT = PosLayout.from_descriptor(STANDARD_REPORT_DESCRIPTOR)


@dataclass(frozen=True)
class PosChunk:
    """The part of a scan one report carried."""

    data: bytes = field(repr=False)
    symbology: str | None
    #: True when the next report carries more of the same scan.
    continued: bool


def pos_breaks_unit(continued: bool, framer: Framer) -> bool:
    """Whether an unreadable HID-POS report breaks a scan under way, whose rest is then
    discarded up to the end of its continued sequence (the daemon and ``markctl decode`` both
    ask this): it does when the last good report said more of its scan follows. After a
    report that ended its scan the next one starts a new scan, which is kept."""
    return continued or framer.in_unit


def _symbology_text(raw: bytes) -> str | None:
    raw = raw.strip(b"\0")
    if not raw or not all(0x21 <= b < 0x7F for b in raw):
        return None
    text = raw.decode("ascii")
    # Some scanners put only the code character and modifier ("d2"); AIM writes "]d2".
    return text if text.startswith("]") else "]" + text


class HidPosDecoder:
    """HID-POS reports in, :class:`PosChunk` out; no I/O (``markctl decode --hid-pos`` and the
    daemon share it).

    >>> report = bytes([2, 3]) + b"]d2" + b"abc".ljust(56, b"\\0") + bytes([0])
    >>> HidPosDecoder().feed(report)
    PosChunk(symbology=']d2', continued=False)
    """

    def __init__(self, layout: PosLayout = STANDARD_LAYOUT) -> None:
        self.layout = layout
        #: Reports with another report ID (status, settings) that were skipped.
        self.ignored = 0

    def feed(self, report: bytes) -> PosChunk | None:
        """Decode one report: a chunk, None for a report of another ID, or :class:`BadReport`
        when the report is too short or its byte count exceeds its data field."""
        layout = self.layout
        if layout.report_id is not None:
            if not report or report[0] != layout.report_id:
                self.ignored += 1
                return None
            body = report[1:]
        else:
            body = report
        if len(body) < layout.data.byte_length:
            raise BadReport(f"HID-POS report of {len(report)} bytes, too short for its data field")
        data = layout.data.bytes_in(body)
        if layout.byte_count is not None:
            count_field, index = layout.byte_count
            count = count_field.value(body, index)
            if count > len(data):
                raise BadReport(f"HID-POS byte count {count} exceeds the {len(data)}-byte field")
            data = data[:count]
        else:
            data = data.rstrip(b"\0")
        symbology = None
        if layout.symbology:
            symbology = _symbology_text(bytes(f.value(body, i) & 0xFF for f, i in layout.symbology))
        continued = False
        if layout.continued is not None:
            continued_field, index = layout.continued
            continued = bool(continued_field.value(body, index))
        return PosChunk(data, symbology, continued)


class _PosInterface(InterfaceChoice):
    """Non-keyboard HID interfaces first; accepted when the report descriptor uses page 0x8C
    (or, from a device that will not give its descriptor, on trust in the standard layout)."""

    def __init__(self, scanner: HidPosScanner) -> None:
        self.scanner = scanner

    def rank(self, interface: Any) -> int | None:
        if interface.bInterfaceClass != HID_CLASS:
            return None
        return 1 if interface.bInterfaceProtocol == HID_PROTOCOL_KEYBOARD else 0

    def accept(self, interface: Any, descriptor: bytes | None) -> None:
        if descriptor is None:
            if interface.bInterfaceProtocol == HID_PROTOCOL_KEYBOARD:
                raise ScannerError("a keyboard interface", "wrong-mode")
            self.scanner._chosen_layout = STANDARD_LAYOUT
            return
        if not has_usage_page(descriptor, BARCODE_SCANNER_PAGE):
            raise ScannerError(
                "the device is in keyboard mode (no usage page 0x8C), the URL says hid-pos: "
                "switch it to HID-POS with its setup barcode, or use hid-kbd://",
                "wrong-mode",
            )
        try:
            self.scanner._chosen_layout = PosLayout.from_descriptor(descriptor)
        except BadReport as exc:
            raise ScannerError(str(exc), "bad-report") from None

    def none_found(self, where: str) -> ScannerError:
        return ScannerError(
            f"{where} has no HID interface: is the scanner in serial (CDC-ACM) mode? "
            "use serial:///dev/markd/scanner-… (ls -l /dev/markd/)",
            "no-interface",
        )


class HidPosScanner(UsbScanner):
    """A HID-POS scanner on USB (see the module docstring for URL forms)."""

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self.decoder = HidPosDecoder()
        self._chosen_layout: PosLayout | None = None
        self._symbology: str | None = None
        # The last report said more of its scan follows (Decoded Data Continued).
        self._continued = False

    def _interface_choice(self) -> InterfaceChoice:
        return _PosInterface(self)

    def _start_decoding(self, session: UsbSession) -> None:
        layout = self._chosen_layout or STANDARD_LAYOUT
        self.decoder = HidPosDecoder(layout)
        packet = session.read_size
        # A report longer than one packet arrives as several; read it whole.
        session.read_size = max(packet, -(-layout.length // packet) * packet)

    def _on_report(self, report: bytes) -> None:
        chunk = self.decoder.feed(report)
        if self.monitor is not None:
            notes: tuple[str, ...] = ()
            if chunk is not None:
                notes = (("continued",) if chunk.continued else ("end",)) + (
                    (f"symbology:{chunk.symbology}",) if chunk.symbology else ()
                )
            else:
                notes = ("other-report",)
            self._raw(report, chunk.data if chunk else b"", notes)
        if chunk is None:
            return
        self._continued = chunk.continued
        if self._symbology is None:
            self._symbology = chunk.symbology
        if chunk.data:
            self._received(chunk.data, self._symbology)
        if not chunk.continued:
            self._end_of_scan(self._symbology)
            self._symbology = None

    def _reset_decoder(self) -> None:
        self._symbology = None
        self._continued = False

    def _breaks_unit(self) -> bool:
        return pos_breaks_unit(self._continued, self._framer)
