"""A virtual ККТ: the ФФД 1.2 behaviour markd relies on, answering ATOL JSON tasks, its whole
state on disk.

The ``emulator://`` printer backend drives it in process, and the ``atol_web`` emulator serves
it over HTTP as an ATOL Web Requests server, so the same device answers both. It keeps:

* **shifts** — ``openShift`` / ``closeShift``; a shift open for more than 24 hours is
  ``expired`` and refuses receipts (ATOL error 68) until it is closed;
* **the marking-code procedure** (domain.md §7.3, §7.4) — ``beginMarkingCodeValidation``
  answers the ФН's local result at once (``offlineValidation``: the ФН checks the crypto tail
  of 44/88-character signatures, AI 91 + 92; a 4-character crypto code is a type the ФН cannot
  check), ``getMarkingCodeValidationStatus`` answers the ОИСМ's verdict once it is "ready",
  ``acceptMarkingCode`` keeps the result for the receipt, ``declineMarkingCode`` /
  ``cancelMarkingCodeValidation`` drop it, ``clearMarkingCodeValidationResult`` forgets every
  kept one. The ОИСМ answers ``online`` (tag 2106 bits 2–3 set, status correct unless a code is
  set otherwise), ``offline`` (bit 4, no request sent) or ``timeout`` (a request sent and no
  answer: no ``onlineValidation``, ``driverError`` 421 ``responseTimeout``; accepting keeps
  the ФН's bits only);
* **receipts** — ``sell`` / ``sellReturn`` with positions, payments and, per marked position,
  its code (which must have been accepted with the same planned status, else error 420), tags
  2003, 2102, 2106 and 1260 {1262, 1263, 1264, 1265}. Each fiscal document (receipts and shift
  reports) is appended to ``documents.jsonl`` (mode 0640), one JSON object per line, fsync'd,
  holding each code's КИ and nothing derived from the rest of it: a hash of the full code
  would give away its crypto tail, which is short enough (4 characters) to find by brute
  force from the КИ;
* **status** — ``getDeviceStatus`` (plus ``receiptType``: ``closed`` or the type of a receipt
  left open), ``getShiftStatus`` (``expiredTime``: the end of the shift's 24 hours),
  ``getFnStatus``, ``getFnInfo`` (``validityDate``, ``json_getFnInfo.js``),
  ``ofdExchangeStatus`` (every document stays unsent: there is no ОФД; the time of the oldest,
  ``json_ofdExchangeStatus.js``);
* **request ids** — the answers to every request that changed the device are kept under its id,
  so a request repeated with the same id is answered from there, not run twice (what ATOL's web
  server does with a request ``uuid``); :meth:`VirtualKkt.lookup` reads them.

Faults (:meth:`VirtualKkt.set_faults`, kept in the state so another process sees them):
``paper_out``, ``fn_error``, ``ism`` (``online`` | ``offline`` | ``timeout``), ``gone`` (the
device does not answer: error 2), ``gone_in_receipt`` (``open``: the next receipt is opened on
the device, then the link is lost — error 241 and an open receipt remains; ``after``: the next
receipt is fiscalised and then the link is lost before the answer), ``validation_delay_ms``
(the ОИСМ's answer takes that long), ``shift_expired``, ``no_cancel_task`` (the
``cancelReceipt`` task is unknown, error 11), ``begin_busy`` (a check left running: the next
begin gets 401), ``taxation_types`` (the taxation systems the device is registered with,
``["osn"]`` unless set), ``fn_days_left`` (the ФН's validity ends that many days from now),
``unsent_age_days`` (the oldest document not sent to the ОФД is that old), ``shift_age_hours``
(the open shift was opened that long ago), ``fn_warnings`` (the ФН's own warnings its status
raises: a list of ``memoryOverflow``, ``needReplacement``, ``ofdTimeout``,
``resourceExhausted``, ``criticalError`` — :data:`FN_WARNINGS`), and ``codes`` — per КИ
``{"oism": "incorrect" | "sale-stopped", "fn": false}``.

``state.json`` holds the codes the ФН keeps accepted (as a real ФН does), so it is written with
mode 0600. Crash safety: ``state.json`` is replaced atomically (write, fsync, rename, fsync the
directory) after every change; a document is appended and fsync'd *before* the state that
counts it is written, and loading rolls the state forward from the last document, so a process
killed at any instant leaves either no document or a document the state agrees with (the files
are :mod:`markd.emulators.statefile`'s, shared with the Shtrih-M device). With
``MARKD_FISCAL_KILL_AT=kkt-receipt-open`` the process kills itself right after the receipt is
opened on the device (tests only; the same variable as markd's own kill points, docs/fiscal.md).

Sources, and what comes from each (domain.md §7.4, §7.4a, §7.5):

* ATOL's driver header ``libfptr10.h``, as its public bindings mirror it (the Java and C#
  ``IFptr`` constant lists, the Python ``libfptr10.py``): the error numbers
  (:class:`DriverError`);
* the JSON task scripts ATOL's driver runs (public copies in ``AlexanderYekat/atolexamplesjson``:
  ``myscripts_marks.js``, ``myscripts_base_receipt.js``, ``json_openShift.js``,
  ``json_getDeviceStatus.js``): the task names, their parameters and the shapes of their
  answers (``offlineValidation``, ``onlineValidation``, ``fiscalParams``);
* the typed public clients domain.md §7.4 cites (node-atol-rpc, OpenPapyrus's
  ``Cshses.cpp``): the ``itemEstimatedStatus`` names, ``imc`` as base64 of the code, sums in
  roubles.

What the device does as ATOL's driver scripts do (read in ``AlexanderYekat/atolexamplesjson``,
written here in our own words):

* ``myscripts_base_receipt.js`` (``executeReceipt``, ``exitWithCancelation``): ``sell`` /
  ``sellReturn`` first cancel a receipt left open, keeping the accepted codes ("nothing to
  cancel" is no error: ``myscripts_utils.js``, ``isNormalCancelError``); any error from
  opening the receipt to closing it cancels the receipt and clears the ФН's table of accepted
  codes — except error 423 (a code check in progress), which keeps it. A link lost mid-way
  (241) leaves the receipt open, as a power cut would;
* ``json_openShift.js`` / ``json_closeShift.js``: cancel a leftover receipt first (the
  driver's default clears the accepted codes) and answer ``{"fiscalParams": {…,
  "shiftNumber"}, "warnings"}``;
* ``myscripts_base_receipt.js`` (``validate``, ``executeReceipt``) and ``json_openShift.js``:
  ``taxationType`` is one of the names in ``myscripts_utils.js`` (``TAXATION_TYPES``: ``osn``,
  ``usnIncome``, ``usnIncomeOutcome``, ``envd``, ``esn``, ``patent``; the typed client
  ``Bedunkevich/atol``, ``src/validation/Session.json``, lists the same) and ``operator`` an
  object with a string ``name`` and an optional string ``vatin`` — else 501 with the
  script's wording, before anything is done; the cashier is logged in (tags 1021, 1203) only
  when ``operator.name`` is given, after the leftover receipt is cancelled (a refused login
  is 196 and opens nothing); the taxation system goes to tag 1055 of the receipt. A
  taxation system the ККТ is not registered with, or none given to a ККТ registered with
  several, is 143 «Некорректная СНО» (the libfptr10 error lists name it; which step raises
  it is not published: here, opening the receipt). Receipts record ``taxation_type``, tag
  1055 and ``cashier`` {1021, 1203}; shift reports the cashier;
* ``myscripts_marks.js``: ``offlineValidation.fmCheckErrorReason`` is always there
  (``checked``, ``typeIncorrect`` …); ``getMarkingCodeValidationStatus`` carries
  ``onlineValidation`` only when the online error is 0, otherwise ``driverError`` names the
  reason (``responseTimeout`` when the ОИСМ did not answer); a begin while a check runs is
  refused with 401.

Where the sources are silent the device is configurable: the ``cancelReceipt`` task is in no
published task list (a Web Requests server may not know it: fault ``no_cancel_task`` answers
error 11), and ``begin_busy`` leaves a check running as another client would (the next begin
gets 401). The number the driver gives an ОИСМ timeout in ``driverError.code`` is taken as
421.

It shares no code with markd's ATOL client (:mod:`markd.fiscal.atol`): each reads the
protocol on its own, so a misreading in one shows up as a failing test instead of agreeing
with itself.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

from markd.codes import parse
from markd.emulators.statefile import DOCUMENTS_FILE as DOCUMENTS_FILE
from markd.emulators.statefile import DOCUMENTS_MODE as DOCUMENTS_MODE
from markd.emulators.statefile import LOCK_FILE as LOCK_FILE
from markd.emulators.statefile import STATE_FILE as STATE_FILE
from markd.emulators.statefile import DeviceFiles
from markd.errors import CodeError

FORMAT_VERSION = 1
#: Answers kept by request id (the oldest go first).
MAX_KEPT_REQUESTS = 512
#: Codes the ФН may hold accepted at once (ATOL answers 408 beyond).
MAX_ACCEPTED = 100
SHIFT_HOURS = 24
MSK = timezone(timedelta(hours=3))

ISM_MODES = ("online", "offline", "timeout")
GONE_MODES = ("open", "after")
FAULT_KEYS = frozenset(
    {
        "paper_out",
        "fn_error",
        "ism",
        "gone",
        "gone_in_receipt",
        "validation_delay_ms",
        "shift_expired",
        "codes",
        "no_cancel_task",
        "begin_busy",
        "taxation_types",
        "fn_days_left",
        "unsent_age_days",
        "shift_age_hours",
        "fn_warnings",
    }
)
#: The ФН's own warnings in ``getFnStatus``'s answer (``fnStatus.warnings``, a flag each:
#: ``json_getFnStatus.js`` in ``AlexanderYekat/atolexamplesjson``); the fault ``fn_warnings``
#: raises any of them.
FN_WARNINGS = (
    "memoryOverflow",
    "needReplacement",
    "ofdTimeout",
    "resourceExhausted",
    "criticalError",
)
#: How long a new ФН of this device is valid (a 13-month ФН), unless ``fn_days_left`` says.
FN_VALIDITY_DAYS = 395


# --------------------------------------------------------------------------------------------
# ATOL's vocabulary, as the device speaks it: the device's own copy (see the module docstring)


class DriverError(IntEnum):
    """The driver's error numbers the device answers with: ``LIBFPTR_ERROR_`` + the name in
    ``libfptr10.h`` (its public bindings for Java, C#, Python and Ruby carry the same numbers)."""

    NO_CONNECTION = 2
    NOT_SUPPORTED = 11
    INVALID_PARAM = 13
    INVALID_SUM = 16
    NO_PAPER = 44
    NONCACH_PAYMENTS_TOO_MUCH = 52  # sic: the header's spelling
    NOT_FULLY_PAID = 66
    SHIFT_EXPIRED = 68
    DENIED_IN_CLOSED_SHIFT = 73
    DENIED_IN_CLOSED_RECEIPT = 81
    DENIED_IN_OPENED_RECEIPT = 82
    DENIED_IN_OPENED_SHIFT = 83
    INVALID_POSITIONS_COUNT = 110
    FN_FAULT = 118
    INVALID_TAXATION_TYPE = 143
    OPERATOR_LOGIN = 196
    CONNECTION_LOST = 241
    MARKING_CODE_VALIDATION_IN_PROGRESS = 401
    INVALID_MARKING_CODE_STATUS = 404
    MARKS_OVERFLOW = 408
    INVALID_MARKING_CODE = 409
    INVALID_STATE = 410
    MARK_NOT_CHECKED = 420
    MARK_CHECK_TIMEOUT_EXPIRED = 421
    NO_MARKING_CODE_IN_TABLE = 422
    CHEKING_MARK_IN_PROGRESS = 423  # sic: the header's spelling
    RECEIPT_PARSE_ERROR = 501
    INTERRUPTED_BY_PREVIOUS_ERRORS = 502


#: Of the driver's "no link to the device" errors (1–4) the device only ever gives this one;
#: a request that met it never reached the device, so nothing of it is kept.
_NOT_REACHED = frozenset({DriverError.NO_CONNECTION})

#: ``itemEstimatedStatus``: ATOL's names for the planned status, tag 2003 (domain.md §7.1,
#: §7.4); a number is taken as is.
PLANNED_STATUSES: dict[str, int] = {
    "itemPieceSold": 1,
    "itemDryForSale": 2,
    "itemPieceReturn": 3,
    "itemDryReturn": 4,
    "itemStatusUnchanged": 255,
}
#: ``taxationType`` names → tag 1055 bits (``LIBFPTR_TT_*``): the driver's receipt script
#: maps the names (``myscripts_utils.js``, ``TAXATION_TYPES``), its header the bits.
TAXATION_BITS: dict[str, int] = {
    "osn": 0x01,
    "usnIncome": 0x02,
    "usnIncomeOutcome": 0x04,
    "envd": 0x08,
    "esn": 0x10,
    "patent": 0x20,
}
#: The taxation systems the device is registered with unless ``taxation_types`` says.
DEFAULT_TAXATION = ("osn",)
#: Tag 1021 (the cashier) at most this long (ФФД).
CASHIER_NAME_LENGTH = 64

#: The planned statuses a receipt of each kind takes (sold on a sale, returned on a return).
_SELL_STATUSES = frozenset({1, 2})
_RETURN_STATUSES = frozenset({3, 4})

#: Tasks that change the device: their answers are kept under the request's id, so a
#: request repeated with the same id is answered from there (the web server's ``uuid``).
_CHANGING_TASKS = frozenset(
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

#: Test hook, read by the device as by markd's own kill points (docs/fiscal.md): with
#: ``MARKD_FISCAL_KILL_AT=kkt-receipt-open`` the process kills itself right after a receipt
#: is opened on the device, the worst moment for a power cut.
_KILL_ENV = "MARKD_FISCAL_KILL_AT"


def _planned_status(value: Any) -> int | None:
    """Tag 2003 from ATOL's name or a number; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return PLANNED_STATUSES.get(value)
    return None


def _kopecks(value: Any) -> int:
    """A sum in roubles from a task, in kopecks; ValueError when it is not a finite number."""
    # json reads Infinity and NaN, which round() cannot take.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a sum: {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a sum: {value!r:.40}")
    return round(value * 100)


def _roubles(kopecks: int) -> float:
    """Kopecks as the roubles number an answer carries."""
    return round(kopecks / 100, 2)


def _decode_imc(text: Any) -> str | None:
    """The marking code from a task's ``imc`` (base64 of its UTF-8 bytes, raw GS included);
    None when it is not that."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _power_cut_at(step: str) -> None:
    if os.environ.get(_KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class _TaskError(Exception):
    """An ATOL error answer for the task being run."""

    def __init__(self, code: DriverError, description: str) -> None:
        super().__init__(description)
        self.code = int(code)  # a plain number in every answer, in memory as on disk
        self.description = description


def _default_state() -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "device": {
            "model_name": "markd virtual ККТ",
            "serial": "00106700000042",
            "fn_number": "9999078900012345",
            "registration_number": "0000000001012345",
            "ffd": "1.2",
        },
        # Document 1 is the registration report every fiscalised ККТ starts with.
        "document_number": 1,
        "shift": {"state": "closed", "number": 0, "opened_at": None, "receipts": 0},
        "receipt": None,
        "validation": None,
        "accepted": [],
        "unsent": 0,
        "first_unsent": None,
        "faults": {"ism": "online"},
        "requests": {},
    }


class VirtualKkt:
    """The virtual ККТ in ``state_dir`` (created if missing). Thread-safe, and safe to share
    between processes (a file lock serialises every request). ``clock`` gives Unix seconds."""

    def __init__(
        self, state_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(state_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._files = DeviceFiles(
            self.path, name="virtual ККТ", default=_default_state, count=self._count_document
        )
        with self._files.locked() as state:
            self._state = state  # validates the files at once
            if not state["device"].get("fn_valid_until"):
                # A ФН valid from the device's first use (a state of an older version too).
                state["device"]["fn_valid_until"] = self._clock() + FN_VALIDITY_DAYS * 86400
                self._files.save(state)

    # -- public ---------------------------------------------------------------------------------

    def run(self, request_id: str, tasks: list[Any]) -> list[dict[str, Any]]:
        """Run ATOL JSON ``tasks`` as one request; one outcome per task, in order:
        ``{"status": "ready", "result": {...}}`` or ``{"status": "error", "errorCode": n,
        "errorDescription": "..."}``; tasks after an error are ``interrupted``. A request id
        seen before with a changing task gets the answers kept from then."""
        with self._files.locked() as state:
            kept = state["requests"].get(request_id) if request_id else None
            if kept is not None:
                return copy.deepcopy(kept)
            outcomes: list[dict[str, Any]] = []
            mutating = False
            failed = False
            for task in tasks:
                kind = task.get("type") if isinstance(task, Mapping) else None
                if failed:
                    outcomes.append(
                        _error(
                            DriverError.INTERRUPTED_BY_PREVIOUS_ERRORS,
                            "Прервано предыдущей ошибкой",
                        )
                    )
                    continue
                mutating = mutating or kind in _CHANGING_TASKS
                try:
                    result = self._task(state, request_id, task)
                    outcomes.append({"status": "ready", "errorCode": 0, "result": result})
                except _TaskError as exc:
                    outcomes.append(_error(exc.code, exc.description))
                    failed = True
            if mutating:
                # A request the device never got (not connected) leaves no trace on it.
                unreached = any(o.get("errorCode") in _NOT_REACHED for o in outcomes)
                if request_id and not unreached:
                    self._keep(state, request_id, outcomes)
                self._files.save(state)
            return copy.deepcopy(outcomes)

    def lookup(self, request_id: str) -> list[dict[str, Any]] | None:
        """The answers kept for a request that changed the device; None if none is kept."""
        with self._files.locked() as state:
            kept = state["requests"].get(request_id)
            return copy.deepcopy(kept) if kept is not None else None

    def set_faults(self, **faults: Any) -> None:
        """Merge faults (see the module docstring); a value of None removes one."""
        unknown = set(faults) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        if faults.get("ism") not in (None, *ISM_MODES):
            raise ValueError(f"ism is one of {', '.join(ISM_MODES)}")
        if faults.get("gone_in_receipt") not in (None, *GONE_MODES):
            raise ValueError(f"gone_in_receipt is one of {', '.join(GONE_MODES)}")
        for key in ("fn_days_left", "unsent_age_days", "shift_age_hours"):
            value = faults.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{key} is a number of at least 0")
        raised = faults.get("fn_warnings")
        if raised is not None and (
            not isinstance(raised, list | tuple) or any(name not in FN_WARNINGS for name in raised)
        ):
            raise ValueError(f"fn_warnings is a list of {', '.join(FN_WARNINGS)}")
        if raised is not None:
            faults["fn_warnings"] = list(raised) or None
        taxation = faults.get("taxation_types")
        if taxation is not None and (
            not isinstance(taxation, list | tuple)
            or not taxation
            or any(name not in TAXATION_BITS for name in taxation)
        ):
            raise ValueError(f"taxation_types is a list of {', '.join(TAXATION_BITS)}")
        with self._files.locked() as state:
            current = state["faults"]
            for key, value in faults.items():
                if value is None or value is False:
                    current.pop(key, None)
                else:
                    current[key] = value
            current.setdefault("ism", "online")
            self._files.save(state)

    def set_code(self, ki: str, *, oism: str | None = None, fn: bool | None = None) -> None:
        """How the ФН and the ОИСМ judge one КИ: ``oism`` ``correct`` | ``incorrect`` |
        ``sale-stopped``; ``fn=False`` makes the ФН's crypto check fail."""
        if oism not in (None, "correct", "incorrect", "sale-stopped"):
            raise ValueError("oism is correct, incorrect or sale-stopped")
        with self._files.locked() as state:
            codes = state["faults"].setdefault("codes", {})
            entry = codes.setdefault(ki, {})
            if oism is not None:
                entry["oism"] = oism
            if fn is not None:
                entry["fn"] = fn
            self._files.save(state)

    def clear_faults(self) -> None:
        with self._files.locked() as state:
            state["faults"] = {"ism": "online"}
            self._files.save(state)

    @property
    def faults(self) -> dict[str, Any]:
        with self._files.locked() as state:
            return copy.deepcopy(state["faults"])

    def state(self) -> dict[str, Any]:
        """A copy of the device state (without the request log)."""
        with self._files.locked() as state:
            data = copy.deepcopy(state)
            data.pop("requests", None)
            for entry in data.get("accepted", []):
                entry.pop("imc", None)
            if data.get("validation"):
                data["validation"].pop("imc", None)
            return data

    def documents(self) -> list[dict[str, Any]]:
        """Every fiscal document, oldest first (a torn last line is skipped)."""
        return self._files.documents()

    def receipts(self) -> list[dict[str, Any]]:
        return [d for d in self.documents() if d["type"] in ("sell", "sellReturn")]

    # -- storage --------------------------------------------------------------------------------

    def _count_document(self, state: dict[str, Any], last: dict[str, Any]) -> None:
        """A document written but not yet counted by the state (killed in between): count it
        (the roll-forward of :class:`~markd.emulators.statefile.DeviceFiles`)."""
        state["document_number"] = last["number"]
        if last["type"] in ("sell", "sellReturn"):
            receipt = state.get("receipt")
            if receipt is not None and receipt.get("request") == last.get("request"):
                state["receipt"] = None
            used = set(last.get("_accepted", []))
            state["accepted"] = [a for a in state["accepted"] if a["id"] not in used]
            state["shift"]["receipts"] = last.get("receipt_number", state["shift"]["receipts"])
            state["unsent"] += 1
            state["first_unsent"] = state["first_unsent"] or last["number"]
            state["first_unsent_at"] = state.get("first_unsent_at") or last.get("datetime")
            if last.get("request"):
                self._keep(state, last["request"], [_ready(_fiscal_params(state, last))])

    def _keep(self, state: dict[str, Any], request_id: str, outcomes: list[dict[str, Any]]) -> None:
        requests = state["requests"]
        requests[request_id] = outcomes
        while len(requests) > MAX_KEPT_REQUESTS:
            del requests[next(iter(requests))]

    # -- tasks ----------------------------------------------------------------------------------

    def _task(self, state: dict[str, Any], request_id: str, task: Any) -> dict[str, Any]:
        if not isinstance(task, Mapping) or not isinstance(task.get("type"), str):
            raise _TaskError(DriverError.INVALID_PARAM, "Задание без поля type")
        faults = state["faults"]
        if faults.get("gone"):
            raise _TaskError(DriverError.NO_CONNECTION, "Нет связи")
        handler = _HANDLERS.get(task["type"])
        if handler is None:
            raise _TaskError(DriverError.NOT_SUPPORTED, f"Задание {task['type']} не поддерживается")
        return handler(self, state, request_id, task)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), MSK)

    def _opened_at(self, state: dict[str, Any]) -> float:
        """When the open shift was opened; ``shift_age_hours`` makes it that long ago."""
        age = state["faults"].get("shift_age_hours")
        if age is not None:
            return self._clock() - float(age) * 3600
        return float(state["shift"]["opened_at"] or 0)

    def _shift_state(self, state: dict[str, Any]) -> str:
        shift = state["shift"]
        if shift["state"] != "opened":
            return "closed"
        if state["faults"].get("shift_expired"):
            return "expired"
        if self._clock() - self._opened_at(state) > SHIFT_HOURS * 3600:
            return "expired"
        return "opened"

    def _device_ready(self, state: dict[str, Any], printing: bool = True) -> None:
        faults = state["faults"]
        if printing and faults.get("paper_out"):
            raise _TaskError(DriverError.NO_PAPER, "Нет бумаги")
        if faults.get("fn_error"):
            raise _TaskError(DriverError.FN_FAULT, "Ошибка ФН: неисправность")

    def _next_document(self, state: dict[str, Any]) -> int:
        return int(state["document_number"]) + 1

    # status

    def _get_device_status(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        faults = state["faults"]
        receipt = state.get("receipt")
        return {
            "deviceStatus": {
                "currentDateTime": self._now().isoformat(timespec="seconds"),
                "shift": self._shift_state(state),
                "blocked": False,
                "coverOpened": False,
                "paperPresent": not faults.get("paper_out"),
                "fiscal": True,
                "fnFiscal": True,
                "fnPresent": True,
                "cashDrawerOpened": False,
                "receiptType": receipt["type"] if receipt else "closed",
                "modelName": state["device"]["model_name"],
                "serialNumber": state["device"]["serial"],
            }
        }

    def _get_shift_status(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        shift = state["shift"]
        expires = None
        if shift["state"] == "opened" and shift["opened_at"]:
            until = datetime.fromtimestamp(self._opened_at(state) + SHIFT_HOURS * 3600, MSK)
            expires = until.isoformat(timespec="seconds")
        return {
            "shiftStatus": {
                "documentsCount": shift["receipts"],
                "expiredTime": expires,
                "number": shift["number"],
                "state": self._shift_state(state),
            }
        }

    def _get_fn_status(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        error = bool(state["faults"].get("fn_error"))
        raised = set(state["faults"].get("fn_warnings") or ())
        warnings = {
            "memoryOverflow": False,
            "needReplacement": error,
            "ofdTimeout": state["unsent"] > 0,
            "resourceExhausted": False,
            "criticalError": error,
        }
        for name in raised:
            warnings[name] = True
        return {
            "fnStatus": {
                "fiscalDocumentNumber": state["document_number"],
                "fiscalReceiptNumber": state["shift"]["receipts"],
                "warnings": warnings,
            }
        }

    def _ofd_exchange_status(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        # json_ofdExchangeStatus.js: the count, the number and the time of the oldest
        # document not yet sent (every document stays unsent here: there is no ОФД).
        unsent = state["unsent"]
        first = state["first_unsent"] or 0
        when = ""
        age = state["faults"].get("unsent_age_days")
        if age is not None:
            unsent = max(unsent, 1)
            first = first or state["document_number"]
            stamp = self._clock() - float(age) * 86400
            when = datetime.fromtimestamp(stamp, MSK).isoformat(timespec="seconds")
        elif unsent:
            when = state.get("first_unsent_at") or ""
        return {
            "status": {
                "notSentCount": unsent,
                "notSentFirstDocNumber": first,
                "notSentFirstDocDateTime": when,
                "lastSuccessKeysUpdate": "",
            },
            "errors": {},
            "warnings": {"dataForSendIsEmpty": unsent == 0},
        }

    def _get_fn_info(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        """json_getFnInfo.js: the ФН's validity end (``validityDate``), its serial, its phase
        and the same warnings as getFnStatus. ``fn_days_left`` puts the end that many days
        from now; otherwise it is :data:`FN_VALIDITY_DAYS` after the device's first use."""
        device = state["device"]
        days = state["faults"].get("fn_days_left")
        if days is not None:
            end = self._clock() + float(days) * 86400
        else:
            end = float(device["fn_valid_until"])
        warnings = self._get_fn_status(state, _, task)["fnStatus"]["warnings"]
        return {
            "fnInfo": {
                "serial": device["fn_number"],
                "ffdVersion": device["ffd"],
                "fnFfdVersion": device["ffd"],
                "livePhase": "fiscalMode",
                "validityDate": datetime.fromtimestamp(end, MSK).isoformat(timespec="seconds"),
                "warnings": warnings,
            }
        }

    # shifts

    def _open_shift(self, state: dict[str, Any], request_id: str, task: Any) -> dict[str, Any]:
        _check_operator_field(task)  # the script's validate(): 501 before anything is done
        self._cancel_leftover(state, keep_codes=False)  # json_openShift.js / json_closeShift.js
        cashier = _operator_login(task)
        self._device_ready(state)
        if state["shift"]["state"] == "opened":
            raise _TaskError(DriverError.DENIED_IN_OPENED_SHIFT, "Смена открыта")
        shift = state["shift"]
        shift.update(
            state="opened", number=shift["number"] + 1, opened_at=self._clock(), receipts=0
        )
        return self._shift_document(state, request_id, "openShift", cashier)

    def _close_shift(self, state: dict[str, Any], request_id: str, task: Any) -> dict[str, Any]:
        _check_operator_field(task)
        self._cancel_leftover(state, keep_codes=False)  # json_openShift.js / json_closeShift.js
        cashier = _operator_login(task)
        self._device_ready(state)
        if state["shift"]["state"] != "opened":
            raise _TaskError(DriverError.DENIED_IN_CLOSED_SHIFT, "Смена закрыта")
        result = self._shift_document(state, request_id, "closeShift", cashier)
        state["shift"].update(state="closed", opened_at=None)
        state["faults"].pop("shift_expired", None)
        return result

    def _shift_document(
        self,
        state: dict[str, Any],
        request_id: str,
        kind: str,
        cashier: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        number = self._next_document(state)
        now = self._now()
        document = {
            "number": number,
            "type": kind,
            "datetime": now.isoformat(timespec="seconds"),
            "shift": state["shift"]["number"],
            "fiscal_sign": _fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
            "request": request_id,
        }
        if cashier:
            document["cashier"] = cashier
        self._files.append_document(document)
        state["document_number"] = number
        device = state["device"]
        # The shift scripts answer like a receipt: ``{"fiscalParams": {…, "shiftNumber"},
        # "warnings": …}`` (json_openShift.js, utils.getFiscalDocumentResult).
        return {
            "fiscalParams": {
                "fiscalDocumentNumber": number,
                "fiscalDocumentSign": document["fiscal_sign"],
                "fiscalDocumentDateTime": document["datetime"],
                "shiftNumber": state["shift"]["number"],
                "fnNumber": device["fn_number"],
                "registrationNumber": device["registration_number"],
                "fnsUrl": "www.nalog.gov.ru",
            },
            "warnings": None,
        }

    # marking codes

    def _begin_validation(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        self._device_ready(state, printing=False)
        if state["faults"].pop("begin_busy", None):
            # A check some other client began and left running: this begin gets 401 until
            # it is cancelled.
            state["validation"] = {
                "imc": "",
                "ki": None,
                "status": 1,
                "started_at": self._clock(),
                "fm_check": False,
                "fm_result": False,
            }
        if state["validation"] is not None:
            raise _TaskError(
                DriverError.MARKING_CODE_VALIDATION_IN_PROGRESS,
                "Процедура проверки КМ уже запущена",
            )
        params = task.get("params")
        if not isinstance(params, Mapping):
            raise _TaskError(DriverError.INVALID_PARAM, "Нет параметров проверки КМ")
        km = _decode_imc(params.get("imc"))
        status = _planned_status(params.get("itemEstimatedStatus"))
        if km is None or status is None:
            raise _TaskError(DriverError.INVALID_MARKING_CODE, "Неверный КМ или его статус")
        if len(state["accepted"]) >= MAX_ACCEPTED:
            raise _TaskError(DriverError.MARKS_OVERFLOW, "Переполнение таблицы КМ")
        ki, checkable = _identify(km)
        rule = state["faults"].get("codes", {}).get(ki, {})
        fm_check = checkable
        fm_result = checkable and rule.get("fn", True)
        state["validation"] = {
            "imc": params["imc"],
            "ki": ki,
            "status": status,
            "started_at": self._clock(),
            "fm_check": fm_check,
            "fm_result": fm_result,
        }
        # ``fmCheckErrorReason`` is always there (myscripts_marks.js, getOfflineValidation):
        # ``checked`` when the ФН checked the tail, ``typeIncorrect`` for a code type it
        # cannot check (no AI 91 + 92).
        reason = "checked" if fm_check else ("typeIncorrect" if ki is not None else "other")
        local: dict[str, Any] = {
            "fmCheck": fm_check,
            "fmCheckResult": fm_result,
            "fmCheckErrorReason": reason,
        }
        return {"offlineValidation": local}

    def _validation_answer(self, state: dict[str, Any]) -> dict[str, Any]:
        """The ОИСМ part of the procedure: what ``getMarkingCodeValidationStatus`` says."""
        validation = state["validation"]
        faults = state["faults"]
        mode = faults.get("ism", "online")
        delay = int(faults.get("validation_delay_ms", 0)) / 1000
        fn_bits = {
            "imcCheckFlag": validation["fm_check"],
            "imcCheckResult": validation["fm_check"] and validation["fm_result"],
        }
        if mode == "offline":
            return {
                "ready": True,
                "sentImcRequest": False,
                "onlineValidation": {
                    "itemInfoCheckResult": {
                        **fn_bits,
                        "imcStatusInfo": False,
                        "imcEstimatedStatusCorrect": False,
                        "ecrStandAloneFlag": True,
                    },
                    "imcType": "auto",
                    "imcModeProcessing": 0,
                },
            }
        if self._clock() - validation["started_at"] < delay:
            return {"ready": False, "sentImcRequest": True}
        if mode == "timeout":
            # The script reports ``onlineValidation`` only when the online error is 0
            # (myscripts_marks.js, executeGetMarkingCodeValidationStatus); otherwise
            # ``driverError`` names the reason. The bits the ФН keeps are the local ones,
            # which acceptMarkingCode answers.
            return {
                "ready": True,
                "sentImcRequest": True,
                "driverError": {
                    "code": int(DriverError.MARK_CHECK_TIMEOUT_EXPIRED),
                    "error": "responseTimeout",
                    "description": "Истек таймаут ожидания ответа от сервера",
                },
            }
        rule = faults.get("codes", {}).get(validation["ki"], {})
        verdict = rule.get("oism", "correct")
        recognised = validation["ki"] is not None
        correct = verdict == "correct" and recognised
        item_status = {
            "correct": "itemEstimatedStatusCorrect",
            "incorrect": "itemEstimatedStatusIncorrect",
            "sale-stopped": "itemSaleStopped",
        }[verdict]
        if not recognised:
            item_status = "itemEstimatedStatusIncorrect"
        return {
            "ready": True,
            "sentImcRequest": True,
            "driverError": {"code": 0, "error": "", "description": ""},
            "onlineValidation": {
                "itemInfoCheckResult": {
                    **fn_bits,
                    "imcStatusInfo": True,
                    "imcEstimatedStatusCorrect": correct,
                    "ecrStandAloneFlag": False,
                },
                "markOperatorItemStatus": item_status,
                "markOperatorResponse": {"responseStatus": True, "itemStatusCheck": correct},
                "markOperatorResponseResult": "correct" if recognised else "unrecognized",
                "imcType": "auto",
                "imcModeProcessing": 0,
            },
        }

    def _validation_status(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        if state["validation"] is None:
            raise _TaskError(DriverError.INVALID_STATE, "Проверка КМ не запущена")
        return self._validation_answer(state)

    def _accept(self, state: dict[str, Any], request_id: str, task: Any) -> dict[str, Any]:
        validation = state["validation"]
        if validation is None:
            raise _TaskError(DriverError.INVALID_STATE, "Проверка КМ не запущена")
        answer = self._validation_answer(state)
        if not answer["ready"]:
            raise _TaskError(DriverError.INVALID_STATE, "Результат проверки КМ ещё не получен")
        online = answer.get("onlineValidation")
        if online is not None:
            bits = online["itemInfoCheckResult"]
        else:  # no answer from the ОИСМ: the ФН's own bits only
            bits = {
                "imcCheckFlag": validation["fm_check"],
                "imcCheckResult": validation["fm_check"] and validation["fm_result"],
                "imcStatusInfo": False,
                "imcEstimatedStatusCorrect": False,
                "ecrStandAloneFlag": False,
            }
        state["accepted"].append(
            {
                "id": request_id or f"a{len(state['accepted'])}",
                "imc": validation["imc"],
                "ki": validation["ki"],
                "status": validation["status"],
                "bits": bits,
            }
        )
        state["validation"] = None
        return {"itemInfoCheckResult": bits}

    def _decline(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        if state["validation"] is None:
            raise _TaskError(DriverError.INVALID_STATE, "Проверка КМ не запущена")
        state["validation"] = None
        return {}

    def _cancel_validation(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        state["validation"] = None
        return {}

    def _clear_validations(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        state["accepted"] = []
        return {}

    # receipts

    def _cancel_receipt(self, state: dict[str, Any], _: str, task: Any) -> dict[str, Any]:
        # Not a task of the published lists (domain.md §7.4a): the driver's own
        # ``cancelReceipt()`` offered as one; ``no_cancel_task`` makes it unknown, as on a
        # Web Requests server without it.
        if state["faults"].get("no_cancel_task"):
            raise _TaskError(DriverError.NOT_SUPPORTED, "Задание cancelReceipt не поддерживается")
        if state["receipt"] is None:
            raise _TaskError(DriverError.DENIED_IN_CLOSED_RECEIPT, "Чек закрыт")
        state["receipt"] = None
        state["accepted"] = []  # the driver's cancelReceipt() clears them by default
        return {}

    def _cancel_leftover(self, state: dict[str, Any], *, keep_codes: bool) -> None:
        """What every fiscal task of the driver's scripts does first: cancel a receipt left
        open, ignoring "nothing to cancel" (``utils.isNormalCancelError``). The receipt
        script keeps the accepted codes (``LIBFPTR_PARAM_MARKING_CODE_CLEAR`` false); the
        shift scripts leave the driver's default, which clears them."""
        if state["receipt"] is None:
            return
        state["receipt"] = None
        if not keep_codes:
            state["accepted"] = []

    def _receipt(self, state: dict[str, Any], request_id: str, task: Any) -> dict[str, Any]:
        """``sell`` / ``sellReturn`` as the driver's receipt script runs it
        (``myscripts_base_receipt.js``, ``executeReceipt``): a receipt left open is cancelled
        first with the accepted codes kept ("nothing to cancel" is no error); any error from
        opening the receipt to closing it cancels the receipt and — unless the error is 423,
        a code check in progress — clears the ФН's table of accepted codes
        (``exitWithCancelation``). A link lost mid-way (241) leaves the device as it is.

        Before any of that the script validates the task (a wrong ``taxationType`` or
        ``operator`` is 501 and nothing is done); the cashier is logged in after the leftover
        receipt is cancelled and before the new one is opened (a refusal there, 196, opens
        nothing and clears nothing); the taxation system is checked against the registration
        when the receipt is opened (143, after which the receipt is cancelled as above)."""
        _check_receipt_fields(task)
        self._cancel_leftover(state, keep_codes=True)
        cashier = _operator_login(task)
        try:
            return self._register_receipt(state, request_id, task, cashier)
        except _TaskError as exc:
            if exc.code not in (DriverError.NO_CONNECTION, DriverError.CONNECTION_LOST):
                state["receipt"] = None
                if exc.code != DriverError.CHEKING_MARK_IN_PROGRESS:
                    state["accepted"] = []
            raise

    def _register_receipt(
        self,
        state: dict[str, Any],
        request_id: str,
        task: Any,
        cashier: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        kind = task["type"]
        faults = state["faults"]
        self._device_ready(state)
        taxation = self._taxation(state, task.get("taxationType"))
        if state["validation"] is not None:
            # Registering a position while a code check runs: the driver's 423 (the one
            # error after which its script keeps the accepted codes).
            raise _TaskError(DriverError.CHEKING_MARK_IN_PROGRESS, "Идёт проверка КМ")
        shift_state = self._shift_state(state)
        if shift_state == "closed":
            raise _TaskError(DriverError.DENIED_IN_CLOSED_SHIFT, "Смена закрыта")
        if shift_state == "expired":
            raise _TaskError(DriverError.SHIFT_EXPIRED, "Смена превысила 24 часа")
        positions, used = self._positions(state, kind, task.get("items"))
        total = sum(p["amount"] for p in positions)
        payments = _payments(task.get("payments"))
        paid = sum(p["amount"] for p in payments)
        non_cash = sum(p["amount"] for p in payments if p["type"] != "cash")
        if paid < total:
            raise _TaskError(DriverError.NOT_FULLY_PAID, "Чек оплачен не полностью")
        if non_cash > total:
            raise _TaskError(
                DriverError.NONCACH_PAYMENTS_TOO_MUCH, "Безналичная оплата больше суммы чека"
            )

        # Open the receipt on the device: from here a lost link leaves it open.
        state["receipt"] = {"type": kind, "request": request_id, "opened_at": self._clock()}
        self._files.save(state)
        _power_cut_at("kkt-receipt-open")
        if faults.get("gone_in_receipt") == "open":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            raise _TaskError(DriverError.CONNECTION_LOST, "Соединение потеряно")

        number = self._next_document(state)
        now = self._now()
        receipt_number = state["shift"]["receipts"] + 1
        document = {
            "number": number,
            "type": kind,
            "datetime": now.isoformat(timespec="seconds"),
            "shift": state["shift"]["number"],
            "receipt_number": receipt_number,
            "fiscal_sign": _fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
            "request": request_id,
            "total": total,
            "change": max(paid - total, 0),
            "payments": payments,
            "positions": positions,
            "taxation_type": taxation,
            "tags": {"1055": TAXATION_BITS[taxation]},
            "_accepted": used,
        }
        if cashier:
            document["cashier"] = cashier
        self._files.append_document(document)
        state["document_number"] = number
        state["receipt"] = None
        state["accepted"] = [a for a in state["accepted"] if a["id"] not in set(used)]
        state["shift"]["receipts"] = receipt_number
        state["unsent"] += 1
        state["first_unsent"] = state["first_unsent"] or number
        state["first_unsent_at"] = state.get("first_unsent_at") or document["datetime"]
        result = _fiscal_params(state, document)
        if faults.get("gone_in_receipt") == "after":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            raise _TaskError(DriverError.CONNECTION_LOST, "Соединение потеряно")
        return result

    def _taxation(self, state: dict[str, Any], name: Any) -> str:
        """The receipt's taxation system: the one named, which must be one the ККТ is
        registered with, or — none named — the registration's only one; otherwise 143
        «Некорректная СНО» (a ККТ registered with several needs ``taxationType``)."""
        registered = list(state["faults"].get("taxation_types") or DEFAULT_TAXATION)
        if name in (None, ""):
            if len(registered) == 1:
                return str(registered[0])
            raise _TaskError(DriverError.INVALID_TAXATION_TYPE, "Некорректная СНО")
        if name not in registered:
            raise _TaskError(DriverError.INVALID_TAXATION_TYPE, "Некорректная СНО")
        return str(name)

    def _positions(
        self, state: dict[str, Any], kind: str, items: Any
    ) -> tuple[list[dict[str, Any]], list[str]]:
        if not isinstance(items, list):
            raise _TaskError(DriverError.INVALID_PARAM, "Нет позиций")
        positions: list[dict[str, Any]] = []
        used: list[str] = []
        allowed = _SELL_STATUSES if kind == "sell" else _RETURN_STATUSES
        for item in items:
            if not isinstance(item, Mapping) or item.get("type") != "position":
                continue  # text lines, barcodes: printed, not registered
            try:
                price = _kopecks(item.get("price"))
                amount = _kopecks(item.get("amount"))
                quantity = item.get("quantity")
                if isinstance(quantity, bool) or not isinstance(quantity, int | float):
                    raise ValueError("quantity")
            except ValueError:
                raise _TaskError(DriverError.INVALID_SUM, "Неверная цена или количество") from None
            if price < 0 or quantity <= 0 or abs(round(price * quantity) - amount) > 1:
                raise _TaskError(
                    DriverError.INVALID_SUM, "Сумма позиции не равна цене × количество"
                )
            tax = item.get("tax")
            position: dict[str, Any] = {
                "name": str(item.get("name", "")),
                "price": price,
                "quantity": quantity,
                "amount": amount,
                "tax": tax.get("type") if isinstance(tax, Mapping) else None,
                "payment_object": item.get("paymentObject"),
            }
            imc = item.get("imcParams")
            if isinstance(imc, Mapping):
                position.update(self._marked(state, imc, allowed, used))
                industry = item.get("industryInfo")
                if isinstance(industry, list) and industry and isinstance(industry[0], Mapping):
                    info = industry[0]
                    date = str(info.get("date", ""))
                    position["tags"]["1260"] = {
                        "1262": info.get("fois"),
                        "1263": ".".join(reversed(date.split("."))) if date else None,
                        "1264": info.get("number"),
                        "1265": info.get("industryAttribute"),
                    }
            positions.append(position)
        if not positions:
            raise _TaskError(DriverError.INVALID_POSITIONS_COUNT, "Чек без позиций")
        return positions, used

    def _marked(
        self,
        state: dict[str, Any],
        imc: Mapping[str, Any],
        allowed: frozenset[int],
        used: list[str],
    ) -> dict[str, Any]:
        km = _decode_imc(imc.get("imc"))
        status = _planned_status(imc.get("itemEstimatedStatus"))
        if km is None or status is None:
            raise _TaskError(DriverError.INVALID_MARKING_CODE, "Неверный КМ в позиции")
        if status not in allowed:
            raise _TaskError(DriverError.INVALID_MARKING_CODE_STATUS, "Статус КМ не подходит чеку")
        entry = next(
            (a for a in state["accepted"] if a["imc"] == imc.get("imc") and a["id"] not in used),
            None,
        )
        if entry is None:
            raise _TaskError(DriverError.MARK_NOT_CHECKED, "КМ не проверен в ФН")
        if entry["status"] != status:
            raise _TaskError(DriverError.INVALID_MARKING_CODE_STATUS, "Статус КМ не совпадает")
        used.append(entry["id"])
        bits = entry["bits"]
        tag2106 = (
            int(bits["imcCheckFlag"])
            | int(bits["imcCheckResult"]) << 1
            | int(bits["imcStatusInfo"]) << 2
            | int(bits["imcEstimatedStatusCorrect"]) << 3
            | int(bits["ecrStandAloneFlag"]) << 4
        )
        # The КИ only: nothing derived from the whole code (its hash would let anyone who
        # reads the file find a 4-character crypto tail by trying every candidate).
        return {
            "ki": entry["ki"],
            "tags": {
                "2003": status,
                "2102": imc.get("imcModeProcessing", 0),
                "2106": tag2106,
                "2004": tag2106 & 3,
            },
        }


_HANDLERS: dict[str, Callable[[VirtualKkt, dict[str, Any], str, Any], dict[str, Any]]] = {
    "getDeviceStatus": VirtualKkt._get_device_status,
    "getShiftStatus": VirtualKkt._get_shift_status,
    "getFnStatus": VirtualKkt._get_fn_status,
    "ofdExchangeStatus": VirtualKkt._ofd_exchange_status,
    "getFnInfo": VirtualKkt._get_fn_info,
    "openShift": VirtualKkt._open_shift,
    "closeShift": VirtualKkt._close_shift,
    "beginMarkingCodeValidation": VirtualKkt._begin_validation,
    "getMarkingCodeValidationStatus": VirtualKkt._validation_status,
    "acceptMarkingCode": VirtualKkt._accept,
    "declineMarkingCode": VirtualKkt._decline,
    "cancelMarkingCodeValidation": VirtualKkt._cancel_validation,
    "clearMarkingCodeValidationResult": VirtualKkt._clear_validations,
    "cancelReceipt": VirtualKkt._cancel_receipt,
    "sell": VirtualKkt._receipt,
    "sellReturn": VirtualKkt._receipt,
}


# --------------------------------------------------------------------------------------------
# Helpers


def _error(code: int, description: str) -> dict[str, Any]:
    return {"status": "error", "errorCode": int(code), "errorDescription": description}


def _ready(result: dict[str, Any]) -> dict[str, Any]:
    return {"status": "ready", "errorCode": 0, "result": result}


def _parse_error(text: str) -> _TaskError:
    return _TaskError(DriverError.RECEIPT_PARSE_ERROR, text)


def _missing(value: Any) -> bool:
    """What the driver's validators call missing: absent, null, or an empty object."""
    return value is None or (isinstance(value, Mapping) and not value)


def _check_operator_field(task: Mapping[str, Any]) -> None:
    """``operator``: missing, or an object whose ``name`` is a string and ``vatin`` a string
    or missing (the scripts' ``validate``); otherwise 501 with the script's wording."""
    operator = task.get("operator")
    if _missing(operator):
        return
    if not isinstance(operator, Mapping):
        raise _parse_error('Поле "operator" имеет неверный тип (ожидается "object")')
    name = operator.get("name")
    if name is None:
        raise _parse_error('Поле "operator.name" отсутствует')
    if not isinstance(name, str):
        raise _parse_error('Поле "operator.name" имеет неверный тип (ожидается "string")')
    vatin = operator.get("vatin")
    if vatin is not None and not isinstance(vatin, str):
        raise _parse_error('Поле "operator.vatin" имеет неверный тип (ожидается "string")')


def _check_receipt_fields(task: Mapping[str, Any]) -> None:
    """The receipt script's ``validate`` for the fields this device reads beyond the items:
    ``operator`` and ``taxationType`` (a string, one of the driver's names)."""
    _check_operator_field(task)
    taxation = task.get("taxationType")
    if taxation is None:
        return
    if not isinstance(taxation, str):
        raise _parse_error('Поле "taxationType" имеет неверный тип (ожидается "string")')
    if taxation and taxation not in TAXATION_BITS:
        raise _parse_error(f'Некорректное значение поля "taxationType" ({taxation})')


def _operator_login(task: Mapping[str, Any]) -> dict[str, str] | None:
    """The cashier's login (tags 1021, 1203) when ``operator.name`` is given; the tags the
    document records, or None. The ККТ refuses the login (196 «Ошибка регистрации кассира»)
    for a name longer than tag 1021 allows and for a 1203 that is not a person's ИНН: 12
    digits whose two check digits are right (what the firmware checks is not published:
    this device is strict)."""
    operator = task.get("operator")
    if _missing(operator) or not operator.get("name"):
        return None
    name = operator["name"]
    vatin = operator.get("vatin") or ""
    if len(name) > CASHIER_NAME_LENGTH or (vatin and not _person_inn(vatin)):
        raise _TaskError(DriverError.OPERATOR_LOGIN, "Ошибка регистрации кассира")
    cashier = {"1021": name}
    if vatin:
        cashier["1203"] = vatin
    return cashier


def _person_inn(text: str) -> bool:
    """A person's ИНН: 12 ASCII digits; the 11th is the weighted sum of the first ten, the
    12th that of the first eleven, each mod 11 mod 10 (the ФНС's rule)."""
    if len(text) != 12 or not all("0" <= c <= "9" for c in text):
        return False
    n = [ord(c) - 48 for c in text]

    def check(weights: tuple[int, ...]) -> int:
        return sum(a * b for a, b in zip(n, weights, strict=False)) % 11 % 10

    return (
        check((7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == n[10]
        and check((3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == n[11]
    )


def _identify(km: str) -> tuple[str | None, bool]:
    """The КИ of a code and whether the ФН can check its crypto tail (AI 91 + 92)."""
    try:
        code = parse(km)
    except CodeError:
        return None, False
    return code.ki, "92" in code.crypto


def _payments(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _TaskError(DriverError.NOT_FULLY_PAID, "Нет оплаты")
    payments = []
    for item in value:
        if not isinstance(item, Mapping) or item.get("type") not in ("cash", "electronically"):
            raise _TaskError(DriverError.INVALID_PARAM, "Неверный тип оплаты")
        try:
            amount = _kopecks(item.get("sum"))
        except ValueError:
            raise _TaskError(DriverError.INVALID_SUM, "Неверная сумма оплаты") from None
        payments.append({"type": item["type"], "amount": amount})
    return payments


def _fiscal_sign(state: dict[str, Any], number: int, when: datetime) -> str:
    digest = hashlib.sha256(f"{state['device']['fn_number']}/{number}/{when}".encode()).digest()
    return str(int.from_bytes(digest[:5], "big") % 10**10).rjust(10, "0")


def _fiscal_params(state: dict[str, Any], document: Mapping[str, Any]) -> dict[str, Any]:
    device = state["device"]
    return {
        "fiscalParams": {
            "fiscalDocumentNumber": document["number"],
            "fiscalDocumentSign": document["fiscal_sign"],
            "fiscalDocumentDateTime": document["datetime"],
            "fiscalReceiptNumber": document.get("receipt_number"),
            "shiftNumber": document["shift"],
            "fnNumber": device["fn_number"],
            "registrationNumber": device["registration_number"],
            "fnsUrl": "www.nalog.gov.ru",
            "total": _roubles(document.get("total", 0)),
        },
        "warnings": None,
    }
