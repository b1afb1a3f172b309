"""The Shtrih-M protocol-1 link over a real pty and a real loopback TCP socket.

A tiny scripted device stands on the far side: it expects the exact bytes the host must send
and answers with the bytes written in each script. The frames are literal, worked out by hand
from the vendor's layouts:

* ``0x10`` short status with password 30: ``02 05 10 1E 00 00 00 0B``; its answer with
  operator 30, flags 0x0080, mode 4, submode 0: ``02 07 10 00 1E 80 00 04 00 8D``
  (LRC 07^10^1E^80^04 = 8D);
* ``0x88`` cancel receipt (changes the device): ``02 05 88 1E 00 00 00 93``; its answer
  (operator 30): ``02 03 88 00 1E 95``.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from markd.errors import OutcomeUnknown, PrinterGone, PrinterUnavailable, PrinterURLError
from markd.fiscal.base import PrinterSettings, new_op_id, open_printer, parse_printer_url
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.fiscal.shtrih import commands as cmd
from markd.fiscal.shtrih.errors import MalformedAnswer
from markd.fiscal.shtrih.link import Link, LinkLimits, SerialPort, TcpPort
from markd.receipts import Payment
from shtrih_helpers import KI, KM, FakeKkt, Server

ENQ = b"\x05"
ACK = b"\x06"
NAK = b"\x15"
STATUS = b"\x02\x05\x10\x1e\x00\x00\x00\x0b"
STATUS_ANSWER = b"\x02\x07\x10\x00\x1e\x80\x00\x04\x00\x8d"
STATUS_ANSWER_BAD_LRC = b"\x02\x07\x10\x00\x1e\x80\x00\x04\x00\x00"
CANCEL = b"\x02\x05\x88\x1e\x00\x00\x00\x93"
CANCEL_ANSWER = b"\x02\x03\x88\x00\x1e\x95"

BYTE_TIMEOUT = 0.1
LIMITS = LinkLimits(byte_timeout_s=BYTE_TIMEOUT)
#: The command time limit used here: short, so a lost answer is noticed quickly.
COMMAND_TIMEOUT = 0.3

Step = tuple[str, bytes]


def expect(data: bytes) -> Step:
    return ("expect", data)


def send(data: bytes) -> Step:
    return ("send", data)


CLOSE: Step = ("close", b"")


def pause(seconds: float) -> Step:
    """The device says nothing for ``seconds``."""
    return ("pause", str(seconds).encode())


# --------------------------------------------------------------------------------------------
# The scripted device


class Wire:
    """The device's end: read with a time limit, write, close."""

    def read(self, size: int, timeout_s: float) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FdWire(Wire):
    def __init__(self, fd: int, on_close: Callable[[], None]) -> None:
        self.fd = fd
        self.on_close = on_close

    def read(self, size: int, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self.fd, size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        self.on_close()


class SocketWire(Wire):
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def read(self, size: int, timeout_s: float) -> bytes:
        self.conn.settimeout(timeout_s)
        try:
            return self.conn.recv(size)
        except (TimeoutError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)

    def close(self) -> None:
        self.conn.close()


@dataclass
class ScriptedDevice:
    """Runs a script in a thread: ``expect`` the exact bytes, ``send`` bytes, ``close``."""

    connect: Callable[[], Wire]
    script: list[Step]
    errors: list[str] = field(default_factory=list)
    wire: Wire | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.wire = self.connect()
            for kind, data in self.script:
                if kind == "expect":
                    got = self._read_exact(len(data), 5.0)
                    if got != data:
                        self.errors.append(f"expected {data.hex(' ')}, got {got.hex(' ')}")
                        return
                elif kind == "send":
                    self.wire.write(data)
                elif kind == "pause":
                    time.sleep(float(data.decode()))
                else:
                    self.wire.close()
                    return
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(repr(exc))

    def _read_exact(self, size: int, timeout_s: float) -> bytes:
        assert self.wire is not None
        deadline = time.monotonic() + timeout_s
        data = b""
        while len(data) < size and time.monotonic() < deadline:
            data += self.wire.read(size - len(data), deadline - time.monotonic())
        return data

    def finish(self) -> None:
        """Wait for the script's end and fail the test on any surprise."""
        self.thread.join(5)
        assert not self.thread.is_alive(), "the script did not finish"
        assert self.errors == []

    def leftover(self, wait_s: float = 0.3) -> bytes:
        """What the host sent after the script ended (nothing, when it behaves)."""
        assert self.wire is not None
        return self.wire.read(64, wait_s)


class Bench:
    """One transport (a pty or loopback TCP) with a :class:`Link` on the host's side."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self._fds: list[int] = []
        self.server: socket.socket | None = None
        if kind == "pty":
            self.path = tmp_path / "kkt"
            self._master = self._new_pty()
            self.port: Any = SerialPort(str(self.path), 115200)
        else:
            self.server = socket.create_server(("127.0.0.1", 0))
            self.port = TcpPort("127.0.0.1", self.server.getsockname()[1], 1.0)
        self.link = Link(self.port, LIMITS)

    def _new_pty(self) -> int:
        master, slave = os.openpty()
        # The slave stays open here too, so the master reads no EIO when the host closes.
        self._fds += [master, slave]
        link = self.tmp_path / "kkt.new"
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        os.replace(link, self.path)  # as udev moves a /dev/serial/by-id link
        return master

    def device(self, script: list[Step]) -> ScriptedDevice:
        if self.kind == "pty":
            master = self._master
            return ScriptedDevice(lambda: FdWire(master, self.unplug_pty), script)
        server = self.server
        assert server is not None

        def accept() -> Wire:
            server.settimeout(5)
            conn, _ = server.accept()
            return SocketWire(conn)

        return ScriptedDevice(accept, script)

    def replug(self) -> None:
        """The device comes back (a new pty behind the same path; TCP: the same listener)."""
        if self.kind == "pty":
            self._master = self._new_pty()

    def unplug_pty(self) -> None:
        """Close the pty's master: the host's port reads EIO from now on."""
        if self._master in self._fds:
            self._fds.remove(self._master)
            os.close(self._master)

    def close(self) -> None:
        self.link.close()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.server is not None:
            self.server.close()


@pytest.fixture(params=["pty", "tcp"])
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(request.param, tmp_path)
    try:
        yield bench
    finally:
        bench.close()


def status(bench: Bench) -> bytes:
    answer = bench.link.exchange(cmd.encode_short_status(30), COMMAND_TIMEOUT, False)
    assert answer.command == 0x10 and answer.error == 0
    return answer.data


def cancel(bench: Bench) -> bytes:
    answer = bench.link.exchange(cmd.encode_cancel_receipt(30), COMMAND_TIMEOUT, True)
    assert answer.command == 0x88 and answer.error == 0
    return answer.data


# --------------------------------------------------------------------------------------------
# Exchanges


def test_a_normal_exchange(bench: Bench) -> None:
    device = bench.device(
        [expect(ENQ), send(NAK), expect(STATUS), send(ACK + STATUS_ANSWER), expect(ACK)]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()
    assert cmd.decode_short_status(b"\x1e\x80\x00\x04\x00").mode == 4


def test_a_command_frame_the_device_nak_s_is_sent_again(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(CANCEL),
            send(NAK),  # damaged on the way: the device did not take it
            expect(CANCEL),
            send(ACK + CANCEL_ANSWER),
            expect(ACK),
        ]
    )

    assert cancel(bench) == b"\x1e"
    device.finish()


def test_resending_a_refused_frame_is_bounded(bench: Bench) -> None:
    device = bench.device(
        [expect(ENQ), send(NAK)] + [expect(CANCEL), send(NAK)] * LIMITS.send_attempts
    )

    with pytest.raises(PrinterUnavailable) as err:
        cancel(bench)

    # Never taken by the device: not an unknown outcome.
    assert not isinstance(err.value, OutcomeUnknown)
    device.finish()
    assert device.leftover() == b""


#: A cancel's answer whose operator byte is 0x15 (a NAK's value): 02 03 88 00 15, LRC
#: 03^88^00^15 = 9E.
CANCEL_ANSWER_0x15 = b"\x02\x03\x88\x00\x15\x9e"


def test_an_answer_that_comes_without_its_ack_is_read_not_taken_for_a_nak(bench: Bench) -> None:
    """The device's ACK to the command is lost and the answer follows straight away: the host
    reads the frame (never taking its 0x15 for a NAK) and does not send the command again."""
    device = bench.device(
        [expect(ENQ), send(NAK), expect(CANCEL), send(CANCEL_ANSWER_0x15), expect(ACK)]
    )

    answer = bench.link.exchange(cmd.encode_cancel_receipt(30), COMMAND_TIMEOUT, True)

    assert answer.command == 0x88 and answer.data == b"\x15"
    device.finish()
    assert device.leftover() == b""


def test_an_unreadable_reply_to_a_changing_command_is_never_followed_by_a_resend(
    bench: Bench,
) -> None:
    """Bytes came back that were no confirmation, then the device waits for a command (NAK to
    ENQ): the command may have run, so a state-changing one is an unknown outcome — not sent
    twice (a reading one is simply sent again: the next test)."""
    device = bench.device(
        [expect(ENQ), send(NAK), expect(CANCEL), send(b"\x01\x01"), expect(ENQ), send(NAK)]
    )
    with pytest.raises(OutcomeUnknown):
        cancel(bench)
    device.finish()
    assert device.leftover() == b""


def test_an_unreadable_reply_to_a_reading_command_is_followed_by_a_resend(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(b"\x01\x01"),
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )
    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_a_nak_that_comes_after_other_bytes_never_makes_a_changing_command_sent_again(
    bench: Bench,
) -> None:
    """Noise, then a 0x15 (the ACK lost, the answer's STX damaged, its LEN read as a NAK):
    for a state-changing command that is no clean refusal — the device may have run it — so
    the host drains the line, asks, and when the device waits for a command, reports an
    unknown outcome instead of writing the command again."""
    device = bench.device(
        [expect(ENQ), send(NAK), expect(CANCEL), send(b"\x99\x15"), expect(ENQ), send(NAK)]
    )

    with pytest.raises(OutcomeUnknown):
        cancel(bench)

    device.finish()
    assert device.leftover() == b""


def test_a_late_ack_then_a_busy_device_is_waited_for(bench: Bench) -> None:
    """The ACK comes after the byte time limit (a slow TCP link), the device then runs the
    command and says nothing to the ENQ: the host waits for the answer instead of giving up."""
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(CANCEL),
            pause(BYTE_TIMEOUT * 1.5),
            send(ACK),  # late: read by the host's drain
            expect(ENQ),  # busy: no reply
            pause(BYTE_TIMEOUT * 2),
            send(CANCEL_ANSWER),
            expect(ACK),
        ]
    )

    assert cancel(bench) == b"\x1e"
    device.finish()


def test_a_damaged_stale_answer_is_dropped_before_the_next_command(bench: Bench) -> None:
    """An answer left from an earlier command comes damaged at the next ENQ, a 0x15 inside
    it: the rest is drained, so that byte is not taken for the device being ready."""
    device = bench.device(
        [
            expect(ENQ),
            send(b"\x02\x02\x10\x00\x1e\x15\x00\x04\x00\x00"),  # LEN 2: LRC fails early
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_the_rest_of_a_damaged_frame_is_dropped_before_asking_again(bench: Bench) -> None:
    """A frame whose LEN says 2 where 7 follow: the LRC fails at the third byte, and the rest
    (15 00 04 00 00, a 0x15 among them) must not be read as a NAK to the host's next ENQ."""
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + b"\x02\x02\x10\x00\x1e\x15\x00\x04\x00\x00"),
            expect(NAK),
            expect(ENQ),
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_a_damaged_answer_is_nak_ed_and_asked_for_again(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + STATUS_ANSWER_BAD_LRC),
            expect(NAK),  # the host refuses it
            expect(ENQ),  # and asks again
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_a_lost_answer_is_recovered_by_enq_and_the_command_is_not_resent(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(CANCEL),
            send(ACK),  # taken and run; the answer never comes
            expect(ENQ),  # the host asks for it
            send(ACK + CANCEL_ANSWER),
            expect(ACK),
        ]
    )

    assert cancel(bench) == b"\x1e"
    device.finish()
    assert device.leftover() == b""  # the cancel went out once


