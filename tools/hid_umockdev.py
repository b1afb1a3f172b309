#!/usr/bin/env python3
"""HID scanner recordings for umockdev: device descriptions, usbmon traffic, and checks.

umockdev (Debian: ``umockdev``, ``gir1.2-umockdev-1.0``) emulates a USB device below libusb:
a sysfs description of the device (its ``umockdev-record`` text format: ``P:``, ``N:``,
``E:``, ``A:`` and ``H:`` lines) and a replay of its USB traffic, a usbmon capture in the
``DLT_USB_LINUX_MMAPPED`` link type (220) that ``umockdev_testbed_load_pcap`` plays back
URB by URB. With both loaded, pyusb's libusb1 backend opens ``/dev/bus/usb/BUS/DEV``, claims
the interface and reaps interrupt URBs exactly as on a kiosk.

This tool makes those files from markd's own HID report recordings
(``tests/data/scanners/*.hid``, ``markctl scan-test --save``), so every recording can be
replayed through the real libusb path, and it checks a capture a bench made on a real
scanner::

    tools/hid_umockdev.py convert tests/data/scanners/kbd-gs-ctrl.hid OUTDIR
    tools/hid_umockdev.py check capture.pcapng [--device BUS:ADDR]
    tools/hid_umockdev.py extract capture.pcapng OUT.hid [--device BUS:ADDR] [--expect CODE]

``convert`` writes ``NAME.umockdev`` (the device) and ``NAME.pcap`` (its traffic).
``check`` says what is wrong with a capture (not usbmon, truncated packets, no interrupt
traffic, several devices and none chosen, completions without their submissions) and
what it holds. ``extract`` turns the interrupt reports of a capture into a ``.hid``
recording, which ``convert`` then makes replayable: the way to bring a bench capture
taken under another host program (the kernel's usbhid driver, the vendor's tool) into
the suite, since umockdev's player insists on the host's exact control requests.

Formats, from their public definitions:

* the usbmon binary header, 64 bytes (``struct usbmon_packet`` in the kernel's
  Documentation/usb/usbmon.rst; libpcap's ``pcap/usb.h``, ``pcap_usb_header_mmapped``);
* pcap (``pcap-savefile(5)``) and pcapng (IETF draft-ietf-opsawg-pcapng: section header,
  interface description and enhanced packet blocks) files;
* USB device, configuration, interface and endpoint descriptors (USB 2.0 §9.6) and the HID
  descriptor (HID 1.11 §6.2.1); the boot keyboard's report descriptor (HID 1.11 appendix
  B.1, with its LED output report).

The host side written into a converted capture is what markd does when it opens a scanner
(read the string descriptors, read the report descriptor, a keyboard's SET_PROTOCOL and LED
report, then interrupt reads, and SET_PROTOCOL back on close). A change to that sequence
needs :data:`HOST_OPEN` and :data:`HOST_CLOSE` changed with it; the replay tests say so
when they stall.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

# ---------------------------------------------------------------------------------------------
# Devices

#: HID 1.11 appendix B.1: the boot keyboard, 8-byte input report and the 5 LED output bits.
BOOT_KEYBOARD_REPORT_DESCRIPTOR = bytes.fromhex(
    "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01 95 05 75 01 05 08 19 01 29 05 91 02 95 01 75 03 91 01"
    " 95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
)

#: A HID-POS scanner (HID Point of Sale usage tables, usage page 0x8C): report ID 2 with a
#: byte count, a 3-byte symbology identifier and 56 bytes of decoded data, then a
#: "continued" bit.
HID_POS_REPORT_DESCRIPTOR = bytes.fromhex(
    "05 8c 09 02 a1 01 09 12 a1 02 85 02 15 00 26 ff 00 75 08 95 01"
    " 05 01 09 3b 81 02 05 8c 09 fb 09 fc 09 fd 95 03 81 02"
    " 09 fe 95 38 82 02 01 25 01 75 01 95 01 09 ff 81 02 75 07 81 03 c0 c0"
)

KINDS = ("keyboard", "hid-pos")


@dataclass
class Profile:
    """One emulated scanner: what ``lsusb -v`` would show of it."""

    kind: str = "keyboard"
    vid: int = 0x0C2E
    pid: int = 0x0B61
    serial: str = "K7"
    manufacturer: str = "Emulated"
    product: str = "Barcode Scanner"
    #: Bus 63, the highest the kernel numbers: no host has that many controllers, so an
    #: emulated device node never shares a path with a real one (umockdev lets an open of a
    #: path it does not emulate through to the real /dev).
    bus: int = 63
    address: int = 2
    #: The port path under the root hub (``1-1`` is port 1 of bus 1).
    port: str = "1"
    report_descriptor: bytes = b""
    packet_size: int = 0
    endpoint: int = 0x81
    #: The kernel driver bound to the HID interface until a program detaches it.
    driver: str = "usbhid"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scanner kind {self.kind!r} (one of {', '.join(KINDS)})")
        if not self.report_descriptor:
            self.report_descriptor = (
                BOOT_KEYBOARD_REPORT_DESCRIPTOR
                if self.kind == "keyboard"
                else HID_POS_REPORT_DESCRIPTOR
            )
        if not self.packet_size:
            self.packet_size = 8 if self.kind == "keyboard" else 64

    @property
    def sysname(self) -> str:
        return f"{self.bus}-{self.port}"

    @property
    def syspath(self) -> str:
        """The device's directory in (umockdev's) sysfs."""
        return f"/sys/devices/pci0000:00/0000:00:14.0/usb{self.bus}/{self.sysname}"

    @property
    def devnode(self) -> str:
        return f"/dev/bus/usb/{self.bus:03d}/{self.address:03d}"

    @property
    def interface_class(self) -> tuple[int, int, int]:
        return (3, 1, 1) if self.kind == "keyboard" else (3, 0, 0)

    def strings(self) -> dict[int, str]:
        """String descriptor index → text (index 0, the language list, is apart)."""
        strings = {1: self.manufacturer, 2: self.product}
        if self.serial:
            strings[3] = self.serial
        return strings


def device_descriptor(p: Profile) -> bytes:
    """USB 2.0 §9.6.1, 18 bytes; strings 1, 2, 3 (manufacturer, product, serial)."""
    serial = 3 if p.serial else 0
    return struct.pack(
        "<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 8, p.vid, p.pid, 0x0100, 1, 2, serial, 1
    )


def configuration_descriptor(p: Profile) -> bytes:
    """Configuration 1 with one HID interface and its interrupt IN endpoint."""
    cls, sub, proto = p.interface_class
    interface = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 1, cls, sub, proto, 0)
    hid = struct.pack("<BBHBBBH", 9, 0x21, 0x0111, 0, 1, 0x22, len(p.report_descriptor))
    endpoint = struct.pack("<BBBBHB", 7, 5, p.endpoint, 3, p.packet_size, 10 if sub else 1)
    body = interface + hid + endpoint
    return struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0xA0, 50) + body


def string_descriptor(p: Profile, index: int) -> bytes | None:
    if index == 0:
        return bytes([4, 3]) + struct.pack("<H", 0x0409)
    text = p.strings().get(index)
    if text is None:
        return None
    data = text.encode("utf-16-le")
    return bytes([2 + len(data), 3]) + data


def umockdev_description(p: Profile) -> str:
    """The device in umockdev's description format (what ``umockdev-record`` writes)."""
    descriptors = (device_descriptor(p) + configuration_descriptor(p)).hex()
    cls, sub, proto = p.interface_class
    lines = [
        f"P: {p.syspath.removeprefix('/sys')}",
        f"N: bus/usb/{p.bus:03d}/{p.address:03d}",
        f"E: DEVNAME={p.devnode}",
        "E: DEVTYPE=usb_device",
        "E: DRIVER=usb",
        f"E: PRODUCT={p.vid:x}/{p.pid:x}/100",
        "E: TYPE=0/0/0",
        f"E: BUSNUM={p.bus:03d}",
        f"E: DEVNUM={p.address:03d}",
        "E: MAJOR=189",
        f"E: MINOR={(p.bus - 1) * 128 + p.address - 1}",
        "E: SUBSYSTEM=usb",
        f"E: ID_VENDOR_ID={p.vid:04x}",
        f"E: ID_MODEL_ID={p.pid:04x}",
        *([f"E: ID_SERIAL_SHORT={p.serial}"] if p.serial else []),
        f"A: busnum={p.bus}",
        f"A: devnum={p.address}",
        f"A: idVendor={p.vid:04x}",
        f"A: idProduct={p.pid:04x}",
        "A: bcdDevice=0100",
        "A: bDeviceClass=00",
        "A: bNumConfigurations=1",
        "A: bConfigurationValue=1",
        "A: bMaxPacketSize0=8",
        "A: speed=12",
        f"A: manufacturer={p.manufacturer}",
        f"A: product={p.product}",
        *([f"A: serial={p.serial}"] if p.serial else []),
        f"H: descriptors={descriptors}",
        "",
        # The interface, with the kernel driver markd must detach (and give back).
        f"P: {p.syspath.removeprefix('/sys')}/{p.sysname}:1.0",
        "E: DEVTYPE=usb_interface",
        f"E: DRIVER={p.driver}",
        f"E: INTERFACE={cls}/{sub}/{proto}",
        "E: SUBSYSTEM=usb",
        f"A: bInterfaceClass={cls:02x}",
        f"A: bInterfaceSubClass={sub:02x}",
        f"A: bInterfaceProtocol={proto:02x}",
        "A: bInterfaceNumber=00",
        "A: bNumEndpoints=01",
        "",
        # The HID device the kernel makes of the interface, with the report descriptor
        # (numbered by address: umockdev keeps a removed device's bus link).
        f"P: {p.syspath.removeprefix('/sys')}/{p.sysname}:1.0/"
        f"0003:{p.vid:04X}:{p.pid:04X}.{p.address:04X}",
        "E: DRIVER=hid-generic",
        f"E: HID_ID=0003:{p.vid:08X}:{p.pid:08X}",
        "E: SUBSYSTEM=hid",
        f"H: report_descriptor={p.report_descriptor.hex()}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# usbmon records

DLT_USB_LINUX_MMAPPED = 220
#: struct usbmon_packet (64 bytes, the "mmapped" layout with its four trailing fields).
USBMON = struct.Struct("<QBBBBHbbqiiII8siiII")
URB_ISOCHRONOUS, URB_INTERRUPT, URB_CONTROL, URB_BULK = 0, 1, 2, 3
TYPE_NAMES = {0: "isochronous", 1: "interrupt", 2: "control", 3: "bulk"}
EPIPE = 32


@dataclass
class Urb:
    """One usbmon event: a submission ('S'), a completion ('C') or an error ('E')."""

    event: str
    transfer: int
    endpoint: int
    bus: int
    address: int
    urb_id: int
    ts: float = 0.0
    status: int = 0
    length: int = 0
    setup: bytes | None = None
    data: bytes = b""
    caplen_short: bool = False

    @property
    def direction_in(self) -> bool:
        return bool(self.endpoint & 0x80)

    def pack(self) -> bytes:
        seconds = int(self.ts)
        micro = int(round((self.ts - seconds) * 1e6))
        setup_flag = 0 if self.setup is not None else ord("-")
        if self.data:
            data_flag = 0
        else:
            data_flag = ord("<") if self.direction_in and self.event == "S" else ord(">")
        header = USBMON.pack(
            self.urb_id,
            ord(self.event),
            self.transfer,
            self.endpoint,
            self.address,
            self.bus,
            setup_flag,
            data_flag,
            seconds,
            micro,
            self.status,
            self.length,
            len(self.data),
            self.setup or bytes(8),
            10 if self.transfer == URB_INTERRUPT else 0,
            0,
            0,
            0,
        )
        return header + self.data


def parse_usbmon(packet: bytes, *, caplen: int, wirelen: int) -> Urb:
    """One captured usbmon packet. Raises ValueError naming what is wrong with it."""
    if len(packet) < USBMON.size:
        raise ValueError(f"packet of {len(packet)} bytes, shorter than the 64-byte usbmon header")
    (
        urb_id,
        event,
        transfer,
        endpoint,
        address,
        bus,
        setup_flag,
        _data_flag,
        seconds,
        micro,
        status,
        length,
        data_len,
        setup,
        _interval,
        _frame,
        _flags,
        _ndesc,
    ) = USBMON.unpack_from(packet)
    kind = chr(event)
    if kind not in "SCE":
        raise ValueError(f"event type {event:#04x} is none of S, C, E")
    data = packet[USBMON.size : USBMON.size + data_len]
    return Urb(
        event=kind,
        transfer=transfer,
        endpoint=endpoint,
        bus=bus,
        address=address,
        urb_id=urb_id,
        ts=seconds + micro / 1e6,
        status=status,
        length=length,
        setup=setup if setup_flag == 0 else None,
        data=data,
        caplen_short=caplen < wirelen or len(data) < data_len,
    )


# ---------------------------------------------------------------------------------------------
# Files: pcap and pcapng


def write_pcap(path: Path, urbs: Iterable[Urb]) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, DLT_USB_LINUX_MMAPPED))
    for urb in urbs:
        packet = urb.pack()
        seconds = int(urb.ts)
        micro = int(round((urb.ts - seconds) * 1e6))
        out += struct.pack("<IIII", seconds, micro, len(packet), len(packet)) + packet
    path.write_bytes(bytes(out))


