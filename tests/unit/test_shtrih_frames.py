"""Shtrih-M protocol 1 frames and answers, byte for byte.

Every expected byte string below was worked out by hand from the vendor's ``commands.xml``
(field sizes and order), the protocol document (``STX LEN body LRC``, LRC = XOR of LEN and the
body) and the ФФД 1.2 note — not produced by the code under test — so a wrong field order or
size in :mod:`markd.fiscal.shtrih.commands` shows up here.
"""

from __future__ import annotations

from datetime import date, datetime

import pytest

from markd.errors import PrinterFault
from markd.fiscal.base import MarkNotValidated, NoReceiptOpen, ReceiptAlreadyOpen
from markd.fiscal.shtrih import commands as cmd
from markd.fiscal.shtrih.errors import MalformedAnswer, describe, device_fault
from markd.fiscal.shtrih.link import frame, lrc, split_answer
from markd.fiscal.shtrih.printer import TAX_RATES, validation_from_check

PW = 30  # 1E 00 00 00


def framed(request: cmd.Request) -> bytes:
    return frame(request.body)


# --------------------------------------------------------------------------------------------
# Commands


def test_short_status_frame() -> None:
    # LEN 05; LRC 05^10^1E = 0B
    assert framed(cmd.encode_short_status(PW)) == b"\x02\x05\x10\x1e\x00\x00\x00\x0b"


def test_full_status_frame() -> None:
    # 05^11^1E = 0A
    assert framed(cmd.encode_full_status(PW)) == b"\x02\x05\x11\x1e\x00\x00\x00\x0a"


def test_receipt_and_shift_frames() -> None:
    # 0x8D sale (type 0): LEN 06, 06^8D^1E = 95
    assert framed(cmd.encode_open_receipt(PW, 0)) == b"\x02\x06\x8d\x1e\x00\x00\x00\x00\x95"
    # sale return (type 2): 95^02 = 97
    assert framed(cmd.encode_open_receipt(PW, 2)) == b"\x02\x06\x8d\x1e\x00\x00\x00\x02\x97"
    # 0x88 cancel: 05^88^1E = 93
    assert framed(cmd.encode_cancel_receipt(PW)) == b"\x02\x05\x88\x1e\x00\x00\x00\x93"
    # 0xE0 open shift: 05^E0^1E = FB
    assert framed(cmd.encode_open_shift(PW)) == b"\x02\x05\xe0\x1e\x00\x00\x00\xfb"
    # 0x41 Z-report: 05^41^1E = 5A
    assert framed(cmd.encode_z_report(PW)) == b"\x02\x05\x41\x1e\x00\x00\x00\x5a"
    # 0xFC device type, no password: 01^FC = FD
    assert framed(cmd.encode_device_type()) == b"\x02\x01\xfc\xfd"


def test_fn_reading_frames() -> None:
    # FF01: LEN 06, 06^FF^01^1E = E6
    assert framed(cmd.encode_fn_status(PW)) == b"\x02\x06\xff\x01\x1e\x00\x00\x00\xe6"
    # FF0A document 5: LEN 0A, 0A^FF^0A^1E^05 = E4
    assert (
        framed(cmd.encode_find_document(PW, 5))
        == b"\x02\x0a\xff\x0a\x1e\x00\x00\x00\x05\x00\x00\x00\xe4"
    )
    # FF39, FF40, FF03, FF09: LEN 06; 06^FF^39^1E = DE, ^40 → A7, ^03 → E4, ^09 → EE
    assert framed(cmd.encode_exchange_status(PW)) == b"\x02\x06\xff\x39\x1e\x00\x00\x00\xde"
    assert framed(cmd.encode_shift_parameters(PW)) == b"\x02\x06\xff\x40\x1e\x00\x00\x00\xa7"
    assert framed(cmd.encode_fn_expiry(PW)) == b"\x02\x06\xff\x03\x1e\x00\x00\x00\xe4"
    assert framed(cmd.encode_registration(PW)) == b"\x02\x06\xff\x09\x1e\x00\x00\x00\xee"


def test_check_marking_code_frame() -> None:
    # FF61: password, 2003=1, 2102=0, code length 3, TLV length 0, "ABC"; LEN 0D
    # LRC 0D^FF^61^1E^01^03^41^42^43 = CF
    request = cmd.encode_check_marking_code(PW, b"ABC", 1)
    assert framed(request) == (b"\x02\x0d\xff\x61\x1e\x00\x00\x00\x01\x00\x03\x00ABC\xcf")


