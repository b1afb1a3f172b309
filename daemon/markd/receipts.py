"""The receipt domain: what a sale session is asked to do, what a receipt is paid with, and
how a session refuses.

The control API turns ``POST /v1/receipt…`` bodies into these types and hands them to a sale
session that implements :class:`ReceiptOperations` (the service's ``receipts``, in practice
the :class:`~markd.sale.SaleDesk`); ``markctl sell`` and the sale session's journal use the
same :class:`Payment`. Nothing here knows HTTP: a refusal is a :class:`ReceiptError` whose
class says what kind of refusal it is — the receipt's state does not allow the operation
(:class:`ReceiptError` itself), what was given cannot be sold as given
(:class:`ReceiptInputError`), or the ККТ cannot be reached now (:class:`ReceiptUnavailable`)
— and the API chooses the answer's status from that (``markd.api.routes.receipt_status``).

Money is in kopecks throughout. A :class:`ReceiptItem` holds the full marking code (the
printer needs its crypto tail), so it is kept out of ``repr`` and must stay out of logs and
events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from markd.errors import MarkdError

if TYPE_CHECKING:
    from markd.checks.verdict import Verdict
    from markd.codes import MarkingCode
    from markd.errors import CodeError

#: Payment types a receipt is closed with: tag 1031 (cash) and tag 1081 (card and other
#: electronic means); ATOL JSON names them the same (``payments[].type``).
PaymentType = Literal["cash", "electronically"]
#: Every :data:`PaymentType`: a kiosk takes cards, a till also cash.
PAYMENT_TYPES: tuple[PaymentType, ...] = ("electronically", "cash")


class ReceiptError(MarkdError):
    """A sale session refuses an operation because of the receipt's state (no receipt open,
    one already open, the ККТ refused the receipt …). ``reason`` becomes the ``error`` of the
    API's answer. The subclasses name the other kinds of refusal."""

    reason = "receipt-error"


class ReceiptInputError(ReceiptError):
    """What was given cannot be sold as given: payments below the total, a code that is not a
    usable marking code, a position the ККТ cannot register. The same request fails again."""

    reason = "receipt-input"


class ReceiptUnavailable(ReceiptError):
    """The ККТ was not reached or did not answer (a paid receipt then waits for recovery), or
    markd is stopping: the same request may succeed later."""

    reason = "receipt-unavailable"


@dataclass(frozen=True)
class Payment:
    """One payment a receipt is closed with (``POST /v1/receipt/close``, ``markctl sell``,
    the session journal)."""

    amount_kopecks: int
    #: ``electronically`` (card and other electronic means, tag 1081; a kiosk's case) or
    #: ``cash`` (tag 1031).
    type: PaymentType = "electronically"

    def record(self) -> dict[str, Any]:
        return {"type": self.type, "amount_kopecks": self.amount_kopecks}


@dataclass(frozen=True)
class OpenReceipt:
    """``POST /v1/receipt``: which receipt to open."""

    #: ``sell`` (приход) or ``return`` (возврат прихода).
    kind: Literal["sell", "return"] = "sell"


@dataclass(frozen=True)
class ReceiptItem:
    """``POST /v1/receipt/items``: one marked unit (one code is one unit). ``code`` is the full
    code as scanned (the printer needs its crypto tail), so it is kept out of ``repr``.

    ``parsed`` is the code as markd's check parsed it on the way to the verdict: the sale
    takes it from here and never parses the code again. None when the code was not a usable
    marking code; ``parse_error`` then says why."""

    code: str = field(repr=False)
    name: str
    price_kopecks: int
    #: The tax type as the fiscal side names it (``vat20`` …); None: the session's default.
    tax: str | None = None
    parsed: MarkingCode | None = field(default=None, repr=False, compare=False)
    parse_error: CodeError | None = field(default=None, compare=False)


class ReceiptOperations(Protocol):
    """What the control API needs from a sale session (``service.receipts``).

    Every method returns JSON-ready data describing the receipt after the operation (the
    API puts it under ``"receipt"``), and raises :class:`ReceiptError` (or one of its
    subclasses) to refuse. The API has already validated the request's shape; the session
    judges the sale.
    """

    async def open(self, request: OpenReceipt) -> Mapping[str, Any]:
        """Open a receipt (refuse when one is open)."""
        ...

    async def add(self, item: ReceiptItem, verdict: Verdict) -> Mapping[str, Any]:
        """Add a unit; with no receipt open, open a sale first. ``verdict`` is the one markd
        just gave ``item.code`` (journaled, with its tag 1265). On a sale it is always
        ``allow``: the API refuses other codes itself. On a return it may be anything (a
        recalled unit comes back; a unit sold here reads ``sold-here``); the session keeps it
        for the record."""
        ...

    async def close(
        self,
        payments: tuple[Payment, ...],
        *,
        receipt_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Mapping[str, Any]:
        """Close (print) the receipt with these payments; none given: the session's default
        (the whole total, one payment of the configured type). ``receipt_id``: the receipt
        meant (refused when another is open). ``idempotency_key``: a close asked again with
        the same key gets the answer the first one got once its receipt is settled (after a
        restart too), and a key used for another receipt is refused (``idempotency-key-reused``,
        a :class:`ReceiptInputError`)."""
        ...

    async def cancel(self) -> Mapping[str, Any]:
        """Cancel the open receipt."""
        ...

    async def current(self) -> Mapping[str, Any] | None:
        """The open receipt, or None. Its ``kind`` is ``sell`` or ``return`` (the API reads it
        to know whether a code must be allowed; missing means a sale)."""
        ...

    async def lookup(self, receipt_id: str) -> Mapping[str, Any] | None:
        """What became of receipt ``receipt_id`` — ``open``, ``closing``, ``registered`` (with
        its document number and fiscal sign), ``cancelled``, ``unknown-needs-technician`` —
        across restarts; None when no receipt of that id was seen here. No device I/O."""
        ...

    def status(self) -> Mapping[str, Any]:
        """The printer's last known state for ``GET /v1/status`` (no device I/O: it is
        called on every status request)."""
        ...
