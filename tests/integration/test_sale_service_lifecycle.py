"""The sale desk across the daemon's life: a reload (SIGHUP) with a receipt open keeps the
receipt and the scanners; a stop parks the receipt and the next start settles it — no receipt
lost, none printed twice (the virtual ККТ's documents are counted)."""

from __future__ import annotations

from pathlib import Path

from api_helpers import Conversation
from conftest import DAIRY, DAIRY_KI, WATER, WATER_KI, RecordingEventLog
from markd.codes import parse
from markd.scanners import get_virtual
from markd.store import Store
from metrics_helpers import samples
from sale_helpers import (
    CATALOG,
    events,
    journal,
    kkt,
    running,
    wait_for_units,
    write_sale_config,
)


async def test_sale_reload_with_a_receipt_open_keeps_it_and_the_scanners(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    scanners = {"front": "virtual://reload-front"}
    config = write_sale_config(tmp_path, mode="kiosk", scanners=scanners)
    async with running(config, event_log) as service:
        get_virtual("reload-front").scan(WATER)
        await wait_for_units(event_log, 1)
        desk, front = service.sale_desk, service.scanners["front"]
        before = await desk.current()  # type: ignore[union-attr]

        # New prices and a second scanner: applied at once, the receipt untouched.
        write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={**scanners, "side": "virtual://reload-side"},
            catalog=CATALOG.replace("99.00", "105,50"),
        )
        applied = await service.reload()
        get_virtual("reload-side").scan(DAIRY)
        await wait_for_units(event_log, 2)
        kept = await desk.current()  # type: ignore[union-attr]

        # A new [fiscal] setting while the receipt is open: that part is refused.
        write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={**scanners, "side": "virtual://reload-side"},
            fiscal_extra="validation_timeout_ms = 5000\n",
        )
        refused = await service.reload()
        still = await desk.current()  # type: ignore[union-attr]
        same_desk = service.sale_desk is desk

        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        closed = await conversation.request("POST", "/v1/receipt/close")
        conversation.close()
        # Nothing in flight now: the same reload goes through and replaces the desk.
        again = await service.reload()
        replaced = service.sale_desk is not desk and service.sale_desk is not None
        front_kept = service.scanners["front"] is front

    assert applied.ok, applied.message
    assert before is not None and kept is not None and still is not None
    assert kept["id"] == before["id"] == still["id"]
    assert [(u["ki"], u["price_kopecks"]) for u in kept["units"]] == [
        (WATER_KI, 8990),
        (DAIRY_KI, 10550),  # priced from the reloaded list
    ]
    assert not refused.ok and "receipt" in refused.message and before["id"] in refused.message
    assert still["units"] == kept["units"] and same_desk
    assert closed.status == 200
    assert again.ok, again.message
    assert replaced and front_kept
    assert [len(d["positions"]) for d in kkt(tmp_path).receipts()] == [2]
    (reloaded, *_) = [m for k, m, _ in event_log.events if k == "service-reloaded"]
    assert f"receipt {before['id']} kept open" in reloaded


