"""A failed ``sell`` as ATOL's driver leaves it (issue 13, item 1; domain.md §7.4a).

The driver's receipt script cancels the receipt on any error and — except for error 423 —
clears the ФН's table of accepted codes. A close tried again with the same positions would be
refused (420 / 422), so the session validates every code again (begin → status → accept)
before the one new ``sell``, or drops a code the ФН or the ОИСМ now declines with the payments
fitted. Run through the real shim against the virtual ККТ in process and over HTTP to the
``atol_web`` emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.fiscal.base import FiscalPrinter
from markd.fiscal.session import SaleOptions, SaleSession
from markd.receipts import Payment
from markd.testing import fiscal as testing

SHOES = parse(testing.SHOES)
WATER = parse(testing.WATER)


@pytest.fixture(params=["emulator", "atol-web"])
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FiscalPrinter, Any]]:
    if request.param == "emulator":
        with testing.emulator_printer(tmp_path / "kkt") as printer:
            yield printer, printer.kkt  # type: ignore[attr-defined]
    else:
        with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
            yield printer, server.kkt


def session_on(printer: FiscalPrinter, tmp_path: Path) -> SaleSession:
    return SaleSession(printer, None, None, tmp_path / "fiscal.journal", None, SaleOptions())


def journal(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "fiscal.journal").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def begun(kkt: Any) -> int:
    """How many code validations the device has begun (its request table keeps them)."""
    state = json.loads((Path(kkt.path) / "state.json").read_text(encoding="utf-8"))
    return sum(
        1
        for outcomes in state["requests"].values()
        for outcome in outcomes
        if "offlineValidation" in (outcome.get("result") or {})
    )


async def test_after_a_refused_sell_every_code_is_validated_again(
    bench: tuple[FiscalPrinter, Any], tmp_path: Path
) -> None:
    printer, kkt = bench
    session = session_on(printer, tmp_path)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    await session.add(testing.allowed(WATER), WATER, 50, "Вода")
    kkt.set_faults(paper_out=True)

    failed = await session.close()
    assert (failed.status, failed.reason) == ("failed", "paper-out")
    # The driver cancelled the receipt and cleared the ФН's accepted codes.
    assert kkt.state()["accepted"] == [] and kkt.state()["receipt"] is None
    before = begun(kkt)

    kkt.set_faults(paper_out=None)
    closed = await session.close()

    assert closed.status == "closed", closed
    assert begun(kkt) - before == 2  # both codes validated again, then one sell
    receipts = kkt.receipts()
    assert len(receipts) == 1
    assert {p["ki"] for p in receipts[0]["positions"]} == {SHOES.ki, WATER.ki}
    events = [r["event"] for r in journal(tmp_path)]
    assert events.count("closed") == 1 and "recovery-attempt" in events


async def test_a_code_declined_on_the_second_validation_is_dropped_and_refunded(
    bench: tuple[FiscalPrinter, Any], tmp_path: Path
) -> None:
    printer, kkt = bench
    session = session_on(printer, tmp_path)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    await session.add(testing.allowed(WATER), WATER, 50, "Вода")
    kkt.set_faults(paper_out=True)
    assert (await session.close([Payment(150, "electronically")])).status == "failed"

    kkt.set_faults(paper_out=None)
    kkt.set_code(WATER.ki, oism="sale-stopped")  # the ОИСМ now stops its sale
    closed = await session.close()

    assert closed.status == "closed"
    assert [u.ki for u in closed.dropped] == [WATER.ki]
    assert closed.dropped[0].reason == "oism-sale-stopped"
    assert closed.adjustment is not None and closed.adjustment["refund_kopecks"] == 50
    assert [p.amount_kopecks for p in closed.payments] == [100]
    assert [[p["ki"] for p in r["positions"]] for r in kkt.receipts()] == [[SHOES.ki]]


async def test_a_sell_refused_again_fails_again_and_makes_no_document(
    bench: tuple[FiscalPrinter, Any], tmp_path: Path
) -> None:
    printer, kkt = bench
    session = session_on(printer, tmp_path)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(paper_out=True)

    first = await session.close()
    second = await session.close()  # paper still out: validated again, refused again

    assert (first.status, second.status) == ("failed", "failed")
    assert second.reason == "paper-out"  # never 420 / 422 left unexplained
    assert kkt.receipts() == []
    kkt.set_faults(paper_out=None)
    assert (await session.close()).status == "closed"
    assert len(kkt.receipts()) == 1


async def test_recovery_after_a_crash_validates_again_too(
    bench: tuple[FiscalPrinter, Any], tmp_path: Path
) -> None:
    printer, kkt = bench
    session = session_on(printer, tmp_path)
    await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
    kkt.set_faults(paper_out=True)
    assert (await session.close()).status == "failed"
    session.close_session()  # the process ends here; the receipt is paid, not registered
    kkt.set_faults(paper_out=None)

    restarted = session_on(printer, tmp_path)
    report = await restarted.recover()
    restarted.close_session()

    assert [o.status for o in report.outcomes] == ["closed"]
    assert len(kkt.receipts()) == 1
