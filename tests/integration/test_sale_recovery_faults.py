"""Recovery of a paid receipt when things go wrong again while it is being recovered: the ККТ
lost half-way through a re-check, a unit the ОИСМ now refuses, a payment the ККТ refused, a
store or Local Module update replayed after a later return, a journal rotated with work still
due, codes files left by a kill. The ККТ is the virtual one (in process), the Local Module its
emulator, the store a real LMDB store; faults are the device's own (``set_faults``), or, where
a fault must strike at one precise step, the real printer's method wrapped to set one there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markd.checks.local_module import LocalModuleClient
from markd.codes import parse
from markd.emulators import testing as emulators
from markd.fiscal.base import FiscalPrinter, PrinterSettings
from markd.fiscal.journal import ROTATE_BYTES, SessionJournal
from markd.fiscal.session import SaleOptions, SaleSession
from markd.receipts import Payment
from markd.secrets import Secret
from markd.store import Store
from markd.testing import fiscal as testing

WATER = parse(testing.WATER)
SHOES = parse(testing.SHOES)
TAILS = ("938p9E", "91FFD0", "dGVzdHNpZ25hdHVy")


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[FiscalPrinter]:
    with testing.emulator_printer(tmp_path / "kkt") as device:
        yield device


def make_session(
    printer: FiscalPrinter,
    tmp_path: Path,
    store: Any = None,
    *,
    lm: Any = None,
    log: Any = None,
) -> SaleSession:
    return SaleSession(printer, store, lm, tmp_path / "fiscal.journal", log, SaleOptions())


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return SessionJournal(tmp_path / "fiscal.journal").records()


def receipt_kis(document: dict[str, Any]) -> list[str]:
    return [p["ki"] for p in document["positions"]]


async def paid_and_cut_off(
    session: SaleSession, printer: FiscalPrinter, payments: list[Payment] | None = None
) -> None:
    """Water and shoes on a paid receipt whose close was cut off: the ККТ opened the receipt,
    then the link broke (``pending``; the journal has ``closing`` and ``close-unknown``). The
    ККТ answers again afterwards, the receipt still open on it."""
    kkt = printer.kkt  # type: ignore[attr-defined]
    assert (await session.add(testing.allowed(WATER), WATER, 8990, "Вода")).added
    assert (await session.add(testing.allowed(SHOES), SHOES, 459000, "Кроссовки")).added
    kkt.set_faults(gone_in_receipt="open")
    assert (await session.close(payments)).status == "pending"
    kkt.set_faults(gone=None)
    assert kkt.state()["receipt"] is not None and kkt.receipts() == []


# -- every recovery attempt has its own operation ids -------------------------------------------


async def test_a_recovery_cut_off_half_way_is_finished_by_the_next_with_every_unit(
    printer: FiscalPrinter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await paid_and_cut_off(session, printer, [Payment(467990, "cash")])
    real_check = printer.check_code
    checked: list[str] = []

    def check_then_unplug(*args: Any) -> Any:
        result = real_check(*args)
        checked.append(args[2])
        if len(checked) == 1:
            kkt.set_faults(gone=True)  # the ККТ drops off after the first unit's re-check
        return result

    monkeypatch.setattr(printer, "check_code", check_then_unplug)
    first = await session.recover()
    kkt.set_faults(gone=None)
    second = await session.recover()

    assert first.pending and [o.status for o in first.outcomes] == ["pending"]
    # The second attempt validated both units anew (new ids: the ККТ ran them, it did not
    # answer the first attempt's from its request table), and none was dropped.
    (outcome,) = second.outcomes
    assert (outcome.status, outcome.dropped) == ("closed", ())
    (document,) = kkt.receipts()
    assert sorted(receipt_kis(document)) == sorted([WATER.ki, SHOES.ki])
    assert document["payments"] == [{"type": "cash", "amount": 467990}]
    assert kkt.state()["accepted"] == [] and kkt.state()["validation"] is None
    events = [r["event"] for r in records(tmp_path)]
    assert "unit-dropped" not in events
    assert [r["attempt"] for r in records(tmp_path) if r["event"] == "recovery-attempt"] == [1, 2]


async def test_a_kkt_gone_just_before_the_recovered_close_leaves_the_receipt_pending(
    printer: FiscalPrinter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await paid_and_cut_off(session, printer)
    real_shift = printer.ensure_shift

    def unplug_then_shift(*args: Any) -> Any:
        kkt.set_faults(gone=True)  # the units are re-checked; the ККТ goes as it is closed
        return real_shift(*args)

    monkeypatch.setattr(printer, "ensure_shift", unplug_then_shift)
    report = await session.recover()
    monkeypatch.undo()
    kkt.set_faults(gone=None)
    # markd restarts: a new session and printer on the same journal and device.
    with testing.emulator_printer(tmp_path / "kkt") as again:
        restarted = make_session(again, tmp_path)
        after = await restarted.recover()

    assert report.pending and [(o.status, o.reason) for o in report.outcomes] == [
        ("pending", "printer-unavailable")
    ]
    (outcome,) = after.outcomes
    assert (outcome.status, outcome.dropped) == ("closed", ())
    (document,) = kkt.receipts()
    assert sorted(receipt_kis(document)) == sorted([WATER.ki, SHOES.ki])
    assert [r["attempt"] for r in records(tmp_path) if r["event"] == "recovery-attempt"] == [1, 2]


async def test_a_close_refused_before_it_reached_the_kkt_can_be_retried(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    # The shift closed under the receipt and no paper: opening it again is refused. The
    # refusal must not be replayed to the next close from the ККТ's request table.
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
    assert kkt.run("shift-closed-by-hand", [{"type": "closeShift"}])[0]["status"] == "ready"
    kkt.set_faults(paper_out=True)

    failed = await session.close()
    kkt.set_faults(paper_out=None)
    closed = await session.close()

    assert (failed.status, failed.reason) == ("failed", "paper-out")
    assert closed.status == "closed" and len(kkt.receipts()) == 1


# -- units dropped at recovery, payments fitted ----------------------------------------------


@pytest.mark.parametrize(
    ("payments", "on_the_kkt", "change"),
    [
        (None, [{"type": "electronically", "amount": 459000}], 0),  # the default: card
        ([Payment(467990, "cash")], [{"type": "cash", "amount": 467990}], 8990),
        (
            [Payment(465990, "electronically"), Payment(2000, "cash")],
            [{"type": "electronically", "amount": 459000}, {"type": "cash", "amount": 2000}],
            2000,
        ),
    ],
)
async def test_a_unit_refused_at_recovery_is_dropped_and_the_payments_fitted(
    printer: FiscalPrinter,
    tmp_path: Path,
    event_log: Any,
    payments: list[Payment] | None,
    on_the_kkt: list[dict[str, Any]],
    change: int,
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path, log=event_log)
    await paid_and_cut_off(session, printer, payments)
    kkt.set_code(WATER.ki, oism="sale-stopped")  # the ОИСМ's view changed meanwhile

    report = await session.recover()

    (outcome,) = report.outcomes
    assert outcome.status == "closed" and not report.pending
    assert [(u.ki, u.reason) for u in outcome.dropped] == [(WATER.ki, "oism-sale-stopped")]
    assert outcome.adjustment == {
        "dropped": [WATER.ki],
        "total_before_kopecks": 467990,
        "total_kopecks": 459000,
        "refund_kopecks": 8990,
    }
    (document,) = kkt.receipts()
    assert receipt_kis(document) == [SHOES.ki]
    assert (document["payments"], document["change"]) == (on_the_kkt, change)
    adjusted = [r for r in records(tmp_path) if r["event"] == "payments-adjusted"]
    assert len(adjusted) == 1 and adjusted[0]["refund_kopecks"] == 8990
    (note,) = [f for k, _, f in event_log.events if f.get("action") == "payments-adjusted"]
    assert note["refund_kopecks"] == 8990 and note["dropped"] == WATER.ki
    for text in ((tmp_path / "fiscal.journal").read_text(encoding="utf-8"), event_log.text):
        assert not any(tail in text for tail in TAILS)


async def test_every_unit_refused_at_recovery_cancels_the_receipt_and_owes_it_all(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await paid_and_cut_off(session, printer)
    kkt.set_code(WATER.ki, oism="sale-stopped")
    kkt.set_code(SHOES.ki, oism="incorrect")

    (outcome,) = (await session.recover()).outcomes

    assert (outcome.status, outcome.reason) == ("cancelled", "nothing-left-to-register")
    assert outcome.adjustment is not None and outcome.adjustment["refund_kopecks"] == 467990
    assert kkt.receipts() == [] and kkt.state()["receipt"] is None


@pytest.mark.parametrize(
    "fault",
    [
        {"fn_error": True},  # the ФН fails the validation: nothing said about the code
        {"validation_delay_ms": 60_000},  # no answer within the validation time
    ],
)
async def test_a_device_fault_while_units_are_checked_again_leaves_the_receipt_pending(
    tmp_path: Path, fault: dict[str, Any]
) -> None:
    settings = PrinterSettings(timeout_s=5, validation_timeout_s=0.3, poll_interval_s=0.02)
    with testing.emulator_printer(tmp_path / "kkt", settings) as printer:
        kkt = printer.kkt  # type: ignore[attr-defined]
        session = make_session(printer, tmp_path)
        await paid_and_cut_off(session, printer)  # the default: one card payment of 4679.90
        kkt.set_faults(**fault)

        first = await session.recover()
        kept = session.units
        kkt.clear_faults()
        second = await session.recover()

    assert first.pending and [o.dropped for o in first.outcomes] == [()]
    assert sorted(kept) == sorted([WATER.ki, SHOES.ki])
    assert "unit-dropped" not in [r["event"] for r in records(tmp_path)]
    (outcome,) = second.outcomes
    assert outcome.status == "closed"
    (document,) = kkt.receipts()
    assert sorted(receipt_kis(document)) == sorted([WATER.ki, SHOES.ki])
    assert document["payments"] == [{"type": "electronically", "amount": 467990}]


# -- payments refused by the ККТ can be corrected ------------------------------------------------


async def test_a_payment_the_kkt_refused_is_replaced_by_the_next_close(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 8990, "Вода")

    refused = await session.close([Payment(9000, "electronically")])  # card above the total
    # markd restarts before the cashier corrects it: recovery tries the journaled payment.
    with testing.emulator_printer(tmp_path / "kkt") as again:
        restarted = make_session(again, tmp_path)
        report = await restarted.recover()
        unlocked = not restarted.payments_locked
        closed = await restarted.close([Payment(8990, "electronically")])

    assert (refused.status, refused.reason) == ("failed", "bad-payment")
    assert [(o.status, o.reason) for o in report.outcomes] == [("failed", "bad-payment")]
    assert unlocked
    assert closed.status == "closed" and not closed.payments_ignored
    assert closed.payments == (Payment(8990, "electronically"),)
    (document,) = kkt.receipts()
    assert document["payments"] == [{"type": "electronically", "amount": 8990}]
    replaced = [r for r in records(tmp_path) if r["event"] == "payments-replaced"]
    assert [r["payments"] for r in replaced] == [
        [{"type": "electronically", "amount_kopecks": 8990}]
    ]


async def test_payments_stay_while_an_earlier_attempt_is_unknown_and_the_outcome_says_so(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
    kkt.set_faults(gone_in_receipt="after")  # fiscalised, the answer lost
    assert (await session.close([Payment(8990, "cash")])).status == "pending"
    kkt.set_faults(gone=None)
    locked = session.payments_locked

    outcome = await session.close([Payment(8990, "electronically")])

    assert locked
    assert outcome.status == "closed" and outcome.payments_ignored
    assert outcome.payments == (Payment(8990, "cash"),)
    (document,) = kkt.receipts()
    assert document["payments"] == [{"type": "cash", "amount": 8990}]
    assert "payments-replaced" not in [r["event"] for r in records(tmp_path)]


# -- follow-ups: journal order is the truth ---------------------------------------------------


async def test_a_failed_sale_update_is_not_replayed_over_a_later_return(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    store_path = str(tmp_path / "store")
    with emulators.local_module() as server:
        client = LocalModuleClient(
            server.url, user="admin", password=Secret("admin", "test"), fn_serial="1"
        )
        store = Store.open(store_path, map_size_mb=8)
        try:
            session = make_session(printer, tmp_path, store, lm=client)
            server.set_fault("cis/sell", status=500)
            store.close()  # the store is not there for the sale (closed under it)
            await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
            sale = await session.close()
            server.set_fault("cis/sell")
            store = Store.open(store_path, map_size_mb=8)
            session.store = store
            await session.open("return")
            await session.add(None, WATER, 8990, "Вода")
            returned = await session.close()

            restarted = make_session(printer, tmp_path, store, lm=client)
            report = await restarted.recover()
            sold = store.lookup(WATER).sold
        finally:
            store.close()
            client.close()
        in_lm = server.sold_codes()
        sells = len(server.requests_for("cis/sell"))

    assert (sale.store_ok, sale.lm["ok"]) == (False, False)
    assert (returned.store_ok, returned.lm["ok"]) == (True, True)
    assert [a["receipt"] for a in report.actions] == [sale.receipt_id]
    assert sold is None and in_lm == []  # still returned: the sale is not replayed
    assert sells == 1  # the failed one only
    stored = [r for r in records(tmp_path) if r["event"] == "stored"]
    assert stored[-1]["receipt"] == sale.receipt_id and stored[-1]["superseded"] == [WATER.ki]


def pad_journal(tmp_path: Path) -> None:
    """Finished receipts enough to make the journal rotate after the next receipt."""
    line = json.dumps({"event": "cancelled", "receipt": "old", "pad": "x" * 1000}) + "\n"
    with open(tmp_path / "fiscal.journal", "a", encoding="utf-8") as out:
        out.write(line * (ROTATE_BYTES // len(line) + 10))


async def test_a_rotated_journal_keeps_the_follow_up_still_due(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    with emulators.local_module() as server:
        client = LocalModuleClient(
            server.url, user="admin", password=Secret("admin", "test"), fn_serial="1"
        )
        try:
            pad_journal(tmp_path)
            session = make_session(printer, tmp_path, lm=client)
            server.set_fault("cis/sell", status=500)
            await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
            sale = await session.close()
            server.set_fault("cis/sell")
            rotated = (tmp_path / "fiscal.journal.1").exists()
            size = (tmp_path / "fiscal.journal").stat().st_size

            report = await make_session(printer, tmp_path, lm=client).recover()
        finally:
            client.close()
        in_lm = server.sold_codes()

    assert sale.status == "closed" and sale.lm["ok"] is False
    assert rotated and size < 64 * 1024  # the old receipts went, this one came along
    assert report.actions == (
        {"receipt": sale.receipt_id, "action": "follow-up", "done": ["local-module"]},
    )
    assert in_lm == [WATER.ki]


async def test_a_rotated_journal_keeps_the_receipt_that_superseded_a_due_one(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    with emulators.local_module() as server:
        client = LocalModuleClient(
            server.url, user="admin", password=Secret("admin", "test"), fn_serial="1"
        )
        try:
            session = make_session(printer, tmp_path, lm=client)
            server.set_fault("cis/sell", status=500)
            await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
            sale = await session.close()
            server.set_fault("cis/sell")
            pad_journal(tmp_path)
            await session.open("return")  # the return rotates the journal
            await session.add(None, WATER, 8990, "Вода")
            returned = await session.close()
            kept = set(SessionJournal(tmp_path / "fiscal.journal").by_receipt())

            await make_session(printer, tmp_path, lm=client).recover()
        finally:
            client.close()
        in_lm = server.sold_codes()

    assert (tmp_path / "fiscal.journal.1").exists()
    assert kept == {sale.receipt_id, returned.receipt_id}
    assert in_lm == []  # sold, then returned: the sale's report is not replayed


async def test_recovery_leaves_a_receipt_whose_start_was_rotated_away(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    """The journal holds only a close's answer (and a key) of a receipt registered before the
    rotation: no receipt is left unfinished, and none is cancelled; nor is the fragment carried
    on by the next rotation."""
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
    sale = await session.close()
    journal = SessionJournal(tmp_path / "fiscal.journal")
    assert journal.rotate_if_large(limit=1)
    rid = sale.receipt_id
    journal.append("close-requested", rid, key="k-1")
    journal.append("close-answered", rid, answer={"receipt": {"id": rid}})
    journal.append("close-answered", "0f0e0d0c-0000-4000-8000-000000000001", answer={})

    report = await make_session(printer, tmp_path).recover()
    carried = make_session(printer, tmp_path).steps.to_carry(records(tmp_path))

    assert sale.status == "closed"
    assert report.actions == () and report.outcomes == ()
    assert "cancelled" not in [r["event"] for r in records(tmp_path)]
    assert journal.index.get(rid)["state"] == "registered"  # type: ignore[index]
    assert carried == set()


# -- the codes file -------------------------------------------------------------------------


async def test_recovery_removes_codes_files_a_kill_left_behind(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    codes = tmp_path / "fiscal.journal.codes"
    session = make_session(printer, tmp_path)
    await session.add(testing.allowed(WATER), WATER, 8990, "Вода")
    kept = codes.read_bytes()
    await session.cancel()
    # As a kill leaves them: after "cancelled" was journaled, before the file was deleted;
    # and a copy written, not yet renamed into place.
    codes.write_bytes(kept)
    (tmp_path / "fiscal.journal.codes.tmp").write_bytes(kept)

    report = await make_session(printer, tmp_path).recover()

    assert report.actions == ()
    assert not codes.exists() and not (tmp_path / "fiscal.journal.codes.tmp").exists()


async def test_recovery_keeps_the_codes_of_a_receipt_still_in_flight(
    printer: FiscalPrinter, tmp_path: Path
) -> None:
    kkt = printer.kkt  # type: ignore[attr-defined]
    session = make_session(printer, tmp_path)
    await paid_and_cut_off(session, printer)
    kkt.set_faults(gone=True)

    report = await make_session(printer, tmp_path).recover()

    assert report.pending
    assert (tmp_path / "fiscal.journal.codes").exists()  # needed to register it later
