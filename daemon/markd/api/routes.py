"""The control API's endpoints: each validates its request's shape and calls the service.

:data:`ROUTES` is the table the server dispatches on; ``docs/openapi.json`` lists exactly these
routes (tests/unit/test_api_docs.py). A handler gets a :class:`RouteContext` (the service as
:class:`~markd.api.protocol.ControlledService` sees it) and the framed :class:`Request`, and
returns a :class:`Response` or raises :class:`HTTPRefusal`. The sale session refuses with the
domain's errors (:class:`~markd.receipts.ReceiptError` and its kinds), never with HTTP;
:func:`receipt_status` is where a kind of refusal becomes a status.

Request bodies hold full marking codes: nothing here logs them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from markd.api.messages import HTTPRefusal, Request, Response
from markd.api.protocol import ControlledService
from markd.api.sessions import SessionsFull, SessionStore, cookie_header, session_cookies
from markd.events import verdict_json
from markd.money import money_problem
from markd.receipts import (
    PAYMENT_TYPES,
    OpenReceipt,
    Payment,
    ReceiptError,
    ReceiptInputError,
    ReceiptItem,
    ReceiptOperations,
    ReceiptUnavailable,
)
from markd.text import control_problem

#: ``GET /metrics``: the text format 0.0.4, which is what the library's plain
#: ``generate_latest`` writes in every release (newer ones call a later format their latest).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Longest code accepted by ``/v1/check`` (a scanner frames at most 512 bytes by default).
MAX_CODE_CHARS = 2048
#: Longest ``Idempotency-Key`` a close takes; printable ASCII only.
MAX_IDEMPOTENCY_KEY_CHARS = 64
#: A receipt id as markd gives them: a UUID in its canonical lower-case form.
RECEIPT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Paths with a parameter: the prefix → the route's pattern (the parameter is one segment).
PARAMETER_PATHS = {"/v1/receipts/": "/v1/receipts/{id}"}


@dataclass(frozen=True)
class RouteContext:
    """What a handler may use."""

    service: ControlledService
    #: The server's own part of ``GET /v1/status``: its connections and event clients.
    api_status: Callable[[], dict[str, Any]]
    #: The server's browser sessions and tickets (``POST /v1/session``).
    sessions: SessionStore | None = None


Handler = Callable[[RouteContext, Request], Awaitable[Response]]


class RouteTable(dict[tuple[str, str], Handler]):
    """``(method, route)`` → handler, where a route with a parameter is written as its pattern
    (``/v1/receipts/{id}``). :meth:`get` takes a request's path as well and finds the route it
    belongs to (``/v1/receipts/6b1d…`` → ``/v1/receipts/{id}``), so the server dispatches on
    ``ROUTES.get((method, path))`` whatever the route."""

    def get(self, key: tuple[str, str], default: Any = None) -> Any:  # type: ignore[override]
        method, path = key
        return super().get((method, route_of(path)), default)


#: Every route the server answers: ``(method, path)`` → handler. The OpenAPI document lists
#: exactly these (tests/unit/test_api_docs.py).
ROUTES: RouteTable = RouteTable()


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[(method, path)] = handler
        return handler

    return register


def route_of(path: str) -> str:
    """The route ``path`` is served by: itself, or the pattern of a path with a parameter
    (``/v1/receipts/ID`` → ``/v1/receipts/{id}``)."""
    for prefix, pattern in PARAMETER_PATHS.items():
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            return pattern
    return path


def methods_of(path: str) -> list[str]:
    """The methods ``path`` takes (empty: no such path), for 405's ``Allow``."""
    route = route_of(path)
    return sorted(m for m, p in ROUTES if p == route)


@route("GET", "/v1/status")
async def get_status(context: RouteContext, request: Request) -> Response:
    return Response(200, {**context.service.status_snapshot(), "api": context.api_status()})


@route("GET", "/metrics")
async def get_metrics(context: RouteContext, request: Request) -> Response:
    # Prometheus's own path and text format, not JSON (docs/metrics.md).
    return Response(
        200,
        await context.service.metrics_in_turns(context.api_status()),
        headers={"Content-Type": METRICS_CONTENT_TYPE},
    )


@route("POST", "/v1/check")
async def post_check(context: RouteContext, request: Request) -> Response:
    body = request.json()
    _only(body, {"code"})
    code = _code(body)
    verdict = await context.service.submit(code.encode("utf-8"), "api")
    return Response(200, verdict_json(verdict))


@route("POST", "/v1/reload")
async def post_reload(context: RouteContext, request: Request) -> Response:
    _only(request.json(empty_ok=True), set())
    result = await context.service.reload()
    if not result.ok:
        raise HTTPRefusal(
            409, "reload-refused", result.message, extra={"generation": result.generation}
        )
    return Response(200, {"ok": True, "message": result.message, "generation": result.generation})


