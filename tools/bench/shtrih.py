#!/usr/bin/env python3
"""Shtrih benchmark: what one marked unit costs on a Shtrih-M ККТ at 115200 baud, and how much
of it is markd's own.

Usage::

    tools/bench/shtrih.py [--units N] [--per-receipt K] [--baudrate B] [--seed S]

The Shtrih emulator (:mod:`markd.emulators.shtrih`) runs as its own process (``python -m
markd.emulators shtrih --pty --baudrate B``), so it shares no interpreter lock with the side
being measured; with ``--baudrate`` it paces both directions of its pty at a serial line of B
baud (10 bits a byte: 86.8 µs at 115200), so an exchange costs what it costs on a real line.
markd's real backend opens ``shtrih://<pty>?baudrate=B`` (pyserial, as on a till), opens a
shift, closes one untimed receipt (warm-up), then sells N marked units (default 200) in
receipts of K (default 5) as the sale session does: when a receipt starts, the shift made
sure of (``ensure_shift``: the status readings), the ФН's leftover results cleared (``FF69``
2) and the receipt opened (in the vendor's order, on the device: a leftover looked for,
``0x8D``, ``FF0C``); for each unit :meth:`check_code` (``FF61`` check, ``FF69`` accept) when
it is scanned; at the close (full status, ``FF40``, ``FF01``, per position ``FF46`` +
``FF4D`` + ``FF67``, ``FF45``). Each code is unique (a made-up shoe
code, AI 91 + 92, so the emulator's ФН checks it too, its serial varied).

Measured, each with ``time.perf_counter``:

* **total** — the wall time of each call (a unit's check; a receipt's start, and its
  positions and close);
* **link** — the time markd spent inside its port's ``read`` and ``write`` (the backend's
  :class:`~markd.fiscal.shtrih.link.Port` behind ``printer.link.port``, wrapped here by the
  benchmark, never instrumented in the backend): waiting for the line and for the device,
  plus pyserial's own work in those calls;
* **own** — total − link: markd's own work (framing, encoding, decoding, the backend's logic).

A unit's figures are its check plus an equal share (1/K) of its receipt. Also counted: the
bytes each way (the theoretical line time is bytes × 10 / B), and the CPU time of the
measuring thread (``time.thread_time``), whole and inside the port calls: the emulator runs
in another process, so that CPU is markd's (and pyserial's) alone. The wall split is the
figure to judge by; the CPU split says how much of "link" is still work in this process.

Target (issue 14): markd's own time per unit p99 ≤ 5 ms; printed as met or not, never
asserted. Prints human lines, then as the final line one JSON object with every figure.
Exit status 0, or 1 when a code was not accepted or the device's documents do not match the
receipts sold.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from markd.codes import GS, parse
from markd.emulators.shtrih import ShtrihKkt
from markd.fiscal.base import FiscalPrinter, PrinterSettings, new_op_id, open_printer
from markd.fiscal.model import IndustryTags, MarkedItem, Position, ReceiptAttributes
from markd.receipts import Payment

#: The issue's target (issue 14, item 8): markd's own time per marked unit.
TARGET_OWN_P99_MS = 5.0
#: Bits a byte takes on the line: start, 8 data, stop.
BITS_PER_BYTE = 10

#: A made-up shoe code's parts (GTIN with a valid check digit; AI 91 key, AI 92 crypto).
GTIN = "04607809596237"
KEY_91 = "FFD0"
CRYPTO_92 = "dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A="
SERIAL_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
TAG1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"
PRICE = 8990

T = TypeVar("T")


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0–1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of ``values`` (milliseconds), rounded to µs."""
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p99": round(percentile(values, 0.99), 3),
        "mean": round(sum(values) / len(values), 3),
        "max": round(max(values), 3),
    }


def describe(name: str, stats: dict[str, float]) -> str:
    return (
        f"  {name:<34} p50 {stats['p50']:8.3f}  p99 {stats['p99']:8.3f}  "
        f"mean {stats['mean']:8.3f}  max {stats['max']:8.3f} ms"
    )


