"""Kiosk mode in the real daemon: virtual scanners, the check chain (mode direct against the
CDN emulator, for real tag 1265 values), the virtual ККТ behind ``emulator://``, and the control
API on its Unix socket — the kiosk screen's view."""

from __future__ import annotations

import asyncio
from pathlib import Path

from api_helpers import Conversation, EventStream
from conftest import (
    DAIRY,
    DAIRY_KI,
    GS,
    SHOES,
    SHOES_KI,
    TOBACCO_PACK,
    TOBACCO_PACK_KI,
    WATER,
    WATER_KI,
    RecordingEventLog,
    wait_until,
)
from markd.codes import parse
from markd.emulators.testing import crpt_cdn
from markd.scanners import get_virtual
from markd.store import Store
from sale_helpers import (
    WATER_PRICE,
    events,
    journal,
    kkt,
    running,
    wait_for_units,
    write_sale_config,
)

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"


def online_check(directory: Path, cdn_url: str) -> str:
    (directory / "token").write_text(TOKEN + "\n")
    return (
        '[check]\nmode = "direct"\n\n'
        f'[check.online]\nurl = "{cdn_url}"\ntoken_file = "{directory / "token"}"\n\n'
    )


def block(directory: Path, ki: str) -> None:
    with Store.open(str(directory / "store"), map_size_mb=8) as store:
        store.block(ki, "recalled batch", source="head office")


async def test_kiosk_allowed_scans_go_on_the_receipt_and_close_prints_one_receipt(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn:
        config = write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={"front": "virtual://kiosk-front", "side": "virtual://kiosk-side"},
            extra=online_check(tmp_path, cdn.url),
        )
        block(tmp_path, DAIRY_KI)
        async with running(config, event_log):
            conversation = await Conversation.unix(str(tmp_path / "control.sock"))
            stream = await EventStream.open(
                await Conversation.unix(str(tmp_path / "control.sock")), "/v1/events?kinds=sale"
            )
            get_virtual("kiosk-front").scan(WATER)
            get_virtual("kiosk-side").scan(DAIRY)  # blocked: denied, never reaches the ККТ
            get_virtual("kiosk-front").scan(SHOES)  # allowed, but not in the price list
            get_virtual("kiosk-side").scan(TOBACCO_PACK)  # priced at the MRP in its code
            await wait_for_units(event_log, 3)
            published = [await stream.event() for _ in range(3)]

            receipt = (await conversation.request("GET", "/v1/receipt")).json()["receipt"]
            status = (await conversation.request("GET", "/v1/status")).json()["printer"]
            closed = await conversation.request(
                "POST",
                "/v1/receipt/close",
                {"payments": [{"type": "electronically", "amount_kopecks": WATER_PRICE + 22500}]},
            )
            after = (await conversation.request("GET", "/v1/receipt")).json()["receipt"]
            stream.conversation.close()
            conversation.close()
            verdicts = {f["ki"]: f for f in events(event_log, "verdict")}

    # The screen saw each outcome with the scanner that read the unit (two scanners: the
    # order between them is the order the scans arrived in).
    outcomes = {e["data"]["ki"]: e for e in published}
    assert {ki: (e["kind"], e["data"]["scanner"]) for ki, e in outcomes.items()} == {
        WATER_KI: ("sale-unit", "front"),
        SHOES_KI: ("sale-refused", "front"),
        TOBACCO_PACK_KI: ("sale-unit", "side"),
    }
    assert outcomes[SHOES_KI]["data"]["reason"] == "no-price"
    assert outcomes[SHOES_KI]["data"]["message_ru"] == (
        "Цена товара не найдена, обратитесь к продавцу"
    )

    # The open receipt: the allowed, priced units, each with the tag 1265 of its own verdict.
    assert receipt["kind"] == "sell" and receipt["state"] == "open"
    units = {u["ki"]: u for u in receipt["units"]}
    assert sorted(units) == sorted([WATER_KI, TOBACCO_PACK_KI])
    assert units[WATER_KI]["price_kopecks"] == WATER_PRICE
    assert units[WATER_KI]["name"] == "Вода питьевая 0,5 л"
    assert units[TOBACCO_PACK_KI]["price_kopecks"] == 22500
    for ki, unit in units.items():
        assert verdicts[ki]["decision"] == "allow" and verdicts[ki]["source"] == "cdn"
        assert unit["tags"]["1265"] == verdicts[ki]["tag1265"]
        assert unit["tags"]["1265"].startswith("UUID=")
    assert verdicts[DAIRY_KI]["reason"] == "blocked-locally"
    assert status["mode"] == "kiosk" and status["state"] == "ready"
    assert status["receipt"]["units"] == 2 and status["catalog"]["entries"] == 2

    # One receipt printed, with exactly those units and their tags; nothing else on the ККТ.
    assert closed.status == 200, closed.body
    body = closed.json()["receipt"]
    assert body["status"] == "closed" and body["store_ok"] is True
    assert after is None
    documents = kkt(tmp_path).receipts()
    assert len(documents) == 1
    printed = {p["ki"]: p for p in documents[0]["positions"]}
    assert sorted(printed) == sorted(units)
    assert body["document"]["document_number"] == documents[0]["number"]
    for ki in printed:
        assert printed[ki]["tags"]["1260"]["1265"] == verdicts[ki]["tag1265"]
    # The denied and the unpriced units never reached the ККТ: the session never validated
    # them (every validation is journaled before it starts).
    journal_text = journal(tmp_path).path.read_text(encoding="utf-8")
    assert DAIRY_KI not in journal_text and SHOES_KI not in journal_text
    assert WATER_KI in journal_text
    assert kkt(tmp_path).state()["accepted"] == []

    # The store knows the printed units as sold, with the receipt's reference.
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in (WATER, TOBACCO_PACK):
            sold = store.lookup(parse(code)).sold
            assert sold is not None and sold.receipt.endswith(f"/{documents[0]['number']}")
        assert store.lookup(parse(SHOES)).sold is None

    # The crypto tails stayed out of the log and the journal.
    for tail in (WATER.split(GS)[1], TOBACCO_PACK[-4:], SHOES.split(GS)[2]):
        assert tail not in event_log.text and tail not in journal_text


