"""What the fiscal shim talks about: positions, marking-code validations, receipts and the
printer's status, independent of any ККТ protocol (payments are the receipt domain's
:class:`markd.receipts.Payment`, one type for the API, ``markctl`` and the printer).

Money is in kopecks everywhere in markd; a backend converts to what its device wants (ATOL JSON
takes roubles as numbers). A marked unit carries its full code (:attr:`MarkedItem.km`, kept out
of ``repr``) because the ККТ must get it; everything meant for a log or a journal
(:meth:`Position.record`, :meth:`MarkValidation.record`, :meth:`ReceiptResult.record`) holds
the КИ only.

The ФФД 1.2 tags a marked unit carries (domain.md §7.1, §7.6):

======  =====================================================  ==================================
tag     meaning                                                 here
======  =====================================================  ==================================
2000    the marking code                                        :attr:`MarkedItem.km`
2003    planned status (1 piece sold, 2 measured item in sale,  :attr:`MarkedItem.planned_status`
        3 piece returned …)
2102    processing mode, 0 in practice                          :attr:`MarkedItem.processing_mode`
2004    the ФН's local check (bits 0–1)                         :attr:`MarkValidation.tag2004`
2106    the check result printed on the receipt (bits 0–4)     :attr:`MarkValidation.tag2106`
1260    industry attribute: 1262 ФОИВ, 1263 document date       :class:`IndustryTags`
        (DD.MM.YYYY), 1264 document number, 1265 the check
        service's ``UUID=…&Time=…`` value
======  =====================================================  ==================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from markd.money import money_problem, quantity_problem
from markd.receipts import Payment
from markd.text import control_problem

#: Receipt kinds: a sale, or the return of a sale (ФФД «возврат прихода»).
ReceiptKind = Literal["sell", "return"]

#: Tag 2003 values (domain.md §7.1). Whether a plain piece sale is 1 or 2 is an open question
#: (§10.11): ``[fiscal] sale_status`` chooses.
PLANNED_STATUS_PIECE_SOLD = 1
PLANNED_STATUS_MEASURED_FOR_SALE = 2
PLANNED_STATUS_PIECE_RETURNED = 3
PLANNED_STATUS_PART_RETURNED = 4
PLANNED_STATUS_UNCHANGED = 255

#: Tax types as ATOL JSON names them (``tax.type``); the 2026 VAT rates included.
TAX_TYPES = (
    "none",
    "vat0",
    "vat5",
    "vat7",
    "vat10",
    "vat20",
    "vat22",
    "vat105",
    "vat107",
    "vat110",
    "vat120",
    "vat122",
)

#: Taxation systems (tag 1055) as ATOL JSON names them in a receipt's ``taxationType``: the
#: driver's receipt script (``myscripts_utils.js``, ``TAXATION_TYPES``) and the typed client
#: ``Bedunkevich/atol`` (``src/validation/Session.json``) list the same six. ``envd`` is no
#: longer in force (since 2021), but the driver still names it.
TAXATION_TYPES = ("osn", "usnIncome", "usnIncomeOutcome", "envd", "esn", "patent")

#: Tag 1021 (the cashier's name) is at most 64 characters (ФФД).
CASHIER_NAME_MAX = 64

#: Weights of an ИНН's check digits (the ФНС's published rule): one for a 10-digit ИНН (an
#: organisation), two for a 12-digit one (a person).
_INN_WEIGHTS = {
    10: ((2, 4, 10, 3, 5, 9, 4, 6, 8),),
    12: ((7, 2, 4, 10, 3, 5, 9, 4, 6, 8), (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)),
}


def inn_problem(value: str, lengths: tuple[int, ...] = (10, 12)) -> str | None:
    """Why ``value`` is not an ИНН of one of ``lengths`` (10 digits: an organisation; 12: a
    person) with valid check digits, or None.

    >>> inn_problem("7707083893") is None
    True
    >>> inn_problem("7707083894")
    'wrong check digit in ИНН 7707083894'
    """
    shown = " or ".join(str(n) for n in lengths)
    if not (value.isascii() and value.isdigit()) or len(value) not in lengths:
        return f"an ИНН here is {shown} digits, got {value!r}"
    digits = [int(c) for c in value]
    for weights in _INN_WEIGHTS[len(value)]:
        position = len(weights)
        check = sum(d * w for d, w in zip(digits, weights, strict=False)) % 11 % 10
        if check != digits[position]:
            return f"wrong check digit in ИНН {value}"
    return None


def cashier_inn_problem(value: str) -> str | None:
    """Why ``value`` is not a cashier's ИНН (tag 1203), or None. A cashier is a person, whose
    ИНН has 12 digits (10 digits is an organisation's)."""
    return inn_problem(value, (12,))


def cashier_name_problem(value: str) -> str | None:
    """Why ``value`` is not a cashier's name (tag 1021), or None."""
    if len(value) > CASHIER_NAME_MAX:
        return f"tag 1021 is at most {CASHIER_NAME_MAX} characters, got {len(value)}"
    if not value.isprintable():
        return "tag 1021 holds no control characters"
    return None


def taxation_type_problem(value: str) -> str | None:
    """Why ``value`` is not one of ATOL's ``taxationType`` names, or None."""
    if value not in TAXATION_TYPES:
        return f"expected one of {', '.join(TAXATION_TYPES)}, got {value!r}"
    return None


@dataclass(frozen=True)
class ReceiptAttributes:
    """What a receipt carries beside its positions and payments, the same on every receipt:
    the taxation system (tag 1055, ATOL ``taxationType``) and the cashier (tags 1021 / 1203,
    ATOL ``operator {name, vatin}``; shift reports carry the cashier too). None: not sent —
    the ККТ then uses its registration (a ККТ registered with one taxation system needs no
    ``taxationType``; one registered with several refuses a receipt without it)."""

    taxation_type: str | None = None
    cashier_name: str | None = None
    cashier_inn: str | None = None


_DATE_1263 = re.compile(r"(\d{2})\.(\d{2})\.(\d{4})")


def tag1263_problem(value: str) -> str | None:
    """Why ``value`` is not a tag 1263 date (``DD.MM.YYYY``), or None."""
    found = _DATE_1263.fullmatch(value)
    if found is None:
        return f"tag 1263 is a date DD.MM.YYYY, got {value!r}"
    day, month, _ = (int(x) for x in found.groups())
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return f"tag 1263 is a date DD.MM.YYYY, got {value!r}"
    return None


@dataclass(frozen=True)
class IndustryTags:
    """Tag 1260 of one marked position: 1262 ФОИВ id (≤3 chars), 1263 date of the founding
    document (``DD.MM.YYYY``), 1264 its number (≤32 chars), 1265 the check's ids (≤256 chars).

    The permissive-mode triple ``030`` / ``26.03.2022`` / ``477`` comes from two independent
    implementations, not from a normative text (domain.md §7.6), so it is configurable
    (``[fiscal] tag1262`` …); 1265 comes from the verdict (:attr:`Verdict.tag1265`).
    """

    tag1262: str = "030"
    tag1263: str = "26.03.2022"
    tag1264: str = "477"
    tag1265: str = ""

    def problems(self) -> list[str]:
        found = []
        if not 1 <= len(self.tag1262) <= 3:
            found.append(f"tag 1262 is 1 to 3 characters, got {self.tag1262!r}")
        problem = tag1263_problem(self.tag1263)
        if problem:
            found.append(problem)
        if not 1 <= len(self.tag1264) <= 32:
            found.append(f"tag 1264 is 1 to 32 characters, got {self.tag1264!r}")
        if len(self.tag1265) > 256:
            found.append(f"tag 1265 is at most 256 characters, got {len(self.tag1265)}")
        return found

    @property
    def atol_date(self) -> str:
        """1263 as ATOL JSON wants it: ``yyyy.mm.dd`` (the ККТ writes ``DD.MM.YYYY``)."""
        day, month, year = self.tag1263.split(".")
        return f"{year}.{month}.{day}"

    def record(self) -> dict[str, str]:
        return {
            "1262": self.tag1262,
            "1263": self.tag1263,
            "1264": self.tag1264,
            "1265": self.tag1265,
        }


@dataclass(frozen=True)
class MarkValidation:
    """What the ККТ said about one marking code (domain.md §7.2–§7.4).

    The ФН's local check comes first (tag 2004, bits 0–1); then, unless the ККТ is offline,
    the marking operator's system (ОИСМ) judges the planned status (tag 2106, bits 2–3; bit 4
    marks a result formed offline). ``ready`` is False when the ККТ had no final answer when
    polling stopped.
    """

    ki: str
    #: Bit 0: the ФН checked the code's crypto tail with its key.
    fn_checked: bool = False
    #: Bit 1: that check was positive.
    fn_result: bool = False
    #: Why the ФН could not check (``noKeys`` …), as the device said it.
    fn_error_reason: str | None = None
    ready: bool = False
    #: The ККТ sent a request to the ОИСМ.
    request_sent: bool = False
    #: Bit 2: the ОИСМ checked the product's status.
    oism_checked: bool = False
    #: Bit 3: the ОИСМ found the planned status correct.
    oism_status_correct: bool = False
    #: Bit 4: the result was formed by the ККТ in autonomous (offline) mode.
    offline: bool = False
    #: Tag 2109 as ATOL names it: ``itemEstimatedStatusCorrect`` | ``itemEstimatedStatusIncorrect``
    #: | ``itemSaleStopped``; None without an ОИСМ answer.
    item_status: str | None = None
    #: Tag 2105 as ATOL names it: ``correct`` | ``incorrect`` | ``unrecognized``.
    response_result: str | None = None
    #: The driver's error during the check (``"421: …"``), if it reported one.
    driver_error: str | None = None

    @property
    def tag2004(self) -> int:
        """The ФН's local result: bit 0 checked, bit 1 positive."""
        return int(self.fn_checked) | (int(self.fn_checked and self.fn_result) << 1)

    @property
    def tag2106(self) -> int:
        """The result printed on the receipt: bits 0–4 (domain.md §7.2)."""
        return (
            self.tag2004
            | (int(self.oism_checked) << 2)
            | (int(self.oism_checked and self.oism_status_correct) << 3)
            | (int(self.offline) << 4)
        )

    @property
    def oism_no_answer(self) -> bool:
        """The ККТ was online but the ОИСМ did not answer in time (domain.md §7.3: 0xFF): a
        final result without the ОИСМ bits and without the offline bit."""
        return self.ready and not self.oism_checked and not self.offline

    def item_info_check_result(self) -> dict[str, bool]:
        """ATOL's ``itemInfoCheckResult`` object for these bits."""
        return {
            "imcCheckFlag": self.fn_checked,
            "imcCheckResult": self.fn_checked and self.fn_result,
            "imcStatusInfo": self.oism_checked,
            "imcEstimatedStatusCorrect": self.oism_checked and self.oism_status_correct,
            "ecrStandAloneFlag": self.offline,
        }

    def record(self) -> dict[str, Any]:
        """JSON-ready, КИ only."""
        data: dict[str, Any] = {
            "ki": self.ki,
            "ready": self.ready,
            "tag2004": self.tag2004,
            "tag2106": self.tag2106,
            "fn_checked": self.fn_checked,
            "fn_result": self.fn_result,
            "oism_checked": self.oism_checked,
            "oism_status_correct": self.oism_status_correct,
            "offline": self.offline,
            "oism_no_answer": self.oism_no_answer,
        }
        for name in ("fn_error_reason", "item_status", "response_result", "driver_error"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data


def judge_validation(validation: MarkValidation, on_no_answer: str = "accept") -> tuple[bool, str]:
    """Accept or decline a code after the ККТ's check: ``(accept, reason)``.

    * the ФН checked the crypto tail and found it wrong → decline ``fn-crypto-invalid``;
    * no final answer within the poll time → decline ``fn-validation-timeout``;
    * formed offline (bit 4) → accept ``fn-offline``: the ФН alone is the law's offline check;
    * the ОИСМ answered → accept ``oism-correct`` when it found the planned status correct,
      else decline ``oism-sale-stopped`` or ``oism-status-incorrect``;
    * the ОИСМ did not answer (0xFF) → ``on_no_answer``: ``accept`` (the permit check already
      allowed the unit; vendors keep 2004 only) or ``decline``; reason ``oism-no-answer``.
    """
    if validation.fn_checked and not validation.fn_result:
        return False, "fn-crypto-invalid"
    if not validation.ready:
        return False, "fn-validation-timeout"
    if validation.offline:
        return True, "fn-offline"
    if validation.oism_checked:
        if validation.oism_status_correct:
            return True, "oism-correct"
        if validation.item_status == "itemSaleStopped":
            return False, "oism-sale-stopped"
        return False, "oism-status-incorrect"
    return on_no_answer == "accept", "oism-no-answer"


@dataclass(frozen=True)
class MarkedItem:
    """The marking part of a position: the full code for the ККТ (tag 2000) and its tags."""

    #: The full code, raw GS included; never logged (kept out of repr).
    km: str = field(repr=False)
    ki: str
    planned_status: int = PLANNED_STATUS_PIECE_SOLD
    processing_mode: int = 0
    industry: IndustryTags = field(default_factory=IndustryTags)
    #: The ККТ's check of this code, when it was validated (its bits go into the position).
    validation: MarkValidation | None = None


@dataclass(frozen=True)
class Position:
    """One receipt line. A marked unit is always one piece on its own line (domain.md §7.6:
    one 1260 per КМ)."""

    name: str
    price_kopecks: int
    quantity: int = 1
    tax: str = "none"
    mark: MarkedItem | None = None

    @property
    def amount_kopecks(self) -> int:
        return self.price_kopecks * self.quantity

    def problems(self) -> list[str]:
        found = []
        if not self.name.strip():
            found.append("a position needs a name")
        if len(self.name) > 128:
            found.append("a position name is at most 128 characters (tag 1030)")
        if (problem := control_problem(self.name, "a position name")) is not None:
            found.append(problem)  # printed on the receipt, shown on screens (markd.text)
        # The ККТ's limits (markd.money.MAX_KOPECKS, MAX_QUANTITY): a price of 10**30
        # kopecks is refused here, before a device is asked to register it.
        price = money_problem(self.price_kopecks, "a price")
        quantity = quantity_problem(self.quantity)
        found.extend(problem for problem in (price, quantity) if problem)
        if price is None and quantity is None:
            found.extend(filter(None, [money_problem(self.amount_kopecks, "a position's sum")]))
        if self.mark is not None and self.quantity != 1:
            found.append("a marked unit is one piece per position")
        if self.tax not in TAX_TYPES:
            found.append(f"unknown tax type {self.tax!r}; one of {', '.join(TAX_TYPES)}")
        if self.mark is not None:
            found.extend(self.mark.industry.problems())
        return found

    def record(self) -> dict[str, Any]:
        """The line as a technician reads it: КИ and tags, never the code itself."""
        data: dict[str, Any] = {
            "name": self.name,
            "price_kopecks": self.price_kopecks,
            "quantity": self.quantity,
            "amount_kopecks": self.amount_kopecks,
            "tax": self.tax,
        }
        if self.mark is not None:
            tags: dict[str, Any] = {
                "2003": self.mark.planned_status,
                "2102": self.mark.processing_mode,
            }
            if self.mark.industry.tag1265:
                # Tag 1260 goes to the ККТ only with a 1265 value (see atol.position_item).
                tags.update(self.mark.industry.record())
            if self.mark.validation is not None:
                tags["2004"] = self.mark.validation.tag2004
                tags["2106"] = self.mark.validation.tag2106
            data["ki"] = self.mark.ki
            data["tags"] = tags
        return data


@dataclass(frozen=True)
class ShiftInfo:
    """The ККТ's shift after opening or closing it."""

    number: int
    state: str  # closed | opened | expired
    document_number: int | None = None


@dataclass(frozen=True)
class ReceiptResult:
    """A fiscalised receipt: the ФН's document and the positions it holds."""

    kind: ReceiptKind
    document_number: int
    receipt_number: int | None = None
    shift_number: int | None = None
    fiscal_sign: str | None = None
    datetime: str | None = None
    fn_number: str | None = None
    registration_number: str | None = None
    total_kopecks: int = 0
    positions: tuple[Position, ...] = ()
    payments: tuple[Payment, ...] = ()
    #: True when the result was found on the device during recovery rather than received.
    recovered: bool = False

    @property
    def reference(self) -> str:
        """``<ФН number>/<document number>``: what the store's sold journal records."""
        return f"{self.fn_number or 'fn'}/{self.document_number}"

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "document_number": self.document_number,
            "receipt_number": self.receipt_number,
            "shift_number": self.shift_number,
            "fiscal_sign": self.fiscal_sign,
            "datetime": self.datetime,
            "fn_number": self.fn_number,
            "registration_number": self.registration_number,
            "total_kopecks": self.total_kopecks,
            "positions": [p.record() for p in self.positions],
            "payments": [p.record() for p in self.payments],
            "recovered": self.recovered,
        }


@dataclass(frozen=True)
class HealthThresholds:
    """When a fact of :class:`FiscalHealth` becomes a warning (``[fiscal] fn_days_warning``,
    ``unsent_days_warning``, ``shift_hours_warning``; domain.md §7.8)."""

    #: Fewer days than this left before the ФН's validity ends (a ФН is replaced in weeks).
    fn_days: int = 30
    #: The oldest document not yet sent to the ОФД is older than this (the ККТ blocks at 30).
    unsent_days: int = 3
    #: The shift has been open longer than this (the ККТ refuses receipts after 24 h).
    shift_hours: int = 23


#: The ФН's own warnings (``fnStatus.warnings``) that a fleet must act on.
FN_WARNING_NAMES = {
    "memoryOverflow": "fn-memory-full",
    "resourceExhausted": "fn-resource-exhausted",
    "needReplacement": "fn-needs-replacement",
    "criticalError": "fn-critical-error",
}


@dataclass(frozen=True)
class FiscalHealth:
    """What a fleet watches on a ККТ, read from the device (domain.md §7.8): when the ФН's
    validity ends, how old the oldest document not yet sent to the ОФД is, how long the shift
    has been open. Each fact is None when the device did not say. Dates are ISO 8601 as the
    device gives them; the ages are counted from the device's clock when it reports one."""

    fn_valid_until: str | None = None
    fn_days_left: int | None = None
    unsent_oldest: str | None = None
    unsent_oldest_days: float | None = None
    shift_opened_at: str | None = None
    shift_hours: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "fn_valid_until": self.fn_valid_until,
            "fn_days_left": self.fn_days_left,
            "unsent_oldest": self.unsent_oldest,
            "unsent_oldest_days": self.unsent_oldest_days,
            "shift_opened_at": self.shift_opened_at,
            "shift_hours": self.shift_hours,
        }


