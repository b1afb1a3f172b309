"""markd's metrics without a daemon: the counts behind them, the label guard, the series the
collector makes of a status snapshot, and docs/metrics.md listing exactly those series.

The snapshots here have the shape ``Service.status_snapshot`` gives (api.md, "GET /v1/status"),
with every part present, so that each family the collector can make is made at least once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from markd.checks.results import SourceAnswer, SourceFailure
from markd.checks.verdict import Verdict
from markd.config import load
from markd.errors import ConfigError
from markd.service.metrics import (
    FAMILIES_PER_TURN,
    LATENCY_BUCKETS_S,
    REASONS,
    StatusCollector,
    VerdictMetrics,
    exposition,
    exposition_in_turns,
    metrics_registry,
    scanner_label,
)
from metrics_helpers import samples

DOCS = Path(__file__).resolve().parents[2] / "docs"


def SCANNERS() -> set[str]:  # noqa: N802 - stands for the configuration's scanner table
    return {"front", "1", "2"}


NOW = 1_760_000_000.0
ROOT = Path(__file__).resolve().parents[2]

#: The control API's part of the status, as ``GET /v1/status`` has it.
API_STATUS: dict[str, Any] = {
    "event_clients": 1,
    "connections": 3,
    "connections_by_listener": {"unix": 1, "tcp": 2, "metrics": 0},
    "refused": [
        {"listener": "tcp", "error": "unauthorized", "count": 4},
        {"listener": "unix", "error": "not-found", "count": 1},
        {"listener": "tcp", "error": "0104680029460908215jcmHzLmkdPML", "count": 1},
    ],
}


def full_snapshot() -> dict[str, Any]:
    return {
        "service": {"state": "ready"},
        "scanners": {
            "front": {"present": True, "reconnects": 2},
            "side": {"present": False, "reconnects": 0},
        },
        "sources": {
            "online": {
                "hosts": [
                    {"url": "https://cdn01.example", "quarantined": False},
                    {"url": "https://cdn02.example", "quarantined": True},
                ],
                "list_age_s": 3600.0,
            },
            "local_module": {
                "source": "lm",
                "polled": True,
                "reachable": True,
                "state": "sync_error",
                "last_sync": "2025-10-07T06:53:20Z",  # 50 hours before NOW
                "last_sync_age_hours": 50.0,
            },
            "tspiot": {"version": 3, "last_error": None, "last_offline": True},
        },
        "store": {
            "version": 42,
            "synced_at": NOW - 1250,
            "age_s": 1250.0,
            "max_age_s": 259200.0,
            "stale": False,
            "blocked": {"ki": 1520, "gtin": 3, "series": 0},
            "blocked_by_hand": 1,
            "sync_refused": {"reason": "bad-signature", "message": "…"},
            "sync_refusals": 2,
            "sync_runs": {"ok": 3, "refused": 2},
            "sync_finished_at": NOW - 60,
            "sync_last_result": "refused",
        },
        "printer": {
            "state": "attention",
            "receipt_outcomes": {"closed": 5, "pending": 1},
            "recoveries": {"finished": 1},
            "queue_blocked": True,
            "auto_shift": True,
            "health_interval_s": 600,
            "checked_at": "2025-10-09T08:53:00.000Z",  # 20 s before NOW
            "device": {
                "shift_state": "expired",
                "paper_present": False,
                "problems": ["paper-out", "receipt-open"],
                "unsent_documents": 3,
                "health": {"fn_days_left": 12, "unsent_oldest_days": 4.5, "shift_hours": 25.0},
            },
        },
    }


def scrape(
    snapshot: dict[str, Any],
    metrics: VerdictMetrics | None = None,
    api: dict[str, Any] | None = None,
) -> str:
    collector = StatusCollector(
        lambda: snapshot, metrics or VerdictMetrics(scanner_names=SCANNERS), now=lambda: NOW
    )
    collector.api = api
    return exposition(metrics_registry(collector)).decode()


def verdict(**fields: Any) -> Verdict:
    base: dict[str, Any] = {
        "decision": "allow",
        "reason": "allowed",
        "message_ru": "ok",
        "source": "cdn",
        "scanner": "front",
    }
    return Verdict(**{**base, **fields})


def test_a_ki_handed_over_as_a_label_is_counted_as_other() -> None:
    """Should a bug ever put a КИ where a reason or a scanner name goes, it must not become a
    label value (unbounded, and a code in a fleet's database)."""
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    ki = "0104680029460908215jcmHzLmkdPML"
    metrics.record(verdict(reason=ki, scanner=ki))
    metrics.record(verdict(reason="sold-here", source="store", decision="deny"))

    text = scrape({}, metrics)

    assert ki not in text and "04680029460908" not in text
    found = samples(text)
    labels = (("decision", "allow"), ("reason", "other"), ("source", "cdn"))
    assert found[("markd_verdicts_total", labels)] == 1
    assert found[("markd_scans_total", (("scanner", "other"),))] == 1
    assert found[("markd_scans_total", (("scanner", "front"),))] == 1
    labels = (("decision", "deny"), ("reason", "sold-here"), ("source", "store"))
    assert found[("markd_verdicts_total", labels)] == 1


def test_the_latency_histogram_puts_each_verdict_in_its_bucket() -> None:
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    for latency_ms in (0.3, 0.5, 1200.0, 9000.0):
        metrics.record(verdict(latency_ms=latency_ms))

    found = samples(scrape({}, metrics))

    def bucket(le: str) -> float:
        return found[("markd_verdict_duration_seconds_bucket", (("le", le),))]

    assert bucket("0.0005") == 2  # 0.5 ms is inside its bound (le: less or equal)
    assert bucket("1.0") == 2 and bucket("1.5") == 3 and bucket("5.0") == 3
    assert bucket("+Inf") == 4 == found[("markd_verdict_duration_seconds_count", ())]
    assert abs(found[("markd_verdict_duration_seconds_sum", ())] - 10.2008) < 1e-9
    assert len([k for k in found if k[0].endswith("_bucket")]) == len(LATENCY_BUCKETS_S) + 1


def test_the_source_that_answered_gets_a_last_success_age() -> None:
    clock = [100.0]
    metrics = VerdictMetrics(clock=lambda: clock[0], scanner_names=SCANNERS)
    metrics.record(verdict(source="lm", checked=True))
    metrics.record(verdict(source="tspiot-offline", checked=True))
    metrics.record(verdict(source="cdn", checked=False))  # nothing answered: no success
    clock[0] = 130.0

    found = samples(scrape({}, metrics))

    ages = {
        dict(labels)["source"]: v
        for (name, labels), v in found.items()
        if name == "markd_source_last_success_age_seconds"
    }
    assert ages == {"lm": 30.0, "tspiot": 30.0}


def test_a_full_status_snapshot_becomes_its_series() -> None:
    found = samples(scrape(full_snapshot()))

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, tuple(sorted(labels.items()))))

    assert value("markd_scanner_present", scanner="front") == 1
    assert value("markd_scanner_present", scanner="side") == 0
    assert value("markd_scanner_reconnects_total", scanner="front") == 2
    assert value("markd_scanner_reconnects_total", scanner="side") == 0
    assert value("markd_source_up", source="cdn") == 1
    assert value("markd_source_up", source="lm") == 0  # reachable, but out of sync
    assert value("markd_source_up", source="tspiot") == 1
    assert value("markd_tspiot_state", state="offline") == 1
    assert value("markd_tspiot_state", state="online") == 0
    assert value("markd_tspiot_state", state="failing") == 0
    assert value("markd_cdn_hosts", state="available") == 1
    assert value("markd_cdn_hosts", state="quarantined") == 1
    assert value("markd_cdn_host_list_age_seconds") == 3600
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in found.items()
        if name == "markd_local_module_state"
    }
    assert states == {
        "ready": 0,
        "initialization": 0,
        "not_configured": 0,
        "sync_error": 1,
        "unreachable": 0,
        "other": 0,
    }
    assert value("markd_local_module_last_sync_age_seconds") == 50 * 3600
    assert value("markd_store_up") == 1
    assert value("markd_store_list_version") == 42
    assert value("markd_store_blocklist_age_seconds") == 1250
    assert value("markd_store_entries", kind="ki") == 1520
    assert value("markd_store_entries", kind="manual") == 1
    assert value("markd_store_last_sync_refused") == 1
    assert value("markd_store_sync_refused_total") == 2
    assert value("markd_store_syncs_total", result="ok") == 3
    assert value("markd_store_syncs_total", result="failed") == 0
    assert value("markd_store_last_sync_attempt_timestamp_seconds") == NOW - 60
    assert value("markd_store_last_sync_result", result="refused") == 1
    assert value("markd_store_last_sync_result", result="ok") == 0
    assert value("markd_printer_up") == 1
    assert value("markd_printer_queue_blocked") == 1
    assert value("markd_fiscal_auto_shift") == 1
    assert value("markd_fiscal_health_interval_seconds") == 600
    assert value("markd_printer_status_timestamp_seconds") == NOW - 20
    assert value("markd_printer_problem", problem="paper-out") == 1
    assert value("markd_printer_problem", problem="receipt-open") == 1
    assert value("markd_printer_problem", problem="device-blocked") == 0
    assert value("markd_receipt_recoveries_total", result="finished") == 1
    assert value("markd_receipt_recoveries_total", result="failed") == 0
    assert value("markd_receipts_total", outcome="closed") == 5
    assert value("markd_receipts_total", outcome="pending") == 1
    assert value("markd_receipts_total", outcome="failed") == 0
    assert value("markd_printer_paper_present") == 0
    assert value("markd_fiscal_shift_open") == value("markd_fiscal_shift_expired") == 1
    # The ages the ККТ reported 20 s before the scrape, grown by those 20 s.
    assert value("markd_fiscal_shift_age_seconds") == 25 * 3600 + 20
    assert value("markd_fiscal_fn_remaining_seconds") == 12 * 86400
    assert value("markd_fiscal_unsent_documents") == 3
    assert value("markd_fiscal_oldest_unsent_age_seconds") == 4.5 * 86400 + 20
    assert value("markd_fiscal_fn_remaining_seconds") == 12 * 86400  # whole days, not grown


