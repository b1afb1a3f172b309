"""What the sale session reports: what became of a unit (:class:`UnitOutcome`), of a receipt
(:class:`ReceiptOutcome`) and of a recovery (:class:`RecoveryReport`), and the customer-screen
texts for units the ККТ refused.

Every ``record()`` is JSON-ready and holds the КИ at most, never a full marking code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from markd.fiscal.model import MarkValidation, Position, ReceiptResult
from markd.receipts import Payment

#: Customer-screen texts for units the ККТ refused, by reason.
MESSAGES_RU: dict[str, str] = {
    "fn-crypto-invalid": "Код маркировки не прошёл проверку в ФН, продажа невозможна",
    "oism-status-incorrect": "Оператор маркировки не подтвердил статус товара, продажа невозможна",
    "oism-sale-stopped": "Продажа товара приостановлена оператором маркировки",
    "oism-no-answer": "Нет ответа оператора маркировки, продажа невозможна",
    "fn-validation-timeout": "Касса не успела проверить код, отсканируйте ещё раз",
    "duplicate-in-receipt": "Этот экземпляр уже в чеке",
    "no-verdict": "Код не проверен, продажа невозможна",
    "paper-out": "В кассе закончилась бумага, продажа невозможна",
    "fn-error": "Ошибка фискального накопителя, продажа невозможна",
}
PRINTER_DOWN_RU = "Касса недоступна, продажа невозможна"

UnitStatus = Literal["added", "refused"]
ReceiptStatus = Literal["closed", "failed", "pending", "cancelled", "empty"]


def message(reason: str) -> str:
    """The customer-screen text for a unit refused with ``reason``."""
    return MESSAGES_RU.get(reason, PRINTER_DOWN_RU)


@dataclass(frozen=True)
class UnitOutcome:
    """What became of one unit: ``added`` to the receipt or ``refused`` (with the reason)."""

    status: UnitStatus
    reason: str
    message_ru: str
    ki: str | None
    unit_id: str | None = None
    receipt_id: str | None = None
    validation: MarkValidation | None = None
    position: Position | None = None
    #: Who decided: ``verdict`` (the permit check), ``fn`` (the ККТ's check of the code),
    #: ``printer`` (the ККТ could not do it: offline, no paper, ФН error…), ``session``.
    source: str = "fn"

    @property
    def added(self) -> bool:
        return self.status == "added"

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "message": self.message_ru,
            "ki": self.ki,
            "unit": self.unit_id,
            "receipt": self.receipt_id,
            "source": self.source,
        }
        if self.validation is not None:
            data["fn"] = self.validation.record()
        if self.position is not None:
            data["position"] = self.position.record()
        return data


@dataclass(frozen=True)
class ReceiptOutcome:
    """What became of a receipt: ``closed`` (fiscalised), ``failed`` (the ККТ refused; the
    receipt stays open, close again or cancel), ``pending`` (the ККТ is unreachable or its
    answer was lost: :meth:`SaleSession.recover` finishes it later), ``cancelled``, ``empty``."""

    status: ReceiptStatus
    reason: str
    receipt_id: str | None = None
    receipt: ReceiptResult | None = None
    #: The store's sold journal got every КИ (None: no store).
    store_ok: bool | None = None
    #: The Local Module's answer (None: not configured or not asked).
    lm: dict[str, Any] | None = None
    #: Units dropped when the receipt had to be registered anew after a crash.
    dropped: tuple[UnitOutcome, ...] = ()
    #: The payments the receipt carries (closed with, or journaled for the next attempt).
    payments: tuple[Payment, ...] = ()
    #: :meth:`SaleSession.close` was given other payments and did not use them: an earlier
    #: attempt's outcome is unknown, so the journaled payments stay until it is settled.
    payments_ignored: bool = False
    #: Units were dropped after the payment: ``total_before_kopecks`` (what was paid for),
    #: ``total_kopecks`` (what is registered), ``refund_kopecks`` (owed to the customer),
    #: ``dropped`` (their КИ). None when nothing was dropped.
    adjustment: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "receipt_id": self.receipt_id,
            "receipt": None if self.receipt is None else self.receipt.record(),
            "store_ok": self.store_ok,
            "lm": self.lm,
            "dropped": [u.record() for u in self.dropped],
            "payments": [p.record() for p in self.payments],
            "payments_ignored": self.payments_ignored,
            "adjustment": self.adjustment,
        }


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`SaleSession.recover` did, receipt by receipt."""

    actions: tuple[dict[str, Any], ...] = ()
    outcomes: tuple[ReceiptOutcome, ...] = ()

    @property
    def pending(self) -> bool:
        """Something could not be finished (the ККТ unreachable): call recover() again."""
        return any(o.status == "pending" for o in self.outcomes)

    def record(self) -> dict[str, Any]:
        return {
            "actions": list(self.actions),
            "outcomes": [o.record() for o in self.outcomes],
            "pending": self.pending,
        }
