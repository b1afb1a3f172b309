"""Protocol 1 of a Shtrih-M ККТ: the link layer, over a serial port or a TCP socket.

The exchange (the vendor's protocol document «Протокол работы ККТ» v2.0, «Стандартный нижний
уровень»; its JavaPOS driver ``PrinterProtocol_1.java``):

* the host sends ``ENQ`` (0x05); the ККТ answers ``NAK`` (0x15) when it waits for a command,
  ``ACK`` (0x06) when it is preparing an answer (the host reads that answer first), nothing
  when there is no link;
* a command is the frame ``STX(0x02) LEN CMD DATA LRC``: ``LEN`` counts the command code (one
  byte, or two for the ``0xFFxx`` commands) and the data, ``LRC`` is the XOR of ``LEN`` and
  every byte after it. The ККТ confirms a frame with ``ACK``, or ``NAK`` when it was damaged —
  that is, not taken: the host sends it again;
* the answer is the frame ``STX LEN CMD ERR DATA LRC``; the host confirms it with ``ACK``. A
  damaged answer gets ``NAK``, and then — the protocol document: «ККТ ждет уведомления ENQ
  для повторения ответа» — an ``ENQ``, to which the ККТ answers ``ACK`` and the answer again;
* so an answer that never came is asked for with ``ENQ`` as well: ``ACK`` and the answer
  follows (the command ran once). ``NAK`` means the ККТ has no answer to give: a command that
  reads is sent again, one that changes the device never is — its outcome is unknown
  (:class:`~markd.errors.OutcomeUnknown`) and the sale session reconciles.

Every count is bounded (ENQ, resent frames, damaged answers, bytes of noise before an
``STX``), every read has a time limit: the byte time limit between bytes and for the answer to
an ``ENQ`` or a frame (``timeout_ms``, 500 ms by default), the command's own for its answer
(:data:`~markd.fiscal.shtrih.commands.COMMANDS`). A ККТ that does not answer ``ENQ`` is
:class:`~markd.errors.PrinterUnavailable`; a port or socket that vanishes (``EIO``, ``ENXIO``,
``ENODEV``, the device file removed, the far end closing the socket) is
:class:`~markd.errors.PrinterGone`, and the port is opened again on the next call, so a ККТ
plugged back in simply answers.

The framing itself (:func:`frame`, :func:`lrc`, :func:`split_answer`) is plain functions on
bytes, tested with byte strings; :class:`Link` adds the exchange over a :class:`Port`.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from markd.errors import DriverMissing, OutcomeUnknown, PrinterGone, PrinterUnavailable
from markd.fiscal.shtrih.commands import MAX_BODY, Request
from markd.fiscal.shtrih.errors import MalformedAnswer

STX = 0x02
ENQ = 0x05
ACK = 0x06
NAK = 0x15

#: Bytes of noise skipped while waiting for an ``STX`` or a control byte before giving up.
MAX_NOISE = 1024
#: The pause that counts as a quiet line when the rest of a damaged frame is dropped, and the
#: most bytes dropped that way.
DRAIN_QUIET_S = 0.05
MAX_DRAIN = 4096
#: Errors of a port whose device is no longer there.
GONE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.EBADF})


def lrc(data: bytes) -> int:
    """XOR of every byte (the frame's ``LEN`` and what follows it)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def frame(body: bytes) -> bytes:
    """``STX LEN body LRC`` for a command (or answer) body."""
    if not body or len(body) > MAX_BODY:
        raise ValueError(f"a frame body is 1 to {MAX_BODY} bytes, got {len(body)}")
    head = bytes([len(body)]) + body
    return bytes([STX]) + head + bytes([lrc(head)])


@dataclass(frozen=True)
class Answer:
    command: int
    error: int
    data: bytes


def split_answer(body: bytes, command: int) -> Answer:
    """An answer body (``CMD ERR DATA``) for ``command``; :class:`MalformedAnswer` when it is
    too short or answers another command."""
    name = f"0x{command:04X}" if command > 0xFF else f"0x{command:02X}"
    if command > 0xFF:
        if len(body) < 3 or body[0] != 0xFF or body[1] != command & 0xFF:
            raise MalformedAnswer(f"Shtrih {name}: the answer {body[:3].hex()} is not for it")
        return Answer(command, body[2], bytes(body[3:]))
    if len(body) < 2 or body[0] != command:
        raise MalformedAnswer(f"Shtrih {name}: the answer {body[:2].hex()} is not for it")
    return Answer(command, body[1], bytes(body[2:]))


# --------------------------------------------------------------------------------------------
# Ports


class PortGone(Exception):
    """The port or socket vanished under the link."""


class Port(Protocol):
    """A byte stream to the ККТ."""

    where: str

    def open(self) -> None:
        """Open it; :class:`PortGone` when the device is not there, PrinterUnavailable when
        it cannot be opened for another reason."""
        ...

    def close(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, size: int, timeout_s: float) -> bytes:
        """Up to ``size`` bytes, waiting at most ``timeout_s``; ``b""`` when none came."""
        ...


class SerialPort:
    """A serial port (RS-232, USB-CDC ``/dev/ttyACM*``, a pty) through pyserial, 8N1."""

    def __init__(self, path: str, baudrate: int) -> None:
        self.path = path
        self.baudrate = baudrate
        self.where = path
        self._serial: object | None = None
        self._timeout: float | None = None

    def open(self) -> None:
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - pyserial is a dependency
            raise DriverMissing("shtrih:// on a serial port needs pyserial") from exc
        try:
            # exclusive: an advisory lock, so a second markd or markctl cannot interleave
            # bytes with ours; programs that take no lock (ModemManager) are kept off the
            # port by a udev rule (docs/fiscal.md, "Wiring").
            port = serial.Serial(
                self.path, self.baudrate, timeout=0, write_timeout=5, exclusive=True
            )
        except serial.SerialException as exc:
            if _gone(exc) or not _exists(self.path):
                raise PortGone(f"{self.path}: {exc}") from exc
            raise PrinterUnavailable(f"Shtrih {self.path}: cannot open: {exc}") from exc
        except OSError as exc:
            raise PortGone(f"{self.path}: {exc}") from exc
        port.reset_input_buffer()
        self._serial = port
        self._timeout = 0.0

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a vanished port may fail to close
                pass

    def write(self, data: bytes) -> None:
        port = self._port()
        try:
            port.write(data)
            port.flush()
        except Exception as exc:  # noqa: BLE001 - SerialException, OSError: the port is gone
            raise PortGone(f"{self.path}: write failed: {exc}") from exc

    def read(self, size: int, timeout_s: float) -> bytes:
        port = self._port()
        try:
            # pyserial reconfigures the line (a tcsetattr) whenever its timeout changes, and
            # every wait here counts down to a deadline of its own: in steps of 50 ms the
            # timeout rarely changes (a wait may run up to 50 ms past its deadline).
            timeout = math.ceil(max(timeout_s, 0.0) * 20) / 20
            if timeout != self._timeout:
                port.timeout = timeout  # type: ignore[attr-defined]
                self._timeout = timeout
            data: bytes = port.read(size)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - pyserial reports EIO as SerialException
            raise PortGone(f"{self.path}: read failed: {exc}") from exc
        if not data and not _exists(self.path):
            # Some USB-serial drivers read nothing forever once unplugged: the device file
            # going away is what tells.
            raise PortGone(f"{self.path}: the device file is gone")
        return data

    def _port(self) -> object:
        if self._serial is None:
            raise PortGone(f"{self.path}: not open")
        return self._serial  # type: ignore[return-value]


class TcpPort:
    """A TCP connection (Ethernet and Wi-Fi models speak the same frames, port 7778)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.where = f"{host}:{port}"
        self._socket: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        except OSError as exc:
            raise PrinterUnavailable(f"Shtrih {self.where}: cannot connect: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def write(self, data: bytes) -> None:
        sock = self._sock()
        try:
            sock.settimeout(5.0)
            sock.sendall(data)
        except OSError as exc:
            raise PortGone(f"{self.where}: send failed: {exc}") from exc

    def read(self, size: int, timeout_s: float) -> bytes:
        sock = self._sock()
        try:
            sock.settimeout(max(timeout_s, 0.001))
            data = sock.recv(size)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise PortGone(f"{self.where}: receive failed: {exc}") from exc
        if not data:
            raise PortGone(f"{self.where}: the ККТ closed the connection")
        return data

    def _sock(self) -> socket.socket:
        if self._socket is None:
            raise PortGone(f"{self.where}: not connected")
        return self._socket


def _gone(exc: BaseException) -> bool:
    number = getattr(exc, "errno", None)
    return number in GONE_ERRNOS


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


# --------------------------------------------------------------------------------------------
# The exchange


class _NoFrame(Exception):
    """No ``STX`` came in time."""


class _BadFrame(Exception):
    """A frame came damaged: wrong LRC, or cut short."""


class _AnswerGone(Exception):
    """The ККТ has no answer to give (``ENQ`` → ``NAK``) for a command that only reads."""


@dataclass(frozen=True)
class LinkLimits:
    #: Between bytes, and for the answer to an ``ENQ`` or a frame.
    byte_timeout_s: float = 0.5
    #: ``ENQ`` sent before the device counts as not answering.
    enq_attempts: int = 3
    #: A command frame sent at most this often (``NAK``, no confirmation).
    send_attempts: int = 3
    #: Damaged answers, or answers asked for again with ``ENQ``, at most this often.
    answer_attempts: int = 3
    #: A reading command whose answer was lost is sent again at most this often.
    read_retries: int = 1
    #: Earlier answers read and dropped before a new command.
    stale_answers: int = 2
    #: While a command runs, the ККТ is asked with ``ENQ`` this often whether its answer
    #: is still coming (``ACK``) or was lost (``NAK``).
    probe_interval_s: float = 1.0


class Link:
    """Commands and their answers over a :class:`Port`, one at a time (the caller holds the
    printer's lock). The port is opened on first use and again after it vanished."""

    def __init__(self, port: Port, limits: LinkLimits | None = None) -> None:
        self.port = port
        self.limits = limits or LinkLimits()
        self._open = False
        #: Bytes read from the ККТ so far (to tell whether anything came back).
        self._heard = 0

    def close(self) -> None:
        self._open = False
        self.port.close()

    def exchange(self, request: Request, timeout_s: float, changes_state: bool) -> Answer:
        """Send ``request`` and return its answer (the error byte not yet judged)."""
        written = False
        try:
            if not self._open:
                self.port.open()
                self._open = True
            for attempt in range(self.limits.read_retries + 1):
                self._sync(timeout_s)
                written = True
                try:
                    body = self._send(request, timeout_s, changes_state)
                except _AnswerGone:
                    if attempt < self.limits.read_retries:
                        continue
                    raise PrinterUnavailable(
                        f"Shtrih {self.port.where}: the answer to {_name(request)} was lost twice"
                    ) from None
                try:
                    return split_answer(body, request.command)
                except MalformedAnswer as exc:
                    if changes_state:
                        raise OutcomeUnknown(
                            f"Shtrih {self.port.where}: {exc.message}; the command may have run"
                        ) from exc
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        except PortGone as exc:
            self.close()
            if written and changes_state:
                raise OutcomeUnknown(
                    f"Shtrih {self.port.where}: the port vanished during {_name(request)}; "
                    f"the command may have run ({exc})"
                ) from exc
            raise PrinterGone(f"Shtrih {self.port.where}: the port vanished: {exc}") from exc

    # -- steps ----------------------------------------------------------------------------------

    def _sync(self, timeout_s: float) -> None:
        """``ENQ`` until the ККТ waits for a command (``NAK``); an answer it still holds
        (``ACK``, or a frame already on its way) is read, confirmed and dropped first."""
        stale = 0
        for _ in range(self.limits.enq_attempts):
            reply = self._probe()
            if reply == NAK:
                return
            if reply in (ACK, STX):
                stale += 1
                if stale > self.limits.stale_answers:
                    break
                try:
                    if reply == STX:
                        self._read_body()
                    else:
                        self._read_frame(time.monotonic() + timeout_s + self.limits.byte_timeout_s)
                    self.port.write(bytes([ACK]))
                except (_NoFrame, _BadFrame):
                    self._drain()  # what is left of it must not answer the next ENQ
        raise PrinterUnavailable(
            f"Shtrih {self.port.where}: the ККТ does not answer (no NAK to ENQ)"
        )

    def _send(self, request: Request, timeout_s: float, changes_state: bool) -> bytes:
        data = frame(request.body)
        for _ in range(self.limits.send_attempts):
            self.port.write(data)
            mark = self._heard
            reply = self._control(self.limits.byte_timeout_s)
            clean = self._heard - mark == 1  # the reply was the first byte that came
            if reply == NAK and (clean or not changes_state):
                continue  # damaged on the way: not taken, send again
            if reply == STX and clean:
                # The ACK was lost on the line and the answer is already coming: read it
                # (its bytes must not be taken for control bytes: an FF45 answer's LEN is
                # 0x15, a NAK).
                return self._await_answer(request, timeout_s, changes_state, started=True)
            if reply == ACK and clean:
                return self._await_answer(request, timeout_s, changes_state)
            # No clean confirmation: the frame may or may not have arrived. Let the line go
            # quiet, then ask.
            drained = self._drain()
            heard = drained or self._heard != mark
            state = self._probe()
            if state == NAK:
                if changes_state and heard:
                    # Something came back that was not a clean confirmation: the command
                    # may have arrived and run. Never send a state-changing command twice.
                    raise self._lost(request, changes_state, "an unreadable reply")
                continue  # waiting for a command: ours never arrived
            if state == STX:
                return self._await_answer(request, timeout_s, changes_state, started=True)
            if state == ACK or heard:
                # ACK: preparing the answer. Silence after bytes came (a late ACK, drained):
                # busy with the command; its answer is awaited up to the command's limit.
                return self._await_answer(request, timeout_s, changes_state)
            raise self._lost(request, changes_state, "no confirmation of the command")
        raise PrinterUnavailable(
            f"Shtrih {self.port.where}: {_name(request)} refused by the link "
            f"{self.limits.send_attempts} times"
        )

    def _await_answer(
        self, request: Request, timeout_s: float, changes_state: bool, started: bool = False
    ) -> bytes:
        """The answer to a command the ККТ took. While it runs, the ККТ is asked with ``ENQ``
        every :attr:`LinkLimits.probe_interval_s`: ``ACK`` (preparing the answer) or silence
        (busy) means wait on, ``NAK`` means it has no answer to give."""
        damaged = 0
        asked = 0
        deadline = time.monotonic() + timeout_s + self.limits.byte_timeout_s
        while True:
            try:
                if started:
                    started = False
                    body = self._read_body()
                else:
                    wait = min(deadline, time.monotonic() + self.limits.probe_interval_s)
                    body = self._read_frame(wait)
            except _BadFrame:
                damaged += 1
                if damaged > self.limits.answer_attempts:
                    raise self._lost(
                        request, changes_state, "the answer kept coming damaged"
                    ) from None
                # What is left of the damaged frame must not be read as control bytes.
                self._drain()
                self.port.write(bytes([NAK]))
                # The ККТ repeats its answer on the next ENQ.
                state = self._probe()
                if state == STX:
                    started = True
                elif state != ACK:
                    raise self._lost(
                        request, changes_state, "the answer was not repeated"
                    ) from None
                deadline = time.monotonic() + timeout_s + self.limits.byte_timeout_s
                continue
            except _NoFrame:
                final = time.monotonic() >= deadline
                state = self._probe()
                if state == STX:
                    started = True  # the answer crossed our ENQ
                    continue
                if state == ACK:
                    if final:
                        asked += 1
                        if asked > self.limits.answer_attempts:
                            raise self._lost(request, changes_state, "no answer") from None
                        deadline = time.monotonic() + timeout_s + self.limits.byte_timeout_s
                    continue
                if state == NAK:
                    if changes_state:
                        raise OutcomeUnknown(
                            f"Shtrih {self.port.where}: the answer to {_name(request)} was "
                            "lost and the ККТ has none to repeat; the command may have run"
                        ) from None
                    raise _AnswerGone from None
                if final:
                    raise self._lost(request, changes_state, "the ККТ stopped answering") from None
                continue  # busy: no answer to ENQ while it works
            self.port.write(bytes([ACK]))
            return body

    def _lost(self, request: Request, changes_state: bool, why: str) -> Exception:
        text = f"Shtrih {self.port.where}: {_name(request)}: {why}"
        if changes_state:
            return OutcomeUnknown(text + "; the command may have run")
        return PrinterUnavailable(text)

    # -- bytes ----------------------------------------------------------------------------------

    def _drain(self) -> bool:
        """Read and drop whatever is still coming until the line is quiet (a short pause,
        at most :data:`MAX_DRAIN` bytes); True if anything came."""
        quiet = min(self.limits.byte_timeout_s, DRAIN_QUIET_S)
        drained = 0
        while drained < MAX_DRAIN:
            chunk = self._read(256, quiet)
            if not chunk:
                break
            drained += len(chunk)
        return drained > 0

    def _read(self, size: int, timeout_s: float) -> bytes:
        """The port's read, counting what came (``_heard``)."""
        data = self.port.read(size, timeout_s)
        self._heard += len(data)
        return data

    def _probe(self) -> int | None:
        self.port.write(bytes([ENQ]))
        return self._control(self.limits.byte_timeout_s)

    def _control(self, timeout_s: float) -> int | None:
        """The next ``ACK``, ``NAK`` or ``STX`` (an answer frame starting) within
        ``timeout_s``, noise skipped; None if none came."""
        deadline = time.monotonic() + timeout_s
        for _ in range(MAX_NOISE):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._read(1, left)
            if not data:
                return None
            if data[0] in (ACK, NAK, STX):
                return data[0]
        return None

    def _read_frame(self, deadline: float) -> bytes:
        """One frame's body (``CMD ERR DATA``), its LRC checked; noise before ``STX``
        skipped."""
        for _ in range(MAX_NOISE):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoFrame
            data = self._read(1, left)
            if not data:
                raise _NoFrame
            if data[0] == STX:
                return self._read_body()
        raise _BadFrame

    def _read_body(self) -> bytes:
        """The rest of a frame whose ``STX`` was read."""
        length = self._exact(1)
        if length is None:
            raise _BadFrame
        rest = self._exact(length[0] + 1)
        if rest is None:
            raise _BadFrame
        if lrc(length + rest[:-1]) != rest[-1]:
            raise _BadFrame
        return rest[:-1]

    def _exact(self, size: int) -> bytes | None:
        """``size`` bytes, each within the byte time limit of the one before; None if cut."""
        data = b""
        while len(data) < size:
            chunk = self._read(size - len(data), self.limits.byte_timeout_s)
            if not chunk:
                return None
            data += chunk
        return data


def _name(request: Request) -> str:
    code = request.command
    return f"command 0x{code:04X}" if code > 0xFF else f"command 0x{code:02X}"


__all__ = [
    "ACK",
    "ENQ",
    "NAK",
    "STX",
    "Answer",
    "Link",
    "LinkLimits",
    "Port",
    "PortGone",
    "SerialPort",
    "TcpPort",
    "frame",
    "lrc",
    "split_answer",
]