@route("GET", "/v1/events")
async def get_events(context: RouteContext, request: Request) -> Response:
    # The server streams events itself (the connection becomes the stream, see
    # markd.api.sse); the route is listed so that the table, 405 answers and the OpenAPI
    # test know it.
    raise HTTPRefusal(500, "internal-error", "event stream not dispatched")


@route("POST", "/v1/session")
async def post_session(context: RouteContext, request: Request) -> Response:
    # Reached with the bearer token, on the Unix socket, or with a ticket (used up by now):
    # a session cookie does not authorise this route (markd.api.sessions.SESSION_ROUTES).
    # A ticket's exchange gets the cookie only, no new ticket, so a ticket cannot renew
    # itself; and it may not push out a session in use (SessionsFull).
    _only(request.json(empty_ok=True), set())
    assert context.sessions is not None
    by_ticket = request.authorised_by == "ticket"
    try:
        opened = context.sessions.open(with_ticket=not by_ticket)
    except SessionsFull as exc:
        raise HTTPRefusal(503, "too-many-sessions", str(exc)) from None
    body: dict[str, Any] = {"session_s": opened.session_s}
    if opened.ticket is not None:
        body = {"ticket": opened.ticket, "ticket_s": opened.ticket_s, **body}
    return Response(201, body, headers={"Set-Cookie": cookie_header(opened.session)})


@route("DELETE", "/v1/session")
async def delete_session(context: RouteContext, request: Request) -> Response:
    assert context.sessions is not None
    revoked = context.sessions.revoke(session_cookies(request.headers))
    return Response(200, {"revoked": revoked}, headers={"Set-Cookie": cookie_header("", 0)})


@route("GET", "/v1/receipt")
async def get_receipt(context: RouteContext, request: Request) -> Response:
    receipts = _receipts(context)
    current = await receipts.current()
    return Response(200, {"receipt": None if current is None else dict(current)})


@route("POST", "/v1/receipt")
async def post_receipt(context: RouteContext, request: Request) -> Response:
    body = request.json(empty_ok=True)
    _only(body, {"kind"})
    kind = _field(body, "kind", str, default="sell")
    if kind not in ("sell", "return"):
        raise HTTPRefusal(400, "bad-request", "kind: expected sell or return")
    receipts = _receipts(context)
    state = await receipts.open(OpenReceipt(kind=kind))
    return Response(201, {"receipt": dict(state)})


@route("POST", "/v1/receipt/items")
async def post_item(context: RouteContext, request: Request) -> Response:
    body = request.json()
    _only(body, {"code", "name", "price_kopecks", "tax"})
    code = _code(body)
    name = _field(body, "name", str)
    if not name.strip():
        raise HTTPRefusal(400, "bad-request", "name: must not be empty")
    if (problem := control_problem(name, "name")) is not None:
        raise HTTPRefusal(400, "bad-request", problem)
    price = _money(body, "price_kopecks", "a price")
    tax = _field(body, "tax", str, default=None)
    receipts = _receipts(context)
    # Checked at the price it is sold at: the price rules (a tobacco pack above its MRP,
    # a unit below its minimum price) judge the sale, not just the code.
    checked = await context.service.check_unit(code.encode("utf-8"), "api", price_kopecks=price)
    verdict = checked.verdict
    current = await receipts.current()
    selling = current is None or current.get("kind", "sell") != "return"
    if selling and verdict.decision != "allow":
        raise HTTPRefusal(
            409,
            "code-not-allowed",
            verdict.message_ru,
            extra={"verdict": verdict_json(verdict)},
        )
    item = ReceiptItem(
        code=code,
        name=name,
        price_kopecks=price,
        tax=tax,
        parsed=checked.code,
        parse_error=checked.error,
    )
    state = await receipts.add(item, verdict)
    return Response(200, {"receipt": dict(state), "verdict": verdict_json(verdict)})


@route("GET", "/v1/receipts/{id}")
async def get_receipt_by_id(context: RouteContext, request: Request) -> Response:
    receipt_id = _receipt_id(request.path[len("/v1/receipts/") :], "the path's receipt id")
    receipts = _receipts(context)
    found = await receipts.lookup(receipt_id)
    if found is None:
        raise HTTPRefusal(404, "receipt-not-found", f"no receipt {receipt_id} is known here")
    return Response(200, {"receipt": dict(found)})


