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
noise, a wrong baud rate) is dropped and reported once as :class:`Overflow`, so the service can
journal it; the framer never buffers more than ``max_length`` bytes. The remainder of such a
flood, up to the next terminator, is discarded too: it is the tail of the same broken unit, not
a code of its own. With ``terminator=none`` there is no terminator to wait for: the pause that
ends every unit (:meth:`Framer.flush`) ends the flood as well, so the next scan is kept.
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

    ``dropped`` counts the bytes thrown away when the limit was crossed (the bytes that follow,
    up to the next terminator, are discarded silently as part of the same unit).
    """

    dropped: int


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
        # True after an overflow until the next terminator: the rest of the flood is discarded.
        self._discarding = False
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

    def reset(self) -> None:
        """Forget any partial unit (used when the device goes away mid-scan)."""
        self._buffer.clear()
        self._discarding = False
        self._swallow_lf = False

    def discard(self) -> int:
        """Drop the partial unit and the rest of it, up to its end (the next terminator or
        :meth:`flush`), as after an overflow; return how many bytes were dropped now. Used
        when a report in the middle of a unit could not be read: what follows is the tail of
        a broken code, not a code of its own."""
        dropped = len(self._buffer)
        self._buffer.clear()
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

        if len(self._buffer) > self.max_length:
            if not self._discarding:
                out.append(Overflow(len(self._buffer)))
                self._discarding = True
            self._buffer.clear()
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
            # The terminator ends the flood; what came before it is the flood's tail.
            self._discarding = False
            return
        if len(unit) > self.max_length:
            out.append(Overflow(len(unit)))
        elif unit:
            out.append(unit)
