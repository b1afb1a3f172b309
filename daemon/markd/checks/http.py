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
  loopback host when the caller asks (the ТС ПИоТ on ``https://localhost:51401``).

Errors are :class:`HTTPError` subclasses carrying what happened, never the request body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 8 << 20
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


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float
    reused: bool = False

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not)."""
        return json.loads(self.body)


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
    _idle: dict[tuple[str, str, int], list[_Connection]] = field(default_factory=dict, repr=False)

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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (parts.scheme, host, port)
        started = time.monotonic()
        for attempt in (0, 1):
            conn, reused = await self._connection(key, deadline)
            try:
                await self._send(conn, method, host, port, target, headers or {}, body, deadline)
                response = await self._receive(conn, method, deadline)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPProtocolError) as exc:
                conn.close()
                # A kept-alive connection the server had already closed: try once afresh.
                if reused and attempt == 0 and time.monotonic() < deadline:
                    continue
                if isinstance(exc, HTTPError):
                    raise
                raise HTTPError(f"connection to {host}:{port} failed: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            response.elapsed_ms = (time.monotonic() - started) * 1000
            response.reused = reused
            conn.used += 1
            pool = self._idle.setdefault(key, [])
            if response.headers.get("connection", "").lower() == "close" or len(pool) >= (
                self.max_idle
            ):
                conn.close()
            else:
                pool.append(conn)
            return response
        raise HTTPError(f"connection to {host}:{port} failed twice")  # pragma: no cover

    def close(self) -> None:
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
        self, key: tuple[str, str, int], deadline: float
    ) -> tuple[_Connection, bool]:
        pool = self._idle.get(key, [])
        while pool:
            idle = pool.pop()
            if not idle.writer.is_closing() and not idle.reader.at_eof():
                return idle, True
            idle.close()
        scheme, host, port = key
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPTimeout(f"no time left to connect to {host}:{port}")
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
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer), False

    async def _send(
        self,
        conn: _Connection,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: float,
    ) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
        merged = {"User-Agent": self.user_agent, "Accept": "application/json", **headers}
        if body is not None:
            merged["Content-Length"] = str(len(body))
        lines += [f"{name}: {value}" for name, value in merged.items()]
        # Headers and body leave in one write: no small segment waits for an ACK.
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        try:
            await asyncio.wait_for(conn.writer.drain(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise HTTPTimeout(f"sending to {host}:{port} took longer than the budget") from None

    async def _receive(self, conn: _Connection, method: str, deadline: float) -> Response:
        async def read() -> Response:
            status_line = await conn.reader.readline()
            if not status_line:
                raise HTTPProtocolError("the server closed the connection without answering")
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
            raise HTTPTimeout("no time left for the answer")
        try:
            return await asyncio.wait_for(read(), remaining)
        except TimeoutError:
            raise HTTPTimeout("the answer did not come within the budget") from None

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