# ---------------------------------------------------------------------------------------------
# The port, metered from outside the backend


class PortMeter:
    """Wraps a port's ``read`` and ``write`` (on the instance: the backend is not changed)
    and adds up the wall and thread CPU time spent in them and the bytes each way."""

    def __init__(self, port: Any) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.sent = 0
        self.received = 0
        read: Callable[[int, float], bytes] = port.read
        write: Callable[[bytes], None] = port.write

        def timed_read(size: int, timeout_s: float) -> bytes:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                data = read(size, timeout_s)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.thread_time() - cpu
            self.received += len(data)
            return data

        def timed_write(data: bytes) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                write(data)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.thread_time() - cpu
            self.sent += len(data)

        port.read = timed_read
        port.write = timed_write


@dataclasses.dataclass
class Span:
    """One timed stretch of calls: seconds of wall and CPU time, in total and in the port,
    and the bytes each way."""

    total: float = 0.0
    link: float = 0.0
    cpu: float = 0.0
    link_cpu: float = 0.0
    sent: int = 0
    received: int = 0

    def __add__(self, other: Span) -> Span:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Span(*(a + b for a, b in pairs))

    def share(self, count: int) -> Span:
        """This span divided equally among ``count`` units."""
        return Span(*(value / count for value in dataclasses.astuple(self)))


def timed(meter: PortMeter, call: Callable[[], T]) -> tuple[T, Span]:
    """``call()`` and what it cost."""
    before = (meter.wall, meter.cpu, meter.sent, meter.received)
    wall, cpu = time.perf_counter(), time.thread_time()
    result = call()
    span = Span(
        total=time.perf_counter() - wall,
        cpu=time.thread_time() - cpu,
        link=meter.wall - before[0],
        link_cpu=meter.cpu - before[1],
        sent=meter.sent - before[2],
        received=meter.received - before[3],
    )
    return result, span


# ---------------------------------------------------------------------------------------------
# Codes and the emulator


