"""The device side of protocol 1's link layer, without I/O: bytes from the host go in, bytes
for the host come out (the h11 shape: the server owns the port, the clock and the threads).

What the device does, from protocol_kkt_2.0.txt ("Стандартный нижний уровень" and its state
diagrams) and the host side in PrinterProtocol_1.java, in our words:

* ``ENQ`` from the host: ``NAK`` when the device waits for a command, ``ACK`` when it has an
  answer the host has not taken — and then that answer again.
* A command frame ``STX LEN CMD… DATA LRC`` (``LEN`` counts the command and data bytes, the
  ``LRC`` is the XOR of ``LEN`` and them): a good one is acknowledged with ``ACK``, run, and its
  answer ``STX LEN CMD… ERR DATA LRC`` sent; a bad ``LRC`` (or a zero ``LEN``) gets ``NAK``.
* The host acknowledges the answer with ``ACK`` (taken however late it comes, so an answer
  the host has acknowledged is never replayed). A ``NAK`` from the host does not make the
  device send it again at once: it keeps the answer for the host's next ``ENQ`` (the protocol
  text says so; the host driver then sends ENQ and reads the answer after the ``ACK``). No
  acknowledgement within the timeout leaves it kept the same way.
* Between the bytes of a frame the device waits at most the byte timeout (50 ms by default on
  a real device; longer here, for loaded test machines); a frame cut short is dropped without
  an answer, and the bytes after it are read afresh. Bytes that begin no frame are ignored;
  ``STX`` always starts a new frame (a host that sends a new command instead of asking for
  a kept answer gives that answer up).
"""

from __future__ import annotations

from typing import Protocol

STX = 0x02
ENQ = 0x05
ACK = 0x06
NAK = 0x15


class Device(Protocol):
    def execute(self, command: bytes) -> object: ...

    def gone(self) -> bool: ...

    def corrupt_next_frame(self) -> bool: ...


def answer_frame(body: bytes, *, corrupt: bool = False) -> bytes:
    """``STX LEN body LRC`` (``corrupt``: a wrong LRC, for the ``bad_lrc`` fault)."""
    size = len(body)
    lrc = size
    for byte in body:
        lrc ^= byte
    if corrupt:
        lrc ^= 0xFF
    return bytes((STX, size)) + body + bytes((lrc,))


class Link:
    """One host connection's link state. ``receive(data, now)`` returns what to write back;
    call :meth:`poll` when nothing arrives so timeouts run (it never writes)."""

    def __init__(
        self, device: Device, *, byte_timeout: float = 0.2, ack_timeout: float = 1.0
    ) -> None:
        self.device = device
        self.byte_timeout = byte_timeout
        self.ack_timeout = ack_timeout
        #: The answer (``CMD ERR DATA``) the host has not acknowledged yet.
        self.pending: bytes | None = None
        #: Whether ``pending`` went out at least once (a lost answer has not).
        self._sent = False
        self._frame: bytearray | None = None
        self._frame_deadline = 0.0
        self._awaiting_ack = False
        self._ack_deadline = 0.0

    def reset(self) -> None:
        """A new connection: a frame half received is dropped; a kept answer stays kept."""
        self._frame = None
        self._awaiting_ack = False

    def poll(self, now: float) -> None:
        if self._frame is not None and now > self._frame_deadline:
            self._frame = None  # cut short: no answer at all
        if self._awaiting_ack and now > self._ack_deadline:
            self._awaiting_ack = False  # kept for the next ENQ

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._frame is not None:
            deadlines.append(self._frame_deadline)
        if self._awaiting_ack:
            deadlines.append(self._ack_deadline)
        return min(deadlines) if deadlines else None

    def receive(self, data: bytes, now: float) -> bytes:
        self.poll(now)
        out = bytearray()
        gone = self.device.gone()
        for byte in data:
            if gone:
                self._frame = None
                continue
            if self._frame is not None:
                self._frame.append(byte)
                self._frame_deadline = now + self.byte_timeout
                if len(self._frame) == self._frame[0] + 2:
                    frame, self._frame = bytes(self._frame), None
                    gone = self._command(frame, now, out)
                continue
            if byte == STX:
                self.pending = None
                self._awaiting_ack = False
                self._frame = bytearray()
                self._frame_deadline = now + self.byte_timeout
            elif byte == ENQ:
                if self.pending is None:
                    out.append(NAK)
                else:
                    out.append(ACK)
                    self._send(self.pending, now, out)
            elif byte == ACK and self.pending is not None and self._sent:
                # Taken, even when the host was slower than the ack timeout: an answer the
                # host has acknowledged is never replayed to a later ENQ.
                self.pending = None
                self._awaiting_ack = False
            elif byte == NAK and self._awaiting_ack:
                self._awaiting_ack = False  # kept: the host asks again with ENQ
            # anything else: noise on the line
        return bytes(out)

    def _send(self, body: bytes, now: float, out: bytearray) -> None:
        out += answer_frame(body, corrupt=self.device.corrupt_next_frame())
        self._sent = True
        self._awaiting_ack = True
        self._ack_deadline = now + self.ack_timeout

    def _command(self, frame: bytes, now: float, out: bytearray) -> bool:
        """A whole frame (``LEN … LRC``) is in; returns whether the device has gone."""
        size = frame[0]
        lrc = 0
        for byte in frame[:-1]:
            lrc ^= byte
        if size == 0 or lrc != frame[-1]:
            out.append(NAK)
            return False
        out.append(ACK)
        answer = self.device.execute(frame[1:-1])
        if getattr(answer, "silent", False):
            self.pending = None
            return True
        body: bytes = answer.body  # type: ignore[attr-defined]
        self.pending = body
        self._sent = False
        if getattr(answer, "lost", False):
            return False  # run, answer kept, nothing sent: a later ENQ gets it
        self._send(body, now, out)
        return False
