"""The real ``markd`` executable as systemd runs it: config file, pty scanner, sd_notify,
SIGTERM; and ``markd demo``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import WATER, WATER_KI, PtyPair
from process_helpers import LineReader, markd_command, receive_until


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


def test_a_missing_secret_exits_2_so_systemd_does_not_restart_in_a_loop(tmp_path: Path) -> None:
    # Every value is valid; the secret the file names is missing (the check reads it as the
    # daemon does, tests/integration/test_config_verdicts.py).
    config = tmp_path / "markd.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n\n[api]\nsocket = "{tmp_path / "c.sock"}"\n\n'
        '[check]\nmode = "direct"\n\n[check.online]\nurl = "http://127.0.0.1:9"\n'
        f'token_file = "{tmp_path / "no-such-token"}"\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [*markd_command(), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "MARKD_CREDSTORE": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    assert "no-such-token" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [*markd_command(), "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0 and result.stdout.startswith("markd ")


def test_demo_runs_the_script_and_exits_0() -> None:
    from markd.demo import ALL_SCANS, SCRIPT, TSPIOT_SCRIPT

    started = time.monotonic()
    result = subprocess.run([*markd_command(), "demo"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15  # a few seconds, start-up of the interpreter included
    out = result.stdout
    verdict_lines = re.findall(r"^    (ALLOW|DENY|RESCAN) +by (\S+) in [\d.]+ ms  ", out, re.M)
    assert [d for d, _ in verdict_lines] == [scan.expect.upper() for scan in ALL_SCANS]
    assert "expected" not in out  # no scan differs from its expected decision
    # One heading per phase, in order, each followed by its own summary.
    phases = [out.index("── 1. mode direct"), out.index("── 2. reload to mode tspiot")]
    phases.append(out.index("── 3. sale"))
    assert phases == sorted(phases)
    for script, (begin, end) in zip(
        (SCRIPT, TSPIOT_SCRIPT), ((phases[0], phases[1]), (phases[1], phases[2])), strict=True
    ):
        counts = {d: sum(s.expect == d for s in script) for d in ("allow", "deny", "rescan")}
        summary = (
            f"{len(script)} scans: {counts['allow']} allowed, {counts['deny']} denied, "
            f"{counts['rescan']} re-scan requested"
        )
        assert summary in out[begin:end]
    # Each verdict: its reason code, the customer's Russian text and an English gloss.
    reasons = re.findall(r"^           ([a-z-]+): «([^»]+)» — (.+)$", out, re.M)
    assert len(reasons) == len(ALL_SCANS)
    assert all(en and en != code for code, _, en in reasons)
    for parsed in ("blocked-locally", "ambiguous-lost-gs", "not-a-marking-code"):
        assert f"           {parsed}: «" in out
    assert "cyrillic-layout" in out and "lost-gs-recovered" in out
    # Phase 1: the real clients against the CDN and Local Module emulators, online then offline.
    sources = [source for _, source in verdict_lines]
    assert {"cdn", "lm", "none", "store", "parser"} <= set(sources[: len(SCRIPT)])
    assert "tag 1265: UUID=" in out and "&Inst=" in out and "unchecked" in out
    # Phase 2: the service reloaded to mode tspiot; the ТС ПИоТ answers offline (warm-up),
    # online, sold, blocked offline, then refuses in emergency mode.
    tspiot_part = out[phases[1] : phases[2]]
    assert "Service.reload() applied: " in tspiot_part
    assert sources[len(SCRIPT) :] == [
        "tspiot-offline",
        "tspiot",
        "tspiot",
        "tspiot-offline",
        "tspiot",
    ]
    for reason in ("allowed-offline", "allowed", "sold", "blocked", "tspiot-emergency"):
        assert f"           {reason}: «" in tspiot_part
    assert "ТС ПИоТ API version detected by probing /info: v2" in tspiot_part
    assert result.stderr == ""
