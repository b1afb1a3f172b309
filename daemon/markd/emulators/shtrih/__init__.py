"""A virtual Shtrih-M ККТ speaking protocol 1 (bytes on a serial line or TCP), with the ФФД 1.2
marking commands, its whole state on disk.

It is the Shtrih counterpart of :mod:`markd.emulators.virtual_kkt` (which answers ATOL JSON
tasks): the same device design — state in ``state.json`` replaced atomically, fiscal documents
in an fsync'd ``documents.jsonl``, faults kept in the state so another process sees them, the
same fault names for the same behaviour — behind Shtrih's own protocol. Three parts:

* :mod:`.link` — the link layer without I/O (ENQ/ACK/NAK, frames, LRC, timeouts);
* :mod:`.device` — :class:`ShtrihKkt`: the device model (shift, receipt, documents, the ОФД
  queue, faults, state on disk) and the shift and receipt commands, with :mod:`.status` (the
  status commands) and :mod:`.marking` (the ФН's code checks and its table of accepted codes)
  mixed in; :mod:`.protocol` holds the error codes and the field readers and writers;
* :mod:`.serve` — :class:`ShtrihServer`, serving it on a pty and on loopback TCP; with
  ``baudrate=N`` it paces both directions at a serial line of N baud (10 bits a byte), so an
  exchange takes as long as on a real line (None, the default: bytes go at once).

``python -m markd.emulators shtrih --pty [--tcp PORT] [--state DIR] [--baudrate N]`` runs it
from a shell.

Sources (read for facts; nothing copied): the vendor's JavaPOS driver ``shtrih-m/javapos_shtrih``
— ``commands.xml`` (the byte layouts, authoritative here) and the command classes
``FSCheckMC``, ``FSAcceptMC``, ``FSBindMC``, ``FSPrintRecItem``, ``FSWriteOperationTLV``,
``FSCloseReceipt``, ``FSFindDocument`` (with ``FSDocument``, ``FSOpenDayReport``,
``FSDocumentReceipt``, ``FSDocType``, ``PrinterDateTime``), ``FSReadStatus``, ``FSReadExpDate``,
``FSReadCommStatus``, ``FSReadDayParameters``, ``FSReadMCStatus``, ``ReadShortStatus``,
``ReadLongStatus`` / ``LongPrinterStatus``, ``ReadDeviceMetrics``, ``PrinterProtocol_1`` (the
host's side of the link), ``SMFiscalPrinterImpl`` (CP1251 text; how error codes are read);
its ``messages_ru.txt`` / ``messages_en.txt`` (the error codes); the vendor's ФФД 1.2 note
(«Доработка драйвера под ФФД 1.2»: ``FF61``, ``FF67``, ``FF69``, ``FF70``, the ФН's error codes
0x32 and up sent as 0xA0 and up); the vendor's example ``shtrih-m/fr_drv_ng_examples``
(``fsOperationReceipt_FFD_1_2``: open, check and accept each code, then per position
``FF46``, its tags, ``FF67``, and ``FF45``); the vendor's protocol description v2.0
(``protocol_kkt_2.0.txt``: the link layer, the status layouts, modes and flags).

Where the sources disagree, the device follows ``commands.xml`` and the note, except where
commands.xml's own comment and the Java class agree against its parameter list:

* ``FF40`` answers a shift-state byte before the shift and receipt numbers (the comment and
  ``FSReadDayParameters``; the parameter list omits it);
* ``FF70`` answers the eight bytes of the comment and ``FSReadMCStatus`` (the parameter list
  has a ninth);
* ``FF61``: the ФН's code for the online check comes before 2106 (the note, commands.xml,
  ``FSBindMC``), not after (``FSCheckMC`` reads them the other way round);
* ``FF03`` answers the date and two registration counters (``FSReadExpDate``; commands.xml
  lists the date only);
* a ``NAK`` from the host does not make the device resend its answer at once: it waits for
  ``ENQ`` (protocol_kkt_2.0.txt; ``PrinterProtocol_1`` sends ENQ after its NAK);
* a receipt in a closed shift gets 0x3D (``PrinterError3D``, "shift not open"), not 0x16: a
  device with a ФН has codes below 0x20 read as the ФН's own errors by the vendor's driver,
  where 0x16 means "shift over 24 hours".

Chosen where the sources are silent (each is a fault or an option, and unconfirmed):

* an unregistered taxation system in ``FF45`` → 0x33 (fault ``taxation_error``: another code);
* ``0x88`` cancelling a receipt clears the ФН's accepted codes (fault ``cancel_keeps_codes``);
* ``FF67`` with a code rejected by ``FF69`` 0 → 0xAC; fault ``no_bind_check``: an unchecked
  code is refused the same way instead of checked by the device (older firmware);
* ``FF69`` 2 ("clear the buffer", ``FSAcceptMC``) drops the waiting check and every accepted
  code;
* ``FF01``'s warning bits (0 replace the ФН urgently, 1 resource exhausted, 2 memory full,
  3 ОФД timeout, 7 critical error) are the ФН-М protocol's, which these sources do not list;
* ``0xE0`` in an open shift → 0x73; ``0x41`` with no shift open → 0x2C; a refused ``FF45``
  leaves the receipt open; ``FF40``'s receipt number is the count of receipts in the shift;
* codes are matched by their КИ (the device keeps nothing else of a code); a code the parser
  cannot read → 0x33.

Faults (:meth:`ShtrihKkt.set_faults`; None or False removes one). Shared with the virtual ККТ,
same meaning: ``paper_out`` (0x6B; status flags and submode show it), ``gone`` (nothing is
answered, not even ENQ), ``gone_in_receipt`` (``open``: the next ``0x8D`` opens the receipt,
then the device goes silent; ``after``: the next ``FF45`` registers the receipt, then its
answer is lost and the device goes silent), ``begin_busy`` (a check left waiting for ``FF69``:
the next ``FF61`` gets 0xA1), ``ism`` (``online`` | ``offline`` | ``timeout``), ``fn_error``
(0x03 on fiscal commands, critical flag in ``FF01``), ``shift_expired``, ``taxation_types``,
``fn_days_left``, ``unsent_age_days``, ``shift_age_hours``, ``fn_warnings``, ``codes``
(per КИ ``{"oism": "incorrect" | "sale-stopped", "fn": False}``; :meth:`ShtrihKkt.set_code`).
Shtrih's own: ``bad_lrc`` (True or N: the next N answer frames carry a wrong LRC),
``lost_answer`` (True or N: the next state-changing command runs, its answer is kept and not
sent; an ENQ gets it), ``receipt_left_open`` (True, ``"sell"`` or ``"sellReturn"``: a receipt
is open on the device at once, as an earlier session left it; needs an open shift),
``cancel_keeps_codes``, ``no_bind_check``, ``taxation_error``.

Documents (:meth:`ShtrihKkt.documents`): a receipt is ``{"number", "type": "sell" |
"sellReturn", "datetime", "shift", "receipt_number", "fiscal_sign" (int), "fn_number", "total",
"change", "rounding", "payments": [{"type": "cash" | "electronically" | "typeN", "amount"}],
"taxation_type", "tags": {"1055"}, "cashier": {"1021", "1203"} (when sent), "positions":
[{"name", "price", "quantity", "amount", "tax", "payment_method", "payment_object", "tags":
{"2003", "2102", "2106", "2004", "2100", "1260": {"1262", "1263", "1264", "1265"}, "2108"},
"ki"}]}`` (sums in kopecks; ``ki`` and the code tags only on marked positions); a shift report
``{"number", "type": "openShift" | "closeShift", "datetime", "shift", "fiscal_sign",
"fn_number", "cashier"?}``. Only a code's КИ is kept, never the code or anything derived from
its crypto tail.
"""

from markd.emulators.shtrih.device import Answer, Error, ShtrihKkt
from markd.emulators.shtrih.link import Link
from markd.emulators.shtrih.serve import ShtrihServer

__all__ = ["Answer", "Error", "Link", "ShtrihKkt", "ShtrihServer"]
