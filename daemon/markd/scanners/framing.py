"""Framing: turn the byte stream a scanner sends into one unit per scanned code.

Scanners end each scan with a suffix chosen in their setup menu: usually CR (Enter), sometimes
LF, CR LF or TAB, and a few send nothing at all (domain.md §8.3). A serial read can return half
a code, or several codes in one burst when the cashier scans quickly, so the byte stream has to
be cut on the terminator, not on read boundaries.

:class:`Framer` is a pure, synchronous state machine with no I/O, so it is tested on its own and
shared by every backend:

>>> f = Framer(b"\\r")
>>> f.feed(b"0104650117240408215Qbag!\\x1d93Zjqw\\r0104670")
[b'0104650117240408215Qbag!\\x1d93Zjqw']
>>> f.feed(b"540176099215LpGKy\\x1d93dGVz\\r\\n")
[b'0104670540176099215LpGKy\\x1d93dGVz']

A line that runs longer than ``max_length`` without a terminator (a scanner stuck in a loop, line
noise, a wrong baud rate) is dropped, and the rest of it up to the next terminator is discarded
too: it is the tail of the same broken unit, not a code of its own. The framer never buffers
more than ``max_length`` bytes; of the discarded tail it keeps only a count. With
``terminator=none`` there is no terminator to wait for: the pause that ends every unit
(:meth:`Framer.flush`) ends the flood as well, so the next scan is kept.

Such a flood is reported as :class:`Overflow` events, so the service can journal it:

* when the limit is crossed and the end of the unit is not in sight yet, at once, with
  ``ended=False`` and the bytes dropped so far: the cashier's re-scan prompt and the journal
  cannot wait for an end that a scanner with the wrong suffix never sends;
* when the flood ends (its terminator, the pause, or :meth:`Framer.reset` on an unplug), with
  ``ended=True`` and every byte of the unit: the bytes held when the limit was crossed plus
  the whole discarded tail, terminator excluded.

An overlong unit whose terminator arrives in the same read gives only the second event. So
every flood gives exactly one ``ended=True`` event, and those add up to all the bytes dropped:

>>> f = Framer(b"\\r", max_length=8)
>>> f.feed(b"Z" * 10)
[Overflow(dropped=10, ended=False)]
>>> f.feed(b"Z" * 5 + b"\\r")
[Overflow(dropped=15, ended=True)]
"""

from __future__ import annotations

from dataclasses import dataclass

#: Terminator names accepted in scanner URLs (``?terminator=cr``) and the bytes they stand for.
#: ``none`` means the scanner sends no suffix; the backend then ends a unit on a pause
#: (see :meth:`Framer.flush`).
TERMINATORS: dict[str, bytes | None] = {
    "cr": b"\r",
    "lf": b"\n",
    "crlf": b"\r\n",
    "tab": b"\t",
    "none": None,
}

#: Longest unit kept by default. The longest ЧЗ code (shoes with an 88-char signature and
#: optional AIs) is about 160 characters; 512 leaves room for symbology prefixes and text tokens.
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class Overflow:
    """A unit longer than ``max_length`` arrived without a terminator and was dropped.

    ``ended``: the unit is over (its terminator or pause came) and ``dropped`` counts all of
    its bytes. ``ended=False``: the limit was just crossed and the unit goes on; ``dropped``
    counts the bytes so far, and an ``ended=True`` event with the whole count follows when the
    unit ends.
    """

    dropped: int
    ended: bool = True


#: What :meth:`Framer.feed` returns: a complete unit (terminator stripped) or an overflow event.
Unit = bytes | Overflow