def test_check_marking_code_keeps_the_gs_separator() -> None:
    request = cmd.encode_check_marking_code(PW, b"01\x1d91", 1)
    assert request.data == b"\x1e\x00\x00\x00\x01\x00\x05\x0001\x1d91"


def test_accept_reject_clear_frames() -> None:
    # FF69 1: LEN 07, 07^FF^69^1E^01 = 8E; 0 → 8F; 2 → 8D
    assert framed(cmd.encode_accept_marking_code(PW, 1)) == (
        b"\x02\x07\xff\x69\x1e\x00\x00\x00\x01\x8e"
    )
    assert framed(cmd.encode_accept_marking_code(PW, 0)).endswith(b"\x00\x8f")
    assert framed(cmd.encode_accept_marking_code(PW, 2)).endswith(b"\x02\x8d")


def test_bind_marking_code_frame() -> None:
    # FF67: password, length 3, "ABC"; LEN 0A; 0A^FF^67^1E^03^41^42^43 = CF
    assert framed(cmd.encode_bind_marking_code(PW, b"ABC")) == (
        b"\x02\x0a\xff\x67\x1e\x00\x00\x00\x03ABC\xcf"
    )


def test_operation_v2_frame() -> None:
    # FF46: type 1, quantity 1.000000 (40 42 0F 00 00 00), price and sum 89.90 (1E 23 00 00 00),
    # tax sum computed by the device (FF×5), tax 1, department 1, 1214=4, 1212=33, "Tea";
    # LEN 0x23; LRC worked out byte by byte = 02
    line = cmd.Operation(
        operation=1,
        quantity_millionths=1_000_000,
        price=8990,
        amount=8990,
        name="Tea",
        tax_rate=1,
        payment_method=4,
        payment_object=33,
    )
    assert framed(cmd.encode_operation(PW, line)) == (
        b"\x02\x23\xff\x46\x1e\x00\x00\x00\x01"
        b"\x40\x42\x0f\x00\x00\x00"
        b"\x1e\x23\x00\x00\x00"
        b"\x1e\x23\x00\x00\x00"
        b"\xff\xff\xff\xff\xff"
        b"\x01\x01\x04\x21Tea\x02"
    )


def test_operation_name_is_cp1251_and_cut_at_128_bytes() -> None:
    line = cmd.Operation(1, 1_000_000, 100, "Кроссовки", 1)
    assert cmd.encode_operation(PW, line).data.endswith(b"\xca\xf0\xee\xf1\xf1\xee\xe2\xea\xe8")
    long = cmd.Operation(1, 1_000_000, 100, "Я" * 200, 1)
    assert cmd.encode_operation(PW, long).data.endswith(b"\xdf" * 128)
    assert len(cmd.encode_operation(PW, long).data) == 4 + 1 + 6 + 5 + 5 + 5 + 4 + 128


def test_industry_tag_1260() -> None:
    # 1260 = EC 04; 1262 = EE 04, 1263 = EF 04, 1264 = F0 04, 1265 = F1 04; lengths u16 LE
    assert cmd.industry_tlv("030", "26.03.2022", "477", "U") == (
        b"\xec\x04\x21\x00"
        b"\xee\x04\x03\x00030"
        b"\xef\x04\x0a\x0026.03.2022"
        b"\xf0\x04\x03\x00477"
        b"\xf1\x04\x01\x00U"
    )


def test_industry_tag_is_capped() -> None:
    with pytest.raises(ValueError):
        cmd.industry_tlv("030", "26.03.2022", "477", "x" * 290)


def test_cashier_tlv_frame_is_cp866() -> None:
    # FF0C with 1021 (FD 03) "Ив" in CP866 (88 A2); LEN 0C; LRC = 37
    request = cmd.encode_write_tlv(PW, cmd.tlv_text(1021, "Ив"))
    assert framed(request) == b"\x02\x0c\xff\x0c\x1e\x00\x00\x00\xfd\x03\x02\x00\x88\xa2\x37"


def test_operation_tlv_too_big_for_a_frame_is_refused() -> None:
    with pytest.raises(ValueError):
        cmd.encode_write_operation_tlv(PW, b"\x00" * 250)


def test_close_receipt_v2_frame() -> None:
    # 16 sums (slot 2 = 89.90 electronic), rounding 0, 6 taxes 0, taxation 2 (УСН доход), no
    # text; LEN 2+4+80+1+30+1 = 118 = 0x76; LRC 76^FF^45^1E^1E^23^02 = ED
    request = cmd.encode_close_receipt(PW, [0, 8990], 2)
    expected = (
        b"\x02\x76\xff\x45\x1e\x00\x00\x00"
        + b"\x00" * 5
        + b"\x1e\x23\x00\x00\x00"
        + b"\x00" * (14 * 5 + 1 + 6 * 5)
        + b"\x02"
        + b"\xed"
    )
    assert framed(request) == expected


