#!/usr/bin/env python3
"""Check-chain benchmark: what markd adds to a check, over real sockets, against the emulators.

Usage::

    tools/bench/checks.py [--count N] [--cdn-latency-ms MS] [--black-hole-checks K]
                          [--online-timeout-ms MS] [--lm-timeout-ms MS]

Every figure comes from the real chain (:func:`markd.service.wiring.build_chain` on a
``mode = "direct"`` configuration, real :class:`~markd.checks.online.OnlineClient` and
:class:`~markd.checks.local_module.LocalModuleClient`, a real LMDB store) talking HTTP to the
emulators (:mod:`markd.emulators`), each run as its own process (``python -m markd.emulators``)
so that the far side does not share the interpreter lock with the side being measured.
Each verdict is timed end to end: from just before :func:`markd.codes.parse` to the verdict,
with ``time.perf_counter``.

1. **Online path** — the CDN emulator (its list service and one host, split like the real
   CDN) answers ``codes/check`` after a fixed latency (20 ms by default). N checks of distinct
   codes through the chain are interleaved with N bare ``http.client`` keep-alive round trips
   to the same listed host with the same body (the baseline: the emulator's own answer time as
   a minimal client sees it). markd's added time is the chain's percentile minus the
   baseline's (p50 and p99); target p99 ≤ 2 ms. The same again **through an HTTP proxy**
   (:mod:`markd.emulators.http_proxy`, its own process), the baseline then also going through
   it, over plain HTTP (absolute form) and over **HTTPS** (a ``CONNECT`` tunnel with TLS to
   the host inside it, the emulator's certificate trusted through ``SSL_CERT_FILE``): target
   p99 ≤ 2 ms as well.
1a. **First verdict after a start** — a new chain (a daemon or ``markctl check`` just started)
   and its first check: with no host list kept (a cold start: the list service is asked
   inside the check's budget, then a host), and with the list kept from the run before.
   The list service answers after the same latency as the host. Over plain HTTP and over
   HTTPS (where a cold start also pays a second TLS handshake).
2. **Offline verdict from the store** — units blocked in the store (half) or sold here (half):
   the chain answers without a call; target p99 ≤ 1 ms.
3. **Black hole** — CDN hosts and a Local Module that accept connections and never answer: the
   worst verdict time over K checks against the budget (online + Local Module timeouts) plus
   50 ms; target: within it.
4. **Local Module path** — a chain with ``[check.local_module]`` only, the LM emulator with no
   latency: verdict p50/p99, with bare ``http.client`` round trips to ``outCheck`` as the
   baseline. A keep-alive client that loses ~40 ms to Nagle's algorithm and delayed ACKs would
   show p50 near 40 ms; it must be well under.

Prints human lines, then as the final line one JSON object with every figure and each target
with whether it was met. Exit status 0, or 1 when a verdict was not the expected one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import http.client
import json
import logging
import os
import platform
import random
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from markd.checks.chain import CheckChain
from markd.codes import GS, MarkingCode, parse
from markd.config import Config, LocalModuleConfig, OnlineCheckConfig, default_config
from markd.emulators.server import self_signed_certificate
from markd.service.wiring import build_chain, hosts_file
from markd.store import Store

#: The issue's targets (issue 4, "Benchmark").
TARGET_ONLINE_ADDED_P99_MS = 2.0
TARGET_STORE_P99_MS = 1.0
TARGET_BLACK_HOLE_MARGIN_MS = 50.0
#: A Nagle / delayed-ACK stall costs about 40 ms; the LM path's median must stay well under.
NAGLE_STALL_MS = 40.0
TARGET_LM_P50_MS = 10.0

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
LM_PASSWORD = "admin"
FN_SERIAL = "9960440300000001"
GTIN = "04680029460908"
SERIAL_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
SCANNER = "bench"


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0–1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of ``values`` (milliseconds), rounded to µs."""
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values), 3),
    }


def describe(name: str, stats: dict[str, float]) -> str:
    return (
        f"  {name:<38} p50 {stats['p50']:8.3f}  p90 {stats['p90']:8.3f}  "
        f"p99 {stats['p99']:8.3f}  max {stats['max']:8.3f} ms"
    )


# ---------------------------------------------------------------------------------------------
# Codes


