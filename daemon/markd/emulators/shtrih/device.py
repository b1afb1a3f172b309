"""The device model of the virtual Shtrih-M ККТ: protocol 1 commands in, answers out, its whole
state on disk. The bytes on the wire (ENQ/ACK/NAK, frames, LRC) are :mod:`.link`'s job; this
module takes a command's bytes (``CMD DATA``) and gives the answer's (``CMD ERR DATA``).

Where each layout comes from is listed in the package docstring (:mod:`markd.emulators.shtrih`);
each handler below names its source again, in our words.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from markd.codes import parse
from markd.errors import CodeError

STATE_FILE = "state.json"
DOCUMENTS_FILE = "documents.jsonl"
LOCK_FILE = ".lock"
DOCUMENTS_MODE = 0o640
FORMAT_VERSION = 1
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
#: Planned statuses (tag 2003) a code may carry in a receipt of each kind.
_PLANNED_FOR = {"sell": frozenset({1, 2}), "sellReturn": frozenset({3, 4})}

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

ISM_MODES = ("online", "offline", "timeout")
GONE_MODES = ("open", "after")
FAULT_KEYS = frozenset(
    {
        # shared with VirtualKkt, same meaning
        "paper_out",
        "gone",
        "gone_in_receipt",
        "begin_busy",
        "ism",
        "fn_error",
        "shift_expired",
        "taxation_types",
        "fn_days_left",
        "unsent_age_days",
        "shift_age_hours",
        "fn_warnings",
        "codes",
        # Shtrih's own
        "bad_lrc",
        "lost_answer",
        "receipt_left_open",
        "cancel_keeps_codes",
        "no_bind_check",
        "taxation_error",
    }
)

#: Test hook shared with the virtual ККТ and markd's kill points (docs/fiscal.md).
_KILL_ENV = "MARKD_FISCAL_KILL_AT"


class _Refused(Exception):
    """A command the device answers with a non-zero error byte."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error 0x{code:02X}")
        self.code = code


@dataclass
class Answer:
    """What the device gives back for one command: the answer's bytes (``CMD ERR DATA``),
    whether to send them (``lost``: executed, answer kept for a later ENQ; ``silent``: the
    device has gone and says nothing)."""

    body: bytes
    lost: bool = False
    silent: bool = False


class Faults(dict[str, Any]):
    """The faults set on the device: a dict, also callable (``kkt.faults()``) so the tests
    written for :class:`~markd.emulators.virtual_kkt.VirtualKkt` (a property) and those that
    call it both read it."""

    def __call__(self) -> dict[str, Any]:
        return dict(self)


# --------------------------------------------------------------------------------------------
# Bytes: the device's own readers and writers (no code shared with markd's Shtrih client)


