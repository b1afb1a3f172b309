"""markd.http.client's streaming API against a real server on loopback: large bodies in pieces,
a read timeout that catches a stalled peer, the caller's cap, and the connection going back to
the pool only after a whole body."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from markd.http.client import (
    HTTPBodyCut,
    HTTPClient,
    HTTPProtocolError,
    HTTPTimeout,
)

BIG = 24 << 20  # three times what HTTPClient.request() would take whole


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike, so a lost or repeated piece shows in a digest."""
    block = bytes(range(251)) * 262
    return (block * (size // len(block) + 1))[:size]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    stop = threading.Event()
    connections: set[int] = set()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        Handler.connections.add(id(self.connection))
        query = parse_qs(urlsplit(self.path).query)
        size = int(query.get("size", ["0"])[0])
        path = urlsplit(self.path).path
        body = pattern(size)
        self.send_response(200)
        if path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, size, 1 << 20):
                piece = body[start : start + (1 << 20)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if path == "/stall":
            # Half the body, then nothing: a peer that hangs mid-answer.
            self.wfile.write(body[: size // 2])
            self.wfile.flush()
            Handler.stop.wait(5)
            return
        if path == "/cut":
            self.wfile.write(body[: size // 2])
            self.close_connection = True
            return
        if path == "/trickle":
            # The whole body, 1 kB every 20 ms: slow but never silent for long.
            for start in range(0, size, 1024):
                self.wfile.write(body[start : start + 1024])
                self.wfile.flush()
                if Handler.stop.wait(0.02):
                    return
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    Handler.stop = threading.Event()
    Handler.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        Handler.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("path", ["/plain", "/chunked"])
async def test_a_large_body_arrives_whole_in_pieces(server: str, path: str) -> None:
    client = HTTPClient()
    digest = hashlib.sha256()
    largest = 0
    try:
        async with client.stream(
            "GET", f"{server}{path}?size={BIG}", max_bytes=BIG, read_timeout=5
        ) as answer:
            assert answer.status == 200
            async for block in answer:
                digest.update(block)
                largest = max(largest, len(block))
            assert answer.received == BIG
        again = await client.request(
            "GET", f"{server}/plain?size=10", deadline=time.monotonic() + 5
        )
    finally:
        client.close()
    assert digest.digest() == hashlib.sha256(pattern(BIG)).digest()
    assert largest <= 64 << 10  # handed out in pieces, never the whole body at once
    # The body was read to its end: the connection went back to the pool.
    assert again.reused and len(Handler.connections) == 1


async def test_read_sizes_are_honoured(server: str) -> None:
    client = HTTPClient()
    try:
        async with client.stream(
            "GET", f"{server}/plain?size=100000", max_bytes=100000, read_timeout=5
        ) as answer:
            first = await answer.read(10)
            rest = b""
            while block := await answer.read(4096):
                assert len(block) <= 4096
                rest += block
    finally:
        client.close()
    assert len(first) == 10 and first + rest == pattern(100000)


async def test_a_stalled_body_is_a_timeout_after_the_read_timeout(server: str) -> None:
    client = HTTPClient()
    got = 0
    try:
        async with client.stream(
            "GET", f"{server}/stall?size=2000000", max_bytes=2000000, read_timeout=0.3
        ) as answer:
            with pytest.raises(HTTPTimeout) as caught:
                while True:
                    block = await answer.read()
                    got += len(block)
                    started = time.monotonic()
        waited = time.monotonic() - started
    finally:
        client.close()
    assert got == 1000000  # everything that came was handed out before the timeout
    assert 0.28 <= waited < 0.6, waited
    assert caught.value.request_sent and "0.3 s" in str(caught.value)


async def test_a_slow_but_steady_body_outlives_the_read_timeout(server: str) -> None:
    """The read timeout bounds each wait, not the whole body: 10 kB at 1 kB / 20 ms takes
    about 0.2 s, longer than the 0.1 s read timeout."""
    client = HTTPClient()
    started = time.monotonic()
    try:
        async with client.stream(
            "GET", f"{server}/trickle?size=10240", max_bytes=10240, read_timeout=0.1
        ) as answer:
            body = b"".join([block async for block in answer])
    finally:
        client.close()
    assert body == pattern(10240) and time.monotonic() - started >= 0.15


async def test_the_deadline_still_bounds_a_stream(server: str) -> None:
    client = HTTPClient()
    started = time.monotonic()
    try:
        with pytest.raises(HTTPTimeout) as caught:
            async with client.stream(
                "GET",
                f"{server}/trickle?size=1000000",
                max_bytes=1000000,
                read_timeout=5,
                deadline=time.monotonic() + 0.25,
            ) as answer:
                async for _ in answer:
                    pass
    finally:
        client.close()
    assert 0.23 <= time.monotonic() - started < 0.5
    assert "budget" in str(caught.value)


async def test_more_than_the_cap_is_refused(server: str) -> None:
    client = HTTPClient()
    got = 0
    try:
        async with client.stream(
            "GET", f"{server}/chunked?size=5000000", max_bytes=1000000, read_timeout=5
        ) as answer:
            with pytest.raises(HTTPProtocolError) as caught:
                async for block in answer:
                    got += len(block)
    finally:
        client.close()
    assert got <= 1000000 and "larger than 1000000 bytes" in str(caught.value)


async def test_a_body_cut_short_says_how_much_came(server: str) -> None:
    client = HTTPClient()
    got = 0
    try:
        async with client.stream(
            "GET", f"{server}/cut?size=300000", max_bytes=300000, read_timeout=5
        ) as answer:
            with pytest.raises(HTTPBodyCut) as caught:
                async for block in answer:
                    got += len(block)
    finally:
        client.close()
    assert got == caught.value.received == 150000
    assert caught.value.kind == "unreachable"


async def test_a_body_left_unread_closes_its_connection(server: str) -> None:
    client = HTTPClient()
    try:
        async with client.stream(
            "GET", f"{server}/plain?size=1000000", max_bytes=1000000, read_timeout=5
        ) as answer:
            await answer.read(100)
        after = await client.request("GET", f"{server}/plain?size=1", deadline=time.monotonic() + 5)
    finally:
        client.close()
    # The rest of the first body was still on the way: that connection could not be reused.
    assert not after.reused and len(Handler.connections) == 2


async def test_a_stream_needs_a_time_limit(server: str) -> None:
    client = HTTPClient()
    with pytest.raises(ValueError, match="deadline, a read timeout"):
        async with client.stream("GET", server + "/plain", max_bytes=1):
            pass
