"""Byte layouts of the Shtrih-M commands markd sends, and of their answers.

Each ``encode_*`` returns a :class:`Request` (the command code and its data, the operator
password first where the command takes one); each ``decode_*`` takes the answer's data (after
the command code and the error byte) and returns a small dataclass, raising
:class:`~markd.fiscal.shtrih.errors.MalformedAnswer` — never an index error — when the data is
shorter than its layout or a length field points past its end.

Layouts, from the vendor's ``commands.xml`` (JavaPOS driver ``shtrih-m/javapos_shtrih``,
``Source/FiscalPrinterService/src/res/commands.xml``) unless said otherwise; integers are
little-endian throughout:

===========  ================================================================================
``0x10``     short status: password(4) → operator(1) flags(2) mode(1) submode(1) …
``0x11``     full status: password(4) → operator(1) firmware version(2) build(2) date(3 DMY)
             number in line(1) document(2) flags(2) mode(1) submode(1) port(1) FM version(2)
             FM build(2) FM date(3) date(3 DMY) time(3 HMS) FM flags(1) serial(4) last closed
             shift(2) free records(2) registrations(1) left(1) ИНН(6) — 46 bytes
``0x41``     Z-report (close the shift): password(4) → operator(1); 65 s
``0x88``     cancel the receipt: password(4) → operator(1)
``0x8D``     open a receipt: password(4) type(1: 0 sale, 1 purchase, 2 sale return, 3
             purchase return) → operator(1)
``0xE0``     open the shift: password(4) → operator(1); 35 s
``0xFC``     device type, no password → type(1) subtype(1) protocol(1) subversion(1) model(1)
             language(1) name(rest, CP1251)
``FF01``     ФН status: password(4) → state(1) document(1) data received(1) shift open(1)
             warnings(1) date(3 YMD) time(2 HM) ФН number(16 ASCII) last document(4)
``FF03``     ФН validity: password(4) → date(3 YMD) [registrations left(1) done(1) as
             ``FSReadExpDate.java`` reads them]
``FF09``     registration: password(4) → date(3) time(2) ИНН(12) registration number(20)
             taxation systems(1, bit mask) mode(1) document(4) fiscal sign(4)
``FF0A``     find a document: password(4) number(4) → type(1) receipt from the ОФД(1) then, per
             ``FSDocument.java``: date-time(5 YMDHM) number(4) fiscal sign(4) and by type —
             receipt (3): operation(1) total(5); shift open (2) / close (5): shift(2)
``FF0C``     a TLV for the document being formed: password(4) TLV
``FF39``     ОФД exchange: password(4) → state(1) reading(1) unsent(2) first unsent number(4)
             its date(3 YMD) time(2 HM)
``FF40``     shift parameters: password(4) → shift(2) receipt(2); the driver's
             ``FSReadDayParameters.java`` reads a shift-state byte first (5 bytes): both read
``FF45``     close the receipt V2: password(4) 16 payment sums(5 each) rounding(1) 6 tax
             sums(5 each) taxation system(1) text(0–64) → change(5) document(4) fiscal
             sign(4) date-time(5 YMDHM, absent on some firmware)
``FF46``     operation V2: password(4) type(1) quantity(6, ×10⁶) price(5) sum(5) tax sum(5)
             tax rate(1) department(1) 1214(1) 1212(1) name(≤128, CP1251)
``FF4D``     a TLV for the last operation: password(4) TLV (≤ 250 bytes)
``FF61``     check a marking code: password(4) 2003(1) 2102(1) code length(1) TLV length(1)
             code TLV → check result (below)
``FF67``     bind the code to the last operation: password(4) length(1) code → item code(2)
             code type(1) [check result, only when the ККТ checked the code itself]
``FF69``     accept (1) / reject (0) the checked code, 2 clears the buffer
             (``FSAcceptMC.java``): password(4) action(1) → 2106(1)
===========  ================================================================================

The check result of ``FF61`` / ``FF67``: 2004(1) the reason the ФН did not check the code(1:
0 checked, 1 type not checkable, 2 no key, 3 GS1 91/92 missing, 4 other) 2100(1) length of what
follows(1: 0 offline) then the ФН's code for the online check(1: 0 answered, 0x20 the answer
was refused and a reason byte follows, 0xFF the server did not answer in time) 2106(1) and the
server's TLVs. ``commands.xml`` puts the ФН's code before 2106 (its comment and its
``OutParams``); ``FSCheckMC.java`` reads them the other way round and ``FSBindMC.java`` in the
``commands.xml`` order: markd follows ``commands.xml``.

TLVs are tag(2) length(2) value; strings in TLVs are CP866, names in ``FF46`` CP1251.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from markd.fiscal.shtrih.errors import MalformedAnswer

# --------------------------------------------------------------------------------------------
# Command codes, their time limits (``commands.xml`` ``<Timeout>``) and whether they change the
# device (a lost answer to one of those is never recovered by sending it again).

SHORT_STATUS = 0x10
FULL_STATUS = 0x11
Z_REPORT = 0x41
CANCEL_RECEIPT = 0x88
OPEN_RECEIPT = 0x8D
OPEN_SHIFT = 0xE0
DEVICE_TYPE = 0xFC
FN_STATUS = 0xFF01
FN_EXPIRY = 0xFF03
FN_REGISTRATION = 0xFF09
FN_FIND_DOCUMENT = 0xFF0A
FN_WRITE_TLV = 0xFF0C
FN_EXCHANGE_STATUS = 0xFF39
FN_SHIFT_PARAMETERS = 0xFF40
CLOSE_RECEIPT_V2 = 0xFF45
OPERATION_V2 = 0xFF46
FN_WRITE_OPERATION_TLV = 0xFF4D
CHECK_MARKING_CODE = 0xFF61
BIND_MARKING_CODE = 0xFF67
ACCEPT_MARKING_CODE = 0xFF69
MARKING_STATUS = 0xFF70


@dataclass(frozen=True)
class CommandSpec:
    name: str
    timeout_s: float
    changes_state: bool


#: ``commands.xml`` gives 10 s to most commands; the JavaPOS driver waits up to 40 s for the
#: code check and the binding (``PrinterCommand.getDefaultTimeout``: the ККТ asks the ОИСМ
#: while the host waits), and markd does the same.
COMMANDS: dict[int, CommandSpec] = {
    SHORT_STATUS: CommandSpec("short status", 10.0, False),
    FULL_STATUS: CommandSpec("full status", 10.0, False),
    Z_REPORT: CommandSpec("Z-report", 65.0, True),
    CANCEL_RECEIPT: CommandSpec("cancel receipt", 10.0, True),
    OPEN_RECEIPT: CommandSpec("open receipt", 10.0, True),
    OPEN_SHIFT: CommandSpec("open shift", 35.0, True),
    DEVICE_TYPE: CommandSpec("device type", 10.0, False),
    FN_STATUS: CommandSpec("ФН status", 10.0, False),
    FN_EXPIRY: CommandSpec("ФН validity", 10.0, False),
    FN_REGISTRATION: CommandSpec("ФН registration", 10.0, False),
    FN_FIND_DOCUMENT: CommandSpec("find document", 10.0, False),
    FN_WRITE_TLV: CommandSpec("write TLV", 10.0, True),
    FN_EXCHANGE_STATUS: CommandSpec("ОФД exchange status", 10.0, False),
    FN_SHIFT_PARAMETERS: CommandSpec("shift parameters", 10.0, False),
    CLOSE_RECEIPT_V2: CommandSpec("close receipt V2", 10.0, True),
    OPERATION_V2: CommandSpec("operation V2", 10.0, True),
    FN_WRITE_OPERATION_TLV: CommandSpec("write operation TLV", 10.0, True),
    CHECK_MARKING_CODE: CommandSpec("check marking code", 40.0, True),
    BIND_MARKING_CODE: CommandSpec("bind marking code", 40.0, True),
    ACCEPT_MARKING_CODE: CommandSpec("accept marking code", 10.0, True),
    MARKING_STATUS: CommandSpec("marking status", 10.0, False),
}

#: The most a frame's LEN byte can count (command code and data).
MAX_BODY = 255
#: ``FF46`` names and the ``FF45`` text: the layout's longest.
MAX_NAME_BYTES = 128
MAX_CLOSE_TEXT_BYTES = 64
#: The driver caps tag 1260 at 302 bytes (``TLVTags.java``); one ``FF4D`` frame carries at
#: most 255 − 2 (code) − 4 (password) = 249 bytes of TLV.
MAX_1260_BYTES = 302
MAX_OPERATION_TLV = MAX_BODY - 2 - 4
#: A 5-byte sum of all ones asks the ККТ to compute it (``FF46`` sum and tax sum).
COMPUTED_BY_DEVICE = 0xFF_FF_FF_FF_FF

#: ``FF46`` operation types and ``0x8D`` receipt types.
OPERATION_SALE = 1
OPERATION_SALE_RETURN = 2
RECEIPT_TYPE_SALE = 0
RECEIPT_TYPE_SALE_RETURN = 2

#: ``FF69`` actions (``FSAcceptMC.java``).
MARK_REJECT = 0
MARK_ACCEPT = 1
MARK_CLEAR = 2

#: ``FF01`` warning bits. The layouts name the byte only; the bits are the ФН's own (its
#: exchange protocol, which the ККТ passes through): 0 replace the ФН urgently (3 days
#: left), 1 its resource runs out (30 days left), 2 its memory is 90 % full, 3 the ОФД did not
#: answer in time, 7 a critical ФН error.
FN_WARNING_BITS = {
    0: "needReplacement",
    1: "resourceExhausted",
    2: "memoryOverflow",
    3: "ofdTimeout",
    7: "criticalError",
}

#: ``FF0A`` document types (``FSDocType.java``).
DOCUMENT_TYPES = {
    1: "registration",
    2: "openShift",
    3: "receipt",
    4: "bso",
    5: "closeShift",
    6: "fiscalClose",
    11: "registrationChange",
    16: "fiscalClose",
    20: "correctionReceipt",
}


@dataclass(frozen=True)
class Request:
    """One command to send: its code (one byte, or ``0xFFxx``) and its data."""

    command: int
    data: bytes = b""

    @property
    def body(self) -> bytes:
        """What the frame's LEN counts: the command code, then the data."""
        code = bytes([0xFF, self.command & 0xFF]) if self.command > 0xFF else bytes([self.command])
        return code + self.data


