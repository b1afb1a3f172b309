"""A simulated USB bus for pyusb: HID scanners without hardware.

:class:`SimulatedUsb` implements pyusb's backend interface (``usb.backend.IBackend``), the
layer libusb sits behind. With it installed (:func:`markd.scanners.usb_common.use_backend`),
the USB scanner backends run unchanged: ``usb.core.find`` enumerates the simulated devices,
``is_kernel_driver_active``/``detach_kernel_driver``, ``set_configuration``,
``claim_interface``, string and report descriptors and ``Endpoint.read`` all reach this
module, which answers the way libusb does on Linux:

* a read on an unplugged device raises ``USBError`` with errno ENODEV (LIBUSB_ERROR_NO_DEVICE),
  at once, also for a read already waiting; a read that times out raises ``USBTimeoutError``;
* claiming an interface a kernel driver still holds, or that another handle claimed, raises
  EBUSY; setting a configuration while a kernel driver is bound raises EBUSY;
* :meth:`SimulatedUsb.deny_access` makes the next opens fail with EACCES, as they do in the
  moment between a plug and udev applying the rules' group and mode;
* a keyboard interface takes the LED output report (SET_REPORT) into
  :attr:`SimulatedDevice.leds`; one made with ``leds=False`` STALLs it, as a scanner without
  LEDs does.

A :class:`SimulatedDevice` plays report streams: queue reports (:meth:`~SimulatedDevice.queue`,
:meth:`~SimulatedDevice.type_text`) or a capture file (:meth:`~SimulatedDevice.play`) with
pauses and an unplug in the middle. Everything it is asked to do lands in
:attr:`SimulatedDevice.log` ("detach 0", "claim 0", "attach 0", ...), so tests can check that
the kernel driver was given back.

:func:`keyboard_reports` and :func:`pos_reports` encode text the way scanners in keyboard and
HID-POS mode send it (the recordings in ``tests/data/scanners/`` were made with them).

>>> import usb.core
>>> bus = SimulatedUsb()
>>> scanner = bus.add(SimulatedDevice(0x0c2e, 0x0b61, serial="A1"))
>>> device = usb.core.find(backend=bus, idVendor=0x0c2e)
>>> device.serial_number, scanner.address == device.address
('A1', True)
"""

from __future__ import annotations

import array
import errno
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from markd.scanners import keymap
from markd.scanners.capture import Capture
from markd.scanners.hid_pos import STANDARD_DATA_LENGTH, STANDARD_REPORT_DESCRIPTOR

# libusb's error numbers (libusb.h) with the errno pyusb attaches to them.
_ERRORS = {
    "access": (-3, errno.EACCES, "Access denied (insufficient permissions)"),
    "no-device": (-4, errno.ENODEV, "No such device (it may have been disconnected)"),
    "not-found": (-5, errno.ENOENT, "Entity not found"),
    "busy": (-6, errno.EBUSY, "Resource busy"),
    "timeout": (-7, errno.ETIMEDOUT, "Operation timed out"),
    "overflow": (-8, errno.EOVERFLOW, "Overflow"),
    "pipe": (-9, errno.EPIPE, "Pipe error"),
}


def _error(kind: str) -> usb.core.USBError:
    code, number, text = _ERRORS[kind]
    if kind == "timeout":
        return usb.core.USBTimeoutError(text, code, number)
    return usb.core.USBError(text, code, number)


#: A boot keyboard's report descriptor (HID 1.11 appendix B.1, without the LED output).
KEYBOARD_REPORT_DESCRIPTOR = bytes.fromhex(
    "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    " 95 01 75 08 81 01 95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
)

_GET_DESCRIPTOR = 0x06
_SET_REPORT = 0x09
_SET_IDLE = 0x0A
_SET_PROTOCOL = 0x0B

# --------------------------------------------------------------------------------------------
# Encoders: text → the reports a scanner sends


