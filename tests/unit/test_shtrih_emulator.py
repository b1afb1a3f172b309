"""The virtual Shtrih-M ККТ (markd.emulators.shtrih), driven with raw protocol 1 bytes.

Every command frame here is written out from the layouts in the vendor's commands.xml (and
the Java command classes), byte by byte; the tiny ``xor`` / ``frame`` / ``body_of`` below are
this file's own, so a misreading in the emulator's encoder cannot agree with itself. Short
frames are spelled out whole, LRC included (worked out in the comment beside them).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

from conftest import GS, SHOES, SHOES_KI, WATER, WATER_KI
from markd.emulators.shtrih import Link, ShtrihKkt, ShtrihServer

STX, ENQ, ACK, NAK = b"\x02", b"\x05", b"\x06", b"\x15"
PASSWORD = b"\x1e\x00\x00\x00"  # 30, little-endian
#: 2026-12-01 12:00 MSK: a fixed clock for the device.
T0 = 1_796_115_600.0

# Short status (0x10) with password 30: LEN 05; LRC = 05^10^1E^00^00^00 = 0B.
SHORT_STATUS = b"\x02\x05\x10\x1e\x00\x00\x00\x0b"
# Open shift (0xE0): LRC = 05^E0^1E = FB.
OPEN_SHIFT = b"\x02\x05\xe0\x1e\x00\x00\x00\xfb"
# Z-report (0x41): LRC = 05^41^1E = 5A.
Z_REPORT = b"\x02\x05\x41\x1e\x00\x00\x00\x5a"
# Open receipt (0x8D), type 0 (sale): LEN 06; LRC = 06^8D^1E^00 = 95.
OPEN_SALE = b"\x02\x06\x8d\x1e\x00\x00\x00\x00\x95"
# Cancel receipt (0x88): LRC = 05^88^1E = 93.
CANCEL = b"\x02\x05\x88\x1e\x00\x00\x00\x93"
# FF70 marking status: LEN 06; LRC = 06^FF^70^1E = 97.
MARKING_STATUS = b"\x02\x06\xff\x70\x1e\x00\x00\x00\x97"

SHOES_TAG1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"


def xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def frame(body: bytes) -> bytes:
    """STX LEN body LRC, for the long frames (LRC: XOR of LEN and the body)."""
    return STX + bytes((len(body),)) + body + bytes((xor(bytes((len(body),)) + body),))


def body_of(raw: bytes) -> bytes:
    """The body (CMD ERR DATA) of one answer frame, its LEN and LRC checked."""
    assert raw[:1] == STX, raw.hex(" ")
    size = raw[1]
    assert len(raw) == size + 3, raw.hex(" ")
    assert xor(raw[1:-1]) == raw[-1], "bad LRC"
    return raw[2:-1]


def tlv(tag: int, value: bytes) -> bytes:
    return tag.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


@pytest.fixture
def kkt(tmp_path: Path) -> ShtrihKkt:
    return ShtrihKkt(tmp_path / "kkt", clock=lambda: T0)


@pytest.fixture
def link(kkt: ShtrihKkt) -> Link:
    return Link(kkt, byte_timeout=0.05, ack_timeout=0.5)


def command(link: Link, raw: bytes, now: float = 0.0) -> bytes:
    """Send one frame the way the vendor's host does (ENQ → NAK, frame → ACK, answer → ACK);
    returns the answer's body."""
    assert link.receive(ENQ, now) == NAK
    reply = link.receive(raw, now)
    assert reply[:1] == ACK, reply.hex(" ")
    body = body_of(reply[1:])
    assert link.receive(ACK, now) == b""
    return body


# -- the link layer ---------------------------------------------------------------------------


def test_idle_device_answers_enq_with_nak(link: Link) -> None:
    assert link.receive(ENQ, 0.0) == NAK
    assert link.receive(ENQ + ENQ, 0.0) == NAK + NAK


def test_short_status_frame_is_acknowledged_and_answered(link: Link) -> None:
    assert link.receive(ENQ, 0.0) == NAK
    reply = link.receive(SHORT_STATUS, 0.0)
    assert reply[:1] == ACK
    body = body_of(reply[1:])
    # 10 (command), 00 (no error), operator 30, flags 0x0292 (paper), mode 4 (shift closed),
    # submode 0; 14 data bytes in all (protocol_kkt_2.0.txt: message length 16).
    assert body[:7] == b"\x10\x00\x1e\x92\x02\x04\x00"
    assert len(body) == 16
    assert link.receive(ACK, 0.0) == b""
    assert link.receive(ENQ, 0.0) == NAK  # taken: nothing pending


def test_unacknowledged_answer_is_sent_again_after_enq(link: Link) -> None:
    link.receive(ENQ, 0.0)
    first = link.receive(SHORT_STATUS, 0.0)[1:]
    # No ACK from the host: the ack timeout passes, and ENQ gets ACK plus the same answer.
    link.poll(1.0)
    again = link.receive(ENQ, 1.0)
    assert again[:1] == ACK
    assert again[1:] == first


