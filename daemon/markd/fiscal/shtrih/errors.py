"""A Shtrih-M ККТ's error codes as markd's typed faults.

Every answer frame carries one error byte after the command code; 0 is success. The meanings
come from the vendor's JavaPOS driver message tables (``messages_ru.properties``,
``messages_en.properties``: ``PrinterErrorXX`` for the ККТ, ``FSPrinterErrorXX`` for the ФН);
the wording here is markd's own. On a ККТ with a ФН:

* codes 0x01–0x31 are the ФН's own answers passed through (``FSPrinterError01`` …: wrong
  state, ФН expired, archive full, shift over 24 hours …) — except 0x2C, which the ККТ itself
  gives to a Z-report with no shift open (``PrinterError2C``; the ФН's table has no 0x2C);
* the ФН's codes from 0x32 up are reported moved to 0xA0 and up (0x32 → 0xA0), per the
  vendor's ФФД 1.2 note: 0xA0 marking forbidden, 0xA1 wrong marking command order, 0xA2
  marking blocked for a while, 0xA3 the marking-code table is full, 0xAA required tags
  missing, 0xAC a code in 2007 that the ФН never checked;
* everything else is the ККТ's own (0x4A a receipt is open, 0x4E the shift is over 24 hours,
  0x6B no receipt paper …).

:func:`device_fault` builds the fault: the reasons the sale session acts on get their typed
class (:class:`~markd.fiscal.base.ReceiptAlreadyOpen`, :class:`~markd.fiscal.base.NoReceiptOpen`,
:class:`~markd.fiscal.base.MarkNotValidated` …), every other code a plain
:class:`~markd.errors.PrinterFault`; ``device_code`` is the device's byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from markd.errors import PrinterFault
from markd.fiscal.base import (
    MarkNotValidated,
    NoReceiptOpen,
    NoValidationRunning,
    ReceiptAlreadyOpen,
)


class MalformedAnswer(PrinterFault):
    """The device sent an answer markd cannot read (too short, a wrong command code, a length
    field pointing past the end). Raised instead of an index error: input from the device is
    never trusted."""

    reason = "malformed-answer"


@dataclass(frozen=True)
class DeviceError:
    """One error code: markd's reason and the text in Russian and English."""

    reason: str
    ru: str
    en: str


