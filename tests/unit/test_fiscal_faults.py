"""The refusals the sale session acts on have types of their own: the ATOL backend maps its
error numbers to them, so the session decides on kinds of fault and knows no device number.
The device is the virtual ККТ, in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from markd.errors import PrinterFault, PrinterUnavailable
from markd.fiscal import atol_protocol as proto
from markd.fiscal.atol import FAULT_TYPES, TaskOutcome, _device_error
from markd.fiscal.base import (
    FiscalPrinter,
    NoReceiptOpen,
    NoValidationRunning,
    ReceiptAlreadyOpen,
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
