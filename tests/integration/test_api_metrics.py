"""``GET /metrics`` of a real daemon: a store on a temp dir, the virtual scanner, the virtual
ККТ, the control API's Unix socket and TCP port. Each test scrapes the text a Prometheus
server would, parses it with prometheus_client's own parser and checks that the series move
as the daemon's state does (docs/metrics.md). ``promtool check metrics`` lints a scrape with
every family in a test of its own: only that test needs the tool (conftest.required_tool)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from api_helpers import Conversation, api_config, running
from conftest import (
    DAIRY,
    DAIRY_KI,
    GS,
    WATER,
    WATER_KI,
    RecordingEventLog,
    required_tool,
    wait_until,
)
from markd import config as config_module
from markd.config import LocalModuleConfig, OnlineCheckConfig
from markd.emulators.testing import crpt_cdn, local_module
from markd.receipts import OpenReceipt
from markd.scanners import get_virtual
from markd.store import Store
from markd.store.importer import import_snapshot
from metrics_helpers import Samples, samples
from sale_helpers import kkt, write_sale_config
from sale_helpers import running as running_sale

TOKEN = "metrics-scrape-3c9e1f7a2b5d"
CDN_TOKEN = "6a1d0c3e-8f2b-4b7a-9e5d-2c4f6a8b0d1e"
#: A КИ's shape anywhere in the text: GTIN (AI 01, 14 digits) then AI 21.
KI_TEXT = re.compile(r"01\d{14}21")


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def verdicts(found: Samples, decision: str) -> float:
    """The sum of ``markd_verdicts_total`` over the series of ``decision``."""
    return sum(
        v
        for (name, labels), v in found.items()
        if name == "markd_verdicts_total" and ("decision", decision) in labels
    )


async def scrape(socket: str, headers: dict[str, str] | None = None) -> Any:
    conversation = await Conversation.unix(socket)
    try:
        return await conversation.request("GET", "/metrics", headers=headers)
    finally:
        conversation.close()


def versioned_store(config: Any, tmp_path: Path) -> None:
    """The store at blocklist version 7, blocking DAIRY's КИ (as a fleet import leaves it)."""
    blocklist = tmp_path / "blocklist.csv"
    blocklist.write_text(f"ki,reason,source\n{DAIRY_KI},recalled,head office\n")
    with Store.from_config(config.store) as store:
        import_snapshot(store, blocklist, version=7)


