"""The sale session against the virtual ККТ (in process, or over HTTP), a real LMDB store and
the Local Module emulator: units in, receipt out, faults refused per unit, lost answers
reconciled."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from markd.checks.local_module import LocalModuleClient
from markd.codes import parse
from markd.emulators import testing as emulators
from markd.fiscal.base import FiscalPrinter, PrinterSettings
from markd.fiscal.session import SaleOptions, SaleSession
from markd.secrets import Secret
from markd.store import Store
from markd.testing import fiscal as testing

WATER = parse(testing.WATER)
SHOES = parse(testing.SHOES)
DAIRY = parse(testing.DAIRY)
TOBACCO = parse(testing.TOBACCO_PACK)
TAILS = ("938p9E", "91FFD0", "dGVzdHNpZ25hdHVy", "93dGVz", "7Cev")


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[FiscalPrinter]:
    with testing.emulator_printer(tmp_path / "kkt") as device:
        yield device


def make_session(
    printer: FiscalPrinter, tmp_path: Path, store: Any = None, **kw: Any
) -> SaleSession:
    options = kw.pop("options", SaleOptions())
    return SaleSession(
        printer,
        store,
        kw.pop("lm", None),
        tmp_path / "fiscal.journal",
        kw.pop("log", None),
        options,
    )


def journal_events(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "fiscal.journal").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["event"] for line in lines]


async def test_allowed_units_become_one_receipt_with_their_tags(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store, event_log: Any
) -> None:
    session = make_session(printer, tmp_path, tmp_store, log=event_log)
    first = await session.add(testing.allowed(SHOES), SHOES, 459000, "Кроссовки")
    second = await session.add(testing.allowed(WATER, offline=True), WATER, 8990, "Вода")
    outcome = await session.close()

    assert first.added and first.reason == "oism-correct" and first.validation.tag2106 == 15
    assert second.added and second.validation.tag2106 == 12
    assert outcome.status == "closed" and outcome.store_ok is True
    receipt = outcome.receipt
    assert receipt.total_kopecks == 467990
    document = printer.kkt.receipts()[-1]  # type: ignore[attr-defined]
    assert document["number"] == receipt.document_number
    assert [p["ki"] for p in document["positions"]] == [SHOES.ki, WATER.ki]
    assert document["positions"][1]["tags"]["1260"]["1265"].endswith(
        "&Inst=6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10&Ver=2.6.0"
    )
    for code in (SHOES, WATER):
        sold = tmp_store.lookup(code).sold
        assert sold is not None and sold.receipt == receipt.reference
    assert event_log.count("fiscal-unit") == 2 and event_log.count("fiscal-receipt") == 1
    assert not (tmp_path / "fiscal.journal.codes").exists()
    for text in ((tmp_path / "fiscal.journal").read_text(encoding="utf-8"), event_log.text):
        assert SHOES.ki in text and not any(tail in text for tail in TAILS)
    assert session.receipt_id is None


async def test_a_denied_unit_never_reaches_the_kkt(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        session = make_session(printer, tmp_path)
        refused = await session.add(testing.denied(DAIRY), DAIRY, 100, "Молоко")
        added = await session.add(testing.allowed(WATER), WATER, 100, "Вода")
        await session.close()

    assert (refused.status, refused.reason) == ("refused", "blocked-online")
    assert refused.message_ru == "Продажа запрещена" and refused.validation is None
    assert added.added
    bodies = [json.dumps(r.json) for r in server.requests if r.json]
    begins = [b for b in bodies if "beginMarkingCodeValidation" in b]
    assert len(begins) == 1  # only the allowed unit was validated
    assert testing.DAIRY not in "".join(
        bodies
    ) and "MDEwNDY3MDU0MDE3NjA5OTIxNUxwR0t5" not in "".join(bodies)


async def test_a_sale_needs_a_verdict(printer: FiscalPrinter, tmp_path: Path) -> None:
    session = make_session(printer, tmp_path)

    outcome = await session.add(None, WATER, 100, "Вода")

    assert (outcome.status, outcome.reason) == ("refused", "no-verdict")
    assert printer.kkt.state()["validation"] is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("rule", "reason", "tag2106"),
    [
        ({"fn": False}, "fn-crypto-invalid", 13),  # ФН: checked, negative
        ({"oism": "incorrect"}, "oism-status-incorrect", 7),
        ({"oism": "sale-stopped"}, "oism-sale-stopped", 7),
    ],
)
async def test_a_code_the_kkt_rejects_is_declined_and_refused(
    printer: FiscalPrinter, tmp_path: Path, rule: dict[str, Any], reason: str, tag2106: int
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    kkt.set_code(SHOES.ki, **rule)
    session = make_session(printer, tmp_path)

    refused = await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    added = await session.add(testing.allowed(WATER), WATER, 100, "Вода")
    outcome = await session.close()

    assert (refused.status, refused.reason) == ("refused", reason)
    assert refused.validation.tag2106 == tag2106 and refused.message_ru
    assert kkt.state()["validation"] is None  # declined, not left running
    assert [p["ki"] for p in kkt.receipts()[-1]["positions"]] == [WATER.ki]
    assert added.added and outcome.status == "closed"
    assert "unit-refused" in journal_events(tmp_path)


async def test_oism_without_answer_follows_the_policy(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    printer.kkt.set_faults(ism="timeout")  # type: ignore[attr-defined]
    accepting = make_session(printer, tmp_path)
    kept = await accepting.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    await accepting.cancel()
    declining = make_session(printer, tmp_path, options=SaleOptions(on_no_answer="decline"))
    refused = await declining.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")

    assert kept.added and kept.reason == "oism-no-answer" and kept.validation.tag2106 == 3
    assert (refused.status, refused.reason) == ("refused", "oism-no-answer")


async def test_an_offline_kkt_marks_bit_4(printer: FiscalPrinter, tmp_path: Path) -> None:
    printer.kkt.set_faults(ism="offline")  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)

    unit = await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    outcome = await session.close()

    assert unit.added and unit.reason == "fn-offline" and unit.validation.tag2106 == 16 | 3
    assert outcome.receipt.positions[0].mark.validation.offline


async def test_a_validation_that_never_gets_ready_is_cancelled(tmp_path: Path) -> None:
    settings = PrinterSettings(timeout_s=5, validation_timeout_s=0.2, poll_interval_s=0.02)
    with testing.emulator_printer(tmp_path / "kkt", settings) as printer:
        printer.kkt.set_faults(validation_delay_ms=60_000)  # type: ignore[attr-defined]
        session = make_session(printer, tmp_path)

        unit = await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")

        assert (unit.status, unit.reason) == ("refused", "fn-validation-timeout")
        assert printer.kkt.state()["validation"] is None  # type: ignore[attr-defined]


async def test_fn_error_refuses_that_unit_only(printer: FiscalPrinter, tmp_path: Path) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    added = await session.add(testing.allowed(WATER), WATER, 100, "Вода")
    kkt.set_faults(fn_error=True)

    broken = await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(fn_error=None)
    later = await session.add(testing.allowed(TOBACCO), TOBACCO, 100, "Сигареты")
    outcome = await session.close()

    assert added.added and later.added
    assert (broken.status, broken.reason) == ("refused", "fn-error")
    assert [p["ki"] for p in kkt.receipts()[-1]["positions"]] == [WATER.ki, TOBACCO.ki]
    assert outcome.status == "closed"


async def test_printer_down_before_the_receipt_refuses_the_unit(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    printer.kkt.set_faults(gone=True)  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)

    unit = await session.add(testing.allowed(WATER), WATER, 100, "Вода")

    assert (unit.status, unit.reason) == ("refused", "printer-unavailable")
    assert unit.message_ru == "Касса недоступна, продажа невозможна"
    assert session.receipt_id is None


async def test_no_paper_fails_the_close_which_can_be_retried(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path, tmp_store)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(paper_out=True)

    failed = await session.close()
    assert (failed.status, failed.reason) == ("failed", "paper-out")
    assert session.receipt_id == failed.receipt_id and tmp_store.lookup(SHOES).sold is None

    kkt.set_faults(paper_out=None)
    closed = await session.close()

    assert closed.status == "closed" and len(kkt.receipts()) == 1
    assert tmp_store.lookup(SHOES).sold is not None


async def test_duplicate_unit_is_refused(printer: FiscalPrinter, tmp_path: Path) -> None:
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 100, "Вода")

    again = await session.add(testing.allowed(WATER), WATER, 100, "Вода")

    assert (again.status, again.reason) == ("refused", "duplicate-in-receipt")
    assert session.units == (WATER.ki,)


async def test_cancel_leaves_nothing_in_the_kkt(printer: FiscalPrinter, tmp_path: Path) -> None:
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    assert (tmp_path / "fiscal.journal.codes").exists()

    outcome = await session.cancel()

    state = printer.kkt.state()  # type: ignore[attr-defined]
    assert outcome.status == "cancelled"
    assert state["accepted"] == [] and state["receipt"] is None
    assert not (tmp_path / "fiscal.journal.codes").exists()
    assert journal_events(tmp_path)[-1] == "cancelled"
    assert (await session.close()).status == "empty"


@pytest.fixture
async def lm() -> AsyncIterator[Any]:
    with emulators.local_module() as server:
        yield server


async def test_sale_and_return_update_store_and_local_module(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store
) -> None:
    with emulators.local_module() as server:
        client = LocalModuleClient(
            server.url, user="admin", password=Secret("admin", "test"), fn_serial="9960440300000001"
        )
        try:
            session = make_session(printer, tmp_path, tmp_store, lm=client)
            await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
            await session.add(testing.allowed(WATER), WATER, 100, "Вода")
            sale = await session.close()
            sold_in_lm = server.sold_codes()

            await session.open("return")
            back = await session.add(None, SHOES, 100, "Кроссовки")
            returned = await session.close()
        finally:
            client.close()
        left_in_lm = server.sold_codes()

    assert sale.lm == {
        "ok": True,
        "accepted": [SHOES.ki, WATER.ki],
        "rejected": [],
        "skipped": False,
    }
    assert sold_in_lm == [SHOES.ki, WATER.ki]
    assert back.added and back.validation is not None
    assert returned.status == "closed" and returned.receipt.kind == "return"
    assert left_in_lm == [WATER.ki]
    assert tmp_store.lookup(SHOES).sold is None and tmp_store.lookup(WATER).sold is not None
    kinds = [d["type"] for d in printer.kkt.receipts()]  # type: ignore[attr-defined]
    assert kinds == ["sell", "sellReturn"]
    assert printer.kkt.receipts()[-1]["positions"][0]["tags"]["2003"] == 3  # type: ignore[attr-defined]


async def test_local_module_down_does_not_lose_the_receipt(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store
) -> None:
    with emulators.local_module() as server:
        server.set_fault("cis/sell", status=500)
        client = LocalModuleClient(
            server.url, user="admin", password=Secret("admin", "test"), fn_serial="1"
        )
        try:
            session = make_session(printer, tmp_path, tmp_store, lm=client)
            await session.add(testing.allowed(WATER), WATER, 100, "Вода")
            outcome = await session.close()
            server.set_fault("cis/sell")
            report = await session.recover()  # retries what the module missed
        finally:
            client.close()
        sold = server.sold_codes()

    assert outcome.status == "closed" and outcome.lm["ok"] is False
    assert report.actions[0]["done"] == ["local-module"]
    assert sold == [WATER.ki]


async def test_device_gone_mid_receipt_is_pending_then_finished_once(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path, tmp_store)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(gone_in_receipt="open")

    pending = await session.close()
    assert (pending.status, pending.reason) == ("pending", "printer-unavailable")
    assert kkt.receipts() == []

    kkt.set_faults(gone=None)  # plugged back in: the receipt is still open on the device
    report = await session.recover()

    assert [o.status for o in report.outcomes] == ["closed"]
    assert len(kkt.receipts()) == 1 and kkt.state()["receipt"] is None
    assert tmp_store.lookup(SHOES).sold is not None
    events = journal_events(tmp_path)
    assert "close-unknown" in events and events.count("closing") == 2


async def test_lost_answer_after_the_receipt_is_found_not_duplicated(
    printer: FiscalPrinter, tmp_path: Path, tmp_store: Store
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path, tmp_store)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(gone_in_receipt="after")

    pending = await session.close()
    kkt.set_faults(gone=None)
    report = await session.recover()

    assert pending.status == "pending"
    assert len(kkt.receipts()) == 1
    (outcome,) = report.outcomes
    assert outcome.status == "closed" and outcome.receipt.recovered
    assert outcome.receipt.document_number == kkt.receipts()[0]["number"]
    assert tmp_store.lookup(SHOES).sold is not None


async def test_recover_with_nothing_to_do(printer: FiscalPrinter, tmp_path: Path) -> None:
    session = make_session(printer, tmp_path)

    report = await session.recover()

    assert report.actions == () and not report.pending


async def test_a_bad_position_is_refused_before_the_kkt_is_asked(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    session = make_session(printer, tmp_path)

    unit = await session.add(testing.allowed(WATER), WATER, -5, "Вода")

    assert (unit.status, unit.reason, unit.source) == ("refused", "bad-position", "session")
    assert session.receipt_id is None
    assert printer.kkt.state()["shift"]["state"] == "closed"  # type: ignore[attr-defined]


async def test_recover_leaves_a_receipt_being_built_alone(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 100, "Вода")

    report = await session.recover()
    outcome = await session.close()

    assert report.actions == ()
    assert outcome.status == "closed" and len(outcome.receipt.positions) == 1


async def test_a_paid_receipt_takes_no_more_units(printer: FiscalPrinter, tmp_path: Path) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 100, "Вода")
    kkt.set_faults(paper_out=True)
    assert (await session.close()).status == "failed"

    late = await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")

    assert (late.status, late.reason) == ("refused", "receipt-closing")
    kkt.set_faults(paper_out=None)
    assert [p.mark.ki for p in (await session.close()).receipt.positions] == [WATER.ki]
