"""``markd demo``: the real service, a temporary store, loopback emulators of the Честный ЗНАК
services and of the ККТ, and a scripted virtual scanner.

Only the devices and the far side are stand-ins. Every scan goes through a ``virtual://demo``
scanner's reader thread, the framer, :func:`markd.codes.parse`, the LMDB store and the check
chain, whose real clients speak HTTP(S) on loopback to the emulators of :mod:`markd.emulators`.
The demo runs in three parts, each under its own heading:

1. **Mode ``direct``** (:data:`SCRIPT`): the True API CDN, then the Local Module. Midway the
   script takes the CDN away (it accepts connections and never answers), so the Local Module
   answers offline; then the Local Module falls out of sync too, and the ``unanswered`` policy
   decides.
2. **Mode ``tspiot``** (:data:`TSPIOT_SCRIPT`): the running service is given a new
   configuration through :meth:`markd.service.Service.reload` — the path ``systemctl reload``
   takes — that hands the decision to the ТС ПИоТ emulator, served over HTTPS with a
   self-signed certificate as ESP's ESM is. Its first check comes back offline (answered from
   its Local Module while its channel to ГИС МТ is not up yet), then it answers online, reports
   a unit sold and one blocked, and finally goes into emergency mode, which refuses the unit.
3. **The sale**: every allowed unit (each КИ once) is sold through the emulated ККТ
   (``emulator://`` in the temporary directory, :mod:`markd.fiscal`; with ``markd demo
   --printer shtrih`` — ``make demo PRINTER=shtrih`` — the Shtrih emulator, spoken to over
   protocol 1 on a pty as a serial ККТ would be): the ККТ validates each
   code, the receipt is printed with its tags, and the store's sold journal and the Local
   Module (``/cis/sell``) get the КИ (:func:`sell_allowed`).

Each verdict is printed with its decision, source, latency, КИ, reason code, the Russian text
the customer sees with an English gloss, and the tag 1265 value. The configuration is built in
code, so no file is needed. The codes are made up (valid structure and GTIN check digits, no
real product); which decision each scan gets is fixed by the script, only the ids the
emulators hand out (``reqId``, times) differ between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from markd.checks.tspiot import TspiotClient
from markd.checks.verdict import Verdict
from markd.config import (
    Config,
    LocalModuleConfig,
    OnlineCheckConfig,
    ScannerConfig,
    TspiotConfig,
    default_config,
)
from markd.emulators.crpt_cdn import CrptCdn
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.server import TLSUnavailableError
from markd.emulators.shtrih import ShtrihKkt, ShtrihServer
from markd.emulators.tspiot import TspiotEmulator
from markd.scanners import get_virtual
from markd.service import Service
from markd.service.wiring import build_session, local_module_for_sales, open_configured_printer
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

#: Made-up units of the ТС ПИоТ part.
TSPIOT_WARMUP = f"0104680029460908215WarmUpWater1{GS}93Wq7e"
TSPIOT_DAIRY = f"0104670540176099215Dairy{GS}93Dr4y"
TSPIOT_SOLD = f"0104680029460908215AlreadySold1{GS}93So1d"
TSPIOT_OFFLINE_BLOCKED = f"0104607809596237215OfflineBlkd1{GS}93Ob7k"
#: The ``client_info.token`` (the ПМСР's access key) the ТС ПИоТ emulator insists on.
TSPIOT_TOKEN = "demo-pmsr-access-key"


@dataclass(frozen=True)
class DemoScan:
    """One scripted scan: what it shows, the bytes the scanner sends (without terminator), the
    decision markd should reach, and an optional change to the services before it."""

    label: str
    text: str
    expect: str
    before: str | None = None  # a key of the actions run_demo sets up, e.g. "cdn-down"


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

TSPIOT_SCRIPT: tuple[DemoScan, ...] = (
    DemoScan(
        "water, the first check since the ТС ПИоТ started: answered from its Local Module",
        TSPIOT_WARMUP,
        "allow",
    ),
    DemoScan("dairy, answered online through ГИС МТ", TSPIOT_DAIRY, "allow"),
    DemoScan("water the ТС ПИоТ reports as already sold", TSPIOT_SOLD, "deny"),
    DemoScan(
        "a unit answered from the ТС ПИоТ's Local Module: blocked", TSPIOT_OFFLINE_BLOCKED, "deny"
    ),
    DemoScan(
        "the ТС ПИоТ goes into emergency mode (203): the unit is refused",
        f"0104680029460908215jcmHzLmkdPML{GS}938p9E",
        "deny",
        before="tspiot-emergency",
    ),
)

#: Every scan of the demo, in the order run (tests compare the printed decisions with it).
ALL_SCANS: tuple[DemoScan, ...] = SCRIPT + TSPIOT_SCRIPT


@dataclass(frozen=True)
class DemoPhase:
    """One part of the demo: its heading, lines shown under it, the configuration the service
    runs on (the first phase starts the service with it; the later ones reload to it) and the
    scans."""

    title: str
    config: Config
    script: tuple[DemoScan, ...]
    intro: tuple[str, ...] = ()


def demo_config(
    store_path: str, *, cdn_url: str | None = None, lm_url: str | None = None, secrets: str = ""
) -> Config:
    """The demo's configuration: a store in ``store_path``, one virtual scanner, and — given
    the emulators' URLs — mode ``direct`` with the CDN and the Local Module."""
    base = default_config()
    config = dataclasses.replace(
        base,
        # The script takes services away on purpose, so their notices are expected: only
        # errors are logged (to stderr), at start and after a reload alike.
        log=dataclasses.replace(base.log, target="stderr", level="error"),
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


def tspiot_config(direct: Config, tspiot_url: str, *, secrets: str, tls: bool) -> Config:
    """``direct`` switched to mode ``tspiot``: the ТС ПИоТ at ``tspiot_url`` decides (its
    self-signed certificate accepted, the URL being loopback), with the ``client_info`` token
    from a file. ``[check.local_module]`` stays: in this mode it serves only the sale's
    ``/cis/sell`` report, the ТС ПИоТ asking its own Local Module for offline answers."""
    check = dataclasses.replace(
        direct.check,
        mode="tspiot",
        tspiot_timeout_ms=1500,
        online=None,
        tspiot=TspiotConfig(
            url=tspiot_url, allow_self_signed=tls, token_file=f"{secrets}/tspiot-token"
        ),
    )
    return dataclasses.replace(direct, check=check)


# --------------------------------------------------------------------------------------------
# Printing a verdict

#: Short English glosses of the reasons; the Russian text is the verdict's own.
REASONS_EN: Mapping[str, str] = {
    "allowed": "the online check found nothing against the sale",
    "allowed-offline": "the offline check (Local Module) found no block",
    "blocked-locally": "the КИ is on markd's own blocklist",
    "sold-here": "this unit was already sold at this shop",
    "blocked": "a government body blocked the sale of this unit",
    "blocked-cached": "the last online answer kept in the store said blocked",
    "expired": "the expiry date has passed (judged in the shop's time zone)",
    "sold": "already sold: withdrawn from circulation",
    "not-found": "the code is unknown to Честный ЗНАК",
    "not-verified": "the crypto tail did not verify",
    "not-realizable": "the unit is not in circulation for retail sale",
    "lm-sync-error": "nothing answered; the Local Module is out of sync (4050)",
    "lm-not-ready": "nothing answered; the Local Module is not ready (4045)",
    "tspiot-timeout": "the ТС ПИоТ did not answer in time; its failure refuses the unit",
    "tspiot-unreachable": "the ТС ПИоТ cannot be reached; its failure refuses the unit",
    "tspiot-emergency": "the ТС ПИоТ is in emergency mode (203): neither ГИС МТ nor its "
    "Local Module answered it",
    "tspiot-unauthorized": "the ТС ПИоТ refused the client_info token",
}


def reason_en(verdict: Verdict) -> str:
    """An English gloss of the verdict's reason: the demo's own, the parser's, the failure kind
    behind a ТС ПИоТ refusal, or the decision table's condition for the row that fired."""
    from markd.checks.policy import RULES_BY_ID
    from markd.checks.results import FAILURE_KINDS
    from markd.codes import REASONS

    if verdict.reason == "unchecked":
        outcome = "sold unchecked" if verdict.allowed else "refused"
        return f"no check service answered: {outcome}, as [check] unanswered says"
    if verdict.reason in REASONS_EN:
        return REASONS_EN[verdict.reason]
    if verdict.source == "parser" and verdict.reason in REASONS:
        return REASONS[verdict.reason][0]
    kind = verdict.reason.removeprefix("tspiot-")
    if verdict.reason.startswith("tspiot-") and kind in FAILURE_KINDS:
        return f"the ТС ПИоТ failed: {FAILURE_KINDS[kind]}"  # type: ignore[index]
    rule = RULES_BY_ID.get(str(verdict.details.get("rule", "")))
    return rule.condition if rule is not None else verdict.reason


def format_verdict(verdict: Verdict) -> str:
    """The verdict as up to three lines: the decision with its source, latency, КИ, shape and
    repairs; the reason code with the customer's Russian text and an English gloss; tag 1265
    when a check service answered."""
    subject = verdict.ki if verdict.ki is not None else "(not a usable code)"
    head = (
        f"{verdict.decision.upper():6} by {verdict.source} in {verdict.latency_ms:.1f} ms"
        f"  {subject}"
    )
    if verdict.shape:
        head += f"  {verdict.shape}"
    if verdict.repairs:
        head += "  repaired: " + ", ".join(verdict.repairs)
    lines = [head, f"       {verdict.reason}: «{verdict.message_ru}» — {reason_en(verdict)}"]
    if verdict.tag1265:
        lines.append(f"       tag 1265: {verdict.tag1265}")
    return "\n    ".join(lines)


def heading(title: str) -> str:
    """A phase heading, ruled to 78 columns."""
    text = f"── {title} "
    return text + "─" * max(3, 78 - len(text))


def summary_line(verdicts: Sequence[Verdict], script: Sequence[DemoScan]) -> str:
    counts = Counter(v.decision for v in verdicts)
    unexpected = sum(1 for v, s in zip(verdicts, script, strict=True) if v.decision != s.expect)
    return (
        f"{len(verdicts)} scans: {counts['allow']} allowed, {counts['deny']} denied, "
        f"{counts['rescan']} re-scan requested"
        + (f"; {unexpected} differ from the expected decision" if unexpected else "")
    )


# --------------------------------------------------------------------------------------------
# Running the service


async def run_phases(
    phases: Sequence[DemoPhase],
    out: TextIO,
    timeout: float = 10.0,
    actions: Mapping[str, Callable[[], object]] | None = None,
) -> list[list[Verdict]]:
    """Start the service on the first phase's configuration and feed its scans into the
    virtual scanner one at a time; for each later phase, reload the running service to that
    phase's configuration (:meth:`Service.reload`) and feed its scans. Returns the verdicts of
    each phase, in order."""
    verdicts: list[Verdict] = []
    arrived = asyncio.Event()
    next_config: list[Config] = [phases[0].config]

    def sink(verdict: Verdict) -> None:
        verdicts.append(verdict)
        arrived.set()

    first = phases[0].config
    service = Service(
        first,
        event_log=EventLog(target=first.log.target, level=first.log.level),
        verdict_sink=sink,
        # A reload reads "the configuration files" through this; the demo's are built in code.
        config_loader=lambda: next_config[0],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    results: list[list[Verdict]] = []
    number = 0
    try:
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({ready, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # start-up failed: raise its error
        if not service.ready.is_set():
            raise TimeoutError(f"the service did not start within {timeout} s")
        scanner = get_virtual(SCANNER_NAME)
        for index, phase in enumerate(phases):
            print(heading(phase.title), file=out)
            for line in phase.intro:
                print(line, file=out)
            if index > 0:
                next_config[0] = phase.config
                reloaded = await asyncio.wait_for(service.reload(), timeout)
                if not reloaded.ok:
                    raise RuntimeError(f"the demo's reload was refused: {reloaded.message}")
                # The service says "configuration reloaded from <files>: <what changed>"; the
                # demo has no files, so only what changed is shown.
                changed = reloaded.message.partition(": ")[2] or reloaded.message
                print(f"Service.reload() applied: {changed}", file=out)
            print("", file=out)
            start = len(verdicts)
            for item in phase.script:
                number += 1
                if item.before is not None and actions is not None:
                    actions[item.before]()
                arrived.clear()
                scanner.scan(item.text)
                await asyncio.wait_for(arrived.wait(), timeout)
                verdict = verdicts[-1]
                mark = "" if verdict.decision == item.expect else f"  (expected {item.expect}!)"
                print(f"{number:2}. {item.label}", file=out)
                print(f"    {format_verdict(verdict)}{mark}", file=out)
            results.append(verdicts[start:])
            print("", file=out)
            print(summary_line(results[-1], phase.script), file=out)
            tspiot = None if service.chain is None else service.chain.tspiot
            version = tspiot.version if isinstance(tspiot, TspiotClient) else None
            if version is not None:
                print(f"ТС ПИоТ API version detected by probing /info: v{version}", file=out)
            print("", file=out)
    finally:
        stop.set()
        await task
    return results


def run_demo(out: TextIO | None = None, printer: str = "emulator") -> int:
    """The ``markd demo`` command: returns the exit status (0). ``printer="shtrih"`` sells
    through the Shtrih emulator over protocol 1 on a pty instead of the virtual ККТ."""
    out = out or sys.stdout
    if printer not in ("emulator", "shtrih"):
        raise ValueError("printer is emulator or shtrih")
    scenario: dict[str, Any] = {
        "cdn": {"token": DEMO_TOKEN},
        "codes": {
            ONLINE_BLOCKED.split(GS)[0]: {"isBlocked": True, "ogvs": ["FNS"]},
            ONLINE_EXPIRED.split(GS)[0]: {"expireDate": "2024-01-31T00:00:00.000Z"},
            TSPIOT_SOLD.split(GS)[0]: {"sold": True},
            TSPIOT_OFFLINE_BLOCKED.split(GS)[0]: {"isBlocked": True, "ogvs": ["RPN"]},
        },
        "tspiot": {
            # Like ESP's ESM: API v1 and v2 (markd probes v3 first), the protobuf JSON
            # rendering (timestamps as strings, defaults left out), the first check answered
            # offline while the channel to ГИС МТ comes up.
            "versions": [1, 2],
            "token": TSPIOT_TOKEN,
            "codes_check_timeout": 1500,
            "offline_first_checks": 1,
            "offline_codes": [TSPIOT_OFFLINE_BLOCKED.split(GS)[0]],
            "string_timestamps": True,
            "omit_defaults": True,
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="markd-demo-") as tmp,
        CrptCdn(scenario) as cdn,
        LocalModuleEmulator() as lm,
        _tspiot_emulator(scenario) as tspiot,
        contextlib.ExitStack() as devices,
    ):
        Path(tmp, "crpt-token").write_text(DEMO_TOKEN + "\n")
        Path(tmp, "lm-password").write_text("admin\n")
        Path(tmp, "tspiot-token").write_text(TSPIOT_TOKEN + "\n")
        direct = demo_config(f"{tmp}/store", cdn_url=cdn.url, lm_url=lm.url, secrets=tmp)
        via_tspiot = tspiot_config(direct, tspiot.url, secrets=tmp, tls=tspiot.tls)
        if printer == "shtrih":
            server = devices.enter_context(ShtrihServer(ShtrihKkt(f"{tmp}/shtrih")))
            fiscal = dataclasses.replace(via_tspiot.fiscal, url=f"shtrih://{server.start_pty()}")
            via_tspiot = dataclasses.replace(via_tspiot, fiscal=fiscal)
        with Store.from_config(direct.store) as store:
            store.block(BLOCKED_KI, "demo: recalled batch", source="demo")
        print(
            "markd demo: the real service reads a virtual scanner; the Честный ЗНАК services\n"
            "and the ККТ are emulated in this process, on loopback.",
            file=out,
        )
        print("", file=out)
        certificate = (
            "HTTPS, self-signed certificate accepted for loopback"
            if tspiot.tls
            else "plain HTTP: no TLS certificate could be made here"
        )
        phases = (
            DemoPhase(
                "1. mode direct: the True API CDN, then the Local Module",
                direct,
                SCRIPT,
                (
                    f"CDN list service {cdn.url} (host {cdn.host.url}), Local Module {lm.url}",
                    f"blocked in markd's own store: {BLOCKED_KI}",
                ),
            ),
            DemoPhase(
                "2. reload to mode tspiot: the ТС ПИоТ decides",
                via_tspiot,
                TSPIOT_SCRIPT,
                (
                    f"ТС ПИоТ {tspiot.url} ({certificate});",
                    "[check.local_module] stays for the sale's /cis/sell report.",
                ),
            ),
        )
        actions: dict[str, Callable[[], object]] = {
            "cdn-down": lambda: (
                cdn.set_fault("codes/check", black_hole=True),
                cdn.set_fault("cdn/info", black_hole=True),
            ),
            "lm-down": lambda: lm.set_state("sync_error"),
            "tspiot-emergency": lambda: tspiot.set_fault(
                "codes/check", emergency=True, description="Нет связи с ГИС МТ и ЛМ ЧЗ"
            ),
        }
        results = asyncio.run(run_phases(phases, out, actions=actions))
        lm.set_state("ready")  # back in sync, so the sale below reaches its sold-codes list
        print(heading("3. sale: the allowed units through the emulated ККТ"), file=out)
        sale = io.StringIO()
        scans = [scan for phase in phases for scan in phase.script]
        verdicts = [verdict for phase_verdicts in results for verdict in phase_verdicts]
        asyncio.run(sell_allowed(via_tspiot, tuple(scans), verdicts, sale))
    out.write(sale.getvalue())
    return 0


def _tspiot_emulator(scenario: Mapping[str, Any]) -> TspiotEmulator:
    """The ТС ПИоТ emulator over HTTPS, as the real one serves; plain HTTP when no certificate
    can be made (neither the ``cryptography`` package nor ``openssl`` is installed)."""
    try:
        return TspiotEmulator(scenario, tls=True)
    except TLSUnavailableError:
        return TspiotEmulator(scenario, tls=False)


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

    with Store.from_config(config.store) as store:
        printer = open_configured_printer(config)
        try:
            lm_client = local_module_for_sales(config)
        except BaseException:
            printer.close()
            raise
        session = build_session(config, printer, store, lm_client=lm_client)
        try:
            await session.recover()
            print(f"ККТ {config.fiscal.url}", file=out)
            print("", file=out)
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
