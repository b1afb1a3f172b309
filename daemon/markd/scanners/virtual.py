"""Virtual scanners: fed in-process, for the demo, tests and kiosk UIs that read codes themselves.

URL form: ``virtual://NAME?terminator=cr|lf|crlf|tab|none&max_length=512&gap_ms=50``. ``NAME``
is 1 to 32 letters, digits, ``_`` or ``-``; it is how other code finds the instance:

>>> from markd.scanners import open_scanner, get_virtual
>>> with open_scanner("front", "virtual://front") as scanner:
...     get_virtual("front") is scanner
True

Bytes given to :meth:`VirtualScanner.feed` travel the same path as bytes from a serial port:
a reader thread, the framer, ``loop.call_soon_threadsafe`` into the service's queue. So the
demo and the tests exercise the real delivery path; only the device is simulated. Bytes fed
before :meth:`~markd.scanners.base.Scanner.start` wait and are delivered once it starts.

A virtual scanner is always present. Two open scanners cannot share a name.
"""

from __future__ import annotations

import queue
import threading

from markd.errors import ScannerError
from markd.scanners.base import Scanner, ScannerURL, is_scanner_name
from markd.scanners.framing import TERMINATORS

_registry: dict[str, VirtualScanner] = {}
_registry_lock = threading.Lock()


def get_virtual(name: str) -> VirtualScanner:
    """The open virtual scanner called ``name`` (the NAME of ``virtual://NAME``)."""
    with _registry_lock:
        try:
            return _registry[name]
        except KeyError:
            raise ScannerError(
                f"no open virtual scanner named {name!r}", "no-such-scanner"
            ) from None


def open_virtual_names() -> list[str]:
    """Names of the virtual scanners currently open (tests use it to find leaks)."""
    with _registry_lock:
        return sorted(_registry)


class VirtualScanner(Scanner):
    """A scanner fed by :meth:`feed` (raw bytes, framed) or :meth:`scan` (one whole code)."""

    def __init__(self, name: str, url: ScannerURL) -> None:
        super().__init__(name, url)
        self.virtual_name = url.target
        # None is the stop sentinel; bytes are chunks "read from the wire".
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        with _registry_lock:
            if self.virtual_name in _registry:
                raise ScannerError(
                    f"virtual scanner {self.virtual_name!r} is already open", "scanner-busy"
                )
            _registry[self.virtual_name] = self

    @classmethod
    def target_from_url(cls, variant: str | None, netloc: str, path: str) -> str:
        if variant is not None:
            raise ValueError("the virtual backend has no '+' variants")
        if path:
            raise ValueError("a virtual scanner URL has no path")
        if not is_scanner_name(netloc):
            raise ValueError("missing or invalid NAME")
        return netloc

    def feed(self, data: bytes) -> None:
        """Inject bytes as if the device had sent them (they go through the framer)."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError("feed() takes bytes")
        if self._closed:
            raise ScannerError(f"virtual scanner {self.virtual_name!r} is closed")
        if data:
            self._inbox.put(bytes(data))

    def scan(self, code: str | bytes) -> None:
        """Inject one whole code followed by the configured terminator."""
        data = code.encode("utf-8") if isinstance(code, str) else bytes(code)
        terminator = TERMINATORS[self.url.terminator]
        # With terminator "none" the empty chunk marks the gap that ends the unit.
        self.feed(data + terminator if terminator is not None else data)
        if terminator is None:
            self._inbox.put(b"")

    #: Longest wait for the next chunk when no gap is pending (close() wakes it anyway).
    poll_interval: float = 0.5

    def _run(self) -> None:
        self._set_present(True, f"virtual scanner {self.virtual_name!r}")
        while True:
            try:
                chunk = self._inbox.get(timeout=self._read_timeout(self.poll_interval))
            except queue.Empty:
                self._check_gap()
                continue
            if chunk is None or self._stopping.is_set():
                return
            if chunk:
                self._raw(chunk, chunk)
                self._received(chunk)
            else:
                self._gap()

    def _interrupt(self) -> None:
        self._inbox.put(None)

    def _release(self) -> None:
        with _registry_lock:
            if _registry.get(self.virtual_name) is self:
                del _registry[self.virtual_name]
