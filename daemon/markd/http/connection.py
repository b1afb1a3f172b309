"""One connection of :class:`~markd.http.client.HTTPClient` and the reading of answers on it.

An internal module of :mod:`markd.http`: the h11 state of a connection, the record of how far
an exchange got (which decides the error a failure becomes, and whether it may be tried again
on a fresh connection), the time rules of an exchange, and the pump that feeds socket bytes to
h11 until it has the next event, turning h11's refusals into :mod:`markd.http.errors` types.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import time
from typing import Any

import h11

from markd.http.errors import HTTPBodyCut, HTTPError, HTTPProtocolError
from markd.http.refusals import H11_REFUSALS

#: The largest answer head (status line and headers) taken from a server: real ones are well
#: under 2 kB; an endless one must not eat memory or the budget.
MAX_HEAD_BYTES = 64 << 10
#: How much one read asks of the socket.
READ_SIZE = 64 << 10
#: The first bytes of every answer accepted; anything else is refused at once instead of
#: waiting for a head that will never come.
STATUS_PREFIX = b"HTTP/1."
_NO_TIMEOUT = contextlib.nullcontext()


class Progress:
    """How far one attempt got: decides the error a failure becomes and whether the attempt
    may be repeated on a fresh connection."""

    __slots__ = ("phase", "reused", "sent", "received", "start", "eof", "head_done", "body")

    def __init__(self, sent: bool = False) -> None:
        self.phase = "connect"
        self.reused = False
        #: The request was handed to a connection, by this attempt or by one before it on a
        #: stale connection (which the server may have read before it closed).
        self.sent = sent
        self.received = 0  # bytes of the answer
        self.start = b""  # its first bytes, to refuse what is not HTTP at once
        self.eof = False
        self.head_done = False
        self.body = 0  # bytes of the answer's body


class Timing:
    """The time rules of one exchange. ``whole``: one deadline covers everything and the
    caller enforces it around the whole attempt, so single waits need no timer of their own.
    Otherwise (a stream) each wait gets ``read_timeout``, never past ``deadline``."""

    __slots__ = ("deadline", "read_timeout", "whole")

    def __init__(self, deadline: float | None, read_timeout: float | None, whole: bool) -> None:
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.whole = whole

    def step(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A timer for one wait (connect, TLS, a read)."""
        if self.whole:
            return _NO_TIMEOUT
        until = self.deadline
        if self.read_timeout is not None:
            next_read = time.monotonic() + self.read_timeout
            until = next_read if until is None else min(until, next_read)
        return _NO_TIMEOUT if until is None else asyncio.timeout_at(until)

    def passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def budget(self) -> str:
        """What ran out, for a timeout's message."""
        if self.whole or self.read_timeout is None or self.passed():
            return "the budget"
        return f"{self.read_timeout:g} s"


class Connection:
    """One TCP (or TLS) connection with the h11 state of the exchange on it."""

    __slots__ = ("reader", "writer", "protocol", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.used = 0

    def close(self) -> None:
        self.writer.close()

    def fit_for_reuse(self) -> bool:
        """An idle kept-alive connection may carry the next request: not closed, and nothing
        came from the peer while it was idle. A server that closed it (its keep-alive timeout)
        left an end-of-file; a server that said something unasked (``408`` before closing)
        left bytes; either makes the socket readable. The kernel is asked directly because
        the event loop may not have run since (the blocking client runs it only during a
        call), so the loop's own view can be stale."""
        if self.writer.is_closing() or self.reader.at_eof():
            return False
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return not poller.poll(0)


async def next_event(conn: Connection, where: str, progress: Progress, timing: Timing) -> Any:
    """The next h11 event of the answer, reading from the socket as h11 needs."""
    protocol = conn.protocol
    while True:
        try:
            event = protocol.next_event()
        except H11_REFUSALS as exc:
            raise broken_answer(exc, where, progress) from None
        if event is not h11.NEED_DATA:
            return event
        try:
            async with timing.step():
                data = await conn.reader.read(READ_SIZE)
        except ConnectionError as exc:
            if progress.head_done:
                raise HTTPBodyCut(
                    f"connection to {where} failed after {progress.body} bytes of the body: {exc}",
                    progress.body,
                ) from exc
            raise HTTPError(f"connection to {where} failed: {exc}") from exc
        if not data:
            progress.eof = True
        elif len(progress.start) < len(STATUS_PREFIX):
            progress.start = (progress.start + data)[: len(STATUS_PREFIX)]
            if not STATUS_PREFIX.startswith(progress.start):
                raise HTTPProtocolError(f"not HTTP/1.x from {where}: {data[:40]!r}")
        progress.received += len(data)
        protocol.receive_data(data)


def broken_answer(exc: Exception, where: str, progress: Progress) -> HTTPError:
    """What h11's refusal of the answer means, in words that name the peer. h11's own text is
    cut at its first colon: past it, it quotes the peer's bytes."""
    if progress.eof and progress.received == 0:
        return HTTPProtocolError(f"{where} closed the connection without answering")
    if progress.eof and not progress.head_done:
        return HTTPProtocolError(f"the answer from {where} ended inside its head")
    if progress.eof:
        return HTTPBodyCut(
            f"connection to {where} failed: the answer ended after {progress.body} bytes of "
            "its body",
            progress.body,
        )
    if not progress.head_done and progress.received > MAX_HEAD_BYTES:
        return HTTPProtocolError(f"the answer from {where} has a head over {MAX_HEAD_BYTES} bytes")
    if not isinstance(exc, h11.RemoteProtocolError):
        # h11 0.14's int() of a Content-Length past Python's digit limit (http/refusals.py).
        return HTTPProtocolError(f"a malformed answer from {where} (bad Content-Length)")
    what = str(exc).split(":", 1)[0].strip()[:60] or "bad framing"
    return HTTPProtocolError(f"a malformed answer from {where} ({what})")


def stale(progress: Progress) -> bool:
    """A reused connection that ended (closed or reset) before any byte of the answer: the
    server had closed it while idle. Worth one more try on a fresh connection."""
    return progress.reused and progress.received == 0 and progress.phase in ("send", "answer")


async def read_head(
    conn: Connection, where: str, progress: Progress, timing: Timing
) -> h11.Response:
    while True:
        event = await next_event(conn, where, progress, timing)
        if isinstance(event, h11.Response):
            progress.head_done = True
            return event
        if not isinstance(event, h11.InformationalResponse):  # 1xx come before the answer
            raise HTTPProtocolError(f"unexpected {type(event).__name__} from {where}")


async def read_body(
    conn: Connection,
    head: h11.Response,
    where: str,
    progress: Progress,
    timing: Timing,
    limit: int,
) -> bytes:
    """The whole body, at most ``limit`` bytes."""
    length = content_length(head)
    if length is not None and length > limit:
        raise HTTPProtocolError(f"the answer from {where} is too large ({length} bytes)")
    chunks: list[bytes] = []
    while True:
        event = await next_event(conn, where, progress, timing)
        if isinstance(event, h11.Data):
            progress.body += len(event.data)
            if progress.body > limit:
                raise HTTPProtocolError(f"the answer from {where} is too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise HTTPProtocolError(f"unexpected {type(event).__name__} from {where}")


def headers_of(head: h11.Response) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}


def content_length(head: h11.Response) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        conn.close()


def os_reason(exc: OSError) -> str:
    """What went wrong, in the system's words ("Connection refused"): asyncio's own text for
    a refused connection ("Connect call failed (…)") says less."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


def no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
