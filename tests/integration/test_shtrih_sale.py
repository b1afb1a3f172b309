"""A Shtrih-M ККТ in the whole daemon: kiosk and attendant sales through ``shtrih://`` to the
Shtrih emulator on a pty, ``markctl printer status`` and ``markctl sell`` with a Shtrih URL,
and the behaviours that are Shtrih's own (a leftover receipt whose cancel keeps or clears the
ФН's accepted codes, a code the device would check by itself while binding it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Conversation
from conftest import (
    DAIRY_KI,
    GS,
    SHOES,
    SHOES_KI,
    TOBACCO_PACK,
    TOBACCO_PACK_KI,
    WATER,
    WATER_KI,
    RecordingEventLog,
)
from markd.cli.markctl import main
from markd.codes import parse
from markd.emulators.shtrih import ShtrihKkt, ShtrihServer
from markd.emulators.testing import crpt_cdn
from markd.errors import PrinterFault
from markd.fiscal.base import MarkNotValidated, new_op_id
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.receipts import Payment
from markd.scanners import get_virtual
from markd.store import Store
from markd.testing import fiscal as testing
from sale_helpers import WATER_PRICE, events, journal, running, wait_for_units, write_sale_config

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
TAG1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"


@pytest.fixture
def shtrih(tmp_path: Path) -> Iterator[tuple[ShtrihKkt, str]]:
    """The Shtrih emulator on a pty, its state in ``tmp_path/kkt``: ``(kkt, url)``."""
    kkt = ShtrihKkt(tmp_path / "kkt")
    with ShtrihServer(kkt) as server:
        yield kkt, f"shtrih://{server.start_pty()}"


def online_check(directory: Path, cdn_url: str) -> str:
    (directory / "token").write_text(TOKEN + "\n")
    return (
        '[check]\nmode = "direct"\n\n'
        f'[check.online]\nurl = "{cdn_url}"\ntoken_file = "{directory / "token"}"\n\n'
    )


async def test_kiosk_sale_through_a_shtrih_kkt(
    tmp_path: Path, event_log: RecordingEventLog, shtrih: tuple[ShtrihKkt, str]
) -> None:
    kkt, url = shtrih
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn:
        config = write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={"front": "virtual://shtrih-kiosk"},
            extra=online_check(tmp_path, cdn.url),
            printer_url=url,
        )
        with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
            store.block(DAIRY_KI, "recalled batch", source="head office")
        async with running(config, event_log):
            conversation = await Conversation.unix(str(tmp_path / "control.sock"))
            for code in (WATER, "0104670540176099215LpGKy\x1d93dGVz", TOBACCO_PACK):
                get_virtual("shtrih-kiosk").scan(code)
            await wait_for_units(event_log, 2)
            status = (await conversation.request("GET", "/v1/status")).json()["printer"]
            closed = await conversation.request(
                "POST",
                "/v1/receipt/close",
                {"payments": [{"type": "electronically", "amount_kopecks": WATER_PRICE + 22500}]},
            )
            conversation.close()
            verdicts = {f["ki"]: f for f in events(event_log, "verdict")}

    assert status["mode"] == "kiosk" and status["state"] == "ready"
    assert closed.status == 200, closed.body
    body = closed.json()["receipt"]
    assert body["status"] == "closed" and body["store_ok"] is True
    documents = kkt.receipts()
    assert len(documents) == 1
    assert body["document"]["document_number"] == documents[0]["number"]
    printed = {p["ki"]: p for p in documents[0]["positions"]}
    assert sorted(printed) == sorted([WATER_KI, TOBACCO_PACK_KI])  # the blocked one never
    assert printed[WATER_KI]["price"] == WATER_PRICE and printed[TOBACCO_PACK_KI]["price"] == 22500
    for ki, position in printed.items():
        # The permit check's ids travel in 1260 (FF4D) of the position the code is bound to.
        assert position["tags"]["1260"]["1265"] == verdicts[ki]["tag1265"]
        assert position["tags"]["1260"]["1262"] == "030"
        assert position["tags"]["2003"] == 1 and position["tags"]["2102"] == 0
    assert documents[0]["payments"] == [{"type": "electronically", "amount": WATER_PRICE + 22500}]
    assert kkt.state()["accepted"] == [] and kkt.state()["receipt"] is None
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in (WATER, TOBACCO_PACK):
            sold = store.lookup(parse(code)).sold
            assert sold is not None and sold.receipt.endswith(f"/{documents[0]['number']}")
    journal_text = journal(tmp_path).path.read_text(encoding="utf-8")
    for tail in (WATER.split(GS)[1], TOBACCO_PACK[-4:]):
        assert tail not in event_log.text and tail not in journal_text


async def test_attendant_sale_and_return_through_a_shtrih_kkt(
    tmp_path: Path, event_log: RecordingEventLog, shtrih: tuple[ShtrihKkt, str]
) -> None:
    kkt, url = shtrih
    config = write_sale_config(
        tmp_path,
        mode="attendant",
        scanners={"till": "virtual://shtrih-attendant"},
        catalog=None,
        printer_url=url,
    )
    water = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
    shoes = {"code": SHOES, "name": "Кроссовки", "price_kopecks": 599000, "tax": "vat20"}
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))

        async def call(method: str, target: str, body: Any = None) -> tuple[int, Any]:
            answer = await conversation.request(method, target, body)
            return answer.status, answer.json()

        assert (await call("POST", "/v1/receipt", {}))[0] == 201
        assert (await call("POST", "/v1/receipt/items", water))[0] == 200
        assert (await call("POST", "/v1/receipt/items", shoes))[0] == 200
        status, sold = await call(
            "POST",
            "/v1/receipt/close",
            {
                "payments": [
                    {"type": "electronically", "amount_kopecks": 599000},
                    {"type": "cash", "amount_kopecks": 10000},
                ]
            },
        )
        assert status == 200, sold
        assert (await call("POST", "/v1/receipt", {"kind": "return"}))[0] == 201
        assert (await call("POST", "/v1/receipt/items", water))[0] == 200
        status, returned = await call("POST", "/v1/receipt/close")
        assert status == 200, returned
        conversation.close()

    documents = kkt.receipts()
    assert [d["type"] for d in documents] == ["sell", "sellReturn"]
    assert [p["ki"] for p in documents[0]["positions"]] == [WATER_KI, SHOES_KI]
    assert sold["receipt"]["document"]["document_number"] == documents[0]["number"]
    assert sold["receipt"]["document"]["total_kopecks"] == 607990
    assert documents[0]["total"] == 607990 and documents[0]["change"] == 1010
    assert sorted((p["type"], p["amount"]) for p in documents[0]["payments"]) == [
        ("cash", 10000),
        ("electronically", 599000),
    ]
    assert [p["tags"]["2003"] for p in documents[1]["positions"]] == [3]  # a unit returned
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        assert store.lookup(parse(SHOES)).sold is not None
        assert store.lookup(parse(WATER)).sold is None  # returned


def write_markctl_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "markd.toml"
    path.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
        f"[fiscal]\nurl = '{url}'\njournal = '{tmp_path / 'fiscal' / 'session.journal'}'\n"
        "validation_poll_ms = 20\n",
        encoding="utf-8",
    )
    return path


def test_markctl_printer_status_and_sell_with_a_shtrih_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shtrih: tuple[ShtrihKkt, str]
) -> None:
    kkt, url = shtrih
    config = write_markctl_config(tmp_path, url)

    assert main(["printer", "status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert main(["printer", "status", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    code = main(["sell", "--config", str(config), "--json", "--price", "10", SHOES, WATER])
    sold = json.loads(capsys.readouterr().out)

    status = report["status"]
    # The model (0xFC) and firmware (0x11) the device reports, on a line of their own.
    assert status["model"] == kkt.state()["device"]["model_name"]
    assert status["firmware"] and status["firmware"] in text
    assert f"device       {status['model']}, firmware {status['firmware']}" in text
    assert status["shift_state"] == "closed" and status["last_document_number"] == 1
    assert status["health"]["fn_valid_until"] is not None
    assert code == 0, sold
    assert sold["receipt"]["status"] == "closed" and sold["sold_all"] is True
    documents = kkt.receipts()
    assert len(documents) == 1
    assert sorted(p["ki"] for p in documents[0]["positions"]) == sorted([SHOES_KI, WATER_KI])
    receipt = sold["receipt"]["receipt"]
    assert receipt["document_number"] == documents[0]["number"]
    assert receipt["fiscal_sign"] == str(documents[0]["fiscal_sign"])
    shoes = next(u for u in sold["units"] if u["verdict"]["ki"] == SHOES_KI)
    assert shoes["fiscal"]["fn"]["tag2106"] == 15  # the ФН's and the ОИСМ's answer (FF61)


def marked(km: str, validation: Any) -> Position:
    return Position(
        "Кроссовки",
        8990,
        tax="vat20",
        mark=MarkedItem(
            km=km,
            ki=parse(km).ki,
            planned_status=1,
            industry=IndustryTags(tag1265=TAG1265),
            validation=validation,
        ),
    )


@pytest.mark.parametrize("open_first", [True, False], ids=["open-first", "check-first"])
@pytest.mark.parametrize("keeps", [True, False], ids=["cancel-keeps-codes", "cancel-clears"])
def test_a_leftover_receipt_s_cancel_is_followed_by_what_the_fn_still_holds(
    tmp_path: Path, keeps: bool, open_first: bool
) -> None:
    """Whether cancelling a receipt empties the ФН's table is not published: markd asks the
    ФН (FF70) after cancelling a leftover. Codes kept: the sale goes through at once. Codes
    gone: refused before anything is registered (checking first: before the receipt is even
    opened, by the FF70 answer itself), and sold after a new check."""
    query = "" if open_first else "open_first=0"
    with testing.shtrih_printer(tmp_path / "kkt", query=query) as (printer, kkt):
        kkt.set_faults(cancel_keeps_codes=keeps or None)
        printer.ensure_shift(new_op_id())
        check = printer.check_code(new_op_id(), SHOES, SHOES_KI, 1)
        kkt.set_faults(receipt_left_open=True)  # as an earlier session left it
        assert printer.status().receipt_open is True
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked(SHOES, check.validation))

        if keeps:
            result = printer.close_receipt(new_op_id(), [Payment(8990)])
        else:
            with pytest.raises(MarkNotValidated) as err:
                printer.close_receipt(new_op_id(), [Payment(8990)])
            assert kkt.receipts() == []
            if open_first:
                # Forgotten when the leftover was cancelled at the opening; the new receipt
                # (opened ahead) waits for its codes.
                assert "not accepted since the last clear" in err.value.message
                assert printer.status().receipt_open is True
            else:
                # Cancelled at the close: the ФН said it holds none, so nothing was opened.
                assert "holds 0 accepted code(s) of 1" in err.value.message
                assert printer.status().receipt_open is False
            check = printer.check_code(new_op_id(), SHOES, SHOES_KI, 1)
            printer.restore_receipt("sell", [marked(SHOES, check.validation)])
            result = printer.close_receipt(new_op_id(), [Payment(8990)])

        assert [r["number"] for r in kkt.receipts()] == [result.document_number]
        assert kkt.receipts()[0]["positions"][0]["tags"]["2106"] == 15


def test_a_code_the_device_would_check_by_itself_is_never_bound(tmp_path: Path) -> None:
    """FF67 with a code the ФН holds no result for makes the ККТ check and accept it itself
    (the vendor's ФФД 1.2 note). markd never lets it: a code it did not accept is refused
    before the receipt opens; and should the device still check one while binding (the ФН
    lost the result), the receipt is cancelled and nothing is printed."""
    with testing.shtrih_printer(tmp_path / "kkt") as (printer, kkt):
        printer.ensure_shift(new_op_id())
        check = printer.check_code(new_op_id(), SHOES, SHOES_KI, 1)
        documents_before = len(kkt.documents())
        kkt.execute(bytes([0xFF, 0x69]) + (30).to_bytes(4, "little") + bytes([2]))  # ФН cleared
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), marked(SHOES, check.validation))

        with pytest.raises(MarkNotValidated) as err:
            printer.close_receipt(new_op_id(), [Payment(8990)])

        assert "by itself" in err.value.message
        assert kkt.receipts() == [] and len(kkt.documents()) == documents_before
        assert printer.status().receipt_open is False
        # Not accepted here at all: refused before the device is asked.
        printer.restore_receipt("sell", [marked(WATER, None)])
        with pytest.raises(PrinterFault) as never:
            printer.close_receipt(new_op_id(), [Payment(8990)])
        assert never.value.reason == "mark-not-checked" and never.value.device_code is None


SALE_COMMANDS = {0x8D, 0xFF61, 0xFF69, 0xFF46, 0xFF4D, 0xFF67, 0xFF45}


@pytest.mark.parametrize("open_first", [False, True], ids=["check-first", "open-first"])
def test_the_order_of_a_marked_sale_on_the_wire(tmp_path: Path, open_first: bool) -> None:
    """What a marked sale sends, in order. By default, the vendor's example's order: the
    receipt opened first, each code checked and accepted inside it; with ``?open_first=0``
    the codes are checked as the units are scanned and the receipt is opened at close. Either
    way each position is followed by its 1260 tags and then its code's binding, and the
    close."""
    query = "" if open_first else "open_first=0"
    with testing.shtrih_printer(tmp_path / "kkt", query=query) as (printer, kkt):
        printer.ensure_shift(new_op_id())
        sent: list[int] = []
        exchange = printer.link.exchange  # type: ignore[attr-defined]

        def record(request: Any, *args: Any) -> Any:
            if request.command in SALE_COMMANDS:
                sent.append(request.command)
            return exchange(request, *args)

        printer.link.exchange = record  # type: ignore[attr-defined]
        printer.open_receipt(new_op_id())
        positions = []
        for km in (SHOES, WATER):
            check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
            assert check.accepted
            positions.append(marked(km, check.validation))
            printer.add_position(new_op_id(), positions[-1])
        result = printer.close_receipt(new_op_id(), [Payment(2 * 8990)])

    checks = [0xFF61, 0xFF69, 0xFF61, 0xFF69]
    registered = [0xFF46, 0xFF4D, 0xFF67, 0xFF46, 0xFF4D, 0xFF67, 0xFF45]
    if open_first:
        assert sent == [0x8D, *checks, *registered]
    else:
        assert sent == [*checks, 0x8D, *registered]
    receipt = kkt.receipts()[-1]
    assert receipt["number"] == result.document_number
    assert [p["ki"] for p in receipt["positions"]] == [SHOES_KI, WATER_KI]


def test_the_receipt_markd_opened_ahead_is_no_problem_but_a_leftover_is(tmp_path: Path) -> None:
    """In the vendor's order the receipt is open on the ККТ while the units come: the status
    says so, but it is markd's own (no ``receipt-open`` problem for the kiosk to show); a
    receipt left open by a crash or another client is one."""
    with testing.shtrih_printer(tmp_path / "kkt") as (printer, kkt):
        printer.ensure_shift(new_op_id())
        printer.open_receipt(new_op_id())

        ours = printer.status()

        assert ours.receipt_open is True and ours.receipt_is_ours is True
        assert "receipt-open" not in ours.problems()
        printer.cancel_receipt(new_op_id())
        assert printer.status().receipt_open is False
        kkt.set_faults(receipt_left_open=True)
        left = printer.status()
        assert left.receipt_open is True and left.receipt_is_ours is False
        assert left.problems() == ["receipt-open"]


def test_a_shift_that_runs_out_under_a_receipt_opened_ahead_is_closed_and_sold_anew(
    tmp_path: Path,
) -> None:
    """A receipt open on the ККТ hides the shift's mode; its age still tells it is over. The
    status says ``expired``, making sure of the shift cancels the receipt, closes the shift
    and opens a new one, and the units, checked again, are sold in it."""
    with testing.shtrih_printer(tmp_path / "kkt") as (printer, kkt):
        printer.ensure_shift(new_op_id())
        printer.open_receipt(new_op_id())
        check = printer.check_code(new_op_id(), SHOES, SHOES_KI, 1)
        printer.add_position(new_op_id(), marked(SHOES, check.validation))
        kkt.set_faults(shift_age_hours=25)

        assert printer.status().shift_state == "expired"
        opened = printer.ensure_shift(new_op_id())
        kkt.set_faults(shift_age_hours=None)

        assert opened is not None and opened.state == "opened"
        assert printer.status().receipt_open is False and printer.status().shift_state == "opened"
        try:
            result = printer.close_receipt(new_op_id(), [Payment(8990)])
        except MarkNotValidated:  # the ФН dropped the codes with the cancelled receipt
            check = printer.check_code(new_op_id(), SHOES, SHOES_KI, 1)
            printer.restore_receipt("sell", [marked(SHOES, check.validation)])
            result = printer.close_receipt(new_op_id(), [Payment(8990)])
        assert [r["number"] for r in kkt.receipts()] == [result.document_number]
        assert kkt.receipts()[0]["shift"] == opened.number
