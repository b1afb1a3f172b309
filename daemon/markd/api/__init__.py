"""The control API: HTTP/1.1 and JSON on a Unix socket, for kiosk screens and ``markctl``.

The daemon serves it on ``[api] socket`` (default ``/run/markd/control.sock``, mode 0660, group
``[api] socket_group`` when that group exists), and, when ``[api] listen`` is set, also on a
loopback TCP port for a kiosk screen running in a browser. ``[metrics] listen`` adds a third
listener that serves ``GET /metrics`` alone, with a token of its own, for Prometheus.
``docs/api.md`` describes every endpoint with examples; ``docs/openapi.json`` is the
machine-readable form (a test keeps it and :data:`ROUTES` equal)::

    GET  /v1/status            service, scanners, check sources, store, printer, API clients
    POST /v1/check             {"code": "…"} → the verdict (the scan path, scanner "api")
    GET  /v1/events            Server-Sent Events (or a WebSocket, with Upgrade: websocket):
                               scans, verdicts, device and service state
    GET  /v1/receipt           the open receipt (null when none)
    POST /v1/receipt           open a receipt
    POST /v1/receipt/items     check a code and add it to the receipt when allowed
    POST /v1/receipt/close     close the receipt with its payments
    POST /v1/receipt/cancel    cancel the open receipt
    POST /v1/reload            re-read the configuration (as SIGHUP), answer with the outcome
    POST /v1/session           for a browser page: the token exchanged for a session cookie
                               and a one-use ticket
    DELETE /v1/session         end the page's session

The package, one job per module:

``protocol``
    :class:`ControlledService`, what the API needs of the daemon (``markd.service``
    implements it; the API never imports the service).
``listeners``
    binding the Unix socket (mode, group, a stale file replaced) and the TCP ones;
    :func:`parse_listen` for ``[api] listen`` and ``[metrics] listen``.
``server``
    :class:`ControlServer`: connections on asyncio streams, HTTP/1.1 framed by h11, the limits
    and deadlines, origin and credential checks, dispatch.
``routes``
    the endpoints and :data:`ROUTES`.
``sse``
    the ``GET /v1/events`` stream: per-client bounded queues, heartbeats, write timeouts,
    replay from ``Last-Event-ID`` or ``since``.
``websocket``
    the same stream as a WebSocket: wsproto's handshake on the request h11 read, one text
    message per event, pings, the same slow-client rules.
``sessions``
    browser sessions (the ``markd_session`` cookie) and one-use tickets, and what each opens.
``messages``
    :class:`Request`, :class:`Response`, :class:`HTTPRefusal`.
``client``
    :class:`~markd.api.client.ControlClient`, the blocking client ``markctl`` uses.

Receipts go to a sale session that implements :class:`~markd.receipts.ReceiptOperations`
(``service.receipts``, the :class:`~markd.sale.SaleDesk`); without one (``[sale] mode`` off: no
printer) those endpoints answer ``503 {"error": "no-printer"}``. The receipt types are
re-exported here for the code that knew them as ``markd.api``'s.
"""

from __future__ import annotations

from markd.api.listeners import ControlApiError, parse_listen
from markd.api.messages import HTTPRefusal, Request, Response
from markd.api.protocol import ControlledService, ReloadOutcome
from markd.api.routes import MAX_CODE_CHARS, ROUTES
from markd.api.server import (
    CLOSE_GRACE_S,
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    METRICS_ROUTES,
    REQUEST_TIMEOUT_S,
    WRITE_TIMEOUT_S,
    ControlServer,
)
from markd.api.sse import HEARTBEAT_S, SSE_RETRY_MS, event_kinds
from markd.receipts import (
    OpenReceipt,
    Payment,
    ReceiptError,
    ReceiptInputError,
    ReceiptItem,
    ReceiptOperations,
    ReceiptUnavailable,
)

__all__ = [
    "CLOSE_GRACE_S",
    "HEAD_TIMEOUT_S",
    "HEARTBEAT_S",
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_CODE_CHARS",
    "MAX_CONNECTIONS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "METRICS_ROUTES",
    "REQUEST_TIMEOUT_S",
    "ROUTES",
    "SSE_RETRY_MS",
    "WRITE_TIMEOUT_S",
    "ControlApiError",
    "ControlServer",
    "ControlledService",
    "HTTPRefusal",
    "OpenReceipt",
    "Payment",
    "ReceiptError",
    "ReceiptInputError",
    "ReceiptItem",
    "ReceiptOperations",
    "ReceiptUnavailable",
    "ReloadOutcome",
    "Request",
    "Response",
    "event_kinds",
    "parse_listen",
]
