"""The control API: HTTP/1.1 and JSON on a Unix socket, for kiosk screens and ``markctl``.

The daemon serves it on ``[api] socket`` (default ``/run/markd/control.sock``, mode 0660, group
``[api] socket_group`` when that group exists), and, when ``[api] listen`` is set, also on a
loopback TCP port for a kiosk screen running in a browser. ``docs/api.md`` describes every
endpoint with examples; ``docs/openapi.json`` is the machine-readable form (a test keeps it and
:data:`ROUTES` equal)::

    GET  /v1/status            service, scanners, check sources, store, printer, API clients
    POST /v1/check             {"code": "…"} → the verdict (the scan path, scanner "api")
    GET  /v1/events            Server-Sent Events: scans, verdicts, device and service state
    GET  /v1/receipt           the open receipt (null when none)
    POST /v1/receipt           open a receipt
    POST /v1/receipt/items     check a code and add it to the receipt when allowed
    POST /v1/receipt/close     close the receipt with its payments
    POST /v1/receipt/cancel    cancel the open receipt
    POST /v1/reload            re-read the configuration (as SIGHUP), answer with the outcome

Receipts go to a sale session that implements :class:`ReceiptOperations` (``service.receipts``,
the :class:`~markd.sale.SaleDesk`); without one (``[sale] mode`` off: no printer) those
endpoints answer ``503 {"error": "no-printer"}``.

Security. The Unix socket needs no token: its file mode and group decide who connects. TCP
clients send ``Authorization: Bearer TOKEN`` (the token comes from ``[api] token_file`` or the
systemd credential ``api-token``, is compared in constant time and never logged); TCP binds
only loopback addresses unless ``[api] allow_remote`` is set. A request carrying an ``Origin``
header (a browser) is refused unless that origin is listed in ``[api] allowed_origins``;
listed origins get CORS headers and preflight answers.

The server is written on asyncio streams (the standard library has no asyncio HTTP server) and
speaks the small part of HTTP/1.1 the API needs: keep-alive, ``Content-Length`` bodies (a
chunked request is refused with 411), ``Expect: 100-continue``, and strict limits
(:data:`MAX_HEAD_BYTES`, :data:`MAX_HEADERS`, :data:`MAX_BODY_BYTES`, idle and request
timeouts, :data:`MAX_CONNECTIONS`). Every error is JSON: ``{"error": REASON, "message": …}``.

Event stream. Each ``GET /v1/events`` client has its own bounded queue in the
:class:`~markd.events.EventHub`; a client that falls :data:`~markd.events.DEFAULT_QUEUE_LIMIT`
events behind, or does not take a write within :data:`WRITE_TIMEOUT_S`, is disconnected and
the drop is logged. Nothing a client does can hold up the event loop, a scan or another client.

Request bodies hold full marking codes: they are never logged, and neither are tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import grp
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from markd import __version__
from markd.checks.verdict import Verdict
from markd.config import ApiConfig, parse_listen
from markd.errors import ConfigError, MarkdError
from markd.events import UNPUBLISHED_KINDS, StreamClosed, Subscription, verdict_json
from markd.secrets import Secret, load_secret
from markd.systemd import MESSAGE_IDS

if TYPE_CHECKING:
    from markd.service import Service

log = logging.getLogger("markd.api")

#: Longest request head (request line and headers) accepted; longer gets 431.
MAX_HEAD_BYTES = 16 * 1024
#: Most header lines in one request; more gets 431.
MAX_HEADERS = 64
#: Largest request body; a larger ``Content-Length`` gets 413 before the body is read.
MAX_BODY_BYTES = 64 * 1024
#: Longest code accepted by ``/v1/check`` (a scanner frames at most 512 bytes by default).
MAX_CODE_CHARS = 2048
#: Seconds a kept-alive connection may stay silent before the server closes it.
IDLE_TIMEOUT_S = 30.0
#: Seconds a started request (head and body) has to arrive completely.
REQUEST_TIMEOUT_S = 10.0
#: Seconds one write may wait for the client to take the bytes.
WRITE_TIMEOUT_S = 10.0
#: Open connections at most; one more gets 503 and is closed.
MAX_CONNECTIONS = 64
#: Seconds between comment lines on an idle event stream (proxies and clients see it alive).
HEARTBEAT_S = 15.0
#: ``retry:`` sent to event-stream clients: how long a browser waits before reconnecting.
SSE_RETRY_MS = 2000
#: Event kinds the service publishes besides those of the journal.
EXTRA_EVENT_KINDS = ("scan",)
#: Seconds between two log records about refused tokens (a client retrying in a loop).
AUTH_LOG_INTERVAL_S = 60.0
#: Seconds :meth:`ControlServer.close` gives requests under way and event streams to finish.
CLOSE_GRACE_S = 2.0

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PHRASES = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


# --------------------------------------------------------------------------------------------
# Errors


class ControlApiError(MarkdError):
    """The control API cannot start (the socket is in use, a path or port cannot be bound)."""

    reason = "api-unavailable"


class HTTPRefusal(Exception):
    """A request the server answers with an error status and a JSON error body."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})
        #: The connection cannot be reused (the request could not be framed).
        self.close = close
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "message": self.message, **self.extra}


