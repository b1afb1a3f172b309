"""USB scanners emulated at the kernel interface, under umockdev, for the real libusb path.

Only usable in a process started under umockdev's preload library (``umockdev-wrapper``,
i.e. ``LD_PRELOAD=libumockdev-preload.so.0``) with GObject introspection's ``gi`` and
``gir1.2-umockdev-1.0`` installed (Debian's ``python3-gi``; markd's venv finds it in
``/usr/lib/python3/dist-packages``). :func:`available` says whether that is so, and why not.

Two ways to make a scanner:

* :class:`UsbdevfsScanner` — a device whose ``/dev/bus/usb/BUS/DEV`` node answers the
  usbdevfs ioctls libusb makes (``linux/usbdevice_fs.h``), written here from the kernel's
  documented behaviour in ``drivers/usb/core/devio.c``: SUBMITURB/REAPURBNDELAY/DISCARDURB
  for control and interrupt transfers, CLAIMINTERFACE refused with EBUSY while a kernel
  driver holds the interface, GETDRIVER naming that driver (ENODATA once detached),
  USBDEVFS_IOCTL's DISCONNECT and CONNECT to detach and re-attach it (CONNECT answers 1, "a
  driver was bound", as ``device_attach()`` does), claims held per open file, and after an
  unplug, the pending URBs completed with -ESHUTDOWN and every later request from a file
  opened before it refused with ENODEV.
  Reports are queued while the test runs, so the scanner contract tests drive it as they
  drive the simulated backend. How URBs are handed back through umockdev's ioctl
  forwarding (``IoctlData.resolve``/``set_ptr``) follows umockdev's own usbmon player
  (``src/umockdev-pcap.vala``).
* :func:`replay_pcap` — umockdev's own player (``umockdev_testbed_load_pcap``) on a usbmon
  capture made by ``tools/hid_umockdev.py``: no code of ours between libusb and the bytes.

Where the two differ from the kernel, and what the contract tests do about it, is in
``tests/hil/README.md`` ("The real libusb path under umockdev").
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import hid_umockdev  # noqa: E402  (tools/, not a package)
from hid_umockdev import Profile  # noqa: E402

DEBIAN_GI = "/usr/lib/python3/dist-packages"


def available() -> str | None:
    """None when this process can emulate devices, else the reason it cannot."""
    if "libumockdev-preload" not in os.environ.get("LD_PRELOAD", ""):
        return "not started under umockdev-wrapper (LD_PRELOAD lacks libumockdev-preload)"
    try:
        _gi()
    except (ImportError, ValueError) as exc:
        return (
            f"GObject introspection for umockdev is missing ({exc}): install python3-gi "
            "and gir1.2-umockdev-1.0"
        )
    return None


def _gi() -> Any:
    try:
        import gi
    except ImportError:
        if DEBIAN_GI not in sys.path:
            sys.path.append(DEBIAN_GI)  # last: the venv's own packages still win
        import gi
    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    return UMockdev


# ---------------------------------------------------------------------------------------------
# usbdevfs, as linux/usbdevice_fs.h defines it (x86-64 and other LP64 layouts)


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("U") << 8) | number


_NONE, _WRITE, _READ = 0, 1, 2
SETCONFIGURATION = _ioc(_READ, 5, 4)
GETDRIVER = _ioc(_WRITE, 8, 260)
SUBMITURB = _ioc(_READ, 10, 56)
DISCARDURB = _ioc(_NONE, 11, 0)
REAPURB = _ioc(_WRITE, 12, 8)
REAPURBNDELAY = _ioc(_WRITE, 13, 8)
CLAIMINTERFACE = _ioc(_READ, 15, 4)
RELEASEINTERFACE = _ioc(_READ, 16, 4)
IOCTL = _ioc(_READ | _WRITE, 18, 16)
RESET = _ioc(_NONE, 20, 0)
CLEAR_HALT = _ioc(_READ, 21, 4)
DISCONNECT = _ioc(_NONE, 22, 0)
CONNECT = _ioc(_NONE, 23, 0)
GET_CAPABILITIES = _ioc(_READ, 26, 4)

NAMES = {
    value: name
    for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and name not in ("ROOT",)
}

#: struct usbdevfs_urb: type, endpoint, status, flags, buffer, buffer_length,
#: actual_length, start_frame, number_of_packets, error_count, signr, usercontext.
URB = struct.Struct("<BBxxiIxxxxQiiiiiIQ")
URB_TYPE_INTERRUPT, URB_TYPE_CONTROL = 1, 2
#: ZERO_PACKET, BULK_CONTINUATION, NO_PACKET_SIZE_LIM, BULK_SCATTER_GATHER,
#: REAP_AFTER_DISCONNECT: the capabilities libusb 1.0.26 looks at (a current kernel reports
#: these and more).
CAPABILITIES = 0x1F

#: How long a REAPURBNDELAY with nothing to reap is held before EAGAIN, when the one
#: before it found nothing either. libusb waits for usbfs URBs with poll(POLLOUT);
#: umockdev's node is a socket, always writable, so libusb would spin on EAGAIN. Held, it
#: waits as poll would, a little at a time. (The first EAGAIN after a reaped URB is
#: answered at once: libusb reaps until EAGAIN after every poll.)
REAP_HOLD_S = 0.005


class _Pending:
    __slots__ = ("client", "urb", "buffer", "type", "endpoint", "length", "status", "data", "done")

    def __init__(self, client: Any, urb: Any, buffer: Any, fields: tuple[Any, ...]) -> None:
        #: The open file that submitted it: only that file reaps it, as in the kernel.
        self.client = client
        self.urb = urb
        self.buffer = buffer
        self.type, self.endpoint = fields[0], fields[1]
        self.length = fields[5]
        self.status = 0
        self.data = b""
        self.done = False


class UsbdevfsScanner:
    """A HID scanner on one usbdevfs node; see the module docstring.

    :meth:`queue` adds reports (with a pause before the first), :meth:`unplug` and
    :meth:`plug` take it off the bus and put it back (with a new address, as the kernel
    gives). :attr:`log` records what the host did ("detach 0", "claim 0", "set-protocol 0",
    "leds 01", "release 0", "attach 0", "unplugged", …) and :attr:`unknown` every request
    this emulation does not know (answered ENOTTY) or failed on.
    """

    def __init__(self, bus: UmockdevBus, profile: Profile, *, leds: bool = True) -> None:
        UMockdev = _gi()
        self.bus = bus
        self.profile = profile
        self.leds = leds
        self.led_state: bytes | None = None
        self.protocol = 1
        self.driver_bound = True
        #: Interface number → the open file (umockdev client) that claimed it.
        self.claims: dict[int, Any] = {}
        self.present = False
        #: Bumped at every plug: a file opened before the last unplug gets ENODEV.
        self.generation = 0
        self.log: list[str] = []
        self.unknown: list[str] = []
        self._lock = threading.Condition()
        self._reports: deque[tuple[float, bytes]] = deque()
        self._pending: list[_Pending] = []
        self._umockdev = UMockdev
        self._handler: Any = None
        self._held: list[Any] = []
        self._empty_reaps = 0
        self._stop = False
        self._waker = threading.Thread(target=self._release_held, daemon=True)
        self._waker.start()

    @property
    def claimed(self) -> set[int]:
        with self._lock:
            self._forget_closed()
            return set(self.claims)

    def new_handler(self) -> Any:
        """The node's ioctl handler for this plug; files opened on an earlier one keep theirs,
        which answers ENODEV."""
        handler = self._umockdev.IoctlBase()
        generation = self.generation
        handler.connect("handle-ioctl", self._on_ioctl, generation)
        self._handler = handler
        return handler

    # -- the test's side ------------------------------------------------------------------------

    def queue(self, *reports: bytes, delay: float = 0.0) -> None:
        """Send ``reports``, the first after ``delay`` seconds of silence."""
        with self._lock:
            start = max(time.monotonic(), self._reports[-1][0] if self._reports else 0.0)
            for number, report in enumerate(reports):
                self._reports.append((start + (delay if number == 0 else 0.0), report))
            self._lock.notify_all()

    def drained(self, timeout: float) -> bool:
        """Wait until every queued report has been read; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._reports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    def plug(self) -> None:
        self.bus._plug(self)

    def unplug(self) -> None:
        """Off the bus: pending URBs end with -ESHUTDOWN, the node and sysfs entry go."""
        if self._go_off():
            self.bus._unplug(self)

    def _go_off(self) -> bool:
        """The kernel's part of an unplug; False when it was off already."""
        with self._lock:
            if not self.present:
                return False
            self.present = False
            self.claims.clear()
            self.driver_bound = True  # a replugged device comes back to its driver
            for pending in self._pending:
                if not pending.done:
                    pending.status, pending.done = -errno.ESHUTDOWN, True
            self._reports.clear()
            self._lock.notify_all()
        self.log.append("unplugged")
        return True

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()

    # -- the kernel's side ----------------------------------------------------------------------

    def _on_ioctl(self, _handler: Any, client: Any, generation: int) -> bool:
        request = client.get_request()
        arg = client.get_arg()
        try:
            with self._lock:
                stale = generation != self.generation  # a file from before the unplug
                if request in (REAPURB, REAPURBNDELAY):
                    return self._reap(arg, client, gone=stale or not self.present)
                if stale:
                    return self._refuse(client, errno.ENODEV)
                return self._dispatch(request, arg, client)
        except Exception as exc:  # a bug here must not hang the client: say it, refuse
            self.unknown.append(f"{NAMES.get(request, hex(request))}: {exc!r}")
            client.complete(-1, errno.EIO)
            return True

    def _forget_closed(self) -> None:
        """Files closed since: the kernel released their claims and dropped their URBs when
        they were closed (usbdev_release). umockdev 0.17 says nothing of a close (it has no
        "client-vanished" yet), but a closed file's connection reads as closed, so this runs
        before anything that depends on them (under the lock)."""
        for number, owner in list(self.claims.items()):
            if not owner.get_connected():
                del self.claims[number]
                self.log.append(f"release {number} (closed)")
        self._pending = [p for p in self._pending if p.client.get_connected()]

    def _refuse(self, client: Any, number: int) -> bool:
        client.complete(-1, number)
        return True

    def _dispatch(self, request: int, arg: Any, client: Any) -> bool:  # noqa: C901, PLR0911, PLR0912
        if not self.present:
            return self._refuse(client, errno.ENODEV)
        if request == GET_CAPABILITIES:
            arg.resolve(0, 4).update(0, struct.pack("<I", CAPABILITIES))
            client.complete(0, 0)
            return True
        if request == SUBMITURB:
            return self._submit(arg, client)
        if request == DISCARDURB:
            return self._discard(arg, client)
        if request in (CLAIMINTERFACE, RELEASEINTERFACE, CLEAR_HALT, SETCONFIGURATION):
            value = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0]
            self._forget_closed()
            if request == CLAIMINTERFACE:
                if value != 0:
                    return self._refuse(client, errno.ENOENT)
                if self.driver_bound or self.claims.get(value, client) != client:
                    self.log.append(f"claim {value} refused: busy")
                    return self._refuse(client, errno.EBUSY)
                self.claims[value] = client
                self.log.append(f"claim {value}")
            elif request == RELEASEINTERFACE:
                if self.claims.get(value) != client:
                    return self._refuse(client, errno.EINVAL)
                del self.claims[value]
                self.log.append(f"release {value}")
            elif request == SETCONFIGURATION:
                # The kernel refuses while any interface is bound to a driver or claimed.
                if self.driver_bound or self.claims:
                    return self._refuse(client, errno.EBUSY)
                self.log.append(f"set-configuration {value}")
            client.complete(0, 0)
            return True
        if request == GETDRIVER:
            data = arg.resolve(0, 260)
            interface = struct.unpack_from("<I", bytes(data.retrieve()))[0]
            if interface != 0 or not self.driver_bound:
                return self._refuse(client, errno.ENODATA)  # no such interface, no driver
            data.update(4, self.profile.driver.encode() + b"\0")
            client.complete(0, 0)
            return True
        if request == IOCTL:
            interface, code = struct.unpack_from("<ii", bytes(arg.resolve(0, 16).retrieve()))
            if interface != 0:
                return self._refuse(client, errno.EINVAL)
            if code == DISCONNECT:
                if not self.driver_bound:
                    return self._refuse(client, errno.ENODATA)
                self.driver_bound = False
                self.log.append(f"detach {interface}")
            elif code == CONNECT:
                # devio.c's proc_ioctl returns device_attach()'s result: 1 when a driver
                # was bound (libusb reads 0 as "no driver found"); EBUSY when one already is
                # or a program holds the interface.
                if self.driver_bound or interface in self.claims:
                    return self._refuse(client, errno.EBUSY)
                self.driver_bound = True
                self.log.append(f"attach {interface}")
                client.complete(1, 0)
                return True
            else:
                self.unknown.append(f"USBDEVFS_IOCTL code {code:#x}")
                return self._refuse(client, errno.ENOTTY)
            client.complete(0, 0)
            return True
        if request == RESET:
            client.complete(0, 0)
            return True
        self.unknown.append(NAMES.get(request, hex(request)))
        return self._refuse(client, errno.ENOTTY)

    def _submit(self, arg: Any, client: Any) -> bool:
        urb = arg.resolve(0, URB.size)
        fields = URB.unpack(bytes(urb.retrieve()))
        kind, endpoint, length = fields[0], fields[1], fields[5]
        if kind not in (URB_TYPE_INTERRUPT, URB_TYPE_CONTROL):
            self.unknown.append(f"URB type {kind}")
            return self._refuse(client, errno.EINVAL)
        self._forget_closed()
        if kind == URB_TYPE_INTERRUPT:
            if endpoint != self.profile.endpoint:
                return self._refuse(client, errno.ENOENT)
            if self.claims.get(0, client) != client or self.driver_bound:
                return self._refuse(client, errno.EBUSY)
            self.claims[0] = client  # devio.c's checkintf claims an unclaimed interface
        buffer = urb.resolve(16, length) if length else None
        pending = _Pending(client, urb, buffer, fields)
        if kind == URB_TYPE_CONTROL:
            setup = bytes(buffer.retrieve())[:8] if buffer is not None else b""
            self._control(pending, setup)
        with self._lock:
            self._pending.append(pending)
            self._lock.notify_all()
        client.complete(0, 0)
        return True

    def _control(self, pending: _Pending, setup: bytes) -> None:  # noqa: PLR0912
        """Answer a control request at once, as the device would: data, or a STALL."""
        if len(setup) < 8:
            pending.status, pending.done = -errno.EINVAL, True
            return
        request_type, request, value, index, length = struct.unpack("<BBHHH", setup)
        p = self.profile
        answer: bytes | None = None
        stall = False
        if request_type == 0x80 and request == 0x06:
            kind, number = value >> 8, value & 0xFF
            if kind == 1:
                answer = hid_umockdev.device_descriptor(p)
            elif kind == 2:
                answer = hid_umockdev.configuration_descriptor(p)
            elif kind == 3:
                answer = hid_umockdev.string_descriptor(p, number)
            stall = answer is None
        elif request_type == 0x81 and request == 0x06 and value >> 8 == 0x22:
            answer = p.report_descriptor
        elif request_type == 0x21 and request == 0x0B:
            self.protocol = value
            self.log.append(f"set-protocol {value}")
        elif request_type == 0x21 and request == 0x0A:
            self.log.append("set-idle")
        elif request_type == 0x21 and request == 0x09 and value >> 8 == 0x02:
            if self.leds and p.kind == "keyboard":
                data = bytes(pending.buffer.retrieve())[8 : 8 + length]
                self.led_state = data
                self.log.append(f"leds {data.hex()}")
            else:
                stall = True
        else:
            stall = True
        if stall:
            pending.status = -errno.EPIPE
        elif answer is not None:
            pending.data = answer[:length]
        pending.done = True

    def _discard(self, arg: Any, client: Any) -> bool:
        # The argument is the URB's address in the client, as given to SUBMITURB.
        address = struct.unpack("<Q", bytes(arg.retrieve())[:8])[0]
        with self._lock:
            for pending in self._pending:
                if (
                    pending.client == client
                    and pending.urb.client_addr == address
                    and not pending.done
                ):
                    pending.status, pending.done = -errno.ENOENT, True
                    self._lock.notify_all()
                    client.complete(0, 0)
                    return True
        return self._refuse(client, errno.EINVAL)

    def _ready(self, client: Any) -> _Pending | None:
        """The first of ``client``'s URBs that can be reaped now (under the lock)."""
        now = time.monotonic()
        for pending in self._pending:
            if pending.client != client:
                continue
            if pending.done:
                self._pending.remove(pending)
                return pending
            if pending.type == URB_TYPE_INTERRUPT and self._reports and self._reports[0][0] <= now:
                _due, report = self._reports.popleft()
                if len(report) > pending.length:
                    pending.status = -errno.EOVERFLOW  # the kernel's babble: no data
                else:
                    pending.data = report
                self._pending.remove(pending)
                return pending
        return None

    def _reap(self, arg: Any, client: Any, *, gone: bool) -> bool:
        """REAPURB(NDELAY) from ``client``; ``gone``: its device was unplugged. A file's own
        finished URBs can be reaped after an unplug (REAP_AFTER_DISCONNECT); then ENODEV."""
        with self._lock:
            pending = self._ready(client)
            if pending is None:
                if gone and not any(p.client == client for p in self._pending):
                    return self._refuse(client, errno.ENODEV)
                self._empty_reaps += 1
                if self._empty_reaps == 1:
                    return self._refuse(client, errno.EAGAIN)
                self._held.append((time.monotonic() + REAP_HOLD_S, arg, client))
                self._lock.notify_all()
                return True
            self._empty_reaps = 0
        self._complete_reap(arg, client, pending)
        return True

    def _complete_reap(self, arg: Any, client: Any, pending: _Pending) -> None:
        if pending.data and pending.buffer is not None:
            offset = 8 if pending.type == URB_TYPE_CONTROL else 0
            pending.buffer.update(offset, pending.data)
        pending.urb.update(4, struct.pack("<i", pending.status))
        pending.urb.update(28, struct.pack("<i", len(pending.data)))
        arg.resolve(0, 8).set_ptr(0, pending.urb)
        client.complete(0, 0)

    def _release_held(self) -> None:
        """Answer held reaps: with a URB as soon as one is ready, EAGAIN when their time is up."""
        with self._lock:
            while not self._stop:
                if not self._held:
                    self._lock.wait(0.5)
                    continue
                due, arg, client = self._held[0]
                pending = self._ready(client)
                if pending is not None:
                    self._held.pop(0)
                    self._empty_reaps = 0
                    self._lock.release()
                    try:
                        self._complete_reap(arg, client, pending)
                    except Exception as exc:  # never leave libusb blocked in its reap
                        self.unknown.append(f"reap: {exc!r}")
                        client.complete(-1, errno.EIO)
                    finally:
                        self._lock.acquire()
                    continue
                now = time.monotonic()
                next_report = self._reports[0][0] if self._reports else due
                if now >= due:
                    self._held.pop(0)
                    client.complete(-1, errno.EAGAIN if self.present else errno.ENODEV)
                    continue
                self._lock.wait(max(0.0, min(due, next_report) - now))