# --------------------------------------------------------------------------------------------
# Integers and text


def le(value: int, size: int) -> bytes:
    """``value`` as ``size`` little-endian bytes; ValueError when it does not fit."""
    if value < 0 or value >= 1 << (8 * size):
        raise ValueError(f"{value} does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def password_bytes(password: int) -> bytes:
    return le(password, 4)


def tlv(tag: int, value: bytes) -> bytes:
    """One TLV: tag(2) length(2) value."""
    return le(tag, 2) + le(len(value), 2) + value


def tlv_text(tag: int, text: str) -> bytes:
    """A string TLV, CP866 as the ФН wants (unencodable characters become ``?``)."""
    return tlv(tag, text.encode("cp866", errors="replace"))


def name_bytes(text: str, limit: int = MAX_NAME_BYTES) -> bytes:
    """A printed name in CP1251, cut to ``limit`` bytes."""
    return text.encode("cp1251", errors="replace")[:limit]


class Reader:
    """Bounded reads from an answer's data: every read past the end is a
    :class:`MalformedAnswer` naming the command."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        self.offset = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise MalformedAnswer(
                f"Shtrih {self.what}: answer too short ({len(self.data)} bytes, "
                f"needs {self.offset + size})"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def byte(self) -> int:
        return self.take(1)[0]

    def rest(self) -> bytes:
        chunk = self.data[self.offset :]
        self.offset = len(self.data)
        return chunk

    @property
    def left(self) -> int:
        return len(self.data) - self.offset

    def date_ymd(self) -> date | None:
        year, month, day = self.take(3)
        return _date(2000 + year, month, day)

    def date_dmy(self) -> date | None:
        day, month, year = self.take(3)
        return _date(2000 + year, month, day)

    def datetime_ymdhm(self) -> datetime | None:
        year, month, day, hour, minute = self.take(5)
        return _datetime(2000 + year, month, day, hour, minute)


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None  # a device that never had its date set answers zeros


def _datetime(
    year: int, month: int, day: int, hour: int, minute: int, second: int = 0
) -> datetime | None:
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class ShortStatus:
    operator: int
    flags: int
    mode: int
    submode: int


def encode_short_status(password: int) -> Request:
    return Request(SHORT_STATUS, password_bytes(password))


def decode_short_status(data: bytes) -> ShortStatus:
    reader = Reader(data, "0x10")
    operator = reader.byte()
    flags = reader.uint(2)
    mode = reader.byte()
    submode = reader.byte()
    return ShortStatus(operator, flags, mode, submode)


#: ``0x11`` flags (``PrinterFlags.java``): bit 7 receipt paper present, bit 10 cover open.
FLAG_RECEIPT_PAPER = 1 << 7
FLAG_COVER_OPEN = 1 << 10
#: Modes (the low nibble of the mode byte): 2 shift open, 3 shift over 24 h, 4 shift closed,
#: 8 a document open. Submodes 1 and 2: out of paper (passive / active).
MODE_SHIFT_OPEN = 2
MODE_SHIFT_EXPIRED = 3
MODE_SHIFT_CLOSED = 4
MODE_DOCUMENT_OPEN = 8
SUBMODES_NO_PAPER = frozenset({1, 2})


@dataclass(frozen=True)
class FullStatus:
    operator: int
    firmware_version: str
    firmware_build: int
    firmware_date: date | None
    document_number: int
    flags: int
    mode_byte: int
    submode: int
    clock: datetime | None
    serial: int
    last_closed_shift: int

    @property
    def mode(self) -> int:
        return self.mode_byte & 0x0F

    @property
    def paper_present(self) -> bool:
        return bool(self.flags & FLAG_RECEIPT_PAPER) and self.submode not in SUBMODES_NO_PAPER

    @property
    def cover_open(self) -> bool:
        return bool(self.flags & FLAG_COVER_OPEN)


def encode_full_status(password: int) -> Request:
    return Request(FULL_STATUS, password_bytes(password))


def decode_full_status(data: bytes) -> FullStatus:
    reader = Reader(data, "0x11")
    operator = reader.byte()
    version = reader.take(2)
    build = reader.uint(2)
    firmware_date = reader.date_dmy()
    reader.byte()  # number in the checkout line
    document = reader.uint(2)
    flags = reader.uint(2)
    mode = reader.byte()
    submode = reader.byte()
    reader.byte()  # port
    reader.take(2 + 2 + 3)  # FM firmware version, build, date
    day = reader.date_dmy()
    hour, minute, second = reader.take(3)
    reader.byte()  # FM flags
    serial = reader.uint(4)
    last_closed = reader.uint(2)
    clock = None
    if day is not None:
        clock = _datetime(day.year, day.month, day.day, hour, minute, second)
    return FullStatus(
        operator=operator,
        firmware_version=_version_text(version),
        firmware_build=build,
        firmware_date=firmware_date,
        document_number=document,
        flags=flags,
        mode_byte=mode,
        submode=submode,
        clock=clock,
        serial=serial,
        last_closed_shift=last_closed,
    )


def _version_text(raw: bytes) -> str:
    """The firmware version: two characters (``"A.4"`` is sent as ``b"A4"``)."""
    text = raw.decode("cp1251", errors="replace")
    return ".".join(text) if all(c.isprintable() for c in text) else raw.hex()


@dataclass(frozen=True)
class DeviceType:
    type: int
    subtype: int
    protocol: int
    protocol_subversion: int
    model: int
    language: int
    name: str


def encode_device_type() -> Request:
    return Request(DEVICE_TYPE)


def decode_device_type(data: bytes) -> DeviceType:
    reader = Reader(data, "0xFC")
    fields = reader.take(6)
    name = reader.rest().rstrip(b"\x00").decode("cp1251", errors="replace").strip()
    return DeviceType(*fields, name=name)


@dataclass(frozen=True)
class FnStatus:
    state: int
    current_document: int
    data_received: bool
    shift_open: bool
    warnings: int
    clock: datetime | None
    fn_number: str
    last_document: int

    @property
    def warning_names(self) -> tuple[str, ...]:
        return tuple(
            sorted(name for bit, name in FN_WARNING_BITS.items() if self.warnings & (1 << bit))
        )

    @property
    def fiscal(self) -> bool:
        """Bit 1: the fiscal mode is open; bit 2: it was closed (post-fiscal)."""
        return bool(self.state & 0b10) and not self.state & 0b100


def encode_fn_status(password: int) -> Request:
    return Request(FN_STATUS, password_bytes(password))


def decode_fn_status(data: bytes) -> FnStatus:
    reader = Reader(data, "FF01")
    state, current, received, shift_open, warnings = reader.take(5)
    day = reader.date_ymd()
    hour, minute = reader.take(2)
    number = reader.take(16).rstrip(b"\x00 ").decode("ascii", errors="replace")
    last = reader.uint(4)
    clock = None if day is None else _datetime(day.year, day.month, day.day, hour, minute)
    return FnStatus(state, current, bool(received), bool(shift_open), warnings, clock, number, last)


def encode_fn_expiry(password: int) -> Request:
    return Request(FN_EXPIRY, password_bytes(password))


def decode_fn_expiry(data: bytes) -> date | None:
    return Reader(data, "FF03").date_ymd()


@dataclass(frozen=True)
class ExchangeStatus:
    state: int
    unsent: int
    first_unsent_number: int
    first_unsent_at: datetime | None


def encode_exchange_status(password: int) -> Request:
    return Request(FN_EXCHANGE_STATUS, password_bytes(password))


def decode_exchange_status(data: bytes) -> ExchangeStatus:
    reader = Reader(data, "FF39")
    state = reader.byte()
    reader.byte()  # reading a message for the ОФД
    unsent = reader.uint(2)
    number = reader.uint(4)
    day = reader.date_ymd()
    hour, minute = reader.take(2)
    at = None if day is None else _datetime(day.year, day.month, day.day, hour, minute)
    return ExchangeStatus(state, unsent, number, at)


@dataclass(frozen=True)
class ShiftParameters:
    number: int
    receipt_number: int
    #: The shift state byte the driver reads first, None when the answer has no such byte.
    state: int | None = None


def encode_shift_parameters(password: int) -> Request:
    return Request(FN_SHIFT_PARAMETERS, password_bytes(password))


def decode_shift_parameters(data: bytes) -> ShiftParameters:
    reader = Reader(data, "FF40")
    if len(data) >= 5:
        # FSReadDayParameters.java: shift state(1), then the two numbers.
        state = reader.byte()
        return ShiftParameters(reader.uint(2), reader.uint(2), state)
    return ShiftParameters(reader.uint(2), reader.uint(2))


@dataclass(frozen=True)
class MarkingStatus:
    """``FF70`` (commands.xml's comment, the ФН-М table it copies): the state of the code
    checks, and how many accepted check results the ФН holds for the next receipt."""

    check_state: int
    notice_state: int
    command_flags: int
    accepted: int
    in_notices: int
    notice_fullness: int
    notices: int


def encode_marking_status(password: int) -> Request:
    return Request(MARKING_STATUS, password_bytes(password))


def decode_marking_status(data: bytes) -> MarkingStatus:
    # Check state(1), notice state(1), command flags(1), saved results(1), codes in notices(1),
    # notice area fullness(1), notices queued(u16); a longer answer's extra bytes are ignored.
    reader = Reader(data, "FF70")
    return MarkingStatus(
        reader.byte(),
        reader.byte(),
        reader.byte(),
        reader.byte(),
        reader.byte(),
        reader.byte(),
        reader.uint(2),
    )


@dataclass(frozen=True)
class Registration:
    taxation_systems: int
    registration_number: str
    inn: str


def encode_registration(password: int) -> Request:
    return Request(FN_REGISTRATION, password_bytes(password))


def decode_registration(data: bytes) -> Registration:
    reader = Reader(data, "FF09")
    reader.take(5)  # date and time
    inn = reader.take(12).decode("ascii", errors="replace").strip("\x00 ")
    number = reader.take(20).decode("ascii", errors="replace").strip("\x00 ")
    systems = reader.byte()
    return Registration(systems, number, inn)


@dataclass(frozen=True)
class Document:
    """A fiscal document found by number (``FF0A``)."""

    number: int
    type: int
    acknowledged: bool
    datetime: datetime | None
    fiscal_sign: int
    #: A receipt's operation (1 sale, 2 sale return …) and total in kopecks.
    operation: int | None = None
    total: int | None = None
    #: A shift report's shift number.
    shift: int | None = None

    @property
    def type_name(self) -> str:
        return DOCUMENT_TYPES.get(self.type, f"type{self.type}")


def encode_find_document(password: int, number: int) -> Request:
    return Request(FN_FIND_DOCUMENT, password_bytes(password) + le(number, 4))


def decode_find_document(data: bytes) -> Document:
    reader = Reader(data, "FF0A")
    kind = reader.byte()
    acknowledged = bool(reader.byte())
    moment = reader.datetime_ymdhm()
    number = reader.uint(4)
    sign = reader.uint(4)
    operation = total = shift = None
    if kind == 3 and reader.left >= 6:
        operation = reader.byte()
        total = reader.uint(5)
    elif kind in (2, 5) and reader.left >= 2:
        shift = reader.uint(2)
    return Document(number, kind, acknowledged, moment, sign, operation, total, shift)


# --------------------------------------------------------------------------------------------
# Shifts and receipts


def encode_open_shift(password: int) -> Request:
    return Request(OPEN_SHIFT, password_bytes(password))


def encode_z_report(password: int) -> Request:
    return Request(Z_REPORT, password_bytes(password))


def encode_open_receipt(password: int, receipt_type: int) -> Request:
    return Request(OPEN_RECEIPT, password_bytes(password) + le(receipt_type, 1))


def encode_cancel_receipt(password: int) -> Request:
    return Request(CANCEL_RECEIPT, password_bytes(password))


def encode_write_tlv(password: int, data: bytes) -> Request:
    _check_tlv_size(data)
    return Request(FN_WRITE_TLV, password_bytes(password) + data)


def encode_write_operation_tlv(password: int, data: bytes) -> Request:
    _check_tlv_size(data)
    return Request(FN_WRITE_OPERATION_TLV, password_bytes(password) + data)


def _check_tlv_size(data: bytes) -> None:
    if len(data) > MAX_OPERATION_TLV:
        raise ValueError(f"a TLV of {len(data)} bytes does not fit one frame")


@dataclass(frozen=True)
class Operation:
    """One ``FF46`` line."""

    operation: int
    quantity_millionths: int
    price: int
    name: str
    tax_rate: int
    payment_method: int = 4  # 1214: full payment
    payment_object: int = 1  # 1212: commodity
    department: int = 1
    amount: int = COMPUTED_BY_DEVICE
    tax_amount: int = COMPUTED_BY_DEVICE


def encode_operation(password: int, line: Operation) -> Request:
    data = (
        password_bytes(password)
        + le(line.operation, 1)
        + le(line.quantity_millionths, 6)
        + le(line.price, 5)
        + le(line.amount, 5)
        + le(line.tax_amount, 5)
        + le(line.tax_rate, 1)
        + le(line.department, 1)
        + le(line.payment_method, 1)
        + le(line.payment_object, 1)
        + name_bytes(line.name)
    )
    return Request(OPERATION_V2, data)


def industry_tlv(tag1262: str, tag1263: str, tag1264: str, tag1265: str) -> bytes:
    """Tag 1260: an STLV holding 1262, 1263 (``DD.MM.YYYY``), 1264 and 1265."""
    inner = (
        tlv_text(1262, tag1262)
        + tlv_text(1263, tag1263)
        + tlv_text(1264, tag1264)
        + tlv_text(1265, tag1265)
    )
    if len(inner) + 4 > MAX_1260_BYTES:
        raise ValueError(f"tag 1260 of {len(inner) + 4} bytes is over {MAX_1260_BYTES}")
    return tlv(1260, inner)


@dataclass(frozen=True)
class CloseResult:
    change: int
    document_number: int
    fiscal_sign: int
    datetime: datetime | None


def encode_close_receipt(
    password: int,
    payments: Sequence[int],
    taxation_system: int,
    text: str = "",
    rounding: int = 0,
    taxes: Sequence[int] = (0, 0, 0, 0, 0, 0),
) -> Request:
    """``payments`` are up to 16 sums in kopecks (slot 1 cash, 2 the next type …)."""
    if len(payments) > 16:
        raise ValueError("at most 16 payment sums")
    sums = list(payments) + [0] * (16 - len(payments))
    data = password_bytes(password)
    data += b"".join(le(s, 5) for s in sums)
    data += le(rounding, 1)
    data += b"".join(le(t, 5) for t in taxes)
    data += le(taxation_system, 1)
    data += name_bytes(text, MAX_CLOSE_TEXT_BYTES)
    return Request(CLOSE_RECEIPT_V2, data)


def decode_close_receipt(data: bytes) -> CloseResult:
    reader = Reader(data, "FF45")
    change = reader.uint(5)
    number = reader.uint(4)
    sign = reader.uint(4)
    moment = reader.datetime_ymdhm() if reader.left >= 5 else None
    return CloseResult(change, number, sign, moment)


# --------------------------------------------------------------------------------------------
# Marking codes


#: The ФН's reasons for not checking a code locally, in ATOL's words (domain.md §7.4a).
LOCAL_REASONS = {0: "checked", 1: "typeIncorrect", 2: "noKeys", 3: "noGS1", 4: "other"}
#: The ФН's code for the online check: the server answered, its answer was refused (a reason
#: byte follows), no answer in time.
ONLINE_ANSWERED = 0x00
ONLINE_ANSWER_REFUSED = 0x20
ONLINE_NO_ANSWER = 0xFF
#: Why the ФН refused the server's answer (``commands.xml``, FF61 note 2).
REFUSAL_REASONS = {
    1: "bad fiscal sign of the answer",
    2: "bad format of the answer's tags",
    3: "bad request number in the answer",
    4: "bad ФН number",
    5: "bad CRC of the data block",
    7: "bad length of the answer",
}


@dataclass(frozen=True)
class CheckResult:
    """The check result of ``FF61`` (and of ``FF67`` when the ККТ checked the code itself)."""

    tag2004: int
    local_reason: int
    tag2100: int
    #: False: nothing followed the length byte (the ККТ works offline).
    online: bool
    online_code: int | None = None
    tag2106: int | None = None
    refusal_reason: int | None = None
    server_tlv: dict[int, bytes] = field(default_factory=dict)

    @property
    def local_reason_name(self) -> str:
        return LOCAL_REASONS.get(self.local_reason, "other")


def encode_check_marking_code(
    password: int, code: bytes, planned_status: int, mode: int = 0, extra_tlv: bytes = b""
) -> Request:
    data = (
        password_bytes(password)
        + le(planned_status, 1)
        + le(mode, 1)
        + le(len(code), 1)
        + le(len(extra_tlv), 1)
        + code
        + extra_tlv
    )
    if len(data) + 2 > MAX_BODY:
        raise ValueError(f"a marking code of {len(code)} bytes does not fit one frame")
    return Request(CHECK_MARKING_CODE, data)


def decode_check_result(reader: Reader) -> CheckResult:
    tag2004 = reader.byte()
    reason = reader.byte()
    tag2100 = reader.byte()
    length = reader.byte()
    if length == 0:
        return CheckResult(tag2004, reason, tag2100, online=False)
    extra = Reader(reader.take(length), reader.what)
    online_code = extra.byte()
    if online_code == ONLINE_ANSWER_REFUSED:
        refusal = extra.byte() if extra.left else None
        return CheckResult(tag2004, reason, tag2100, True, online_code, refusal_reason=refusal)
    if online_code != ONLINE_ANSWERED:
        return CheckResult(tag2004, reason, tag2100, True, online_code)
    tag2106 = extra.byte()
    return CheckResult(
        tag2004, reason, tag2100, True, online_code, tag2106, server_tlv=parse_tlv(extra.rest())
    )


def decode_check_marking_code(data: bytes) -> CheckResult:
    return decode_check_result(Reader(data, "FF61"))


@dataclass(frozen=True)
class BindResult:
    item_code: int
    code_type: int
    #: Present only when the ККТ had to check the code itself (it was not checked before).
    check: CheckResult | None


def encode_bind_marking_code(password: int, code: bytes) -> Request:
    data = password_bytes(password) + le(len(code), 1) + code
    if len(data) + 2 > MAX_BODY:
        raise ValueError(f"a marking code of {len(code)} bytes does not fit one frame")
    return Request(BIND_MARKING_CODE, data)


def decode_bind_marking_code(data: bytes) -> BindResult:
    reader = Reader(data, "FF67")
    item_code = reader.uint(2)
    code_type = reader.byte()
    check = decode_check_result(reader) if reader.left else None
    return BindResult(item_code, code_type, check)


def encode_accept_marking_code(password: int, action: int) -> Request:
    return Request(ACCEPT_MARKING_CODE, password_bytes(password) + le(action, 1))


def decode_accept_marking_code(data: bytes) -> int:
    """The kept check result, tag 2106."""
    return Reader(data, "FF69").byte()


def parse_tlv(data: bytes) -> dict[int, bytes]:
    """A flat TLV list; a length pointing past the end is a :class:`MalformedAnswer`."""
    reader = Reader(data, "TLV")
    found: dict[int, bytes] = {}
    while reader.left:
        tag = reader.uint(2)
        size = reader.uint(2)
        found[tag] = reader.take(size)
    return found


__all__ = [
    "COMMANDS",
    "BindResult",
    "CheckResult",
    "CloseResult",
    "CommandSpec",
    "DeviceType",
    "Document",
    "ExchangeStatus",
    "FnStatus",
    "FullStatus",
    "Operation",
    "Reader",
    "Registration",
    "Request",
    "ShiftParameters",
    "ShortStatus",
]
