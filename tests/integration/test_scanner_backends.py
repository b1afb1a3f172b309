"""Scanner backends deliver framed units to an asyncio queue from their reader threads:
the virtual backend, and the serial backend through a pyserial URL (``serial+socket://``)."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from typing import TypeVar

import pytest

from conftest import DAIRY, WATER, PtyPair, wait_until
from markd.errors import ScannerError
from markd.scanners import (
    Scan,
    ScannerEvent,
    ScannerState,
    ScanOverflow,
    get_virtual,
    open_scanner,
)
from markd.scanners.base import ScannerURL, parse_url
from markd.scanners.serial import SerialScanner
from markd.scanners.virtual import VirtualScanner

E = TypeVar("E", Scan, ScanOverflow, ScannerState)


async def next_event(queue: asyncio.Queue[ScannerEvent], kind: type[E]) -> E:
    """The next event of ``kind`` (others are skipped), within 5 s."""
    while True:
        event = await asyncio.wait_for(queue.get(), 5)
        if isinstance(event, kind):
            return event


async def test_virtual_scanner_delivers_through_the_framer() -> None:
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    with open_scanner("front", "virtual://front?max_length=100") as scanner:
        scanner.start(asyncio.get_running_loop(), queue)
        assert (await next_event(queue, ScannerState)) == ScannerState(
            "front", True, "virtual scanner 'front'"
        )
        virtual = get_virtual("front")
        virtual.feed(WATER.encode() + b"\r" + DAIRY.encode()[:5])
        virtual.feed(DAIRY.encode()[5:] + b"\r")
        virtual.scan(WATER)
        virtual.feed(b"x" * 150 + b"\r")
        events = [await next_event(queue, Scan) for _ in range(3)]
        overflow = await next_event(queue, ScanOverflow)
    assert [e.data for e in events] == [WATER.encode(), DAIRY.encode(), WATER.encode()]
    assert all(e.scanner == "front" and e.received > 0 for e in events)
    assert overflow == ScanOverflow("front", 150)
    with pytest.raises(ScannerError):
        get_virtual("front")  # closed scanners leave the registry


async def test_virtual_scanner_without_terminator_ends_units_on_a_gap() -> None:
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    with open_scanner("kiosk", "virtual://kiosk?terminator=none") as scanner:
        scanner.start(asyncio.get_running_loop(), queue)
        get_virtual("kiosk").scan(WATER)
        get_virtual("kiosk").scan(DAIRY)
        first, second = await next_event(queue, Scan), await next_event(queue, Scan)
    assert (first.data, second.data) == (WATER.encode(), DAIRY.encode())


class GarbledScanner(VirtualScanner):
    """A virtual scanner whose reader can also meet input it cannot decode, as a USB backend
    meets an unreadable report: :meth:`garble` hands it ``size`` such bytes, which the reader
    gives to :meth:`Scanner._bad_input` in order with the bytes fed around them."""

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self._script: queue.SimpleQueue[bytes | int | None] = queue.SimpleQueue()

    def feed(self, data: bytes) -> None:
        self._script.put(bytes(data))

    def garble(self, size: int) -> None:
        self._script.put(size)

    def _run(self) -> None:
        self._set_present(True, "garbled")
        while (item := self._script.get()) is not None and not self._stopping.is_set():
            if isinstance(item, int):
                self._bad_input(item)
            else:
                self._received(item)

    def _interrupt(self) -> None:
        self._script.put(None)


async def test_bad_input_after_a_flood_counts_each_byte_once() -> None:
    """With CR LF framing a flood holds back a lone CR (it could be half of the terminator).
    Unreadable input between units ends the flood, whose final count includes that CR; the
    bad-input report counts only the unreadable bytes, so the counts add up to what arrived."""
    queue_: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    url = parse_url("virtual://garbled?terminator=crlf&max_length=40")
    with GarbledScanner("garbled", url) as scanner:
        scanner.start(asyncio.get_running_loop(), queue_)
        scanner.feed(b"Z" * 50 + b"\r")  # 51 bytes: 50 thrown at once, the CR held back
        scanner.garble(3)
        scanner.feed(WATER.encode() + b"\r\n")
        events = [await next_event(queue_, ScanOverflow) for _ in range(3)]
        scan = await next_event(queue_, Scan)
    assert events == [
        ScanOverflow("garbled", 50, "too-long", ended=False),
        ScanOverflow("garbled", 51, "too-long", ended=True),
        ScanOverflow("garbled", 3, "bad-report"),
    ]
    assert sum(e.dropped for e in events if e.ended) == 51 + 3
    assert scan.data == WATER.encode()


def test_two_virtual_scanners_cannot_share_a_name() -> None:
    with open_scanner("a", "virtual://same"), pytest.raises(ScannerError):
        open_scanner("b", "virtual://same")


def test_scan_repr_hides_the_code() -> None:
    text = repr(Scan("front", DAIRY.encode(), 1.0))
    assert "dGVz" not in text and "LpGKy" not in text


class OneShotTcpPeer:
    """A serial-to-Ethernet converter in raw TCP mode: accepts, sends, closes on demand."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.release()

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


async def test_serial_scanner_over_a_pyserial_socket_url_survives_a_disconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SerialScanner, "reopen_interval", 0.1)
    peer = OneShotTcpPeer()
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    try:
        with open_scanner("lan", f"serial+socket://127.0.0.1:{peer.port}?terminator=lf") as scanner:
            scanner.start(asyncio.get_running_loop(), queue)
            assert (await next_event(queue, ScannerState)).present
            await wait_until(lambda: len(peer.connections) == 1)
            peer.connections[0].sendall(WATER.encode() + b"\r\n")
            assert (await next_event(queue, Scan)).data == WATER.encode()

            peer.connections[0].close()  # the converter drops the link
            gone = await next_event(queue, ScannerState)
            assert not gone.present
            back = await next_event(queue, ScannerState)  # reconnected
            assert back.present
            await wait_until(lambda: len(peer.connections) == 2)
            peer.connections[1].sendall(DAIRY.encode() + b"\n")
            assert (await next_event(queue, Scan)).data == DAIRY.encode()
    finally:
        peer.close()


async def test_close_is_prompt_and_idempotent(pty_pair: PtyPair) -> None:
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    scanner = open_scanner("front", f"serial://{pty_pair.path}")
    scanner.start(asyncio.get_running_loop(), queue)
    assert (await next_event(queue, ScannerState)).present
    loop = asyncio.get_running_loop()
    started = loop.time()
    scanner.close()
    scanner.close()
    assert loop.time() - started < 1.0
    # The port is released: another opener (exclusive flock) gets it at once.
    with open_scanner("again", f"serial://{pty_pair.path}") as again:
        again.start(loop, queue)
        assert (await next_event(queue, ScannerState)).present