@dataclass(frozen=True)
class PrinterStatus:
    """The ККТ's state as far as a sale cares.

    ``receipt_open`` is None when the device does not report it (ATOL's documented status has
    no such field; the emulator reports ``receiptType``). ``unsent_documents`` is None when the
    device did not say.
    """

    shift_state: str  # closed | opened | expired
    shift_number: int
    paper_present: bool
    fn_present: bool
    fn_fiscal: bool
    #: ``ok`` or ``error`` (a critical ФН error, a missing ФН).
    fn_state: str
    last_document_number: int
    last_receipt_number: int | None = None
    unsent_documents: int | None = None
    receipt_open: bool | None = None
    #: The open receipt is the one markd is building (a backend that opens it on the device
    #: before its close, Shtrih's ``open_first``): no leftover, so not a problem.
    receipt_is_ours: bool = False
    cover_opened: bool = False
    blocked: bool = False
    fn_warnings: tuple[str, ...] = ()
    model: str | None = None
    #: The firmware the device reports (version and build), None when it does not say.
    firmware: str | None = None
    #: ФН validity, the oldest unsent document, the shift's age (domain.md §7.8).
    health: FiscalHealth = field(default_factory=FiscalHealth)
    #: The device's own answers, for ``markctl printer status --json``.
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def health_warnings(self, thresholds: HealthThresholds | None = None) -> list[str]:
        """What a technician must act on soon, by ``thresholds``: ``fn-expiring``,
        ``unsent-old``, ``shift-long``, the ФН's own warnings (``fn-memory-full``,
        ``fn-resource-exhausted``, ``fn-needs-replacement``, ``fn-critical-error``) and
        ``paper-out``."""
        limits = thresholds or HealthThresholds()
        health = self.health
        found = []
        if health.fn_days_left is not None and health.fn_days_left < limits.fn_days:
            found.append("fn-expiring")
        if health.unsent_oldest_days is not None and health.unsent_oldest_days > (
            limits.unsent_days
        ):
            found.append("unsent-old")
        if health.shift_hours is not None and health.shift_hours > limits.shift_hours:
            found.append("shift-long")
        found.extend(FN_WARNING_NAMES[w] for w in self.fn_warnings if w in FN_WARNING_NAMES)
        if not self.paper_present:
            found.append("paper-out")
        return found

    def problems(self) -> list[str]:
        """What stops a receipt now (empty: ready to sell)."""
        found = []
        if not self.paper_present:
            found.append("paper-out")
        if self.cover_opened:
            found.append("cover-open")
        if not self.fn_present or self.fn_state != "ok":
            found.append("fn-error")
        if self.blocked:
            found.append("device-blocked")
        if self.receipt_open and not self.receipt_is_ours:
            found.append("receipt-open")
        return found

    def record(self) -> dict[str, Any]:
        return {
            "shift_state": self.shift_state,
            "shift_number": self.shift_number,
            "paper_present": self.paper_present,
            "fn_present": self.fn_present,
            "fn_fiscal": self.fn_fiscal,
            "fn_state": self.fn_state,
            "fn_warnings": list(self.fn_warnings),
            "last_document_number": self.last_document_number,
            "last_receipt_number": self.last_receipt_number,
            "unsent_documents": self.unsent_documents,
            "receipt_open": self.receipt_open,
            "receipt_is_ours": self.receipt_is_ours,
            "cover_opened": self.cover_opened,
            "blocked": self.blocked,
            "model": self.model,
            "firmware": self.firmware,
            "problems": self.problems(),
            "health": self.health.record(),
        }
