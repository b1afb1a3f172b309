"""The Mark Unit front's listener: TCP connections on asyncio streams, HTTP/1.1 framed by h11
(as the control API's server is: h11 owns the grammar, this module the sockets, deadlines,
limits and refusals).

Routes, as the tills call them (FMU-API's ``src/Presentation/WebApi/Controllers/Fmu/``:
``Token/TokenController.cs``, ``Status/HealthController.cs``, ``Document/DocumentController.cs``),
each also under the ``/api/fmu`` prefix and an ``/{inn}`` segment (10 or 12 digits; an ИНН in
the path overrides the positions' organisation)::

    GET  /token                      {id, name, role, expired, signature} (not a credential)
    POST /api4/system/get_info       {version, state: "regular", timestamp}  (liveness probe)
    POST /api4/system/health         the same
    POST /document                   action check | begin | commit | cancel

Limits and refusals::

    peer not in [mark_unit] allowed_clients   403, closed at once (before anything is read,
                                              never counted against the limits below)
    more than MAX_CONNECTIONS open            503, closed
    more than MAX_CONNECTIONS_PER_PEER        503, closed
    head > MAX_HEAD_BYTES                     431, closed
    body > MAX_BODY_BYTES (Content-Length)    413 before the body is read, closed
    Transfer-Encoding                         411, closed
    grammar h11 refuses                       400, closed
    head not complete in HEAD_TIMEOUT_S,
      silent IDLE_TIMEOUT_S when kept alive   closed without an answer
    body not complete in BODY_TIMEOUT_S       400, closed
    a malformed document                      400 {code: 1, error: reason}
    unknown path / method                     404 / 405

A request body holds full marking codes: it is never logged. A refused document is logged
with its reason only (the reasons name fields, never values); a failure inside markd by the
exception's type.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11

from markd import __version__
from markd.api import listeners
from markd.checks.after_answer import AfterAnswer
from markd.fronts.mark_unit.protocol import (
    BadDocument,
    encode_answer,
    parse_document,
    refusal_answer,
)
from markd.http.refusals import H11_REFUSALS, refusal_text
from markd.listen import parse_listen

if TYPE_CHECKING:
    from markd.config import MarkUnitConfig
    from markd.fronts.mark_unit.desk import MarkUnitDesk

log = logging.getLogger("markd.fronts.mark_unit")

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
#: A receipt of MAX_CODES codes in base64 with its fields fits well within this.
MAX_BODY_BYTES = 256 * 1024
MAX_CONNECTIONS = 128
#: A till keeps one or two connections; a shop LAN's tills each have their own address.
MAX_CONNECTIONS_PER_PEER = 8
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 10.0
READ_SIZE = 64 * 1024
#: Seconds a refused connection is read (and dropped) before it closes.
LINGER_S = 1.0
#: Seconds the token answer says it lasts (TokenController.cs: 60 minutes).
TOKEN_LIFE_S = 3600

#: The routes: an optional ``/{inn}``, an optional ``/api/fmu``, an optional ``/{inn}``
#: again (FMU-API declares both orders), then the route itself; in any case, as ASP.NET
#: Core matches routes (``/Document``, ``/API4/System/Get_Info``).
_ROUTE = re.compile(
    r"^(?:/(?P<inn1>[0-9]{10}|[0-9]{12}))?(?:/api/fmu)?(?:/(?P<inn2>[0-9]{10}|[0-9]{12}))?"
    r"(?P<route>/token|/document|/api4/system/get_info|/api4/system/health)/?$",
    re.IGNORECASE | re.ASCII,
)
_METHODS = {
    "/token": "GET",
    "/document": "POST",
    "/api4/system/get_info": "POST",
    "/api4/system/health": "POST",
}
_PHRASES = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, *, close: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close


class _Quiet(Exception):
    """End the connection without an answer."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    #: ``time.perf_counter()`` when the head was complete.
    started: float = 0.0


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    http: h11.Connection = field(default_factory=lambda: _new_http())
    pending: bytes = b""
    answered: int = 0


