"""The real ``markd`` executable as systemd runs it: config file, pty scanner, sd_notify,
SIGTERM; and ``markd demo``."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import WATER, WATER_KI, PtyPair


def markd_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "markd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "markd.cli.markd"]


class LineReader:
    """Collects a pipe's lines in a thread so the test can wait for one with a timeout."""

    def __init__(self, pipe: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line containing {text!r}; got: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line


def receive_until(sock: socket.socket, state: str) -> list[str]:
    """Read notify datagrams until one carries ``state``; return all lines seen."""
    lines: list[str] = []
    while state not in lines:
        lines += sock.recv(4096).decode().split("\n")
    return lines


def test_markd_runs_under_a_notify_socket_and_stops_on_sigterm(
    tmp_path: Path, pty_pair: PtyPair, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, sock_path = notify_socket
    config = tmp_path / "markd.toml"
    config.write_text(
        f"""
[log]
target = "auto"

[store]
path = "{tmp_path / "store"}"
map_size_mb = 8

[scanners.front]
url = "serial://{pty_pair.path}?baudrate=9600&terminator=cr"

[api]
socket = "{tmp_path / "control.sock"}"
""",
        encoding="utf-8",
    )
    env = {**os.environ, "NOTIFY_SOCKET": sock_path}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stderr = LineReader(proc.stderr)
        assert "READY=1" in receive_until(sock, "READY=1")
        stderr.wait_for("scanner-present")
        pty_pair.write(WATER.encode() + b"\r")
        line = stderr.wait_for("verdict:")
        assert "allow" in line and WATER_KI in line and "scanner=front" in line
        assert "938p9E" not in line  # the crypto tail never reaches a log

        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receive_until(sock, "STOPPING=1")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_config_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "markd.toml"
    config.write_text(
        '[store]\nmap_size_mb = "big"\n\n[scanners.front]\nurl = "serial:///dev/ttyACM0?baud=1"\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [*markd_command(), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "map_size_mb" in result.stderr
    assert "unknown option 'baud'" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [*markd_command(), "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0 and result.stdout.startswith("markd ")


def test_demo_runs_the_script_and_exits_0() -> None:
    from markd.demo import SCRIPT

    result = subprocess.run([*markd_command(), "demo"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    verdict_lines = [
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("    ") and not line.lstrip().startswith("tag 1265")
    ]
    assert verdict_lines == [scan.expect.upper() for scan in SCRIPT]
    assert "expected" not in result.stdout  # no scan differs from its expected decision
    assert "blocked-locally" in result.stdout and "cyrillic-layout" in result.stdout
    assert "ambiguous-lost-gs" in result.stdout and "not-a-marking-code" in result.stdout
    counts = {d: sum(s.expect == d for s in SCRIPT) for d in ("allow", "deny", "rescan")}
    summary = (
        f"{len(SCRIPT)} scans: {counts['allow']} allowed, {counts['deny']} denied, "
        f"{counts['rescan']} re-scan requested"
    )
    assert summary in result.stdout
    assert "lost-gs-recovered" in result.stdout
    # The verdicts come from the real clients against the emulators: online, then offline.
    assert "by cdn" in result.stdout and "by lm" in result.stdout
    assert "tag 1265: UUID=" in result.stdout and "&Inst=" in result.stdout
    assert "unchecked" in result.stdout
    assert result.stderr == ""
