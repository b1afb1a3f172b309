"""One contract, every scanner backend.

:class:`TestScannerContract` runs unchanged against the virtual scanner, a serial scanner on a
pty and on a TCP "serial-to-Ethernet converter", and keyboard-mode and HID-POS scanners on the
simulated USB bus (pyusb's own code above :class:`~markd.scanners.simulated.SimulatedUsb`).
In a process started under umockdev (tests/integration/test_scanner_libusb.py starts one),
keyboard-mode and HID-POS scanners also run over pyusb's real libusb1 backend, their
``/dev/bus/usb`` nodes emulated at the kernel interface (``hid-kbd-libusb``,
``hid-pos-libusb``; tests/umockdev_usb.py).
With ``pytest --hil-scanner URL`` (repeatable) it also runs against real scanners: the test
then asks the operator to scan a known code, and the tests that need to pull a plug or send
garbage are skipped.

Each backend is driven by a *harness* that knows how to make its device send codes, garbage,
half a code, and how to unplug and replug it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import DAIRY, SHOES, TOBACCO_PACK, WATER, PtyPair, open_pty
from markd.scanners import (
    Scan,
    Scanner,
    ScannerEvent,
    ScannerState,
    ScanOverflow,
    get_virtual,
    open_scanner,
)
from markd.scanners.simulated import (
    SimulatedDevice,
    SimulatedUsb,
    keyboard_reports,
    pos_reports,
)
from markd.scanners.usb_common import use_backend
from umockdev_usb import Profile, shared_bus
from umockdev_usb import available as umockdev_unavailable

E = TypeVar("E", Scan, ScanOverflow, ScannerState)

BACKENDS = ["virtual", "serial-pty", "serial-socket", "hid-kbd", "hid-pos"]
#: Only in a process under umockdev's preload (see the module docstring).
LIBUSB_BACKENDS = ["hid-kbd-libusb", "hid-pos-libusb"]

#: The code an operator scans in hardware-in-loop runs (print it as a GS1 DataMatrix).
HIL_CODE = WATER


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" in metafunc.fixturenames:
        hil = [f"hil:{url}" for url in metafunc.config.getoption("--hil-scanner")]
        libusb = LIBUSB_BACKENDS if umockdev_unavailable() is None else []
        metafunc.parametrize("harness", BACKENDS + libusb + hil, indirect=True)


# --------------------------------------------------------------------------------------------
# Harnesses


class Harness:
    """Drives one backend's device. ``url`` is what the scanner under test opens."""

    url = ""
    can_unplug = True
    hil = False
    #: What a flood of garbage becomes: an overflow ("too-long") or unreadable reports.
    garbage_reason = "too-long"

    def open(self, url_options: str = "") -> Scanner:
        sep = "&" if "?" in self.url else "?"
        return open_scanner("front", self.url + (sep + url_options if url_options else ""))

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        """Send ``codes`` in one burst, or with ``pause`` seconds inside each code."""
        raise NotImplementedError

    async def send_partial(self, code: str) -> None:
        """Send the first part of ``code`` and nothing more."""
        raise NotImplementedError

    async def send_flood(self, length: int) -> None:
        """Send ``length`` characters without any end of code, then the end of it."""
        raise NotImplementedError

    async def send_garbage(self) -> None:
        """Send input the backend cannot make sense of."""
        raise NotImplementedError

    async def send_unterminated(self, code: str) -> None:
        """Send ``code`` without a terminator (for terminator=none)."""
        raise NotImplementedError

    def unplug(self) -> None:
        raise NotImplementedError

    def replug(self) -> None:
        raise NotImplementedError

    def assert_released(self) -> None:
        """After close: the device can be taken again (and USB gave its kernel driver back)."""

    def close(self) -> None:
        pass


class VirtualHarness(Harness):
    url = "virtual://contract"
    can_unplug = False

    def _feed(self, data: bytes) -> None:
        get_virtual("contract").feed(data)

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        for code in codes:
            data = code.encode() + b"\r"
            if pause:
                self._feed(data[:10])
                await asyncio.sleep(pause)
                data = data[10:]
            self._feed(data)

    async def send_partial(self, code: str) -> None:
        self._feed(code.encode()[:10])

    async def send_flood(self, length: int) -> None:
        self._feed(b"Z" * length)
        self._feed(b"\r")

    async def send_garbage(self) -> None:
        self._feed(b"\x00\xff\xfe\x1b[A\r")

    async def send_unterminated(self, code: str) -> None:
        self._feed(code.encode())