async def test_sale_stop_parks_an_unpaid_receipt_and_the_next_start_cancels_it(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://park"})
    async with running(config, event_log) as service:
        get_virtual("park").scan(WATER)
        get_virtual("park").scan(DAIRY)
        await wait_for_units(event_log, 2)
        rid = service.sale_desk.session.receipt_id  # type: ignore[union-attr]
        assert kkt(tmp_path).state()["accepted"] != []  # the ФН holds the accepted codes
    parked = [f for f in events(event_log, "sale-desk") if f["action"] == "parked"]
    assert parked and parked[0]["receipt"] == rid and parked[0]["paid"] == "false"
    assert "parked" in [r["event"] for r in journal(tmp_path).by_receipt()[rid]]

    second = RecordingEventLog()
    async with running(config, second) as service:
        current = await service.receipts.current()  # type: ignore[union-attr]
        get_virtual("park").scan(WATER)
        await wait_for_units(second, 1)
        fresh = await service.receipts.current()  # type: ignore[union-attr]

    recovered = [f for f in events(second, "fiscal-recovery") if f["receipt"] == rid]
    assert [f["status"] for f in recovered] == ["cancelled"]
    assert current is None  # nothing left over for the new customer
    assert fresh is not None and fresh["id"] != rid and len(fresh["units"]) == 1
    assert "cancelled" in [r["event"] for r in journal(tmp_path).by_receipt()[rid]]
    assert kkt(tmp_path).receipts() == []  # nothing was paid, nothing printed


async def test_sale_a_paid_receipt_interrupted_by_a_stop_is_printed_once_at_the_next_start(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://paid"})
    async with running(config, event_log) as service:
        get_virtual("paid").scan(WATER)
        get_virtual("paid").scan(DAIRY)
        await wait_for_units(event_log, 2)
        rid = service.sale_desk.session.receipt_id  # type: ignore[union-attr]
        kkt(tmp_path).set_faults(gone=True)  # the ККТ stops answering as the customer pays
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        closing = await conversation.request("POST", "/v1/receipt/close")
        conversation.close()
    assert closing.status == 503, closing.body
    parked = [f for f in events(event_log, "sale-desk") if f["action"] == "parked"]
    assert parked and parked[0]["paid"] == "true"
    assert kkt(tmp_path).receipts() == []

    kkt(tmp_path).clear_faults()
    second = RecordingEventLog()
    async with running(config, second) as service:
        current = await service.receipts.current()  # type: ignore[union-attr]
        status = service.receipts.status()  # type: ignore[union-attr]
        recovered = samples(service.metrics().decode())
    third = RecordingEventLog()
    async with running(config, third) as service:
        idle = samples(service.metrics().decode())  # a further restart finds nothing to do

    documents = kkt(tmp_path).receipts()
    assert len(documents) == 1  # registered once, not lost, not twice
    assert sorted(p["ki"] for p in documents[0]["positions"]) == sorted([WATER_KI, DAIRY_KI])
    assert current is None and status["recovery_pending"] is False
    assert [f["status"] for f in events(second, "fiscal-recovery")] == ["closed"]
    assert events(third, "fiscal-recovery") == []
    # A fleet sees the start's recovery settle one receipt; the next start had none to do.
    finished = ("markd_receipt_recoveries_total", (("result", "finished"),))
    assert status["recoveries"] == {"finished": 1}
    assert recovered[finished] == 1 and idle[finished] == 0
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in (WATER, DAIRY):
            sold = store.lookup(parse(code)).sold
            assert sold is not None and sold.receipt.endswith(f"/{documents[0]['number']}")
    assert "closed" in [r["event"] for r in journal(tmp_path).by_receipt()[rid]]


async def test_sale_a_printer_that_does_not_answer_at_start_does_not_stop_the_daemon(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    config = write_sale_config(tmp_path, mode="kiosk", scanners={"front": "virtual://absent"})
    kkt(tmp_path).set_faults(gone=True)
    async with running(config, event_log) as service:
        status = service.receipts.status()  # type: ignore[union-attr]
        line = service.status_line()
        get_virtual("absent").scan(WATER)
        await wait_for_units(event_log, 1)
        kkt(tmp_path).clear_faults()  # the ККТ is back: the next unit goes through
        get_virtual("absent").scan(DAIRY)
        await wait_for_units(event_log, 2)
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        closed = await conversation.request("POST", "/v1/receipt/close")
        conversation.close()

    assert status["state"] == "unreachable" and status["last_error"] is not None
    assert "sale kiosk, printer unreachable" in line
    (refused,) = events(event_log, "sale-refused")
    assert (refused["ki"], refused["source"]) == (WATER_KI, "printer")
    assert closed.status == 200
    assert [[p["ki"] for p in d["positions"]] for d in kkt(tmp_path).receipts()] == [[DAIRY_KI]]


async def test_sale_reload_switches_the_mode_and_keeps_the_old_printer_when_a_new_one_fails(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    scanners = {"front": "virtual://switch"}
    config = write_sale_config(tmp_path, mode="off", scanners=scanners)
    async with running(config, event_log) as service:
        assert service.receipts is None and service.sale_desk is None

        write_sale_config(tmp_path, mode="attendant", scanners=scanners)
        opened = await service.reload()
        attendant = service.sale_desk

        # A printer that cannot be opened (libfptr10 is not installed here): refused, and
        # the running printer stays.
        text = config.read_text(encoding="utf-8").replace(
            f'url = "emulator://{tmp_path / "kkt"}"', 'url = "atol-lib://usb"'
        )
        config.write_text(text, encoding="utf-8")
        broken = await service.reload()
        kept = service.sale_desk.config.fiscal.url if service.sale_desk else None

        write_sale_config(tmp_path, mode="off", scanners=scanners)
        closed = await service.reload()
        conversation = await Conversation.unix(str(tmp_path / "control.sock"))
        answer = await conversation.request("GET", "/v1/receipt")
        conversation.close()

    assert opened.ok and attendant is not None and attendant.mode == "attendant"
    assert not broken.ok and "driver" in broken.message
    assert "previous printer settings stay in force" in broken.message
    assert kept == f"emulator://{tmp_path / 'kkt'}"
    assert closed.ok and "printer closed" in closed.message
    assert (answer.status, answer.json()["error"]) == (503, "no-printer")
