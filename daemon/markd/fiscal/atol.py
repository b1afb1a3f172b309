"""The ``atol`` backends: an ATOL ККТ driven by ATOL JSON tasks (domain.md §7.4–§7.6).

Two transports carry the same tasks:

``atol-web://HOST[:PORT]``
    ATOL's Web Requests server (the web server of the ДТО10 driver, port 16732 by default).
    A request is ``POST /api/v2/requests`` with ``{"uuid": <id>, "request": [task, …]}``; its
    results are polled with ``GET /api/v2/requests/<id>``. The uuid is the operation's
    idempotency id: posting it again gets 409 and the first request's results, and after a
    crash :meth:`FiscalPrinter.find_receipt` reads what became of a receipt. The poll shape is
    (unconfirmed) a ``results`` array with ``status``, ``errorCode``, ``errorDescription`` and
    ``result`` per task; a status other than ``ready``, ``error``, ``interrupted`` or
    ``canceled`` counts as "not finished" until the operation's time is up (§7.5 advice).
    Option ``cancel_task`` names the task that cancels a receipt left open on the device
    (``cancelReceipt``; not in the published task lists, so configurable). Option
    ``deviceID`` chooses one of the devices the server drives (sent as ``?deviceID=`` on every
    request, domain.md §7.4a; without it the server's default device). When the server asks
    for HTTP Basic auth, the settings' ``web_user`` and ``web_password`` go in
    ``Authorization`` on every request; a 401 / 403 is ``web-unauthorized`` and names the
    user, never the password.

``atol-lib://usb`` | ``atol-lib:///dev/ttyACM0?baudrate=115200`` | ``atol-lib://HOST:PORT``
    ATOL's libfptr10 in process, through its Python binding (``from libfptr10 import IFptr``,
    shipped with the ДТО10 driver): ``setParam(LIBFPTR_PARAM_JSON_DATA, task)``,
    ``processJson()``, ``getParamString(LIBFPTR_PARAM_JSON_DATA)``. The binding is imported when
    the printer is opened; without it the error names the module and the driver. Option ``lib``
    is the path of ``libfptr10.so`` when it is not where the binding looks. The library keeps no
    request table: after a crash the session reconciles by the document counter alone.

Error answers map to markd's reasons through
:data:`markd.fiscal.atol_protocol.ERROR_REASONS`: "no connection" (1–4) becomes
:class:`~markd.errors.PrinterUnavailable`, a link lost during a task that changes the device
(241, a web request whose answer never came) :class:`~markd.errors.OutcomeUnknown`, the
refusals the session acts on their typed faults (:data:`FAULT_TYPES`: a receipt open, none
open, no code validation under way), anything else :class:`~markd.errors.PrinterFault` with
the device's code.

The status is read with ``getDeviceStatus``, ``getShiftStatus``, ``getFnStatus``,
``ofdExchangeStatus`` and ``getFnInfo`` in one request; the fiscal health (domain.md §7.8:
the ФН's validity end, the oldest unsent document, the shift's age) comes from them. Whether
a receipt is open is read from ``deviceStatus.receiptType`` when the device reports it (the
emulator does; the published field lists do not), otherwise it is unknown.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

from markd.errors import (
    DriverMissing,
    FiscalError,
    FiscalTimeout,
    OutcomeUnknown,
    PrinterFault,
    PrinterUnavailable,
)
from markd.fiscal import atol_protocol as proto
from markd.fiscal.base import (
    Finding,
    FiscalPrinter,
    MarkCheckInProgress,
    MarkNotValidated,
    NoReceiptOpen,
    NoValidationRunning,
    OfdExchangeFault,
    OismTimeout,
    Option,
    PrinterSettings,
    PrinterURL,
    QueueBlocked,
    ReceiptAlreadyOpen,
    ReceiptParseError,
    ValidationAlreadyRunning,
    derive_op_id,
)
from markd.fiscal.model import (
    FiscalHealth,
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptAttributes,
    ReceiptKind,
    ReceiptResult,
    ShiftInfo,
)
from markd.http.blocking import BlockingHTTPClient
from markd.http.errors import HTTPError
from markd.numbers import read_int
from markd.receipts import Payment
from markd.secrets import Secret
from markd.urls import ABSENT

DEFAULT_WEB_PORT = 16732
#: A shift's length limit; ``getShiftStatus.expiredTime`` is its end (domain.md §7.8).
SHIFT_LIMIT_HOURS = 24
#: ATOL error numbers whose refusal the sale session acts on, as the interface's typed faults
#: (every other refusal is a plain :class:`~markd.errors.PrinterFault` with the number).
FAULT_TYPES: dict[int, type[PrinterFault]] = {
    proto.ERROR_DENIED_IN_OPENED_RECEIPT: ReceiptAlreadyOpen,
    proto.ERROR_NEED_CANCEL_DOCUMENT: ReceiptAlreadyOpen,
    proto.ERROR_DENIED_IN_CLOSED_RECEIPT: NoReceiptOpen,
    proto.ERROR_INVALID_STATE: NoValidationRunning,
    proto.ERROR_VALIDATION_IN_PROGRESS: ValidationAlreadyRunning,
    proto.ERROR_OFD_EXCHANGE: OfdExchangeFault,
    proto.ERROR_MARK_NOT_CHECKED: MarkNotValidated,
    proto.ERROR_NO_MARKING_CODE_IN_TABLE: MarkNotValidated,
    proto.ERROR_MARK_CHECK_TIMEOUT: OismTimeout,
    proto.ERROR_MARK_CHECK_IN_PROGRESS: MarkCheckInProgress,
    proto.ERROR_RECEIPT_PARSE: ReceiptParseError,
}
#: Web Requests result statuses that are final (``wait``, ``inProgress``: still running;
#: ``blocked``: unknown, the queue stopped — see :class:`~markd.fiscal.base.QueueBlocked`).
FINAL_STATUSES = frozenset({"ready", "error", "interrupted", "canceled", "cancelled"})
BLOCKED_STATUS = "blocked"
#: Payment object (tag 1212) of a marked unit and of a plain one.
PAYMENT_OBJECT_MARKED = "commodityWithMarking"
PAYMENT_OBJECT_PLAIN = "commodity"


# --------------------------------------------------------------------------------------------
# Transports


@dataclass(frozen=True)
class TaskOutcome:
    """One task's answer: ``status`` ``ready`` with ``result``, or an error code."""

    status: str
    result: dict[str, Any]
    error_code: int | None = None
    error_description: str = ""

    @classmethod
    def from_json(cls, data: Any) -> TaskOutcome:
        if not isinstance(data, Mapping):
            return cls("error", {}, proto.ERROR_INTERRUPTED, "no answer for the task")
        status = str(data.get("status", "")) or "ready"
        # Two published shapes of an error: ``errorCode`` / ``errorDescription`` beside the
        # result (one API description), or ``error: {code, description}`` (a commercial
        # client); both are read.
        code = read_int(data.get("errorCode"))
        description = str(data.get("errorDescription") or "")
        error = data.get("error")
        if not code and isinstance(error, Mapping):
            code = read_int(error.get("code"))
            description = description or str(error.get("description") or "")
        result = data.get("result")
        return cls(
            status,
            dict(result) if isinstance(result, Mapping) else {},
            code if code else None,
            description,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ready" and not self.error_code


class Transport(Protocol):
    """Carries ATOL JSON tasks to the device."""

    def run(
        self, op_id: str, tasks: list[dict[str, Any]], timeout_s: float, mutating: bool
    ) -> list[TaskOutcome]:
        """Run ``tasks`` as one request keyed by ``op_id``; one outcome per task."""
        ...

    def lookup(self, op_id: str, timeout_s: float) -> list[TaskOutcome] | None:
        """The outcomes of an earlier request, None when the device keeps no record of it."""
        ...

    def cancel_receipt(self, op_id: str, timeout_s: float) -> list[TaskOutcome]: ...

    def cancel_leftover(self, op_id: str, timeout_s: float) -> None:
        """Before a fiscal task: cancel a receipt left open, keeping the accepted codes, and
        ignore "nothing to cancel" — what the driver's scripts do first (domain.md §7.4a).
        A transport whose tasks run through those scripts (Web Requests, the virtual ККТ)
        has nothing to add."""
        ...

    def close(self) -> None: ...


class WebRequestsTransport:
    """ATOL Web Requests over HTTP/1.1, through :class:`~markd.http.blocking.BlockingHTTPClient`
    (the driver's web server is on the till or next to it: never through a proxy).

    One kept-alive connection serves every request of the thread that drives the printer.
    Whether a failed request left markd decides what the printer may have done, so the
    client's :attr:`~markd.http.errors.HTTPError.request_sent` maps to :class:`_NotSent` (the
    server cannot have it: nothing listening, no connection) or :class:`_NoAnswer` (it may
    have queued it: ask for its uuid before calling it lost). A request resent by the client
    on a fresh connection after a kept-alive one turned out closed is harmless: the uuid makes
    a second ``POST`` a 409 with the first one's results.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        cancel_task: str = "cancelReceipt",
        poll_interval_s: float = 0.05,
        device_id: str = "",
        user: str = "",
        password: Secret | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.cancel_task = cancel_task
        self.poll_interval_s = poll_interval_s
        self.device_id = device_id
        self.user = user
        shown = f"[{host}]" if ":" in host else host
        self._base = f"http://{shown}:{port}"
        # Every request names the device (the POST that queues the tasks and the GETs that
        # read their results), so a server driving several keeps each request on its own.
        self._query = f"?deviceID={quote(device_id, safe='')}" if device_id else ""
        self._authorization: str | None = None
        if user:
            secret = password.reveal() if password is not None else ""
            token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        self._http: BlockingHTTPClient | None = None
        #: The request the queue is blocked on, None when it moves.
        self.blocked_uuid: str | None = None

    def run(
        self, op_id: str, tasks: list[dict[str, Any]], timeout_s: float, mutating: bool
    ) -> list[TaskOutcome]:
        deadline = time.monotonic() + timeout_s
        self._check_queue(op_id, deadline)
        body = {"uuid": op_id, "request": tasks}
        try:
            status, answer = self._exchange("POST", "/api/v2/requests", body, deadline)
        except _NotSent as exc:
            raise PrinterUnavailable(f"ATOL web server {self._where}: {exc}") from exc
        except _Unauthorized as exc:
            # Refused before it was queued: nothing reached the device.
            raise PrinterUnavailable(str(exc), "web-unauthorized") from None
        except _NoAnswer as exc:
            # The request may have been queued. Ask for it under its uuid before giving up.
            found = self._poll(op_id, len(tasks), deadline, missing_ok=True)
            if found is None:
                raise PrinterUnavailable(
                    f"ATOL web server {self._where}: the request got no answer and is not "
                    f"queued ({exc})"
                ) from exc
            return found
        if not _accepted(status, answer):
            # Refused — or a uuid the server already knows (no public source promises a
            # 409 for that): whether the server holds a request under this uuid decides,
            # and then its first results are what counts.
            found = self._poll(op_id, len(tasks), deadline, missing_ok=True)
            if found is None:
                raise PrinterFault(
                    f"ATOL web server {self._where} refused the request: HTTP {status} "
                    f"{_error_text(answer)}",
                    "web-request-refused",
                )
            return found
        found = self._poll(op_id, len(tasks), deadline, missing_ok=False)
        assert found is not None
        return found

    def _check_queue(self, op_id: str, deadline: float) -> None:
        """Send nothing while the queue is blocked: ask the blocked request again, and go on
        only once it has a final status (a person resolved it on the driver) or the server no
        longer holds it (404: nothing of it is left to block the queue). Whatever else keeps
        that answer from markd (the server unreachable, the time up) leaves the block as it
        was: the request's state is still unknown, so no new task goes out."""
        blocked = self.blocked_uuid
        if blocked is None or blocked == op_id:
            return
        try:
            self._poll(blocked, None, deadline, missing_ok=True)  # raises while still blocked
        except QueueBlocked:
            raise  # asked again: still blocked (or still waiting)
        except FiscalError as exc:
            raise QueueBlocked(
                f"ATOL web server {self._where}: the queue is blocked on request {blocked} "
                f"and its state could not be read again ({exc.message}); nothing new is sent"
            ) from exc
        self.blocked_uuid = None

    def lookup(self, op_id: str, timeout_s: float) -> list[TaskOutcome] | None:
        return self._poll(op_id, None, time.monotonic() + timeout_s, missing_ok=True)

    def cancel_receipt(self, op_id: str, timeout_s: float) -> list[TaskOutcome]:
        return self.run(op_id, [{"type": self.cancel_task}], timeout_s, mutating=True)

    def cancel_leftover(self, op_id: str, timeout_s: float) -> None:
        # The web server runs each task through the driver's script, whose first step is
        # this very cancel (myscripts_base_receipt.js, json_openShift.js).
        return None

    def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            try:
                http.close()
            except RuntimeError:
                # A device call still runs in the owning thread (it ends by its own
                # deadline); its connection closes with it or with the process.
                pass

    @property
    def _where(self) -> str:
        device = f" (device {self.device_id})" if self.device_id else ""
        return f"{self.host}:{self.port}{device}"

    def _poll(
        self, op_id: str, count: int | None, deadline: float, missing_ok: bool
    ) -> list[TaskOutcome] | None:
        """GET the request's results until every task is final; None when the server does
        not know the uuid (and ``missing_ok``)."""
        path = f"/api/v2/requests/{op_id}"
        waiting = False
        while True:
            if time.monotonic() >= deadline:
                if waiting:
                    # Never taken from the queue: an earlier request holds it — ``blocked``
                    # (one this process did not send), or merely running longer than this
                    # operation's time — or the server is stuck. Nothing public lists the
                    # queue, so the two cannot be told apart here: reported as
                    # ``queue-blocked`` either way (docs/fiscal.md), worded for both.
                    raise QueueBlocked(
                        f"ATOL web server {self._where}: request {op_id} still waits in the "
                        "queue: an earlier request is blocked or has not finished in time; "
                        "see the driver's web server"
                    )
                raise FiscalTimeout(
                    f"ATOL web server {self._where}: request {op_id} not finished in time"
                )
            try:
                status, answer = self._exchange("GET", path, None, deadline)
            except _Unauthorized as exc:
                raise OutcomeUnknown(str(exc), "web-unauthorized") from None
            except _NoAnswer as exc:
                if time.monotonic() >= deadline:
                    raise FiscalTimeout(
                        f"ATOL web server {self._where}: request {op_id} not finished in time"
                    ) from exc
                raise OutcomeUnknown(
                    f"ATOL web server {self._where}: lost while waiting for request {op_id}: {exc}"
                ) from exc
            except _NotSent as exc:
                raise OutcomeUnknown(
                    f"ATOL web server {self._where}: lost while waiting for request {op_id}: {exc}"
                ) from exc
            if status == 404 and missing_ok:
                return None
            if not 200 <= status < 300:
                raise OutcomeUnknown(
                    f"ATOL web server {self._where}: HTTP {status} for request {op_id} "
                    f"{_error_text(answer)}"
                )
            results = answer.get("results") if isinstance(answer, Mapping) else None
            if isinstance(results, list) and (count is None or len(results) >= count):
                outcomes = [TaskOutcome.from_json(r) for r in results]
                if any(o.status == BLOCKED_STATUS for o in outcomes):
                    self.blocked_uuid = op_id
                    raise QueueBlocked(
                        f"ATOL web server {self._where}: request {op_id} is blocked — its "
                        "result is unknown and the queue is stopped until a technician "
                        "resolves it on the driver's web server"
                    )
                if all(o.status in FINAL_STATUSES for o in outcomes):
                    return outcomes
                waiting = all(o.status == "wait" for o in outcomes)
            time.sleep(min(self.poll_interval_s, max(deadline - time.monotonic(), 0)))

    def _client(self) -> BlockingHTTPClient:
        """The HTTP client of the calling thread. The printer serialises device calls, so when
        they move to another thread (opened and first used by one, driven by the sale
        session's worker afterwards) the old client is idle and is closed here."""
        http = self._http
        if http is not None and http.owner not in (None, threading.current_thread()):
            http.close()
            http = None
        if http is None:
            http = self._http = BlockingHTTPClient(max_idle=1)
        return http

    def _exchange(self, method: str, path: str, body: Any, deadline: float) -> tuple[int, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _NotSent("no time left")
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        try:
            # At least 50 ms for one exchange, even at the end of an operation's time.
            response = self._client().request(
                method,
                self._base + path + self._query,
                deadline=time.monotonic() + max(left, 0.05),
                headers=headers,
                body=payload,
            )
        except HTTPError as exc:
            if exc.request_sent:
                raise _NoAnswer(str(exc)) from exc
            raise _NotSent(str(exc)) from exc
        if response.status in (401, 403):
            who = (
                f"the credentials of user {self.user!r} were refused"
                if self.user
                else "it asks for HTTP Basic credentials and none are configured"
            )
            raise _Unauthorized(f"ATOL web server {self._where}: HTTP {response.status}: {who}")
        try:
            data = json.loads(response.body) if response.body else None
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python goes
            data = None
        return response.status, data


class _Unauthorized(Exception):
    """The web server refused the request for its credentials (401 / 403)."""


class _NotSent(Exception):
    """The request did not leave: the server is not there."""


class _NoAnswer(Exception):
    """The request left but no (complete) answer came back."""


def _accepted(status: int, answer: Any) -> bool:
    """The POST answer took the request: a 2xx whose body (``{uuid, number, error}``) names
    no error."""
    if not 200 <= status < 300:
        return False
    error = answer.get("error") if isinstance(answer, Mapping) else None
    if isinstance(error, Mapping):
        return not read_int(error.get("code"))
    return True


def _error_text(answer: Any) -> str:
    if isinstance(answer, Mapping) and isinstance(answer.get("error"), Mapping):
        error = answer["error"]
        return f"{error.get('code', '')} {error.get('description', '')}".strip()
    return ""


class LibfptrTransport:
    """libfptr10 through its Python binding, one task at a time (``processJson`` blocks)."""

    def __init__(self, target: str, options: Mapping[str, Any]) -> None:
        try:
            import libfptr10  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DriverMissing(
                "atol-lib:// needs ATOL's Python binding 'libfptr10' (module libfptr10, class "
                "IFptr), installed with the ATOL ДТО10 driver together with libfptr10.so; it is "
                f"not importable here ({exc}). Install the driver, or use atol-web:// with "
                "the driver's web server",
                "driver-missing",
            ) from exc
        ifptr = libfptr10.IFptr
        try:
            self.fptr = ifptr(options.get("lib") or "")
        except OSError as exc:
            raise DriverMissing(
                f"atol-lib://: the binding could not load libfptr10.so "
                f"({options.get('lib') or 'default location'}): {exc}",
                "driver-missing",
            ) from exc
        self._const = ifptr
        settings = {ifptr.LIBFPTR_SETTING_MODEL: ifptr.LIBFPTR_MODEL_ATOL_AUTO}
        if target == "usb":
            settings[ifptr.LIBFPTR_SETTING_PORT] = ifptr.LIBFPTR_PORT_USB
        elif target.startswith("/"):
            settings[ifptr.LIBFPTR_SETTING_PORT] = ifptr.LIBFPTR_PORT_COM
            settings[ifptr.LIBFPTR_SETTING_COM_FILE] = target
            settings[ifptr.LIBFPTR_SETTING_BAUDRATE] = getattr(
                ifptr, f"LIBFPTR_PORT_BR_{options.get('baudrate', 115200)}"
            )
        else:
            host, _, port = target.rpartition(":")
            settings[ifptr.LIBFPTR_SETTING_PORT] = ifptr.LIBFPTR_PORT_TCPIP
            settings[ifptr.LIBFPTR_SETTING_IPADDRESS] = host
            settings[ifptr.LIBFPTR_SETTING_IPPORT] = int(port)
        self.fptr.setSettings(settings)
        self.fptr.open()

    def run(
        self, op_id: str, tasks: list[dict[str, Any]], timeout_s: float, mutating: bool
    ) -> list[TaskOutcome]:
        outcomes: list[TaskOutcome] = []
        failed = False
        for task in tasks:
            if failed:
                outcomes.append(TaskOutcome("interrupted", {}, proto.ERROR_INTERRUPTED))
                continue
            fptr = self.fptr
            fptr.setParam(self._const.LIBFPTR_PARAM_JSON_DATA, json.dumps(task, ensure_ascii=False))
            if fptr.processJson() < 0:
                code = int(fptr.errorCode())
                outcomes.append(TaskOutcome("error", {}, code, str(fptr.errorDescription())))
                failed = True
                continue
            text = fptr.getParamString(self._const.LIBFPTR_PARAM_JSON_DATA) or "{}"
            try:
                result = json.loads(text)
            except (ValueError, RecursionError):
                result = {}
            outcomes.append(TaskOutcome("ready", result if isinstance(result, dict) else {}))
        return outcomes

    def lookup(self, op_id: str, timeout_s: float) -> list[TaskOutcome] | None:
        return None  # the library keeps no request table

    def cancel_leftover(self, op_id: str, timeout_s: float) -> None:
        # processJson runs the same scripts, but markd says it here too, through the
        # library's documented call, and keeps the accepted codes as the receipt script
        # does (LIBFPTR_PARAM_MARKING_CODE_CLEAR = false; without it cancelReceipt() clears
        # the ФН's table of accepted codes).
        fptr = self.fptr
        clear_param = getattr(self._const, "LIBFPTR_PARAM_MARKING_CODE_CLEAR", None)
        if clear_param is not None:
            fptr.setParam(clear_param, False)
        if fptr.cancelReceipt() < 0:
            code = int(fptr.errorCode())
            if code not in proto.NOTHING_TO_CANCEL_CODES:
                raise _device_error(
                    "cancelReceipt",
                    TaskOutcome("error", {}, code, str(fptr.errorDescription())),
                    mutating=True,
                )

    def cancel_receipt(self, op_id: str, timeout_s: float) -> list[TaskOutcome]:
        fptr = self.fptr
        if fptr.cancelReceipt() < 0:
            code = int(fptr.errorCode())
            return [TaskOutcome("error", {}, code, str(fptr.errorDescription()))]
        return [TaskOutcome("ready", {})]

    def close(self) -> None:
        try:
            self.fptr.close()
        except Exception:  # noqa: BLE001 - closing a gone device must not raise
            pass


# --------------------------------------------------------------------------------------------
# The printer


class AtolPrinter(FiscalPrinter):
    """A :class:`FiscalPrinter` speaking ATOL JSON through a :class:`Transport`."""

    transport: Transport

    # -- plumbing -------------------------------------------------------------------------------

    def _run(
        self,
        op_id: str,
        tasks: list[dict[str, Any]],
        *,
        tolerate: frozenset[int] = frozenset(),
        optional_from: int | None = None,
    ) -> list[TaskOutcome]:
        """Run tasks; raise for the first error unless its code is in ``tolerate`` or the
        task's index is at or after ``optional_from``."""
        mutating = any(t.get("type") in proto.MUTATING_TASKS for t in tasks)
        if any(t.get("type") in proto.FISCAL_TASKS for t in tasks):
            self.transport.cancel_leftover(op_id, self.settings.timeout_s)
        outcomes = self.transport.run(op_id, tasks, self.settings.timeout_s, mutating)
        for index, (task, outcome) in enumerate(zip(tasks, outcomes, strict=False)):
            if outcome.ok or outcome.error_code in tolerate:
                continue
            if optional_from is not None and index >= optional_from:
                continue
            raise _device_error(task.get("type", "?"), outcome, mutating)
        if len(outcomes) < len(tasks):
            raise OutcomeUnknown(f"{len(outcomes)} answers for {len(tasks)} tasks")
        return outcomes

    # -- status and shifts ----------------------------------------------------------------------

    def _status(self, op_id: str) -> PrinterStatus:
        tasks = [
            {"type": "getDeviceStatus"},
            {"type": "getShiftStatus"},
            {"type": "getFnStatus"},
            {"type": "ofdExchangeStatus"},
            {"type": "getFnInfo"},
        ]
        outcomes = self._run(op_id, tasks, optional_from=1)
        device = _dict(outcomes[0].result.get("deviceStatus"))
        shift = _dict(outcomes[1].result.get("shiftStatus")) if outcomes[1].ok else {}
        fn = _dict(outcomes[2].result.get("fnStatus")) if outcomes[2].ok else {}
        ofd = _dict(outcomes[3].result.get("status")) if outcomes[3].ok else {}
        fn_info = (
            _dict(outcomes[4].result.get("fnInfo")) if len(outcomes) > 4 and outcomes[4].ok else {}
        )
        warnings = _dict(fn.get("warnings"))
        receipt_type = device.get("receiptType")
        fn_present = bool(device.get("fnPresent", True))
        shift_state = str(shift.get("state") or device.get("shift") or "closed")
        return PrinterStatus(
            shift_state=shift_state if shift_state in ("opened", "expired") else "closed",
            shift_number=read_int(shift.get("number"), lo=0) or 0,
            paper_present=bool(device.get("paperPresent", True)),
            fn_present=fn_present,
            fn_fiscal=bool(device.get("fnFiscal", True)),
            fn_state="error" if warnings.get("criticalError") or not fn_present else "ok",
            fn_warnings=tuple(sorted(k for k, v in warnings.items() if v is True)),
            last_document_number=read_int(fn.get("fiscalDocumentNumber"), lo=0) or 0,
            last_receipt_number=read_int(fn.get("fiscalReceiptNumber"), lo=0),
            unsent_documents=read_int(ofd.get("notSentCount"), lo=0),
            receipt_open=None if receipt_type is None else receipt_type != "closed",
            cover_opened=bool(device.get("coverOpened", False)),
            blocked=bool(device.get("blocked", False)),
            model=_str(device.get("modelName")),
            health=_health(device, shift, ofd, fn_info),
            raw={
                "deviceStatus": device,
                "shiftStatus": shift,
                "fnStatus": fn,
                "ofdExchangeStatus": ofd,
                "fnInfo": fn_info,
            },
        )

    def _shift(self, op_id: str, kind: str) -> ShiftInfo:
        # The shift report names the cashier too (json_openShift.js logs the operator in).
        task: dict[str, Any] = {"type": kind, **cashier_fields(self.settings.receipt)}
        outcomes = self._run(op_id, [task])
        # ``{"fiscalParams": {…, "shiftNumber", "fiscalDocumentNumber"}}`` as the driver's
        # shift scripts answer; a flat answer (older readings) is taken as well.
        result = _dict(outcomes[0].result.get("fiscalParams")) or outcomes[0].result
        return ShiftInfo(
            number=read_int(result.get("shiftNumber"), lo=0) or 0,
            state="opened" if kind == "openShift" else "closed",
            document_number=read_int(result.get("fiscalDocumentNumber"), lo=0),
        )

    def _open_shift(self, op_id: str) -> ShiftInfo:
        return self._shift(op_id, "openShift")

    def _close_shift(self, op_id: str) -> ShiftInfo:
        return self._shift(op_id, "closeShift")

    # -- marking codes --------------------------------------------------------------------------

    def _begin_validation(
        self, op_id: str, km: str, ki: str, planned_status: int
    ) -> MarkValidation:
        task = {
            "type": "beginMarkingCodeValidation",
            "params": {
                "imcType": "auto",
                "imc": proto.encode_km(km),
                "itemEstimatedStatus": proto.ESTIMATED_STATUS_NAMES[planned_status],
                "imcModeProcessing": 0,
                "itemQuantity": 1,
                "itemUnits": "piece",
            },
        }
        outcomes = self._run(op_id, [task])
        local = _dict(outcomes[0].result.get("offlineValidation"))
        return MarkValidation(
            ki=ki,
            fn_checked=local.get("fmCheck") is True,
            fn_result=local.get("fmCheckResult") is True,
            fn_error_reason=_str(local.get("fmCheckErrorReason")),
        )

    def _validation_status(self, op_id: str, ki: str) -> MarkValidation:
        outcomes = self._run(op_id, [{"type": "getMarkingCodeValidationStatus"}])
        result = outcomes[0].result
        if "ready" not in result:
            # The status call itself failed: the script answers ``{driverError}`` alone
            # (myscripts_marks.js). That is an error, not "keep polling".
            driver = _dict(result.get("driverError"))
            code = read_int(driver.get("code"))
            raise _device_error(
                "getMarkingCodeValidationStatus",
                TaskOutcome(
                    "error",
                    {},
                    code or proto.ERROR_INVALID_STATE,
                    str(driver.get("description") or driver.get("error") or "no status"),
                ),
                mutating=False,
            )
        return _validation_from_status(ki, result)

    def _accept(self, op_id: str, ki: str) -> MarkValidation | None:
        outcomes = self._run(op_id, [{"type": "acceptMarkingCode"}])
        bits = outcomes[0].result.get("itemInfoCheckResult")
        if not isinstance(bits, Mapping):
            return None
        return _validation_from_bits(ki, bits, ready=True)

    def _decline(self, op_id: str) -> None:
        self._run(op_id, [{"type": "declineMarkingCode"}])

    def _cancel_validation(self, op_id: str) -> None:
        self._run(op_id, [{"type": "cancelMarkingCodeValidation"}])

    def _clear_validations(self, op_id: str) -> None:
        self._run(op_id, [{"type": "clearMarkingCodeValidationResult"}])

    # -- receipts -------------------------------------------------------------------------------

    def _check_can_open(self, op_id: str) -> None:
        status = self._status(op_id)
        problems = [p for p in status.problems() if p != "receipt-open"]
        if problems:
            raise PrinterFault(f"the ККТ cannot take a receipt: {', '.join(problems)}", problems[0])
        if status.receipt_open:
            raise ReceiptAlreadyOpen("a receipt is left open on the ККТ", "receipt-open")

    def _fiscalise(
        self,
        op_id: str,
        kind: ReceiptKind,
        positions: tuple[Position, ...],
        payments: tuple[Payment, ...],
    ) -> ReceiptResult:
        task = receipt_task(kind, positions, payments, self.settings.receipt)
        outcomes = self._run(op_id, [task])
        return _receipt_result(kind, outcomes[0].result, positions, payments)

    def _cancel_device_receipt(self, op_id: str) -> None:
        outcomes = self.transport.cancel_receipt(op_id, self.settings.timeout_s)
        outcome = outcomes[0] if outcomes else TaskOutcome("error", {}, proto.ERROR_INTERRUPTED)
        if outcome.ok or outcome.error_code == proto.ERROR_DENIED_IN_CLOSED_RECEIPT:
            return  # cancelled, or nothing was open
        raise _device_error("cancelReceipt", outcome, mutating=True)

    def _find_receipt(self, op_id: str) -> tuple[Finding, ReceiptResult | None]:
        try:
            outcomes = self.transport.lookup(op_id, self.settings.timeout_s)
        except FiscalTimeout:
            return "unknown", None
        if not outcomes:
            return "unknown", None
        outcome = outcomes[0]
        if outcome.ok:
            kind: ReceiptKind = self.receipt_kind or "sell"
            positions = self.positions
            result = _receipt_result(kind, outcome.result, positions, (), recovered=True)
            return "done", result
        if outcome.error_code in proto.CUT_OFF_CODES or outcome.status not in FINAL_STATUSES:
            return "unknown", None
        return "failed", None

    def _release(self) -> None:
        self.transport.close()


def _check_task_name(text: str) -> str:
    if not text.isidentifier():
        raise ValueError(text)
    return text


def _check_device_id(text: str) -> str:
    """A device id of the web server (its own names: no public source limits them; markd
    takes what fits a query string and a journal field unescaped)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(text)
    return text


def _baudrate(text: str) -> int:
    value = int(text)
    if value not in (9600, 19200, 38400, 57600, 115200):
        raise ValueError(text)
    return value


def _absolute(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(text)
    return text


class AtolWebPrinter(AtolPrinter):
    """``atol-web://HOST[:PORT]``: ATOL's Web Requests server."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "cancel_task": Option(_check_task_name, "cancelReceipt", "an ATOL task type"),
        # Left out unless given: without it the server's default device answers.
        "deviceID": Option(
            _check_device_id, ABSENT, "a device id: 1 to 64 letters, digits, '_', '.' or '-'"
        ),
    }

    def __init__(self, url: PrinterURL, settings: PrinterSettings) -> None:
        super().__init__(url, settings)
        host, _, port = url.target.rpartition(":")
        self.transport = WebRequestsTransport(
            host.strip("[]"),
            int(port),
            cancel_task=url.options["cancel_task"],
            device_id=url.options.get("deviceID", ""),
            user=settings.web_user,
            password=settings.web_password,
        )

    @classmethod
    def target_from_url(cls, host: str, port: int | None, path: str) -> str:
        if not host:
            raise ValueError("a host is required")
        if path not in ("", "/"):
            raise ValueError(f"no path is expected, got {path!r}")
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port or DEFAULT_WEB_PORT}"


