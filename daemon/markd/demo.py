"""``markd demo``: the real service, a temporary store, loopback emulators of the Честный ЗНАК
services and a scripted virtual scanner.

Nothing is faked but the device and the far side: the scans go through a ``virtual://demo``
scanner's reader thread, the framer, :func:`markd.codes.parse`, the LMDB store and the check
chain in mode ``direct``, whose real clients speak HTTP to the True API CDN and Local Module
emulators (:mod:`markd.emulators`) on loopback. Midway the script takes the CDN away (it
accepts connections and never answers), so the Local Module answers offline; then the Local
Module falls out of sync too, and the ``unanswered`` policy decides. The configuration is built
in code, so no file is needed.

At the end the allowed units (each КИ once) are sold through the emulated ККТ
(``emulator://`` in the temporary directory, :mod:`markd.fiscal`): each is validated by the
ККТ, the receipt is printed with its tags, the store's sold journal and the Local Module get
the КИ (:func:`sell_allowed`).

:data:`SCRIPT` lists the scans with the decision each should get; :func:`run_demo` prints one
line per verdict and a summary. The codes are made up (valid structure and GTIN check digits,
no real product).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from markd.checks.verdict import Verdict
from markd.config import (
    Config,
    LocalModuleConfig,
    OnlineCheckConfig,
    ScannerConfig,
    default_config,
)
from markd.emulators.crpt_cdn import CrptCdnEmulator
from markd.emulators.local_module import LocalModuleEmulator
from markd.fiscal.factory import build_session, local_module_for_sales, open_configured_printer
from markd.scanners import get_virtual
from markd.service import Service
from markd.store import Store
from markd.systemd import EventLog

GS = "\x1d"

#: The КИ the demo puts in the local blocklist before scanning.
BLOCKED_KI = "0104670540176099215LpGKy"

SCANNER_NAME = "demo"


#: Made-up units the CDN emulator answers about specially.
ONLINE_BLOCKED = f"0104607809596237215BlockedUnit1{GS}93Zz9q"
ONLINE_EXPIRED = f"0104607809596237215ExpiredUnit2{GS}93Qw3e"
DEMO_TOKEN = "0b9f4c7e-2a51-4d8e-9c3b-6e1f7a2d5c40"


@dataclass(frozen=True)
class DemoScan:
    """One scripted scan: what it shows, the bytes the scanner sends (without terminator), the
    decision markd should reach, and an optional change to the services before it."""

    label: str
    text: str
    expect: str
    before: str | None = None  # "cdn-down" | "lm-down"


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
    DemoScan("online: blocked by a government body", ONLINE_BLOCKED, "deny"),
    DemoScan("online: past its expiry date", ONLINE_EXPIRED, "deny"),
    DemoScan(
        "the CDN stops answering: the Local Module checks offline",
        f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92"
        "dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A=",
        "allow",
        before="cdn-down",
    ),
    DemoScan(
        "the Local Module is out of sync too: nothing answers (unanswered = allow, unchecked)",
        "00000046233219!SX-RqRADpU7Cev",
        "allow",
        before="lm-down",
    ),
    DemoScan("bare КИ, no crypto tail", "0104680029460908215jcmHzLmkdPML", "deny"),
    DemoScan("GS lost, serial length ambiguous", "0104650117240408211234593abcd93Zjqw", "rescan"),
    DemoScan("plain EAN-13 product barcode", "4607809596237", "deny"),
    DemoScan("garbage", "hello, world", "deny"),
)


def demo_config(
    store_path: str, *, cdn_url: str | None = None, lm_url: str | None = None, secrets: str = ""
) -> Config:
    """The demo's configuration: a store in ``store_path``, one virtual scanner, and — given
    the emulators' URLs — mode ``direct`` with the CDN and the Local Module."""
    base = default_config()
    config = dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, path=store_path, map_size_mb=8),
        scanners={SCANNER_NAME: ScannerConfig(url=f"virtual://{SCANNER_NAME}")},
        # The demo's control socket lives in its temporary directory, beside the store.
        api=dataclasses.replace(
            base.api, socket=os.path.join(os.path.dirname(store_path), "control.sock")
        ),
        # The emulated ККТ and the sale journal too.
        fiscal=dataclasses.replace(
            base.fiscal,
            url=f"emulator://{os.path.abspath(os.path.dirname(store_path))}/kkt",
            journal=os.path.join(os.path.dirname(store_path), "fiscal", "session.journal"),
            validation_poll_ms=20,
        ),
    )
    if cdn_url is None or lm_url is None:
        return config
    check = dataclasses.replace(
        config.check,
        mode="direct",
        online_timeout_ms=600,
        local_module_timeout_ms=400,
        online=OnlineCheckConfig(url=cdn_url, token_file=f"{secrets}/crpt-token"),
        local_module=LocalModuleConfig(url=lm_url, password_file=f"{secrets}/lm-password"),
    )
    terminal = dataclasses.replace(config.terminal, fn_serial="9960440300000001")
    return dataclasses.replace(config, check=check, terminal=terminal)


