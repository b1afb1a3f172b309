"""``markctl check CODE`` (one check through the configured chain) and ``markctl status``.

``check`` prints the verdict; with ``--json`` the keys are ``decision``, ``reason``,
``message``, ``source``, ``req_id``, ``req_timestamp``, ``inst``, ``version``, ``tag1265``,
``latency_ms`` (plus ``checked``, ``ki``, ``details``). Exit status 0 allow, 3 deny, 2 bad
input or configuration, 1 the store cannot be opened. (Deny is not an error of the command,
but a script must be able to tell it from allow without parsing.)

``status`` shows each configured source's health (CDN hosts and latencies, Local Module state
and last sync, ТС ПИоТ protocol and state) and the store's freshness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from markd import codes
from markd import config as config_module
from markd.checks.chain import CheckChain, StoreOnlyChain
from markd.checks.factory import build_chain
from markd.checks.verdict import Verdict, parser_verdict
from markd.errors import CodeError, ConfigError, MarkdError, StoreError
from markd.store import Store

EXIT_DENY = 3
PROBE_TIMEOUT_S = 3.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check one code through the configured chain")
    p.add_argument("code", help="the scanned code (\\u001d or <GS> for GS)")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--price", type=float, help="sale price in roubles (for price rules)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=_check)

    p = sub.add_parser("status", help="health of the check sources and the store")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "decision": verdict.decision,
        "reason": verdict.reason,
        "message": verdict.message_ru,
        "source": verdict.source,
        "req_id": verdict.req_id,
        "req_timestamp": verdict.req_timestamp,
        "inst": verdict.inst,
        "version": verdict.version,
        "tag1265": verdict.tag1265,
        "latency_ms": round(verdict.latency_ms, 3),
        "checked": verdict.checked,
        "ki": verdict.ki,
        "details": verdict.details,
    }


def _open_store(cfg: Any) -> Store:
    try:
        return Store.from_config(cfg.store)
    except StoreError:
        return Store.from_config(cfg.store, readonly=True)  # a technician without write access


async def _check_once(cfg: Any, text: str, price: int | None) -> Verdict:
    with _open_store(cfg) as store:
        chain = build_chain(cfg, store)
        try:
            code = codes.parse(text, cfg.codes_options())
        except CodeError as err:
            return parser_verdict(err, scanner="markctl", latency_ms=0.0)
        if isinstance(chain, StoreOnlyChain):
            return chain.decide(code, "markctl")
        try:
            return await chain.decide(code, "markctl", price_kopecks=price)
        finally:
            _close_clients(chain)
            chain.close()


def _close_clients(chain: CheckChain) -> None:
    for client in (chain.online, chain.local_module, chain.tspiot):
        close = getattr(client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                result.close()


def _check(args: argparse.Namespace) -> int:
    try:
        cfg = config_module.load(args.config)
        price = None if args.price is None else round(args.price * 100)
        verdict = asyncio.run(_check_once(cfg, args.code, price))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"markctl: {problem}", file=sys.stderr)
        return 2
    except MarkdError as exc:
        print(f"markctl: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(verdict_json(verdict), ensure_ascii=False))
    else:
        print(f"{verdict.decision.upper()} {verdict.ki or '(not a code)'}: {verdict.reason}")
        print(f"  {verdict.message_ru}")
        print(
            f"  source {verdict.source}, {verdict.latency_ms:.1f} ms"
            + (f", tag 1265 {verdict.tag1265}" if verdict.tag1265 else "")
        )
    return 0 if verdict.decision == "allow" else (2 if verdict.source == "parser" else EXIT_DENY)


async def _probe(cfg: Any) -> dict[str, Any]:
    from markd.checks.factory import build_clients

    out: dict[str, Any] = {"mode": cfg.check.mode}
    clients = build_clients(cfg)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    probes = {
        "online": ("refresh_hosts", "health_check"),
        "local_module": ("status_poll",),
        "tspiot": ("detect",),
    }
    for name, client in clients.items():
        for method in probes.get(name, ()):
            call = getattr(client, method, None)
            if call is None:
                continue
            try:
                await call(deadline)
            except Exception as exc:  # noqa: BLE001 - status reports, never fails
                out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        status = getattr(client, "status", None)
        out[name] = status() if status is not None else {}
        close = getattr(client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
    return out


def _status(args: argparse.Namespace) -> int:
    try:
        cfg = config_module.load(args.config)
        report = asyncio.run(_probe(cfg))
        try:
            with Store.from_config(cfg.store, readonly=True) as store:
                report["store"] = store.stats()
        except StoreError as exc:
            report["store"] = {"error": exc.message}
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"markctl: {problem}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, ensure_ascii=False, default=str))
        return 0
    print(f"check mode   {report['mode']}")
    for name in ("online", "local_module", "tspiot"):
        if name in report:
            print(f"{name:<12} {json.dumps(report[name], ensure_ascii=False, default=str)}")
    for name, error in report.get("errors", {}).items():
        print(f"{name:<12} ERROR {error}")
    store = report["store"]
    if "error" in store:
        print(f"store        ERROR {store['error']}")
    else:
        age = store["age_s"]
        age_text = "never synced" if age is None else f"{age / 3600:.1f} h"
        print(
            f"store        version {store['version']}, {age_text}"
            + (" (STALE)" if store["stale"] else "")
        )
    return 0
