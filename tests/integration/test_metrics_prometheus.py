"""A real Prometheus server (Debian 12's ``prometheus``, 2.42) scrapes a real ``markd`` over
its metrics listener (``[metrics] listen``) with that listener's own bearer token, as
docs/metrics.md and operations.md configure a fleet, and its query API gives back what markd
counted (issue 17); a second job sending the control API's token is refused.

Both run as child processes on loopback, each on a port the kernel picks (``:0``; both log the
address they got), with a temporary store, TSDB and configuration. markd scans from a pty as
from a serial scanner.

When the test cannot run: without the ``prometheus`` binary it is skipped on a developer's
machine and fails in CI, where ``make test`` installs the package (conftest.required_tool).
Once the binary is there, everything else is ours to get right, so any other failure fails
the test: ports are the kernel's choice (no clash with a port in use), the paths are temporary
directories, and a server that does not start or does not scrape within its bounds is a
broken install, a wrong configuration of ours, or a markd that refused the token — all worth
a red test rather than a skip that nobody reads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import DAIRY, DAIRY_KI, WATER, PtyPair, required_tool
from markd.store import Store
from process_helpers import LineReader, markd_command, receive_until

TOKEN = "prometheus-scrape-5e0a9c2d7f41"
API_TOKEN = "api-drives-the-till-8b3f0e6a1c27"
#: Longest the test waits for Prometheus to have scraped what it expects. Its first scrape
#: comes 5-6 s after start (2.42's discovery manager hands targets on at most every 5 s),
#: later values within two scrapes of a second; the bound is for a loaded runner.
SCRAPED_WITHIN_S = 30.0


def _address(line: str, pattern: str) -> tuple[str, int]:
    found = re.search(pattern, line)
    assert found, line
    return found.group(1), int(found.group(2))


class PrometheusServer:
    """``prometheus`` in the foreground with a configuration of one scrape job, its logfmt
    lines on stderr read by a thread (:class:`LineReader`)."""

    def __init__(self, binary: str, workdir: Path, scrape_config: str) -> None:
        workdir.mkdir()
        config = workdir / "prometheus.yml"
        config.write_text(scrape_config, encoding="utf-8")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = LineReader(self.process.stderr)
        try:
            self.url = self._wait_started(timeout=20)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _wait_started(self, timeout: float) -> str:
        """The server's URL, once it listens and says it is ready: two lines logged by two
        goroutines, in either order."""
        deadline = time.monotonic() + timeout
        url, ready = "", False
        while not (url and ready):
            line = self.log.wait_for("", timeout=max(deadline - time.monotonic(), 0.01))
            if 'msg="Listening on"' in line:
                host, port = _address(line, r"address=(127\.0\.0\.1):(\d+)")
                url = f"http://{host}:{port}"
            ready = ready or "Server is ready to receive web requests" in line
        return url

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``/api/v1/query``)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback http
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; its exit code (0 after a clean shutdown)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    """A query's series by the given labels' values → the sample's value."""
    return {
        tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
        for series in result
    }


def eventually(
    found: Callable[[], Any], expected: Any, what: str, server: PrometheusServer
) -> None:
    """Until ``found()`` equals ``expected``, at most :data:`SCRAPED_WITHIN_S`."""
    deadline = time.monotonic() + SCRAPED_WITHIN_S
    last: Any = None
    while time.monotonic() < deadline:
        last = found()
        if last == expected:
            return
        time.sleep(0.2)
    log = "\n".join(server.log.rest()[-20:])
    pytest.fail(f"Prometheus did not show {what} in {SCRAPED_WITHIN_S} s: {last!r}; log:\n{log}")