def test_tax_rates_follow_the_driver_table() -> None:
    assert TAX_RATES["vat20"] == 1 and TAX_RATES["vat10"] == 2 and TAX_RATES["vat0"] == 3
    assert TAX_RATES["none"] == 4 and TAX_RATES["vat120"] == 5 and TAX_RATES["vat110"] == 6
    assert TAX_RATES["vat5"] == 7 and TAX_RATES["vat7"] == 8
    assert TAX_RATES["vat105"] == 9 and TAX_RATES["vat107"] == 10 and TAX_RATES["vat22"] == 11
    assert len(TAX_RATES) == 12


# --------------------------------------------------------------------------------------------
# Framing


def test_lrc_and_answer_split() -> None:
    assert lrc(b"\x05\x10\x1e\x00\x00\x00") == 0x0B
    one = split_answer(b"\x10\x00\x1e\x80\x02\x02\x00", 0x10)
    assert (one.command, one.error, one.data) == (0x10, 0, b"\x1e\x80\x02\x02\x00")
    two = split_answer(b"\xff\x69\x00\x0f", 0xFF69)
    assert (two.command, two.error, two.data) == (0xFF69, 0, b"\x0f")
    refused = split_answer(b"\xff\x45\x6b", 0xFF45)
    assert refused.error == 0x6B and refused.data == b""


@pytest.mark.parametrize(
    ("body", "command"),
    [
        (b"", 0x10),
        (b"\x10", 0x10),
        (b"\x11\x00", 0x10),  # another command's answer
        (b"\xff\x69", 0xFF69),  # no error byte
        (b"\xff\x61\x00", 0xFF69),
        (b"\x69\x00\x00", 0xFF69),
    ],
)
def test_malformed_answer_bodies(body: bytes, command: int) -> None:
    with pytest.raises(MalformedAnswer) as err:
        split_answer(body, command)
    assert err.value.reason == "malformed-answer"


def test_frame_refuses_an_oversized_body() -> None:
    with pytest.raises(ValueError):
        frame(b"\x00" * 256)


# --------------------------------------------------------------------------------------------
# Answers


FULL_STATUS = (
    b"\x1e"  # operator
    b"A4"  # firmware version
    b"\x1a\x0c"  # build 3098
    b"\x01\x02\x18"  # firmware date 01.02.2024 (DMY)
    b"\x01"  # number in line
    b"\x05\x00"  # document
    b"\x80\x04"  # flags: receipt paper (bit 7), cover open (bit 10)
    b"\x08"  # mode 8: a document open
    b"\x00"  # submode
    b"\x00"  # port
    b"\x00\x00\x00\x00\x00\x00\x00"  # FM version, build, date
    b"\x06\x0c\x1a"  # 06.12.2026
    b"\x01\x02\x03"  # 01:02:03
    b"\x00"  # FM flags
    b"\x78\x56\x34\x12"  # serial
    b"\x07\x00"  # last closed shift
    b"\x00\x00\x01\x1d"  # free records, registrations, left
    b"\x00\x00\x00\x00\x00\x00"  # ИНН
)


def test_full_status_answer() -> None:
    assert len(FULL_STATUS) == 46
    status = cmd.decode_full_status(FULL_STATUS)
    assert status.firmware_version == "A.4" and status.firmware_build == 3098
    assert status.firmware_date == date(2024, 2, 1)
    assert status.mode == cmd.MODE_DOCUMENT_OPEN and status.submode == 0
    assert status.paper_present and status.cover_open
    assert status.clock == datetime(2026, 12, 6, 1, 2, 3)
    assert status.serial == 0x12345678 and status.last_closed_shift == 7


def test_full_status_without_paper() -> None:
    # flags at offset 11 (no paper, cover shut), mode 2, submode 2 (out of paper, active)
    no_paper = FULL_STATUS[:11] + b"\x00\x00" + b"\x02\x02" + FULL_STATUS[15:]
    status = cmd.decode_full_status(no_paper)
    assert not status.paper_present and status.mode == 2


def test_short_status_answer() -> None:
    status = cmd.decode_short_status(b"\x1e\x80\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00")
    assert (status.operator, status.flags, status.mode, status.submode) == (30, 0x80, 4, 0)


