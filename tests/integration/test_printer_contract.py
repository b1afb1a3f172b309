"""The printer contract: one test class run unchanged against every backend.

By default it runs against ``emulator://`` (the virtual ККТ in process), ``atol-web://`` (the
``atol`` backend over real HTTP to the ``atol_web`` emulator) and ``shtrih://`` (protocol 1 to
the Shtrih emulator, over a pty and over loopback TCP). With ``--hil-printer URL``
(repeatable) it also runs against that printer — a real ККТ: use a test device, since the
receipts are real fiscal documents. Tests that need to inject faults into the device run on the
emulators only. A marked sale on real hardware needs a real code in ``MARKD_HIL_CODE`` (GS as
``<GS>``); without it those tests skip there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.errors import PrinterFault, PrinterUnavailable
from markd.fiscal.base import (
    FiscalPrinter,
    MarkNotValidated,
    PrinterSettings,
    new_op_id,
    open_printer,
)
from markd.fiscal.model import (
    HealthThresholds,
    IndustryTags,
    MarkedItem,
    Position,
    ReceiptAttributes,
)
from markd.receipts import Payment
from markd.testing import fiscal as testing

TAG1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        urls = metafunc.config.getoption("--hil-printer")
        params = [
            "emulator",
            "atol-web",
            "shtrih-pty",
            "shtrih-tcp",
            "shtrih-check-first",
            *(f"hil:{url}" for url in urls),
        ]
        metafunc.parametrize("backend", params)


#: The device's own numbers for the refusals the suite provokes, by family of devices: ATOL's
#: driver errors (44 no paper, 420 code not checked, 422 not in the table, 143 taxation
#: system) and Shtrih's (0x6B no paper; a code markd did not accept and a taxation system the
#: device is not registered with are refused by markd's backend itself, before the device is
#: asked: no device number).
DEVICE_CODES: dict[str, dict[str, tuple[int | None, ...]]] = {
    "atol": {
        "paper-out": (44,),
        "mark-not-checked": (420,),
        "mark-not-in-table": (420, 422),
        "bad-taxation-type": (143,),
    },
    "shtrih": {
        "paper-out": (0x6B,),
        "mark-not-checked": (None,),
        "mark-not-in-table": (None,),
        "bad-taxation-type": (None,),
    },
}


@dataclass
class Bench:
    printer: FiscalPrinter
    #: The virtual ККТ behind the printer, None on real hardware.
    kkt: Any

    @property
    def emulated(self) -> bool:
        return self.kkt is not None

    @property
    def family(self) -> str:
        return "shtrih" if self.printer.url.scheme == "shtrih" else "atol"

    def device_codes(self, reason: str) -> tuple[int | None, ...]:
        """The device numbers a refusal with ``reason`` may carry on this bench's device."""
        return DEVICE_CODES[self.family][reason]

    def needs_emulator(self) -> None:
        if not self.emulated:
            pytest.skip("needs fault injection into the device")

    def code(self) -> str:
        if self.emulated:
            return testing.SHOES
        text = os.environ.get("MARKD_HIL_CODE")
        if not text:
            pytest.skip("set MARKD_HIL_CODE to a real code for a marked sale on hardware")
        return text.replace("<GS>", "\x1d")


@pytest.fixture
def bench(backend: str, tmp_path: Path) -> Iterator[Bench]:
    if backend == "emulator":
        with testing.emulator_printer(tmp_path / "kkt") as printer:
            yield Bench(printer, printer.kkt)  # type: ignore[attr-defined]
    elif backend == "atol-web":
        with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
            yield Bench(printer, server.kkt)
    elif backend == "shtrih-check-first":
        # The codes checked as the units come, the receipt opened on the device at close.
        with testing.shtrih_printer(tmp_path / "kkt", query="open_first=0") as (printer, kkt):
            yield Bench(printer, kkt)
    elif backend.startswith("shtrih-"):
        transport = backend.removeprefix("shtrih-")
        with testing.shtrih_printer(tmp_path / "kkt", transport=transport) as (printer, kkt):
            yield Bench(printer, kkt)
    else:
        with open_printer(backend.removeprefix("hil:"), PrinterSettings()) as printer:
            yield Bench(printer, None)


def marked_position(km: str, validation: Any, price: int = 8990) -> Position:
    code = parse(km)
    return Position(
        "Кроссовки",
        price,
        tax="vat20",
        mark=MarkedItem(
            km=km,
            ki=code.ki,
            planned_status=1,
            industry=IndustryTags(tag1265=TAG1265),
            validation=validation,
        ),
    )


