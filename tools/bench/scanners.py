#!/usr/bin/env python3
"""Scanner benchmark: framing latency, decode rate and hot-plug times of markd's backends.

Framing latency is the time from the last byte or report of a code reaching the backend to the
framed :class:`~markd.scanners.Scan` (``Scan.received``, stamped in the reader thread), and to
its arrival on the service's asyncio queue. Target: p99 within 1 ms, beyond ``gap_ms`` when
codes are ended by a gap rather than a terminator. Measured for:

* serial over a pty (a real tty and pyserial), terminator CR and terminator none (gap);
* keyboard mode and HID-POS on the simulated USB bus (pyusb's code above
  :mod:`markd.scanners.simulated`; "last report" is when the simulator handed it to pyusb).

Decode rate: reports per second through the keyboard and HID-POS decoders plus the framer,
without I/O, and end to end (simulated bus, pyusb, reader thread, framer, queue).

Hot-plug: from an unplug to the ``ScannerState(present=False)`` event, and from a replug to
``present=True``, for a USB scanner and a serial one (production reopen intervals).

Human lines first, then the final line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

from markd import samples
from markd.scanners import Scan, ScannerEvent, ScannerState, open_scanner
from markd.scanners.framing import Framer
from markd.scanners.hid_keyboard import KeyboardDecoder
from markd.scanners.hid_pos import HidPosDecoder
from markd.scanners.simulated import (
    SimulatedDevice,
    SimulatedUsb,
    keyboard_reports,
    pos_reports,
)
from markd.scanners.usb_common import use_backend

TARGET_MS = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_s: list[float], minus_s: float = 0.0) -> dict[str, float]:
    ms = [(v - minus_s) * 1000 for v in values_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


async def next_event(queue: asyncio.Queue[ScannerEvent], kind: type, timeout: float = 10) -> Any:
    while True:
        event = await asyncio.wait_for(queue.get(), timeout)
        if isinstance(event, kind):
            return event


class Open:
    """A started scanner and its queue, as an async context manager."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> tuple[Any, asyncio.Queue[ScannerEvent]]:
        self.scanner = open_scanner("bench", self.url)
        self.queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
        self.scanner.start(asyncio.get_running_loop(), self.queue)
        state = await next_event(self.queue, ScannerState)
        if not state.present:
            raise RuntimeError(f"{self.url}: {state.detail}")
        return self.scanner, self.queue

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.scanner.close)


def new_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


# --------------------------------------------------------------------------------------------
# Latency


async def latency_serial(codes: list[str], terminator: str, gap_ms: int) -> dict[str, Any]:
    master, slave, path = new_pty()
    framed: list[float] = []
    delivered: list[float] = []
    suffix = b"\r" if terminator == "cr" else b""
    try:
        url = f"serial://{path}?terminator={terminator}&gap_ms={gap_ms}"
        async with Open(url) as (_, queue):
            await asyncio.sleep(0.1)
            for code in codes:
                os.write(master, code.encode() + suffix)
                last = time.monotonic()
                scan = await next_event(queue, Scan)
                delivered.append(time.monotonic() - last)
                framed.append(scan.received - last)
                if scan.data != code.encode():
                    raise AssertionError("serial: wrong code framed")
    finally:
        os.close(master)
        os.close(slave)
    gap = gap_ms / 1000 if terminator == "none" else 0.0
    return {"framed": summary(framed, gap), "delivered": summary(delivered, gap)}


async def latency_keyboard(codes: list[str], terminator: str, gap_ms: int) -> dict[str, Any]:
    bus = SimulatedUsb()
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    framed: list[float] = []
    delivered: list[float] = []
    with use_backend(bus):
        url = f"hid-kbd://0c2e:0b61?terminator={terminator}&gap_ms={gap_ms}"
        async with Open(url) as (_, queue):
            for code in codes:
                reports = keyboard_reports(
                    code, gs="ctrl+]", terminator="\r" if terminator == "cr" else ""
                )
                # The last report that typed something: the Enter press, or the last key's
                # press in gap mode. The release after it carries no data.
                device.queue(*reports[:-1])
                count = len(device.delivered) + len(reports) - 1
                scan = await next_event(queue, Scan)
                while len(device.delivered) < count:
                    await asyncio.sleep(0)
                last = device.delivered[count - 1]
                delivered.append(time.monotonic() - last)
                framed.append(scan.received - last)
                if scan.data != code.encode():
                    raise AssertionError("hid-kbd: wrong code framed")
                device.queue(reports[-1])
    gap = gap_ms / 1000 if terminator == "none" else 0.0
    return {"framed": summary(framed, gap), "delivered": summary(delivered, gap)}


