"""A Shtrih-M ККТ model for the backend's tests: protocol 1 at the byte level, with just enough
state for a sale (see ``tests/unit/test_shtrih_printer.py``), and a thread that serves it on a
pty master or a TCP connection.

It parses frames with its own few lines and shares no code with the backend (nor with the
emulator in ``markd.emulators``, which is someone else's reading of the same layouts).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from datetime import datetime, timedelta

KM = "0104650117240408215Qbag!\x1d93Zjqw"
KI = "0104650117240408215Qbag!"
NOW = datetime(2026, 12, 6, 12, 0)


def u(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


class FakeKkt:
    """Protocol 1 at the byte level, with just enough state for a sale."""

    where = "fake"

    def __init__(self) -> None:
        self.out = bytearray()
        self.log: list[int] = []
        self.data: list[bytes] = []
        self.mode = 2  # shift open
        self.shift = 12
        self.document = 40
        self.taxation = 0x01  # registered: ОСН
        #: Accepted check results the ФН holds (FF70), kept by a receipt's cancel.
        self.accepted = 0
        self.refuse: dict[int, int] = {}  # command → error byte, once
        self.refuse_always: dict[int, int] = {}  # command → error byte, every time
        self.bind_checks_itself = False
        self.check_answer = b"\x03\x00\x02\x02\x00\x0f"  # checked, ОИСМ: status correct
        self.documents: dict[int, bytes] = {
            33: b"\x02\x00" + self._stamp(NOW - timedelta(hours=5)) + u(33, 4) + u(1, 4) + u(12, 2)
        }

    @staticmethod
    def _stamp(moment: datetime) -> bytes:
        return bytes([moment.year - 2000, moment.month, moment.day, moment.hour, moment.minute])

    # -- the Port interface ---------------------------------------------------------------------

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, size: int, timeout_s: float) -> bytes:
        chunk = bytes(self.out[:size])
        del self.out[:size]
        return chunk

    def write(self, data: bytes) -> None:
        if data == b"\x05":
            self.out += b"\x15"
        elif data[:1] == b"\x02":
            length = data[1]
            body = data[2 : 2 + length]
            check = 0
            for byte in data[1 : 2 + length]:
                check ^= byte
            assert check == data[2 + length], "the host sent a bad LRC"
            self.out += b"\x06" + self._answer(body)
        # ACK / NAK from the host: nothing to do

    # -- the device -----------------------------------------------------------------------------

    def _answer(self, body: bytes) -> bytes:
        if body[0] == 0xFF:
            command, data, head = 0xFF00 | body[1], body[2:], body[:2]
        else:
            command, data, head = body[0], body[1:], body[:1]
        self.log.append(command)
        self.data.append(data)
        error = self.refuse.pop(command, 0) or self.refuse_always.get(command, 0)
        reply = b"" if error else self._run(command, data)
        answer = head + bytes([error]) + reply
        check = len(answer)
        for byte in answer:
            check ^= byte
        return b"\x02" + bytes([len(answer)]) + answer + bytes([check])

    def _run(self, command: int, data: bytes) -> bytes:
        if command == 0x11:
            return (
                b"\x1e" + b"A4" + u(3098, 2) + b"\x01\x02\x18\x01" + u(self.document, 2)
                + u(0x80, 2) + bytes([self.mode, 0, 0]) + b"\x00" * 7
                + bytes([NOW.day, NOW.month, NOW.year - 2000, NOW.hour, NOW.minute, 0])
                + b"\x00" + u(0x12345678, 4) + u(self.shift - 1, 2) + b"\x00\x00\x01\x1d"
                + b"\x00" * 6
            )  # fmt: skip
        if command == 0xFC:
            return b"\x00\x00\x01\x0b\x00\x00" + "ШТРИХ-М-01Ф".encode("cp1251")
        if command == 0xFF01:
            return (
                b"\x03\x00\x00\x01\x04" + self._stamp(NOW) + b"9999078900001234"
                + u(self.document, 4)
            )  # fmt: skip
        if command == 0xFF03:
            return bytes([27, 1, 31, 1, 1])
        if command == 0xFF39:
            return (
                b"\x01\x00"
                + u(2, 2)
                + u(30, 4)
                + self._stamp(NOW - timedelta(days=4))[:3]
                + (bytes([NOW.hour, NOW.minute]))
            )
        if command == 0xFF40:
            return u(self.shift, 2) + u(3, 2)
        if command == 0xFF09:
            return (
                b"\x00" * 5
                + b"7707083893  "
                + b"0" * 20
                + bytes([self.taxation, 0])
                + (b"\x00" * 8)
            )
        if command == 0xFF0A:
            number = int.from_bytes(data[4:8], "little")
            if number in self.documents:
                return self.documents[number]
            return b"\x03\x01" + self._stamp(NOW) + u(number, 4) + u(7, 4) + b"\x01" + u(100, 5)
        if command == 0x8D:
            self.mode = 8
            return b"\x1e"
        if command == 0x88:
            self.mode = 2
            return b"\x1e"
        if command == 0xFF61:
            return self.check_answer
        if command == 0xFF69:
            self.accepted = self.accepted + 1 if data[4:5] == b"\x01" else 0
            return b"\x0f"
        if command == 0xFF70:
            return bytes([1, 0, 0, self.accepted, 0, 0]) + u(0, 2)
        if command == 0xFF67:
            return b"\x01\x00\x02" + (b"\x03\x00\x02\x01\xff" if self.bind_checks_itself else b"")
        if command == 0xFF45:
            self.mode = 2
            self.accepted = 0
            self.document += 1
            return b"\x00" * 5 + u(self.document, 4) + u(0xDEADBEEF, 4) + self._stamp(NOW)
        if command in (0xE0, 0x41):
            self.document += 1
            if command == 0xE0:
                self.shift += 1
                self.documents[self.document] = (
                    b"\x02\x00" + self._stamp(NOW) + u(self.document, 4) + u(1, 4)
                    + u(self.shift, 2)
                )  # fmt: skip
            return b"\x1e"
        return b""  # FF0C, FF46, FF4D


class Server:
    """Serves a :class:`FakeKkt` on a byte stream in a thread: bytes from the host are cut into
    control bytes and whole frames, the model's answers written back."""

    def __init__(self, kkt: FakeKkt, fd: int | None = None, conn: socket.socket | None = None):
        self.kkt = kkt
        self.fd = fd
        self.conn = conn
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self) -> bytes:
        if self.fd is not None:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                return b""
            try:
                return os.read(self.fd, 512)
            except OSError:
                self.stopped.set()
                return b""
        assert self.conn is not None
        self.conn.settimeout(0.05)
        try:
            data = self.conn.recv(512)
        except TimeoutError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.stopped.set()
        return data

    def _write(self, data: bytes) -> None:
        if self.fd is not None:
            os.write(self.fd, data)
        else:
            assert self.conn is not None
            self.conn.sendall(data)

    def _run(self) -> None:
        pending = b""
        while not self.stopped.is_set():
            pending += self._read()
            while pending:
                if pending[0] != 0x02:
                    self.kkt.write(pending[:1])
                    pending = pending[1:]
                elif len(pending) >= 2 and len(pending) >= pending[1] + 3:
                    size = pending[1] + 3
                    self.kkt.write(pending[:size])
                    pending = pending[size:]
                else:
                    break
            if self.kkt.out:
                out = bytes(self.kkt.out)
                self.kkt.out.clear()
                self._write(out)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)
