"""The one lenient reader of the integers devices and services send.

The same integer reaches markd in several spellings. The Local Module and the ККТ's JSON send
a count now as a number, now as a digit string; the ТС ПИоТ speaks the protobuf JSON mapping,
which writes 64-bit integers as strings (``"1735000000000"``); a JSON library that keeps every
number as a double turns ``1`` into ``1.0``. All of these are the same value and are read alike.

The same values may also be hostile: a device in a bad state, a proxy answering in its place,
a file written by something else. Two traps hide in Python's own conversions, and both have
bitten code that read with ``str.isdigit()`` then ``int()``:

* ``"²".isdigit()`` is True but ``int("²")`` raises ValueError; ``int("٣")`` (an Arabic-Indic
  three) is 3, and ``int("1_000")`` is 1000. None of those is a digit string a device sends.
* since Python 3.11 ``int()`` refuses more than 4,300 digits with ValueError, and ``float()``
  of a large enough int raises OverflowError.

So the readers below look at ASCII characters and lengths first and convert only what is known
to convert; they never raise because of the value they are given, only return None, and a
caller that needs a typed error (a receipt without a document number, an answer without a
usable code) raises its own.

:func:`read_int`
    an integer (the contract is in its docstring).
:func:`read_number`
    a finite real number, for the figures that are fractional (a host's average answer time).
"""

from __future__ import annotations

import math

#: The digits of 2**64 - 1, the widest integer the protobuf JSON mapping carries (uint64).
DEFAULT_MAX_DIGITS = 20

#: What :func:`read_int` strips around a digit string: ASCII white space only. Wider Unicode
#: white space (a no-break space, an ideographic space) is not how any protocol pads a number.
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_ASCII_DIGITS = frozenset("0123456789")
#: The most digits ``int()`` converts since Python 3.11 (``sys.int_info.default_max_str_digits``).
_INT_STR_LIMIT = 4300


def read_int(
    value: object,
    *,
    lo: int | None = None,
    hi: int | None = None,
    max_digits: int = DEFAULT_MAX_DIGITS,
) -> int | None:
    """An integer from a JSON value a device or service sent; None when it is not one.

    Accepted:

    * a JSON integer (``int``, not ``bool``);
    * a float with no fractional part (``1.0``, ``1.735e12``);
    * a string of ASCII digits ``0``–``9``, optionally with one leading ``+`` or ``-`` and with
      ASCII white space (space, tab, CR, LF, VT, FF) around it: ``"42"``, ``" -7 "``,
      ``"007"`` (7).

    Refused, with None:

    * ``None``, ``True``/``False`` (Python counts them as 0 and 1; no protocol means that),
      bytes, lists, mappings and every other type;
    * NaN, infinities and floats with a fraction (``1.5``);
    * strings that are empty or only a sign, or hold anything else: other Unicode digits
      (``"²"``, ``"٣"``, ``"１"``), inner white space or underscores (``"1 000"``,
      ``"1_000"``), a decimal point or exponent (``"1.0"``, ``"1e3"``), hex (``"0x10"``), two
      signs (``"+-1"``);
    * a value of more than ``max_digits`` decimal digits, whatever its type (for a string the
      digits as written, leading zeros included); the default, 20, holds any 64-bit integer;
    * a value below ``lo`` or above ``hi`` when they are given.

    It never raises because of ``value``: a 5,000-digit string is refused by its length before
    any conversion. ``max_digits`` must be between 1 and 4,300 (``int()``'s own limit); another
    value is the caller's mistake and raises ValueError.
    """
    if not 1 <= max_digits <= _INT_STR_LIMIT:
        raise ValueError(f"max_digits must be 1..{_INT_STR_LIMIT}, got {max_digits}")
    number: int
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = int(value)
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        # Compared before converting: int(1e300) works but has 301 digits.
        if abs(value) >= 10**max_digits:
            return None
        number = int(value)
    elif isinstance(value, str):
        parsed = _parse_digits(value, max_digits)
        if parsed is None:
            return None
        number = parsed
    else:
        return None
    if abs(number) >= 10**max_digits:
        return None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        return None
    return number


def _parse_digits(text: str, max_digits: int) -> int | None:
    """``[+-]DIGITS`` in ASCII, white space around it allowed; None for anything else."""
    body = text.strip(_ASCII_SPACE)
    digits = body[1:] if body[:1] in ("+", "-") else body
    if not digits or len(digits) > max_digits or not _ASCII_DIGITS.issuperset(digits):
        return None
    return int(body)


def read_number(value: object, *, lo: float | None = None, hi: float | None = None) -> float | None:
    """A finite real number from a JSON number, as a float; None when it is not one.

    Accepted: a JSON integer or float (``12``, ``12.5``). Refused, with None: ``bool``,
    ``None``, strings (the figures read this way come as numbers in every protocol markd
    speaks; a string there is not a figure), other types, NaN and infinities, an integer too
    large for a float (``float(10**400)`` would raise OverflowError), and a value below ``lo``
    or above ``hi`` when they are given. It never raises because of ``value``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:  # past ~1.8e308: no figure is that large
            return None
    elif isinstance(value, float):
        number = value
    else:
        return None
    if not math.isfinite(number):
        return None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        return None
    return number


__all__ = ["DEFAULT_MAX_DIGITS", "read_int", "read_number"]