async def test_metrics_move_as_scans_happen(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://metrics-front"})
    versioned_store(config, tmp_path)

    async with running(config, event_log):
        before = await scrape(config.api.socket)
        get_virtual("metrics-front").scan(WATER)
        get_virtual("metrics-front").scan(DAIRY)
        await wait_until(lambda: event_log.count("verdict") == 2, what="two verdicts")
        after = await scrape(config.api.socket)

    assert before.status == after.status == 200
    assert after.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    first, second = samples(before.body.decode()), samples(after.body.decode())
    assert verdicts(first, "allow") == verdicts(first, "deny") == 0
    assert verdicts(second, "allow") == 1 and verdicts(second, "deny") == 1
    denied = value(
        second, "markd_verdicts_total", decision="deny", reason="blocked-locally", source="store"
    )
    assert denied == 1
    assert value(first, "markd_verdict_duration_seconds_count") == 0
    assert value(second, "markd_verdict_duration_seconds_count") == 2
    assert value(second, "markd_verdict_duration_seconds_bucket", le="+Inf") == 2
    assert value(second, "markd_scans_total", scanner="front") == 2
    assert value(second, "markd_scanner_present", scanner="front") == 1
    assert value(second, "markd_store_list_version") == 7
    assert value(second, "markd_store_entries", kind="ki") == 1
    assert value(second, "markd_store_stale") == 0
    assert value(second, "markd_store_last_sync_refused") == 0
    # The library's process metrics come along; no printer, no check source: no such series.
    assert value(second, "process_cpu_seconds_total") is not None
    names = {name for name, _ in second}
    assert not {n for n in names if n.startswith(("markd_printer", "markd_fiscal", "markd_local"))}
    # Never a code, a КИ or a crypto tail in the text.
    text = after.body.decode()
    assert not KI_TEXT.search(text) and WATER_KI not in text and DAIRY_KI not in text
    assert WATER.split(GS)[1] not in text and DAIRY.split(GS)[1] not in text


async def test_metrics_over_tcp_need_the_bearer_token(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    config = api_config(
        store_path,
        {"v": "virtual://metrics-tcp"},
        listen="127.0.0.1:0",
        token_file=str(token_file),
    )

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        host, port = service.api.tcp_address
        answers = []
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            conversation = await Conversation.tcp(host, port)
            answers.append(await conversation.request("GET", "/metrics", headers=headers))
            conversation.close()

    refused, allowed = answers
    assert refused.status == 401 and refused.json()["error"] == "unauthorized"
    assert b"markd_" not in refused.body
    assert allowed.status == 200
    scraped = samples(allowed.body.decode())
    assert value(scraped, "markd_scanner_present", scanner="v") == 1
    # The request without the token is counted; the scrape's own connection is open.
    assert (
        value(scraped, "markd_api_requests_refused_total", listener="tcp", error="unauthorized")
        == 1
    )
    assert value(scraped, "markd_api_connections", listener="tcp") == 1
    assert TOKEN not in event_log.text


async def test_metrics_show_the_printer_and_its_fiscal_health(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="attendant", scanners={}, catalog=None)
    device = kkt(tmp_path)
    device.set_faults(fn_days_left=20, unsent_age_days=4, paper_out=True)
    socket = str(tmp_path / "control.sock")

    async with running_sale(config, event_log) as service:
        desk = service.receipts
        assert desk is not None
        faulty_text = (await scrape(socket)).body.decode()
        faulty = samples(faulty_text)
        device.set_faults(paper_out=None, unsent_age_days=None)
        await desk.open(OpenReceipt())
        await desk.cancel()
        mended = samples((await scrape(socket)).body.decode())

    assert value(faulty, "markd_printer_up") == 1
    assert value(faulty, "markd_printer_paper_present") == 0
    assert value(faulty, "markd_fiscal_fn_remaining_seconds") in (19 * 86400, 20 * 86400)
    oldest = value(faulty, "markd_fiscal_oldest_unsent_age_seconds")
    assert oldest is not None and abs(oldest - 4 * 86400) < 3600
    assert value(faulty, "markd_fiscal_unsent_documents") == 1
    assert value(mended, "markd_printer_paper_present") == 1
    assert value(mended, "markd_fiscal_shift_open") == 1
    assert value(faulty, "markd_receipts_total", outcome="cancelled") == 0
    assert value(mended, "markd_receipts_total", outcome="cancelled") == 1
    assert value(mended, "markd_receipts_total", outcome="closed") == 0
    shift_age = value(mended, "markd_fiscal_shift_age_seconds")
    assert shift_age is not None and 0 <= shift_age < 600


async def test_metrics_follow_the_check_sources(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """Mode direct on the CDN and Local Module emulators: the sources are up, the CDN's host is
    listed, the Local Module's state and last synchronisation show; when the module falls out
    of sync, its one-hot state moves and it counts as down."""
    (tmp_path / "token").write_text(CDN_TOKEN + "\n")
    (tmp_path / "pw").write_text("admin\n")
    scenario = {"local_module": {"state": "ready", "last_sync_age_s": 3 * 3600}}
    with crpt_cdn({"cdn": {"token": CDN_TOKEN}}) as cdn, local_module(scenario) as lm:
        base = api_config(store_path, {"v": "virtual://metrics-direct"})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            online=OnlineCheckConfig(url=cdn.url, token_file=str(tmp_path / "token")),
            local_module=LocalModuleConfig(url=lm.url, password_file=str(tmp_path / "pw")),
        )
        config = dataclasses.replace(base, check=check)
        async with running(config, event_log) as service:
            await wait_until(lambda: lm.count("status") >= 1, what="a Local Module status poll")
            get_virtual("metrics-direct").scan(WATER)
            await wait_until(lambda: event_log.count("verdict") == 1, what="the verdict")
            ready_text = (await scrape(config.api.socket)).body.decode()
            lm.set_state("sync_error")
            client = service.chain.local_module  # type: ignore[union-attr]
            await client.status_poll(time.monotonic() + 2)
            out_of_sync = samples((await scrape(config.api.socket)).body.decode())

    ready = samples(ready_text)
    allowed = value(ready, "markd_verdicts_total", decision="allow", reason="allowed", source="cdn")
    assert allowed == 1
    assert value(ready, "markd_source_up", source="cdn") == 1
    assert value(ready, "markd_source_up", source="lm") == 1
    assert value(ready, "markd_cdn_hosts", state="available") == 1
    assert value(ready, "markd_cdn_hosts", state="quarantined") == 0
    # The one check asked the CDN once, and it answered: timed, no failure.
    assert value(ready, "markd_source_request_duration_seconds_count", source="cdn") == 1
    assert value(ready, "markd_source_request_duration_seconds_count", source="lm") is None
    assert not [name for name, _ in ready if name == "markd_source_failures_total"]
    last_answer = value(ready, "markd_source_last_success_age_seconds", source="cdn")
    assert last_answer is not None and 0 <= last_answer < 60
    assert value(ready, "markd_local_module_state", state="ready") == 1
    assert value(ready, "markd_local_module_state", state="sync_error") == 0
    synced = value(ready, "markd_local_module_last_sync_age_seconds")
    assert synced is not None and abs(synced - 3 * 3600) < 120
    assert value(out_of_sync, "markd_local_module_state", state="sync_error") == 1
    assert value(out_of_sync, "markd_local_module_state", state="ready") == 0
    assert value(out_of_sync, "markd_source_up", source="lm") == 0
    assert CDN_TOKEN not in ready_text and not KI_TEXT.search(ready_text)


async def test_a_refused_cdn_token_counts_as_failures_of_its_kind(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """The CDN emulator refuses markd's token: each check is a failure of kind
    ``unauthorized`` with its time, and the CDN counts as down."""
    (tmp_path / "token").write_text("not-the-token\n")
    with crpt_cdn({"cdn": {"token": CDN_TOKEN}}) as cdn:
        base = api_config(store_path, {"v": "virtual://metrics-refused"})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            online=OnlineCheckConfig(url=cdn.url, token_file=str(tmp_path / "token")),
        )
        config = dataclasses.replace(base, check=check)
        async with running(config, event_log):
            for _ in range(2):
                get_virtual("metrics-refused").scan(WATER)
            await wait_until(lambda: event_log.count("verdict") == 2, what="two verdicts")
            found = samples((await scrape(config.api.socket)).body.decode())

    failures = {
        dict(labels)["kind"]: v
        for (name, labels), v in found.items()
        if name == "markd_source_failures_total" and ("source", "cdn") in labels
    }
    assert failures == {"unauthorized": 2}
    assert value(found, "markd_source_request_duration_seconds_count", source="cdn") == 2
    assert value(found, "markd_source_up", source="cdn") == 0


#: Every family the full daemon of :func:`test_promtool_accepts_a_scrape_with_every_family`
#: serves: the lint must see each of them, or it would pass on a scrape that lacks one.
FULL_FAMILIES = {
    "markd_verdicts_total",
    "markd_scans_total",
    "markd_verdict_duration_seconds_bucket",
    "markd_source_last_success_age_seconds",
    "markd_source_up",
    "markd_cdn_hosts",
    "markd_cdn_host_list_age_seconds",
    "markd_local_module_state",
    "markd_local_module_last_sync_age_seconds",
    "markd_store_list_version",
    "markd_store_entries",
    "markd_store_stale",
    "markd_store_last_sync_refused",
    "markd_scanner_present",
    "markd_receipts_total",
    "markd_printer_up",
    "markd_printer_paper_present",
    "markd_fiscal_shift_open",
    "markd_fiscal_shift_expired",
    "markd_fiscal_shift_age_seconds",
    "markd_fiscal_fn_remaining_seconds",
    "markd_fiscal_unsent_documents",
    "markd_fiscal_oldest_unsent_age_seconds",
    "markd_source_request_duration_seconds_bucket",
    "markd_store_up",
    "markd_scanner_reconnects_total",
    "markd_printer_problem",
    "markd_printer_queue_blocked",
    "markd_printer_status_timestamp_seconds",
    "markd_receipt_recoveries_total",
    "markd_api_connections",
    "markd_api_event_clients",
    "process_cpu_seconds_total",
    "python_info",
}


async def test_promtool_accepts_a_scrape_with_every_family(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """``promtool check metrics`` (Debian 12's ``prometheus`` package) on the scrape of a daemon
    with everything at once: a scanner, the store at a version, the CDN and the Local Module
    in mode direct, the printer in a shift with its fiscal faults. promtool checks what the
    library's parser lets pass: names, units, help texts, counter suffixes."""
    promtool = required_tool("promtool", "prometheus")
    (tmp_path / "token").write_text(CDN_TOKEN + "\n")
    (tmp_path / "pw").write_text("admin\n")
    scenario = {"local_module": {"state": "ready", "last_sync_age_s": 3600}}
    with crpt_cdn({"cdn": {"token": CDN_TOKEN}}) as cdn, local_module(scenario) as lm:
        config = write_sale_config(
            tmp_path,
            mode="attendant",
            scanners={"front": "virtual://metrics-promtool"},
            catalog=None,
            extra=(
                '[check]\nmode = "direct"\n\n'
                f'[check.online]\nurl = "{cdn.url}"\ntoken_file = "{tmp_path / "token"}"\n\n'
                f'[check.local_module]\nurl = "{lm.url}"\npassword_file = "{tmp_path / "pw"}"\n'
            ),
        )
        versioned_store(config_module.load(config), tmp_path)
        kkt(tmp_path).set_faults(fn_days_left=20, unsent_age_days=4, shift_age_hours=30)
        async with running_sale(config, event_log) as service:
            desk = service.receipts
            assert desk is not None
            await desk.open(OpenReceipt())
            await desk.cancel()
            await wait_until(lambda: lm.count("status") >= 1, what="a Local Module status poll")
            get_virtual("metrics-promtool").scan(WATER)
            await wait_until(lambda: event_log.count("verdict") == 1, what="the verdict")
            text = (await scrape(str(tmp_path / "control.sock"))).body.decode()

    names = {name for name, _ in samples(text)}
    assert FULL_FAMILIES <= names, sorted(FULL_FAMILIES - names)
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # promtool says nothing at all about a clean scrape: any line is a finding.
    assert done.stdout + done.stderr == ""