# --------------------------------------------------------------------------------------------
# Receipts: what the API needs from a sale session


class ReceiptError(MarkdError):
    """A sale session refuses an operation (no receipt open, one already open, the printer
    is out of paper …). ``reason`` becomes the ``error`` of the answer, ``status`` its HTTP
    status (409 unless the session says otherwise)."""

    reason = "receipt-error"

    def __init__(self, message: str, reason: str | None = None, *, status: int = 409) -> None:
        super().__init__(message, reason)
        self.status = status


@dataclass(frozen=True)
class OpenReceipt:
    """``POST /v1/receipt``: which receipt to open."""

    #: ``sell`` (приход) or ``return`` (возврат прихода).
    kind: Literal["sell", "return"] = "sell"


@dataclass(frozen=True)
class ReceiptItem:
    """``POST /v1/receipt/items``: one marked unit (one code is one unit). ``code`` is the full
    code as scanned (the printer needs its crypto tail), so it is kept out of ``repr``."""

    code: str = field(repr=False)
    name: str
    price_kopecks: int
    #: The tax type as the fiscal side names it (``vat20`` …); None: the session's default.
    tax: str | None = None


@dataclass(frozen=True)
class Payment:
    """One payment of ``POST /v1/receipt/close``."""

    #: ``cash`` (tag 1031) or ``electronically`` (card and other electronic means, tag 1081).
    type: Literal["cash", "electronically"]
    amount_kopecks: int


class ReceiptOperations(Protocol):
    """What the control API needs from a sale session (``service.receipts``).

    Every method returns JSON-ready data describing the receipt after the operation (the
    API puts it under ``"receipt"``), and raises :class:`ReceiptError` to refuse. The API
    has already validated the request's shape; the session judges the sale.
    """

    async def open(self, request: OpenReceipt) -> Mapping[str, Any]:
        """Open a receipt (refuse when one is open)."""
        ...

    async def add(self, item: ReceiptItem, verdict: Verdict) -> Mapping[str, Any]:
        """Add a unit; with no receipt open, open a sale first. ``verdict`` is the one markd
        just gave ``item.code`` (journaled, with its tag 1265). On a sale it is always
        ``allow``: the API refuses other codes itself. On a return it may be anything (a
        recalled unit comes back; a unit sold here reads ``sold-here``); the session keeps it
        for the record."""
        ...

    async def close(self, payments: tuple[Payment, ...]) -> Mapping[str, Any]:
        """Close (print) the receipt with these payments; none given: the session's default
        (the whole total, one payment of the configured type)."""
        ...

    async def cancel(self) -> Mapping[str, Any]:
        """Cancel the open receipt."""
        ...

    async def current(self) -> Mapping[str, Any] | None:
        """The open receipt, or None. Its ``kind`` is ``sell`` or ``return`` (the API reads it
        to know whether a code must be allowed; missing means a sale)."""
        ...

    def status(self) -> Mapping[str, Any]:
        """The printer's last known state for ``GET /v1/status`` (no device I/O: it is
        called on every status request)."""
        ...


# --------------------------------------------------------------------------------------------
# Requests, answers and routes


