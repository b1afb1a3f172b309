"""The Shtrih-M printer's command sequences, against a small device model written here.

:class:`FakeKkt` is a :class:`~markd.fiscal.shtrih.link.Port` that speaks protocol 1 at the
byte level and answers the commands a sale uses from a few fields of state. It parses frames
with its own few lines (no code of the backend), records every command it ran, and lets a test
change its answers (a registration, a refusal, a code the ККТ checks by itself while binding).
The order of the commands is the vendor's (``fsOperationReceipt_FFD_1_2``): check and accept
each code, then open, the cashier, per position the operation, its 1260 and the binding,
then close.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from markd.errors import PrinterFault
from markd.fiscal.base import (
    MarkNotValidated,
    PrinterSettings,
    ValidationAlreadyRunning,
    new_op_id,
    parse_printer_url,
)
from markd.fiscal.model import (
    IndustryTags,
    MarkedItem,
    Position,
    ReceiptAttributes,
    ReceiptResult,
)
from markd.fiscal.shtrih.printer import ShtrihPrinter
from markd.receipts import Payment
from shtrih_helpers import KI, KM, NOW, FakeKkt, u


@pytest.fixture
def kkt() -> FakeKkt:
    return FakeKkt()


def printer_for(kkt: FakeKkt, open_first: str = "1", **receipt: str) -> ShtrihPrinter:
    settings = PrinterSettings(receipt=ReceiptAttributes(**receipt))
    url = parse_printer_url(f"shtrih://fake?timeout_ms=50&open_first={open_first}")
    return ShtrihPrinter(url, settings, port=kkt)


def position() -> Position:
    return Position(
        "Кроссовки",
        8990,
        tax="vat20",
        mark=MarkedItem(km=KM, ki=KI, planned_status=1, industry=IndustryTags(tag1265="UUID=1")),
    )


def sale(printer: ShtrihPrinter) -> ReceiptResult:
    check = printer.check_code(new_op_id(), KM, KI, 1)
    assert check.accepted, check.reason
    printer.open_receipt(new_op_id())
    plain = position()
    assert plain.mark is not None
    marked = replace(plain, mark=replace(plain.mark, validation=check.validation))
    printer.add_position(new_op_id(), marked)
    return printer.close_receipt(new_op_id(), [Payment(8990)])


def fiscal_commands(kkt: FakeKkt) -> list[int]:
    """The log without the readings."""
    readings = {0x11, 0xFC, 0xFF01, 0xFF03, 0xFF39, 0xFF40, 0xFF09, 0xFF0A}
    return [c for c in kkt.log if c not in readings]


def test_a_marked_sale_follows_the_vendor_order(kkt: FakeKkt) -> None:
    printer = printer_for(kkt, cashier_name="Иванова", cashier_inn="500100732259")

    result = sale(printer)

    assert fiscal_commands(kkt) == [
        0xFF61, 0xFF69,  # check, accept
        0x8D, 0xFF0C, 0xFF0C,  # open, 1021, 1203
        0xFF46, 0xFF4D, 0xFF67,  # operation, 1260, bind after the tags
        0xFF45,
    ]  # fmt: skip
    assert result.document_number == 41 and result.fiscal_sign == str(0xDEADBEEF)
    assert result.datetime == NOW.isoformat()
    close = kkt.data[kkt.log.index(0xFF45)]
    assert close[4 + 5 : 4 + 10] == u(8990, 5)  # electronic: slot 2
    assert close[4 + 80 + 1 + 30] == 0x01  # ОСН, the only system registered
    accept = kkt.data[kkt.log.index(0xFF69)]
    assert accept == b"\x1e\x00\x00\x00\x01"


@pytest.mark.parametrize("open_first", ["1", "0"])
def test_a_code_not_accepted_is_refused_before_anything_is_registered(
    kkt: FakeKkt, open_first: str
) -> None:
    printer = printer_for(kkt, open_first)
    printer.open_receipt(new_op_id())
    printer.add_position(new_op_id(), position())

    with pytest.raises(MarkNotValidated):
        printer.close_receipt(new_op_id(), [Payment(8990)])

    assert 0xFF46 not in kkt.log and 0xFF67 not in kkt.log
    # Opened ahead (the vendor's order) the receipt waits for its codes; otherwise none.
    assert (0x8D in kkt.log) == (open_first == "1")


def test_a_code_the_kkt_checks_while_binding_cancels_the_receipt(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    kkt.bind_checks_itself = True

    with pytest.raises(MarkNotValidated):
        sale(printer)

    assert fiscal_commands(kkt)[-2:] == [0xFF67, 0x88]
    assert kkt.mode == 2 and 0xFF45 not in kkt.log
    kkt.bind_checks_itself = False
    # The codes went with the receipt: validated again before the next try.
    with pytest.raises(MarkNotValidated):
        printer.close_receipt(new_op_id(), [Payment(8990)])
    assert printer.check_code(new_op_id(), KM, KI, 1).accepted
    assert printer.close_receipt(new_op_id(), [Payment(8990)]).document_number == 41


@pytest.mark.parametrize("open_first", ["1", "0"])
def test_a_taxation_system_not_registered_is_refused_before_printing(
    kkt: FakeKkt, open_first: str
) -> None:
    printer = printer_for(kkt, open_first, taxation_type="patent")

    with pytest.raises(PrinterFault) as err:
        sale(printer)

    assert err.value.reason == "bad-taxation-type"
    assert 0xFF46 not in kkt.log and kkt.mode == 2  # nothing registered, nothing left open
    assert (0x8D in kkt.log) == (open_first == "1")  # opened ahead, then cancelled
    printer.settings = PrinterSettings(receipt=ReceiptAttributes("osn"))
    with pytest.raises(MarkNotValidated):
        printer.close_receipt(new_op_id(), [Payment(8990)])


def test_several_registered_systems_need_one_named(kkt: FakeKkt) -> None:
    kkt.taxation = 0x21  # ОСН and ПСН
    with pytest.raises(PrinterFault) as err:
        sale(printer_for(kkt))
    assert err.value.reason == "bad-taxation-type"

    kkt.log.clear()
    kkt.data.clear()
    sale(printer_for(kkt, taxation_type="patent"))
    assert kkt.data[kkt.log.index(0xFF45)][4 + 80 + 1 + 30] == 32


def test_a_receipt_left_open_on_the_device_is_cancelled_first(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    check = printer.check_code(new_op_id(), KM, KI, 1)
    assert check.accepted
    kkt.mode = 8
    printer.open_receipt(new_op_id())
    printer.add_position(new_op_id(), position())

    printer.close_receipt(new_op_id(), [Payment(8990)])

    # Cancelled, then the ФН asked which accepted codes it still holds (FF70), then opened.
    assert fiscal_commands(kkt)[2:5] == [0x88, 0xFF70, 0x8D]


def test_a_refused_close_cancels_the_receipt_and_forgets_the_codes(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    kkt.refuse[0xFF45] = 0x6B  # no paper

    with pytest.raises(PrinterFault) as err:
        sale(printer)

    assert err.value.reason == "paper-out" and err.value.device_code == 0x6B
    assert fiscal_commands(kkt)[-1] == 0x88 and kkt.mode == 2
    assert printer.receipt_kind == "sell"  # the session may close again
    with pytest.raises(MarkNotValidated):
        printer.close_receipt(new_op_id(), [Payment(8990)])


def test_a_begin_refused_while_a_check_waits_is_cancelled_and_begun_again(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    kkt.refuse[0xFF61] = 0x02  # the ФН: wrong state (a result waits for FF69)

    check = printer.check_code(new_op_id(), KM, KI, 1)

    assert check.accepted
    assert fiscal_commands(kkt) == [0xFF61, 0xFF69, 0xFF61, 0xFF69]
    assert kkt.data[1][-1] == 0 and kkt.data[3][-1] == 1  # reject, then accept


def test_a_refusal_that_outlasts_the_cancel_is_the_device_s_own_fault(kkt: FakeKkt) -> None:
    """0x02 (the ФН's wrong state) is taken for a check left waiting only once: refused again
    right after that check was rejected, it is the ФН's own fault, raised as such."""
    printer = printer_for(kkt)
    kkt.refuse_always[0xFF61] = 0x02

    with pytest.raises(PrinterFault) as err:
        printer.check_code(new_op_id(), KM, KI, 1)

    assert not isinstance(err.value, ValidationAlreadyRunning)
    assert err.value.device_code == 0x02 and err.value.reason != "validation-running"
    assert fiscal_commands(kkt) == [0xFF61, 0xFF69, 0xFF61]  # begun, rejected, begun once more


def test_a_second_refusal_is_raised(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    printer.begin_validation(new_op_id(), KM, KI, 1)
    kkt.refuse[0xFF61] = 0xA1

    with pytest.raises(ValidationAlreadyRunning):
        printer._begin_validation(new_op_id(), KM, KI, 1)


def test_validation_results(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    kkt.check_answer = b"\x03\x00\x02\x01\xff"  # the ОИСМ did not answer

    validation = printer.validate_code(new_op_id(), KM, KI, 1)

    assert validation.ready and not validation.oism_checked
    assert validation.driver_error is not None and "responseTimeout" in validation.driver_error
    assert validation.fn_error_reason == "checked"
    printer.cancel_validation(new_op_id())
    printer.clear_validations(new_op_id())
    assert kkt.data[-1][-1] == 2  # FF69 2 clears


def test_status_reads_the_device_and_its_health(kkt: FakeKkt) -> None:
    status = printer_for(kkt).status()

    assert status.shift_state == "opened" and status.shift_number == 12
    assert status.last_document_number == 40 and status.receipt_open is False
    assert status.paper_present and status.fn_state == "ok" and status.fn_fiscal
    assert status.fn_warnings == ("memoryOverflow",)
    assert status.model == "ШТРИХ-М-01Ф"
    assert status.unsent_documents == 2
    health = status.health
    assert health.fn_valid_until == "2027-01-31" and health.fn_days_left == 56
    assert health.unsent_oldest_days is not None and 3.9 < health.unsent_oldest_days < 4.1
    assert health.shift_opened_at == (NOW - timedelta(hours=5)).isoformat()
    assert health.shift_hours == 5.0
    assert status.raw["firmware_version"] == "A.4" and status.raw["firmware_build"] == 3098


def test_shift_reports_give_numbers_and_documents(kkt: FakeKkt) -> None:
    printer = printer_for(kkt, cashier_name="Иванова")

    closed = printer.close_shift(new_op_id())
    opened = printer.open_shift(new_op_id())

    assert (closed.number, closed.document_number) == (12, 41)
    assert (opened.number, opened.document_number) == (13, 42)
    assert fiscal_commands(kkt) == [0xFF0C, 0x41, 0xFF0C, 0xE0]
    assert printer.status().health.shift_opened_at == NOW.isoformat()


def test_a_document_is_read_by_number(kkt: FakeKkt) -> None:
    found = printer_for(kkt).document(39)

    assert found.type_name == "receipt" and found.number == 39 and found.total == 100


def test_the_shift_opening_is_found_once_then_read_again(kkt: FakeKkt) -> None:
    printer = printer_for(kkt)
    printer.status()
    kkt.log.clear()
    earlier = NOW - timedelta(hours=23, minutes=30)
    kkt.documents[33] = b"\x02\x00" + kkt._stamp(earlier) + u(33, 4) + u(1, 4) + u(12, 2)

    health = printer.status().health

    assert kkt.log.count(0xFF0A) == 1  # only the opening report, read again
    assert health.shift_opened_at == earlier.isoformat() and health.shift_hours == 23.5
