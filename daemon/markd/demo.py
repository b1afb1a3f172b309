"""``markd demo``: the real service, a temporary store and a scripted virtual scanner.

Nothing is faked but the device: the scans go through a ``virtual://demo`` scanner's reader
thread, the framer, :func:`markd.codes.parse`, the LMDB store and the check chain, exactly as
a serial scanner's bytes would. The configuration is built in code, so no file is needed.

:data:`SCRIPT` lists the scans with the decision each should get; :func:`run_demo` prints one
line per verdict and a summary. The codes are made up (valid structure and GTIN check digits,
no real product).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from markd.checks.verdict import Verdict
from markd.config import Config, ScannerConfig, default_config
from markd.scanners import get_virtual
from markd.service import Service
from markd.store import Store
from markd.systemd import EventLog

GS = "\x1d"

#: The КИ the demo puts in the local blocklist before scanning.
BLOCKED_KI = "0104670540176099215LpGKy"

SCANNER_NAME = "demo"


@dataclass(frozen=True)
class DemoScan:
    """One scripted scan: what it shows, the bytes the scanner sends (without terminator), and
    the decision markd should reach."""

    label: str
    text: str
    expect: str


SCRIPT: tuple[DemoScan, ...] = (
    DemoScan("water, crypto 93", f"0104680029460908215jcmHzLmkdPML{GS}938p9E", "allow"),
    DemoScan(
        "shoes, 91 + 92 signature",
        f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92"
        "dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A=",
        "allow",
    ),
    DemoScan("tobacco pack, 29 characters", "00000046233219!SX-RqRADpU7Cev", "allow"),
    DemoScan("dairy, blocked in the local store", f"0104670540176099215LpGKy{GS}93dGVz", "deny"),
    DemoScan(
        "water typed under the ЙЦУКЕН layout (repaired)",
        f"0104680029460908215осьРяДьлвЗЬД{GS}938з9У",
        "allow",
    ),
    DemoScan(
        "water with ]d2 prefix and <GS> token (repaired)",
        "]d20104680029460908215jcmHzLmkdPML<GS>938p9E",
        "allow",
    ),
    DemoScan(
        "dairy with the GS lost by a keyboard-mode scanner (repaired)",
        "0104670540176099215LpGKy93dGVz",
        "deny",  # repaired, then denied: this dairy unit is the one blocked in the store
    ),
    DemoScan(
        "tobacco block, 8005 MRP, GS lost (repaired)",
        "0104600000000015215AbC-9x800502250093Xy7+",
        "allow",
    ),
    DemoScan("bare КИ, no crypto tail", "0104680029460908215jcmHzLmkdPML", "deny"),
    DemoScan("GS lost, serial length ambiguous", "0104650117240408211234593abcd93Zjqw", "rescan"),
    DemoScan("plain EAN-13 product barcode", "4607809596237", "deny"),
    DemoScan("garbage", "hello, world", "deny"),
)


def demo_config(store_path: str) -> Config:
    """The demo's configuration: defaults, a store in ``store_path``, one virtual scanner."""
    base = default_config()
    return dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, path=store_path, map_size_mb=8),
        scanners={SCANNER_NAME: ScannerConfig(url=f"virtual://{SCANNER_NAME}")},
    )


def format_verdict(verdict: Verdict) -> str:
    """One human line: decision, scanner, КИ (or the reason), shape, repairs, screen text."""
    subject = verdict.ki if verdict.ki is not None else f"({verdict.reason})"
    details = [verdict.reason if verdict.ki is not None else None, verdict.shape]
    if verdict.repairs:
        details.append("repaired: " + ", ".join(verdict.repairs))
    detail = "; ".join(d for d in details if d)
    return (
        f"{verdict.decision.upper():6} [{verdict.scanner}] {subject}"
        + (f"  {detail}" if detail else "")
        + f"  «{verdict.message_ru}»"
    )


async def run_script(
    config: Config, script: tuple[DemoScan, ...], out: TextIO, timeout: float = 10.0
) -> list[Verdict]:
    """Run the service, feed ``script`` into the virtual scanner one scan at a time, and
    return the verdicts in order."""
    verdicts: list[Verdict] = []
    arrived = asyncio.Event()

    def sink(verdict: Verdict) -> None:
        verdicts.append(verdict)
        arrived.set()

    # Only problems reach stderr; the verdicts are printed by this module.
    service = Service(
        config, event_log=EventLog(target="stderr", level="warning"), verdict_sink=sink
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({ready, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # start-up failed: raise its error
        if not service.ready.is_set():
            raise TimeoutError(f"the service did not start within {timeout} s")
        scanner = get_virtual(SCANNER_NAME)
        for index, item in enumerate(script, start=1):
            arrived.clear()
            scanner.scan(item.text)
            await asyncio.wait_for(arrived.wait(), timeout)
            verdict = verdicts[-1]
            mark = "" if verdict.decision == item.expect else f"  (expected {item.expect}!)"
            print(f"{index:2}. {item.label}", file=out)
            print(f"    {format_verdict(verdict)}{mark}", file=out)
    finally:
        stop.set()
        await task
    return verdicts


def run_demo(out: TextIO | None = None) -> int:
    """The ``markd demo`` command: returns the exit status (0)."""
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="markd-demo-") as tmp:
        config = demo_config(f"{tmp}/store")
        with Store.from_config(config.store) as store:
            store.block(BLOCKED_KI, "demo: recalled batch", source="demo")
        print(
            "markd demo: mode store-only (checks only the local blocklist, not Честный ЗНАК)",
            file=out,
        )
        print(f"blocked in the local store: {BLOCKED_KI}", file=out)
        print("", file=out)
        verdicts = asyncio.run(run_script(config, SCRIPT, out))
    counts = Counter(v.decision for v in verdicts)
    unexpected = sum(1 for v, s in zip(verdicts, SCRIPT, strict=True) if v.decision != s.expect)
    print("", file=out)
    print(
        f"{len(verdicts)} scans: {counts['allow']} allowed, {counts['deny']} denied, "
        f"{counts['rescan']} re-scan requested"
        + (f"; {unexpected} differ from the expected decision" if unexpected else ""),
        file=out,
    )
    return 0