def sell_marked(bench: Bench) -> tuple[Any, Any]:
    printer = bench.printer
    printer.ensure_shift(new_op_id())
    km = bench.code()
    code = parse(km)
    check = printer.check_code(new_op_id(), km, code.ki, 1)
    assert check.validation.ready
    assert check.accepted, check.reason
    printer.open_receipt(new_op_id())
    printer.add_position(new_op_id(), marked_position(km, check.validation))
    before = printer.status().last_document_number
    result = printer.close_receipt(new_op_id(), [Payment(8990)])
    return result, before


class TestPrinterContract:
    def test_status_describes_the_device(self, bench: Bench) -> None:
        status = bench.printer.status()

        assert status.shift_state in ("closed", "opened", "expired")
        assert status.last_document_number >= 0
        assert isinstance(status.paper_present, bool)
        assert status.fn_state in ("ok", "error")
        json.dumps(status.record())  # the JSON `markctl printer status --json` prints

    def test_a_shift_is_opened_when_needed(self, bench: Bench) -> None:
        printer = bench.printer
        printer.ensure_shift(new_op_id())

        assert printer.status().shift_state == "opened"
        assert printer.ensure_shift(new_op_id()) is None  # already open: nothing done

    def test_shift_close_and_open_are_fiscal_documents(self, bench: Bench) -> None:
        bench.needs_emulator()  # a Z-report on real hardware is a technician's decision
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        before = printer.status()

        closed = printer.close_shift(new_op_id())
        opened = printer.open_shift(new_op_id())

        assert closed.document_number == before.last_document_number + 1
        assert opened.document_number == before.last_document_number + 2
        assert opened.number == before.shift_number + 1

    def test_a_marked_unit_is_validated_accepted_and_registered(self, bench: Bench) -> None:
        result, before = sell_marked(bench)

        assert result.document_number == before + 1
        assert bench.printer.status().last_document_number == result.document_number
        assert bench.printer.receipt_kind is None
        if bench.emulated:
            document = bench.kkt.receipts()[-1]
            assert document["number"] == result.document_number
            position = document["positions"][0]
            assert position["ki"] == parse(testing.SHOES).ki
            assert position["tags"]["2003"] == 1 and position["tags"]["2102"] == 0
            assert position["tags"]["2106"] == 15  # ФН checked, ОИСМ: status correct
            assert position["tags"]["1260"] == {
                "1262": "030",
                "1263": "26.03.2022",
                "1264": "477",
                "1265": TAG1265,
            }

    def test_a_declined_code_cannot_be_registered(self, bench: Bench) -> None:
        bench.needs_emulator()
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        km = testing.WATER
        op = new_op_id()
        validation = printer.validate_code(op, km, parse(km).ki, 1)
        printer.decline_code(new_op_id())
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked_position(km, validation))

        with pytest.raises(PrinterFault) as err:
            printer.close_receipt(new_op_id(), [Payment(8990)])

        assert err.value.reason == "mark-not-checked"

    def test_a_validation_can_be_cancelled_and_begun_again(self, bench: Bench) -> None:
        printer = bench.printer
        km = bench.code()
        ki = parse(km).ki
        printer.begin_validation(new_op_id(), km, ki, 1)
        printer.cancel_validation(new_op_id())

        again = printer.validate_code(new_op_id(), km, ki, 1)

        assert again.ready
        printer.decline_code(new_op_id())
        printer.clear_validations(new_op_id())

    def test_cancelling_when_nothing_is_open_is_harmless(self, bench: Bench) -> None:
        bench.printer.cancel_receipt(new_op_id())

        assert bench.printer.receipt_kind is None

    def test_a_receipt_repeated_with_its_id_is_not_registered_twice(self, bench: Bench) -> None:
        if bench.printer.url.scheme == "atol-lib":
            pytest.skip("libfptr keeps no request table: recovery uses the document counter")
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        km = bench.code()
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        position = marked_position(km, check.validation)
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), position)
        op = new_op_id()
        first = printer.close_receipt(op, [Payment(8990)])

        printer.restore_receipt("sell", [position])  # as after a crash: sent again
        second = printer.close_receipt(op, [Payment(8990)])
        finding, found = printer.find_receipt(op)

        assert second.document_number == first.document_number
        assert printer.status().last_document_number == first.document_number
        assert finding == "done" and found is not None
        assert found.document_number == first.document_number

    def test_no_paper_refuses_the_receipt_and_keeps_it_open(self, bench: Bench) -> None:
        bench.needs_emulator()
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked_position(km, check.validation))
        bench.kkt.set_faults(paper_out=True)

        with pytest.raises(PrinterFault) as err:
            printer.close_receipt(new_op_id(), [Payment(8990)])
        assert err.value.reason == "paper-out"
        assert err.value.device_code in bench.device_codes("paper-out")
        assert printer.status().problems() == ["paper-out"]
        assert printer.receipt_kind == "sell"

        bench.kkt.set_faults(paper_out=None)
        # The driver cancelled the receipt and cleared the accepted codes: the same
        # positions are refused, and the code must be validated again (domain.md §7.4a).
        with pytest.raises(MarkNotValidated) as again:
            printer.close_receipt(new_op_id(), [Payment(8990)])
        assert again.value.device_code in bench.device_codes("mark-not-checked")
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.restore_receipt("sell", [marked_position(km, check.validation)])
        result = printer.close_receipt(new_op_id(), [Payment(8990)])
        assert bench.kkt.receipts()[-1]["number"] == result.document_number
        assert len(bench.kkt.receipts()) == 1

    def test_a_receipt_left_open_is_cancelled_before_the_next_one(self, bench: Bench) -> None:
        bench.needs_emulator()
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        bench.kkt.set_faults(gone_in_receipt="open")  # a receipt opened, then the link lost
        ahead = bool(getattr(printer, "open_first", False))
        if ahead:
            # The vendor's order (shtrih, unless ?open_first=0): the receipt is opened on the
            # device when markd starts it, so that is where the link is lost.
            with pytest.raises(PrinterUnavailable):
                printer.open_receipt(new_op_id())
        else:
            printer.open_receipt(new_op_id())
            printer.add_position(new_op_id(), marked_position(km, check.validation))
            with pytest.raises(PrinterUnavailable):
                printer.close_receipt(new_op_id(), [Payment(8990)])
        bench.kkt.set_faults(gone=None)
        assert printer.status().receipt_open is True
        if ahead:
            printer.open_receipt(new_op_id())  # the leftover cancelled, a receipt opened anew
            printer.add_position(new_op_id(), marked_position(km, check.validation))

        # No refusal with 82: the sell cancels the leftover first and keeps the codes.
        try:
            result = printer.close_receipt(new_op_id(), [Payment(8990)])
        except MarkNotValidated:
            # Shtrih: whether cancelling a receipt empties the ФН's table of accepted codes
            # is not published. The backend cancels the leftover, asks the ФН (FF70) and,
            # with the codes gone, refuses before registering anything: validate again.
            assert bench.family == "shtrih"
            assert bench.kkt.receipts() == []
            assert printer.status().receipt_open is ahead  # opened ahead: it stays for them
            check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
            printer.restore_receipt("sell", [marked_position(km, check.validation)])
            result = printer.close_receipt(new_op_id(), [Payment(8990)])

        assert [r["number"] for r in bench.kkt.receipts()] == [result.document_number]
        assert printer.status().receipt_open is False

    def test_shift_answers_carry_the_shift_number(self, bench: Bench) -> None:
        if not bench.emulated and os.environ.get("MARKD_HIL_ALLOW_Z_REPORT") != "1":
            # Closing the shift prints a Z-report on a real ККТ: only when the bench says so.
            pytest.skip("closes the shift (a Z-report): set MARKD_HIL_ALLOW_Z_REPORT=1")
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        closed = printer.close_shift(new_op_id())
        opened = printer.open_shift(new_op_id())

        assert opened.number == closed.number + 1 and closed.number > 0
        assert opened.document_number == closed.document_number + 1  # type: ignore[operator]

    def test_a_validation_left_running_is_cancelled_and_begun_again(self, bench: Bench) -> None:
        bench.needs_emulator()
        bench.kkt.set_faults(begin_busy=True)
        km = testing.SHOES

        check = bench.printer.check_code(new_op_id(), km, parse(km).ki, 1)

        assert check.accepted and check.validation.fn_checked
        assert check.validation.fn_error_reason == "checked"

    def test_an_oism_without_answer_names_the_reason(self, bench: Bench) -> None:
        bench.needs_emulator()
        bench.kkt.set_faults(ism="timeout")
        km = testing.SHOES

        validation = bench.printer.validate_code(new_op_id(), km, parse(km).ki, 1)
        bench.printer.cancel_validation(new_op_id())

        assert validation.ready and not validation.oism_checked
        assert validation.driver_error is not None and "responseTimeout" in validation.driver_error

    def test_a_device_that_is_gone_is_unavailable(self, bench: Bench) -> None:
        bench.needs_emulator()
        bench.kkt.set_faults(gone=True)

        with pytest.raises(PrinterUnavailable) as err:
            bench.printer.status()

        assert err.value.reason == "printer-unavailable"

    def test_fn_error_refuses_validation(self, bench: Bench) -> None:
        bench.needs_emulator()
        bench.kkt.set_faults(fn_error=True)

        with pytest.raises(PrinterFault) as err:
            bench.printer.begin_validation(new_op_id(), testing.WATER, "ki", 1)

        assert err.value.reason == "fn-error"
        assert bench.printer.status().fn_state == "error"

    def test_the_receipt_carries_the_taxation_system_and_the_cashier(self, bench: Bench) -> None:
        if bench.emulated:
            attributes = ReceiptAttributes("usnIncome", "Иванова А. С.", "500100732259")
            bench.kkt.set_faults(taxation_types=["osn", "usnIncome"])
        else:
            # On a bench: MARKD_HIL_TAXATION (one the ККТ is registered with), and the
            # cashier in MARKD_HIL_CASHIER / MARKD_HIL_CASHIER_INN.
            taxation = os.environ.get("MARKD_HIL_TAXATION")
            if not taxation:
                pytest.skip("set MARKD_HIL_TAXATION for a receipt with its taxation system")
            attributes = ReceiptAttributes(
                taxation,
                os.environ.get("MARKD_HIL_CASHIER") or None,
                os.environ.get("MARKD_HIL_CASHIER_INN") or None,
            )
        bench.printer.settings = replace(bench.printer.settings, receipt=attributes)

        result, before = sell_marked(bench)

        assert result.document_number == before + 1
        if bench.emulated:
            document = bench.kkt.receipts()[-1]
            assert document["taxation_type"] == "usnIncome" and document["tags"]["1055"] == 2
            assert document["cashier"] == {"1021": "Иванова А. С.", "1203": "500100732259"}
            shift = bench.printer.close_shift(new_op_id())
            report = bench.kkt.documents()[-1]
            assert report["number"] == shift.document_number
            assert report["cashier"]["1021"] == "Иванова А. С."

    def test_a_taxation_system_the_device_does_not_know_is_refused(self, bench: Bench) -> None:
        bench.needs_emulator()
        bench.kkt.set_faults(taxation_types=["osn", "patent"])  # several: one must be named
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked_position(km, check.validation))

        with pytest.raises(PrinterFault) as err:
            printer.close_receipt(new_op_id(), [Payment(8990)])

        assert err.value.reason == "bad-taxation-type"
        assert err.value.device_code in bench.device_codes("bad-taxation-type")
        assert bench.kkt.receipts() == []

    def test_status_carries_the_fiscal_health(self, bench: Bench) -> None:
        printer = bench.printer
        printer.ensure_shift(new_op_id())

        health = printer.status().health

        assert health.shift_opened_at is not None and health.shift_hours is not None
        assert 0 <= health.shift_hours < 24
        if health.fn_days_left is not None:
            assert health.fn_valid_until is not None
        json.dumps(printer.status().record()["health"])

    def test_fiscal_health_warnings_follow_the_thresholds(self, bench: Bench) -> None:
        bench.needs_emulator()
        printer = bench.printer
        printer.ensure_shift(new_op_id())
        assert printer.status().health_warnings() == []
        bench.kkt.set_faults(fn_days_left=12, unsent_age_days=4, shift_age_hours=23.5)

        status = printer.status()

        assert status.health.fn_days_left in (11, 12)
        assert status.health.unsent_oldest_days is not None
        assert 3.9 < status.health.unsent_oldest_days < 4.1
        assert status.health.shift_hours is not None and 23.4 < status.health.shift_hours < 23.6
        assert status.health_warnings() == ["fn-expiring", "unsent-old", "shift-long"]
        relaxed = HealthThresholds(fn_days=10, unsent_days=5, shift_hours=24)
        assert status.health_warnings(relaxed) == []

    def test_the_fn_s_own_warnings_are_named(self, bench: Bench) -> None:
        bench.needs_emulator()
        printer = bench.printer
        named = {}
        for warning in ("memoryOverflow", "resourceExhausted", "needReplacement", "criticalError"):
            bench.kkt.set_faults(fn_warnings=[warning])
            status = printer.status()
            assert warning in status.fn_warnings
            named[warning] = status.health_warnings()
        bench.kkt.set_faults(fn_warnings=None)

        assert named == {
            "memoryOverflow": ["fn-memory-full"],
            "resourceExhausted": ["fn-resource-exhausted"],
            "needReplacement": ["fn-needs-replacement"],
            "criticalError": ["fn-critical-error"],
        }
        assert printer.status().health_warnings() == []