def test_fn_status_answer() -> None:
    data = (
        b"\x03\x00\x00\x01"  # configured + fiscal mode, no document, shift open
        b"\x85"  # warnings: bits 0, 2, 7
        b"\x1a\x0c\x06\x0a\x1e"  # 2026-12-06 10:30
        b"9999078900001234"
        b"\x2a\x00\x00\x00"  # last document 42
    )
    fn = cmd.decode_fn_status(data)
    assert fn.fiscal and fn.shift_open and fn.last_document == 42
    assert fn.fn_number == "9999078900001234"
    assert fn.clock == datetime(2026, 12, 6, 10, 30)
    assert fn.warning_names == ("criticalError", "memoryOverflow", "needReplacement")


def test_fn_expiry_exchange_and_shift_answers() -> None:
    assert cmd.decode_fn_expiry(b"\x1b\x03\x1f\x01\x01") == date(2027, 3, 31)
    exchange = cmd.decode_exchange_status(b"\x01\x00\x03\x00\x10\x00\x00\x00\x1a\x0c\x01\x09\x00")
    assert exchange.unsent == 3 and exchange.first_unsent_number == 16
    assert exchange.first_unsent_at == datetime(2026, 12, 1, 9, 0)
    # commands.xml: shift(2) receipt(2); FSReadDayParameters.java: state(1) first
    assert cmd.decode_shift_parameters(b"\x0c\x00\x05\x00") == cmd.ShiftParameters(12, 5)
    assert cmd.decode_shift_parameters(b"\x01\x0c\x00\x05\x00") == cmd.ShiftParameters(12, 5, 1)


