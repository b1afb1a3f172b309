"""``CONNECT`` tunnels through an HTTP proxy for :class:`~markd.http.client.HTTPClient`.

An internal module of :mod:`markd.http`. An ``https://`` target behind a proxy is reached
through ``CONNECT host:port`` (RFC 9110 §9.3.6), then TLS with the target inside the tunnel
(``StreamWriter.start_tls``). The ``CONNECT`` exchange is framed by an h11 connection of its
own: after a 2xx answer h11 reports ``SWITCHED_PROTOCOL`` and leaves the rest of the stream
(the tunnel) alone; its answer head may not exceed :data:`MAX_PROXY_HEAD_BYTES`. What goes
wrong here is the proxy's own failure (:class:`~markd.http.errors.ProxyError`), except a TLS
failure of the target, which stays the target's.
"""

from __future__ import annotations

import asyncio
import ssl

import h11

from markd.http.connection import READ_SIZE, STATUS_PREFIX
from markd.http.errors import HTTPError, ProxyError
from markd.http.refusals import H11_REFUSALS
from markd.proxy import ProxyEndpoint, ProxySettings

#: The proxy's answer to ``CONNECT`` (status line and headers) may not be longer than this: it
#: is a few hundred bytes from any real proxy, and an endless one must not eat the budget.
MAX_PROXY_HEAD_BYTES = 16 << 10


async def open_tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    via: ProxyEndpoint,
    authority: str,
    *,
    user_agent: str,
    proxy: ProxySettings | None,
) -> None:
    """``CONNECT host:port`` (RFC 9110 §9.3.6); returns when the proxy answered 2xx.

    The exchange is framed by an h11 connection of its own: after a 2xx answer h11 reports
    ``SWITCHED_PROTOCOL`` and leaves the rest of the stream (the tunnel) alone."""
    tunnel = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_PROXY_HEAD_BYTES)
    fields = [("Host", authority), ("User-Agent", user_agent)]
    authorization = proxy.authorization() if proxy is not None else None
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
        raise refused_credentials(proxy, via, status)
    raise ProxyError(
        f"proxy {via} refused the tunnel to {authority}: HTTP {status} {reason}".rstrip(),
        "proxy-error",
        proxy=str(via),
        status=status,
        reason=reason,
        # 5xx: the proxy could not reach this target (tinyproxy says 500, Squid 502/503).
        target_failure=status >= 500,
    )


async def tls_in_tunnel(
    writer: asyncio.StreamWriter,
    via: ProxyEndpoint,
    authority: str,
    host: str,
    context: ssl.SSLContext,
) -> None:
    """TLS with the target over the open tunnel; the target's certificate rules apply
    (``context``)."""
    try:
        await writer.start_tls(context, server_hostname=host)
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


def refused_credentials(proxy: ProxySettings | None, via: ProxyEndpoint, status: int) -> ProxyError:
    """The error for a proxy's 407 (or 401 to ``CONNECT``): whether credentials were sent
    decides the words, which never include them."""
    if proxy is not None and proxy.credentials is not None:
        text = f"proxy {via} refused the credentials (HTTP {status})"
    else:
        text = f"proxy {via} wants credentials (HTTP {status}) and none are configured"
    return ProxyError(text, "proxy-auth", proxy=str(via), status=status)


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
        except H11_REFUSALS:
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
            if not STATUS_PREFIX.startswith(start[: len(STATUS_PREFIX)]):
                raise broken(f"something that is not HTTP: {start!r}")
        received += len(data)
        if received > MAX_PROXY_HEAD_BYTES:
            raise broken(f"a head larger than {MAX_PROXY_HEAD_BYTES} bytes")
        tunnel.receive_data(data)
