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
import os
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

from markd.http.errors import (
    PROXY_ERROR_KINDS,
    HTTPBodyCut,
    HTTPError,
    HTTPProtocolError,
    HTTPTimeout,
    ProxyError,
    ProxyErrorKind,
)
from markd.proxy import ProxyEndpoint, ProxySettings

#: The largest body :meth:`HTTPClient.request` takes (a check answer is a few kB).
MAX_BODY_BYTES = 8 << 20
#: The largest answer head (status line and headers) taken from a server: real ones are well
#: under 2 kB; an endless one must not eat memory or the budget.
MAX_HEAD_BYTES = 64 << 10
#: The proxy's answer to ``CONNECT`` (status line and headers) may not be longer than this: it
#: is a few hundred bytes from any real proxy.
MAX_PROXY_HEAD_BYTES = 16 << 10
#: How much one read asks of the socket.
READ_SIZE = 64 << 10
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
#: The first bytes of every answer this client accepts; anything else is refused at once
#: instead of waiting for a head that will never come.
_STATUS_PREFIX = b"HTTP/1."
_NO_TIMEOUT = contextlib.nullcontext()


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


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one request goes: parsed once, before any connection."""

    scheme: str
    host: str
    port: int
    authority: str
    #: What goes on the request line: origin form, or absolute form through a proxy.
    request_target: str
    via: ProxyEndpoint | None
    #: ``host:port`` (``… via proxy p``) for messages.
    where: str
    headers: dict[str, str]

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.scheme, self.host, self.port, str(self.via) if self.via else "")


class _Progress:
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


class _Timing:
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


class _Connection:
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
    _idle: dict[tuple[str, str, int, str], list[_Connection]] = field(
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
        timing = _Timing(deadline, None, whole=True)
        started = time.monotonic()
        sent_before = False  # by an attempt on a stale connection, before this one
        for attempt in (0, 1):
            progress = _Progress(sent_before)
            conn: _Connection | None = None
            try:
                if deadline <= time.monotonic():
                    raise HTTPTimeout(f"no time left for a request to {target.where}")
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection(target, progress, timing)
                    await self._send(conn, method, target, body, progress, timing)
                    head = await _read_head(conn, target.where, progress, timing)
                    payload = await _read_body(conn, head, target.where, progress, timing)
            except TimeoutError:
                _close(conn)
                raise self._timed_out(target, progress, timing) from None
            except HTTPError as exc:
                _close(conn)
                if _stale(progress) and attempt == 0 and time.monotonic() < deadline:
                    sent_before = True
                    continue  # a kept-alive connection the server had already closed
                exc.request_sent = progress.sent
                raise
            except BaseException:
                _close(conn)
                raise
            assert conn is not None
            if head.status_code == 407 and target.via is not None and target.scheme == "http":
                # Only a proxy answers 407 (RFC 9110 §15.5.8): the request never left it. (A
                # 401 stays the target's answer: through a plain-HTTP proxy it cannot be told
                # from a proxy that wrongly answers 401 — see _open_tunnel.)
                conn.close()
                raise self._refused_credentials(target.via, 407)
            self._finish(conn, target, generation)
            return Response(
                head.status_code,
                head.reason.decode("latin-1"),
                _headers(head),
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
        one of the two is required. A body longer than ``max_bytes`` is refused
        (:class:`HTTPProtocolError`) once that many bytes have come; a ``Content-Length``
        above it is not refused before then, so a caller can read the head and decide. The
        connection goes back to the pool only when the whole body was read.
        """
        if deadline is None and read_timeout is None:
            raise ValueError("a stream needs a deadline, a read timeout or both")
        generation = self._generation
        target = self._target(url, headers)
        timing = _Timing(deadline, read_timeout, whole=False)
        started = time.monotonic()
        sent_before = False
        for attempt in (0, 1):
            progress = _Progress(sent_before)
            conn: _Connection | None = None
            try:
                if timing.passed():
                    raise HTTPTimeout(f"no time left for a request to {target.where}")
                conn = await self._connection(target, progress, timing)
                await self._send(conn, method, target, body, progress, timing)
                head = await _read_head(conn, target.where, progress, timing)
            except TimeoutError:
                _close(conn)
                raise self._timed_out(target, progress, timing) from None
            except HTTPError as exc:
                _close(conn)
                if _stale(progress) and attempt == 0 and not timing.passed():
                    sent_before = True
                    continue
                exc.request_sent = progress.sent
                raise
            except BaseException:
                _close(conn)
                raise
            break
        else:  # pragma: no cover - the loop either returns or raises
            raise HTTPError(f"connection to {target.where} failed twice")
        assert conn is not None
        if head.status_code == 407 and target.via is not None and target.scheme == "http":
            conn.close()
            raise self._refused_credentials(target.via, 407)
        answer = StreamResponse(
            head.status_code,
            head.reason.decode("latin-1"),
            _headers(head),
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

    def _finish(self, conn: _Connection, target: _Target, generation: int) -> None:
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

    def _timed_out(self, target: _Target, progress: _Progress, timing: _Timing) -> HTTPError:
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

    async def _connection(
        self, target: _Target, progress: _Progress, timing: _Timing
    ) -> _Connection:
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
        _no_delay(writer)
        return _Connection(reader, writer)

    # -- proxies --------------------------------------------------------------------------------

    async def _through_proxy(
        self, target: _Target, progress: _Progress, timing: _Timing
    ) -> _Connection:
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
        _no_delay(writer)
        if target.scheme == "http":
            return _Connection(reader, writer)
        try:
            progress.phase = "tunnel"
            async with timing.step():
                await self._open_tunnel(reader, writer, via, target.authority)
            progress.phase = "tls"
            async with timing.step():
                await self._tls_in_tunnel(writer, via, target)
        except BaseException:
            writer.close()
            raise
        return _Connection(reader, writer)

    async def _open_tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        via: ProxyEndpoint,
        authority: str,
    ) -> None:
        """``CONNECT host:port`` (RFC 9110 §9.3.6); returns when the proxy answered 2xx.

        The exchange is framed by an h11 connection of its own: after a 2xx answer h11 reports
        ``SWITCHED_PROTOCOL`` and leaves the rest of the stream (the tunnel) alone."""
        tunnel = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_PROXY_HEAD_BYTES)
        fields = [("Host", authority), ("User-Agent", self.user_agent)]
        authorization = self.proxy.authorization() if self.proxy is not None else None
        if authorization is not None:
            fields.append(("Proxy-Authorization", authorization))
        try:
            request = tunnel.send(h11.Request(method="CONNECT", target=authority, headers=fields))
            data = (request or b"") + (tunnel.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            raise HTTPError(
                f"cannot ask proxy {via} for a tunnel to {authority}: the user agent or the "
                "credentials are not valid in an HTTP header"
            ) from None
        writer.write(data)
        try:
            await writer.drain()
            head = await _connect_answer(reader, tunnel, via, authority)
        except ConnectionError as exc:
            # Refused or reset before a byte of the answer: the proxy is not usable.
            raise ProxyError(
                f"proxy {via} dropped the connection before answering CONNECT {authority}",
                "proxy-unreachable",
                proxy=str(via),
            ) from exc
        status = head.status_code
        reason = "".join(ch for ch in head.reason.decode("latin-1").strip() if ch.isprintable())
        reason = reason[:60]
        if 200 <= status < 300:
            if tunnel.trailing_data[0]:
                # The target speaks only after our TLS hello: bytes before it are the proxy's.
                raise ProxyError(
                    f"proxy {via} answered CONNECT {authority} with bytes after its answer",
                    "proxy-error",
                    proxy=str(via),
                )
            return
        if status in (407, 401):
            # A 401 to CONNECT can only be the proxy's (the target has not been reached):
            # tinyproxy up to 1.11 answers wrong credentials with 401 instead of 407
            # (tinyproxy issue #532), and Debian 12 ships 1.11.1.
            raise self._refused_credentials(via, status)
        raise ProxyError(
            f"proxy {via} refused the tunnel to {authority}: HTTP {status} {reason}".rstrip(),
            "proxy-error",
            proxy=str(via),
            status=status,
            reason=reason,
            # 5xx: the proxy could not reach this target (tinyproxy says 500, Squid 502/503).
            target_failure=status >= 500,
        )

    async def _tls_in_tunnel(
        self, writer: asyncio.StreamWriter, via: ProxyEndpoint, target: _Target
    ) -> None:
        """TLS with the target over the open tunnel; the target's certificate rules apply."""
        authority = target.authority
        try:
            await writer.start_tls(self._ssl_context(target.host), server_hostname=target.host)
        except TimeoutError:
            raise
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLEOFError) as exc:
            # The proxy said yes, then the tunnel ended before TLS could start: a proxy that
            # gave up on the target, or one that drops tunnels (the target closing at once
            # looks the same from here).
            raise ProxyError(
                f"the tunnel through proxy {via} to {authority} closed during the TLS "
                "handshake (a broken tunnel)",
                "proxy-error",
                proxy=str(via),
                target_failure=True,
            ) from exc
        except ssl.SSLError as exc:
            raise HTTPError(f"TLS with {authority} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise HTTPError(
                f"TLS with {authority} via proxy {via} failed: {exc.strerror or exc}"
            ) from exc

    def _refused_credentials(self, via: ProxyEndpoint, status: int) -> ProxyError:
        if self.proxy is not None and self.proxy.credentials is not None:
            text = f"proxy {via} refused the credentials (HTTP {status})"
        else:
            text = f"proxy {via} wants credentials (HTTP {status}) and none are configured"
        return ProxyError(text, "proxy-auth", proxy=str(via), status=status)

    # -- the exchange ---------------------------------------------------------------------------

    async def _send(
        self,
        conn: _Connection,
        method: str,
        target: _Target,
        body: bytes | None,
        progress: _Progress,
        timing: _Timing,
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
        conn: _Connection,
        target: _Target,
        progress: _Progress,
        timing: _Timing,
        max_bytes: int,
        generation: int,
    ) -> None:
        self.client = client
        self.conn: _Connection | None = conn
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
        del self.pending[:amount]
        self.delivered += len(block)
        return block

    async def _fill(self) -> None:
        conn = self.conn
        if conn is None:
            raise HTTPError(f"the answer from {self.target.where} was already given up")
        try:
            event = await _next_event(conn, self.target.where, self.progress, self.timing)
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
            if self.progress.body > self.max_bytes:
                self._drop()
                raise HTTPProtocolError(
                    f"the answer from {self.target.where} is larger than {self.max_bytes} bytes"
                )
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
            except h11.RemoteProtocolError:
                self.done = False
        if self.done and not self.pending:
            self.client._finish(conn, self.target, self.generation)
        else:
            conn.close()


