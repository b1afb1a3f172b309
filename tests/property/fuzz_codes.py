"""Mutation fuzzer for markd.codes.parse.

Starts from valid synthetic codes of every shape and from random noise, applies random
mutations (drop, insert, replace, swap, truncate, duplicate, GS removal, tokens, layout, raw
bytes) and checks the parser's contract on each input:

* only CodeError escapes, never with reason ``internal-error``;
* an error message never quotes a piece of the code's 92 signature;
* when only GS separators were removed (all, or one), a successful parse gives back the
  original code
  (a lost GS is never "recovered" into a different code).

Run directly for a longer session:  python tests/property/fuzz_codes.py [COUNT] [SEED]
"""

from __future__ import annotations

import collections
import random
import sys
import time

from markd import samples
from markd.codes import GS, GS1_CHARSET_82, parse
from markd.errors import CodeError

_NOISE = GS1_CHARSET_82 + GS + "\r\n\t \x00\x7f]<>[]{}\\йцукенЁъ\u241d\ufffd"
_TOKENS = [
    "<GS>",
    "[GS]",
    "{GS}",
    "\\u001d",
    "]d2",
    "]C1",
    GS,
    "91",
    "92",
    "93",
    "8005",
    "21",
    "01",
]


def _mutate(rng: random.Random, text: str) -> str:
    op = rng.randrange(10)
    pos = rng.randrange(len(text) + 1)
    if op == 0 and text:  # drop a character
        return text[:pos] + text[pos + 1 :]
    if op == 1:  # insert a character
        return text[:pos] + rng.choice(_NOISE) + text[pos:]
    if op == 2 and text:  # replace a character
        return text[:pos] + rng.choice(_NOISE) + text[pos + 1 :]
    if op == 3 and len(text) > 1:  # swap neighbours
        pos = min(pos, len(text) - 2)
        return text[:pos] + text[pos + 1] + text[pos] + text[pos + 2 :]
    if op == 4:  # truncate
        return text[:pos]
    if op == 5:  # duplicate a slice
        end = rng.randrange(pos, len(text) + 1)
        return text[:end] + text[pos:end] + text[end:]
    if op == 6:  # insert a token
        return text[:pos] + rng.choice(_TOKENS) + text[pos:]
    if op == 7:  # drop one GS
        return text.replace(GS, "", 1)
    if op == 8:  # arbitrary unicode
        return text[:pos] + chr(rng.randrange(0x20, 0x11000)) + text[pos:]
    return text + rng.choice(["\r", "\n", "\t", GS, " "])


def run(count: int = 100_000, seed: int = 0, progress: bool = False) -> collections.Counter:
    """Parse ``count`` fuzzed inputs; return a Counter of outcomes (shape or error reason)."""
    rng = random.Random(seed)
    pool = samples.batch(500, seed=seed)
    outcomes: collections.Counter = collections.Counter()
    for i in range(count):
        kind = rng.random()
        original = rng.choice(pool)
        gs_only = False
        if kind < 0.05:  # pure noise
            text: str | bytes = "".join(rng.choice(_NOISE) for _ in range(rng.randrange(80)))
        elif kind < 0.08:  # raw bytes
            text = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        elif kind < 0.14:  # every GS removed
            text, gs_only = original.replace(GS, ""), True
        elif kind < 0.20:  # one GS removed, the others kept
            gaps = [i for i, ch in enumerate(original) if ch == GS]
            cut = rng.choice(gaps) if gaps else len(original)
            text, gs_only = original[:cut] + original[cut + 1 :], True
        else:
            text = original
            for _ in range(rng.randrange(1, 4)):
                text = _mutate(rng, text)
        try:
            code = parse(text)
        except CodeError as exc:
            if exc.reason == "internal-error":
                raise AssertionError(f"internal error on input #{i}: {text!r}") from exc.__cause__
            signature = original.rpartition(GS + "92")[2] if GS + "92" in original else ""
            for start in range(len(signature) - 5):
                piece = signature[start : start + 6]
                if not piece.isdigit() and piece in exc.message:
                    raise AssertionError(f"message quotes the signature: {exc.message!r}") from None
            outcomes[exc.reason] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the fuzzer
            name = type(exc).__name__
            raise AssertionError(f"{name} escaped parse() on input #{i}: {text!r}") from exc
        else:
            if gs_only and code.km != original:
                raise AssertionError(f"lost GS recovered into a different code: {original!r}")
            outcomes["ok:" + code.shape] += 1
        if progress and i and i % 20_000 == 0:
            print(f"  {i}/{count}", file=sys.stderr)
    return outcomes


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    s = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time())
    started = time.perf_counter()
    result = run(n, s, progress=True)
    took = time.perf_counter() - started
    for key, value in result.most_common():
        print(f"{value:8d}  {key}")
    print(f"{n} inputs, seed {s}, {took:.1f} s, no contract violation")