class Framer:
    """Cut a scanner byte stream into units.

    :param terminator: the suffix that ends a scan (one of the values of :data:`TERMINATORS`),
        or ``None`` for scanners without a suffix (units then end only on :meth:`flush`).
        With ``b"\\r"`` an LF right after the CR is swallowed too, also when it arrives in the
        next read, so a scanner set to CR LF still works on a port configured for CR.
        With ``b"\\n"`` a CR right before the LF is stripped, for the same reason.
    :param max_length: the longest unit kept; longer ones become :class:`Overflow`.

    Empty units (two terminators in a row) are skipped: a scanner never sends an empty code.
    """

    def __init__(self, terminator: bytes | None = b"\r", max_length: int = DEFAULT_MAX_LENGTH):
        if terminator is not None and terminator not in TERMINATORS.values():
            raise ValueError(f"unsupported terminator {terminator!r}")
        if max_length < 1:
            raise ValueError("max_length must be positive")
        self.terminator = terminator
        self.max_length = max_length
        self._buffer = bytearray()
        # True after an overflow (or discard()) until the unit's end: the rest is thrown away.
        self._discarding = False
        # Bytes of an overflowed unit dropped so far (None when the unit being discarded came
        # from discard(), which its caller reports): only a count, never the bytes.
        self._flood_bytes: int | None = None
        # True when the last byte seen was a CR terminator, so an LF at the start of the next
        # read belongs to it (terminator "cr" with a scanner that sends CR LF).
        self._swallow_lf = False

    @property
    def pending(self) -> int:
        """Number of bytes held back, waiting for a terminator."""
        return len(self._buffer)

    @property
    def in_unit(self) -> bool:
        """True while a unit is under way: bytes are held back, or the rest of a dropped unit
        is being discarded. Such a unit still needs its end (a terminator, or with
        ``terminator=none`` the pause that :meth:`flush` stands for)."""
        return bool(self._buffer) or self._discarding

    def reset(self) -> list[Unit]:
        """Forget any partial unit (used when the device goes away mid-scan).

        A flood being discarded ends here too: its final :class:`Overflow` is returned (an
        empty list otherwise), so the bytes it dropped are still counted."""
        out = self._end_flood(len(self._buffer))
        self._buffer.clear()
        self._discarding = False
        self._swallow_lf = False
        return out

    def discard(self) -> int:
        """Drop the partial unit and the rest of it, up to its end (the next terminator or
        :meth:`flush`), as after an overflow; return how many bytes were dropped now. Used
        when a report in the middle of a unit could not be read: what follows is the tail of
        a broken code, not a code of its own."""
        dropped = len(self._buffer)
        self._buffer.clear()
        # A flood already being discarded stays one flood: its final Overflow counts on.
        self._discarding = True
        self._swallow_lf = False
        return dropped

    def feed(self, data: bytes) -> list[Unit]:
        """Add the bytes of one read; return the units and overflow events they complete."""
        out: list[Unit] = []
        if not data:
            return out
        if self._swallow_lf and data[:1] == b"\n":
            data = data[1:]
        self._swallow_lf = False
        self._buffer += data

        terminator = self.terminator
        if terminator is not None:
            while (index := self._buffer.find(terminator)) >= 0:
                unit = bytes(self._buffer[:index])
                del self._buffer[: index + len(terminator)]
                if terminator == b"\r":
                    if self._buffer[:1] == b"\n":
                        del self._buffer[:1]
                    elif not self._buffer:
                        self._swallow_lf = True
                elif terminator == b"\n" and unit.endswith(b"\r"):
                    unit = unit[:-1]
                self._emit(unit, out)

        crossed = not self._discarding and len(self._buffer) > self.max_length
        if crossed:
            self._discarding = True
            self._flood_bytes = 0
        if self._discarding:
            # The unit's bytes with no end in this read: count them and keep only what could
            # be the first half of a CR LF terminator cut by the read.
            keep = len(terminator) - 1 if terminator is not None else 0
            thrown = max(0, len(self._buffer) - keep)
            del self._buffer[:thrown]
            if self._flood_bytes is not None:
                self._flood_bytes += thrown
                if crossed:
                    # Reported now, not at the end: a scanner whose suffix is not the
                    # configured terminator never sends that end.
                    out.append(Overflow(self._flood_bytes, ended=False))
        return out

    def flush(self) -> list[Unit]:
        """End the current unit now (a pause in the stream); return it if there is one.

        Backends call this after an inter-character gap when the scanner sends no terminator
        (whenever :attr:`in_unit`, not only when bytes are pending). It also ends an overflow
        or a :meth:`discard`: the next byte starts a fresh unit.
        """
        out: list[Unit] = []
        unit = bytes(self._buffer)
        self._buffer.clear()
        self._emit(unit, out)
        self._swallow_lf = False
        return out

    def _emit(self, unit: bytes, out: list[Unit]) -> None:
        if self._discarding:
            # The terminator (or pause) ends the flood; ``unit`` is the flood's last piece.
            out += self._end_flood(len(unit))
            self._discarding = False
            return
        if len(unit) > self.max_length:
            out.append(Overflow(len(unit)))
        elif unit:
            out.append(unit)

    def _end_flood(self, tail: int) -> list[Unit]:
        """The final event of an overflowed unit ending now (``tail``: its last bytes)."""
        if self._flood_bytes is None:
            return []
        dropped = self._flood_bytes + tail
        self._flood_bytes = None
        return [Overflow(dropped)]