async def latency_pos(codes: list[str]) -> dict[str, Any]:
    bus = SimulatedUsb()
    device = bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    framed: list[float] = []
    delivered: list[float] = []
    with use_backend(bus):
        async with Open("hid-pos://1eab:0010") as (_, queue):
            for code in codes:
                reports = pos_reports(code.encode(), chunk=32)
                count = len(device.delivered) + len(reports)
                device.queue(*reports)
                scan = await next_event(queue, Scan)
                while len(device.delivered) < count:
                    await asyncio.sleep(0)
                last = device.delivered[count - 1]
                delivered.append(time.monotonic() - last)
                framed.append(scan.received - last)
                if scan.data != code.encode():
                    raise AssertionError("hid-pos: wrong code framed")
    return {"framed": summary(framed), "delivered": summary(delivered)}


def timer_baseline(samples_count: int, gap_ms: int) -> dict[str, float]:
    """How late a bare Python thread wakes from a ``gap_ms`` sleep on this machine right now:
    the scheduling noise every gap-framed figure above includes, whatever markd does."""
    lateness: list[float] = []
    event = threading.Event()

    def sleeper() -> None:
        for _ in range(samples_count):
            started = time.monotonic()
            event.wait(gap_ms / 1000)
            lateness.append(time.monotonic() - started)

    thread = threading.Thread(target=sleeper)
    thread.start()
    thread.join()
    return summary(lateness, gap_ms / 1000)


# --------------------------------------------------------------------------------------------
# Decode rate


def decode_rate_keyboard(codes: list[str], rounds: int) -> tuple[float, int]:
    reports = [r for code in codes for r in keyboard_reports(code, gs="alt+0029", rollover=True)]
    best = float("inf")
    for _ in range(rounds):
        decoder, framer = KeyboardDecoder(), Framer(b"\r")
        units = 0
        started = time.perf_counter()
        for report in reports:
            data = decoder.feed(report)
            if data:
                units += len(framer.feed(data))
        best = min(best, time.perf_counter() - started)
        if units != len(codes):
            raise AssertionError("keyboard decode lost codes")
    return len(reports) / best, len(reports)


def decode_rate_pos(codes: list[str], rounds: int) -> tuple[float, int]:
    reports = [r for code in codes for r in pos_reports(code.encode(), chunk=24)]
    best = float("inf")
    for _ in range(rounds):
        decoder, framer = HidPosDecoder(), Framer(b"\r")
        units = 0
        started = time.perf_counter()
        for report in reports:
            chunk = decoder.feed(report)
            if chunk is None:
                continue
            units += len(framer.feed(chunk.data))
            if not chunk.continued:
                units += len(framer.flush())
        best = min(best, time.perf_counter() - started)
        if units != len(codes):
            raise AssertionError("HID-POS decode lost codes")
    return len(reports) / best, len(reports)


async def end_to_end_rate(codes: list[str]) -> tuple[float, int]:
    bus = SimulatedUsb()
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    reports = [r for code in codes for r in keyboard_reports(code, gs="ctrl+]")]
    with use_backend(bus):
        async with Open("hid-kbd://0c2e:0b61") as (_, queue):
            started = time.perf_counter()
            device.queue(*reports)
            for _ in codes:
                await next_event(queue, Scan)
            elapsed = time.perf_counter() - started
    return len(reports) / elapsed, len(reports)


# --------------------------------------------------------------------------------------------
# Hot-plug


#: The replug comes at a random moment of the reader's reopen cycle, so the figures sample
#: the whole cycle rather than one phase of it.
_PAUSES = random.Random(7)


async def hotplug_usb(rounds: int) -> dict[str, Any]:
    bus = SimulatedUsb()
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    gone, back = [], []
    with use_backend(bus):
        async with Open("hid-kbd://0c2e:0b61") as (_, queue):
            for _ in range(rounds):
                started = time.monotonic()
                bus.unplug(device)
                state = await next_event(queue, ScannerState)
                gone.append(time.monotonic() - started)
                assert not state.present
                await asyncio.sleep(_PAUSES.uniform(0.05, 1.2))
                started = time.monotonic()
                bus.plug(device)
                state = await next_event(queue, ScannerState)
                back.append(time.monotonic() - started)
                assert state.present
    return {"unplug_noticed": summary(gone), "replug_resumed": summary(back)}


