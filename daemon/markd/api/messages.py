"""Requests, answers and refusals as the control API's server, routes and event stream share
them: plain data, no I/O and no HTTP grammar (h11 does that in :mod:`markd.api.server`)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from markd import __version__

#: Reason phrases of the statuses the API sends (HTTP/1.1 clients ignore them; people read
#: them in curl -v).
PHRASES = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


#: The error codes of refused requests counted for ``GET /metrics``: the server's own
#: refusals (access, limits, framing, an unknown route) and a route's ``bad-request``.
COUNTED_REFUSALS = frozenset(
    {
        "unauthorized",
        "origin-not-allowed",
        "busy",
        "body-too-large",
        "headers-too-large",
        "length-required",
        "bad-request",
        "method-not-allowed",
        "not-found",
    }
)


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


@dataclass
class Request:
    """One request, framed and checked against the limits by the server."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    #: ``HTTP/1.1`` or ``HTTP/1.0``.
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = field(default=b"", repr=False)
    #: ``unix`` or ``tcp``: which listener the request came through.
    transport: str = "unix"
    #: Who sent it, for the log (``unix`` or ``127.0.0.1:40112``).
    peer: str = ""
    #: What let it in, once the server has admitted it: ``socket`` (the Unix socket),
    #: ``token`` (the bearer token), ``session`` (the session cookie) or ``ticket``.
    authorised_by: str | None = None
    #: The digest of the session that let it in (``authorised_by`` ``session``).
    session: bytes | None = field(default=None, repr=False)

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
        _refuse_lone_surrogates(data)
        return data


def _refuse_lone_surrogates(data: dict[str, Any]) -> None:
    """400 for a string holding a lone surrogate (JSON's ``"\\ud800"``): it is no text, it
    cannot be encoded as UTF-8 for a check, a journal or an answer, and a code with one would
    otherwise fail deep in the service. Walked without recursion (nesting is the client's)."""
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"a field name in {where}" if where else "a field name")
                pending.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            pending.extend((f"{where or 'body'}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Names the place and the position, never the text (it may be a marking code).
        raise HTTPRefusal(
            400,
            "bad-request",
            f"{where}: a lone surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start + 1} is not text",
        ) from None


def _no_constants(name: str) -> Any:
    # NaN and Infinity are Python's extensions, not JSON: a client sending them has a bug.
    raise ValueError(f"{name} is not JSON")


@dataclass
class Response:
    """An answer: a status and a JSON-ready body (none for 204), or bytes of another format
    whose ``Content-Type`` the headers give (``GET /metrics``)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: The connection ends after this answer (a refusal that leaves nothing to keep alive).
    close: bool = False


def common_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers every answer carries, then ``headers``."""
    return {
        "Date": _http_date(),
        "Server": f"markd/{__version__}",
        "X-Content-Type-Options": "nosniff",
        **headers,
    }


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    # The Date header has whole seconds: format it once a second, not once an answer.
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def json_bytes(body: Any) -> bytes:
    """An answer's body: compact JSON in UTF-8, one line."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8")