def test_what_is_not_known_is_left_out() -> None:
    snapshot = full_snapshot()
    snapshot["scanners"]["front"]["present"] = None
    snapshot["sources"]["local_module"] = {"source": "lm", "polled": False, "reachable": None}
    snapshot["printer"] = {"state": "unreachable", "device": None}

    found = samples(scrape(snapshot))
    names = {name for name, _ in found}

    assert ("markd_scanner_present", (("scanner", "front"),)) not in found
    assert ("markd_source_up", (("source", "lm"),)) not in found
    assert not {n for n in names if n.startswith(("markd_local_module", "markd_fiscal"))}
    assert found[("markd_printer_up", ())] == 0
    assert "markd_printer_paper_present" not in names


def test_docs_list_every_metric_and_no_other() -> None:
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    metrics.record(verdict(checked=True))
    metrics.record_source(SourceFailure("cdn", "timeout", latency_ms=1500.0))
    made = {
        family.name
        for family in text_string_to_metric_families(scrape(full_snapshot(), metrics, API_STATUS))
        if family.name.startswith("markd_")
    }
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(markd_[a-z_]+)`", text, flags=re.M))
    # The parser names a counter's family without its _total.
    documented = {name.removesuffix("_total") for name in documented}

    assert made == documented


def test_a_tspiot_is_up_once_it_answered_and_down_after_a_failure() -> None:
    def up(status: dict[str, Any]) -> float | None:
        found = samples(scrape({"sources": {"tspiot": status}}))
        return found.get(("markd_source_up", (("source", "tspiot"),)))

    never_asked = {"version": None, "last_error": None, "last_latency_ms": None}
    answered = {"version": 3, "last_error": None, "last_latency_ms": 12.5}
    failed = {**answered, "last_error": {"kind": "timeout", "detail": "no answer in 1.5 s"}}

    assert up(never_asked) is None
    assert up(answered) == 1
    assert up(failed) == 0


def test_scanners_with_any_configured_name_keep_their_own_series() -> None:
    """Names that begin with a digit are valid configuration: each keeps its series (a shared
    ``other`` series would hide one scanner's absence)."""
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    for name in ("1", "2", "front", "api", "0104670540176099215LpGKy"):
        metrics.record(verdict(scanner=name))
    assert set(metrics.scans) == {"1", "2", "front", "api", "other"}
    assert scanner_label("1") == "1" and scanner_label("a b") == "other"


def test_api_and_other_are_not_scanner_names(tmp_path: Path) -> None:
    for name in ("api", "other"):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[scanners.{name}]\nurl = "serial:///dev/ttyACM0"\n')
        with pytest.raises(ConfigError) as refused:
            load(config)
        assert f"[scanners.{name}]" in str(refused.value.problems) and "reserved" in str(
            refused.value.problems
        )


def test_each_request_to_a_source_is_timed_and_each_failure_counted_by_kind() -> None:
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    metrics.record_source(SourceAnswer("cdn", online=True, latency_ms=40.0))
    metrics.record_source(SourceFailure("cdn", "timeout", latency_ms=1500.0))
    metrics.record_source(SourceFailure("lm", "lm-sync-error", latency_ms=3.0))
    metrics.record_source(SourceFailure("lm", "made-up-kind", latency_ms=3.0))  # type: ignore[arg-type]

    found = samples(scrape({}, metrics))

    def bucket(source: str, le: str) -> float:
        return found[
            ("markd_source_request_duration_seconds_bucket", (("le", le), ("source", source)))
        ]

    assert bucket("cdn", "0.025") == 0 and bucket("cdn", "0.05") == 1
    assert bucket("cdn", "1.5") == 2 and bucket("cdn", "+Inf") == 2
    assert found[("markd_source_request_duration_seconds_count", (("source", "lm"),))] == 2
    assert (
        abs(found[("markd_source_request_duration_seconds_sum", (("source", "cdn"),))] - 1.54)
        < 1e-9
    )
    failures = {
        labels: v for (name, labels), v in found.items() if name == "markd_source_failures_total"
    }
    assert failures == {
        (("kind", "timeout"), ("source", "cdn")): 1,
        (("kind", "lm-sync-error"), ("source", "lm")): 1,
        (("kind", "other"), ("source", "lm")): 1,
    }


def test_a_reason_outside_the_known_codes_is_other_even_when_it_looks_like_one() -> None:
    """The guard is the closed set itself, not the shape of the text: a made-up code that
    looks like a reason is still ``other``."""
    metrics = VerdictMetrics(scanner_names=SCANNERS)
    metrics.record(verdict(reason="made-up-reason"))
    metrics.record(verdict(reason="blocked-locally", decision="deny", source="store"))
    metrics.record(verdict(source="satellite"))  # type: ignore[arg-type]

    found = samples(scrape({}, metrics))

    reasons = {
        dict(labels)["reason"]: v
        for (name, labels), v in found.items()
        if name == "markd_verdicts_total"
    }
    assert reasons == {"other": 1, "blocked-locally": 1, "allowed": 1}
    assert (
        "markd_verdicts_total",
        (("decision", "allow"), ("reason", "allowed"), ("source", "other")),
    ) in found


def test_every_reason_code_written_in_the_daemon_is_a_known_label() -> None:
    """A verdict built with a literal reason anywhere in the daemon keeps its own series."""
    written: set[str] = set()
    for path in (ROOT / "daemon" / "markd").rglob("*.py"):
        if path.parent.name in ("testing", "emulators"):
            continue  # verdicts made up for tests and emulators, never a daemon's
        text = path.read_text(encoding="utf-8")
        if "Verdict(" not in text and "Rule(" not in text:
            continue
        written.update(re.findall(r'\breason="([a-z0-9-]+)"', text))
    assert written, "no reason literal found: the scan itself is broken"
    assert sorted(written - REASONS) == []


def test_the_local_module_that_never_synchronised_has_no_sync_age() -> None:
    snapshot = full_snapshot()
    snapshot["sources"]["local_module"].update(last_sync=None, last_sync_age_hours=None)

    found = samples(scrape(snapshot))

    assert ("markd_local_module_last_sync_age_seconds", ()) not in found
    assert found[("markd_local_module_state", (("state", "sync_error"),))] == 1


def test_a_store_that_cannot_be_read_is_down_and_shows_nothing_else() -> None:
    snapshot = full_snapshot()
    snapshot["store"] = {"error": "lmdb.Error: MDB_CORRUPTED"}

    found = samples(scrape(snapshot))

    assert found[("markd_store_up", ())] == 0
    assert not [
        name for name, _ in found if name.startswith("markd_store_") and name != "markd_store_up"
    ]


def test_the_tspiot_state_follows_its_last_exchange() -> None:
    def state(status: dict[str, Any]) -> dict[str, float]:
        found = samples(scrape({"sources": {"tspiot": status}}))
        return {
            dict(labels)["state"]: v
            for (name, labels), v in found.items()
            if name == "markd_tspiot_state"
        }

    assert state({"version": None, "last_error": None, "last_offline": None}) == {}
    assert state({"version": 3, "last_error": None, "last_offline": False})["online"] == 1
    failing = state({"version": 3, "last_error": {"kind": "timeout"}, "last_offline": False})
    assert failing == {"online": 0, "offline": 0, "failing": 1}


def test_the_control_api_connections_and_refusals() -> None:
    found = samples(scrape({}, api=API_STATUS))

    assert found[("markd_api_connections", (("listener", "tcp"),))] == 2
    assert found[("markd_api_connections", (("listener", "unix"),))] == 1
    assert found[("markd_api_event_clients", ())] == 1
    refused = {
        labels: v
        for (name, labels), v in found.items()
        if name == "markd_api_requests_refused_total"
    }
    assert refused == {
        (("error", "unauthorized"), ("listener", "tcp")): 4,
        (("error", "not-found"), ("listener", "unix")): 1,
        (("error", "other"), ("listener", "tcp")): 1,
    }


async def test_a_scrape_in_turns_writes_the_same_text_and_gives_the_loop_back() -> None:
    """The control API's scrape: the same bytes as the text written at once, a few families
    per turn, with the loop given back between them (a scan waiting meanwhile runs)."""
    import asyncio

    metrics = VerdictMetrics(clock=lambda: 100.0, scanner_names=SCANNERS)  # ages stand still
    metrics.record(verdict(checked=True))
    metrics.record_source(SourceFailure("cdn", "timeout", latency_ms=1500.0))
    collector = StatusCollector(full_snapshot, metrics, now=lambda: NOW)
    collector.api = API_STATUS
    registry = CollectorRegistry()
    registry.register(collector)  # no process collectors: their values move between reads
    turns = 0
    ran_between: list[int] = []

    async def turn() -> None:
        nonlocal turns
        turns += 1
        await asyncio.sleep(0)

    async def scan() -> None:
        ran_between.append(turns)

    waiting = asyncio.ensure_future(scan())
    text = await exposition_in_turns(registry, turn)
    await waiting

    assert text == exposition(registry)
    families = len(list(text_string_to_metric_families(text.decode())))
    assert families > FAMILIES_PER_TURN
    assert turns == -(-families // FAMILIES_PER_TURN)
    assert ran_between == [1]  # the scan ran at the first turn, before the text was done
