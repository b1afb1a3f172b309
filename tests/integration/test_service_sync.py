"""The daemon's periodic fleet sync: a real `markctl store sync` child process against the static
file emulator, while the service keeps checking scans from a virtual scanner."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DAIRY, WATER, WATER_KI, RecordingEventLog, make_config, wait_until
from markd.checks.verdict import Verdict
from markd.config import Config
from markd.emulators.static_http import StaticHTTPServer
from markd.scanners import get_virtual
from markd.service import Service, StoreSync
from markd.store import Store, fleet
from markd.store.importer import import_snapshot
from metrics_helpers import samples

PASSWORD = "hunter2-Secret"


@pytest.fixture
def export_server(tmp_path: Path) -> Iterator[StaticHTTPServer]:
    """A file server with a head-office export (version 1) that blocks WATER's КИ."""
    www = tmp_path / "www"
    blocklist = tmp_path / "head-office.csv"
    blocklist.write_text(f"ki,reason,source\n{WATER_KI},recalled,head office\n")
    with Store.open(str(tmp_path / "master"), map_size_mb=8) as master:
        import_snapshot(master, blocklist, version=1)
        fleet.export(master, www)
    with StaticHTTPServer(www) as server:
        yield server


def with_sync_url(config: Config, url: str) -> Config:
    """``config`` syncing from ``url``: unsigned over loopback http://, which must be allowed
    (signed syncs: test_store_signing.py)."""
    store = dataclasses.replace(config.store, sync_url=url, sync_allow_unsigned=True)
    return dataclasses.replace(config, store=store)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_the_daemon_sees_a_synced_blocklist_without_restart(
    store_path: str, event_log: RecordingEventLog, export_server: StaticHTTPServer
) -> None:
    verdicts: list[Verdict] = []
    config = with_sync_url(make_config(store_path, {"till": "virtual://sync"}), export_server.url)
    service = Service(config, event_log=event_log, verdict_sink=verdicts.append)
    service.sync_start_delay_s = (0.3, 0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    scanner = get_virtual("sync")
    scanner.scan(WATER)  # before the sync: the kiosk's store is empty
    await wait_until(lambda: len(verdicts) == 1)

    await wait_until(lambda: event_log.count("store-sync") == 1, 10, "the first sync")
    scanner.scan(WATER)
    scanner.scan(DAIRY)
    await wait_until(lambda: len(verdicts) == 3)
    synced = samples(service.metrics().decode())
    stop.set()
    await task

    assert (verdicts[0].decision, verdicts[0].reason) == ("allow", "store-only-not-blocked")
    assert (verdicts[1].decision, verdicts[1].reason) == ("deny", "blocked-locally")
    assert verdicts[2].decision == "allow"
    _, message, fields = next(e for e in event_log.events if e[0] == "store-sync")
    assert fields["url"] == export_server.url and fields["action"] == "snapshot"
    assert (fields["previous_version"], fields["version"]) == (0, 1)
    assert "v1" in message
    assert export_server.count("snapshot-1.mbl.gz") == 1
    assert service.store_sync is not None and service.store_sync.process is None
    assert synced[("markd_store_syncs_total", (("result", "ok"),))] == 1
    assert synced[("markd_store_syncs_total", (("result", "failed"),))] == 0
    assert synced[("markd_store_last_sync_result", (("result", "ok"),))] == 1
    assert synced[("markd_store_list_version", ())] == 1
    attempt = synced[("markd_store_last_sync_attempt_timestamp_seconds", ())]
    assert abs(attempt - synced[("markd_store_last_sync_timestamp_seconds", ())]) < 60


async def test_a_failed_sync_is_a_warning_without_credentials(
    store_path: str, event_log: RecordingEventLog
) -> None:
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://kiosk:{PASSWORD}@127.0.0.1:{port}/fleet?token={PASSWORD}"
    config = with_sync_url(make_config(store_path, {"v": "virtual://failing-sync"}), url)
    service = Service(config, event_log=event_log)
    service.sync_start_delay_s = (0.0, 0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await wait_until(lambda: event_log.count("store-sync-failed") == 1, 10, "the failed sync")
    failed = samples(service.metrics().decode())
    stop.set()
    await task

    _, message, fields = next(e for e in event_log.events if e[0] == "store-sync-failed")
    assert fields["reason"] == "sync-failed" and fields["url"] == f"https://127.0.0.1:{port}/fleet"
    assert "refused" in message
    assert PASSWORD not in event_log.text and "kiosk:" not in event_log.text
    assert event_log.kinds()[-1] == "service-stopping"
    # A fleet sees the attempt fail, not a refusal: the blocklist was never synced.
    assert failed[("markd_store_syncs_total", (("result", "failed"),))] == 1
    assert failed[("markd_store_syncs_total", (("result", "refused"),))] == 0
    assert failed[("markd_store_last_sync_result", (("result", "failed"),))] == 1
    assert failed[("markd_store_last_sync_result", (("result", "ok"),))] == 0
    assert ("markd_store_last_sync_attempt_timestamp_seconds", ()) in failed
    assert ("markd_store_last_sync_timestamp_seconds", ()) not in failed


async def test_stopping_the_service_ends_a_running_sync(
    store_path: str, event_log: RecordingEventLog, silent_port: int
) -> None:
    config = with_sync_url(
        make_config(store_path, {"v": "virtual://stuck-sync"}), f"http://127.0.0.1:{silent_port}"
    )
    service = Service(config, event_log=event_log)
    service.sync_start_delay_s = (0.0, 0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 5)
    assert service.store_sync is not None
    sync = service.store_sync
    await wait_until(lambda: sync.process is not None, 5, "the sync child")
    child = sync.process
    assert child is not None
    await asyncio.sleep(0.5)  # let it connect and wait for an answer that never comes
    started = time.monotonic()
    stop.set()
    await task
    assert time.monotonic() - started < 5
    assert child.returncode is not None  # ended, not left running
    assert event_log.count("store-sync") == event_log.count("store-sync-failed") == 0


async def test_a_sync_that_takes_too_long_is_killed_and_logged(
    store_path: str, event_log: RecordingEventLog, silent_port: int
) -> None:
    config = with_sync_url(make_config(store_path, {}), f"http://127.0.0.1:{silent_port}/x")
    sync = StoreSync(config, event_log, timeout_s=1.0)
    result = await sync.run_once()
    assert result["error"]["reason"] == "sync-timeout"
    assert sync.process is None
    kind, _, fields = event_log.events[-1]
    assert (kind, fields["reason"]) == ("store-sync-failed", "sync-timeout")


def test_the_child_command_names_the_store_and_the_configuration(
    store_path: str, event_log: RecordingEventLog, tmp_path: Path
) -> None:
    config = with_sync_url(make_config(store_path, {}), "http://127.0.0.1:9/fleet")
    main_file = str(tmp_path / "markd.toml")
    config = dataclasses.replace(config, sources=(main_file, str(tmp_path / "markd.toml.d/x.toml")))
    command = StoreSync(config, event_log).command()
    assert command[1:5] == ["-m", "markd.cli.markctl", "store", "sync"]
    assert "http://127.0.0.1:9/fleet" not in " ".join(command)  # passed in MARKD_SYNC_URL
    assert command[5:] == [
        "--store",
        store_path,
        "--json",
        "--progress",
        "none",
        "--allow-unsigned",  # the daemon's own trust settings, not the file's of the moment
        "--max-file-mb",
        "1024",
        "--config",
        main_file,
    ]


async def test_the_sync_child_goes_through_the_configured_proxy_with_its_credential(
    tmp_path: Path, event_log: RecordingEventLog, export_server: StaticHTTPServer
) -> None:
    """[store] sync_proxy = "online" (the default): the daemon's sync child reads the same
    configuration file, so it uses [check.online]'s proxy, and gets the proxy-auth credential
    from $CREDENTIALS_DIRECTORY as the service would under systemd."""
    from markd import config as config_module
    from markd.emulators.http_proxy import HttpProxy

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "proxy-auth").write_text("till7:" + PASSWORD + "\n")
    (credentials / "crpt-token").write_text("0f5b2c7e-1111-4222-8333-944445555666\n")
    with HttpProxy(credentials=("till7", PASSWORD)) as proxy:
        main = tmp_path / "markd.toml"
        main.write_text(
            f"[store]\npath = '{tmp_path / 'store'}'\nsync_url = '{export_server.url}'\n"
            "sync_allow_unsigned = true\n"
            f"[check]\nmode = 'direct'\n[check.online]\nproxy = '{proxy.url}'\nno_proxy = []\n"
        )
        config = config_module.load(main)
        sync = StoreSync(config, event_log)
        old = os.environ.get("CREDENTIALS_DIRECTORY")
        os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        try:
            result = await sync.run_once()
        finally:
            if old is None:
                os.environ.pop("CREDENTIALS_DIRECTORY")
            else:
                os.environ["CREDENTIALS_DIRECTORY"] = old
    assert "error" not in result, result
    assert (result["action"], result["after_version"]) == ("snapshot", 1), result
    assert proxy.count() >= 2 and all(r.authorization_ok for r in proxy.requests)
    assert PASSWORD not in event_log.text


async def test_a_file_over_the_size_limit_is_a_refused_sync_for_a_fleet(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """An index naming a snapshot over ``[store] sync_max_file_mb`` is refused at every run,
    until somebody acts: the daemon counts it as refused (signature or size, the alert's
    "sync refused"), not as a passing network failure."""
    www = tmp_path / "www"
    blocklist = tmp_path / "head-office.csv"
    blocklist.write_text(f"ki,reason,source\n{WATER_KI},recalled,head office\n")
    with Store.open(str(tmp_path / "master"), map_size_mb=8) as master:
        import_snapshot(master, blocklist, version=1)
        fleet.export(master, www)
    index = json.loads((www / "index.json").read_text())
    index["snapshot"]["size"] = 300_000_000  # an unsigned index: anyone could serve this
    (www / "index.json").write_text(json.dumps(index))
    with StaticHTTPServer(www) as server:
        base = with_sync_url(make_config(store_path, {"v": "virtual://big-sync"}), server.url)
        config = dataclasses.replace(
            base, store=dataclasses.replace(base.store, sync_max_file_mb=1)
        )
        service = Service(config, event_log=event_log)
        service.sync_start_delay_s = (0.0, 0.0)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await wait_until(lambda: event_log.count("store-sync-refused") == 1, 10, "the refusal")
        found = samples(service.metrics().decode())
        stop.set()
        await task

    _, message, fields = next(e for e in event_log.events if e[0] == "store-sync-refused")
    assert fields["reason"] == "download-too-large" and "sync_max_file_mb" in message
    assert event_log.count("store-sync-failed") == 0
    assert found[("markd_store_syncs_total", (("result", "refused"),))] == 1
    assert found[("markd_store_syncs_total", (("result", "failed"),))] == 0
    assert found[("markd_store_sync_refused_total", ())] == 1
    assert found[("markd_store_last_sync_refused", ())] == 1
    assert found[("markd_store_last_sync_result", (("result", "refused"),))] == 1
