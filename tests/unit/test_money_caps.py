"""Caps on money (issue 15, item 6): a price, a quantity or a payment beyond what a ККТ takes
— 2**40 − 1 kopecks, Shtrih's 5-byte sums — is refused with a reason at every edge before a
printer is touched. Each test is named after the attack it stops; the control API's edge is
tested in tests/integration/test_attendant_service.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from markd.catalog import MAX_PRICE_KOPECKS, load_catalog
from markd.cli.markctl import main
from markd.emulators.virtual_kkt import VirtualKkt
from markd.errors import ConfigError, PrinterFault
from markd.fiscal.base import new_op_id
from markd.fiscal.model import Position
from markd.money import (
    MAX_KOPECKS,
    MAX_QUANTITY,
    money_problem,
    quantity_problem,
    roubles_to_kopecks,
)
from markd.receipts import Payment
from markd.testing import fiscal as testing

TEN_TO_THE_THIRTY = 10**30


def test_the_caps_are_what_the_shtrih_layout_holds() -> None:
    # FF46: price and sum are 5 bytes of kopecks, quantity 6 bytes of quantity × 10**6.
    assert MAX_KOPECKS == int.from_bytes(b"\xff" * 5, "little")
    assert MAX_QUANTITY * 10**6 <= int.from_bytes(b"\xff" * 6, "little")
    assert (MAX_QUANTITY + 1) * 10**6 > int.from_bytes(b"\xff" * 6, "little")
    assert MAX_KOPECKS < 2**53  # ATOL's roubles as a JSON number stay exact
    assert MAX_PRICE_KOPECKS <= MAX_KOPECKS  # the price list's own, tighter cap


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (TEN_TO_THE_THIRTY, "a price is at most 1099511627775 kopecks (what a ККТ takes), "),
        (MAX_KOPECKS + 1, "a price is at most 1099511627775 kopecks (what a ККТ takes), got "),
        pytest.param(10**5000, "got a number of more than 20 digits", id="10**5000"),
        (-1, "a price cannot be negative, got -1 kopecks"),
        pytest.param(
            -(10**5000),
            "a price cannot be negative, got a number of more than 20 digits",
            id="-10**5000",
        ),
        (89.9, "a price is a whole number of kopecks, got float"),
        (True, "a price is a whole number of kopecks, got bool"),
        ("8990", "a price is a whole number of kopecks, got str"),
    ],
)
def test_money_out_of_range_is_refused_with_a_reason(value: object, problem: str) -> None:
    found = money_problem(value, "a price")
    assert found is not None and problem in found


def test_money_within_range_passes() -> None:
    assert money_problem(1) is None and money_problem(MAX_KOPECKS) is None
    assert quantity_problem(1) is None and quantity_problem(MAX_QUANTITY) is None
    assert quantity_problem(MAX_QUANTITY + 1) is not None and quantity_problem(0) is not None


def test_a_position_of_ten_to_the_thirty_kopecks_has_problems() -> None:
    assert Position("Вода", TEN_TO_THE_THIRTY).problems() == [
        "a price is at most 1099511627775 kopecks (what a ККТ takes), "
        "got a number of more than 20 digits"
    ]
    assert Position("Вода", 0).problems() == []  # nothing to pay for: still a position
    # Each within the cap, their product not: the position's sum is capped too.
    assert Position("Вода", MAX_KOPECKS, quantity=2).problems() == [
        "a position's sum is at most 1099511627775 kopecks (what a ККТ takes), "
        f"got {2 * MAX_KOPECKS}"
    ]
    assert Position("Вода", 100, quantity=MAX_QUANTITY + 1).problems()


def test_escape_sequences_in_a_position_name_never_reach_the_printer() -> None:
    assert Position("Вода\x1b[2J", 8990).problems() == [
        "a position name holds the control character U+001B at character 5; "
        "control characters are refused"
    ]


@pytest.fixture(params=["emulator", "shtrih"])
def printer_and_device(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    opened: AbstractContextManager[Any]
    if request.param == "emulator":
        with testing.emulator_printer(tmp_path / "kkt") as printer:
            yield printer, printer.kkt  # type: ignore[attr-defined]
    else:
        opened = testing.shtrih_printer(tmp_path / "kkt")
        with opened as (printer, device):
            yield printer, device


def test_a_price_of_ten_to_the_thirty_is_refused_before_the_printer(
    printer_and_device: Any,
) -> None:
    printer, device = printer_and_device
    printer.ensure_shift(new_op_id())
    printer.open_receipt(new_op_id())
    with pytest.raises(PrinterFault) as refused:
        printer.add_position(new_op_id(), Position("Вода", TEN_TO_THE_THIRTY))
    assert refused.value.reason == "bad-position"
    printer.cancel_receipt(new_op_id())
    assert device.receipts() == []


def test_a_payment_of_ten_to_the_thirty_is_refused_before_the_printer(
    printer_and_device: Any,
) -> None:
    printer, device = printer_and_device
    printer.ensure_shift(new_op_id())
    printer.open_receipt(new_op_id())
    printer.add_position(new_op_id(), Position("Вода", 8990))
    with pytest.raises(PrinterFault) as refused:
        printer.close_receipt(new_op_id(), [Payment(TEN_TO_THE_THIRTY)])
    assert refused.value.reason == "bad-payment"
    assert "a payment is at most 1099511627775 kopecks" in str(refused.value)
    printer.cancel_receipt(new_op_id())
    assert device.receipts() == []


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "markd.toml"
    path.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
        f"[fiscal]\nurl = 'emulator://{tmp_path / 'kkt'}'\n"
        f"journal = '{tmp_path / 'session.journal'}'\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("price", "says"),
    [
        ("10000000000000000000000000000", "a price is at most 1099511627775 kopecks"),
        ("10995116277.76", "a price is at most 1099511627775 kopecks"),
        ("1e30", "expected roubles such as 89.90"),
        ("inf", "expected roubles such as 89.90"),
        ("nan", "expected roubles such as 89.90"),
        ("-1", "expected roubles such as 89.90"),
        ("1.005", "expected roubles such as 89.90"),
        ("١٢", "expected roubles such as 89.90"),  # Arabic-Indic digits are not roubles
    ],
)
def test_markctl_sell_refuses_a_price_the_kkt_cannot_take_before_the_printer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], price: str, says: str
) -> None:
    config = write_config(tmp_path)
    status = main(["sell", "--config", str(config), "--price", price, testing.WATER])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("markctl: --price: ") and says in err
    assert not (tmp_path / "kkt").exists() or VirtualKkt(tmp_path / "kkt").receipts() == []
    assert not (tmp_path / "session.journal").exists()


def test_markctl_sell_refuses_units_whose_total_the_kkt_cannot_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    price = f"{MAX_KOPECKS // 100}.{MAX_KOPECKS % 100:02d}"
    argv = ["sell", "--config", str(config), "--price", price]
    status = main([*argv, testing.WATER, testing.SHOES])
    assert status == 2 and "the total is at most 1099511627775 kopecks" in capsys.readouterr().err
    assert not (tmp_path / "kkt").exists() or VirtualKkt(tmp_path / "kkt").receipts() == []


def test_markctl_sell_at_a_price_with_a_comma_still_sells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    status = main(["sell", "--config", str(config), "--json", "--price", "89,9", testing.WATER])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["receipt"]["receipt"]["total_kopecks"] == 8990


@pytest.mark.parametrize(
    ("price", "problem"),
    [
        ("999999999999.99", "price: at most 100000000 roubles"),
    ],
)
def test_a_catalog_price_out_of_range_is_refused_with_file_and_line(
    tmp_path: Path, price: str, problem: str
) -> None:
    catalog = tmp_path / "prices.csv"
    catalog.write_text(f"gtin;name;price\n4680029460908;Вода;{price}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_catalog(catalog)
    assert refused.value.problems == [f"{catalog}:2: {problem}"]


@pytest.mark.parametrize("price", ["1e30", "nan", "inf", "-1", "10000000000000000000000000000"])
def test_markctl_check_refuses_a_price_the_kkt_cannot_take_without_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], price: str
) -> None:
    # float("nan") * 100 once went to round(): a ValueError and a traceback.
    config = write_config(tmp_path)
    status = main(["check", "--config", str(config), "--price", price, testing.WATER])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and err.startswith("markctl: --price: ")
    assert "Traceback" not in err


def test_roubles_are_read_exactly() -> None:
    assert roubles_to_kopecks("89,9") == (8990, None)
    assert roubles_to_kopecks(" 10995116277.75 ") == (MAX_KOPECKS, None)
    assert roubles_to_kopecks("0.01") == (1, None)
