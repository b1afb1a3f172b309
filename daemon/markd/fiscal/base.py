"""The fiscal printer interface, its URLs and the registry of backends.

A printer is configured by a URL (``[fiscal] url``) whose scheme names the backend::

    emulator:///var/lib/markd/kkt             the virtual ККТ, state kept in that directory
    atol-web://127.0.0.1:16732                ATOL's Web Requests server (ДТО10's web server),
    atol-web://127.0.0.1:16732?deviceID=kkt2  one of the devices it drives
    atol-lib://usb                            ATOL's libfptr10 in process: USB,
    atol-lib:///dev/ttyACM0?baudrate=115200   a serial port,
    atol-lib://192.0.2.20:5555                or TCP/IP
    shtrih:///dev/ttyACM0?baudrate=115200     a Shtrih-M ККТ over its protocol 1: a serial port,
    shtrih://192.0.2.30:7778                  or TCP (markd.fiscal.shtrih)

:func:`parse_printer_url` parses strictly: an unknown scheme, option or value raises
:class:`~markd.errors.PrinterURLError` restating the accepted form, so ``markctl config check``
catches a typo before a sale does. Backends are imported only when a URL names them; a backend
whose driver is missing fails when it is opened, with an error naming what is missing.

:class:`FiscalPrinter` is the one interface the sale session uses. It keeps the receipt being
built (kind and positions) itself: ATOL JSON, like the Shtrih drivers' advice, registers the
whole receipt in one go at "close", after every marked unit has been validated. The base class
also owns the timing of a code validation (begin → poll until ready → accept or decline), so a
backend only implements the device calls (``_begin_validation``, ``_fiscalise`` …).

A device's refusal is a :class:`~markd.errors.PrinterFault`; the refusals the sale session
acts on have a type of their own (:class:`ReceiptAlreadyOpen`, :class:`NoReceiptOpen`,
:class:`NoValidationRunning`), so the session decides on kinds of fault and never on a
device's error numbers: each backend maps its own numbers to these types.

Every operation takes an idempotency id (``op_id``). A backend whose device keeps a table of
requests uses it as the request's key (ATOL Web Requests' ``uuid``; the emulator's request
log), so an operation repeated with the same id after a crash is answered from that table
instead of running twice; :meth:`FiscalPrinter.find_receipt` asks the table what became of an
earlier receipt. The session still reconciles with the document counter for devices without
such a table (``atol-lib``).
"""

from __future__ import annotations

import abc
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from markd.errors import OutcomeUnknown, PrinterFault, PrinterURLError
from markd.fiscal.model import (
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptAttributes,
    ReceiptKind,
    ReceiptResult,
    ShiftInfo,
    judge_validation,
)
from markd.money import money_problem
from markd.receipts import Payment
from markd.secrets import Secret
from markd.urls import Backend, Option, Registry

# --------------------------------------------------------------------------------------------
# URLs


#: Scheme → backend class, imported only when a URL names it.
_BACKENDS: dict[str, Backend] = {
    "emulator": Backend(
        "markd.fiscal.emulator:EmulatorPrinter",
        "emulator:///ABSOLUTE/STATE/DIR, options ?ism=online|offline|timeout",
    ),
    "atol-web": Backend(
        "markd.fiscal.atol:AtolWebPrinter",
        "atol-web://HOST[:PORT] (port 16732 by default), options "
        "?cancel_task=cancelReceipt&deviceID=NAME",
    ),
    "atol-lib": Backend(
        "markd.fiscal.atol:AtolLibPrinter",
        "atol-lib://usb, atol-lib:///dev/PORT or atol-lib://HOST:PORT, options "
        "?baudrate=115200&lib=/path/to/libfptr10.so",
    ),
    "shtrih": Backend(
        "markd.fiscal.shtrih.printer:ShtrihPrinter",
        "shtrih:///dev/PORT or shtrih://HOST[:PORT] (port 7778 by default), options "
        "?baudrate=115200&password=30&timeout_ms=500&open_first=1|0 (baudrate: serial only)",
    ),
}


