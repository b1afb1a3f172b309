"""HTTP/1.1 framing of the control API under h11: pipelining, requests in pieces, the limits at
their edges, the deadlines, and the few requests markd serves although h11 alone would refuse.

The server runs in front of :class:`EchoService`, a stand-in for the daemon with explicit
behaviour (a verdict naming the code's length), so each test is about the HTTP layer alone;
the whole daemon behind the API is tests/integration/test_api_server.py's subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Conversation
from conftest import wait_until
from markd.api import ControlServer, server
from markd.checks.verdict import Verdict
from markd.config import ApiConfig
from markd.events import EventHub
from markd.receipts import ReceiptOperations


class EchoService:
    """A :class:`~markd.api.protocol.ControlledService` that decides at once: every code is
    allowed, and the verdict's message gives the code's length."""

    def __init__(self) -> None:
        self.events = EventHub()
        self.receipts: ReceiptOperations | None = None
        self.codes: list[bytes] = []

    async def submit(
        self, data: bytes, scanner: str, *, price_kopecks: int | None = None
    ) -> Verdict:
        self.codes.append(data)
        return Verdict("allow", "allowed", f"{len(data)} bytes", "store", scanner)

    async def reload(self) -> Any:
        raise AssertionError("not reloaded in these tests")

    def status_snapshot(self) -> dict[str, Any]:
        return {"service": {"state": "ready"}}


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[ControlServer, EchoService]]:
    """A started server in front of an :class:`EchoService`, closed on exit; ``options`` go
    to :class:`ControlServer`."""
    service = EchoService()
    config = ApiConfig(socket=str(tmp_path / "control.sock"))
    control = ControlServer(service, config, **options)
    control.start()
    try:
        yield control, service
    finally:
        await control.close()


async def connect(control: ControlServer) -> Conversation:
    return await Conversation.unix(control.unix_path)


def check_request(code: str, *, host: bool = True) -> bytes:
    body = json.dumps({"code": code}).encode()
    head = "POST /v1/check HTTP/1.1\r\n" + ("Host: localhost\r\n" if host else "")
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


# --------------------------------------------------------------------------------------------
# Framing


async def test_api_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
            + check_request("first")
            + b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
            + check_request("second-code")
        )
        answers = [await conversation.answer() for _ in range(4)]
        conversation.close()

        assert [a.status for a in answers] == [200, 200, 404, 200]
        assert answers[1].json()["message"] == "5 bytes"
        assert answers[3].json()["message"] == "11 bytes"
        assert all(a.headers["connection"] == "keep-alive" for a in answers)
        assert service.codes == [b"first", b"second-code"]


async def test_api_a_request_written_a_byte_at_a_time_is_answered(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        for byte in check_request("0104680029460908215jcmHzLmkdPML\x1d938p9E"):
            await conversation.send(bytes([byte]))
        answer = await conversation.answer()
        conversation.close()

        assert answer.status == 200 and answer.json()["message"] == "38 bytes"


@pytest.mark.parametrize(
    "coding",
    [
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked\r\nContent-Length: 12",
    ],
    ids=["chunked", "gzip-chunked", "gzip", "chunked-and-length"],
)
async def test_api_a_body_not_sent_by_length_gets_411_whatever_its_coding(
    tmp_path: Path, coding: str
) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(
            f"POST /v1/check HTTP/1.1\r\nHost: x\r\n{coding}\r\n\r\n".encode()
            + b'c\r\n{"code":"x"}\r\n0\r\n\r\n'
        )
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert (answer.status, answer.json()["error"]) == (411, "length-required")
        assert answer.headers["connection"] == "close" and closed
        assert service.codes == []


# --------------------------------------------------------------------------------------------
# Limits at their edges


def head_of(size: int, *, host: bool = True) -> bytes:
    """A GET head of exactly ``size`` bytes before its closing empty line."""
    start = b"GET /v1/status HTTP/1.1\r\n" + (b"Host: x\r\n" if host else b"") + b"X-Pad: "
    return start + b"a" * (size - len(start)) + b"\r\n\r\n"


async def test_api_a_head_of_exactly_the_limit_is_served(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        await conversation.send(head_of(server.MAX_HEAD_BYTES))
        answer = await conversation.answer()
        conversation.close()

        assert answer.status == 200


@pytest.mark.parametrize("piece", [0, 1000], ids=["whole", "in-pieces"])
async def test_api_a_head_one_byte_over_the_limit_gets_431(tmp_path: Path, piece: int) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        raw = head_of(server.MAX_HEAD_BYTES + 1)
        if piece:
            # A head that never ends: h11 sees it incomplete and growing past the limit.
            raw = raw[:-4] + b"a" * 10
            for start in range(0, len(raw), piece):
                await conversation.send(raw[start : start + piece])
                await asyncio.sleep(0.001)
        else:
            await conversation.send(raw)
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert (answer.status, answer.json()["error"]) == (431, "headers-too-large")
        assert closed


@pytest.mark.parametrize("host", [True, False], ids=["with-host", "without-host"])
async def test_api_the_header_count_limit_is_exact(tmp_path: Path, host: bool) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        own = 1 if host else 0  # the Host line markd adds for itself is not the client's
        lines = "".join(f"X-{n}: v\r\n" for n in range(server.MAX_HEADERS - own))
        start = "GET /v1/status HTTP/1.1\r\n" + ("Host: x\r\n" if host else "")
        await conversation.send(f"{start}{lines}\r\n".encode())
        at_limit = await conversation.answer()
        await conversation.send(f"{start}{lines}X-More: v\r\n\r\n".encode())
        over = await conversation.answer()
        conversation.close()

        assert at_limit.status == 200
        assert (over.status, over.json()["error"]) == (431, "headers-too-large")


async def test_api_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        body = json.dumps({"code": "x"}).encode()
        body += b" " * (server.MAX_BODY_BYTES - len(body))
        at_limit = await conversation.request("POST", "/v1/check", body)
        await conversation.send(
            f"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: {server.MAX_BODY_BYTES + 1}"
            "\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        over = await conversation.answer()  # at once: no 100 Continue, no waiting for the body
        closed = await conversation.closed_by_server()
        conversation.close()

        assert at_limit.status == 200 and at_limit.json()["message"] == "1 bytes"
        assert (over.status, over.json()["error"]) == (413, "body-too-large")
        assert closed and service.codes == [b"x"]


async def test_api_one_connection_over_the_limit_gets_503_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(server.MAX_CONNECTIONS, "unix", 2)
    async with serving(tmp_path) as (control, _):
        first, second = await connect(control), await connect(control)
        for conversation in (first, second):  # both accepted and served
            assert (await conversation.request("GET", "/v1/status")).status == 200
        third = await connect(control)
        busy = await third.answer()  # at once, before it asks anything
        closed = await third.closed_by_server()
        third.close()
        first.close()
        for _ in range(500):  # until the server has noticed the first one gone
            report = await second.request("GET", "/v1/status")
            if report.json()["api"]["connections"] == 1:
                break
            await asyncio.sleep(0.01)
        fourth = await connect(control)
        served = await fourth.request("GET", "/v1/status")
        second.close()
        fourth.close()

    assert (busy.status, busy.json()["error"]) == (503, "busy") and closed
    assert served.status == 200


# --------------------------------------------------------------------------------------------
# Deadlines


async def test_api_a_head_trickling_in_is_cut_off_at_the_head_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (control, _):
        monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 0.5)
        conversation = await connect(control)
        started = asyncio.get_running_loop().time()
        await conversation.send(b"GET /v1/status HTTP/1.1\r\n")
        received = b""
        for _ in range(40):  # a header byte every 50 ms, for up to 2 s
            try:
                await conversation.send(b"X")
            except ConnectionError:
                break
            try:
                received += await asyncio.wait_for(conversation.reader.read(100), 0.05)
                break  # the server closed (b"") or, wrongly, answered
            except TimeoutError:
                continue
        elapsed = asyncio.get_running_loop().time() - started
        conversation.close()

        assert received == b""  # closed without an answer, as markd always did
        assert 0.4 < elapsed < 1.5


async def test_api_a_body_that_stops_coming_gets_400_at_the_request_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (control, service):
        monkeypatch.setattr(server, "REQUEST_TIMEOUT_S", 0.3)
        conversation = await connect(control)
        await conversation.send(
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"
        )
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert (answer.status, answer.json()["error"]) == (400, "bad-request")
        assert "did not arrive in time" in answer.json()["message"]
        assert closed and service.codes == []


async def test_api_an_event_client_that_takes_no_data_is_dropped_at_the_write_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A queue long enough never to overflow: only the write deadline can drop this client.
    async with serving(tmp_path, write_timeout_s=0.3, event_queue_limit=100_000) as (
        control,
        service,
    ):
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(control.unix_path)
        stalled.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: service.events.subscribers == 1)
        padding = "x" * 16_000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while service.events.dropped == 0 and loop.time() < deadline:
            service.events.publish("scan", {"scanner": "load", "pad": padding})
            await asyncio.sleep(0.01)
        answered = await connect(control)  # the server answers others meanwhile
        status = await answered.request("GET", "/v1/status")
        answered.close()
        stalled.close()

    assert service.events.dropped == 1 and service.events.subscribers == 0
    assert status.status == 200
    assert any("took no data for 0.3 s" in r.getMessage() for r in caplog.records)


async def test_api_an_idle_kept_alive_connection_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (control, _):
        monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 0.3)
        conversation = await connect(control)
        first = await conversation.request("GET", "/v1/status")
        closed = await conversation.closed_by_server()
        conversation.close()

        assert first.status == 200 and closed


# --------------------------------------------------------------------------------------------
# What markd serves although h11 alone would refuse it, and the ends of a conversation


async def test_api_a_request_without_host_is_served(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(check_request("no-host", host=False))
        answer = await conversation.answer()
        still_open = await conversation.request("GET", "/v1/status")
        conversation.close()

        assert answer.status == 200 and answer.json()["message"] == "7 bytes"
        assert still_open.status == 200 and service.codes == [b"no-host"]


async def test_api_one_empty_line_before_a_request_is_ignored_two_are_not(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        await conversation.send(b"\r\nGET /v1/status HTTP/1.1\r\n\r\n")
        one = await conversation.answer()
        await conversation.send(b"\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n")
        two = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert one.status == 200
        assert (two.status, two.json()["error"]) == (400, "bad-request") and closed


async def test_api_a_client_that_half_closes_after_its_request_gets_the_answer(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        await conversation.send(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        conversation.writer.write_eof()
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert answer.status == 200 and closed


async def test_api_a_request_cut_short_gets_400_and_a_silent_client_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, _):
        cut = await connect(control)
        await cut.send(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        cut.writer.write_eof()
        answer = await cut.answer()
        cut.close()
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(control.unix_path)
        silent.sendall(b"\r\n")
        silent.shutdown(socket.SHUT_WR)
        silent.settimeout(5)
        nothing = await asyncio.to_thread(silent.recv, 100)
        silent.close()

        assert (answer.status, answer.json()["error"]) == (400, "bad-request")
        assert "ended early" in answer.json()["message"]
        assert nothing == b""


async def test_api_http_1_0_gets_one_answer_per_connection_even_asking_keep_alive(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        await conversation.send(b"GET /v1/status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert answer.status == 200 and answer.headers["connection"] == "close" and closed


async def test_api_malformed_requests_are_refused_without_echoing_them(tmp_path: Path) -> None:
    async with serving(tmp_path) as (control, _):
        secret = b"Bearer kiosk-screen-7f3a9c1e5b2d4f60"
        conversation = await connect(control)
        await conversation.send(
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization " + secret + b"\r\n\r\n"
        )
        answer = await conversation.answer()
        conversation.close()

        assert (answer.status, answer.json()["error"]) == (400, "bad-request")
        assert answer.json()["message"].startswith("malformed request: ")
        assert secret not in answer.body


@pytest.mark.parametrize("pieces", [1, 2], ids=["whole", "head-then-body"])
async def test_api_a_content_length_of_5000_digits_gets_400(tmp_path: Path, pieces: int) -> None:
    """h11 0.14 (Debian 12) raises a bare ValueError on it instead of its protocol error; the
    answer is the same 400 either way, and the connection closes."""
    head = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n"
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        if pieces == 1:
            await conversation.send(head + b"\r\n{}")
        else:
            await conversation.send(head)
            await conversation.send(b"\r\n{}")
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

        assert (answer.status, answer.json()["error"]) == (400, "bad-request")
        assert answer.json()["message"] == "malformed request: bad Content-Length"
        assert answer.headers["connection"] == "close" and closed
        assert service.codes == []


@pytest.mark.parametrize(
    "field",
    [
        b"Content-Length: +5",
        b"Content-Length:  5",
        b"Content-Length: 5 ",
        b"Content-Length:\t5",
        "Content-Length: \u0665".encode(),  # ARABIC-INDIC DIGIT FIVE: int() would take it
        b"Content-Length: 5_0",  # int() would read 50
        b"Content-Length: 5, 5",  # h11 reads 5
        b"Content-Length: 5\r\nContent-Length: 5",  # h11 reads 5
        b"Content-Length: 0x5",
        b"Content-Length: -5",
    ],
    ids=[
        "plus",
        "padded",
        "trailing-space",
        "tab",
        "arabic-indic",
        "underscore",
        "list",
        "twice",
        "hex",
        "minus",
    ],
)
async def test_api_a_content_length_smuggled_in_another_form_gets_400(
    tmp_path: Path, field: bytes
) -> None:
    """A Content-Length two parsers could read differently (a sign, padding, a list, another
    script's digits) frames no body: 400 with the reason, and the connection closes before a
    byte of what follows is taken for a request."""
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\n" + field + b'\r\n\r\n{"code":"x"}'
        )
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

    assert (answer.status, answer.json()["error"]) == (400, "bad-request")
    assert answer.json()["message"] == "bad Content-Length: one field of ASCII digits only"
    assert answer.headers["connection"] == "close" and closed
    assert service.codes == []


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 5\r\n 6",  # h11 reads "5 6" and refuses it
        b"Content-Length: 5\r\n\t6",
        b"Content-Length:\r\n 12",  # h11 reads 12
        b"Content-Length: 12\r\n ",  # h11 reads 12
        b"X-Pad: 1\r\n Content-Length: 12",  # h11 reads no length at all
        b"Transfer-Encoding: chunked\r\n identity",
        b"Transfer-Encoding:\r\n chunked",  # h11 reads chunked
        b"Content-Length: 12\r\nTransfer-Encoding:\r\n chunked",
    ],
    ids=[
        "length-folded-on",
        "length-folded-tab",
        "length-on-the-fold",
        "length-empty-fold",
        "length-in-another-field",
        "coding-folded-on",
        "coding-on-the-fold",
        "length-and-folded-coding",
    ],
)
async def test_api_a_folded_header_line_gets_400_not_another_framing(
    tmp_path: Path, fields: bytes
) -> None:
    """A header line starting with a space or a tab continues the one before (obs-fold, RFC
    9112 §5.2). h11 joins the two; a proxy in front of markd might not, or might take the
    line for a header of its own: one head, two framings. markd refuses it, 400 before any
    body is read, and closes (RFC 9112 §5.2 lets a server refuse it so)."""
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\n" + fields + b'\r\n\r\n{"code":"x"}'
        )
        answer = await conversation.answer()
        closed = await conversation.closed_by_server()
        conversation.close()

    assert (answer.status, answer.json()["error"]) == (400, "bad-request")
    assert answer.json()["message"].startswith("folded header line")
    assert answer.headers["connection"] == "close" and closed
    assert service.codes == []


@pytest.mark.parametrize(
    "field", [b"Content-Length: 12", b"Content-Length:12", b"content-length: 012"]
)
async def test_api_a_content_length_of_ascii_digits_is_served(tmp_path: Path, field: bytes) -> None:
    async with serving(tmp_path) as (control, service):
        conversation = await connect(control)
        await conversation.send(
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\n" + field + b'\r\n\r\n{"code":"x"}'
        )
        answer = await conversation.answer()
        conversation.close()

    assert answer.status == 200 and service.codes == [b"x"]


async def test_api_a_kept_alive_connection_has_the_head_deadline_once_a_head_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silence between requests may last IDLE_TIMEOUT_S; a head once started must be in
    within HEAD_TIMEOUT_S (a slow-loris on a connection it kept alive first)."""
    monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 30.0)
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 0.3)
    async with serving(tmp_path) as (control, _):
        conversation = await connect(control)
        first = await conversation.request("GET", "/v1/status")
        await asyncio.sleep(0.5)  # idle past HEAD_TIMEOUT_S: still open
        second = await conversation.request("GET", "/v1/status")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conversation.send(b"GET /v1/status HTTP/1.1\r\n")  # and no more
        closed = await conversation.closed_by_server()
        elapsed = loop.time() - started
        conversation.close()

    assert first.status == second.status == 200
    assert closed and 0.2 < elapsed < 1.5
