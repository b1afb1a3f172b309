"""The control API's server: connections on asyncio streams, HTTP/1.1 framed by h11.

The split follows h11's design ("sans-I/O"): h11 turns the bytes a client sent into events
(a request head, body data, its end) and our answers into bytes, and so decides the HTTP
grammar — request line, header syntax, ``Content-Length`` and chunked framing,
``Expect: 100-continue``, whether a connection may be kept alive. This module owns what h11
leaves to its caller: the sockets, every deadline, the limits, the order of checks and the
answers to refusals.

Limits and refusals (``docs/api.md``, "Conventions"; each is tested)::

    request line and headers  > MAX_HEAD_BYTES      431 headers-too-large, connection closed
    header lines              > MAX_HEADERS         431 headers-too-large, connection closed
    body (Content-Length)     > MAX_BODY_BYTES      413 body-too-large, before the body is read
    Transfer-Encoding (any)                         411 length-required (bodies by length only)
    grammar h11 refuses, a target not starting
      with "/"                                      400 bad-request, connection closed
    a Content-Length that is not one field of
      ASCII digits ("+5", "5_0", "٥", "5, 5")       400 bad-request, connection closed
    a header line folded onto the one before it
      (obs-fold: starts with a space or a tab)      400 bad-request, connection closed
    a version other than HTTP/1.0 or 1.1            505 bad-version, connection closed
    no complete head HEAD_TIMEOUT_S after the
      connection opened                             connection closed without an answer
    kept alive: nothing IDLE_TIMEOUT_S after the
      last answer, or a head not complete
      HEAD_TIMEOUT_S after its first byte           connection closed without an answer
    body not complete within REQUEST_TIMEOUT_S      400 bad-request, connection closed
    a write not taken within WRITE_TIMEOUT_S        connection closed
    more than MAX_CONNECTIONS[listener] open on
      that listener                                 503 busy to the newest, closed
    more than MAX_CONNECTIONS_PER_PEER open on
      one TCP listener from one address             503 busy to the newest, closed
    TCP without the right token                     401 unauthorized, connection closed
                                                    (any answer to such a request closes it)
    on the metrics listener, anything but
      METRICS_ROUTES                                404 not-found (405 for another method)

Each listener has connection slots of its own, so the TCP port (which any local user can
reach) can never take the Unix socket's (which only the socket's group can): a flood of idle
or trickling TCP connections, or a client asking again and again without a token, leaves the
kiosk screen and ``markctl`` served (tests/integration/test_api_attacks.py). On TCP one
address also holds at most :data:`MAX_CONNECTIONS_PER_PEER` of the listener's slots: a client
holding each with a request it never finishes (up to ``HEAD_TIMEOUT_S`` apiece) leaves the
rest to the others.

The metrics listener (``[metrics] listen``) is a third listener of the same server, for a
Prometheus server: its own TCP socket, its own slots, its own bearer token (``metrics-token``,
never the API's), and only :data:`METRICS_ROUTES` behind it. A request there passes the same
framing, limits and deadlines, and the same token check and rate-limited refusal record, as
one on the API's TCP port; it never gets CORS headers, and one with an ``Origin`` is refused
(a browser has no business there). Whoever holds the metrics token can read the metrics and
nothing else: no code check, no receipt, no reload.

Two requests h11 would refuse are served as markd always served them: a request without
``Host`` (the socket has one host; clients such as ``socat`` or a shell's ``printf`` omit it)
and one empty line before the request line (RFC 9112 §2.2 asks servers to ignore it; a
client may end a body with a CRLF it did not count). Both are repaired on a copy of the bytes
and parsed again; nothing else is.

Every request passes the origin check (a browser's ``Origin`` must be listed) and, on both
TCP listeners, the bearer token (compared in constant time, never logged) before its route
runs; on the API's TCP port a browser page may instead bring its session cookie (for
:data:`~markd.api.sessions.SESSION_ROUTES`, with a listed ``Origin``) or a one-use ticket
(``GET /v1/events?ticket=``, or its exchange for a session, ``POST /v1/session?ticket=``).
With ``[api] screen`` the TCP listener also serves the customer screen's public files
(:mod:`markd.api.screen`, no credentials), counts its own origin as allowed, and lets the
screen's same-origin requests (no ``Origin``, but ``Sec-Fetch-Site: same-origin`` and a
``Host`` naming the listener) use the cookie. ``GET /v1/events`` with ``Upgrade: websocket``
becomes a WebSocket (:mod:`markd.api.websocket`) after the same checks. Request bodies hold full
marking codes: they are never logged. Nothing a client sends reaches the log (no target, no
credential): a request that makes a route fail is logged by its route and the exception's
type only (no message, no traceback; the log is also published to event subscribers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from markd.api import listeners
from markd.api.messages import (
    COUNTED_REFUSALS,
    PHRASES,
    HTTPRefusal,
    Request,
    Response,
    common_headers,
    json_bytes,
)
from markd.api.protocol import ControlledService
from markd.api.routes import ROUTES, RouteContext, methods_of, receipt_status, route_of
from markd.api.screen import is_screen_path, screen_response
from markd.api.sessions import (
    KEEP_ALIVE_S,
    TICKET_ROUTES,
    SessionStore,
    session_cookies,
    session_routes,
)
from markd.api.sse import HEARTBEAT_S, EventStream, replay_from, wanted_kinds
from markd.api.websocket import WebSocketEvents, accept, wants_websocket
from markd.config.startup import api_token, metrics_token
from markd.errors import ConfigError
from markd.events import Subscription
from markd.http.refusals import H11_REFUSALS, refusal_text
from markd.receipts import ReceiptError
from markd.secrets import Secret

if TYPE_CHECKING:
    from markd.config import ApiConfig, MetricsConfig

log = logging.getLogger("markd.api")

#: Longest request head (request line and headers) accepted; longer gets 431. The empty line
#: that ends the head is not counted (:data:`_END_LINE_BYTES`), as markd always counted.
MAX_HEAD_BYTES = 16 * 1024
#: Most header lines in one request; more gets 431.
MAX_HEADERS = 64
#: Largest request body; a larger ``Content-Length`` gets 413 before the body is read.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a kept-alive connection may stay silent before the server closes it; the next
#: request's head must have arrived by then.
IDLE_TIMEOUT_S = 30.0
#: Seconds a request's head (request line and headers) has to arrive completely: from the
#: moment a connection opens, or on a kept-alive one from the head's first byte. A client
#: trickling its head a byte at a time (a slow-loris) is cut off here.
HEAD_TIMEOUT_S = 10.0
#: Seconds a request's body has to arrive completely once its head is in.
REQUEST_TIMEOUT_S = 10.0
#: Seconds one write may wait for the client to take the bytes.
WRITE_TIMEOUT_S = 10.0
#: Open connections at most per listener; one more on that listener gets 503 and is closed.
#: Separate counts: a TCP flood never takes the Unix socket's slots, nor a flood of the
#: metrics port the API's (a Prometheus server keeps one connection per target alive; 16
#: leave room for a pair of them and a person with curl).
MAX_CONNECTIONS = {"unix": 64, "tcp": 32, "metrics": 16}
#: Open connections at most from one remote address on one TCP listener (the API's TCP port,
#: the metrics port, each counted apart); one more from it gets 503 and is closed. Without it
#: one local user trickling slow requests held all 32 TCP slots.
MAX_CONNECTIONS_PER_PEER = 8
#: What the metrics listener serves, as ``(method, path)`` of :data:`ROUTES`; any other path
#: there is 404, even one the API serves.
METRICS_ROUTES = frozenset({("GET", "/metrics")})
#: How each listener names itself in the refused-token log record.
_LISTENER_NAMES = {"tcp": "control API", "metrics": "metrics listener"}
#: Seconds between two log records about refused tokens (a client retrying in a loop).
AUTH_LOG_INTERVAL_S = 60.0
#: Seconds :meth:`ControlServer.close` gives requests under way and event streams to finish.
CLOSE_GRACE_S = 2.0
#: Bytes asked of a connection at a time. A head over the limit is refused either way: h11
#: refuses one still incomplete past the limit, and a complete one is measured.
READ_SIZE = 64 * 1024
#: Digits a Content-Length may have (a trillion bytes is already absurd here): longer is 400.
MAX_LENGTH_DIGITS = 12

#: h11's text when an HTTP/1.1 request has no Host header (the same in 0.14 and 0.16; the
#: tests of requests without Host fail if it ever changes).
_H11_NO_HOST = "Missing mandatory Host"
#: The Host line added to such a request before it is parsed again.
_ADDED_HOST = b"Host: \r\n"
#: The empty line that ends a head, as h11 finds it.
_END_OF_HEAD = re.compile(rb"\n\r?\n")
#: Bytes of CRLF CRLF: what a head may have beyond MAX_HEAD_BYTES.
_END_LINE_BYTES = 4
#: A Content-Length line as the client wrote it, its value captured (h11 takes the name in
#: any case and no space before the colon).
_CONTENT_LENGTH_LINE = re.compile(rb"(?im)^content-length:(.*?)\r?$")
#: All a Content-Length line may hold after its colon: one optional space, then ASCII digits
#: and nothing else. Stricter than HTTP's optional whitespace on purpose: no client markd
#: knows pads the value, and a padded, signed or listed length is how one parser is made to
#: frame a body differently from another.
_CONTENT_LENGTH_VALUE = re.compile(rb" ?[0-9]+")
#: A line of a head that starts with a space or a tab: it continues the header line before it
#: (obs-fold, RFC 9112 §5.2).
_FOLDED_LINE = re.compile(rb"\n[ \t]")


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    transport: str
    peer: str
    #: h11's state for the request being read or answered (a new one for every request).
    http: h11.Connection = field(default_factory=lambda: _new_http())
    #: Bytes that came after the last request (the next one, pipelined).
    pending: bytes = b""
    #: A request is being answered (or an event stream runs): close() lets it finish.
    busy: bool = False
    #: Requests answered on this connection so far (0: a new connection, whose first head
    #: must arrive within HEAD_TIMEOUT_S of its opening).
    answered: int = 0
    subscription: Subscription | None = None


def _new_http() -> h11.Connection:
    # h11 gives up on a head still incomplete beyond this size: one more byte and it could no
    # longer end within the limit.
    limit = MAX_HEAD_BYTES + _END_LINE_BYTES - 1
    return h11.Connection(h11.SERVER, max_incomplete_event_size=limit)


class _Quiet(Exception):
    """End the connection without an answer (the client went, or never finished a head)."""


class ControlServer:
    """The control API of one daemon.

    :meth:`start` binds the listeners synchronously (so the socket exists before the service
    says READY=1; an error stops start-up) and serves from the running loop; :meth:`close`
    ends every connection and removes the socket file.

    :param service: what the API serves (:class:`~markd.api.protocol.ControlledService`).
    :param config: the ``[api]`` section.
    :param token: the bearer token for TCP (default: loaded from ``[api] token_file`` or the
        credential ``api-token`` when ``listen`` is set).
    :param metrics: the ``[metrics]`` section (None or no ``listen``: no metrics listener).
    :param metrics_token: the metrics listener's bearer token (default: loaded from
        ``[metrics] token_file`` or the credential ``metrics-token`` when ``listen`` is set).
    :param heartbeat_s: seconds between heartbeats on an idle event stream, and between the
        pings of a WebSocket event stream.
    :param pong_timeout_s: seconds a WebSocket client has to answer a ping (default: as
        ``heartbeat_s``).
    :param event_queue_limit: events a stream client may fall behind before it is dropped.
    :param write_timeout_s: seconds a write may wait for the client.
    """

    def __init__(
        self,
        service: ControlledService,
        config: ApiConfig,
        *,
        token: Secret | None = None,
        metrics: MetricsConfig | None = None,
        metrics_token: Secret | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        pong_timeout_s: float | None = None,
        event_queue_limit: int | None = None,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.config = config
        self.heartbeat_s = heartbeat_s
        self.pong_timeout_s = pong_timeout_s
        self.event_queue_limit = event_queue_limit
        self.write_timeout_s = write_timeout_s
        #: ``(host, port)`` of the TCP listener once bound (port 0 in the config: the real one).
        self.tcp_address: tuple[str, int] | None = None
        self.metrics_config = metrics
        #: ``(host, port)`` of the metrics listener once bound, as :attr:`tcp_address`.
        self.metrics_address: tuple[str, int] | None = None
        #: Browser sessions and tickets (``POST /v1/session``), in memory; with a TCP listener
        #: the sessions' digests also beside the control socket (``/run/markd/api-sessions``),
        #: so that a restart of markd keeps them.
        self.sessions = SessionStore(
            config.session_hours * 3600.0,
            on_end=self._session_ended,
            path=Path(config.socket).with_name("api-sessions") if config.listen else None,
        )
        #: The event streams each session opened (by the session's digest): they end with it.
        self._session_streams: dict[bytes, set[Subscription]] = {}
        self._context = RouteContext(service, self._api_status, self.sessions)
        self._token = token
        self._metrics_token = metrics_token
        self._origins = frozenset(config.allowed_origins)
        #: The TCP listener's own origins (``http://127.0.0.1:8391``, ``http://localhost:8391``)
        #: while it serves the customer screen: the screen's page is theirs.
        self._screen_origins: frozenset[str] = frozenset()
        self._unix_socket: socket.socket | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._tcp_socket: socket.socket | None = None
        self._metrics_socket: socket.socket | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._serving: asyncio.Task[None] | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        #: Open connections per listener (``unix``, ``tcp``, ``metrics``), against
        #: MAX_CONNECTIONS.
        self._open: dict[str, int] = dict.fromkeys(MAX_CONNECTIONS, 0)
        #: Open connections per TCP listener and remote address, against
        #: MAX_CONNECTIONS_PER_PEER.
        self._open_from: dict[tuple[str, str], int] = {}
        #: ``(listener, error code)`` → requests refused so (``GET /metrics``).
        self._refused: Counter[tuple[str, str]] = Counter()
        #: Per TCP listener: requests refused for their token since the last record, and
        #: when that record was written.
        self._auth_refused = dict.fromkeys(_LISTENER_NAMES, 0)
        self._auth_logged_at = dict.fromkeys(_LISTENER_NAMES, -AUTH_LOG_INTERVAL_S)

    @property
    def unix_path(self) -> str:
        return self.config.socket

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the Unix socket (and the TCP one and the metrics listener when configured) and
        start serving on the running loop.

        Raises :class:`~markd.errors.ConfigError` for a TCP setting that cannot be honoured
        (no token, a non-loopback address without ``allow_remote``) and
        :class:`~markd.api.listeners.ControlApiError` when a listener cannot be bound; then
        nothing stays bound.
        """
        loop = asyncio.get_running_loop()
        # Judge the TCP settings of both sections before binding anything.
        tcp = self._tcp_plan()
        metrics = self._metrics_plan()
        self._unix_socket, self._unix_inode = listeners.bind_unix(
            Path(self.config.socket), self.config.socket_group
        )
        try:
            if tcp is not None:
                self._tcp_socket = listeners.bind_tcp(*tcp, self.config.listen)
                bound = self._tcp_socket.getsockname()
                self.tcp_address = (bound[0], bound[1])
                if self.config.screen:
                    self._screen_origins = _own_origins(bound[0], bound[1])
            if metrics is not None:
                assert self.metrics_config is not None
                self._metrics_socket = listeners.bind_tcp(
                    *metrics, self.metrics_config.listen, key="[metrics] listen"
                )
                bound = self._metrics_socket.getsockname()
                self.metrics_address = (bound[0], bound[1])
        except BaseException:
            self._close_sockets()
            self._unlink_socket()
            self.tcp_address = self.metrics_address = None
            raise
        self._serving = loop.create_task(self._serve(), name="markd-api")
        where = [f"unix:{self.unix_path}"]
        if self.tcp_address is not None:
            where.append(f"http://{listeners.address_text(*self.tcp_address)}")
        log.info("control API listening on %s", " and ".join(where))
        if self.metrics_address is not None:
            address = listeners.address_text(*self.metrics_address)
            log.info("metrics listener on http://%s/metrics", address)

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
        self._close_sockets()
        self._unlink_socket()

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` answers: the service's snapshot and the API's own part."""
        return {**self.service.status_snapshot(), "api": self._api_status()}

    def _api_status(self) -> dict[str, Any]:
        events = self.service.events
        return {
            "event_clients": events.subscribers,
            "event_clients_dropped": events.dropped,
            "connections": len(self._connections),
            "connections_by_listener": dict(self._open),
            "refused": [
                {"listener": listener, "error": error, "count": count}
                for (listener, error), count in sorted(self._refused.items())
            ],
            "tcp": None if self.tcp_address is None else listeners.address_text(*self.tcp_address),
            # The customer screen shows its «Оплатить» button only then (a demonstration).
            "screen_demo_pay": self.config.screen_demo_pay,
            "metrics": (
                None
                if self.metrics_address is None
                else listeners.address_text(*self.metrics_address)
            ),
        }

    async def _serve(self) -> None:
        if self._unix_socket is not None:
            self._servers.append(
                await asyncio.start_unix_server(
                    lambda r, w: self._accept(r, w, "unix"),
                    sock=self._unix_socket,
                    limit=MAX_HEAD_BYTES,
                )
            )
        for transport, sock in (("tcp", self._tcp_socket), ("metrics", self._metrics_socket)):
            if sock is not None:
                self._servers.append(
                    await asyncio.start_server(
                        lambda r, w, transport=transport: self._accept(r, w, transport),
                        sock=sock,
                        limit=MAX_HEAD_BYTES,
                    )
                )

    def _tcp_plan(self) -> tuple[str, int] | None:
        address = listeners.tcp_address(self.config.listen, allow_remote=self.config.allow_remote)
        if self.config.screen and (
            address is None or not ipaddress.ip_address(address[0]).is_loopback
        ):
            # The page's cookie and tickets travel in clear text, and a browser treats only
            # loopback http:// as a secure context (it sends Sec-Fetch-Site there alone).
            raise ConfigError(
                "[api] screen: needs [api] listen on a loopback address (127.0.0.1:8391): the "
                "customer screen is for the till's own browser"
            )
        if address is not None and self._token is None:
            self._token = api_token(self.config)
        return address

    def _metrics_plan(self) -> tuple[str, int] | None:
        metrics = self.metrics_config
        if metrics is None or not metrics.listen:
            return None
        address = listeners.tcp_address(
            metrics.listen, allow_remote=metrics.allow_remote, section="metrics"
        )
        if self._metrics_token is None:
            self._metrics_token = metrics_token(metrics)
        return address

    def _close_sockets(self) -> None:
        for sock in (self._unix_socket, self._tcp_socket, self._metrics_socket):
            if sock is not None:
                sock.close()
        self._unix_socket = self._tcp_socket = self._metrics_socket = None

    def _unlink_socket(self) -> None:
        if self._unix_inode is not None:
            listeners.unlink_if_ours(Path(self.config.socket), self._unix_inode)
            self._unix_inode = None

    # -- connections ----------------------------------------------------------------------------

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = "unix"
        # The listener and remote address of a TCP connection (either TCP listener).
        peer_key: tuple[str, str] | None = None
        if transport != "unix":
            address = writer.get_extra_info("peername")
            peer = f"{address[0]}:{address[1]}" if address else transport
            peer_key = (transport, address[0] if address else transport)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Answers are written whole: Nagle's algorithm would only delay them.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(reader, writer, transport, peer)
        self._connections[task] = connection
        self._open[transport] += 1
        if peer_key is not None:
            self._open_from[peer_key] = self._open_from.get(peer_key, 0) + 1
        try:
            refusal = None
            if peer_key is not None and self._open_from[peer_key] > MAX_CONNECTIONS_PER_PEER:
                refusal = HTTPRefusal(
                    503,
                    "busy",
                    f"too many open connections from {peer_key[1]} (at most "
                    f"{MAX_CONNECTIONS_PER_PEER} from one address)",
                    close=True,
                )
            elif self._open[transport] > MAX_CONNECTIONS[transport]:
                refusal = HTTPRefusal(503, "busy", "too many open connections", close=True)
            if refusal is not None:
                await self._send(
                    connection, self._refusal_response(refusal, None, transport), False
                )
                return
            await self._converse(connection)
        except (ConnectionError, TimeoutError, _Quiet):
            pass
        except asyncio.CancelledError:
            # close() ends connections by cancelling them; the task then simply finishes
            # (asyncio's stream callback would report a cancelled handler as an error).
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not reach the loop
            # The type only: the message may quote what the client sent.
            log.error("control API connection failed: %s", type(exc).__name__)
        finally:
            self._connections.pop(task, None)
            self._open[transport] -= 1
            if peer_key is not None:
                self._open_from[peer_key] -= 1
                if not self._open_from[peer_key]:
                    del self._open_from[peer_key]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, connection: _Connection) -> None:
        """Requests one after another on a kept-alive connection."""
        while True:
            try:
                request = await self._read_request(connection)
            except HTTPRefusal as refusal:
                await self._send(
                    connection, self._refusal_response(refusal, None, connection.transport), False
                )
                return
            connection.busy = True
            if (
                request.path == "/v1/events"
                and request.method == "GET"
                and connection.transport != "metrics"  # served only METRICS_ROUTES
            ):
                if wants_websocket(request.headers):
                    await self._websocket_events(connection, request)
                else:
                    await self._stream_events(connection, request)
                return
            response = await self._dispatch(request)
            # h11 has read the whole request: DONE means it may be followed by another
            # (MUST_CLOSE: HTTP/1.0, or the client said Connection: close). A TCP request
            # (on either TCP listener) that was not let in ends its connection whatever it
            # was answered (401, or 403 for its origin, or a preflight): only a client with
            # the token or a session keeps one.
            keep = (
                connection.http.their_state is h11.DONE
                and not response.close
                and (
                    connection.transport == "unix"
                    or request.authorised_by is not None
                    or self._token_matches(request)
                )
            )
            await self._send(connection, response, keep)
            connection.busy = False
            connection.answered += 1
            if not keep:
                return
            connection.pending = connection.http.trailing_data[0]
            connection.http = _new_http()

    # -- reading a request ----------------------------------------------------------------------

    async def _read_request(self, connection: _Connection) -> Request:
        """The next request with its body. Raises :class:`_Quiet` when the client closed or
        stayed silent, :class:`HTTPRefusal` for a request that cannot be served."""
        loop = asyncio.get_running_loop()
        # A new connection has HEAD_TIMEOUT_S for its first head; a kept-alive one may stay
        # silent for IDLE_TIMEOUT_S, but a head once started has HEAD_TIMEOUT_S to complete.
        quiet_deadline = loop.time() + (IDLE_TIMEOUT_S if connection.answered else HEAD_TIMEOUT_S)
        head_deadline = quiet_deadline
        received = bytearray(connection.pending)  # this request's bytes, as they came
        connection.pending = b""
        repairs: set[str] = set()
        added = 0  # bytes of the added Host line
        at_eof = False
        http = connection.http
        if received:  # (h11 takes empty data for the end of the stream)
            http.receive_data(bytes(received))
            head_deadline = min(quiet_deadline, loop.time() + HEAD_TIMEOUT_S)
        while True:
            try:
                event = http.next_event()
            except H11_REFUSALS as exc:
                if at_eof and not received.strip():
                    raise _Quiet() from None  # only blank lines, then the client went
                _check_framing(bytes(received))
                repaired = _repair(bytes(received), str(exc), repairs)
                if repaired is None:
                    raise _refusal(exc, at_eof) from None
                received = bytearray(repaired)
                added = len(_ADDED_HOST) if "host" in repairs else 0
                http = connection.http = _new_http()
                if repaired:
                    http.receive_data(repaired)
                if at_eof:
                    http.receive_data(b"")
                continue
            if isinstance(event, h11.Request):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise _Quiet()  # closed between requests
            # NEED_DATA: the head is not complete yet.
            chunk = await self._receive(connection, head_deadline, head=True)
            at_eof = not chunk
            if chunk and not received:
                head_deadline = min(quiet_deadline, loop.time() + HEAD_TIMEOUT_S)
            received += chunk
            http.receive_data(chunk)
        head_size = len(received) - len(http.trailing_data[0]) - added
        _check_framing(bytes(received))
        request = self._checked_request(event, connection, head_size, added_host=added > 0)
        request.body = await self._read_body(connection, http)
        return request

    def _checked_request(
        self, event: h11.Request, connection: _Connection, head_size: int, *, added_host: bool
    ) -> Request:
        """The limits and rules h11 does not know, in the order markd has always applied them."""
        if head_size - _END_LINE_BYTES > MAX_HEAD_BYTES:
            raise HTTPRefusal(
                431,
                "headers-too-large",
                f"the request head exceeds {MAX_HEAD_BYTES} bytes",
                close=True,
            )
        target = event.target.decode("ascii")
        if not target.startswith("/"):
            # Only the origin form (/path?query): markd is no proxy, and has no "*" resource.
            raise HTTPRefusal(400, "bad-request", "malformed request line", close=True)
        version = event.http_version.decode("ascii")
        if version not in ("1.1", "1.0"):
            raise HTTPRefusal(505, "bad-version", "HTTP/1.1 only", close=True)
        fields = list(event.headers)
        if added_host:
            fields.remove((b"host", b""))
        if len(fields) > MAX_HEADERS:
            raise HTTPRefusal(431, "headers-too-large", "too many header lines", close=True)
        headers: dict[str, str] = {}
        for raw_name, raw_value in fields:
            name = raw_name.decode("ascii")  # h11 gives names lower-case and token-only
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise HTTPRefusal(
                411,
                "length-required",
                "send the body with Content-Length (chunked request bodies are not accepted)",
                close=True,
            )
        if len(headers.get("content-length", "")) > MAX_LENGTH_DIGITS:
            raise HTTPRefusal(400, "bad-request", "bad Content-Length", close=True)
        if int(headers.get("content-length", "0")) > MAX_BODY_BYTES:
            raise HTTPRefusal(
                413, "body-too-large", f"the body exceeds {MAX_BODY_BYTES} bytes", close=True
            )
        split = urllib.parse.urlsplit(target)
        return Request(
            method=event.method.decode("ascii"),
            target=target,
            path=split.path,
            query=urllib.parse.parse_qs(split.query),
            version=f"HTTP/{version}",
            headers=headers,
            transport=connection.transport,
            peer=connection.peer,
        )

    async def _read_body(self, connection: _Connection, http: h11.Connection) -> bytes:
        """The body h11 frames by its Content-Length, within :data:`REQUEST_TIMEOUT_S`."""
        deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S
        parts: list[bytes] = []
        while True:
            try:
                event = http.next_event()
            except H11_REFUSALS:
                raise _Quiet() from None  # the client closed in the middle of its body
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
                continue
            if http.they_are_waiting_for_100_continue:
                # The client holds the body back until it hears it is wanted.
                connection.writer.write(
                    http.send(
                        h11.InformationalResponse(status_code=100, headers=[], reason=PHRASES[100])
                    )
                )
            http.receive_data(await self._receive(connection, deadline, head=False))

    async def _receive(self, connection: _Connection, deadline: float, *, head: bool) -> bytes:
        try:
            # timeout_at rather than wait_for: no task per read, and one deadline however
            # many reads a head or body takes.
            async with asyncio.timeout_at(deadline):
                return await connection.reader.read(READ_SIZE)
        except TimeoutError:
            if head:
                raise _Quiet() from None  # idle, or a head trickling in: just close
            raise HTTPRefusal(
                400, "bad-request", "the body did not arrive in time", close=True
            ) from None

    # -- answering ------------------------------------------------------------------------------

    async def _send(self, connection: _Connection, response: Response, keep: bool) -> None:
        http = connection.http
        headers = dict(response.headers)
        payload = b""
        if response.status != 204:
            if isinstance(response.body, bytes):  # a body of its own format (GET /metrics)
                payload = response.body
            else:
                payload = json_bytes(response.body)
                headers.setdefault("Content-Type", "application/json; charset=utf-8")
            headers["Content-Length"] = str(len(payload))
        headers.setdefault("Cache-Control", "no-store")
        headers["Connection"] = "keep-alive" if keep else "close"
        fields = [
            (name.encode("ascii"), value.encode("latin-1"))
            for name, value in common_headers(headers).items()
        ]
        reason = PHRASES.get(response.status, "Unknown")
        data = http.send(h11.Response(status_code=response.status, headers=fields, reason=reason))
        if payload:
            data += http.send(h11.Data(data=payload))
        data += http.send(h11.EndOfMessage())
        connection.writer.write(data)
        if connection.writer.transport.get_write_buffer_size():
            # The kernel did not take it all: wait for the client, but not for ever. (With
            # nothing left over there is nothing to wait for, and no timer to set.)
            async with asyncio.timeout(self.write_timeout_s):
                await connection.writer.drain()

    async def _stream_events(self, connection: _Connection, request: Request) -> None:
        try:
            self._admit(request)
            kinds = wanted_kinds(request.query)
        except HTTPRefusal as refusal:
            await self._send(
                connection, self._refusal_response(refusal, request, request.transport), False
            )
            return
        stream = EventStream(
            self.service.events,
            connection.reader,
            connection.writer,
            kinds=kinds,
            peer=connection.peer,
            heartbeat_s=self.heartbeat_s,
            queue_limit=self.event_queue_limit,
            write_timeout_s=self.write_timeout_s,
            headers=self._cors(request),
            since=replay_from(request.query, request.headers),
        )
        connection.subscription = stream.subscription
        with self._ends_with_session(request, stream.subscription):
            await stream.run()

    async def _websocket_events(self, connection: _Connection, request: Request) -> None:
        """``GET /v1/events`` with ``Upgrade: websocket``: the same checks as the SSE stream
        (origin, credentials, ``kinds``), then wsproto's handshake on the request h11 read,
        and the connection is the client's WebSocket event stream (:mod:`markd.api.websocket`)."""
        try:
            self._admit(request)
            kinds = wanted_kinds(request.query)
            answer, websocket = accept(request)
        except HTTPRefusal as refusal:
            await self._send(
                connection, self._refusal_response(refusal, request, request.transport), False
            )
            return
        stream = WebSocketEvents(
            self.service.events,
            connection.reader,
            connection.writer,
            websocket,
            kinds=kinds,
            peer=connection.peer,
            heartbeat_s=self.heartbeat_s,
            pong_timeout_s=self.pong_timeout_s or self.heartbeat_s,
            queue_limit=self.event_queue_limit,
            write_timeout_s=self.write_timeout_s,
            since=replay_from(request.query, request.headers),
            # What the client sent after its handshake, already read with the request.
            received=connection.http.trailing_data[0],
        )
        connection.subscription = stream.subscription
        connection.writer.write(answer)
        with self._ends_with_session(request, stream.subscription):
            await stream.run()

    @contextlib.contextmanager
    def _ends_with_session(self, request: Request, subscription: Subscription) -> Iterator[None]:
        """While an event stream runs: it counts as a use of the session that opened it (a
        screen showing the till for a day without a request must not see its session expire
        under it), every :data:`~markd.api.sessions.KEEP_ALIVE_S` (or half the session's
        lifetime, when that is shorter); when the session ends (revoked, pushed out), so
        does the stream."""
        digest = request.session
        left = None if digest is None else self.sessions.expires_in(digest)
        if digest is None or left is None:
            yield
            return
        self._session_streams.setdefault(digest, set()).add(subscription)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def keep_alive() -> None:
            nonlocal timer
            if self.sessions.keep_alive(digest):
                timer = loop.call_later(every, keep_alive)

        every = max(min(KEEP_ALIVE_S, self.sessions.session_s / 2), 0.01)
        timer = loop.call_later(every, keep_alive)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            self.sessions.keep_alive(digest)  # its end is its last use
            streams = self._session_streams.get(digest)
            if streams is not None:
                streams.discard(subscription)
                if not streams:
                    del self._session_streams[digest]

    def _session_ended(self, digest: bytes) -> None:
        for subscription in self._session_streams.pop(digest, set()):
            subscription.close("session-ended")

    # -- dispatch -------------------------------------------------------------------------------

    def _allowed_origins(self, request: Request) -> frozenset[str]:
        """The browser origins served on the request's listener: none on the metrics one; on
        TCP the customer screen's own as well, when it is served."""
        if request.transport == "metrics":
            return frozenset()
        if request.transport == "tcp":
            return self._origins | self._screen_origins
        return self._origins

    def _screen_page(self, request: Request) -> bool:
        """The request comes from the customer screen's page itself: a same-origin request on
        the TCP listener that serves it. A browser sends no ``Origin`` with a same-origin
        ``GET``, but it does send ``Sec-Fetch-Site`` (to loopback, a secure context), which no
        page's script can set; ``Host`` must name the listener (a page of a rebound DNS name
        is same-origin only with itself)."""
        return (
            request.transport == "tcp"
            and bool(self._screen_origins)
            and request.headers.get("sec-fetch-site") == "same-origin"
            and f"http://{request.headers.get('host', '')}" in self._screen_origins
        )

    def _admit(self, request: Request) -> None:
        """The checks every request passes before its route: origin, then (TCP) the token, a
        session cookie or a ticket; sets :attr:`Request.authorised_by`."""
        origin = request.headers.get("origin")
        if origin is not None and origin not in self._allowed_origins(request):
            raise HTTPRefusal(403, "origin-not-allowed", f"origin {origin[:100]} is not allowed")
        if request.transport == "unix":
            request.authorised_by = "socket"
            return
        how = self._credential(request)
        if how is None:
            self._count_refused(request)
            # Closed after the answer: a client without the token holds no connection
            # (and no slot) by asking again on it.
            raise HTTPRefusal(
                401,
                "unauthorized",
                "send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": 'Bearer realm="markd"'},
                close=True,
            )
        if how == "session" and origin is None and not self._screen_page(request):
            # Every page using the cookie is a listed origin's, and its browser says so; a
            # request with the cookie and no Origin is no such page's.
            raise HTTPRefusal(
                403,
                "origin-not-allowed",
                "a request with the session cookie must come from a page of [api] "
                "allowed_origins (its Origin header)",
                close=True,
            )
        request.authorised_by = how

    def _credential(self, request: Request) -> str | None:
        """What authorises a TCP request: ``token``, ``session`` (the cookie, for
        :data:`~markd.api.sessions.SESSION_ROUTES` only, and the demo close with ``[api]
        screen_demo_pay``), ``ticket`` (used up here, for
        :data:`~markd.api.sessions.TICKET_ROUTES` only), or None."""
        if self._token_matches(request):
            return "token"
        if request.transport != "tcp":  # the metrics listener takes its token only
            return None
        route = (request.method, route_of(request.path))
        if route in session_routes(self.config.screen_demo_pay):
            request.session = self.sessions.find(session_cookies(request.headers))
            if request.session is not None:
                return "session"
        if route in TICKET_ROUTES:
            for ticket in request.query.get("ticket", []):
                if self.sessions.use_ticket(ticket):
                    return "ticket"
        return None

    def _token_matches(self, request: Request) -> bool:
        """The request carries its listener's bearer token (compared in constant time)."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = self._metrics_token if request.transport == "metrics" else self._token
        return (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.reveal().encode())
        )

    def _count_refused(self, request: Request) -> None:
        """A request refused for its credentials, counted for the rate-limited log record
        (which names the peer, never what it sent)."""
        # Counted and rate-limited per listener: a scraper with a stale token does not
        # hide a stranger knocking on the API's port.
        listener = request.transport
        self._auth_refused[listener] += 1
        now = time.monotonic()
        if now - self._auth_logged_at[listener] >= AUTH_LOG_INTERVAL_S:
            self._auth_logged_at[listener] = now
            log.warning(
                "%s: refused %d request(s) without a valid token (last from %s)",
                _LISTENER_NAMES[listener],
                self._auth_refused[listener],
                request.peer,
            )
            self._auth_refused[listener] = 0

    async def _dispatch(self, request: Request) -> Response:
        try:
            if request.method == "OPTIONS":
                response = self._preflight(request)
                response.headers.update(self._cors(request))
                return response
            if self._screen_origins and request.transport == "tcp" and is_screen_path(request.path):
                # Public files, the same for everyone: no credentials (docs/api.md, "The
                # customer screen").
                return screen_response(request.method, request.path)
            self._admit(request)
            handler = ROUTES.get((request.method, request.path))
            allowed = methods_of(request.path)
            if request.transport == "metrics":
                if (request.method, request.path) not in METRICS_ROUTES:
                    handler = None
                allowed = sorted(m for m, p in METRICS_ROUTES if p == request.path)
            if handler is None:
                if allowed:
                    raise HTTPRefusal(
                        405,
                        "method-not-allowed",
                        f"{request.path} takes {', '.join(allowed)}",
                        headers={"Allow": ", ".join(allowed)},
                    )
                raise HTTPRefusal(404, "not-found", f"no such endpoint: {request.path[:200]}")
            response = await handler(self._context, request)
        except HTTPRefusal as refusal:
            return self._refusal_response(refusal, request, request.transport)
        except ReceiptError as exc:
            response = Response(receipt_status(exc), {"error": exc.reason, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the daemon goes on
            # The route's pattern (a known one: a handler ran; never the request's target,
            # which holds what the client sent) and the exception's type; its message and
            # traceback may hold what the client sent, a code among it.
            log.error(
                "control API: %s %s failed: %s",
                request.method,
                route_of(request.path),
                type(exc).__name__,
            )
            response = Response(500, {"error": "internal-error", "message": type(exc).__name__})
        response.headers.update(self._cors(request))
        return response

    def _refusal_response(
        self, refusal: HTTPRefusal, request: Request | None, transport: str
    ) -> Response:
        if refusal.reason in COUNTED_REFUSALS:
            self._refused[(transport, refusal.reason)] += 1
        headers = dict(refusal.headers)
        if request is not None:
            headers.update(self._cors(request))
        return Response(refusal.status, refusal.body(), headers, close=refusal.close)

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in self._allowed_origins(request):
            return {}
        # Credentials allowed: the page's fetch() with credentials: "include" sends the
        # session cookie and may receive it (POST /v1/session). Only ever for a listed origin.
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None or origin not in self._allowed_origins(request):
            raise HTTPRefusal(403, "origin-not-allowed", "this origin is not allowed")
        return Response(
            204,
            None,
            {
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key",
                "Access-Control-Max-Age": "600",
            },
        )


# --------------------------------------------------------------------------------------------
# Helpers


def _own_origins(host: str, port: int) -> frozenset[str]:
    """The origins a browser gives pages of the listener at ``host:port``: its address, and
    ``localhost`` for a loopback one."""
    address = ipaddress.ip_address(host)
    names = {f"[{host}]" if address.version == 6 else host}
    if address.is_loopback:
        names.add("localhost")
    return frozenset(f"http://{name}:{port}" for name in names)


def _repair(received: bytes, problem: str, done: set[str]) -> bytes | None:
    """The request's bytes with one of the two things markd tolerates and h11 does not
    repaired (each at most once per request), or None when there is nothing to repair."""
    if received.startswith(b"\r\n") and "blank" not in done:
        done.add("blank")
        return received[2:]
    if _H11_NO_HOST in problem and "host" not in done:
        done.add("host")
        # Before the empty line that ends the head (h11 accepts LF or CRLF line ends there,
        # and has parsed the whole head when it finds Host missing).
        end = _END_OF_HEAD.search(received)
        assert end is not None
        return received[: end.start() + 1] + _ADDED_HOST + received[end.start() + 1 :]
    return None


def _check_framing(received: bytes) -> None:
    """Refuse a head whose framing another parser could read differently from h11: one with
    a folded header line, or a Content-Length that is anything but ASCII digits, as the client
    wrote it (:data:`_CONTENT_LENGTH_VALUE`), or two of them. Only a complete head is judged
    (one still coming has no value to judge yet).

    Folding (obs-fold, RFC 9112 §5.2, which lets a server refuse it with 400): h11 (0.14 and
    0.16 alike) joins a folded line to the header before it, so it reads ``Content-Length:``
    then `` 12`` as 12 and ``Transfer-Encoding:`` then `` chunked`` as chunked, and takes
    ``X-Pad: 1`` then `` Content-Length: 12`` for no length at all; a proxy in front of markd
    may read the same bytes otherwise. Content-Length: h11 refuses ``+5``, ``5_0`` and other
    scripts' digits itself, but reads ``5, 5``, two equal lines and a padded ``  5`` as 5.
    markd judges the bytes before h11's reading counts, and answers every form of each with
    the same reason."""
    end = _END_OF_HEAD.search(received)
    if end is None:
        return
    if _FOLDED_LINE.search(received, 0, end.start() + 1):
        raise HTTPRefusal(
            400,
            "bad-request",
            "folded header line (a line starting with a space or a tab): one line per field",
            close=True,
        )
    values = _CONTENT_LENGTH_LINE.findall(received[: end.start() + 1])
    if len(values) > 1 or (values and not _CONTENT_LENGTH_VALUE.fullmatch(values[0])):
        raise HTTPRefusal(
            400,
            "bad-request",
            "bad Content-Length: one field of ASCII digits only",
            close=True,
        )


def _refusal(exc: Exception, at_eof: bool) -> HTTPRefusal:
    """What a request h11 could not parse is answered with (``exc`` one of
    :data:`~markd.http.refusals.H11_REFUSALS`)."""
    hint = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 400
    if hint == 431:
        return HTTPRefusal(
            431,
            "headers-too-large",
            f"the request head exceeds {MAX_HEAD_BYTES} bytes",
            close=True,
        )
    if hint == 501:
        # h11 knows no Transfer-Encoding but chunked; markd takes none at all.
        return HTTPRefusal(
            411,
            "length-required",
            "send the body with Content-Length (chunked request bodies are not accepted)",
            close=True,
        )
    if at_eof:
        return HTTPRefusal(400, "bad-request", "the request ended early", close=True)
    # h11's text names the rule; the bytes it quotes stay out (they are the client's own).
    text = refusal_text(exc)
    return HTTPRefusal(400, "bad-request", f"malformed request: {text}", close=True)
