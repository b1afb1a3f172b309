"""Attendant mode in the real daemon: scans are only reported, the POS drives receipts through
the control API (real Unix socket) onto the virtual ККТ behind ``emulator://``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from api_helpers import Conversation
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
from markd.systemd import MESSAGE_IDS, EventLog
from sale_helpers import events, journal, kkt, running, write_sale_config


async def test_attendant_scans_are_reported_and_never_touch_the_printer(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-scan"}
    )
    async with running(config, event_log) as service:
        get_virtual("attendant-scan").scan(WATER)
        get_virtual("attendant-scan").scan(SHOES)
        await wait_until(lambda: event_log.count("verdict") == 2, what="two verdicts")
        await asyncio.sleep(0.3)  # time enough for a unit to reach the ККТ, were it sent
        receipt = await service.receipts.current()  # type: ignore[union-attr]
        status = service.receipts.status()  # type: ignore[union-attr]

    assert [v["decision"] for v in events(event_log, "verdict")] == ["allow", "allow"]
    assert receipt is None and status["mode"] == "attendant"
    assert event_log.count("sale-unit") == 0 and event_log.count("sale-refused") == 0
    assert event_log.count("fiscal-unit") == 0
    device = kkt(tmp_path)
    assert device.receipts() == [] and device.state()["validation"] is None
    assert journal(tmp_path).records() == []


async def test_attendant_the_pos_drives_a_whole_sale_and_a_return_through_the_api(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-api"}, catalog=None
    )
    water = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
    shoes = {"code": SHOES, "name": "Кроссовки", "price_kopecks": 599000, "tax": "vat20"}
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))

        async def call(method: str, target: str, body: Any = None) -> tuple[int, Any]:
            answer = await conversation.request(method, target, body)
            return answer.status, answer.json()

        status, body = await call("POST", "/v1/receipt/close")
        assert (status, body["error"]) == (409, "receipt-not-open")
        status, body = await call("POST", "/v1/receipt", {})
        assert status == 201 and body["receipt"]["units"] == []
        assert (await call("POST", "/v1/receipt", {}))[1]["error"] == "receipt-open"

        status, body = await call("POST", "/v1/receipt/items", water)
        assert status == 200 and body["verdict"]["scanner"] == "api"
        status, body = await call("POST", "/v1/receipt/items", shoes)
        assert status == 200
        assert [(u["ki"], u["tax"]) for u in body["receipt"]["units"]] == [
            (WATER_KI, "none"),
            (SHOES_KI, "vat20"),
        ]
        status, body = await call("POST", "/v1/receipt/items", water)
        assert (status, body["error"]) == (409, "duplicate-in-receipt")
        status, body = await call(
            "POST", "/v1/receipt/close", {"payments": [{"type": "cash", "amount_kopecks": 100}]}
        )
        assert (status, body["error"]) == (422, "underpaid")
        printer = (await call("GET", "/v1/status"))[1]["printer"]
        assert printer["receipt"]["units"] == 2 and printer["state"] == "ready"

        status, sold = await call(
            "POST",
            "/v1/receipt/close",
            {
                "payments": [
                    {"type": "electronically", "amount_kopecks": 599000},
                    {"type": "cash", "amount_kopecks": 8990},
                ]
            },
        )
        assert status == 200, sold
        assert await call("GET", "/v1/receipt") == (200, {"receipt": None})

        # A unit sold here comes back on a return receipt (its verdict reads sold-here).
        assert (await call("POST", "/v1/receipt", {"kind": "return"}))[0] == 201
        status, body = await call("POST", "/v1/receipt/items", water)
        assert status == 200 and body["verdict"]["decision"] == "deny"
        assert body["receipt"]["kind"] == "return"
        status, returned = await call("POST", "/v1/receipt/close")
        assert status == 200, returned

        # With no receipt open, an item starts a sale; cancel drops it.
        status, body = await call(
            "POST", "/v1/receipt/items", {"code": DAIRY, "name": "Кефир", "price_kopecks": 9900}
        )
        assert status == 200 and body["receipt"]["kind"] == "sell"
        status, body = await call("POST", "/v1/receipt/cancel")
        assert status == 200 and body["receipt"]["status"] == "cancelled"
        conversation.close()

    documents = kkt(tmp_path).receipts()
    assert [d["type"] for d in documents] == ["sell", "sellReturn"]
    assert [p["ki"] for p in documents[0]["positions"]] == [WATER_KI, SHOES_KI]
    assert sold["receipt"]["document"]["document_number"] == documents[0]["number"]
    assert sold["receipt"]["document"]["total_kopecks"] == 607990
    assert [p["ki"] for p in documents[1]["positions"]] == [WATER_KI]
    assert documents[1]["positions"][0]["tags"]["2003"] == 3
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        assert store.lookup(parse(SHOES)).sold is not None
        assert store.lookup(parse(WATER)).sold is None  # returned
        assert store.lookup(parse(DAIRY)).sold is None  # cancelled
    units = events(event_log, "sale-unit")
    assert [(u["ki"], u["scanner"], u["price_source"]) for u in units] == [
        (WATER_KI, "api", "api"),
        (SHOES_KI, "api", "api"),
        (WATER_KI, "api", "api"),
        (DAIRY_KI, "api", "api"),
    ]
    assert [r["reason"] for r in events(event_log, "sale-refused")] == ["duplicate-in-receipt"]
    for tail in (WATER.split(GS)[1], SHOES.split(GS)[2], DAIRY.split(GS)[1]):
        assert tail not in event_log.text


async def test_attendant_printer_faults_come_back_as_api_errors_with_their_reason(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-fault"}, catalog=None
    )
    kkt(tmp_path).set_faults(paper_out=True)
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        added = await conversation.request(
            "POST", "/v1/receipt/items", {"code": WATER, "name": "Вода", "price_kopecks": 100}
        )
        kkt(tmp_path).clear_faults()
        again = await conversation.request(
            "POST", "/v1/receipt/items", {"code": WATER, "name": "Вода", "price_kopecks": 100}
        )
        kkt(tmp_path).set_faults(paper_out=True)
        closed = await conversation.request("POST", "/v1/receipt/close")
        still = await conversation.request("GET", "/v1/receipt")
        conversation.close()

    assert added.status in (409, 503) and added.json()["error"] == "paper-out"
    assert again.status == 200
    assert (closed.status, closed.json()["error"]) == (409, "paper-out")
    assert still.json()["receipt"]["state"] == "paid"  # paid, waiting: registered later
    assert [r["reason"] for r in events(event_log, "sale-refused")] == ["paper-out"]


async def test_attendant_a_payment_the_kkt_refused_is_corrected_by_the_next_close(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-pay"}, catalog=None
    )
    water = {"code": WATER, "name": "Вода", "price_kopecks": 8990}

    def card(kopecks: int) -> dict[str, Any]:
        return {"payments": [{"type": "electronically", "amount_kopecks": kopecks}]}

    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        assert (await conversation.request("POST", "/v1/receipt/items", water)).status == 200
        refused = await conversation.request("POST", "/v1/receipt/close", card(9000))
        short = await conversation.request("POST", "/v1/receipt/close", card(8000))
        closed = await conversation.request("POST", "/v1/receipt/close", card(8990))
        conversation.close()

    # The ККТ refused a card payment above the total: nothing was registered, so the next
    # close's payments are used — and judged (underpaid) like a first close's.
    assert (refused.status, refused.json()["error"]) == (409, "bad-payment")
    assert (short.status, short.json()["error"]) == (422, "underpaid")
    assert closed.status == 200, closed.body
    receipt = closed.json()["receipt"]
    assert receipt["payments"] == [{"type": "electronically", "amount_kopecks": 8990}]
    assert receipt["payments_ignored"] is False
    assert receipt["document"]["payments"] == receipt["payments"]
    (document,) = kkt(tmp_path).receipts()
    assert document["payments"] == [{"type": "electronically", "amount": 8990}]
    assert "corrected payments" in refused.json()["message"]  # the answer says what to do


async def test_prices_each_within_the_cap_whose_total_is_not_are_refused_before_the_printer(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """Two units each at a price the ККТ takes, their total not (2**40 − 1 + 1 kopecks): the
    second is refused with 422 ``money-out-of-range`` and never reaches the ККТ; the receipt
    with the first one closes."""
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-total"}, catalog=None
    )
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        first = await conversation.request(
            "POST",
            "/v1/receipt/items",
            {"code": SHOES, "name": "Кроссовки", "price_kopecks": 2**40 - 1},
        )
        second = await conversation.request(
            "POST", "/v1/receipt/items", {"code": WATER, "name": "Вода", "price_kopecks": 1}
        )
        closed = await conversation.request(
            "POST",
            "/v1/receipt/close",
            {"payments": [{"type": "electronically", "amount_kopecks": 2**40 - 1}]},
        )
        conversation.close()

    assert first.status == 200, first.body
    assert (second.status, second.json()["error"]) == (422, "money-out-of-range")
    assert "the receipt's total is at most 1099511627775" in second.json()["message"]
    assert closed.status == 200, closed.body
    documents = kkt(tmp_path).receipts()
    assert [[p["ki"] for p in d["positions"]] for d in documents] == [[SHOES_KI]]


async def test_a_price_of_ten_to_the_thirty_is_refused_before_the_printer(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """Issue 15: a POS (or anyone on the socket) asking for a unit at 10**30 kopecks, or paying
    10**30, gets a 400 with a reason; no check is made, the ККТ is never asked and no
    fiscal document is made."""
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-caps"}, catalog=None
    )
    water = {"code": WATER, "name": "Вода", "price_kopecks": 8990}
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        prices = [
            await conversation.request(
                "POST", "/v1/receipt/items", {**water, "price_kopecks": price}
            )
            for price in (10**30, 2**40, -8990)
        ]
        fraction = await conversation.request(
            "POST", "/v1/receipt/items", {**water, "price_kopecks": 89.9}
        )
        escapes = await conversation.request(
            "POST", "/v1/receipt/items", {**water, "name": "Вода\x1b[2J\u202e"}
        )
        verdicts_before_a_sale = event_log.count("verdict")
        added = await conversation.request("POST", "/v1/receipt/items", water)
        payments = [
            await conversation.request(
                "POST",
                "/v1/receipt/close",
                {"payments": [{"type": "electronically", "amount_kopecks": amount}]},
            )
            for amount in (10**30, 2**40, 0, -1)
        ]
        split = await conversation.request(
            "POST",
            "/v1/receipt/close",
            {"payments": [{"type": "cash", "amount_kopecks": 2**40 - 1}] * 2},
        )
        documents_while_open = kkt(tmp_path).receipts()
        closed = await conversation.request("POST", "/v1/receipt/close")
        conversation.close()

    assert [(a.status, a.json()["error"]) for a in prices] == [(400, "money-out-of-range")] * 3
    assert "price_kopecks: a price is at most 1099511627775 kopecks" in prices[0].json()["message"]
    assert "price_kopecks: a price cannot be negative" in prices[2].json()["message"]
    assert (fraction.status, fraction.json()["error"]) == (400, "bad-request")
    assert (escapes.status, escapes.json()["error"]) == (400, "bad-request")
    assert "name holds the control character U+001B" in escapes.json()["message"]
    assert verdicts_before_a_sale == 0  # refused before the check, let alone the printer
    assert added.status == 200
    assert [(a.status, a.json()["error"]) for a in payments] == [(400, "money-out-of-range")] * 4
    assert "payments item 1: amount_kopecks: a payment is at most" in payments[0].json()["message"]
    # Each payment within the cap, their sum not: the sale desk refuses it (422).
    assert (split.status, split.json()["error"]) == (422, "money-out-of-range")
    assert documents_while_open == []
    assert closed.status == 200
    (document,) = kkt(tmp_path).receipts()
    assert document["payments"] == [{"type": "electronically", "amount": 8990}]


async def test_attendant_an_item_is_checked_at_the_price_it_is_sold_at(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    token = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
    with crpt_cdn({"cdn": {"token": token}}) as cdn:
        (tmp_path / "token").write_text(token + "\n")
        extra = (
            '[check]\nmode = "direct"\n\n'
            f'[check.online]\nurl = "{cdn.url}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        )
        config = write_sale_config(
            tmp_path, mode="attendant", scanners={}, catalog=None, extra=extra
        )
        async with running(config, event_log):
            conversation = await Conversation.unix(str(tmp_path / "control.sock"))
            pack = {"code": TOBACCO_PACK, "name": "Сигареты"}
            above = await conversation.request(
                "POST", "/v1/receipt/items", {**pack, "price_kopecks": 25000}
            )
            at_mrp = await conversation.request(
                "POST", "/v1/receipt/items", {**pack, "price_kopecks": 22500}
            )
            closed = await conversation.request("POST", "/v1/receipt/close")
            conversation.close()

    # The pack's code carries its MRP (225.00): a higher price is refused before the ККТ.
    assert (above.status, above.json()["error"]) == (409, "code-not-allowed")
    verdict = above.json()["verdict"]
    assert (verdict["decision"], verdict["reason"]) == ("deny", "price-not-mrp")
    assert verdict["details"]["price_kopecks"] == 25000 and verdict["details"]["mrp"] == 22500
    assert at_mrp.status == 200, at_mrp.body
    assert closed.status == 200, closed.body
    (document,) = kkt(tmp_path).receipts()
    assert [(p["ki"], p["price"]) for p in document["positions"]] == [(TOBACCO_PACK_KI, 22500)]


class JournaldRecorder:
    """Stands in for ``systemd.journal``: keeps each entry's fields as journald gets them
    (``EventLog(target="journal")`` sends MESSAGE, MESSAGE_ID, MARKD_EVENT, MARKD_* …)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def send(self, **fields: str) -> None:
        self.entries.append(fields)

    def of(self, kind: str) -> list[dict[str, str]]:
        return [e for e in self.entries if e["MARKD_EVENT"] == kind]


