"""``markctl check`` and ``markctl status`` ask the running daemon through the control socket,
and do the work in-process when no daemon listens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from api_helpers import api_config, running
from conftest import DAIRY, DAIRY_KI, GS, WATER, WATER_KI, RecordingEventLog, wait_until
from markd.cli import markctl
from markd.store import Store


def config_file(tmp_path: Path, config: Any, store: str | None = None) -> str:
    """A markd.toml for markctl naming the socket (and, by default, the store) of ``config``."""
    path = tmp_path / "markctl.toml"
    path.write_text(
        f"[store]\npath = '{store or config.store.path}'\nmap_size_mb = 8\n"
        f"[api]\nsocket = '{config.api.socket}'\n"
    )
    return str(path)


async def markctl_main(*args: str) -> int:
    return await asyncio.to_thread(markctl.main, list(args))


async def test_api_markctl_check_goes_through_the_running_daemon(
    store_path: str,
    tmp_path: Path,
    event_log: RecordingEventLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = api_config(store_path, {"v": "virtual://markctl-check"})
    cfg = config_file(tmp_path, config)
    with Store.from_config(config.store) as store:
        store.block(DAIRY_KI, "recalled", source="head office")

    async with running(config, event_log):
        allowed = await markctl_main("check", WATER, "--config", cfg, "--json")
        allowed_out = json.loads(capsys.readouterr().out)
        denied = await markctl_main("check", DAIRY.replace(GS, "<GS>"), "--config", cfg)
        denied_out = capsys.readouterr().out
        not_a_code = await markctl_main("check", "hello", "--config", cfg)
        capsys.readouterr()

    assert allowed == 0
    assert allowed_out["via"] == "daemon" and allowed_out["scanner"] == "api"
    assert allowed_out["ki"] == WATER_KI and allowed_out["decision"] == "allow"
    assert denied == 3
    assert f"DENY {DAIRY_KI}: blocked-locally" in denied_out
    assert f"via daemon ({config.api.socket})" in denied_out
    assert not_a_code == 2
    # The daemon journaled the three checks; no crypto tail anywhere.
    assert [f["scanner"] for k, _, f in event_log.events if k == "verdict"] == ["api"] * 3
    assert "938p9E" not in event_log.text and "dGVz" not in event_log.text


def test_api_markctl_check_works_in_process_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "markd.toml"
    cfg.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\n[api]\nsocket = '{tmp_path / 'none.sock'}'\n"
    )

    assert markctl.main(["check", WATER, "--config", str(cfg)]) == 0
    assert "via in-process (markd is not running)" in capsys.readouterr().out
    assert markctl.main(["check", WATER, "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["via"] == "in-process"


async def test_api_markctl_in_process_and_price_skip_the_daemon(
    store_path: str,
    tmp_path: Path,
    event_log: RecordingEventLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = api_config(store_path, {"v": "virtual://markctl-skip"})
    # In-process work opens the store itself; LMDB allows one environment per process, and the
    # daemon runs in this one, so markctl gets a store of its own.
    cfg = config_file(tmp_path, config, store=str(tmp_path / "markctl-store"))

    async with running(config, event_log):
        forced = await markctl_main("check", WATER, "--config", cfg, "--in-process")
        forced_out = capsys.readouterr().out
        priced = await markctl_main("check", WATER, "--config", cfg, "--price", "89.90")
        priced_out = capsys.readouterr().out

    assert forced == priced == 0
    assert "via in-process\n" in forced_out
    assert "via in-process (--price is not sent to the daemon)" in priced_out
    assert event_log.count("verdict") == 0  # the daemon was not asked


async def test_api_markctl_status_shows_the_daemon_and_exits_0_when_healthy(
    store_path: str,
    tmp_path: Path,
    event_log: RecordingEventLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = api_config(store_path, {"front": "virtual://markctl-status"})
    cfg = config_file(tmp_path, config)
    with Store.from_config(config.store) as store:
        store.touch_sync(source="head office")  # a blocklist confirmed current just now

    async with running(config, event_log):
        text_status = await markctl_main("status", "--config", cfg)
        text = capsys.readouterr().out
        json_status = await markctl_main("status", "--config", cfg, "--json")
        report = json.loads(capsys.readouterr().out)

    assert text_status == json_status == 0
    assert "markd          ready, healthy; pid" in text
    assert "scanner front  ok        virtual://markctl-status" in text
    assert "printer        off       no printer ([sale] mode off)" in text
    assert "blocklist      ok        version 0, synced just now (stale after 3 d); sync ok" in text
    assert "check mode     store-only" in text
    assert f"via            daemon ({config.api.socket})" in text
    assert report["via"] == "daemon" and report["service"]["state"] == "ready"
    assert report["scanners"]["front"]["present"] is True
    assert report["store"]["stale"] is False and report["printer"] is None


async def test_api_markctl_status_exits_1_when_the_daemon_is_degraded(
    store_path: str,
    tmp_path: Path,
    event_log: RecordingEventLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A never-synced (stale) blocklist and an absent scanner: exit status 1, each named."""
    config = api_config(
        store_path,
        {"front": "virtual://markctl-degraded", "side": f"serial://{tmp_path}/no-tty"},
    )
    cfg = config_file(tmp_path, config)

    async with running(config, event_log) as service:
        await wait_until(lambda: service.scanners["side"].present is False, what="side absent")
        text_status = await markctl_main("status", "--config", cfg)
        text = capsys.readouterr().out
        json_status = await markctl_main("status", "--config", cfg, "--json")
        report = json.loads(capsys.readouterr().out)

    assert text_status == json_status == 1
    assert "DEGRADED: scanner side down, blocklist degraded" in text
    assert "scanner side   down      serial://" in text
    assert "version 0, never synced (stale after 3 d); STALE" in text
    assert report["store"]["stale"] is True  # --json: the status as the daemon gives it


def test_api_markctl_status_exits_3_when_no_daemon_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No socket, and a socket nobody accepts on: "not running", naming the socket; the
    sources and the store are probed in-process as before."""
    import socket

    absent = tmp_path / "none.sock"
    refusing = tmp_path / "refusing.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(refusing))  # bound, never listening: connect() is refused
    try:
        for path in (absent, refusing):
            cfg = tmp_path / "markd.toml"
            cfg.write_text(f"[store]\npath = '{tmp_path / 'store'}'\n[api]\nsocket = '{path}'\n")

            assert markctl.main(["status", "--config", str(cfg)]) == 3
            out, err = capsys.readouterr()
            assert f"markd is not running (nothing accepts on {path})" in err
            assert "via            in-process (markd is not running)" in out
            assert "markd   " not in out
            assert markctl.main(["status", "--config", str(cfg), "--json"]) == 3
            assert json.loads(capsys.readouterr().out)["via"] == "in-process"
    finally:
        bound.close()


def test_api_markctl_reports_a_socket_it_may_not_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied is not "not running": markctl says so instead of guessing."""
    import socket

    from markd.api import client as api_client

    def refuse(self: socket.socket, address: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(api_client.socket.socket, "connect", refuse)
    cfg = tmp_path / "markd.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'store'}'\n")

    assert markctl.main(["status", "--config", str(cfg)]) == 1
    assert "is this user in group markd?" in capsys.readouterr().err