def make_codes(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct scanned codes (КИ + GS + AI 93) of one water GTIN."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        serial = "".join(rng.choice(SERIAL_CHARS) for _ in range(13))
        if serial in seen:
            continue
        seen.add(serial)
        crypto = "".join(rng.choice(SERIAL_CHARS) for _ in range(4))
        out.append(f"01{GTIN}21{serial}{GS}93{crypto}")
    return out


def ki_of(text: str) -> str:
    return text.split(GS, 1)[0]


# ---------------------------------------------------------------------------------------------
# Emulators in their own processes


@dataclasses.dataclass
class Emulator:
    """A running ``python -m markd.emulators NAME`` and its base URL."""

    process: subprocess.Popen[str]
    url: str


@contextmanager
def emulator(
    name: str, scenario: dict[str, Any], workdir: Path, *, tls: tuple[Path, Path] | None = None
) -> Iterator[Emulator]:
    """Start emulator ``name`` on a free loopback port with ``scenario`` (HTTPS with the
    certificate and key ``tls`` when given); stop it at the end."""
    scenario_file = workdir / f"{name}-{id(scenario)}.json"
    scenario_file.write_text(json.dumps(scenario))
    tls_args = [] if tls is None else ["--tls-cert", str(tls[0]), str(tls[1])]
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", name, "--port", "0"]
        + ["--scenario", str(scenario_file), *tls_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"emulator {name} did not start (exit {process.poll()})")
        yield Emulator(process, url)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def proxy_process(workdir: Path) -> Iterator[Emulator]:
    """The test HTTP proxy in its own process, on a free loopback port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators.http_proxy", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the proxy did not start (exit {process.poll()})")
        yield Emulator(process, url)
    finally:
        process.terminate()
        process.wait(5)


def listed_host(base_url: str) -> str:
    """The first host the CDN's list service names (checks go there, never to the base)."""
    split = urllib.parse.urlsplit(base_url)
    assert split.hostname is not None
    connection: http.client.HTTPConnection
    if split.scheme == "https":
        connection = http.client.HTTPSConnection(
            split.hostname, split.port, timeout=10, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
    try:
        connection.request("GET", "/api/v4/true-api/cdn/info", headers={"X-API-KEY": TOKEN})
        body = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return str(body["hosts"][0]["host"])


class BareClient:
    """A minimal keep-alive ``http.client`` connection: the baseline round trip (through
    ``proxy`` when given: absolute-form requests, as any client behind a proxy sends)."""

    def __init__(
        self, url: str, path: str, headers: dict[str, str], proxy: str | None = None
    ) -> None:
        target = urllib.parse.urlsplit(url)
        split = urllib.parse.urlsplit(proxy or url)
        assert split.hostname is not None and target.hostname is not None
        self.path = path
        self.headers = {"Content-Type": "application/json", **headers}
        if target.scheme == "https":
            # HTTPS: TLS end to end, through a CONNECT tunnel when there is a proxy.
            self.connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                split.hostname, split.port, timeout=10, context=ssl.create_default_context()
            )
            if proxy:
                self.connection.set_tunnel(target.hostname, target.port)
        else:
            self.connection = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
            if proxy:
                self.path = url.rstrip("/") + path  # absolute form, as to any proxy

    def post(self, body: Any) -> float:
        """One POST; its round-trip time in milliseconds."""
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self.connection.request("POST", self.path, body=data, headers=self.headers)
        response = self.connection.getresponse()
        response.read()
        took = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"baseline POST {self.path}: HTTP {response.status}")
        return took

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------------------------------------
# The chain


def bench_config(
    workdir: Path,
    store_dir: str,
    *,
    cdn_url: str | None,
    lm_url: str | None,
    online_timeout_ms: int,
    lm_timeout_ms: int,
    proxy: str = "",
) -> Config:
    """A ``mode = "direct"`` configuration, as a kiosk's markd.toml would give it."""
    (workdir / "crpt-token").write_text(TOKEN + "\n")
    (workdir / "lm-password").write_text(LM_PASSWORD + "\n")
    base = default_config()
    check = dataclasses.replace(
        base.check,
        mode="direct",
        online_timeout_ms=online_timeout_ms,
        local_module_timeout_ms=lm_timeout_ms,
        online=None
        if cdn_url is None
        else OnlineCheckConfig(
            url=cdn_url,
            token_file=str(workdir / "crpt-token"),
            proxy=proxy,
            no_proxy=(),  # the emulators are on loopback: through the proxy all the same
        ),
        local_module=None
        if lm_url is None
        else LocalModuleConfig(url=lm_url, password_file=str(workdir / "lm-password")),
    )
    return dataclasses.replace(
        base,
        check=check,
        store=dataclasses.replace(base.store, path=store_dir, map_size_mb=64),
        terminal=dataclasses.replace(base.terminal, fn_serial=FN_SERIAL),
    )


