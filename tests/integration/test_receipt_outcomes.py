"""Receipt outcomes that survive a crash (issue 18, item 4): ``GET /v1/receipts/{id}`` answers
each receipt's state from the receipt index beside the session journal, across restarts, and
``POST /v1/receipt/close`` with an ``Idempotency-Key`` gives a repeated close the first one's
answer. The real daemon, the virtual ККТ behind ``emulator://`` and the real control socket."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from api_helpers import Conversation
from conftest import DAIRY, DAIRY_KI, SHOES, WATER, WATER_KI, RecordingEventLog
from markd.fiscal.journal import SessionJournal
from markd.fiscal.receipt_index import MAX_KEYS_PER_RECEIPT, ReceiptIndex
from sale_helpers import journal, kkt, running, write_sale_config

WATER_ITEM = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
SHOES_ITEM = {"code": SHOES, "name": "Кроссовки", "price_kopecks": 599000}
DAIRY_ITEM = {"code": DAIRY, "name": "Кефир 1 л", "price_kopecks": 9900}
UNKNOWN_ID = "3f2b8c1e-5d4a-4e7b-9c2d-1a0b3c4d5e6f"


class Api:
    """One connection to the daemon's control socket."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    @classmethod
    async def connect(cls, directory: Path) -> Api:
        return cls(await Conversation.unix(str(directory / "control.sock")))

    async def call(
        self, method: str, target: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        headers = None if key is None else {"Idempotency-Key": key}
        answer = await self.conversation.request(method, target, body, headers)
        return answer.status, answer.json()

    async def receipt(self, rid: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/receipts/{rid}")
        assert status == 200, body
        return body["receipt"]

    def close(self) -> None:
        self.conversation.close()


def attendant(directory: Path) -> Path:
    return write_sale_config(directory, mode="attendant", scanners={}, catalog=None)


async def test_receipt_outcome_from_open_to_registered_with_the_fiscal_document(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = attendant(tmp_path)
    async with running(config, event_log):
        api = await Api.connect(tmp_path)
        status, opened = await api.call("POST", "/v1/receipt", {})
        assert status == 201
        rid = opened["receipt"]["id"]
        just_opened = await api.receipt(rid)
        assert (await api.call("POST", "/v1/receipt/items", WATER_ITEM))[0] == 200
        status, closed = await api.call("POST", "/v1/receipt/close", {"receipt": rid})
        assert status == 200, closed
        registered = await api.receipt(rid)

        # Another receipt, cancelled.
        status, second = await api.call("POST", "/v1/receipt/items", DAIRY_ITEM)
        assert status == 200
        other = second["receipt"]["id"]
        assert (await api.call("POST", "/v1/receipt/cancel"))[0] == 200
        cancelled = await api.receipt(other)
        api.close()

    second_run = RecordingEventLog()
    async with running(config, second_run):
        api = await Api.connect(tmp_path)
        after_restart = await api.receipt(rid)
        cancelled_after = await api.receipt(other)
        api.close()

    (document,) = kkt(tmp_path).receipts()
    assert (just_opened["state"], just_opened["kind"], just_opened["document_number"]) == (
        "open",
        "sell",
        None,
    )
    assert registered["state"] == "registered" and registered["reason"] == "fiscalised"
    assert registered["document_number"] == document["number"]
    assert registered["fiscal_sign"] == document["fiscal_sign"] is not None
    assert registered["fn_number"] == document["fn_number"]
    assert registered["total_kopecks"] == 8990
    assert registered["payments"] == [{"type": "electronically", "amount_kopecks": 8990}]
    assert closed["receipt"]["document"]["fiscal_sign"] == document["fiscal_sign"]
    assert after_restart == registered
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "cancelled-by-api")
    assert cancelled_after == cancelled


async def test_receipt_outcome_bad_and_unknown_ids_never_stop_the_daemon(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(attendant(tmp_path), event_log):
        api = await Api.connect(tmp_path)
        unknown = await api.call("GET", f"/v1/receipts/{UNKNOWN_ID}")
        upper = await api.call("GET", f"/v1/receipts/{UNKNOWN_ID.upper()}")
        malformed = [
            await api.call("GET", f"/v1/receipts/{text}")
            for text in (
                "not-a-receipt",
                "",
                UNKNOWN_ID + "0",
                UNKNOWN_ID.replace("-", "_"),
                "%00" * 12,
                "x" * 4000,
            )
        ]
        deeper = await api.call("GET", f"/v1/receipts/{UNKNOWN_ID}/document")
        answer = await api.conversation.request("POST", f"/v1/receipts/{UNKNOWN_ID}", {})
        bad_body = await api.call("POST", "/v1/receipt/close", {"receipt": "42"})
        alive = await api.call("GET", "/v1/status")
        api.close()

    assert unknown == (
        404,
        {"error": "receipt-not-found", "message": f"no receipt {UNKNOWN_ID} is known here"},
    )
    assert upper[0] == 404
    assert [(status, body["error"]) for status, body in malformed] == [(400, "bad-receipt-id")] * 6
    assert deeper[0] == 404 and deeper[1]["error"] == "not-found"
    assert (answer.status, answer.headers["allow"]) == (405, "GET")
    assert bad_body[0] == 400 and bad_body[1]["error"] == "bad-receipt-id"
    assert alive[0] == 200
    assert "x" * 100 not in event_log.text


async def test_receipt_outcome_of_a_close_a_stop_interrupted_and_of_a_parked_unpaid_one(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """The ККТ stops answering as the customer pays: the close answers 503 and the receipt
    reads ``closing``; markd stops; the next start registers it, and the receipt reads
    ``registered`` with the document's number. An unpaid receipt parked by a stop reads
    ``cancelled`` after the start that cancels it."""
    config = attendant(tmp_path)
    async with running(config, event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        status, body = await api.call("POST", "/v1/receipt/items", DAIRY_ITEM)
        paid = body["receipt"]["id"]
        kkt(tmp_path).set_faults(gone=True)
        closing = await api.call("POST", "/v1/receipt/close", key="kiosk-7/sale-1")
        waiting = await api.receipt(paid)
        api.close()
    kkt(tmp_path).clear_faults()

    second = RecordingEventLog()
    async with running(config, second):
        api = await Api.connect(tmp_path)
        registered = await api.receipt(paid)
        # A receipt being built when markd stops is cancelled at the next start.
        status, body = await api.call("POST", "/v1/receipt/items", SHOES_ITEM)
        assert status == 200, body
        unpaid = body["receipt"]["id"]
        building = await api.receipt(unpaid)
        api.close()

    third = RecordingEventLog()
    async with running(config, third):
        api = await Api.connect(tmp_path)
        cancelled = await api.receipt(unpaid)
        still = await api.receipt(paid)
        again = await api.call("POST", "/v1/receipt/close", key="kiosk-7/sale-1")
        api.close()

    (document,) = kkt(tmp_path).receipts()
    assert closing[0] == 503, closing
    assert waiting["state"] == "closing" and waiting["document_number"] is None
    assert registered["state"] == "registered"
    assert registered["document_number"] == document["number"]
    assert registered["fiscal_sign"] == document["fiscal_sign"]
    assert sorted(p["ki"] for p in document["positions"]) == sorted([WATER_KI, DAIRY_KI])
    assert building["state"] == "open"
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "interrupted-before-payment")
    assert still == registered
    # The close asked with that key before the stop gets the receipt recovery registered.
    assert again[0] == 200, again
    assert again[1]["receipt"]["id"] == paid
    assert again[1]["receipt"]["document"]["document_number"] == document["number"]


async def test_receipt_close_repeated_with_its_key_gives_the_same_answer_across_a_restart(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = attendant(tmp_path)
    async with running(config, event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        first = await api.call("POST", "/v1/receipt/close", key="screen-1 close #1")
        repeated = await api.call("POST", "/v1/receipt/close", key="screen-1 close #1")
        unkeyed = await api.call("POST", "/v1/receipt/close")
        rid = first[1]["receipt"]["id"]
        named = await api.call(
            "POST", "/v1/receipt/close", {"receipt": rid}, key="screen-1 close #1"
        )
        api.close()

    second = RecordingEventLog()
    async with running(config, second):
        api = await Api.connect(tmp_path)
        after_restart = await api.call("POST", "/v1/receipt/close", key="screen-1 close #1")
        # The same key for another receipt is refused, whichever way it is meant.
        await api.call("POST", "/v1/receipt/items", DAIRY_ITEM)
        reused = await api.call("POST", "/v1/receipt/close", key="screen-1 close #1")
        status, current = await api.call("GET", "/v1/receipt")
        other = current["receipt"]["id"]
        reused_named = await api.call(
            "POST", "/v1/receipt/close", {"receipt": other}, key="screen-1 close #1"
        )
        closed_other = await api.call("POST", "/v1/receipt/close", key="screen-1 close #2")
        api.close()

    assert first[0] == 200, first
    assert repeated == first and named == first and after_restart == first
    assert unkeyed[0] == 409 and unkeyed[1]["error"] == "receipt-not-open"
    assert [d["number"] for d in kkt(tmp_path).receipts()] == [
        first[1]["receipt"]["document"]["document_number"],
        closed_other[1]["receipt"]["document"]["document_number"],
    ]  # one document per receipt: the repeats printed nothing
    for refusal in (reused, reused_named):
        assert refusal[0] == 422 and refusal[1]["error"] == "idempotency-key-reused"
        assert first[1]["receipt"]["id"] in refusal[1]["message"]
    assert closed_other[0] == 200 and closed_other[1]["receipt"]["id"] == other
    assert "screen-1 close #1" in [
        r.get("key") for r in journal(tmp_path).records() if r["event"] == "close-requested"
    ]


async def test_receipt_close_retried_with_its_key_after_a_lost_answer_registers_once(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """The first close's answer is lost (503: the ККТ fiscalised, then the link broke); the
    screen asks again with the same key and gets the registered receipt, printed once; a
    third ask gets exactly that answer again."""
    async with running(attendant(tmp_path), event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        kkt(tmp_path).set_faults(gone_in_receipt="after")  # registered, the answer lost
        lost = await api.call("POST", "/v1/receipt/close", key="k-lost")
        kkt(tmp_path).clear_faults()  # the link is back
        settled = await api.call("POST", "/v1/receipt/close", key="k-lost")
        third = await api.call("POST", "/v1/receipt/close", key="k-lost")
        api.close()

    (document,) = kkt(tmp_path).receipts()
    assert lost[0] == 503 and lost[1]["error"] in ("outcome-unknown", "printer-unavailable")
    assert settled[0] == 200, settled
    assert settled[1]["receipt"]["document"]["document_number"] == document["number"]
    assert third == settled


async def test_receipt_close_refuses_bad_idempotency_keys_before_anything_is_done(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(attendant(tmp_path), event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        refused = []
        for key in ("", "k" * 65, "ключ", "tab\there"):
            answer = await api.conversation.request(
                "POST", "/v1/receipt/close", None, {"Idempotency-Key": key}
            )
            refused.append((answer.status, answer.json()["error"]))
        longest = await api.call("POST", "/v1/receipt/close", key="~" * 64)
        api.close()

    assert refused == [(400, "bad-idempotency-key")] * 4
    assert longest[0] == 200  # nothing refused was closed: the receipt was still open
    assert len(kkt(tmp_path).receipts()) == 1


async def test_receipt_close_keys_per_receipt_are_bounded(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(attendant(tmp_path), event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        kkt(tmp_path).set_faults(paper_out=True)  # every close refused: the receipt stays
        answers = [
            await api.call("POST", "/v1/receipt/close", key=f"attempt-{n}")
            for n in range(MAX_KEYS_PER_RECEIPT + 1)
        ]
        kkt(tmp_path).clear_faults()
        repeated = await api.call("POST", "/v1/receipt/close", key="attempt-0")
        api.close()

    assert {status for status, _ in answers[:-1]} == {409}
    assert answers[-1][0] == 422 and answers[-1][1]["error"] == "idempotency-key-limit"
    assert repeated[0] == 200  # a key the receipt already had still closes it


async def test_receipt_index_damaged_or_lost_is_rebuilt_from_the_journal_at_start(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = attendant(tmp_path)
    async with running(config, event_log):
        api = await Api.connect(tmp_path)
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        status, closed = await api.call("POST", "/v1/receipt/close", key="k-1")
        rid = closed["receipt"]["id"]
        before = await api.receipt(rid)
        api.close()

    index = tmp_path / "fiscal" / "session.journal.index"
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"not an SQLite database, a torn write\n" * 100)
    second = RecordingEventLog()
    async with running(config, second):
        api = await Api.connect(tmp_path)
        rebuilt = await api.receipt(rid)
        replayed = await api.call("POST", "/v1/receipt/close", key="k-1")
        api.close()

    for path in [index, *index.parent.glob("session.journal.index-*")]:
        path.unlink()
    third = RecordingEventLog()
    async with running(config, third):
        api = await Api.connect(tmp_path)
        recreated = await api.receipt(rid)
        api.close()

    assert rebuilt == before == recreated
    assert replayed == (200, closed)
    assert (tmp_path / "fiscal" / "session.journal.index.corrupt").exists()
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)


async def test_receipt_outcome_is_answered_while_an_operation_holds_the_receipt(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """A screen polls the receipt while its close runs: the answer needs neither the receipt
    lock nor the ККТ."""
    async with running(attendant(tmp_path), event_log) as service:
        api = await Api.connect(tmp_path)
        status, body = await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        rid = body["receipt"]["id"]
        lock = service.sale_desk.session.lock  # type: ignore[union-attr]
        await lock.acquire()  # as a close waiting for the ККТ holds it
        try:
            answer = await asyncio.wait_for(api.call("GET", f"/v1/receipts/{rid}"), 2)
        finally:
            lock.release()
        api.close()

    assert answer[0] == 200 and answer[1]["receipt"]["state"] == "open"


async def test_receipt_items_racing_reloads_get_real_verdicts(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """``POST /v1/receipt/items`` checks its code in the scan loop's queue: reloads through
    the API that reopen the store each time run between two checks, so every unit gets a real
    answer — added, or refused as a duplicate — never an ``internal-error`` verdict."""
    config = attendant(tmp_path)
    text = config.read_text(encoding="utf-8")

    async def items(count: int) -> list[tuple[int, Any]]:
        api = await Api.connect(tmp_path)
        answers = [await api.call("POST", "/v1/receipt/items", WATER_ITEM) for _ in range(count)]
        api.close()
        return answers

    async def reloads(count: int) -> list[int]:
        api = await Api.connect(tmp_path)
        statuses = []
        for number in range(count):
            store = tmp_path / f"store{number % 2}"
            config.write_text(text.replace(f'"{tmp_path / "store"}"', f'"{store}"'), "utf-8")
            statuses.append((await api.call("POST", "/v1/reload"))[0])
        api.close()
        return statuses

    async with running(config, event_log):
        first, second, reloaded = await asyncio.gather(items(40), items(40), reloads(8))

    answers = first + second
    assert reloaded == [200] * 8
    assert sum(1 for status, _ in answers if status == 200) == 1  # the unit, once
    refused = {(status, body["error"]) for status, body in answers if status != 200}
    assert refused == {(409, "duplicate-in-receipt")}
    assert event_log.count("service-error") == 0


async def test_receipt_outcome_with_an_index_that_cannot_be_read(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """The index's file replaced under the running daemon by something SQLite cannot open:
    the receipt in flight is still answered (the desk knows it), another id is 503 (not
    known now), and the sale goes on (the journal has every record)."""
    async with running(attendant(tmp_path), event_log) as service:
        api = await Api.connect(tmp_path)
        status, body = await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        rid = body["receipt"]["id"]
        journal_ = service.sale_desk.session.journal  # type: ignore[union-attr]
        journal_.index = ReceiptIndex(tmp_path)  # a directory
        in_flight = await api.receipt(rid)
        other = await api.call("GET", f"/v1/receipts/{UNKNOWN_ID}")
        closed = await api.call("POST", "/v1/receipt/close")
        alive = await api.call("GET", "/v1/status")
        api.close()

    assert (in_flight["state"], in_flight["total_kopecks"]) == ("open", 8990)
    assert other[0] == 503 and other[1]["error"] == "receipt-index-unavailable"
    assert closed[0] == 200 and alive[0] == 200
    assert "closed" in [r["event"] for r in journal(tmp_path).records()]


async def test_receipt_close_key_of_a_receipt_cancelled_after_a_503_answers_cancelled(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    async with running(attendant(tmp_path), event_log):
        api = await Api.connect(tmp_path)
        status, body = await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        rid = body["receipt"]["id"]
        kkt(tmp_path).set_faults(gone=True)
        unreachable = await api.call("POST", "/v1/receipt/close", key="k-503")
        kkt(tmp_path).clear_faults()
        cancelled = await api.call("POST", "/v1/receipt/cancel")
        asked_again = await api.call("POST", "/v1/receipt/close", key="k-503")
        once_more = await api.call("POST", "/v1/receipt/close", key="k-503")
        outcome = await api.receipt(rid)
        api.close()

    assert unreachable[0] == 503 and cancelled[0] == 200
    assert asked_again[0] == 409 and asked_again[1]["error"] == "receipt-cancelled"
    assert rid in asked_again[1]["message"] and once_more == asked_again
    assert outcome["state"] == "cancelled" and kkt(tmp_path).receipts() == []


async def test_receipt_outcome_waits_for_a_technician_while_the_web_requests_queue_is_blocked(
    tmp_path: Path,
) -> None:
    """ATOL's Web Requests queue blocks on the receipt's ``sell`` (it ran; its result is not
    known): recovery cannot settle the receipt by itself, and the index says so; once a
    technician resolves the request, the next recovery finds the receipt registered."""
    from markd.codes import parse
    from markd.fiscal.session import SaleOptions, SaleSession
    from markd.testing import fiscal as testing

    shoes = parse(testing.SHOES)
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        session = SaleSession(printer, None, None, tmp_path / "j", None, SaleOptions())
        added = await session.add(testing.allowed(shoes), shoes, 100, "Кроссовки")
        rid = added.receipt_id
        assert rid is not None
        server.block_next, server.block_task = "after", "sell"

        pending = await session.close()
        blocked = session.journal.index.get(rid)
        again = await session.recover()  # still blocked: journaled once, not at every round
        still = session.journal.index.get(rid)
        server.unblock()
        report = await session.recover()
        settled = session.journal.index.get(rid)
        session.close_session()

    assert (pending.status, pending.reason) == ("pending", "queue-blocked")
    assert blocked is not None and still is not None and settled is not None
    assert (blocked["state"], blocked["reason"]) == ("unknown-needs-technician", "queue-blocked")
    assert again.pending and still["state"] == "unknown-needs-technician"
    events = [r["event"] for r in session.journal.records() if r["receipt"] == rid]
    assert events.count("needs-technician") == 1
    assert [o.status for o in report.outcomes] == ["closed"]
    (document,) = server.kkt.receipts()
    assert settled["state"] == "registered"
    assert settled["document"]["document_number"] == document["number"]


async def test_a_receipt_whose_keyed_close_rotates_the_journal_stays_registered_after_a_restart(
    tmp_path: Path, event_log: RecordingEventLog, monkeypatch: Any
) -> None:
    """The close that makes the journal rotate is answered after the rotation: its
    ``close-answered`` record must not reach the next start as a receipt of its own, which
    recovery would cancel and the index would rebuild from that one record."""
    config = attendant(tmp_path)
    async with running(config, event_log):
        api = await Api.connect(tmp_path)
        status, opened = await api.call("POST", "/v1/receipt", {})
        rid = opened["receipt"]["id"]
        await api.call("POST", "/v1/receipt/items", WATER_ITEM)
        # Any journal is "large": this close rotates it.
        monkeypatch.setattr(SessionJournal.rotate_if_large, "__defaults__", (1, None))
        closed = await api.call("POST", "/v1/receipt/close", key="k-1")
        monkeypatch.undo()
        registered = await api.receipt(rid)
        api.close()
    rotated = (tmp_path / "fiscal" / "session.journal.1").exists()
    carried = [r["event"] for r in journal(tmp_path).records() if r["receipt"] == rid]

    second = RecordingEventLog()
    async with running(config, second):
        api = await Api.connect(tmp_path)
        after_restart = await api.receipt(rid)
        again = await api.call("POST", "/v1/receipt/close", key="k-1")
        api.close()

    assert closed[0] == 200, closed
    assert rotated
    # The answer went into the new journal beside the receipt it answers for.
    assert carried[0] == "open" and carried[-1] == "close-answered" and "closed" in carried
    assert registered["state"] == "registered"
    assert after_restart == registered
    assert again == closed
    assert "cancelled" not in second.text
    assert not [r for r in journal(tmp_path).records() if r["event"] == "cancelled"]
