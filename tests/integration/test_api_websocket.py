"""``GET /v1/events`` as a WebSocket, and the browser sessions that open it: against a running
service, over its real Unix socket and loopback TCP, with a client written from RFC 6455
(tests/websocket_client.py), not from the wsproto the server frames with."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Conversation, EventStream, api_config, running
from conftest import WATER, WATER_KI, RecordingEventLog, wait_until
from markd.scanners import get_virtual
from websocket_client import BINARY, CLOSE, PING, PONG, TEXT, WebSocketClient, frame_bytes

TOKEN = "kiosk-screen-5c1d9e0f7a3b4e21"
SCREEN = "http://localhost:8080"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tcp_config(store_path: str, tmp_path: Path, name: str, **api: Any) -> Any:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    settings = {
        "listen": "127.0.0.1:0",
        "token_file": str(token_file),
        "allowed_origins": (SCREEN,),
        **api,
    }
    return api_config(store_path, {"front": f"virtual://{name}"}, **settings)


def tcp_address(service: Any) -> tuple[str, int]:
    assert service.api is not None and service.api.tcp_address is not None
    return service.api.tcp_address


async def open_session(service: Any, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """``POST /v1/session`` on TCP with the token: the cookie's value and the ticket."""
    conversation = await Conversation.tcp(*tcp_address(service))
    answer = await conversation.request("POST", "/v1/session", headers={**AUTH, **(headers or {})})
    conversation.close()
    assert answer.status == 201, answer.body
    cookie = answer.headers["set-cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "markd_session"
    return value, answer.json()["ticket"]


# --------------------------------------------------------------------------------------------
# Events


async def test_websocket_events_are_the_sse_events_one_text_message_each(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-same"})

    async with running(config, event_log) as service:
        sse = await EventStream.open(
            await Conversation.unix(config.api.socket), "/v1/events?kinds=scan,verdict"
        )
        ws = await WebSocketClient.unix(config.api.socket, "/v1/events?kinds=scan,verdict")
        await wait_until(lambda: service.events.subscribers == 2)
        status = await (await Conversation.unix(config.api.socket)).request("GET", "/v1/status")
        metrics = await (await Conversation.unix(config.api.socket)).request("GET", "/metrics")
        service.events.publish("source-notice", {"message": "not asked for"})
        get_virtual("ws-same").scan(WATER)
        sent = [await sse.block(), await sse.block(), await sse.block()]  # retry:, scan, verdict
        received = [await ws.message(), await ws.message()]
        ws.close()
        sse.conversation.close()

    assert ws.status == 101
    assert status.json()["api"]["event_clients"] == 2
    assert "\nmarkd_api_event_clients 2.0\n" in metrics.body.decode()
    assert received == [block["data"] for block in sent[1:]]  # the same JSON, byte for byte
    scan, verdict = (json.loads(text) for text in received)
    assert scan["kind"] == "scan" and verdict["kind"] == "verdict"
    assert verdict["id"] == sent[2]["id"] and verdict["data"]["ki"] == WATER_KI
    assert all(frame.opcode == TEXT for frame in ws.frames)
    assert "938p9E" not in "".join(received)  # the crypto tail, as on SSE


async def test_websocket_since_replays_what_was_missed_or_a_gap(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-since"})

    async with running(config, event_log) as service:
        first = service.events.publish("source-notice", {"message": "read"})
        service.events.publish("source-notice", {"message": "missed one"})
        service.events.publish("verdict", {"message": "missed two"})
        again = await WebSocketClient.unix(config.api.socket, f"/v1/events?since={first.id}")
        filtered = await WebSocketClient.unix(
            config.api.socket, f"/v1/events?kinds=verdict&since={first.id}"
        )
        lost = await WebSocketClient.unix(config.api.socket, "/v1/events?since=0a1b2c3d-5")
        await wait_until(lambda: service.events.subscribers == 3)
        service.events.publish("verdict", {"message": "live"})
        replayed = await again.messages_until('"live"')
        replayed_verdicts = await filtered.messages_until('"live"')
        after_gap = await lost.messages_until('"live"')
        for client in (again, filtered, lost):
            client.close()

    messages = [json.loads(text)["data"]["message"] for text in replayed]
    assert messages == ["missed one", "missed two", "live"]
    assert [json.loads(text)["data"]["message"] for text in replayed_verdicts] == [
        "missed two",
        "live",
    ]
    gap, live = (json.loads(text) for text in after_gap)
    assert gap["kind"] == "gap" and gap["data"]["reason"] == "restarted"
    assert live["data"]["message"] == "live"


async def test_websocket_pings_and_a_client_that_answers_stays(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-ping"})

    async with running(config, event_log) as service:
        assert service.api is not None
        service.api.heartbeat_s = 0.05
        service.api.pong_timeout_s = 0.5  # room for a loaded machine; the silent one waits
        # (Verdicts only: the record of the silent one's drop is an event too.)
        answering = await WebSocketClient.unix(config.api.socket, "/v1/events?kinds=verdict")
        silent = await WebSocketClient.unix(config.api.socket, "/v1/events?kinds=verdict")
        await wait_until(lambda: service.events.subscribers == 2)
        pings = []
        for _ in range(12):  # 12 heartbeats; the silent one is dropped meanwhile or soon after
            frame = await answering.frame()
            assert frame is not None and frame.opcode == PING
            pings.append(frame.payload)
            await answering.send_frame(PONG, frame.payload)
        silent_close = await silent.closing_frame()
        await wait_until(lambda: service.events.subscribers == 1)
        service.events.publish("verdict", {"message": "still here"})
        still = await answering.messages_until("still here")
        answering.close()
        silent.close()

    assert len(set(pings)) == 12  # a payload of its own each time
    assert silent_close is None or silent_close.close_code == 1008
    assert json.loads(still[-1])["data"]["message"] == "still here"
    notices = [m for k, m, _ in event_log.events if k == "source-notice" and "no pong" in m]
    assert len(notices) == 1


async def test_websocket_client_ping_gets_its_pong_and_small_messages_are_ignored(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-client-ping"})

    async with running(config, event_log) as service:
        client = await WebSocketClient.unix(config.api.socket)
        await wait_until(lambda: service.events.subscribers == 1)
        await client.send_frame(PING, b"are you there")
        pong = await client.frame()
        await client.send_frame(TEXT, b"keep-alive")  # some libraries send one: ignored
        await client.send_frame(BINARY, b"\x00\x01")
        await client.send_frame(TEXT, b"in two ", fin=False)
        await client.send_frame(0x0, b"parts")
        await asyncio.sleep(0.1)
        service.events.publish("source-notice", {"message": "after the chatter"})
        event = await client.event()
        client.close()

    assert pong is not None and pong.opcode == PONG and pong.payload == b"are you there"
    assert event is not None and event["data"]["message"] == "after the chatter"


async def test_websocket_close_handshake_and_the_daemon_stopping(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-close"})

    async with running(config, event_log) as service:
        leaving = await WebSocketClient.unix(config.api.socket)
        staying = await WebSocketClient.unix(config.api.socket, "/v1/events?kinds=service")
        await wait_until(lambda: service.events.subscribers == 2)
        await leaving.send_frame(CLOSE, (1000).to_bytes(2, "big") + b"bye")
        answer = await leaving.closing_frame()
        leaving_ended = await leaving.ended()
        await wait_until(lambda: service.events.subscribers == 1)

    stopping = await staying.event()
    final = await staying.closing_frame()
    assert answer is not None and answer.close_code == 1000 and leaving_ended
    assert stopping is not None and stopping["kind"] == "service-stopping"
    assert final is not None and final.close_code == 1001
    assert await staying.ended()


# --------------------------------------------------------------------------------------------
# What a client must not do


async def test_websocket_a_client_that_never_reads_is_dropped_and_scans_go_on(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-slow"})
    padding = "x" * 4000

    async with running(config, event_log) as service:
        assert service.api is not None
        service.api.event_queue_limit = 16
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(config.api.socket)
        slow.sendall(
            b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        screen = await WebSocketClient.unix(config.api.socket, "/v1/events?kinds=verdict")
        await wait_until(lambda: service.events.subscribers == 2)
        published = 0
        while service.events.dropped == 0 and published < 2000:
            for _ in range(8):  # half the queue at a time, never on the screen's kinds
                published += 1
                service.events.publish("scan", {"scanner": "load", "n": published, "pad": padding})
            await asyncio.sleep(0.01)
        assert service.events.dropped == 1, "the client that never reads was never dropped"
        await wait_until(lambda: service.events.subscribers == 1)
        get_virtual("ws-slow").scan(WATER)
        verdict = await asyncio.wait_for(screen.event(), 5)
        status = await (await Conversation.unix(config.api.socket)).request("GET", "/v1/status")
        screen.close()
        slow.close()

    assert verdict is not None and verdict["kind"] == "verdict"
    assert verdict["data"]["decision"] == "allow" and verdict["data"]["ki"] == WATER_KI
    assert verdict["data"]["latency_ms"] < 1500  # within the scan's budget, slow client or not
    assert status.json()["api"]["event_clients_dropped"] == 1
    notices = [m for k, m, _ in event_log.events if k == "source-notice" and "dropped" in m]
    assert len(notices) == 1 and "fell 16 events behind" in notices[0]


async def test_websocket_an_oversized_client_message_is_closed_with_1009(
    store_path: str, event_log: RecordingEventLog
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-big"})

    async with running(config, event_log) as service:
        one_frame = await WebSocketClient.unix(config.api.socket)
        in_pieces = await WebSocketClient.unix(config.api.socket)
        await wait_until(lambda: service.events.subscribers == 2)
        await one_frame.send_frame(TEXT, b"x" * 5000)
        for number in range(5):  # 5 fragments of 1000 bytes: one message of 5000
            await in_pieces.send_frame(BINARY if number == 0 else 0x0, b"y" * 1000, fin=False)
        closes = [await one_frame.closing_frame(), await in_pieces.closing_frame()]
        await wait_until(lambda: service.events.subscribers == 0)
        ended = [await one_frame.ended(), await in_pieces.ended()]

    assert [frame.close_code if frame else None for frame in closes] == [1009, 1009]
    assert ended == [True, True]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /v1/status HTTP/1.1\r\n\r\n",  # HTTP where frames belong
        b"\x81\x05hello",  # an unmasked client frame (RFC 6455 §5.1)
        b"\x8f\x80\x00\x00\x00\x00",  # a reserved opcode
        frame_bytes(TEXT, b"\xff\xfe not UTF-8"),
        b"\x89\xfe\x01\x00" + b"\x00" * 260,  # a ping longer than 125 bytes
    ],
)
async def test_websocket_garbage_after_the_handshake_is_closed_and_the_daemon_goes_on(
    store_path: str, event_log: RecordingEventLog, garbage: bytes
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-garbage"})

    async with running(config, event_log) as service:
        client = await WebSocketClient.unix(config.api.socket)
        await wait_until(lambda: service.events.subscribers == 1)
        await client.send(garbage)
        close = await client.closing_frame()
        ended = await client.ended()
        await wait_until(lambda: service.events.subscribers == 0)
        get_virtual("ws-garbage").scan(WATER)
        await wait_until(lambda: service.verdict_counts.total() == 1)
        status = await (await Conversation.unix(config.api.socket)).request("GET", "/v1/status")

    assert close is not None and close.close_code in (1002, 1007) and ended
    assert status.status == 200
    assert "internal-error" not in event_log.text and "Traceback" not in event_log.text
    assert "failed" not in event_log.text


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({"Sec-WebSocket-Version": "8"}, 426, "upgrade-required"),
        ({"Connection": "keep-alive"}, 400, "bad-request"),
        ({"Sec-WebSocket-Key": None}, 400, "bad-request"),
        ({"Host": None}, 400, "bad-request"),
    ],
)
async def test_websocket_a_bad_handshake_is_refused(
    store_path: str,
    event_log: RecordingEventLog,
    headers: dict[str, str | None],
    status: int,
    error: str,
) -> None:
    config = api_config(store_path, {"front": "virtual://ws-bad"})

    async with running(config, event_log) as service:
        reader, writer = await asyncio.open_unix_connection(config.api.socket)
        lines = {
            "Host": "localhost",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            **headers,
        }
        head = "GET /v1/events HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in lines.items() if v is not None
        )
        conversation = Conversation(reader, writer)
        await conversation.send((head + "\r\n").encode())
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()
        subscribers = service.events.subscribers

    assert answer.status == status and answer.json()["error"] == error and closed
    assert subscribers == 0
    if status == 426:
        assert answer.headers["sec-websocket-version"] == "13"


# --------------------------------------------------------------------------------------------
# Access: token, origin, session cookie, ticket


async def test_websocket_on_tcp_needs_the_token_and_an_allowed_origin(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-tcp")

    async with running(config, event_log) as service:
        address = tcp_address(service)
        # (Verdicts only: the refusals below are logged, and so published.)
        with_token = await WebSocketClient.tcp(address, "/v1/events?kinds=verdict", headers=AUTH)
        from_screen = await WebSocketClient.tcp(
            address, "/v1/events?kinds=verdict", headers={**AUTH, "Origin": SCREEN}
        )
        nothing = await WebSocketClient.tcp(address)
        wrong = await WebSocketClient.tcp(address, headers={"Authorization": "Bearer nope"})
        hijack = await WebSocketClient.tcp(address, headers={**AUTH, "Origin": "http://evil.test"})
        unix_hijack = await WebSocketClient.unix(
            config.api.socket, headers={"Origin": "http://evil.test"}
        )
        await wait_until(lambda: service.events.subscribers == 2)
        service.events.publish("verdict", {"message": "hello"})
        events = [await with_token.event(), await from_screen.event()]
        for client in (with_token, from_screen, nothing, wrong, hijack, unix_hijack):
            client.close()

    assert [with_token.status, from_screen.status] == [101, 101]
    assert [e["data"]["message"] for e in events if e] == ["hello", "hello"]
    assert [nothing.status, wrong.status] == [401, 401]
    assert nothing.json()["error"] == "unauthorized"
    assert [hijack.status, unix_hijack.status] == [403, 403]
    assert hijack.json()["error"] == "origin-not-allowed"
    assert "access-control-allow-origin" not in hijack.headers


async def test_session_cookie_opens_the_screens_routes_and_no_others(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-cookie")

    async with running(config, event_log) as service:
        address = tcp_address(service)
        conversation = await Conversation.tcp(*address)
        opened = await conversation.request(
            "POST", "/v1/session", headers={**AUTH, "Origin": SCREEN}
        )
        conversation.close()
        value = opened.headers["set-cookie"].split(";")[0].partition("=")[2]
        cookie = {"Cookie": f"theme=dark; markd_session={value}"}
        browser = {**cookie, "Origin": SCREEN}

        ws = await WebSocketClient.tcp(address, headers=browser)
        sse = await EventStream.open(await Conversation.tcp(*address), headers=browser)
        without_origin = await WebSocketClient.tcp(address, headers=cookie)
        foreign = await WebSocketClient.tcp(
            address, headers={**cookie, "Origin": "http://evil.test"}
        )
        await wait_until(lambda: service.events.subscribers == 2)
        service.events.publish("source-notice", {"message": "for the screen"})
        ws_event, sse_event = await ws.event(), await sse.event()

        conversation = await Conversation.tcp(*address)
        status = await conversation.request("GET", "/v1/status", headers=browser)
        receipt = await conversation.request("GET", "/v1/receipt", headers=browser)
        refused = {}
        for method, target, body in [
            ("POST", "/v1/check", {"code": WATER}),
            ("POST", "/v1/reload", None),
            ("POST", "/v1/session", None),
            ("GET", "/metrics", None),
        ]:
            asking = await Conversation.tcp(*address)
            refused[target] = (await asking.request(method, target, body, browser)).status
            asking.close()
        revoked = await conversation.request("DELETE", "/v1/session", headers=browser)
        conversation.close()
        after = await WebSocketClient.tcp(address, headers=browser)
        for client in (ws, without_origin, foreign, after):
            client.close()
        sse.conversation.close()

    set_cookie = opened.headers["set-cookie"]
    assert opened.status == 201 and set(opened.json()) == {"ticket", "ticket_s", "session_s"}
    assert opened.json()["session_s"] == 24 * 3600 and opened.json()["ticket_s"] == 30
    assert set_cookie == (f"markd_session={value}; HttpOnly; SameSite=Strict; Path=/v1")
    assert len(value) == 43 and value not in opened.body.decode()  # HttpOnly: not in the body
    assert opened.headers["access-control-allow-credentials"] == "true"
    assert ws.status == 101 and sse.head.status == 200
    assert ws_event and sse_event and ws_event["id"] == sse_event["id"]
    assert [without_origin.status, foreign.status] == [403, 403]
    assert status.status == 200 and receipt.status == 503  # no printer: but let in
    assert status.headers["access-control-allow-credentials"] == "true"
    assert refused == {"/v1/check": 401, "/v1/reload": 401, "/v1/session": 401, "/metrics": 401}
    assert revoked.status == 200 and revoked.json() == {"revoked": True}
    assert "Max-Age=0" in revoked.headers["set-cookie"]
    assert after.status == 401


async def test_session_end_ends_the_event_streams_it_opened(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-revoke")

    async with running(config, event_log) as service:
        assert service.api is not None
        address = tcp_address(service)
        revoked, _ = await open_session(service)
        other, _ = await open_session(service)
        browser = {"Cookie": f"markd_session={revoked}", "Origin": SCREEN}
        ws = await WebSocketClient.tcp(address, "/v1/events?kinds=verdict", headers=browser)
        sse = await EventStream.open(
            await Conversation.tcp(*address), "/v1/events?kinds=verdict", browser
        )
        kept = await WebSocketClient.tcp(
            address,
            "/v1/events?kinds=verdict",
            headers={"Cookie": f"markd_session={other}", "Origin": SCREEN},
        )
        with_token = await WebSocketClient.tcp(address, "/v1/events?kinds=verdict", headers=AUTH)
        await wait_until(lambda: service.events.subscribers == 4)
        conversation = await Conversation.tcp(*address)
        await conversation.request("DELETE", "/v1/session", headers=browser)
        conversation.close()
        ws_close = await ws.closing_frame()
        await sse.block()  # retry:
        sse_end = await sse.block()
        await wait_until(lambda: service.events.subscribers == 2)

        # A session whose lifetime passes while its stream runs: the open stream is a use
        # (a screen showing the till), so it lives on; revoked, it ends.
        service.api.sessions.session_s = 0.3
        short, _ = await open_session(service)
        short_session = {"Cookie": f"markd_session={short}", "Origin": SCREEN}
        expiring = await WebSocketClient.tcp(
            address, "/v1/events?kinds=verdict", headers=short_session
        )
        await wait_until(lambda: service.events.subscribers == 3)
        await asyncio.sleep(0.9)
        service.events.publish("verdict", {"message": "for the others"})
        others = [await kept.event(), await with_token.event(), await expiring.event()]
        conversation = await Conversation.tcp(*address)
        await conversation.request("DELETE", "/v1/session", headers=short_session)
        conversation.close()
        expiry_close = await expiring.closing_frame()
        for client in (ws, kept, with_token, expiring):
            client.close()
        sse.conversation.close()

    assert ws_close is not None and ws_close.close_code == 1008
    assert b"session ended" in ws_close.payload
    assert sse_end is None  # the stream ended
    assert expiring.status == 101
    assert expiry_close is not None and expiry_close.close_code == 1008
    assert [e["data"]["message"] for e in others if e] == ["for the others"] * 3


async def test_session_expires_and_the_unix_socket_needs_no_token(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-expiry", session_hours=1)

    async with running(config, event_log) as service:
        assert service.api is not None
        conversation = await Conversation.unix(config.api.socket)
        opened = await conversation.request("POST", "/v1/session")
        conversation.close()
        value = opened.headers["set-cookie"].split(";")[0].partition("=")[2]
        browser = {"Cookie": f"markd_session={value}", "Origin": SCREEN}
        before = await WebSocketClient.tcp(tcp_address(service), headers=browser)
        before.close()
        service.api.sessions.session_s = 0.0  # as if its hour had passed
        value, _ = await open_session(service)
        browser = {"Cookie": f"markd_session={value}", "Origin": SCREEN}
        expired = await WebSocketClient.tcp(tcp_address(service), headers=browser)
        expired.close()

    assert opened.status == 201 and "Max-Age" not in opened.headers["set-cookie"]
    assert opened.json()["session_s"] == 3600
    assert before.status == 101 and expired.status == 401


async def test_ticket_opens_one_event_stream_once_and_expires(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-ticket")

    async with running(config, event_log) as service:
        assert service.api is not None
        address = tcp_address(service)
        _, ticket = await open_session(service)
        first = await WebSocketClient.tcp(address, f"/v1/events?kinds=verdict&ticket={ticket}")
        again = await WebSocketClient.tcp(address, f"/v1/events?ticket={ticket}")
        _, ticket = await open_session(service)
        sse = await EventStream.open(
            await Conversation.tcp(*address), f"/v1/events?ticket={ticket}"
        )
        _, ticket = await open_session(service)
        conversation = await Conversation.tcp(*address)
        elsewhere = await conversation.request("GET", f"/v1/status?ticket={ticket}")
        conversation.close()
        service.api.sessions.ticket_s = 0.05
        _, ticket = await open_session(service)
        await asyncio.sleep(0.1)
        late = await WebSocketClient.tcp(address, f"/v1/events?ticket={ticket}")
        _, ticket = await open_session(service)
        from_foreign_page = await WebSocketClient.tcp(
            address, f"/v1/events?ticket={ticket}", headers={"Origin": "http://evil.test"}
        )
        for client in (first, again, late, from_foreign_page):
            client.close()
        sse.conversation.close()

    assert first.status == 101 and sse.head.status == 200
    assert again.status == 401  # used up
    assert elsewhere.status == 401  # events only
    assert late.status == 401  # expired
    assert from_foreign_page.status == 403


async def test_no_token_ticket_or_cookie_reaches_the_log(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-secrets")

    async with running(config, event_log) as service:
        assert service.api is not None
        service.api.heartbeat_s = 0.05
        address = tcp_address(service)
        value, ticket = await open_session(service)
        secrets_sent = [TOKEN, value, ticket]
        clients = [
            await WebSocketClient.tcp(address, f"/v1/events?ticket={ticket}"),
            await WebSocketClient.tcp(address, f"/v1/events?ticket={ticket}"),  # refused
            await WebSocketClient.tcp(address, headers={"Authorization": f"Bearer {TOKEN}x"}),
            await WebSocketClient.tcp(address, f"/v1/events?kinds=nope&ticket={ticket}x"),
            await WebSocketClient.tcp(
                address, headers={"Cookie": f"markd_session={value}", "Origin": "http://e.test"}
            ),
            await WebSocketClient.tcp(address, headers={"Cookie": f"markd_session={value}"}),
        ]
        # One that never answers a ping is dropped (and logged), one that sends garbage closed.
        await wait_until(lambda: any("no pong" in m for _, m, _ in event_log.events))
        await clients[0].send(b"\x81\x05hello")
        await clients[0].closing_frame()
        for client in clients:
            client.close()

    assert [client.status for client in clients] == [101, 401, 401, 401, 403, 403]
    logged = event_log.text + repr(event_log.events)
    assert "no pong" in logged and "refused" in logged  # the log did get records
    assert [secret for secret in secrets_sent if secret in logged] == []
    assert "ticket=" not in logged


async def test_preflight_allows_credentials_and_delete(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "ws-preflight")

    async with running(config, event_log) as service:
        conversation = await Conversation.tcp(*tcp_address(service))
        preflight = await conversation.request(
            "OPTIONS",
            "/v1/session",
            headers={"Origin": SCREEN, "Access-Control-Request-Method": "DELETE"},
        )
        conversation.close()

    assert preflight.status == 204
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
