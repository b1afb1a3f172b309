"""Clean text: what markd accepts into a text field, how it writes one into a CSV cell, and how
``markctl`` shows one on a terminal.

Text reaches markd from elsewhere — a blocklist's reasons and sources, a fleet delta, the
kiosk's price list, a device's answer — and leaves it for a technician's terminal or a
spreadsheet. Three rules keep it from acting on either:

**Import refuses control characters** (:func:`control_problem`). A text field may not hold
any C0 control (U+0000–U+001F: no tab, no newline either — these fields are one-line labels),
DEL (U+007F), a C1 control (U+0080–U+009F, which some terminals read as ESC sequences), a
bidirectional control (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069: they reorder
what a reader sees, "Trojan Source") or a line/paragraph separator (U+2028, U+2029). Such a
row is refused like any other bad row, by ``FILE:LINE`` and the reason (the store's
``skip_bad`` leaves it out instead); nothing is silently stripped, so what is stored is
exactly what the file said.

**CSV cells are written inert** (:func:`csv_cell`). A spreadsheet runs a cell that starts
with ``=``, ``+``, ``-`` or ``@`` as a formula (and some do after a leading tab or CR), so
such a text cell is written with a leading apostrophe ``'`` — the mark spreadsheets
themselves use for "text, not a formula", and the OWASP "CSV injection" advice. markd's own
CSV reader takes the apostrophe off again (:func:`csv_uncell`), so an export imported on
another kiosk keeps its text exactly.

**markctl prints nothing raw** (:func:`printable`). Every ``markctl`` line that shows data
from the store, the control API, the journal or a device passes it through
:func:`printable`, which writes each character :func:`control_problem` refuses as an escape
(``\\x1b``, ``\\u{202e}``), so text that reached markd before these rules (or from a device)
still cannot move the cursor, change colours, retitle the window or reorder a line.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, TextIO

#: Bidirectional controls (Unicode TR9): ALM, LRM, RLM, LRE…RLO, LRI…PDI.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: Lone surrogates (U+D800–U+DFFF): what a JSON ``\\ud800`` escape gives, no character at all
#: (it cannot even be written out as UTF-8).
_SURROGATES = "\ud800-\udfff"
#: Every character a text field may not hold and markctl never prints raw.
CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029{_SURROGATES}]")
#: The first characters a spreadsheet may run as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def control_problem(text: str, what: str = "text") -> str | None:
    """Why ``text`` may not be imported (the first control character in it, by code point
    and position), or None when it is clean."""
    found = CONTROL.search(text)
    if found is None:
        return None
    if 0xD800 <= ord(found.group()) <= 0xDFFF:
        return (
            f"{what} holds a lone surrogate U+{ord(found.group()):04X} at character "
            f"{found.start() + 1} (half of a UTF-16 pair, not a character); refused"
        )
    return (
        f"{what} holds the control character U+{ord(found.group()):04X} at character "
        f"{found.start() + 1}; control characters are refused"
    )


def printable(value: object) -> str:
    """``value`` as text safe for a terminal: every control character (see :data:`CONTROL`)
    written as ``\\xNN`` (up to U+00FF) or ``\\u{NNNN}``, everything else as it is."""
    return CONTROL.sub(_escape, value if isinstance(value, str) else str(value))


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{{{code:04x}}}"


#: What ``json.dumps(…, ensure_ascii=False)`` leaves raw inside a string: it escapes C0
#: controls itself, not DEL, C1, bidi controls, U+2028/U+2029 or lone surrogates.
_JSON_RAW = re.compile(f"[\x7f-\x9f{_BIDI}\u2028\u2029{_SURROGATES}]")


def printable_json(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` with every control character in
    a string escaped as JSON's ``\\uNNNN``: the same JSON to a parser, nothing a terminal
    acts on (Cyrillic stays readable)."""
    options.setdefault("ensure_ascii", False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, **options))


class PrintableWriter(io.TextIOBase):
    """A text stream that passes what is written through :func:`printable`, newlines
    excepted: ``markctl`` wraps its stdout and stderr in one, so no output line — whatever
    data it shows, and however a command formats it — can carry a raw control character.
    :meth:`write_raw` is for markctl's own control output (a progress bar's ``\\r``)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write("\n".join(printable(part) for part in text.split("\n")))
        return len(text)

    def write_raw(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def buffer(self) -> Any:
        """The wrapped stream's bytes (``markctl scan decode`` writes codes as bytes)."""
        return self.stream.buffer  # type: ignore[attr-defined]


def csv_cell(value: object) -> object:
    """A value for a CSV cell: text that a spreadsheet would run as a formula (it starts
    with one of :data:`FORMULA_STARTS`) gets a leading ``'``; text already starting with
    ``'`` gets one more, so :func:`csv_uncell` gives back exactly what was written. Numbers
    and None are returned unchanged (a number is never run)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def csv_uncell(text: str) -> str:
    """What :func:`csv_cell` wrote, read back: one leading ``'`` taken off."""
    return text[1:] if text.startswith("'") else text


__all__ = [
    "CONTROL",
    "FORMULA_STARTS",
    "PrintableWriter",
    "control_problem",
    "csv_cell",
    "csv_uncell",
    "printable",
    "printable_json",
]