def keyboard_reports(
    text: str | bytes,
    *,
    gs: str = "ctrl+]",
    caps_lock: bool = False,
    rollover: bool = False,
    repeat: bool = False,
    alt_codes: bool = False,
    terminator: str = "\r",
    host_caps_lock: bool = False,
) -> list[bytes]:
    """The boot reports a keyboard-mode scanner sends for ``text`` + ``terminator``.

    ``gs`` is how GS is typed: ``"ctrl+]"``, ``"alt+0029"``, ``"f1"`` … ``"f12"``, or
    ``"lost"`` (left out, as many scanners do). ``caps_lock`` wraps the text in Caps Lock
    presses and inverts Shift on letters, like scanners that "emulate Caps Lock".
    ``host_caps_lock`` inverts Shift on letters without any Caps Lock press, as a scanner
    with automatic Caps Lock compensation does while the host's LED report says Caps Lock
    is on.
    ``rollover`` presses each key before releasing the previous one; ``repeat`` sends each
    report twice; ``alt_codes`` types every character as Alt+keypad digits.
    """
    chars = text.decode("latin-1") if isinstance(text, bytes) else text
    reports: list[bytes] = []

    def report(modifiers: int, *keys: int) -> None:
        slots = [k for k in keys if k][:6]
        body = bytes([modifiers, 0, *slots, *([0] * (6 - len(slots)))])
        reports.append(body)
        if repeat:
            reports.append(body)

    def alt_code(code: int) -> None:
        report(keymap.LEFT_ALT)
        for digit in f"{code:04d}":
            usage = next(u for u, d in keymap.KEYPAD_DIGITS.items() if d == int(digit))
            report(keymap.LEFT_ALT, usage)
            report(keymap.LEFT_ALT)
        report(0)

    def tap(modifiers: int, usage: int) -> None:
        report(modifiers, usage)
        report(0)

    held: int | None = None  # rollover: the key still down from the previous character
    if caps_lock:
        tap(0, keymap.CAPS_LOCK)
    for char in chars + terminator:
        if char == "\x1d":
            if gs == "lost":
                continue
            if gs == "alt+0029":
                alt_code(0x1D)
                held = None
                continue
            if gs == "ctrl+]":
                tap(keymap.LEFT_CTRL, keymap.RIGHT_BRACKET)
                held = None
                continue
            tap(0, keymap.FUNCTION_KEYS[gs])
            held = None
            continue
        if alt_codes:
            alt_code(ord(char))
            continue
        usage, shift = keymap.key_for(char)
        if (caps_lock != host_caps_lock) and keymap.is_letter(usage):
            shift = not shift
        modifiers = keymap.LEFT_SHIFT if shift else 0
        if rollover and held is not None and held != usage:
            report(modifiers, held, usage)
            report(modifiers, usage)
        else:
            if held is not None:
                report(0)
            report(modifiers, usage)
        held = usage
        if not rollover:
            report(0)
            held = None
    if held is not None:
        report(0)
    if caps_lock:
        tap(0, keymap.CAPS_LOCK)
    return reports


def pos_reports(
    data: bytes, *, symbology: str = "]d2", chunk: int = STANDARD_DATA_LENGTH
) -> list[bytes]:
    """The reports a HID-POS scanner in the standard layout sends for one scan of ``data``
    (split into ``chunk``-byte parts, each flagged "continued" but the last)."""
    if not 1 <= chunk <= STANDARD_DATA_LENGTH:
        raise ValueError("chunk must be 1..56")
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    sym = symbology.encode("ascii")[:3].ljust(3, b"\0")
    out = []
    for index, part in enumerate(parts):
        more = 1 if index < len(parts) - 1 else 0
        padded = part.ljust(STANDARD_DATA_LENGTH, b"\0")
        out.append(bytes([0x02, len(part)]) + sym + padded + bytes([more]))
    return out


# --------------------------------------------------------------------------------------------
# Devices


@dataclass
class _Item:
    data: bytes
    delay: float
    unplug: bool = False
    due: float | None = None


