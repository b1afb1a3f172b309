"""The ФФД 1.2 marking commands of the virtual Shtrih-M ККТ (the vendor's ФФД 1.2 note,
commands.xml and the JavaPOS classes FSCheckMC, FSAcceptMC, FSBindMC): checking a code in the
ФН (``FF61``), accepting or rejecting it (``FF69``) and binding it to a position (``FF67``).

The ФН's table holds each accepted code's КИ and its check result, nothing else of the code.
The ФН and the ОИСМ judge a code as the virtual ККТ's do: the ФН checks the crypto tail of
codes with AI 91 + 92 (a ``codes`` fault with ``"fn": False`` makes that check fail); the ОИСМ
answers per the ``ism`` fault and the ``codes`` fault's ``oism`` (correct unless set).
"""

from __future__ import annotations

from typing import Any

from markd.codes import parse
from markd.emulators.shtrih.protocol import (
    MAX_ACCEPTED,
    Error,
    Reader,
    Refused,
    tlv,
    u,
)
from markd.errors import CodeError


class MarkingCommands:
    """The marking commands, mixed into :class:`~markd.emulators.shtrih.device.ShtrihKkt`
    (which gives ``_fn_ready`` and ``_open_receipt``)."""

    def _judge(self, state: dict[str, Any], km: str, planned: int, mode: int) -> dict[str, Any]:
        """What the ФН and the ОИСМ say about one code (the same rules as the virtual ККТ:
        the ФН checks the crypto tail of codes with AI 91 + 92; the ОИСМ answers per the
        ``ism`` and ``codes`` faults)."""
        try:
            code = parse(km)
        except CodeError:
            raise Refused(Error.BAD_PARAMETERS) from None
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
            tail += tlv(2105, b"\x00") + tlv(2109, bytes((judged["tag2109"],)))
        elif mode == "timeout":
            tail = bytes((0xFF,)) + (bytes((judged["tag2106"],)) if always else b"")
        else:  # offline: no request made, nothing follows
            tail = bytes((0x00, judged["tag2106"])) if always else b""
        return head + bytes((len(tail),)) + tail

    def _check_code(self, state: dict[str, Any], data: Reader) -> bytes:
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
            raise Refused(Error.FN_MARKING_SEQUENCE)
        if len(state["accepted"]) >= MAX_ACCEPTED:
            raise Refused(Error.FN_MARKING_TABLE_FULL)
        judged = self._judge(state, km, planned, mode)
        state["check"] = judged
        return self._check_answer(judged)

    def _accept_code(self, state: dict[str, Any], data: Reader) -> bytes:
        """``FF69`` (commands.xml's comment, FSAcceptMC.java, the note): 1 accepts the checked
        code, 0 rejects it; answers the kept 2106. FSAcceptMC.java also names 2, "clear the
        buffer": here it drops the waiting check and every accepted (and rejected) code,
        answering 0 (unconfirmed). No check waiting is 0xA1."""
        action = data.uint(1)
        if action == 2:
            state["check"] = None
            state["accepted"] = []
            state["rejected"] = []
            return b"\x00"
        if action not in (0, 1):
            raise Refused(Error.BAD_PARAMETERS)
        check = state["check"]
        if check is None:
            raise Refused(Error.FN_MARKING_SEQUENCE)
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

    def _bind_code(self, state: dict[str, Any], data: Reader) -> bytes:
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
            raise Refused(Error.BAD_OPERATION)
        if state["check"] is not None:
            raise Refused(Error.FN_MARKING_SEQUENCE)
        position = receipt["positions"][-1]
        if position.get("ki"):
            raise Refused(Error.BAD_OPERATION)
        try:
            ki = parse(km).ki
        except CodeError:
            raise Refused(Error.BAD_PARAMETERS) from None
        if ki in state["rejected"]:
            raise Refused(Error.FN_CODE_NOT_CHECKED)
        used = set(receipt["used"])
        entry = next((a for a in state["accepted"] if a["ki"] == ki and a["id"] not in used), None)
        extra = b""
        if entry is None:
            if state["faults"].get("no_bind_check"):
                raise Refused(Error.FN_CODE_NOT_CHECKED)
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
        return u(number, 2) + bytes((entry["type"],)) + extra
