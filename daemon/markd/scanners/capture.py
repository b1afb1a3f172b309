"""Capture files: what a scanner sent, saved for ``markctl decode``, tests and the simulator.

HID captures are text, one report per line in hex (spaces between bytes optional)::

    # markd capture of hid-kbd://0c2e:0b61      ← lines starting with '#' are comments
    # descriptor: 05 01 09 06 a1 01 ...        ← the interface's report descriptor (optional)
    00 00 27 00 00 00 00 00
    # delay 0.250                               ← a pause before the next report, in seconds
    00 00 00 00 00 00 00 00
    # unplug                                    ← the device vanishes here (simulator only)

The output of ``usbhid-dump`` is read as well: its ``BUS:DEV:IFACE:DESCRIPTOR`` block gives
the descriptor, each ``BUS:DEV:IFACE:STREAM TIMESTAMP`` block one report (its data may wrap
over several lines), and the timestamps give the pauses::

    001:007:000:STREAM             1714035000.123456
     00 00 27 00 00 00 00 00

Serial captures are the raw bytes, nothing else.

>>> c = read_hid_capture("# delay 0.5\\n00 00 27 00 00 00 00 00\\n0000000000000000\\n")
>>> [(e.data.hex(), e.delay) for e in c.entries]
[('0000270000000000', 0.5), ('0000000000000000', 0.0)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Longest report accepted in a capture (USB full-speed interrupt packets are 64 bytes; a
#: report may span a few).
MAX_REPORT_LENGTH = 4096


class CaptureError(ValueError):
    """A capture file that cannot be read; the message names the line."""


@dataclass(frozen=True)
class CaptureEntry:
    """One report, or an unplug marker (``unplug`` True, no data)."""

    data: bytes = field(repr=False)
    #: Seconds of silence before this entry.
    delay: float = 0.0
    unplug: bool = False
    #: Line number in the file (for messages).
    line: int = 0


@dataclass
class Capture:
    entries: list[CaptureEntry] = field(default_factory=list)
    #: The HID report descriptor, when the capture carries one.
    descriptor: bytes | None = None

    @property
    def reports(self) -> list[bytes]:
        return [e.data for e in self.entries if not e.unplug]


_USBHID_DUMP_HEADER = re.compile(
    r"^(\d{3}):(\d{3}):(\d{3}):(DESCRIPTOR|STREAM)\s+(\d+(?:\.\d+)?)\s*$"
)
_HEX_CLEAN = re.compile(r"[\s:]+")


def _hex(text: str, line: int) -> bytes:
    compact = _HEX_CLEAN.sub("", text)
    if compact.lower().startswith("0x"):
        compact = compact[2:]
    if len(compact) % 2:
        raise CaptureError(f"line {line}: odd number of hex digits")
    try:
        data = bytes.fromhex(compact)
    except ValueError:
        raise CaptureError(f"line {line}: not hex bytes: {text.strip()[:40]!r}") from None
    if len(data) > MAX_REPORT_LENGTH:
        raise CaptureError(f"line {line}: a report of {len(data)} bytes is too long")
    return data


def read_hid_capture(text: str) -> Capture:
    """Parse a HID capture (markd's format or ``usbhid-dump`` output); :class:`CaptureError`
    names the first bad line."""
    capture = Capture()
    pending_delay = 0.0
    # An open usbhid-dump block: (kind, timestamp, bytes, first line).
    block: tuple[str, float, bytearray, int] | None = None
    last_stream_time: float | None = None

    def close_block() -> None:
        nonlocal block, pending_delay, last_stream_time
        if block is None:
            return
        kind, stamp, data, line = block
        block = None
        if kind == "DESCRIPTOR":
            capture.descriptor = bytes(data)
            return
        delay = pending_delay
        if last_stream_time is not None and stamp > last_stream_time:
            delay += stamp - last_stream_time
        last_stream_time = stamp
        pending_delay = 0.0
        capture.entries.append(CaptureEntry(bytes(data), round(delay, 6), line=line))

    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.rstrip()
        header = _USBHID_DUMP_HEADER.match(line)
        if header:
            close_block()
            block = (header[4], float(header[5]), bytearray(), number)
            continue
        if block is not None:
            if not line.strip():
                close_block()
                continue
            if line[:1].isspace():
                block[2].extend(_hex(line, number))
                if len(block[2]) > MAX_REPORT_LENGTH:
                    raise CaptureError(f"line {number}: report too long")
                continue
            close_block()
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            directive = stripped[1:].strip()
            lowered = directive.lower()
            if lowered.startswith("delay"):
                try:
                    seconds = float(directive[5:].strip())
                except ValueError:
                    raise CaptureError(f"line {number}: '# delay SECONDS' expected") from None
                if not 0 <= seconds <= 3600:
                    raise CaptureError(f"line {number}: delay out of range")
                pending_delay += seconds
            elif lowered.startswith("descriptor:"):
                capture.descriptor = _hex(directive[len("descriptor:") :], number)
            elif lowered == "unplug":
                capture.entries.append(
                    CaptureEntry(b"", round(pending_delay, 6), unplug=True, line=number)
                )
                pending_delay = 0.0
            continue
        capture.entries.append(
            CaptureEntry(_hex(stripped, number), round(pending_delay, 6), line=number)
        )
        pending_delay = 0.0
    close_block()
    return capture


def write_hid_capture(
    reports: Iterable[tuple[bytes | None, float]],
    *,
    descriptor: bytes | None = None,
    comment: str | None = None,
) -> str:
    """A capture in markd's format from (report, delay before it) pairs; a None report writes
    an ``# unplug`` marker. Delays under 1 ms are left out: they are the scanner's own pace,
    not pauses between codes."""
    lines = []
    if comment:
        lines += [f"# {part}" for part in comment.splitlines()]
    if descriptor:
        lines.append("# descriptor: " + descriptor.hex(" "))
    for report, delay in reports:
        if delay >= 0.001:
            lines.append(f"# delay {delay:.3f}")
        lines.append("# unplug" if report is None else report.hex(" "))
    return "\n".join(lines) + "\n"