@route("POST", "/v1/receipt/close")
async def post_close(context: RouteContext, request: Request) -> Response:
    key = _idempotency_key(request)
    body = request.json(empty_ok=True)
    _only(body, {"payments", "receipt"})
    receipt_id = None
    if "receipt" in body:
        receipt_id = _receipt_id(_field(body, "receipt", str), "receipt")
    raw = _field(body, "payments", list, default=[])
    payments = []
    for index, entry in enumerate(raw, start=1):
        where = f"payments item {index}: "
        if not isinstance(entry, dict):
            raise HTTPRefusal(400, "bad-request", f"{where}expected an object")
        _only(entry, {"type", "amount_kopecks"}, where=where)
        kind = _field(entry, "type", str, where=where)
        if kind not in PAYMENT_TYPES:
            raise HTTPRefusal(
                400, "bad-request", f"{where}type: expected {' or '.join(sorted(PAYMENT_TYPES))}"
            )
        amount = _money(entry, "amount_kopecks", "a payment", where=where, minimum=1)
        payments.append(Payment(amount_kopecks=amount, type=kind))
    receipts = _receipts(context)
    state = await receipts.close(tuple(payments), receipt_id=receipt_id, idempotency_key=key)
    return Response(200, {"receipt": dict(state)})


@route("POST", "/v1/receipt/cancel")
async def post_cancel(context: RouteContext, request: Request) -> Response:
    _only(request.json(empty_ok=True), set())
    receipts = _receipts(context)
    state = await receipts.cancel()
    return Response(200, {"receipt": dict(state)})


# --------------------------------------------------------------------------------------------
# Refusals of the sale session


def receipt_status(error: ReceiptError) -> int:
    """The HTTP status of a sale session's refusal: 422 for what cannot be sold as given
    (:class:`~markd.receipts.ReceiptInputError`: payments below the total, not a usable code,
    a bad position), 503 for a ККТ not reached or a daemon stopping
    (:class:`~markd.receipts.ReceiptUnavailable`: try again later), 409 for the receipt's
    state (no receipt open, one open already, the ККТ refused)."""
    if isinstance(error, ReceiptInputError):
        return 422
    if isinstance(error, ReceiptUnavailable):
        return 503
    return 409


# --------------------------------------------------------------------------------------------
# Validation helpers


def _receipts(context: RouteContext) -> ReceiptOperations:
    receipts = context.service.receipts
    if receipts is None:
        raise HTTPRefusal(
            503,
            "no-printer",
            "no sale session: [sale] mode is off, so no fiscal printer is opened",
        )
    return receipts


def _only(body: Mapping[str, Any], allowed: set[str], *, where: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise HTTPRefusal(
            400, "unknown-field", f"{where}unknown field(s) {', '.join(unknown)} (known: {known})"
        )


_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array"}


def _field(
    body: Mapping[str, Any], name: str, kind: type, *, default: Any = _MISSING, where: str = ""
) -> Any:
    if name not in body:
        if default is _MISSING:
            raise HTTPRefusal(400, "bad-request", f"{where}{name}: required")
        return default
    value = body[name]
    # JSON true/false arrive as bool, which Python counts as int: not a price.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HTTPRefusal(400, "bad-request", f"{where}{name}: expected {_TYPE_NAMES[kind]}")
    return value


def _money(
    body: Mapping[str, Any], name: str, what: str, *, where: str = "", minimum: int = 0
) -> int:
    """A sum of kopecks the ККТ can take (``minimum`` to :data:`~markd.money.MAX_KOPECKS`),
    else a 400 ``money-out-of-range`` before the sale session (and so the printer) is asked."""
    value = _field(body, name, int, where=where)
    problem = money_problem(value, what, minimum)
    if problem is not None:
        raise HTTPRefusal(400, "money-out-of-range", f"{where}{name}: {problem}")
    return int(value)


def _receipt_id(text: str, where: str) -> str:
    """A receipt id as markd gives them (upper-case hex is taken too), else 400."""
    if len(text) != 36 or not RECEIPT_ID.fullmatch(text.lower()):
        raise HTTPRefusal(
            400,
            "bad-receipt-id",
            f"{where}: not a receipt id (a UUID such as 3f2b8c1e-5d4a-4e7b-9c2d-1a0b3c4d5e6f, "
            "as the receipt's open answered)",
        )
    return text.lower()


def _idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 64 printable ASCII characters, else 400. The
    message never repeats the key."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    problem = None
    if not key:
        problem = "empty"
    elif len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        problem = f"longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
    elif not all(" " <= ch <= "~" for ch in key):
        problem = "only printable ASCII characters (space to ~) are allowed"
    if problem is not None:
        raise HTTPRefusal(400, "bad-idempotency-key", f"Idempotency-Key: {problem}")
    return key


def _code(body: Mapping[str, Any]) -> str:
    code = _field(body, "code", str)
    if not code:
        raise HTTPRefusal(400, "bad-request", "code: must not be empty")
    if len(code) > MAX_CODE_CHARS:
        raise HTTPRefusal(400, "bad-request", f"code: longer than {MAX_CODE_CHARS} characters")
    return code
