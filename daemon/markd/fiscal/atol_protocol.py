"""ATOL JSON as markd's client reads it: the names, numbers and conversions the ``atol`` backend
uses to build tasks and read their answers. The virtual ККТ (:mod:`markd.emulators`) keeps its
own reading of the protocol on purpose, so nothing here is shared with it.

Task and field names follow domain.md §7.4–§7.6 and the typed public clients it cites. Error
numbers are ATOL's ``LIBFPTR_ERROR_*`` values (the driver's header, mirrored by several public
bindings); :data:`ERROR_REASONS` turns the ones a sale meets into markd's reason codes.
"""

from __future__ import annotations

import base64
import math
from typing import Any

# -- tag 2003 ---------------------------------------------------------------------------------

#: Planned status (tag 2003) → ATOL's ``itemEstimatedStatus`` name (domain.md §7.4).
ESTIMATED_STATUS_NAMES: dict[int, str] = {
    1: "itemPieceSold",
    2: "itemDryForSale",
    3: "itemPieceReturn",
    4: "itemDryReturn",
    255: "itemStatusUnchanged",
}


# -- task types -------------------------------------------------------------------------------

#: Tasks that change the device: the device keeps its answers to them under the request id.
MUTATING_TASKS = frozenset(
    {
        "beginMarkingCodeValidation",
        "acceptMarkingCode",
        "declineMarkingCode",
        "cancelMarkingCodeValidation",
        "clearMarkingCodeValidationResult",
        "openShift",
        "closeShift",
        "sell",
        "sellReturn",
        "cancelReceipt",
    }
)

#: Tasks before which the driver's scripts cancel a receipt left open (domain.md §7.4a).
FISCAL_TASKS = frozenset({"openShift", "closeShift", "sell", "sellReturn"})

#: Receipt kind → ATOL task type.
RECEIPT_TASKS = {"sell": "sell", "return": "sellReturn"}

# -- errors -----------------------------------------------------------------------------------

ERROR_NO_CONNECTION = 2
ERROR_NO_PAPER = 44
ERROR_COVER_OPENED = 45
ERROR_NONCASH_TOO_MUCH = 52
ERROR_NOT_FULLY_PAID = 66
ERROR_SHIFT_EXPIRED = 68
ERROR_DENIED_IN_CLOSED_SHIFT = 73
ERROR_DENIED_IN_CLOSED_RECEIPT = 81
ERROR_DENIED_IN_OPENED_RECEIPT = 82
ERROR_DENIED_IN_OPENED_SHIFT = 83
ERROR_INVALID_POSITIONS_COUNT = 110
ERROR_NEED_CANCEL_DOCUMENT = 203  # "need to cancel the document"
ERROR_INVALID_SUM = 16
ERROR_INVALID_PARAM = 13
ERROR_NOT_SUPPORTED = 11
ERROR_FN_FAULT = 118
ERROR_INVALID_TAXATION_TYPE = 143  # «Некорректная СНО»: not one the ККТ is registered with
ERROR_OPERATOR_LOGIN = 196  # «Ошибка регистрации кассира»: the cashier (1021/1203) refused
ERROR_CONNECTION_LOST = 241
ERROR_VALIDATION_IN_PROGRESS = 401
ERROR_INVALID_MARKING_CODE_STATUS = 404
ERROR_MARKS_OVERFLOW = 408
ERROR_INVALID_MARKING_CODE = 409
ERROR_INVALID_STATE = 410
ERROR_MARK_NOT_CHECKED = 420
ERROR_MARK_CHECK_TIMEOUT = 421
ERROR_OFD_EXCHANGE = 411
ERROR_NO_MARKING_CODE_IN_TABLE = 422
ERROR_MARK_CHECK_IN_PROGRESS = 423
ERROR_RECEIPT_PARSE = 501
ERROR_INTERRUPTED = 502

#: The device could not be talked to at all: the task did not run.
NOT_EXECUTED_CODES = frozenset({1, 2, 3, 4})
#: The link broke while the task ran: it may or may not have taken effect.
CUT_OFF_CODES = frozenset({ERROR_CONNECTION_LOST})