class PtyHarness(Harness):
    """A serial scanner: a pty behind a symlink (the udev name), replugged as a new pty."""

    def __init__(self, tmp_path: Path) -> None:
        self.link = tmp_path / "scanner0"
        self.pty: PtyPair | None = open_pty()
        self.dead: list[PtyPair] = []
        self.link.symlink_to(self.pty.path)
        self.url = f"serial://{self.link}"

    def _write(self, data: bytes) -> None:
        assert self.pty is not None
        os.write(self.pty.master, data)

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        for code in codes:
            data = code.encode() + b"\r"
            if pause:
                # A partial write: the first bytes, a pause, the rest.
                self._write(data[:7])
                await asyncio.sleep(pause)
                self._write(data[7:20])
                await asyncio.sleep(pause)
                data = data[20:]
            self._write(data)

    async def send_partial(self, code: str) -> None:
        self._write(code.encode()[:10])

    async def send_flood(self, length: int) -> None:
        self._write(b"Z" * length)
        await asyncio.sleep(0.05)
        self._write(b"\r")

    async def send_garbage(self) -> None:
        self._write(b"\x00\xff\xfe\x1b[A\r")

    async def send_unterminated(self, code: str) -> None:
        self._write(code.encode())

    def unplug(self) -> None:
        assert self.pty is not None
        self.pty.close_master()  # the slave side now reads EIO, like an unplugged CDC-ACM port
        self.dead.append(self.pty)
        self.pty = None

    def replug(self) -> None:
        self.pty = open_pty()
        self.link.unlink()
        self.link.symlink_to(self.pty.path)

    def assert_released(self) -> None:
        # pyserial took an exclusive flock; released, a second exclusive open succeeds.
        import serial

        port = serial.Serial(str(self.link), exclusive=True)
        port.close()

    def close(self) -> None:
        for pair in [*self.dead, *([self.pty] if self.pty else [])]:
            pair.close_master()
            os.close(pair.slave)


