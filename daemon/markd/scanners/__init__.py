"""Barcode scanner backends, chosen by URL (see :mod:`markd.scanners.base`).

``serial:///dev/ttyACM0?baudrate=9600`` and ``serial+loop://`` (:mod:`markd.scanners.serial`),
``hid-kbd://VID:PID`` (:mod:`markd.scanners.hid_keyboard`), ``hid-pos://VID:PID``
(:mod:`markd.scanners.hid_pos`), ``virtual://NAME`` (:mod:`markd.scanners.virtual`). Backends
are imported only when a URL names them. :func:`parse_url` validates a URL without opening
anything (the config validator uses it); :func:`open_scanner` creates the backend; the device is
opened by the scanner's reader thread.
"""

from markd.scanners.base import (
    BadReport,
    RawRead,
    Scan,
    Scanner,
    ScannerEvent,
    ScannerState,
    ScannerURL,
    ScanOverflow,
    check_scanner_name,
    open_scanner,
    parse_url,
)
from markd.scanners.framing import TERMINATORS, Framer, Overflow
from markd.scanners.virtual import VirtualScanner, get_virtual, open_virtual_names

__all__ = [
    "TERMINATORS",
    "BadReport",
    "RawRead",
    "Framer",
    "Overflow",
    "Scan",
    "ScanOverflow",
    "Scanner",
    "ScannerEvent",
    "ScannerState",
    "ScannerURL",
    "VirtualScanner",
    "check_scanner_name",
    "get_virtual",
    "open_scanner",
    "open_virtual_names",
    "parse_url",
]
