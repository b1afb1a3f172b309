"""markd's one HTTP/1.1 client: asyncio streams for I/O, h11 for the HTTP grammar.

Every peer markd talks HTTP to goes through :class:`HTTPClient`: the CDN, the Local Module and
the ТС ПИоТ (the check clients, on the daemon's loop), the fleet sync's file server and the
ATOL web server (both through :class:`markd.http.blocking.BlockingHTTPClient`, which runs this
client on a private loop in a thread of their own).

Why a client of our own at all: a check must answer within its budget whatever the peer does
(accept and never answer, answer half a body, close mid-way), and the connection to a service
should be reused across scans (a TLS handshake costs more than the check). Why h11 inside it:
request serialisation and the parsing of answers (status line, headers, ``Content-Length``,
chunked and close-delimited bodies, whether the connection may be reused) are the part of
HTTP that is easy to get subtly wrong and that thousands of h11's users have already tested.
h11 never touches a socket; everything about time, sockets and limits stays here:

* one idle connection per (scheme, host, port, route) is kept and reused while h11 says both
  sides finished their messages cleanly (``our_state``/``their_state`` both ``DONE``, then
  ``start_next_cycle``); a reused connection that gets no byte of an answer is retried once on
  a fresh one while the deadline allows;
* the request (head and body) leaves in one ``write`` with ``TCP_NODELAY`` set, so Nagle's
  algorithm and delayed ACKs cannot add ~40 ms to a request on loopback;
* :meth:`HTTPClient.request` keeps one absolute deadline (``time.monotonic()`` based, the
  event loop's clock) over connect, TLS, write and the whole answer, raising
  :class:`HTTPTimeout`; :meth:`HTTPClient.stream` hands a large body out in pieces, each wait
  bounded by a per-read timeout and by the deadline when one is given;
* bodies are size-limited (:data:`MAX_BODY_BYTES` for :meth:`HTTPClient.request`, the
  caller's cap for a stream), heads too (:data:`MAX_HEAD_BYTES`);
* for HTTPS certificates are verified, except that a self-signed certificate may be accepted
  for a loopback host when the caller asks (the ТС ПИоТ on ``https://localhost:51401``);
* an HTTP proxy is used when :class:`~markd.proxy.ProxySettings` route the target to one
  (domain.md §3.8): an ``http://`` target is asked for in absolute form (RFC 9112 §3.2.2)
  with ``Proxy-Authorization`` when credentials are configured; an ``https://`` target gets a
  ``CONNECT host:port`` tunnel (RFC 9110 §9.3.6), framed by an h11 connection of its own whose
  answer head may not exceed :data:`MAX_PROXY_HEAD_BYTES`, then TLS with the target inside it
  (``StreamWriter.start_tls``) with the same certificate rules as without a proxy. Nothing
  inside the tunnel carries ``Proxy-Authorization``.

Errors are the tree in :mod:`markd.http.errors`. What the proxy itself did wrong is a
:class:`ProxyError`; what the target did keeps the types it has without a proxy. Through a
plain-HTTP proxy the exchange after the request is relayed, so a late or cut answer there
cannot be told apart from the target's and stays :class:`HTTPTimeout` /
:class:`HTTPProtocolError` (the message names the proxy).

A client is used from one event loop. The check clients share nothing between instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

from markd.http.connection import (
    MAX_HEAD_BYTES,
    READ_SIZE,
    Connection,
    Progress,
    Timing,
    close_quietly,
    headers_of,
    next_event,
    no_delay,
    os_reason,
    read_body,
    read_head,
    stale,
)
from markd.http.errors import (
    PROXY_ERROR_KINDS,
    HTTPBodyCut,
    HTTPError,
    HTTPProtocolError,
    HTTPTimeout,
    ProxyError,
    ProxyErrorKind,
)
from markd.http.refusals import H11_REFUSALS
from markd.http.tunnel import (
    MAX_PROXY_HEAD_BYTES,
    open_tunnel,
    refused_credentials,
    tls_in_tunnel,
)
from markd.proxy import ProxyEndpoint, ProxySettings

#: The largest body :meth:`HTTPClient.request` takes (a check answer is a few kB).
MAX_BODY_BYTES = 8 << 20
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass
class Response:
    """A complete answer of :meth:`HTTPClient.request`. Header names are lower case; when a
    header comes twice, the last one counts."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float
    reused: bool = False

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not, nested too deep included)."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (by one of the usual names or an address)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _authority(host: str, port: int) -> str:
    """``host:port`` as it goes into a request line or ``Host``: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Target:
    """Where one request goes: parsed once, before any connection. (A plain class: it is made
    for every request, and a frozen dataclass's ``__init__`` costs several times more.)"""

    __slots__ = (
        "scheme",
        "host",
        "port",
        "authority",
        "request_target",
        "via",
        "where",
        "headers",
        "key",
    )

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        authority: str,
        request_target: str,
        via: ProxyEndpoint | None,
        where: str,
        headers: dict[str, str],
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.authority = authority
        #: What goes on the request line: origin form, or absolute form through a proxy.
        self.request_target = request_target
        self.via = via
        #: ``host:port`` (``… via proxy p``) for messages.
        self.where = where
        self.headers = headers
        #: The pool this request takes a connection from and gives it back to.
        self.key = (scheme, host, port, str(via) if via is not None else "")


@dataclass
class HTTPClient:
    """Keep-alive HTTP/1.1 client. One instance per service; use from one event loop."""

    user_agent: str = "markd"
    allow_self_signed_loopback: bool = False
    #: Idle kept-alive connections per (scheme, host, port); overlapping requests (two scanners,
    #: a status poll) each take one, and at most ``max_idle`` wait for reuse.
    max_idle: int = 4
    #: Where requests go through a proxy (None: every target directly). Pooled connections
    #: are kept per route, so changing this never reuses a connection of the old route.
    proxy: ProxySettings | None = None
    _idle: dict[tuple[str, str, int, str], list[Connection]] = field(
        default_factory=dict, repr=False
    )
    #: Counts :meth:`close` calls: a request that began before the latest close closes its
    #: connection when done instead of pooling it (nothing is left open behind a close).
    _generation: int = field(default=0, repr=False)

    async def request(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
    ) -> Response:
        """Send one request; the answer must be complete before ``deadline`` (monotonic)."""
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        generation = self._generation
        target = self._target(url, headers)
        timing = Timing(deadline, None, whole=True)
        started = time.monotonic()
        sent_before = False  # by an attempt on a stale connection, before this one
        for attempt in (0, 1):
            progress = Progress(sent_before)
            conn: Connection | None = None
            try:
                if deadline <= time.monotonic():
                    raise HTTPTimeout(f"no time left for a request to {target.where}")
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection(target, progress, timing)
                    await self._send(conn, method, target, body, progress, timing)
                    head = await read_head(conn, target.where, progress, timing)
                    payload = await read_body(
                        conn, head, target.where, progress, timing, MAX_BODY_BYTES
                    )
            except TimeoutError:
                close_quietly(conn)
                raise self._timed_out(target, progress, timing) from None
            except HTTPError as exc:
                close_quietly(conn)
                if stale(progress) and attempt == 0 and time.monotonic() < deadline:
                    sent_before = True
                    continue  # a kept-alive connection the server had already closed
                exc.request_sent = progress.sent
                raise
            except BaseException:
                close_quietly(conn)
                raise
            assert conn is not None
            if head.status_code == 407 and target.via is not None and target.scheme == "http":
                # Only a proxy answers 407 (RFC 9110 §15.5.8): the request never left it. (A
                # 401 stays the target's answer: through a plain-HTTP proxy it cannot be told
                # from a proxy that wrongly answers 401 — see tunnel.open_tunnel.)
                conn.close()
                raise refused_credentials(self.proxy, target.via, 407)
            self._finish(conn, target, generation)
            return Response(
                head.status_code,
                head.reason.decode("latin-1"),
                headers_of(head),
                payload,
                (time.monotonic() - started) * 1000,
                progress.reused,
            )
        raise HTTPError(f"connection to {target.where} failed twice")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        max_bytes: int,
        deadline: float | None = None,
        read_timeout: float | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """Send one request and hand out its answer as it arrives, for bodies too large to
        hold in memory (the fleet sync's snapshots)::

            async with client.stream("GET", url, max_bytes=1 << 30, read_timeout=30) as answer:
                while block := await answer.read():
                    out.write(block)

        Each wait (connecting, TLS, sending, every read) may take at most ``read_timeout``
        seconds, and none may run past ``deadline`` (monotonic) when one is given; at least
        one of the two is required. A read that would hand out more than ``max_bytes`` bytes
        in all raises :class:`HTTPProtocolError` (what waits in memory meanwhile is one read's
        worth); a ``Content-Length`` above it is not refused up front, so a caller can look at
        the head and decide, or read only what it wants. The connection goes back to the pool
        only when the whole body was read.
        """
        if deadline is None and read_timeout is None:
            raise ValueError("a stream needs a deadline, a read timeout or both")
        generation = self._generation
        target = self._target(url, headers)
        timing = Timing(deadline, read_timeout, whole=False)
        started = time.monotonic()
        sent_before = False
        for attempt in (0, 1):
            progress = Progress(sent_before)
            conn: Connection | None = None
            try:
                if timing.passed():
                    raise HTTPTimeout(f"no time left for a request to {target.where}")
                conn = await self._connection(target, progress, timing)
                await self._send(conn, method, target, body, progress, timing)
                head = await read_head(conn, target.where, progress, timing)
            except TimeoutError:
                close_quietly(conn)
                raise self._timed_out(target, progress, timing) from None
            except HTTPError as exc:
                close_quietly(conn)
                if stale(progress) and attempt == 0 and not timing.passed():
                    sent_before = True
                    continue
                exc.request_sent = progress.sent
                raise
            except BaseException:
                close_quietly(conn)
                raise
            break
        else:  # pragma: no cover - the loop either returns or raises
            raise HTTPError(f"connection to {target.where} failed twice")
        assert conn is not None
        if head.status_code == 407 and target.via is not None and target.scheme == "http":
            conn.close()
            raise refused_credentials(self.proxy, target.via, 407)
        answer = StreamResponse(
            head.status_code,
            head.reason.decode("latin-1"),
            headers_of(head),
            (time.monotonic() - started) * 1000,
            progress.reused,
            _Body(self, conn, target, progress, timing, max_bytes, generation),
        )
        try:
            yield answer
        finally:
            answer._body.release()

    def close(self) -> None:
        """Close every idle connection; a request still under way closes its own when done.
        The client may be used again afterwards (it then pools connections anew)."""
        self._generation += 1
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    def abort_idle(self) -> None:
        """As :meth:`close`, but the idle connections are cut at once, without a TLS goodbye
        that could wait on the peer: for a loop that is about to be closed."""
        self._generation += 1
        for pool in self._idle.values():
            for conn in pool:
                conn.writer.transport.abort()
        self._idle.clear()

    # -- internals ------------------------------------------------------------------------------

    def _target(self, url: str, headers: dict[str, str] | None) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise HTTPError(f"not a valid port in the URL for {host}") from None
        authority = _authority(host, port)
        request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        via = self.proxy.route(parts.scheme, host, port) if self.proxy is not None else None
        extra = dict(headers or {})
        where = authority
        if via is not None:
            where = f"{authority} via proxy {via}"
            if parts.scheme == "http":
                # Absolute form tells the proxy where to go (RFC 9112 §3.2.2); the credentials
                # ride on every request because the proxy judges each one on its own.
                request_target = f"http://{authority}{request_target}"
                authorization = self.proxy.authorization() if self.proxy is not None else None
                if authorization is not None:
                    extra["Proxy-Authorization"] = authorization
        return _Target(parts.scheme, host, port, authority, request_target, via, where, extra)

    def _finish(self, conn: Connection, target: _Target, generation: int) -> None:
        """Pool ``conn`` after a complete exchange when h11 says it can carry another one;
        close it otherwise."""
        protocol = conn.protocol
        conn.used += 1
        if (
            generation == self._generation
            and protocol.our_state is h11.DONE
            and protocol.their_state is h11.DONE
            # Bytes after the answer belong to no request of ours: the connection is unusable.
            and not protocol.trailing_data[0]
        ):
            pool = self._idle.setdefault(target.key, [])
            if len(pool) < self.max_idle:
                protocol.start_next_cycle()
                pool.append(conn)
                return
        conn.close()

    def _timed_out(self, target: _Target, progress: Progress, timing: Timing) -> HTTPError:
        """The error for a timer that fired during ``progress.phase``."""
        budget = timing.budget()
        via = target.via
        error: HTTPError
        if progress.phase == "connect":
            error = HTTPTimeout(
                f"connecting to {target.host}:{target.port} took longer than {budget}"
            )
        elif progress.phase == "proxy-connect":
            error = ProxyError(
                f"connecting to proxy {via} took longer than {budget}",
                "proxy-timeout",
                proxy=str(via),
            )
        elif progress.phase == "tunnel":
            error = ProxyError(
                f"proxy {via} did not answer CONNECT {target.authority} within {budget}",
                "proxy-timeout",
                proxy=str(via),
                target_failure=True,
            )
        elif progress.phase == "tls":
            error = HTTPTimeout(
                f"TLS with {target.authority} via proxy {via} took longer than {budget}"
            )
        elif progress.phase == "send":
            error = HTTPTimeout(f"sending to {target.where} took longer than {budget}")
        else:
            error = HTTPTimeout(f"the answer from {target.where} did not come within {budget}")
        error.request_sent = progress.sent
        return error

    def _ssl_context(self, host: str) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.allow_self_signed_loopback and is_loopback(host):
            # The ТС ПИоТ serves a self-signed certificate on loopback; nothing else may.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connection(self, target: _Target, progress: Progress, timing: Timing) -> Connection:
        pool = self._idle.get(target.key)
        while pool:
            idle = pool.pop()
            if idle.fit_for_reuse():
                progress.reused = True
                return idle
            idle.close()
        if target.via is not None:
            return await self._through_proxy(target, progress, timing)
        host, port = target.host, target.port
        tls = target.scheme == "https"
        progress.phase = "connect"
        try:
            async with timing.step():
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_context(host) if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise
        except ssl.SSLError as exc:
            raise HTTPError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise HTTPError(f"cannot connect to {host}:{port}: {os_reason(exc)}") from exc
        no_delay(writer)
        return Connection(reader, writer)

    # -- proxies --------------------------------------------------------------------------------

    async def _through_proxy(
        self, target: _Target, progress: Progress, timing: Timing
    ) -> Connection:
        """A connection to the proxy; for an https target, a tunnel with TLS to the target."""
        via = target.via
        assert via is not None
        progress.phase = "proxy-connect"
        try:
            async with timing.step():
                reader, writer = await asyncio.open_connection(via.host, via.port)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ProxyError(
                f"cannot connect to proxy {via}: {os_reason(exc)}",
                "proxy-unreachable",
                proxy=str(via),
            ) from exc
        no_delay(writer)
        if target.scheme == "http":
            return Connection(reader, writer)
        try:
            progress.phase = "tunnel"
            async with timing.step():
                await open_tunnel(
                    reader,
                    writer,
                    via,
                    target.authority,
                    user_agent=self.user_agent,
                    proxy=self.proxy,
                )
            progress.phase = "tls"
            async with timing.step():
                await tls_in_tunnel(
                    writer, via, target.authority, target.host, self._ssl_context(target.host)
                )
        except BaseException:
            writer.close()
            raise
        return Connection(reader, writer)

    # -- the exchange ---------------------------------------------------------------------------

    async def _send(
        self,
        conn: Connection,
        method: str,
        target: _Target,
        body: bytes | None,
        progress: Progress,
        timing: Timing,
    ) -> None:
        progress.phase = "send"
        merged = {"User-Agent": self.user_agent, "Accept": "application/json", **target.headers}
        fields = [("Host", target.authority), *merged.items()]
        if body is not None:
            fields.append(("Content-Length", str(len(body))))
        protocol = conn.protocol
        try:
            head = protocol.send(
                h11.Request(
                    method=method,
                    target=target.request_target.encode("latin-1"),
                    headers=[(n, v.encode("latin-1")) for n, v in fields],
                )
            )
            content = protocol.send(h11.Data(data=body)) if body else b""
            end = protocol.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeEncodeError):
            # h11's message would quote the offending value, which may be a secret.
            raise HTTPError(
                f"cannot send {method} to {target.where}: the method, the path or a header is "
                "not valid HTTP (not shown: it may hold a secret)"
            ) from None
        # Head and body leave in one write: no small segment waits for an ACK.
        conn.writer.write((head or b"") + (content or b"") + (end or b""))
        progress.sent = True
        try:
            async with timing.step():
                await conn.writer.drain()
        except ConnectionError as exc:
            raise HTTPError(f"connection to {target.where} failed: {exc}") from exc
        progress.phase = "answer"


