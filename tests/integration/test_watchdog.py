"""The watchdog: ``WATCHDOG=1`` only after a passed health check, from the loop itself.

A datagram socket stands in for systemd's notify socket; the health failures are real ones (a
closed store, a loop stuck on an event, a loop blocked by the SIGUSR2 test hook in a real
``markd`` process), not patched checks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import markd.service.health as health_module
from conftest import RecordingEventLog, make_config, wait_until
from markd.config import Config
from markd.service import Service
from markd.store import Store


def pings(sock: socket.socket, within: float) -> int:
    """How many ``WATCHDOG=1`` datagrams arrive within ``within`` seconds."""
    count = 0
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            lines = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
        count += "WATCHDOG=1" in lines
    sock.settimeout(10)
    return count


async def async_pings(sock: socket.socket, within: float) -> int:
    return await asyncio.to_thread(pings, sock, within)


def drain(sock: socket.socket) -> None:
    """Drop the datagrams already queued (pings sent before the moment of interest)."""
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)


@pytest.fixture
def watched(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> socket.socket:
    """The notify socket, with $NOTIFY_SOCKET and a 0.2 s watchdog (pings every 0.1 s)."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return sock


async def start(config: Config, event_log: RecordingEventLog) -> tuple[Service, asyncio.Event]:
    service = Service(config, event_log=event_log)
    service.reload_status_path = None
    stop = asyncio.Event()
    service.run_task = asyncio.create_task(service.run(stop))  # type: ignore[attr-defined]
    await asyncio.wait_for(service.ready.wait(), 5)
    return service, stop


async def finish(service: Service, stop: asyncio.Event) -> None:
    stop.set()
    await service.run_task  # type: ignore[attr-defined]


async def test_a_healthy_daemon_pings_at_half_the_watchdog_period(
    watched: socket.socket, store_path: str, event_log: RecordingEventLog
) -> None:
    service, stop = await start(make_config(store_path, {"v": "virtual://wd-ok"}), event_log)
    try:
        assert service.watchdog_interval_s == pytest.approx(0.1)
        assert service.health_problem() is None
        count = await async_pings(watched, 1.0)
    finally:
        await finish(service, stop)
    assert 6 <= count <= 12  # every 0.1 s, give or take a loaded machine


async def test_an_absent_scanner_is_a_state_not_a_health_failure(
    watched: socket.socket, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = make_config(
        str(tmp_path / "store"), {"gone": f"serial://{tmp_path}/no-such-tty?terminator=cr"}
    )
    service, stop = await start(config, event_log)
    try:
        await wait_until(lambda: service.scanners["gone"].present is False, what="absent")
        assert service.health_problem() is None
        count = await async_pings(watched, 0.6)
    finally:
        await finish(service, stop)
    assert count >= 3


async def test_a_broken_store_withholds_the_pings_until_it_works_again(
    watched: socket.socket, store_path: str, event_log: RecordingEventLog
) -> None:
    config = make_config(store_path, {"v": "virtual://wd-store"})
    service, stop = await start(config, event_log)
    try:
        assert service.store is not None
        service.store.close()  # every read transaction fails from now on
        await wait_until(lambda: event_log.count("watchdog-unhealthy") == 1, what="unhealthy")
        assert "store cannot be read" in service.health_problem()  # type: ignore[operator]
        drain(watched)
        assert await async_pings(watched, 0.5) == 0
        assert service.status_line().startswith("UNHEALTHY")

        service.store = Store.from_config(config.store)  # the store is back
        await wait_until(lambda: event_log.count("watchdog-recovered") == 1, what="recovered")
        assert await async_pings(watched, 0.5) >= 2
    finally:
        await finish(service, stop)
    (problem,) = [f["problem"] for k, _, f in event_log.events if k == "watchdog-unhealthy"]
    assert "store" in problem


class SlowReloadService(Service):
    """A service whose reload never finishes (its chain swap waits forever): the loop still
    runs, but its consumer is stuck on one event, which is exactly what the "stuck event"
    health rule is for."""

    async def replace_chain(self, new: Config) -> None:
        await asyncio.Event().wait()


async def test_an_event_stuck_beyond_every_budget_withholds_the_pings(
    watched: socket.socket,
    tmp_path: Path,
    event_log: RecordingEventLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health_module, "STUCK_GRACE_S", 0.0)
    main = tmp_path / "markd.toml"
    main.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n'
        f"[api]\nenabled = false\n"
        "[check]\nonline_timeout_ms = 50\nlocal_module_timeout_ms = 50\ntspiot_timeout_ms = 50\n"
        '[scanners.v]\nurl = "virtual://wd-stuck"\n'
    )
    from markd import config as config_module

    service = SlowReloadService(config_module.load(main), event_log=event_log)
    service.reload_status_path = None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    assert service.request_reload()
    await wait_until(lambda: event_log.count("watchdog-unhealthy") == 1, what="stuck found")
    drain(watched)
    assert await async_pings(watched, 0.4) == 0
    stop.set()
    task.cancel()  # the stuck reload never finishes by itself
    with pytest.raises(asyncio.CancelledError):
        await task
    (problem,) = [f["problem"] for k, _, f in event_log.events if k == "watchdog-unhealthy"]
    assert "stuck" in problem


async def test_no_pings_when_the_watchdog_belongs_to_another_process(
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    store_path: str,
    event_log: RecordingEventLog,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # e.g. a child of the daemon
    service, stop = await start(make_config(store_path, {"v": "virtual://wd-pid"}), event_log)
    try:
        assert service.watchdog_interval_s is None
        count = await async_pings(sock, 0.5)
    finally:
        await finish(service, stop)
    assert count == 0


def test_a_hung_loop_stops_pinging_in_the_real_process(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The SIGUSR2 test hook (MARKD_TEST_HOOKS=1) blocks the loop in time.sleep: the pings
    stop although the process lives on, which is what lets systemd's watchdog kill it."""
    from process_helpers import LineReader, markd_command, with_test_hooks

    sock, path = notify_socket
    config = tmp_path / "markd.toml"
    config.write_text(
        f'[log]\ntarget = "stderr"\n[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n'
        f'[api]\nenabled = false\n[scanners.v]\nurl = "virtual://hang"\n'
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "200000",
        "MARKD_TEST_HOOKS": "1",
    }
    env.pop("WATCHDOG_PID", None)  # systemd sets it to the main PID; unset means "you"
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=with_test_hooks(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stderr = LineReader(proc.stderr)
        stderr.wait_for("service-started")
        assert pings(sock, 0.6) >= 3
        proc.send_signal(signal.SIGUSR2)
        stderr.wait_for("test-hook")
        pings(sock, 0.2)  # one ping may have been on its way
        assert pings(sock, 1.0) == 0
        assert proc.poll() is None  # alive but hung: only the watchdog can tell
    finally:
        proc.kill()
        proc.wait()


def test_without_test_hooks_sigusr2_is_not_handled(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """On a till (no MARKD_TEST_HOOKS) SIGUSR2 keeps its default action: the process ends;
    it never hangs on a stray signal."""
    from process_helpers import markd_command, receive_until

    sock, path = notify_socket
    config = tmp_path / "markd.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n'
        f'[api]\nenabled = false\n[scanners.v]\nurl = "virtual://nohook"\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": path}
    env.pop("MARKD_TEST_HOOKS", None)
    proc = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        receive_until(sock, "READY=1")
        proc.send_signal(signal.SIGUSR2)
        assert proc.wait(timeout=10) == -signal.SIGUSR2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
