"""The customer screen's files at ``/screen/`` (``[api] screen``) and how its page is let in:
the fixed table of files and their headers, loopback only, the ticket exchanged for a cookie,
and a same-origin request of the page without ``Origin``. Against a running service over its
real loopback TCP listener (tests/browser drives the page itself in Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_api_websocket import AUTH, open_session, tcp_address, tcp_config
from test_api_websocket import SCREEN as SCREEN_ORIGIN

from api_helpers import Conversation, running
from conftest import RecordingEventLog
from markd.api.screen import CONTENT_SECURITY_POLICY
from markd.api.sessions import MAX_SESSIONS
from markd.errors import ConfigError

RECEIPT = "/v1/receipts/6b1d0c52-3f0e-4f4e-9a59-5b7f3a0c2d18"


def screen_config(store_path: str, tmp_path: Path, **api: Any) -> Any:
    return tcp_config(store_path, tmp_path, "screen", **{"screen": True, **api})


async def get(service: Any, target: str, headers: dict[str, str] | None = None) -> Any:
    """``GET target`` on TCP with ``headers`` (``Host: localhost`` unless they name one)."""
    headers = {"Host": "localhost", **(headers or {})}
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    conversation = await Conversation.tcp(*tcp_address(service))
    try:
        await conversation.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await conversation.answer()
    finally:
        conversation.close()


async def test_the_screens_files_are_served_with_their_type_and_a_strict_policy(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        page = await get(service, "/screen/")  # no token: the files are public
        script = await get(service, "/screen/screen.js")
        style = await get(service, "/screen/screen.css")
        redirect = await get(service, "/screen")

    assert page.status == script.status == style.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    for answer in (page, script, style):
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert b'<script src="screen.js" defer></script>' in page.body
    assert b"Bearer" not in page.body + script.body  # no token in the page
    assert (redirect.status, redirect.headers["location"]) == (308, "/screen/")


@pytest.mark.parametrize(
    "target",
    [
        "/screen/index.html",
        "/screen/../v1/status",
        "/screen/%2e%2e/markd.toml",
        "/screen/screen.js/",
        "/screen/api-token",
        "/screen//etc/passwd",
    ],
)
async def test_only_the_files_of_the_table_exist(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, target: str
) -> None:
    (tmp_path / "api-token").write_text("x")
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        answer = await get(service, target)

    assert (answer.status, answer.json()["error"]) == (404, "not-found")


async def test_the_screen_takes_get_only(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        conversation = await Conversation.tcp(*tcp_address(service))
        answer = await conversation.request("POST", "/screen/", b"")
        conversation.close()

    assert (answer.status, answer.headers["allow"]) == (405, "GET")


async def test_without_screen_there_is_no_screen(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = tcp_config(store_path, tmp_path, "noscreen")
    async with running(config, event_log) as service:
        anonymous = await get(service, "/screen/")
        with_token = await get(service, "/screen/", AUTH)
        on_socket = await Conversation.unix(config.api.socket)
        unix = await on_socket.request("GET", "/screen/")
        on_socket.close()

    assert anonymous.status == 401
    assert with_token.status == unix.status == 404


@pytest.mark.parametrize(
    ("listen", "allow_remote", "problem"),
    [("", False, "needs \\[api\\] listen"), ("0.0.0.0:0", True, "loopback")],
)
async def test_the_screen_is_for_a_loopback_listener_only(
    store_path: str,
    tmp_path: Path,
    event_log: RecordingEventLog,
    listen: str,
    allow_remote: bool,
    problem: str,
) -> None:
    config = screen_config(store_path, tmp_path, listen=listen, allow_remote=allow_remote)

    with pytest.raises(ConfigError, match=problem):
        async with running(config, event_log):
            pass


async def test_a_ticket_is_exchanged_once_for_the_pages_own_cookie(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        _, ticket = await open_session(service)  # what the launcher does, with the token
        host, port = tcp_address(service)
        page = {"Origin": f"http://{host}:{port}"}
        conversation = await Conversation.tcp(host, port)
        exchanged = await conversation.request("POST", f"/v1/session?ticket={ticket}", b"", page)
        conversation.close()
        conversation = await Conversation.tcp(host, port)
        again = await conversation.request("POST", f"/v1/session?ticket={ticket}", b"", page)
        conversation.close()
        cookie = exchanged.headers["set-cookie"].split(";")[0]
        status = await get(service, "/v1/status", {**page, "Cookie": cookie})

    assert exchanged.status == 201 and cookie.startswith("markd_session=")
    assert exchanged.headers["access-control-allow-origin"] == page["Origin"]
    assert again.status == 401  # used up
    assert status.status == 200
    # The cookie only: a ticket's exchange mints no ticket, so a leaked one cannot renew itself.
    assert exchanged.json() == {"session_s": 86400}


async def test_tickets_do_not_push_out_the_screens_session(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """Sixteen sessions in use (the screen's among them): a ticket's exchange is refused
    rather than end one; the token's exchange may still make room."""
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        host, port = tcp_address(service)
        page = {"Origin": f"http://{host}:{port}"}
        tickets = []
        for _ in range(MAX_SESSIONS + 1):
            _, ticket = await open_session(service)  # the launcher's, with the token
            tickets.append(ticket)
        cookies = []
        for ticket in tickets[:MAX_SESSIONS]:
            conversation = await Conversation.tcp(host, port)
            answer = await conversation.request("POST", f"/v1/session?ticket={ticket}", b"", page)
            conversation.close()
            assert answer.status == 201, answer.json()
            cookies.append(answer.headers["set-cookie"].split(";")[0])
        for cookie in cookies:  # every page shows the till
            assert (await get(service, "/v1/status", {**page, "Cookie": cookie})).status == 200
        conversation = await Conversation.tcp(host, port)
        refused = await conversation.request("POST", f"/v1/session?ticket={tickets[-1]}", b"", page)
        conversation.close()
        still = [
            (await get(service, "/v1/status", {**page, "Cookie": cookie})).status
            for cookie in cookies
        ]

    assert refused.status == 503 and refused.json()["error"] == "too-many-sessions"
    assert still == [200] * MAX_SESSIONS


@pytest.mark.parametrize("demo_pay", [False, True])
async def test_a_cookie_closes_a_receipt_only_with_the_demo_setting(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, demo_pay: bool
) -> None:
    """The reference screen's «Оплатить» registers a receipt as paid with no payment taken: a
    session cookie may close only with ``[api] screen_demo_pay``, which the page reads from
    ``GET /v1/status``. (No printer here: let in, the close answers 503 ``no-printer``.)"""
    config = screen_config(store_path, tmp_path, screen_demo_pay=demo_pay)
    async with running(config, event_log) as service:
        cookie, _ = await open_session(service)
        host, port = tcp_address(service)
        page = {"Origin": f"http://{host}:{port}", "Cookie": f"markd_session={cookie}"}
        conversation = await Conversation.tcp(host, port)
        close = await conversation.request("POST", "/v1/receipt/close", b"", page)
        conversation.close()
        status = await get(service, "/v1/status", page)
        conversation = await Conversation.tcp(host, port)
        with_token = await conversation.request("POST", "/v1/receipt/close", b"", AUTH)
        conversation.close()

    assert close.status == (503 if demo_pay else 401)
    assert status.json()["api"]["screen_demo_pay"] is demo_pay
    assert with_token.status == 503  # the token always may (the payment integration)


async def test_the_pages_same_origin_requests_pass_without_origin_and_no_others(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(screen_config(store_path, tmp_path), event_log) as service:
        cookie, _ = await open_session(service)
        host, port = tcp_address(service)
        session = {"Cookie": f"markd_session={cookie}"}
        same_site = {**session, "Sec-Fetch-Site": "same-origin"}
        answers = {
            "same-origin": await get(service, RECEIPT, {**same_site, "Host": f"{host}:{port}"}),
            "localhost": await get(service, RECEIPT, {**same_site, "Host": f"localhost:{port}"}),
            "no-sec-fetch": await get(service, RECEIPT, {**session, "Host": f"{host}:{port}"}),
            "cross-site": await get(
                service,
                RECEIPT,
                {**session, "Sec-Fetch-Site": "cross-site", "Host": f"{host}:{port}"},
            ),
            "rebound-host": await get(
                service, RECEIPT, {**same_site, "Host": f"attacker.example:{port}"}
            ),
            "own-origin": await get(
                service, RECEIPT, {**session, "Origin": f"http://{host}:{port}"}
            ),
        }

    statuses = {name: answer.status for name, answer in answers.items()}
    # 503 no-printer: let in, and [sale] mode is off here.
    assert statuses == {
        "same-origin": 503,
        "localhost": 503,
        "no-sec-fetch": 403,
        "cross-site": 403,
        "rebound-host": 403,
        "own-origin": 503,
    }


async def test_without_screen_a_same_origin_request_without_origin_is_refused(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(tcp_config(store_path, tmp_path, "plain"), event_log) as service:
        cookie, _ = await open_session(service)
        host, port = tcp_address(service)
        answer = await get(
            service,
            "/v1/status",
            {
                "Cookie": f"markd_session={cookie}",
                "Sec-Fetch-Site": "same-origin",
                "Host": f"{host}:{port}",
            },
        )
        own_origin = await get(
            service,
            "/v1/status",
            {"Cookie": f"markd_session={cookie}", "Origin": f"http://{host}:{port}"},
        )

    assert answer.status == 403 and own_origin.status == 403


async def test_a_session_outlives_a_restart_of_markd(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = screen_config(store_path, tmp_path)
    async with running(config, event_log) as service:
        cookie, _ = await open_session(service)
        revoked, _ = await open_session(service)
        conversation = await Conversation.tcp(*tcp_address(service))
        await conversation.request(
            "DELETE",
            "/v1/session",
            headers={"Cookie": f"markd_session={revoked}", "Origin": SCREEN_ORIGIN},
        )
        conversation.close()
    kept = Path(config.api.socket).with_name("api-sessions")
    assert cookie not in kept.read_text() and oct(kept.stat().st_mode & 0o777) == "0o600"

    async with running(config, event_log) as service:
        headers = {"Origin": SCREEN_ORIGIN}
        after = await get(service, "/v1/status", {**headers, "Cookie": f"markd_session={cookie}"})
        gone = await get(service, "/v1/status", {**headers, "Cookie": f"markd_session={revoked}"})

    assert after.status == 200
    assert gone.status == 401