def test_a_late_ack_still_takes_the_answer(link: Link) -> None:
    link.receive(ENQ, 0.0)
    link.receive(SHORT_STATUS, 0.0)
    link.poll(10.0)  # past the ack timeout
    assert link.receive(ACK, 10.0) == b""
    assert link.receive(ENQ, 10.0) == NAK  # not replayed


def test_nak_from_host_keeps_the_answer_for_the_next_enq(link: Link) -> None:
    link.receive(ENQ, 0.0)
    first = link.receive(SHORT_STATUS, 0.0)[1:]
    assert link.receive(NAK, 0.0) == b""  # not resent at once (protocol_kkt_2.0.txt)
    assert link.receive(ENQ, 0.0) == ACK + first
    assert link.receive(ACK, 0.0) == b""
    assert link.receive(ENQ, 0.0) == NAK


def test_bad_lrc_is_refused_with_nak_and_not_run(link: Link, kkt: ShtrihKkt) -> None:
    # Open shift with LRC FA instead of FB.
    assert link.receive(ENQ, 0.0) == NAK
    assert link.receive(b"\x02\x05\xe0\x1e\x00\x00\x00\xfa", 0.0) == NAK
    assert kkt.documents() == []
    # Resent right, it runs.
    assert command(link, OPEN_SHIFT) == b"\xe0\x00\x1e"
    assert [d["type"] for d in kkt.documents()] == ["openShift"]


def test_zero_length_frame_gets_nak(link: Link) -> None:
    assert link.receive(b"\x02\x00\x00", 0.0) == NAK


def test_garbage_and_cut_frames_do_not_disturb_the_device(link: Link) -> None:
    # Noise that begins no frame is ignored.
    assert link.receive(b"\xff\x00\x13\x37\x80", 0.0) == b""
    # A frame cut short: after the byte timeout it is dropped, unanswered.
    assert link.receive(b"\x02\x05\x10\x1e", 0.0) == b""
    link.poll(0.2)
    assert link.receive(ENQ, 0.2) == NAK
    # A new STX in the middle of a frame starts it over (resync).
    reply = link.receive(b"\x02\x05\x10" + SHORT_STATUS, 0.3)
    # The first STX's frame swallows "05 10 02 05 10 1e 00" and its LRC byte is wrong: NAK;
    # the rest ("00 00 0b") is noise.
    assert reply == NAK
    assert command(link, SHORT_STATUS, 0.4)[:2] == b"\x10\x00"
    # Bytes beyond the frame's LEN are noise after the answer.
    reply = link.receive(ENQ + SHORT_STATUS + b"\x99\x98", 0.5)
    assert reply[:2] == NAK + ACK
    assert body_of(reply[2:])[:2] == b"\x10\x00"


def test_a_long_random_stream_never_breaks_the_link(link: Link) -> None:
    import random

    rng = random.Random(14)
    for step in range(200):
        link.receive(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), step)
        link.poll(step + 0.5)
        link.receive(ACK, step + 0.6)
    link.poll(1000.0)
    assert command(link, SHORT_STATUS, 1000.0)[:2] == b"\x10\x00"


