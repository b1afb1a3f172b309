"""What can go wrong between markd and an HTTP peer: one error tree for every caller.

:class:`HTTPError` is the root; its ``kind`` is the short name the check clients turn into a
failure kind (``unreachable``, ``timeout``, ``bad-answer``, or a proxy kind). Messages name
the peer (``host:port``, and the proxy when one is in the way) and never a credential, a
request body, a query string or a header value.

``request_sent`` tells a caller whether the request's bytes were handed to a connection
before the failure: False means the peer cannot have acted on it (nothing listening, the
connection or the proxy's tunnel never came up); True means it may have. The ATOL web
backend decides from it whether a receipt may have been printed.
"""

from __future__ import annotations

from typing import Literal


class HTTPError(Exception):
    """The exchange failed before a complete answer arrived."""

    kind = "unreachable"
    #: The request was handed to a connection: the peer may have received and acted on it.
    request_sent: bool = False


class HTTPTimeout(HTTPError):
    """The deadline passed (connect, send or answer), or a read waited past its timeout."""

    kind = "timeout"


class HTTPProtocolError(HTTPError):
    """The peer answered something that is not HTTP/1.x, or broke HTTP's framing (a head cut
    short, a bad chunk, an answer larger than allowed)."""

    kind = "bad-answer"


class HTTPBodyCut(HTTPError):
    """The connection ended inside the body of an answer whose head had arrived (a
    ``Content-Length`` not reached, a chunked body without its last chunk). Its ``kind`` is
    ``unreachable``: the peer went away mid-answer. ``received`` counts the body's bytes that
    did arrive."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


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

    ``kind`` is one of :data:`PROXY_ERROR_KINDS`, ``proxy`` the proxy as ``host:port``,
    ``status`` its HTTP status when it answered with one (407, 502 …) and ``reason`` the
    reason phrase that came with it (printable characters only, at most 60). The message
    names the proxy, never the credentials sent to it.

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
        reason: str = "",
        target_failure: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.proxy = proxy
        self.status = status
        self.reason = reason
        self.target_failure = target_failure


__all__ = [
    "PROXY_ERROR_KINDS",
    "HTTPBodyCut",
    "HTTPError",
    "HTTPProtocolError",
    "HTTPTimeout",
    "ProxyError",
    "ProxyErrorKind",
]
