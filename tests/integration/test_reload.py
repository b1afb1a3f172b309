"""SIGHUP reload: the same configuration files read again and applied between two scans.

Runs the real :class:`~markd.service.Service` on real configuration files, virtual scanners and
an LMDB store, with a datagram socket standing in for systemd's notify socket; and the real
``markd`` process with ``markd reload PID`` (the unit's ``ExecReload=``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from api_helpers import Conversation
from conftest import DAIRY, WATER, WATER_KI, PtyPair, RecordingEventLog, wait_until
from markd import config as config_module
from markd.checks.verdict import Verdict
from markd.scanners import get_virtual
from markd.service import Service
from markd.systemd import MESSAGE_IDS


def write_config(
    path: Path, scanners: dict[str, str], *, extra: str = "", store: str | None = None
) -> Path:
    """A markd.toml with a temporary store and control socket and the given scanners."""
    text = (
        f'[log]\ntarget = "stderr"\nlevel = "debug"\n\n'
        f'[store]\npath = "{store or path.parent / "store"}"\nmap_size_mb = 8\n\n'
        f'[api]\nsocket = "{path.parent / "control.sock"}"\n\n'
    )
    for name, url in scanners.items():
        text += f'[scanners.{name}]\nurl = "{url}"\n\n'
    path.write_text(text + extra, encoding="utf-8")
    return path


def datagrams(sock: socket.socket) -> list[list[str]]:
    """Every notify datagram waiting on the socket, each as its lines."""
    found: list[list[str]] = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(4096).decode().split("\n"))
    except BlockingIOError:
        return found
    finally:
        sock.setblocking(True)


@asynccontextmanager
async def running(
    config_file: Path,
    event_log: RecordingEventLog,
    verdicts: list[Verdict],
    **kwargs: object,
) -> AsyncIterator[Service]:
    service = Service(
        config_module.load(config_file),
        event_log=event_log,
        verdict_sink=verdicts.append,
        **kwargs,  # type: ignore[arg-type]
    )
    service.reload_status_path = config_file.parent / "reload.json"
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        yield service
    finally:
        stop.set()
        await task


async def scan(name: str, code: str, verdicts: list[Verdict]) -> Verdict:
    before = len(verdicts)
    get_virtual(name).scan(code)
    await wait_until(lambda: len(verdicts) > before, what=f"a verdict from {name}")
    return verdicts[-1]


async def test_reload_keeps_unchanged_scanners_starts_new_ones_and_closes_removed_ones(
    tmp_path: Path,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, sock_path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    main = write_config(
        tmp_path / "markd.toml",
        {"front": "virtual://rl-front", "side": "virtual://rl-side", "old": "virtual://rl-old"},
    )
    verdicts: list[Verdict] = []
    async with running(main, event_log, verdicts) as service:
        front, side = service.scanners["front"], service.scanners["side"]
        datagrams(sock)  # READY=1 and the first STATUS=

        # front unchanged, side changes its URL, old is removed, new is added; and a drop-in
        # (read again too) switches off the GS recovery.
        write_config(
            main,
            {
                "front": "virtual://rl-front",
                "side": "virtual://rl-side2",
                "new": "virtual://rl-new",
            },
        )
        dropins = tmp_path / "markd.toml.d"
        dropins.mkdir()
        (dropins / "50-codes.toml").write_text("[codes]\nrecover_lost_gs = false\n")
        result = await service.reload()

        assert result.ok, result.message
        assert result.generation == 1
        assert service.scanners["front"] is front  # the very same object, never reopened
        assert service.scanners["side"] is not side
        assert sorted(service.scanners) == ["front", "new", "side"]
        assert "rl-old" not in [s.url.target for s in service.scanners.values()]
        with pytest.raises(Exception, match="no open virtual scanner"):
            get_virtual("rl-old")  # closed for real
        assert service.config.codes.recover_lost_gs is False
        assert service.config.sources[-1].endswith("50-codes.toml")

        # Scans flow from the kept scanner and the new ones.
        assert (await scan("rl-front", WATER, verdicts)).ki == WATER_KI
        assert (await scan("rl-new", DAIRY, verdicts)).scanner == "new"
        assert (await scan("rl-side2", WATER, verdicts)).scanner == "side"

    reloaded = [f for k, _, f in event_log.events if k == "service-reloaded"]
    assert reloaded and reloaded[0]["scanners_kept"] == "front"
    assert reloaded[0]["scanners_started"] == "side,new"
    assert reloaded[0]["scanners_closed"] == "old"
    # systemd saw RELOADING=1 (with the monotonic timestamp systemd >= 253 wants), then READY=1.
    messages = datagrams(sock)
    reloading = next(i for i, m in enumerate(messages) if "RELOADING=1" in m)
    stamp = next(line for line in messages[reloading] if line.startswith("MONOTONIC_USEC="))
    assert 0 < int(stamp.split("=")[1]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert any("READY=1" in m for m in messages[reloading + 1 :])
    status = json.loads((tmp_path / "reload.json").read_text())
    assert status == {"pid": os.getpid(), "generation": 1, "ok": True, "message": result.message}


async def test_a_bad_configuration_is_refused_and_the_running_one_stays(
    tmp_path: Path,
    event_log: RecordingEventLog,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, sock_path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://bad-front"})
    verdicts: list[Verdict] = []
    async with running(main, event_log, verdicts) as service:
        scanner, chain = service.scanners["front"], service.chain
        datagrams(sock)
        main.write_text(
            main.read_text() + '[check]\nmode = "sometimes"\n[scanners.x]\nurl = "serial://"\n'
        )
        result = await service.reload()

        assert not result.ok
        assert "refused" in result.message and "(and 1 more)" in result.message
        assert service.scanners == {"front": scanner} and service.chain is chain
        assert service.config.check.mode == "store-only"
        assert (await scan("bad-front", WATER, verdicts)).decision == "allow"  # still checking

    (refused,) = [(m, f) for k, m, f in event_log.events if k == "reload-refused"]
    assert f"{main}:" in refused[1]["problems"]  # file and line of each problem
    assert "sometimes" in refused[1]["problems"] and "serial://" in refused[1]["problems"]
    messages = datagrams(sock)
    assert any("RELOADING=1" in m for m in messages)
    assert any("READY=1" in m for m in messages)  # systemd leaves "reloading" either way
    assert json.loads((tmp_path / "reload.json").read_text())["ok"] is False
    # systemctl status says why the file on disk is not in force, with the first problem.
    (ready,) = ["\n".join(m) for m in messages if "READY=1" in m]
    assert "RELOAD REFUSED, previous configuration in force" in ready and "markd.toml:" in ready


async def test_a_refused_reload_stays_in_the_status_line_until_one_succeeds(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://st-front"})
    good = main.read_text()
    async with running(main, event_log, []) as service:
        main.write_text(good + '[check]\nmode = "sometimes"\n')
        assert not (await service.reload()).ok
        assert "RELOAD REFUSED" in service.status_line()
        assert "RELOAD REFUSED" in service.status_line()  # not a one-off
        main.write_text(good)
        assert (await service.reload()).ok
        assert "RELOAD REFUSED" not in service.status_line()


async def test_a_missing_secret_refuses_the_reload_before_anything_changes(
    tmp_path: Path, event_log: RecordingEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://sec-front"})
    async with running(main, event_log, []) as service:
        main.write_text(
            main.read_text()
            + '[check]\nmode = "direct"\n[check.online]\nurl = "https://cdn.example"\n'
            + f'token_file = "{tmp_path / "no-such-token"}"\n'
        )
        result = await service.reload()
        assert not result.ok and "no-such-token" in result.message
        assert service.config.check.mode == "store-only"
    assert event_log.count("reload-refused") == 1


async def test_reload_rebuilds_the_check_chain_for_new_check_settings(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    from markd.checks.chain import CheckChain
    from markd.emulators.testing import crpt_cdn

    token = "9b0c1d2e-3f40-4152-8364-75869708a9b0"
    (tmp_path / "token").write_text(token + "\n")
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://chain-front"})
    verdicts: list[Verdict] = []
    with crpt_cdn({"cdn": {"token": token}}) as cdn:
        async with running(main, event_log, verdicts) as service:
            assert (await scan("chain-front", WATER, verdicts)).source == "none"  # store-only
            main.write_text(
                main.read_text()
                + '[terminal]\nfn_serial = "9960440300000001"\n'
                + '[check]\nmode = "direct"\n'
                + f'[check.online]\nurl = "{cdn.url}"\ntoken_file = "{tmp_path / "token"}"\n'
            )
            result = await service.reload()
            assert result.ok, result.message
            assert isinstance(service.chain, CheckChain)
            verdict = await scan("chain-front", WATER, verdicts)
    assert (verdict.decision, verdict.source) == ("allow", "cdn")
    assert verdict.req_id  # a real answer of the emulated CDN
    assert token not in event_log.text


async def test_a_new_store_path_reopens_the_store(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://store-front"})
    async with running(main, event_log, []) as service:
        old_store = service.store
        write_config(main, {"front": "virtual://store-front"}, store=str(tmp_path / "store2"))
        result = await service.reload()
        assert result.ok, result.message
        assert service.store is not old_store and service.store is not None
        assert service.store.path == str(tmp_path / "store2")
        assert "closed" in repr(old_store)
        assert service.health_problem() is None
    assert (tmp_path / "store2" / "data.mdb").exists()


async def test_a_store_that_cannot_be_reopened_fails_closed_and_the_next_reload_opens_one(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """A reload to a store that does not open, while the old one cannot be opened again
    either: no store and no chain (every scan refused, the health check says so, so the
    watchdog would restart markd), the reload's own error reported; a later reload that can
    open the store brings the daemon back."""
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://lost-front"})
    verdicts: list[Verdict] = []
    async with running(main, event_log, verdicts) as service:
        (tmp_path / "not-a-store").write_text("a file where a directory should be\n")
        (tmp_path / "store").rename(tmp_path / "store.away")
        (tmp_path / "store").write_text("the old store's place taken by a file\n")
        write_config(main, {"front": "virtual://lost-front"}, store=str(tmp_path / "not-a-store"))
        result = await service.reload()
        assert not result.ok and "not-a-store" in result.message
        assert service.store is None
        assert service.health_problem() == "the store is not open"
        refused = await scan("lost-front", WATER, verdicts)
        assert refused.decision == "deny"
        assert event_log.count("service-error") >= 1

        (tmp_path / "store").unlink()
        (tmp_path / "store.away").rename(tmp_path / "store")
        write_config(main, {"front": "virtual://lost-front"})
        result = await service.reload()
        assert result.ok, result.message
        assert service.store is not None and service.health_problem() is None
        assert (await scan("lost-front", WATER, verdicts)).decision == "allow"


async def test_a_reload_racing_api_checks_never_turns_a_check_into_an_internal_error(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """``POST /v1/check`` goes through the scan loop's queue like a scan, so a reload (here
    one that reopens the store and rebuilds the chain each time) runs between two checks,
    never under one: every check gets a real verdict, none an ``internal-error``."""
    main = write_config(tmp_path / "markd.toml", {})
    socket_path = str(tmp_path / "control.sock")

    async def checks(count: int) -> list[tuple[int, str]]:
        conversation = await Conversation.unix(socket_path)
        answers = []
        for _ in range(count):
            answer = await conversation.request("POST", "/v1/check", {"code": WATER})
            answers.append((answer.status, answer.json().get("reason")))
        conversation.close()
        return answers

    async def reloads(service: Service, count: int) -> list[bool]:
        results = []
        for number in range(count):
            write_config(main, {}, store=str(tmp_path / f"store{number % 2}"))
            results.append((await service.reload()).ok)
            await asyncio.sleep(0)
        return results

    async with running(main, event_log, []) as service:
        first, second, reloaded = await asyncio.gather(checks(80), checks(80), reloads(service, 12))

    assert reloaded == [True] * 12
    answers = first + second
    assert {status for status, _ in answers} == {200}
    # A store-only daemon allows a code its blocklist does not hold: every check says so.
    assert Counter(reason for _, reason in answers) == {"store-only-not-blocked": 160}
    assert event_log.count("service-error") == 0


async def test_sighup_queues_one_reload_between_scans(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    main = write_config(tmp_path / "markd.toml", {"front": "virtual://hup-front"})
    service = Service(config_module.load(main), event_log=event_log)
    service.reload_status_path = None
    task = asyncio.create_task(service.run(handle_signals=True))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        write_config(main, {"front": "virtual://hup-front", "back": "virtual://hup-back"})
        for _ in range(3):  # a burst of SIGHUPs before the loop gets to them: one reload
            os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: event_log.count("service-reloaded") >= 1, what="the reload")
        await asyncio.sleep(0.2)
        assert event_log.count("service-reloaded") == 1 and service.reloads == 1
        assert sorted(service.scanners) == ["back", "front"]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 5)


async def test_without_a_configuration_file_a_reload_is_refused(
    store_path: str, event_log: RecordingEventLog
) -> None:
    from conftest import make_config

    service = Service(make_config(store_path, {"v": "virtual://nofile"}), event_log=event_log)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    result = await service.reload()
    stop.set()
    await task
    assert not result.ok and "no configuration file" in result.message


def test_reload_kinds_have_message_ids() -> None:
    assert {"service-reloaded", "reload-refused"} <= set(MESSAGE_IDS)


# --------------------------------------------------------------------------------------------
# The real process and `markd reload PID`


def start_markd(config: Path, runtime: Path) -> tuple[subprocess.Popen[str], Callable[[], None]]:
    from process_helpers import markd_command

    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    for name in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    return proc, stop


def test_markd_reload_waits_for_the_outcome_and_fails_on_a_refusal(
    tmp_path: Path, pty_pair: PtyPair
) -> None:
    from process_helpers import LineReader, markd_command

    runtime = tmp_path / "run"
    runtime.mkdir()
    config = write_config(
        tmp_path / "markd.toml",
        {"front": f"serial://{pty_pair.path}?baudrate=9600&terminator=cr"},
    )
    proc, stop = start_markd(config, runtime)
    try:
        stderr = LineReader(proc.stderr)
        stderr.wait_for("service-started")
        env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}

        config.write_text(config.read_text() + "[codes]\nrecover_lost_gs = false\n")
        applied = subprocess.run(
            [*markd_command(), "reload", str(proc.pid)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert applied.returncode == 0, applied.stderr
        assert "configuration reloaded" in applied.stdout
        stderr.wait_for("service-reloaded")

        (tmp_path / "markd.toml.d").mkdir()
        (tmp_path / "markd.toml.d" / "90-bad.toml").write_text("[store]\nmap_size_mb = 'big'\n")
        refused = subprocess.run(
            [*markd_command(), "reload", str(proc.pid)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode == 1
        assert "refused" in refused.stderr and "map_size_mb" in refused.stderr
        stderr.wait_for("reload-refused")
        assert proc.poll() is None  # still running on the old configuration
        status = json.loads((runtime / "reload.json").read_text())
        assert (status["pid"], status["generation"], status["ok"]) == (proc.pid, 2, False)
    finally:
        stop()
    assert proc.returncode == 0


def test_markd_reload_of_a_process_that_does_not_answer_times_out(tmp_path: Path) -> None:
    from process_helpers import markd_command

    # A process that ignores SIGHUP and never writes an outcome.
    sleeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "ready\n"
        result = subprocess.run(
            [*markd_command(), "reload", str(sleeper.pid), "--timeout", "0.5"],
            env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 1 and "no outcome" in result.stderr