def test_a_lost_answer_the_device_cannot_repeat_is_an_unknown_outcome(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(CANCEL),
            send(ACK),
            expect(ENQ),
            send(NAK),  # no answer to repeat
        ]
    )

    with pytest.raises(OutcomeUnknown):
        cancel(bench)
    device.finish()
    assert device.leftover() == b""  # a command that changes the device is never resent


def test_a_reading_whose_answer_is_lost_is_asked_again(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK),
            expect(ENQ),
            send(NAK),  # the answer is gone: a reading may simply be sent again
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_a_long_command_is_asked_after_with_enq_while_it_runs(bench: Bench) -> None:
    link = Link(bench.port, LinkLimits(byte_timeout_s=BYTE_TIMEOUT, probe_interval_s=0.2))
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(CANCEL),
            send(ACK),
            expect(ENQ),  # still running?
            send(ACK),  # preparing the answer
            expect(ENQ),
            send(ACK + CANCEL_ANSWER),
            expect(ACK),
        ]
    )
    started = time.monotonic()

    answer = link.exchange(cmd.encode_cancel_receipt(30), 30.0, True)

    assert answer.data == b"\x1e" and time.monotonic() - started < 5
    device.finish()
    assert device.leftover() == b""


def test_an_answer_crossing_the_enq_is_taken(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK),
            expect(ENQ),
            send(STATUS_ANSWER),  # sent just as the host asked
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_noise_before_stx_and_control_bytes_is_skipped(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(b"\xff\x00" + NAK),
            expect(STATUS),
            send(ACK + b"\x13\x37\x00" + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_an_answer_left_from_before_is_read_and_dropped(bench: Bench) -> None:
    device = bench.device(
        [
            expect(ENQ),
            send(ACK + CANCEL_ANSWER),  # the answer to an earlier command still waits
            expect(ACK),
            expect(ENQ),
            send(NAK),
            expect(STATUS),
            send(ACK + STATUS_ANSWER),
            expect(ACK),
        ]
    )

    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    device.finish()


def test_an_answer_to_another_command_is_malformed(bench: Bench) -> None:
    device = bench.device(
        [expect(ENQ), send(NAK), expect(STATUS), send(ACK + CANCEL_ANSWER), expect(ACK)]
    )

    with pytest.raises(MalformedAnswer) as err:
        status(bench)
    assert err.value.reason == "malformed-answer"
    device.finish()


def test_a_silent_device_is_unavailable_within_the_time_limit(bench: Bench) -> None:
    started = time.monotonic()

    with pytest.raises(PrinterUnavailable) as err:
        status(bench)

    assert err.value.reason == "printer-unavailable"
    assert time.monotonic() - started < LIMITS.enq_attempts * BYTE_TIMEOUT + 1.0


def test_a_vanished_port_is_gone_and_the_link_reopens(bench: Bench) -> None:
    device = bench.device([expect(ENQ), CLOSE])  # unplugged while the host waits

    with pytest.raises(PrinterGone) as err:
        status(bench)
    assert err.value.reason == "printer-gone"
    device.finish()

    bench.replug()
    again = bench.device(
        [expect(ENQ), send(NAK), expect(STATUS), send(ACK + STATUS_ANSWER), expect(ACK)]
    )
    assert status(bench) == b"\x1e\x80\x00\x04\x00"
    again.finish()


def test_a_port_vanishing_during_a_state_change_is_an_unknown_outcome(bench: Bench) -> None:
    device = bench.device([expect(ENQ), send(NAK), expect(CANCEL), CLOSE])

    with pytest.raises(OutcomeUnknown):
        cancel(bench)
    device.finish()


def test_a_device_file_that_is_missing_is_gone(tmp_path: Path) -> None:
    link = Link(SerialPort(str(tmp_path / "ttyACM9"), 115200), LIMITS)

    with pytest.raises(PrinterGone):
        link.exchange(cmd.encode_short_status(30), COMMAND_TIMEOUT, False)


def test_a_tcp_device_not_listening_is_unavailable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    link = Link(TcpPort("127.0.0.1", port, 1.0), LIMITS)

    with pytest.raises(PrinterUnavailable) as err:
        link.exchange(cmd.encode_short_status(30), COMMAND_TIMEOUT, False)
    assert err.value.reason == "printer-unavailable"


# --------------------------------------------------------------------------------------------
# The printer over a real port, end to end


@pytest.fixture(params=["pty", "tcp"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeKkt]]:
    kkt = FakeKkt()
    servers: list[Server] = []
    if request.param == "pty":
        master, slave = os.openpty()
        servers.append(Server(kkt, fd=master))
        try:
            yield f"shtrih://{os.ttyname(slave)}?timeout_ms=100", kkt
        finally:
            servers[0].stop()
            os.close(master)
            os.close(slave)
        return
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        listener.settimeout(5)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        servers.append(Server(kkt, conn=conn))

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"shtrih://127.0.0.1:{listener.getsockname()[1]}?timeout_ms=100", kkt
    finally:
        for server in servers:
            server.stop()
        listener.close()


def test_a_marked_sale_through_a_real_port(served: tuple[str, FakeKkt]) -> None:
    url, kkt = served
    with open_printer(url, PrinterSettings()) as printer:
        status_before = printer.status()
        check = printer.check_code(new_op_id(), KM, KI, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(
            new_op_id(),
            Position(
                "Кроссовки",
                8990,
                tax="vat20",
                mark=MarkedItem(km=KM, ki=KI, industry=IndustryTags(tag1265="UUID=1")),
            ),
        )
        result = printer.close_receipt(new_op_id(), [Payment(8990, "cash")])

    assert status_before.shift_state == "opened" and status_before.model == "ШТРИХ-М-01Ф"
    assert status_before.health.shift_opened_at is not None
    assert check.accepted and check.validation.tag2106 == 15
    assert result.document_number == 41 and kkt.log[-1] == 0xFF45
    assert [c for c in kkt.log if c in (0xFF61, 0xFF69, 0x8D, 0xFF46, 0xFF4D, 0xFF67)] == [
        0xFF61,
        0xFF69,
        0x8D,
        0xFF46,
        0xFF4D,
        0xFF67,
    ]


# --------------------------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    ("url", "target", "options"),
    [
        (
            "shtrih:///dev/ttyACM0",
            "/dev/ttyACM0",
            {"baudrate": 115200, "password": 30, "timeout_ms": 500},
        ),
        (
            "shtrih:///dev/serial/by-id/usb-SHTRIH-M?baudrate=57600&password=1&timeout_ms=250",
            "/dev/serial/by-id/usb-SHTRIH-M",
            {"baudrate": 57600, "password": 1, "timeout_ms": 250},
        ),
        ("shtrih://192.0.2.30", "192.0.2.30:7778", {"password": 30}),
        ("shtrih://kkt.local:7000/", "kkt.local:7000", {"password": 30}),
        ("shtrih://[::1]:7778", "[::1]:7778", {"password": 30}),
    ],
)
def test_shtrih_urls(url: str, target: str, options: dict[str, int]) -> None:
    parsed = parse_printer_url(url)

    assert parsed.scheme == "shtrih" and parsed.target == target
    for key, value in options.items():
        assert parsed.options[key] == value


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("shtrih://", "expected an absolute device path"),
        ("shtrih:///", "expected an absolute device path"),
        ("shtrih://host/dev/tty", "expected an absolute device path"),
        ("shtrih:///dev/ttyACM0?speed=9600", "unknown option 'speed'"),
        ("shtrih:///dev/ttyACM0?baudrate=1234", "bad baudrate='1234'"),
        ("shtrih:///dev/ttyACM0?password=abc", "bad password='abc'"),
        ("shtrih:///dev/ttyACM0?password=123456789", "bad password='123456789'"),
        ("shtrih:///dev/ttyACM0?timeout_ms=5", "bad timeout_ms='5'"),
        ("shtrih:///dev/ttyACM0?timeout_ms=1&timeout_ms=2", "given twice"),
        ("shtrih://h:99999", "Port out of range"),
        ("shtrih://user:pw@h", "credentials do not belong in the URL"),
        ("shtrih://192.0.2.30:7778?baudrate=9600", "baudrate is for a serial port"),
    ],
)
def test_bad_shtrih_urls_restate_the_form(url: str, problem: str) -> None:
    with pytest.raises(PrinterURLError) as err:
        parse_printer_url(url)

    text = str(err.value)
    assert problem in text
    assert "shtrih:///dev/PORT or shtrih://HOST[:PORT]" in text
