"""Decode captures offline, with the decoders and the framer the daemon uses.

``markctl decode``, the tests and the benchmark feed a capture (:mod:`markd.scanners.capture`)
through :class:`~markd.scanners.hid_keyboard.KeyboardDecoder` or
:class:`~markd.scanners.hid_pos.HidPosDecoder` and a :class:`~markd.scanners.framing.Framer`
exactly as the reader threads do, only without a device or a clock: a ``# delay`` in the
capture stands for the pause, so with ``terminator="none"`` a delay of at least ``gap_ms``
ends a code, and so does the end of the capture.

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
from markd.scanners.hid_keyboard import DEFAULT_GS_KEY, KeyboardDecoder
from markd.scanners.hid_pos import STANDARD_LAYOUT, HidPosDecoder, PosLayout


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
                self.out.append(Decoded("dropped", detail=f"{unit.dropped} bytes"))
            else:
                self.out.append(Decoded("code", unit, symbology))

    def pause(self, seconds: float) -> None:
        if self.framer.terminator is None and seconds >= self.gap and self.framer.pending:
            self.units(self.framer.flush())

    def unplug(self, line: int) -> None:
        dropped = self.framer.pending
        self.framer.reset()
        self.out.append(Decoded("unplug", detail=f"{dropped} bytes of a partial code", line=line))

    def bad(self, line: int, error: BadReport) -> None:
        self.framer.reset()
        self.out.append(Decoded("bad-report", detail=str(error), line=line))

    def finish(self) -> list[Decoded]:
        if self.framer.pending:
            if self.framer.terminator is None:
                self.units(self.framer.flush())
            else:
                pending = self.framer.pending
                self.framer.reset()
                self.out.append(Decoded("incomplete", detail=f"{pending} bytes"))
        return self.out


def decode_hid_keyboard(
    capture: Capture,
    *,
    terminator: str = "cr",
    max_length: int = DEFAULT_MAX_LENGTH,
    gap_ms: int = DEFAULT_GAP_MS,
    gs_key: str = DEFAULT_GS_KEY,
) -> list[Decoded]:
    """Decode a keyboard-mode capture."""
    replay = _Replay(terminator, max_length, gap_ms)
    decoder = KeyboardDecoder(gs_key)
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
            replay.bad(entry.line, exc)
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
    for entry in capture.entries:
        replay.pause(entry.delay)
        if entry.unplug:
            symbology = None
            replay.unplug(entry.line)
            continue
        try:
            chunk = decoder.feed(entry.data)
        except BadReport as exc:
            symbology = None
            replay.bad(entry.line, exc)
            continue
        if chunk is None:
            continue
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
