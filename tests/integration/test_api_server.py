"""The control API of a real service: real Unix sockets and loopback TCP, a virtual scanner.

Each test runs the whole daemon (store, scanner thread, chain, event log) and talks HTTP to it
the way a kiosk screen, curl or markctl would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Answer, Conversation, EventStream, api_config, running
from conftest import (
    DAIRY,
    DAIRY_KI,
    GS,
    SHOES,
    SHOES_KI,
    WATER,
    WATER_KI,
    RecordingEventLog,
    wait_until,
)
from markd.api import (
    ControlApiError,
    OpenReceipt,
    Payment,
    ReceiptError,
    ReceiptInputError,
    ReceiptItem,
)
from markd.checks.verdict import Verdict
from markd.config import ScannerConfig
from markd.errors import ConfigError
from markd.events import verdict_json
from markd.scanners import get_virtual
from markd.store import Store

WATER_TAIL = WATER.split(GS)[1]  # "938p9E": the crypto tail that must never leak
DAIRY_TAIL = DAIRY.split(GS)[1]


def block(config: Any, ki: str) -> None:
    with Store.from_config(config.store) as store:
        store.block(ki, "recalled batch", source="head office")


# --------------------------------------------------------------------------------------------
# The socket


def _other_group() -> grp.struct_group | None:
    """A group other than our own, which only root may give a file to."""
    if os.geteuid() != 0:
        return None
    for entry in grp.getgrall():
        if entry.gr_gid != os.getgid():
            return entry
    return None


async def test_api_socket_is_0660_in_its_group_and_removed_at_stop(
    store_path: str, event_log: RecordingEventLog
) -> None:
    group = _other_group()
    config = api_config(
        store_path, {"v": "virtual://sock"}, socket_group=group.gr_name if group else ""
    )
    path = Path(config.api.socket)
    assert not path.parent.exists() or not path.exists()

    async with running(config, event_log):
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        if group is not None:
            assert info.st_gid == group.gr_gid
        # No temporary name left beside it.
        assert sorted(p.name for p in path.parent.iterdir() if "control" in p.name) == [
            "control.sock"
        ]

    assert not path.exists()


async def test_api_socket_directory_is_created_when_missing(
    tmp_path: Path, store_path: str, event_log: RecordingEventLog
) -> None:
    socket_path = tmp_path / "run" / "markd" / "control.sock"
    config = api_config(store_path, {"v": "virtual://mkdir"}, socket=str(socket_path))

    async with running(config, event_log):
        assert socket_path.is_socket()


async def test_api_a_second_daemon_on_the_same_socket_refuses_to_start(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://first"})
    async with running(config, event_log):
        second = api_config(
            str(tmp_path / "other-store"),
            {"w": "virtual://second"},
            socket=config.api.socket,
        )
        with pytest.raises(ControlApiError, match="in use"):
            async with running(second, RecordingEventLog()):
                pass
        # The first daemon still answers on its socket.
        conversation = await Conversation.unix(config.api.socket)
        assert (await conversation.request("GET", "/v1/status")).status == 200
        conversation.close()


async def test_api_a_socket_left_by_a_dead_daemon_is_replaced(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://stale"})
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(config.api.socket)  # bound, never listening, then gone: like after kill -9
    stale.close()
    assert Path(config.api.socket).is_socket()

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        assert (await conversation.request("GET", "/v1/status")).status == 200
        conversation.close()


async def test_api_a_regular_file_at_the_socket_path_is_not_deleted(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://file"})
    Path(config.api.socket).write_text("not a socket")

    with pytest.raises(ControlApiError, match="not a socket"):
        async with running(config, event_log):
            pass
    assert Path(config.api.socket).read_text() == "not a socket"


async def test_api_disabled_means_no_socket(store_path: str, event_log: RecordingEventLog) -> None:
    config = api_config(store_path, {"v": "virtual://off"}, enabled=False)

    async with running(config, event_log) as service:
        assert service.api is None
        assert not Path(config.api.socket).exists()


# --------------------------------------------------------------------------------------------
# Status and check


async def test_api_status_reports_service_scanners_store_and_clients(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://status-front"})
    block(config, DAIRY_KI)

    async with running(config, event_log):
        stream = await EventStream.open(await Conversation.unix(config.api.socket))
        conversation = await Conversation.unix(config.api.socket)
        answer = await conversation.request("GET", "/v1/status")
        status = answer.json()

    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert status["service"]["state"] == "ready" and status["service"]["mode"] == "store-only"
    assert status["service"]["pid"] == os.getpid()
    assert status["scanners"] == {
        "front": {"url": "virtual://status-front", "present": True, "reconnects": 0}
    }
    assert status["store"]["blocked_by_hand"] == 1 and status["store"]["stale"] is True
    assert status["sources"] == {} and status["printer"] is None
    assert status["api"]["event_clients"] == 1
    stream.conversation.close()


async def test_api_check_gives_the_verdict_the_service_gives_in_process(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://check"})
    block(config, DAIRY_KI)
    verdicts: list[Verdict] = []

    async with running(config, event_log, verdict_sink=verdicts.append) as service:
        conversation = await Conversation.unix(config.api.socket)
        answers = {}
        for code in (WATER, DAIRY, "hello, world", "0104680029460908215jcmHzLmkdPML<GS>938p9E"):
            answer = await conversation.request("POST", "/v1/check", {"code": code})
            assert answer.status == 200
            assert WATER_TAIL.encode() not in answer.body and DAIRY_TAIL.encode() not in answer.body
            answers[code] = answer.json()
        in_process = {code: verdict_json(service.check(code.encode(), "api")) for code in answers}
        conversation.close()

    for code, over_api in answers.items():
        over_api.pop("latency_ms")
        in_process[code].pop("latency_ms")
        assert over_api == in_process[code], code
    assert answers[WATER]["decision"] == "allow" and answers[WATER]["scanner"] == "api"
    assert answers[DAIRY]["reason"] == "blocked-locally"
    assert answers["hello, world"]["source"] == "parser"
    assert answers["0104680029460908215jcmHzLmkdPML<GS>938p9E"]["ki"] == WATER_KI
    # Journaled like a scan, but not handed to the sale (the verdict sink).
    assert event_log.count("verdict") == 4 and verdicts == []
    assert WATER_TAIL not in event_log.text and DAIRY_TAIL not in event_log.text


# --------------------------------------------------------------------------------------------
# The event stream


async def test_api_a_scan_arrives_on_the_event_stream(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://sse"})

    async with running(config, event_log) as service:
        stream = await EventStream.open(
            await Conversation.unix(config.api.socket), "/v1/events?kinds=scan,verdict"
        )
        assert stream.head.status == 200
        assert stream.head.headers["content-type"] == "text/event-stream; charset=utf-8"
        await wait_until(lambda: service.events.subscribers == 1)
        get_virtual("sse").scan(WATER)

        scan = await stream.event()
        verdict = await stream.event()
        stream.conversation.close()

    assert scan["kind"] == "scan" and scan["data"] == {"scanner": "front", "length": len(WATER)}
    assert verdict["kind"] == "verdict" and verdict["seq"] > scan["seq"]
    assert verdict["data"]["ki"] == WATER_KI and verdict["data"]["scanner"] == "front"
    assert verdict["data"]["decision"] == "allow"
    assert verdict["time"].endswith("Z")
    assert WATER_TAIL.encode() not in stream.raw


async def test_api_event_stream_gets_service_stopping_then_ends(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://stopping"})

    async with running(config, event_log) as service:
        stream = await EventStream.open(
            await Conversation.unix(config.api.socket), "/v1/events?kinds=service"
        )
        await wait_until(lambda: service.events.subscribers == 1)
        get_virtual("stopping").scan(WATER)  # not a service-* kind: filtered out

    event = await stream.event()
    assert event is not None and event["kind"] == "service-stopping"
    assert event["data"]["message"] == "markd stopping"
    assert await stream.event() is None  # the end of the stream


async def test_api_event_stream_sends_heartbeats(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://heartbeat"})

    async with running(config, event_log) as service:
        assert service.api is not None
        service.api.heartbeat_s = 0.05
        stream = await EventStream.open(await Conversation.unix(config.api.socket))
        blocks = [await stream.block() for _ in range(3)]
        stream.conversation.close()

    assert blocks[0] == {"retry": "2000", "comment": "markd 0.1.0 events"}
    assert blocks[1] == blocks[2] == {"comment": "heartbeat"}


async def test_api_unknown_event_kind_is_refused_with_the_known_ones(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://kinds"})

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        answer = await conversation.request("GET", "/v1/events?kinds=verdict,verdicts")
        conversation.close()

    assert answer.status == 400
    assert answer.json()["error"] == "unknown-kind"
    assert "verdicts" in answer.json()["message"] and "scanner-absent" in answer.json()["message"]


async def test_api_a_slow_event_client_is_dropped_and_nobody_waits_for_it(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://slow"})
    padding = "x" * 4000

    async with running(config, event_log) as service:
        assert service.api is not None
        service.api.event_queue_limit = 16
        # A client that asks for the stream and never reads a byte.
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(config.api.socket)
        slow.sendall(b"GET /v1/events HTTP/1.1\r\n\r\n")
        # And one that reads everything.
        fast = await EventStream.open(await Conversation.unix(config.api.socket))
        await wait_until(lambda: service.events.subscribers == 2)

        received: list[int] = []
        published = 0
        while service.events.dropped == 0 and published < 2000:
            for _ in range(8):  # half the queue, then let the fast reader catch up
                published += 1
                service.events.publish("scan", {"scanner": "load", "n": published, "pad": padding})
            while len(received) < published:
                event = await fast.event()
                assert event is not None
                received.append(event["data"]["n"])

        assert service.events.dropped == 1, "the slow client was never dropped"
        assert received == list(range(1, published + 1))  # the fast one lost nothing
        await wait_until(lambda: service.events.subscribers == 1)
        # The daemon answers at once while the slow client's socket is still full.
        conversation = await Conversation.unix(config.api.socket)
        status = (await asyncio.wait_for(conversation.request("GET", "/v1/status"), 2)).json()
        assert status["api"]["event_clients"] == 1
        assert status["api"]["event_clients_dropped"] == 1
        conversation.close()
        fast.conversation.close()

        # The slow client finds its stream cut: what was buffered, then the end.
        def drain() -> bytes:
            slow.settimeout(5)
            data = b""
            try:
                while chunk := slow.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            return data

        leftover = await asyncio.to_thread(drain)
        slow.close()

    assert leftover.startswith(b"HTTP/1.1 200 OK")
    notices = [m for k, m, _ in event_log.events if k == "source-notice" and "dropped" in m]
    assert len(notices) == 1 and "fell 16 events behind" in notices[0]


# --------------------------------------------------------------------------------------------
# Bad requests


async def test_api_bad_requests_get_json_errors_and_the_connection_stays_usable(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://bad"})

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        cases = [
            ("POST", "/v1/check", b"{not json", 400, "bad-json"),
            ("POST", "/v1/check", b"[1, 2]", 400, "bad-json"),
            ("POST", "/v1/check", b"\xff\xfe", 400, "bad-json"),
            ("POST", "/v1/check", b'{"code": NaN}', 400, "bad-json"),
            ("POST", "/v1/check", b"[" * 50000 + b"]" * 50000, 413, "body-too-large"),
            ("POST", "/v1/check", b"[" * 30000, 400, "bad-json"),
            ("POST", "/v1/check", {}, 400, "bad-request"),
            ("POST", "/v1/check", {"code": 42}, 400, "bad-request"),
            ("POST", "/v1/check", {"code": ""}, 400, "bad-request"),
            ("POST", "/v1/check", {"code": "x" * 3000}, 400, "bad-request"),
            ("POST", "/v1/check", {"code": WATER, "cod": 1}, 400, "unknown-field"),
            ("GET", "/v1/nothing", None, 404, "not-found"),
            ("GET", "/", None, 404, "not-found"),
            ("DELETE", "/v1/check", None, 405, "method-not-allowed"),
            ("GET", "/v1/check", None, 405, "method-not-allowed"),
        ]
        results = []
        for method, target, body, status, reason in cases:
            if status == 413:
                continue  # closes the connection: tested below
            answer = await conversation.request(method, target, body)
            results.append((target, answer.status, answer.json()["error"]))
            assert answer.status == status, (target, body, answer.body)
            assert answer.json()["error"] == reason
            assert answer.json()["message"]
            assert answer.headers["connection"] == "keep-alive"
        allow = (await conversation.request("PUT", "/v1/receipt")).headers["allow"]
        assert allow == "GET, POST"
        # Still the same connection, still answering.
        assert (await conversation.request("GET", "/v1/status")).status == 200
        conversation.close()
    assert WATER_TAIL not in event_log.text


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"POST /v1/check HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413, "body-too-large"),
        (
            b"POST /v1/check HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            "length-required",
        ),
        (b"GET /v1/status HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, ""),
        (b"GET /v1/status HTTP/1.1\r\n" + b"X-A: b\r\n" * 70 + b"\r\n", 431, ""),
        (b"GET /v1/status\r\n\r\n", 400, "bad-request"),
        (b"GET v1/status HTTP/1.1\r\n\r\n", 400, "bad-request"),
        (b"GET /v1/status HTTP/2.0\r\n\r\n", 505, "bad-version"),
        (b"GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad-request"),
        (b"GET /v1/status HTTP/1.1\r\n folded: header\r\n\r\n", 400, "bad-request"),
        (b"POST /v1/check HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad-request"),
        (
            b"POST /v1/check HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            400,
            "bad-request",
        ),
        (
            b"POST /v1/check HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            400,
            "bad-request",
        ),
        ("POST /v1/check HTTP/1.1\r\nContent-Length: ²\r\n\r\n".encode(), 400, "bad-request"),
    ],
    ids=[
        "huge-body",
        "chunked",
        "huge-header",
        "too-many-headers",
        "no-version",
        "not-origin-form",
        "http2",
        "header-without-colon",
        "folded-header",
        "negative-length",
        "two-lengths",
        "length-of-5000-digits",
        "length-in-superscript",
    ],
)
async def test_api_unframeable_requests_are_answered_and_the_connection_closed(
    store_path: str, event_log: RecordingEventLog, raw: bytes, status: int, reason: str
) -> None:
    config = api_config(store_path, {"v": "virtual://unframeable"})

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        await conversation.send(raw)
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

    assert answer.status == status
    assert answer.json()["error"] == (reason or "headers-too-large")
    assert answer.headers["connection"] == "close" and closed


async def test_api_expect_100_continue_is_honoured(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://continue"})
    body = json.dumps({"code": WATER}).encode()

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        await conversation.send(
            b"POST /v1/check HTTP/1.1\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(conversation.reader.readuntil(b"\r\n\r\n"), 5)
        await conversation.send(body)
        answer = await conversation.answer()
        conversation.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.status == 200 and answer.json()["ki"] == WATER_KI


async def test_api_http_1_0_and_connection_close_end_the_connection(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://close"})

    async with running(config, event_log):
        closing = []
        for raw in (
            b"GET /v1/status HTTP/1.0\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n",
        ):
            conversation = await Conversation.unix(config.api.socket)
            await conversation.send(raw)
            answer = await conversation.answer()
            closing.append((answer.status, await conversation.closed_by_server()))
            conversation.close()

    assert closing == [(200, True), (200, True)]


# --------------------------------------------------------------------------------------------
# TCP: token, loopback, CORS

TOKEN = "kiosk-screen-7f3a9c1e5b2d4f60"


def tcp_config(store_path: str, tmp_path: Path, name: str, **api: Any) -> Any:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    settings = {"listen": "127.0.0.1:0", "token_file": str(token_file), **api}
    return api_config(store_path, {"v": f"virtual://{name}"}, **settings)


async def test_api_tcp_needs_the_bearer_token(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "tcp-token")

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        host, port = service.api.tcp_address
        refusals_closed = []

        async def refused(
            headers: dict[str, str], target: str = "/v1/status", method: str = "GET"
        ) -> Answer:
            # Each refusal ends its connection: a client without the token keeps none open.
            conversation = await Conversation.tcp(host, port)
            answer = await conversation.request(method, target, headers=headers)
            refusals_closed.append(
                answer.headers["connection"] == "close" and await conversation.closed_by_server()
            )
            conversation.close()
            return answer

        missing = await refused({})
        wrong = await refused({"Authorization": f"Bearer {TOKEN}x"})
        basic = await refused({"Authorization": f"Basic {TOKEN}"})
        unknown_path = await refused({}, "/v1/secret-things")
        # Refused for another reason first, or never asked for the token: closed as well.
        bad_origin = await refused({"Origin": "http://evil.example"})
        preflight = await refused({"Origin": "http://evil.example"}, method="OPTIONS")
        conversation = await Conversation.tcp(host, port)
        right = await conversation.request(
            "POST",
            "/v1/check",
            {"code": WATER},
            headers={"Authorization": f"bearer {TOKEN}"},
        )
        kept = right.headers["connection"] == "keep-alive"
        conversation.close()
        # The Unix socket needs no token.
        local = await Conversation.unix(config.api.socket)
        assert (await local.request("GET", "/v1/status")).status == 200
        local.close()

    for refused in (missing, wrong, basic, unknown_path):
        assert refused.status == 401
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == 'Bearer realm="markd"'
    assert bad_origin.status == preflight.status == 403
    assert refusals_closed == [True] * 6
    assert right.status == 200 and right.json()["ki"] == WATER_KI and kept
    refusals = [m for k, m, _ in event_log.events if "without a valid token" in m]
    assert len(refusals) == 1  # rate-limited: one record for four refusals in a minute
    assert TOKEN not in event_log.text


async def test_api_tcp_without_a_token_does_not_start(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = api_config(store_path, {"v": "virtual://no-token"}, listen="127.0.0.1:0")

    with pytest.raises(ConfigError, match="api-token"):
        async with running(config, event_log):
            pass
    assert not Path(config.api.socket).exists()


async def test_api_tcp_token_from_a_systemd_credential(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = api_config(store_path, {"v": "virtual://credential"}, listen="127.0.0.1:0")

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        conversation = await Conversation.tcp(*service.api.tcp_address)
        answer = await conversation.request(
            "GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        conversation.close()

    assert answer.status == 200 and answer.json()["api"]["tcp"].startswith("127.0.0.1:")


async def test_api_tcp_refuses_a_non_loopback_address_unless_allowed(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "anywhere", listen="0.0.0.0:0")

    with pytest.raises(ConfigError, match="not a loopback address"):
        async with running(config, event_log):
            pass
    assert not Path(config.api.socket).exists()

    allowed = tcp_config(store_path, tmp_path, "anywhere2", listen="0.0.0.0:0", allow_remote=True)
    async with running(allowed, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        assert service.api.tcp_address[0] == "0.0.0.0"


async def test_api_cors_only_for_configured_origins(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    screen = "http://localhost:8080"
    config = tcp_config(store_path, tmp_path, "cors", allowed_origins=(screen,))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        # A preflight carries no token (browsers never send one): its connection is closed
        # after the answer, as every tokenless one on TCP, and the browser opens another.
        asking = await Conversation.tcp(*service.api.tcp_address)
        preflight = await asking.request(
            "OPTIONS",
            "/v1/check",
            headers={
                "Origin": screen,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        preflight_closed = await asking.closed_by_server()
        asking.close()
        conversation = await Conversation.tcp(*service.api.tcp_address)
        allowed = await conversation.request(
            "POST", "/v1/check", {"code": WATER}, headers={**auth, "Origin": screen}
        )
        foreign = await conversation.request(
            "POST", "/v1/check", {"code": WATER}, headers={**auth, "Origin": "http://evil.test"}
        )
        no_origin = await conversation.request("GET", "/v1/status", headers=auth)
        conversation.close()
        asking = await Conversation.tcp(*service.api.tcp_address)
        foreign_preflight = await asking.request(
            "OPTIONS", "/v1/check", headers={"Origin": "http://evil.test"}
        )
        asking.close()

    assert preflight.status == 204 and preflight.body == b"" and preflight_closed
    assert preflight.headers["access-control-allow-origin"] == screen
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert allowed.status == 200 and allowed.headers["access-control-allow-origin"] == screen
    assert allowed.headers["vary"] == "Origin"
    assert foreign.status == 403 and foreign.json()["error"] == "origin-not-allowed"
    assert "access-control-allow-origin" not in foreign.headers
    assert foreign_preflight.status == 403
    assert no_origin.status == 200 and "access-control-allow-origin" not in no_origin.headers


# --------------------------------------------------------------------------------------------
# Receipts


async def test_api_receipts_without_a_printer_answer_no_printer(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://no-printer"})

    async with running(config, event_log):
        conversation = await Conversation.unix(config.api.socket)
        answers = [
            await conversation.request("GET", "/v1/receipt"),
            await conversation.request("POST", "/v1/receipt", {}),
            await conversation.request(
                "POST", "/v1/receipt/items", {"code": WATER, "name": "Вода", "price_kopecks": 1}
            ),
            await conversation.request("POST", "/v1/receipt/close"),
            await conversation.request("POST", "/v1/receipt/cancel"),
        ]
        conversation.close()

    assert [(a.status, a.json()["error"]) for a in answers] == [(503, "no-printer")] * 5
    assert event_log.count("verdict") == 0  # no check was made for an item with no receipt


class ShopSession:
    """A sale session with explicit behaviour: one receipt at a time (a unit added with none
    open opens a sale), each unit once, items with their verdict's decision and tag 1265,
    payments that must cover the total (none given: one electronic payment of the total)."""

    def __init__(self) -> None:
        self.receipt: dict[str, Any] | None = None
        self.codes: list[str] = []
        self.number = 0

    def _open_receipt(self) -> dict[str, Any]:
        if self.receipt is None:
            raise ReceiptError("no receipt is open", "receipt-not-open")
        return self.receipt

    async def open(self, request: OpenReceipt) -> dict[str, Any]:
        if self.receipt is not None:
            raise ReceiptError("a receipt is already open", "receipt-open")
        self.receipt = {"kind": request.kind, "items": []}
        return self.receipt

    async def add(self, item: ReceiptItem, verdict: Verdict) -> dict[str, Any]:
        if self.receipt is None:
            await self.open(OpenReceipt())
        receipt = self._open_receipt()
        if any(i["ki"] == verdict.ki for i in receipt["items"]):
            raise ReceiptError("this unit is already in the receipt", "duplicate-unit")
        self.codes.append(item.code)
        receipt["items"].append(
            {
                "name": item.name,
                "price_kopecks": item.price_kopecks,
                "tax": item.tax or "none",
                "ki": verdict.ki,
                "decision": verdict.decision,
                "tag1265": verdict.tag1265,
            }
        )
        return receipt

    async def close(
        self,
        payments: tuple[Payment, ...],
        *,
        receipt_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        receipt = self._open_receipt()
        total = sum(i["price_kopecks"] for i in receipt["items"])
        payments = payments or (Payment(total, "electronically"),)
        if sum(p.amount_kopecks for p in payments) < total:
            raise ReceiptInputError("the payments do not cover the total", "underpaid")
        self.number += 1
        closed = {
            **receipt,
            "total_kopecks": total,
            "payments": [[p.type, p.amount_kopecks] for p in payments],
            "fiscal_document": self.number,
        }
        self.receipt = None
        return closed

    async def cancel(self) -> dict[str, Any]:
        receipt = self._open_receipt()
        self.receipt = None
        return {**receipt, "cancelled": True}

    async def current(self) -> dict[str, Any] | None:
        return self.receipt

    async def lookup(self, receipt_id: str) -> dict[str, Any] | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"model": "shop session", "receipt_open": self.receipt is not None}


async def test_api_a_sale_through_the_receipt_endpoints(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"v": "virtual://sale"})
    block(config, DAIRY_KI)
    session = ShopSession()
    water = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
    shoes = {"code": SHOES, "name": "Кроссовки", "price_kopecks": 599000, "tax": "vat20"}

    async with running(config, event_log) as service:
        service.receipts = session
        conversation = await Conversation.unix(config.api.socket)

        async def call(method: str, target: str, body: Any = None) -> tuple[int, Any]:
            answer = await conversation.request(method, target, body)
            return answer.status, answer.json()

        assert await call("GET", "/v1/receipt") == (200, {"receipt": None})
        status, body = await call("POST", "/v1/receipt/close")
        assert (status, body["error"]) == (409, "receipt-not-open")
        assert await call("POST", "/v1/receipt", {}) == (
            201,
            {"receipt": {"kind": "sell", "items": []}},
        )
        status, body = await call("POST", "/v1/receipt")
        assert (status, body["error"]) == (409, "receipt-open")
        assert (await call("POST", "/v1/receipt", {"kind": "refund"}))[0] == 400

        status, body = await call("POST", "/v1/receipt/items", water)
        assert status == 200 and body["verdict"]["decision"] == "allow"
        assert body["verdict"]["ki"] == WATER_KI
        status, body = await call("POST", "/v1/receipt/items", shoes)
        assert status == 200
        assert [(i["ki"], i["tax"]) for i in body["receipt"]["items"]] == [
            (WATER_KI, "none"),
            (SHOES_KI, "vat20"),
        ]
        status, body = await call("POST", "/v1/receipt/items", water)
        assert (status, body["error"]) == (409, "duplicate-unit")
        status, body = await call(
            "POST", "/v1/receipt/items", {"code": DAIRY, "name": "Кефир", "price_kopecks": 9900}
        )
        assert (status, body["error"]) == (409, "code-not-allowed")
        assert body["verdict"]["reason"] == "blocked-locally" and body["verdict"]["ki"] == DAIRY_KI
        for bad in (
            {**water, "price_kopecks": -1},
            {**water, "name": " "},
            {**water, "price_kopecks": 89.9},
            {**water, "price_kopecks": True},
            {**water, "tax": 20},
            {**water, "quantity": 2},
            {"name": "Вода", "price_kopecks": 1},
        ):
            assert (await call("POST", "/v1/receipt/items", bad))[0] == 400, bad

        status, body = await call(
            "POST", "/v1/receipt/close", {"payments": [{"type": "cash", "amount_kopecks": 100}]}
        )
        assert (status, body["error"]) == (422, "underpaid")
        for bad_payments in (
            [{"type": "card", "amount_kopecks": 1}],
            [{"type": "cash"}],
            [{"type": "cash", "amount_kopecks": 0}],
            ["cash"],
        ):
            assert (await call("POST", "/v1/receipt/close", {"payments": bad_payments}))[0] == 400
        live = (await call("GET", "/v1/status"))[1]["printer"]
        assert live == {"model": "shop session", "receipt_open": True}

        status, body = await call(
            "POST",
            "/v1/receipt/close",
            {
                "payments": [
                    {"type": "electronically", "amount_kopecks": 600000},
                    {"type": "cash", "amount_kopecks": 7990},
                ]
            },
        )
        assert status == 200
        assert body["receipt"]["total_kopecks"] == 607990
        assert body["receipt"]["fiscal_document"] == 1
        assert await call("GET", "/v1/receipt") == (200, {"receipt": None})

        # A return takes a unit whatever its verdict: the recalled kefir comes back.
        await call("POST", "/v1/receipt", {"kind": "return"})
        kefir = {"code": DAIRY, "name": "Кефир", "price_kopecks": 9900}
        status, body = await call("POST", "/v1/receipt/items", kefir)
        assert status == 200 and body["verdict"]["reason"] == "blocked-locally"
        assert body["receipt"]["items"][0]["decision"] == "deny"
        status, body = await call("POST", "/v1/receipt/close")  # no body: the default payment
        assert status == 200 and body["receipt"]["kind"] == "return"
        assert body["receipt"]["payments"] == [["electronically", 9900]]

        # A unit added with no receipt open starts a sale.
        status, body = await call("POST", "/v1/receipt/items", water)
        assert status == 200 and body["receipt"]["kind"] == "sell"
        status, body = await call("POST", "/v1/receipt/cancel")
        assert status == 200 and body["receipt"]["cancelled"] is True
        assert (await call("POST", "/v1/receipt/cancel", {"now": True}))[0] == 400
        conversation.close()

    # The session got the full codes (the printer needs them); nothing else did.
    assert session.codes == [WATER, SHOES, DAIRY, WATER]
    assert WATER_TAIL not in event_log.text and DAIRY_TAIL not in event_log.text
    assert WATER_TAIL not in repr(ReceiptItem(code=WATER, name="x", price_kopecks=1))


async def test_api_a_failing_sale_session_answers_500_and_the_daemon_goes_on(
    store_path: str, event_log: RecordingEventLog
) -> None:
    class BrokenSession(ShopSession):
        async def current(self) -> dict[str, Any] | None:
            raise KeyError("bug in the session")

        async def lookup(self, receipt_id: str) -> dict[str, Any] | None:
            raise KeyError(receipt_id)

    rid = "6b1d0c52-3f0e-4f4e-9a59-5b7f3a0c2d18"
    config = api_config(store_path, {"v": "virtual://broken"})
    async with running(config, event_log) as service:
        service.receipts = BrokenSession()
        conversation = await Conversation.unix(config.api.socket)
        broken = await conversation.request("GET", "/v1/receipt")
        by_id = await conversation.request("GET", f"/v1/receipts/{rid}")
        after = await conversation.request("GET", "/v1/status")
        conversation.close()

    assert broken.status == 500 and broken.json() == {
        "error": "internal-error",
        "message": "KeyError",
    }
    assert after.status == 200
    assert any("GET /v1/receipt failed: KeyError" in m for _, m, _ in event_log.events)
    # The route is logged, not the request's target (docs/api.md, "Logs").
    assert by_id.status == 500
    assert any("GET /v1/receipts/{id} failed: KeyError" in m for _, m, _ in event_log.events)
    assert rid not in event_log.text


async def test_api_a_code_with_a_lone_surrogate_gets_400_not_500(
    store_path: str, event_log: RecordingEventLog
) -> None:
    """JSON may escape half a surrogate pair (``"\\ud800"``): no text, and no UTF-8 for the
    check. It is refused with the field and the position, before the service sees it."""
    config = api_config(store_path, {"v": "virtual://surrogate"})
    water = WATER.replace(GS, "\\u001d")  # the code as JSON writes it
    half = water + "\\ud800"  # then half a surrogate pair
    async with running(config, event_log) as service:
        session = ShopSession()
        service.receipts = session
        conversation = await Conversation.unix(config.api.socket)
        check = await conversation.request("POST", "/v1/check", f'{{"code":"{half}"}}'.encode())
        item = await conversation.request(
            "POST",
            "/v1/receipt/items",
            f'{{"code":"{water}","name":"\\udc00","price_kopecks":100}}'.encode(),
        )
        key = await conversation.request("POST", "/v1/check", b'{"\\ud83d":1}')
        after = await conversation.request("GET", "/v1/status")  # the connection stays usable
        conversation.close()

    assert (check.status, check.json()["error"]) == (400, "bad-request")
    position = len(WATER) + 1
    assert check.json()["message"] == (
        f"code: a lone surrogate (U+D800) at character {position} is not text"
    )
    assert (item.status, item.json()["message"]) == (
        400,
        "name: a lone surrogate (U+DC00) at character 1 is not text",
    )
    assert (key.status, key.json()["message"]) == (
        400,
        "a field name: a lone surrogate (U+D83D) at character 1 is not text",
    )
    assert after.status == 200
    assert event_log.count("verdict") == 0 and session.codes == []
    assert WATER_TAIL not in check.body.decode()


async def test_api_a_request_that_makes_a_route_fail_leaves_no_traceback_nor_itself_behind(
    store_path: str, event_log: RecordingEventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A request whose data ends up in an exception's message (here the item's name): the
    answer is 500 with the exception's type, the journal and the event stream get the route
    and the type only, never a traceback or what the client sent. (A name with control
    characters never gets this far: the API refuses it with 400, tests/unit/test_clean_text.py.)"""
    marker = "pwned «EVIL-NAME»"

    class FailingSession(ShopSession):
        async def add(self, item: ReceiptItem, verdict: Verdict) -> dict[str, Any]:
            raise ValueError(f"cannot sell {item.name} ({item.code})")

    config = api_config(store_path, {"v": "virtual://failing"})
    async with running(config, event_log) as service:
        service.receipts = FailingSession()
        listener = await Conversation.unix(config.api.socket)
        stream = await EventStream.open(listener)
        conversation = await Conversation.unix(config.api.socket)
        failed = await conversation.request(
            "POST",
            "/v1/receipt/items",
            {"code": WATER, "name": marker, "price_kopecks": 100},
        )
        conversation.close()
        notice = None
        while notice is None:
            event = await stream.event()
            assert event is not None
            if event["kind"] == "source-notice":
                notice = event
        listener.close()

    assert failed.status == 500 and failed.json() == {
        "error": "internal-error",
        "message": "ValueError",
    }
    assert notice["data"]["message"] == "control API: POST /v1/receipt/items failed: ValueError"
    published = stream.raw.decode("utf-8")
    journal = event_log.text + repr(event_log.events)
    for text in (published, journal):
        assert "EVIL-NAME" not in text and "pwned" not in text and WATER_TAIL not in text
        assert "Traceback" not in text
    assert not any(record.exc_info for record in caplog.records)