# -- reading answers -----------------------------------------------------------------------------


async def _next_event(conn: _Connection, where: str, progress: _Progress, timing: _Timing) -> Any:
    """The next h11 event of the answer, reading from the socket as h11 needs."""
    protocol = conn.protocol
    while True:
        try:
            event = protocol.next_event()
        except h11.RemoteProtocolError as exc:
            raise _broken_answer(exc, where, progress) from None
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
        elif len(progress.start) < len(_STATUS_PREFIX):
            progress.start = (progress.start + data)[: len(_STATUS_PREFIX)]
            if not _STATUS_PREFIX.startswith(progress.start):
                raise HTTPProtocolError(f"not HTTP/1.x from {where}: {data[:40]!r}")
        progress.received += len(data)
        protocol.receive_data(data)


def _broken_answer(exc: h11.RemoteProtocolError, where: str, progress: _Progress) -> HTTPError:
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
    what = str(exc).split(":", 1)[0].strip()[:60] or "bad framing"
    return HTTPProtocolError(f"a malformed answer from {where} ({what})")


def _stale(progress: _Progress) -> bool:
    """A reused connection that ended (closed or reset) before any byte of the answer: the
    server had closed it while idle. Worth one more try on a fresh connection."""
    return progress.reused and progress.received == 0 and progress.phase in ("send", "answer")