def test_bad_lrc_fault_corrupts_answers_until_spent(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(bad_lrc=True)
    link.receive(ENQ, 0.0)
    reply = link.receive(SHORT_STATUS, 0.0)
    assert reply[:1] == ACK
    raw = reply[1:]
    assert xor(raw[1:-1]) != raw[-1]  # wrong LRC
    assert link.receive(NAK, 0.0) == b""  # the host refuses it...
    again = link.receive(ENQ, 0.0)  # ...and asks again
    assert again[:1] == ACK
    assert body_of(again[1:])[:2] == b"\x10\x00"
    assert "bad_lrc" not in kkt.faults()


def test_lost_answer_is_recovered_by_enq(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(lost_answer=True)
    assert link.receive(ENQ, 0.0) == NAK
    assert link.receive(OPEN_SHIFT, 0.0) == ACK  # run, but no answer comes
    assert [d["type"] for d in kkt.documents()] == ["openShift"]
    link.poll(5.0)
    reply = link.receive(ENQ, 5.0)
    assert reply[:1] == ACK
    assert body_of(reply[1:]) == b"\xe0\x00\x1e"
    assert link.receive(ACK, 5.0) == b""
    assert link.receive(ENQ, 5.0) == NAK
    assert len(kkt.documents()) == 1  # run once
    # Status commands change nothing: the fault waits for a state-changing one.
    kkt.set_faults(lost_answer=True)
    assert command(link, SHORT_STATUS, 6.0)[:2] == b"\x10\x00"
    assert kkt.faults()["lost_answer"] == 1


def test_gone_device_answers_nothing(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(gone=True)
    assert link.receive(ENQ, 0.0) == b""
    assert link.receive(SHORT_STATUS, 0.0) == b""
    kkt.set_faults(gone=None)
    assert link.receive(ENQ, 1.0) == NAK


# -- commands -----------------------------------------------------------------------------------


def test_wrong_password_is_refused(link: Link) -> None:
    # Short status with password 1: LRC = 05^10^01 = 14.
    assert command(link, b"\x02\x05\x10\x01\x00\x00\x00\x14") == b"\x10\x4f"


def test_unknown_command_is_not_supported(link: Link) -> None:
    # 0x02 (not modelled) with password 30: LRC = 05^02^1E = 19.
    assert command(link, b"\x02\x05\x02\x1e\x00\x00\x00\x19") == b"\x02\x37"


def test_device_type_names_the_model(link: Link) -> None:
    # 0xFC takes no password: LEN 01, LRC = 01^FC = FD.
    body = command(link, b"\x02\x01\xfc\xfd")
    assert body[:2] == b"\xfc\x00"
    assert body[8:].decode("cp1251").startswith("ШТРИХ-М")


def test_long_status_layout(link: Link) -> None:
    # 0x11, password 30: LRC = 05^11^1E = 0A.
    body = command(link, b"\x02\x05\x11\x1e\x00\x00\x00\x0a")
    assert body[:2] == b"\x11\x00"
    data = body[2:]
    assert len(data) == 46  # protocol_kkt_2.0.txt: message length 48 (CMD, ERR, 46 bytes)
    assert data[13] == 4  # mode: shift closed (after operator, versions, date, hall, doc, flags)
    # date 01.12.26 and time 12:00:00 at offsets 23 and 26
    assert data[23:29] == bytes((1, 12, 26, 12, 0, 0))


def test_shift_open_and_close_modes_and_reports(link: Link, kkt: ShtrihKkt) -> None:
    # FF41 begin opening (LEN 06; LRC = 06^FF^41^1E = A6), FF0C tags 1021 and 1203, E0.
    assert command(link, b"\x02\x06\xff\x41\x1e\x00\x00\x00\xa6") == b"\xff\x41\x00"
    tags = tlv(1021, "Иванова А.".encode("cp866")) + tlv(1203, b"500100732259")
    assert command(link, frame(b"\xff\x0c" + PASSWORD + tags)) == b"\xff\x0c\x00"
    assert command(link, OPEN_SHIFT) == b"\xe0\x00\x1e"
    assert command(link, SHORT_STATUS)[5] == 2  # mode 2: shift open
    # E0 again: not in this mode.
    assert command(link, OPEN_SHIFT) == b"\xe0\x73"
    # FF40: shift open, number 1, no receipts (LRC = 06^FF^40^1E = A7).
    assert (
        command(link, b"\x02\x06\xff\x40\x1e\x00\x00\x00\xa7")
        == b"\xff\x40\x00\x01\x01\x00\x00\x00"
    )
    assert command(link, Z_REPORT) == b"\x41\x00\x1e"
    assert command(link, SHORT_STATUS)[5] == 4
    assert command(link, Z_REPORT) == b"\x41\x2c"  # nothing to close
    opened, closed = kkt.documents()
    assert opened == {
        "number": 2,
        "type": "openShift",
        "datetime": "2026-12-01T12:00:00+03:00",
        "shift": 1,
        "fiscal_sign": opened["fiscal_sign"],
        "fn_number": "9999078900054321",
        "cashier": {"1021": "Иванова А.", "1203": "500100732259"},
    }
    assert closed["type"] == "closeShift" and closed["shift"] == 1 and "cashier" not in closed
    # FF0A finds the opening report by number: type 2, date and time, number, sign, shift.
    body = command(link, frame(b"\xff\x0a" + PASSWORD + b"\x02\x00\x00\x00"))
    assert body[:3] == b"\xff\x0a\x00"
    assert body[3:10] == bytes((2, 0, 26, 12, 1, 12, 0))
    assert body[10:14] == b"\x02\x00\x00\x00"
    assert int.from_bytes(body[14:18], "little") == opened["fiscal_sign"]
    assert body[18:] == b"\x01\x00"
    # An unknown number: the ФН has no such data (0x08).
    assert command(link, frame(b"\xff\x0a" + PASSWORD + b"\x63\x00\x00\x00")) == b"\xff\x0a\x08"


def test_receipt_in_closed_shift_is_refused(link: Link) -> None:
    assert command(link, OPEN_SALE) == b"\x8d\x3d"


def test_paper_out(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    kkt.set_faults(paper_out=True)
    status = command(link, SHORT_STATUS)
    flags = int.from_bytes(status[3:5], "little")
    assert not flags & 0x02 and not flags & 0x80  # no receipt roll, sensor sees no paper
    assert status[6] == 1  # submode: passive paper absence
    assert command(link, OPEN_SALE) == b"\x8d\x6b"
    assert command(link, Z_REPORT) == b"\x41\x6b"
    kkt.set_faults(paper_out=None)
    assert command(link, OPEN_SALE) == b"\x8d\x00\x1e"


def test_receipt_left_open(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    kkt.set_faults(receipt_left_open=True)
    assert command(link, SHORT_STATUS)[5] == 8  # mode 8: a sale receipt open
    assert command(link, OPEN_SALE) == b"\x8d\x4a"
    assert command(link, Z_REPORT) == b"\x41\x4a"
    # FF01: the ФН has a receipt open (document 04).
    fn = command(link, b"\x02\x06\xff\x01\x1e\x00\x00\x00\xe6")  # LRC = 06^FF^01^1E = E6
    assert fn[:3] == b"\xff\x01\x00" and fn[3:5] == b"\x03\x04"
    assert command(link, CANCEL) == b"\x88\x00\x1e"
    assert command(link, SHORT_STATUS)[5] == 2
    assert command(link, CANCEL) == b"\x88\x55"  # nothing to cancel
    assert kkt.receipts() == []


def test_shift_expired(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    kkt.set_faults(shift_expired=True)
    assert command(link, SHORT_STATUS)[5] == 3  # mode 3: shift over 24 hours
    assert command(link, OPEN_SALE) == b"\x8d\x4e"
    assert command(link, Z_REPORT) == b"\x41\x00\x1e"
    assert command(link, SHORT_STATUS)[5] == 4
    assert "shift_expired" not in kkt.faults()


def test_shift_older_than_24_hours_expires_by_itself(tmp_path: Path) -> None:
    now = [T0]
    kkt = ShtrihKkt(tmp_path, clock=lambda: now[0])
    link = Link(kkt)
    command(link, OPEN_SHIFT)
    now[0] += 24 * 3600 + 1
    assert command(link, SHORT_STATUS)[5] == 3


def _check(planned: int, code: str) -> bytes:
    """FF61: password, 2003, 2102 = 0, code length, TLV length 0, the code."""
    raw = code.encode("ascii")
    return frame(b"\xff\x61" + PASSWORD + bytes((planned, 0, len(raw), 0)) + raw)


# FF69 accept (1): LEN 07; LRC = 07^FF^69^1E^01 = 8E. Reject (0): 8F.
ACCEPT = b"\x02\x07\xff\x69\x1e\x00\x00\x00\x01\x8e"
REJECT = b"\x02\x07\xff\x69\x1e\x00\x00\x00\x00\x8f"


def _operation(name: str, price: int, kind: int = 1) -> bytes:
    """FF46: type, quantity 1.000000 (6 bytes), price (5), sum and tax sum "device computes"
    (5 × FF each), tax 1, department 1, 1214 = 4 (full payment), 1212 = 1 (goods), name."""
    return frame(
        b"\xff\x46"
        + PASSWORD
        + bytes((kind,))
        + b"\x40\x42\x0f\x00\x00\x00"
        + price.to_bytes(5, "little")
        + b"\xff" * 10
        + b"\x01\x01\x04\x01"
        + name.encode("cp1251")
    )


def _industry(value: str) -> bytes:
    """FF4D with the STLV 1260 {1262 "030", 1263 "26.03.2022", 1264 "477", 1265 value}."""
    inner = (
        tlv(1262, b"030")
        + tlv(1263, b"26.03.2022")
        + tlv(1264, b"477")
        + tlv(1265, value.encode("cp866"))
    )
    return frame(b"\xff\x4d" + PASSWORD + tlv(1260, inner))


def _bind(code: str) -> bytes:
    raw = code.encode("ascii")
    return frame(b"\xff\x67" + PASSWORD + bytes((len(raw),)) + raw)


def _close(cash: int, *, taxation: int = 1, card: int = 0) -> bytes:
    """FF45: 16 payment sums (cash first, then "электронными"), rounding 0, six tax sums 0,
    taxation bits, no text."""
    payments = cash.to_bytes(5, "little") + card.to_bytes(5, "little") + bytes(14 * 5)
    return frame(b"\xff\x45" + PASSWORD + payments + b"\x00" + bytes(30) + bytes((taxation,)))


def test_marked_sale_over_a_pty(tmp_path: Path) -> None:
    """The vendor's order: FF61 → FF69 → 8D → FF46 → FF4D → FF67 → FF45, through a real pty."""
    kkt = ShtrihKkt(tmp_path, clock=lambda: T0)
    with ShtrihServer(kkt, byte_timeout=0.5) as server:
        path = server.start_pty()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            host = _PtyHost(fd)
            host.command(OPEN_SHIFT)
            check = host.command(_check(1, SHOES))
            # ERR 0; 2004 = 3 (checked, positive); reason 0; 2100 = 4 (crypto 44 checked in
            # the ФН); 12 bytes follow: ФН code 0, 2106 = 15, TLV 2105 = 0, TLV 2109 = 1.
            assert check == (
                b"\xff\x61\x00\x03\x00\x04\x0c\x00\x0f"
                + b"\x39\x08\x01\x00\x00"
                + b"\x3d\x08\x01\x00\x01"
            )
            assert host.command(ACCEPT) == b"\xff\x69\x00\x0f"
            assert host.command(OPEN_SALE) == b"\x8d\x00\x1e"
            assert host.command(_operation("Ботинки мужские", 23990)) == b"\xff\x46\x00"
            assert host.command(_industry(SHOES_TAG1265)) == b"\xff\x4d\x00"
            # FF67: item 1, code type 4; nothing appended (checked before).
            assert host.command(_bind(SHOES)) == b"\xff\x67\x00\x01\x00\x04"
            closed = host.command(_close(30000))
            assert closed[:3] == b"\xff\x45\x00"
            assert closed[3:8] == (30000 - 23990).to_bytes(5, "little")  # change
            assert closed[8:12] == b"\x03\x00\x00\x00"  # document 3
            assert closed[16:] == bytes((26, 12, 1, 12, 0))
            fiscal_sign = int.from_bytes(closed[12:16], "little")
            # FF0A: a receipt (3), its operation (1: sale) and total.
            found = host.command(frame(b"\xff\x0a" + PASSWORD + b"\x03\x00\x00\x00"))
            assert found[3] == 3 and found[18] == 1
            assert int.from_bytes(found[19:24], "little") == 23990
        finally:
            os.close(fd)
    (receipt,) = kkt.receipts()
    assert receipt == {
        "number": 3,
        "type": "sell",
        "datetime": "2026-12-01T12:00:00+03:00",
        "shift": 1,
        "receipt_number": 1,
        "fiscal_sign": fiscal_sign,
        "fn_number": "9999078900054321",
        "total": 23990,
        "change": 6010,
        "rounding": 0,
        "payments": [{"type": "cash", "amount": 30000}],
        "taxation_type": "osn",
        "tags": {"1055": 1},
        "positions": [
            {
                "name": "Ботинки мужские",
                "price": 23990,
                "quantity": 1,
                "amount": 23990,
                "tax": 1,
                "payment_method": 4,
                "payment_object": 1,
                "ki": SHOES_KI,
                "tags": {
                    "1260": {
                        "1262": "030",
                        "1263": "26.03.2022",
                        "1264": "477",
                        "1265": SHOES_TAG1265,
                    },
                    "2003": 1,
                    "2102": 0,
                    "2106": 15,
                    "2004": 3,
                    "2100": 4,
                },
            }
        ],
    }
    # The КИ only: the crypto tail is nowhere on disk.
    secret = SHOES.split(GS)[2]
    for name in ("state.json", "documents.jsonl"):
        assert secret not in (tmp_path / name).read_text(encoding="utf-8")
    assert kkt.state()["accepted"] == []  # used by the receipt


class _PtyHost:
    """The host's side on a pty, as PrinterProtocol_1 does it (this file's own code)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, size: int, timeout: float = 3.0) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < size:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                break
            data += os.read(self.fd, size - len(data))
        return data

    def command(self, raw: bytes) -> bytes:
        os.write(self.fd, ENQ)
        assert self.read(1) == NAK
        os.write(self.fd, raw)
        assert self.read(1) == ACK
        head = self.read(2)
        assert head[:1] == STX
        rest = self.read(head[1] + 1)
        os.write(self.fd, ACK)
        return body_of(head + rest)


def test_bind_of_an_unchecked_code_checks_and_accepts_it(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    command(link, _operation("Ботинки", 23990))
    command(link, _industry(SHOES_TAG1265))
    # The ФФД 1.2 note: item 1, type 4, then the FF61 answer with the ФН code and 2106.
    assert command(link, _bind(SHOES)) == (
        b"\xff\x67\x00\x01\x00\x04"
        + b"\x03\x00\x04\x0c\x00\x0f"
        + b"\x39\x08\x01\x00\x00\x3d\x08\x01\x00\x01"
    )
    assert command(link, _close(23990))[:3] == b"\xff\x45\x00"
    position = kkt.receipts()[0]["positions"][0]
    assert position["ki"] == SHOES_KI and position["tags"]["2106"] == 15


def test_unchecked_code_refused_without_the_self_check(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(no_bind_check=True)
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    command(link, _operation("Ботинки", 23990))
    assert command(link, _bind(SHOES)) == b"\xff\x67\xac"


def test_declined_code(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_code(SHOES_KI, oism="incorrect")
    command(link, OPEN_SHIFT)
    check = command(link, _check(1, SHOES))
    # 2106 = 7 (bit 3 "planned status correct" off); 2109 = 2 (incorrect).
    assert check[8] == 0x07 and check[-1] == 0x02
    assert command(link, REJECT) == b"\xff\x69\x00\x07"
    command(link, OPEN_SALE)
    command(link, _operation("Ботинки", 23990))
    assert command(link, _bind(SHOES)) == b"\xff\x67\xac"  # rejected: stays unusable
    assert command(link, CANCEL) == b"\x88\x00\x1e"


def test_code_the_fn_cannot_check_and_ism_modes(link: Link, kkt: ShtrihKkt) -> None:
    # WATER (AI 93, 4 characters): the ФН does not check it: 2004 = 0, reason 1, type 5.
    check = command(link, _check(1, WATER))
    assert check[3:6] == b"\x00\x01\x05" and check[8] == 0x0C
    command(link, REJECT)
    kkt.set_faults(ism="timeout")
    # No answer from the ОИСМ: one byte follows, 0xFF.
    assert command(link, _check(1, WATER))[3:] == b"\x00\x01\x05\x01\xff"
    assert command(link, ACCEPT) == b"\xff\x69\x00\x00"
    kkt.set_faults(ism="offline")
    command(link, CANCEL)  # no receipt: 0x55, the table stays
    # Offline: autonomous bit in 2004, nothing follows.
    assert command(link, _check(1, SHOES))[3:] == b"\x13\x00\x04\x00"
    assert command(link, ACCEPT) == b"\xff\x69\x00\x13"
    state = kkt.state()
    assert [a["ki"] for a in state["accepted"]] == [WATER_KI, SHOES_KI]


def test_begin_busy_refuses_the_next_check(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(begin_busy=True)
    assert command(link, _check(1, SHOES)) == b"\xff\x61\xa1"
    assert command(link, MARKING_STATUS)[3:6] == b"\x02\x00\x02"  # a check waits for FF69
    assert command(link, REJECT)[:3] == b"\xff\x69\x00"
    assert command(link, _check(1, SHOES))[:3] == b"\xff\x61\x00"


def test_cancel_clears_the_accepted_codes(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    command(link, _check(1, SHOES))
    command(link, ACCEPT)
    assert command(link, MARKING_STATUS)[6] == 1  # one result kept
    command(link, OPEN_SALE)
    assert command(link, CANCEL) == b"\x88\x00\x1e"
    assert command(link, MARKING_STATUS)[6] == 0
    # With cancel_keeps_codes the table survives a cancel.
    kkt.set_faults(cancel_keeps_codes=True)
    command(link, _check(1, SHOES))
    command(link, ACCEPT)
    command(link, OPEN_SALE)
    command(link, CANCEL)
    assert command(link, MARKING_STATUS)[6] == 1


def test_close_checks_payments_and_taxation(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    command(link, _operation("Вода", 8990))
    assert command(link, _close(5000)) == b"\xff\x45\x45"  # paid less than the total
    assert command(link, _close(0, card=9000)) == b"\xff\x45\x4d"  # card over the total
    assert command(link, _close(8990, taxation=2)) == b"\xff\x45\x33"  # not registered
    kkt.set_faults(taxation_types=["osn", "usnIncome"], taxation_error=0x9B)
    assert command(link, _close(8990, taxation=0)) == b"\xff\x45\x9b"  # which one?
    assert command(link, _close(0, taxation=2, card=8990))[:3] == b"\xff\x45\x00"
    (receipt,) = kkt.receipts()
    assert receipt["taxation_type"] == "usnIncome" and receipt["tags"] == {"1055": 2}
    assert receipt["payments"] == [{"type": "electronically", "amount": 8990}]


def test_sale_return_receipt(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    # 0x8D type 2: LRC = 06^8D^1E^02 = 97.
    assert command(link, b"\x02\x06\x8d\x1e\x00\x00\x00\x02\x97") == b"\x8d\x00\x1e"
    assert command(link, SHORT_STATUS)[5] == 0x28  # mode 8, sale return
    assert command(link, _operation("Вода", 8990, kind=1)) == b"\xff\x46\x49"  # a sale line
    assert command(link, _operation("Вода", 8990, kind=2)) == b"\xff\x46\x00"
    assert command(link, _close(8990))[:3] == b"\xff\x45\x00"
    assert kkt.receipts()[0]["type"] == "sellReturn"


def test_fn_status_expiry_and_ofd_queue(link: Link, kkt: ShtrihKkt) -> None:
    kkt.set_faults(fn_warnings=["memoryOverflow", "ofdTimeout"], fn_days_left=10)
    fn = command(link, b"\x02\x06\xff\x01\x1e\x00\x00\x00\xe6")
    assert fn[7] == 0x0C  # warning flags: memory (bit 2), ОФД timeout (bit 3)
    assert fn[13:29] == b"9999078900054321"
    assert fn[29:33] == b"\x01\x00\x00\x00"  # last document: the registration
    # FF03: LRC = 06^FF^03^1E = E4. 2026-12-11.
    assert command(link, b"\x02\x06\xff\x03\x1e\x00\x00\x00\xe4")[3:6] == bytes((26, 12, 11))
    # FF39: LRC = 06^FF^39^1E = DE. Nothing unsent yet.
    assert command(link, b"\x02\x06\xff\x39\x1e\x00\x00\x00\xde")[3:] == bytes(13)
    command(link, OPEN_SHIFT)
    ofd = command(link, b"\x02\x06\xff\x39\x1e\x00\x00\x00\xde")
    assert ofd[3:] == b"\x02\x00\x01\x00\x02\x00\x00\x00" + bytes((26, 12, 1, 12, 0))


def test_gone_in_receipt_open_leaves_the_receipt_open(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    kkt.set_faults(gone_in_receipt="open")
    assert link.receive(ENQ, 0.0) == NAK
    assert link.receive(OPEN_SALE, 0.0) == ACK  # taken, then silence
    assert link.receive(ENQ, 1.0) == b""
    kkt.set_faults(gone=None)
    assert command(link, SHORT_STATUS, 2.0)[5] == 8


def test_gone_in_receipt_after_registers_and_loses_the_answer(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    command(link, _operation("Вода", 8990))
    kkt.set_faults(gone_in_receipt="after")
    link.receive(ENQ, 0.0)
    assert link.receive(_close(8990), 0.0) == ACK
    assert link.receive(ENQ, 1.0) == b""
    assert len(kkt.receipts()) == 1
    kkt.set_faults(gone=None)
    assert link.receive(ENQ, 2.0) == NAK  # the answer is gone for good
    # FF0A tells the client what happened to document 3.
    assert command(link, frame(b"\xff\x0a" + PASSWORD + b"\x03\x00\x00\x00"), 2.0)[3] == 3


def test_state_rolls_forward_from_a_document_written_before_a_kill(
    link: Link, kkt: ShtrihKkt
) -> None:
    command(link, OPEN_SHIFT)
    state_file = kkt.path / "state.json"
    before = state_file.read_text(encoding="utf-8")
    command(link, Z_REPORT)
    # As if killed after the document's fsync and before the state was written:
    state_file.write_text(before, encoding="utf-8")
    again = ShtrihKkt(kkt.path, clock=lambda: T0)
    assert again.state()["shift"]["state"] == "closed"
    assert again.state()["document_number"] == 3
    assert json.loads(state_file.read_text(encoding="utf-8"))["document_number"] == 3


def test_tcp_one_client_at_a_time(kkt: ShtrihKkt) -> None:
    with ShtrihServer(kkt) as server:
        port = server.start_tcp()
        first = socket.create_connection(("127.0.0.1", port), timeout=3)
        first.sendall(ENQ)
        assert first.recv(1) == NAK
        second = socket.create_connection(("127.0.0.1", port), timeout=3)
        try:
            second.sendall(ENQ)
            assert second.recv(1) == NAK
            assert first.recv(1) == b""  # replaced: closed by the device
            second.sendall(SHORT_STATUS)
            reply = b""
            while len(reply) < 1 + 19:
                reply += second.recv(64)
            assert reply[:1] == ACK and body_of(reply[1:])[:2] == b"\x10\x00"
        finally:
            first.close()
            second.close()


def test_set_faults_validates_names(kkt: ShtrihKkt) -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        kkt.set_faults(paper=True)
    with pytest.raises(ValueError, match="open shift"):
        kkt.set_faults(receipt_left_open=True)
    kkt.set_faults(paper_out=True, ism="offline")
    assert kkt.faults == {"paper_out": True, "ism": "offline"}
    kkt.clear_faults()
    assert kkt.faults() == {"ism": "online"}


def test_command_line_serves_a_pty_until_sigterm(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "daemon")}
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", "shtrih", "--pty", "--state", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        path = process.stdout.readline().strip()
        assert path.startswith("/dev/")
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            assert _PtyHost(fd).command(SHORT_STATUS)[:2] == b"\x10\x00"
            # Another process (this one) sets a fault on the same state: the device sees it.
            ShtrihKkt(tmp_path).set_faults(paper_out=True)
            status = _PtyHost(fd).command(SHORT_STATUS)
            assert not int.from_bytes(status[3:5], "little") & 0x80
        finally:
            os.close(fd)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


def test_testing_helper_serves_on_tcp(tmp_path: Path) -> None:
    from markd.emulators import testing

    with testing.shtrih(tmp_path, transport="tcp") as server:
        assert server.port
        with socket.create_connection((server.host, server.port), timeout=3) as client:
            client.sendall(ENQ)
            assert client.recv(1) == NAK
            client.sendall(OPEN_SHIFT)
            reply = b""
            while len(reply) < 1 + 6:
                reply += client.recv(64)
            assert reply[:1] == ACK and body_of(reply[1:]) == b"\xe0\x00\x1e"
            client.sendall(ACK)
        assert [d["type"] for d in server.kkt.documents()] == ["openShift"]


def test_tags_after_the_bind_are_refused(link: Link) -> None:
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    assert command(link, _industry(SHOES_TAG1265)) == b"\xff\x4d\x5e"  # no position yet
    command(link, _operation("Ботинки", 23990))
    command(link, _bind(SHOES))
    assert command(link, _industry(SHOES_TAG1265)) == b"\xff\x4d\x5e"


def test_kill_right_after_the_receipt_opens_leaves_it_open(tmp_path: Path) -> None:
    """MARKD_FISCAL_KILL_AT=kkt-receipt-open: the process dies with the receipt open on disk."""
    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys\n"
        "from markd.emulators.shtrih import ShtrihKkt\n"
        "kkt = ShtrihKkt(sys.argv[1])\n"
        "kkt.execute(bytes.fromhex('e01e000000'))\n"
        "kkt.execute(bytes.fromhex('8d1e00000000'))\n"
        "print('not killed')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(root / "daemon"),
        "MARKD_FISCAL_KILL_AT": "kkt-receipt-open",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == -signal.SIGKILL
    kkt = ShtrihKkt(tmp_path)
    assert kkt.state()["receipt"]["type"] == "sell"
    assert [d["type"] for d in kkt.documents()] == ["openShift"]


def test_shift_age_shows_in_the_opening_report(link: Link, kkt: ShtrihKkt) -> None:
    command(link, OPEN_SHIFT)
    kkt.set_faults(shift_age_hours=23.5)
    # FF0A of document 2 (the opening report): opened at 2026-11-30 12:30, 23.5 hours ago.
    body = command(link, frame(b"\xff\x0a" + PASSWORD + b"\x02\x00\x00\x00"))
    assert body[3:10] == bytes((2, 0, 26, 11, 30, 12, 30))
    assert command(link, SHORT_STATUS)[5] == 2  # still within 24 hours
    kkt.set_faults(shift_age_hours=24.5)
    assert command(link, SHORT_STATUS)[5] == 3


def test_clearing_the_buffer_forgets_accepted_and_rejected_codes(link: Link) -> None:
    command(link, _check(1, SHOES))
    command(link, REJECT)
    command(link, _check(1, WATER))
    command(link, ACCEPT)
    # FF69 2: LRC = 07^FF^69^1E^02 = 8D.
    assert command(link, b"\x02\x07\xff\x69\x1e\x00\x00\x00\x02\x8d") == b"\xff\x69\x00\x00"
    assert command(link, MARKING_STATUS)[6] == 0
    command(link, OPEN_SHIFT)
    command(link, OPEN_SALE)
    command(link, _operation("Ботинки", 23990))
    # No longer rejected: the device checks and accepts it itself.
    assert command(link, _bind(SHOES))[:6] == b"\xff\x67\x00\x01\x00\x04"


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_baudrate_makes_an_exchange_take_the_line_time(kkt: ShtrihKkt, transport: str) -> None:
    """At 9600 baud a byte takes 10 / 9600 s (1.04 ms) each way: an exchange of short statuses
    takes at least its bytes' line time (the device never hurries: sleeps do not end early),
    and not several times that; without pacing it takes a fraction of it. The host's frame is
    acted on only once it would have arrived: its ACK comes no sooner than its bytes' time."""
    byte_time = 10 / 9600

    def run(baudrate: int | None) -> tuple[float, float, int]:
        """(seconds for three exchanges, seconds from frame to ACK, bytes waited on)."""
        with ShtrihServer(kkt, baudrate=baudrate) as server, contextlib.ExitStack() as stack:
            if transport == "pty":
                fd = os.open(server.start_pty(), os.O_RDWR | os.O_NOCTTY)
                stack.callback(os.close, fd)
                tty.setraw(fd)
            else:
                client = socket.create_connection(("127.0.0.1", server.start_tcp()), timeout=3)
                stack.enter_context(client)
                # As the backend's TcpPort: no Nagle delay on the small frames.
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                fd = client.fileno()
            host = _PtyHost(fd)
            host.command(SHORT_STATUS)  # warm up: the device's first answer
            # The host's frame in, the device's ACK out: both paced.
            os.write(fd, ENQ)
            assert host.read(1) == NAK
            started = time.perf_counter()
            os.write(fd, SHORT_STATUS)
            assert host.read(1) == ACK
            to_ack = time.perf_counter() - started
            answer = host.read(2)
            answer += host.read(answer[1] + 1)
            os.write(fd, ACK)
            # Per exchange the host waits on ENQ, NAK, its frame, ACK and the answer (its own
            # last ACK goes out while it already has the answer).
            waited = 1 + 1 + len(SHORT_STATUS) + 1 + len(answer)
            started = time.perf_counter()
            for _ in range(3):
                assert host.command(SHORT_STATUS)[:2] == b"\x10\x00"
            return time.perf_counter() - started, to_ack, 3 * waited

    took, to_ack, waited = run(9600)
    line = waited * byte_time
    assert took >= line, (took, line)
    assert took <= 3 * line + 0.3, (took, line)
    assert to_ack >= (len(SHORT_STATUS) + 1) * byte_time
    unpaced, _, _ = run(None)
    assert unpaced < 0.5 * line, (unpaced, line)