async def test_attendant_a_receipt_left_waiting_is_recovered_before_the_next_operation(
    tmp_path: Path,
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-wait"}, catalog=None
    )
    journald = JournaldRecorder()
    log = EventLog(target="journal", journal=journald)
    water = {"code": WATER, "name": "Вода", "price_kopecks": 8990}
    async with running(config, log) as service:  # type: ignore[arg-type]
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        assert (await conversation.request("POST", "/v1/receipt/items", water)).status == 200
        rid = service.sale_desk.session.receipt_id  # type: ignore[union-attr]
        kkt(tmp_path).set_faults(gone_in_receipt="after")  # registered, the answer lost
        closing = await conversation.request("POST", "/v1/receipt/close")
        waiting = service.receipts.status()["recovery_pending"]  # type: ignore[union-attr]
        before = len(journald.entries)
        kkt(tmp_path).clear_faults()
        opened = await conversation.request("POST", "/v1/receipt", {})
        conversation.close()

    assert closing.status == 503 and waiting is True
    assert opened.status == 201, opened.body
    after = journald.entries[before:]
    kinds = [e["MARKD_EVENT"] for e in after]
    # The recovery is journaled before it runs, naming the operation it precedes; the
    # receipt it settles comes next, then the operation itself.
    (record,) = journald.of("sale-recovery")
    assert record["MESSAGE_ID"] == MESSAGE_IDS["sale-recovery"]
    assert (record["MARKD_OPERATION"], record["MARKD_RECEIPT"]) == ("open", rid)
    assert kinds.index("sale-recovery") < kinds.index("fiscal-recovery")
    (settled,) = [e for e in after if e["MARKD_EVENT"] == "fiscal-recovery"]
    assert (settled["MARKD_RECEIPT"], settled["MARKD_STATUS"]) == (rid, "closed")
    assert opened.json()["receipt"]["id"] != rid
    assert len(kkt(tmp_path).receipts()) == 1  # found by its request id, not printed twice


async def test_attendant_no_recovery_runs_before_an_operation_when_nothing_waits(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(
        tmp_path, mode="attendant", scanners={"till": "virtual://attendant-calm"}, catalog=None
    )
    water = {"code": WATER, "name": "Вода", "price_kopecks": 8990}
    async with running(config, event_log):
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        added = await conversation.request("POST", "/v1/receipt/items", water)
        closed = await conversation.request("POST", "/v1/receipt/close")
        conversation.close()
    assert (added.status, closed.status) == (200, 200)
    assert event_log.count("sale-recovery") == 0
