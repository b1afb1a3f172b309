"""Scanner backends: the common base, the events they produce, URL parsing and the registry.

A scanner is configured by a URL whose scheme names the backend::

    serial:///dev/ttyACM0?baudrate=9600&terminator=cr&max_length=512
    serial+socket://192.0.2.10:4001          (any pyserial URL handler, see markd.scanners.serial)
    hid-kbd://0c2e:0b61?serial=A1B2          (USB keyboard mode, markd.scanners.hid_keyboard)
    hid-pos://1eab:0010                      (USB HID-POS, markd.scanners.hid_pos)
    virtual://front                          (fed in-process, see markd.scanners.virtual)

:func:`parse_url` parses strictly: an unknown scheme, an unknown option or a bad value raises
:class:`~markd.errors.ScannerError` whose message restates the accepted form, so a typo in
``/etc/markd/markd.toml`` is caught by ``markctl config check`` and not at the till.

Every backend accepts the framing options ``terminator`` (``cr`` ``lf`` ``crlf`` ``tab``
``none``, default ``cr``), ``max_length`` (default 512) and ``gap_ms`` (default 50: with
``terminator=none`` a pause this long ends a code); see :mod:`markd.scanners.framing`.

Each :class:`Scanner` runs its blocking reads in its own thread (pyserial and pyusb have no
asyncio API) and hands events to the service's asyncio queue with
``loop.call_soon_threadsafe``. The base class owns the thread, the framer and delivery;
a backend only implements :meth:`Scanner._run` (the read loop) and, when its reads can be
interrupted, :meth:`Scanner._interrupt`.
"""

from __future__ import annotations

import abc
import asyncio
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from markd.errors import ScannerError
from markd.scanners.framing import DEFAULT_MAX_LENGTH, TERMINATORS, Framer, Overflow, Unit
from markd.urls import Backend, Option, Registry


class BadReport(ScannerError):
    """A device sent something its decoder cannot read (a short or inconsistent HID report, a
    report descriptor that does not parse). The reader drops it and reports a
    :class:`ScanOverflow` with reason ``bad-report``; it never ends the reader."""

    reason = "bad-report"


# --------------------------------------------------------------------------------------------
# Events delivered to the service


@dataclass(frozen=True)
class Scan:
    """One framed unit from a scanner: the raw bytes of (probably) one marking code.

    ``data`` holds the whole code including its crypto tail, so it is kept out of ``repr``:
    an event logged by accident must not leak the tail into the journal.
    """

    scanner: str
    data: bytes = field(repr=False)
    #: ``time.monotonic()`` when the terminator arrived; verdict latency is measured from here.
    received: float = 0.0
    #: The AIM symbology identifier (``"]d2"`` for GS1 DataMatrix) when the scanner reports it
    #: beside the data (HID-POS); None when it is unknown or part of ``data``.
    symbology: str | None = None


@dataclass(frozen=True)
class ScanOverflow:
    """Input was dropped: a unit longer than ``max_length`` arrived without a terminator
    (``reason`` ``too-long``), or the device sent reports its decoder cannot read
    (``bad-report``). Never reported once per byte or per read.

    A ``too-long`` flood that goes on past the read that crossed the limit is reported twice:
    at once with ``ended=False`` and the bytes dropped so far, and when it ends (its
    terminator, the pause, an unplug) with ``ended=True`` and all of its bytes (see
    :class:`markd.scanners.framing.Overflow`). ``bad-report`` events are always ``ended``."""

    scanner: str
    dropped: int
    reason: str = "too-long"
    ended: bool = True


@dataclass(frozen=True)
class ScannerState:
    """The device appeared (``present``) or went away / could not be opened (not present)."""

    scanner: str
    present: bool
    detail: str


ScannerEvent = Scan | ScanOverflow | ScannerState


@dataclass(frozen=True)
class RawRead:
    """One read from the device as it came (a HID report, a chunk of serial bytes) and the
    bytes the backend's decoder made of it. Given only to :attr:`Scanner.monitor`
    (``markctl scan-test``); never queued to the service and never logged."""

    scanner: str
    raw: bytes = field(repr=False)
    decoded: bytes = field(repr=False)
    #: What the decoder noticed, e.g. ``("gs:ctrl+]",)`` when a keyboard report typed GS.
    notes: tuple[str, ...] = ()
    #: ``time.monotonic()`` of the read.
    at: float = 0.0