#: Codes the sale meets, by the device's byte (sources: the driver's message tables).
ERRORS: dict[int, DeviceError] = {
    # The ФН's answers (0x01–0x31 passed through).
    0x01: DeviceError(
        "fn-error",
        "ФН: неизвестная команда или неверный формат",
        "FN: unknown command or bad format",
    ),
    0x02: DeviceError(
        "fn-wrong-state",
        "ФН: состояние ФН не допускает команду",
        "FN: the fiscal storage is in the wrong state",
    ),
    0x03: DeviceError("fn-error", "ФН: отказ ФН", "FN: the fiscal storage failed"),
    0x04: DeviceError("fn-error", "ФН: ошибка криптопроцессора ФН", "FN: crypto processor error"),
    0x05: DeviceError(
        "fn-error", "ФН: срок работы ФН истёк", "FN: the fiscal storage's term is over"
    ),
    0x06: DeviceError("fn-error", "ФН: архив ФН заполнен", "FN: the archive is full"),
    0x07: DeviceError("bad-datetime", "ФН: дата или время неверны", "FN: wrong date or time"),
    0x08: DeviceError("no-data", "ФН: запрошенных данных нет", "FN: no such data"),
    0x09: DeviceError("bad-request", "ФН: параметры команды неверны", "FN: bad command parameters"),
    0x10: DeviceError("bad-request", "ФН: данные TLV слишком велики", "FN: TLV data too large"),
    0x11: DeviceError(
        "fn-error", "ФН: нет транспортного соединения", "FN: no transport connection"
    ),
    0x12: DeviceError(
        "fn-error", "ФН: ресурс криптопроцессора исчерпан", "FN: crypto processor resource used up"
    ),
    0x14: DeviceError("fn-error", "ФН: ресурс хранения исчерпан", "FN: storage resource used up"),
    0x15: DeviceError(
        "fn-error",
        "ФН: документы слишком долго ждут отправки в ОФД",
        "FN: documents waited too long for the OFD",
    ),
    0x16: DeviceError(
        "shift-expired", "ФН: смена длится более 24 часов", "FN: the shift has lasted over 24 hours"
    ),
    0x17: DeviceError(
        "bad-datetime",
        "ФН: неверный промежуток времени между операциями",
        "FN: wrong time between two operations",
    ),
    0x20: DeviceError(
        "oism-answer-invalid",
        "ФН: ответ сервера не принят",
        "FN: the server's answer was not accepted",
    ),
    # The ФН's marking answers, moved to 0xA0 and up (ФФД 1.2 note).
    0xA0: DeviceError(
        "fn-error",
        "ФН: работа с маркированными товарами запрещена",
        "FN: marked goods are not allowed",
    ),
    0xA1: DeviceError(
        "invalid-state",
        "ФН: неверный порядок команд проверки КМ",
        "FN: marking commands in the wrong order",
    ),
    0xA2: DeviceError(
        "fn-error",
        "ФН: работа с маркировкой временно заблокирована",
        "FN: marking is blocked for now",
    ),
    0xA3: DeviceError(
        "marks-overflow",
        "ФН: таблица проверки КМ переполнена",
        "FN: the marking-code table is full",
    ),
    0xAA: DeviceError(
        "bad-request",
        "ФН: в TLV нет обязательных реквизитов",
        "FN: required tags missing in the TLV",
    ),
    0xAC: DeviceError(
        "mark-not-checked",
        "ФН: в реквизите 2007 КМ, не проверенный в ФН",
        "FN: tag 2007 holds a code the FN never checked",
    ),
    # The ККТ's own.
    0x2C: DeviceError(
        "shift-closed",
        "Смена уже закрыта (повторное гашение невозможно)",
        "The shift is already closed",
    ),
    0x33: DeviceError("bad-request", "Неверные параметры команды", "Bad command parameters"),
    0x37: DeviceError("not-supported", "Команда не поддерживается", "Command not supported"),
    0x3D: DeviceError("shift-closed", "Смена не открыта", "The shift is not open"),
    0x45: DeviceError(
        "not-fully-paid", "Оплата меньше итога чека", "Payments are less than the receipt total"
    ),
    0x49: DeviceError(
        "receipt-open", "Открыт чек другого типа", "A receipt of another type is open"
    ),
    0x4A: DeviceError(
        "receipt-open", "Открыт чек: операция невозможна", "A receipt is open: not allowed"
    ),
    0x4E: DeviceError(
        "shift-expired", "Смена длится более 24 часов", "The shift has lasted over 24 hours"
    ),
    0x4F: DeviceError("bad-password", "Неверный пароль", "Wrong password"),
    0x50: DeviceError(
        "printer-busy", "Идёт печать предыдущей команды", "Still printing the previous command"
    ),
    0x55: DeviceError(
        "receipt-closed", "Чек закрыт: операция невозможна", "No receipt is open: not allowed"
    ),
    0x58: DeviceError(
        "printer-busy",
        "Ожидается команда продолжения печати",
        "Waiting for the continue-printing command",
    ),
    0x5E: DeviceError("bad-request", "Неверная операция", "Invalid operation"),
    0x6B: DeviceError("paper-out", "Нет чековой ленты", "No receipt paper"),
    0x6C: DeviceError("paper-out", "Нет контрольной ленты", "No journal paper"),
    0x72: DeviceError(
        "invalid-state", "Команда не поддерживается в этом подрежиме", "Not allowed in this submode"
    ),
    0x73: DeviceError(
        "invalid-state", "Команда не поддерживается в этом режиме", "Not allowed in this mode"
    ),
    0x8E: DeviceError("empty-receipt", "Нулевой итог чека", "Zero receipt total"),
    0xC0: DeviceError("bad-datetime", "Подтвердите дату и время", "Confirm the date and time"),
    0xC8: DeviceError(
        "printer-error", "Нет связи с печатающим механизмом", "No link to the print mechanism"
    ),
    0xD4: DeviceError("marking-code-invalid", "Неверный код маркировки", "Invalid marking code"),
}

#: Codes where a code validation is not where the command needs it (nothing to accept, or
#: one already waiting): the ФН's wrong-state answer and the ККТ's wrong-mode answers.
VALIDATION_STATE_CODES = frozenset({0x02, 0xA1, 0x72, 0x73})

_TYPES: dict[str, type[PrinterFault]] = {
    "receipt-open": ReceiptAlreadyOpen,
    "receipt-closed": NoReceiptOpen,
    "mark-not-checked": MarkNotValidated,
    "invalid-state": NoValidationRunning,
}


def describe(code: int) -> DeviceError:
    """The code's reason and texts; an unlisted code is a plain ``printer-fault``."""
    known = ERRORS.get(code)
    if known is not None:
        return known
    return DeviceError(
        "printer-fault",
        f"Ошибка ККТ 0x{code:02X}",
        f"Device error 0x{code:02X}",
    )


def device_fault(code: int, command: int) -> PrinterFault:
    """The fault for error ``code`` in the answer to ``command``."""
    error = describe(code)
    name = f"0x{command:04X}" if command > 0xFF else f"0x{command:02X}"
    text = f"Shtrih {name}: error 0x{code:02X}: {error.en} ({error.ru})"
    fault = _TYPES.get(error.reason, PrinterFault)
    return fault(text, error.reason, code)


__all__ = [
    "ERRORS",
    "VALIDATION_STATE_CODES",
    "DeviceError",
    "MalformedAnswer",
    "describe",
    "device_fault",
]
