"""pyusb plumbing shared by the USB HID backends (``hid-kbd://``, ``hid-pos://``).

What lives here:

* the URL target, ``VID:PID`` or the path of a udev symlink to the USB device node
  (``/dev/markd/scanner-0c2e-10d3-sn-SERIAL`` → ``/dev/bus/usb/001/007``), and device selection,
  with ``?serial=`` to tell identical scanners apart;
* :class:`UsbSession`: take one HID interface from the kernel (detach its driver, make sure
  the device is configured, claim the interface, find the interrupt IN endpoint), read
  reports, and give everything back in ``finally``, kernel driver included, so the scanner
  types into the console again once markd lets go;
* :class:`UsbScanner`: the reader loop both backends share (present/absent, reopen, gap);
* the backend hook: :func:`use_backend` makes every USB scanner use another pyusb backend
  (an object implementing ``usb.backend.IBackend``). Tests and ``tools/bench/scanners.py``
  install :class:`markd.scanners.simulated.SimulatedUsb` through it, so the real pyusb code
  (``usb.core.find``, ``set_configuration``, ``claim_interface``, ``detach_kernel_driver``,
  ``Endpoint.read``) runs above a simulated bus. It is not a URL option on purpose: a
  production configuration cannot select the simulation.

Hot-plug: pyusb reports an unplug as ``USBError`` with errno ENODEV from the pending read
(libusb returns LIBUSB_ERROR_NO_DEVICE at once), so an unplug is noticed within one read.
The session is closed, the scanner reported absent, and the device looked for again every
:attr:`UsbScanner.reopen_interval` seconds by enumerating the bus (cheap, and it sidesteps
libusb's hot-plug callbacks, which fire before udev has set the node's group and mode, so
the first open would fail anyway: domain.md §8.4). An open refused with EACCES in that
window is simply retried.

A device that was looked at and refused for what it is (keyboard mode under a ``hid-pos://``
URL or the reverse, no HID interface, a keyboard report markd cannot read) is remembered by
bus and address and not opened again: every look detaches the kernel driver, so retrying
twice a second would make the scanner flicker in and out of the console forever. It is
reported absent once; switching its mode makes it re-enumerate, and a replug gives it a new
address, so either is looked at afresh.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import usb.core
import usb.util

from markd.errors import ScannerError, ScannerGone
from markd.scanners.base import BadReport, Option, Scanner, ScannerURL

log = logging.getLogger(__name__)

HID_CLASS = 3
HID_SUBCLASS_BOOT = 1
HID_PROTOCOL_KEYBOARD = 1

# HID class requests (HID 1.11 §7.2) and the standard GET_DESCRIPTOR for the report descriptor.
_SET_PROTOCOL = 0x0B
_SET_REPORT = 0x09
_OUTPUT_REPORT = 0x02
_GET_DESCRIPTOR = 0x06
_REPORT_DESCRIPTOR = 0x22
_TO_INTERFACE_CLASS = 0x21  # host-to-device, class, interface
_FROM_INTERFACE_STANDARD = 0x81  # device-to-host, standard, interface

#: Reasons of the errors that refuse a device for what it is (its mode, its interfaces, its
#: report layout), as opposed to a passing state (busy, access denied, unplugged). A refused
#: device is not opened again until it re-enumerates (see the module docstring).
REFUSAL_REASONS = frozenset({"wrong-mode", "no-interface", "no-endpoint", "unsupported-keyboard"})

# --------------------------------------------------------------------------------------------
# The backend hook

_backend_lock = threading.Lock()
_backend_override: Any = None


def set_backend(backend: Any) -> Any:
    """Make USB scanners use ``backend`` (a ``usb.backend.IBackend``); None restores libusb.
    Returns the previous override. Prefer :func:`use_backend`."""
    global _backend_override
    with _backend_lock:
        previous, _backend_override = _backend_override, backend
    return previous


@contextlib.contextmanager
def use_backend(backend: Any) -> Iterator[Any]:
    """``with use_backend(SimulatedUsb()) as bus:`` every USB scanner opened inside uses it."""
    previous = set_backend(backend)
    try:
        yield backend
    finally:
        set_backend(previous)


def get_backend() -> Any:
    """The pyusb backend USB scanners use: the override, else libusb 1.0."""
    with _backend_lock:
        override = _backend_override
    if override is not None:
        return override
    import usb.backend.libusb1 as libusb1

    backend = libusb1.get_backend()
    if backend is None:
        raise ScannerError(
            "libusb 1.0 was not found (install the libusb-1.0-0 package)", "no-libusb"
        )
    return backend


# --------------------------------------------------------------------------------------------
# URL targets and device selection

_VID_PID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
_USB_NODE = re.compile(r"/(\d{1,3})/(\d{1,3})$")


def target_from_url(variant: str | None, netloc: str, path: str) -> str:
    """Validate a hid-kbd/hid-pos URL target: ``VID:PID`` (lower-cased) or an absolute path."""
    if variant is not None:
        raise ValueError("the USB HID backends have no '+' variants")
    if netloc:
        if path:
            raise ValueError("a VID:PID URL has no path")
        if not _VID_PID.match(netloc):
            raise ValueError(f"{netloc!r} is not VID:PID (4 hex digits each, e.g. 0c2e:0b61)")
        return netloc.lower()
    if not path.startswith("/") or path == "/":
        raise ValueError("missing VID:PID or device path")
    return path


def _convert_serial(text: str) -> str:
    if not text or len(text) > 126:
        raise ValueError("empty or too long")
    return text


def _convert_interface(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 31:
        raise ValueError("interface out of range")
    return value


def _usb_error(exc: BaseException, what: str) -> ScannerError:
    """Turn a pyusb error into the scanner error a technician can act on."""
    code = getattr(exc, "errno", None)
    if code == errno.EACCES:
        return ScannerError(
            f"{what}: access denied; install markd's udev rules (udev/README.md) and put the "
            "service user in group markd",
            "scanner-access-denied",
        )
    if code == errno.EBUSY:
        return ScannerError(
            f"{what}: busy, another program has claimed it (a running markd? stop it before "
            "markctl scan-test)",
            "scanner-busy",
        )
    if code in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
        return ScannerGone(f"{what}: {exc}")
    return ScannerError(f"{what}: {exc}")


def find_device(target: str, serial: str | None, backend: Any) -> Any:
    """The one ``usb.core.Device`` the target names. Raises :class:`ScannerGone` when there is
    none and :class:`ScannerError` when several match and no ``serial`` tells them apart."""
    if target.startswith("/"):
        if not os.path.lexists(target):
            raise ScannerGone(f"{target} does not exist (unplugged, or no udev rule)")
        real = os.path.realpath(target)
        node = _USB_NODE.search(real)
        if node is None or "/usb/" not in real:
            raise ScannerError(
                f"{target} leads to {real}, not a USB device node (/dev/bus/usb/BUS/DEVICE)",
                "bad-device-path",
            )
        criteria = {"bus": int(node[1]), "address": int(node[2])}
    else:
        vid, pid = (int(part, 16) for part in target.split(":"))
        criteria = {"idVendor": vid, "idProduct": pid}
    try:
        candidates = list(usb.core.find(find_all=True, backend=backend, **criteria))
    except usb.core.USBError as exc:
        raise _usb_error(exc, f"listing USB devices for {target}") from exc

    unreadable: list[str] = []
    if serial is not None:
        matching = []
        for device in candidates:
            try:
                found = device.serial_number
            except (usb.core.USBError, ValueError, NotImplementedError) as exc:
                unreadable.append(f"bus {device.bus} address {device.address}: {exc}")
                found = None
            if found == serial:
                matching.append(device)
            else:
                usb.util.dispose_resources(device)
        candidates = matching

    if not candidates:
        wanted = target + (f" with serial {serial!r}" if serial is not None else "")
        extra = f" (serial unreadable on {'; '.join(unreadable)})" if unreadable else ""
        raise ScannerGone(f"no USB device {wanted}{extra}")
    if len(candidates) > 1:
        for device in candidates:
            usb.util.dispose_resources(device)
        raise ScannerError(
            f"{len(candidates)} USB devices match {target}; name one with ?serial=SERIAL "
            "(lsusb -v shows iSerial) or use its udev symlink",
            "ambiguous-scanner",
        )
    return candidates[0]


def _serial_of(device: Any) -> str | None:
    """The device's serial number string, or None when it has none or will not say."""
    try:
        return device.serial_number or None
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