@dataclass
class SimulatedInterface:
    """One HID interface: ``kind`` ``"keyboard"`` (a boot keyboard, or with ``boot=False`` a
    keyboard without the boot subclass, which refuses SET_PROTOCOL), ``"hid-pos"`` or
    ``"vendor"``."""

    kind: str = "keyboard"
    report_descriptor: bytes | None = None
    #: Whether a kernel driver is bound when the device is plugged (usbhid always is).
    kernel_driver: bool = True
    #: Whether a keyboard interface has LEDs, i.e. takes the LED output report; without,
    #: SET_REPORT is STALLed.
    leds: bool = True
    #: For a keyboard: whether it declares the boot subclass and protocol.
    boot: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("keyboard", "hid-pos", "vendor"):
            raise ValueError(f"unknown interface kind {self.kind!r}")
        if self.report_descriptor is None and self.kind != "vendor":
            self.report_descriptor = (
                KEYBOARD_REPORT_DESCRIPTOR
                if self.kind == "keyboard"
                else STANDARD_REPORT_DESCRIPTOR
            )


class SimulatedDevice:
    """A USB scanner on the simulated bus. Create it, then :meth:`SimulatedUsb.add` it."""

    def __init__(
        self,
        vid: int,
        pid: int,
        *,
        serial: str | None = None,
        kind: str = "keyboard",
        interfaces: Iterable[SimulatedInterface] | None = None,
        manufacturer: str = "Simulated",
        product: str = "Barcode Scanner",
        configured: bool = True,
        packet_size: int | None = None,
        leds: int = 0x01,
        auto_caps_lock: bool = False,
    ) -> None:
        self.vid = vid
        self.pid = pid
        self.serial = serial
        self.manufacturer = manufacturer
        self.product = product
        self.interfaces = list(interfaces) if interfaces is not None else [SimulatedInterface(kind)]
        if not self.interfaces:
            raise ValueError("a device needs at least one interface")
        self.packet_size = packet_size or (8 if self.interfaces[0].kind == "keyboard" else 64)
        self.configuration = 1 if configured else 0
        #: The LED state the kernel sets when it binds at a plug (bit 0 Num Lock, bit 1 Caps
        #: Lock): the console's, whatever it was.
        self.plug_leds = leds
        #: The LED state the host last sent (SET_REPORT output), which the scanner believes.
        self.leds = leds
        #: Automatic Caps Lock compensation: :meth:`type_text` inverts the case of letters
        #: while :attr:`leds` says Caps Lock is on, as such scanners do.
        self.auto_caps_lock = auto_caps_lock
        #: Output reports received, as (interface, wValue, data).
        self.output_reports: list[tuple[int, int, bytes]] = []
        self.bus_number = 1
        self.address = 0
        self.plugged = False
        self.generation = 0
        #: Every operation the host performed, in order ("open", "detach 0", "claim 0", ...).
        self.log: list[str] = []
        #: ``time.monotonic()`` when each report was handed to a reader.
        self.delivered: list[float] = []
        self.protocol: dict[int, int] = {}
        self.kernel_driver: dict[int, bool] = {}
        self.claimed: dict[int, Any] = {}
        self._queues: dict[int, deque[_Item]] = {i: deque() for i in range(len(self.interfaces))}
        self._bus: SimulatedUsb | None = None

    def __repr__(self) -> str:
        state = f"bus {self.bus_number} address {self.address}" if self.plugged else "unplugged"
        return f"<SimulatedDevice {self.vid:04x}:{self.pid:04x} {state}>"

    # -- feeding ------------------------------------------------------------------------------

    def _condition(self) -> threading.Condition:
        if self._bus is None:
            raise RuntimeError("add the device to a SimulatedUsb first")
        return self._bus.condition

    def queue(self, *reports: bytes, delay: float = 0.0, interface: int = 0) -> None:
        """Make ``reports`` readable, the first after ``delay`` seconds, the rest at once."""
        cond = self._condition()
        with cond:
            q = self._queues[interface]
            for index, report in enumerate(reports):
                item = _Item(bytes(report), delay if index == 0 else 0.0)
                if not q:
                    item.due = time.monotonic() + item.delay
                q.append(item)
            cond.notify_all()

    def queue_unplug(self, delay: float = 0.0, interface: int = 0) -> None:
        """Unplug the device once the reports queued so far have been read (plus ``delay``)."""
        cond = self._condition()
        with cond:
            q = self._queues[interface]
            item = _Item(b"", delay, unplug=True)
            if not q:
                item.due = time.monotonic() + delay
            q.append(item)
            cond.notify_all()

    def play(self, capture: Capture, interface: int = 0) -> None:
        """Queue a capture's reports with its pauses, and its unplug marker if any."""
        for entry in capture.entries:
            if entry.unplug:
                self.queue_unplug(entry.delay, interface)
            else:
                self.queue(entry.data, delay=entry.delay, interface=interface)

    def type_text(self, text: str | bytes, **options: Any) -> None:
        """Queue the keyboard reports for ``text`` (see :func:`keyboard_reports`); with
        ``auto_caps_lock`` as the LEDs last sent by the host make the scanner type them."""
        if self.auto_caps_lock:
            options.setdefault("host_caps_lock", bool(self.leds & 0x02))
        self.queue(*keyboard_reports(text, **options))

    def pending(self, interface: int = 0) -> int:
        with self._condition():
            return len(self._queues[interface])

    def wait_drained(self, timeout: float = 5.0, interface: int = 0) -> bool:
        """Wait until every queued report has been read; False on timeout."""
        deadline = time.monotonic() + timeout
        cond = self._condition()
        with cond:
            while self._queues[interface]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(left)
        return True