# --------------------------------------------------------------------------------------------
# URLs


#: Scheme → backend class, imported only when a URL names it. Third-party and later backends
#: (hid-kbd, hid-pos) are added here. ``usage`` is restated in every URL error for the scheme.
_FRAMING_USAGE = "terminator=cr|lf|crlf|tab|none&max_length=512&gap_ms=50"

_BACKENDS: dict[str, Backend] = {
    "serial": Backend(
        "markd.scanners.serial:SerialScanner",
        "serial:///dev/PATH or serial+PYSERIAL-SCHEME://REST (loop, socket, rfc2217, spy, "
        f"hwgrep, alt, cp2110), options ?baudrate=9600&{_FRAMING_USAGE}",
    ),
    "hid-kbd": Backend(
        "markd.scanners.hid_keyboard:HidKeyboardScanner",
        "hid-kbd://VID:PID (4 hex digits each) or hid-kbd:///dev/PATH (a udev symlink to the "
        "USB device node), options ?serial=SERIAL&interface=N&gs_key=f8|f1..f12|none"
        f"&{_FRAMING_USAGE}",
    ),
    "hid-pos": Backend(
        "markd.scanners.hid_pos:HidPosScanner",
        "hid-pos://VID:PID (4 hex digits each) or hid-pos:///dev/PATH (a udev symlink to the "
        f"USB device node), options ?serial=SERIAL&interface=N&{_FRAMING_USAGE}",
    ),
    "virtual": Backend(
        "markd.scanners.virtual:VirtualScanner",
        f"virtual://NAME (1 to 32 letters, digits, _ -), options ?{_FRAMING_USAGE}",
    ),
}

_COMMON_OPTIONS = ("terminator", "max_length", "gap_ms")

#: Default inter-character gap that ends a code when the scanner sends no terminator. Keyboard
#: scanners type a key every 1–10 ms and serial ones stream at line speed, so 50 ms of silence
#: means the code is over, while a cashier cannot scan twice within it.
DEFAULT_GAP_MS = 50


@dataclass(frozen=True)
class ScannerURL:
    """A parsed, validated scanner URL. Build it with :func:`parse_url`."""

    #: The URL as configured, for messages.
    text: str
    #: Backend name: ``"serial"``, ``"hid-kbd"``, ``"hid-pos"`` or ``"virtual"``.
    scheme: str
    #: What the backend opens: a device path, a pyserial URL (``loop://``), a USB ``VID:PID``,
    #: a virtual name.
    target: str
    #: Terminator name, a key of :data:`~markd.scanners.framing.TERMINATORS`.
    terminator: str = "cr"
    max_length: int = DEFAULT_MAX_LENGTH
    #: Silence (milliseconds) that ends a code when ``terminator`` is ``none``.
    gap_ms: int = DEFAULT_GAP_MS
    #: Backend-specific options with defaults filled in (serial: ``baudrate``).
    options: Mapping[str, Any] = field(default_factory=dict)

    def framer(self) -> Framer:
        """A fresh :class:`Framer` configured from this URL."""
        return Framer(TERMINATORS[self.terminator], self.max_length)

    def __str__(self) -> str:
        return self.text


def _scanner_error(message: str) -> ScannerError:
    return ScannerError(message, "bad-scanner-url")


REGISTRY = Registry("scanner", _BACKENDS, _scanner_error)


def _fail(text: str, problem: str, scheme: str | None = None) -> ScannerError:
    return REGISTRY.fail(text, problem, scheme)  # type: ignore[return-value]


def backend_class(scheme: str) -> type[Scanner]:
    """Import and return the backend class for ``scheme`` (``"serial"``, ``"hid-kbd"``, ...)."""
    cls: type[Scanner] = REGISTRY.backend_class(scheme)
    return cls


def _convert_gap_ms(text: str) -> int:
    value = int(text)
    if not 5 <= value <= 5000:
        raise ValueError("gap_ms must be between 5 and 5000")
    return value


