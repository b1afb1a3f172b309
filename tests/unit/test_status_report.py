"""``markctl status`` for people: the human lines and the degraded rule, on status dicts shaped
like ``GET /v1/status`` (docs/api.md) and like the in-process probe's report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from markd.cli import status_report
from markd.cli.status_report import ago, format_report, milliseconds, problems, units

HEALTHY: dict[str, Any] = {
    "service": {
        "state": "ready",
        "version": "0.1.0",
        "pid": 812,
        "mode": "direct",
        "uptime_s": 5421.7,
    },
    "mode": "direct",
    "scanners": {"front": {"url": "serial:///dev/markd/scanner-1", "present": True}},
    "sources": {
        "online": {
            "hosts": [
                {"url": "https://cdn01.crpt.ru", "latency_ms": 12.4, "quarantined": False},
                {"url": "https://cdn02.crpt.ru", "latency_ms": 40.0, "quarantined": False},
            ],
            "hosts_from": "fetched",
            "list_age_s": 700.0,
            "last_error": None,
            "alert": None,
            "proxy": None,
            "proxy_error": None,
        },
        "local_module": {
            "source": "lm",
            "url": "http://127.0.0.1:5995",
            "api": 2,
            "polled": True,
            "reachable": True,
            "state": "ready",
            "status_age_s": 12.5,
            "version": "2.6.0",
            "last_sync_age_hours": 0.4,
            "sync_alert": None,
            "alerts": [],
        },
    },
    "store": {
        "path": "/var/lib/markd/store",
        "version": 42,
        "source": "https://files.example/fleet",
        "synced_at": 1740819302,
        "age_s": 1250.3,
        "max_age_s": 259200.0,
        "stale": False,
        "blocked": {"ki": 1520},
        "blocked_by_hand": 1,
    },
    "printer": {
        "mode": "kiosk",
        "url": "emulator:///var/lib/markd/kkt",
        "state": "ready",
        "device": {"problems": []},
        "health_warnings": [],
        "last_error": None,
        "queue_blocked": False,
        "recovery_pending": False,
        "receipt": {
            "id": "r-7",
            "kind": "sell",
            "state": "open",
            "units": 1,
            "total_kopecks": 8990,
        },
    },
}


def changed(**paths: Any) -> dict[str, Any]:
    """HEALTHY with ``a__b__c=value`` set (a deep copy)."""
    report = copy.deepcopy(HEALTHY)
    for path, value in paths.items():
        *parents, leaf = path.split("__")
        node = report
        for key in parents:
            node = node[key]
        node[leaf] = value
    return report


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (3, "just now"),
        (45, "45 s ago"),
        (180, "3 min ago"),
        (7200, "2 h ago"),
        (4 * 86_400, "4 d ago"),
    ],
)
def test_ages_read_as_people_say_them(seconds: float | None, text: str) -> None:
    assert ago(seconds) == text


def test_latencies_are_whole_milliseconds_and_units_are_counted_in_words() -> None:
    assert milliseconds(12.4) == "12 ms" and milliseconds(0.2) == "<1 ms"
    assert (units(1), units(2), units(0)) == ("1 unit", "2 units", "0 units")
    assert [status_report.duration(s) for s in (4, 45, 5400, 259_200)] == [
        "4 s",
        "45 s",
        "90 min",
        "3 d",
    ]


def test_a_healthy_daemon_reads_ok_on_every_line() -> None:
    lines = format_report(HEALTHY, "daemon (/run/markd/control.sock)")

    assert problems(HEALTHY) == []
    assert lines[0].startswith("markd")
    assert "ready, healthy; pid 812, up 90 min, version 0.1.0" in lines[0]
    text = "\n".join(lines)
    assert "online CDN" in text and "2 hosts, list fetched 12 min ago" in text
    assert "first https://cdn01.crpt.ru (12 ms)" in text
    assert "Local Module   ok        http://127.0.0.1:5995, state ready" in text
    assert "synced 24 min ago" in text
    assert "scanner front  ok        serial:///dev/markd/scanner-1" in text
    assert "printer        ok        emulator:///var/lib/markd/kkt, sale kiosk, ready" in text
    assert (
        "blocklist      ok        version 42, synced 21 min ago (stale after 3 d); sync ok" in text
    )
    assert "receipt        open      sell r-7, open, 1 unit, 89.90 RUB" in text
    assert lines[-1] == "via            daemon (/run/markd/control.sock)"


@pytest.mark.parametrize(
    ("report", "problem", "line"),
    [
        (changed(store__stale=True), "blocklist degraded", "STALE"),
        (
            changed(store__sync_refused={"reason": "unsigned", "message": "no signature"}),
            "blocklist degraded",
            "sync REFUSED (unsigned: no signature)",
        ),
        (changed(store={"error": "cannot open"}), "blocklist down", "ERROR cannot open"),
        (
            changed(
                sources__local_module__reachable=False,
                sources__local_module__error={"kind": "connect", "detail": "refused"},
            ),
            "Local Module down",
            "unreachable: refused",
        ),
        (
            changed(sources__local_module__sync_alert="critical"),
            "Local Module degraded",
            "sync CRITICAL",
        ),
        (changed(sources__online__hosts=[]), "online CDN down", "no host list"),
        (
            changed(
                sources__online__proxy="http://10.0.0.1:3128",
                sources__online__proxy_error="refused",
            ),
            "online CDN degraded",
            "PROXY FAILING: refused",
        ),
        (
            changed(printer__state="attention", printer__device={"problems": ["paper-out"]}),
            "printer degraded",
            "attention; paper-out",
        ),
        (
            changed(
                printer__state="unreachable",
                printer__last_error={"reason": "queue-blocked", "message": "busy"},
                printer__queue_blocked=True,
            ),
            "printer down",
            "Web Requests queue BLOCKED",
        ),
        (changed(printer__health_warnings=["fn-expiring"]), "printer degraded", "fn-expiring"),
        (changed(scanners__front__present=False), "scanner front down", "ABSENT"),
        (changed(service__state="starting"), "markd starting", "starting, DEGRADED"),
    ],
)
def test_each_degraded_variant_names_its_part_and_says_why(
    report: dict[str, Any], problem: str, line: str
) -> None:
    found = problems(report)
    text = "\n".join(format_report(report, "daemon"))

    assert found == [problem]
    assert line in text
    assert f"DEGRADED: {problem}" in text.splitlines()[0]


def test_what_is_not_configured_or_not_seen_yet_is_not_a_problem() -> None:
    report = changed(
        printer=None,
        scanners__front__present=None,
        sources__local_module={"url": "http://lm", "polled": False},
    )

    assert problems(report) == []
    text = "\n".join(format_report(report, "daemon"))
    assert "printer        off       no printer ([sale] mode off)" in text
    assert "scanner front  unknown" in text
    assert "Local Module   unknown   http://lm, no status read yet" in text
    assert "receipt" not in text


def test_a_tspiot_answer_given_offline_is_degraded() -> None:
    report = changed(
        sources={
            "tspiot": {
                "url": "http://tspiot:8080",
                "version": "v2",
                "last_error": None,
                "last_offline": True,
                "last_latency_ms": 7.6,
            }
        }
    )

    assert problems(report) == ["ТС ПИоТ degraded"]
    assert "http://tspiot:8080, API v2, last answer 8 ms; last answer given OFFLINE" in "\n".join(
        format_report(report, "daemon")
    )


def test_the_report_of_markd_not_running_is_the_in_process_probe() -> None:
    """No daemon: no service, scanner or printer lines; the sources and the store as probed."""
    report = {
        "mode": "direct",
        "online": HEALTHY["sources"]["online"],
        "errors": {"local_module": "ConnectionRefusedError: refused"},
        "store": {**HEALTHY["store"], "synced_at": None, "age_s": None, "stale": True},
        "via": "in-process",
    }
    lines = format_report(report, "in-process (markd is not running)")

    assert problems(report) == ["Local Module down", "blocklist degraded"]
    assert lines[0] == "problems       Local Module down, blocklist degraded"
    assert not any(line.startswith(("markd", "scanner", "printer")) for line in lines)
    assert any("probe failed: ConnectionRefusedError" in line for line in lines)
    assert any("version 42, never synced" in line for line in lines)
    assert lines[-1] == "via            in-process (markd is not running)"
    assert status_report.BAD_STATES == {"degraded", "down"}


#: The degraded example of docs/operations.md: the paper ran out, the blocklist is 4 days old.
DOCS_DEGRADED = changed(
    store__stale=True,
    store__age_s=350_000.0,
    printer__state="attention",
    printer__device={"problems": ["paper-out"]},
    printer__receipt=None,
)


def test_the_examples_in_the_operations_guide_are_what_markctl_prints() -> None:
    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    section = guide.split("### `markctl status`\n", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    examples = [part.splitlines() for part in block.split("$ markctl status\n")[1:]]
    via = "daemon (/run/markd/control.sock)"

    assert examples[0] == format_report(HEALTHY, via)
    assert examples[1][:-2] == format_report(DOCS_DEGRADED, via)
    assert examples[1][-2:] == ["$ echo $?", "1"] and problems(DOCS_DEGRADED)
