"""The virtual Shtrih-M ККТ's own reading of protocol 1's vocabulary: its error codes, the
constants its commands answer with, and the readers and writers of the fields in a command's
data (integers little-endian, dates as Y M D, TLVs as tag u16, length u16, value). It shares
nothing with markd's Shtrih client (:mod:`markd.fiscal.shtrih`): each side reads the vendor's
layouts on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

SHIFT_HOURS = 24
MSK = timezone(timedelta(hours=3))
#: A new ФН of this device is valid this long (a 13-month ФН), unless ``fn_days_left`` says.
FN_VALIDITY_DAYS = 395
#: Codes the ФН keeps accepted at once; one more check is refused (error 0xA3).
MAX_ACCEPTED = 100
DEFAULT_PASSWORD = 30
#: protocol_kkt_2.0.txt: an operator's number 1…30 is answered with every command; the
#: system administrator's password (30 by default) is operator 30.
OPERATOR_NUMBER = 30


class Error:
    """The error byte of an answer: the ККТ's own codes (messages_ru.txt ``PrinterErrorXX``)
    and the ФН's (``FSPrinterErrorXX``; codes 0x32 and up remapped to 0xA0 and up, per the
    vendor's ФФД 1.2 note). The vendor's driver reads a code below 0x20 from a device with a ФН
    as the ФН's error (``SMFiscalPrinterImpl.getDriverErrorText``)."""

    OK = 0x00
    FN_BAD_STATE = 0x02  # ФН: неверное состояние ФН
    FN_FAILURE = 0x03  # ФН: ошибка ФН
    FN_NO_DATA = 0x08  # ФН: нет запрошенных данных
    BAD_PARAMETERS = 0x33  # некорректные параметры в команде
    NOT_SUPPORTED = 0x37  # команда не поддерживается в данной реализации
    SHIFT_CLOSED = 0x3D  # смена не открыта — операция невозможна
    ZERO_TOTAL_SHIFT_CLOSED = 0x2C  # обнулённая касса (повторное гашение невозможно)
    PAYMENT_SHORT = 0x45  # сумма всех типов оплаты меньше итога чека
    WRONG_RECEIPT_TYPE = 0x49  # операция невозможна в открытом чеке данного типа
    RECEIPT_OPEN = 0x4A  # открыт чек — операция невозможна
    CASHLESS_TOO_MUCH = 0x4D  # безналичная оплата больше итога чека
    SHIFT_OVER_24H = 0x4E  # смена превысила 24 часа
    BAD_PASSWORD = 0x4F  # неверный пароль
    RECEIPT_CLOSED = 0x55  # чек закрыт — операция невозможна
    BAD_OPERATION = 0x5E  # некорректная операция
    NO_PAPER = 0x6B  # нет чековой ленты
    NOT_IN_THIS_MODE = 0x73  # команда не поддерживается в данном режиме
    ZERO_TOTAL = 0x8E  # нулевой итог чека
    # The ФН's marking errors, 0x32+ remapped to 0xA0+ (ffd12_driver_note.txt).
    FN_MARKING_SEQUENCE = 0xA1  # ФН 0x33: неверная последовательность команд группы Bxh
    FN_MARKING_TABLE_FULL = 0xA3  # ФН 0x35: переполнена таблица проверки КМ
    FN_CODE_NOT_CHECKED = 0xAC  # ФН 0x3E: в реквизите 2007 КМ, который не проверялся в ФН


#: Taxation system names (ATOL's, shared with the virtual ККТ) → the bit of ``FF45``'s
#: taxation byte (the same bits as tag 1055).
TAXATION_BITS: dict[str, int] = {
    "osn": 0x01,
    "usnIncome": 0x02,
    "usnIncomeOutcome": 0x04,
    "envd": 0x08,
    "esn": 0x10,
    "patent": 0x20,
}
DEFAULT_TAXATION = ("osn",)

#: ``0x8D``'s document type → the receipt kind markd names; ``FF46``'s operation type that
#: fits it (the vendor's example opens type 0 and registers operation 1, "приход").
RECEIPT_KINDS: dict[int, tuple[str, int]] = {0: ("sell", 1), 2: ("sellReturn", 2)}

#: ``FF45``'s sixteen payment sums: the vendor's example pays cash with the first and
#: "электронными" with the second; the others are kept by their number.
PAYMENT_NAMES = {1: "cash", 2: "electronically"}

#: The ФН's warning flags in ``FF01`` (the ФН-М exchange protocol's bits, which the sources
#: here do not list: unconfirmed) under the names the virtual ККТ's fault ``fn_warnings`` uses.
FN_WARNING_BITS: dict[str, int] = {
    "needReplacement": 0x01,
    "resourceExhausted": 0x02,
    "memoryOverflow": 0x04,
    "ofdTimeout": 0x08,
    "criticalError": 0x80,
}

#: ``FF0A``'s document types (FSDocType.java).
DOCUMENT_TYPES = {"registration": 1, "openShift": 2, "sell": 3, "sellReturn": 3, "closeShift": 5}


class Refused(Exception):
    """A command the device answers with a non-zero error byte."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error 0x{code:02X}")
        self.code = code


# --------------------------------------------------------------------------------------------
# Bytes: the device's own readers and writers (no code shared with markd's Shtrih client)


class Reader:
    """Reads a command's data field by field; running short is error 0x33."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise Refused(Error.BAD_PARAMETERS)
        part = self.data[self.at : self.at + size]
        self.at += size
        return part

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def rest(self) -> bytes:
        part = self.data[self.at :]
        self.at = len(self.data)
        return part


def u(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "little")


def ymd(when: datetime) -> bytes:
    return bytes((when.year - 2000, when.month, when.day))


def hm(when: datetime) -> bytes:
    return bytes((when.hour, when.minute))


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """TLV list: tag u16 LE, length u16 LE, value (FSWriteTLV.java / TLVTags.java)."""
    items = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise Refused(Error.BAD_PARAMETERS)
        tag = int.from_bytes(data[at : at + 2], "little")
        size = int.from_bytes(data[at + 2 : at + 4], "little")
        value = data[at + 4 : at + 4 + size]
        if len(value) != size:
            raise Refused(Error.BAD_PARAMETERS)
        items.append((tag, value))
        at += 4 + size
    return items


def tlv(tag: int, value: bytes) -> bytes:
    return u(tag, 2) + u(len(value), 2) + value


def cp866(value: bytes) -> str:
    """A TLV string: CP866 (TLVTags.java)."""
    return value.decode("cp866", errors="replace")


class GoneNow(Exception):
    """The device stops answering in the middle of this command (fault ``gone_in_receipt``)."""