def format_verdict(verdict: Verdict) -> str:
    """One human line: decision, scanner, КИ (or the reason), source, shape, repairs, screen
    text, and the tag 1265 value when a service answered."""
    subject = verdict.ki if verdict.ki is not None else f"({verdict.reason})"
    details = [
        verdict.reason if verdict.ki is not None else None,
        f"by {verdict.source}",
        verdict.shape,
    ]
    if verdict.repairs:
        details.append("repaired: " + ", ".join(verdict.repairs))
    detail = "; ".join(d for d in details if d)
    return (
        f"{verdict.decision.upper():6} [{verdict.scanner}] {subject}"
        + (f"  {detail}" if detail else "")
        + f"  «{verdict.message_ru}»"
        + (f"\n           tag 1265: {verdict.tag1265}" if verdict.tag1265 else "")
    )


async def run_script(
    config: Config,
    script: tuple[DemoScan, ...],
    out: TextIO,
    timeout: float = 10.0,
    actions: dict[str, Callable[[], None]] | None = None,
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
        # The demo's own script takes the CDN away: its quarantine notices are expected, so
        # only errors reach stderr.
        config,
        event_log=EventLog(target="stderr", level="error"),
        verdict_sink=sink,
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
            if item.before is not None and actions is not None:
                actions[item.before]()
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
    scenario = {
        "cdn": {"token": DEMO_TOKEN},
        "codes": {
            ONLINE_BLOCKED.split(GS)[0]: {"isBlocked": True, "ogvs": ["FNS"]},
            ONLINE_EXPIRED.split(GS)[0]: {"expireDate": "2024-01-31T00:00:00.000Z"},
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="markd-demo-") as tmp,
        CrptCdnEmulator(scenario) as cdn,
        LocalModuleEmulator() as lm,
    ):
        Path(tmp, "crpt-token").write_text(DEMO_TOKEN + "\n")
        Path(tmp, "lm-password").write_text("admin\n")
        config = demo_config(f"{tmp}/store", cdn_url=cdn.url, lm_url=lm.url, secrets=tmp)
        with Store.from_config(config.store) as store:
            store.block(BLOCKED_KI, "demo: recalled batch", source="demo")
        print("markd demo: mode direct — the True API CDN, then the Local Module, both", file=out)
        print(f"emulated on loopback (CDN {cdn.url}, Local Module {lm.url})", file=out)
        print(f"blocked in the local store: {BLOCKED_KI}", file=out)
        print("", file=out)
        actions = {
            "cdn-down": lambda: (
                cdn.set_fault("codes/check", black_hole=True),
                cdn.set_fault("cdn/info", black_hole=True),
            ),
            "lm-down": lambda: lm.set_state("sync_error"),
        }
        verdicts = asyncio.run(run_script(config, SCRIPT, out, actions=actions))
        lm.set_state("ready")  # back in sync, so the sale below reaches its sold-codes list
        sale = io.StringIO()
        asyncio.run(sell_allowed(config, SCRIPT, verdicts, sale))
    counts = Counter(v.decision for v in verdicts)
    unexpected = sum(1 for v, s in zip(verdicts, SCRIPT, strict=True) if v.decision != s.expect)
    print("", file=out)
    print(
        f"{len(verdicts)} scans: {counts['allow']} allowed, {counts['deny']} denied, "
        f"{counts['rescan']} re-scan requested"
        + (f"; {unexpected} differ from the expected decision" if unexpected else ""),
        file=out,
    )
    print("", file=out)
    out.write(sale.getvalue())
    return 0


#: Demo prices (kopecks) and receipt names by product group.
DEMO_GOODS = {
    "water": ("Вода питьевая 0,5 л", 8990),
    "tobacco": ("Сигареты", 22500),
    "milk": ("Молоко 3,2 %", 11990),
}
DEMO_OTHER = ("Кроссовки", 459000)


async def sell_allowed(
    config: Config, script: tuple[DemoScan, ...], verdicts: list[Verdict], out: TextIO
) -> None:
    """Sell every allowed unit once, through the ККТ ``[fiscal] url`` names, on one receipt;
    print what the ККТ said about each unit and the receipt with its tags."""
    from markd.cli.cmd_sell import describe_fn, describe_receipt
    from markd.codes import parse

    printer = open_configured_printer(config)
    lm_client = local_module_for_sales(config)
    with Store.from_config(config.store) as store:
        session = build_session(config, printer, store, lm_client=lm_client)
        try:
            await session.recover()
            print(
                f"sale of the allowed units through the emulated ККТ ({config.fiscal.url}):",
                file=out,
            )
            seen: set[str] = set()
            for item, verdict in zip(script, verdicts, strict=True):
                if not verdict.allowed or verdict.ki is None or verdict.ki in seen:
                    continue
                seen.add(verdict.ki)
                code = parse(item.text, config.codes_options())
                name, price = DEMO_GOODS.get(code.group, DEMO_OTHER)
                outcome = await session.add(verdict, code, price, name)
                print(f"  {code.ki}  {describe_fn(outcome.record())}", file=out)
            receipt = await session.close()
            if receipt.receipt is None:
                print(f"no receipt: {receipt.status} ({receipt.reason})", file=out)
                return
            print(describe_receipt(receipt.receipt.record()), file=out)
            sold = "every КИ recorded as sold" if receipt.store_ok else "NOT updated"
            print(f"  store: {sold}", file=out)
            if receipt.lm is not None:
                told = len(receipt.lm.get("accepted", []))
                print(f"  Local Module /cis/sell: {told} КИ accepted", file=out)
        finally:
            if lm_client is not None:
                lm_client.close()
            session.close_session()
            printer.close()
