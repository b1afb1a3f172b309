"""sd_watchdog_enabled(3) semantics, the reload notification lines and $RUNTIME_DIRECTORY."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from markd.systemd import (
    RELOAD_STATUS_FILE,
    monotonic_usec,
    notify,
    reloading_states,
    runtime_file,
    watchdog_interval,
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),  # WatchdogSec=10s: ping every 5 s
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4243"}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.5


def test_reloading_states_carry_a_current_monotonic_timestamp() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, stamp = reloading_states()
    after = monotonic_usec()
    assert reloading == "RELOADING=1"
    name, _, value = stamp.partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(value) <= after


def test_reload_lines_reach_the_notify_socket_in_one_datagram(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify(*reloading_states(), "STATUS=reloading")
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2] == "STATUS=reloading"


def test_runtime_file_follows_runtime_directory(tmp_path: Path) -> None:
    assert runtime_file(RELOAD_STATUS_FILE, {}) is None
    assert runtime_file("x", {"RUNTIME_DIRECTORY": str(tmp_path)}) == tmp_path / "x"
    # Several RuntimeDirectory= entries arrive colon-separated; the first is markd's.
    both = {"RUNTIME_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    assert runtime_file("x", both) == tmp_path / "a" / "x"
