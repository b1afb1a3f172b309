"""markd.http.client against real servers on loopback: keep-alive, deadlines, bad peers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from markd.http.client import HTTPClient, HTTPError, HTTPProtocolError, HTTPTimeout, is_loopback


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The handler writes headers and body separately: without this the *server* side would
    # stall on Nagle + delayed ACK and hide what the test looks at, the client's own writes.
    disable_nagle_algorithm = True
    connections: set[int] = set()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        Handler.connections.add(id(self.connection))
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b'{"a":', b"1}"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        reply = b'{"echo": ' + (body or b"null") + b"}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.connections = set()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def deadline(ms: float) -> float:
    return time.monotonic() + ms / 1000


async def test_json_round_trip_and_keep_alive(server: str) -> None:
    client = HTTPClient()
    first = await client.request(
        "POST", server + "/x", json_body={"codes": ["a"]}, deadline=deadline(2000)
    )
    second = await client.request("POST", server + "/x", json_body=[1], deadline=deadline(2000))
    client.close()
    assert first.status == 200 and first.json() == {"echo": {"codes": ["a"]}}
    assert second.json() == {"echo": [1]} and second.reused and not first.reused
    assert len(Handler.connections) == 1


async def test_chunked_answer(server: str) -> None:
    client = HTTPClient()
    response = await client.request("POST", server + "/chunked", body=b"", deadline=deadline(2000))
    client.close()
    assert response.json() == {"a": 1}


async def test_a_silent_server_costs_the_budget_and_no_more(black_hole: str) -> None:
    client = HTTPClient()
    started = time.monotonic()
    with pytest.raises(HTTPTimeout):
        await client.request("POST", black_hole + "/x", body=b"{}", deadline=deadline(300))
    took = time.monotonic() - started
    client.close()
    assert 0.28 <= took < 0.35


async def test_a_slow_answer_past_the_deadline_is_a_timeout(server: str) -> None:
    client = HTTPClient()
    with pytest.raises(HTTPTimeout):
        await client.request("POST", server + "/slow", body=b"{}", deadline=deadline(200))
    client.close()


async def test_nothing_listening_is_an_error_fast() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = HTTPClient()
    started = time.monotonic()
    with pytest.raises(HTTPError) as err:
        await client.request("GET", f"http://127.0.0.1:{port}/", deadline=deadline(2000))
    assert time.monotonic() - started < 0.5 and err.value.kind == "unreachable"


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = HTTPClient()
    with pytest.raises(HTTPProtocolError):
        await client.request("GET", f"http://127.0.0.1:{port}/", deadline=deadline(1000))
    srv.close()


async def test_headers_and_body_leave_in_one_segment(server: str) -> None:
    """No Nagle stall: a keep-alive request on loopback answers in well under 40 ms."""
    client = HTTPClient()
    await client.request("POST", server + "/x", json_body={}, deadline=deadline(2000))
    times = []
    for _ in range(20):
        response = await client.request(
            "POST", server + "/x", json_body={"k": "v" * 100}, deadline=deadline(2000)
        )
        times.append(response.elapsed_ms)
    client.close()
    assert sorted(times)[len(times) // 2] < 20, times


def test_loopback_names() -> None:
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("cdn.crpt.ru") and not is_loopback("10.0.0.1")


FIVE_THOUSAND_DIGITS = b"9" * 5000


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: " + FIVE_THOUSAND_DIGITS + b"\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 21 + b"\r\n{}",
        "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n{}".encode(),
    ],
    ids=["content-length-5000-digits", "chunk-size-21-hex-digits", "content-length-superscript"],
)
async def test_a_hostile_length_is_a_protocol_error_after_sending(answer: bytes) -> None:
    """h11 0.14 (Debian 12) raises a bare ValueError on a 5,000-digit Content-Length; the
    caller still gets the typed error, with ``request_sent`` (the request did leave)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(answer)
            connection.recv(1)  # until the client closes

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    client = HTTPClient()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    with pytest.raises(HTTPProtocolError) as err:
        await client.request("POST", url, body=b"{}", deadline=deadline(2000))
    client.close()
    await asyncio.to_thread(thread.join, 2)  # the loop runs, so the close takes effect
    listener.close()
    assert err.value.request_sent and err.value.kind == "bad-answer"
    assert "9999" not in str(err.value)
