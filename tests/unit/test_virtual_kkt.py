"""The virtual ККТ: ATOL JSON tasks in, ФФД 1.2 behaviour out, everything on disk."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.emulators.virtual_kkt import DOCUMENTS_FILE, STATE_FILE, VirtualKkt
from markd.fiscal import atol_protocol as proto
from markd.fiscal.atol import position_item, receipt_task
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.receipts import Payment
from markd.testing import fiscal as testing

TAG1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def one(kkt: VirtualKkt, task: dict[str, Any], request: str = "") -> dict[str, Any]:
    return kkt.run(request, [task])[0]


def ok(kkt: VirtualKkt, task: dict[str, Any], request: str = "") -> dict[str, Any]:
    outcome = one(kkt, task, request)
    assert outcome["status"] == "ready", outcome
    return outcome["result"]


def begin(km: str, status: str = "itemPieceSold") -> dict[str, Any]:
    return {
        "type": "beginMarkingCodeValidation",
        "params": {
            "imcType": "auto",
            "imc": proto.encode_km(km),
            "itemEstimatedStatus": status,
            "imcModeProcessing": 0,
            "itemQuantity": 1,
            "itemUnits": "piece",
        },
    }


def sell_task(*kms: str, status: int = 1, kind: str = "sell") -> dict[str, Any]:
    positions = [
        Position(
            "Товар",
            10000,
            mark=MarkedItem(km, parse(km).ki, status, industry=IndustryTags(tag1265=TAG1265)),
        )
        for km in kms
    ]
    return receipt_task(kind, positions, [Payment(10000 * len(kms))])  # type: ignore[arg-type]


def validate_and_accept(kkt: VirtualKkt, km: str, status: str = "itemPieceSold") -> dict[str, Any]:
    ok(kkt, begin(km, status))
    ok(kkt, {"type": "getMarkingCodeValidationStatus"})
    # A request id of its own every time: an id seen before is answered from the table.
    return ok(kkt, {"type": "acceptMarkingCode"}, request=f"accept-{uuid.uuid4()}")


@pytest.fixture
def kkt(tmp_path: Path) -> VirtualKkt:
    device = VirtualKkt(tmp_path / "kkt")
    ok(device, {"type": "openShift"})
    return device


# -- the marking-code procedure -----------------------------------------------------------------


def test_fn_checks_the_crypto_of_91_92_codes_only(kkt: VirtualKkt) -> None:
    shoes = ok(kkt, begin(testing.SHOES))["offlineValidation"]
    ok(kkt, {"type": "cancelMarkingCodeValidation"})
    water = ok(kkt, begin(testing.WATER))["offlineValidation"]

    # fmCheckErrorReason is always there (the driver's myscripts_marks.js).
    assert shoes == {"fmCheck": True, "fmCheckResult": True, "fmCheckErrorReason": "checked"}
    assert water == {  # 4-char crypto: type 5, which the ФН cannot check
        "fmCheck": False,
        "fmCheckResult": False,
        "fmCheckErrorReason": "typeIncorrect",
    }


def test_online_answer_sets_the_oism_bits(kkt: VirtualKkt) -> None:
    ok(kkt, begin(testing.SHOES))
    status = ok(kkt, {"type": "getMarkingCodeValidationStatus"})

    assert status["ready"] and status["sentImcRequest"]
    online = status["onlineValidation"]
    assert online["itemInfoCheckResult"] == {
        "imcCheckFlag": True,
        "imcCheckResult": True,
        "imcStatusInfo": True,
        "imcEstimatedStatusCorrect": True,
        "ecrStandAloneFlag": False,
    }
    assert online["markOperatorItemStatus"] == "itemEstimatedStatusCorrect"
    assert online["markOperatorResponseResult"] == "correct"


def test_offline_answer_sets_bit_4_and_sends_nothing(kkt: VirtualKkt) -> None:
    kkt.set_faults(ism="offline")
    ok(kkt, begin(testing.SHOES))
    status = ok(kkt, {"type": "getMarkingCodeValidationStatus"})

    assert status["ready"] and not status["sentImcRequest"]
    bits = status["onlineValidation"]["itemInfoCheckResult"]
    assert bits["ecrStandAloneFlag"] and not bits["imcStatusInfo"]
    assert "markOperatorItemStatus" not in status["onlineValidation"]


def test_oism_timeout_leaves_only_the_fn_bits(kkt: VirtualKkt) -> None:
    kkt.set_faults(ism="timeout")
    ok(kkt, begin(testing.SHOES))
    status = ok(kkt, {"type": "getMarkingCodeValidationStatus"})

    # No onlineValidation when the online error is not 0; driverError names the reason.
    assert status["ready"] and status["sentImcRequest"]
    assert "onlineValidation" not in status
    assert status["driverError"]["code"] == proto.ERROR_MARK_CHECK_TIMEOUT
    assert status["driverError"]["error"] == "responseTimeout"
    bits = ok(kkt, {"type": "acceptMarkingCode"})["itemInfoCheckResult"]
    assert bits["imcCheckFlag"] and not bits["imcStatusInfo"] and not bits["ecrStandAloneFlag"]


def test_per_code_answers(kkt: VirtualKkt) -> None:
    ki = parse(testing.SHOES).ki
    kkt.set_code(ki, oism="sale-stopped", fn=False)
    local = ok(kkt, begin(testing.SHOES))["offlineValidation"]
    status = ok(kkt, {"type": "getMarkingCodeValidationStatus"})["onlineValidation"]

    assert local == {"fmCheck": True, "fmCheckResult": False, "fmCheckErrorReason": "checked"}
    assert status["markOperatorItemStatus"] == "itemSaleStopped"
    assert status["itemInfoCheckResult"]["imcEstimatedStatusCorrect"] is False


def test_the_oism_answer_can_take_time(kkt: VirtualKkt, tmp_path: Path) -> None:
    clock = Clock()
    device = VirtualKkt(tmp_path / "kkt", clock=clock)
    device.set_faults(validation_delay_ms=1500)
    ok(device, begin(testing.SHOES))

    assert ok(device, {"type": "getMarkingCodeValidationStatus"})["ready"] is False
    clock.now += 2
    assert ok(device, {"type": "getMarkingCodeValidationStatus"})["ready"] is True


def test_one_validation_at_a_time(kkt: VirtualKkt) -> None:
    ok(kkt, begin(testing.SHOES))
    second = one(kkt, begin(testing.WATER))

    assert (second["status"], second["errorCode"]) == ("error", 401)


def test_a_receipt_takes_only_accepted_codes_with_their_status(kkt: VirtualKkt) -> None:
    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_MARK_NOT_CHECKED
    validate_and_accept(kkt, testing.SHOES, "itemDryForSale")

    mismatch = one(kkt, sell_task(testing.SHOES, status=1))
    assert mismatch["errorCode"] == proto.ERROR_INVALID_MARKING_CODE_STATUS
    # The failed sell cleared the accepted codes, as the driver's script does.
    assert one(kkt, sell_task(testing.SHOES, status=2))["errorCode"] == 420
    validate_and_accept(kkt, testing.SHOES, "itemDryForSale")
    result = ok(kkt, sell_task(testing.SHOES, status=2))

    assert result["fiscalParams"]["fiscalDocumentNumber"] == 3
    # The result was used by the receipt: the same code needs validating again.
    assert one(kkt, sell_task(testing.SHOES, status=2))["errorCode"] == 420


def test_clear_forgets_every_accepted_code(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    ok(kkt, {"type": "clearMarkingCodeValidationResult"})

    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == 420


def test_receipt_documents_hold_the_tags_and_no_code(kkt: VirtualKkt, tmp_path: Path) -> None:
    validate_and_accept(kkt, testing.SHOES)
    validate_and_accept(kkt, testing.WATER)
    ok(kkt, sell_task(testing.SHOES, testing.WATER))

    lines = (tmp_path / "kkt" / DOCUMENTS_FILE).read_text(encoding="utf-8").splitlines()
    receipt = json.loads(lines[-1])
    assert receipt["type"] == "sell" and receipt["total"] == 20000
    shoes, water = receipt["positions"]
    assert shoes["tags"]["2106"] == 15 and water["tags"]["2106"] == 12
    assert shoes["tags"]["1260"]["1263"] == "26.03.2022"  # written DD.MM.YYYY
    assert shoes["payment_object"] == "commodityWithMarking"
    raw = (tmp_path / "kkt" / DOCUMENTS_FILE).read_text(encoding="utf-8")
    assert "91FFD0" not in raw and "938p9E" not in raw  # crypto tails stay out


def test_documents_hold_nothing_derived_from_the_whole_code(
    kkt: VirtualKkt, tmp_path: Path
) -> None:
    # A hash of the full code, next to its КИ, gives a 4-character crypto tail (AI 93) away
    # to anyone who tries the 82^4 candidates; the files are not for everyone either.
    validate_and_accept(kkt, testing.DAIRY)
    ok(kkt, sell_task(testing.DAIRY))

    file = tmp_path / "kkt" / DOCUMENTS_FILE
    (position,) = json.loads(file.read_text(encoding="utf-8").splitlines()[-1])["positions"]
    assert set(position) == {
        "name",
        "price",
        "quantity",
        "amount",
        "tax",
        "payment_object",
        "ki",
        "tags",
    }
    raw = file.read_text(encoding="utf-8")
    km = testing.DAIRY.encode("utf-8")
    for digest in (hashlib.sha256(km).hexdigest(), hashlib.sha1(km).hexdigest()):
        assert digest[:8] not in raw
    assert file.stat().st_mode & 0o777 & ~0o640 == 0  # owner writes, group reads, no one else
    # The state holds the accepted codes themselves (as the ФН does): owner only.
    validate_and_accept(kkt, testing.SHOES)
    assert (tmp_path / "kkt" / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_documents_of_an_older_version_are_narrowed(tmp_path: Path) -> None:
    (tmp_path / "kkt").mkdir()
    file = tmp_path / "kkt" / DOCUMENTS_FILE
    file.write_text("", encoding="utf-8")
    file.chmod(0o644)
    device = VirtualKkt(tmp_path / "kkt")

    ok(device, {"type": "openShift"})

    assert file.stat().st_mode & 0o777 == 0o640
    assert len(device.documents()) == 1


def test_return_receipt_needs_the_return_status(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES, "itemPieceReturn")

    wrong = one(kkt, sell_task(testing.SHOES, status=3, kind="sell"))
    validate_and_accept(kkt, testing.SHOES, "itemPieceReturn")  # the failure cleared it
    result = ok(kkt, sell_task(testing.SHOES, status=3, kind="return"))

    assert wrong["errorCode"] == proto.ERROR_INVALID_MARKING_CODE_STATUS
    assert kkt.receipts()[-1]["type"] == "sellReturn"
    assert result["fiscalParams"]["fiscalDocumentNumber"] == kkt.receipts()[-1]["number"]


def test_payments_must_cover_the_total(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    task = sell_task(testing.SHOES)
    task["payments"] = [{"type": "electronically", "sum": 50}]

    assert one(kkt, task)["errorCode"] == proto.ERROR_NOT_FULLY_PAID


# -- shifts, status --------------------------------------------------------------------------


def test_shift_expires_after_24_hours(tmp_path: Path) -> None:
    clock = Clock()
    kkt = VirtualKkt(tmp_path / "kkt", clock=clock)
    ok(kkt, {"type": "openShift"})
    validate_and_accept(kkt, testing.SHOES)
    clock.now += 24 * 3600 + 1

    assert ok(kkt, {"type": "getShiftStatus"})["shiftStatus"]["state"] == "expired"
    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_SHIFT_EXPIRED
    ok(kkt, {"type": "closeShift"})
    ok(kkt, {"type": "openShift"})
    validate_and_accept(kkt, testing.SHOES)  # the refused sell cleared the accepted codes
    assert ok(kkt, sell_task(testing.SHOES))["fiscalParams"]["shiftNumber"] == 2


def test_no_receipt_in_a_closed_shift(tmp_path: Path) -> None:
    kkt = VirtualKkt(tmp_path / "kkt")
    validate_and_accept(kkt, testing.SHOES)

    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_DENIED_IN_CLOSED_SHIFT


def test_unsent_documents_are_counted(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    ok(kkt, sell_task(testing.SHOES))

    status = ok(kkt, {"type": "ofdExchangeStatus"})["status"]
    assert status["notSentCount"] == 1 and status["notSentFirstDocNumber"] == 3


def test_unknown_task_is_refused_and_the_rest_interrupted(kkt: VirtualKkt) -> None:
    outcomes = kkt.run("r", [{"type": "printCatalog"}, {"type": "getDeviceStatus"}])

    assert outcomes[0]["errorCode"] == proto.ERROR_NOT_SUPPORTED
    assert outcomes[1]["status"] == "error" and outcomes[1]["errorCode"] == 502


# -- persistence and request ids -----------------------------------------------------------------


def test_state_survives_a_new_instance(kkt: VirtualKkt, tmp_path: Path) -> None:
    validate_and_accept(kkt, testing.SHOES)
    ok(kkt, sell_task(testing.SHOES), request="sale-1")

    again = VirtualKkt(tmp_path / "kkt")

    assert ok(again, {"type": "getFnStatus"})["fnStatus"]["fiscalDocumentNumber"] == 3
    assert ok(again, {"type": "getShiftStatus"})["shiftStatus"]["state"] == "opened"
    assert again.lookup("sale-1")[0]["result"]["fiscalParams"]["fiscalDocumentNumber"] == 3


def test_a_request_id_is_answered_once(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    first = kkt.run("sale-1", [sell_task(testing.SHOES)])
    again = kkt.run("sale-1", [sell_task(testing.SHOES)])

    assert again == first
    assert len(kkt.receipts()) == 1


def test_a_request_the_device_never_got_leaves_no_trace(kkt: VirtualKkt) -> None:
    kkt.set_faults(gone=True)
    assert one(kkt, {"type": "openShift"}, request="x")["errorCode"] == proto.ERROR_NO_CONNECTION
    assert kkt.lookup("x") is None


def test_a_document_written_but_not_counted_is_counted_on_load(tmp_path: Path) -> None:
    """Killed between the fsync'd document and the state that counts it."""
    kkt = VirtualKkt(tmp_path / "kkt")
    ok(kkt, {"type": "openShift"})
    validate_and_accept(kkt, testing.SHOES)
    state_before = (tmp_path / "kkt" / STATE_FILE).read_bytes()
    ok(kkt, sell_task(testing.SHOES), request="sale-1")
    (tmp_path / "kkt" / STATE_FILE).write_bytes(state_before)  # the state write "never happened"

    again = VirtualKkt(tmp_path / "kkt")

    assert ok(again, {"type": "getFnStatus"})["fnStatus"]["fiscalDocumentNumber"] == 3
    assert again.lookup("sale-1")[0]["result"]["fiscalParams"]["fiscalDocumentNumber"] == 3
    assert one(again, sell_task(testing.SHOES))["errorCode"] == 420  # its code was used
    with open(tmp_path / "kkt" / DOCUMENTS_FILE, "a") as torn:
        torn.write('{"number": 4, "ty')  # a line torn by a kill mid-write is ignored
    again = VirtualKkt(tmp_path / "kkt")
    assert [d["number"] for d in again.documents()] == [2, 3]
    ok(again, {"type": "closeShift"})  # the next document starts on a line of its own
    assert [d["number"] for d in again.documents()] == [2, 3, 4]