#: Errors of the driver's cancelReceipt() that mean "nothing to cancel" (the scripts'
#: ``isNormalCancelError``; the numbers the scripts name there that markd knows).
NOTHING_TO_CANCEL_CODES = frozenset({ERROR_DENIED_IN_CLOSED_RECEIPT, ERROR_SHIFT_EXPIRED})

ERROR_REASONS: dict[int, str] = {
    1: "printer-unavailable",
    2: "printer-unavailable",
    3: "printer-unavailable",
    4: "printer-unavailable",
    ERROR_NOT_SUPPORTED: "not-supported",
    ERROR_INVALID_PARAM: "bad-request",
    ERROR_INVALID_SUM: "bad-sum",
    ERROR_NO_PAPER: "paper-out",
    ERROR_COVER_OPENED: "cover-open",
    46: "printer-fault",
    47: "printer-fault",
    ERROR_NONCASH_TOO_MUCH: "bad-payment",
    55: "device-busy",
    ERROR_NOT_FULLY_PAID: "not-fully-paid",
    ERROR_SHIFT_EXPIRED: "shift-expired",
    141: "shift-expired",
    ERROR_DENIED_IN_CLOSED_SHIFT: "shift-closed",
    ERROR_DENIED_IN_CLOSED_RECEIPT: "receipt-closed",
    ERROR_DENIED_IN_OPENED_RECEIPT: "receipt-open",
    ERROR_DENIED_IN_OPENED_SHIFT: "shift-open",
    ERROR_NEED_CANCEL_DOCUMENT: "receipt-open",
    ERROR_INVALID_POSITIONS_COUNT: "empty-receipt",
    **{code: "fn-error" for code in (*range(115, 125), 135, 136, 137, 140, 159, 162, 166)},
    ERROR_INVALID_TAXATION_TYPE: "bad-taxation-type",
    ERROR_OPERATOR_LOGIN: "cashier-refused",
    228: "marking-code-conflict",
    ERROR_CONNECTION_LOST: "connection-lost",
    ERROR_VALIDATION_IN_PROGRESS: "validation-running",
    402: "oism-unreachable",
    403: "validation-cancelled",
    ERROR_INVALID_MARKING_CODE_STATUS: "marking-status-invalid",
    405: "marking-code-invalid",
    406: "marking-denied",
    407: "marking-denied",
    ERROR_MARKS_OVERFLOW: "marks-overflow",
    ERROR_INVALID_MARKING_CODE: "marking-code-invalid",
    ERROR_INVALID_STATE: "invalid-state",
    ERROR_MARK_NOT_CHECKED: "mark-not-checked",
    ERROR_MARK_CHECK_TIMEOUT: "oism-timeout",
    ERROR_OFD_EXCHANGE: "ofd-exchange-error",
    ERROR_NO_MARKING_CODE_IN_TABLE: "mark-not-checked",
    ERROR_MARK_CHECK_IN_PROGRESS: "mark-check-in-progress",
    ERROR_RECEIPT_PARSE: "receipt-parse-error",
    ERROR_INTERRUPTED: "interrupted",
}


def error_reason(code: int | None) -> str:
    """markd's reason code for an ATOL error number (``device-error`` when not listed)."""
    if code is None:
        return "device-error"
    return ERROR_REASONS.get(code, "device-error")


# -- values -----------------------------------------------------------------------------------


def roubles(kopecks: int) -> float:
    """Kopecks as the roubles number ATOL JSON wants (``8990`` → ``89.9``)."""
    return round(kopecks / 100, 2)


def kopecks(value: Any) -> int:
    """Roubles from ATOL JSON as kopecks; ``ValueError`` for something that is not a number."""
    # Python's json reads Infinity and NaN; round() would raise OverflowError on the first.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a sum: {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a sum: {value!r:.40}")
    return round(value * 100)


def encode_km(km: str) -> str:
    """The full code as ATOL JSON carries it: base64 of its UTF-8 bytes, raw GS included."""
    return base64.b64encode(km.encode("utf-8")).decode("ascii")


def decode_km(text: Any) -> str | None:
    """The code from ATOL's base64 ``imc``; None when it is not valid base64 UTF-8."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
