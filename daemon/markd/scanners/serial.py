"""Serial scanners: CDC-ACM "USB-COM" mode, RS-232, and anything pyserial can open by URL.

URL forms
---------

``serial:///dev/PATH?OPTIONS``
    A device node, absolute path, hence three slashes: ``serial:///dev/ttyACM0``,
    ``serial:///dev/markd/scanner-1eab-8306-sn-NLS12345`` (the scanner's own udev symlink, the
    recommended production form; ``udev/README.md``, "Names"),
    ``serial:///dev/serial/by-id/usb-Newland_...-if00``. Opened exclusively (``flock``) so two
    daemons cannot share one scanner.

``serial+SCHEME://REST?OPTIONS``
    Any pyserial URL handler: markd drops the ``serial+`` prefix and hands ``SCHEME://REST`` to
    :func:`serial.serial_for_url`. The handlers pyserial ships are accepted: ``loop``
    (``serial+loop://``, an in-process loopback for tests), ``socket``
    (``serial+socket://192.0.2.10:4001``, a serial-to-Ethernet converter in raw TCP mode),
    ``rfc2217`` (``serial+rfc2217://host:port``, a Telnet COM port server), ``spy``
    (``serial+spy:///dev/ttyACM0`` hex-dumps the traffic to stderr while debugging a scanner),
    ``hwgrep`` (``serial+hwgrep://1eab:8306``, the first port whose USB id matches), ``alt`` and
    ``cp2110``. The query string belongs to markd, so pyserial's own ``?logging=`` style options
    cannot be passed through.

Options: ``baudrate`` (default 9600; ignored by CDC-ACM devices but needed on RS-232),
``terminator`` (``cr`` ``lf`` ``crlf`` ``tab`` ``none``, default ``cr``), ``max_length``
(default 512), ``gap_ms`` (default 50; with ``terminator=none`` this much silence ends a code).
The port is always 8N1 without flow control, which is what every scanner we know ships with.

CDC-ACM scanners need ModemManager told to leave them alone, or it probes the port on plug
and holds it ("Device or resource busy"): markd's udev rules set ``ID_MM_DEVICE_IGNORE``.

Unplug and absence
------------------

A scanner that is missing at start-up, or vanishes later, does not stop the service. The reader
reports it once as absent and tries to reopen it every :attr:`SerialScanner.reopen_interval`
seconds (sleeping, not polling), then reports it present again. On Linux an unplugged CDC-ACM
device "reports readiness to read but returned no data" forever, and a pty whose master closed
reads EIO; pyserial turns both into ``SerialException``, which is what ends a session here. The
open port is closed in a ``finally`` block on every path, so the fd never leaks into a
spinning select loop (domain.md §8.3, §8.4).
"""

from __future__ import annotations

import select
import threading
from typing import Any

import serial

from markd.scanners.base import Option, Scanner, ScannerURL

#: pyserial URL handlers (``serial/urlhandler/protocol_*.py`` in pyserial 3.5).
PYSERIAL_SCHEMES = frozenset({"loop", "socket", "rfc2217", "spy", "hwgrep", "alt", "cp2110"})
#: pyserial handlers that connect to ``HOST:PORT``.
NETWORK_SCHEMES = frozenset({"socket", "rfc2217"})


def _check_host_port(variant: str, netloc: str) -> None:
    """``ValueError`` unless ``netloc`` is ``HOST:PORT`` with a port from 1 to 65535."""
    host, _, port = netloc.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"{variant}:// needs HOST:PORT with a port from 1 to 65535, got {netloc!r}"
        )


def _convert_baudrate(text: str) -> int:
    value = int(text)
    if not 50 <= value <= 4_000_000:
        raise ValueError("baudrate out of range")
    return value


class SerialScanner(Scanner):
    """A scanner on a serial port or pyserial URL (see the module docstring for URL forms)."""

    OPTIONS = {
        "baudrate": Option(_convert_baudrate, 9600, "an integer such as 9600 or 115200"),
    }
    #: Seconds between attempts to reopen an absent device.
    reopen_interval: float = 1.0
    #: Longest blocking read. It bounds how long a stop request waits on handlers that cannot
    #: cancel a read (``socket://``). While a unit without terminator is pending, reads wait
    #: only until its ``gap_ms`` expires.
    read_timeout: float = 0.1

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self._port_lock = threading.Lock()
        self._port: Any = None

    @classmethod
    def target_from_url(cls, variant: str | None, netloc: str, path: str) -> str:
        if variant is None:
            if netloc:
                raise ValueError(
                    "a device path must be absolute, hence three slashes (serial:///dev/ttyACM0)"
                )
            if not path.startswith("/") or path == "/":
                raise ValueError("missing device path")
            return path
        if variant not in PYSERIAL_SCHEMES:
            raise ValueError(f"unknown pyserial handler {variant!r}")
        if variant in NETWORK_SCHEMES:
            # pyserial reads the port only when it opens one; a port out of range would make
            # a scanner that is "absent" forever instead of a refused configuration.
            _check_host_port(variant, netloc)
        return f"{variant}://{netloc}{path}"

    @property
    def is_device_path(self) -> bool:
        return self.url.target.startswith("/")

    def _open_port(self) -> Any:
        kwargs: dict[str, Any] = {
            "baudrate": self.url.options["baudrate"],
            "timeout": self.read_timeout,
        }
        if self.is_device_path:
            # flock the tty so a second markd (or a stray miniterm) cannot steal scans.
            kwargs["exclusive"] = True
        return serial.serial_for_url(self.url.target, **kwargs)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                port = self._open_port()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._set_present(False, f"cannot open {self.url.target}: {exc}")
                self._stopping.wait(self.reopen_interval)
                continue
            try:
                with self._port_lock:
                    self._port = port
                if self._stopping.is_set():
                    return
                self._set_present(True, f"opened {self.url.target}")
                self._read_until_gone(port)
            except (serial.SerialException, OSError) as exc:
                self._set_present(False, f"{self.url.target} went away: {exc}")
            finally:
                with self._port_lock:
                    self._port = None
                port.close()
            # Closed before waiting: a dead descriptor is never left in anyone's select().
            self._stopping.wait(self.reopen_interval)

    def _read_until_gone(self, port: Any) -> None:
        """Read until stopped; a vanished device raises and ends the session."""
        try:
            fd: int | None = port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            fd = None  # loop:// and a few others have no descriptor
        while not self._stopping.is_set():
            due = self._gap_due()
            if due is not None:
                # A unit waits for its gap. Wait for the next byte or the gap's end without
                # changing port.timeout (pyserial re-applies every port setting on each change).
                if fd is not None:
                    readable, _, _ = select.select([fd], [], [], due)
                    if not readable:
                        self._check_gap()
                        continue
                elif port.timeout != due:
                    port.timeout = due
            elif fd is None and port.timeout != self.read_timeout:
                port.timeout = self.read_timeout
            # Read whatever is waiting in one call (a whole burst of codes), at least one byte.
            data = port.read(port.in_waiting or 1)
            if data:
                self._raw(data, data)
                self._received(data)
            self._check_gap()

    def _interrupt(self) -> None:
        with self._port_lock:
            port = self._port
            if port is not None and hasattr(port, "cancel_read"):
                try:
                    port.cancel_read()
                except (OSError, serial.SerialException):
                    pass  # The reader notices _stopping within read_timeout anyway.

    def _release(self) -> None:
        # The reader closes the port itself; this covers a reader stuck past the join timeout.
        with self._port_lock:
            port, self._port = self._port, None
        if port is not None:
            port.close()