async def test_kiosk_a_unit_the_fn_refuses_is_reported_and_the_receipt_goes_on(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://kiosk-fn"})
    kkt(tmp_path).set_code(WATER_KI, oism="sale-stopped")
    async with running(config, event_log) as service:
        scanner = get_virtual("kiosk-fn")
        scanner.scan(WATER)
        scanner.scan(DAIRY)
        await wait_for_units(event_log, 2)
        current = await service.receipts.current()  # type: ignore[union-attr]

    (refused,) = events(event_log, "sale-refused")
    assert (refused["ki"], refused["reason"], refused["source"]) == (
        WATER_KI,
        "oism-sale-stopped",
        "fn",
    )
    assert refused["scanner"] == "front"
    assert current is not None and [u["ki"] for u in current["units"]] == [DAIRY_KI]


async def test_kiosk_verdicts_from_the_api_check_are_not_sold(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://kiosk-q"})
    async with running(config, event_log) as service:
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        answer = await conversation.request("POST", "/v1/check", {"code": WATER})
        conversation.close()
        receipt = await service.receipts.current()  # type: ignore[union-attr]
        await asyncio.sleep(0.2)

    assert answer.json()["decision"] == "allow"
    assert receipt is None and event_log.count("sale-unit") == 0
    assert kkt(tmp_path).receipts() == [] and kkt(tmp_path).state()["validation"] is None
    assert [r["event"] for r in journal(tmp_path).records()] == []


async def test_kiosk_price_goes_to_the_check_a_tobacco_pack_above_its_mrp_is_denied(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn:
        config = write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={"front": "virtual://kiosk-mrp"},
            catalog="00000046233219;Сигареты;250,00\n",  # the pack's MRP is 225.00
            extra=online_check(tmp_path, cdn.url),
        )
        async with running(config, event_log) as service:
            get_virtual("kiosk-mrp").scan(TOBACCO_PACK)
            await wait_until(lambda: event_log.count("verdict") == 1, what="the verdict")
            await asyncio.sleep(0.2)
            receipt = await service.receipts.current()  # type: ignore[union-attr]

    (verdict,) = events(event_log, "verdict")
    assert verdict["decision"] == "deny" and "price" in verdict["reason"]
    assert receipt is None and event_log.count("sale-unit") == 0


async def test_kiosk_cancel_through_the_api_drops_the_receipt_on_the_device(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://kiosk-x"})
    async with running(config, event_log):
        get_virtual("kiosk-x").scan(WATER)
        await wait_for_units(event_log, 1)
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        cancelled = await conversation.request("POST", "/v1/receipt/cancel")
        again = await conversation.request("POST", "/v1/receipt/cancel")
        conversation.close()

    assert cancelled.status == 200 and cancelled.json()["receipt"]["status"] == "cancelled"
    assert (again.status, again.json()["error"]) == (409, "receipt-not-open")
    assert kkt(tmp_path).receipts() == [] and kkt(tmp_path).state()["accepted"] == []