@dataclass
class Request:
    """One parsed request."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = field(default=b"", repr=False)
    #: ``unix`` or ``tcp``: which listener the request came through.
    transport: str = "unix"
    #: Who sent it, for the log (``unix`` or ``127.0.0.1:40112``).
    peer: str = ""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def json(self, *, empty_ok: bool = False) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}`` when ``empty_ok``)."""
        if not self.body.strip() and empty_ok:
            return {}
        try:
            data = json.loads(self.body.decode("utf-8"), parse_constant=_no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HTTPRefusal(400, "bad-json", "the body is not valid JSON (UTF-8)") from None
        if not isinstance(data, dict):
            raise HTTPRefusal(400, "bad-json", "the body must be a JSON object")
        return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["ControlServer", Request], Awaitable[Response | None]]

#: Every route the server answers: ``(method, path)`` → handler. The OpenAPI document lists
#: exactly these (tests/unit/test_api_docs.py).
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[(method, path)] = handler
        return handler

    return register


def event_kinds() -> list[str]:
    """Kinds a ``GET /v1/events`` client may receive (and name in ``?kinds=``)."""
    return sorted((set(MESSAGE_IDS) | set(EXTRA_EVENT_KINDS)) - UNPUBLISHED_KINDS)


def _wanted_kinds(query: dict[str, list[str]]) -> list[str] | None:
    """``?kinds=verdict,scanner``: exact kinds or families (``scanner`` = ``scanner-*``)."""
    names = [n.strip() for value in query.get("kinds", []) for n in value.split(",") if n.strip()]
    if not names:
        return None
    known = event_kinds()
    unknown = [n for n in names if n not in known and not any(k.startswith(n + "-") for k in known)]
    if unknown:
        raise HTTPRefusal(
            400,
            "unknown-kind",
            f"unknown event kind(s) {', '.join(unknown)}; known: {', '.join(known)} "
            "(or a family such as 'scanner')",
        )
    return names


# --------------------------------------------------------------------------------------------
# The server


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    transport: str
    peer: str
    #: A request is being answered (or an event stream runs): close() lets it finish.
    busy: bool = False
    subscription: Subscription | None = None


