"""markctl's blocking client of the control API, against a fake daemon that answers with canned
bytes: what the client sends, how it reads bodies framed by length, chunked or by the end of
the connection, and what it makes of answers that are wrong or missing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from markd.api import client as api_client
from markd.api.client import ControlClient, ControlClientError, DaemonNotRunning


class CannedDaemon:
    """A Unix socket that reads one request per connection and answers with ``answers`` in
    turn (bytes written as they are), then closes the connection unless told to hang."""

    def __init__(self, path: Path, answers: list[bytes], *, hang: bool = False) -> None:
        self.path = str(path)
        self.answers = list(answers)
        self.hang = hang
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answer in self.answers:
            connection, _ = self.listener.accept()
            with connection:
                self.requests.append(self._read_request(connection))
                connection.sendall(answer)
                if self.hang:
                    self.release.wait(10)

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += connection.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.release.set()
        self.thread.join(5)
        self.listener.close()


DaemonFactory = Callable[..., CannedDaemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    made: list[CannedDaemon] = []

    def make(answers: list[bytes], *, hang: bool = False) -> CannedDaemon:
        daemon = CannedDaemon(tmp_path / f"control{len(made)}.sock", answers, hang=hang)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()


def by_length(status: bytes, body: bytes) -> bytes:
    """An answer framed by its Content-Length."""
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


JSON_ANSWER = by_length(b"200 OK", b'{"decision":"allow"}')


def test_api_client_sends_a_framed_json_request_and_reads_the_answer(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory([JSON_ANSWER])

    answer = ControlClient(daemon.path).check("0104680029460908215jcmHzLmkdPML\x1d938p9E")

    assert answer == {"decision": "allow"}
    head, _, body = daemon.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/check HTTP/1.1"
    assert b"Host: localhost" in lines and f"Content-Length: {len(body)}".encode() in lines
    assert body == b'{"code": "0104680029460908215jcmHzLmkdPML\\u001d938p9E"}'


def test_api_client_reads_a_chunked_answer(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'9\r\n{"service\r\nc\r\n":{"pid":1}}\r\n0\r\n\r\n'
        ]
    )

    assert ControlClient(daemon.path).status() == {"service": {"pid": 1}}
    assert daemon.requests[0].startswith(b"GET /v1/status HTTP/1.1\r\n")


def test_api_client_turns_error_answers_into_errors(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(
        [
            by_length(b"409 Conflict", b'{"error":"reload-refused","message":"bad config"}\n'),
            by_length(b"502 Bad Gateway", b"oops\n"),
            b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut',
        ]
    )
    client = ControlClient(daemon.path)

    with pytest.raises(ControlClientError) as refused:
        client.request("POST", "/v1/reload")
    with pytest.raises(ControlClientError, match="something other than JSON"):
        client.status()
    with pytest.raises(ControlClientError, match="did not answer"):
        client.status()

    assert (refused.value.status, refused.value.reason) == (409, "reload-refused")
    assert refused.value.message == "bad config"
    assert b"Content-Length: 0" in daemon.requests[0]  # a POST without a body says so


@pytest.mark.parametrize("chunked", [False, True], ids=["until-close", "chunked"])
def test_api_client_follows_an_event_stream_to_its_end(
    daemon_factory: DaemonFactory, chunked: bool
) -> None:
    events = (
        b"retry: 2000\n: markd 0.1.0 events\n\n"
        b'id: 1\nevent: scan\ndata: {"seq":1,"kind":"scan"}\n\n'
        b": heartbeat\n\n"
        b'id: 2\nevent: verdict\ndata: {"seq":2,"kind":"verdict"}\n\n'
    )
    if chunked:
        # Split mid-line, to prove lines are put together across pieces.
        pieces = [events[:40], events[40:]]
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        body, head = events, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    daemon = daemon_factory([head + body])

    received = list(ControlClient(daemon.path).events(["scan", "verdict"]))

    assert [e["kind"] for e in received] == ["scan", "verdict"]
    assert daemon.requests[0].startswith(b"GET /v1/events?kinds=scan,verdict HTTP/1.1\r\n")


def test_api_client_gives_up_on_a_silent_event_stream(
    daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_client, "STREAM_TIMEOUT_S", 0.2)
    daemon = daemon_factory(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nretry: 2000\n"], hang=True
    )

    with pytest.raises(ControlClientError, match="sent nothing for 0.2 s"):
        list(ControlClient(daemon.path).events())


def test_api_client_tells_a_missing_daemon_from_a_broken_one(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))  # bound and never listening: what a killed daemon leaves
    left.close()

    with pytest.raises(DaemonNotRunning):
        ControlClient(str(tmp_path / "none.sock")).status()
    with pytest.raises(DaemonNotRunning):
        ControlClient(str(stale)).status()


def test_api_client_turns_a_content_length_of_5000_digits_into_its_error(
    daemon_factory: DaemonFactory,
) -> None:
    """h11 0.14 (Debian 12) raises a bare ValueError on it; markctl still gets its typed
    error, for a request and for the event stream alike."""
    hostile = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}"
    daemon = daemon_factory([hostile, hostile])
    client = ControlClient(daemon.path)

    with pytest.raises(ControlClientError, match="did not answer") as request:
        client.status()
    with pytest.raises(ControlClientError, match="event stream from markd broke") as stream:
        list(client.events())

    for caught in (request, stream):
        assert "malformed answer (bad Content-Length)" in str(caught.value)
        assert "9999" not in str(caught.value)


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        ([b"event: verdict\ndata: {not json\n\n"], "not JSON"),
        ([b"data: \xff\xfe\n\n"], "not UTF-8"),
        ([b"data: " + b"x" * (1 << 16)] * 20, "line longer than"),
        ([b"data: " + b"x" * 1000 + b"\n"] * 2000, "event longer than"),
    ],
    ids=["bad-json", "bad-utf8", "no-line-end", "no-event-end"],
)
def test_a_hostile_event_stream_is_a_typed_error(stream: list[bytes], why: str) -> None:
    """What markctl reads from the event stream is checked: bad JSON, bad UTF-8 or a line
    without end is a ControlClientError naming the problem, never a bare ValueError or
    unbounded memory."""
    from markd.api.client import _read_stream

    with pytest.raises(ControlClientError, match=why):
        list(_read_stream(iter(stream)))


def test_a_good_event_stream_is_read() -> None:
    from markd.api.client import _read_stream

    parts = [b": heartbeat\n\nevent: verdict\nda", b'ta: {"kind": "verdict"}\n\n']
    assert list(_read_stream(iter(parts))) == [{"kind": "verdict"}]