def _convert_max_length(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65536:
        raise ValueError("max_length must be between 1 and 65536")
    return value


def parse_url(url: str) -> ScannerURL:
    """Parse and validate a scanner URL; raise :class:`ScannerError` restating the form.

    >>> u = parse_url("serial:///dev/ttyACM0?baudrate=115200&terminator=crlf")
    >>> u.scheme, u.target, u.terminator, u.options["baudrate"]
    ('serial', '/dev/ttyACM0', 'crlf', 115200)
    >>> parse_url("serial+loop://").target
    'loop://'
    >>> parse_url("virtual://front").target
    'front'
    """
    if not isinstance(url, str) or "://" not in url:
        raise _fail(str(url), "not a URL (no '://')")
    full_scheme = url.split("://", 1)[0].lower()
    scheme, plus, variant = full_scheme.partition("+")
    if scheme not in _BACKENDS:
        raise _fail(url, f"unknown scheme {full_scheme!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _fail(url, str(exc), scheme) from None
    if parts.fragment:
        raise _fail(url, "a '#fragment' is not allowed", scheme)

    cls = backend_class(scheme)
    try:
        target = cls.target_from_url(variant if plus else None, parts.netloc, unquote(parts.path))
    except ValueError as exc:
        raise _fail(url, str(exc), scheme) from None

    given = REGISTRY.query(url, parts.query, scheme, (*_COMMON_OPTIONS, *cls.OPTIONS))

    terminator = given.get("terminator", "cr").lower()
    if terminator not in TERMINATORS:
        raise _fail(url, f"terminator must be one of {'|'.join(TERMINATORS)}", scheme)
    try:
        max_length = _convert_max_length(given.get("max_length", str(DEFAULT_MAX_LENGTH)))
    except ValueError:
        raise _fail(url, "max_length must be an integer from 1 to 65536", scheme) from None
    try:
        gap_ms = _convert_gap_ms(given.get("gap_ms", str(DEFAULT_GAP_MS)))
    except ValueError:
        raise _fail(url, "gap_ms must be an integer from 5 to 5000", scheme) from None

    options = REGISTRY.convert(url, scheme, cls.OPTIONS, given)
    return ScannerURL(
        text=url,
        scheme=scheme,
        target=target,
        terminator=terminator,
        max_length=max_length,
        gap_ms=gap_ms,
        options=MappingProxyType(options),
    )


# --------------------------------------------------------------------------------------------
# The base class


class Scanner(abc.ABC):
    """One scanner device: a reader thread that frames bytes and delivers events to asyncio.

    Life cycle: construct with :func:`open_scanner`, :meth:`start` with the service's loop and
    queue, :meth:`close` (or use it as a context manager). ``close`` is idempotent and releases
    the device in ``finally`` blocks: a port left grabbed freezes a till until reboot.

    Subclasses set :attr:`OPTIONS`, implement :meth:`target_from_url` and :meth:`_run`, and
    report what they read through :meth:`_activity`, :meth:`_received`, :meth:`_end_of_scan`,
    :meth:`_gap`, :meth:`_bad_input` and :meth:`_set_present`. A reader that blocks in reads
    asks :meth:`_read_timeout` how long it may wait, so a code without a terminator is ended
    ``gap_ms`` after its last read and not a poll interval later.

    :attr:`monitor`, when set before :meth:`start`, is called in the reader thread with a
    :class:`RawRead` for every read (``markctl scan-test`` shows them to the technician).
    """

    #: Backend-specific URL options (the framing options are common to all backends).
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    #: How long to wait before restarting a reader that failed unexpectedly.
    restart_interval: float = 1.0

    def __init__(self, name: str, url: ScannerURL) -> None:
        self.name = name
        self.url = url
        self._framer = url.framer()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[ScannerEvent] | None = None
        self._present: bool | None = None
        #: Times the device came back after it was missing (``GET /metrics``).
        self.reconnects = 0
        self._closed = False
        #: Called in the reader thread with every :class:`RawRead`; None in the service.
        self.monitor: Callable[[RawRead], None] | None = None
        # When the last read arrived (time.monotonic()), for gap framing: any report counts,
        # also one that types nothing (see _activity).
        self._last_data_at = 0.0
        # True after a bad-input report until a unit gets through: one record per flood.
        self._bad_input_reported = False

    # -- the URL hook -------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def target_from_url(cls, variant: str | None, netloc: str, path: str) -> str:
        """Validate the URL's target part and return what the backend opens.

        ``variant`` is the part after ``+`` in the scheme (``loop`` in ``serial+loop://``), or
        None. Raise ``ValueError`` with a short problem description; the caller adds the form.
        """

    # -- public life cycle --------------------------------------------------------------------

    @property
    def present(self) -> bool | None:
        """True while the device is open, False while it is absent, None before the first try."""
        return self._present

    @property
    def reader_alive(self) -> bool:
        """Whether the reader thread runs (True before :meth:`start`). The reader restarts
        after its own failures, so a dead thread on a started scanner is a bug or a wedged
        driver, never the "device absent" state (``present`` is False then, the thread alive
        and retrying)."""
        thread = self._thread
        return thread is None or thread.is_alive()

    def start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ScannerEvent]) -> None:
        """Start the reader thread; events go to ``queue``, which belongs to ``loop``."""
        if self._closed:
            raise ScannerError(f"scanner {self.name!r} is closed")
        if self._thread is not None:
            raise ScannerError(f"scanner {self.name!r} is already started")
        self._loop = loop
        self._queue = queue
        self._thread = threading.Thread(
            target=self._thread_main, name=f"markd-scanner-{self.name}", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader and release the device. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        try:
            self._interrupt()
        finally:
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
            self._release()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.url.text!r}>"

    # -- hooks for backends -------------------------------------------------------------------

    @abc.abstractmethod
    def _run(self) -> None:
        """The blocking read loop, run in the reader thread. Return once ``_stopping`` is set."""

    def _interrupt(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Wake :meth:`_run` from a blocking read so :meth:`close` returns promptly."""

    def _release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release anything the reader could not release itself (called by :meth:`close`)."""

    # -- helpers for backends -----------------------------------------------------------------

    def _activity(self) -> None:
        """A read arrived from the device, whether or not it decodes to any byte.

        With ``terminator=none`` the gap is silence on the wire, timed from the last read and
        not from the last decoded character: a scanner in Alt-code mode sends about ten
        reports per character (Alt, four keypad digits pressed and released, Alt up), 8 ms
        apart on a typical 125 Hz interrupt endpoint, so a character every ~80 ms would
        otherwise split every code into one-character scans. ``markctl decode`` times the gap
        the same way (the pause before each report of a capture). A silence that had already
        lasted ``gap_ms`` when this read came ends the pending unit first."""
        self._check_gap()
        self._last_data_at = time.monotonic()

    def _received(self, data: bytes, symbology: str | None = None) -> None:
        """Feed bytes read from the device through the framer and deliver complete units."""
        self._activity()
        self._deliver(self._framer.feed(data), symbology)

    def _end_of_scan(self, symbology: str | None = None) -> None:
        """The device says the scan is complete (HID-POS): end the pending unit whatever the
        terminator setting (a terminator inside the data has already cut it)."""
        self._deliver(self._framer.flush(), symbology)

    def _gap(self) -> None:
        """A pause in the stream: end the pending unit when the scanner sends no terminator."""
        # in_unit, not pending: after an overflow nothing is pending but the flood is still
        # being discarded, and only this pause ends it (there is no terminator to wait for).
        if self._framer.terminator is None and self._framer.in_unit:
            self._deliver(self._framer.flush())

    def _gap_due(self) -> float | None:
        """Seconds until the pending unit's gap expires (0 when it has), or None when no unit
        waits for a gap (a terminator is configured, or no unit is under way). A flood being
        discarded is a unit under way: its gap ends the discarding, or the next code would be
        dropped as the flood's tail."""
        if self._framer.terminator is not None or not self._framer.in_unit:
            return None
        return max(0.0, self._last_data_at + self.url.gap_ms / 1000 - time.monotonic())

    def _read_timeout(self, poll: float) -> float:
        """How long the next blocking read may wait: ``poll`` (which bounds how long a stop
        request waits), or less when a gap is about to end the pending unit."""
        due = self._gap_due()
        return poll if due is None else min(poll, due)

    def _check_gap(self) -> None:
        """End the pending unit if its gap has expired (call after every read)."""
        if self._gap_due() == 0.0:
            self._deliver(self._framer.flush())

    def _bad_input(self, dropped: int, *, in_unit: bool = False) -> None:
        """Input the decoder cannot read: drop the partial unit and report it once per flood.

        ``in_unit``: the unreadable input broke a unit under way, so the rest of that unit
        (up to its terminator, its gap, or the end of a HID-POS scan) is discarded too, as
        after an overflow, instead of reaching the parser as a code of its own."""
        if in_unit:
            dropped += self._framer.discard()
        else:
            pending = self._framer.pending
            ended = self._framer.reset()
            # A flood being discarded counts its held-back bytes (the first half of a CR LF)
            # in its own final Overflow: counted here as well, they would be counted twice.
            if not ended:
                dropped += pending
            self._deliver(ended)
        if not self._bad_input_reported:
            self._bad_input_reported = True
            self._emit(ScanOverflow(self.name, dropped, "bad-report"))

    def _raw(self, raw: bytes, decoded: bytes, notes: tuple[str, ...] = ()) -> None:
        """Show one read to the monitor, if any (cheap when there is none)."""
        monitor = self.monitor
        if monitor is not None:
            try:
                monitor(RawRead(self.name, bytes(raw), bytes(decoded), notes, time.monotonic()))
            except Exception:  # noqa: BLE001 - a broken monitor must not stop the reader
                self.monitor = None

    def _set_present(self, present: bool, detail: str) -> None:
        """Report a device state change (only changes are delivered, so retries stay quiet)."""
        if present is self._present:
            return
        if present and self._present is False:
            self.reconnects += 1
        self._present = present
        if not present:
            # A half-received code from before the unplug must not prefix the next scan; a
            # flood it cut short still gets its final count.
            self._deliver(self._framer.reset())
        self._emit(ScannerState(self.name, present, detail))

    def _deliver(self, units: list[Unit], symbology: str | None = None) -> None:
        now = time.monotonic()
        for unit in units:
            if isinstance(unit, Overflow):
                self._emit(ScanOverflow(self.name, unit.dropped, ended=unit.ended))
            else:
                self._bad_input_reported = False
                self._emit(Scan(self.name, unit, now, symbology))

    def _emit(self, event: ScannerEvent) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:
            # The loop is closed: the service is gone and nobody wants the event any more.
            pass

    def _thread_main(self) -> None:
        # A bug in a backend must not silently stop a till from scanning: report it and restart.
        while not self._stopping.is_set():
            try:
                self._run()
                return
            except Exception as exc:  # noqa: BLE001 - reported, then the reader restarts
                self._set_present(False, f"reader failed: {type(exc).__name__}: {exc}")
                self._stopping.wait(self.restart_interval)


#: A scanner name, the NAME of ``[scanners.NAME]`` and of ``virtual://NAME``: a short bare word,
#: because it lands in journal fields (``MARKD_SCANNER``) and command lines.
#: Keep equal to :data:`markd.config.SCANNER_NAME_PATTERN`.
NAME_PATTERN = r"[A-Za-z0-9_-]{1,32}"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")


def is_scanner_name(name: object) -> bool:
    """True when ``name`` is a valid scanner name (see :data:`NAME_PATTERN`)."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def check_scanner_name(name: str) -> str:
    """Validate a scanner name; raise :class:`ScannerError` if it is not a short bare word."""
    if not is_scanner_name(name):
        raise ScannerError(
            f"scanner name {name!r}: use 1 to 32 letters, digits, '_' or '-'", "bad-scanner-name"
        )
    return name


def open_scanner(name: str, url: str | ScannerURL) -> Scanner:
    """Create the scanner backend that ``url`` names. The device is opened by the reader thread
    after :meth:`Scanner.start`, so a scanner that is unplugged at boot does not stop the service.
    """
    check_scanner_name(name)
    parsed = url if isinstance(url, ScannerURL) else parse_url(url)
    return backend_class(parsed.scheme)(name, parsed)