async def hotplug_serial(rounds: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="markd-bench-"))
    link = directory / "scanner0"
    master, slave, path = new_pty()
    link.symlink_to(path)
    gone, back = [], []
    try:
        async with Open(f"serial://{link}") as (_, queue):
            for _ in range(rounds):
                started = time.monotonic()
                os.close(master)
                state = await next_event(queue, ScannerState)
                gone.append(time.monotonic() - started)
                assert not state.present
                os.close(slave)
                await asyncio.sleep(_PAUSES.uniform(0.05, 1.2))
                master, slave, path = new_pty()
                started = time.monotonic()
                link.unlink()
                link.symlink_to(path)
                state = await next_event(queue, ScannerState)
                back.append(time.monotonic() - started)
                assert state.present
    finally:
        os.close(master)
        os.close(slave)
        link.unlink()
        directory.rmdir()
    return {"unplug_noticed": summary(gone), "replug_resumed": summary(back)}


# --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    codes = samples.batch(args.codes, seed=1)
    gap = args.gap_ms
    result: dict[str, Any] = {"codes": len(codes), "gap_ms": gap}
    latency = {
        "serial_cr": await latency_serial(codes, "cr", gap),
        "serial_gap": await latency_serial(codes, "none", gap),
        "hid_kbd_cr": await latency_keyboard(codes, "cr", gap),
        "hid_kbd_gap": await latency_keyboard(codes, "none", gap),
        "hid_pos": await latency_pos(codes),
    }
    result["latency"] = latency
    result["timer_wakeup_beyond_gap"] = timer_baseline(len(codes), gap)
    many = samples.batch(args.decode_codes, seed=2)
    kbd_rate, kbd_reports = decode_rate_keyboard(many, args.rounds)
    pos_rate, pos_reports_count = decode_rate_pos(many * 10, args.rounds)
    e2e_rate, e2e_reports = await end_to_end_rate(codes)
    result["decode_reports_per_s"] = {
        "hid_kbd": round(kbd_rate),
        "hid_pos": round(pos_rate),
        "hid_kbd_end_to_end": round(e2e_rate),
    }
    result["decode_reports"] = {
        "hid_kbd": kbd_reports,
        "hid_pos": pos_reports_count,
        "hid_kbd_end_to_end": e2e_reports,
    }
    result["hotplug"] = {
        "usb": await hotplug_usb(args.hotplug_rounds),
        "serial": await hotplug_serial(args.hotplug_rounds),
    }
    worst = max(v["framed"]["p99_ms"] for v in latency.values())
    result["targets"] = {
        "framed_p99_le_1ms_beyond_gap": {
            "target": TARGET_MS,
            "worst_p99_ms": worst,
            "met": worst <= TARGET_MS,
        },
        "unplug_noticed_le_1s": {
            "met": all(
                result["hotplug"][k]["unplug_noticed"]["max_ms"] <= 1000 for k in ("usb", "serial")
            )
        },
        "replug_resumed_le_2s": {
            "met": all(
                result["hotplug"][k]["replug_resumed"]["max_ms"] <= 2000 for k in ("usb", "serial")
            )
        },
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=500, help="codes per latency run")
    parser.add_argument("--gap-ms", type=int, default=20, help="gap for terminator=none runs")
    parser.add_argument("--decode-codes", type=int, default=2000, help="codes per decode round")
    parser.add_argument("--rounds", type=int, default=5, help="decode-rate rounds (best kept)")
    parser.add_argument("--hotplug-rounds", type=int, default=10)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))

    print(f"{result['codes']} codes per run; gap runs use gap_ms={result['gap_ms']}")
    print("framing latency, last byte/report → Scan (framed) and → asyncio queue (delivered);")
    print("gap runs show the time beyond the gap:")
    for name, figures in result["latency"].items():
        f, d = figures["framed"], figures["delivered"]
        print(
            f"  {name:<12} framed p50 {f['p50_ms']:.3f} p99 {f['p99_ms']:.3f} max "
            f"{f['max_ms']:.3f} ms; delivered p50 {d['p50_ms']:.3f} p99 {d['p99_ms']:.3f} ms"
        )
    t = result["timer_wakeup_beyond_gap"]
    print(
        f"  (baseline: a bare thread's wake-up from a {result['gap_ms']} ms sleep is late by "
        f"p50 {t['p50_ms']:.3f} p99 {t['p99_ms']:.3f} max {t['max_ms']:.3f} ms)"
    )
    rates = result["decode_reports_per_s"]
    print(
        f"decode: keyboard {rates['hid_kbd']:,} reports/s, HID-POS {rates['hid_pos']:,} "
        f"reports/s; keyboard end to end (pyusb, simulated bus) {rates['hid_kbd_end_to_end']:,}"
        " reports/s"
    )
    for kind, figures in result["hotplug"].items():
        u, r = figures["unplug_noticed"], figures["replug_resumed"]
        print(
            f"hot-plug {kind}: unplug noticed p50 {u['p50_ms']:.1f} max {u['max_ms']:.1f} ms; "
            f"replug resumed p50 {r['p50_ms']:.1f} max {r['max_ms']:.1f} ms"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