@dataclass(frozen=True)
class PrinterURL:
    """A parsed, validated printer URL. Build it with :func:`parse_printer_url`."""

    text: str
    scheme: str
    #: What the backend opens: a directory, ``host:port``, ``usb``, a device path.
    target: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


REGISTRY = Registry("printer", _BACKENDS, PrinterURLError)


def _fail(text: str, problem: str, scheme: str | None = None) -> PrinterURLError:
    return REGISTRY.fail(text, problem, scheme)  # type: ignore[return-value]


def backend_class(scheme: str) -> type[FiscalPrinter]:
    """Import and return the backend class for ``scheme``."""
    cls: type[FiscalPrinter] = REGISTRY.backend_class(scheme)
    return cls


def parse_printer_url(url: str) -> PrinterURL:
    """Parse and validate a printer URL; raise :class:`PrinterURLError` restating the form.

    >>> parse_printer_url("atol-web://127.0.0.1").target
    '127.0.0.1:16732'
    >>> parse_printer_url("emulator:///var/lib/markd/kkt").target
    '/var/lib/markd/kkt'
    """
    if not isinstance(url, str) or "://" not in url:
        raise _fail(str(url), "not a URL (no '://')")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _BACKENDS:
        raise _fail(url, f"unknown scheme {scheme!r}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise _fail(url, str(exc), scheme) from None
    if parts.fragment:
        raise _fail(url, "a '#fragment' is not allowed", scheme)
    if parts.username or parts.password:
        raise _fail(url, "credentials do not belong in the URL", scheme)

    cls = backend_class(scheme)
    try:
        target = cls.target_from_url(parts.hostname or "", port, unquote(parts.path))
    except ValueError as exc:
        raise _fail(url, str(exc), scheme) from None

    given = REGISTRY.query(url, parts.query, scheme, cls.OPTIONS)
    options = REGISTRY.convert(url, scheme, cls.OPTIONS, given)
    try:
        cls.check_options(target, given)
    except ValueError as exc:
        raise _fail(url, str(exc), scheme) from None
    return PrinterURL(text=url, scheme=scheme, target=target, options=MappingProxyType(options))


@dataclass(frozen=True)
class PrinterSettings:
    """Timing of device operations (``[fiscal]`` keys in seconds), and what every receipt
    carries beside its positions (``[fiscal] taxation_type``, ``cashier_name``,
    ``cashier_inn``)."""

    #: Longest wait for one device operation (a receipt includes printing it).
    timeout_s: float = 30.0
    #: Longest wait for the ККТ's answer on a marking code (begin → ready).
    validation_timeout_s: float = 10.0
    #: Pause between validation status polls.
    poll_interval_s: float = 0.2
    #: Taxation system and cashier sent with every receipt (the cashier with shifts too).
    receipt: ReceiptAttributes = field(default_factory=ReceiptAttributes)
    #: HTTP Basic user of a web server in front of the ККТ (``atol-web``); empty: none.
    web_user: str = ""
    #: Its password (``[fiscal] web_password_file`` or the credential ``atol-web-password``).
    web_password: Secret | None = None


def open_printer(url: str | PrinterURL, settings: PrinterSettings | None = None) -> FiscalPrinter:
    """The printer backend ``url`` names, opened. Raises :class:`PrinterURLError` for a bad
    URL and :class:`~markd.errors.PrinterUnavailable` when its driver is missing."""
    parsed = url if isinstance(url, PrinterURL) else parse_printer_url(url)
    return backend_class(parsed.scheme)(parsed, settings or PrinterSettings())


def derive_op_id(op_id: str, step: str) -> str:
    """A sub-operation's id, derived from its parent's: the same parent and step always give
    the same id (so a step repeated after a restart keeps its idempotency key), and the
    result is a UUID (ATOL's web server keys requests by a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"markd-fiscal:{op_id}/{step}"))


def new_op_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------------------------
# Faults the session decides on


class ReceiptAlreadyOpen(PrinterFault):
    """A receipt is open (being built here, or left open on the device) where the operation
    needs none: a new receipt cannot start until it is registered or cancelled."""

    reason = "receipt-open"


class NoReceiptOpen(PrinterFault):
    """No receipt is open where the operation needs one (a cancel finds nothing to cancel)."""

    reason = "receipt-closed"


class NoValidationRunning(PrinterFault):
    """No code validation is under way, or its result is not there (a cancel or an accept
    finds nothing to act on)."""

    reason = "invalid-state"


class ValidationAlreadyRunning(PrinterFault):
    """A code validation is already under way on the device (ATOL 401, «Процедура проверки
    КМ уже запущена»): cancel it and begin again."""

    reason = "validation-running"


class MarkNotValidated(PrinterFault):
    """A receipt names a code the ФН holds no accepted result for (ATOL 420 «КМ не
    проверен в ФН», 422 «нет КМ в таблице»): after a failed receipt the driver clears the
    table, so every code must be validated again before the receipt is tried again."""

    reason = "mark-not-checked"


class MarkCheckInProgress(PrinterFault):
    """A code check is still running while a receipt is registered (ATOL 423 «Идёт
    проверка КМ»): the one failed receipt after which the driver keeps the accepted codes."""

    reason = "mark-check-in-progress"


class OismTimeout(PrinterFault):
    """The marking operator's system did not answer the ККТ in time (ATOL 421 «Истёк
    таймаут проверки КМ»)."""

    reason = "oism-timeout"


class OfdExchangeFault(PrinterFault):
    """The ККТ's exchange with the ОФД failed (ATOL 411 «Ошибка обмена с ОФД»)."""

    reason = "ofd-exchange-error"