def make_codes(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct shoe codes (КИ + GS + 91 + GS + 92), their serials varied."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        serial = "".join(rng.choice(SERIAL_CHARS) for _ in range(13))
        if serial in seen:
            continue
        seen.add(serial)
        text = f"01{GTIN}21{serial}{GS}91{KEY_91}{GS}92{CRYPTO_92}"
        parse(text)  # a structure markd would refuse would measure nothing
        out.append(text)
    return out


@contextmanager
def emulator(state_dir: Path, baudrate: int) -> Iterator[str]:
    """The Shtrih emulator in its own process, paced at ``baudrate``; yields its pty's path."""
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", "shtrih", "--pty"]
        + ["--state", str(state_dir), "--baudrate", str(baudrate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        path = process.stdout.readline().strip()
        if not path.startswith("/dev/"):
            raise RuntimeError(f"the Shtrih emulator did not start (exit {process.poll()})")
        yield path
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# ---------------------------------------------------------------------------------------------
# The sale


def position(km: str, validation: Any) -> Position:
    return Position(
        "Кроссовки беговые",
        PRICE,
        tax="vat20",
        mark=MarkedItem(
            km=km,
            ki=parse(km).ki,
            planned_status=1,
            industry=IndustryTags(tag1265=TAG1265),
            validation=validation,
        ),
    )


def check(printer: FiscalPrinter, km: str) -> Any:
    """What a scan of a marked unit does at the ККТ: check the code and accept it."""
    return printer.check_code(new_op_id(), km, parse(km).ki, 1)


def start(printer: FiscalPrinter) -> None:
    """What the sale session does when a receipt starts: make sure a shift is open, clear
    what the ФН still holds, open the receipt (on a Shtrih ККТ, in the vendor's order, on the
    device now, before its codes are checked)."""
    printer.ensure_shift(new_op_id())
    printer.clear_validations(new_op_id())
    printer.open_receipt(new_op_id())


def close(printer: FiscalPrinter, count: int) -> Any:
    """What the sale's close does: the receipt with its positions, paid by card."""
    return printer.close_receipt(new_op_id(), [Payment(PRICE * count)])


def sell(
    printer: FiscalPrinter, meter: PortMeter, codes: list[str]
) -> tuple[list[Span], Span, int]:
    """One receipt of ``codes`` as the session sells it: the receipt started, each unit's
    code checked and accepted (its span), the receipt closed (the start and the close are
    the receipt's span), refusals counted."""
    _, opened = timed(meter, lambda: start(printer))
    checks: list[Span] = []
    accepted = 0
    refused = 0
    for km in codes:
        result, span = timed(meter, lambda km=km: check(printer, km))
        checks.append(span)
        if result.accepted:
            accepted += 1
            printer.add_position(new_op_id(), position(km, result.validation))
        else:
            refused += 1
    if not accepted:
        printer.cancel_receipt(new_op_id())
        return checks, opened, refused
    _, closing = timed(meter, lambda: close(printer, accepted))
    return checks, opened + closing, refused


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    codes = make_codes(args.units + args.per_receipt, rng)
    warm, timed_codes = codes[: args.per_receipt], codes[args.per_receipt :]
    settings = PrinterSettings(receipt=ReceiptAttributes(cashier_name="Касса самообслуживания 1"))
    state = workdir / "kkt"
    state.mkdir()
    unit_spans: list[Span] = []
    check_spans: list[Span] = []
    receipt_spans: list[Span] = []
    refused = 0
    with emulator(state, args.baudrate) as pty:
        printer = open_printer(f"shtrih://{pty}?baudrate={args.baudrate}", settings)
        try:
            meter = PortMeter(printer.link.port)  # type: ignore[attr-defined]
            printer.open_shift(new_op_id())
            sell(printer, meter, warm)  # warm-up: the port, the registration read, caches
            gc.collect()
            started = time.perf_counter()
            for first in range(0, len(timed_codes), args.per_receipt):
                batch = timed_codes[first : first + args.per_receipt]
                checks, receipt, wrong = sell(printer, meter, batch)
                refused += wrong
                check_spans += checks
                receipt_spans.append(receipt)
                share = receipt.share(len(batch))
                unit_spans += [span + share for span in checks]
            elapsed = time.perf_counter() - started
        finally:
            printer.close()
    receipts = ShtrihKkt(state).receipts()
    marked = sum(1 for r in receipts for p in r["positions"] if p.get("ki"))
    documents_match = (
        len(receipts) == 1 + len(receipt_spans) and marked == args.units + len(warm) - refused
    )
    return figures(args, unit_spans, check_spans, receipt_spans, elapsed) | {
        "refused_codes": refused,
        "device_receipts": len(receipts),
        "device_marked_positions": marked,
        "documents_match": documents_match,
    }


def ms(spans: list[Span], what: Callable[[Span], float]) -> dict[str, float]:
    return summary([what(span) * 1000 for span in spans])


def figures(
    args: argparse.Namespace,
    units: list[Span],
    checks: list[Span],
    receipts: list[Span],
    elapsed: float,
) -> dict[str, Any]:
    byte_ms = BITS_PER_BYTE / args.baudrate * 1000
    total = ms(units, lambda s: s.total)
    link = ms(units, lambda s: s.link)
    own = ms(units, lambda s: s.total - s.link)
    cpu = ms(units, lambda s: s.cpu)
    cpu_own = ms(units, lambda s: s.cpu - s.link_cpu)
    sent = sum(s.sent for s in units) / len(units)
    received = sum(s.received for s in units) / len(units)
    wire_ms = (sent + received) * byte_ms
    result: dict[str, Any] = {
        "units": len(units),
        "per_receipt": args.per_receipt,
        "receipts": len(receipts),
        "baudrate": args.baudrate,
        "python": platform.python_version(),
        "elapsed_s": round(elapsed, 3),
        "unit_ms": {"total": total, "link": link, "own": own},
        "unit_cpu_ms": {"total": cpu, "own": cpu_own},
        "check_ms": {
            "total": ms(checks, lambda s: s.total),
            "link": ms(checks, lambda s: s.link),
            "own": ms(checks, lambda s: s.total - s.link),
        },
        "receipt_ms": {
            "total": ms(receipts, lambda s: s.total),
            "link": ms(receipts, lambda s: s.link),
            "own": ms(receipts, lambda s: s.total - s.link),
        },
        "bytes_per_unit": {"sent": round(sent, 1), "received": round(received, 1)},
        "wire_ms_per_unit": round(wire_ms, 3),
        "link_beyond_wire_ms_per_unit": round(link["mean"] - wire_ms, 3),
        "own_share": round(own["mean"] / total["mean"], 4),
    }
    result["targets"] = {
        "own_p99_le_5ms": {"target": TARGET_OWN_P99_MS, "met": own["p99"] <= TARGET_OWN_P99_MS}
    }
    return result


def report(result: dict[str, Any]) -> None:
    unit, check, receipt = result["unit_ms"], result["check_ms"], result["receipt_ms"]
    say(
        f"Shtrih emulator on a pty paced at {result['baudrate']} baud: {result['units']} marked "
        f"units in {result['receipts']} receipts of up to {result['per_receipt']} "
        f"({result['elapsed_s']:.1f} s)"
    )
    say("per unit (its check + 1/K of its receipt):")
    say(describe("total", unit["total"]))
    say(describe("link (in the port's read/write)", unit["link"]))
    say(describe("markd's own (total − link)", unit["own"]))
    say(describe("CPU of markd's thread", result["unit_cpu_ms"]["total"]))
    say(describe("  of it outside the port calls", result["unit_cpu_ms"]["own"]))
    say("per code check (FF61 + FF69):")
    for name in ("total", "link", "own"):
        say(describe(name, check[name]))
    say("per receipt (its start, then positions and FF45 at the close):")
    for name in ("total", "link", "own"):
        say(describe(name, receipt[name]))
    sent, received = result["bytes_per_unit"]["sent"], result["bytes_per_unit"]["received"]
    say(
        f"  bytes per unit: {sent:.1f} sent + {received:.1f} received = "
        f"{result['wire_ms_per_unit']:.3f} ms on the line at {result['baudrate']} baud; "
        f"link beyond it {result['link_beyond_wire_ms_per_unit']:.3f} ms a unit (the device's "
        "work, the pty, the scheduler)"
    )
    say(f"  markd's own share of a unit's time (means): {result['own_share'] * 100:.2f} %")
    met = result["targets"]["own_p99_le_5ms"]["met"]
    say(
        f"target: markd's own time per unit p99 ≤ {TARGET_OWN_P99_MS:g} ms: "
        f"{'met' if met else 'NOT met'} ({unit['own']['p99']:.3f} ms)"
    )
    if result["refused_codes"] or not result["documents_match"]:
        say(
            f"WRONG: {result['refused_codes']} code(s) refused; the device holds "
            f"{result['device_receipts']} receipts with {result['device_marked_positions']} "
            "marked positions"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=200, help="timed marked units (200)")
    parser.add_argument("--per-receipt", type=int, default=5, help="units a receipt (5)")
    parser.add_argument("--baudrate", type=int, default=115200, help="line speed (115200)")
    parser.add_argument("--seed", type=int, default=14, help="random seed of the codes")
    args = parser.parse_args(argv)
    if args.units < 1 or args.per_receipt < 1 or args.baudrate < 1:
        parser.error("--units, --per-receipt and --baudrate must be positive")
    with tempfile.TemporaryDirectory(prefix="markd-bench-shtrih-") as tmp:
        result = run(args, Path(tmp))
    report(result)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 1 if result["refused_codes"] or not result["documents_match"] else 0


if __name__ == "__main__":
    sys.exit(main())
