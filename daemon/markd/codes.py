"""Marking codes (КМ): normalisation, repair and parsing.

``parse(text)`` turns whatever a scanner delivered into a :class:`MarkingCode`, or raises
:class:`markd.errors.CodeError` with one of the reason codes in :data:`REASONS`. No other
exception leaves :func:`parse` for any input (a property test and a fuzz run hold it to that).

Shapes understood (``MarkingCode.shape``)::

    gs1-91-92      01 GTIN14 21 serial ␝91 key(4) ␝92 signature(44|88)
                   (shoes, clothes, medicines, …)
    gs1-93         01 GTIN14 21 serial ␝93 crypto(4) [␝ extra AIs]
                   (water: serial 13, dairy: 6, beer: 7)
    tobacco-block  01 GTIN14 21 serial(7) ␝8005 MRP(6) ␝93 crypto(4)
    tobacco-pack   29 characters, no AIs: GTIN14 serial(7) MRP(4, base 80) crypto(4)
    ki             01 GTIN14 21 serial, no verification part (a bare КИ, e.g. ЭСДН)

(``␝`` is the GS separator, byte 0x1D.)

Normalisation runs before parsing and every change it makes is listed in
``MarkingCode.repairs``, in the order applied:

``suffix-stripped``        CR, LF, TAB or spaces around the code (scanner suffix/prefix keys)
``cyrillic-layout``        the code was typed by a keyboard-mode scanner under the Russian ЙЦУКЕН
                           layout; every character is mapped back to the US key that produced it
``gs-escape``              the 6-character text ``\\u001d`` (or ``\\x1d``) replaced by GS
``gs-token``               a text stand-in for GS (``<GS>``, ``[GS]``, ``{GS}``, ``<FNC1>``, ``␝``)
``symbology-prefix``       an AIM symbology identifier such as ``]d2`` or ``]C1`` removed
``leading-gs-dropped``     a leading FNC1 delivered as GS removed
``trailing-gs-dropped``    a GS after the last element removed
``double-gs-collapsed``    two GS in a row collapsed into one
``leading-zero-restored``  the ``0`` of AI ``01`` was lost (``104…`` → ``0104…``)
``lost-gs-recovered``      a GS the scanner dropped was put back where the shape makes it certain

A lost GS is recovered only where the shape leaves one reading: a fixed-length field
(91 is 4 characters, 8005 is 6, 93 is 4) or a serial of one of the configured fixed lengths
(:attr:`CodesOptions.serial_lengths`) followed by a crypto AI. When two readings are possible,
or a GS is evidently missing but no configured length explains it, parsing fails with
``ambiguous-lost-gs``: the kiosk asks for a re-scan instead of guessing.

The crypto tail (values of AIs 91/92/93 and the tobacco tail) is secret-like: it is kept out of
``repr()``, out of every error message and out of :meth:`MarkingCode.to_dict` unless asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from markd.errors import CodeError

GS = "\x1d"

#: The GS1 "AI encodable character set 82", which is all a marking code may contain besides GS.
GS1_CHARSET_82 = (
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)

#: Base-80 alphabet of the tobacco pack MRP, index 0 first (domain.md §2.3).
A80 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!\"%&'*+-./_,:;=<>?"
_A80_INDEX = {c: i for i, c in enumerate(A80)}

#: Longest input looked at; anything longer is refused before any other work (a 92/88 code
#: with extras is well under 200 characters).
MAX_INPUT_LENGTH = 512

#: reason code → (English text for technicians, short Russian text for a customer screen).
REASONS: dict[str, tuple[str, str]] = {
    "empty": ("nothing to parse", "Пустой код, отсканируйте ещё раз"),
    "too-long": ("input longer than any marking code", "Слишком длинный код"),
    "invalid-characters": (
        "character not allowed in a marking code",
        "Код содержит недопустимые символы",
    ),
    "not-a-marking-code": (
        "not a marking code (a plain product barcode or another code)",
        "Это не код маркировки, отсканируйте DataMatrix",
    ),
    "truncated": (
        "the code ends in the middle of an element",
        "Код неполный, отсканируйте ещё раз",
    ),
    "bad-gtin-check-digit": ("GTIN check digit is wrong", "Неверная контрольная цифра GTIN"),
    "bad-serial": ("serial number (AI 21) is empty or too long", "Неверный серийный номер"),
    "unknown-ai": ("unknown application identifier", "Неизвестная структура кода"),
    "bad-ai-value": (
        "an element has the wrong length or characters",
        "Неверная структура кода маркировки",
    ),
    "bad-shape": (
        "elements do not form a known marking-code shape",
        "Неверная структура кода маркировки",
    ),
    "missing-crypto": (
        "no verification part (crypto tail) where one is needed",
        "Код без криптохвоста, отсканируйте код маркировки",
    ),
    "bad-mrp": ("tobacco MRP is not a base-80 number", "Неверная МРЦ в коде табака"),
    "ambiguous-lost-gs": (
        "the GS separator was lost and cannot be restored with certainty",
        "Код считан неполностью, отсканируйте ещё раз",
    ),
    "internal-error": ("unexpected parser failure", "Ошибка разбора кода"),
}

#: Reasons where scanning again (or fixing the scanner's settings) can succeed.
RESCAN_REASONS = frozenset({"ambiguous-lost-gs", "truncated", "empty"})

# Known product groups: name → id as used in groupIds / pg (domain.md §2.2).
GROUP_IDS = {"tobacco": 3, "milk": 8, "water": 13}


@dataclass(frozen=True)
class CodesOptions:
    """Parser settings (configuration section ``[codes]``).

    ``serial_lengths``: fixed serial lengths that may be used to re-insert a lost GS between
    the serial and a crypto AI (13: most groups; 6: dairy; 7: tobacco block and, unconfirmed,
    beer). ``ki_serial_lengths``: serial lengths accepted for a bare КИ with no crypto tail.
    """

    recover_lost_gs: bool = True
    serial_lengths: tuple[int, ...] = (13, 6, 7)
    ki_serial_lengths: tuple[int, ...] = ()


DEFAULT_OPTIONS = CodesOptions()


@dataclass(frozen=True, slots=True)
class MarkingCode:
    """A parsed marking code. ``km`` and ``crypto`` are secret-like and never appear in repr."""

    km: str = field(repr=False)  # full code, canonical, with GS (0x1D) separators
    ki: str  # КИ: the code without its verification part; safe to log
    gtin: str
    serial: str
    crypto: dict[str, str] = field(repr=False)  # AI → value, or {"tail": …} for a tobacco pack
    mrp_kopecks: int | None
    shape: str
    group: str  # best guess from the shape: tobacco, milk, water, beer or unknown
    group_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other AIs (17 expiry, 3103 weight…)
    repairs: tuple[str, ...] = ()
    symbology: str | None = None  # AIM identifier the scanner sent, e.g. "]d2"

    @property
    def has_crypto(self) -> bool:
        return bool(self.crypto)

    def to_dict(self, show_crypto: bool = False) -> dict[str, Any]:
        """JSON-ready fields. The crypto values (and ``km``) only with ``show_crypto``."""
        if show_crypto:
            crypto: dict[str, str] = dict(self.crypto)
        else:
            crypto = {k: f"<hidden, {len(v)} chars>" for k, v in self.crypto.items()}
        data: dict[str, Any] = {
            "ki": self.ki,
            "gtin": self.gtin,
            "serial": self.serial,
            "crypto": crypto,
            "mrp_kopecks": self.mrp_kopecks,
            "shape": self.shape,
            "group": self.group,
            "group_id": self.group_id,
            "extra": dict(self.extra),
            "repairs": list(self.repairs),
            "symbology": self.symbology,
        }
        if show_crypto:
            data["km"] = self.km
        return data


def _error(reason: str, detail: str) -> CodeError:
    return CodeError(f"{REASONS[reason][0]}: {detail}", reason)


# --------------------------------------------------------------------------------------------
# GTIN and MRP arithmetic


def gtin_check_digit(data_digits: str) -> int:
    """GS1 mod-10 check digit for the data digits (all but the check digit).

    Weights 3, 1, 3, 1 … from the rightmost data digit; check = (10 - sum mod 10) mod 10.
    """
    b = data_digits.encode("ascii")
    threes = b[::-2]  # rightmost first: weight 3
    ones = b[-2::-2]  # weight 1
    total = 3 * (sum(threes) - 48 * len(threes)) + sum(ones) - 48 * len(ones)
    return -total % 10


def gtin_is_valid(gtin: str) -> bool:
    """True for an all-digit GTIN (8, 12, 13 or 14 digits) whose last digit checks."""
    return (
        len(gtin) >= 2
        and gtin.isascii()
        and gtin.isdigit()
        and gtin_check_digit(gtin[:-1]) == ord(gtin[-1]) - 48
    )


def mrp_from_base80(text: str) -> int:
    """Decode the 4-character tobacco MRP (big-endian base 80) into kopecks."""
    value = 0
    for ch in text:
        index = _A80_INDEX.get(ch)
        if index is None:
            raise _error("bad-mrp", f"character {ch!r} is not in the base-80 alphabet")
        value = value * 80 + index
    return value


def mrp_to_base80(kopecks: int) -> str:
    """Encode kopecks as the 4-character tobacco MRP (inverse of :func:`mrp_from_base80`)."""
    if not 0 <= kopecks < 80**4:
        raise ValueError(f"MRP {kopecks} kopecks does not fit in 4 base-80 digits")
    out = []
    for _ in range(4):
        kopecks, digit = divmod(kopecks, 80)
        out.append(A80[digit])
    return "".join(reversed(out))


# --------------------------------------------------------------------------------------------
# Normalisation

# ЙЦУКЕН (Russian, Windows/X11 standard) character → the US-layout character on the same key
# with the same Shift state. When a keyboard-mode scanner "types" a code while the host has the
# Russian layout active, every key arrives as the Russian character; mapping back is exact.
_RU_KEYS = 'ёйцукенгшщзхъфывапролджэячсмитьбю.ЁЙЦУКЕНГШЩЗХЪФЫВАПРОЛДЖЭЯЧСМИТЬБЮ,"№;:?/'
_US_KEYS = "`qwertyuiop[]asdfghjkl;'zxcvbnm,./~QWERTYUIOP{}ASDFGHJKL:\"ZXCVBNM<>?@#$^&|"
_RU_TO_US = str.maketrans(_RU_KEYS, _US_KEYS)
_CYRILLIC = re.compile("[\u0400-\u04ff]")
_LATIN = re.compile("[A-Za-z]")

_ESCAPES = re.compile(r"\\(?:u001[dD]|x1[dD])")
_TOKENS = re.compile(r"<[Gg][Ss]>|\[[Gg][Ss]\]|\{[Gg][Ss]\}|<[Ff][Nn][Cc]1>|\u241d")
# Tokens made only of characters a real code may hold: "<GS>" could in theory be part of a serial.
_AMBIGUOUS_TOKENS = re.compile(r"<[Gg][Ss]>|<[Ff][Nn][Cc]1>")
_SYMBOLOGY = re.compile(r"\][A-Za-z][0-9A-Za-z]")
_VALID_CHARS = re.compile("[" + re.escape(GS1_CHARSET_82) + GS + "]*")
_WHITESPACE = " \r\n\t"


def _normalise(
    text: str, repairs: list[str], replace_tokens: bool = True
) -> tuple[str, str | None]:
    """Apply every normalisation step, appending to ``repairs``; return (text, symbology)."""
    stripped = text.strip(_WHITESPACE)
    if stripped != text:
        repairs.append("suffix-stripped")
    s = stripped
    # Under the Russian layout every letter key gives Cyrillic, so a text that also holds Latin
    # letters was not typed that way: it is left alone (and refused for its Cyrillic).
    if not s.isascii() and _CYRILLIC.search(s) and not _LATIN.search(s):
        s = s.translate(_RU_TO_US)
        repairs.append("cyrillic-layout")
    if "\\" in s:
        s, n = _ESCAPES.subn(GS, s)
        if n:
            repairs.append("gs-escape")
    if replace_tokens and ("<" in s or "[" in s or "{" in s or "\u241d" in s):
        s, n = _TOKENS.subn(GS, s)
        if n:
            repairs.append("gs-token")
    symbology = None
    # The prefix may come before or after an FNC1-as-GS; ']' is outside the GS1 character set,
    # so a leading ']x9' can only be an AIM symbology identifier.
    if s.startswith(GS):
        s = s.lstrip(GS)
        repairs.append("leading-gs-dropped")
    if s.startswith("]") and _SYMBOLOGY.match(s):
        symbology = s[:3]
        s = s[3:]
        repairs.append("symbology-prefix")
        if s.startswith(GS):
            s = s.lstrip(GS)
            repairs.append("leading-gs-dropped")
    if s.endswith(GS):
        s = s.rstrip(GS)
        repairs.append("trailing-gs-dropped")
    if GS + GS in s:
        while GS + GS in s:
            s = s.replace(GS + GS, GS)
        repairs.append("double-gs-collapsed")
    return s, symbology


def mentions_gs(text: str) -> bool:
    """True when ``text`` holds a GS separator in any form the parser understands (the byte,
    an escape such as ``\\u001d`` or a token such as ``<GS>``): it is a full code, not a КИ."""
    return GS in text or bool(_TOKENS.search(text)) or bool(_ESCAPES.search(text))


def _check_characters(s: str, layout_repaired: bool) -> None:
    if _VALID_CHARS.fullmatch(s):
        return
    for pos, ch in enumerate(s):
        if ch != GS and ch not in GS1_CHARSET_82:
            hint = " (after undoing the Russian keyboard layout)" if layout_repaired else ""
            what = f"U+{ord(ch):04X}" + (f" {ch!r}" if ch.isprintable() and ch != " " else "")
            raise _error("invalid-characters", f"{what} at position {pos + 1}{hint}")
    raise _error("invalid-characters", "unexpected character")  # unreachable in practice


# --------------------------------------------------------------------------------------------
# GS1 element strings

# AI → (length, predefined). Predefined-length AIs (GS1 General Specifications, figure 7.8.4-2)
# need no GS after them. A negative length means "variable, up to that many characters".
# 91/92/93 are variable in GS1, but Честный ЗНАК fixes their lengths; _CZ_LENGTHS holds those.
_AI: dict[str, tuple[int, bool]] = {
    "00": (18, True),
    "01": (14, True),
    "02": (14, True),
    "10": (-20, False),
    "11": (6, True),
    "12": (6, True),
    "13": (6, True),
    "15": (6, True),
    "16": (6, True),
    "17": (6, True),
    "21": (-20, False),
    "22": (-20, False),
    "240": (-30, False),
    "241": (-30, False),
    "30": (-8, False),
    "37": (-8, False),
    "7003": (10, False),
    "8005": (6, False),
    "91": (-90, False),
    "92": (-90, False),
    "93": (-90, False),
    "94": (-90, False),
    "95": (-90, False),
    "96": (-90, False),
    "97": (-90, False),
    "98": (-90, False),
    "99": (-90, False),
}
_NUMERIC_AI = {"00", "01", "02", "11", "12", "13", "15", "16", "17", "30", "37", "7003", "8005"}
_CZ_LENGTHS: dict[str, tuple[int, ...]] = {"91": (4,), "92": (44, 88), "93": (4,)}
_CRYPTO_AIS = ("91", "92", "93")
# AIs that may directly follow a serial when the GS before them was lost.
_AFTER_SERIAL = ("91", "93", "8005")


def _lookup_ai(seg: str, pos: int) -> tuple[str, int, bool]:
    for size in (2, 3, 4):
        ai = seg[pos : pos + size]
        spec = _AI.get(ai)
        if spec is not None:
            return ai, spec[0], spec[1]
        if len(ai) == 4 and ai.isdigit() and "31" <= ai[:2] <= "36":
            return ai, 6, True  # 310n … 369n: measures, n6 with n decimals
    return "", 0, False


def _parse_fields(segments: list[str]) -> tuple[list[tuple[str, str]], bool]:
    """Split GS-delimited segments into (AI, value) pairs.

    Returns the pairs and whether a lost GS was put back after a fixed-length ЧЗ field.
    Raises CodeError (unknown-ai, truncated, bad-ai-value) when a segment does not parse.
    """
    fields: list[tuple[str, str]] = []
    recovered = False
    for seg in segments:
        pos = 0
        while pos < len(seg):
            ai, length, _predefined = _lookup_ai(seg, pos)
            if not ai:
                # Say where, not what: the characters may be a piece of a crypto tail.
                raise _error("unknown-ai", f"no known AI at element {len(fields) + 1}")
            start = pos + len(ai)
            if length > 0:
                value = seg[start : start + length]
                if len(value) < length:
                    raise _error("truncated", f"AI {ai} needs {length} characters")
                end = start + length
            else:
                cz = _CZ_LENGTHS.get(ai)
                if cz is not None and len(cz) == 1 and len(seg) - start > cz[0]:
                    # 91 and 93 are 4 characters for Честный ЗНАК: anything after them in the
                    # same segment is the next element whose GS was lost.
                    end = start + cz[0]
                    recovered = True
                else:
                    end = len(seg)
                value = seg[start:end]
                if not value or len(value) > -length:
                    raise _error("bad-ai-value", f"AI {ai} has {len(value)} characters")
            if ai in _NUMERIC_AI and not value.isdigit():
                raise _error("bad-ai-value", f"AI {ai} must be digits")
            if end < len(seg) and not _predefined and length > 0:
                recovered = True  # e.g. 8005 (n6) glued to the next AI
            fields.append((ai, value))
            pos = end
    return fields, recovered


@dataclass
class _Reading:
    serial: str
    fields: list[tuple[str, str]]
    shape: str
    repaired: bool


def _shape_of(serial: str, fields: list[tuple[str, str]], opts: CodesOptions) -> str:
    """Name the shape formed by a serial and the elements after it, or raise CodeError."""
    if not 1 <= len(serial) <= 20:
        raise _error("bad-serial", f"serial has {len(serial)} characters (1 to 20 allowed)")
    values = dict(fields)
    if len(values) != len(fields):
        raise _error("bad-shape", "an AI appears twice")
    if "01" in values or "21" in values or "00" in values:
        raise _error("bad-shape", "AI 01, 21 or 00 after the serial")
    for ai in _CRYPTO_AIS:
        value = values.get(ai)
        if value is not None and len(value) not in _CZ_LENGTHS[ai]:
            sizes = " or ".join(str(n) for n in _CZ_LENGTHS[ai])
            raise _error("bad-ai-value", f"AI {ai} has {len(value)} characters, expected {sizes}")
    has91, has92, has93 = "91" in values, "92" in values, "93" in values
    if has91 or has92:
        if not (has91 and has92):
            raise _error("bad-shape", "AI 91 and AI 92 must come together")
        if has93 or "8005" in values:
            raise _error("bad-shape", "AI 93 or 8005 together with 91/92")
        return "gs1-91-92"
    if has93:
        return "tobacco-block" if "8005" in values else "gs1-93"
    if fields:
        raise _error("missing-crypto", "elements after the serial but no 91/92 or 93")
    if len(serial) not in opts.ki_serial_lengths:
        allowed = ", ".join(str(n) for n in opts.ki_serial_lengths) or "none"
        raise _error(
            "missing-crypto",
            f"no 91/92 or 93 after a {len(serial)}-character serial "
            f"(a bare КИ is accepted with serial lengths {allowed})",
        )
    return "ki"


def _reading(serial: str, segments: list[str], opts: CodesOptions, cut: bool) -> _Reading:
    fields, recovered = _parse_fields(segments)
    shape = _shape_of(serial, fields, opts)
    return _Reading(serial, fields, shape, recovered or cut)


def _parse_gs1(s: str, opts: CodesOptions) -> tuple[str, _Reading]:
    """Parse a code starting with AI 01. Returns (GTIN, the one valid reading)."""
    gtin = s[2:16]
    if len(gtin) < 14 or not gtin.isdigit():
        if len(s) < 16 and s[2:].isdigit():
            raise _error("truncated", f"AI 01 needs 14 digits, got {len(s) - 2}")
        raise _error("bad-ai-value", "AI 01 (GTIN) must be 14 digits")
    if not gtin_is_valid(gtin):
        raise _error(
            "bad-gtin-check-digit",
            f"GTIN {gtin} should end in {gtin_check_digit(gtin[:13])}",
        )
    pos = 16
    if s[pos : pos + 1] == GS:  # a GS after a predefined-length AI is allowed
        pos += 1
    if s[pos : pos + 2] != "21":
        if pos < len(s) < pos + 2 and s[pos] == "2":
            raise _error("truncated", f"GS1 code with GTIN {gtin} ends before its serial")
        if pos >= len(s):
            raise _error("not-a-marking-code", f"GS1 code with GTIN {gtin} but no serial (AI 21)")
        raise _error(
            "not-a-marking-code",
            f"GS1 code with GTIN {gtin} whose next element is not a serial (AI 21)",
        )
    segments = s[pos + 2 :].split(GS)
    head, rest = segments[0], segments[1:]

    first_error: CodeError | None = None
    try:
        delimited: _Reading | None = _reading(head, rest, opts, cut=False)
    except CodeError as exc:
        # Kept without its traceback, which holds this frame: kept with it, the error and
        # this frame would hold each other, a cycle left for the cyclic collector (a pause in
        # some later check) on every way out below, a good reading among them.
        delimited, first_error = None, exc.with_traceback(None)
    cuts: list[_Reading] = []
    if opts.recover_lost_gs:
        for n in dict.fromkeys(opts.serial_lengths):
            if n < len(head) and head.startswith(_AFTER_SERIAL, n):
                try:
                    cuts.append(_reading(head[:n], [head[n:], *rest], opts, cut=True))
                except CodeError:
                    pass
    candidates = ([delimited] if delimited is not None else []) + cuts
    if len(candidates) == 1:
        return gtin, candidates[0]
    # A GS further on was kept but the one after the serial was lost (a tobacco block read as
    # "21<serial7>8005…␝93…"): the serial then has a length no Честный ЗНАК shape uses, while
    # exactly one cut at a configured length explains the rest.
    if (
        delimited is not None
        and rest
        and len(cuts) == 1
        and len(delimited.serial) not in opts.serial_lengths
    ):
        return gtin, cuts[0]
    ki_text = f"01{gtin}21…"
    if len(candidates) > 1:
        lengths = sorted({len(c.serial) for c in candidates})
        raise _error(
            "ambiguous-lost-gs",
            f"{ki_text}: serial could be {' or '.join(map(str, lengths))} characters; re-scan",
        )
    # Nothing fits. If a crypto AI shows up inside the serial, a GS was evidently lost.
    assert first_error is not None
    if first_error.reason in ("bad-serial", "missing-crypto", "bad-shape") and any(
        head.find(ai, 1) > 0 for ai in _AFTER_SERIAL
    ):
        raise _error(
            "ambiguous-lost-gs",
            f"{ki_text}: a GS separator is missing and no configured serial length explains it",
        )
    try:
        raise first_error
    finally:
        first_error = None  # raised, its traceback holds this frame again (see above)


def _group_of(shape: str, serial: str, extra: dict[str, str]) -> str:
    if shape in ("tobacco-pack", "tobacco-block"):
        return "tobacco"
    if shape == "gs1-93":
        if len(serial) == 6 or "17" in extra or any(ai.startswith("310") for ai in extra):
            return "milk"
        if len(serial) == 13:
            return "water"  # water, soft drinks, БАД and antiseptics share this shape
        if len(serial) == 7:
            return "beer"  # (unconfirmed shape)
    return "unknown"


def _build_gs1(
    gtin: str, reading: _Reading, repairs: list[str], symbology: str | None
) -> MarkingCode:
    crypto: dict[str, str] = {}
    extra: dict[str, str] = {}
    km = [f"01{gtin}21{reading.serial}"]
    for ai, value in reading.fields:
        (crypto if ai in _CRYPTO_AIS else extra)[ai] = value
        km.append(GS + ai + value)
    if reading.repaired:
        repairs.append("lost-gs-recovered")
    group = _group_of(reading.shape, reading.serial, extra)
    return MarkingCode(
        km="".join(km),
        ki=km[0],
        gtin=gtin,
        serial=reading.serial,
        crypto=crypto,
        mrp_kopecks=int(extra["8005"]) if "8005" in extra else None,
        shape=reading.shape,
        group=group,
        group_id=GROUP_IDS.get(group),
        extra=extra,
        repairs=tuple(repairs),
        symbology=symbology,
    )


def _parse_tobacco_pack(s: str, repairs: list[str], symbology: str | None) -> MarkingCode:
    gtin = s[:14]
    if not gtin_is_valid(gtin):
        raise _error(
            "bad-gtin-check-digit", f"GTIN {gtin} should end in {gtin_check_digit(gtin[:13])}"
        )
    mrp = mrp_from_base80(s[21:25])
    return MarkingCode(
        km=s,
        ki=s[:21],
        gtin=gtin,
        serial=s[14:21],
        crypto={"tail": s[25:29]},
        mrp_kopecks=mrp,
        shape="tobacco-pack",
        group="tobacco",
        group_id=GROUP_IDS["tobacco"],
        repairs=tuple(repairs),
        symbology=symbology,
    )


def _looks_like_tobacco_pack(s: str) -> bool:
    return len(s) == 29 and GS not in s and s[:14].isdigit()


def _parse_normalised(
    s: str, repairs: list[str], symbology: str | None, opts: CodesOptions
) -> MarkingCode:
    if not s:
        raise _error("empty", "nothing left after removing scanner prefixes and suffixes")
    if s.isdigit() and len(s) in (8, 12, 13, 14):
        kind = {8: "EAN-8", 12: "UPC-A", 13: "EAN-13", 14: "GTIN-14/ITF-14"}[len(s)]
        note = "" if gtin_is_valid(s) else ", and its check digit is wrong"
        raise _error("not-a-marking-code", f"a plain {kind} product barcode{note}")
    if s.startswith("00") and len(s) == 20 and s.isdigit():
        raise _error("not-a-marking-code", "an SSCC transport-package code (AI 00)")
    if s.startswith("01"):
        try:
            gtin, reading = _parse_gs1(s, opts)
        except CodeError:
            # A 29-character tobacco pack code may start with "01" too.
            if _looks_like_tobacco_pack(s) and gtin_is_valid(s[:14]):
                return _parse_tobacco_pack(s, repairs, symbology)
            raise
        return _build_gs1(gtin, reading, repairs, symbology)
    if _looks_like_tobacco_pack(s):
        return _parse_tobacco_pack(s, repairs, symbology)
    # "104…": the scanner (or a human) lost the 0 of AI 01.
    if s.startswith("1") and s[1:15].isdigit() and s[15:17] == "21" and gtin_is_valid(s[1:15]):
        gtin, reading = _parse_gs1("0" + s, opts)
        repairs.append("leading-zero-restored")
        return _build_gs1(gtin, reading, repairs, symbology)
    raise _error(
        "not-a-marking-code",
        f"does not start with AI 01 and is not a 29-character tobacco code ({len(s)} characters)",
    )


def _parse(text: str | bytes, opts: CodesOptions) -> MarkingCode:
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_INPUT_LENGTH * 4:
            raise _error("too-long", f"{len(text)} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(
                "invalid-characters",
                f"byte 0x{text[exc.start]:02X} at offset {exc.start} is not UTF-8",
            ) from None
    if len(text) > MAX_INPUT_LENGTH:
        raise _error("too-long", f"{len(text)} characters (at most {MAX_INPUT_LENGTH})")
    repairs: list[str] = []
    s, symbology = _normalise(text, repairs)
    _check_characters(s, "cyrillic-layout" in repairs)
    try:
        return _parse_normalised(s, repairs, symbology, opts)
    except CodeError:
        # "<GS>" and "<FNC1>" are made of characters a serial may hold; if reading them as GS
        # failed, try the text as it came before giving up.
        if "gs-token" in repairs and _AMBIGUOUS_TOKENS.search(text):
            retry: list[str] = []
            s2, sym2 = _normalise(text, retry, replace_tokens=False)
            try:
                _check_characters(s2, "cyrillic-layout" in retry)
                return _parse_normalised(s2, retry, sym2, opts)
            except CodeError:
                pass
        raise


def parse(text: str | bytes, options: CodesOptions | None = None) -> MarkingCode:
    """Normalise, repair and parse one scanned code.

    Raises :class:`CodeError` (and nothing else) when the text is not a usable marking code.
    """
    opts = options or DEFAULT_OPTIONS
    try:
        return _parse(text, opts)
    except CodeError:
        raise
    except Exception as exc:  # a parser bug must not take the daemon down
        raise CodeError(
            f"{REASONS['internal-error'][0]} ({type(exc).__name__})", "internal-error"
        ) from exc