class ReceiptParseError(PrinterFault):
    """The driver could not read the task (ATOL 501 «Ошибка разбора задания»): markd built
    a task the driver does not accept — nothing was done on the device."""

    reason = "receipt-parse-error"


class QueueBlocked(OutcomeUnknown):
    """ATOL's Web Requests queue is ``blocked``: the result of the request at its head is
    unknown and the server runs nothing after it until a person resolves it. Raised at once
    (no polling to the time limit), and for every new operation until the queue moves again.

    Technician: open the driver's web server (ДТО10, ``http://HOST:16732``), see what became
    of the blocked request on the ККТ (its last document, an open receipt), resolve or cancel
    it there; markd then reads the request's final status and goes on (``markctl printer
    status`` shows ``queue-blocked`` until then)."""

    reason = "queue-blocked"


# --------------------------------------------------------------------------------------------
# The interface


#: What became of an earlier receipt request, as the device's request table tells it.
Finding = Literal["done", "failed", "unknown"]


@dataclass(frozen=True)
class DocumentSummary:
    """A fiscal document as the ФН keeps it, read back by number: enough for recovery to tell
    whether a document made since a close attempt is that receipt."""

    number: int
    #: A receipt: its :data:`~markd.fiscal.model.ReceiptKind` (``sell`` / ``return``); another
    #: receipt (``buy`` …) or document: the name of its type (``openShift`` …).
    kind: str
    total_kopecks: int | None = None
    fiscal_sign: str | None = None
    datetime: str | None = None


@dataclass(frozen=True)
class CodeCheck:
    """A code validated and decided: the ККТ's result, and whether it was accepted."""

    validation: MarkValidation
    accepted: bool
    reason: str


