"""The refusals the sale session acts on have types of their own: the ATOL backend maps its
error numbers to them, so the session decides on kinds of fault and knows no device number.
The device is the virtual ККТ, in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markd.errors import PrinterFault, PrinterUnavailable
from markd.fiscal import atol_protocol as proto
from markd.fiscal.atol import FAULT_TYPES, TaskOutcome, _device_error
from markd.fiscal.base import (
    FiscalPrinter,
    MarkCheckInProgress,
    MarkNotValidated,
    NoReceiptOpen,
    NoValidationRunning,
    OfdExchangeFault,
    OismTimeout,
    ReceiptAlreadyOpen,
    ReceiptParseError,
    ValidationAlreadyRunning,
    new_op_id,
)
from markd.fiscal.journal import SessionJournal
from markd.fiscal.steps import SaleOptions, SessionSteps
from markd.testing import fiscal as testing


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[FiscalPrinter]:
    with testing.emulator_printer(tmp_path / "kkt") as device:
        yield device


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        (proto.ERROR_DENIED_IN_OPENED_RECEIPT, ReceiptAlreadyOpen),
        (proto.ERROR_NEED_CANCEL_DOCUMENT, ReceiptAlreadyOpen),
        (proto.ERROR_DENIED_IN_CLOSED_RECEIPT, NoReceiptOpen),
        (proto.ERROR_INVALID_STATE, NoValidationRunning),
        (proto.ERROR_NO_PAPER, PrinterFault),
    ],
)
def test_atol_error_numbers_become_typed_faults_with_their_reason_and_number(
    code: int, fault: type[PrinterFault]
) -> None:
    error = _device_error("cancelReceipt", TaskOutcome("error", {}, code, "…"), mutating=True)
    assert type(error) is fault
    assert (error.reason, error.device_code) == (proto.error_reason(code), code)


def test_only_refusals_are_typed_faults_never_an_unreachable_device() -> None:
    assert all(issubclass(f, PrinterFault) for f in FAULT_TYPES.values())
    error = _device_error("sell", TaskOutcome("error", {}, 2, "нет связи"), mutating=True)
    assert type(error) is PrinterUnavailable


def test_the_virtual_kkt_refusals_arrive_typed(printer: FiscalPrinter) -> None:
    with pytest.raises(NoValidationRunning) as nothing_running:
        printer.decline_code(new_op_id())  # no code is being validated
    assert nothing_running.value.device_code == proto.ERROR_INVALID_STATE
    printer.open_receipt(new_op_id(), "sell")
    with pytest.raises(ReceiptAlreadyOpen):
        printer.open_receipt(new_op_id(), "sell")  # the printer is building one already


async def test_the_session_cleans_up_quietly_where_nothing_is_left_and_says_so_otherwise(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    steps = SessionSteps(
        printer, SessionJournal(tmp_path / "journal"), None, None, None, SaleOptions()
    )
    try:
        # No validation under way: nothing to decline, no problem.
        assert await steps.quietly(printer.decline_code, new_op_id()) is None
        printer.kkt.set_faults(gone=True)  # type: ignore[attr-defined]
        problem = await steps.quietly(printer.decline_code, new_op_id())
    finally:
        steps.shutdown()
    assert problem is not None and problem.startswith("printer-unavailable")


@pytest.mark.parametrize(
    ("code", "fault", "reason"),
    [
        (proto.ERROR_VALIDATION_IN_PROGRESS, ValidationAlreadyRunning, "validation-running"),
        (proto.ERROR_OFD_EXCHANGE, OfdExchangeFault, "ofd-exchange-error"),
        (proto.ERROR_MARK_NOT_CHECKED, MarkNotValidated, "mark-not-checked"),
        (proto.ERROR_MARK_CHECK_TIMEOUT, OismTimeout, "oism-timeout"),
        (proto.ERROR_NO_MARKING_CODE_IN_TABLE, MarkNotValidated, "mark-not-checked"),
        (proto.ERROR_MARK_CHECK_IN_PROGRESS, MarkCheckInProgress, "mark-check-in-progress"),
        (proto.ERROR_RECEIPT_PARSE, ReceiptParseError, "receipt-parse-error"),
    ],
)
def test_marking_errors_of_the_driver_scripts_are_typed(
    code: int, fault: type[PrinterFault], reason: str
) -> None:
    """401, 411, 420–423 and 501 (domain.md §7.4a; the libfptr10 constant lists agree)."""
    error = _device_error("sell", TaskOutcome("error", {}, code, "…"), mutating=True)
    assert type(error) is fault
    assert (error.reason, error.device_code) == (reason, code)
    assert fault.__doc__ and "«" in fault.__doc__  # the driver's Russian text is named


def test_a_status_answer_without_ready_is_an_error(printer: FiscalPrinter) -> None:
    class Failing:
        """The driver's status script when the status call itself fails: {driverError}."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def run(self, op_id: str, tasks: list[dict[str, Any]], *args: Any) -> list[TaskOutcome]:
            if tasks[0]["type"] == "getMarkingCodeValidationStatus":
                driver = {"code": 410, "error": "imcCheckWrongState", "description": "нет"}
                return [TaskOutcome("ready", {"driverError": driver})]
            return self.inner.run(op_id, tasks, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    printer.transport = Failing(printer.transport)  # type: ignore[attr-defined]
    with pytest.raises(NoValidationRunning) as err:
        printer.validation_status(new_op_id(), "ki")
    assert err.value.device_code == 410