class ControlServer:
    """The control API of one :class:`~markd.service.Service`.

    :meth:`start` binds the listeners synchronously (so the socket exists before the service
    says READY=1; an error stops start-up) and serves from the running loop; :meth:`close`
    ends every connection and removes the socket file.

    :param service: the service whose state and checks the API exposes; it provides
        ``config``, ``events`` (an :class:`~markd.events.EventHub`), ``receipts``,
        ``scanners``, ``store``, ``chain``, ``ready`` and ``submit()``.
    :param config: the ``[api]`` section.
    :param token: the bearer token for TCP (default: loaded from ``[api] token_file`` or the
        credential ``api-token`` when ``listen`` is set).
    :param heartbeat_s: seconds between heartbeats on an idle event stream.
    :param event_queue_limit: events a stream client may fall behind before it is dropped.
    """

    def __init__(
        self,
        service: Service,
        config: ApiConfig,
        *,
        token: Secret | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        event_queue_limit: int | None = None,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.config = config
        self.heartbeat_s = heartbeat_s
        self.event_queue_limit = event_queue_limit
        self.write_timeout_s = write_timeout_s
        self.started_at = time.time()
        #: ``(host, port)`` of the TCP listener once bound (port 0 in the config: the real one).
        self.tcp_address: tuple[str, int] | None = None
        self._token = token
        self._origins = frozenset(config.allowed_origins)
        self._unix_socket: socket.socket | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._tcp_socket: socket.socket | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._serving: asyncio.Task[None] | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._auth_refused = 0
        self._auth_logged_at = -AUTH_LOG_INTERVAL_S

    @property
    def unix_path(self) -> str:
        return self.config.socket

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the Unix socket (and TCP when configured) and start serving on the running loop.

        Raises :class:`~markd.errors.ConfigError` for a TCP setting that cannot be honoured
        (no token, a non-loopback address without ``allow_remote``) and
        :class:`ControlApiError` when a listener cannot be bound.
        """
        loop = asyncio.get_running_loop()
        tcp = self._tcp_plan()  # judge the TCP settings before binding anything
        self._unix_socket = self._bind_unix()
        if tcp is not None:
            try:
                self._tcp_socket = self._bind_tcp(*tcp)
            except BaseException:
                self._unlink_socket()
                raise
        self._serving = loop.create_task(self._serve(), name="markd-api")
        where = [f"unix:{self.unix_path}"]
        if self.tcp_address is not None:
            where.append(f"http://{_address(*self.tcp_address)}")
        log.info("control API listening on %s", " and ".join(where))

    async def close(self) -> None:
        """Stop accepting; let requests under way finish and event streams send what they
        hold (``service-stopping`` included), for up to :data:`CLOSE_GRACE_S`; end every
        connection; remove the socket file."""
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
            self._serving = None
        for server in self._servers:
            server.close()
        busy = []
        for task, connection in list(self._connections.items()):
            if connection.subscription is not None:
                connection.subscription.finish()
            if connection.busy:
                busy.append(task)
            else:
                task.cancel()  # idle between requests: nothing to lose
        if busy:
            await asyncio.wait(busy, timeout=CLOSE_GRACE_S)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for sock in (self._unix_socket, self._tcp_socket):
            if sock is not None:
                sock.close()
        self._unix_socket = self._tcp_socket = None
        self._unlink_socket()

    async def _serve(self) -> None:
        if self._unix_socket is not None:
            self._servers.append(
                await asyncio.start_unix_server(
                    lambda r, w: self._accept(r, w, "unix"),
                    sock=self._unix_socket,
                    limit=MAX_HEAD_BYTES,
                )
            )
        if self._tcp_socket is not None:
            self._servers.append(
                await asyncio.start_server(
                    lambda r, w: self._accept(r, w, "tcp"),
                    sock=self._tcp_socket,
                    limit=MAX_HEAD_BYTES,
                )
            )

    def _tcp_plan(self) -> tuple[str, int] | None:
        if not self.config.listen:
            return None
        try:
            host, port = parse_listen(self.config.listen)
        except ValueError as exc:
            raise ConfigError(f"[api] listen: {exc}") from None
        if not ipaddress.ip_address(host).is_loopback and not self.config.allow_remote:
            raise ConfigError(
                f"[api] listen: {host} is not a loopback address; the API token would cross "
                "the network in clear text. Use 127.0.0.1, or set [api] allow_remote = true."
            )
        if self._token is None:
            self._token = load_secret(
                self.config.token_file, "api-token", what="[api] token_file (TCP listener)"
            )
        return host, port

    def _bind_unix(self) -> socket.socket:
        path = Path(self.config.socket)
        if len(os.fsencode(path)) > 107:
            raise ControlApiError(f"[api] socket: {path} is longer than a Unix socket path may be")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlApiError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        self._refuse_live_socket(path)
        # Bind under a temporary name, set mode and group, then rename into place: the socket
        # is never reachable at its public path with looser permissions.
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            sock.bind(str(temporary))
            os.chmod(temporary, 0o660)
            self._set_group(temporary)
            sock.listen(64)
            os.replace(temporary, path)
            info = path.stat()
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ControlApiError(f"cannot create {path}: {exc.strerror or exc}") from exc
        self._unix_inode = (info.st_dev, info.st_ino)
        sock.setblocking(False)
        return sock

    def _refuse_live_socket(self, path: Path) -> None:
        """A socket file left by a crashed daemon is replaced; one a live daemon answers on,
        or a file that is not a socket, stops start-up."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlApiError(f"[api] socket: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return  # nobody listens: stale
        finally:
            probe.close()
        raise ControlApiError(
            f"[api] socket: {path} is in use (another markd running?)", "api-socket-in-use"
        )

    def _set_group(self, path: Path) -> None:
        name = self.config.socket_group
        if not name:
            return
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            return  # no such group on this system (a development machine): keep the default
        try:
            if os.stat(path).st_gid == gid:
                # Under systemd (Group=markd) the socket is created with it already; the unit's
                # system call filter refuses chown(), so it is not even attempted.
                return
            os.chown(path, -1, gid)
        except OSError as exc:
            log.warning(
                "control API: cannot give %s to group %s: %s", path, name, exc.strerror or exc
            )

    def _bind_tcp(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=64)
        except OSError as exc:
            raise ControlApiError(
                f"[api] listen: cannot listen on {self.config.listen}: {exc.strerror or exc}"
            ) from exc
        sock.setblocking(False)
        bound = sock.getsockname()
        self.tcp_address = (bound[0], bound[1])
        return sock

    def _unlink_socket(self) -> None:
        """Remove the socket file, but only if it is still ours (a newer daemon's stays)."""
        if self._unix_inode is None:
            return
        path = Path(self.config.socket)
        with contextlib.suppress(OSError):
            info = path.lstat()
            if (info.st_dev, info.st_ino) == self._unix_inode:
                path.unlink()
        self._unix_inode = None

    # -- connections ----------------------------------------------------------------------------

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = "unix"
        if transport == "tcp":
            address = writer.get_extra_info("peername")
            peer = f"{address[0]}:{address[1]}" if address else "tcp"
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(reader, writer, transport, peer)
        self._connections[task] = connection
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                refusal = HTTPRefusal(503, "busy", "too many open connections", close=True)
                await self._send(connection, self._refusal_response(refusal, None), False)
                return
            await self._converse(connection)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() ends connections by cancelling them; the task then simply finishes
            # (asyncio's stream callback would report a cancelled handler as an error).
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not reach the loop
            log.error("control API connection failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, connection: _Connection) -> None:
        """Requests one after another on a kept-alive connection."""
        while True:
            try:
                request = await self._read_request(connection)
            except HTTPRefusal as refusal:
                await self._send(connection, self._refusal_response(refusal, None), False)
                return
            if request is None:
                return
            connection.busy = True
            if request.path == "/v1/events" and request.method == "GET":
                try:
                    self._admit(request)
                except HTTPRefusal as refusal:
                    await self._send(connection, self._refusal_response(refusal, request), False)
                    return
                await self._stream_events(connection, request)
                return
            response = await self._dispatch(request)
            keep = request.keep_alive
            await self._send(connection, response, keep)
            connection.busy = False
            if not keep:
                return

    async def _read_request(self, connection: _Connection) -> Request | None:
        """The next request, or None when the client closed or stayed idle too long."""
        reader = connection.reader
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except TimeoutError:
            return None
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise HTTPRefusal(
                    400, "bad-request", "the request ended early", close=True
                ) from None
            return None
        except asyncio.LimitOverrunError:
            raise HTTPRefusal(
                431,
                "headers-too-large",
                f"the request head exceeds {MAX_HEAD_BYTES} bytes",
                close=True,
            ) from None
        request = _parse_head(head, connection)
        if "transfer-encoding" in request.headers:
            raise HTTPRefusal(
                411,
                "length-required",
                "send the body with Content-Length (chunked request bodies are not accepted)",
                close=True,
            )
        length_text = request.headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 12:
            raise HTTPRefusal(400, "bad-request", "bad Content-Length", close=True)
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise HTTPRefusal(
                413, "body-too-large", f"the body exceeds {MAX_BODY_BYTES} bytes", close=True
            )
        if length:
            if request.headers.get("expect", "").lower() == "100-continue":
                connection.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                request.body = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_S)
            except TimeoutError:
                raise HTTPRefusal(
                    400, "bad-request", "the body did not arrive in time", close=True
                ) from None
        return request

    async def _send(self, connection: _Connection, response: Response, keep: bool) -> None:
        connection.writer.write(_encode(response, keep))
        await asyncio.wait_for(connection.writer.drain(), self.write_timeout_s)

    # -- dispatch -------------------------------------------------------------------------------

    def _admit(self, request: Request) -> None:
        """The checks every request passes before its route: origin, then token (TCP)."""
        origin = request.headers.get("origin")
        if origin is not None and origin not in self._origins:
            raise HTTPRefusal(403, "origin-not-allowed", f"origin {origin[:100]} is not allowed")
        if request.transport == "tcp" and not self._authorized(request):
            raise HTTPRefusal(
                401,
                "unauthorized",
                "send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": 'Bearer realm="markd"'},
            )

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = self._token
        ok = (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.reveal().encode())
        )
        if not ok:
            self._auth_refused += 1
            now = time.monotonic()
            if now - self._auth_logged_at >= AUTH_LOG_INTERVAL_S:
                self._auth_logged_at = now
                log.warning(
                    "control API: refused %d request(s) without a valid token (last from %s)",
                    self._auth_refused,
                    request.peer,
                )
                self._auth_refused = 0
        return ok

    async def _dispatch(self, request: Request) -> Response:
        try:
            if request.method == "OPTIONS":
                response = self._preflight(request)
                response.headers.update(self._cors(request))
                return response
            self._admit(request)
            handler = ROUTES.get((request.method, request.path))
            if handler is None:
                allowed = sorted(m for m, p in ROUTES if p == request.path)
                if allowed:
                    raise HTTPRefusal(
                        405,
                        "method-not-allowed",
                        f"{request.path} takes {', '.join(allowed)}",
                        headers={"Allow": ", ".join(allowed)},
                    )
                raise HTTPRefusal(404, "not-found", f"no such endpoint: {request.path[:200]}")
            response = await handler(self, request)
            assert response is not None
        except HTTPRefusal as refusal:
            return self._refusal_response(refusal, request)
        except ReceiptError as exc:
            response = Response(exc.status, {"error": exc.reason, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the daemon goes on
            log.error(
                "control API: %s %s failed: %s: %s",
                request.method,
                request.path,
                type(exc).__name__,
                exc,
            )
            response = Response(500, {"error": "internal-error", "message": type(exc).__name__})
        response.headers.update(self._cors(request))
        return response

    def _refusal_response(self, refusal: HTTPRefusal, request: Request | None) -> Response:
        headers = dict(refusal.headers)
        if request is not None:
            headers.update(self._cors(request))
        return Response(refusal.status, refusal.body(), headers)

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in self._origins:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None or origin not in self._origins:
            raise HTTPRefusal(403, "origin-not-allowed", "this origin is not allowed")
        return Response(
            204,
            None,
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )

    # -- endpoints ------------------------------------------------------------------------------

    @route("GET", "/v1/status")
    async def _get_status(self, request: Request) -> Response:
        return Response(200, self.status())

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` answers (cheap: no device or network I/O)."""
        service = self.service
        config = service.config
        scanners = {
            name: {"url": str(scanner.url), "present": scanner.present}
            for name, scanner in service.scanners.items()
        }
        sources: dict[str, Any] = {}
        chain = service.chain
        for name in ("online", "local_module", "tspiot"):
            client = getattr(chain, name, None)
            if client is not None and hasattr(client, "status"):
                sources[name] = client.status()
        receipts = service.receipts
        return {
            "service": {
                "state": "ready" if service.ready.is_set() else "starting",
                "version": __version__,
                "pid": os.getpid(),
                "mode": config.check.mode,
                "uptime_s": round(time.time() - self.started_at, 1),
            },
            "scanners": scanners,
            "sources": sources,
            "store": _store_status(service),
            "printer": None if receipts is None else dict(receipts.status()),
            "api": {
                "event_clients": service.events.subscribers,
                "event_clients_dropped": service.events.dropped,
                "connections": len(self._connections),
                "tcp": None if self.tcp_address is None else _address(*self.tcp_address),
            },
        }

    @route("POST", "/v1/check")
    async def _post_check(self, request: Request) -> Response:
        body = request.json()
        _only(body, {"code"})
        code = _code(body)
        verdict = await self.service.submit(code.encode("utf-8"), "api")
        return Response(200, verdict_json(verdict))

    @route("POST", "/v1/reload")
    async def _post_reload(self, request: Request) -> Response:
        _only(request.json(empty_ok=True), set())
        result = await self.service.reload()
        if not result.ok:
            raise HTTPRefusal(
                409, "reload-refused", result.message, extra={"generation": result.generation}
            )
        return Response(
            200, {"ok": True, "message": result.message, "generation": result.generation}
        )

    @route("GET", "/v1/events")
    async def _get_events(self, request: Request) -> Response | None:
        # Served by _stream_events (the connection becomes the stream); listed here so that
        # the route table, 405 answers and the OpenAPI test know it.
        raise HTTPRefusal(500, "internal-error", "event stream not dispatched")

    @route("GET", "/v1/receipt")
    async def _get_receipt(self, request: Request) -> Response:
        receipts = self._receipts()
        current = await receipts.current()
        return Response(200, {"receipt": None if current is None else dict(current)})

    @route("POST", "/v1/receipt")
    async def _post_receipt(self, request: Request) -> Response:
        body = request.json(empty_ok=True)
        _only(body, {"kind"})
        kind = _field(body, "kind", str, default="sell")
        if kind not in ("sell", "return"):
            raise HTTPRefusal(400, "bad-request", "kind: expected sell or return")
        receipts = self._receipts()
        state = await receipts.open(OpenReceipt(kind=kind))
        return Response(201, {"receipt": dict(state)})

    @route("POST", "/v1/receipt/items")
    async def _post_item(self, request: Request) -> Response:
        body = request.json()
        _only(body, {"code", "name", "price_kopecks", "tax"})
        code = _code(body)
        name = _field(body, "name", str)
        if not name.strip():
            raise HTTPRefusal(400, "bad-request", "name: must not be empty")
        price = _field(body, "price_kopecks", int)
        if price < 0:
            raise HTTPRefusal(400, "bad-request", "price_kopecks: must be 0 or more")
        tax = _field(body, "tax", str, default=None)
        receipts = self._receipts()
        # Checked at the price it is sold at: the price rules (a tobacco pack above its MRP,
        # a unit below its minimum price) judge the sale, not just the code.
        verdict = await self.service.submit(code.encode("utf-8"), "api", price_kopecks=price)
        current = await receipts.current()
        selling = current is None or current.get("kind", "sell") != "return"
        if selling and verdict.decision != "allow":
            raise HTTPRefusal(
                409,
                "code-not-allowed",
                verdict.message_ru,
                extra={"verdict": verdict_json(verdict)},
            )
        item = ReceiptItem(code=code, name=name, price_kopecks=price, tax=tax)
        state = await receipts.add(item, verdict)
        return Response(200, {"receipt": dict(state), "verdict": verdict_json(verdict)})

    @route("POST", "/v1/receipt/close")
    async def _post_close(self, request: Request) -> Response:
        body = request.json(empty_ok=True)
        _only(body, {"payments"})
        raw = _field(body, "payments", list, default=[])
        payments = []
        for index, entry in enumerate(raw, start=1):
            if not isinstance(entry, dict):
                raise HTTPRefusal(400, "bad-request", f"payments item {index}: expected an object")
            _only(entry, {"type", "amount_kopecks"}, where=f"payments item {index}: ")
            kind = _field(entry, "type", str, where=f"payments item {index}: ")
            if kind not in ("cash", "electronically"):
                raise HTTPRefusal(
                    400,
                    "bad-request",
                    f"payments item {index}: type: expected cash or electronically",
                )
            amount = _field(entry, "amount_kopecks", int, where=f"payments item {index}: ")
            if amount <= 0:
                raise HTTPRefusal(
                    400, "bad-request", f"payments item {index}: amount_kopecks must be > 0"
                )
            payments.append(Payment(type=kind, amount_kopecks=amount))
        receipts = self._receipts()
        state = await receipts.close(tuple(payments))
        return Response(200, {"receipt": dict(state)})

    @route("POST", "/v1/receipt/cancel")
    async def _post_cancel(self, request: Request) -> Response:
        _only(request.json(empty_ok=True), set())
        receipts = self._receipts()
        state = await receipts.cancel()
        return Response(200, {"receipt": dict(state)})

    def _receipts(self) -> ReceiptOperations:
        receipts = self.service.receipts
        if receipts is None:
            raise HTTPRefusal(
                503,
                "no-printer",
                "no sale session: [sale] mode is off, so no fiscal printer is opened",
            )
        return receipts

    # -- the event stream -----------------------------------------------------------------------

    async def _stream_events(self, connection: _Connection, request: Request) -> None:
        try:
            kinds = _wanted_kinds(request.query)
        except HTTPRefusal as refusal:
            await self._send(connection, self._refusal_response(refusal, request), False)
            return
        writer = connection.writer

        def dropped(subscription: Subscription) -> None:
            log.warning(
                "control API: event stream client %s dropped: it fell %d events behind",
                subscription.name,
                subscription.limit,
            )
            writer.transport.abort()

        subscription = self.service.events.subscribe(
            kinds, limit=self.event_queue_limit, name=connection.peer, on_drop=dropped
        )
        connection.subscription = subscription
        # Anything the client sends now, or its closing, ends the stream at once (not at the
        # next heartbeat).
        watcher = asyncio.ensure_future(_close_on_eof(connection.reader, subscription))
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "Connection": "close",
            "X-Accel-Buffering": "no",
            **self._cors(request),
        }
        head = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in _common_headers(headers).items())]
        try:
            await self._write(
                writer,
                ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                + f"retry: {SSE_RETRY_MS}\n: markd {__version__} events\n\n".encode(),
                subscription,
            )
            while True:
                try:
                    event = await subscription.next(self.heartbeat_s)
                except StreamClosed:
                    return
                if event is None:
                    chunk = b": heartbeat\n\n"
                else:
                    data = json.dumps(
                        event.to_json(), ensure_ascii=False, separators=(",", ":"), default=str
                    )
                    chunk = f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()
                await self._write(writer, chunk, subscription)
        finally:
            subscription.close()
            watcher.cancel()

    async def _write(
        self, writer: asyncio.StreamWriter, data: bytes, subscription: Subscription
    ) -> None:
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), self.write_timeout_s)
        except TimeoutError:
            log.warning(
                "control API: event stream client %s dropped: it took no data for %g s",
                subscription.name,
                self.write_timeout_s,
            )
            self.service.events.dropped += 1
            writer.transport.abort()
            raise


async def _close_on_eof(reader: asyncio.StreamReader, subscription: Subscription) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(4096):
            pass
    subscription.close()


# --------------------------------------------------------------------------------------------
# Helpers


def _parse_head(head: bytes, connection: _Connection) -> Request:
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    while lines and lines[0] == "":  # a stray CRLF before a request is allowed (RFC 9112)
        lines.pop(0)
    if not lines:
        raise HTTPRefusal(400, "bad-request", "empty request", close=True)
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith("/"):
        raise HTTPRefusal(400, "bad-request", "malformed request line", close=True)
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPRefusal(505, "bad-version", "HTTP/1.1 only", close=True)
    headers: dict[str, str] = {}
    count = 0
    for line in lines[1:]:
        if not line:
            continue
        count += 1
        if count > MAX_HEADERS:
            raise HTTPRefusal(431, "headers-too-large", "too many header lines", close=True)
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HTTPRefusal(400, "bad-request", "malformed header line", close=True)
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length" and key in headers and headers[key] != value:
            raise HTTPRefusal(400, "bad-request", "conflicting Content-Length", close=True)
        if key in headers and key != "content-length":
            value = f"{headers[key]}, {value}"
        headers[key] = value
    split = urllib.parse.urlsplit(target)
    return Request(
        method=method,
        target=target,
        path=split.path,
        query=urllib.parse.parse_qs(split.query),
        version=version,
        headers=headers,
        transport=connection.transport,
        peer=connection.peer,
    )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _common_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        "Date": email.utils.formatdate(usegmt=True),
        "Server": f"markd/{__version__}",
        "X-Content-Type-Options": "nosniff",
        **headers,
    }


def _encode(response: Response, keep: bool) -> bytes:
    status = response.status
    headers = dict(response.headers)
    payload = b""
    if status != 204:
        payload = (
            json.dumps(response.body, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        ).encode("utf-8")
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        headers["Content-Length"] = str(len(payload))
    headers.setdefault("Cache-Control", "no-store")
    headers["Connection"] = "keep-alive" if keep else "close"
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in _common_headers(headers).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _only(body: Mapping[str, Any], allowed: set[str], *, where: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise HTTPRefusal(
            400, "unknown-field", f"{where}unknown field(s) {', '.join(unknown)} (known: {known})"
        )


_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array"}


def _field(
    body: Mapping[str, Any], name: str, kind: type, *, default: Any = _MISSING, where: str = ""
) -> Any:
    if name not in body:
        if default is _MISSING:
            raise HTTPRefusal(400, "bad-request", f"{where}{name}: required")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HTTPRefusal(400, "bad-request", f"{where}{name}: expected {_TYPE_NAMES[kind]}")
    return value


def _code(body: Mapping[str, Any]) -> str:
    code = _field(body, "code", str)
    if not code:
        raise HTTPRefusal(400, "bad-request", "code: must not be empty")
    if len(code) > MAX_CODE_CHARS:
        raise HTTPRefusal(400, "bad-request", f"code: longer than {MAX_CODE_CHARS} characters")
    return code


def _store_status(service: Service) -> dict[str, Any] | None:
    """The store's version and freshness from its metadata (no scan of the journal)."""
    store = service.store
    if store is None:
        return None
    try:
        info = store.info()
    except MarkdError as exc:
        return {"error": exc.message}
    now = time.time()
    age = None if info.synced_at is None else max(0.0, now - info.synced_at)
    return {
        "path": service.config.store.path,
        "version": info.version,
        "source": info.source,
        "synced_at": info.synced_at,
        "age_s": None if age is None else round(age, 1),
        "max_age_s": store.max_age_s,
        "stale": age is None or age > store.max_age_s,
        "blocked": dict(info.counts),
        "blocked_by_hand": info.manual,
    }