_shared: UmockdevBus | None = None


def shared_bus() -> UmockdevBus:
    """The process's testbed (made on first use): one per process, since umockdev points the
    whole process at one testbed directory and libusb keeps its view of the bus."""
    global _shared
    if _shared is None:
        _shared = UmockdevBus()
    return _shared


class UmockdevBus:
    """One umockdev testbed for the process (libusb keeps its context, and with it its
    view of the bus, for the process's lifetime), with scanners plugged in and out."""

    def __init__(self) -> None:
        UMockdev = _gi()
        self.testbed = UMockdev.Testbed.new()
        self._next_address = 2
        self._syspaths: dict[int, str] = {}

    def add(self, profile: Profile, **options: Any) -> UsbdevfsScanner:
        scanner = UsbdevfsScanner(self, profile, **options)
        scanner.plug()
        return scanner

    def _plug(self, scanner: UsbdevfsScanner) -> None:
        p = scanner.profile
        p.address = self._next_address
        # A port of its own each time: umockdev 0.17 leaves a removed device's
        # /sys/bus/usb/devices link behind, so the same sysfs name cannot come back.
        p.port = str(self._next_address - 1)
        self._next_address += 1
        description = hid_umockdev.umockdev_description(p)
        if not self.testbed.add_from_string(description):
            raise RuntimeError(f"umockdev refused the description of {p.devnode}")
        with scanner._lock:
            scanner.generation += 1
        self.testbed.attach_ioctl(p.devnode, scanner.new_handler())
        self._syspaths[id(scanner)] = p.syspath
        with scanner._lock:
            scanner.present = True
            scanner.driver_bound = True
        scanner.log.append(f"plugged at {p.bus}:{p.address}")

    def _unplug(self, scanner: UsbdevfsScanner) -> None:
        self.testbed.detach_ioctl(scanner.profile.devnode)
        syspath = self._syspaths.pop(id(scanner), None)
        if syspath is not None:
            # The "remove" event first, while the device's properties are still there:
            # libusb finds the bus number and address of a removed device in DEVNAME, and
            # the event remove_device() sends once the entry is gone has none.
            self.testbed.uevent(syspath, "remove")
            self.testbed.remove_device(syspath)


def replay_pcap(testbed: Any, description: Path, traffic: Path, syspath: str) -> None:
    """Load a device and its usbmon capture into ``testbed`` for umockdev's own player."""
    if not testbed.add_from_string(description.read_text()):
        raise RuntimeError(f"umockdev refused {description}")
    testbed.load_pcap(syspath, str(traffic))