# --------------------------------------------------------------------------------------------
# Reload


async def test_api_reload_applies_a_new_configuration_or_answers_why_not(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://reload-front"})
    loads: list[Any] = [
        dataclasses.replace(
            config,
            scanners={
                **config.scanners,
                "side": ScannerConfig(url="virtual://reload-side"),
            },
        ),
        ConfigError("bad", ["markd.toml:4: [check] mode: expected one of …"]),
    ]

    def loader() -> Any:
        item = loads.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async with running(config, event_log, config_loader=loader):
        conversation = await Conversation.unix(config.api.socket)
        applied = await conversation.request("POST", "/v1/reload")
        scanners = (await conversation.request("GET", "/v1/status")).json()["scanners"]
        refused = await conversation.request("POST", "/v1/reload", {})
        with_body = await conversation.request("POST", "/v1/reload", {"force": True})
        conversation.close()

    assert applied.status == 200
    assert applied.json()["ok"] is True and applied.json()["generation"] == 1
    assert "started side" in applied.json()["message"]
    assert sorted(scanners) == ["front", "side"]
    assert refused.status == 409 and refused.json()["error"] == "reload-refused"
    assert refused.json()["generation"] == 2 and "[check] mode" in refused.json()["message"]
    assert with_body.status == 400 and loads == []  # not reloaded a third time
