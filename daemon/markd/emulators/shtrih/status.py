"""The status commands of the virtual Shtrih-M ККТ: what the device tells about itself, its ФН,
its shift, its ОФД queue and its documents. Each answers the bytes after the error byte; the
layout's source is named in each docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from markd.emulators.shtrih.protocol import (
    DEFAULT_TAXATION,
    DOCUMENT_TYPES,
    FN_VALIDITY_DAYS,
    FN_WARNING_BITS,
    MAX_ACCEPTED,
    MSK,
    OPERATOR_NUMBER,
    TAXATION_BITS,
    Error,
    Reader,
    Refused,
    hm,
    u,
    ymd,
)

#: When the virtual ККТ was registered (its document 1), as FF09 reports it.
REGISTERED_AT = 1735000000.0


class StatusCommands:
    """The status commands, mixed into :class:`~markd.emulators.shtrih.device.ShtrihKkt`
    (which gives ``_now``, ``_clock``, ``_opened_at``, ``_mode``, ``_flags`` and
    ``_document``)."""

    _clock: Callable[[], float]

    def _device_type(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0xFC`` (commands.xml "Get device type", ReadDeviceMetrics.java): type, subtype,
        protocol version and subversion, model, language (one byte each), then the model name
        (CP1251, to the end)."""
        name = str(state["device"]["model_name"]).encode("cp1251", errors="replace")
        return bytes((0, 0, 1, 0, 0, 0)) + name

    def _short_status(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0x10`` (commands.xml, ReadShortStatus.java, protocol_kkt_2.0.txt): operator,
        flags (2), mode, submode, receipt operations (low byte), battery and power voltage,
        FM and EJ error codes, receipt operations (high byte), three reserved bytes."""
        receipt = state["receipt"]
        operations = len(receipt["positions"]) if receipt else 0
        submode = 1 if state["faults"].get("paper_out") else 0  # passive paper absence
        return (
            bytes((OPERATOR_NUMBER,))
            + u(self._flags(state), 2)
            + bytes((self._mode(state), submode, operations & 0xFF, 0x9B, 0xB4, 0, 0))
            + bytes((operations >> 8 & 0xFF, 0, 0, 0))
        )

    def _long_status(self, state: dict[str, Any], data: Reader) -> bytes:
        """``0x11`` (commands.xml "Get ECR status", LongPrinterStatus.java): operator,
        firmware version (2) / build (2) / date (DMY), number in the hall, document number (2),
        flags (2), mode, submode, port, FM version / build / date, date (DMY), time (HMS), FM
        flags, serial (4), last closed shift (2), free FM records (2), registrations made and
        left (1 each), ИНН (6)."""
        now = self._now()
        shift = state["shift"]
        last_closed = shift["number"] if shift["state"] != "opened" else shift["number"] - 1
        submode = 1 if state["faults"].get("paper_out") else 0
        fm_flags = 0x01 | (0x40 if shift["state"] == "opened" else 0)
        return (
            bytes((OPERATOR_NUMBER,))
            + b"C2"
            + u(1, 2)
            + bytes((1, 1, 24))
            + bytes((1,))
            + u(state["document_number"] & 0xFFFF, 2)
            + u(self._flags(state), 2)
            + bytes((self._mode(state), submode, 0))
            + b"C2"
            + u(1, 2)
            + bytes((1, 1, 24))
            + bytes((now.day, now.month, now.year - 2000))
            + bytes((now.hour, now.minute, now.second))
            + bytes((fm_flags,))
            + u(int(state["device"]["serial"]) & 0xFFFFFFFF, 4)
            + u(max(last_closed, 0), 2)
            + u(2000, 2)
            + bytes((1, 11))
            + u(int(state["device"]["inn"]), 6)
        )

    def _fn_status(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF01`` (commands.xml "FS read status", FSReadStatus.java): life phase (bits 0
        configured, 1 fiscal mode), the open document (0 none, 4 receipt), document data
        received, shift open, warning flags, date (YMD) and time (HM), the ФН number (16
        ASCII), the last document's number (4)."""
        now = self._now()
        faults = state["faults"]
        warnings = 0
        for name in faults.get("fn_warnings") or ():
            warnings |= FN_WARNING_BITS[name]
        if faults.get("fn_error"):
            warnings |= FN_WARNING_BITS["criticalError"]
        receipt = state["receipt"]
        return (
            bytes((0x03, 0x04 if receipt else 0x00, 1 if receipt and receipt["positions"] else 0))
            + bytes((1 if state["shift"]["state"] == "opened" else 0, warnings))
            + ymd(now)
            + hm(now)
            + state["device"]["fn_number"].encode("ascii").ljust(16, b" ")[:16]
            + u(state["document_number"], 4)
        )

    def _fn_expiry(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF03`` (commands.xml: the date, YMD; FSReadExpDate.java reads two more bytes,
        registrations left and made, which are sent too)."""
        days = state["faults"].get("fn_days_left")
        if days is not None:
            end = self._clock() + float(days) * 86400
        else:
            end = float(state["device"]["fn_valid_until"])
        return ymd(datetime.fromtimestamp(end, MSK)) + bytes((29, 1))

    def _registration(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF09`` (commands.xml "FS read fiscalization"): the registration's date (YMD) and
        time (HM), the user's ИНН (12 ASCII) and the ККТ's registration number (20 ASCII),
        the taxation systems it is registered with (a bit mask), its operating mode (1), then
        the registration report's number (4) and fiscal sign (4). The systems are the fault
        ``taxation_types`` (["osn"] unless set)."""
        systems = 0
        for name in state["faults"].get("taxation_types") or DEFAULT_TAXATION:
            systems |= TAXATION_BITS[name]
        when = datetime.fromtimestamp(REGISTERED_AT, MSK)
        return (
            ymd(when)
            + hm(when)
            + state["device"]["inn"].encode("ascii").ljust(12, b" ")[:12]
            + b"0000000001012345".ljust(20, b" ")
            + bytes((systems, 0))
            + u(1, 4)
            + u(0x5EED1E55, 4)
        )

    def _ofd_status(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF39`` (commands.xml's comment, FSReadCommStatus.java): exchange status bits
        (bit 1: a message waits for the ОФД), reading status, unsent count (2), the first
        unsent document's number (4), its date (YMD) and time (HM). Nothing is ever sent
        here: there is no ОФД."""
        unsent = int(state["unsent"])
        first = int(state.get("first_unsent") or 0)
        when = state.get("first_unsent_at")
        stamp = datetime.fromisoformat(when) if when else self._now()
        age = state["faults"].get("unsent_age_days")
        if age is not None:
            unsent = max(unsent, 1)
            first = first or int(state["document_number"])
            stamp = datetime.fromtimestamp(self._clock() - float(age) * 86400, MSK)
        status = 0x02 if unsent else 0x00
        if not unsent:
            return bytes((0, 0)) + u(0, 2) + u(0, 4) + bytes(5)
        return bytes((status, 0)) + u(unsent, 2) + u(first, 4) + ymd(stamp) + hm(stamp)

    def _shift_parameters(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF40``: shift state, shift number (2), receipt number (2). The state byte is in
        commands.xml's comment and FSReadDayParameters.java, not in its parameter list; the
        receipt number is the count of receipts in the shift (unconfirmed)."""
        shift = state["shift"]
        opened = 1 if shift["state"] == "opened" else 0
        return bytes((opened,)) + u(shift["number"], 2) + u(shift["receipts"], 2)

    def _marking_status(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF70`` (commands.xml's comment, the ФН-М table it copies; FSReadMCStatus.java):
        check state (0 table full, 1 no code on check, 2 code passed, 4 answer received),
        notice state, allowed-command flags (bit 0 check, bit 1 accept), results kept,
        codes in notices, notice area fullness, notices queued (2). commands.xml's parameter
        list adds a ninth byte the comment and the Java class do not have: not sent."""
        check = state["check"]
        accepted = len(state["accepted"])
        if check is not None:
            status, flags = (4 if check.get("online") else 2), 0x02
        elif accepted >= MAX_ACCEPTED:
            status, flags = 0, 0x00
        else:
            status, flags = 1, 0x01
        return bytes((status, 0, flags, accepted, 0, 0)) + u(0, 2)

    def _find_document(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF0A`` (commands.xml, FSFindDocument.java and the FSDocument classes): type,
        ticket received, date and time (Y M D H M), number (4), fiscal sign (4); then the shift
        number (2) for shift reports, or the receipt's operation type (1: sale, 2: sale
        return) and total (5) for receipts. An unknown number is the ФН's 0x08 (no data)."""
        number = data.uint(4)
        document = self._document(number)
        if document is None:
            if number == 1:  # the registration report, made before this emulator's life
                now = datetime.fromtimestamp(float(state["device"]["fn_valid_until"]), MSK)
                start = now - timedelta(days=FN_VALIDITY_DAYS)
                return bytes((1, 0)) + ymd(start) + hm(start) + u(1, 4) + u(1, 4)
            raise Refused(Error.FN_NO_DATA)
        when = datetime.fromisoformat(document["datetime"])
        shift = state["shift"]
        if (
            document["type"] == "openShift"
            and shift["state"] == "opened"
            and document["shift"] == shift["number"]
            and state["faults"].get("shift_age_hours") is not None
        ):
            # The open shift's report tells the time ``shift_age_hours`` makes it opened.
            when = datetime.fromtimestamp(self._opened_at(state), MSK)
        head = (
            bytes((DOCUMENT_TYPES[document["type"]], 0))
            + ymd(when)
            + hm(when)
            + u(number, 4)
            + u(int(document["fiscal_sign"]), 4)
        )
        if document["type"] in ("openShift", "closeShift"):
            return head + u(document["shift"], 2)
        operation = 1 if document["type"] == "sell" else 2
        return head + bytes((operation,)) + u(document["total"], 5)