class SocketHarness(Harness):
    """A serial-to-Ethernet converter: unplug closes the link and stops listening."""

    def __init__(self) -> None:
        self.server: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connection: socket.socket | None = None
        self.connected = threading.Event()
        self._accepting()
        self.url = f"serial+socket://127.0.0.1:{self.port}"

    def _accepting(self) -> None:
        server = self.server
        assert server is not None

        def accept() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self.connection = conn
            self.connected.set()

        threading.Thread(target=accept, daemon=True).start()

    def _send(self, data: bytes) -> None:
        assert self.connected.wait(5), "the scanner never connected"
        assert self.connection is not None
        self.connection.sendall(data)

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        for code in codes:
            data = code.encode() + b"\r\n"
            if pause:
                self._send(data[:15])
                await asyncio.sleep(pause)
                data = data[15:]
            self._send(data)

    async def send_partial(self, code: str) -> None:
        self._send(code.encode()[:10])

    async def send_flood(self, length: int) -> None:
        self._send(b"Z" * length)
        self._send(b"\r")

    async def send_garbage(self) -> None:
        self._send(b"\x00\xff\xfe\x1b[A\r")

    async def send_unterminated(self, code: str) -> None:
        self._send(code.encode())

    def unplug(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server = None
        if self.connection is not None:
            self.connection.close()
        self.connected.clear()

    def replug(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        self._accepting()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.connection is not None:
            self.connection.close()


class UsbHarness(Harness):
    """A USB scanner on the simulated bus, which is installed for the test's duration."""

    def __init__(self, kind: str) -> None:
        self.bus = SimulatedUsb()
        self.kind = kind
        if kind == "hid-kbd":
            self.device = self.bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="K7"))
            self.url = "hid-kbd://0c2e:0b61"
            self.garbage_reason = "bad-report"
        else:
            self.device = self.bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
            self.url = "hid-pos://1eab:0010"
            self.garbage_reason = "bad-report"
        self._hook = use_backend(self.bus)
        self._hook.__enter__()

    def _reports(self, code: str, *, terminator: str = "\r", chunk: int = 56) -> list[bytes]:
        if self.kind == "hid-kbd":
            return keyboard_reports(code, gs="ctrl+]", terminator=terminator, rollover=True)
        return pos_reports(code.encode(), chunk=chunk)

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        for code in codes:
            reports = self._reports(code, chunk=20)
            if pause:
                half = len(reports) // 2
                self.device.queue(*reports[:half])
                self.device.queue(*reports[half:], delay=pause)
            else:
                self.device.queue(*reports)

    async def send_partial(self, code: str) -> None:
        reports = self._reports(code, chunk=10)
        self.device.queue(*reports[: max(1, len(reports) // 2)])

    async def send_flood(self, length: int) -> None:
        if self.kind == "hid-kbd":
            self.device.queue(*keyboard_reports("Z" * length, terminator="\r"))
        else:
            self.device.queue(*pos_reports(b"Z" * length))

    async def send_garbage(self) -> None:
        # Reports too short for the decoder: a keyboard report of 2 bytes, a HID-POS report
        # whose byte count exceeds its data field.
        if self.kind == "hid-kbd":
            self.device.queue(b"\x00\x00", b"\x01")
        else:
            bad = bytearray(pos_reports(b"abc")[0])
            bad[1] = 200
            self.device.queue(bytes(bad))

    async def send_unterminated(self, code: str) -> None:
        if self.kind == "hid-kbd":
            self.device.queue(*keyboard_reports(code, gs="ctrl+]", terminator=""))
        else:
            self.device.queue(*pos_reports(code.encode()))

    def unplug(self) -> None:
        self.bus.unplug(self.device)

    def unplug_in_stream(self) -> None:
        """Unplug once the queued reports have been read: ENODEV mid-code, as libusb does."""
        self.device.queue_unplug()

    def replug(self) -> None:
        self.bus.plug(self.device)

    def assert_released(self) -> None:
        assert self.device.kernel_driver == {0: True}, self.device.log
        assert not self.device.claimed

    def close(self) -> None:
        self._hook.__exit__(None, None, None)


class LibusbHarness(UsbHarness):
    """A USB scanner whose device node umockdev emulates: pyusb's libusb1 backend, libusb's
    Linux usbfs code and the kernel's ioctl interface (as tests/umockdev_usb.py emulates
    it) between markd and the reports."""

    def __init__(self, kind: str) -> None:
        bus = shared_bus()  # one testbed for the process (libusb keeps its view of the bus)
        self.kind = kind.removesuffix("-libusb")
        self.garbage_reason = "bad-report"
        if self.kind == "hid-kbd":
            self.device = bus.add(Profile(kind="keyboard", serial="K7"))
            self.url = "hid-kbd://0c2e:0b61"
        else:
            profile = Profile(kind="hid-pos", vid=0x1EAB, pid=0x0010, serial="P1")
            self.device = bus.add(profile)
            self.url = "hid-pos://1eab:0010"

    def unplug(self) -> None:
        # The tests unplug once what they sent "has been read", after a pause sized for the
        # simulated bus. Here every report is a URB through libusb, the kernel interface
        # and umockdev's forwarding (about 1 ms each, a real keyboard's interval at most):
        # wait for them, then pull the plug.
        assert self.device.drained(5.0), "the emulated scanner's reports were not all read"
        self.device.unplug()

    async def send_unterminated(self, code: str) -> None:
        # The gap tests time the code from its sending: here that is when its last report has
        # been read (each is a URB through umockdev, ~1 ms, more under load), not when the
        # reports were queued, or the delivery would eat the test's margin for the gap.
        await super().send_unterminated(code)
        assert await asyncio.to_thread(self.device.drained, 5.0), "reports not all read"

    def replug(self) -> None:
        self.device.plug()

    def assert_released(self) -> None:
        log = self.device.log
        assert self.device.driver_bound, log
        assert not self.device.claimed, log
        assert self.device.protocol == 1, log  # a keyboard back in report protocol
        assert not self.device.unknown, self.device.unknown

    def close(self) -> None:
        self.device.unplug()  # the next test's scanner is the only one on the bus
        self.device.close()


class HilHarness(Harness):
    """A real scanner: the operator scans; nothing here can unplug it or send garbage."""

    can_unplug = False
    hil = True

    def __init__(self, url: str, request: pytest.FixtureRequest) -> None:
        self.url = url
        self.capture = request.config.pluginmanager.getplugin("capturemanager")

    async def send_codes(self, codes: list[str], pause: float = 0.0) -> None:
        assert codes == [HIL_CODE], "hardware tests scan only the known test code"
        text = HIL_CODE.replace("\x1d", "<GS>")
        message = (
            f"\n>>> Scan the test DataMatrix now ({self.url}); it holds {text}\n"
            "    (print it with any GS1 DataMatrix generator, GS as FNC1).\n"
        )
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                print(message, flush=True)
        else:
            print(message, flush=True)


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    kind: str = request.param
    if kind == "virtual":
        made: Harness = VirtualHarness()
    elif kind == "serial-pty":
        made = PtyHarness(tmp_path)
    elif kind == "serial-socket":
        made = SocketHarness()
    elif kind in ("hid-kbd", "hid-pos"):
        made = UsbHarness(kind)
    elif kind in LIBUSB_BACKENDS:
        made = LibusbHarness(kind)
    else:
        made = HilHarness(kind.removeprefix("hil:"), request)
    try:
        yield made
    finally:
        made.close()


# --------------------------------------------------------------------------------------------
# Helpers


class Running:
    def __init__(self, scanner: Scanner, queue: asyncio.Queue[ScannerEvent]) -> None:
        self.scanner = scanner
        self.queue = queue

    async def next(self, kind: type[E], timeout: float = 5.0) -> E:
        """The next event of ``kind``; scans and overflows are never skipped silently."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {kind.__name__} within {timeout} s")
            try:
                event = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                pytest.fail(f"no {kind.__name__} within {timeout} s")
            if isinstance(event, kind):
                return event
            if isinstance(event, Scan | ScanOverflow):
                pytest.fail(f"expected {kind.__name__}, got {event!r}")

    async def scans(self, count: int, timeout: float = 5.0) -> list[bytes]:
        return [(await self.next(Scan, timeout)).data for _ in range(count)]

    async def flood(self, timeout: float = 5.0) -> list[ScanOverflow]:
        """The overflow events of one flood, up to its final one (``ended``)."""
        events = [await self.next(ScanOverflow, timeout)]
        while not events[-1].ended:
            events.append(await self.next(ScanOverflow, timeout))
        return events

    def quiet(self) -> bool:
        return self.queue.empty()


async def start(harness: Harness, url_options: str = "") -> Running:
    scanner = harness.open(url_options)
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    scanner.start(asyncio.get_running_loop(), queue)
    running = Running(scanner, queue)
    state = await running.next(ScannerState, 10)
    assert state.present, state.detail
    assert state.scanner == "front"
    return running


def needs_device_control(harness: Harness) -> None:
    if harness.hil:
        pytest.skip("needs control of the device (garbage, unplug); not on real hardware")


# --------------------------------------------------------------------------------------------
# The contract


class TestScannerContract:
    async def test_a_code_arrives_whole_with_gs_and_the_scanner_name(
        self, harness: Harness
    ) -> None:
        running = await start(harness)
        try:
            await harness.send_codes([HIL_CODE])
            scan = await running.next(Scan, 120 if harness.hil else 5)
            assert scan.data == HIL_CODE.encode()
            assert b"\x1d" in scan.data
            assert scan.scanner == "front" and scan.received > 0
            assert "938p9E" not in repr(scan)  # the crypto tail stays out of repr
        finally:
            running.scanner.close()

    async def test_several_codes_in_one_burst_are_split(self, harness: Harness) -> None:
        needs_device_control(harness)
        running = await start(harness)
        try:
            await harness.send_codes([WATER, SHOES, TOBACCO_PACK, DAIRY])
            assert await running.scans(4) == [
                c.encode() for c in (WATER, SHOES, TOBACCO_PACK, DAIRY)
            ]
        finally:
            running.scanner.close()

    async def test_a_code_split_across_reads_is_one_unit(self, harness: Harness) -> None:
        needs_device_control(harness)
        running = await start(harness)
        try:
            await harness.send_codes([SHOES], pause=0.05)
            assert await running.scans(1) == [SHOES.encode()]
        finally:
            running.scanner.close()

    async def test_a_flood_is_dropped_and_counted_whole_and_scanning_continues(
        self, harness: Harness
    ) -> None:
        needs_device_control(harness)
        running = await start(harness, "max_length=64")
        try:
            await harness.send_flood(600)
            events = await running.flood()
            # Told at once when the flood spans reads (most backends), then once more at its
            # end with every byte: the 600, not what was held when the limit was crossed.
            assert len(events) <= 2 and all(e.ended is False for e in events[:-1])
            assert all(e.scanner == "front" and e.reason == "too-long" for e in events)
            assert events[-1].dropped == 600
            await harness.send_codes([WATER])
            assert await running.scans(1) == [WATER.encode()]
        finally:
            running.scanner.close()

    async def test_garbage_never_stops_the_reader(self, harness: Harness) -> None:
        needs_device_control(harness)
        running = await start(harness)
        try:
            await harness.send_garbage()
            first = await asyncio.wait_for(running.queue.get(), 5)
            if harness.garbage_reason == "bad-report":
                assert isinstance(first, ScanOverflow) and first.reason == "bad-report"
            else:
                # Bytes are bytes to a serial port: the unit reaches the parser, which refuses it.
                assert isinstance(first, Scan) and first.data.startswith(b"\x00\xff")
            await harness.send_codes([DAIRY])
            assert await running.scans(1) == [DAIRY.encode()]
            assert running.scanner.present
        finally:
            running.scanner.close()

    async def test_without_terminator_a_gap_ends_each_code(self, harness: Harness) -> None:
        needs_device_control(harness)
        running = await start(harness, "terminator=none&gap_ms=40")
        try:
            await harness.send_unterminated(WATER)
            sent = time.monotonic()
            scan = await running.next(Scan)
            # Framed one gap after the last byte: not before (it would cut codes), and not a
            # poll interval later. The bound is loose for a busy 2-core machine; the benchmark
            # measures the real figure.
            assert scan.data == WATER.encode()
            assert scan.received - sent < 0.040 + 0.25
            await asyncio.sleep(0.1)
            await harness.send_unterminated(DAIRY)
            assert await running.scans(1) == [DAIRY.encode()]
        finally:
            running.scanner.close()

    async def test_without_terminator_the_gap_after_a_flood_keeps_the_next_code(
        self, harness: Harness
    ) -> None:
        # With no terminator only the pause can end the discarding of a flood; the next code
        # must then arrive whole, not vanish as the flood's "tail" without any record.
        needs_device_control(harness)
        running = await start(harness, "terminator=none&gap_ms=40&max_length=64")
        try:
            await harness.send_unterminated("Z" * 100)
            events = await running.flood()
            assert all(e.reason == "too-long" for e in events) and events[-1].dropped == 100
            await asyncio.sleep(0.2)
            await harness.send_unterminated(WATER)
            assert await running.scans(1) == [WATER.encode()]
        finally:
            running.scanner.close()

    async def test_unplug_mid_code_is_noticed_and_replug_resumes(self, harness: Harness) -> None:
        if not harness.can_unplug:
            pytest.skip("this backend has no device to unplug")
        running = await start(harness)
        try:
            await harness.send_partial(WATER)
            await asyncio.sleep(0.2)  # the half code has been read
            unplugged = time.monotonic()
            harness.unplug()
            gone = await running.next(ScannerState)
            noticed = time.monotonic() - unplugged
            assert not gone.present and gone.scanner == "front"
            assert noticed < 1.0, f"unplug noticed after {noticed:.3f} s"

            # Absent means waiting, not spinning on a dead descriptor.
            cpu = time.process_time()
            await asyncio.sleep(0.5)
            assert time.process_time() - cpu < 0.25
            assert running.quiet()  # one absent record, not one per retry

            replugged = time.monotonic()
            harness.replug()
            back = await running.next(ScannerState, 5)
            resumed = time.monotonic() - replugged
            assert back.present
            assert resumed < 2.0, f"replug resumed after {resumed:.3f} s"

            # The half code from before the unplug does not prefix the next one.
            await harness.send_codes([DAIRY])
            assert await running.scans(1) == [DAIRY.encode()]
        finally:
            running.scanner.close()

    async def test_a_flood_cut_by_an_unplug_still_gets_its_whole_count(
        self, harness: Harness
    ) -> None:
        if not harness.can_unplug:
            pytest.skip("this backend has no device to unplug")
        running = await start(harness, "max_length=64")
        try:
            await harness.send_unterminated("Z" * 300)
            first = await running.next(ScanOverflow)
            assert first.ended is False  # told at once; the flood has no end yet
            await asyncio.sleep(0.2)  # all 300 bytes have been read
            harness.unplug()
            final = await running.next(ScanOverflow)
            assert (final.dropped, final.ended) == (300, True)
            gone = await running.next(ScannerState)
            assert not gone.present
        finally:
            running.scanner.close()

    async def test_close_is_prompt_and_gives_the_device_back(self, harness: Harness) -> None:
        needs_device_control(harness)
        running = await start(harness)
        started = time.monotonic()
        await asyncio.to_thread(running.scanner.close)
        assert time.monotonic() - started < 1.0
        running.scanner.close()  # idempotent
        harness.assert_released()
