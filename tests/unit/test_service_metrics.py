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
from prometheus_client.parser import text_string_to_metric_families

from markd.checks.verdict import Verdict
from markd.config import load
from markd.errors import ConfigError
from markd.service.metrics import (
    LATENCY_BUCKETS_S,
    StatusCollector,
    VerdictMetrics,
    exposition,
    metrics_registry,
    scanner_label,
)
from metrics_helpers import samples

DOCS = Path(__file__).resolve().parents[2] / "docs"


def SCANNERS() -> set[str]:  # noqa: N802 - stands for the configuration's scanner table
    return {"front", "1", "2"}


NOW = 1_760_000_000.0


def full_snapshot() -> dict[str, Any]:
    return {
        "service": {"state": "ready"},
        "scanners": {"front": {"present": True}, "side": {"present": False}},
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
            },
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
        },
        "printer": {
            "state": "attention",
            "receipt_outcomes": {"closed": 5, "pending": 1},
            "device": {
                "shift_state": "expired",
                "paper_present": False,
                "unsent_documents": 3,
                "health": {"fn_days_left": 12, "unsent_oldest_days": 4.5, "shift_hours": 25.0},
            },
        },
    }


def scrape(snapshot: dict[str, Any], metrics: VerdictMetrics | None = None) -> str:
    collector = StatusCollector(
        lambda: snapshot, metrics or VerdictMetrics(scanner_names=SCANNERS), now=lambda: NOW
    )
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
    assert value("markd_source_up", source="cdn") == 1
    assert value("markd_source_up", source="lm") == 0  # reachable, but out of sync
    assert value("markd_cdn_hosts", state="listed") == 2
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
    assert value("markd_store_list_version") == 42
    assert value("markd_store_blocklist_age_seconds") == 1250
    assert value("markd_store_entries", kind="ki") == 1520
    assert value("markd_store_entries", kind="manual") == 1
    assert value("markd_store_last_sync_refused") == 1
    assert value("markd_store_sync_refused_total") == 2
    assert value("markd_printer_up") == 1
    assert value("markd_receipts_total", outcome="closed") == 5
    assert value("markd_receipts_total", outcome="pending") == 1
    assert value("markd_receipts_total", outcome="failed") == 0
    assert value("markd_printer_paper_present") == 0
    assert value("markd_fiscal_shift_open") == value("markd_fiscal_shift_expired") == 1
    assert value("markd_fiscal_shift_age_seconds") == 25 * 3600
    assert value("markd_fiscal_fn_remaining_seconds") == 12 * 86400
    assert value("markd_fiscal_unsent_documents") == 3
    assert value("markd_fiscal_oldest_unsent_age_seconds") == 4.5 * 86400


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
    made = {
        family.name
        for family in text_string_to_metric_families(scrape(full_snapshot(), metrics))
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