# --------------------------------------------------------------------------------------------
# The backend


@dataclass
class _Handle:
    device: SimulatedDevice
    generation: int
    closed: bool = False
    claimed: set[int] = field(default_factory=set)


class SimulatedUsb(usb.backend.IBackend):  # type: ignore[misc]
    """A pyusb backend whose bus holds :class:`SimulatedDevice` objects."""

    def __init__(self) -> None:
        super().__init__()
        self.condition = threading.Condition()
        self.devices: list[SimulatedDevice] = []
        self._addresses = itertools.count(2)
        self._deny: dict[int, int] = {}

    # -- the test's side ----------------------------------------------------------------------

    def add(self, device: SimulatedDevice, *, plugged: bool = True) -> SimulatedDevice:
        with self.condition:
            device._bus = self
            self.devices.append(device)
        if plugged:
            self.plug(device)
        return device

    def plug(self, device: SimulatedDevice) -> None:
        """Connect ``device`` (again): a new address, kernel drivers bound, queues kept."""
        with self.condition:
            device.plugged = True
            device.generation += 1
            device.address = next(self._addresses)
            device.claimed.clear()
            device.protocol.clear()
            device.leds = device.plug_leds  # usbhid syncs the console's LEDs when it binds
            for index, interface in enumerate(device.interfaces):
                device.kernel_driver[index] = interface.kernel_driver and bool(device.configuration)
            device.log.append(f"plug {device.address}")
            self.condition.notify_all()

    def unplug(self, device: SimulatedDevice) -> None:
        """Disconnect ``device`` now: pending and later reads fail with ENODEV, and reports
        still queued are lost, as a real scanner's buffer is. (An unplug queued in a stream,
        :meth:`SimulatedDevice.queue_unplug`, keeps what follows it for after the replug.)"""
        with self.condition:
            for q in device._queues.values():
                q.clear()
            self._unplug_locked(device)

    def _unplug_locked(self, device: SimulatedDevice) -> None:
        if device.plugged:
            device.plugged = False
            device.claimed.clear()
            device.log.append("unplug")
        self.condition.notify_all()

    def deny_access(self, device: SimulatedDevice, times: int = 1) -> None:
        """Fail the next ``times`` opens of ``device`` with EACCES (udev not done yet)."""
        with self.condition:
            self._deny[id(device)] = times

    # -- helpers ------------------------------------------------------------------------------

    def _alive(self, handle: _Handle) -> SimulatedDevice:
        device = handle.device
        if handle.closed or not device.plugged or handle.generation != device.generation:
            raise _error("no-device")
        return device

    # -- IBackend: enumeration and descriptors ------------------------------------------------

    def enumerate_devices(self) -> Iterable[SimulatedDevice]:
        with self.condition:
            return [d for d in self.devices if d.plugged]

    def get_parent(self, dev: SimulatedDevice) -> None:
        return None

    def get_device_descriptor(self, dev: SimulatedDevice) -> Any:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vid,
            idProduct=dev.pid,
            bcdDevice=0x0100,
            iManufacturer=1,
            iProduct=2,
            iSerialNumber=3 if dev.serial is not None else 0,
            bNumConfigurations=1,
            address=dev.address,
            bus=dev.bus_number,
            port_number=1,
            port_numbers=(1,),
            speed=2,  # full speed
        )

    def get_configuration_descriptor(self, dev: SimulatedDevice, config: int) -> Any:
        if config != 0:
            raise IndexError("configuration index out of range")
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=9 + len(dev.interfaces) * (9 + 9 + 7),
            bNumInterfaces=len(dev.interfaces),
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def get_interface_descriptor(
        self, dev: SimulatedDevice, intf: int, alt: int, config: int
    ) -> Any:
        if config != 0 or alt != 0 or not 0 <= intf < len(dev.interfaces):
            raise IndexError("interface index out of range")
        interface = dev.interfaces[intf]
        keyboard = interface.kind == "keyboard" and interface.boot
        length = len(interface.report_descriptor or b"")
        hid_descriptor = [0x09, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, length & 0xFF, length >> 8]
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=intf,
            bAlternateSetting=0,
            bNumEndpoints=1,
            bInterfaceClass=3 if interface.kind != "vendor" else 0xFF,
            bInterfaceSubClass=1 if keyboard else 0,
            bInterfaceProtocol=1 if keyboard else 0,
            iInterface=0,
            extra_descriptors=hid_descriptor,
        )

    def get_endpoint_descriptor(
        self, dev: SimulatedDevice, ep: int, intf: int, alt: int, config: int
    ) -> Any:
        if ep != 0 or config != 0 or alt != 0 or not 0 <= intf < len(dev.interfaces):
            raise IndexError("endpoint index out of range")
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=0x81 + intf,
            bmAttributes=0x03,  # interrupt
            wMaxPacketSize=dev.packet_size,
            bInterval=1,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    # -- IBackend: handles, configuration, interfaces -----------------------------------------

    def open_device(self, dev: SimulatedDevice) -> _Handle:
        with self.condition:
            if not dev.plugged:
                raise _error("no-device")
            left = self._deny.get(id(dev), 0)
            if left:
                self._deny[id(dev)] = left - 1
                dev.log.append("open denied")
                raise _error("access")
            dev.log.append("open")
            return _Handle(dev, dev.generation)

    def close_device(self, dev_handle: _Handle) -> None:
        with self.condition:
            device = dev_handle.device
            if dev_handle.generation == device.generation:
                for number in list(dev_handle.claimed):
                    if device.claimed.get(number) is dev_handle:
                        del device.claimed[number]
            dev_handle.claimed.clear()
            dev_handle.closed = True
            device.log.append("close")

    def get_configuration(self, dev_handle: _Handle) -> int:
        with self.condition:
            return self._alive(dev_handle).configuration

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        with self.condition:
            device = self._alive(dev_handle)
            # Linux refuses while any interface is bound to a driver or claimed, by this
            # handle too (devio.c, proc_setconfig: a claim binds usbfs to the interface).
            if any(device.kernel_driver.values()) or device.claimed:
                raise _error("busy")
            if config_value not in (0, 1):
                raise _error("not-found")
            device.configuration = config_value
            device.log.append(f"set_configuration {config_value}")

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        with self.condition:
            self._alive(dev_handle)
            if altsetting != 0:
                raise _error("not-found")

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self.condition:
            device = self._alive(dev_handle)
            if not device.configuration or not 0 <= intf < len(device.interfaces):
                raise _error("not-found")
            owner = device.claimed.get(intf)
            if device.kernel_driver.get(intf) or (owner is not None and owner is not dev_handle):
                raise _error("busy")
            device.claimed[intf] = dev_handle
            dev_handle.claimed.add(intf)
            device.log.append(f"claim {intf}")

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self.condition:
            device = self._alive(dev_handle)
            if device.claimed.get(intf) is not dev_handle:
                raise _error("not-found")
            del device.claimed[intf]
            dev_handle.claimed.discard(intf)
            device.log.append(f"release {intf}")

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        with self.condition:
            return bool(self._alive(dev_handle).kernel_driver.get(intf))

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        with self.condition:
            device = self._alive(dev_handle)
            if not device.kernel_driver.get(intf):
                raise _error("not-found")
            device.kernel_driver[intf] = False
            device.log.append(f"detach {intf}")

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        with self.condition:
            device = self._alive(dev_handle)
            if device.kernel_driver.get(intf) or intf in device.claimed:
                raise _error("busy")
            device.kernel_driver[intf] = True
            device.log.append(f"attach {intf}")

    # -- IBackend: transfers ------------------------------------------------------------------

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: Any,
        timeout: int,
    ) -> int:
        with self.condition:
            device = self._alive(dev_handle)
            answer: bytes | None = None
            if bmRequestType == 0x80 and bRequest == _GET_DESCRIPTOR and wValue >> 8 == 3:
                answer = self._string_descriptor(device, wValue & 0xFF)
            elif bmRequestType == 0x81 and bRequest == _GET_DESCRIPTOR and wValue >> 8 == 0x22:
                if not 0 <= wIndex < len(device.interfaces):
                    raise _error("pipe")
                answer = device.interfaces[wIndex].report_descriptor
                if answer is None:
                    raise _error("pipe")
            elif bmRequestType == 0x21 and bRequest == _SET_PROTOCOL:
                interface = device.interfaces[wIndex]
                if interface.kind != "keyboard" or not interface.boot:
                    raise _error("pipe")  # only boot-subclass interfaces know SET_PROTOCOL
                device.protocol[wIndex] = wValue
                device.log.append(f"set_protocol {wIndex} {'boot' if wValue == 0 else 'report'}")
                return 0
            elif bmRequestType == 0x21 and bRequest == _SET_REPORT:
                return self._set_report(device, wValue, wIndex, bytes(data or b""))
            elif bmRequestType == 0x21 and bRequest == _SET_IDLE:
                device.log.append(f"class request {bRequest:#x} {wIndex}")
                return 0
            else:
                raise _error("pipe")
            size = min(len(answer), len(data))
            data[:size] = array.array("B", answer[:size])
            return size

    @staticmethod
    def _set_report(device: SimulatedDevice, value: int, index: int, data: bytes) -> int:
        """SET_REPORT: a keyboard interface with LEDs takes an output report; the first byte
        of the report (after its ID, when wValue names one) is the LED byte."""
        if not 0 <= index < len(device.interfaces):
            raise _error("pipe")
        interface = device.interfaces[index]
        report_type, report_id = value >> 8, value & 0xFF
        body = data[1:] if report_id else data
        if (
            report_type != 0x02
            or interface.kind != "keyboard"
            or not interface.leds
            or not body
            or (report_id and data[0] != report_id)
        ):
            device.log.append(f"set_report {index} {value:#06x} stalled")
            raise _error("pipe")
        device.leds = body[0]
        device.output_reports.append((index, value, data))
        device.log.append(f"set_report {index} {value:#06x} {data.hex()}")
        return len(data)

    @staticmethod
    def _string_descriptor(device: SimulatedDevice, index: int) -> bytes:
        if index == 0:
            return bytes([4, 3, 0x09, 0x04])  # one LANGID: en-US
        text = {1: device.manufacturer, 2: device.product, 3: device.serial}.get(index)
        if text is None:
            raise _error("pipe")
        body = text.encode("utf-16-le")
        return bytes([2 + len(body), 3]) + body

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        deadline = None if timeout == 0 else time.monotonic() + timeout / 1000
        cond = self.condition
        with cond:
            while True:
                device = self._alive(dev_handle)
                if device.claimed.get(intf) is not dev_handle:
                    raise _error("not-found")
                if ep != 0x81 + intf:
                    raise _error("pipe")
                now = time.monotonic()
                q = device._queues[intf]
                wake = deadline
                if q:
                    item = q[0]
                    if item.due is None:
                        item.due = now + item.delay
                    if now >= item.due:
                        q.popleft()
                        if q:
                            q[0].due = now + q[0].delay
                        cond.notify_all()
                        if item.unplug:
                            self._unplug_locked(device)
                            raise _error("no-device")
                        if len(item.data) > len(buff):
                            raise _error("overflow")
                        buff[: len(item.data)] = array.array("B", item.data)
                        device.delivered.append(time.monotonic())
                        return len(item.data)
                    wake = item.due if wake is None else min(wake, item.due)
                if deadline is not None and now >= deadline:
                    raise _error("timeout")
                cond.wait(None if wake is None else max(0.0, wake - now))

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        raise _error("pipe")