async def _read_head(
    conn: _Connection, where: str, progress: _Progress, timing: _Timing
) -> h11.Response:
    while True:
        event = await _next_event(conn, where, progress, timing)
        if isinstance(event, h11.Response):
            progress.head_done = True
            return event
        if not isinstance(event, h11.InformationalResponse):  # 1xx come before the answer
            raise HTTPProtocolError(f"unexpected {type(event).__name__} from {where}")


async def _read_body(
    conn: _Connection, head: h11.Response, where: str, progress: _Progress, timing: _Timing
) -> bytes:
    """The whole body, at most :data:`MAX_BODY_BYTES`."""
    length = _content_length(head)
    if length is not None and length > MAX_BODY_BYTES:
        raise HTTPProtocolError(f"the answer from {where} is too large ({length} bytes)")
    chunks: list[bytes] = []
    while True:
        event = await _next_event(conn, where, progress, timing)
        if isinstance(event, h11.Data):
            progress.body += len(event.data)
            if progress.body > MAX_BODY_BYTES:
                raise HTTPProtocolError(f"the answer from {where} is too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise HTTPProtocolError(f"unexpected {type(event).__name__} from {where}")


async def _connect_answer(
    reader: asyncio.StreamReader, tunnel: h11.Connection, via: ProxyEndpoint, authority: str
) -> h11.Response:
    """The proxy's final answer to CONNECT. Its headers are not used: a 2xx answer to CONNECT
    has no content (RFC 9110 §9.3.6), and nothing in them changes what markd does next."""
    received = 0
    start = b""
    eof = False

    def broken(problem: str) -> ProxyError:
        return ProxyError(
            f"proxy {via} answered CONNECT {authority} with {problem}",
            "proxy-error",
            proxy=str(via),
        )

    while True:
        try:
            event = tunnel.next_event()
        except h11.RemoteProtocolError:
            if received > MAX_PROXY_HEAD_BYTES:
                raise broken(f"a head larger than {MAX_PROXY_HEAD_BYTES} bytes") from None
            if eof:
                raise broken("an answer cut short") from None
            raise broken(f"something that is not HTTP: {start[:40]!r}") from None
        if isinstance(event, h11.Response):
            return event
        if event is not h11.NEED_DATA:
            continue  # 1xx interim answers come before the final one
        try:
            data = await reader.read(READ_SIZE)
        except ConnectionError:
            if received == 0:
                raise  # nothing answered yet: the caller calls the proxy unreachable
            raise broken("an answer cut short") from None
        if not data:
            if received == 0:
                raise ProxyError(
                    f"proxy {via} closed the connection without answering CONNECT {authority}",
                    "proxy-unreachable",
                    proxy=str(via),
                )
            eof = True
        elif len(start) < 40:
            start += data[: 40 - len(start)]
            if not _STATUS_PREFIX.startswith(start[: len(_STATUS_PREFIX)]):
                raise broken(f"something that is not HTTP: {start!r}")
        received += len(data)
        if received > MAX_PROXY_HEAD_BYTES:
            raise broken(f"a head larger than {MAX_PROXY_HEAD_BYTES} bytes")
        tunnel.receive_data(data)


def _headers(head: h11.Response) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}


def _content_length(head: h11.Response) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def _close(conn: _Connection | None) -> None:
    if conn is not None:
        conn.close()


def os_reason(exc: OSError) -> str:
    """What went wrong, in the system's words ("Connection refused"): asyncio's own text for
    a refused connection ("Connect call failed (…)") says less."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
