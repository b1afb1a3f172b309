"""Caps on money: the most a ККТ takes, in one place.

Every sum markd hands a fiscal printer — a price, a position's sum, a receipt's total, a
payment — and every quantity must fit the narrowest field a supported ККТ writes it into.
Anything beyond is refused with a reason at each edge where money enters (the control API,
``markctl sell --price``, the price list, the sale session's positions and payments) before a
printer is touched: a price of 10**30 kopecks never becomes a fiscal document. Non-integer
and negative sums are refused by the same rule, and a payment of nothing; a price of 0 stays
allowed (as it was before the caps).
"""

from __future__ import annotations

import re

#: The largest sum of money, in kopecks, markd hands a ККТ: a price, a position's sum, a
#: receipt's total or a payment. The Shtrih protocol writes each of them as 5 bytes of kopecks
#: (domain.md §7.7, ``FF46`` operation V2 and the close), so 2**40 − 1 (10 995 116 277.75
#: roubles) is the most it can take; ATOL JSON takes roubles as numbers, and the same cap keeps
#: every kopeck exact in a double (2**40 < 2**53). A bigger sum is refused with a reason at
#: every edge (the control API, ``markctl sell``, the price list,
#: :meth:`markd.fiscal.model.Position.problems`, the sale desk's close)
#: before any printer is asked.
MAX_KOPECKS = 2**40 - 1
#: The largest quantity of one position: the Shtrih protocol writes it as 6 bytes holding the
#: quantity × 10**6, so (2**48 − 1) // 10**6 whole units.
MAX_QUANTITY = (2**48 - 1) // 10**6


def money_problem(value: object, what: str = "a price", minimum: int = 0) -> str | None:
    """Why ``value`` is not a sum of money a ККТ can take, or None when it is: an ``int`` (not
    a ``bool``, not a float) from ``minimum`` (0: a price, a position's sum, a total may be
    nothing, as before the caps; a payment passes 1) to :data:`MAX_KOPECKS` kopecks. ``what``
    names the sum in the message (``a price``, ``a payment``, ``the total``). The one rule for
    every edge."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{what} is a whole number of kopecks, got {type(value).__name__}"
    if value < 0:
        return f"{what} cannot be negative, got {_short(value)} kopecks"
    if value < minimum:
        return f"{what} is at least {minimum} kopeck(s), got {value}"
    if value > MAX_KOPECKS:
        return f"{what} is at most {MAX_KOPECKS} kopecks (what a ККТ takes), got {_short(value)}"
    return None


def quantity_problem(value: object) -> str | None:
    """Why ``value`` is not a quantity a ККТ can take (an ``int`` from 1 to
    :data:`MAX_QUANTITY`), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"a quantity is a whole number, got {type(value).__name__}"
    if value < 1:
        return f"a quantity is at least 1, got {_short(value)}"
    if value > MAX_QUANTITY:
        return f"a quantity is at most {MAX_QUANTITY} (what a ККТ takes), got {_short(value)}"
    return None


def _short(value: int) -> str:
    """A huge number for a message without writing all its digits (10**4000 has 4001)."""
    digits = len(str(abs(value))) if value.bit_length() < 10_000 else None
    if digits is None or digits > 20:
        return "a number of more than 20 digits"
    return str(value)


#: Roubles as a technician types them: digits, then at most two decimals after ``.`` or ``,``.
#: Up to 40 digits are read (then refused by value, with the cap in the message); more are
#: not a price at all.
_ROUBLES = re.compile(r"([0-9]{1,40})(?:[.,]([0-9]{1,2}))?")


def roubles_to_kopecks(text: str) -> tuple[int | None, str | None]:
    """A price a technician typed (``markctl sell --price``, ``markctl check --price``) in
    kopecks, or None and why: a price the ККТ can take (:func:`money_problem`), written as
    roubles with at most two decimals (``89.90``, ``89,9``, ``90``, ``0``; not ``-1``,
    ``1.005``, ``1e30``, ``nan``)."""
    found = _ROUBLES.fullmatch(text.strip())
    if found is None:
        return None, f"expected roubles such as 89.90 (at most 2 decimals), got {text!r}"
    kopecks = int(found.group(1)) * 100 + int((found.group(2) or "0").ljust(2, "0"))
    problem = money_problem(kopecks, "a price")
    return (None, problem) if problem else (kopecks, None)


__all__ = [
    "MAX_KOPECKS",
    "MAX_QUANTITY",
    "money_problem",
    "quantity_problem",
    "roubles_to_kopecks",
]