class FiscalPrinter(abc.ABC):
    """One ККТ. Thread-safe: every public call holds the printer's lock, so the device sees
    one operation at a time in the order they were made.

    Life cycle: :func:`open_printer`, then :meth:`close` (or ``with``). A receipt is built with
    :meth:`open_receipt`, :meth:`add_position` (one per unit; marked units first go through
    :meth:`check_code`) and fiscalised by :meth:`close_receipt`, or dropped by
    :meth:`cancel_receipt`.
    """

    OPTIONS: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, url: PrinterURL, settings: PrinterSettings) -> None:
        self.url = url
        self.settings = settings
        self._lock = threading.RLock()
        self._kind: ReceiptKind | None = None
        self._positions: list[Position] = []
        self._closed = False

    # -- URL hook -------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def target_from_url(cls, host: str, port: int | None, path: str) -> str:
        """Validate the URL's location part and return what the backend opens; raise
        ``ValueError`` with a short problem (the caller adds the accepted form)."""

    @classmethod
    def check_options(cls, target: str, given: Mapping[str, str]) -> None:
        """Refuse (``ValueError``) options that do not fit the location, e.g. a serial
        option on a TCP URL; ``given`` holds only the options the URL names."""
        return None

    # -- status and shifts ----------------------------------------------------------------------

    def status(self, op_id: str | None = None) -> PrinterStatus:
        """Shift, paper, ФН state, unsent documents, last document number."""
        with self._lock:
            return self._status(op_id or new_op_id())

    def open_shift(self, op_id: str) -> ShiftInfo:
        with self._lock:
            return self._open_shift(op_id)

    def close_shift(self, op_id: str) -> ShiftInfo:
        with self._lock:
            return self._close_shift(op_id)

    def ensure_shift(self, op_id: str) -> ShiftInfo | None:
        """Make sure a shift is open: open a closed one, close and reopen an expired one (24 h
        passed). Returns the shift opened, or None when one was already open."""
        with self._lock:
            status = self._status(derive_op_id(op_id, "status"))
            if status.shift_state == "opened":
                return None
            if status.shift_state == "expired":
                self._close_shift(derive_op_id(op_id, "close-expired"))
            return self._open_shift(derive_op_id(op_id, "open"))

    # -- marking codes --------------------------------------------------------------------------

    def begin_validation(self, op_id: str, km: str, ki: str, planned_status: int) -> MarkValidation:
        """Hand the code to the ККТ; the ФН's local result (2004) comes back at once."""
        with self._lock:
            return self._begin_afresh(op_id, km, ki, planned_status)

    def _begin_afresh(self, op_id: str, km: str, ki: str, planned_status: int) -> MarkValidation:
        """Begin; when a validation is already running (left by a crash or another client:
        :class:`ValidationAlreadyRunning`), cancel it and begin once more, as the public
        ATOL clients do (domain.md §7.4). A second refusal is raised."""
        try:
            return self._begin_validation(op_id, km, ki, planned_status)
        except ValidationAlreadyRunning:
            self._cancel_validation(derive_op_id(op_id, "cancel-running"))
            return self._begin_validation(derive_op_id(op_id, "again"), km, ki, planned_status)

    def validation_status(self, op_id: str, ki: str) -> MarkValidation:
        with self._lock:
            return self._validation_status(op_id, ki)

    def validate_code(self, op_id: str, km: str, ki: str, planned_status: int) -> MarkValidation:
        """Begin, then poll until the ККТ has its final answer or the validation time is up
        (then ``ready`` is False). Neither accepts nor declines."""
        with self._lock:
            local = self._begin_afresh(derive_op_id(op_id, "begin"), km, ki, planned_status)
            deadline = time.monotonic() + self.settings.validation_timeout_s
            polls = 0
            while True:
                polls += 1
                current = self._validation_status(derive_op_id(op_id, f"status-{polls}"), ki)
                current = _with_local(current, local)
                if current.ready or time.monotonic() >= deadline:
                    return current
                time.sleep(min(self.settings.poll_interval_s, max(deadline - time.monotonic(), 0)))

    def accept_code(self, op_id: str, ki: str) -> MarkValidation | None:
        """Accept the validated code (ends the procedure; the ФН keeps the result for the
        receipt). Returns the final result when the device sends one."""
        with self._lock:
            return self._accept(op_id, ki)

    def decline_code(self, op_id: str) -> None:
        with self._lock:
            self._decline(op_id)

    def cancel_validation(self, op_id: str) -> None:
        with self._lock:
            self._cancel_validation(op_id)

    def clear_validations(self, op_id: str) -> None:
        """Forget every accepted result the ФН holds (before starting a receipt over)."""
        with self._lock:
            self._clear_validations(op_id)

    def check_code(
        self,
        op_id: str,
        km: str,
        ki: str,
        planned_status: int,
        on_no_answer: str = "accept",
    ) -> CodeCheck:
        """The whole procedure: validate, judge (:func:`~markd.fiscal.model.judge_validation`),
        then accept or decline. A validation that never became ready is cancelled."""
        with self._lock:
            validation = self.validate_code(op_id, km, ki, planned_status)
            accept, reason = judge_validation(validation, on_no_answer)
            if not validation.ready:
                self._cancel_validation(derive_op_id(op_id, "cancel"))
                return CodeCheck(validation, False, reason)
            if accept:
                final = self._accept(derive_op_id(op_id, "accept"), ki)
                if final is not None:
                    validation = _with_local(final, validation, keep_oism=True)
            else:
                self._decline(derive_op_id(op_id, "decline"))
            return CodeCheck(validation, accept, reason)

    # -- receipts -------------------------------------------------------------------------------

    @property
    def receipt_kind(self) -> ReceiptKind | None:
        """The kind of the receipt being built, None when none is open."""
        return self._kind

    @property
    def positions(self) -> tuple[Position, ...]:
        return tuple(self._positions)

    def open_receipt(self, op_id: str, kind: ReceiptKind = "sell") -> None:
        """Start building a receipt. Fails (``receipt-open``) when one is being built."""
        with self._lock:
            if self._kind is not None:
                raise ReceiptAlreadyOpen("a receipt is already being built", "receipt-open")
            self._check_can_open(op_id)
            self._kind = kind
            self._positions = []

    def add_position(self, op_id: str, position: Position) -> None:
        with self._lock:
            if self._kind is None:
                raise NoReceiptOpen("no receipt is open", "receipt-closed")
            problems = position.problems()
            if problems:
                raise PrinterFault("bad position: " + "; ".join(problems), "bad-position")
            self._positions.append(position)

    def close_receipt(self, op_id: str, payments: Sequence[Payment]) -> ReceiptResult:
        """Fiscalise the receipt with ``payments``. On success the receipt is no longer open;
        on :class:`~markd.errors.PrinterFault` it stays open (load paper, then close again
        with a new ``op_id``); on :class:`~markd.errors.OutcomeUnknown` reconcile first."""
        with self._lock:
            if self._kind is None:
                raise NoReceiptOpen("no receipt is open", "receipt-closed")
            if not self._positions:
                raise PrinterFault("a receipt needs at least one position", "empty-receipt")
            total = sum(p.amount_kopecks for p in self._positions)
            paid = sum(p.amount_kopecks for p in payments)
            # The ККТ's limit on every sum it is handed (markd.money.MAX_KOPECKS).
            sums = [money_problem(p.amount_kopecks, "a payment", minimum=1) for p in payments]
            sums += [money_problem(total, "the total"), money_problem(paid, "the sum paid")]
            if any(sums):
                raise PrinterFault("; ".join(filter(None, sums)), "bad-payment")
            if paid < total:
                raise PrinterFault(
                    f"payments ({paid} kop.) do not cover the total ({total} kop.)",
                    "not-fully-paid",
                )
            result = self._fiscalise(op_id, self._kind, tuple(self._positions), tuple(payments))
            self._kind = None
            self._positions = []
            return result

    def cancel_receipt(self, op_id: str) -> None:
        """Drop the receipt being built, and cancel one left open on the device."""
        with self._lock:
            self._kind = None
            self._positions = []
            self._cancel_device_receipt(op_id)

    def restore_receipt(self, kind: ReceiptKind, positions: Sequence[Position]) -> None:
        """Rebuild the receipt being built from a journal after a restart (no device call)."""
        with self._lock:
            self._kind = kind
            self._positions = list(positions)

    def forget_receipt(self) -> None:
        """Drop the receipt being built without a device call (it was fiscalised, or found)."""
        with self._lock:
            self._kind = None
            self._positions = []

    def find_receipt(self, op_id: str) -> tuple[Finding, ReceiptResult | None]:
        """What became of the :meth:`close_receipt` made with ``op_id``: ``done`` with its
        result, ``failed`` (the device refused it: no receipt), or ``unknown`` (the device
        keeps no such record, or the attempt was cut off)."""
        with self._lock:
            return self._find_receipt(op_id)

    def describe_document(self, number: int) -> DocumentSummary | None:
        """The fiscal document ``number`` read back from the ФН, or None when the device
        cannot say (the default): recovery then trusts the document counter alone."""
        with self._lock:
            return self._describe_document(number)

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the device. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> FiscalPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.text!r}>"

    # -- hooks for backends ---------------------------------------------------------------------

    @abc.abstractmethod
    def _status(self, op_id: str) -> PrinterStatus: ...

    @abc.abstractmethod
    def _open_shift(self, op_id: str) -> ShiftInfo: ...

    @abc.abstractmethod
    def _close_shift(self, op_id: str) -> ShiftInfo: ...

    @abc.abstractmethod
    def _begin_validation(
        self, op_id: str, km: str, ki: str, planned_status: int
    ) -> MarkValidation: ...

    @abc.abstractmethod
    def _validation_status(self, op_id: str, ki: str) -> MarkValidation: ...

    @abc.abstractmethod
    def _accept(self, op_id: str, ki: str) -> MarkValidation | None: ...

    @abc.abstractmethod
    def _decline(self, op_id: str) -> None: ...

    @abc.abstractmethod
    def _cancel_validation(self, op_id: str) -> None: ...

    @abc.abstractmethod
    def _clear_validations(self, op_id: str) -> None: ...

    @abc.abstractmethod
    def _fiscalise(
        self,
        op_id: str,
        kind: ReceiptKind,
        positions: tuple[Position, ...],
        payments: tuple[Payment, ...],
    ) -> ReceiptResult: ...

    @abc.abstractmethod
    def _cancel_device_receipt(self, op_id: str) -> None: ...

    def _check_can_open(self, op_id: str) -> None:  # noqa: B027 - optional hook
        """Refuse to start a receipt the device cannot take (no paper …); default: accept."""

    def _find_receipt(self, op_id: str) -> tuple[Finding, ReceiptResult | None]:
        return "unknown", None

    def _describe_document(self, number: int) -> DocumentSummary | None:
        return None

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Close connections, the driver handle."""


def _with_local(
    current: MarkValidation, local: MarkValidation, keep_oism: bool = False
) -> MarkValidation:
    """Fill in the ФН's local result (and, with ``keep_oism``, the ОИСМ's) from an earlier
    answer when a later one leaves them out."""
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if not current.fn_checked and local.fn_checked:
        changes.update(fn_checked=True, fn_result=local.fn_result)
    if current.fn_error_reason is None and local.fn_error_reason is not None:
        changes["fn_error_reason"] = local.fn_error_reason
    if keep_oism:
        for name in ("ready", "request_sent", "item_status", "response_result", "driver_error"):
            if getattr(current, name) in (None, False) and getattr(local, name) not in (
                None,
                False,
            ):
                changes[name] = getattr(local, name)
    return replace(current, **changes) if changes else current
