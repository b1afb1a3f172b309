"""The alert rules and the dashboard's queries on a real Prometheus (Debian 12's ``prometheus``
package) scraping what markd's own collector exports for a kiosk in trouble.

promtool's unit tests (tests/unit/test_monitoring_rules.py) feed the rules series written by
hand; here the series come from ``markd.service.metrics`` as a scrape serves them, so a label
the rules expect and markd does not export (a ``state``, a ``scanner``) shows up as an alert
that never comes.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import required_tool
from markd.checks.verdict import Verdict
from markd.service.metrics import StatusCollector, VerdictMetrics, exposition, metrics_registry
from monitoring_helpers import DASHBOARD, RULES

NOW = time.time()

#: A kiosk in trouble, as ``GET /v1/status`` reports it: the Local Module 50 hours without a
#: synchronisation and in sync_error, the ФН with 12 days, a document unsent for 4 days, the
#: shift expired while it sells (a unit allowed between two scrapes), no paper, one scanner
#: missing, the last fleet sync refused.
TROUBLED_KIOSK: dict[str, Any] = {
    "service": {"state": "ready"},
    "scanners": {"front": {"present": True}, "side": {"present": False}},
    "sources": {
        "online": {"hosts": [{"url": "https://cdn01.example", "quarantined": False}]},
        "local_module": {
            "source": "lm",
            "polled": True,
            "reachable": True,
            "state": "sync_error",
            "last_sync": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 50 * 3600)),
            "last_sync_age_hours": 50.0,
        },
    },
    "store": {
        "version": 42,
        "synced_at": NOW - 1250,
        "age_s": 1250.0,
        "max_age_s": 259200.0,
        "stale": False,
        "blocked": {"ki": 1520, "gtin": 3, "series": 0},
        "sync_refused": {"reason": "bad-signature", "message": "signature does not verify"},
        "sync_refusals": 1,
    },
    "printer": {
        "state": "attention",
        "device": {
            "shift_state": "expired",
            "paper_present": False,
            "unsent_documents": 3,
            "health": {"fn_days_left": 12, "unsent_oldest_days": 4, "shift_hours": 25.0},
        },
    },
}

#: What a Prometheus evaluating markd-alerts.yml over that kiosk must show, pending or firing:
#: (alert, severity, the label that tells which part, if any).
EXPECTED = {
    ("MarkdLocalModuleNotSynced", "warning", ""),
    ("MarkdLocalModuleNotReady", "warning", "sync_error"),
    ("MarkdFnEnding", "warning", ""),
    ("MarkdUnsentDocumentsOld", "warning", ""),
    ("MarkdShiftTooLong", "warning", ""),
    ("MarkdShiftTooLong", "critical", ""),
    ("MarkdPrinterPaperOut", "critical", ""),
    ("MarkdScannerAbsent", "critical", "side"),
    ("MarkdBlocklistSyncRefused", "warning", ""),
}


def require_prometheus() -> str:
    return required_tool("prometheus", "prometheus")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def kiosk() -> Iterator[str]:
    """A loopback HTTP server answering ``GET /metrics`` as markd would; yields HOST:PORT."""
    verdicts = VerdictMetrics(scanner_names=lambda: {"front", "side"})
    collector = StatusCollector(lambda: TROUBLED_KIOSK, verdicts, now=time.time)
    registry = metrics_registry(collector)
    allowed = Verdict(
        decision="allow", reason="allowed", message_ru="ok", source="cdn", scanner="front"
    )

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            verdicts.record(allowed)  # the kiosk sells
            body = exposition(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def prometheus(kiosk: str, tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping ``kiosk`` every second with markd's rules; yields its
    base URL."""
    binary = require_prometheus()
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES.name}]\n"
        "scrape_configs:\n"
        "  - job_name: markd\n"
        f'    static_configs: [{{targets: ["{kiosk}"], labels: {{shop: "112"}}}}]\n'
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


def api(base: str, path: str, **query: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        found = json.load(answer)
    assert found["status"] == "success", found
    return found["data"]


def active_alerts(base: str) -> tuple[set[tuple[str, str, str]], list[dict[str, Any]]]:
    groups = api(base, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerts = set()
    for rule in rules:
        for alert in rule["alerts"]:
            labels = alert["labels"]
            part = labels.get("state") or labels.get("scanner") or labels.get("problem") or ""
            assert labels["shop"] == "112" and labels["job"] == "markd", labels
            alerts.add((labels["alertname"], labels["severity"], part))
    return alerts, rules


def test_a_troubled_kiosk_raises_exactly_its_alerts(prometheus: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        alerts, rules = active_alerts(prometheus)
        if alerts >= EXPECTED or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    assert alerts == EXPECTED


#: Dashboard panels whose queries read only series markd exports today, for that kiosk.
PANELS_WITH_DATA = {
    "markd answers the scrape",
    "Check sources up",
    "CDN hosts",
    "Local Module state",
    "Local Module: hours since its last synchronisation",
    "Fiscal timers per kiosk",
    "Scanners present",
    "Blocklist per kiosk",
    "Blocklist entries by kind",
    "Verdicts by reason",
    "Share of verdicts denied",
    "Time to a verdict",
}


def test_every_dashboard_query_runs(prometheus: str, kiosk: str) -> None:
    board = json.loads(DASHBOARD.read_text())
    deadline = time.monotonic() + 30
    # rate() needs two scrapes in its range; three make sure.
    scraped_thrice = 'count_over_time(up{job="markd"}[1m]) >= 3'
    while not api(prometheus, "/api/v1/query", query=scraped_thrice)["result"]:
        assert time.monotonic() < deadline, "the kiosk was not scraped three times in 30 s"
        time.sleep(0.5)
    with_data = set()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            # The kiosk's address as the instance variable's regular expression.
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$instance", kiosk.replace(".", "\\\\."))
            )
            if api(prometheus, "/api/v1/query", query=expr)["result"]:
                with_data.add(panel["title"])
    assert with_data >= PANELS_WITH_DATA, PANELS_WITH_DATA - with_data