def open_chain(config: Config) -> tuple[Store, CheckChain]:
    store = Store.from_config(config.store)
    return store, build_chain(config, store)


def close_chain(store: Store, chain: CheckChain) -> None:
    chain.close()
    store.close()


async def timed_decide(chain: CheckChain, text: str) -> tuple[float, str, str]:
    """One verdict, parse included: (milliseconds, decision, source)."""
    started = time.perf_counter()
    code: MarkingCode = parse(text)
    verdict = await chain.decide(code, SCANNER)
    took = (time.perf_counter() - started) * 1000
    return took, verdict.decision, verdict.source


# ---------------------------------------------------------------------------------------------
# The four measurements


async def online_path(
    args: argparse.Namespace,
    workdir: Path,
    codes: list[str],
    other_codes: list[str],
    proxy: str = "",
    tls: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    scenario = {
        "cdn": {"token": TOKEN, "endpoints": {"codes/check": {"latency_ms": args.cdn_latency_ms}}}
    }
    label = "online path" + (" over HTTPS" if tls else "") + (" through the proxy" if proxy else "")
    key = ("tls_" if tls else "") + ("proxy_" if proxy else "")
    with (
        emulator("crpt_cdn", scenario, workdir, tls=tls) as cdn,
        emulator("local_module", {}, workdir) as lm,
    ):
        config = bench_config(
            workdir,
            str(workdir / f"store-online-{key or 'plain'}"),
            cdn_url=cdn.url,
            lm_url=lm.url,
            online_timeout_ms=args.online_timeout_ms,
            lm_timeout_ms=args.lm_timeout_ms,
            proxy=proxy,
        )
        store, chain = open_chain(config)
        host = listed_host(cdn.url)
        bare = BareClient(host, "/api/v4/true-api/codes/check", {"X-API-KEY": TOKEN}, proxy or None)
        try:
            online = chain.online
            assert online is not None
            deadline = time.monotonic() + 5
            await online.refresh_hosts(deadline)  # type: ignore[attr-defined]
            await online.health_check(deadline)  # type: ignore[attr-defined]
            warm = min(100, len(codes))
            for text in codes[:warm]:  # warm-up: connections, caches, the CDN's first answers
                await timed_decide(chain, text)
                bare.post({"codes": [text], "fiscalDriveNumber": FN_SERIAL})
            # The same clients without the verdict cache write (a diagnostic, not a target).
            uncached = CheckChain(
                store,
                dataclasses.replace(chain.settings, cache_verdicts=False),
                online=chain.online,
                local_module=chain.local_module,
            )
            gc.collect()
            chain_ms: list[float] = []
            base_ms: list[float] = []
            uncached_ms: list[float] = []
            sources: dict[str, int] = {}
            timed = codes[warm:]
            for text, other in zip(timed, other_codes, strict=False):
                # Interleaved, so all three see the same machine at the same moment.
                base_ms.append(bare.post({"codes": [text], "fiscalDriveNumber": FN_SERIAL}))
                took, _decision, source = await timed_decide(chain, text)
                chain_ms.append(took)
                sources[source] = sources.get(source, 0) + 1
                took, _decision, source = await timed_decide(uncached, other)
                uncached_ms.append(took)
                sources[source] = sources.get(source, 0) + 1
        finally:
            bare.close()
            close_chain(store, chain)
    chain_stats, base_stats = summary(chain_ms), summary(base_ms)
    uncached_stats = summary(uncached_ms)
    added_p50 = chain_stats["p50"] - base_stats["p50"]
    added_p99 = chain_stats["p99"] - base_stats["p99"]
    say(f"{label}: {len(chain_ms)} checks, CDN emulator latency {args.cdn_latency_ms} ms")
    say(describe("baseline http.client round trip", base_stats))
    say(describe("chain verdict (parse → verdict)", chain_stats))
    say(describe("same, without the verdict cache write", uncached_stats))
    say(f"  markd adds: p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms; sources {sources}")
    say(
        f"  without the cache write: p50 {uncached_stats['p50'] - base_stats['p50']:.3f} ms, "
        f"p99 {uncached_stats['p99'] - base_stats['p99']:.3f} ms"
    )
    figures = {
        "online_checks": len(chain_ms),
        "online_cdn_latency_ms": args.cdn_latency_ms,
        "online_baseline_ms": base_stats,
        "online_chain_ms": chain_stats,
        "online_added_p50_ms": round(added_p50, 3),
        "online_added_p99_ms": round(added_p99, 3),
        "online_added_over_configured_p50_ms": round(chain_stats["p50"] - args.cdn_latency_ms, 3),
        "online_added_over_configured_p99_ms": round(chain_stats["p99"] - args.cdn_latency_ms, 3),
        "online_uncached_ms": uncached_stats,
        "online_uncached_added_p50_ms": round(uncached_stats["p50"] - base_stats["p50"], 3),
        "online_uncached_added_p99_ms": round(uncached_stats["p99"] - base_stats["p99"], 3),
        "online_sources": sources,
    }
    result = {(f"{key}{name}" if key else name): value for name, value in figures.items()}
    result["wrong"] = sum(n for s, n in sources.items() if s != "cdn")
    return result


async def first_verdict(
    args: argparse.Namespace,
    workdir: Path,
    codes: list[str],
    tls: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """The first verdict of a freshly made chain: with no host list kept, and with one."""
    latency = args.cdn_latency_ms
    scenario = {
        "cdn": {
            "token": TOKEN,
            "endpoints": {
                "codes/check": {"latency_ms": latency},
                "cdn/info": {"latency_ms": latency},
            },
        }
    }
    figures: dict[str, list[float]] = {"cold": [], "kept": []}
    wrong = 0
    with (
        emulator("crpt_cdn", scenario, workdir, tls=tls) as cdn,
        emulator("local_module", {}, workdir) as lm,
    ):
        config = bench_config(
            workdir,
            str(workdir / f"store-first{'-tls' if tls else ''}"),
            cdn_url=cdn.url,
            lm_url=lm.url,
            online_timeout_ms=args.online_timeout_ms,
            lm_timeout_ms=args.lm_timeout_ms,
        )
        kept = hosts_file(config)
        assert kept is not None
        for index, text in enumerate(codes[: 2 * args.first_checks]):
            kind = "cold" if index % 2 == 0 else "kept"
            if kind == "cold":
                kept.unlink(missing_ok=True)
            store, chain = open_chain(config)
            try:
                took, _decision, source = await timed_decide(chain, text)
            finally:
                online = chain.online
                if online is not None:
                    await online.aclose()  # type: ignore[attr-defined] - writes the list
                close_chain(store, chain)
            figures[kind].append(took)
            wrong += source != "cdn"
    cold, warm = summary(figures["cold"]), summary(figures["kept"])
    say(
        f"first verdict after a start{' over HTTPS' if tls else ''} ({args.first_checks} starts "
        f"each; list service and host answer after {latency} ms)"
    )
    say(describe("no host list kept (fetch, then check)", cold))
    say(describe("host list kept from the last run", warm))
    key = "tls_" if tls else ""
    return {
        "first_checks": args.first_checks,
        f"{key}first_verdict_cold_ms": cold,
        f"{key}first_verdict_kept_ms": warm,
        "wrong": wrong,
    }


async def store_offline(
    args: argparse.Namespace, workdir: Path, codes: list[str]
) -> dict[str, Any]:
    # The services are configured (the real chain) but must never be reached: the store vetoes.
    with (
        emulator("crpt_cdn", {"cdn": {"token": TOKEN}}, workdir) as cdn,
        emulator("local_module", {}, workdir) as lm,
    ):
        config = bench_config(
            workdir,
            str(workdir / "store-offline"),
            cdn_url=cdn.url,
            lm_url=lm.url,
            online_timeout_ms=args.online_timeout_ms,
            lm_timeout_ms=args.lm_timeout_ms,
        )
        store, chain = open_chain(config)
        try:
            for index, text in enumerate(codes):
                if index % 2 == 0:
                    store.block(ki_of(text), "bench", source="bench")
                else:
                    store.mark_sold(parse(text), receipt=f"bench-{index}")
            for text in codes[:100]:
                await timed_decide(chain, text)
            gc.collect()
            took_ms: list[float] = []
            wrong = 0
            for text in codes:
                took, decision, source = await timed_decide(chain, text)
                took_ms.append(took)
                wrong += decision != "deny" or source != "store"
        finally:
            close_chain(store, chain)
    stats = summary(took_ms)
    say(f"offline verdict from the store: {len(took_ms)} checks (half blocked, half sold here)")
    say(describe("chain verdict (parse → verdict)", stats))
    return {
        "store_checks": len(took_ms),
        "store_offline_p50_ms": stats["p50"],
        "store_offline_p99_ms": stats["p99"],
        "store_offline_max_ms": stats["max"],
        "wrong": wrong,
    }


async def black_hole(args: argparse.Namespace, workdir: Path, codes: list[str]) -> dict[str, Any]:
    hole = {"endpoints": {"*": {"black_hole": True}}}
    # The list service answers (so each check spends its whole online budget on a host);
    # the hosts and the Local Module never do.
    silent = {"black_hole": True}
    cdn_hole = {"endpoints": {"codes/check": silent, "cdn/health/check": silent}}
    with (
        emulator("crpt_cdn", {"cdn": {"token": TOKEN, **cdn_hole}}, workdir) as cdn,
        emulator("local_module", {"local_module": hole}, workdir) as lm,
    ):
        config = bench_config(
            workdir,
            str(workdir / "store-hole"),
            cdn_url=cdn.url,
            lm_url=lm.url,
            online_timeout_ms=args.online_timeout_ms,
            lm_timeout_ms=args.lm_timeout_ms,
        )
        store, chain = open_chain(config)
        try:
            took_ms: list[float] = []
            wrong = 0
            for text in codes[: args.black_hole_checks]:
                took, decision, source = await timed_decide(chain, text)
                took_ms.append(took)
                wrong += source != "none"  # nothing answered: the unanswered policy decides
        finally:
            close_chain(store, chain)
    budget = args.online_timeout_ms + args.lm_timeout_ms
    worst = max(took_ms)
    say(
        f"black hole (CDN and LM accept, never answer): {len(took_ms)} checks, budget "
        f"{args.online_timeout_ms} + {args.lm_timeout_ms} = {budget} ms"
    )
    say(describe("chain verdict (parse → verdict)", summary(took_ms)))
    say(f"  worst {worst:.1f} ms = budget + {worst - budget:.1f} ms (allowed: + 50 ms)")
    return {
        "black_hole_checks": len(took_ms),
        "black_hole_worst_ms": round(worst, 3),
        "black_hole_budget_ms": budget,
        "black_hole_over_budget_ms": round(worst - budget, 3),
        "wrong": wrong,
    }


async def lm_path(args: argparse.Namespace, workdir: Path, codes: list[str]) -> dict[str, Any]:
    with emulator("local_module", {}, workdir) as lm:
        config = bench_config(
            workdir,
            str(workdir / "store-lm"),
            cdn_url=None,
            lm_url=lm.url,
            online_timeout_ms=args.online_timeout_ms,
            lm_timeout_ms=args.lm_timeout_ms,
        )
        store, chain = open_chain(config)
        auth = {"Authorization": "Basic YWRtaW46YWRtaW4=", "X-ClientId": FN_SERIAL}
        bare = BareClient(lm.url, "/api/v2/cis/outCheck", auth)
        try:
            warm = min(100, len(codes))
            for text in codes[:warm]:
                await timed_decide(chain, text)
                bare.post({"cis_list": [{"cis": ki_of(text)}]})
            gc.collect()
            chain_ms: list[float] = []
            base_ms: list[float] = []
            wrong = 0
            for text in codes[warm:]:
                base_ms.append(bare.post({"cis_list": [{"cis": ki_of(text)}]}))
                took, _decision, source = await timed_decide(chain, text)
                chain_ms.append(took)
                wrong += source != "lm"
        finally:
            bare.close()
            close_chain(store, chain)
    chain_stats, base_stats = summary(chain_ms), summary(base_ms)
    stalls = sum(1 for t in chain_ms if t >= NAGLE_STALL_MS * 0.9)
    say(f"Local Module path ([check.local_module] only, no latency): {len(chain_ms)} checks")
    say(describe("baseline http.client round trip", base_stats))
    say(describe("chain verdict (parse → verdict)", chain_stats))
    say(f"  verdicts ≥ 36 ms (a Nagle / delayed-ACK stall would be ~40 ms): {stalls}")
    return {
        "lm_checks": len(chain_ms),
        "lm_baseline_ms": base_stats,
        "lm_path_p50_ms": chain_stats["p50"],
        "lm_path_p99_ms": chain_stats["p99"],
        "lm_path_max_ms": chain_stats["max"],
        "lm_added_p50_ms": round(chain_stats["p50"] - base_stats["p50"], 3),
        "lm_added_p99_ms": round(chain_stats["p99"] - base_stats["p99"], 3),
        "lm_stalls_ge_36ms": stalls,
        "wrong": wrong,
    }


# ---------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    codes = make_codes(2 * args.count + 100, rng)
    codes, other_codes = codes[: args.count + 100], codes[args.count + 100 :]
    result: dict[str, Any] = {
        "count": args.count,
        "python": platform.python_version(),
        "online_timeout_ms": args.online_timeout_ms,
        "local_module_timeout_ms": args.lm_timeout_ms,
    }
    wrong = 0
    # HTTPS as on a till: one self-signed certificate for the CDN emulator's servers, trusted
    # by this process as a system CA would be (OpenSSL reads SSL_CERT_FILE for every default
    # context), hostnames checked.
    tls = self_signed_certificate()
    os.environ["SSL_CERT_FILE"] = str(tls[0])
    with proxy_process(workdir) as proxy:
        through_proxy = await online_path(args, workdir, codes, other_codes, proxy=proxy.url)
        tls_through_proxy = await online_path(
            args, workdir, codes, other_codes, proxy=proxy.url, tls=tls
        )
    for part in (
        await online_path(args, workdir, codes, other_codes),
        through_proxy,
        tls_through_proxy,
        await first_verdict(args, workdir, other_codes),
        await first_verdict(args, workdir, other_codes, tls=tls),
        await store_offline(args, workdir, codes[: args.count]),
        await lm_path(args, workdir, codes),
        await black_hole(args, workdir, codes),
    ):
        wrong += part.pop("wrong")
        result.update(part)
    result["wrong_verdicts"] = wrong
    result["targets"] = {
        "online_added_p99_le_2ms": {
            "target": TARGET_ONLINE_ADDED_P99_MS,
            "met": result["online_added_p99_ms"] <= TARGET_ONLINE_ADDED_P99_MS,
        },
        "online_added_p99_through_proxy_le_2ms": {
            "target": TARGET_ONLINE_ADDED_P99_MS,
            "met": result["proxy_online_added_p99_ms"] <= TARGET_ONLINE_ADDED_P99_MS,
        },
        "online_added_p99_https_through_proxy_le_2ms": {
            "target": TARGET_ONLINE_ADDED_P99_MS,
            "met": result["tls_proxy_online_added_p99_ms"] <= TARGET_ONLINE_ADDED_P99_MS,
        },
        "store_offline_p99_le_1ms": {
            "target": TARGET_STORE_P99_MS,
            "met": result["store_offline_p99_ms"] <= TARGET_STORE_P99_MS,
        },
        "black_hole_worst_le_budget_plus_50ms": {
            "target": result["black_hole_budget_ms"] + TARGET_BLACK_HOLE_MARGIN_MS,
            "met": result["black_hole_over_budget_ms"] <= TARGET_BLACK_HOLE_MARGIN_MS,
        },
        "lm_path_p50_no_nagle_stall": {
            "target": TARGET_LM_P50_MS,
            "met": result["lm_path_p50_ms"] <= TARGET_LM_P50_MS and not result["lm_stalls_ge_36ms"],
        },
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    # The black hole's quarantine notices are expected; only errors reach stderr.
    logging.getLogger("markd").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="timed checks per path (2000)")
    parser.add_argument("--cdn-latency-ms", type=float, default=20.0, help="CDN answer delay")
    parser.add_argument("--black-hole-checks", type=int, default=20, help="checks (20)")
    parser.add_argument(
        "--first-checks", type=int, default=40, help="starts per first-verdict case (40)"
    )
    parser.add_argument("--online-timeout-ms", type=int, default=400, help="[check] (400)")
    parser.add_argument("--lm-timeout-ms", type=int, default=300, help="[check] (300)")
    parser.add_argument("--seed", type=int, default=4, help="random seed of the codes")
    args = parser.parse_args(argv)
    if args.count < 1 or args.black_hole_checks < 1:
        parser.error("--count and --black-hole-checks must be positive")
    with tempfile.TemporaryDirectory(prefix="markd-bench-checks-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    met = sum(t["met"] for t in result["targets"].values())
    wrong = result["wrong_verdicts"]
    say(f"targets met: {met} of {len(result['targets'])}; wrong verdicts: {wrong}")
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 1 if result["wrong_verdicts"] else 0


if __name__ == "__main__":
    sys.exit(main())
