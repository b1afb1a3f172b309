"""Reading loosely typed JSON from devices and services.

The Local Module and the ККТ's JSON both send numbers now as numbers, now as digit strings
(and occasionally as ``1.0``); a boolean is never a number, although Python says it is.
"""

from __future__ import annotations

from typing import Any


def json_int(value: Any) -> int | None:
    """An integer from a JSON number, an integral float or a string of digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