def report_descriptor(device: Any, interface_number: int) -> bytes | None:
    """The HID report descriptor of an interface, or None if the device will not give it."""
    try:
        data = device.ctrl_transfer(
            _FROM_INTERFACE_STANDARD,
            _GET_DESCRIPTOR,
            _REPORT_DESCRIPTOR << 8,
            interface_number,
            4096,
            1000,
        )
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None
    return bytes(data) or None


# --------------------------------------------------------------------------------------------
# A claimed interface


class InterfaceChoice:
    """How a backend picks the interface to read; this default takes any HID interface."""

    def rank(self, interface: Any) -> int | None:
        """Order of preference (lower first); None to never consider the interface."""
        return 0 if interface.bInterfaceClass == HID_CLASS else None

    def accept(self, interface: Any, descriptor: bytes | None) -> None:
        """Raise :class:`ScannerError` (saying why) when the claimed interface will not do."""

    def none_found(self, where: str) -> ScannerError:
        return ScannerError(f"{where} has no HID interface", "no-interface")

    def settle(self, session: UsbSession) -> None:
        """Called once the interface is claimed and, if asked, in boot protocol: raise
        :class:`ScannerError` (saying why) when its reports cannot be read after all."""


class UsbSession:
    """One HID interface taken from the kernel: reads reports, gives everything back on close.

    Build it with :meth:`claim`. :meth:`close` is idempotent and never raises: the order is
    restore the report protocol, release the interface, re-attach the kernel driver, close the
    handle; each step runs even if the one before failed (an unplugged device fails them all).
    """

    def __init__(
        self, device: Any, interface: Any, endpoint: Any = None, read_size: int = 0
    ) -> None:
        self.device = device
        self.interface = interface
        self.endpoint = endpoint
        self.read_size = read_size
        self.report_descriptor: bytes | None = None
        self.detached = False
        self.boot_protocol = False
        self.serial: str | None = None
        #: Why re-attaching the kernel driver failed on close (None when it worked or was
        #: not needed); shown by scan-test, since a keyboard left detached types nothing.
        self.reattach_error: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def number(self) -> int:
        return int(self.interface.bInterfaceNumber)

    @property
    def description(self) -> str:
        d = self.device
        serial = f" serial {self.serial}" if self.serial else ""
        i = self.interface
        kind = {
            (HID_CLASS, HID_SUBCLASS_BOOT, HID_PROTOCOL_KEYBOARD): "HID boot keyboard",
        }.get((i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol), "HID")
        return (
            f"USB {d.idVendor:04x}:{d.idProduct:04x}{serial} (bus {d.bus} address "
            f"{d.address}), interface {self.number} ({kind}), endpoint "
            f"0x{self.endpoint.bEndpointAddress:02x}"
        )

    @classmethod
    def claim(
        cls,
        device: Any,
        choice: InterfaceChoice | None = None,
        *,
        interface_number: int | None = None,
        boot_protocol: bool = False,
        serial: str | None = None,
    ) -> UsbSession:
        """Take an interface of ``device``: the one numbered ``interface_number``, or the first
        in ``choice``'s order that it accepts once its report descriptor can be read (pyusb
        claims an interface to read it, so each candidate is taken, looked at, and given back
        if refused). ``boot_protocol`` switches a boot-subclass interface to 8-byte reports;
        ``choice`` then sees the result in :meth:`InterfaceChoice.settle`."""
        choice = choice or InterfaceChoice()
        where = f"USB {device.idVendor:04x}:{device.idProduct:04x}"
        try:
            try:
                config = device.get_active_configuration()
                configured = True
            except usb.core.USBError as exc:
                if exc.errno not in (None, 0):
                    raise
                # "Configuration not set": the kernel left it unconfigured (no driver bound).
                config = device[0]
                configured = False
            ranked = []
            for intf in config:
                if intf.bAlternateSetting != 0:
                    continue
                if interface_number is not None and intf.bInterfaceNumber != interface_number:
                    continue
                rank = choice.rank(intf)
                if rank is not None:
                    ranked.append((rank, intf.bInterfaceNumber, intf))
            if not ranked:
                if interface_number is not None:
                    raise ScannerError(
                        f"{where} has no HID interface {interface_number}", "no-interface"
                    )
                raise choice.none_found(where)
            problems: list[str] = []
            reasons: set[str] = set()
            for _, _, interface in sorted(ranked, key=lambda item: item[:2]):
                session = cls._take(device, interface, configured, serial)
                configured = True
                session.report_descriptor = report_descriptor(device, session.number)
                try:
                    choice.accept(interface, session.report_descriptor)
                    if boot_protocol and interface.bInterfaceSubClass == HID_SUBCLASS_BOOT:
                        session.boot_protocol = session._set_protocol(0)
                    choice.settle(session)
                except ScannerError as exc:
                    problems.append(f"interface {session.number}: {exc}")
                    reasons.add(exc.reason)
                    session.close(dispose=False)  # back to report protocol, driver re-attached
                    continue
                return session
            reason = reasons.pop() if len(reasons) == 1 else "wrong-mode"
            raise ScannerError(f"{where}: " + "; ".join(problems), reason)
        except usb.core.USBError as exc:
            usb.util.dispose_resources(device)
            raise _usb_error(exc, where) from exc
        except BaseException:
            usb.util.dispose_resources(device)
            raise

    @classmethod
    def _take(cls, device: Any, interface: Any, configured: bool, serial: str | None) -> UsbSession:
        """Detach the kernel driver, configure if needed, claim, find the IN endpoint."""
        number = interface.bInterfaceNumber
        session = cls(device, interface, None, 0)
        try:
            active = device.is_kernel_driver_active(number)
        except NotImplementedError:
            active = False  # not Linux: nothing to detach
        except usb.core.USBError as exc:
            if exc.errno is not None:
                raise  # unplugged, access denied: the caller reports it
            # libusb's "other error" for the question alone: the kernel would not say
            # which driver holds the interface (it refused USBDEVFS_GETDRIVER, as umockdev's
            # traffic player does). Not knowing is no reason to give up: the claim below
            # fails with EBUSY if a driver does hold it, and that error says what to do.
            log.warning("interface %d: the kernel will not name its driver (%s)", number, exc)
            active = False
        if active:
            try:
                device.detach_kernel_driver(number)
                session.detached = True
            except NotImplementedError:
                pass
        try:
            if not configured:
                device.set_configuration()
            usb.util.claim_interface(device, number)
            endpoint = usb.util.find_descriptor(
                interface,
                custom_match=lambda e: (
                    usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
                    and usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_INTR
                ),
            )
            if endpoint is None:
                raise ScannerError(
                    f"interface {number} has no interrupt IN endpoint", "no-endpoint"
                )
        except BaseException:
            session.close(dispose=False)
            raise
        session.endpoint = endpoint
        session.read_size = int(endpoint.wMaxPacketSize) or 64
        session.serial = serial if serial is not None else _serial_of(device)
        return session

    def _set_protocol(self, protocol: int) -> bool:
        """SET_PROTOCOL: 0 boot (fixed 8-byte keyboard reports), 1 report. True when accepted."""
        try:
            self.device.ctrl_transfer(
                _TO_INTERFACE_CLASS, _SET_PROTOCOL, protocol, self.number, None, 1000
            )
        except (usb.core.USBError, NotImplementedError):
            return False
        return True

    def set_output_report(self, report_id: int, data: bytes) -> bool:
        """SET_REPORT (HID 1.11 §7.2.2) of an output report over the control pipe; ``data``
        starts with the report ID when the interface uses IDs. True when accepted; a device
        that STALLs it (no such report) is no error."""
        try:
            self.device.ctrl_transfer(
                _TO_INTERFACE_CLASS,
                _SET_REPORT,
                (_OUTPUT_REPORT << 8) | report_id,
                self.number,
                data,
                1000,
            )
        except (usb.core.USBError, NotImplementedError) as exc:
            log.debug("interface %d refused output report %d: %s", self.number, report_id, exc)
            return False
        return True

    def read(self, timeout: float) -> bytes | None:
        """One report, or None when none arrived within ``timeout`` seconds. A failed read
        (unplug: ENODEV) raises :class:`ScannerGone`."""
        # libusb takes milliseconds and reads 0 as "wait forever": never pass 0.
        milliseconds = max(1, int(timeout * 1000 + 0.999))
        try:
            data = self.endpoint.read(self.read_size, milliseconds)
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as exc:
            raise ScannerGone(f"read failed: {exc}") from exc
        return bytes(data)

    def close(self, *, dispose: bool = True) -> None:
        """Give the interface back. ``dispose=False`` keeps the device handle open (used while
        trying the next candidate interface)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        device, number = self.device, self.number
        try:
            if self.boot_protocol:
                self._set_protocol(1)  # the kernel's usbhid driver expects report protocol
            try:
                usb.util.release_interface(device, number)
            except (usb.core.USBError, ValueError):
                pass  # unplugged, or never claimed
            if self.detached:
                try:
                    device.attach_kernel_driver(number)
                except (usb.core.USBError, NotImplementedError) as exc:
                    self.reattach_error = str(exc)
        finally:
            if dispose:
                usb.util.dispose_resources(device)


# --------------------------------------------------------------------------------------------
# The reader shared by hid-kbd and hid-pos


class UsbScanner(Scanner):
    """Reader loop for a USB HID scanner; subclasses decode the reports.

    Subclasses provide :meth:`_interface_choice`, and implement :meth:`_start_decoding`
    (called with each new session), :meth:`_on_report` and :meth:`_reset_decoder`.
    """

    OPTIONS = {
        "serial": Option(_convert_serial, None, "the device's USB serial number (lsusb -v)"),
        "interface": Option(_convert_interface, None, "an interface number from 0 to 31"),
    }
    #: Seconds between looks for an absent device (replug resumes within this plus an open).
    reopen_interval: float = 0.5
    #: Longest blocking read; bounds how long :meth:`close` waits for the reader.
    poll_interval: float = 0.1
    #: Switch boot-subclass interfaces to the boot protocol (the keyboard backend does).
    boot_protocol: bool = False

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self._session_lock = threading.Lock()
        self._session: UsbSession | None = None
        #: The report descriptor of the interface last opened (scan-test saves it).
        self.report_descriptor: bytes | None = None
        #: What was opened last, for scan-test ("USB 0c2e:0b61 ... interface 0 ...").
        self.description = ""
        #: The session last closed, so tests and scan-test can check the kernel driver.
        self.last_session: UsbSession | None = None
        #: The device last refused for what it is: ((bus, address), message, reason). Not
        #: opened again while it keeps that address (see the module docstring).
        self._refused: tuple[tuple[int, int], str, str] | None = None

    @classmethod
    def target_from_url(cls, variant: str | None, netloc: str, path: str) -> str:
        return target_from_url(variant, netloc, path)

    # -- hooks --------------------------------------------------------------------------------

    def _interface_choice(self) -> InterfaceChoice:
        return InterfaceChoice()

    def _start_decoding(self, session: UsbSession) -> None:
        raise NotImplementedError

    def _on_report(self, report: bytes) -> None:
        raise NotImplementedError

    def _reset_decoder(self) -> None:
        raise NotImplementedError

    def _breaks_unit(self) -> bool:
        """Whether an unreadable report now breaks a unit under way (see
        :meth:`Scanner._bad_input`); asked before :meth:`_reset_decoder`."""
        return self._framer.in_unit

    # -- the loop -----------------------------------------------------------------------------

    def _open(self) -> UsbSession:
        backend = get_backend()
        serial = self.url.options.get("serial")
        try:
            device = find_device(self.url.target, serial, backend)
        except ScannerGone:
            self._refused = None  # it went away: whatever comes back is looked at afresh
            raise
        place = (int(device.bus), int(device.address))
        if self._refused is not None and self._refused[0] == place:
            # Claiming it again would detach its kernel driver once more, for nothing.
            usb.util.dispose_resources(device)
            raise ScannerError(self._refused[1], self._refused[2])
        try:
            return UsbSession.claim(
                device,
                self._interface_choice(),
                interface_number=self.url.options.get("interface"),
                boot_protocol=self.boot_protocol,
                serial=serial,
            )
        except ScannerError as exc:
            if isinstance(exc, ScannerGone) or exc.reason not in REFUSAL_REASONS:
                raise
            message = (
                f"{exc} (bus {place[0]} address {place[1]}; left alone until it is replugged "
                "or switched to another mode)"
            )
            self._refused = (place, message, exc.reason)
            raise ScannerError(message, exc.reason) from exc

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                session = self._open()
            except ScannerError as exc:
                self._set_present(False, f"cannot open {self.url.target}: {exc}")
                self._stopping.wait(self.reopen_interval)
                continue
            except (usb.core.USBError, ValueError) as exc:
                self._set_present(False, f"cannot open {self.url.target}: {exc}")
                self._stopping.wait(self.reopen_interval)
                continue
            try:
                with self._session_lock:
                    self._session = session
                if self._stopping.is_set():
                    return
                self.report_descriptor = session.report_descriptor
                self.description = session.description
                self._reset_decoder()
                self._start_decoding(session)
                self._set_present(True, f"opened {session.description}")
                self._read_until_gone(session)
            except ScannerGone as exc:
                # Report first (the journal shows the unplug at once), then let go of the dead
                # handle in finally, then wait: nothing polls a vanished device meanwhile.
                self._set_present(False, f"{self.url.target} went away: {exc}")
                self._reset_decoder()
            finally:
                with self._session_lock:
                    self._session = None
                session.close()
                self.last_session = session
            self._stopping.wait(self.reopen_interval)

    def _read_until_gone(self, session: UsbSession) -> None:
        while not self._stopping.is_set():
            report = session.read(self._read_timeout(self.poll_interval))
            if report is not None:
                # Every report, also one that types nothing, is activity for the gap.
                self._activity()
                try:
                    self._on_report(report)
                except BadReport as exc:
                    self._raw(report, b"", (f"bad-report: {exc}",))
                    in_unit = self._breaks_unit()
                    self._reset_decoder()
                    self._bad_input(len(report), in_unit=in_unit)
            self._check_gap()

    def _release(self) -> None:
        # The reader closes its session; this covers a reader stuck past the join timeout.
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()