def test_gone_in_receipt_leaves_it_open(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    kkt.set_faults(gone_in_receipt="open")

    cut = one(kkt, sell_task(testing.SHOES))
    assert cut["errorCode"] == proto.ERROR_CONNECTION_LOST
    assert one(kkt, {"type": "getDeviceStatus"})["errorCode"] == proto.ERROR_NO_CONNECTION

    kkt.set_faults(gone=None)
    assert ok(kkt, {"type": "getDeviceStatus"})["deviceStatus"]["receiptType"] == "sell"
    assert kkt.receipts() == []
    # The next sell cancels the leftover itself (keeping the accepted codes), as the
    # driver's receipt script does: no refusal with 82.
    assert ok(kkt, sell_task(testing.SHOES))["fiscalParams"]["fiscalDocumentNumber"] == 3


def test_gone_after_receipt_loses_only_the_answer(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    kkt.set_faults(gone_in_receipt="after")

    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_CONNECTION_LOST
    kkt.set_faults(gone=None)

    assert len(kkt.receipts()) == 1
    assert ok(kkt, {"type": "getFnStatus"})["fnStatus"]["fiscalDocumentNumber"] == 3


def test_bad_faults_are_refused(kkt: VirtualKkt) -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        kkt.set_faults(smoke=True)
    with pytest.raises(ValueError, match="ism is one of"):
        kkt.set_faults(ism="sometimes")


def test_position_item_carries_the_marking_and_industry_tags() -> None:
    code = parse(testing.SHOES)
    item = position_item(
        Position(
            "Кроссовки",
            459000,
            tax="vat20",
            mark=MarkedItem(testing.SHOES, code.ki, 1, industry=IndustryTags(tag1265=TAG1265)),
        )
    )

    assert item["price"] == 4590.0 and item["amount"] == 4590.0 and item["quantity"] == 1
    assert item["imcParams"]["imc"] == proto.encode_km(testing.SHOES)
    assert proto.decode_km(item["imcParams"]["imc"]) == testing.SHOES  # raw GS kept
    assert item["imcParams"]["itemEstimatedStatus"] == "itemPieceSold"
    assert item["imcParams"]["imcModeProcessing"] == 0
    assert item["industryInfo"] == [
        {"fois": "030", "date": "2022.03.26", "number": "477", "industryAttribute": TAG1265}
    ]
    no_check = position_item(
        Position("Кроссовки", 459000, mark=MarkedItem(testing.SHOES, code.ki, 1))
    )
    assert "industryInfo" not in no_check  # no 1265: no 1260


# -- as the driver's scripts leave the device (domain.md §7.4a) ----------------------------------


def test_a_failed_sell_is_cancelled_and_clears_the_accepted_codes(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    kkt.set_faults(paper_out=True)

    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_NO_PAPER
    kkt.set_faults(paper_out=None)

    assert ok(kkt, {"type": "getDeviceStatus"})["deviceStatus"]["receiptType"] == "closed"
    assert kkt.state()["accepted"] == []
    assert one(kkt, sell_task(testing.SHOES))["errorCode"] == proto.ERROR_MARK_NOT_CHECKED
    validate_and_accept(kkt, testing.SHOES)
    assert ok(kkt, sell_task(testing.SHOES))["fiscalParams"]["fiscalDocumentNumber"] == 3
    assert len(kkt.receipts()) == 1


def test_a_sell_refused_with_423_keeps_the_accepted_codes(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    ok(kkt, begin(testing.WATER))  # a check still running

    refused = one(kkt, sell_task(testing.SHOES))
    assert refused["errorCode"] == proto.ERROR_MARK_CHECK_IN_PROGRESS
    ok(kkt, {"type": "cancelMarkingCodeValidation"})

    assert ok(kkt, sell_task(testing.SHOES))["fiscalParams"]["fiscalDocumentNumber"] == 3


def test_shift_tasks_cancel_a_leftover_receipt(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)
    kkt.set_faults(gone_in_receipt="open")
    one(kkt, sell_task(testing.SHOES))
    kkt.set_faults(gone=None)

    closed = ok(kkt, {"type": "closeShift"})

    assert closed["fiscalParams"]["shiftNumber"] == 1
    assert ok(kkt, {"type": "getDeviceStatus"})["deviceStatus"]["receiptType"] == "closed"
    assert kkt.receipts() == []


def test_a_check_left_running_answers_401(kkt: VirtualKkt) -> None:
    kkt.set_faults(begin_busy=True)

    assert one(kkt, begin(testing.SHOES))["errorCode"] == proto.ERROR_VALIDATION_IN_PROGRESS
    ok(kkt, {"type": "cancelMarkingCodeValidation"})
    assert ok(kkt, begin(testing.SHOES))["offlineValidation"]["fmCheck"] is True


def test_the_cancel_task_can_be_unknown(kkt: VirtualKkt) -> None:
    kkt.set_faults(no_cancel_task=True)

    assert one(kkt, {"type": "cancelReceipt"})["errorCode"] == proto.ERROR_NOT_SUPPORTED


# -- what a receipt carries beside its items: taxation system, cashier (domain.md §7.4a) --------

PERSON_INN = "500100732259"


def test_a_receipt_records_its_taxation_system_and_cashier(kkt: VirtualKkt) -> None:
    kkt.set_faults(taxation_types=["osn", "usnIncome"])
    validate_and_accept(kkt, testing.SHOES)
    task = {
        **sell_task(testing.SHOES),
        "taxationType": "usnIncome",
        "operator": {"name": "Иванова А. С.", "vatin": PERSON_INN},
    }

    ok(kkt, task)

    receipt = kkt.receipts()[-1]
    assert receipt["taxation_type"] == "usnIncome"
    assert receipt["tags"]["1055"] == 2  # LIBFPTR_TT_USN_INCOME
    assert receipt["cashier"] == {"1021": "Иванова А. С.", "1203": PERSON_INN}


def test_the_only_registered_taxation_system_needs_no_name(kkt: VirtualKkt) -> None:
    validate_and_accept(kkt, testing.SHOES)

    ok(kkt, sell_task(testing.SHOES))

    assert kkt.receipts()[-1]["taxation_type"] == "osn"
    assert "cashier" not in kkt.receipts()[-1]


def test_a_taxation_system_not_registered_or_missing_is_refused_with_143(
    kkt: VirtualKkt,
) -> None:
    kkt.set_faults(taxation_types=["osn", "patent"])
    validate_and_accept(kkt, testing.SHOES)

    none_named = one(kkt, sell_task(testing.SHOES))
    assert none_named["errorCode"] == 143
    assert kkt.state()["accepted"] == []  # refused once the receipt was opened: cleared
    validate_and_accept(kkt, testing.SHOES)
    other = one(kkt, {**sell_task(testing.SHOES), "taxationType": "usnIncome"})
    assert other["errorCode"] == 143
    assert kkt.receipts() == []


@pytest.mark.parametrize(
    ("fields", "description"),
    [
        ({"taxationType": "usn"}, 'Некорректное значение поля "taxationType" (usn)'),
        ({"taxationType": 2}, 'Поле "taxationType" имеет неверный тип (ожидается "string")'),
        ({"operator": "Иванова"}, 'Поле "operator" имеет неверный тип (ожидается "object")'),
        ({"operator": {"vatin": PERSON_INN}}, 'Поле "operator.name" отсутствует'),
        (
            {"operator": {"name": "Иванова", "vatin": 500100732259}},
            'Поле "operator.vatin" имеет неверный тип (ожидается "string")',
        ),
    ],
)
def test_a_malformed_task_is_501_and_changes_nothing(
    kkt: VirtualKkt, fields: dict[str, Any], description: str
) -> None:
    validate_and_accept(kkt, testing.SHOES)
    kkt.set_faults(gone_in_receipt="open")
    one(kkt, sell_task(testing.SHOES))  # a receipt left open on the device
    kkt.set_faults(gone=None)

    refused = one(kkt, {**sell_task(testing.SHOES), **fields})

    assert refused["errorCode"] == proto.ERROR_RECEIPT_PARSE
    assert refused["errorDescription"] == description
    # Validated before the leftover receipt is cancelled: nothing was done at all.
    assert ok(kkt, {"type": "getDeviceStatus"})["deviceStatus"]["receiptType"] == "sell"
    assert len(kkt.state()["accepted"]) == 1


@pytest.mark.parametrize("vatin", ["500100732258", "7707083893", "50010073225"])
def test_a_cashier_login_with_a_bad_inn_is_196_and_keeps_the_codes(
    kkt: VirtualKkt, vatin: str
) -> None:
    validate_and_accept(kkt, testing.SHOES)

    refused = one(kkt, {**sell_task(testing.SHOES), "operator": {"name": "И", "vatin": vatin}})

    assert refused["errorCode"] == 196
    assert len(kkt.state()["accepted"]) == 1  # no receipt was opened: nothing cleared
    assert ok(kkt, sell_task(testing.SHOES))["fiscalParams"]["fiscalDocumentNumber"] == 3


def test_shift_reports_record_the_cashier(kkt: VirtualKkt) -> None:
    cashier = {"operator": {"name": "Иванова А. С.", "vatin": PERSON_INN}}

    ok(kkt, {"type": "closeShift", **cashier})
    ok(kkt, {"type": "openShift", "operator": {"name": "Петров"}})

    closed, opened = kkt.documents()[-2:]
    assert closed["cashier"] == {"1021": "Иванова А. С.", "1203": PERSON_INN}
    assert opened["cashier"] == {"1021": "Петров"}
    refused = one(kkt, {"type": "closeShift", "operator": {"name": "И", "vatin": "1"}})
    assert refused["errorCode"] == 196


def test_bad_taxation_registrations_are_refused(kkt: VirtualKkt) -> None:
    with pytest.raises(ValueError, match="taxation_types is a list of"):
        kkt.set_faults(taxation_types=["usn"])
    with pytest.raises(ValueError, match="taxation_types is a list of"):
        kkt.set_faults(taxation_types=[])


# -- fiscal health (domain.md §7.8) --------------------------------------------------------------


def test_fn_info_gives_the_validity_end(tmp_path: Path) -> None:
    clock = Clock()
    device = VirtualKkt(tmp_path / "kkt", clock=clock)

    first = ok(device, {"type": "getFnInfo"})["fnInfo"]["validityDate"]
    clock.now += 86400
    assert ok(device, {"type": "getFnInfo"})["fnInfo"]["validityDate"] == first  # fixed end
    device.set_faults(fn_days_left=10)
    near = ok(device, {"type": "getFnInfo"})["fnInfo"]["validityDate"]

    from datetime import datetime

    left = datetime.fromisoformat(near).timestamp() - clock.now
    assert left == 10 * 86400


def test_the_oldest_unsent_document_has_its_time(tmp_path: Path) -> None:
    clock = Clock()
    device = VirtualKkt(tmp_path / "kkt", clock=clock)
    ok(device, {"type": "openShift"})
    assert ok(device, {"type": "ofdExchangeStatus"})["status"]["notSentFirstDocDateTime"] == ""
    validate_and_accept(device, testing.SHOES)
    ok(device, sell_task(testing.SHOES))
    clock.now += 3600
    status = ok(device, {"type": "ofdExchangeStatus"})["status"]
    assert status["notSentCount"] == 1
    assert status["notSentFirstDocDateTime"] == device.receipts()[0]["datetime"]

    device.set_faults(unsent_age_days=4)
    aged = ok(device, {"type": "ofdExchangeStatus"})["status"]["notSentFirstDocDateTime"]

    from datetime import datetime

    assert clock.now - datetime.fromisoformat(aged).timestamp() == 4 * 86400


def test_a_long_shift_is_reported_by_its_end(tmp_path: Path) -> None:
    clock = Clock()
    device = VirtualKkt(tmp_path / "kkt", clock=clock)
    ok(device, {"type": "openShift"})
    device.set_faults(shift_age_hours=23.5)

    shift = ok(device, {"type": "getShiftStatus"})["shiftStatus"]

    from datetime import datetime

    assert shift["state"] == "opened"
    assert datetime.fromisoformat(shift["expiredTime"]).timestamp() - clock.now == 0.5 * 3600
    device.set_faults(shift_age_hours=25)
    assert ok(device, {"type": "getShiftStatus"})["shiftStatus"]["state"] == "expired"
    with pytest.raises(ValueError, match="shift_age_hours is a number"):
        device.set_faults(shift_age_hours=-1)


def test_the_fn_s_own_warnings_can_be_raised(tmp_path: Path) -> None:
    device = VirtualKkt(tmp_path / "kkt")
    quiet = ok(device, {"type": "getFnStatus"})["fnStatus"]["warnings"]
    assert not any(quiet[w] for w in ("memoryOverflow", "resourceExhausted", "needReplacement"))

    device.set_faults(fn_warnings=["memoryOverflow", "resourceExhausted"])
    raised = ok(device, {"type": "getFnStatus"})["fnStatus"]["warnings"]
    assert [w for w, on in raised.items() if on] == ["memoryOverflow", "resourceExhausted"]

    device.set_faults(fn_warnings=[])
    assert ok(device, {"type": "getFnStatus"})["fnStatus"]["warnings"] == quiet
    with pytest.raises(ValueError, match="fn_warnings is a list of"):
        device.set_faults(fn_warnings=["fnFull"])
