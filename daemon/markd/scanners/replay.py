"""Decode captures offline, with the decoders and the framer the daemon uses.

``markctl decode``, the tests and the benchmark feed a capture (:mod:`markd.scanners.capture`)
through :class:`~markd.scanners.hid_keyboard.KeyboardDecoder` or
:class:`~markd.scanners.hid_pos.HidPosDecoder` and a :class:`~markd.scanners.framing.Framer`
exactly as the reader threads do, only without a device or a clock: a ``# delay`` in the
capture stands for the pause, so with ``terminator="none"`` a delay of at least ``gap_ms``
ends a code, and so does the end of the capture. As in the daemon, the gap is the silence
between reports (any report, also one that types nothing), and it also ends the discarding
of a flood or of a code broken by an unreadable report.

>>> from markd.scanners.simulated import keyboard_reports
>>> from markd.scanners.capture import Capture, CaptureEntry
>>> capture = Capture([CaptureEntry(r) for r in keyboard_reports("01\\x1d93", gs="f8")])
>>> [(d.kind, d.data) for d in decode_hid_keyboard(capture)]
[('code', b'01\\x1d93')]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markd.scanners.base import DEFAULT_GAP_MS, BadReport
from markd.scanners.capture import Capture
from markd.scanners.framing import DEFAULT_MAX_LENGTH, TERMINATORS, Framer, Overflow, Unit
from markd.scanners.hid_descriptor import BOOT_KEYBOARD_LAYOUT, KeyboardLayout, keyboard_layout
from markd.scanners.hid_keyboard import DEFAULT_GS_KEY, KeyboardDecoder, keyboard_breaks_unit
from markd.scanners.hid_pos import STANDARD_LAYOUT, HidPosDecoder, PosLayout, pos_breaks_unit


@dataclass(frozen=True)
class Decoded:
    """One thing the decode produced.

    ``kind``: ``code`` (a framed unit in ``data``), ``dropped`` (an overflow: ``detail`` says
    how many bytes), ``bad-report`` (a report the decoder refused, at ``line``), ``unplug``
    (the capture's device vanished; a partial code was dropped), ``incomplete`` (bytes left
    at the end without a terminator).
    """

    kind: str
    data: bytes = field(default=b"", repr=False)
    symbology: str | None = None
    detail: str = ""
    line: int = 0


class _Replay:
    def __init__(self, terminator: str, max_length: int, gap_ms: int) -> None:
        if terminator not in TERMINATORS:
            raise ValueError(f"terminator must be one of {', '.join(TERMINATORS)}")
        self.framer = Framer(TERMINATORS[terminator], max_length)
        self.gap = gap_ms / 1000
        self.out: list[Decoded] = []

    def units(self, units: list[Unit], symbology: str | None = None) -> None:
        for unit in units:
            if isinstance(unit, Overflow):
                # A replay reads the whole capture at once: no early report is needed, only
                # each flood's final count.
                if unit.ended:
                    self.out.append(Decoded("dropped", detail=f"{unit.dropped} bytes"))
            else:
                self.out.append(Decoded("code", unit, symbology))

    def pause(self, seconds: float) -> None:
        # in_unit, not pending: the gap also ends a discarded flood (Scanner._gap_due).
        if self.framer.terminator is None and seconds >= self.gap and self.framer.in_unit:
            self.units(self.framer.flush())

    def unplug(self, line: int) -> None:
        dropped = self.framer.pending
        self.units(self.framer.reset())
        self.out.append(Decoded("unplug", detail=f"{dropped} bytes of a partial code", line=line))

    def bad(self, line: int, error: BadReport, *, in_unit: bool) -> None:
        # As Scanner._bad_input: a report that broke a unit under way takes the rest of the
        # unit with it.
        if in_unit:
            self.framer.discard()
        else:
            self.units(self.framer.reset())
        self.out.append(Decoded("bad-report", detail=str(error), line=line))

    def finish(self) -> list[Decoded]:
        framer = self.framer
        if framer.terminator is None:
            if framer.in_unit:
                self.units(framer.flush())
        elif framer.in_unit:
            pending = framer.pending
            flood = framer.reset()
            if flood:  # a flood the capture never ended: its bytes are counted all the same
                self.units(flood)
            elif pending:
                self.out.append(Decoded("incomplete", detail=f"{pending} bytes"))
        return self.out


def decode_hid_keyboard(
    capture: Capture,
    *,
    terminator: str = "cr",
    max_length: int = DEFAULT_MAX_LENGTH,
    gap_ms: int = DEFAULT_GAP_MS,
    gs_key: str = DEFAULT_GS_KEY,
    layout: KeyboardLayout | None = None,
) -> list[Decoded]:
    """Decode a keyboard-mode capture. A capture with a descriptor holds reports as the
    descriptor declares them (report protocol: ``markctl scan-test --save`` writes one only
    then, ``usbhid-dump`` always), so its report ID is stripped as the daemon does; a
    descriptor declaring a layout markd cannot read raises :class:`~markd.errors.ScannerError`;
    one that does not parse is ignored, as the daemon ignores it."""
    if layout is None and capture.descriptor:
        try:
            layout = keyboard_layout(capture.descriptor)
        except BadReport:
            layout = None
    replay = _Replay(terminator, max_length, gap_ms)
    decoder = KeyboardDecoder(gs_key, layout=layout or BOOT_KEYBOARD_LAYOUT)
    for entry in capture.entries:
        replay.pause(entry.delay)
        if entry.unplug:
            decoder.reset()
            replay.unplug(entry.line)
            continue
        try:
            data = decoder.feed(entry.data)
        except BadReport as exc:
            decoder.reset()
            replay.bad(entry.line, exc, in_unit=keyboard_breaks_unit(replay.framer))
            continue
        if data:
            replay.units(replay.framer.feed(data))
    return replay.finish()


def decode_hid_pos(
    capture: Capture,
    *,
    terminator: str = "cr",
    max_length: int = DEFAULT_MAX_LENGTH,
    gap_ms: int = DEFAULT_GAP_MS,
    layout: PosLayout | None = None,
) -> list[Decoded]:
    """Decode a HID-POS capture; the layout comes from the capture's descriptor if it has one
    (:class:`BadReport` if that descriptor is unusable), else the standard one."""
    if layout is None:
        layout = PosLayout.from_descriptor(capture.descriptor) if capture.descriptor else None
    replay = _Replay(terminator, max_length, gap_ms)
    decoder = HidPosDecoder(layout or STANDARD_LAYOUT)
    symbology: str | None = None
    continued = False  # the last chunk said more of its scan follows
    for entry in capture.entries:
        replay.pause(entry.delay)
        if entry.unplug:
            symbology = None
            continued = False
            replay.unplug(entry.line)
            continue
        try:
            chunk = decoder.feed(entry.data)
        except BadReport as exc:
            replay.bad(entry.line, exc, in_unit=pos_breaks_unit(continued, replay.framer))
            symbology = None
            continued = False
            continue
        if chunk is None:
            continue
        continued = chunk.continued
        if symbology is None:
            symbology = chunk.symbology
        if chunk.data:
            replay.units(replay.framer.feed(chunk.data), symbology)
        if not chunk.continued:
            replay.units(replay.framer.flush(), symbology)
            symbology = None
    return replay.finish()


def decode_serial(
    data: bytes,
    *,
    terminator: str = "cr",
    max_length: int = DEFAULT_MAX_LENGTH,
    gap_ms: int = DEFAULT_GAP_MS,
) -> list[Decoded]:
    """Frame a serial capture (raw bytes; without timing, only the end of the file is a gap)."""
    replay = _Replay(terminator, max_length, gap_ms)
    replay.units(replay.framer.feed(data))
    return replay.finish()