class TestPrinterContractOnItsOwn:
    """Behaviours a real ККТ shows by itself (issue 13 item 8): no fault injection, so each
    runs unchanged on every backend, ``--hil-printer`` included."""

    def test_a_second_begin_is_refused_then_cancelled_and_begun_again(self, bench: Bench) -> None:
        printer = bench.printer
        km = bench.code()
        ki = parse(km).ki
        printer.begin_validation(new_op_id(), km, ki, 1)  # left running, not finished

        # The device answers 401 to this begin; the shim cancels and begins once more.
        again = printer.validate_code(new_op_id(), km, ki, 1)

        assert again.ready and again.ki == ki
        assert again.fn_error_reason is not None
        printer.decline_code(new_op_id())
        printer.clear_validations(new_op_id())

    def test_a_validation_result_has_the_published_shape(self, bench: Bench) -> None:
        printer = bench.printer
        km = bench.code()

        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        validation = check.validation

        # myscripts_marks.js: fmCheckErrorReason always there, one of the published names.
        assert validation.fn_error_reason in (
            "checked",
            "typeIncorrect",
            "noKeys",
            "noGS1",
            "other",
        )
        assert (validation.fn_error_reason == "checked") == validation.fn_checked
        # onlineValidation only when the online error is 0, otherwise driverError names it.
        if validation.driver_error is not None:
            assert not validation.oism_checked and validation.item_status is None
        if validation.oism_checked:
            assert validation.driver_error is None and validation.response_result is not None
        printer.clear_validations(new_op_id())

    def test_a_sell_the_device_refuses_needs_its_codes_validated_again(self, bench: Bench) -> None:
        if bench.emulated:
            bench.kkt.set_faults(taxation_types=["osn"])  # the device's registration
            refused, good = "patent", None
        else:
            # On a bench: a taxation system the ККТ is NOT registered with, and (when it is
            # registered with several) one it is, in MARKD_HIL_TAXATION.
            refused = os.environ.get("MARKD_HIL_UNREGISTERED_TAXATION")
            if not refused:
                pytest.skip("set MARKD_HIL_UNREGISTERED_TAXATION for a sell the ККТ refuses")
            good = os.environ.get("MARKD_HIL_TAXATION") or None
        printer = bench.printer
        settings = printer.settings
        printer.ensure_shift(new_op_id())
        km = bench.code()
        ki = parse(km).ki
        check = printer.check_code(new_op_id(), km, ki, 1)
        assert check.accepted, check.reason
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked_position(km, check.validation))
        before = printer.status().last_document_number
        printer.settings = replace(settings, receipt=ReceiptAttributes(refused))

        with pytest.raises(PrinterFault) as err:
            printer.close_receipt(new_op_id(), [Payment(8990)])

        assert err.value.reason == "bad-taxation-type"
        assert err.value.device_code in bench.device_codes("bad-taxation-type")
        assert printer.status().receipt_open is False  # the driver cancelled it
        assert printer.status().last_document_number == before
        printer.settings = replace(settings, receipt=ReceiptAttributes(good))
        # The accepted codes went with it: the same positions are refused, with the reason.
        with pytest.raises(MarkNotValidated) as again:
            printer.close_receipt(new_op_id(), [Payment(8990)])
        assert again.value.device_code in bench.device_codes("mark-not-in-table")
        assert printer.status().last_document_number == before

        check = printer.check_code(new_op_id(), km, ki, 1)
        assert check.accepted, check.reason
        printer.restore_receipt("sell", [marked_position(km, check.validation)])
        result = printer.close_receipt(new_op_id(), [Payment(8990)])

        assert result.document_number == before + 1
        assert printer.status().last_document_number == before + 1
        if bench.emulated:
            assert [r["number"] for r in bench.kkt.receipts()] == [result.document_number]
