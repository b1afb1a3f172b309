"""Synthetic marking codes of every shape, for the demo, tests, benchmarks and emulators.

The codes are structurally valid (right AIs, lengths, GTIN check digits, base-80 MRP) but made
up: no real product carries them. ``make(shape, rng)`` returns the canonical text with raw GS.
"""

from __future__ import annotations

import random
import string

from markd.codes import GS, GS1_CHARSET_82, gtin_check_digit, mrp_to_base80

SHAPES = ("gs1-91-92", "gs1-91-92-88", "water", "milk", "beer", "tobacco-block", "tobacco-pack")

_BASE64 = string.ascii_letters + string.digits + "+/"


def gtin(rng: random.Random, prefix: str = "0460") -> str:
    """A GTIN-14 with a valid check digit (Russian GS1 prefix 460–469 by default)."""
    body = prefix + "".join(rng.choice(string.digits) for _ in range(13 - len(prefix)))
    return body + str(gtin_check_digit(body))


def serial(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(GS1_CHARSET_82) for _ in range(length))


def _chars(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def make(shape: str, rng: random.Random | None = None) -> str:
    """One canonical code of ``shape`` (see :data:`SHAPES`)."""
    rng = rng or random.Random()
    g = gtin(rng)
    if shape in ("gs1-91-92", "gs1-91-92-88"):
        key = _chars(rng, _BASE64, 4)
        signature = _chars(rng, _BASE64, 88 if shape.endswith("88") else 44)
        return f"01{g}21{serial(rng, 13)}{GS}91{key}{GS}92{signature}"
    if shape == "water":
        return f"01{g}21{serial(rng, 13)}{GS}93{_chars(rng, _BASE64, 4)}"
    if shape == "milk":
        return f"01{g}21{serial(rng, 6)}{GS}93{_chars(rng, _BASE64, 4)}"
    if shape == "beer":
        return f"01{g}21{serial(rng, 7)}{GS}93{_chars(rng, _BASE64, 4)}"
    if shape == "tobacco-block":
        mrp = rng.randrange(100_00, 9999_99)
        return f"01{g}21{serial(rng, 7)}{GS}8005{mrp:06d}{GS}93{_chars(rng, _BASE64, 4)}"
    if shape == "tobacco-pack":
        g = gtin(rng, prefix="0000004")
        mrp = rng.randrange(50_00, 999_99)
        return g + serial(rng, 7) + mrp_to_base80(mrp) + _chars(rng, _BASE64, 4)
    raise ValueError(f"unknown sample shape {shape!r}; known: {', '.join(SHAPES)}")


def batch(count: int, seed: int = 0) -> list[str]:
    """``count`` codes cycling through every shape, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [make(SHAPES[i % len(SHAPES)], rng) for i in range(count)]
