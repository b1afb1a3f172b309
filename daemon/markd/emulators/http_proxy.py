"""A small HTTP/1.1 forward proxy on 127.0.0.1: the shop's proxy (domain.md §3.8) for tests
and benches.

Written from the public specifications, sharing no code with markd's clients:

* RFC 9112 §3.2.2 — a request to a proxy names its target in *absolute form*
  (``GET http://host:port/path HTTP/1.1``); the proxy asks the origin in origin form
  (``GET /path``), and §6–§7 say how long a message body is (``Content-Length``, ``chunked``,
  or until the connection closes);
* RFC 9110 §9.3.6 — ``CONNECT host:port`` asks for a tunnel; a 2xx answer turns the connection
  into a byte pipe to the target, any other status refuses it;
* RFC 9110 §15.5.8 (``407 Proxy Authentication Required``), §11.7.1 (``Proxy-Authenticate``,
  the challenge) and §11.7.2 (``Proxy-Authorization``, the answer to it), with the Basic scheme
  of RFC 7617 (``base64(user ":" password)``);
* RFC 9110 §7.6.1 (hop-by-hop fields such as ``Connection`` and ``Proxy-Authorization`` are
  not forwarded) and §7.6.3 (a proxy adds ``Via``).

HTTP's framing on both sides (the client's requests and the proxy's answers, the requests to
the origin and its answers: heads, ``Content-Length``, chunked bodies, keep-alive) is h11's, as
in markd's own client and server, but through h11 directly: an emulator imports nothing of
markd's clients. Sockets, threads, the tunnel's byte pipe, the limits and the faults are this
module's. A ``CONNECT`` is read by h11 like any request; the ``200`` answer switches h11 off
that connection (``SWITCHED_PROTOCOL``), and the bytes the client sent right behind its
request (h11's ``trailing_data``) open the tunnel.

What it does:

* forwards ``http://`` requests in absolute form to the origin, one fresh origin connection
  per request (``Connection: close`` towards the origin), and relays the answer as h11 reads
  it. The client's connection stays alive across requests when the answer has a
  ``Content-Length`` or is ``chunked``; an answer delimited by the origin closing is passed on
  with ``Connection: close``. h11 frames what the client gets: the ``Content-Length`` kept, a
  body of open length sent chunked to an HTTP/1.1 client (chunk sizes and extensions are
  h11's, trailer fields kept), as RFC 9112 §7 lets an intermediary re-frame;
* ``CONNECT host:port`` → ``200 Connection established``, then bytes both ways, a half-close
  on one side passed on to the other, until both sides have closed (or the tunnel has been
  idle for ``idle_timeout_s``, or the proxy stops);
* Basic authentication when built with ``credentials=("user", "password")``: a missing or
  wrong ``Proxy-Authorization`` gets ``407`` with ``Proxy-Authenticate: Basic realm="…"``.

Faults, settable at any time (read when a request arrives):

* ``proxy.hang = True`` — read the request, never answer (until the client goes away or the
  proxy stops);
* ``proxy.break_tunnel = True`` — answer ``200`` to CONNECT, then close at once;
* ``proxy.connect_status = 502`` — answer CONNECT with that status;
* ``proxy.unreachable_targets = {"127.0.0.1:8443"}`` — never answer a request for those
  targets (CONNECT or absolute form), as a proxy that answers only once it reached the
  target does while it tries one it cannot reach; other targets go through;
* ``proxy.latency_ms = 150`` — wait that long before each answer;
* ``proxy.close()`` (or ``stop()``) — the port stops listening: connecting is refused.

Every request is logged as a :class:`ProxyRecord` (method, target, whether
``Proxy-Authorization`` was sent and whether it was right, outcome, status, tunnel bytes)
*before* its answer goes out, so a client that has its answer can rely on the log;
:meth:`HttpProxy.count` and :meth:`HttpProxy.last` read it from any thread.

Limits keep it bounded: request heads of at most 16 KiB (``431`` beyond), origin answer heads
of at most 64 KiB, request bodies of at most 8 MiB (``Content-Length`` only: ``413`` beyond,
``501`` for a ``Transfer-Encoding``; a head h11 refuses is ``400``), at most
``max_connections`` clients at once (``503`` beyond). :meth:`HttpProxy.close` shuts every
client, origin and tunnel socket down and joins every thread it started.

In a test::

    with HttpProxy(credentials=("kiosk", "secret")) as proxy:
        ...  # point the client at proxy.url
        assert proxy.count("CONNECT") == 1 and proxy.last().authorization_ok

From a shell (serves until Ctrl+C)::

    python -m markd.emulators.http_proxy [--port N] [--auth USER:PASSWORD]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import h11

from markd.proxy import ProxyEndpoint

MAX_REQUEST_HEAD = 16 << 10
MAX_ANSWER_HEAD = 64 << 10
MAX_REQUEST_BODY = 8 << 20
_BLOCK = 1 << 16
_POLL_S = 0.05
#: Fields that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy's
#: own credentials: none of them goes past the proxy.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_VIA = "1.1 markd-test-proxy"


@dataclass
class ProxyRecord:
    """One request as the proxy saw it.

    ``authorization_ok`` is None when the proxy asks for no credentials. ``outcome`` is one
    of ``forwarded`` (an http:// request relayed; ``status`` is the origin's), ``tunnel``
    (CONNECT accepted; ``bytes_up``/``bytes_down`` grow while it runs), ``auth-required``
    (407), ``hung``, ``broken-tunnel``, ``tunnel-refused`` (the ``connect_status`` fault),
    ``bad-gateway`` (the origin could not be reached or answered garbage), ``bad-request``,
    ``too-large`` or ``busy``.
    """

    method: str
    target: str
    authorization_sent: bool
    authorization_ok: bool | None
    outcome: str
    status: int | None = None
    bytes_up: int = 0  # tunnel: client → target
    bytes_down: int = 0  # tunnel: target → client
    #: Which client connection carried it (1, 2, … in accept order; 0: refused as busy), so a
    #: test can tell keep-alive from a new connection per request.
    connection: int = 0


#: How a request handler logs its request: ``record(outcome, status)``.
RecordFn = Callable[[str, "int | None"], ProxyRecord]


class _Closed(Exception):
    """The peer closed (or cut) the connection in the middle of a message."""


#: What h11 raises on bytes it refuses: its own error, and ValueError from h11 0.14's int()
#: of a Content-Length longer than Python converts (4,300 digits).
_REFUSED = (h11.RemoteProtocolError, ValueError)


class _Peer:
    """A socket and the h11 connection that frames what crosses it."""

    def __init__(self, sock: socket.socket, http: h11.Connection, number: int = 0) -> None:
        self.sock = sock
        self.http = http
        self.number = number
        self.received = 0  # bytes read from the socket

    def unread(self) -> int:
        """Bytes read from the socket that h11 has not turned into events yet."""
        return len(self.http.trailing_data[0])

    def next_event(self) -> object:
        """The next h11 event, reading from the socket as h11 needs; h11's refusals (see
        ``_REFUSED``) and socket errors pass through."""
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = self.sock.recv(_BLOCK)
            self.received += len(data)
            self.http.receive_data(data)

    def send(self, *events: h11.Event) -> None:
        self.sock.sendall(b"".join(self.http.send(event) or b"" for event in events))


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _field(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def _target_authority(method: str, target: str) -> str:
    """``host:port`` of a request's target: CONNECT's authority, or an absolute URL's."""
    if method == "CONNECT":
        return target.lower()
    parts = urlsplit(target)
    try:
        port = parts.port or 80
    except ValueError:
        return ""
    return f"{(parts.hostname or '').lower()}:{port}"