class CaptureError(ValueError):
    """A capture this tool cannot read, with the reason."""


def read_capture(path: Path) -> Iterator[tuple[int, bytes, int, int]]:
    """Yield (link type, packet, captured length, length on the wire) from a pcap or pcapng
    file. Raises :class:`CaptureError` for anything else."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror}") from exc
    if len(data) < 24:
        raise CaptureError(f"{path}: {len(data)} bytes, too short for a capture file")
    magic = data[:4]
    if magic in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
    ):
        yield from _read_pcap(path, data)
    elif magic == b"\x0a\x0d\x0d\x0a":
        yield from _read_pcapng(path, data)
    else:
        raise CaptureError(
            f"{path}: not a pcap, pcapng or umockdev ioctl file (starts with {magic.hex()}); "
            "save the capture from Wireshark or tcpdump, or record with umockdev-record --ioctl"
        )


def _read_pcap(path: Path, data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise CaptureError(f"{path}: truncated record header at byte {offset}")
        _s, _u, caplen, wirelen = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        if offset + caplen > len(data):
            raise CaptureError(f"{path}: record at byte {offset - 16} runs past the end")
        yield linktype, data[offset : offset + caplen], caplen, wirelen
        offset += caplen


def _read_pcapng(path: Path, data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    order = "<"
    links: list[int] = []
    offset = 0
    while offset + 12 <= len(data):
        block_type = struct.unpack_from(order + "I", data, offset)[0]
        if block_type == 0x0A0D0D0A:
            bom = data[offset + 8 : offset + 12]
            order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        length = struct.unpack_from(order + "I", data, offset + 4)[0]
        if offset + length > len(data) and length >= 12:
            raise CaptureError(
                f"{path}: the file ends inside the block at byte {offset} (it was cut short, "
                "e.g. copied while the capture was still being written)"
            )
        if length < 12:
            raise CaptureError(f"{path}: block at byte {offset} has a bad length {length}")
        body = data[offset + 8 : offset + length - 4]
        if block_type == 1:
            links.append(struct.unpack_from(order + "H", body, 0)[0])
        elif block_type == 6:
            iface, _hi, _lo, caplen, wirelen = struct.unpack_from(order + "IIIII", body, 0)
            if iface >= len(links):
                raise CaptureError(f"{path}: packet at byte {offset} names no interface")
            yield links[iface], body[20 : 20 + caplen], caplen, wirelen
        offset += length


IOCTL_REAP = re.compile(
    r"^\s*USBDEVFS_REAPURB(?:NDELAY)?\s+(-?\d+)\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(\d+)"
    r"\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s*([0-9A-Fa-f]*)\s*$"
)
IOCTL_DEVICE = re.compile(r"^@DEV\s+/dev/bus/usb/(\d+)/(\d+)")


def read_ioctl_tree(path: Path, text: str) -> list[Urb]:
    """The URBs of a umockdev ioctl recording (``umockdev-record --ioctl``), as usbmon events.

    Its reaped URBs are lines ``USBDEVFS_REAPURB[NDELAY] RET TYPE ENDPOINT STATUS FLAGS
    BUFFER_LENGTH ACTUAL_LENGTH ERROR_COUNT HEX`` (umockdev's ``ioctl_tree.c``): the buffer is
    ACTUAL_LENGTH bytes for an IN endpoint, else BUFFER_LENGTH (a control URB's 8-byte setup
    and its data). Each becomes a submission and its completion."""
    bus = address = 0
    urbs: list[Urb] = []
    for number, line in enumerate(text.splitlines(), 1):
        device = IOCTL_DEVICE.match(line)
        if device:
            bus, address = int(device[1]), int(device[2])
            continue
        reap = IOCTL_REAP.match(line)
        if reap is None:
            continue
        kind, endpoint, status = int(reap[2]), int(reap[3]), int(reap[4])
        actual, data = int(reap[7]), bytes.fromhex(reap[9]) if len(reap[9]) % 2 == 0 else None
        if data is None:
            raise CaptureError(f"{path}: line {number}: an odd number of hex digits")
        common = dict(transfer=kind, bus=bus, address=address, urb_id=number)
        if kind == URB_CONTROL:
            setup, payload = data[:8], data[8 : 8 + actual]
            if len(setup) < 8:
                raise CaptureError(f"{path}: line {number}: a control URB without its setup")
            wanted = struct.unpack_from("<H", setup, 6)[0]
            inward = bool(setup[0] & 0x80)
            ep = 0x80 if inward else 0x00
            urbs.append(
                Urb(event="S", endpoint=ep, status=-115, length=wanted, setup=setup, **common)
            )
            urbs.append(
                Urb(event="C", endpoint=ep, status=status, length=actual,
                    data=payload if inward else b"", **common)
            )  # fmt: skip
        else:
            length = int(reap[6])
            urbs.append(Urb(event="S", endpoint=endpoint, status=-115, length=length, **common))
            urbs.append(
                Urb(event="C", endpoint=endpoint, status=status, length=actual,
                    data=data[:actual] if endpoint & 0x80 else b"", **common)
            )  # fmt: skip
    return urbs


def read_urbs(path: Path) -> list[Urb]:
    """Every usbmon event of a capture (pcap, pcapng, or a umockdev ioctl recording).
    Raises :class:`CaptureError` saying what is wrong."""
    try:
        head = path.read_bytes()[:4096]
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror}") from exc
    if head.lstrip().startswith((b"@DEV", b"USBDEVFS_")):
        return read_ioctl_tree(path, path.read_text(errors="replace"))
    urbs = []
    for number, (linktype, packet, caplen, wirelen) in enumerate(read_capture(path), 1):
        if linktype != DLT_USB_LINUX_MMAPPED:
            hint = (
                " (the 48-byte usbmon header: capture on a usbmonN interface with libpcap 1.x "
                "or newer, which writes the 64-byte one)"
                if linktype == 189
                else ""
            )
            raise CaptureError(
                f"{path}: packet {number} has link type {linktype}, not usbmon "
                f"({DLT_USB_LINUX_MMAPPED}){hint}"
            )
        try:
            urbs.append(parse_usbmon(packet, caplen=caplen, wirelen=wirelen))
        except ValueError as exc:
            raise CaptureError(f"{path}: packet {number}: {exc}") from exc
    return urbs


# ---------------------------------------------------------------------------------------------
# A recording's reports → the traffic markd's open, reads and close make

_GET_DESCRIPTOR = 0x06
_SET_REPORT = 0x09
_SET_PROTOCOL = 0x0B


def _setup(request_type: int, request: int, value: int, index: int, length: int) -> bytes:
    return struct.pack("<BBHHH", request_type, request, value, index, length)


@dataclass
class _Writer:
    profile: Profile
    urbs: list[Urb] = field(default_factory=list)
    next_id: int = 0xFFFF8880_00000000
    ts: float = 1_700_000_000.0

    def _event(self, **fields: object) -> Urb:
        urb = Urb(bus=self.profile.bus, address=self.profile.address, ts=self.ts, **fields)  # type: ignore[arg-type]
        self.urbs.append(urb)
        self.ts += 0.0005
        return urb

    def control(
        self, setup: bytes, answer: bytes | None, status: int = 0, out: bytes = b""
    ) -> None:
        self.next_id += 0x100
        request_type, _r, _v, _i, length = struct.unpack("<BBHHH", setup)
        inward = bool(request_type & 0x80)
        endpoint = 0x80 if inward else 0x00
        self._event(
            event="S", transfer=URB_CONTROL, endpoint=endpoint, urb_id=self.next_id,
            status=-115, length=length, setup=setup, data=out,
        )  # fmt: skip
        data = (answer or b"")[:length] if inward else b""
        self._event(
            event="C", transfer=URB_CONTROL, endpoint=endpoint, urb_id=self.next_id,
            status=status, length=len(data) if inward else (0 if status else length), data=data,
        )  # fmt: skip

    def report(self, data: bytes, pause: float = 0.0) -> None:
        self.next_id += 0x100
        p = self.profile
        self._event(
            event="S", transfer=URB_INTERRUPT, endpoint=p.endpoint, urb_id=self.next_id,
            status=-115, length=p.packet_size,
        )  # fmt: skip
        self.ts += pause
        self._event(
            event="C", transfer=URB_INTERRUPT, endpoint=p.endpoint, urb_id=self.next_id,
            status=0, length=len(data), data=data,
        )  # fmt: skip


def host_open(w: _Writer) -> None:
    """The control requests markd makes when it opens a scanner, in order."""
    p = w.profile
    if p.serial:  # pyusb reads the languages, then the serial; no serial string, no request
        w.control(_setup(0x80, _GET_DESCRIPTOR, 0x0300, 0, 254), string_descriptor(p, 0))
        w.control(_setup(0x80, _GET_DESCRIPTOR, 0x0303, 0x0409, 254), string_descriptor(p, 3))
    w.control(_setup(0x81, _GET_DESCRIPTOR, 0x2200, 0, 4096), p.report_descriptor)
    if p.kind == "keyboard":
        w.control(_setup(0x21, _SET_PROTOCOL, 0, 0, 0), None)
        # The LED report: Num Lock on, Caps Lock off (markd's decoder assumptions).
        w.control(_setup(0x21, _SET_REPORT, 0x0200, 0, 1), None, out=b"\x01")


def host_close(w: _Writer) -> None:
    if w.profile.kind == "keyboard":
        w.control(_setup(0x21, _SET_PROTOCOL, 1, 0, 0), None)


HOST_OPEN = host_open
HOST_CLOSE = host_close


def replay_urbs(profile: Profile, reports: Iterable[tuple[bytes, float]]) -> list[Urb]:
    """The usbmon events of markd opening ``profile``, reading ``reports`` ((data, pause
    before it) pairs) and closing it."""
    writer = _Writer(profile)
    host_open(writer)
    for data, pause in reports:
        writer.report(data, pause)
    host_close(writer)
    return writer.urbs


# ---------------------------------------------------------------------------------------------
# Checking and extracting captures


@dataclass
class Report:
    problems: list[str]
    notes: list[str]
    reports: list[bytes]
    #: What the capture's enumeration showed of the device (None when it was not captured):
    #: ``usb`` as the ``# usb:`` line of a recording, and the report descriptor of the
    #: interface the reports came from.
    usb: dict[str, str] | None = None
    descriptor: bytes | None = None


def description_descriptors(path: Path) -> tuple[bytes, bytes, str]:
    """(device descriptor, configuration descriptor, serial) of the USB device in a umockdev
    description (``umockdev-record /dev/bus/usb/BUS/DEV``): its ``H: descriptors=`` attribute
    (or the node's contents on its ``N:`` line) and ``A: serial=``. Raises ValueError."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    blob, serial = None, ""
    # The device's own block only: the first, up to the blank line before its parents'.
    for line in text.split("\n\n", 1)[0].splitlines():
        if line.startswith("H: descriptors=") and blob is None:
            blob = line.split("=", 1)[1].strip()
        elif line.startswith("N: bus/usb/") and "=" in line and blob is None:
            blob = line.split("=", 1)[1].strip()
        elif line.startswith("A: serial=") and not serial:
            serial = line.split("=", 1)[1].strip()
    if blob is None:
        raise ValueError(f"{path}: no USB device with its descriptors (an 'H: descriptors=' line)")
    try:
        data = bytes.fromhex(blob)
    except ValueError:
        raise ValueError(f"{path}: the descriptors are not hex") from None
    if len(data) < 18 + 9 or data[1] != 1 or data[18 + 1] != 2:
        raise ValueError(f"{path}: the descriptors are not a device and a configuration")
    total = struct.unpack_from("<H", data, 18 + 2)[0]
    return data[:18], data[18 : 18 + total], serial


def _identity(
    mine: list[Urb], endpoints: set[int], known: tuple[bytes, bytes, str] | None = None
) -> tuple[dict[str, str] | None, bytes | None]:
    """The device and interface behind ``endpoints``, from the control transfers a host
    made when it enumerated the device (device, configuration, string and report
    descriptors), if the capture holds them, or from ``known`` (a umockdev description's
    device and configuration descriptors and serial)."""
    # usbmon's ids are URB addresses, which the kernel reuses: pair each completion with the
    # submission still open under its id.
    open_setups: dict[int, bytes] = {}
    transfers: list[tuple[bytes, bytes]] = []
    for urb in mine:
        if urb.transfer != URB_CONTROL:
            continue
        if urb.event == "S" and urb.setup is not None:
            open_setups[urb.urb_id] = urb.setup
        elif urb.event != "S":
            setup = open_setups.pop(urb.urb_id, None)
            if setup is not None and urb.event == "C" and urb.status == 0 and urb.data:
                transfers.append((setup, urb.data))
    device = config = None
    strings: dict[int, str] = {}
    reports: dict[int, bytes] = {}
    for setup, data in transfers:
        request_type, request, value, index, _length = struct.unpack("<BBHHH", setup)
        if request != _GET_DESCRIPTOR:
            continue
        kind, number = value >> 8, value & 0xFF
        if request_type == 0x80 and kind == 1 and len(data) >= 18:
            device = data
        elif request_type == 0x80 and kind == 2 and len(data) >= 9:
            if config is None or len(data) > len(config):
                config = data
        elif request_type == 0x80 and kind == 3 and number and len(data) >= 2:
            strings[number] = data[2 : data[0]].decode("utf-16-le", "replace")
        elif request_type == 0x81 and kind == 0x22:
            reports[index] = data
    if known is not None:
        device, config = device or known[0], config or known[1]
        if known[2] and len(device) >= 17 and device[16]:
            strings.setdefault(device[16], known[2])
    if device is None or config is None:
        return None, None
    vid, pid = struct.unpack_from("<HH", device, 8)
    usb = {"vid": f"{vid:04x}", "pid": f"{pid:04x}"}
    if device[16] and device[16] in strings:
        usb["serial"] = strings[device[16]]
    interface: tuple[int, int, int, int] | None = None
    offset = 0
    while offset + 2 <= len(config) and config[offset] >= 2:
        length, kind = config[offset], config[offset + 1]
        if kind == 4 and offset + 9 <= len(config):
            number, cls, sub, proto = (config[offset + i] for i in (2, 5, 6, 7))
            current = (number, cls, sub, proto)
        elif kind == 5 and offset + 7 <= len(config) and config[offset + 2] in endpoints:
            interface = current
            usb["endpoint"] = f"0x{config[offset + 2]:02x}"
            usb["packet"] = str(struct.unpack_from("<H", config, offset + 4)[0])
        offset += length
    if interface is None:
        return usb, None
    usb["interface"] = str(interface[0])
    usb["kind"] = "keyboard" if interface[1:] == (3, 1, 1) else "hid-pos"
    return usb, reports.get(interface[0])


def _device_of(
    urbs: list[Urb], device: tuple[int, int] | None
) -> tuple[tuple[int, int] | None, list[str]]:
    # Address 1 is each bus's root hub, whose interrupt endpoint reports port changes.
    interrupt_devices = sorted(
        {
            (u.bus, u.address)
            for u in urbs
            if u.transfer == URB_INTERRUPT and u.direction_in and u.address != 1
        }
    )
    if device is not None:
        return device, []
    if not interrupt_devices:
        return None, ["no interrupt IN traffic at all: nothing was scanned while capturing"]
    if len(interrupt_devices) > 1:
        listed = ", ".join(f"{b}:{a}" for b, a in interrupt_devices)
        return None, [
            f"interrupt IN traffic from {len(interrupt_devices)} devices ({listed}); "
            "choose the scanner with --device BUS:ADDR (lsusb shows it)"
        ]
    return interrupt_devices[0], []


def check(
    path: Path, device: tuple[int, int] | None = None, description: Path | None = None
) -> Report:
    """What is wrong with a capture (``problems``), what it holds (``notes``), and the HID
    reports of the chosen device's interrupt IN endpoint, in order."""
    known = None
    try:
        urbs = read_urbs(path)
        if description is not None:
            known = description_descriptors(description)
    except (CaptureError, ValueError) as exc:
        return Report([str(exc)], [], [])
    if not urbs:
        return Report([f"{path}: no packets"], [], [])
    chosen, problems = _device_of(urbs, device)
    if chosen is None:
        return Report(problems, [], [])
    mine = [u for u in urbs if (u.bus, u.address) == chosen]
    if not mine:
        return Report([f"no traffic from device {chosen[0]}:{chosen[1]}"], [], [])
    notes = [f"device {chosen[0]}:{chosen[1]}: {len(mine)} events"]
    submitted: set[int] = set()
    reports: list[bytes] = []
    orphans = short = errors = error_events = 0
    endpoints: set[int] = set()
    for urb in mine:
        if urb.caplen_short:
            short += 1
        if urb.event == "S":
            submitted.add(urb.urb_id)
            continue
        if urb.urb_id not in submitted:
            orphans += 1
        if urb.event == "E":
            error_events += 1
        elif urb.status != 0:
            errors += 1
        if urb.transfer == URB_INTERRUPT and urb.direction_in and urb.event == "C":
            endpoints.add(urb.endpoint)
            if urb.status == 0 and urb.data:
                reports.append(urb.data)
    if short:
        problems.append(
            f"{short} packets were cut short (the capture's snapshot length, or usbmon "
            "dropping data under load): capture with "
            "the full length (tcpdump -s 0; Wireshark's default)"
        )
    if orphans:
        problems.append(
            f"{orphans} completions have no submission before them: the capture started "
            "after the device was opened; start capturing first, then open the scanner"
        )
    if len(endpoints) > 1:
        listed = ", ".join(f"0x{e:02x}" for e in sorted(endpoints))
        notes.append(f"interrupt IN endpoints {listed}: reports of all of them are kept")
    if not reports:
        problems.append("no interrupt report carries data: scan codes while capturing")
    if errors:
        notes.append(f"{errors} transfers ended in an error (a STALLed request, an unplug)")
    if error_events:
        notes.append(
            f"{error_events} submissions failed at once ('E' events): umockdev's player cannot "
            "replay the capture as it is; extract it, then convert the recording"
        )
    sizes = sorted({len(r) for r in reports})
    if reports:
        notes.append(f"{len(reports)} reports of {', '.join(map(str, sizes))} bytes")
    usb, descriptor = _identity(mine, endpoints, known)
    if usb is None:
        notes.append(
            "the device's enumeration is not in the capture (start capturing, then plug the "
            "scanner in): its descriptors are not known, the replay makes up its own"
        )
    else:
        notes.append("device " + " ".join(f"{k}={v}" for k, v in usb.items()))
        if descriptor is None:
            notes.append("its report descriptor is not in the capture")
    return Report(problems, notes, reports, usb, descriptor)


def write_recording(
    path: Path,
    reports: list[bytes],
    kind: str,
    expect: list[str],
    source: str,
    *,
    usb: dict[str, str] | None = None,
    descriptor: bytes | None = None,
) -> None:
    from markd.scanners.capture import write_hid_capture

    mode = "Keyboard mode" if kind == "keyboard" else "HID-POS"
    lines = [f"{mode}, extracted from {source} by tools/hid_umockdev.py."]
    if usb:
        lines.append("usb: " + " ".join(f"{k}={v}" for k, v in usb.items() if k != "kind"))
    lines += ["expect: " + code.replace("\x1d", "\\u001d") for code in expect]
    text = write_hid_capture(
        [(r, 0.0) for r in reports], descriptor=descriptor, comment="\n".join(lines)
    )
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# Reading markd's recordings


def recording_reports(path: Path) -> tuple[str, list[tuple[bytes, float]], bytes | None]:
    """(kind, [(report, pause before it)], report descriptor or None) of a ``.hid`` file."""
    from markd.scanners.capture import read_hid_capture

    capture = read_hid_capture(path.read_text())
    reports: list[tuple[bytes, float]] = []
    for entry in capture.entries:
        if entry.unplug:
            # umockdev's player cannot unplug a device; the replay stops here.
            break
        reports.append((entry.data, entry.delay))
    # A keyboard's reports are 8 bytes (a garbled one shorter); HID-POS ones are longer.
    kind = "hid-pos" if any(len(r) > 8 for r, _ in reports) else "keyboard"
    return kind, reports, capture.descriptor


def usb_line(path: Path) -> dict[str, str]:
    """The ``# usb: vid=… pid=… endpoint=… packet=… interface=… serial=…`` line ``extract``
    writes (the device as its enumeration showed it), as a dict; empty when there is none."""
    for line in path.read_text().splitlines():
        if line.startswith("# usb:"):
            return dict(part.split("=", 1) for part in line[len("# usb:") :].split() if "=" in part)
    return {}


def profile_for(path: Path) -> Profile:
    """The emulated device for a recording: its ``# usb:`` line (the real device, as
    ``extract`` found it) and report descriptor when it has them, else made-up ones."""
    kind, _reports, descriptor = recording_reports(path)
    profile = Profile(kind=kind, report_descriptor=descriptor or b"")
    if kind == "hid-pos":
        profile.vid, profile.pid, profile.serial = 0x1EAB, 0x0010, "P1"
    device = usb_line(path)
    try:
        if "vid" in device:
            profile.vid, profile.pid = int(device["vid"], 16), int(device["pid"], 16)
            profile.serial = device.get("serial", "")
        if "endpoint" in device:
            profile.endpoint = int(device["endpoint"], 16)
            profile.packet_size = int(device["packet"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: a bad '# usb:' line ({exc})") from exc
    return profile


def convert(path: Path, outdir: Path, *, profile: Profile | None = None) -> tuple[Path, Path]:
    _kind, reports, _descriptor = recording_reports(path)
    if profile is None:
        profile = profile_for(path)
    outdir.mkdir(parents=True, exist_ok=True)
    description = outdir / f"{path.stem}.umockdev"
    traffic = outdir / f"{path.stem}.pcap"
    description.write_text(umockdev_description(profile))
    write_pcap(traffic, replay_urbs(profile, reports))
    return description, traffic


def _device_arg(text: str) -> tuple[int, int]:
    bus, _, address = text.partition(":")
    try:
        return int(bus), int(address)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BUS:ADDR (e.g. 1:7)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="a .hid recording → NAME.umockdev + NAME.pcap")
    c.add_argument("recording", type=Path)
    c.add_argument("outdir", type=Path)
    k = sub.add_parser("check", help="say what is wrong with a usbmon capture")
    k.add_argument("capture", type=Path)
    k.add_argument("--device", type=_device_arg)
    k.add_argument("--description", type=Path, help="umockdev-record's file of the device")
    e = sub.add_parser("extract", help="a capture's interrupt reports → a .hid recording")
    e.add_argument("capture", type=Path)
    e.add_argument("output", type=Path)
    e.add_argument("--device", type=_device_arg)
    e.add_argument("--description", type=Path, help="umockdev-record's file of the device")
    e.add_argument("--kind", choices=KINDS)
    e.add_argument("--expect", action="append", default=[], help="a code the scans hold")
    args = parser.parse_args(argv)

    if args.command == "convert":
        try:
            description, traffic = convert(args.recording, args.outdir)
        except (OSError, ValueError) as exc:
            print(f"{args.recording}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {description} and {traffic}")
        return 0
    report = check(args.capture, args.device, args.description)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.command == "check":
        return 1 if report.problems else 0
    if report.problems:
        return 1
    guess = "hid-pos" if any(len(r) > 8 for r in report.reports) else "keyboard"
    kind = args.kind or (report.usb or {}).get("kind") or guess
    write_recording(
        args.output,
        report.reports,
        kind,
        args.expect,
        args.capture.name,
        usb=report.usb,
        descriptor=report.descriptor,
    )
    print(f"wrote {args.output}: {len(report.reports)} {kind} reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