class _Reader:
    """Reads a command's data field by field; running short is error 0x33."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise _Refused(Error.BAD_PARAMETERS)
        part = self.data[self.at : self.at + size]
        self.at += size
        return part

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def rest(self) -> bytes:
        part = self.data[self.at :]
        self.at = len(self.data)
        return part


def _u(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "little")


def _ymd(when: datetime) -> bytes:
    return bytes((when.year - 2000, when.month, when.day))


def _hm(when: datetime) -> bytes:
    return bytes((when.hour, when.minute))


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """TLV list: tag u16 LE, length u16 LE, value (FSWriteTLV.java / TLVTags.java)."""
    items = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise _Refused(Error.BAD_PARAMETERS)
        tag = int.from_bytes(data[at : at + 2], "little")
        size = int.from_bytes(data[at + 2 : at + 4], "little")
        value = data[at + 4 : at + 4 + size]
        if len(value) != size:
            raise _Refused(Error.BAD_PARAMETERS)
        items.append((tag, value))
        at += 4 + size
    return items


def _tlv(tag: int, value: bytes) -> bytes:
    return _u(tag, 2) + _u(len(value), 2) + value


def _text(value: bytes) -> str:
    """A TLV string: CP866 (TLVTags.java)."""
    return value.decode("cp866", errors="replace")


def _power_cut_at(step: str) -> None:
    if os.environ.get(_KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _default_state() -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "device": {
            "model_name": "ШТРИХ-М markd virtual",
            "serial": "0012345678",
            "fn_number": "9999078900054321",
            "inn": "7700000000",
            "password": DEFAULT_PASSWORD,
        },
        # Document 1 is the registration report every fiscalised ККТ starts with.
        "document_number": 1,
        "shift": {"state": "closed", "number": 0, "opened_at": None, "receipts": 0},
        "receipt": None,
        "check": None,
        "accepted": [],
        "rejected": [],
        "pending_tags": {},
        "unsent": 0,
        "first_unsent": None,
        "first_unsent_at": None,
        "next_id": 1,
        "faults": {"ism": "online"},
    }


class ShtrihKkt:
    """The virtual Shtrih-M ККТ in ``state_dir`` (created if missing). Thread-safe, and safe
    to share between processes (a file lock serialises every command). ``clock`` gives Unix
    seconds; ``password`` is the operator's and system administrator's password."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        password: int = DEFAULT_PASSWORD,
    ) -> None:
        self.path = Path(state_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        with self._locked() as state:
            device = state["device"]
            changed = False
            if not device.get("fn_valid_until"):
                device["fn_valid_until"] = self._clock() + FN_VALIDITY_DAYS * 86400
                changed = True
            if device.get("password") != password:
                device["password"] = password
                changed = True
            if changed:
                self._save(state)

    # -- the test-facing API -----------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        """Merge faults (see the package docstring); a value of None (or False) removes one."""
        unknown = set(faults) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        if faults.get("ism") not in (None, *ISM_MODES):
            raise ValueError(f"ism is one of {', '.join(ISM_MODES)}")
        if faults.get("gone_in_receipt") not in (None, False, *GONE_MODES):
            raise ValueError(f"gone_in_receipt is one of {', '.join(GONE_MODES)}")
        for key in ("fn_days_left", "unsent_age_days", "shift_age_hours"):
            value = faults.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{key} is a number of at least 0")
        for key in ("bad_lrc", "lost_answer"):
            value = faults.get(key)
            if value is True:
                faults[key] = 1
            elif (
                value is not None
                and value is not False
                and (not isinstance(value, int) or value < 0)
            ):
                raise ValueError(f"{key} is True or a count of answers")
        raised = faults.get("fn_warnings")
        if raised is not None:
            if not isinstance(raised, list | tuple) or any(
                name not in FN_WARNING_BITS for name in raised
            ):
                raise ValueError(f"fn_warnings is a list of {', '.join(FN_WARNING_BITS)}")
            faults["fn_warnings"] = list(raised) or None
        taxation = faults.get("taxation_types")
        if taxation is not None and (
            not isinstance(taxation, list | tuple)
            or not taxation
            or any(name not in TAXATION_BITS for name in taxation)
        ):
            raise ValueError(f"taxation_types is a list of {', '.join(TAXATION_BITS)}")
        left_open = faults.pop("receipt_left_open", None)
        if left_open not in (None, False, True, "sell", "sellReturn"):
            raise ValueError("receipt_left_open is True, 'sell' or 'sellReturn'")
        with self._locked() as state:
            current = state["faults"]
            for key, value in faults.items():
                if value is None or value is False:
                    current.pop(key, None)
                else:
                    current[key] = value
            current.setdefault("ism", "online")
            if left_open:
                # A receipt some earlier session opened and never closed or cancelled.
                if state["shift"]["state"] != "opened":
                    raise ValueError("receipt_left_open needs an open shift")
                if state["receipt"] is None:
                    kind = "sellReturn" if left_open == "sellReturn" else "sell"
                    state["receipt"] = self._new_receipt(kind)
            self._save(state)

    def set_code(self, ki: str, *, oism: str | None = None, fn: bool | None = None) -> None:
        """How the ФН and the ОИСМ judge one КИ: ``oism`` ``correct`` | ``incorrect`` |
        ``sale-stopped``; ``fn=False`` makes the ФН's crypto check fail."""
        if oism not in (None, "correct", "incorrect", "sale-stopped"):
            raise ValueError("oism is correct, incorrect or sale-stopped")
        with self._locked() as state:
            entry = state["faults"].setdefault("codes", {}).setdefault(ki, {})
            if oism is not None:
                entry["oism"] = oism
            if fn is not None:
                entry["fn"] = fn
            self._save(state)

    def clear_faults(self) -> None:
        with self._locked() as state:
            state["faults"] = {"ism": "online"}
            self._save(state)

    @property
    def faults(self) -> Faults:
        with self._locked() as state:
            return Faults(copy.deepcopy(state["faults"]))

    def state(self) -> dict[str, Any]:
        """A copy of the device state."""
        with self._locked() as state:
            return copy.deepcopy(state)

    def documents(self) -> list[dict[str, Any]]:
        """Every fiscal document, oldest first (a torn last line is skipped)."""
        with self._lock:
            documents = _read_documents(self.path / DOCUMENTS_FILE)
        for document in documents:
            document.pop("_accepted", None)
        return documents

    def receipts(self) -> list[dict[str, Any]]:
        return [d for d in self.documents() if d["type"] in ("sell", "sellReturn")]

    def gone(self) -> bool:
        """Whether the device has stopped answering (fault ``gone``)."""
        with self._locked() as state:
            return bool(state["faults"].get("gone"))

    def corrupt_next_frame(self) -> bool:
        """Whether the answer frame about to be sent gets a wrong LRC (fault ``bad_lrc``,
        counted down)."""
        with self._locked() as state:
            left = int(state["faults"].get("bad_lrc") or 0)
            if left <= 0:
                return False
            if left == 1:
                state["faults"].pop("bad_lrc")
            else:
                state["faults"]["bad_lrc"] = left - 1
            self._save(state)
            return True

    # -- commands --------------------------------------------------------------------------

    def execute(self, command: bytes) -> Answer:
        """Run one command (``CMD DATA``, CMD one byte or ``0xFF xx``) and answer it."""
        if not command:
            return Answer(b"", silent=True)
        if command[0] == 0xFF:
            if len(command) < 2:
                return Answer(bytes((0xFF, 0x00, Error.NOT_SUPPORTED)))
            code = 0xFF00 | command[1]
            head, data = command[:2], command[2:]
        else:
            code = command[0]
            head, data = command[:1], command[1:]
        with self._locked() as state:
            faults = state["faults"]
            if faults.get("gone"):
                return Answer(b"", silent=True)
            handler = _HANDLERS.get(code)
            before = json.dumps(state, sort_keys=True)
            lost = False
            silent = False
            try:
                if handler is None:
                    raise _Refused(Error.NOT_SUPPORTED)
                reader = _Reader(data)
                if code != 0xFC:  # the only command without a password
                    self._check_password(state, reader.uint(4))
                body = handler(self, state, reader)
                error = Error.OK
            except _Refused as exc:
                body, error = b"", exc.code
            except _GoneNow:
                body, error, silent = b"", Error.OK, True
            changed = json.dumps(state, sort_keys=True) != before
            if changed and not silent and faults.get("lost_answer"):
                left = int(faults.pop("lost_answer")) - 1
                if left > 0:
                    faults["lost_answer"] = left
                lost = True
            if changed or lost:
                self._save(state)
            return Answer(head + bytes((error,)) + body, lost=lost, silent=silent)

    def _check_password(self, state: dict[str, Any], password: int) -> None:
        if password != int(state["device"]["password"]):
            raise _Refused(Error.BAD_PASSWORD)

    # -- storage (VirtualKkt's rules) ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with self._lock, open(self.path / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._load()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        file = self.path / STATE_FILE
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = _default_state()
            self._save(state)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"virtual Shtrih ККТ state {file} is unreadable: {exc}") from exc
        self._roll_forward(state)
        return state

    def _roll_forward(self, state: dict[str, Any]) -> None:
        """A document written but not yet counted by the state (killed in between): count it,
        so the state agrees with the documents."""
        last = _last_document(self.path / DOCUMENTS_FILE)
        if last is None or last["number"] <= state["document_number"]:
            return
        self._count_document(state, last)
        self._save(state)

    def _count_document(self, state: dict[str, Any], document: dict[str, Any]) -> None:
        """What a new document changes in the state (after it is on disk)."""
        state["document_number"] = document["number"]
        shift = state["shift"]
        kind = document["type"]
        if kind == "openShift":
            shift.update(
                state="opened",
                number=document["shift"],
                opened_at=document.get("_opened_at", self._clock()),
                receipts=0,
            )
        elif kind == "closeShift":
            shift.update(state="closed", opened_at=None)
            state["faults"].pop("shift_expired", None)
        else:
            state["receipt"] = None
            used = set(document.get("_accepted", []))
            state["accepted"] = [a for a in state["accepted"] if a["id"] not in used]
            state["rejected"] = []
            shift["receipts"] = document.get("receipt_number", shift["receipts"])
        state["pending_tags"] = {}
        state["unsent"] += 1
        if not state.get("first_unsent"):
            state["first_unsent"] = document["number"]
            state["first_unsent_at"] = document.get("datetime")

    def _save(self, state: dict[str, Any]) -> None:
        file = self.path / STATE_FILE
        tmp = file.with_suffix(".tmp")
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, file)
        _fsync_dir(self.path)

    def _append_document(self, document: dict[str, Any]) -> None:
        file = self.path / DOCUMENTS_FILE
        new = not file.exists()
        line = json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"
        fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, DOCUMENTS_MODE)
        with os.fdopen(fd, "a+b") as out:
            if os.fstat(fd).st_mode & 0o777 & ~DOCUMENTS_MODE:
                os.fchmod(fd, DOCUMENTS_MODE)
            out.seek(0, os.SEEK_END)
            if out.tell() > 0:
                out.seek(out.tell() - 1)
                if out.read(1) != b"\n":
                    line = "\n" + line  # a line torn by a kill mid-write stays on its own
            out.write(line.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        if new:
            _fsync_dir(self.path)

    def _register(self, state: dict[str, Any], document: dict[str, Any]) -> None:
        """Write a fiscal document: appended and fsync'd first, then the state counting it
        (a kill in between is rolled forward on the next load)."""
        self._append_document(document)
        self._count_document(state, document)
        self._save(state)

    # -- the device's view of time and mode ---------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), MSK)

    def _opened_at(self, state: dict[str, Any]) -> float:
        age = state["faults"].get("shift_age_hours")
        if age is not None:
            return self._clock() - float(age) * 3600
        return float(state["shift"]["opened_at"] or 0)

    def _shift_state(self, state: dict[str, Any]) -> str:
        if state["shift"]["state"] != "opened":
            return "closed"
        if state["faults"].get("shift_expired"):
            return "expired"
        if self._clock() - self._opened_at(state) > SHIFT_HOURS * 3600:
            return "expired"
        return "opened"

    def _mode(self, state: dict[str, Any]) -> int:
        """The ККТ mode byte (protocol_kkt_2.0.txt, appendix 1): low nibble 2 shift open, 3
        shift over 24 h, 4 shift closed, 8 document open with the document kind in the high
        nibble (0 sale, 2 sale return)."""
        receipt = state["receipt"]
        if receipt is not None:
            return 0x08 | (0x20 if receipt["type"] == "sellReturn" else 0x00)
        return {"opened": 2, "expired": 3, "closed": 4}[self._shift_state(state)]

    def _flags(self, state: dict[str, Any]) -> int:
        """The ККТ flags (two bytes): bit 1 receipt roll present, bit 4 two decimals, bit 7
        receipt paper seen by the optical sensor, bit 9 receipt head lever down. Paper out
        clears bits 1 and 7."""
        flags = 0x0010 | 0x0200
        if not state["faults"].get("paper_out"):
            flags |= 0x0002 | 0x0080
        return flags

    def _printing(self, state: dict[str, Any]) -> None:
        """A command that prints: no paper is 0x6B, a broken ФН 0x03."""
        if state["faults"].get("paper_out"):
            raise _Refused(Error.NO_PAPER)
        self._fn_ready(state)

    def _fn_ready(self, state: dict[str, Any]) -> None:
        if state["faults"].get("fn_error"):
            raise _Refused(Error.FN_FAILURE)

    def _fiscal_sign(self, state: dict[str, Any], number: int, when: datetime) -> int:
        seed = f"{state['device']['fn_number']}/{number}/{when.isoformat()}".encode()
        return int.from_bytes(hashlib.sha256(seed).digest()[:4], "big")

    def _new_receipt(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "opened_at": self._clock(),
            "positions": [],
            "cashier": {},
            "used": [],
        }

    # -- status commands ---------------------------------------------------------------------

    def _device_type(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0xFC`` (commands.xml "Get device type", ReadDeviceMetrics.java): type, subtype,
        protocol version and subversion, model, language (one byte each), then the model name
        (CP1251, to the end)."""
        name = str(state["device"]["model_name"]).encode("cp1251", errors="replace")
        return bytes((0, 0, 1, 0, 0, 0)) + name

    def _short_status(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0x10`` (commands.xml, ReadShortStatus.java, protocol_kkt_2.0.txt): operator,
        flags (2), mode, submode, receipt operations (low byte), battery and power voltage,
        FM and EJ error codes, receipt operations (high byte), three reserved bytes."""
        receipt = state["receipt"]
        operations = len(receipt["positions"]) if receipt else 0
        submode = 1 if state["faults"].get("paper_out") else 0  # passive paper absence
        return (
            bytes((OPERATOR_NUMBER,))
            + _u(self._flags(state), 2)
            + bytes((self._mode(state), submode, operations & 0xFF, 0x9B, 0xB4, 0, 0))
            + bytes((operations >> 8 & 0xFF, 0, 0, 0))
        )

    def _long_status(self, state: dict[str, Any], data: _Reader) -> bytes:
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
            + _u(1, 2)
            + bytes((1, 1, 24))
            + bytes((1,))
            + _u(state["document_number"] & 0xFFFF, 2)
            + _u(self._flags(state), 2)
            + bytes((self._mode(state), submode, 0))
            + b"C2"
            + _u(1, 2)
            + bytes((1, 1, 24))
            + bytes((now.day, now.month, now.year - 2000))
            + bytes((now.hour, now.minute, now.second))
            + bytes((fm_flags,))
            + _u(int(state["device"]["serial"]) & 0xFFFFFFFF, 4)
            + _u(max(last_closed, 0), 2)
            + _u(2000, 2)
            + bytes((1, 11))
            + _u(int(state["device"]["inn"]), 6)
        )

    def _fn_status(self, state: dict[str, Any], data: _Reader) -> bytes:
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
            + _ymd(now)
            + _hm(now)
            + state["device"]["fn_number"].encode("ascii").ljust(16, b" ")[:16]
            + _u(state["document_number"], 4)
        )

    def _fn_expiry(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF03`` (commands.xml: the date, YMD; FSReadExpDate.java reads two more bytes,
        registrations left and made, which are sent too)."""
        days = state["faults"].get("fn_days_left")
        if days is not None:
            end = self._clock() + float(days) * 86400
        else:
            end = float(state["device"]["fn_valid_until"])
        return _ymd(datetime.fromtimestamp(end, MSK)) + bytes((29, 1))

    def _ofd_status(self, state: dict[str, Any], data: _Reader) -> bytes:
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
            return bytes((0, 0)) + _u(0, 2) + _u(0, 4) + bytes(5)
        return bytes((status, 0)) + _u(unsent, 2) + _u(first, 4) + _ymd(stamp) + _hm(stamp)

    def _shift_parameters(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF40``: shift state, shift number (2), receipt number (2). The state byte is in
        commands.xml's comment and FSReadDayParameters.java, not in its parameter list; the
        receipt number is the count of receipts in the shift (unconfirmed)."""
        shift = state["shift"]
        opened = 1 if shift["state"] == "opened" else 0
        return bytes((opened,)) + _u(shift["number"], 2) + _u(shift["receipts"], 2)

    def _marking_status(self, state: dict[str, Any], data: _Reader) -> bytes:
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
        return bytes((status, 0, flags, accepted, 0, 0)) + _u(0, 2)

    def _find_document(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF0A`` (commands.xml, FSFindDocument.java and the FSDocument classes): type,
        ticket received, date and time (Y M D H M), number (4), fiscal sign (4); then the shift
        number (2) for shift reports, or the receipt's operation type (1: sale, 2: sale
        return) and total (5) for receipts. An unknown number is the ФН's 0x08 (no data)."""
        number = data.uint(4)
        document = next(
            (d for d in _read_documents(self.path / DOCUMENTS_FILE) if d["number"] == number),
            None,
        )
        if document is None:
            if number == 1:  # the registration report, made before this emulator's life
                now = datetime.fromtimestamp(float(state["device"]["fn_valid_until"]), MSK)
                start = now - timedelta(days=FN_VALIDITY_DAYS)
                return bytes((1, 0)) + _ymd(start) + _hm(start) + _u(1, 4) + _u(1, 4)
            raise _Refused(Error.FN_NO_DATA)
        when = datetime.fromisoformat(document["datetime"])
        head = (
            bytes((DOCUMENT_TYPES[document["type"]], 0))
            + _ymd(when)
            + _hm(when)
            + _u(number, 4)
            + _u(int(document["fiscal_sign"]), 4)
        )
        if document["type"] in ("openShift", "closeShift"):
            return head + _u(document["shift"], 2)
        operation = 1 if document["type"] == "sell" else 2
        return head + bytes((operation,)) + _u(document["total"], 5)

    # -- shifts ------------------------------------------------------------------------------

    def _start_open_shift(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF41`` (commands.xml's comment): begin opening a shift; the tags sent next
        (``FF0C``: 1021, 1203) go to the shift report ``0xE0`` makes."""
        if state["receipt"] is not None:
            raise _Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] == "opened":
            raise _Refused(Error.NOT_IN_THIS_MODE)
        self._fn_ready(state)
        state["pending_tags"] = {}
        return b""

    def _start_close_shift(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF42`` (commands.xml's comment): begin closing the shift (tags may follow)."""
        if state["receipt"] is not None:
            raise _Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] != "opened":
            raise _Refused(Error.ZERO_TOTAL_SHIFT_CLOSED)
        self._fn_ready(state)
        state["pending_tags"] = {}
        return b""

    def _open_shift(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0xE0`` open the shift (commands.xml "Open day"): answers the operator number. A
        shift already open is refused with 0x73 (not in this mode: unconfirmed)."""
        if state["receipt"] is not None:
            raise _Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] == "opened":
            raise _Refused(Error.NOT_IN_THIS_MODE)
        self._printing(state)
        self._register(
            state, self._shift_document(state, "openShift", state["shift"]["number"] + 1)
        )
        return bytes((OPERATOR_NUMBER,))

    def _close_shift(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0x41`` Z-report (commands.xml "Print Z report"): closes the shift. With no shift
        open the answer is 0x2C (the cash register is already zeroed)."""
        if state["receipt"] is not None:
            raise _Refused(Error.RECEIPT_OPEN)
        if state["shift"]["state"] != "opened":
            raise _Refused(Error.ZERO_TOTAL_SHIFT_CLOSED)
        self._printing(state)
        self._register(state, self._shift_document(state, "closeShift", state["shift"]["number"]))
        return bytes((OPERATOR_NUMBER,))

    def _shift_document(self, state: dict[str, Any], kind: str, shift: int) -> dict[str, Any]:
        number = int(state["document_number"]) + 1
        now = self._now()
        document: dict[str, Any] = {
            "number": number,
            "type": kind,
            "datetime": now.isoformat(timespec="seconds"),
            "shift": shift,
            "fiscal_sign": self._fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
        }
        if kind == "openShift":
            document["_opened_at"] = self._clock()
        cashier = dict(state.get("pending_tags") or {})
        if cashier:
            document["cashier"] = cashier
        return document

    # -- receipt-level and operation tags ----------------------------------------------------

    def _write_tags(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF0C`` (commands.xml "FS write TLV data"): document-level tags. 1021 (cashier)
        and 1203 (cashier ИНН) are kept — on the open receipt, or else for the next document
        (a shift report after ``FF41``/``FF42``, as the vendor's flow sends them); other tags
        are taken and not recorded."""
        tags = _tlvs(data.rest())
        target = state["receipt"]["cashier"] if state["receipt"] is not None else None
        if target is None:
            target = state.setdefault("pending_tags", {})
        for tag, value in tags:
            if tag in (1021, 1203):
                target[str(tag)] = _text(value).rstrip("\x00").strip()
        return b""

    def _write_operation_tags(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF4D`` (commands.xml "FS write operation TLV data", FSWriteOperationTLV.java):
        tags of the last registered position; 1260 is an STLV of 1262, 1263, 1264, 1265
        (CP866 strings). 2108 (measure) is kept as a number; other tags are taken. No
        position, or one whose code is already bound (``FF67`` comes after the tags), is
        0x5E."""
        receipt = self._open_receipt(state)
        if not receipt["positions"]:
            raise _Refused(Error.BAD_OPERATION)
        position = receipt["positions"][-1]
        if position.get("ki"):
            # The vendor binds a code after its position's tags; tags for a position whose
            # code is already bound are refused (which error a device gives is unconfirmed).
            raise _Refused(Error.BAD_OPERATION)
        for tag, value in _tlvs(data.rest()):
            if tag == 1260:
                block = {str(t): _text(v) for t, v in _tlvs(value) if t in (1262, 1263, 1264, 1265)}
                position["tags"]["1260"] = block
            elif tag == 2108 and len(value) <= 4:
                position["tags"]["2108"] = int.from_bytes(value, "little")
        return b""

    # -- receipts ----------------------------------------------------------------------------

    def _open_receipt(self, state: dict[str, Any]) -> dict[str, Any]:
        receipt = state["receipt"]
        if receipt is None:
            raise _Refused(Error.RECEIPT_CLOSED)
        return receipt

    def _shift_usable(self, state: dict[str, Any]) -> None:
        shift = self._shift_state(state)
        if shift == "closed":
            raise _Refused(Error.SHIFT_CLOSED)
        if shift == "expired":
            raise _Refused(Error.SHIFT_OVER_24H)

    def _begin_receipt(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0x8D`` open a receipt (commands.xml "Open receipt"): document type 0 sale, 2 sale
        return (1 and 3, purchases, are not modelled: 0x33)."""
        kind_code = data.uint(1)
        if kind_code not in RECEIPT_KINDS:
            raise _Refused(Error.BAD_PARAMETERS)
        if state["receipt"] is not None:
            raise _Refused(Error.RECEIPT_OPEN)
        self._shift_usable(state)
        self._printing(state)
        state["receipt"] = self._new_receipt(RECEIPT_KINDS[kind_code][0])
        state["receipt"]["cashier"] = dict(state.get("pending_tags") or {})
        state["pending_tags"] = {}
        faults = state["faults"]
        if faults.get("gone_in_receipt") == "open":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            self._save(state)
            raise _GoneNow
        self._save(state)
        _power_cut_at("kkt-receipt-open")
        return bytes((OPERATOR_NUMBER,))

    def _cancel_receipt(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``0x88`` cancel the receipt (commands.xml "Cancel receipt"). The sources do not say
        whether the ФН forgets the codes accepted for it: here it does (the conservative
        reading: the client checks them again); fault ``cancel_keeps_codes`` keeps them."""
        self._open_receipt(state)
        state["receipt"] = None
        state["check"] = None
        state["rejected"] = []
        if not state["faults"].get("cancel_keeps_codes"):
            state["accepted"] = []
        return bytes((OPERATOR_NUMBER,))

    def _operation(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF46`` operation V2 (commands.xml "FS operation V2", FSPrintRecItem.java):
        operation type (1 sale, 2 sale return), quantity (6 bytes, ×10⁶), price (5), sum (5;
        all 0xFF: the device computes it), tax sum (5), tax rate, department, payment method
        (1214), payment object (1212), name (CP1251, up to 128 bytes)."""
        operation = data.uint(1)
        quantity = data.uint(6)
        price = data.uint(5)
        amount = data.uint(5)
        data.uint(5)  # the tax sum: the device's own to compute
        tax, _department, method, subject = data.take(4)
        name = data.rest()[:128].rstrip(b"\x00").decode("cp1251", errors="replace")
        receipt = self._open_receipt(state)
        if operation != RECEIPT_KINDS[0 if receipt["type"] == "sell" else 2][1]:
            raise _Refused(Error.WRONG_RECEIPT_TYPE)
        if quantity == 0:
            raise _Refused(Error.BAD_PARAMETERS)
        self._shift_usable(state)
        self._printing(state)
        if state["check"] is not None:
            raise _Refused(Error.FN_MARKING_SEQUENCE)
        if amount == 0xFFFFFFFFFF:
            amount = (price * quantity + 500_000) // 1_000_000
        whole = quantity % 1_000_000 == 0
        receipt["positions"].append(
            {
                "name": name,
                "price": price,
                "quantity": quantity // 1_000_000 if whole else quantity / 1_000_000,
                "amount": amount,
                "tax": tax,
                "payment_method": method,
                "payment_object": subject,
                "tags": {},
            }
        )
        return b""

    def _close_receipt(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF45`` close receipt V2 (commands.xml "Close receipt 2", FSCloseReceipt.java):
        sixteen payment sums (5 bytes each), rounding (1, kopecks off the total), six tax sums
        (5), the taxation system (one bit of tag 1055), text. Answer: change (5), document
        number (4), fiscal sign (4), date (YMD), time (HM).

        A taxation system the device is not registered with — or none given to a device
        registered with several — is refused; the sources do not say with which error, so it
        is 0x33 (wrong parameters) unless fault ``taxation_error`` names another code
        (unconfirmed). A refused close leaves the receipt open (the client cancels it)."""
        payments_raw = [data.uint(5) for _ in range(16)]
        rounding = data.uint(1)
        for _ in range(6):
            data.uint(5)
        taxation_bits = data.uint(1)
        data.rest()  # text to print
        receipt = self._open_receipt(state)
        faults = state["faults"]
        if state["check"] is not None:
            raise _Refused(Error.FN_MARKING_SEQUENCE)
        self._shift_usable(state)
        self._printing(state)
        taxation = self._taxation(state, taxation_bits)
        positions = receipt["positions"]
        total = sum(p["amount"] for p in positions) - rounding
        if not positions or total <= 0:
            raise _Refused(Error.ZERO_TOTAL)
        paid = sum(payments_raw)
        non_cash = paid - payments_raw[0]
        if paid < total:
            raise _Refused(Error.PAYMENT_SHORT)
        if non_cash > total:
            raise _Refused(Error.CASHLESS_TOO_MUCH)
        payments = [
            {"type": PAYMENT_NAMES.get(i + 1, f"type{i + 1}"), "amount": amount}
            for i, amount in enumerate(payments_raw)
            if amount
        ]
        number = int(state["document_number"]) + 1
        now = self._now()
        document: dict[str, Any] = {
            "number": number,
            "type": receipt["type"],
            "datetime": now.isoformat(timespec="seconds"),
            "shift": state["shift"]["number"],
            "receipt_number": state["shift"]["receipts"] + 1,
            "fiscal_sign": self._fiscal_sign(state, number, now),
            "fn_number": state["device"]["fn_number"],
            "total": total,
            "change": paid - total,
            "rounding": rounding,
            "payments": payments,
            "positions": positions,
            "taxation_type": taxation,
            "tags": {"1055": TAXATION_BITS[taxation]},
            "_accepted": list(receipt["used"]),
        }
        if receipt.get("cashier"):
            document["cashier"] = dict(receipt["cashier"])
        self._register(state, document)
        if faults.get("gone_in_receipt") == "after":
            faults.pop("gone_in_receipt")
            faults["gone"] = True
            self._save(state)
            raise _GoneNow
        return (
            _u(paid - total, 5)
            + _u(number, 4)
            + _u(document["fiscal_sign"], 4)
            + _ymd(now)
            + _hm(now)
        )

    def _taxation(self, state: dict[str, Any], bits: int) -> str:
        registered = list(state["faults"].get("taxation_types") or DEFAULT_TAXATION)
        refusal = int(state["faults"].get("taxation_error") or Error.BAD_PARAMETERS)
        if bits == 0:
            if len(registered) == 1:
                return str(registered[0])
            raise _Refused(refusal)
        names = [name for name, bit in TAXATION_BITS.items() if bit == bits]
        if not names or names[0] not in registered:
            raise _Refused(refusal)
        return names[0]

    # -- marking codes -----------------------------------------------------------------------

    def _judge(self, state: dict[str, Any], km: str, planned: int, mode: int) -> dict[str, Any]:
        """What the ФН and the ОИСМ say about one code (the same rules as the virtual ККТ:
        the ФН checks the crypto tail of codes with AI 91 + 92; the ОИСМ answers per the
        ``ism`` and ``codes`` faults)."""
        try:
            code = parse(km)
        except CodeError:
            raise _Refused(Error.BAD_PARAMETERS) from None
        crypto = code.crypto
        if "92" in crypto:
            kind = 2 if len(crypto["92"]) == 88 else 4
        elif "93" in crypto:
            kind = 5
        else:
            kind = 1
        faults = state["faults"]
        rule = faults.get("codes", {}).get(code.ki, {})
        checkable = "92" in crypto
        fn_bits = (1 if checkable else 0) | (2 if checkable and rule.get("fn", True) else 0)
        mode_ism = faults.get("ism", "online")
        verdict = rule.get("oism", "correct")
        local = fn_bits | (0x10 if mode_ism == "offline" else 0)
        result = {
            "ki": code.ki,
            "status": planned,
            "mode": mode,
            "type": kind,
            "local": local,
            "reason": 0 if checkable else 1,
            "ism": mode_ism,
            "online": mode_ism == "online",
        }
        if mode_ism == "online":
            correct = verdict == "correct"
            result["tag2106"] = fn_bits | 0x04 | (0x08 if correct else 0)
            result["tag2109"] = {"correct": 1, "incorrect": 2, "sale-stopped": 3}[verdict]
        elif mode_ism == "offline":
            result["tag2106"] = fn_bits | 0x10
        else:
            result["tag2106"] = fn_bits
        return result

    @staticmethod
    def _check_answer(judged: dict[str, Any], *, always: bool = False) -> bytes:
        """The ``FF61`` answer after its error byte (the vendor's ФФД 1.2 note and
        commands.xml): 2004, the reason the ФН did not check (0–4), 2100, the length of what
        follows, then — only when an ОИСМ request was made — the ФН's code for it (0; 0xFF:
        no answer in time), 2106 and the server's TLVs (2105, 2109) when it answered.
        ``always`` (the ``FF67`` form): the code and 2106 are always there.

        FSCheckMC.java reads 2106 before the code; the note and commands.xml put the code
        first, which FSBindMC.java follows: the device does as the note says."""
        head = bytes((judged["local"], judged["reason"], judged["type"]))
        mode = judged["ism"]
        if mode == "online":
            tail = bytes((0x00, judged["tag2106"]))
            tail += _tlv(2105, b"\x00") + _tlv(2109, bytes((judged["tag2109"],)))
        elif mode == "timeout":
            tail = bytes((0xFF,)) + (bytes((judged["tag2106"],)) if always else b"")
        else:  # offline: no request made, nothing follows
            tail = bytes((0x00, judged["tag2106"])) if always else b""
        return head + bytes((len(tail),)) + tail

    def _check_code(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF61`` check a code in the ФН (commands.xml, FSCheckMC.java, the ФФД 1.2 note):
        planned status (2003), mode (2102), code length, TLV length, the code, the TLVs (2108,
        1023 for partial disposal: taken, not used). A check still waiting for ``FF69`` is
        0xA1 (the ФН's command sequence error); a full table is 0xA3."""
        planned = data.uint(1)
        mode = data.uint(1)
        code_size = data.uint(1)
        tlv_size = data.uint(1)
        km = data.take(code_size).decode("latin-1")
        data.take(tlv_size)
        self._fn_ready(state)
        faults = state["faults"]
        if faults.pop("begin_busy", None):
            # A result another client left waiting for FF69.
            state["check"] = {"ki": None, "status": 1, "mode": 0, "tag2106": 0, "online": False}
        if state["check"] is not None:
            raise _Refused(Error.FN_MARKING_SEQUENCE)
        if len(state["accepted"]) >= MAX_ACCEPTED:
            raise _Refused(Error.FN_MARKING_TABLE_FULL)
        judged = self._judge(state, km, planned, mode)
        state["check"] = judged
        return self._check_answer(judged)

    def _accept_code(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF69`` (commands.xml's comment, FSAcceptMC.java, the note): 1 accepts the checked
        code, 0 rejects it; answers the kept 2106. FSAcceptMC.java also names 2, "clear the
        buffer": here it drops the waiting check and every accepted code, answering 0
        (unconfirmed). No check waiting is 0xA1."""
        action = data.uint(1)
        if action == 2:
            state["check"] = None
            state["accepted"] = []
            return b"\x00"
        if action not in (0, 1):
            raise _Refused(Error.BAD_PARAMETERS)
        check = state["check"]
        if check is None:
            raise _Refused(Error.FN_MARKING_SEQUENCE)
        state["check"] = None
        if check.get("ki") is None:  # the begin_busy placeholder
            return b"\x00"
        if action == 1:
            state["accepted"].append(self._accepted_entry(state, check))
            state["rejected"] = [k for k in state["rejected"] if k != check["ki"]]
        elif check["ki"] not in state["rejected"]:
            state["rejected"].append(check["ki"])
        return bytes((check["tag2106"],))

    def _accepted_entry(self, state: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
        identifier = f"c{state['next_id']}"
        state["next_id"] = int(state["next_id"]) + 1
        return {
            "id": identifier,
            "ki": check["ki"],
            "status": check["status"],
            "mode": check["mode"],
            "type": check["type"],
            "tag2004": check["local"],
            "tag2106": check["tag2106"],
        }

    def _bind_code(self, state: dict[str, Any], data: _Reader) -> bytes:
        """``FF67`` bind a code to the last position, sent after that position's tags
        (commands.xml, FSBindMC.java, the note): code length, the code (an optional 0xFF after
        it asks for volume accounting). Answer: an item code (2: here the position's number),
        the code type (2100); for a code the ФН had not checked, the device checks and accepts
        it itself and appends the ``FF61`` answer with the ФН code and 2106 always present.

        A code rejected with ``FF69`` 0 stays unusable in this receipt: 0xAC (the ФН's "a code
        not checked" error; unconfirmed). Fault ``no_bind_check`` makes the device refuse
        unchecked codes the same way (firmware without the self-check)."""
        size = data.uint(1)
        km = data.take(size).decode("latin-1")
        receipt = self._open_receipt(state)
        if not receipt["positions"]:
            raise _Refused(Error.BAD_OPERATION)
        if state["check"] is not None:
            raise _Refused(Error.FN_MARKING_SEQUENCE)
        position = receipt["positions"][-1]
        if position.get("ki"):
            raise _Refused(Error.BAD_OPERATION)
        try:
            ki = parse(km).ki
        except CodeError:
            raise _Refused(Error.BAD_PARAMETERS) from None
        if ki in state["rejected"]:
            raise _Refused(Error.FN_CODE_NOT_CHECKED)
        used = set(receipt["used"])
        entry = next((a for a in state["accepted"] if a["ki"] == ki and a["id"] not in used), None)
        extra = b""
        if entry is None:
            if state["faults"].get("no_bind_check"):
                raise _Refused(Error.FN_CODE_NOT_CHECKED)
            self._fn_ready(state)
            planned = 1 if receipt["type"] == "sell" else 3
            judged = self._judge(state, km, planned, 0)
            entry = self._accepted_entry(state, judged)
            state["accepted"].append(entry)
            extra = self._check_answer(judged, always=True)
        receipt["used"].append(entry["id"])
        position["ki"] = entry["ki"]
        position["tags"].update(
            {
                "2003": entry["status"],
                "2102": entry["mode"],
                "2106": entry["tag2106"],
                "2004": entry["tag2004"] & 0x03,
                "2100": entry["type"],
            }
        )
        number = len(receipt["positions"])
        return _u(number, 2) + bytes((entry["type"],)) + extra


class _GoneNow(Exception):
    """The device stops answering in the middle of this command (fault ``gone_in_receipt``)."""


_HANDLERS: dict[int, Callable[[ShtrihKkt, dict[str, Any], _Reader], bytes]] = {
    0xFC: ShtrihKkt._device_type,
    0x10: ShtrihKkt._short_status,
    0x11: ShtrihKkt._long_status,
    0xE0: ShtrihKkt._open_shift,
    0x41: ShtrihKkt._close_shift,
    0x8D: ShtrihKkt._begin_receipt,
    0x88: ShtrihKkt._cancel_receipt,
    0xFF01: ShtrihKkt._fn_status,
    0xFF03: ShtrihKkt._fn_expiry,
    0xFF0A: ShtrihKkt._find_document,
    0xFF0C: ShtrihKkt._write_tags,
    0xFF39: ShtrihKkt._ofd_status,
    0xFF40: ShtrihKkt._shift_parameters,
    0xFF41: ShtrihKkt._start_open_shift,
    0xFF42: ShtrihKkt._start_close_shift,
    0xFF45: ShtrihKkt._close_receipt,
    0xFF46: ShtrihKkt._operation,
    0xFF4D: ShtrihKkt._write_operation_tags,
    0xFF61: ShtrihKkt._check_code,
    0xFF67: ShtrihKkt._bind_code,
    0xFF69: ShtrihKkt._accept_code,
    0xFF70: ShtrihKkt._marking_status,
}


# --------------------------------------------------------------------------------------------
# Files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_documents(file: Path) -> list[dict[str, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    documents = []
    for line in text.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill mid-write
        if isinstance(document, dict):
            document.pop("_opened_at", None)
            documents.append(document)
    return documents


def _last_document(file: Path) -> dict[str, Any] | None:
    """The last complete document line, read from the end of the file."""
    try:
        with open(file, "rb") as source:
            source.seek(0, os.SEEK_END)
            size = source.tell()
            source.seek(max(size - 65536, 0))
            tail = source.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and isinstance(document.get("number"), int):
            return document
    return None