class StreamResponse:
    """The answer of :meth:`HTTPClient.stream`: status and headers at once, the body through
    :meth:`read` (or ``async for``). Header names are lower case."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str],
        elapsed_ms: float,
        reused: bool,
        body: _Body,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        #: Time until the head had arrived.
        self.elapsed_ms = elapsed_ms
        self.reused = reused
        self._body = body

    @property
    def received(self) -> int:
        """Bytes of the body handed out so far."""
        return self._body.delivered

    async def read(self, amount: int = READ_SIZE) -> bytes:
        """Up to ``amount`` bytes of the body, at least one; ``b""`` at its end. Raises
        :class:`HTTPTimeout` when a read waits too long, :class:`HTTPBodyCut` when the
        connection ends before the body does, :class:`HTTPProtocolError` past the cap."""
        return await self._body.read(amount)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while block := await self.read():
            yield block

    def __repr__(self) -> str:
        return f"<StreamResponse {self.status} {self.reason!r}>"


class _Body:
    """The body of a streamed answer, read through the connection's h11 state."""

    def __init__(
        self,
        client: HTTPClient,
        conn: Connection,
        target: _Target,
        progress: Progress,
        timing: Timing,
        max_bytes: int,
        generation: int,
    ) -> None:
        self.client = client
        self.conn: Connection | None = conn
        self.target = target
        self.progress = progress
        self.timing = timing
        self.max_bytes = max_bytes
        self.generation = generation
        self.pending = bytearray()
        self.delivered = 0
        self.done = False

    async def read(self, amount: int) -> bytes:
        if amount <= 0:
            raise ValueError("read() needs a positive amount")
        if not self.pending and not self.done:
            await self._fill()
        block = bytes(self.pending[:amount])
        if self.delivered + len(block) > self.max_bytes:
            self._drop()
            raise HTTPProtocolError(
                f"the answer from {self.target.where} is larger than {self.max_bytes} bytes"
            )
        del self.pending[:amount]
        self.delivered += len(block)
        return block

    async def _fill(self) -> None:
        conn = self.conn
        if conn is None:
            raise HTTPError(f"the answer from {self.target.where} was already given up")
        try:
            event = await next_event(conn, self.target.where, self.progress, self.timing)
        except TimeoutError:
            self._drop()
            raise self.client._timed_out(self.target, self.progress, self.timing) from None
        except BaseException as exc:
            self._drop()
            if isinstance(exc, HTTPError):
                exc.request_sent = True
            raise
        if isinstance(event, h11.Data):
            self.progress.body += len(event.data)
            self.pending += event.data
        elif isinstance(event, h11.EndOfMessage):
            self.done = True
        else:
            self._drop()
            raise HTTPProtocolError(
                f"unexpected {type(event).__name__} in the answer from {self.target.where}"
            )

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def release(self) -> None:
        """At the end of the ``async with``: the connection goes back to the pool when the
        body was read to its end (or had nothing left to read), otherwise it is closed."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        if not self.done and not self.pending:
            # A body already complete in h11's buffer (a 304, an empty body) needs no I/O.
            try:
                self.done = isinstance(conn.protocol.next_event(), h11.EndOfMessage)
            except H11_REFUSALS:
                self.done = False
        if self.done and not self.pending:
            self.client._finish(conn, self.target, self.generation)
        else:
            conn.close()


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_PROXY_HEAD_BYTES",
    "PROXY_ERROR_KINDS",
    "HTTPBodyCut",
    "HTTPClient",
    "HTTPError",
    "HTTPProtocolError",
    "HTTPTimeout",
    "ProxyError",
    "ProxyErrorKind",
    "Response",
    "StreamResponse",
    "is_loopback",
]
