"""The metrics listener (``[metrics] listen``) of a real daemon: a store on a temp dir, the
virtual scanner, real loopback sockets. A Prometheus server's scrape with the token gets the
text format; without it, or for anything but ``GET /metrics``, nothing (docs/metrics.md,
"Scraping")."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Answer, Conversation, api_config, running
from conftest import WATER, RecordingEventLog, wait_until
from markd import config as config_module
from markd.api import ControlApiError, server
from markd.config import MetricsConfig
from markd.errors import ConfigError
from markd.scanners import get_virtual
from markd.service import Service
from metrics_helpers import samples

TOKEN = "prometheus-9d2f4a61c0b3"
API_TOKEN = "kiosk-screen-1e8b5c7d2a90"


def metrics_config(
    store_path: str, tmp_path: Path, name: str, *, api: dict[str, Any] | None = None, **keys: Any
) -> Any:
    """A configuration with the metrics listener on a free loopback port and its token in a
    file (``keys`` change ``[metrics]``, ``api`` changes ``[api]``)."""
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    config = api_config(store_path, {"v": f"virtual://{name}"}, **(api or {}))
    settings = {"listen": "127.0.0.1:0", "token_file": str(token_file), **keys}
    return dataclasses.replace(config, metrics=MetricsConfig(**settings))


def metrics_address(service: Service) -> tuple[str, int]:
    assert service.api is not None and service.api.metrics_address is not None
    return service.api.metrics_address


async def ask(
    address: tuple[str, int],
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[Answer, bool]:
    """One request on a new connection: the answer, and whether the server closed it."""
    conversation = await Conversation.tcp(*address)
    try:
        answer = await conversation.request(method, target, body, headers=headers)
        closed = (
            answer.headers.get("connection") == "close" and await conversation.closed_by_server()
        )
        return answer, closed
    finally:
        conversation.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def listening_tcp_ports() -> set[int]:
    """The TCP ports this process listens on (its socket descriptors matched against the
    kernel's tables; state 0A is LISTEN)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --------------------------------------------------------------------------------------------
# Scraping


async def test_a_scrape_with_the_token_gets_the_metrics(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = metrics_config(store_path, tmp_path, "scraped")

    async with running(config, event_log) as service:
        address = metrics_address(service)
        get_virtual("scraped").scan(WATER)
        await wait_until(lambda: event_log.count("verdict") == 1, what="the verdict")
        # As Prometheus does: one connection kept alive, a scrape after another on it.
        conversation = await Conversation.tcp(*address)
        first = await conversation.request("GET", "/metrics", headers=bearer(TOKEN))
        second = await conversation.request("GET", "/metrics", headers=bearer(TOKEN))
        conversation.close()
        assert service.api is not None
        status = service.api.status()
        api_tcp = service.api.tcp_address

    assert first.status == second.status == 200
    assert first.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert first.headers["connection"] == "keep-alive"
    found = samples(second.body.decode())
    allowed = [
        value
        for (name, labels), value in found.items()
        if name == "markd_verdicts_total" and ("decision", "allow") in labels
    ]
    assert sum(allowed) == 1
    assert found[("markd_scans_total", (("scanner", "v"),))] == 1
    assert "access-control-allow-origin" not in first.headers
    assert status["api"]["metrics"] == f"127.0.0.1:{address[1]}"
    assert api_tcp is None and status["api"]["tcp"] is None  # the API's own port stays off
    assert TOKEN not in event_log.text


async def test_without_the_metrics_token_a_scrape_is_refused_and_logged_once(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    api_token = tmp_path / "api-token"
    api_token.write_text(API_TOKEN + "\n")
    config = metrics_config(
        store_path,
        tmp_path,
        "refused",
        api={"listen": "127.0.0.1:0", "token_file": str(api_token)},
    )

    async with running(config, event_log) as service:
        address = metrics_address(service)
        assert service.api is not None and service.api.tcp_address is not None
        refusals = [
            await ask(address, "GET", "/metrics", headers)
            for headers in (
                {},
                bearer(TOKEN + "x"),
                {"Authorization": f"Basic {TOKEN}"},
                bearer(API_TOKEN),  # the API's token opens the API, not this listener
                {},
            )
        ]
        # ... and the metrics token does not open the API's port.
        on_api, _ = await ask(service.api.tcp_address, "GET", "/metrics", bearer(TOKEN))
        allowed, _ = await ask(address, "GET", "/metrics", bearer(TOKEN))

    for answer, closed in refusals:
        assert answer.status == 401 and answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"] == 'Bearer realm="markd"'
        assert b"markd_" not in answer.body
        assert closed  # a client without the token holds no connection
    assert on_api.status == 401
    assert allowed.status == 200
    records = [m for _, m, _ in event_log.events if "without a valid token" in m]
    # One record per listener in a minute: the metrics listener's for its five refusals, the
    # API's for its one.
    assert len(records) == 2, records
    assert any(m.startswith("metrics listener: refused 1 request(s)") for m in records)
    assert any(m.startswith("control API: refused 1 request(s)") for m in records)
    assert TOKEN not in event_log.text and API_TOKEN not in event_log.text


async def test_the_metrics_listener_serves_nothing_but_metrics(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = metrics_config(store_path, tmp_path, "only-metrics")
    token = bearer(TOKEN)

    async with running(config, event_log) as service:
        address = metrics_address(service)
        answers = {
            target: (await ask(address, method, target, token, body))[0]
            for method, target, body in (
                ("GET", "/v1/status", None),
                ("POST", "/v1/check", {"code": WATER}),
                ("GET", "/v1/events", None),
                ("GET", "/v1/receipt", None),
                ("POST", "/v1/reload", None),
                ("GET", "/metrics/", None),
                ("GET", "/", None),
            )
        }
        posted, _ = await ask(address, "POST", "/metrics", token, b"")
        origin = {**token, "Origin": "http://localhost:8080"}
        from_browser, _ = await ask(address, "GET", "/metrics", origin)
        preflight, _ = await ask(address, "OPTIONS", "/metrics", origin)
        # The same requests on the Unix socket are served: the refusals are the listener's.
        local = await Conversation.unix(config.api.socket)
        status = await local.request("GET", "/v1/status")
        local.close()
        await asyncio.sleep(0.1)  # a check that ran would have given its verdict by now

    for target, answer in answers.items():
        assert answer.status == 404, target
        assert answer.json()["error"] == "not-found"
    assert event_log.count("verdict") == 0  # POST /v1/check never reached the chain
    assert event_log.count("service-reloaded") == 0
    assert posted.status == 405 and posted.headers["allow"] == "GET"
    assert from_browser.status == preflight.status == 403
    assert "access-control-allow-origin" not in from_browser.headers
    assert status.status == 200


async def test_metrics_connections_have_slots_of_their_own(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(server.MAX_CONNECTIONS, "metrics", 2)
    api_token = tmp_path / "api-token"
    api_token.write_text(API_TOKEN + "\n")
    config = metrics_config(
        store_path,
        tmp_path,
        "slots",
        api={"listen": "127.0.0.1:0", "token_file": str(api_token)},
    )

    async with running(config, event_log) as service:
        address = metrics_address(service)
        assert service.api is not None and service.api.tcp_address is not None
        held = [await Conversation.tcp(*address) for _ in range(2)]
        await wait_until(
            lambda: service.api is not None and service.api.status()["api"]["connections"] >= 2,
            what="2 held",
        )
        # One more is answered 503 at once, before it could send anything, and closed.
        third = await Conversation.tcp(*address)
        busy = await third.answer()
        third.close()
        api_status, _ = await ask(service.api.tcp_address, "GET", "/v1/status", bearer(API_TOKEN))
        for conversation in held:
            conversation.close()

    assert busy.status == 503 and busy.json()["error"] == "busy"
    assert api_status.status == 200


# --------------------------------------------------------------------------------------------
# Start, stop and reload


async def test_the_metrics_listener_is_off_by_default(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://default-off"})
    before = listening_tcp_ports()

    async with running(config, event_log) as service:
        during = listening_tcp_ports()
        assert service.api is not None
        status = service.api.status()

    assert config.metrics == MetricsConfig()
    assert status["api"]["metrics"] is None and status["api"]["tcp"] is None
    assert during == before  # no TCP socket at all


async def test_the_metrics_listener_opens_and_closes_with_the_api(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = metrics_config(store_path, tmp_path, "life")
    before = listening_tcp_ports()

    async with running(config, event_log) as service:
        port = metrics_address(service)[1]
        during = listening_tcp_ports()

    assert during - before == {port}
    assert listening_tcp_ports() == before
    with pytest.raises(ConnectionRefusedError):
        await Conversation.tcp("127.0.0.1", port)
    assert any(
        f"metrics listener on http://127.0.0.1:{port}/metrics" in m for _, m, _ in event_log.events
    )


async def test_a_metrics_port_in_use_stops_the_start_naming_the_key(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    api_token = tmp_path / "api-token"
    api_token.write_text(API_TOKEN + "\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = metrics_config(
            store_path,
            tmp_path,
            "taken",
            api={"listen": "127.0.0.1:0", "token_file": str(api_token)},
            listen=f"127.0.0.1:{port}",
        )
        before = listening_tcp_ports()
        with pytest.raises(
            ControlApiError, match=rf"\[metrics\] listen: cannot listen on 127\.0\.0\.1:{port}"
        ):
            async with running(config, event_log):
                pass
        # Nothing stays bound: neither the socket file nor the API's TCP port.
        assert listening_tcp_ports() == before
    assert not Path(config.api.socket).exists()


async def test_the_metrics_listener_does_not_start_without_its_token(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("MARKD_CREDSTORE", str(tmp_path / "empty-credstore"))
    config = metrics_config(store_path, tmp_path, "no-token", token_file="")

    with pytest.raises(ConfigError, match="metrics-token"):
        async with running(config, event_log):
            pass
    assert not Path(config.api.socket).exists()

    # From the systemd credential of that name, it does.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "metrics-token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    async with running(config, event_log) as service:
        answer, _ = await ask(metrics_address(service), "GET", "/metrics", bearer(TOKEN))
    assert answer.status == 200


async def test_a_remote_metrics_address_does_not_start_without_allow_remote(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = metrics_config(store_path, tmp_path, "remote", listen="0.0.0.0:0")

    with pytest.raises(ConfigError, match=r"\[metrics\] listen: 0\.0\.0\.0 is not a loopback"):
        async with running(config, event_log):
            pass
    assert not Path(config.api.socket).exists()


async def test_a_reload_leaves_the_listener_and_says_a_change_needs_a_restart(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    main = tmp_path / "markd.toml"

    def write(listen: str) -> None:
        main.write_text(
            f'[log]\ntarget = "stderr"\n\n'
            f'[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n\n'
            f'[api]\nsocket = "{tmp_path / "control.sock"}"\n\n'
            f'[scanners.v]\nurl = "virtual://reloaded"\n\n'
            f'[metrics]\nlisten = "{listen}"\ntoken_file = "{token_file}"\n'
        )

    write("127.0.0.1:0")
    service = Service(config_module.load(main), event_log=event_log)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        address = metrics_address(service)
        unchanged = await service.reload()
        write("127.0.0.1:1")  # another port: only a restart binds it
        changed = await service.reload()
        still, _ = await ask(address, "GET", "/metrics", bearer(TOKEN))
        assert metrics_address(service) == address
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    assert unchanged.ok and "[metrics]" not in unchanged.message
    assert changed.ok and "takes effect at the next start: [metrics]" in changed.message
    assert still.status == 200