def _new_http() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)


def allowed(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``address`` (a peer's IP text) is in one of ``networks``; an IPv4 address
    mapped into IPv6 (``::ffff:192.168.1.20``, a dual-stack socket) counts as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


class MarkUnitServer:
    """The listener (see the module docstring). :meth:`start` binds synchronously (an error
    stops start-up); :meth:`close` ends every connection.

    :param desk: what documents are answered with.
    :param config: ``[mark_unit]``.
    """

    def __init__(self, desk: MarkUnitDesk, config: MarkUnitConfig) -> None:
        self.desk = desk
        self.config = config
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.allowed_clients]
        self.address: tuple[str, int] | None = None
        self._socket: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._open = 0
        self._open_from: dict[str, int] = {}
        #: Requests refused so far by reason (``forbidden``, ``bad-document`` …).
        self.refused: dict[str, int] = {}
        #: Called with the milliseconds from a request's complete head to its answer written
        #: (the benchmark's server-side figure); None: not measured.
        self.observer: Callable[[float], None] | None = None

    def status(self) -> dict[str, Any]:
        """The front's part of ``GET /v1/status``."""
        return {
            "listen": None if self.address is None else listeners.address_text(*self.address),
            "connections": self._open,
            "refused": dict(sorted(self.refused.items())),
            "pending_receipts": self.desk.pending,
            "repeats_answered": self.desk.repeats.hits,
        }

    def start(self) -> None:
        host, port = parse_listen(self.config.listen)
        self._socket = listeners.bind_tcp(host, port, self.config.listen, key="[mark_unit] listen")
        bound = self._socket.getsockname()
        self.address = (bound[0], bound[1])
        asyncio.get_running_loop().create_task(self._serve(), name="markd-mark-unit")
        log.info("Mark Unit API for tills on http://%s", listeners.address_text(*self.address))

    async def _serve(self) -> None:
        assert self._socket is not None
        self._server = await asyncio.start_server(
            self._accept, sock=self._socket, limit=MAX_HEAD_BYTES
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        elif self._socket is not None:
            self._socket.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._server = None
        self._socket = None
        await self.desk.aclose()

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        address = writer.get_extra_info("peername")
        host = str(address[0]) if address else "?"
        connection = _Connection(reader, writer, host)
        if not allowed(host, self.networks):
            # Checked before the connection counts: a flood from a forbidden address must
            # not take the places of the tills. No lingering either, which would hold them.
            self._count("forbidden")
            log.warning("mark unit: refused a connection from %s (not an allowed client)", host)
            reason = f"{host} is not in [mark_unit] allowed_clients"
            with contextlib.suppress(Exception):
                writer.write(
                    _answer_bytes(
                        connection, 403, refusal_answer(reason), False, self.config.encoding
                    )[0]
                )
                writer.write_eof()
            writer.close()
            return
        self._tasks.add(task)
        self._open += 1
        self._open_from[host] = self._open_from.get(host, 0) + 1
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            refusal = None
            if self._open_from[host] > MAX_CONNECTIONS_PER_PEER:
                refusal = _Refusal(503, f"too many open connections from {host}")
                self._count("busy")
            elif self._open > MAX_CONNECTIONS:
                refusal = _Refusal(503, "too many open connections")
                self._count("busy")
            if refusal is not None:
                await self._send(connection, refusal.status, refusal_answer(refusal.reason), False)
                await _linger(connection)
                return
            await self._converse(connection)
        except (ConnectionError, TimeoutError, _Quiet, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not reach the loop
            log.error("mark unit: a connection failed: %s", type(exc).__name__)
        finally:
            self._tasks.discard(task)
            self._open -= 1
            self._open_from[host] -= 1
            if not self._open_from[host]:
                del self._open_from[host]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, connection: _Connection) -> None:
        while True:
            try:
                request = await self._read_request(connection)
            except _Refusal as refusal:
                self._count("bad-request")
                await self._send(connection, refusal.status, refusal_answer(refusal.reason), False)
                await _linger(connection)
                return
            # The answer first: what the check leaves for later (the verdict's listeners but
            # its journal record, the verdict cache's write, the repeat cache) runs once it is
            # written, before the next request is read (markd.checks.after_answer).
            later = AfterAnswer()
            try:
                with later.collecting():
                    status, body = await self._dispatch(request, connection.peer)
                keep = connection.http.their_state is h11.DONE and status < 500
                later.answer_size = await self._send(
                    connection, status, body, keep, head_only=request.method == "HEAD"
                )
                if self.observer is not None:
                    self.observer((time.perf_counter() - request.started) * 1000.0)
            finally:
                later.run()
            connection.answered += 1
            if not keep:
                return
            connection.pending = connection.http.trailing_data[0]
            connection.http = _new_http()

    async def _read_request(self, connection: _Connection) -> _Request:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (IDLE_TIMEOUT_S if connection.answered else HEAD_TIMEOUT_S)
        http = connection.http
        received = len(connection.pending)
        if connection.pending:
            http.receive_data(connection.pending)
            deadline = min(deadline, loop.time() + HEAD_TIMEOUT_S)
        connection.pending = b""
        while True:
            try:
                event = http.next_event()
            except H11_REFUSALS as exc:
                hint = getattr(exc, "error_status_hint", 400)
                if hint == 431:
                    raise _Refusal(
                        431, f"the request head exceeds {MAX_HEAD_BYTES} bytes"
                    ) from None
                if hint == 501:
                    raise _Refusal(411, "send the body with Content-Length") from None
                raise _Refusal(400, f"malformed request: {refusal_text(exc)}") from None
            if isinstance(event, h11.Request):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise _Quiet()
            chunk = await self._receive(connection, deadline, head=True)
            if chunk and not received:
                deadline = min(deadline, loop.time() + HEAD_TIMEOUT_S)
            received += len(chunk)
            http.receive_data(chunk)
        if len(event.headers) > MAX_HEADERS:
            raise _Refusal(431, "too many header lines")
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers:
            name = raw_name.decode("ascii")
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise _Refusal(411, "send the body with Content-Length")
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()) or len(length) > 12:
            raise _Refusal(400, "bad Content-Length")
        if int(length) > MAX_BODY_BYTES:
            raise _Refusal(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
        target = event.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        request = _Request(
            event.method.decode("ascii", "replace"), path, headers, started=time.perf_counter()
        )
        request.body = await self._read_body(connection, http)
        return request

    async def _read_body(self, connection: _Connection, http: h11.Connection) -> bytes:
        deadline = asyncio.get_running_loop().time() + BODY_TIMEOUT_S
        parts: list[bytes] = []
        while True:
            try:
                event = http.next_event()
            except H11_REFUSALS:
                raise _Quiet() from None
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
                continue
            if http.they_are_waiting_for_100_continue:
                connection.writer.write(
                    http.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            chunk = await self._receive(connection, deadline, head=False)
            if not chunk:
                raise _Quiet()
            http.receive_data(chunk)

    async def _receive(self, connection: _Connection, deadline: float, *, head: bool) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await connection.reader.read(READ_SIZE)
        except TimeoutError:
            if head:
                raise _Quiet() from None
            raise _Refusal(400, "the body did not arrive in time") from None

    async def _dispatch(self, request: _Request, peer: str) -> tuple[int, Any]:
        received = time.monotonic()  # the till's patience runs from here, slot wait included
        match = _ROUTE.match(request.path)
        if match is None:
            self._count("not-found")
            return 404, refusal_answer("no such route")
        route = match.group("route").lower()
        if request.method != _METHODS[route]:
            self._count("method-not-allowed")
            return 405, refusal_answer(f"{route} takes {_METHODS[route]}")
        if route == "/token":
            return 200, _token()
        if route.startswith("/api4/system/"):
            return 200, {"version": __version__, "state": "regular", "timestamp": int(time.time())}
        inn = match.group("inn1") or match.group("inn2")
        try:
            document = parse_document(
                request.body,
                content_type=request.headers.get("content-type", ""),
                price_unit=self.config.price_unit,
                fallback=self.config.encoding,
            )
        except BadDocument as bad:
            self._count("bad-document")
            log.warning("mark unit: refused a document from %s: %s", peer, bad.reason)
            return 400, refusal_answer(bad.reason)
        if inn:
            document = _with_inn(document, inn)
        try:
            return 200, await self.desk.handle(document, peer, request.body, received=received)
        except Exception as exc:  # noqa: BLE001 - answered 500, never a traceback
            log.error("mark unit: a %s document failed: %s", document.action, type(exc).__name__)
            return 500, refusal_answer("internal error in markd")

    async def _send(
        self,
        connection: _Connection,
        status: int,
        body: Any,
        keep: bool,
        *,
        head_only: bool = False,
    ) -> int:
        """Write the answer; returns the bytes of its body."""
        data, size = _answer_bytes(
            connection, status, body, keep, self.config.encoding, head_only=head_only
        )
        connection.writer.write(data)
        if connection.writer.transport.get_write_buffer_size():
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await connection.writer.drain()
        return size


def _answer_bytes(
    connection: _Connection,
    status: int,
    body: Any,
    keep: bool,
    encoding: str,
    *,
    head_only: bool = False,
) -> tuple[bytes, int]:
    """The HTTP answer's bytes, framed by the connection's h11 state, and the length of its
    body. ``head_only``: the answer to a HEAD request, no body. An answer that cannot
    be encoded (a bug: it holds what JSON cannot) becomes a 500, never a connection left
    without an answer."""
    try:
        payload, content_type = encode_answer(body, encoding)
    except Exception as exc:  # noqa: BLE001 - the till gets an answer whatever happened
        log.error("mark unit: an answer could not be encoded: %s", type(exc).__name__)
        status = 500
        payload, content_type = encode_answer(refusal_answer("internal error in markd"), encoding)
    headers = [
        (b"Content-Type", content_type.encode("ascii")),
        (b"Content-Length", str(len(payload)).encode("ascii")),
        (b"Cache-Control", b"no-store"),
    ]
    if not keep:  # kept alive is HTTP/1.1's default (h11 closes for a client that cannot)
        headers.append((b"Connection", b"close"))
    http = connection.http
    try:
        data = http.send(
            h11.Response(status_code=status, headers=headers, reason=_PHRASES.get(status, ""))
        )
    except h11.LocalProtocolError:
        # The request was never parsed far enough for h11 to answer it: a fresh state
        # that has "read" a minimal request answers instead.
        http = h11.Connection(h11.SERVER)
        http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        http.next_event()
        data = http.send(
            h11.Response(status_code=status, headers=headers, reason=_PHRASES.get(status, ""))
        )
    if not head_only:  # a HEAD request's answer has no body (h11 frames it without one)
        data += http.send(h11.Data(data=payload))
    data += http.send(h11.EndOfMessage())
    return data, len(payload)


async def _linger(connection: _Connection) -> None:
    """After a refusal, read (and drop) what the client still sends for a moment before
    closing: closing a socket with unread bytes sends a reset, which can destroy the answer
    before the client reads it."""
    with contextlib.suppress(Exception):
        connection.writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await connection.reader.read(READ_SIZE):
                pass


def _token() -> dict[str, Any]:
    """``GET /token`` (TokenController.cs): the tills read it; FMU-API validates nothing in
    it, and neither does markd (the allow-list is the gate)."""
    return {
        "id": "Pos",
        "name": "",
        "role": "pos",
        "expired": int(time.time()) + TOKEN_LIFE_S,
        "signature": "markd",
    }


def _with_inn(document: Any, inn: str) -> Any:
    import dataclasses

    positions = tuple(dataclasses.replace(p, inn=inn) for p in document.positions)
    return dataclasses.replace(document, positions=positions)
