"""The receipt domain: what a sale session is asked to do, and how it refuses.

The control API turns ``POST /v1/receipt…`` bodies into these types and hands them to a sale
session that implements :class:`ReceiptOperations` (the service's ``receipts``, in practice
the :class:`~markd.sale.SaleDesk`). Nothing here knows HTTP: a refusal is a
:class:`ReceiptError` whose ``status`` the API passes on as the answer's status.

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

#: Payment types a receipt is closed with: tag 1031 (cash) and tag 1081 (card and other
#: electronic means).
PaymentType = Literal["cash", "electronically"]


class ReceiptError(MarkdError):
    """A sale session refuses an operation (no receipt open, one already open, the printer
    is out of paper …). ``reason`` becomes the ``error`` of the answer, ``status`` its HTTP
    status (409 unless the session says otherwise)."""

    reason = "receipt-error"

    def __init__(self, message: str, reason: str | None = None, *, status: int = 409) -> None:
        super().__init__(message, reason)
        self.status = status


@dataclass(frozen=True)
class OpenReceipt:
    """``POST /v1/receipt``: which receipt to open."""

    #: ``sell`` (приход) or ``return`` (возврат прихода).
    kind: Literal["sell", "return"] = "sell"


@dataclass(frozen=True)
class ReceiptItem:
    """``POST /v1/receipt/items``: one marked unit (one code is one unit). ``code`` is the full
    code as scanned (the printer needs its crypto tail), so it is kept out of ``repr``."""

    code: str = field(repr=False)
    name: str
    price_kopecks: int
    #: The tax type as the fiscal side names it (``vat20`` …); None: the session's default.
    tax: str | None = None


@dataclass(frozen=True)
class Payment:
    """One payment a receipt is closed with (``POST /v1/receipt/close``)."""

    #: ``cash`` (tag 1031) or ``electronically`` (card and other electronic means, tag 1081).
    type: PaymentType
    amount_kopecks: int


class ReceiptOperations(Protocol):
    """What the control API needs from a sale session (``service.receipts``).

    Every method returns JSON-ready data describing the receipt after the operation (the
    API puts it under ``"receipt"``), and raises :class:`ReceiptError` to refuse. The API
    has already validated the request's shape; the session judges the sale.
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

    async def close(self, payments: tuple[Payment, ...]) -> Mapping[str, Any]:
        """Close (print) the receipt with these payments; none given: the session's default
        (the whole total, one payment of the configured type)."""
        ...

    async def cancel(self) -> Mapping[str, Any]:
        """Cancel the open receipt."""
        ...

    async def current(self) -> Mapping[str, Any] | None:
        """The open receipt, or None. Its ``kind`` is ``sell`` or ``return`` (the API reads it
        to know whether a code must be allowed; missing means a sale)."""
        ...

    def status(self) -> Mapping[str, Any]:
        """The printer's last known state for ``GET /v1/status`` (no device I/O: it is
        called on every status request)."""
        ...
