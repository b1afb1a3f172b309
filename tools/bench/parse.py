#!/usr/bin/env python3
"""Parse-rate benchmark for markd.codes.parse (target: >= 50,000 codes/s on one core).

Parses 100,000 synthetic codes of every shape (clean, as a HID-POS or serial scanner sends
them), then the same codes mangled the way keyboard-mode scanners mangle them (suffix, text
GS tokens, Russian layout, lost GS). Prints a human summary and, as the final line, JSON:
{"parse_per_s": ..., "mangled_parse_per_s": ..., "count": ..., "best_of": ...}.
Each figure is the best of several rounds, in one process, on one core.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from markd import samples
from markd.codes import GS, CodeError, parse

_RU = dict(
    zip(
        "qwertyuiop[]asdfghjkl;'zxcvbnm,./QWERTYUIOP{}ASDFGHJKL:\"ZXCVBNM<>?",
        "йцукенгшщзхъфывапролджэячсмитьбю.ЙЦУКЕНГШЩЗХЪФЫВАПРОЛДЖЭЯЧСМИТЬБЮ,",
        strict=True,
    )
)


def mangle(code: str, rng: random.Random) -> str:
    way = rng.randrange(4)
    if way == 0:
        return code + "\r\n"
    if way == 1:
        return "]d2" + code.replace(GS, "<GS>")
    if way == 2:
        return "".join(_RU.get(c, c) for c in code)
    return code.replace(GS, "")


def rate(codes: list[str], rounds: int) -> tuple[float, int]:
    """Best rate over ``rounds`` and how many of the codes were refused."""
    best = float("inf")
    refused = 0
    for _ in range(rounds):
        refused = 0
        started = time.perf_counter()
        for text in codes:
            try:
                parse(text)
            except CodeError:  # refusals cost time too and are part of the mix
                refused += 1
        best = min(best, time.perf_counter() - started)
    return len(codes) / best, refused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    codes = samples.batch(args.count, seed=42)
    rng = random.Random(7)
    mangled = [mangle(c, rng) for c in codes]
    clean, clean_refused = rate(codes, args.rounds)
    dirty, dirty_refused = rate(mangled, args.rounds)
    print(
        f"clean codes:   {clean:10,.0f} parses/s  ({1e6 / clean:.1f} µs each), "
        f"{clean_refused} refused"
    )
    print(
        f"mangled codes: {dirty:10,.0f} parses/s  ({1e6 / dirty:.1f} µs each), "
        f"{dirty_refused} refused (ambiguous lost GS)"
    )
    print(f"target 50,000/s: {'met' if clean >= 50_000 else 'NOT met'} ({clean / 50_000:.2f}x)")
    print(
        json.dumps(
            {
                "parse_per_s": round(clean),
                "mangled_parse_per_s": round(dirty),
                "refused_clean": clean_refused,
                "refused_mangled": dirty_refused,
                "count": args.count,
                "best_of": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