class AtolLibPrinter(AtolPrinter):
    """``atol-lib://usb`` | ``atol-lib:///dev/PORT`` | ``atol-lib://HOST:PORT``: libfptr10."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "baudrate": Option(_baudrate, 115200, "9600|19200|38400|57600|115200"),
        "lib": Option(_absolute, "", "an absolute path to libfptr10.so"),
    }

    def __init__(self, url: PrinterURL, settings: PrinterSettings) -> None:
        super().__init__(url, settings)
        self.transport = LibfptrTransport(url.target, url.options)

    @classmethod
    def target_from_url(cls, host: str, port: int | None, path: str) -> str:
        if host == "usb" and port is None and path in ("", "/"):
            return "usb"
        if not host and path.startswith("/dev/"):
            return path
        if host and port is not None and path in ("", "/"):
            return f"{host}:{port}"
        raise ValueError("expected usb, a /dev/ path or HOST:PORT")


# --------------------------------------------------------------------------------------------
# Building tasks and reading answers


def receipt_task(
    kind: ReceiptKind,
    positions: Sequence[Position],
    payments: Sequence[Payment],
    attributes: ReceiptAttributes | None = None,
) -> dict[str, Any]:
    """The ``sell`` / ``sellReturn`` task for a receipt (domain.md §7.6), with the taxation
    system (``taxationType``, tag 1055) and the cashier (``operator``) when ``attributes``
    name them (domain.md §7.4a; ``myscripts_base_receipt.js`` reads both)."""
    items = [position_item(p) for p in positions]
    task: dict[str, Any] = {"type": proto.RECEIPT_TASKS[kind]}
    if attributes is not None and attributes.taxation_type:
        task["taxationType"] = attributes.taxation_type
    if attributes is not None:
        task.update(cashier_fields(attributes))
    task.update(
        {
            "electronically": False,
            "items": items,
            "payments": [
                {"type": p.type, "sum": proto.roubles(p.amount_kopecks)} for p in payments
            ],
            "total": proto.roubles(sum(p.amount_kopecks for p in positions)),
        }
    )
    return task


def cashier_fields(attributes: ReceiptAttributes) -> dict[str, Any]:
    """``{"operator": {"name": …, "vatin": …}}`` (tags 1021, 1203) when a cashier is set, else
    nothing: the driver logs the cashier in only when ``operator.name`` is given, and sends
    1203 only when ``vatin`` is."""
    if not attributes.cashier_name:
        return {}
    operator = {"name": attributes.cashier_name}
    if attributes.cashier_inn:
        operator["vatin"] = attributes.cashier_inn
    return {"operator": operator}


def position_item(position: Position) -> dict[str, Any]:
    """One ``position`` item; a marked one carries ``imcParams`` (the code in base64, tag 2003,
    processing mode 0, the ККТ's check result) and, when the permit check gave a tag 1265
    value, ``industryInfo`` (tag 1260: 1262 ``fois``, 1263 ``date`` as ``yyyy.mm.dd``, 1264
    ``number``, 1265 ``industryAttribute``)."""
    item: dict[str, Any] = {
        "type": "position",
        "name": position.name,
        "price": proto.roubles(position.price_kopecks),
        "quantity": position.quantity,
        "amount": proto.roubles(position.amount_kopecks),
        "measurementUnit": "piece",
        "paymentMethod": "fullPayment",
        "paymentObject": PAYMENT_OBJECT_MARKED if position.mark else PAYMENT_OBJECT_PLAIN,
        "tax": {"type": position.tax},
    }
    mark = position.mark
    if mark is None:
        return item
    imc: dict[str, Any] = {
        "imcType": "auto",
        "imc": proto.encode_km(mark.km),
        "itemEstimatedStatus": proto.ESTIMATED_STATUS_NAMES[mark.planned_status],
        "imcModeProcessing": mark.processing_mode,
        "itemQuantity": 1,
        "itemUnits": "piece",
    }
    if mark.validation is not None:
        imc["itemInfoCheckResult"] = mark.validation.item_info_check_result()
    item["imcParams"] = imc
    industry = mark.industry
    if industry.tag1265:
        # Tag 1260 carries the permit check's ids; a unit no check service answered for has
        # none, and a 1260 without its 1265 means nothing.
        item["industryInfo"] = [
            {
                "fois": industry.tag1262,
                "date": industry.atol_date,
                "number": industry.tag1264,
                "industryAttribute": industry.tag1265,
            }
        ]
    return item


def _receipt_result(
    kind: ReceiptKind,
    result: Mapping[str, Any],
    positions: Sequence[Position],
    payments: Sequence[Payment],
    *,
    recovered: bool = False,
) -> ReceiptResult:
    params = _dict(result.get("fiscalParams"))
    number = read_int(params.get("fiscalDocumentNumber"), lo=0)
    if number is None:
        raise OutcomeUnknown("the ККТ answered the receipt without a document number")
    total = sum(p.amount_kopecks for p in positions)
    if not positions and "total" in params:
        try:
            total = proto.kopecks(params["total"])
        except ValueError:
            total = 0
    return ReceiptResult(
        kind=kind,
        document_number=number,
        receipt_number=read_int(params.get("fiscalReceiptNumber"), lo=0),
        shift_number=read_int(params.get("shiftNumber"), lo=0),
        fiscal_sign=_str(params.get("fiscalDocumentSign")),
        datetime=_str(params.get("fiscalDocumentDateTime")),
        fn_number=_str(params.get("fnNumber")),
        registration_number=_str(params.get("registrationNumber")),
        total_kopecks=total,
        positions=tuple(positions),
        payments=tuple(payments),
        recovered=recovered,
    )


def _validation_from_bits(ki: str, bits: Mapping[str, Any], **extra: Any) -> MarkValidation:
    return MarkValidation(
        ki=ki,
        fn_checked=bits.get("imcCheckFlag") is True,
        fn_result=bits.get("imcCheckResult") is True,
        oism_checked=bits.get("imcStatusInfo") is True,
        oism_status_correct=bits.get("imcEstimatedStatusCorrect") is True,
        offline=bits.get("ecrStandAloneFlag") is True,
        **extra,
    )


def _validation_from_status(ki: str, result: Mapping[str, Any]) -> MarkValidation:
    """``getMarkingCodeValidationStatus``'s answer (domain.md §7.4)."""
    ready = result.get("ready") is True
    sent = result.get("sentImcRequest") is True
    driver = _dict(result.get("driverError"))
    code = read_int(driver.get("code"))
    driver_error = None
    if code:
        # ``error`` names the reason (responseTimeout, serverNoConnect, imcCheckIsRun …).
        name = _str(driver.get("error"))
        driver_error = f"{code}{' ' + name if name else ''}: {driver.get('description', '')}"
        driver_error = driver_error.strip()
    # ``onlineValidation`` comes only when the online error is 0 (myscripts_marks.js).
    online = _dict(result.get("onlineValidation")) if not code else {}
    bits = _dict(online.get("itemInfoCheckResult"))
    return _validation_from_bits(
        ki,
        bits,
        ready=ready,
        request_sent=sent,
        item_status=_str(online.get("markOperatorItemStatus")),
        response_result=_str(online.get("markOperatorResponseResult")),
        driver_error=driver_error,
    )


def _health(
    device: Mapping[str, Any],
    shift: Mapping[str, Any],
    ofd: Mapping[str, Any],
    fn_info: Mapping[str, Any],
) -> FiscalHealth:
    """Fiscal health from the status answers (domain.md §7.8; the driver's scripts
    ``json_getFnInfo.js``: ``fnInfo.validityDate``; ``json_ofdExchangeStatus.js``:
    ``status.notSentFirstDocDateTime``; ``json_getShiftStatus.js``: ``expiredTime``, the end
    of the shift's 24 hours). Ages are counted from the device's ``currentDateTime`` when it
    sends one, else from this host's clock."""
    now = _moment(device.get("currentDateTime")) or datetime.now(UTC)
    valid_until = _str(fn_info.get("validityDate"))
    valid = _moment(valid_until)
    days_left = None if valid is None else math.floor((valid - now).total_seconds() / 86400)
    unsent = read_int(ofd.get("notSentCount"), lo=0)
    oldest_text = _str(ofd.get("notSentFirstDocDateTime")) if unsent else None
    oldest = _moment(oldest_text)
    oldest_days = None if oldest is None else round((now - oldest).total_seconds() / 86400, 2)
    opened_at = None
    shift_hours = None
    expires = _moment(shift.get("expiredTime"))
    if expires is not None and shift.get("state") in ("opened", "expired"):
        opened = expires - timedelta(hours=SHIFT_LIMIT_HOURS)
        opened_at = opened.isoformat(timespec="seconds")
        shift_hours = round((now - opened).total_seconds() / 3600, 2)
    return FiscalHealth(
        fn_valid_until=valid_until,
        fn_days_left=days_left,
        unsent_oldest=oldest_text if oldest is not None else None,
        unsent_oldest_days=oldest_days,
        shift_opened_at=opened_at,
        shift_hours=shift_hours,
    )


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 date-time from the device (no zone: taken as UTC, as the scripts'
    ``dateToIsoString`` always writes one); None when it is not one."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _device_error(task_type: str, outcome: TaskOutcome, mutating: bool) -> Exception:
    code = outcome.error_code
    text = f"ATOL {task_type}: error {code}: {outcome.error_description}".strip()
    if code in proto.NOT_EXECUTED_CODES:
        return PrinterUnavailable(text, "printer-unavailable", code)
    if code in proto.CUT_OFF_CODES or (code is None and outcome.status not in FINAL_STATUSES):
        if mutating:
            return OutcomeUnknown(text, "outcome-unknown", code)
        return PrinterUnavailable(text, "printer-unavailable", code)
    fault = FAULT_TYPES.get(code, PrinterFault) if code is not None else PrinterFault
    return fault(text, proto.error_reason(code), code)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = [
    "AtolLibPrinter",
    "AtolPrinter",
    "AtolWebPrinter",
    "LibfptrTransport",
    "TaskOutcome",
    "Transport",
    "WebRequestsTransport",
    "cashier_fields",
    "derive_op_id",
    "position_item",
    "receipt_task",
]
