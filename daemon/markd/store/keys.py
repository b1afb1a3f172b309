"""Key and value encodings of the store (documented for humans in ``docs/store.md``).

Keys (bytes, ASCII):

* a КИ is stored in its GS1 text form ``01<GTIN>21<serial>``. A tobacco-pack КИ
  ``<GTIN><serial7>`` is rewritten into that form, so a unit is found whichever form a source
  used. Keeping the text form (rather than GTIN + serial without AIs) costs 4 bytes a key and
  lets a sorted text blocklist be stored line for line, without per-row work;
* a GTIN-level block is the 14-digit GTIN alone (a КИ key is always longer);
* a series-level block is the GTIN, byte 0x1F, then the series (byte 14 of a КИ key is a
  digit, so the three kinds never collide).

Blocklist values are 8 bytes, ``struct`` ``<II``: the since-time (Unix seconds) and the id of
the (reason, source) pair, interned in the ``attrs`` database. A 10-million-entry blocklist
thus costs about 51 bytes per entry on disk (measured: 487 MiB for 10 million).
"""

from __future__ import annotations

import re
import struct

from markd.codes import GS1_CHARSET_82, MarkingCode, gtin_is_valid

SERIES_SEPARATOR = b"\x1f"
BLOCK_VALUE = struct.Struct("<II")

_SERIAL = "[" + re.escape(GS1_CHARSET_82) + "]"
#: A КИ in text: GS1 form (01 + GTIN + 21 + serial) or the 21-character tobacco form.
KI_TEXT = re.compile(rf"01(\d{{14}})21({_SERIAL}{{1,20}})|(\d{{14}})({_SERIAL}{{7}})")
GTIN_TEXT = re.compile(r"\d{14}|\d{13}|\d{12}|\d{8}")
SERIES_TEXT = re.compile(rf"{_SERIAL}{{1,40}}")


class BadKey(ValueError):
    """A row value that is not a КИ, GTIN or series; the message says which and why."""


_CUT_AT_GS = re.compile(r"(?i)\x1d|<gs>|\[gs\]|\{gs\}|<fnc1>|\\u001d|\\x1d|\u241d")


def excerpt(text: str) -> str:
    """A piece of a row that is safe to show: at most its КИ part, never a crypto tail (what
    follows the first GS, in any of its written forms) and never more than 38 characters."""
    head = _CUT_AT_GS.split(text, maxsplit=1)[0]
    shown = repr(head[:38])
    return shown + ("…" if len(head) < len(text) or len(head) > 38 else "")


def gtin14(text: str) -> str:
    """A GTIN of 8, 12, 13 or 14 digits, zero-padded to 14, check digit verified."""
    if not GTIN_TEXT.fullmatch(text):
        raise BadKey(f"GTIN {text!r} must be 8, 12, 13 or 14 digits")
    if not gtin_is_valid(text):
        raise BadKey(f"GTIN {text} has a wrong check digit")
    return text.rjust(14, "0")


def ki_key(text: str) -> bytes:
    """The key of a КИ given as text (either form). Raises :class:`BadKey`."""
    m = KI_TEXT.fullmatch(text)
    if m is None:
        raise BadKey(
            f"{excerpt(text)} is not a КИ (01 + GTIN14 + 21 + serial, or the 21-character "
            "tobacco form)"
        )
    gtin, serial = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not gtin_is_valid(gtin):
        raise BadKey(f"КИ with GTIN {gtin} has a wrong check digit")
    return f"01{gtin}21{serial}".encode("ascii")


def code_key(code: MarkingCode) -> bytes:
    """The key of a parsed code's КИ (GS1 text form, whatever the code's shape)."""
    return f"01{code.gtin}21{code.serial}".encode("ascii")


def gtin_key(text: str) -> bytes:
    return gtin14(text).encode("ascii")


def series_key(gtin: str, series: str) -> bytes:
    if not SERIES_TEXT.fullmatch(series):
        raise BadKey(f"series {series[:40]!r} must be 1 to 40 GS1 characters")
    return gtin14(gtin).encode("ascii") + SERIES_SEPARATOR + series.encode("ascii")


def key_kind(key: bytes) -> str:
    """``ki``, ``gtin`` or ``series`` for a stored blocklist key."""
    if len(key) == 14:
        return "gtin"
    if SERIES_SEPARATOR in key:
        return "series"
    return "ki"


def key_to_text(key: bytes) -> dict[str, str]:
    """The row fields that reproduce ``key`` on import (КИ in its GS1 form)."""
    kind = key_kind(key)
    text = key.decode("ascii")
    if kind == "gtin":
        return {"gtin": text}
    if kind == "series":
        gtin, _, series = text.partition("\x1f")
        return {"gtin": gtin, "series": series}
    return {"ki": text}
