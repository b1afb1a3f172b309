"""markd.http.blocking: the asyncio client on a private loop, for threads that block — its
kept-alive connection across calls, its deadlines, its confinement to one thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from markd.http.blocking import BlockingHTTPClient
from markd.http.client import HTTPError, HTTPTimeout


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    connections: list[int] = []
    sockets: list[socket.socket] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if id(self.connection) not in Handler.connections:
            Handler.connections.append(id(self.connection))
            Handler.sockets.append(self.connection)
        body = self.path.encode()
        if self.path == "/slow":
            time.sleep(0.5)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/last":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class Server:
    def __init__(self, port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and end every connection (the stock server would keep serving the
        kept-alive ones in their threads)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for sock in Handler.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server() -> Iterator[Server]:
    Handler.connections = []
    Handler.sockets = []
    running = Server()
    try:
        yield running
    finally:
        running.stop()


def soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def test_one_kept_alive_connection_serves_call_after_call(server: Server) -> None:
    with BlockingHTTPClient() as client:
        answers = [client.request("GET", f"{server.url}/n{n}", deadline=soon()) for n in range(5)]
        time.sleep(0.2)  # nothing runs the loop between calls: the connection must still serve
        late = client.request("GET", f"{server.url}/late", deadline=soon())
    assert [a.body for a in answers] == [f"/n{n}".encode() for n in range(5)]
    assert [a.reused for a in answers + [late]] == [False, True, True, True, True, True]
    assert len(Handler.connections) == 1


def test_a_connection_the_server_closed_between_calls_is_not_reused(server: Server) -> None:
    with BlockingHTTPClient() as client:
        first = client.request("GET", f"{server.url}/last", deadline=soon())
        second = client.request("GET", f"{server.url}/x", deadline=soon())
        third = client.request("GET", f"{server.url}/y", deadline=soon())
    assert first.status == second.status == third.status == 200
    assert (second.reused, third.reused) == (False, True)
    assert len(Handler.connections) == 2


def test_a_server_restarted_between_calls_costs_nothing_but_a_new_connection(
    server: Server,
) -> None:
    with BlockingHTTPClient() as client:
        assert client.request("GET", f"{server.url}/a", deadline=soon()).status == 200
        port = server.port
        server.stop()  # closes the kept-alive connection while no loop runs on our side
        time.sleep(0.1)
        restarted = Server(port)
        try:
            answer = client.request("GET", f"{restarted.url}/b", deadline=soon())
        finally:
            restarted.stop()
    assert answer.body == b"/b" and not answer.reused


def test_a_silent_server_costs_the_deadline_and_no_more() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with BlockingHTTPClient() as client:
            started = time.monotonic()
            with pytest.raises(HTTPTimeout) as caught:
                client.request("GET", f"http://127.0.0.1:{port}/", deadline=soon(0.3))
            took = time.monotonic() - started
    assert 0.28 <= took < 0.4 and caught.value.request_sent


def test_nothing_listening_is_not_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with BlockingHTTPClient() as client, pytest.raises(HTTPError) as caught:
        client.request("GET", f"http://127.0.0.1:{port}/", deadline=soon())
    assert not caught.value.request_sent and "Connection refused" in str(caught.value)


def test_streaming_through_the_blocking_client(server: Server) -> None:
    with BlockingHTTPClient() as client:
        with client.stream(
            "GET", f"{server.url}/streamed", max_bytes=100, read_timeout=1
        ) as answer:
            assert answer.status == 200 and answer.headers["content-length"] == "9"
            body = b"".join(answer)
        reused = client.request("GET", f"{server.url}/x", deadline=soon()).reused
    assert body == b"/streamed" and reused


def test_a_second_thread_is_refused(server: Server) -> None:
    client = BlockingHTTPClient()
    client.request("GET", f"{server.url}/a", deadline=soon())
    caught: list[BaseException] = []

    def elsewhere() -> None:
        try:
            client.request("GET", f"{server.url}/b", deadline=soon())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            caught.append(exc)

    thread = threading.Thread(target=elsewhere, name="intruder")
    thread.start()
    thread.join()
    try:
        assert len(caught) == 1 and isinstance(caught[0], RuntimeError)
        assert "belongs to thread" in str(caught[0]) and "'intruder'" in str(caught[0])
        assert client.owner is threading.current_thread()
        # The owner goes on as before, on the same connection.
        assert client.request("GET", f"{server.url}/c", deadline=soon()).reused
    finally:
        client.close()
    assert len(Handler.connections) == 1


def test_the_first_caller_owns_it_not_the_creator(server: Server) -> None:
    client = BlockingHTTPClient()  # made here, used only by the worker (as the ATOL backend)
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(client.request("GET", f"{server.url}/w", deadline=soon()))
    )
    worker.start()
    worker.join()
    assert answers[0].status == 200 and client.owner is worker
    client.close()  # the worker has ended: closing from here is allowed
    assert client.closed
    with pytest.raises(RuntimeError, match="closed"):
        client.request("GET", f"{server.url}/again", deadline=soon())


def test_closing_during_a_call_is_refused(server: Server) -> None:
    client = BlockingHTTPClient()
    started = threading.Event()
    done: list[int] = []

    def slow() -> None:
        started.set()
        done.append(client.request("GET", f"{server.url}/slow", deadline=soon(5)).status)

    worker = threading.Thread(target=slow)
    worker.start()
    started.wait()
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match="is in a call"):
        client.close()
    worker.join()
    client.close()
    assert done == [200]


async def test_inside_a_running_loop_it_says_what_to_use_instead(server: Server) -> None:
    client = BlockingHTTPClient()
    with pytest.raises(RuntimeError, match="running event loop"):
        client.request("GET", f"{server.url}/a", deadline=soon())
    client.close()


async def test_closing_from_a_thread_whose_loop_runs(server: Server) -> None:
    """The daemon closes its printer from its loop: the client's own loop is cleaned up in a
    helper thread, and the kept-alive connection is closed."""
    client = BlockingHTTPClient()
    await asyncio.to_thread(client.request, "GET", f"{server.url}/a", deadline=soon())
    client.close()
    assert client.closed