def _authority(target: str) -> tuple[str, int] | None:
    """``host:port`` of a CONNECT request (``[v6]:port`` for IPv6); None when malformed."""
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port)) if host else None


class HttpProxy:
    """The proxy on ``host:port`` (port 0: any free one), serving from a background thread.

    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: tuple[str, str] | None = None,
        realm: str = "markd test proxy",
        latency_ms: float = 0.0,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        max_connections: int = 64,
    ) -> None:
        self._credentials = credentials
        self.realm = realm
        #: Faults (see the module docstring); read when each request arrives.
        self.hang = False
        self.break_tunnel = False
        self.connect_status: int | None = None
        #: ``host:port`` targets the proxy cannot reach: a request for one is never answered
        #: (as Squid keeps a CONNECT waiting while it tries the target); others go through.
        self.unreachable_targets: set[str] = set()
        self.latency_ms = latency_ms
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._listener = socket.create_server((host, port), backlog=64)
        self._host = host
        self._port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._records: list[ProxyRecord] = []
        self._sockets: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._acceptor: threading.Thread | None = None
        self._accepted = 0
        self._closed = False

    def __repr__(self) -> str:
        auth = "Basic" if self._credentials is not None else "none"
        return f"HttpProxy({self.url}, auth={auth})"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value of a proxy setting that points here."""
        return f"http://{self.endpoint}"

    @property
    def endpoint(self) -> ProxyEndpoint:
        return ProxyEndpoint(self._host, self._port)

    def start(self) -> HttpProxy:
        if self._closed:
            raise RuntimeError("this proxy was stopped; make a new one")
        if self._acceptor is None:
            self._acceptor = threading.Thread(
                target=self._accept_loop, name=f"http-proxy-{self._port}", daemon=True
            )
            self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop listening (connecting is refused from now on), cut every open connection and
        tunnel, and wait for every thread of the proxy to end."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if not self._closed:
            self._listener.close()
            self._closed = True
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            # shutdown wakes a thread blocked in recv on it; close alone would not.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        while True:
            with self._lock:
                workers = list(self._workers)
            if not workers:
                break
            for worker in workers:
                worker.join(timeout=10)
                if worker.is_alive():  # pragma: no cover - a bug in this module
                    raise RuntimeError(f"{worker.name} did not stop")

    stop = close

    def __enter__(self) -> HttpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the log --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[ProxyRecord]:
        """Every request so far, oldest first (copies)."""
        with self._lock:
            return [replace(record) for record in self._records]

    def count(self, method: str | None = None, *, outcome: str | None = None) -> int:
        """How many requests (of ``method``, with ``outcome``) the proxy has seen."""
        with self._lock:
            return sum(
                1
                for r in self._records
                if (method is None or r.method == method)
                and (outcome is None or r.outcome == outcome)
            )

    def last(self) -> ProxyRecord | None:
        """The latest request (a copy), or None."""
        with self._lock:
            return replace(self._records[-1]) if self._records else None

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, record: ProxyRecord) -> ProxyRecord:
        with self._lock:
            self._records.append(record)
        return record

    # -- connections ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(_POLL_S):
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                with self._lock:
                    busy = len(self._workers) >= self.max_connections
                    if not busy:
                        self._accepted += 1
                        worker = threading.Thread(
                            target=self._serve,
                            args=(client, self._accepted),
                            name=f"http-proxy-{self._port}-client",
                            daemon=True,
                        )
                        self._workers.add(worker)
                        self._sockets.add(client)
                if busy:
                    self._record(ProxyRecord("", "", False, None, "busy", 503))
                    self._answer(_Peer(client, _client_side()), 503, close=True)
                    client.close()
                    continue
                worker.start()

    def _track(self, sock: socket.socket) -> bool:
        """Add an origin or tunnel socket to what :meth:`close` cuts; False when stopping."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _serve(self, client: socket.socket, number: int) -> None:
        client.settimeout(self.idle_timeout_s)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = _Peer(client, _client_side(), number)
            while not self._stopping.is_set() and self._one_request(peer):
                peer.http.start_next_cycle()
        except (OSError, _Closed, *_REFUSED):
            pass  # the client went away, timed out or broke its body's framing: no answer
        finally:
            self._forget(client)
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _one_request(self, peer: _Peer) -> bool:
        """Serve one request; True when the client connection stays open for another."""
        client = peer.sock
        start = peer.received - peer.unread()
        try:
            event = peer.next_event()
            # h11 refuses a head past the limit only while it is incomplete; one that came
            # whole in a single read is measured here.
            if (
                isinstance(event, h11.Request)
                and peer.received - peer.unread() - start > MAX_REQUEST_HEAD
            ):
                raise h11.RemoteProtocolError("request head too large", 431)
        except _REFUSED as exc:
            hint = getattr(exc, "error_status_hint", 400)
            outcome, status = {
                431: ("too-large", 431),
                501: ("bad-request", 501),  # a coding other than chunked
            }.get(hint, ("bad-request", 400))
            self._record(ProxyRecord("", "", False, None, outcome, status, connection=peer.number))
            self._answer(peer, status, close=True)
            return False
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request)
        method, target = _text(event.method), _text(event.target)
        headers = [(_text(name), _text(value)) for name, value in event.headers.raw_items()]
        sent, ok = self._authorization(headers)

        def record(outcome: str, status: int | None) -> ProxyRecord:
            return self._record(
                ProxyRecord(method, target, sent, ok, outcome, status, connection=peer.number)
            )

        if not event.http_version.startswith(b"1."):
            record("bad-request", 400)
            self._answer(peer, 400, close=True)
            return False
        if _field(headers, "transfer-encoding") is not None:
            record("bad-request", 501)  # markd's clients send Content-Length bodies only
            self._answer(peer, 501, close=True)
            return False
        # h11 has checked the Content-Length is ASCII digits (and one value).
        length_text = _field(headers, "content-length") or "0"
        if len(length_text) > 12 or int(length_text) > MAX_REQUEST_BODY:
            record("too-large", 413)
            self._answer(peer, 413, close=True)
            return False
        body = b""
        while not isinstance(event, h11.EndOfMessage):
            event = peer.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed
        # h11's keep-alive rules: Connection: close, or HTTP/1.0, ends the connection.
        close = peer.http.their_state is not h11.DONE

        if self.hang:
            record("hung", None)
            self._hang(client)
            return False
        if self.latency_ms > 0 and self._stopping.wait(self.latency_ms / 1000):
            return False
        if ok is False:
            record("auth-required", 407)
            challenge = f'Basic realm="{self.realm}", charset="UTF-8"'
            # After a refused CONNECT the connection is closed: a client may not know whether
            # the proxy still expects the tunnel's bytes on it.
            close = close or method == "CONNECT"
            self._answer(peer, 407, {"Proxy-Authenticate": challenge}, close=close)
            return not close
        if _target_authority(method, target) in self.unreachable_targets:
            # A proxy that answers CONNECT only once it reached the target (Squid) says
            # nothing while it tries a target it cannot reach.
            record("hung", None)
            self._hang(client)
            return False
        if method == "CONNECT":
            self._tunnel(peer, target, record)
            return False
        if method.isalpha() and target.lower().startswith("http://"):
            return self._forward(peer, method, target, headers, body, close, record)
        record("bad-request", 400)
        self._answer(peer, 400, close=True)
        return False

    def _authorization(self, headers: list[tuple[str, str]]) -> tuple[bool, bool | None]:
        """(Proxy-Authorization sent, it is right — None when no credentials are wanted)."""
        value = _field(headers, "proxy-authorization")
        if self._credentials is None:
            return value is not None, None
        if value is None:
            return False, False
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            return True, False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return True, False
        user, _, password = decoded.partition(":")
        wanted_user, wanted_password = self._credentials
        # compare_digest for both parts, always both: the test proxy should not teach timing.
        right_user = hmac.compare_digest(user.encode(), wanted_user.encode())
        right_password = hmac.compare_digest(password.encode(), wanted_password.encode())
        return True, right_user and right_password

    def _answer(
        self,
        peer: _Peer,
        status: int,
        headers: dict[str, str] | None = None,
        *,
        close: bool,
    ) -> None:
        """An answer of the proxy's own, a line of text, framed by h11."""
        text = f"{status} {_REASONS.get(status, 'Error')}\n".encode()
        fields = [("Via", _VIA), *(headers or {}).items()]
        fields += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(text))),
        ]
        if close:
            fields.append(("Connection", "close"))
        reason = _REASONS.get(status, "Error").encode()
        try:
            peer.send(
                h11.Response(status_code=status, headers=fields, reason=reason),
                h11.Data(data=text),
                h11.EndOfMessage(),
            )
        except (OSError, h11.LocalProtocolError):
            pass  # the client went, or h11 is past answering on this connection

    def _hang(self, client: socket.socket) -> None:
        """Never answer; return when the client goes away or the proxy stops."""
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if selector.select(_POLL_S):
                    try:
                        if not client.recv(_BLOCK):
                            return
                    except OSError:
                        return

    # -- CONNECT --------------------------------------------------------------------------------

    def _tunnel(self, peer: _Peer, target: str, record: RecordFn) -> None:
        where = _authority(target)
        if where is None:
            record("bad-request", 400)
            self._answer(peer, 400, close=True)
            return
        status = self.connect_status
        if status is not None:
            record("tunnel-refused", status)
            self._answer(peer, status, close=True)
            return
        try:
            upstream = socket.create_connection(where, timeout=self.connect_timeout_s)
        except OSError:
            record("bad-gateway", 502)
            self._answer(peer, 502, close=True)
            return
        if not self._track(upstream):
            upstream.close()
            return
        # A 2xx answer to CONNECT switches h11 off this connection (SWITCHED_PROTOCOL): what
        # follows is the tunnel's, starting with any bytes the client sent behind its request.
        established = h11.Response(status_code=200, headers=[], reason=b"Connection established")
        try:
            if self.break_tunnel:
                record("broken-tunnel", 200)
                peer.send(established)
                return
            entry = record("tunnel", 200)
            peer.send(established)
            upstream.settimeout(self.idle_timeout_s)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._relay(peer, upstream, entry)
        finally:
            self._forget(upstream)

    def _relay(self, from_client: _Peer, upstream: socket.socket, entry: ProxyRecord) -> None:
        client = from_client.sock
        ahead, _ = from_client.http.trailing_data
        if ahead:  # bytes the client sent right behind its CONNECT
            upstream.sendall(ahead)
            entry.bytes_up += len(ahead)
        peer = {client: upstream, upstream: client}
        idle_since = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while selector.get_map() and not self._stopping.is_set():
                ready = selector.select(_POLL_S)
                if not ready:
                    if time.monotonic() - idle_since > self.idle_timeout_s:
                        return
                    continue
                idle_since = time.monotonic()
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(_BLOCK)
                    except OSError:
                        return  # reset: the tunnel is over for both sides
                    if not data:
                        # One side finished sending: tell the other, keep the reverse way open.
                        selector.unregister(source)
                        try:
                            peer[source].shutdown(socket.SHUT_WR)
                        except OSError:
                            return
                        continue
                    peer[source].sendall(data)
                    if source is client:
                        entry.bytes_up += len(data)
                    else:
                        entry.bytes_down += len(data)

    # -- absolute-form requests -----------------------------------------------------------------

    def _forward(
        self,
        peer: _Peer,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        close: bool,
        record: RecordFn,
    ) -> bool:
        """Relay one http:// request; True when the client connection stays open."""
        try:
            parts = urlsplit(target)
            host, port = parts.hostname, parts.port or 80
        except ValueError:
            host = None
        if not host:
            record("bad-request", 400)
            self._answer(peer, 400, close=True)
            return False
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        dropped = _HOP_BY_HOP | _tokens(_field(headers, "connection"))
        forwarded = [(name, value) for name, value in headers if name.lower() not in dropped]
        if _field(headers, "host") is None:
            forwarded.append(("Host", parts.netloc.rpartition("@")[2]))
        forwarded += [("Via", _VIA), ("Connection", "close")]
        try:
            upstream = socket.create_connection((host, port), timeout=self.connect_timeout_s)
        except OSError:
            record("bad-gateway", 502)
            self._answer(peer, 502, close=close)
            return not close
        if not self._track(upstream):
            upstream.close()
            return False
        try:
            upstream.settimeout(self.idle_timeout_s)
            origin = _Peer(
                upstream, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEAD)
            )
            answer = self._ask_origin(origin, method, path, forwarded, body)
            if answer is None:
                record("bad-gateway", 502)
                self._answer(peer, 502, close=True)
                return False
            answer_headers = [(_text(n), _text(v)) for n, v in answer.headers.raw_items()]
            codings = _tokens(_field(answer_headers, "transfer-encoding"))
            no_body = method == "HEAD" or answer.status_code in (204, 304)
            chunked = "chunked" in codings
            delimited = _field(answer_headers, "content-length") is not None
            # An answer that ends when the origin closes can only end the same way here.
            keep = not close and (no_body or chunked or delimited)
            dropped = _HOP_BY_HOP | _tokens(_field(answer_headers, "connection"))
            out = [(n, v) for n, v in answer_headers if n.lower() not in dropped]
            out.append(("Via", _VIA))
            if not keep:
                out.append(("Connection", "close"))
            record("forwarded", answer.status_code)
            # h11 frames the answer for the client: its Content-Length kept, a chunked or
            # close-delimited body sent chunked to an HTTP/1.1 client (with Connection: close
            # for the latter), as the client's version allows.
            peer.send(
                h11.Response(status_code=answer.status_code, headers=out, reason=answer.reason)
            )
            try:
                while True:
                    event = origin.next_event()
                    if isinstance(event, h11.Data):
                        peer.send(event)
                    elif isinstance(event, h11.EndOfMessage):
                        peer.send(h11.EndOfMessage(headers=event.headers if chunked else []))
                        return keep
                    else:
                        return False
            except (_Closed, OSError, *_REFUSED):
                return False  # the origin cut its answer: cut ours the same way
        finally:
            self._forget(upstream)

    @staticmethod
    def _ask_origin(
        origin: _Peer, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> h11.Response | None:
        """Send the request; the origin's final answer head, or None when it sent none, or
        not HTTP. An interim answer (100 Continue) is not passed on: markd never sends
        Expect."""
        try:
            events: list[h11.Event] = [h11.Request(method=method, target=path, headers=headers)]
            if body:
                events.append(h11.Data(data=body))
            origin.send(*events, h11.EndOfMessage())
            while True:
                event = origin.next_event()
                if isinstance(event, h11.Response):
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    return None
        except (OSError, h11.LocalProtocolError, *_REFUSED):
            return None


def _client_side() -> h11.Connection:
    """The h11 state of a client's connection to the proxy."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m markd.emulators.http_proxy",
        description="A forward HTTP proxy on 127.0.0.1 (absolute-form requests and CONNECT, "
        "optional Basic authentication), like the one a shop network puts in front of the "
        "internet.",
    )
    parser.add_argument("--port", type=int, default=3128, help="TCP port (0: any free one)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require Basic authentication")
    args = parser.parse_args(argv)
    credentials = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep:
            parser.error("--auth takes USER:PASSWORD")
        credentials = (user, password)
    try:
        proxy = HttpProxy(port=args.port, credentials=credentials)
    except OSError as exc:
        print(f"http_proxy: cannot listen on port {args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(proxy.url, flush=True)
    print(f"proxy listening on {proxy.url} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    proxy.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
