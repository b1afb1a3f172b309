"""The fiscal side: one interface to the ККТ, backends chosen by URL, and the sale session.

Modules: ``base`` (the printer interface, its URLs, the typed faults), ``model`` (positions,
tags, ФН results), ``atol`` + ``atol_protocol`` (ATOL JSON), ``emulator`` (the virtual ККТ
backend), ``shtrih`` (the Shtrih-M package), ``session`` (the sale session), ``steps`` (what
it shares with its recovery), ``recovery`` (crash recovery), ``outcomes`` (what both report),
``journal`` (the fsync'd session journal).

``emulator:///var/lib/markd/kkt`` (:mod:`markd.fiscal.emulator`, the emulators' virtual ККТ
in process), ``atol-web://127.0.0.1:16732`` and ``atol-lib://usb``
(:mod:`markd.fiscal.atol`), ``shtrih:///dev/ttyACM0`` and ``shtrih://HOST:7778``
(:mod:`markd.fiscal.shtrih`, a Shtrih-M ККТ over its protocol 1). :func:`parse_printer_url`
validates a URL without opening anything; :func:`open_printer` opens the backend.
:class:`~markd.fiscal.session.SaleSession` turns allowed units into a receipt and recovers
after a crash; see ``docs/fiscal.md``.
"""

from markd.fiscal.base import (
    CodeCheck,
    FiscalPrinter,
    PrinterSettings,
    PrinterURL,
    derive_op_id,
    new_op_id,
    open_printer,
    parse_printer_url,
)
from markd.fiscal.model import (
    IndustryTags,
    MarkedItem,
    MarkValidation,
    Position,
    PrinterStatus,
    ReceiptResult,
    ShiftInfo,
    judge_validation,
)

__all__ = [
    "CodeCheck",
    "FiscalPrinter",
    "IndustryTags",
    "MarkValidation",
    "MarkedItem",
    "Position",
    "PrinterSettings",
    "PrinterStatus",
    "PrinterURL",
    "ReceiptResult",
    "ShiftInfo",
    "derive_op_id",
    "judge_validation",
    "new_op_id",
    "open_printer",
    "parse_printer_url",
]
