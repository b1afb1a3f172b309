"""A small asyncio HTTP/1.1 client for the check services: keep-alive, hard deadlines.

Why not urllib or http.client: a check must answer within its budget whatever the peer does
(accept and never answer, answer half a body, close mid-way), and the connection to the CDN,
the Local Module or the ТС ПИоТ should be reused across scans (a TLS handshake costs more than
the check). This client:

* keeps one idle connection per (scheme, host, port) and reuses it while the server keeps it
  alive (a reused connection that turns out closed is retried once on a fresh one, but only
  while the deadline allows and only for requests that did not reach the server);
* writes headers and body in one ``write`` with ``TCP_NODELAY`` set, so Nagle's algorithm and
  delayed ACKs cannot add ~40 ms to a request on loopback;
* enforces one absolute deadline (``time.monotonic()`` based) over connect, TLS, write and the
  whole response, raising :class:`HTTPTimeout`;
* reads ``Content-Length`` and chunked bodies, with a size limit;
* for HTTPS verifies certificates, except that a self-signed certificate may be accepted for a
  loopback host when the caller asks (the ТС ПИоТ on ``https://localhost:51401``);
* goes through an HTTP proxy when :class:`~markd.proxy.ProxySettings` route the target to one
  (domain.md §3.8): an ``http://`` target is asked for in absolute form
  (``GET http://host:port/path``, RFC 9112 §3.2.2) with ``Proxy-Authorization`` when
  credentials are configured; an ``https://`` target gets a ``CONNECT host:port`` tunnel
  (RFC 9110 §9.3.6) whose answer head is read with a size limit, then TLS with the target
  inside it (``StreamWriter.start_tls``), with the same certificate rules as without a proxy.
  Nothing inside the tunnel carries ``Proxy-Authorization``.

Errors are :class:`HTTPError` subclasses carrying what happened, never the request body nor a
credential. What the proxy itself did wrong is a :class:`ProxyError` (``kind`` one of
:data:`PROXY_ERROR_KINDS`); what the target did keeps the error types it has without a proxy.
Through a plain-HTTP proxy the exchange after the request is relayed, so a late or cut answer
there cannot be told apart from the target's and stays :class:`HTTPTimeout` /
:class:`HTTPProtocolError` (the message names the proxy). Only connecting to the proxy, its
``407`` and its answer to ``CONNECT`` are the proxy's own failures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from markd.proxy import ProxyEndpoint, ProxySettings

MAX_BODY_BYTES = 8 << 20
#: The proxy's answer to ``CONNECT`` (status line and headers) may not be longer than this: it
#: is a few hundred bytes from any real proxy, and an endless one must not eat the budget.
MAX_PROXY_HEAD_BYTES = 16 << 10
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class HTTPError(Exception):
    """The exchange failed before a complete answer arrived."""

    kind = "unreachable"


class HTTPTimeout(HTTPError):
    """The deadline passed (connect, send or answer)."""

    kind = "timeout"


class HTTPProtocolError(HTTPError):
    """The peer answered something that is not HTTP/1.x, or cut the answer short."""

    kind = "bad-answer"


ProxyErrorKind = Literal["proxy-unreachable", "proxy-timeout", "proxy-auth", "proxy-error"]
#: What a :class:`ProxyError` can say, with the situations behind each kind.
PROXY_ERROR_KINDS: dict[ProxyErrorKind, str] = {
    "proxy-unreachable": "cannot connect to the proxy (refused, DNS, reset before it answered)",
    "proxy-timeout": "connecting to the proxy, or its answer to CONNECT, took past the deadline",
    "proxy-auth": "the proxy answered 407 (or 401 to CONNECT): credentials missing or refused",
    "proxy-error": "the proxy refused the tunnel (another non-2xx status), answered CONNECT "
    "with something that is not HTTP or cut it short, or closed the tunnel during the TLS "
    "handshake right after accepting it",
}


class ProxyError(HTTPError):
    """The proxy between markd and the target failed; the target was never reached.

    ``kind`` is one of :data:`PROXY_ERROR_KINDS`, ``proxy`` the proxy as ``host:port`` and
    ``status`` its HTTP status when it answered with one (407, 502 …). The message names the
    proxy, never the credentials sent to it.

    ``target_failure`` tells a failure of the proxy itself (it cannot be reached, it wants
    credentials, its policy refuses the tunnel: every target fails alike) from one the proxy
    saw on the way to *this* target: the ``CONNECT`` answer never came (a proxy such as Squid
    answers only once it has reached the target), a 5xx to ``CONNECT`` (the proxy could not
    reach it), or a tunnel that closed before TLS with the target began. A caller with
    several equivalent targets tries the next one on a target failure only.
    """

    def __init__(
        self,
        message: str,
        kind: ProxyErrorKind,
        *,
        proxy: str,
        status: int | None = None,
        target_failure: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.proxy = proxy
        self.status = status
        self.target_failure = target_failure


@dataclass
class Response:
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


def _authority(host: str, port: int) -> str:
    """``host:port`` as it goes into a request line or ``Host``: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: int = 0

    def close(self) -> None:
        self.writer.close()


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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        authority = _authority(host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        via = self.proxy.route(parts.scheme, host, port) if self.proxy is not None else None
        extra = dict(headers or {})
        where = authority
        if via is not None:
            where = f"{authority} via proxy {via}"
            if parts.scheme == "http":
                # Absolute form tells the proxy where to go (RFC 9112 §3.2.2); the credentials
                # ride on every request because the proxy judges each one on its own.
                target = f"http://{authority}{target}"
                authorization = self.proxy.authorization() if self.proxy is not None else None
                if authorization is not None:
                    extra["Proxy-Authorization"] = authorization
        key = (parts.scheme, host, port, str(via) if via is not None else "")
        started = time.monotonic()
        for attempt in (0, 1):
            conn, reused = await self._connection(key, via, deadline)
            try:
                await self._send(conn, method, authority, where, target, extra, body, deadline)
                response = await self._receive(conn, method, where, deadline)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPProtocolError) as exc:
                conn.close()
                # A kept-alive connection the server had already closed: try once afresh.
                if reused and attempt == 0 and time.monotonic() < deadline:
                    continue
                if isinstance(exc, HTTPError):
                    raise
                raise HTTPError(f"connection to {where} failed: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            if via is not None and parts.scheme == "http" and response.status == 407:
                # Only a proxy answers 407 (RFC 9110 §15.5.8): the request never left it. (A
                # 401 stays the target's answer: through a plain-HTTP proxy it cannot be told
                # from a proxy that wrongly answers 401 — see _open_tunnel.)
                conn.close()
                raise self._refused_credentials(via, 407)
            response.elapsed_ms = (time.monotonic() - started) * 1000
            response.reused = reused
            conn.used += 1
            pool = self._idle.setdefault(key, [])
            if (
                generation != self._generation
                or response.headers.get("connection", "").lower() == "close"
                or len(pool) >= self.max_idle
            ):
                conn.close()
            else:
                pool.append(conn)
            return response
        raise HTTPError(f"connection to {where} failed twice")  # pragma: no cover

    def close(self) -> None:
        """Close every idle connection; a request still under way closes its own when done.
        The client may be used again afterwards (it then pools connections anew)."""
        self._generation += 1
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    # -- internals ------------------------------------------------------------------------------

    def _ssl_context(self, host: str) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.allow_self_signed_loopback and is_loopback(host):
            # The ТС ПИоТ serves a self-signed certificate on loopback; nothing else may.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connection(
        self, key: tuple[str, str, int, str], via: ProxyEndpoint | None, deadline: float
    ) -> tuple[_Connection, bool]:
        pool = self._idle.get(key, [])
        while pool:
            idle = pool.pop()
            if not idle.writer.is_closing() and not idle.reader.at_eof():
                return idle, True
            idle.close()
        scheme, host, port, _ = key
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPTimeout(f"no time left to connect to {_authority(host, port)}")
        if via is not None:
            return await self._through_proxy(via, scheme, host, port, deadline), False
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_context(host) if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                ),
                remaining,
            )
        except TimeoutError:
            raise HTTPTimeout(f"connecting to {host}:{port} took longer than the budget") from None
        except ssl.SSLError as exc:
            raise HTTPError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise HTTPError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        _no_delay(writer)
        return _Connection(reader, writer), False

    # -- proxies --------------------------------------------------------------------------------

    async def _through_proxy(
        self, via: ProxyEndpoint, scheme: str, host: str, port: int, deadline: float
    ) -> _Connection:
        """A connection to the proxy; for an https target, a tunnel with TLS to the target."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(via.host, via.port), deadline - time.monotonic()
            )
        except TimeoutError:
            raise ProxyError(
                f"connecting to proxy {via} took longer than the budget",
                "proxy-timeout",
                proxy=str(via),
            ) from None
        except OSError as exc:
            raise ProxyError(
                f"cannot connect to proxy {via}: {exc.strerror or exc}",
                "proxy-unreachable",
                proxy=str(via),
            ) from exc
        _no_delay(writer)
        if scheme == "http":
            return _Connection(reader, writer)
        try:
            await self._open_tunnel(reader, writer, via, host, port, deadline)
            await self._tls_in_tunnel(writer, via, host, port, deadline)
        except BaseException:
            writer.close()
            raise
        return _Connection(reader, writer)

    async def _open_tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        via: ProxyEndpoint,
        host: str,
        port: int,
        deadline: float,
    ) -> None:
        """``CONNECT host:port`` (RFC 9110 §9.3.6); returns when the proxy answered 2xx."""
        authority = _authority(host, port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        lines.append(f"User-Agent: {self.user_agent}")
        authorization = self.proxy.authorization() if self.proxy is not None else None
        if authorization is not None:
            lines.append(f"Proxy-Authorization: {authorization}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

        async def exchange() -> tuple[int, str]:
            await writer.drain()
            return await _read_connect_answer(reader, via, authority)

        try:
            status, reason = await asyncio.wait_for(exchange(), deadline - time.monotonic())
        except TimeoutError:
            raise ProxyError(
                f"proxy {via} did not answer CONNECT {authority} within the budget",
                "proxy-timeout",
                proxy=str(via),
                target_failure=True,
            ) from None
        except ConnectionError as exc:
            # Refused or reset before a byte of the answer: the proxy is not usable.
            raise ProxyError(
                f"proxy {via} dropped the connection before answering CONNECT {authority}",
                "proxy-unreachable",
                proxy=str(via),
            ) from exc
        if 200 <= status < 300:
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
            # 5xx: the proxy could not reach this target (tinyproxy says 500, Squid 502/503).
            target_failure=status >= 500,
        )

    async def _tls_in_tunnel(
        self,
        writer: asyncio.StreamWriter,
        via: ProxyEndpoint,
        host: str,
        port: int,
        deadline: float,
    ) -> None:
        """TLS with the target over the open tunnel; the target's certificate rules apply."""
        authority = _authority(host, port)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPTimeout(f"no time left for TLS with {authority} via proxy {via}")
        try:
            await asyncio.wait_for(
                writer.start_tls(self._ssl_context(host), server_hostname=host), remaining
            )
        except TimeoutError:
            raise HTTPTimeout(
                f"TLS with {authority} via proxy {via} took longer than the budget"
            ) from None
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
        authority: str,
        where: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: float,
    ) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
        merged = {"User-Agent": self.user_agent, "Accept": "application/json", **headers}
        if body is not None:
            merged["Content-Length"] = str(len(body))
        lines += [f"{name}: {value}" for name, value in merged.items()]
        # Headers and body leave in one write: no small segment waits for an ACK.
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        try:
            await asyncio.wait_for(conn.writer.drain(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise HTTPTimeout(f"sending to {where} took longer than the budget") from None

    async def _receive(
        self, conn: _Connection, method: str, where: str, deadline: float
    ) -> Response:
        async def read() -> Response:
            status_line = await conn.reader.readline()
            if not status_line:
                raise HTTPProtocolError(f"{where} closed the connection without answering")
            try:
                version, status_text, *rest = status_line.decode("latin-1").split(" ", 2)
                status = int(status_text)
            except ValueError:
                raise HTTPProtocolError(f"not an HTTP status line: {status_line[:40]!r}") from None
            if not version.startswith("HTTP/1."):
                raise HTTPProtocolError(f"not HTTP/1.x: {version[:20]!r}")
            headers: dict[str, str] = {}
            while True:
                line = await conn.reader.readline()
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise HTTPProtocolError("the answer ended inside its headers")
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self._body(conn, headers, method, status)
            reason = rest[0].strip() if rest else ""
            return Response(status, reason, headers, body, 0.0)

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPTimeout(f"no time left for the answer from {where}")
        try:
            return await asyncio.wait_for(read(), remaining)
        except TimeoutError:
            raise HTTPTimeout(f"the answer from {where} did not come within the budget") from None

    async def _body(
        self, conn: _Connection, headers: dict[str, str], method: str, status: int
    ) -> bytes:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size_line = await conn.reader.readline()
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise HTTPProtocolError("bad chunk size in the answer") from None
                if size == 0:
                    await conn.reader.readline()  # the empty trailer
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise HTTPProtocolError("the answer is too large")
                chunks.append(await conn.reader.readexactly(size))
                await conn.reader.readline()
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise HTTPProtocolError(f"bad Content-Length {length[:20]!r}") from None
            if not 0 <= size <= MAX_BODY_BYTES:
                raise HTTPProtocolError("the answer is too large")
            return await conn.reader.readexactly(size)
        # No length: the body runs to the end of the connection, which then cannot be reused.
        headers["connection"] = "close"
        data = await conn.reader.read(MAX_BODY_BYTES + 1)
        if len(data) > MAX_BODY_BYTES:
            raise HTTPProtocolError("the answer is too large")
        return data


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _read_connect_answer(
    reader: asyncio.StreamReader, via: ProxyEndpoint, authority: str
) -> tuple[int, str]:
    """The final status and reason of the proxy's answer to CONNECT. Its headers are read and
    dropped: a 2xx answer to CONNECT has no content (RFC 9110 §9.3.6), and nothing in them
    changes what markd does next."""
    received = 0

    def broken(problem: str) -> ProxyError:
        return ProxyError(
            f"proxy {via} answered CONNECT {authority} with {problem}",
            "proxy-error",
            proxy=str(via),
        )

    async def line() -> bytes:
        nonlocal received
        try:
            data = await reader.readline()
        except ValueError:  # one line beyond the stream's own limit
            raise broken(f"a head larger than {MAX_PROXY_HEAD_BYTES} bytes") from None
        except ConnectionError:
            if received == 0:
                raise  # nothing answered yet: the caller calls the proxy unreachable
            raise broken("an answer cut short") from None
        received += len(data)
        if received > MAX_PROXY_HEAD_BYTES:
            raise broken(f"a head larger than {MAX_PROXY_HEAD_BYTES} bytes")
        return data

    while True:
        status_line = await line()
        if not status_line:
            if received == 0:
                raise ProxyError(
                    f"proxy {via} closed the connection without answering CONNECT {authority}",
                    "proxy-unreachable",
                    proxy=str(via),
                )
            raise broken("an answer cut short")
        if not status_line.endswith(b"\n"):
            raise broken("an answer cut short")
        version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
        status_text, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not (
            # isascii(): "2²0" passes isdigit() and then fails int() (a latin-1 byte 0xB2).
            len(status_text) == 3 and status_text.isascii() and status_text.isdigit()
        ):
            raise broken(f"something that is not HTTP: {status_line[:40]!r}")
        while True:
            header = await line()
            if header in (b"\r\n", b"\n"):
                break
            if not header.endswith(b"\n"):
                raise broken("an answer cut short inside its headers")
        status = int(status_text)
        if not 100 <= status < 200:  # interim answers (100 Continue) come before the final one
            reason = "".join(ch for ch in reason.strip() if ch.isprintable())[:60]
            return status, reason