def test_registration_answer_gives_the_taxation_systems() -> None:
    data = (
        b"\x1a\x01\x01\x0a\x00"
        + b"7707083893  "
        + b"0000000837030527    "
        + b"\x21"  # ОСН + ПСН
        + b"\x01"
        + b"\x01\x00\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    registration = cmd.decode_registration(data)
    assert registration.taxation_systems == 0x21
    assert registration.inn == "7707083893"
    assert registration.registration_number == "0000000837030527"


def test_find_document_answers() -> None:
    receipt = cmd.decode_find_document(
        b"\x03\x01\x1a\x0c\x06\x0a\x1e\x2a\x00\x00\x00\x78\x56\x34\x12\x01\x1e\x23\x00\x00\x00"
    )
    assert receipt.type_name == "receipt" and receipt.number == 42
    assert receipt.fiscal_sign == 0x12345678 and receipt.operation == 1
    assert receipt.total == 8990 and receipt.datetime == datetime(2026, 12, 6, 10, 30)
    shift = cmd.decode_find_document(
        b"\x02\x00\x1a\x0c\x06\x08\x00\x29\x00\x00\x00\x01\x00\x00\x00\x0c\x00"
    )
    assert shift.type_name == "openShift" and shift.shift == 12


def test_close_receipt_answer() -> None:
    answer = b"\x00" * 5 + b"\x2b\x00\x00\x00" + b"\xef\xbe\xad\xde" + b"\x1a\x0c\x06\x0b\x00"
    closed = cmd.decode_close_receipt(answer)
    assert closed.document_number == 43 and closed.fiscal_sign == 0xDEADBEEF
    assert closed.datetime == datetime(2026, 12, 6, 11, 0) and closed.change == 0
    # Older firmware: no date and time.
    short = cmd.decode_close_receipt(answer[:13])
    assert short.document_number == 43 and short.datetime is None


def test_check_answer_with_the_oism_part() -> None:
    # 2004=3, reason 0, 2100=2, length 7: code 0, 2106=0x0F, TLV 2109 (3D 08) = 1
    result = cmd.decode_check_marking_code(b"\x03\x00\x02\x07\x00\x0f\x3d\x08\x01\x00\x01")
    assert result.online and result.online_code == 0 and result.tag2106 == 0x0F
    assert result.server_tlv == {2109: b"\x01"}
    validation = validation_from_check("ki", result)
    assert validation.ready and validation.fn_checked and validation.fn_result
    assert validation.oism_checked and validation.oism_status_correct
    assert validation.fn_error_reason == "checked" and validation.driver_error is None
    assert validation.item_status == "itemEstimatedStatusCorrect"
    assert validation.response_result == "correct"
    assert validation.tag2106 == 15


def test_check_answer_sale_stopped() -> None:
    result = cmd.decode_check_marking_code(b"\x03\x00\x02\x07\x00\x07\x3d\x08\x01\x00\x03")
    validation = validation_from_check("ki", result)
    assert validation.oism_checked and not validation.oism_status_correct
    assert validation.item_status == "itemSaleStopped"


def test_check_answer_offline_has_no_oism_part() -> None:
    result = cmd.decode_check_marking_code(b"\x13\x00\x02\x00")
    assert not result.online
    validation = validation_from_check("ki", result)
    assert validation.offline and validation.ready and validation.fn_checked


def test_check_answer_oism_timeout() -> None:
    result = cmd.decode_check_marking_code(b"\x03\x00\x02\x01\xff")
    assert result.online_code == 0xFF and result.tag2106 is None
    validation = validation_from_check("ki", result)
    assert validation.ready and not validation.oism_checked and not validation.offline
    assert validation.driver_error is not None and "responseTimeout" in validation.driver_error
    assert validation.oism_no_answer


def test_check_answer_refused_server_answer_has_a_reason() -> None:
    result = cmd.decode_check_marking_code(b"\x03\x00\x02\x02\x20\x05")
    assert result.online_code == 0x20 and result.refusal_reason == 5
    validation = validation_from_check("ki", result)
    assert validation.driver_error is not None and "0x20" in validation.driver_error
    assert "CRC" in validation.driver_error and not validation.oism_checked


def test_check_answer_fn_without_key() -> None:
    validation = validation_from_check("ki", cmd.decode_check_marking_code(b"\x00\x02\x02\x01\xff"))
    assert not validation.fn_checked and validation.fn_error_reason == "noKeys"


def test_bind_answers() -> None:
    plain = cmd.decode_bind_marking_code(b"\x01\x00\x02")
    assert plain.item_code == 1 and plain.code_type == 2 and plain.check is None
    checked = cmd.decode_bind_marking_code(b"\x01\x00\x02\x03\x00\x02\x01\xff")
    assert checked.check is not None and checked.check.online_code == 0xFF


def test_accept_answer() -> None:
    assert cmd.decode_accept_marking_code(b"\x0f") == 15


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        (cmd.decode_check_marking_code, b"\x03\x00"),
        (cmd.decode_check_marking_code, b"\x03\x00\x02\x09\x00\x0f"),  # length past the end
        (cmd.decode_check_marking_code, b"\x03\x00\x02\x01\x00"),  # answered, no 2106
        (cmd.decode_check_marking_code, b"\x03\x00\x02\x06\x00\x0f\x3d\x08\x05\x00"),  # TLV cut
        (cmd.decode_bind_marking_code, b"\x01"),
        (cmd.decode_bind_marking_code, b"\x01\x00\x02\x03\x00"),
        (cmd.decode_accept_marking_code, b""),
        (cmd.decode_close_receipt, b"\x00" * 10),
        (cmd.decode_full_status, FULL_STATUS[:20]),
        (cmd.decode_fn_status, b"\x03\x00\x00\x01\x00"),
        (cmd.decode_find_document, b"\x03\x01\x1a"),
        (cmd.decode_shift_parameters, b"\x0c"),
        (cmd.decode_exchange_status, b"\x01\x00\x03"),
        (cmd.decode_registration, b"\x00" * 10),
        (cmd.decode_fn_expiry, b"\x1b"),
        (cmd.decode_device_type, b"\x00\x00"),
    ],
)
def test_malformed_answers_are_typed_errors(decode: object, data: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        decode(data)  # type: ignore[operator]


def test_dates_a_device_never_set_are_none() -> None:
    assert cmd.decode_fn_expiry(b"\x00\x00\x00") is None


# --------------------------------------------------------------------------------------------
# Device errors


def test_device_errors_are_typed_faults() -> None:
    paper = device_fault(0x6B, 0xFF45)
    assert type(paper) is PrinterFault and paper.reason == "paper-out"
    assert paper.device_code == 0x6B and "0xFF45" in paper.message
    assert isinstance(device_fault(0x4A, 0x8D), ReceiptAlreadyOpen)
    assert isinstance(device_fault(0x55, 0x88), NoReceiptOpen)
    assert isinstance(device_fault(0xAC, 0xFF67), MarkNotValidated)
    assert device_fault(0x4E, 0x8D).reason == "shift-expired"
    assert device_fault(0x16, 0x8D).reason == "shift-expired"  # the ФН's own
    assert device_fault(0x03, 0xFF61).reason == "fn-error"
    assert device_fault(0xA3, 0xFF61).reason == "marks-overflow"  # ФН 0x35 moved to 0xA3
    unknown = device_fault(0xEE, 0x10)
    assert unknown.reason == "printer-fault" and unknown.device_code == 0xEE


def test_every_error_has_both_texts() -> None:
    for code in (0x01, 0x6B, 0xA0, 0xEE):
        error = describe(code)
        assert error.ru and error.en and error.reason