@pytest.fixture
def markd_over_tcp(
    tmp_path: Path, pty_pair: PtyPair, notify_socket: tuple[socket.socket, str]
) -> Iterator[tuple[str, LineReader]]:
    """markd with a pty scanner ``front``, the control API on ``127.0.0.1:0`` with
    :data:`API_TOKEN` and the metrics listener (the fleet's way, metrics.md "Scraping") on
    another ``127.0.0.1:0`` with :data:`TOKEN`; DAIRY's КИ blocked in its store. Yields the
    metrics listener's ``host:port`` and markd's stderr."""
    sock, notify_path = notify_socket
    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        store.block(DAIRY_KI, "recalled by the supplier")
    (tmp_path / "api-token").write_text(API_TOKEN + "\n")
    (tmp_path / "metrics-token").write_text(TOKEN + "\n")
    config = tmp_path / "markd.toml"
    config.write_text(
        f'[log]\ntarget = "stderr"\nlevel = "info"\n\n'
        f'[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n\n'
        f'[scanners.front]\nurl = "serial://{pty_pair.path}?terminator=cr"\n\n'
        f'[api]\nsocket = "{tmp_path / "control.sock"}"\nlisten = "127.0.0.1:0"\n'
        f'token_file = "{tmp_path / "api-token"}"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:0"\ntoken_file = "{tmp_path / "metrics-token"}"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    env.pop("JOURNAL_STREAM", None)
    markd = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stderr = LineReader(markd.stderr)
        receive_until(sock, "READY=1")
        line = stderr.wait_for("metrics listener on")
        host, port = _address(line, r"http://(127\.0\.0\.1):(\d+)/metrics")
        yield f"{host}:{port}", stderr
        markd.send_signal(signal.SIGTERM)
        assert markd.wait(10) == 0
    finally:
        if markd.poll() is None:
            markd.kill()
            markd.wait()


def test_prometheus_scrapes_markd_with_the_token_and_sees_its_verdicts(
    tmp_path: Path, pty_pair: PtyPair, markd_over_tcp: tuple[str, LineReader]
) -> None:
    binary = required_tool("prometheus", "prometheus")
    target, markd_log = markd_over_tcp
    # The scrape job of docs/metrics.md, on loopback and scraping every second; and a job
    # that sends the control API's token to the metrics listener, which must refuse it.
    credentials = tmp_path / "markd-token"
    credentials.write_text(TOKEN + "\n")
    wrong = tmp_path / "api-token-copy"
    wrong.write_text(API_TOKEN + "\n")
    server = PrometheusServer(
        binary,
        tmp_path / "prometheus",
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: markd\n"
        "    authorization:\n"
        f"      credentials_file: {credentials}\n"
        "    static_configs:\n"
        f'      - targets: ["{target}"]\n'
        "  - job_name: markd-api-token\n"
        "    authorization:\n"
        f"      credentials_file: {wrong}\n"
        "    static_configs:\n"
        f'      - targets: ["{target}"]\n',
    )
    try:

        def up() -> dict[tuple[str, ...], float]:
            return values(server.query('up{job="markd"}'), "instance")

        # A scrape with the token: the target is up and markd's own series are there.
        eventually(up, {(target,): 1.0}, "markd up", server)
        # The API's token opens nothing on the metrics listener.
        eventually(
            lambda: values(server.query('up{job="markd-api-token"}'), "instance"),
            {(target,): 0.0},
            "the API token refused",
            server,
        )
        present = server.query('markd_scanner_present{job="markd"}')
        assert values(present, "scanner") == {("front",): 1.0}
        assert server.query('markd_verdicts_total{job="markd"}') == []  # no scan yet

        for code in (WATER, DAIRY):
            pty_pair.write(code.encode() + b"\r")
            markd_log.wait_for("verdict:")

        def verdicts() -> dict[tuple[str, ...], float]:
            result = server.query('markd_verdicts_total{job="markd"}')
            return values(result, "decision", "reason")

        eventually(
            verdicts,
            {("allow", "store-only-not-blocked"): 1.0, ("deny", "blocked-locally"): 1.0},
            "the two verdicts",
            server,
        )
        scans = server.query('markd_scans_total{job="markd"}')
        assert values(scans, "scanner") == {("front",): 2.0}
    finally:
        code = server.stop()
    assert code == 0, server.log.rest()
    log = "\n".join(markd_log.rest())
    assert TOKEN not in log and API_TOKEN not in log
